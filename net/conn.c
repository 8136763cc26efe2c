/* conn: framed connections on the loop, accepted from listeners, with limits. */
#include "net/conn.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_acked; glibc's lacks it */
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
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
#define CONN_PIPE_SIZE (1u << 20)	  /* asked of F_SETPIPE_SZ; the default if refused */
#define CONN_PIPES_IDLE_MAX 16u		  /* empty pipes a server keeps for the next payload */
#define CONN_FILE_BUFFER_SIZE (64u << 10) /* pread + send fallback, per connection */
#define CONN_DRY_WAKES_MAX 64u	  /* "room" in a row that splice() cannot use: io-wq then */
#define CONN_DRAIN_ON_LOOP_MAX 4u /* splicing connections up to which pipe -> socket is inline */

/*
 * The output queue.
 *
 * Frame bytes are packed into one buffer, output[output_start..output_end),
 * exactly as when there were only frames: while no file payload is queued a
 * single send takes every queued frame byte, short sends resumed.
 *
 * A file payload is an entry of a small ring (files[], CONN_FILES_MAX) that
 * remembers where it was queued in the frame stream: `mark`, the value of
 * output_end at conn_send_file. The wire order is therefore: frame bytes up
 * to the head payload's mark, the head payload, frame bytes up to the next
 * mark, and so on. Sending stops a frame send at the head's mark; when
 * output_start reaches it the payload goes out, and when its last byte is in
 * the socket it leaves the ring and frame bytes resume. Marks are offsets into
 * output[] like output_start, so they move with it when the buffer slides to
 * the front (conn_output_rebase); no mark is ever below output_start.
 *
 * Invariant (what keeps done callbacks out of the caller's stack): while the
 * connection is not closing, queued output means an output operation is in
 * flight (a frame send or the head payload's file operation). Every path that
 * queues output kicks the queue, and every completion kicks it again; a
 * submission the loop refuses closes the connection. So a connection closed
 * with payloads queued always has something in flight, and their done
 * callbacks run from that operation's completion (conn_finish), never from
 * conn_close, conn_send_frame or conn_send_file. The one exception is a
 * payload whose first submission fails inside conn_send_file: it is then the
 * only payload queued, and it is taken back (the call fails, no done).
 *
 * A payload moves by splice: file -> pipe (up to the pipe's capacity, at the
 * payload's file offset), then pipe -> socket until the pipe is empty, again
 * until every byte is out. One operation at a time per connection
 * (file_op), so the file fd is never in use once the head payload leaves the
 * ring. file -> pipe is an io_uring splice, on an io-wq worker: the file's
 * pages may have to come from the disk. pipe -> socket goes one of two ways:
 *
 * - While at most CONN_DRAIN_ON_LOOP_MAX connections of the server splice a
 *   payload: splice() here on the loop (conn_file_drain), the socket made
 *   non-blocking. It moves what the socket buffer takes and never waits; a
 *   full buffer arms a poll for room. This saves a worker's wake-up and its
 *   hand-back to the loop per pipeful, which is what limits one fast peer (P1: 2.29 -> 2.78
 *   GB/s, medians of 12, bench/README).
 * - Past that: an io_uring splice, the socket blocking, which an io-wq worker
 *   runs and blocks in until the peer has taken the pipeful. The transmit work
 *   of many connections then spreads over every core, where the loop would do
 *   it all on one (P8, 200 clients: 5.8-6.2 GB/s this way, 3.5-4.5 on the
 *   loop).
 *
 * A peer that stopped reading would leave either waiting for ever, so a
 * per-connection timer (timer_op) watches it and closes the connection after
 * send_timeout_ms without progress. Progress is a pipeful moving or, on TCP,
 * the peer acknowledging bytes (tcpi_bytes_acked, looked at four times per
 * timeout), so a slow reader is not taken for a stuck one; on a Unix socket a
 * pipeful must go within the timeout. A socket that reports room again and
 * again that splice() cannot use drains by io-wq from then on
 * (CONN_DRAIN_ASYNC). Closing cancels the poll or splice by its record (cancel
 * by fd would miss a splice still queued to a worker, whose file is not
 * assigned yet).
 *
 * Pipes come from a per-server pool and go back to it only empty: after any
 * error, or a close mid-payload, the pipe may hold bytes of a payload nobody
 * will send, so it is closed instead. A file that cannot splice (EINVAL,
 * ENOSYS: no splice_read, e.g. /proc files) is sent by pread into a
 * per-connection buffer + send for the rest of that payload, restarting at
 * the first byte not yet in the socket.
 */

/* conn.flags */
#define CONN_RECV_ARMED (1u << 0)  /* multishot recv in flight */
#define CONN_SENDING (1u << 1)	   /* a send in flight */
#define CONN_CLOSING (1u << 2)	   /* no new work; finish when nothing is in flight */
#define CONN_CLOSE_AFTER_SEND (1u << 3)
#define CONN_READ_DONE (1u << 4)   /* EOF or protocol error: read no more */
#define CONN_CANCELLED (1u << 5)   /* cancellation submitted */
#define CONN_FINISHED (1u << 6)	   /* back on the free list; late calls are no-ops */
#define CONN_FILE_BUSY (1u << 7)   /* file_op in flight */
#define CONN_TIMER_ARMED (1u << 8) /* timer_op in flight */
#define CONN_INPUT_QUEUED (1u << 9) /* input_op (conn_input_again) in flight */
#define CONN_IN_DATA (1u << 10)	    /* inside handlers->data: finishing waits */
#define CONN_IN_DONE (1u << 11)	    /* inside a payload's done: finishing and kicks wait */
#define CONN_IN_FRAME (1u << 12)    /* inside handlers->frame (conn_parse): finishing waits */
#define CONN_BUSY (1u << 13)	    /* conn_set_busy: not idle, whatever its buffers */
#define CONN_NONBLOCK (1u << 14)    /* O_NONBLOCK set: pipe -> socket by splice() on the loop */
#define CONN_DRAIN_ASYNC (1u << 15) /* pipe -> socket by io_uring (io-wq): see conn_file_drain */

/* The operations in flight that closing waits for. */
#define CONN_INFLIGHT                                                                     \
	(CONN_RECV_ARMED | CONN_SENDING | CONN_FILE_BUSY | CONN_TIMER_ARMED | CONN_INPUT_QUEUED)

/* One file payload queued behind the frame bytes before output[mark]. */
struct conn_file {
	conn_file_done_fn done;
	void *arg;
	int fd;		 /* borrowed until done runs */
	int error;	 /* this payload's own failure (read error, short file), or 0 */
	uint64_t offset; /* next byte of fd to read */
	uint32_t unsent; /* bytes not yet in the socket */
	size_t mark;	 /* frame bytes before output[mark] go out first */
};

struct conn_pipe {
	int read_fd, write_fd; /* -1 when there is none */
	uint32_t capacity;
};

/* How the head payload moves (conn.file_mode). */
enum conn_file_mode {
	CONN_FILE_IDLE,	  /* not started: mode chosen at its first step */
	CONN_FILE_SPLICE, /* file -> pipe -> socket */
	CONN_FILE_READ,	  /* pread into file_buffer, then send */
};

/* The file operation in flight or last completed (conn.file_step). */
enum conn_file_step {
	CONN_STEP_FILL,	 /* splice file -> pipe */
	CONN_STEP_DRAIN, /* splice pipe -> socket */
	CONN_STEP_READ,	 /* pread file -> file_buffer */
	CONN_STEP_SEND,	 /* send file_buffer -> socket */
};

struct conn {
	struct conn_server *server;
	struct conn *prev, *next; /* server's open list, or free list (next only) */
	int fd;
	unsigned flags;
	int peer_pid;
	unsigned peer_uid;
	uint64_t last_active_ms;
	void *user;
	int close_error; /* what queued payloads' done callbacks get */
	bool tcp;
	char peer_name[64];

	struct loop_op recv_op;
	struct loop_op send_op;
	struct loop_op file_op;
	struct loop_op timer_op;
	struct loop_op input_op; /* stream mode: conn_input_again's no-op */

	uint8_t *input;
	size_t input_len, input_cap;
	uint8_t *output;
	size_t output_start, output_end, output_cap;
	/* The buffer a send in flight reads from, after the output grew into a
	 * new one meanwhile: freed when that send completes. */
	uint8_t *output_retired;

	/* File payloads: a ring allocated at the first conn_send_file (kept
	 * with the struct), and how the head one is moving. */
	struct conn_file *files;
	unsigned files_head, files_count;
	enum conn_file_mode file_mode;
	enum conn_file_step file_step;
	struct conn_pipe pipe;	   /* held while the head payload splices */
	uint32_t pipe_bytes;	   /* in the pipe, not yet in the socket */
	unsigned dry_wakes;	   /* POLLOUT wake-ups in a row that moved nothing */
	uint64_t progress_ms;	   /* last sign of the peer taking file bytes (timer_op) */
	uint64_t bytes_acked;	   /* TCP: tcpi_bytes_acked when last looked at */
	uint8_t *file_buffer;	   /* CONN_FILE_BUFFER_SIZE, allocated at the first fallback */
	uint32_t file_buffer_len, file_buffer_pos;

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
	bool splice_supported; /* IORING_OP_SPLICE: else every payload goes by pread + send */
	bool pipe_size_warned; /* F_SETPIPE_SZ refused: logged once */
	unsigned splicing;     /* connections whose head payload goes by splice */
	uint64_t drains_on_loop, drains_by_workers; /* conn_server_drains */
	bool stream;	       /* handlers.data: bytes, not frames (see conn.h) */
	uint64_t refused_busy;

	struct conn_pipe pipes[CONN_PIPES_IDLE_MAX]; /* empty, for the next payload */
	unsigned pipe_count;
};

static void conn_recv_done(struct loop_op *op, int res, uint32_t flags);
static void conn_send_done(struct loop_op *op, int res, uint32_t flags);
static void conn_file_done(struct loop_op *op, int res, uint32_t flags);
static void conn_drain_ready(struct loop_op *op, int res, uint32_t flags);
static void conn_timer_done(struct loop_op *op, int res, uint32_t flags);
static void conn_input_again_done(struct loop_op *op, int res, uint32_t flags);
static int conn_output_kick(struct conn *conn);
static int conn_file_step(struct conn *conn);
static void conn_maybe_finish(struct conn *conn);

/* --- buffers. */

/* Grows *buf to hold `need` bytes, doubling, never past `max` (>= need). */
static int conn_reserve_max(uint8_t **buf, size_t *cap, size_t need, size_t initial, size_t max)
{
	size_t new_cap = *cap ? *cap : initial;
	uint8_t *grown;

	assert(need <= max);
	if (need <= *cap)
		return 0;
	while (new_cap < need)
		new_cap *= 2;
	if (new_cap > max)
		new_cap = max;
	grown = realloc(*buf, new_cap);
	if (!grown)
		return -ENOMEM;
	*buf = grown;
	*cap = new_cap;
	return 0;
}

static int conn_reserve(uint8_t **buf, size_t *cap, size_t need, size_t initial)
{
	return conn_reserve_max(buf, cap, need, initial, SIZE_MAX);
}

/* --- pipes for splicing. */

static void conn_pipe_close(struct conn_pipe *pipe)
{
	if (pipe->read_fd >= 0) {
		close(pipe->read_fd);
		close(pipe->write_fd);
	}
	pipe->read_fd = pipe->write_fd = -1;
	pipe->capacity = 0;
}

/* A pipe from the pool, or a new one (as large as the kernel allows us). */
static int conn_pipe_get(struct conn_server *server, struct conn_pipe *out)
{
	int fds[2], size;

	if (server->pipe_count) {
		*out = server->pipes[--server->pipe_count];
		return 0;
	}
	size = loop_pipe_open(fds, CONN_PIPE_SIZE, &server->pipe_size_warned, server->options.name);
	if (size < 0)
		return size;
	out->read_fd = fds[0];
	out->write_fd = fds[1];
	out->capacity = (uint32_t)size;
	return 0;
}

/* Takes back a pipe that is known to be empty; any other must be closed. */
static void conn_pipe_put(struct conn_server *server, struct conn_pipe *pipe)
{
	assert(pipe->read_fd >= 0);
	if (server->pipe_count < CONN_PIPES_IDLE_MAX && !server->destroyed)
		server->pipes[server->pipe_count++] = *pipe;
	else
		conn_pipe_close(pipe);
	pipe->read_fd = pipe->write_fd = -1;
	pipe->capacity = 0;
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
	conn->close_error = -EPIPE;
	conn->tcp = false;
	conn->peer_name[0] = '\0';
	conn->input_len = 0;
	conn->output_start = conn->output_end = 0;
	conn->files_head = conn->files_count = 0;
	conn->file_mode = CONN_FILE_IDLE;
	conn->pipe.read_fd = conn->pipe.write_fd = -1;
	conn->pipe.capacity = 0;
	conn->pipe_bytes = 0;
	conn->last_active_ms = clock_monotonic_ms();
	/* Re-initialising bumps the generations: a late completion for the
	 * previous user of this struct is recognised and dropped. */
	loop_op_init(&conn->recv_op, conn_recv_done, conn);
	loop_op_init(&conn->send_op, conn_send_done, conn);
	loop_op_init(&conn->file_op, conn_file_done, conn);
	loop_op_init(&conn->timer_op, conn_timer_done, conn);
	loop_op_init(&conn->input_op, conn_input_again_done, conn);

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
	assert(!(conn->flags & CONN_INFLIGHT));
	assert(conn->files_count == 0 && conn->pipe.read_fd < 0);
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

static bool conn_output_empty(const struct conn *conn)
{
	return conn->output_start == conn->output_end && conn->files_count == 0;
}

bool conn_output_pending(const struct conn *conn)
{
	return !conn_output_empty(conn);
}

static struct conn_file *conn_file_head(struct conn *conn)
{
	assert(conn->files_count > 0);
	return &conn->files[conn->files_head];
}

/* file_mode, and the server's count of connections splicing a payload. */
static void conn_file_mode_set(struct conn *conn, enum conn_file_mode mode)
{
	if (conn->file_mode == CONN_FILE_SPLICE)
		conn->server->splicing--;
	if (mode == CONN_FILE_SPLICE)
		conn->server->splicing++;
	conn->file_mode = mode;
}

/* Takes the head payload out of the ring; the caller runs its done. */
static struct conn_file conn_file_pop(struct conn *conn)
{
	struct conn_file file = *conn_file_head(conn);

	conn->files_head = (conn->files_head + 1) % CONN_FILES_MAX;
	conn->files_count--;
	conn_file_mode_set(conn, CONN_FILE_IDLE);
	return file;
}

/* Nothing is in flight: runs every queued done, then handlers->closed. */
static void conn_finish(struct conn *conn)
{
	assert(!(conn->flags & CONN_INFLIGHT));
	/* The struct stays valid (free list) until reused by an accept, which
	 * cannot happen before the callback that finished it returns. */
	conn->flags |= CONN_FINISHED;
	close(conn->fd);
	/* Closed mid-payload: the pipe may hold bytes nobody will send. */
	conn_pipe_close(&conn->pipe);
	conn->pipe_bytes = 0;
	while (conn->files_count) {
		struct conn_file file = conn_file_pop(conn);

		file.done(conn, file.arg, file.error ? file.error : conn->close_error);
	}
	if (conn->server->handlers.closed)
		conn->server->handlers.closed(conn);
	conn_put(conn);
}

static void conn_maybe_finish(struct conn *conn)
{
	if (!(conn->flags & CONN_CLOSING) ||
	    (conn->flags & (CONN_INFLIGHT | CONN_FINISHED | CONN_IN_DATA | CONN_IN_DONE |
			    CONN_IN_FRAME)))
		return;
	conn_finish(conn);
}

void conn_close(struct conn *conn)
{
	struct loop *loop = conn->server->loop;

	if (conn->flags & (CONN_CLOSING | CONN_FINISHED))
		return;
	conn->flags |= CONN_CLOSING | CONN_READ_DONE;
	if ((conn->flags & (CONN_RECV_ARMED | CONN_SENDING | CONN_FILE_BUSY)) &&
	    !(conn->flags & CONN_CANCELLED)) {
		conn->flags |= CONN_CANCELLED;
		if (loop_cancel_fd(loop, conn->fd) < 0)
			/* Could not queue the cancel: shutting the socket down
			 * completes the recv (EOF) and fails the send. */
			shutdown(conn->fd, SHUT_RDWR);
		/* A splice waiting for an io-wq worker has no file yet for
		 * the cancel by fd to match: cancel it (or the poll for room)
		 * by its record. A splice from the file into the pipe needs no
		 * cancelling (the pipe is empty, it cannot block on it) but
		 * costs nothing either. */
		if ((conn->flags & CONN_FILE_BUSY) && loop_cancel_op(loop, &conn->file_op) < 0 &&
		    conn->file_step == CONN_STEP_DRAIN)
			shutdown(conn->fd, SHUT_RDWR);
	}
	if (conn->flags & CONN_TIMER_ARMED)
		/* If this cannot be queued the timer still fires, within
		 * send_timeout_ms, and the connection finishes then. */
		loop_cancel_op(loop, &conn->timer_op);
	conn_maybe_finish(conn);
}

/* Closes because of a socket error or timeout that queued payloads should see. */
static void conn_close_error(struct conn *conn, int error)
{
	assert(error < 0);
	if (conn->flags & CONN_CLOSING)
		return;
	conn->close_error = error;
	if (error == -ETIMEDOUT) {
		/* The peer stopped reading: on TCP a plain close would leave
		 * the socket, its full send buffer and the FIN queued behind
		 * it, to the kernel until the peer's window opens. Reset it. */
		struct linger linger = { .l_onoff = 1, .l_linger = 0 };

		(void)setsockopt(conn->fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
	}
	conn_close(conn);
}

void conn_close_after_send(struct conn *conn)
{
	conn->flags |= CONN_READ_DONE | CONN_CLOSE_AFTER_SEND;
	if (conn->flags & CONN_RECV_ARMED)
		loop_cancel_op(conn->server->loop, &conn->recv_op);
	if (conn_output_empty(conn) && !(conn->flags & (CONN_SENDING | CONN_FILE_BUSY)))
		conn_close(conn);
}

/* --- output: frame bytes. */

/* Moves output offsets and the payloads' marks `by` bytes down. */
static void conn_output_rebase(struct conn *conn, size_t by)
{
	for (unsigned i = 0; i < conn->files_count; i++) {
		struct conn_file *file = &conn->files[(conn->files_head + i) % CONN_FILES_MAX];

		assert(file->mark >= by && file->mark <= conn->output_end);
		file->mark -= by;
	}
	conn->output_start -= by;
	conn->output_end -= by;
}

static int conn_output_reserve(struct conn *conn, size_t bytes)
{
	size_t limit = conn->server->options.output_max_bytes;

	/* Slide what is left to the front before growing. */
	if (conn->output_start > 0 && !(conn->flags & CONN_SENDING)) {
		size_t pending = conn->output_end - conn->output_start;

		memmove(conn->output, conn->output + conn->output_start, pending);
		conn_output_rebase(conn, conn->output_start);
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

/* After an output completion: what is next, or the close that waited for it. */
static void conn_output_progress(struct conn *conn)
{
	int rc;

	if (conn->flags & CONN_CLOSING) {
		conn_maybe_finish(conn);
		return;
	}
	if (conn->output_start == conn->output_end && conn->output_start > 0)
		conn_output_rebase(conn, conn->output_start);
	if (conn_output_empty(conn)) {
		if (conn->flags & CONN_CLOSE_AFTER_SEND)
			conn_close(conn);
		return;
	}
	rc = conn_output_kick(conn);
	if (rc < 0) {
		log_warn("conn", "cannot queue a send server=%s peer=%s error=\"%s\"",
			 conn->server->options.name, conn->peer_name, strerror(-rc));
		if (conn->files_count && conn_file_head(conn)->mark == conn->output_start)
			conn_file_head(conn)->error = rc; /* its next step failed */
		conn_close(conn);
	}
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
			log_debug("conn", "send failed server=%s peer=%s error=\"%s\"",
				  conn->server->options.name, conn->peer_name,
				  res == -ECANCELED ? "send timed out" : strerror(-res));
		conn_close_error(conn, res == -ECANCELED ? -ETIMEDOUT : res < 0 ? res : -EPIPE);
		return;
	}
	conn->output_start += (size_t)res;
	assert(conn->output_start <= conn->output_end);
	assert(conn->files_count == 0 || conn->output_start <= conn_file_head(conn)->mark);
	conn->last_active_ms = clock_monotonic_ms();
	conn_output_progress(conn); /* the rest of a short send, or a payload */
}

/* --- output: file payloads (see "The output queue" above). */

/* How often the timer looks for progress of a pipe -> socket splice. */
static uint64_t conn_timer_period_ms(const struct conn *conn)
{
	uint64_t timeout_ms = conn->server->options.send_timeout_ms;

	return conn->tcp && timeout_ms >= 4 ? timeout_ms / 4 : timeout_ms;
}

static void conn_timer_arm(struct conn *conn, uint64_t timeout_ms)
{
	if (conn->flags & CONN_TIMER_ARMED)
		return;
	loop_op_init(&conn->timer_op, conn_timer_done, conn);
	/* Not armed (ring full): this splice goes unwatched; the next one
	 * tries again. */
	if (loop_timeout(conn->server->loop, &conn->timer_op, timeout_ms) == 0)
		conn->flags |= CONN_TIMER_ARMED;
}

/* TCP: has the peer acknowledged bytes since we last looked? */
static bool conn_peer_took_bytes(struct conn *conn)
{
	struct tcp_info info;
	socklen_t len = sizeof(info);

	if (!conn->tcp)
		return false;
	memset(&info, 0, sizeof(info));
	if (getsockopt(conn->fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0 ||
	    len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(info.tcpi_bytes_acked) ||
	    info.tcpi_bytes_acked == conn->bytes_acked)
		return false;
	conn->bytes_acked = info.tcpi_bytes_acked;
	return true;
}

static void conn_timer_done(struct loop_op *op, int res, uint32_t flags)
{
	struct conn *conn = op->owner;
	uint64_t timeout_ms = conn->server->options.send_timeout_ms;
	uint64_t now_ms, waited_ms, period_ms;

	(void)res;
	(void)flags;
	conn->flags &= ~CONN_TIMER_ARMED;
	if (conn->flags & CONN_CLOSING) {
		conn_maybe_finish(conn);
		return;
	}
	if (!(conn->flags & CONN_FILE_BUSY) || conn->file_step != CONN_STEP_DRAIN)
		return; /* nothing stuck: armed again by the next splice */
	now_ms = clock_monotonic_ms();
	if (conn_peer_took_bytes(conn))
		conn->progress_ms = conn->last_active_ms = now_ms; /* not idle either */
	waited_ms = now_ms - conn->progress_ms;
	if (waited_ms < timeout_ms) {
		period_ms = conn_timer_period_ms(conn);
		conn_timer_arm(conn, timeout_ms - waited_ms < period_ms ? timeout_ms - waited_ms
									 : period_ms);
		return;
	}
	log_debug("conn", "send failed server=%s peer=%s error=\"send timed out\"",
		  conn->server->options.name, conn->peer_name);
	conn_close_error(conn, -ETIMEDOUT);
}

/* O_NONBLOCK on or off the connection's socket: true if it is as asked. */
static bool conn_set_nonblock(struct conn *conn, bool on)
{
	int fl;

	if (!(conn->flags & CONN_NONBLOCK) == !on)
		return true;
	fl = fcntl(conn->fd, F_GETFL);
	if (fl < 0 || fcntl(conn->fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) < 0)
		return false;
	conn->flags ^= CONN_NONBLOCK;
	return true;
}

/* The head payload's pipe -> socket step, with splice() here on the loop
 * ("The output queue" above): moves what the socket takes now, and calls
 * conn_file_done with it, or waits for room. Only ever reached from a
 * completion (the fill's, the poll's), so a payload's done callback still
 * never runs in conn_send_file's caller's stack. */
static int conn_file_drain(struct conn *conn)
{
	struct conn_server *server = conn->server;
	ssize_t n;
	int rc;

	assert(conn->flags & CONN_NONBLOCK);
	conn->file_step = CONN_STEP_DRAIN;
	conn->progress_ms = clock_monotonic_ms();
	n = splice(conn->pipe.read_fd, NULL, conn->fd, NULL, conn->pipe_bytes,
		   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		if (++conn->dry_wakes > CONN_DRY_WAKES_MAX) {
			/* Room reported, none usable: never spin on it. */
			log_warn("conn", "socket reports room that splice cannot use, draining "
				 "by io-wq server=%s peer=%s", server->options.name,
				 conn->peer_name);
			conn->flags |= CONN_DRAIN_ASYNC;
			if (!conn_set_nonblock(conn, false))
				return -errno;
			return conn_file_step(conn);
		}
		loop_op_init(&conn->file_op, conn_drain_ready, conn);
		rc = loop_poll(server->loop, &conn->file_op, conn->fd, POLLOUT);
		if (rc < 0)
			return rc;
		conn->flags |= CONN_FILE_BUSY;
		conn_timer_arm(conn, conn_timer_period_ms(conn));
		return 0;
	}
	conn->dry_wakes = 0;
	if (n > 0)
		server->drains_on_loop++;
	conn->flags |= CONN_FILE_BUSY; /* as if an operation completed: */
	conn_file_done(&conn->file_op, n < 0 ? -errno : (int)n, 0);
	return 0;
}

/* Room in the socket (or an error, which the splice then meets). */
static void conn_drain_ready(struct loop_op *op, int res, uint32_t flags)
{
	struct conn *conn = op->owner;
	int rc;

	(void)flags;
	conn->flags &= ~CONN_FILE_BUSY;
	if (conn->flags & CONN_CLOSING) {
		conn_maybe_finish(conn);
		return;
	}
	if (res < 0) {
		conn_close_error(conn, res);
		return;
	}
	rc = conn_file_step(conn);
	if (rc < 0) {
		conn_file_head(conn)->error = rc;
		conn_close(conn);
	}
}

/* Submits the head payload's next operation. */
static int conn_file_step(struct conn *conn)
{
	struct conn_server *server = conn->server;
	struct conn_file *file = conn_file_head(conn);
	unsigned timeout_ms = server->options.send_timeout_ms;
	uint32_t len;
	bool drain;
	int rc;

	assert(!(conn->flags & (CONN_FILE_BUSY | CONN_SENDING | CONN_CLOSING)));
	assert(file->unsent > 0 && file->mark == conn->output_start);
	if (conn->file_mode == CONN_FILE_IDLE) {
		conn_file_mode_set(conn, CONN_FILE_READ);
		if (server->splice_supported) {
			rc = conn_pipe_get(server, &conn->pipe);
			if (rc == 0)
				conn_file_mode_set(conn, CONN_FILE_SPLICE);
			else
				log_debug("conn", "no pipe, sending by read server=%s error=\"%s\"",
					  server->options.name, strerror(-rc));
		}
		conn->pipe_bytes = 0;
		conn->file_buffer_len = conn->file_buffer_pos = 0;
	}

	/* pipe -> socket: on the loop while few connections splice; past
	 * that on io-wq (blocking socket), whose workers use every core. A
	 * socket whose mode cannot change drains the way it is. */
	drain = conn->file_mode == CONN_FILE_SPLICE && conn->pipe_bytes > 0;
	if (drain) {
		bool on_loop = !(conn->flags & CONN_DRAIN_ASYNC) &&
			       server->splicing <= CONN_DRAIN_ON_LOOP_MAX;

		if (on_loop ? conn_set_nonblock(conn, true) : !conn_set_nonblock(conn, false))
			return conn_file_drain(conn);
	}
	loop_op_init(&conn->file_op, conn_file_done, conn);
	if (drain) {
		conn->file_step = CONN_STEP_DRAIN;
		conn->progress_ms = clock_monotonic_ms();
		rc = loop_splice(server->loop, &conn->file_op, conn->pipe.read_fd, -1, conn->fd, -1,
				 conn->pipe_bytes);
		if (rc == 0) {
			server->drains_by_workers++;
			conn_timer_arm(conn, conn_timer_period_ms(conn));
		}
	} else if (conn->file_mode == CONN_FILE_SPLICE) {
		len = file->unsent < conn->pipe.capacity ? file->unsent : conn->pipe.capacity;
		conn->file_step = CONN_STEP_FILL;
		rc = loop_splice(server->loop, &conn->file_op, file->fd, (int64_t)file->offset,
				 conn->pipe.write_fd, -1, len);
	} else if (conn->file_buffer_pos < conn->file_buffer_len) {
		conn->file_step = CONN_STEP_SEND;
		rc = loop_send(server->loop, &conn->file_op, conn->fd,
			       conn->file_buffer + conn->file_buffer_pos,
			       conn->file_buffer_len - conn->file_buffer_pos, timeout_ms);
	} else {
		if (!conn->file_buffer) {
			conn->file_buffer = malloc(CONN_FILE_BUFFER_SIZE);
			if (!conn->file_buffer)
				return -ENOMEM;
		}
		len = file->unsent < CONN_FILE_BUFFER_SIZE ? file->unsent : CONN_FILE_BUFFER_SIZE;
		conn->file_step = CONN_STEP_READ;
		rc = loop_read(server->loop, &conn->file_op, file->fd, conn->file_buffer, len,
			       (int64_t)file->offset);
	}
	if (rc < 0)
		return rc;
	conn->flags |= CONN_FILE_BUSY;
	return 0;
}

/* The head payload cannot go on: the connection closes, done gets `error`. */
static void conn_file_fail(struct conn *conn, int error)
{
	struct conn_file *file = conn_file_head(conn);

	log_warn("conn", "cannot send a file payload server=%s peer=%s offset=%llu unsent=%u "
		 "error=\"%s\"", conn->server->options.name, conn->peer_name,
		 (unsigned long long)file->offset, file->unsent,
		 error == -ENODATA ? "the file ends before the payload" : strerror(-error));
	file->error = error;
	conn_close(conn);
}

/* The file cannot splice: the rest of this payload goes by pread + send,
 * from the first byte that is not in the socket yet. */
static void conn_file_fallback(struct conn *conn)
{
	struct conn_file *file = conn_file_head(conn);

	log_debug("conn", "file cannot splice, sending by read server=%s peer=%s",
		  conn->server->options.name, conn->peer_name);
	file->offset -= conn->pipe_bytes;
	if (conn->pipe_bytes == 0)
		conn_pipe_put(conn->server, &conn->pipe);
	else
		conn_pipe_close(&conn->pipe); /* holds the bytes just rewound */
	conn->pipe_bytes = 0;
	conn_file_mode_set(conn, CONN_FILE_READ);
	conn->file_buffer_len = conn->file_buffer_pos = 0;
}

/* The head payload is wholly in the socket. */
static void conn_file_sent(struct conn *conn)
{
	struct conn_file file;

	assert(conn->pipe_bytes == 0);
	if (conn->pipe.read_fd >= 0)
		conn_pipe_put(conn->server, &conn->pipe);
	file = conn_file_pop(conn);
	/* The done may queue more or close: nothing starts and nothing is
	 * finished under it; conn_file_done moves the output on after it. */
	conn->flags |= CONN_IN_DONE;
	file.done(conn, file.arg, 0);
	conn->flags &= ~CONN_IN_DONE;
}

static void conn_file_done(struct loop_op *op, int res, uint32_t flags)
{
	struct conn *conn = op->owner;
	struct conn_file *file;

	(void)flags;
	conn->flags &= ~CONN_FILE_BUSY;
	if (conn->flags & CONN_CLOSING) {
		conn_maybe_finish(conn);
		return;
	}
	file = conn_file_head(conn);
	switch (conn->file_step) {
	case CONN_STEP_FILL:
		if (res == -EINVAL || res == -ENOSYS) {
			conn_file_fallback(conn);
			break;
		}
		if (res <= 0) {
			conn_file_fail(conn, res == 0 ? -ENODATA : res);
			return;
		}
		assert((uint32_t)res <= file->unsent && (uint32_t)res <= conn->pipe.capacity);
		conn->pipe_bytes = (uint32_t)res;
		file->offset += (uint64_t)res;
		break;
	case CONN_STEP_READ:
		if (res <= 0) {
			conn_file_fail(conn, res == 0 ? -ENODATA : res);
			return;
		}
		assert((uint32_t)res <= file->unsent && (uint32_t)res <= CONN_FILE_BUFFER_SIZE);
		conn->file_buffer_len = (uint32_t)res;
		conn->file_buffer_pos = 0;
		file->offset += (uint64_t)res;
		break;
	case CONN_STEP_DRAIN:
	case CONN_STEP_SEND:
		if ((res == -EINVAL || res == -ENOSYS) && conn->file_step == CONN_STEP_DRAIN) {
			conn_file_fallback(conn); /* the socket cannot take a splice */
			break;
		}
		if (res <= 0) {
			/* -ECANCELED: the linked send timeout (pread path). */
			res = res == -ECANCELED ? -ETIMEDOUT : res < 0 ? res : -EIO;
			if (res != -EPIPE && res != -ECONNRESET)
				log_debug("conn", "send failed server=%s peer=%s error=\"%s\"",
					  conn->server->options.name, conn->peer_name,
					  strerror(-res));
			conn_close_error(conn, res);
			return;
		}
		assert((uint32_t)res <= file->unsent);
		file->unsent -= (uint32_t)res;
		if (conn->file_step == CONN_STEP_DRAIN) {
			assert((uint32_t)res <= conn->pipe_bytes);
			conn->pipe_bytes -= (uint32_t)res;
		} else {
			conn->file_buffer_pos += (uint32_t)res;
			assert(conn->file_buffer_pos <= conn->file_buffer_len);
		}
		conn->last_active_ms = clock_monotonic_ms();
		if (file->unsent == 0)
			conn_file_sent(conn); /* may close, or queue more */
		break;
	}
	conn_output_progress(conn);
}

/* Starts whatever is at the head of the output if nothing is in flight. */
static int conn_output_kick(struct conn *conn)
{
	struct conn_server *server = conn->server;
	size_t end = conn->output_end;
	int rc;

	if (conn->flags & (CONN_SENDING | CONN_FILE_BUSY | CONN_CLOSING | CONN_IN_DONE))
		return 0;
	if (conn->files_count) {
		end = conn_file_head(conn)->mark;
		assert(end >= conn->output_start);
		if (end == conn->output_start)
			return conn_file_step(conn);
	}
	if (conn->output_start == end)
		return 0;
	/* Frame bytes up to the head payload, or all of them when no payload
	 * is queued: one send. */
	loop_op_init(&conn->send_op, conn_send_done, conn);
	rc = loop_send(server->loop, &conn->send_op, conn->fd, conn->output + conn->output_start,
		       end - conn->output_start, server->options.send_timeout_ms);
	if (rc < 0)
		return rc;
	conn->flags |= CONN_SENDING;
	return 0;
}

int conn_send_file(struct conn *conn, int fd, uint64_t offset, uint32_t length,
		   conn_file_done_fn done, void *arg)
{
	struct conn_file *file;
	int rc;

	assert(done);
	if (conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND))
		return -EPIPE;
	if (fd < 0 || length == 0 || offset > (uint64_t)INT64_MAX - length)
		return -EINVAL;
	if (conn->files_count == CONN_FILES_MAX)
		return -ENOBUFS;
	if (!conn->files) {
		conn->files = calloc(CONN_FILES_MAX, sizeof(*conn->files));
		if (!conn->files)
			return -ENOMEM;
	}
	file = &conn->files[(conn->files_head + conn->files_count) % CONN_FILES_MAX];
	file->done = done;
	file->arg = arg;
	file->fd = fd;
	file->error = 0;
	file->offset = offset;
	file->unsent = length;
	file->mark = conn->output_end;
	conn->files_count++;

	rc = conn_output_kick(conn);
	if (rc < 0) {
		/* Only a payload at the head, the only one queued, starts
		 * here (see the invariant above): take it back, no done. */
		assert(conn->files_count == 1 && !(conn->flags & CONN_FILE_BUSY));
		if (conn->pipe.read_fd >= 0)
			conn_pipe_put(conn->server, &conn->pipe); /* never filled */
		conn->files_count = 0;
		conn_file_mode_set(conn, CONN_FILE_IDLE);
		log_warn("conn", "cannot queue a file payload server=%s peer=%s error=\"%s\"",
			 conn->server->options.name, conn->peer_name, strerror(-rc));
		conn_close(conn);
		return rc;
	}
	return 0;
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
		log_warn("conn", "peer does not read its replies, closing server=%s peer=%s",
			 conn->server->options.name, conn->peer_name);
		conn_close(conn);
		return rc;
	}
	n = frame_pack(type, msg, conn->output + conn->output_end,
		       conn->output_cap - conn->output_end);
	if (n < 0)
		return (int)n;
	conn->output_end += (size_t)n;
	rc = conn_output_kick(conn);
	if (rc < 0) {
		log_warn("conn", "cannot queue a send server=%s peer=%s error=\"%s\"",
			 conn->server->options.name, conn->peer_name, strerror(-rc));
		conn_close(conn);
	}
	return 0;
}

int conn_send_bytes(struct conn *conn, const void *data, size_t len)
{
	int rc;

	if (conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND))
		return -EPIPE;
	if (len == 0)
		return 0;
	rc = conn_output_reserve(conn, len);
	if (rc < 0) {
		log_warn("conn", "%s, closing server=%s peer=%s",
			 rc == -ENOBUFS ? "peer does not read its replies" : "out of memory for output",
			 conn->server->options.name, conn->peer_name);
		conn_close(conn);
		return rc;
	}
	memcpy(conn->output + conn->output_end, data, len);
	conn->output_end += len;
	rc = conn_output_kick(conn);
	if (rc < 0) {
		log_warn("conn", "cannot queue a send server=%s peer=%s error=\"%s\"",
			 conn->server->options.name, conn->peer_name, strerror(-rc));
		conn_close(conn);
		return rc;
	}
	return 0;
}

/* Queues an Error frame; false if the output limit or memory refused it. */
static bool conn_queue_error(struct conn *conn, uint64_t id, Ringfly__ErrorCode code,
			     const char *text, size_t text_size)
{
	ssize_t n;

	if (conn_output_reserve(conn, FRAME_HEADER_SIZE + text_size + 32) < 0)
		return false;
	n = frame_pack_error(id, code, text, conn->output + conn->output_end,
			     conn->output_cap - conn->output_end);
	if (n > 0)
		conn->output_end += (size_t)n;
	return true;
}

void conn_send_error(struct conn *conn, uint64_t id, Ringfly__ErrorCode code, const char *fmt, ...)
{
	char text[1024];
	va_list ap;

	if (conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND))
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	log_debug("conn", "protocol error server=%s peer=%s reason=\"%s\"",
		  conn->server->options.name, conn->peer_name, text);
	(void)conn_queue_error(conn, id, code, text, sizeof(text));
	if (conn_output_kick(conn) < 0) {
		conn_close(conn);
		return;
	}
	conn_close_after_send(conn);
}

void conn_reply_error(struct conn *conn, uint64_t id, Ringfly__ErrorCode code, const char *fmt,
		      ...)
{
	char text[1024];
	va_list ap;
	int rc;

	if (conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND))
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (!conn_queue_error(conn, id, code, text, sizeof(text))) {
		log_warn("conn", "peer does not read its replies, closing server=%s peer=%s",
			 conn->server->options.name, conn->peer_name);
		conn_close(conn);
		return;
	}
	rc = conn_output_kick(conn);
	if (rc < 0) {
		log_warn("conn", "cannot queue a send server=%s peer=%s error=\"%s\"",
			 conn->server->options.name, conn->peer_name, strerror(-rc));
		conn_close(conn);
	}
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

	/* A close from inside (a handler, or a failure below) must not have the
	 * connection finished, its input freed, under this loop: it waits. */
	conn->flags |= CONN_IN_FRAME;
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
	conn->flags &= ~CONN_IN_FRAME;
	conn_maybe_finish(conn); /* a close from inside waited for the loop */
}

/* --- input: stream mode. */

/* Offers the buffered input to handlers->data; keeps what it did not consume. */
static void conn_offer_input(struct conn *conn)
{
	ssize_t used;

	assert(conn->server->stream);
	if (conn->input_len == 0 || (conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND)))
		return;
	conn->flags |= CONN_IN_DATA;
	used = conn->server->handlers.data(conn, conn->input, conn->input_len);
	conn->flags &= ~CONN_IN_DATA;
	if (used < 0) {
		conn_close_after_send(conn);
	} else if (used > 0) {
		assert((size_t)used <= conn->input_len);
		memmove(conn->input, conn->input + used, conn->input_len - (size_t)used);
		conn->input_len -= (size_t)used;
	}
	conn_maybe_finish(conn); /* a close from inside data waited for it to return */
}

static void conn_input_again_done(struct loop_op *op, int res, uint32_t flags)
{
	struct conn *conn = op->owner;

	(void)res;
	(void)flags;
	conn->flags &= ~CONN_INPUT_QUEUED;
	if (conn->flags & CONN_CLOSING) {
		conn_maybe_finish(conn);
		return;
	}
	conn_offer_input(conn);
}

void conn_input_again(struct conn *conn)
{
	assert(conn->server->stream);
	if (conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND | CONN_FINISHED | CONN_INPUT_QUEUED))
		return;
	/* Inside data the input still holds what data is about to consume. */
	if (conn->input_len == 0 && !(conn->flags & CONN_IN_DATA))
		return;
	loop_op_init(&conn->input_op, conn_input_again_done, conn);
	if (loop_nop(conn->server->loop, &conn->input_op) < 0) {
		log_warn("conn", "cannot queue a no-op server=%s peer=%s", conn->server->options.name,
			 conn->peer_name);
		conn_close(conn);
		return;
	}
	conn->flags |= CONN_INPUT_QUEUED;
}

/* Appends received bytes to the input (stream mode: within max_message_bytes).
 * 0, -EMSGSIZE or -ENOMEM. */
static int conn_input_append(struct conn *conn, const uint8_t *data, size_t len)
{
	struct conn_server *server = conn->server;
	size_t max = SIZE_MAX;
	int rc;

	if (server->stream) {
		max = server->options.max_message_bytes;
		if (len > max - conn->input_len)
			return -EMSGSIZE;
	}
	rc = conn_reserve_max(&conn->input, &conn->input_cap, conn->input_len + len,
			      CONN_INPUT_INITIAL, max);
	if (rc < 0)
		return rc;
	memcpy(conn->input + conn->input_len, data, len);
	conn->input_len += len;
	return 0;
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
		if (!(conn->flags & (CONN_READ_DONE | CONN_CLOSING)))
			rc = conn_input_append(conn, data, (size_t)res);
		loop_buf_recycle(server->loop, server->buffer_group, buffer_id);
		conn->last_active_ms = clock_monotonic_ms();
		if (rc == -EMSGSIZE) {
			log_debug("conn", "input over its limit, closing server=%s peer=%s limit=%u",
				  server->options.name, conn->peer_name,
				  server->options.max_message_bytes);
			conn_close(conn);
		} else if (rc < 0 && server->stream) {
			log_warn("conn", "out of memory for input, closing server=%s peer=%s",
				 server->options.name, conn->peer_name);
			conn_close(conn);
		} else if (rc < 0) {
			conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL, "out of memory");
		} else if (!(conn->flags & (CONN_READ_DONE | CONN_CLOSING))) {
			if (server->stream)
				conn_offer_input(conn);
			else
				conn_parse(conn);
		}
	} else if (res == 0) {
		/* EOF. Replies already queued still go out (a client may
		 * shut down its write side and wait for the answer). */
		if (conn->input_len && !server->stream &&
		    !(conn->flags & (CONN_CLOSING | CONN_CLOSE_AFTER_SEND)))
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
			log_debug("conn", "recv failed server=%s peer=%s error=\"%s\"",
				  server->options.name, conn->peer_name, strerror(-res));
		conn_close_error(conn, res);
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

/*
 * Names the peer of socket fd in name[size] ("ip:port", "[v6]:port", "pid N
 * uid M"); a Unix peer's credentials go to *cred (pid 0 when not known).
 * Returns the address family (AF_UNSPEC when the peer is gone already).
 */
static int conn_name_peer(int fd, char *name, size_t size, struct ucred *cred)
{
	struct sockaddr_storage address;
	socklen_t len = sizeof(address);
	char host[INET6_ADDRSTRLEN];

	memset(&address, 0, sizeof(address));
	memset(cred, 0, sizeof(*cred));
	if (getpeername(fd, (struct sockaddr *)&address, &len) < 0)
		address.ss_family = AF_UNSPEC;
	if (address.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&address;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(name, size, "%s:%u", host, ntohs(in->sin_port));
	} else if (address.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&address;

		/* A v4 client of a dual-stack listener reads as plain v4. */
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, sizeof(host));
			snprintf(name, size, "%s:%u", host, ntohs(in6->sin6_port));
		} else {
			inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
			snprintf(name, size, "[%s]:%u", host, ntohs(in6->sin6_port));
		}
	} else if (address.ss_family == AF_UNIX) {
		len = sizeof(*cred);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &len) < 0)
			memset(cred, 0, sizeof(*cred));
		snprintf(name, size, "pid %d uid %u", (int)cred->pid, (unsigned)cred->uid);
	} else {
		snprintf(name, size, "unknown peer");
	}
	return address.ss_family;
}

static void conn_refuse_busy(struct conn_server *server, int fd)
{
	uint8_t frame[256];
	ssize_t n = 0;
	char text[96];
	const void *reply = frame;

	if (server->options.busy_reply) {
		reply = server->options.busy_reply;
		n = (ssize_t)strlen(server->options.busy_reply);
	} else if (!server->stream) {
		snprintf(text, sizeof(text), "too many connections (limit %u); try again later",
			 server->options.max_connections);
		n = frame_pack_error(0, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY, text, frame,
				     sizeof(frame));
	}
	if (n > 0 && send(fd, reply, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		log_debug("conn", "cannot tell a refused client why error=\"%s\"", strerror(errno));
	if (server->refused_busy++ % 1000 == 0) {
		struct ucred cred;
		char peer[64];

		conn_name_peer(fd, peer, sizeof(peer), &cred);
		log_warn("conn", "%s busy peer=%s: connection limit reached limit=%u refused=%llu",
			 server->options.name, peer, server->options.max_connections,
			 (unsigned long long)server->refused_busy);
	}
	close(fd);
}

/* Peer credentials or address, the peer's name for logs, TCP_NODELAY and
 * TCP_NOTSENT_LOWAT. */
static void conn_identify_peer(struct conn *conn)
{
	struct ucred cred;
	int family = conn_name_peer(conn->fd, conn->peer_name, sizeof(conn->peer_name), &cred);
	int one = 1, lowat = (int)conn->server->options.notsent_lowat;

	conn->peer_pid = cred.pid;
	conn->peer_uid = cred.uid;
	/* Frames are small and answer requests: no Nagle delay behind them. */
	conn->tcp = family == AF_INET || family == AF_INET6;
	conn->bytes_acked = 0;
	if (conn->tcp && setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		log_debug("conn", "cannot set TCP_NODELAY server=%s peer=%s error=\"%s\"",
			  conn->server->options.name, conn->peer_name, strerror(errno));
	if (conn->tcp && lowat &&
	    setsockopt(conn->fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat)) < 0)
		log_debug("conn", "cannot set TCP_NOTSENT_LOWAT server=%s peer=%s error=\"%s\"",
			  conn->server->options.name, conn->peer_name, strerror(errno));
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
			conn_identify_peer(conn);
			if (server->handlers.opened)
				server->handlers.opened(conn); /* may close it */
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
		/* A connection marked busy has work under way (an import):
		 * its silence is the wait for the answer, not idleness. */
		if (!(conn->flags & (CONN_CLOSING | CONN_BUSY)) &&
		    now_ms - conn->last_active_ms >= server->options.idle_timeout_ms) {
			log_debug("conn", "closing idle connection server=%s peer=%s",
				  server->options.name, conn->peer_name);
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
		if (all || (conn->input_len == 0 && conn_output_empty(conn) &&
			    !(conn->flags & CONN_BUSY)))
			conn_close(conn);
	}
	if (all && server->sweep_armed)
		loop_cancel_op(server->loop, &server->sweep_op);
}

/* --- server. */

/* splice() into a socket cannot say MSG_NOSIGNAL: a peer gone mid-payload
 * would kill the process with SIGPIPE from conn_file_drain. EPIPE is all a
 * connection needs to know, so SIGPIPE is ignored unless the program has a
 * handler of its own (the daemon and the scheduler ignore it anyway). */
static void conn_ignore_sigpipe(void)
{
	struct sigaction old;

	if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
		(void)signal(SIGPIPE, SIG_IGN);
}

int conn_server_create(struct conn_server **out, struct loop *loop,
		       const struct conn_handlers *handlers,
		       const struct conn_server_options *options, void *context)
{
	struct conn_server *server;
	int rc;

	assert(handlers && !handlers->frame != !handlers->data);
	if (handlers->data && options->pass_fds)
		return -EINVAL; /* recvmsg fills the input directly, past any limit of ours */
	conn_ignore_sigpipe();
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
	server->splice_supported = loop_features(loop)->splice;
	server->stream = handlers->data != NULL;

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
		conn->flags |= CONN_CLOSING | CONN_FINISHED;
		close(conn->fd);
		conn_pipe_close(&conn->pipe);
		while (conn->files_count) {
			struct conn_file file = conn_file_pop(conn);

			file.done(conn, file.arg, file.error ? file.error : -EPIPE);
		}
		free(conn->input);
		free(conn->output);
		free(conn->output_retired);
		free(conn->files);
		free(conn->file_buffer);
		free(conn);
	}
	while (server->free_list) {
		struct conn *conn = server->free_list;

		server->free_list = conn->next;
		free(conn->input);
		free(conn->output);
		free(conn->files);
		free(conn->file_buffer);
		free(conn);
	}
	while (server->pipe_count)
		conn_pipe_close(&server->pipes[--server->pipe_count]);
	free(server);
}

unsigned conn_server_count(const struct conn_server *server)
{
	return server->count;
}

void conn_server_drains(const struct conn_server *server, uint64_t *on_loop, uint64_t *by_workers)
{
	*on_loop = server->drains_on_loop;
	*by_workers = server->drains_by_workers;
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

const char *conn_peer_name(const struct conn *conn)
{
	return conn->peer_name;
}

void conn_set_user(struct conn *conn, void *user)
{
	conn->user = user;
}

void conn_set_busy(struct conn *conn, bool busy)
{
	if (busy)
		conn->flags |= CONN_BUSY;
	else if (conn->flags & CONN_BUSY) {
		conn->flags &= ~CONN_BUSY;
		conn->last_active_ms = clock_monotonic_ms(); /* idle from now */
	}
}

void *conn_user(const struct conn *conn)
{
	return conn->user;
}
