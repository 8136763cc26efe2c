/* http: an HTTP/1.1 server on the loop (registry mirror, health, metrics). */
#ifndef RINGFLY_NET_HTTP_H
#define RINGFLY_NET_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"

/*
 * An http_server accepts TCP connections (net/conn in stream mode: the same
 * output queue, file payloads spliced from the cache, send timeouts and
 * connection limit as the peer service) and parses requests with
 * libhttp-parser. Requests on one connection are answered one at a time, in
 * order: bytes of a pipelined next request wait in the input until the
 * current response has ended (http_response_end), so pipelining is safe.
 *
 * Limits, each answered and then the connection closed (the daemon stays
 * healthy):
 *   - request line + headers over max_header_bytes   -> 431
 *   - more than max_headers header fields             -> 431
 *   - a request head not complete within header_timeout_ms of its first
 *     byte (slowloris)                                -> 408
 *   - a request with a body (Content-Length > 0 or Transfer-Encoding):
 *     this server takes no request bodies             -> 413
 *   - anything libhttp-parser rejects (bad request line, bad header,
 *     a version other than HTTP/1.x)                  -> 400
 *   - more than max_connections connections           -> 503
 * A connection idle (no request in progress, nothing left to send) for
 * idle_timeout_ms is closed; a response in progress is never cut for being
 * slow (only a client that takes no bytes for send_timeout_ms is). Pipelined
 * requests waiting behind a response are buffered up to 4 x max_header_bytes;
 * a client sending more than that while it waits is closed.
 * HTTP/1.0 without "Connection: keep-alive", and "Connection: close", close
 * after the response. A client that shuts down its sending side is taken to
 * be gone: what is queued still goes out, then the connection closes (an
 * exchange not ended by then is aborted).
 */

struct http_server;
struct http_exchange; /* one request and its response */

enum http_method {
	HTTP_METHOD_GET = 0,
	HTTP_METHOD_HEAD,
	HTTP_METHOD_OTHER, /* see http_request.method_name */
};

struct http_header {
	const char *name;  /* as sent (compare with strcasecmp) */
	const char *value; /* leading and trailing blanks removed */
};

/* Valid from handler->request until the response ends or the exchange is
 * aborted (the strings live in the exchange). */
struct http_request {
	enum http_method method;
	const char *method_name; /* "GET", "DELETE", ... */
	const char *target;	 /* the request target as sent: "/v2/x/blobs/sha256:..?ns=a" */
	const char *path;	 /* target up to '?' (not percent-decoded) */
	const char *query;	 /* after '?', "" if none */
	const struct http_header *headers;
	size_t header_count;
	unsigned version_minor; /* HTTP/1.<minor> */
	const char *peer;	/* "ip:port" of the client, for logs */
};

struct http_handlers {
	/* A complete request head. The handler answers now or later (from the
	 * loop) with the http_response_* calls below, ending with
	 * http_response_end or http_response_abort. */
	void (*request)(struct http_exchange *ex, const struct http_request *request,
			void *context);
	/* Optional: the exchange's connection went away (client closed or
	 * reset, send timeout, a response call that failed with -EPIPE,
	 * http_server_close_idle/close_all/destroy) before
	 * http_response_end/abort. Runs once, from the loop, never from inside
	 * an http_response_* call; `user` is http_exchange_user. The exchange
	 * is invalid once this returns; no response call may follow. File
	 * payloads queued on it have had their done callbacks (with an error)
	 * before this runs. */
	void (*aborted)(struct http_exchange *ex, void *user);
};

struct http_server_options {
	unsigned max_connections;    /* 0 = 1024 */
	size_t max_header_bytes;     /* request line + headers; 0 = 16 KiB */
	unsigned max_headers;	     /* header fields; 0 = 64 */
	unsigned header_timeout_ms;  /* 0 = 10 s */
	unsigned idle_timeout_ms;    /* keep-alive; 0 = 60 s */
	unsigned send_timeout_ms;    /* a client taking no bytes this long; 0 = 30 s */
	size_t output_max_bytes;     /* body bytes queued (not files) per connection; 0 = 4 MiB */
	const char *name;	     /* for logs; NULL = "http" */
};

int http_server_create(struct http_server **out, struct loop *loop,
		       const struct http_handlers *handlers,
		       const struct http_server_options *options, void *context);
/* Starts accepting on listen_fd (borrowed, like conn_server_listen). */
int http_server_listen(struct http_server *server, int listen_fd);
/* Stops accepting (as conn_server_stop_accepting); from now on every response
 * says "Connection: close" and its connection closes after it. */
void http_server_stop_accepting(struct http_server *server);
/* Closes connections with no request in progress and nothing left to send;
 * with `all`, every connection (aborted runs for exchanges in progress). */
void http_server_close_idle(struct http_server *server, bool all);
/* http_server_close_idle(server, true). */
void http_server_close_all(struct http_server *server);
/* Open connections, including closing ones. */
unsigned http_server_count(const struct http_server *server);
/* Either the loop stopped for good (the usual order: loop_destroy, then
 * this), or http_server_close_all was called and the loop has run until
 * http_server_count is 0, and one turn more (the server's timer and no-op
 * complete then).
 * With the loop gone, file payloads still queued get their done with -EPIPE
 * and aborted runs for exchanges in progress, from this call. */
void http_server_destroy(struct http_server *server);

/* --- answering one request. */

void http_exchange_set_user(struct http_exchange *ex, void *user);
void *http_exchange_user(const struct http_exchange *ex);
const struct http_request *http_exchange_request(const struct http_exchange *ex);

/*
 * Errors of the response calls (the exchange stays valid after any of them):
 *   -EINVAL  a caller bug, nothing queued: a call out of order, a bad
 *            header line, a body longer than content_length;
 *   -ENOBUFS from http_response_file: HTTP_FILES_MAX payloads queued, wait
 *            for a done;
 *   other    -EPIPE (the connection is closing), or the connection could
 *            not take more output (-ENOBUFS from start/body: its output
 *            limit, options.output_max_bytes; -ENOMEM): the response cannot go on. Call
 *            http_response_abort; if the connection is closing and the
 *            caller does not, aborted runs once it is gone.
 *
 * Bodies that are not sent: a HEAD request's response, 204 and 304. For
 * these http_response_body and http_response_file queue nothing and return
 * 0 (a file's done still runs, with 0, from the loop), so one code path can
 * answer GET and HEAD. Content-Length is sent for HEAD as given, never for
 * 204 or 304.
 */

/*
 * Queues the status line (200..599) and headers. `headers` are whole
 * "Name: value" lines without CR or LF (borrowed for the call); the server
 * adds Content-Length from content_length (>= 0), which the body must then
 * match exactly, Date, and "Connection: close" when the connection closes
 * after this response ("Connection: keep-alive" to an HTTP/1.0 client that
 * asked for it): lines of the caller's naming Content-Length,
 * Transfer-Encoding, Connection or Date are refused (-EINVAL).
 * 0, or a negative errno (above).
 */
int http_response_start(struct http_exchange *ex, int status, const char *const *headers,
			size_t header_count, int64_t content_length);

/* Queues body bytes (copied). 0 or a negative errno (above). Bytes queued
 * and not yet sent count against options.output_max_bytes per connection
 * (past it the connection closes): send large bodies with
 * http_response_file. */
int http_response_body(struct http_exchange *ex, const void *data, size_t len);

/* res: 0 once the bytes are in the socket, else a negative errno. `ex` is
 * the exchange while it is still valid, and NULL once it has ended (done may
 * run after http_response_end, http_response_abort or aborted: the bytes
 * were still being sent). */
typedef void (*http_file_done_fn)(struct http_exchange *ex, void *arg, int res);

/* Queues `length` (> 0) bytes of fd from `offset` as body (conn_send_file:
 * fd borrowed until done runs; done runs exactly once if 0 is returned,
 * never from inside this call). At most HTTP_FILES_MAX payloads are queued
 * per connection, those of earlier responses on it included: -ENOBUFS past
 * it (nothing queued): queue the rest from a done. */
int http_response_file(struct http_exchange *ex, int fd, uint64_t offset, uint32_t length,
		       http_file_done_fn done, void *arg);

#define HTTP_FILES_MAX 64u /* = CONN_FILES_MAX */

/* The response is complete: the exchange is invalid after this call (file
 * payloads still queued keep their done callbacks, with ex NULL). The next
 * request on the connection is parsed from the next loop turn, while this
 * response's bytes are still going out. Ending with fewer body bytes queued
 * than content_length is a caller bug: what is queued is sent, then the
 * connection closes (the client sees a short body). */
void http_response_end(struct http_exchange *ex);

/* The response cannot be completed: closes the connection at once (queued
 * output is dropped, queued files' done get an error), so that the client
 * sees a short body — or, before http_response_start succeeded, a 500. The
 * exchange is invalid after this call; aborted does not run. */
void http_response_abort(struct http_exchange *ex);

/* A whole small response: start + body + end, with Content-Type. On an
 * error (returned) the exchange is aborted: it is invalid either way. */
int http_reply(struct http_exchange *ex, int status, const char *content_type, const char *body);

/* Reason phrase of a status ("Not Found"), "" if unknown. */
const char *http_status_text(int status);

#endif
