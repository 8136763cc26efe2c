/* conn: framed connections on the loop, accepted from listeners, with limits. */
#ifndef RINGFLY_NET_CONN_H
#define RINGFLY_NET_CONN_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
 * Closing is asynchronous: conn_close() cancels the operations in flight and
 * the memory is reused only when the last of them has completed, never while
 * the kernel may still write into it.
 */

struct conn;
struct conn_server;

struct conn_handlers {
	/*
	 * One whole frame (message borrowed for the call). Return 0 to go on,
	 * or a negative errno to close the connection once queued replies are
	 * sent.
	 */
	int (*frame)(struct conn *conn, uint8_t type, const uint8_t *message,
		     size_t message_len);
	/* Optional: the connection is gone (called once, before reuse). */
	void (*closed)(struct conn *conn);
};

struct conn_server_options {
	unsigned max_connections;   /* 0 = 4096; past it: Error BUSY, then close */
	uint32_t max_message_bytes; /* 0 = FRAME_MESSAGE_MAX_DEFAULT */
	unsigned idle_timeout_ms;   /* close after this long without a byte; 0 = never */
	unsigned send_timeout_ms;   /* a send blocked this long closes; 0 = 10 s */
	size_t output_max_bytes;    /* queued replies beyond this close; 0 = 4 MiB */
	const char *name;	    /* for logs, e.g. "cli" */
	/* Unix sockets only: receive file descriptors (SCM_RIGHTS) with the
	 * bytes, for conn_take_fd. Receives with one-shot recvmsg into the
	 * connection's own buffer instead of the shared buffer ring. */
	bool pass_fds;
};

/* Returns 0 and a new server in *out, or a negative errno. `context` is
 * borrowed and returned by conn_server_context. */
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
void *conn_server_context(const struct conn_server *server);

/* Closes connections with no partial frame in and no reply queued; with
 * `all`, every connection. */
void conn_server_close_idle(struct conn_server *server, bool all);

/* --- one connection. */

struct conn_server *conn_get_server(const struct conn *conn);
/* The caller's pointer for this connection (NULL from accept on). */
void conn_set_user(struct conn *conn, void *user);
void *conn_user(const struct conn *conn);

/* SO_PEERCRED of a Unix-socket peer (pid 0 when not known). */
void conn_peer(const struct conn *conn, int *pid, unsigned *uid);

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

/* Closes now: queued output is dropped. */
void conn_close(struct conn *conn);

#endif
