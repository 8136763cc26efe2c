/* origin: HTTP(S) client for back-to-source downloads, libcurl's multi interface on the loop. */
#ifndef RINGFLY_NET_ORIGIN_H
#define RINGFLY_NET_ORIGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"

/*
 * An origin runs any number of HTTP(S) requests on the calling thread's
 * loop: libcurl's multi interface asks for socket readiness and timers, the
 * loop delivers them (a one-shot poll per socket, one timeout), no second
 * thread and no busy loop. Every callback below runs from loop_run().
 *
 * Redirects are followed (up to max_redirects), TLS peers are verified unless
 * `insecure`, only http:// and https:// URLs are accepted (also as redirect
 * targets), and requests speak HTTP/1.1 so that parallel ranges use parallel
 * connections. Bodies are delivered unchanged (no content decoding).
 *
 * A request's life: origin_request_start → on_headers once, for the final
 * 2xx response (after redirects) → on_data zero or more times → on_done once.
 * A final status >= 400 (or a 3xx that was not followed) is an error: no
 * on_headers, no on_data, on_done names the status. origin_request_cancel
 * ends a request silently instead: no callback runs for it after the call.
 * The request handle is valid from start until on_done returns or cancel is
 * called, whichever comes first.
 *
 * Passthrough (params.passthrough) relays a response instead, for a proxy
 * that hands the upstream's answer to its own client: redirects are not
 * followed, on_headers runs once for the final response whatever its status
 * (a 1xx interim response is skipped; 3xx, 4xx and 5xx are reported as they
 * are) with every header line of that response, on_data gets its body (also
 * of a 3xx/4xx/5xx), and on_done's error is 0 for any complete HTTP
 * response. Transport errors (refused, timed out, TLS) still end in on_done
 * with an error. Header lines are reported as received, hop-by-hop ones
 * (Connection, Transfer-Encoding, Keep-Alive, ...) and Content-Length
 * included: filtering them is the caller's job. The body is as libcurl
 * delivers it: chunked transfer coding is decoded (a "Transfer-Encoding:
 * chunked" line describes bytes the caller never sees), content codings
 * (gzip) are not. A response head larger than ORIGIN_PASSTHROUGH_HEAD_BYTES_MAX
 * bytes or ORIGIN_PASSTHROUGH_HEAD_LINES_MAX lines ends the request with
 * -E2BIG ("response headers too large"), before on_headers.
 *
 * The origin functions but origin_destroy may be called from inside the callbacks (start a
 * request from on_done, cancel or resume another from on_data): what libcurl
 * forbids inside its own callbacks is deferred to the next loop turn.
 */

struct origin;
struct origin_request;

/* on_data's return value: do not take these bytes now, pause the transfer. */
#define ORIGIN_PAUSE 1

/* Passthrough's bound on one response head: the bytes of its header lines as
 * received (CRLF included, status line excluded), and how many lines. */
#define ORIGIN_PASSTHROUGH_HEAD_BYTES_MAX (64u << 10)
#define ORIGIN_PASSTHROUGH_HEAD_LINES_MAX 100u

struct origin_options {
	const char *ca_file;		/* PEM bundle of trusted CAs (copied); NULL: the system's */
	bool insecure;			/* do not verify TLS peers (like curl --insecure) */
	unsigned connect_timeout_ms;	/* 0 = 10 s */
	unsigned low_speed_time_s;	/* abort below low_speed_bytes_per_s this long; 0 = 30 s */
	unsigned low_speed_bytes_per_s; /* 0 = 1 (i.e. abort a transfer stalled that long) */
	int max_redirects;		/* 0 = 10; negative: do not follow redirects */
	const char *user_agent;		/* copied; NULL: "ringfly/<version>" */
	unsigned max_requests;		/* in flight at once; 0 = 1024; past it -EBUSY */
	unsigned max_headers;		/* extra request headers per request; 0 = 64 */
	size_t buffer_bytes;		/* receive buffer per transfer; 0 = 256 KiB */
};

enum origin_method {
	ORIGIN_GET = 0,
	ORIGIN_HEAD,
};

struct origin_request_params {
	const char *url; /* copied */
	enum origin_method method;
	bool range; /* send Range: bytes=range_start-... */
	uint64_t range_start;
	uint64_t range_length; /* 0 = to the end */
	/* Extra request headers, "Name: value" each (borrowed for the call:
	 * copied into the request). At most max_headers. */
	const char *const *headers;
	size_t header_count;
	unsigned timeout_ms; /* the whole request, paused time included; 0 = none */
	/* Relay mode: redirects are not followed, every final status (1xx
	 * excluded, 3xx/4xx/5xx included) goes to on_headers and its body to
	 * on_data; on_done's error is 0 for any complete HTTP response. */
	bool passthrough;
};

/* The final response, as on_headers sees it (strings borrowed for the call). */
struct origin_response {
	long status; /* 200, 206, ... */
	/* Body bytes to come (for a HEAD: what a GET would send); -1 unknown. */
	int64_t content_length;
	/* Length of the whole resource: Content-Range's total for a 206,
	 * Content-Length for a 200 (also to a HEAD); -1 unknown. */
	int64_t total_length;
	/* The server honours byte ranges: a 206 to our Range, or a response
	 * without a Range request that says "Accept-Ranges: bytes". A 200 to a
	 * Range request (a server ignoring ranges) is false: the body is the
	 * whole resource from byte 0, and the caller should fall back. */
	bool accepts_ranges;
	const char *etag;	   /* "" if none */
	const char *last_modified; /* "" if none */
	const char *effective_url; /* after redirects */
	const char *reason;	   /* the status line's reason phrase (may be cut short), or "" */
	/* Passthrough only (NULL and 0 otherwise): every header line of the
	 * final response, "Name: value" without CRLF, in order, as received
	 * (a folded continuation line is joined to the line before it with one
	 * space). The status line is not one of them. */
	const char *const *header_lines;
	size_t header_line_count;
};

/* How a request ended (strings borrowed for the call). */
struct origin_result {
	/* 0, or a negative errno: -ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH,
	 * -EPROTO (TLS handshake or verification), -ENOENT (404/410),
	 * -EACCES (401/403), -EIO (other HTTP status, transfer errors),
	 * -ELOOP (too many redirects), -E2BIG (passthrough: response headers
	 * too large), or the errno on_headers returned. Passthrough reports no
	 * HTTP status as an error. */
	int error;
	long status;	     /* last HTTP status seen; 0 if none */
	uint64_t body_bytes; /* bytes taken by on_data */
	/* NULL on success; otherwise what, where and why, naming the method
	 * and URL: "GET http://h/f: HTTP 404 Not Found",
	 * "GET http://h/f: connection refused", "...: timed out after 500 ms",
	 * "...: TLS certificate verification failed (...)". */
	const char *message;
};

struct origin_callbacks {
	/* The final 2xx response's head (passthrough: the final response's,
	 * whatever its status). Return 0 to go on, or a negative
	 * errno to stop: on_done then reports that errno. Optional. */
	int (*on_headers)(struct origin_request *req, const struct origin_response *response,
			  void *arg);
	/* Body bytes (borrowed for the call). Return 0 when taken,
	 * ORIGIN_PAUSE to pause (these bytes were NOT taken: they are
	 * delivered again once origin_request_resume is called), or a negative
	 * errno to stop (on_done reports it). NULL: bytes are discarded. */
	int (*on_data)(struct origin_request *req, const void *buf, size_t len, void *arg);
	/* The end, exactly once unless the request was cancelled. The handle
	 * is invalid once this returns. */
	void (*on_done)(struct origin_request *req, const struct origin_result *result, void *arg);
};

/* Returns 0 and a new origin in *out (free with origin_destroy), or a
 * negative errno. `loop` and `options` are borrowed (options only for the
 * call). It does not touch libcurl: the process's first request loads and
 * initialises it (net/curl-load.h), each origin's first request makes its
 * multi handle. */
int origin_create(struct origin **out, struct loop *loop, const struct origin_options *options);

/*
 * Frees the origin. Requests still running are dropped without callbacks.
 * Like conn_server_destroy, it is for after loop_run has returned for good
 * (before or after loop_destroy): it does not touch the loop, and the loop
 * must not run again while records of this origin (a poll, a timeout) may
 * still be in flight.
 */
void origin_destroy(struct origin *origin);

/*
 * Starts a request. callbacks and params are borrowed for the call (copied);
 * `arg` is passed to every callback. Returns 0 and the handle in *out, or a
 * negative errno (-EINVAL: bad params or URL scheme, -EBUSY: max_requests,
 * -E2BIG: too many headers, -ENOMEM, -ELIBACC: libcurl could not be loaded,
 * origin_strerror says why). No callback runs before this returns.
 */
int origin_request_start(struct origin *origin, const struct origin_request_params *params,
			 const struct origin_callbacks *callbacks, void *arg,
			 struct origin_request **out);

/* Resumes a request paused by on_data returning ORIGIN_PAUSE; the bytes it
 * declined come first. A no-op if it is not paused. */
void origin_request_resume(struct origin_request *req);

/* Ends a request now: no callback runs for it after this call, the handle is
 * invalid, and its memory is reused once libcurl lets go of it. */
void origin_request_cancel(struct origin_request *req);

/* Requests started and not yet done or cancelled. */
unsigned origin_active(const struct origin *origin);

/* The text for a negative errno from origin_request_start: strerror's, but
 * for -ELIBACC (libcurl could not be loaded; it is loaded by the process's
 * first request, net/curl-load.h) the library's path and why it failed. */
const char *origin_strerror(int rc);

#endif
