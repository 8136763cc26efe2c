/* conn: framed connections on the loop, accepted from listeners, with limits. */
#include "net/conn.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"

#define CONN_MAX_DEFAULT 4096u
#define CONN_SEND_TIMEOUT_DEFAULT_MS 10000u
#define CONN_OUTPUT_MAX_DEFAULT (4u << 20)
#define CONN_LISTENERS_MAX 4u
#define CONN_INPUT_INITIAL 4096u
#define CONN_OUTPUT_INITIAL 4096u
#define CONN_RECV_BUFFERS 128u
#define CONN_RECV_BUFFER_SIZE 4096u
#define CONN_SWEEP_MS 1000u
#define CONN_ACCEPT_RETRY_MS 100u
#define CONN_FDS_MAX 8u		/* received and not yet taken, per connection */
#define CONN_RECVMSG_SPACE 16384u /* free input space offered to each recvmsg */
/* Buffers kept by a connection struct on the free list; larger ones are freed. */
#define CONN_KEEP_BUFFER_MAX (64u << 10)

/* conn.flags */
#define CONN_RECV_ARMED (1u << 0)  /* multishot recv in flight */
#define CONN_SENDING (1u << 1)	   /* a send in flight */
#define CONN_CLOSING (1u << 2)	   /* no new work; finish when nothing is in flight */
#define CONN_CLOSE_AFTER_SEND (1u << 3)
#define CONN_READ_DONE (1u << 4)   /* EOF or protocol error: read no more */
#define CONN_CANCELLED (1u << 5)   /* cancellation submitted */
#define CONN_FINISHED (1u << 6)	   /* back on the free list; late calls are no-ops */

struct conn {
	struct conn_server *server;
	struct conn *prev, *next; /* server's open list, or free list (next only) */
	int fd;
	unsigned flags;
	int peer_pid;
	unsigned peer_uid;
	uint64_t last_active_ms;
	void *user;

	struct loop_op recv_op;
	struct loop_op send_op;

	uint8_t *input;
	size_t input_len, input_cap;
	uint8_t *output;
	size_t output_start, output_end, output_cap;
	/* The buffer a send in flight reads from, after the output grew into a
	 * new one meanwhile: freed when that send completes. */
	uint8_t *output_retired;

	/* pass_fds: the recvmsg in flight writes into input[input_len..] and
	 * control; both stay put until it completes (nothing reallocates the
	 * input while a recv is armed). */
	struct msghdr msg;
	struct iovec iov;
	union {
		struct cmsghdr align;
		uint8_t bytes[CMSG_SPACE(sizeof(int) * CONN_FDS_MAX)];
	} control;
	int fds[CONN_FDS_MAX];
	unsigned fd_count;
};

struct conn_listener {
	struct conn_server *server;
	struct loop_op accept_op;
	struct loop_op retry_op;
	int fd;
	bool armed;	    /* accept in flight */
	bool retrying;	    /* retry timer in flight */
	bool stopped;
};

struct conn_server {
	struct loop *loop;
	struct conn_handlers handlers;
	struct conn_server_options options;
	void *context;
	uint16_t buffer_group;

	struct conn *open;	   /* doubly linked */
	struct conn *free_list;	   /* singly linked via next */
	unsigned count;

	struct conn_listener listeners[CONN_LISTENERS_MAX];
	unsigned listener_count;

	struct loop_op sweep_op;
	bool sweep_armed;
	bool destroyed;
	uint64_t refused_busy;
};

static void conn_recv_done(struct loop_op *op, int res, uint32_t flags);
static void conn_send_done(struct loop_op *op, int res, uint32_t flags);
static void conn_send_more(struct conn *conn);
static void conn_maybe_finish(struct conn *conn);

/* --- buffers. */

static int conn_reserve(uint8_t **buf, size_t *cap, size_t need, size_t initial)
{
	size_t new_cap = *cap ? *cap : initial;
	uint8_t *grown;

	if (need <= *cap)
		return 0;
	while (new_cap < need)
		new_cap *= 2;
	grown = realloc(*buf, new_cap);
	if (!grown)
		return -ENOMEM;
	*buf = grown;
	*cap = new_cap;
	return 0;
}

/* --- life cycle of one connection. */

static struct conn *conn_get(struct conn_server *server, int fd)
{
	struct conn *conn = server->free_list;

	if (conn) {
		server->free_list = conn->next;
	} else {
		conn = calloc(1, sizeof(*conn));
		if (!conn)
			return NULL;
	}
	conn->server = server;
	conn->fd = fd;
	conn->flags = 0;
	conn->peer_pid = 0;
	conn->peer_uid = 0;
	conn->user = NULL;
	conn->input_len = 0;
	conn->output_start = conn->output_end = 0;
	conn->last_active_ms = clock_monotonic_ms();
	/* Re-initialising bumps the generations: a late completion for the
	 * previous user of this struct is recognised and dropped. */
	loop_op_init(&conn->recv_op, conn_recv_done, conn);
	loop_op_init(&conn->send_op, conn_send_done, conn);

	conn->prev = NULL;
	conn->next = server->open;
	if (server->open)
		server->open->prev = conn;
	server->open = conn;
	server->count++;
	return conn;
}

static void conn_put(struct conn *conn)
{
	struct conn_server *server = conn->server;

	assert(server->count > 0);
	assert(!(conn->flags & (CONN_RECV_ARMED | CONN_SENDING)));
	if (conn->prev)
		conn->prev->next = conn->next;
	else
		server->open = conn->next;
	if (conn->next)
		conn->next->prev = conn->prev;
	server->count--;

	for (unsigned i = 0; i < conn->fd_count; i++)
		close(conn->fds[i]);
	conn->fd_count = 0;
	if (conn->input_cap > CONN_KEEP_BUFFER_MAX) {
		free(conn->input);
		conn->input = NULL;
		conn->input_cap = 0;
	}
	if (conn->output_cap > CONN_KEEP_BUFFER_MAX) {
		free(conn->output);
		conn->output = NULL;
		conn->output_cap = 0;
	}
	conn->fd = -1;
	conn->next = server->free_list;
	server->free_list = conn;
}

static void conn_maybe_finish(struct conn *conn)
{
	if (!(conn->flags & CONN_CLOSING) ||
	    (conn->flags & (CONN_RECV_ARMED | CONN_SENDING | CONN_FINISHED)))
		return;
	/* The struct stays valid (free list) until reused by an accept, which
	 * cannot happen before the callback that finished it returns. */
	conn->flags |= CONN_FINISHED;
	close(conn->fd);
	if (conn->server->handlers.closed)
		conn->server->handlers.closed(conn);
	conn_put(conn);
}

void conn_close(struct conn *conn)
{
	if (conn->flags & (CONN_CLOSING | CONN_FINISHED))
		return;
	conn->flags |= CONN_CLOSING | CONN_READ_DONE;
	if ((conn->flags & (CONN_RECV_ARMED | CONN_SENDING)) && !(conn->flags & CONN_CANCELLED)) {
		conn->flags |= CONN_CANCELLED;
		if (loop_cancel_fd(conn->server->loop, conn->fd) < 0)
			/* Could not queue the cancel: shutting the socket down
			 * completes the recv (EOF) and fails the send. */
			shutdown(conn->fd, SHUT_RDWR);
	}
	conn_maybe_finish(conn);
}

static void conn_close_after_send(struct conn *conn)
{
	conn->flags |= CONN_READ_DONE | CONN_CLOSE_AFTER_SEND;
	if (conn->flags & CONN_RECV_ARMED)
		loop_cancel_op(conn->server->loop, &conn->recv_op);
	if (conn->output_start == conn->output_end && !(conn->flags & CONN_SENDING))
		conn_close(conn);
}

/* --- output. */

static int conn_output_reserve(struct conn *conn, size_t bytes)
{
	size_t limit = conn->server->options.output_max_bytes;

	/* Slide what is left to the front before growing. */
	if (conn->output_start > 0 && !(conn->flags & CONN_SENDING)) {
		size_t pending = conn->output_end - conn->output_start;

		memmove(conn->output, conn->output + conn->output_start, pending);
		conn->output_start = 0;
		conn->output_end = pending;
	}
	size_t need = conn->output_end + bytes;
	if (need > limit)
		return -ENOBUFS;
	if (need <= conn->output_cap)
		return 0;
	if (!(conn->flags & CONN_SENDING))
		return conn_reserve(&conn->output, &conn->output_cap, need, CONN_OUTPUT_INITIAL);

	/* The kernel reads the current buffer until the send completes: grow
	 * into a new one (same offsets) and retire the old one until then. */
	size_t new_cap = conn->output_cap * 2;
	uint8_t *grown;

	while (new_cap < need)
		new_cap *= 2;
	grown = malloc(new_cap);
	if (!grown)
		return -ENOMEM;
	memcpy(grown, conn->output, conn->output_end);
	if (conn->output_retired)
		free(conn->output); /* not the one the kernel reads */
	else
		conn->output_retired = conn->output;
	conn->output = grown;
	conn->output_cap = new_cap;
	return 0;
}

static void conn_send_more(struct conn *conn)
{
	struct conn_server *server = conn->server;
	int rc;

	if ((conn->flags & (CONN_SENDING | CONN_CLOSING)) || conn->output_start == conn->output_end)
		return;
	loop_op_init(&conn->send_op, conn_send_done, conn);
	rc = loop_send(server->loop, &conn->send_op, conn->fd, conn->output + conn->output_start,
		       conn->output_end - conn->output_start, server->options.send_timeout_ms);
	if (rc < 0) {
		log_warn("conn", "cannot queue a send server=%s error=\"%s\"", server->options.name,
			 strerror(-rc));
		conn_close(conn);
		return;
	}
	conn->flags |= CONN_SENDING;
}

static void conn_send_done(struct loop_op *op, int res, uint32_t flags)
{
	struct conn *conn = op->owner;

	(void)flags;
	conn->flags &= ~CONN_SENDING;
	free(conn->output_retired);
	conn->output_retired = NULL;
	if (conn->flags & CONN_CLOSING) {
		conn_maybe_finish(conn);
		return;
	}
	if (res <= 0) {
		/* -ECANCELED here is the linked send timeout. */
		if (res != -EPIPE && res != -ECONNRESET)
			log_debug("conn", "send failed server=%s error=\"%s\"",
				  conn->server->options.name,
				  res == -ECANCELED ? "send timed out" : strerror(-res));
		conn_close(conn);
		return;
	}
	conn->output_start += (size_t)res;
	assert(conn->output_start <= conn->output_end);
	if (conn->output_start == conn->output_end) {
		conn->output_start = conn->output_end = 0;
		if (conn->flags & CONN_CLOSE_AFTER_SEND)
			conn_close(conn);
		return;
	}
	conn_send_more(conn); /* a short send: the rest */
}

int conn_send_frame(struct conn *conn, uint8_t type, const ProtobufCMessage *msg)
{
	size_t size = frame_packed_size(msg);
	ssize_t n;
	int rc;

	if (conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND))
		return -EPIPE;
	rc = conn_output_reserve(conn, size);
	if (rc < 0) {
		log_warn("conn", "peer does not read its replies, closing server=%s pid=%d",
			 conn->server->options.name, conn->peer_pid);
		conn_close(conn);
		return rc;
	}
	n = frame_pack(type, msg, conn->output + conn->output_end,
		       conn->output_cap - conn->output_end);
	if (n < 0)
		return (int)n;
	conn->output_end += (size_t)n;
	conn_send_more(conn);
	return 0;
}

void conn_send_error(struct conn *conn, uint64_t id, Ringfly__ErrorCode code, const char *fmt, ...)
{
	char text[1024];
	va_list ap;
	ssize_t n;

	if (conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND))
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	log_debug("conn", "protocol error server=%s pid=%d reason=\"%s\"",
		  conn->server->options.name, conn->peer_pid, text);
	if (conn_output_reserve(conn, FRAME_HEADER_SIZE + sizeof(text) + 32) == 0) {
		n = frame_pack_error(id, code, text, conn->output + conn->output_end,
				     conn->output_cap - conn->output_end);
		if (n > 0)
			conn->output_end += (size_t)n;
	}
	conn_send_more(conn);
	conn_close_after_send(conn);
}

/* --- input. */

static void conn_protocol_error(struct conn *conn, enum frame_peek_result result)
{
	uint32_t limit = frame_type_message_max(conn->input[4]);

	if (conn->server->options.max_message_bytes < limit)
		limit = conn->server->options.max_message_bytes;
	switch (result) {
	case FRAME_PEEK_TOO_LARGE:
		conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_FRAME_TOO_LARGE,
				"frame of type %s (%u) is larger than its limit of %u bytes",
				frame_type_name(conn->input[4]), conn->input[4], limit);
		break;
	case FRAME_PEEK_UNKNOWN_TYPE:
		conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_UNKNOWN_TYPE,
				"unknown frame type %u", conn->input[4]);
		break;
	default:
		conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED,
				"frame with length 0 (no type byte)");
		break;
	}
}

/* Hands every whole frame in the input buffer to the handler. */
static void conn_parse(struct conn *conn)
{
	struct conn_server *server = conn->server;
	uint32_t limit = server->options.max_message_bytes;
	size_t consumed = 0;

	while (!(conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND))) {
		const uint8_t *message;
		size_t message_len, frame_size;
		uint8_t type;
		enum frame_peek_result result;

		result = frame_peek(conn->input + consumed, conn->input_len - consumed, limit,
				    &type, &message, &message_len, &frame_size);
		if (result == FRAME_PEEK_NEED_MORE) {
			if (frame_size &&
			    conn_reserve(&conn->input, &conn->input_cap,
					 frame_size, CONN_INPUT_INITIAL) < 0) {
				conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
						"out of memory for a %zu-byte frame", frame_size);
			}
			break;
		}
		if (result != FRAME_PEEK_OK) {
			if (consumed) { /* keep the offending header at input[0] */
				memmove(conn->input, conn->input + consumed,
					conn->input_len - consumed);
				conn->input_len -= consumed;
				consumed = 0;
			}
			conn_protocol_error(conn, result);
			break;
		}
		consumed += frame_size;
		if (server->handlers.frame(conn, type, message, message_len) < 0)
			conn_close_after_send(conn);
	}
	if (consumed) {
		memmove(conn->input, conn->input + consumed, conn->input_len - consumed);
		conn->input_len -= consumed;
	}
}

/* Keeps the descriptors a recvmsg brought (pass_fds). */
static void conn_take_control(struct conn *conn)
{
	bool dropped = (conn->msg.msg_flags & MSG_CTRUNC) != 0;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(&conn->msg); c; c = CMSG_NXTHDR(&conn->msg, c)) {
		size_t count;
		int fd;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < count; i++) {
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
			if (conn->fd_count < CONN_FDS_MAX) {
				conn->fds[conn->fd_count++] = fd;
			} else {
				close(fd);
				dropped = true;
			}
		}
	}
	if (dropped)
		conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_UNEXPECTED,
				"more than %u file descriptors sent without requests that take "
				"them", CONN_FDS_MAX);
}

int conn_take_fd(struct conn *conn)
{
	int fd;

	if (conn->fd_count == 0)
		return -1;
	fd = conn->fds[0];
	memmove(conn->fds, conn->fds + 1, (conn->fd_count - 1) * sizeof(int));
	conn->fd_count--;
	return fd;
}

static void conn_arm_recv(struct conn *conn)
{
	struct conn_server *server = conn->server;
	int rc;

	if (conn->flags & (CONN_RECV_ARMED | CONN_READ_DONE | CONN_CLOSING))
		return;
	loop_op_init(&conn->recv_op, conn_recv_done, conn);
	if (server->options.pass_fds) {
		rc = conn_reserve(&conn->input, &conn->input_cap,
				  conn->input_len + CONN_RECVMSG_SPACE, CONN_INPUT_INITIAL);
		if (rc == 0) {
			memset(&conn->msg, 0, sizeof(conn->msg));
			conn->iov.iov_base = conn->input + conn->input_len;
			conn->iov.iov_len = conn->input_cap - conn->input_len;
			conn->msg.msg_iov = &conn->iov;
			conn->msg.msg_iovlen = 1;
			conn->msg.msg_control = conn->control.bytes;
			conn->msg.msg_controllen = sizeof(conn->control.bytes);
			rc = loop_recvmsg(server->loop, &conn->recv_op, conn->fd, &conn->msg,
					  MSG_CMSG_CLOEXEC);
		}
	} else {
		rc = loop_recv_multishot(server->loop, &conn->recv_op, conn->fd,
					 server->buffer_group);
	}
	if (rc < 0) {
		log_warn("conn", "cannot queue a recv server=%s error=\"%s\"", server->options.name,
			 strerror(-rc));
		conn_close(conn);
		return;
	}
	conn->flags |= CONN_RECV_ARMED;
}

static void conn_recv_done(struct loop_op *op, int res, uint32_t flags)
{
	struct conn *conn = op->owner;
	struct conn_server *server = conn->server;

	if (!(flags & LOOP_CQE_MORE))
		conn->flags &= ~CONN_RECV_ARMED;

	if (res >= 0 && server->options.pass_fds) {
		conn_take_control(conn);
		if (res > 0) {
			conn->input_len += (size_t)res;
			conn->last_active_ms = clock_monotonic_ms();
			if (!(conn->flags & (CONN_READ_DONE | CONN_CLOSING)))
				conn_parse(conn);
			res = 1; /* handled */
			goto rearm;
		}
	}
	if (res > 0) {
		uint16_t buffer_id = loop_cqe_buffer_id(flags);
		const uint8_t *data = loop_buf_data(server->loop, server->buffer_group, buffer_id);
		int rc = 0;

		assert(flags & LOOP_CQE_BUFFER);
		if (!(conn->flags & (CONN_READ_DONE | CONN_CLOSING))) {
			rc = conn_reserve(&conn->input, &conn->input_cap,
					  conn->input_len + (size_t)res, CONN_INPUT_INITIAL);
			if (rc == 0) {
				memcpy(conn->input + conn->input_len, data, (size_t)res);
				conn->input_len += (size_t)res;
			}
		}
		loop_buf_recycle(server->loop, server->buffer_group, buffer_id);
		conn->last_active_ms = clock_monotonic_ms();
		if (rc < 0)
			conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL, "out of memory");
		else if (!(conn->flags & (CONN_READ_DONE | CONN_CLOSING)))
			conn_parse(conn);
	} else if (res == 0) {
		/* EOF. Replies already queued still go out (a client may
		 * shut down its write side and wait for the answer). */
		if (conn->input_len && !(conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND)))
			conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED,
					"truncated frame: connection closed after %zu of its bytes",
					conn->input_len);
		conn->flags |= CONN_READ_DONE;
		conn_close_after_send(conn);
	} else if (res == -ENOBUFS) {
		/* The buffer ring ran dry; the multishot ended. Buffers are
		 * recycled as soon as their bytes are copied, so re-arm. */
	} else if (res != -ECANCELED) {
		if (res != -ECONNRESET)
			log_debug("conn", "recv failed server=%s error=\"%s\"", server->options.name,
				  strerror(-res));
		conn_close(conn);
	}

rearm:
	if (conn->flags & CONN_CLOSING)
		conn_maybe_finish(conn);
	else if (!(conn->flags & CONN_RECV_ARMED))
		conn_arm_recv(conn);
}

/* --- accepting. */

static void conn_accept_done(struct loop_op *op, int res, uint32_t flags);

static void conn_listener_arm(struct conn_listener *listener)
{
	struct conn_server *server = listener->server;

	if (listener->stopped || listener->armed)
		return;
	loop_op_init(&listener->accept_op, conn_accept_done, listener);
	if (loop_accept_multishot(server->loop, &listener->accept_op, listener->fd) == 0)
		listener->armed = true;
	else
		log_error("conn", "cannot queue an accept server=%s", server->options.name);
}

static void conn_accept_retry_done(struct loop_op *op, int res, uint32_t flags)
{
	struct conn_listener *listener = op->owner;

	(void)res;
	(void)flags;
	listener->retrying = false;
	conn_listener_arm(listener);
}

static void conn_refuse_busy(struct conn_server *server, int fd)
{
	uint8_t frame[256];
	ssize_t n;
	char text[96];

	snprintf(text, sizeof(text), "too many connections (limit %u); try again later",
		 server->options.max_connections);
	n = frame_pack_error(0, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY, text, frame, sizeof(frame));
	if (n > 0 && send(fd, frame, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		log_debug("conn", "cannot tell a refused client why error=\"%s\"", strerror(errno));
	close(fd);
	if (server->refused_busy++ % 1000 == 0)
		log_warn("conn", "connection limit reached server=%s limit=%u refused=%llu",
			 server->options.name, server->options.max_connections,
			 (unsigned long long)server->refused_busy);
}

static void conn_accept_done(struct loop_op *op, int res, uint32_t flags)
{
	struct conn_listener *listener = op->owner;
	struct conn_server *server = listener->server;

	if (!(flags & LOOP_CQE_MORE))
		listener->armed = false;

	if (res >= 0) {
		struct conn *conn;

		if (listener->stopped) {
			close(res);
		} else if (server->count >= server->options.max_connections) {
			conn_refuse_busy(server, res);
		} else if (!(conn = conn_get(server, res))) {
			log_error("conn", "out of memory for a connection server=%s",
				  server->options.name);
			close(res);
		} else {
			struct ucred cred;
			socklen_t len = sizeof(cred);

			if (getsockopt(res, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
				conn->peer_pid = cred.pid;
				conn->peer_uid = cred.uid;
			}
			conn_arm_recv(conn);
		}
	} else if (res != -ECANCELED) {
		/* EMFILE/ENFILE/ENOMEM: back off instead of spinning. */
		log_warn("conn", "accept failed server=%s error=\"%s\"", server->options.name,
			 strerror(-res));
		if (!listener->armed && !listener->stopped && !listener->retrying) {
			loop_op_init(&listener->retry_op, conn_accept_retry_done, listener);
			if (loop_timeout(server->loop, &listener->retry_op, CONN_ACCEPT_RETRY_MS) == 0)
				listener->retrying = true;
		}
		return;
	}
	if (!listener->armed && !listener->retrying)
		conn_listener_arm(listener);
}

int conn_server_listen(struct conn_server *server, int listen_fd)
{
	struct conn_listener *listener;

	if (server->listener_count == CONN_LISTENERS_MAX)
		return -ENOSPC;
	listener = &server->listeners[server->listener_count++];
	memset(listener, 0, sizeof(*listener));
	listener->server = server;
	listener->fd = listen_fd;
	conn_listener_arm(listener);
	return listener->armed ? 0 : -EBUSY;
}

void conn_server_stop_accepting(struct conn_server *server)
{
	for (unsigned i = 0; i < server->listener_count; i++) {
		struct conn_listener *listener = &server->listeners[i];

		listener->stopped = true;
		if (listener->armed)
			loop_cancel_op(server->loop, &listener->accept_op);
		if (listener->retrying)
			loop_cancel_op(server->loop, &listener->retry_op);
	}
}

bool conn_server_accepting(const struct conn_server *server)
{
	for (unsigned i = 0; i < server->listener_count; i++)
		if (server->listeners[i].armed || server->listeners[i].retrying)
			return true;
	return false;
}

/* --- idle sweep. */

static void conn_sweep_done(struct loop_op *op, int res, uint32_t flags)
{
	struct conn_server *server = op->owner;
	uint64_t now_ms = clock_monotonic_ms();

	(void)flags;
	server->sweep_armed = false;
	if (res == -ECANCELED || server->destroyed)
		return;
	for (struct conn *conn = server->open, *next; conn; conn = next) {
		next = conn->next;
		if (!(conn->flags & CONN_CLOSING) &&
		    now_ms - conn->last_active_ms >= server->options.idle_timeout_ms) {
			log_debug("conn", "closing idle connection server=%s pid=%d",
				  server->options.name, conn->peer_pid);
			conn_close(conn);
		}
	}
	loop_op_init(&server->sweep_op, conn_sweep_done, server);
	if (loop_timeout(server->loop, &server->sweep_op, CONN_SWEEP_MS) == 0)
		server->sweep_armed = true;
}

void conn_server_close_idle(struct conn_server *server, bool all)
{
	for (struct conn *conn = server->open, *next; conn; conn = next) {
		next = conn->next;
		if (all || (conn->input_len == 0 && conn->output_start == conn->output_end))
			conn_close(conn);
	}
	if (all && server->sweep_armed)
		loop_cancel_op(server->loop, &server->sweep_op);
}

/* --- server. */

int conn_server_create(struct conn_server **out, struct loop *loop,
		       const struct conn_handlers *handlers,
		       const struct conn_server_options *options, void *context)
{
	struct conn_server *server;
	int rc;

	assert(handlers && handlers->frame);
	server = calloc(1, sizeof(*server));
	if (!server)
		return -ENOMEM;
	server->loop = loop;
	server->handlers = *handlers;
	server->options = *options;
	server->context = context;
	if (!server->options.max_connections)
		server->options.max_connections = CONN_MAX_DEFAULT;
	if (!server->options.max_message_bytes)
		server->options.max_message_bytes = FRAME_MESSAGE_MAX_DEFAULT;
	if (!server->options.send_timeout_ms)
		server->options.send_timeout_ms = CONN_SEND_TIMEOUT_DEFAULT_MS;
	if (!server->options.output_max_bytes)
		server->options.output_max_bytes = CONN_OUTPUT_MAX_DEFAULT;
	if (!server->options.name)
		server->options.name = "conn";

	rc = loop_buf_group_create(loop, CONN_RECV_BUFFERS, CONN_RECV_BUFFER_SIZE,
				   &server->buffer_group);
	if (rc < 0) {
		free(server);
		return rc;
	}
	if (server->options.idle_timeout_ms) {
		loop_op_init(&server->sweep_op, conn_sweep_done, server);
		if (loop_timeout(loop, &server->sweep_op, CONN_SWEEP_MS) == 0)
			server->sweep_armed = true;
	}
	*out = server;
	return 0;
}

void conn_server_destroy(struct conn_server *server)
{
	if (!server)
		return;
	server->destroyed = true;
	/* Open connections here mean the loop is gone for good: their
	 * operations will never complete, so their memory is ours again. */
	while (server->open) {
		struct conn *conn = server->open;

		server->open = conn->next;
		close(conn->fd);
		free(conn->input);
		free(conn->output);
		free(conn->output_retired);
		free(conn);
	}
	while (server->free_list) {
		struct conn *conn = server->free_list;

		server->free_list = conn->next;
		free(conn->input);
		free(conn->output);
		free(conn);
	}
	free(server);
}

unsigned conn_server_count(const struct conn_server *server)
{
	return server->count;
}

void *conn_server_context(const struct conn_server *server)
{
	return server->context;
}

struct conn_server *conn_get_server(const struct conn *conn)
{
	return conn->server;
}

void conn_peer(const struct conn *conn, int *pid, unsigned *uid)
{
	*pid = conn->peer_pid;
	*uid = conn->peer_uid;
}

void conn_set_user(struct conn *conn, void *user)
{
	conn->user = user;
}

void *conn_user(const struct conn *conn)
{
	return conn->user;
}
