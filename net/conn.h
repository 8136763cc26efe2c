/* conn: framed connections on the loop, accepted from listeners, with limits. */
#ifndef RINGFLY_NET_CONN_H
#define RINGFLY_NET_CONN_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/loop.h"
#include "rpc/frame.h"

/*
 * A conn_server accepts connections on one or more listening sockets
 * (multishot accept) and turns each connection's bytes into frames
 * (rpc/frame.h) handed to handlers->frame. Replies are queued with
 * conn_send_frame and sent in order, short sends resumed.
 *
 * Receiving: a multishot recv into the loop's provided-buffer ring; each
 * completion's bytes are appended to the connection's input buffer and the
 * buffer handed back at once. The input buffer grows to the frame being
 * received and never beyond the message limit: a longer frame, an unknown
 * type, an empty frame or a truncated one gets an Error frame naming the
 * problem, then the connection closes. Nothing the peer sends can make us
 * allocate more than max_message_bytes plus a header.
 *
 * Sending: the output is one ordered stream of frame bytes and file payloads
 * (conn_send_file), so a header queued before a payload and a header queued
 * after it arrive around it. See "The output queue" in conn.c.
 *
 * Closing is asynchronous: conn_close() cancels the operations in flight and
 * the memory is reused only when the last of them has completed, never while
 * the kernel may still write into it. Every file payload still queued then
 * gets its done callback, from the loop, before handlers->closed.
 *
 * Stream mode (handlers->data set instead of handlers->frame): no frames;
 * the bytes received go to handlers->data as they come and the protocol on
 * top (net/http) says how many it consumed. Output is the same queue, with
 * raw bytes (conn_send_bytes) in place of frames.
 *
 * Works the same on Unix and TCP sockets (TCP_NODELAY is set on the latter).
 */

struct conn;
struct conn_server;

struct conn_handlers {
	/*
	 * One whole frame (message borrowed for the call). Return 0 to go on,
	 * or a negative errno to close the connection once queued replies are
	 * sent. Set exactly one of frame and data.
	 */
	int (*frame)(struct conn *conn, uint8_t type, const uint8_t *message,
		     size_t message_len);
	/*
	 * Stream mode (instead of frame): the connection's bytes as they come,
	 * for a protocol of its own (HTTP). bytes[len] is everything received
	 * and not yet consumed (borrowed for the call); return how many bytes
	 * were consumed (0..len) — the rest stays buffered and is offered again
	 * with the next bytes, or on conn_input_again — or a negative errno to
	 * close the connection once queued output is sent. No frame parsing, no
	 * Error frames: the input buffer never holds more than
	 * max_message_bytes (a peer sending more while nothing is consumed is
	 * closed), EOF closes after queued output is sent, running out of
	 * memory closes, and the connection limit answers busy_reply. The
	 * connection is never finished while data runs: conn_close from
	 * inside it takes effect when it returns. Not with pass_fds.
	 */
	ssize_t (*data)(struct conn *conn, const uint8_t *bytes, size_t len);
	/* Optional: a connection was accepted, before any of its bytes are
	 * read (conn_set_user here; conn_close is allowed). */
	void (*opened)(struct conn *conn);
	/* Optional: the connection is gone (called once, before reuse, after
	 * the done callback of every file payload queued on it). */
	void (*closed)(struct conn *conn);
};

struct conn_server_options {
	unsigned max_connections;   /* 0 = 4096; past it: Error BUSY (or busy_reply), then
				     * close, and the log line "NAME busy peer=ADDRESS:
				     * connection limit reached" */
	uint32_t max_message_bytes; /* 0 = FRAME_MESSAGE_MAX_DEFAULT; stream mode: the most
				     * input buffered */
	unsigned idle_timeout_ms;   /* close after this long without a byte in or out; 0 = never */
	unsigned send_timeout_ms;   /* a peer taking no bytes (frames or file payloads) this
				     * long is reset; 0 = 10 s */
	size_t output_max_bytes;    /* queued frame bytes beyond this close; 0 = 4 MiB
				     * (file payloads do not count: see CONN_FILES_MAX) */
	/* TCP only: TCP_NOTSENT_LOWAT, the most bytes a connection keeps queued
	 * and not yet sent before it stops taking more (0 = the kernel's
	 * default, no limit). A peer that reads slowly then opens its window for
	 * a little of our data at a time, and we are woken to send the rest
	 * ourselves, instead of the window update pushing a whole backlog out
	 * from the reader's thread ("The output queue" in conn.c). */
	uint32_t notsent_lowat;
	const char *name;	    /* for logs, e.g. "cli" */
	/* Unix sockets only: receive file descriptors (SCM_RIGHTS) with the
	 * bytes, for conn_take_fd. Receives with one-shot recvmsg into the
	 * connection's own buffer instead of the shared buffer ring. */
	bool pass_fds;
	/* Raw bytes sent to a client refused at the connection limit instead
	 * of the Error BUSY frame (e.g. an HTTP 503), or NULL. Borrowed for the
	 * server's life. In stream mode NULL sends nothing. */
	const char *busy_reply;
};

/* Returns 0 and a new server in *out, or a negative errno. `context` is
 * borrowed and returned by conn_server_context. Sets SIGPIPE to SIG_IGN if
 * it is SIG_DFL: file payloads are spliced into the socket from the calling
 * thread, and a peer gone mid-payload must be an EPIPE, not a dead process. */
int conn_server_create(struct conn_server **out, struct loop *loop,
		       const struct conn_handlers *handlers,
		       const struct conn_server_options *options, void *context);
/* Every connection must be closed and finished (conn_server_count == 0), or
 * the loop already stopped for good. */
void conn_server_destroy(struct conn_server *server);

/* Starts accepting on listen_fd (borrowed; stays open until the caller closes
 * it after conn_server_stop_accepting has completed). Up to 4 listeners. */
int conn_server_listen(struct conn_server *server, int listen_fd);
/* Stops accepting on every listener (asynchronous; new connections queue in
 * the kernel's backlog until the listener is closed). */
void conn_server_stop_accepting(struct conn_server *server);
/* True while an accept is still armed (before cancellation has completed). */
bool conn_server_accepting(const struct conn_server *server);

/* Open connections, including those closing. */
unsigned conn_server_count(const struct conn_server *server);

/* Splices of file payloads into sockets so far (each a pipeful or part of
 * one): by splice() on the loop, and by io_uring splice on io-wq workers (see
 * conn.c, "The output queue", for which and when). */
void conn_server_drains(const struct conn_server *server, uint64_t *on_loop, uint64_t *by_workers);
void *conn_server_context(const struct conn_server *server);

/* Closes connections with no partial frame in, no reply queued and not
 * marked busy; with `all`, every connection. */
void conn_server_close_idle(struct conn_server *server, bool all);

/* --- one connection. */

struct conn_server *conn_get_server(const struct conn *conn);
/* The caller's pointer for this connection (NULL from accept on). */
void conn_set_user(struct conn *conn, void *user);
void *conn_user(const struct conn *conn);
/* Work under way for this connection that a drain should let finish (an
 * import or export): conn_server_close_idle(server, false) skips it. */
void conn_set_busy(struct conn *conn, bool busy);

/* SO_PEERCRED of a Unix-socket peer (pid 0 when not known, and on TCP). */
void conn_peer(const struct conn *conn, int *pid, unsigned *uid);

/* Who the peer is, for log lines, computed once at accept: "ip:port" or
 * "[v6]:port" on TCP, "pid N uid M" on a Unix socket. Valid until the conn is
 * reused (after handlers->closed returns). */
const char *conn_peer_name(const struct conn *conn);

/*
 * The oldest file descriptor received on the connection and not yet taken
 * (pass_fds servers), now owned by the caller; -1 if there is none. A
 * descriptor sent with a frame's bytes has always arrived by the time that
 * frame reaches handlers->frame. Descriptors nobody took are closed with the
 * connection.
 */
int conn_take_fd(struct conn *conn);

/* Queues a frame (msg borrowed for the call). 0, or -EMSGSIZE (message over
 * its type's limit), -ENOBUFS (output limit reached: the connection closes),
 * -EPIPE (closing). */
int conn_send_frame(struct conn *conn, uint8_t type, const ProtobufCMessage *msg);

/* Queues an Error frame with a formatted message and closes the connection
 * once it is sent. */
void conn_send_error(struct conn *conn, uint64_t id, Ringfly__ErrorCode code,
		     const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Queues the same Error frame and keeps the connection open: the answer to
 * one request that failed. (Past the output limit the connection closes, as
 * for conn_send_frame; on a closing connection it does nothing.) */
void conn_reply_error(struct conn *conn, uint64_t id, Ringfly__ErrorCode code,
		      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* File payloads queued (not yet wholly in the socket) per connection. */
#define CONN_FILES_MAX 64u

/* res: 0 once every byte is in the socket, or a negative errno when the
 * connection closed (or a splice failed) first. Runs once, from the loop (or
 * from conn_server_destroy, with -EPIPE, once the loop is gone). */
typedef void (*conn_file_done_fn)(struct conn *conn, void *arg, int res);

/*
 * Queues `length` raw bytes of fd (borrowed until done runs) from `offset`,
 * sent after everything queued before it and before everything queued after
 * (a frame queued later waits for these bytes). Sent by splice file -> pipe ->
 * socket on the loop (pread + send when fd cannot splice). 0, or -EPIPE
 * (closing), -ENOBUFS (CONN_FILES_MAX queued already), -ENOMEM, -EINVAL
 * (length 0, fd < 0, offset + length past INT64_MAX), or the error of a
 * submission the loop refused (the connection then closes). done always runs
 * exactly once if 0 was returned, never from inside this call, and never
 * while an operation on fd is still in flight.
 *
 * done's res besides 0: -ENODATA when fd ends before offset + length, the
 * read or splice error of fd (for both, the connection closes: the peer
 * cannot resync mid-payload), -ETIMEDOUT when the peer stopped reading for
 * send_timeout_ms, -ECONNRESET/-EPIPE when the connection closed first.
 */
int conn_send_file(struct conn *conn, int fd, uint64_t offset, uint32_t length,
		   conn_file_done_fn done, void *arg);

/* Queues raw bytes (copied) into the output, in order with frames and file
 * payloads. 0, or -ENOBUFS (output limit reached) / -ENOMEM (the connection
 * closes), -EPIPE (closing), or the error of a send the loop refused (the
 * connection closes). */
int conn_send_bytes(struct conn *conn, const void *data, size_t len);

/* True while queued output (bytes or file payloads) is not wholly in the
 * socket. */
bool conn_output_pending(const struct conn *conn);

/* Stream mode: offers the buffered input to handlers->data again, from the
 * next loop turn (never from inside this call), e.g. when a protocol that
 * stopped consuming (a response in progress) can take the next request. A
 * no-op when nothing is buffered or the connection is closing. */
void conn_input_again(struct conn *conn);

/* Stops reading and closes once every queued byte and file payload is in
 * the socket (at once if nothing is queued). */
void conn_close_after_send(struct conn *conn);

/* Closes now: queued output is dropped (queued file payloads get -EPIPE). */
void conn_close(struct conn *conn);

#endif
