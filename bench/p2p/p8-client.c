/* p8-client: N concurrent downloads of one task from a ringfly peer or one file over HTTP/1.1. */
/*
 * ringfly-bench-p8-client --peer HOST:PORT --task HEX64 [--window N]   [common]
 * ringfly-bench-p8-client --http HOST:PORT --path /PATH                [common]
 * common: [--conns N] [--expect BYTES] [--copy] [--timeout-s S]
 *
 * The client side of bench/p2p's P8: one process, one epoll loop, N TCP
 * connections opened at once (non-blocking connect), each fetching the whole
 * content once and then closing:
 *
 *   --peer: SyncPieces{task}; from the first PieceAvailability the content and
 *           piece lengths; then GetPiece for every announced piece in order,
 *           --window (default 8, the daemon's download.parent_requests) in
 *           flight, each answer a PieceHeader frame and `length` raw bytes.
 *   --http: "GET PATH HTTP/1.1" (keep-alive), the status line must be 200, the
 *           body is Content-Length bytes.
 *
 * Payload bytes are discarded. By default with recv(MSG_TRUNC), which on TCP
 * drops queued bytes without copying them to user space, so the client costs
 * little CPU and the server's work is what is measured (both servers share the
 * machine's 2 vCPUs with this client). --copy recv()s them into a 256 KiB
 * buffer instead, as a client that keeps the bytes would. Frames and HTTP
 * headers are always read and parsed. No payload is checked against the
 * source (run.sh checks the content elsewhere); the byte count of every
 * connection is checked against the announced length and --expect.
 *
 * The clock starts before the first connect() and stops when the last
 * connection has its last byte; getrusage(RUSAGE_SELF) over the same span.
 * Prints one key=value line on stdout:
 *
 *   mode= conns= bytes= seconds= gb_per_s= user_s= sys_s= cpu_s_per_gib=
 *   first_done_s= median_done_s= connect_max_ms=
 *
 * GB/s is 10^9 bytes per second of all connections together; first_done_s and
 * median_done_s say how evenly the server shared itself (the last one is
 * `seconds`). Any failed connection (refused, an Error frame, an HTTP status
 * other than 200, short content, timeout) is reported on stderr and makes the
 * exit status 1 after all others finished. Exit 2: bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench/common/bench-clock.h"
#include "bench/common/bench-net.h"
#include "rpc/frame.h"

#define P8_CONNS_MAX	   65536u
#define P8_WINDOW_MAX	   64u /* the daemon's upload.max_requests default */
#define P8_COPY_BUFFER	   (256u << 10)
#define P8_HTTP_HEADER_MAX (8u << 10)
#define P8_OUT_MAX	   4096u /* pending request bytes per connection */
#define P8_SYNC_ID	   1u

enum p8_mode { P8_PEER, P8_HTTP };

enum p8_stage {
	P8_CONNECTING,
	P8_FRAME_HEADER,  /* peer: reading a frame's 5-byte header */
	P8_FRAME_MESSAGE, /* peer: reading its message */
	P8_PAYLOAD,	  /* peer: a piece's bytes; http: the body */
	P8_HTTP_HEADER,	  /* http: the status line and headers */
	P8_DONE,
	P8_FAILED,
};

struct p8_conn {
	int fd;
	unsigned index;
	enum p8_stage stage;
	uint8_t *in; /* frame or HTTP header bytes */
	size_t in_have, in_need, in_cap;
	uint8_t out[P8_OUT_MAX]; /* requests not sent yet */
	size_t out_len;
	bool want_out;
	uint64_t payload_left; /* bytes of the current piece / body still to come */
	uint64_t bytes;	       /* payload bytes received */
	uint64_t content_length;
	uint64_t piece_length;
	uint32_t piece_count;
	uint8_t *announced;    /* per piece: announced by the parent */
	uint32_t next_request; /* lowest piece number not requested yet */
	uint32_t in_flight;
	uint32_t pieces_done;
	uint32_t expect_number[P8_WINDOW_MAX]; /* FIFO: answers come in order */
	uint32_t expect_head;
	uint64_t next_id;
	double connected_s;
	double done_s;
};

struct p8 {
	enum p8_mode mode;
	int epoll_fd;
	struct p8_conn *conns;
	unsigned conn_count, live, failed;
	unsigned window;
	bool copy;
	uint64_t expect;
	uint8_t task_id[32];
	const char *host_port;
	const char *path;
	uint8_t *copy_buffer;
	double t0;
};

static void usage(void)
{
	fprintf(stderr,
		"usage: ringfly-bench-p8-client (--peer HOST:PORT --task HEX64 [--window N] |\n"
		"                                --http HOST:PORT --path /PATH)\n"
		"                               [--conns N] [--expect BYTES] [--copy] [--timeout-s S]\n");
	exit(2);
}

static long long parse_number(const char *s, long long min, long long max)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		usage();
	return v;
}

static bool parse_task_id(const char *hex, uint8_t out[32])
{
	if (strlen(hex) != 64)
		return false;
	for (unsigned i = 0; i < 32; i++) {
		unsigned v;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return false;
		out[i] = (uint8_t)v;
	}
	return true;
}

static void conn_close(struct p8 *p8, struct p8_conn *c, enum p8_stage stage)
{
	if (c->fd >= 0) {
		epoll_ctl(p8->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
		c->fd = -1;
	}
	free(c->in);
	c->in = NULL;
	free(c->announced);
	c->announced = NULL;
	c->stage = stage;
	p8->live--;
}

static void __attribute__((format(printf, 3, 4)))
conn_fail(struct p8 *p8, struct p8_conn *c, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "p8-client: connection %u (%llu bytes in): ", c->index,
		(unsigned long long)c->bytes);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	p8->failed++;
	conn_close(p8, c, P8_FAILED);
}

static void conn_finish(struct p8 *p8, struct p8_conn *c)
{
	if (p8->expect && c->bytes != p8->expect) {
		conn_fail(p8, c, "got %llu bytes, expected %llu", (unsigned long long)c->bytes,
			  (unsigned long long)p8->expect);
		return;
	}
	c->done_s = bench_now_s() - p8->t0;
	conn_close(p8, c, P8_DONE);
}

static void conn_watch(struct p8 *p8, struct p8_conn *c, bool want_out)
{
	struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0),
				  .data.u32 = c->index };

	if (want_out == c->want_out)
		return;
	c->want_out = want_out;
	if (epoll_ctl(p8->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
		conn_fail(p8, c, "epoll_ctl: %s", strerror(errno));
}

/* Sends what is queued; EPOLLOUT only while something is left. */
static int conn_flush(struct p8 *p8, struct p8_conn *c)
{
	while (c->out_len) {
		ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			conn_fail(p8, c, "send: %s", strerror(errno));
			return -1;
		}
		memmove(c->out, c->out + n, c->out_len - (size_t)n);
		c->out_len -= (size_t)n;
	}
	conn_watch(p8, c, c->out_len > 0);
	return c->stage == P8_FAILED ? -1 : 0;
}

static int conn_queue_frame(struct p8 *p8, struct p8_conn *c, uint8_t type,
			    const ProtobufCMessage *msg)
{
	ssize_t n = frame_pack(type, msg, c->out + c->out_len, sizeof(c->out) - c->out_len);

	if (n < 0) {
		conn_fail(p8, c, "cannot pack a %s frame: %s", frame_type_name(type),
			  strerror((int)-n));
		return -1;
	}
	c->out_len += (size_t)n;
	return 0;
}

/* Asks for announced pieces in order while the window has room. */
static int peer_request_more(struct p8 *p8, struct p8_conn *c)
{
	bool queued = false;

	while (c->in_flight < p8->window && c->next_request < c->piece_count &&
	       c->announced[c->next_request]) {
		Ringfly__GetPiece get = RINGFLY__GET_PIECE__INIT;

		get.id = c->next_id++;
		get.task_id.data = p8->task_id;
		get.task_id.len = 32;
		get.number = c->next_request;
		if (conn_queue_frame(p8, c, FRAME_TYPE_GET_PIECE, &get.base) < 0)
			return -1;
		c->expect_number[(c->expect_head + c->in_flight) % P8_WINDOW_MAX] = c->next_request;
		c->in_flight++;
		c->next_request++;
		queued = true;
	}
	return queued ? conn_flush(p8, c) : 0;
}

static int peer_availability(struct p8 *p8, struct p8_conn *c, const Ringfly__PieceAvailability *m)
{
	if (m->failed) {
		conn_fail(p8, c, "the parent's stream failed: %s", m->reason);
		return -1;
	}
	if (!c->announced) {
		uint64_t count;

		if (!m->content_length || !m->piece_length) {
			conn_fail(p8, c, "PieceAvailability without lengths");
			return -1;
		}
		count = (m->content_length + m->piece_length - 1) / m->piece_length;
		if (count > UINT32_MAX) {
			conn_fail(p8, c, "%llu pieces", (unsigned long long)count);
			return -1;
		}
		c->content_length = m->content_length;
		c->piece_length = m->piece_length;
		c->piece_count = (uint32_t)count;
		c->announced = calloc(count, 1);
		if (!c->announced) {
			conn_fail(p8, c, "out of memory");
			return -1;
		}
	}
	for (size_t i = 0; i < m->n_pieces; i++) {
		if (m->pieces[i] >= c->piece_count) {
			conn_fail(p8, c, "piece %u announced, task has %u", m->pieces[i],
				  c->piece_count);
			return -1;
		}
		c->announced[m->pieces[i]] = 1;
	}
	return peer_request_more(p8, c);
}

static int peer_piece_header(struct p8 *p8, struct p8_conn *c, const Ringfly__PieceHeader *m)
{
	uint32_t want;

	if (!c->in_flight) {
		conn_fail(p8, c, "PieceHeader for piece %u, none asked", m->number);
		return -1;
	}
	want = c->expect_number[c->expect_head];
	if (m->number != want || m->offset != (uint64_t)want * c->piece_length) {
		conn_fail(p8, c, "PieceHeader for piece %u at %llu, expected piece %u", m->number,
			  (unsigned long long)m->offset, want);
		return -1;
	}
	c->payload_left = m->length;
	c->stage = P8_PAYLOAD;
	return 0;
}

/* A whole frame is in c->in. */
static int peer_frame(struct p8 *p8, struct p8_conn *c)
{
	const uint8_t *message;
	size_t message_len, frame_size;
	ProtobufCMessage *msg;
	uint8_t type;
	int rc = 0;

	if (frame_peek(c->in, c->in_have, 0, &type, &message, &message_len, &frame_size) !=
	    FRAME_PEEK_OK) {
		conn_fail(p8, c, "bad frame");
		return -1;
	}
	msg = frame_unpack(type, message, message_len, NULL);
	if (!msg) {
		conn_fail(p8, c, "undecodable %s frame", frame_type_name(type));
		return -1;
	}
	c->stage = P8_FRAME_HEADER;
	c->in_have = 0;
	c->in_need = FRAME_HEADER_SIZE;
	switch (type) {
	case FRAME_TYPE_PIECE_AVAILABILITY:
		rc = peer_availability(p8, c, (const Ringfly__PieceAvailability *)msg);
		break;
	case FRAME_TYPE_PIECE_HEADER:
		rc = peer_piece_header(p8, c, (const Ringfly__PieceHeader *)msg);
		break;
	case FRAME_TYPE_ERROR: {
		const Ringfly__Error *e = (const Ringfly__Error *)msg;

		conn_fail(p8, c, "Error{id %llu, code %d}: %s", (unsigned long long)e->id,
			  (int)e->code, e->message);
		rc = -1;
		break;
	}
	default:
		conn_fail(p8, c, "unexpected %s frame", frame_type_name(type));
		rc = -1;
	}
	protobuf_c_message_free_unpacked(msg, NULL);
	return rc;
}

/* The current piece's (or body's) last byte arrived. */
static int payload_done(struct p8 *p8, struct p8_conn *c)
{
	if (p8->mode == P8_HTTP) {
		conn_finish(p8, c);
		return 1;
	}
	c->expect_head = (c->expect_head + 1) % P8_WINDOW_MAX;
	c->in_flight--;
	c->pieces_done++;
	c->stage = P8_FRAME_HEADER;
	c->in_have = 0;
	c->in_need = FRAME_HEADER_SIZE;
	if (c->pieces_done == c->piece_count) {
		if (c->bytes != c->content_length) {
			conn_fail(p8, c, "pieces add up to %llu bytes, content is %llu",
				  (unsigned long long)c->bytes,
				  (unsigned long long)c->content_length);
			return -1;
		}
		conn_finish(p8, c);
		return 1;
	}
	return peer_request_more(p8, c);
}

/* Parses the status line and Content-Length out of c->in[0, end). */
static int http_headers(struct p8 *p8, struct p8_conn *c, size_t end)
{
	char *text = (char *)c->in, *line, *save = NULL;
	bool have_length = false;
	int status = 0;

	text[end] = '\0';
	for (line = strtok_r(text, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
		if (!status) {
			if (sscanf(line, "HTTP/1.%*d %d", &status) != 1) {
				conn_fail(p8, c, "bad status line '%.80s'", line);
				return -1;
			}
		} else if (!strncasecmp(line, "Content-Length:", 15)) {
			c->content_length = strtoull(line + 15, NULL, 10);
			have_length = true;
		}
	}
	if (status != 200 || !have_length) {
		conn_fail(p8, c, "HTTP status %d%s", status,
			  have_length ? "" : ", no Content-Length");
		return -1;
	}
	c->payload_left = c->content_length;
	c->stage = P8_PAYLOAD;
	return 0;
}

/* Reads what the socket has; returns when it has nothing more (or the conn ended). */
static void conn_readable(struct p8 *p8, struct p8_conn *c)
{
	for (;;) {
		ssize_t n;

		if (c->stage == P8_PAYLOAD) {
			size_t want =
				c->payload_left > (1u << 30) ? (1u << 30) : (size_t)c->payload_left;

			if (p8->copy) {
				if (want > P8_COPY_BUFFER)
					want = P8_COPY_BUFFER;
				n = recv(c->fd, p8->copy_buffer, want, MSG_DONTWAIT);
			} else {
				n = recv(c->fd, NULL, want, MSG_DONTWAIT | MSG_TRUNC);
			}
		} else {
			n = recv(c->fd, c->in + c->in_have, c->in_need - c->in_have, MSG_DONTWAIT);
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				conn_fail(p8, c, "recv: %s", strerror(errno));
			return;
		}
		if (n == 0) {
			conn_fail(p8, c, "closed by the server");
			return;
		}
		if (c->stage == P8_PAYLOAD) {
			c->payload_left -= (uint64_t)n;
			c->bytes += (uint64_t)n;
			if (!c->payload_left && payload_done(p8, c) != 0)
				return;
			continue;
		}
		c->in_have += (size_t)n;
		if (c->stage == P8_HTTP_HEADER) {
			char *end;
			size_t head, extra;

			c->in[c->in_have] = '\0';
			end = strstr((char *)c->in, "\r\n\r\n");
			if (!end) {
				if (c->in_have == c->in_need) {
					conn_fail(p8, c, "HTTP headers over %u bytes",
						  P8_HTTP_HEADER_MAX);
					return;
				}
				continue;
			}
			head = (size_t)(end - (char *)c->in) + 4;
			extra = c->in_have - head; /* body bytes that came along */
			if (http_headers(p8, c, head) < 0)
				return;
			if (extra > c->payload_left) {
				conn_fail(p8, c, "more than Content-Length");
				return;
			}
			c->payload_left -= extra;
			c->bytes += extra;
			if (!c->payload_left) {
				conn_finish(p8, c);
				return;
			}
			continue;
		}
		if (c->in_have < c->in_need)
			continue;
		if (c->stage == P8_FRAME_HEADER) {
			const uint8_t *message;
			size_t message_len, frame_size;
			uint8_t type;
			enum frame_peek_result r = frame_peek(c->in, c->in_have, 0, &type, &message,
							      &message_len, &frame_size);

			if (r == FRAME_PEEK_NEED_MORE && frame_size > c->in_have) {
				if (frame_size > c->in_cap) {
					uint8_t *in = realloc(c->in, frame_size + 1);

					if (!in) {
						conn_fail(p8, c, "out of memory");
						return;
					}
					c->in = in;
					c->in_cap = frame_size;
				}
				c->in_need = frame_size;
				c->stage = P8_FRAME_MESSAGE;
				continue;
			}
			if (r != FRAME_PEEK_OK) {
				conn_fail(p8, c, "bad frame header (%d)", (int)r);
				return;
			}
		}
		if (peer_frame(p8, c) < 0)
			return;
		if (c->stage == P8_PAYLOAD && c->payload_left == 0 && payload_done(p8, c) != 0)
			return;
	}
}

/* connect() finished: send the first request. */
static void conn_connected(struct p8 *p8, struct p8_conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		conn_fail(p8, c, "connect %s: %s", p8->host_port, strerror(err));
		return;
	}
	c->connected_s = bench_now_s() - p8->t0;
	if (p8->mode == P8_PEER) {
		Ringfly__SyncPieces sync = RINGFLY__SYNC_PIECES__INIT;

		sync.id = P8_SYNC_ID;
		sync.task_id.data = p8->task_id;
		sync.task_id.len = 32;
		c->stage = P8_FRAME_HEADER;
		c->in_need = FRAME_HEADER_SIZE;
		if (conn_queue_frame(p8, c, FRAME_TYPE_SYNC_PIECES, &sync.base) < 0)
			return;
	} else {
		int n = snprintf((char *)c->out, sizeof(c->out),
				 "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive\r\n"
				 "User-Agent: ringfly-bench-p8-client\r\n\r\n",
				 p8->path, p8->host_port);

		if (n < 0 || (size_t)n >= sizeof(c->out)) {
			conn_fail(p8, c, "request too long");
			return;
		}
		c->out_len = (size_t)n;
		c->stage = P8_HTTP_HEADER;
		c->in_need = P8_HTTP_HEADER_MAX;
	}
	conn_flush(p8, c);
}

static int conn_open(struct p8 *p8, struct p8_conn *c, const struct addrinfo *ai)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u32 = c->index };
	int one = 1;

	c->in_cap = p8->mode == P8_HTTP ? P8_HTTP_HEADER_MAX : 256;
	c->in = malloc(c->in_cap + 1);
	if (!c->in)
		return -ENOMEM;
	c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -errno;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->stage = P8_CONNECTING;
	c->want_out = true;
	c->next_id = P8_SYNC_ID + 1;
	p8->live++;
	if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
		int e = errno;

		conn_fail(p8, c, "connect %s: %s", p8->host_port, strerror(e));
		return 0;
	}
	if (epoll_ctl(p8->epoll_fd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		return -errno;
	return 0;
}

static int compare_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "peer", required_argument, NULL, 'p' },
		{ "task", required_argument, NULL, 't' },
		{ "window", required_argument, NULL, 'w' },
		{ "http", required_argument, NULL, 'h' },
		{ "path", required_argument, NULL, 'P' },
		{ "conns", required_argument, NULL, 'n' },
		{ "expect", required_argument, NULL, 'e' },
		{ "copy", no_argument, NULL, 'c' },
		{ "timeout-s", required_argument, NULL, 'T' },
		{ NULL, 0, NULL, 0 },
	};
	struct p8 p8 = { .window = 8, .conn_count = 200 };
	struct epoll_event events[256];
	struct addrinfo *ai;
	struct rusage ru0, ru1;
	const char *task_hex = NULL;
	double timeout_s = 300, seconds, user_s, sys_s, connect_max_s = 0, *done;
	uint64_t bytes = 0;
	char err[300];
	int opt, rc, status = 1;
	bool have_mode = false;

	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'p':
		case 'h':
			if (have_mode)
				usage();
			have_mode = true;
			p8.mode = opt == 'p' ? P8_PEER : P8_HTTP;
			p8.host_port = optarg;
			break;
		case 't':
			task_hex = optarg;
			break;
		case 'w':
			p8.window = (unsigned)parse_number(optarg, 1, P8_WINDOW_MAX);
			break;
		case 'P':
			p8.path = optarg;
			break;
		case 'n':
			p8.conn_count = (unsigned)parse_number(optarg, 1, P8_CONNS_MAX);
			break;
		case 'e':
			p8.expect = (uint64_t)parse_number(optarg, 1, INT64_MAX);
			break;
		case 'c':
			p8.copy = true;
			break;
		case 'T':
			timeout_s = (double)parse_number(optarg, 1, 86400);
			break;
		default:
			usage();
		}
	}
	if (!have_mode || optind != argc)
		usage();
	if (p8.mode == P8_PEER && (!task_hex || !parse_task_id(task_hex, p8.task_id)))
		usage();
	if (p8.mode == P8_HTTP && (!p8.path || p8.path[0] != '/'))
		usage();

	rc = bench_resolve(p8.host_port, false, &ai, err, sizeof(err));
	if (rc == -EINVAL)
		usage();
	if (rc < 0) {
		fprintf(stderr, "p8-client: %s\n", err);
		return 1;
	}
	p8.conns = calloc(p8.conn_count, sizeof(*p8.conns));
	p8.copy_buffer = malloc(P8_COPY_BUFFER);
	p8.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (!p8.conns || !p8.copy_buffer || p8.epoll_fd < 0) {
		fprintf(stderr, "p8-client: setup: %s\n", strerror(errno));
		freeaddrinfo(ai);
		goto out_free;
	}

	for (unsigned i = 0; i < p8.conn_count; i++) {
		p8.conns[i].index = i;
		p8.conns[i].fd = -1;
	}

	getrusage(RUSAGE_SELF, &ru0);
	p8.t0 = bench_now_s();
	for (unsigned i = 0; i < p8.conn_count; i++) {
		rc = conn_open(&p8, &p8.conns[i], ai);
		if (rc < 0) {
			fprintf(stderr, "p8-client: connection %u: %s (ulimit -n?)\n", i,
				strerror(-rc));
			freeaddrinfo(ai);
			goto out_close;
		}
	}
	freeaddrinfo(ai);

	while (p8.live) {
		int n = epoll_wait(p8.epoll_fd, events, 256, 1000);

		if (n < 0 && errno != EINTR) {
			fprintf(stderr, "p8-client: epoll_wait: %s\n", strerror(errno));
			goto out_close;
		}
		for (int i = 0; i < n; i++) {
			struct p8_conn *c = &p8.conns[events[i].data.u32];

			if (c->fd < 0)
				continue;
			if (c->stage == P8_CONNECTING) {
				conn_connected(&p8, c);
				continue;
			}
			if ((events[i].events & EPOLLOUT) && conn_flush(&p8, c) < 0)
				continue;
			if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				conn_readable(&p8, c);
		}
		if (bench_now_s() - p8.t0 > timeout_s) {
			for (unsigned i = 0; i < p8.conn_count; i++)
				if (p8.conns[i].fd >= 0)
					conn_fail(&p8, &p8.conns[i], "timed out after %.0f s",
						  timeout_s);
		}
	}
	getrusage(RUSAGE_SELF, &ru1);

	done = calloc(p8.conn_count, sizeof(*done));
	if (!done)
		goto out_close;
	seconds = 0;
	for (unsigned i = 0; i < p8.conn_count; i++) {
		bytes += p8.conns[i].bytes;
		done[i] = p8.conns[i].done_s;
		if (done[i] > seconds)
			seconds = done[i];
		if (p8.conns[i].connected_s > connect_max_s)
			connect_max_s = p8.conns[i].connected_s;
	}
	qsort(done, p8.conn_count, sizeof(*done), compare_double);
	user_s = bench_tv_s(ru1.ru_utime) - bench_tv_s(ru0.ru_utime);
	sys_s = bench_tv_s(ru1.ru_stime) - bench_tv_s(ru0.ru_stime);
	if (p8.failed) {
		fprintf(stderr, "p8-client: %u of %u connections failed\n", p8.failed,
			p8.conn_count);
		goto out_free_done;
	}
	printf("mode=%s conns=%u bytes=%llu seconds=%.6f gb_per_s=%.3f user_s=%.3f sys_s=%.3f"
	       " cpu_s_per_gib=%.3f first_done_s=%.3f median_done_s=%.3f connect_max_ms=%.1f"
	       " discard=%s\n",
	       p8.mode == P8_PEER ? "peer" : "http", p8.conn_count, (unsigned long long)bytes,
	       seconds, (double)bytes / seconds / 1e9, user_s, sys_s,
	       (user_s + sys_s) / ((double)bytes / (double)(1ull << 30)), done[0],
	       done[p8.conn_count / 2], connect_max_s * 1e3, p8.copy ? "copy" : "trunc");
	status = 0;
out_free_done:
	free(done);
out_close:
	for (unsigned i = 0; i < p8.conn_count; i++)
		if (p8.conns[i].fd >= 0)
			conn_close(&p8, &p8.conns[i], P8_FAILED);
out_free:
	if (p8.epoll_fd >= 0)
		close(p8.epoll_fd);
	free(p8.copy_buffer);
	free(p8.conns);
	return status;
}
