/* http: an HTTP/1.1 server on the loop (registry mirror, health, metrics). */
#include "net/http.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* libhttp-parser calls its method enum `enum http_method`, as net/http.h
 * calls ours: its copy is renamed here, the only file that sees the parser. */
#define http_method http_parser_method
#include <http_parser.h>
#undef http_method

#include "core/clock.h"
#include "core/log.h"
#include "net/conn.h"

/*
 * One request at a time, and who owns what.
 *
 * Each connection is a struct http_conn (from a free list) over a net/conn
 * connection in stream mode. http_conn_data feeds conn's buffered input to
 * the connection's http_parser, which is paused in on_message_complete: the
 * call returns exactly the bytes of one request head as consumed, and the
 * bytes of a pipelined next request stay in conn's input, unparsed. While an
 * exchange is in progress http_conn_data consumes nothing; http_response_end
 * resets the parser and asks conn_input_again to offer the rest from the
 * next loop turn (never from inside the caller's stack).
 *
 * The request's strings are copied into the connection's head buffer as the
 * parser hands them over (so conn's input only ever holds what is not parsed
 * yet), and never more than max_header_bytes of head is fed to the parser:
 * the copy is bounded by the limit, whatever the peer sends. They stay valid
 * until the exchange ends.
 *
 * The exchange lives in its connection and carries a server-wide id. A file
 * payload remembers the id it was queued for: its done gets the exchange
 * only while that exchange is still the live one, NULL after it ended. The
 * same goes for bodies skipped because nothing may follow the head (HEAD,
 * 204, 304), whose done runs from the server's pending no-op.
 *
 * Closing: conn runs every file payload's done, then handlers->closed
 * (http_conn_closed). conn may do that synchronously inside a conn call
 * made from an http_response_* function (a send the loop refused closes at
 * once), so closed never calls out: it detaches the http_conn from its conn
 * (hc->conn = NULL: response calls then fail with -EPIPE) and, if an
 * exchange is still in progress, parks the http_conn on the dead list; the
 * pending no-op runs aborted from the loop and only then frees it for reuse.
 * conn never finishes a connection while http_conn_data runs, so a close
 * from inside the request handler is safe too. http_conns are freed only by
 * http_server_destroy: a stale id check on one is always memory-safe.
 */

#define HTTP_MAX_CONNECTIONS_DEFAULT 1024u
#define HTTP_HEADER_BYTES_DEFAULT (16u << 10)
#define HTTP_HEADERS_DEFAULT 64u
#define HTTP_HEADER_TIMEOUT_DEFAULT_MS 10000u
#define HTTP_IDLE_TIMEOUT_DEFAULT_MS 60000u
#define HTTP_SEND_TIMEOUT_DEFAULT_MS 30000u
#define HTTP_HEADER_BYTES_MAX (64u << 20) /* so that the pipelining room fits conn's u32 */
#define HTTP_PIPELINE_FACTOR 4u		  /* conn's input limit, in max_header_bytes */
#define HTTP_SWEEP_MIN_MS 50u
#define HTTP_SWEEP_MAX_MS 500u
#define HTTP_HEAD_INITIAL 1024u
#define HTTP_KEEP_BUFFER_MAX (64u << 10) /* response-head buffers kept on the free list */
#define HTTP_REJECT_LOG_EVERY 1000u	 /* warn for the first rejected request and every Nth */
#define HTTP_LOG_TARGET_MAX 200		 /* characters of a target in a log line */

_Static_assert(HTTP_FILES_MAX == CONN_FILES_MAX, "one http_file per conn payload");

#define HTTP_BUSY_BODY "too many connections; try again later\n"
#define HTTP_BUSY_LENGTH "38"
_Static_assert(sizeof(HTTP_BUSY_BODY) - 1 == 38, "HTTP_BUSY_LENGTH");

static const char http_busy_reply[] = "HTTP/1.1 503 Service Unavailable\r\n"
				      "Content-Type: text/plain\r\n"
				      "Content-Length: " HTTP_BUSY_LENGTH "\r\n"
				      "Retry-After: 1\r\n"
				      "Connection: close\r\n"
				      "\r\n" HTTP_BUSY_BODY;

/* Which string of the head the parser is handing over. */
enum http_part {
	HTTP_PART_NONE,
	HTTP_PART_URL,
	HTTP_PART_FIELD,
	HTTP_PART_VALUE,
};

enum http_conn_state {
	HTTP_CONN_READING,  /* waiting for or parsing a request head */
	HTTP_CONN_EXCHANGE, /* a request handed over, its response not ended */
	HTTP_CONN_CLOSING,  /* the last answer is queued: closes once it is sent */
};

struct http_exchange {
	struct http_conn *hc;
	uint64_t id; /* server-wide, never 0 for an exchange that ran */
	void *user;
	bool active;	 /* between request and end/abort/aborted */
	bool started;	 /* head queued */
	bool no_body;	 /* HEAD, 204, 304: body calls queue nothing */
	bool keep_alive; /* the connection serves another request after this one */
	int status;
	int64_t content_length;
	uint64_t body_bytes; /* queued */
};

/* A file payload queued through conn (ring per connection, in conn's order). */
struct http_file {
	struct http_conn *hc;
	uint64_t exchange_id;
	http_file_done_fn done;
	void *arg;
};

/* Where a header's strings start in the head buffer (offsets: it grows). */
struct http_header_at {
	size_t name, value;
	bool has_value;
};

struct http_conn {
	struct http_server *server;
	struct conn *conn;	       /* NULL once conn has closed it */
	struct http_conn *prev, *next; /* server's open list; dead or free list (next only) */
	enum http_conn_state state;
	char peer[64];

	http_parser parser;
	bool complete;	    /* on_message_complete ran: the parser is paused */
	bool continuing;    /* the next parser callback may continue the last string */
	bool head_started;  /* on_message_begin ran for the head being parsed */
	uint64_t head_start_ms;
	size_t head_bytes;  /* fed to the parser for this head */
	uint64_t idle_since_ms;
	int reject_status;  /* set by a parser callback that refused the request */
	char reject_text[160];

	/* The request's strings, '\0'-terminated one after the other. */
	char *buf;
	size_t buf_used, buf_cap;
	enum http_part part;
	size_t url_at;
	bool has_url;
	struct http_header_at *header_at; /* max_headers */
	struct http_header *headers;	  /* max_headers */
	unsigned header_count;
	struct http_request request;
	struct http_exchange exchange;

	char *out; /* response heads are built here */
	size_t out_cap;

	struct http_file files[HTTP_FILES_MAX];
	unsigned files_head, files_count;
};

/* The done of a file payload that was not sent (no body allowed). */
struct http_skipped {
	struct http_conn *hc;
	uint64_t exchange_id;
	http_file_done_fn done;
	void *arg;
};

struct http_server {
	struct loop *loop;
	struct conn_server *conns;
	struct http_handlers handlers;
	struct http_server_options options;
	void *context;

	struct http_conn *open; /* doubly linked */
	struct http_conn *dead; /* closed mid-exchange, aborted not run yet */
	struct http_conn *free_list;
	uint64_t exchange_ids;
	uint64_t rejected;

	struct loop_op sweep_op;
	unsigned sweep_ms;
	bool sweep_armed;
	bool closing;  /* close_all: no more sweeps */
	bool draining; /* stop_accepting: every response closes its connection */

	/* Work for the next loop turn: skipped bodies' done, dead connections. */
	struct loop_op pending_op;
	bool pending_armed;
	struct http_skipped *skipped;
	size_t skipped_count, skipped_cap;

	time_t date_second;
	char date[40];
};

static int http_on_message_begin(http_parser *parser);
static int http_on_url(http_parser *parser, const char *at, size_t len);
static int http_on_header_field(http_parser *parser, const char *at, size_t len);
static int http_on_header_value(http_parser *parser, const char *at, size_t len);
static int http_on_headers_complete(http_parser *parser);
static int http_on_message_complete(http_parser *parser);

static const http_parser_settings http_callbacks = {
	.on_message_begin = http_on_message_begin,
	.on_url = http_on_url,
	.on_header_field = http_on_header_field,
	.on_header_value = http_on_header_value,
	.on_headers_complete = http_on_headers_complete,
	.on_message_complete = http_on_message_complete,
};

static void http_pending_kick(struct http_server *server);

/* --- small things. */

const char *http_status_text(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 206: return "Partial Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 303: return "See Other";
	case 304: return "Not Modified";
	case 307: return "Temporary Redirect";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 406: return "Not Acceptable";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 410: return "Gone";
	case 411: return "Length Required";
	case 412: return "Precondition Failed";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 416: return "Range Not Satisfiable";
	case 417: return "Expectation Failed";
	case 421: return "Misdirected Request";
	case 422: return "Unprocessable Content";
	case 426: return "Upgrade Required";
	case 428: return "Precondition Required";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "";
	}
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 9110 IMF-fixdate), once a second. */
static const char *http_date(struct http_server *server)
{
	static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t now = time(NULL);
	struct tm tm;

	if (now == server->date_second && server->date[0])
		return server->date;
	if (!gmtime_r(&now, &tm))
		return server->date;
	snprintf(server->date, sizeof(server->date), "%s, %02d %s %04d %02d:%02d:%02d GMT",
		 days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900,
		 tm.tm_hour, tm.tm_min, tm.tm_sec);
	server->date_second = now;
	return server->date;
}

static bool http_exchange_live(const struct http_conn *hc, uint64_t id)
{
	return hc->exchange.active && hc->exchange.id == id;
}

/* One line per rejected request, at warn for the first and every
 * HTTP_REJECT_LOG_EVERY-th (an attacker must not fill the log). */
static void http_log_rejected(struct http_conn *hc, int status, const char *reason)
{
	struct http_server *server = hc->server;
	uint64_t count = ++server->rejected;

	if ((count - 1) % HTTP_REJECT_LOG_EVERY == 0)
		log_warn("http", "%s rejected a request peer=%s status=%d reason=\"%s\" "
			 "rejected=%llu (one line per %u)", server->options.name, hc->peer, status,
			 reason, (unsigned long long)count, HTTP_REJECT_LOG_EVERY);
	else
		log_debug("http", "%s rejected a request peer=%s status=%d reason=\"%s\"",
			  server->options.name, hc->peer, status, reason);
}

/* The response-head buffer, with room for `need` bytes. */
static int http_out_reserve(struct http_conn *hc, size_t need)
{
	size_t cap = hc->out_cap ? hc->out_cap : HTTP_HEAD_INITIAL;
	char *grown;

	if (need <= hc->out_cap)
		return 0;
	while (cap < need)
		cap *= 2;
	grown = realloc(hc->out, cap);
	if (!grown)
		return -ENOMEM;
	hc->out = grown;
	hc->out_cap = cap;
	return 0;
}

/* A whole text/plain answer (`text` plus a newline) that closes the
 * connection: the server's own refusals. 0 or a negative errno. */
static int http_send_simple(struct http_conn *hc, int status, const char *text)
{
	char buf[512];
	int n;

	if (!hc->conn)
		return -EPIPE;
	n = snprintf(buf, sizeof(buf),
		     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
		     "Date: %s\r\nConnection: close\r\n\r\n%s\n",
		     status, http_status_text(status), strlen(text) + 1, http_date(hc->server),
		     text);
	assert(n > 0 && (size_t)n < sizeof(buf));
	return conn_send_bytes(hc->conn, buf, (size_t)n);
}

/* --- connections. */

/* Ready for the next request head (parser reset, head buffer empty). */
static void http_conn_next_request(struct http_conn *hc)
{
	http_parser_init(&hc->parser, HTTP_REQUEST);
	hc->parser.data = hc;
	hc->state = HTTP_CONN_READING;
	hc->complete = false;
	hc->continuing = false;
	hc->head_started = false;
	hc->head_bytes = 0;
	hc->reject_status = 0;
	hc->reject_text[0] = '\0';
	hc->buf_used = 0;
	hc->part = HTTP_PART_NONE;
	hc->has_url = false;
	hc->header_count = 0;
	hc->idle_since_ms = clock_monotonic_ms();
}

static void http_conn_opened(struct conn *conn)
{
	struct http_server *server = conn_server_context(conn_get_server(conn));
	struct http_conn *hc = server->free_list;

	if (hc) {
		server->free_list = hc->next;
	} else {
		hc = calloc(1, sizeof(*hc));
		if (hc) {
			hc->header_at = calloc(server->options.max_headers, sizeof(*hc->header_at));
			hc->headers = calloc(server->options.max_headers, sizeof(*hc->headers));
		}
		if (!hc || !hc->header_at || !hc->headers) {
			if (hc) {
				free(hc->header_at);
				free(hc->headers);
				free(hc);
			}
			log_warn("http", "out of memory for a connection, closing server=%s peer=%s",
				 server->options.name, conn_peer_name(conn));
			conn_close(conn);
			return;
		}
	}
	hc->server = server;
	hc->conn = conn;
	snprintf(hc->peer, sizeof(hc->peer), "%s", conn_peer_name(conn));
	memset(&hc->exchange, 0, sizeof(hc->exchange));
	hc->exchange.hc = hc;
	hc->files_head = hc->files_count = 0;
	http_conn_next_request(hc);

	hc->prev = NULL;
	hc->next = server->open;
	if (server->open)
		server->open->prev = hc;
	server->open = hc;
	conn_set_user(conn, hc);
}

/* Back to the free list (its connection and exchange are over). */
static void http_conn_put(struct http_conn *hc)
{
	struct http_server *server = hc->server;

	assert(!hc->conn && !hc->exchange.active);
	assert(hc->files_count == 0);
	if (hc->out_cap > HTTP_KEEP_BUFFER_MAX) {
		free(hc->out);
		hc->out = NULL;
		hc->out_cap = 0;
	}
	hc->next = server->free_list;
	server->free_list = hc;
}

static void http_conn_closed(struct conn *conn)
{
	struct http_conn *hc = conn_user(conn);
	struct http_server *server;

	if (!hc)
		return; /* opened ran out of memory */
	server = hc->server;
	hc->conn = NULL;
	hc->state = HTTP_CONN_CLOSING;
	if (hc->prev)
		hc->prev->next = hc->next;
	else
		server->open = hc->next;
	if (hc->next)
		hc->next->prev = hc->prev;
	if (hc->exchange.active) {
		/* aborted runs from the loop (see the top of the file). */
		hc->next = server->dead;
		server->dead = hc;
		http_pending_kick(server);
	} else {
		http_conn_put(hc);
	}
}

/* --- the exchange ends. */

/* The exchange is over (one debug line says how); hc->conn is untouched. */
static void http_exchange_finish(struct http_conn *hc, const char *how)
{
	struct http_exchange *ex = &hc->exchange;

	assert(ex->active);
	log_debug("http", "request server=%s peer=%s method=%s target=%.*s status=%d bytes=%llu%s%s",
		  hc->server->options.name, hc->peer, hc->request.method_name,
		  HTTP_LOG_TARGET_MAX, hc->request.target, ex->started ? ex->status : 0,
		  (unsigned long long)ex->body_bytes, how ? " end=" : "", how ? how : "");
	ex->active = false;
}

/* The pending no-op: skipped bodies' done, then aborted for connections that
 * closed mid-exchange. `res` is what the skipped dones get. */
static void http_run_pending(struct http_server *server, int res)
{
	size_t count = server->skipped_count, i;

	/* Dones queued by these dones wait for the next turn. */
	for (i = 0; i < count; i++) {
		struct http_skipped skipped = server->skipped[i];
		bool live = http_exchange_live(skipped.hc, skipped.exchange_id);

		skipped.done(live ? &skipped.hc->exchange : NULL, skipped.arg, res);
	}
	if (count) {
		memmove(server->skipped, server->skipped + count,
			(server->skipped_count - count) * sizeof(*server->skipped));
		server->skipped_count -= count;
	}

	while (server->dead) {
		struct http_conn *hc = server->dead;

		server->dead = hc->next;
		if (hc->exchange.active) {
			void *user = hc->exchange.user;

			http_exchange_finish(hc, "client gone");
			if (server->handlers.aborted)
				server->handlers.aborted(&hc->exchange, user);
		}
		http_conn_put(hc);
	}
	if (server->skipped_count)
		http_pending_kick(server);
}

static void http_pending_done(struct loop_op *op, int res, uint32_t flags)
{
	struct http_server *server = op->owner;

	(void)res;
	(void)flags;
	server->pending_armed = false;
	http_run_pending(server, 0);
}

static void http_pending_kick(struct http_server *server)
{
	if (server->pending_armed)
		return;
	loop_op_init(&server->pending_op, http_pending_done, server);
	if (loop_nop(server->loop, &server->pending_op) == 0)
		server->pending_armed = true;
	else /* the sweep runs it instead, within HTTP_SWEEP_MAX_MS */
		log_warn("http", "cannot queue a no-op server=%s", server->options.name);
}

/* --- parsing. */

/* Stops the parser: http_conn_data answers `status` with the text and
 * closes. Returns the value that makes the parser stop. */
static int http_reject(struct http_conn *hc, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int http_reject(struct http_conn *hc, int status, const char *fmt, ...)
{
	if (!hc->reject_status) {
		va_list ap;

		hc->reject_status = status;
		va_start(ap, fmt);
		vsnprintf(hc->reject_text, sizeof(hc->reject_text), fmt, ap);
		va_end(ap);
	}
	return -1;
}

/* Room for len more bytes and a terminator (may move hc->buf). */
static int http_buf_reserve(struct http_conn *hc, size_t len)
{
	size_t need = hc->buf_used + len + 1;

	if (need > hc->buf_cap) {
		size_t cap = hc->buf_cap ? hc->buf_cap : HTTP_HEAD_INITIAL;
		char *grown;

		while (cap < need)
			cap *= 2;
		grown = realloc(hc->buf, cap);
		if (!grown)
			return -ENOMEM;
		hc->buf = grown;
		hc->buf_cap = cap;
	}
	return 0;
}

/* Appends data, which must not point into hc->buf (it may move). */
static int http_buf_put(struct http_conn *hc, const char *data, size_t len)
{
	if (http_buf_reserve(hc, len) < 0)
		return -ENOMEM;
	memcpy(hc->buf + hc->buf_used, data, len);
	hc->buf_used += len;
	return 0;
}

/* Terminates the string being received. */
static void http_part_end(struct http_conn *hc)
{
	if (hc->part == HTTP_PART_NONE)
		return;
	assert(hc->buf_used < hc->buf_cap); /* http_buf_put keeps room for it */
	hc->buf[hc->buf_used++] = '\0';
	hc->part = HTTP_PART_NONE;
}

/* Appends what the parser hands over to the string of `part`, starting a
 * new string when the part changes. */
static int http_part_append(struct http_conn *hc, enum http_part part, const char *at, size_t len)
{
	bool continuing = hc->continuing;

	hc->continuing = false;
	if (part == hc->part && !continuing) {
		/* A new string of the same part without one of another between. */
		if (part == HTTP_PART_VALUE) {
			if (http_buf_put(hc, " ", 1) < 0) /* obs-fold: one space */
				return http_reject(hc, 500, "out of memory");
		} else {
			return http_reject(hc, 400, "bad request: header field without a value");
		}
	} else if (part != hc->part) {
		http_part_end(hc);
		switch (part) {
		case HTTP_PART_URL:
			hc->url_at = hc->buf_used;
			hc->has_url = true;
			break;
		case HTTP_PART_FIELD:
			if (hc->header_count == hc->server->options.max_headers)
				return http_reject(hc, 431, "more than %u header fields",
						   hc->server->options.max_headers);
			hc->header_at[hc->header_count].name = hc->buf_used;
			hc->header_at[hc->header_count].has_value = false;
			hc->header_count++;
			break;
		case HTTP_PART_VALUE:
			assert(hc->header_count > 0);
			hc->header_at[hc->header_count - 1].value = hc->buf_used;
			hc->header_at[hc->header_count - 1].has_value = true;
			break;
		case HTTP_PART_NONE:
			assert(0);
			break;
		}
		hc->part = part;
	}
	if (http_buf_put(hc, at, len) < 0)
		return http_reject(hc, 500, "out of memory");
	return 0;
}

static int http_on_message_begin(http_parser *parser)
{
	struct http_conn *hc = parser->data;

	hc->head_started = true;
	hc->head_start_ms = clock_monotonic_ms();
	return 0;
}

static int http_on_url(http_parser *parser, const char *at, size_t len)
{
	return http_part_append(parser->data, HTTP_PART_URL, at, len);
}

static int http_on_header_field(http_parser *parser, const char *at, size_t len)
{
	return http_part_append(parser->data, HTTP_PART_FIELD, at, len);
}

static int http_on_header_value(http_parser *parser, const char *at, size_t len)
{
	return http_part_append(parser->data, HTTP_PART_VALUE, at, len);
}

static int http_on_headers_complete(http_parser *parser)
{
	struct http_conn *hc = parser->data;
	bool encoded = (parser->flags & F_CHUNKED) != 0;

	http_part_end(hc);
	if (parser->http_major != 1)
		return http_reject(hc, 400, "bad request: HTTP version %u.%u is not supported",
				   parser->http_major, parser->http_minor);
	for (unsigned i = 0; i < hc->header_count && !encoded; i++)
		encoded = strcasecmp(hc->buf + hc->header_at[i].name, "Transfer-Encoding") == 0;
	/* content_length is ULLONG_MAX when the request has none. */
	if (encoded || (parser->content_length > 0 && parser->content_length != UINT64_MAX))
		return http_reject(hc, 413, "request bodies are not accepted here");
	return 0;
}

static int http_on_message_complete(http_parser *parser)
{
	struct http_conn *hc = parser->data;

	/* Stop right after this request: a pipelined one stays in conn's input. */
	hc->complete = true;
	http_parser_pause(parser, 1);
	return 0;
}

/* Blanks around a header value go. */
static const char *http_trim(char *value)
{
	size_t len;

	while (*value == ' ' || *value == '\t')
		value++;
	len = strlen(value);
	while (len && (value[len - 1] == ' ' || value[len - 1] == '\t'))
		value[--len] = '\0';
	return value;
}

/* The head is complete: the request goes to the handler. */
static void http_conn_dispatch(struct http_conn *hc)
{
	struct http_server *server = hc->server;
	struct http_request *request = &hc->request;
	struct http_exchange *ex = &hc->exchange;
	http_parser *parser = &hc->parser;
	size_t url_len, path_len, path_at;
	const char *question;

	assert(hc->has_url && hc->part == HTTP_PART_NONE);
	/* The path is a copy of the target up to '?' (the only string added
	 * after the head: the buffer stays within twice the head limit). */
	url_len = strlen(hc->buf + hc->url_at);
	question = memchr(hc->buf + hc->url_at, '?', url_len);
	path_len = question ? (size_t)(question - (hc->buf + hc->url_at)) : url_len;
	path_at = hc->buf_used;
	/* The copy comes from the buffer itself: room first (a realloc moves
	 * it; copying from the old block read freed memory), then the copy. */
	if (http_buf_reserve(hc, path_len) < 0) {
		http_reject(hc, 500, "out of memory");
		return;
	}
	memcpy(hc->buf + path_at, hc->buf + hc->url_at, path_len);
	hc->buf_used += path_len;
	hc->buf[hc->buf_used++] = '\0';
	assert(hc->buf_used <= 2 * server->options.max_header_bytes + 2);

	request->target = hc->buf + hc->url_at;
	request->path = hc->buf + path_at;
	request->query = question ? request->target + path_len + 1 : "";
	for (unsigned i = 0; i < hc->header_count; i++) {
		hc->headers[i].name = hc->buf + hc->header_at[i].name;
		hc->headers[i].value = hc->header_at[i].has_value
					       ? http_trim(hc->buf + hc->header_at[i].value)
					       : "";
	}
	request->headers = hc->headers;
	request->header_count = hc->header_count;
	request->method = parser->method == HTTP_GET	? HTTP_METHOD_GET
			  : parser->method == HTTP_HEAD ? HTTP_METHOD_HEAD
							: HTTP_METHOD_OTHER;
	request->method_name = http_method_str((enum http_parser_method)parser->method);
	request->version_minor = parser->http_minor;
	request->peer = hc->peer;

	memset(ex, 0, sizeof(*ex));
	ex->hc = hc;
	ex->id = ++server->exchange_ids;
	ex->active = true;
	ex->no_body = request->method == HTTP_METHOD_HEAD;
	/* An upgrade (CONNECT, Upgrade:) is not followed: the connection
	 * closes after the answer. */
	ex->keep_alive = http_should_keep_alive(parser) && !parser->upgrade;
	hc->state = HTTP_CONN_EXCHANGE;
	hc->head_started = false;
	server->handlers.request(ex, request, server->context);
}

/* Answers the rejected request (hc->reject_status) and marks the
 * connection closing; the caller closes it after the answer is sent. */
static void http_conn_refuse(struct http_conn *hc)
{
	int status = hc->reject_status;

	assert(status >= 400);
	hc->state = HTTP_CONN_CLOSING;
	hc->head_started = false;
	if (http_send_simple(hc, status, hc->reject_text) == 0)
		http_log_rejected(hc, status, hc->reject_text);
}

static ssize_t http_conn_data(struct conn *conn, const uint8_t *bytes, size_t len)
{
	struct http_conn *hc = conn_user(conn);
	size_t limit, feed, parsed;
	enum http_errno error;

	if (!hc || hc->state != HTTP_CONN_READING)
		return 0; /* one exchange at a time: the rest waits in conn's input */
	limit = hc->server->options.max_header_bytes;
	assert(hc->head_bytes < limit);
	feed = len < limit - hc->head_bytes ? len : limit - hc->head_bytes;
	parsed = http_parser_execute(&hc->parser, &http_callbacks, (const char *)bytes, feed);
	/* The parser hands a string that goes on past `feed` over in parts. */
	hc->continuing = true;
	hc->head_bytes += parsed;
	error = HTTP_PARSER_ERRNO(&hc->parser);

	if (!hc->reject_status && error == HPE_PAUSED && hc->complete) {
		http_conn_dispatch(hc);
		if (!hc->reject_status)
			return (ssize_t)parsed;
	} else if (!hc->reject_status && error == HPE_HEADER_OVERFLOW) {
		http_reject(hc, 431, "request line and headers larger than %u bytes",
			    (unsigned)HTTP_MAX_HEADER_SIZE);
	} else if (!hc->reject_status && error != HPE_OK) {
		http_reject(hc, 400, "bad request: %s", http_errno_description(error));
	} else if (!hc->reject_status && hc->head_bytes >= limit) {
		http_reject(hc, 431, "request line and headers larger than %zu bytes", limit);
	}
	if (hc->reject_status) {
		http_conn_refuse(hc);
		return -EPROTO; /* conn closes once the answer is sent */
	}
	assert(parsed == feed);
	return (ssize_t)parsed;
}

/* --- timers: slow request heads, idle connections. */

static void http_sweep_arm(struct http_server *server);

static void http_sweep_done(struct loop_op *op, int res, uint32_t flags)
{
	struct http_server *server = op->owner;
	uint64_t now_ms = clock_monotonic_ms();

	(void)flags;
	server->sweep_armed = false;
	if (res == -ECANCELED || server->closing)
		return;
	if (!server->pending_armed && (server->dead || server->skipped_count))
		http_run_pending(server, 0); /* the no-op could not be queued */
	for (struct http_conn *hc = server->open, *next; hc; hc = next) {
		struct conn *conn = hc->conn;

		next = hc->next; /* closing hc takes it off the list, nothing else */
		if (hc->state != HTTP_CONN_READING) {
			continue;
		} else if (hc->head_started) {
			if (now_ms - hc->head_start_ms < server->options.header_timeout_ms)
				continue;
			http_reject(hc, 408, "request head not complete within %u ms",
				    server->options.header_timeout_ms);
			http_conn_refuse(hc);
			conn_close_after_send(conn);
		} else if (conn_output_pending(conn)) {
			hc->idle_since_ms = now_ms; /* the last response is still going out */
		} else if (now_ms - hc->idle_since_ms >= server->options.idle_timeout_ms) {
			log_debug("http", "closing idle connection server=%s peer=%s",
				  server->options.name, hc->peer);
			hc->state = HTTP_CONN_CLOSING;
			conn_close(conn);
		}
	}
	http_sweep_arm(server);
}

static void http_sweep_arm(struct http_server *server)
{
	if (server->sweep_armed || server->closing)
		return;
	loop_op_init(&server->sweep_op, http_sweep_done, server);
	if (loop_timeout(server->loop, &server->sweep_op, server->sweep_ms) == 0)
		server->sweep_armed = true;
	else
		log_error("http", "cannot queue the timeout sweep server=%s: header and idle "
			  "timeouts are off", server->options.name);
}

/* --- server. */

int http_server_create(struct http_server **out, struct loop *loop,
		       const struct http_handlers *handlers,
		       const struct http_server_options *options, void *context)
{
	const struct conn_handlers conn_handlers = {
		.data = http_conn_data,
		.opened = http_conn_opened,
		.closed = http_conn_closed,
	};
	struct conn_server_options conn_options;
	struct http_server *server;
	unsigned shortest_ms;
	int rc;

	if (!handlers || !handlers->request || !options)
		return -EINVAL;
	if (options->max_header_bytes > HTTP_HEADER_BYTES_MAX)
		return -EINVAL;
	server = calloc(1, sizeof(*server));
	if (!server)
		return -ENOMEM;
	server->loop = loop;
	server->handlers = *handlers;
	server->options = *options;
	server->context = context;
	if (!server->options.max_connections)
		server->options.max_connections = HTTP_MAX_CONNECTIONS_DEFAULT;
	if (!server->options.max_header_bytes)
		server->options.max_header_bytes = HTTP_HEADER_BYTES_DEFAULT;
	if (!server->options.max_headers)
		server->options.max_headers = HTTP_HEADERS_DEFAULT;
	if (!server->options.header_timeout_ms)
		server->options.header_timeout_ms = HTTP_HEADER_TIMEOUT_DEFAULT_MS;
	if (!server->options.idle_timeout_ms)
		server->options.idle_timeout_ms = HTTP_IDLE_TIMEOUT_DEFAULT_MS;
	if (!server->options.send_timeout_ms)
		server->options.send_timeout_ms = HTTP_SEND_TIMEOUT_DEFAULT_MS;
	if (!server->options.name)
		server->options.name = "http";

	memset(&conn_options, 0, sizeof(conn_options));
	conn_options.max_connections = server->options.max_connections;
	conn_options.max_message_bytes =
		(uint32_t)(HTTP_PIPELINE_FACTOR * server->options.max_header_bytes);
	conn_options.idle_timeout_ms = 0; /* ours: not while a response is in progress */
	conn_options.send_timeout_ms = server->options.send_timeout_ms;
	conn_options.output_max_bytes = server->options.output_max_bytes; /* 0: conn's 4 MiB */
	conn_options.name = server->options.name;
	conn_options.busy_reply = http_busy_reply;
	rc = conn_server_create(&server->conns, loop, &conn_handlers, &conn_options, server);
	if (rc < 0) {
		free(server);
		return rc;
	}

	/* A quarter of the shortest timeout, so that it is kept within 25 %. */
	shortest_ms = server->options.header_timeout_ms < server->options.idle_timeout_ms
			      ? server->options.header_timeout_ms
			      : server->options.idle_timeout_ms;
	server->sweep_ms = shortest_ms / 4;
	if (server->sweep_ms < HTTP_SWEEP_MIN_MS)
		server->sweep_ms = HTTP_SWEEP_MIN_MS;
	if (server->sweep_ms > HTTP_SWEEP_MAX_MS)
		server->sweep_ms = HTTP_SWEEP_MAX_MS;
	http_sweep_arm(server);
	*out = server;
	return 0;
}

int http_server_listen(struct http_server *server, int listen_fd)
{
	return conn_server_listen(server->conns, listen_fd);
}

void http_server_stop_accepting(struct http_server *server)
{
	server->draining = true;
	conn_server_stop_accepting(server->conns);
}

void http_server_close_idle(struct http_server *server, bool all)
{
	if (all) {
		server->closing = true;
		if (server->sweep_armed)
			loop_cancel_op(server->loop, &server->sweep_op);
		conn_server_close_idle(server->conns, true);
		return;
	}
	for (struct http_conn *hc = server->open, *next; hc; hc = next) {
		next = hc->next;
		if (hc->state == HTTP_CONN_READING && !hc->head_started &&
		    !conn_output_pending(hc->conn)) {
			hc->state = HTTP_CONN_CLOSING;
			conn_close(hc->conn);
		}
	}
}

void http_server_close_all(struct http_server *server)
{
	http_server_close_idle(server, true);
}

unsigned http_server_count(const struct http_server *server)
{
	return conn_server_count(server->conns);
}

static void http_conn_free(struct http_conn *hc)
{
	free(hc->buf);
	free(hc->out);
	free(hc->header_at);
	free(hc->headers);
	free(hc);
}

void http_server_destroy(struct http_server *server)
{
	if (!server)
		return;
	server->closing = true;
	/* Connections still open here mean the loop is gone: conn runs their
	 * payloads' done (-EPIPE) and frees them, without closed. */
	conn_server_destroy(server->conns);
	server->conns = NULL;
	while (server->open) {
		struct http_conn *hc = server->open;

		server->open = hc->next;
		hc->conn = NULL;
		hc->next = server->dead;
		server->dead = hc;
	}
	http_run_pending(server, -EPIPE);
	while (server->skipped_count) /* queued by the dones just run */
		http_run_pending(server, -EPIPE);
	while (server->free_list) {
		struct http_conn *hc = server->free_list;

		server->free_list = hc->next;
		http_conn_free(hc);
	}
	free(server->skipped);
	free(server);
}

/* --- answering. */

void http_exchange_set_user(struct http_exchange *ex, void *user)
{
	ex->user = user;
}

void *http_exchange_user(const struct http_exchange *ex)
{
	return ex->user;
}

const struct http_request *http_exchange_request(const struct http_exchange *ex)
{
	return &ex->hc->request;
}

/* A caller's header line: "Name: value", no CR or LF, not one of ours. */
static bool http_header_line_ok(const char *line)
{
	static const char *const ours[] = { "Content-Length", "Transfer-Encoding", "Connection",
					    "Date" };
	const char *colon = strchr(line, ':');
	size_t name_len;

	if (!colon || colon == line || strpbrk(line, "\r\n"))
		return false;
	name_len = (size_t)(colon - line);
	if (memchr(line, ' ', name_len) || memchr(line, '\t', name_len))
		return false;
	for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
		if (strlen(ours[i]) == name_len && strncasecmp(line, ours[i], name_len) == 0)
			return false;
	return true;
}

int http_response_start(struct http_exchange *ex, int status, const char *const *headers,
			size_t header_count, int64_t content_length)
{
	struct http_conn *hc = ex->hc;
	struct http_server *server = hc->server;
	bool bodyless = status == 204 || status == 304;
	size_t need = 256, len = 0;
	int n, rc;

	assert(ex->active && !ex->started);
	if (!ex->active || ex->started || status < 200 || status > 599 || content_length < 0)
		return -EINVAL;
	for (size_t i = 0; i < header_count; i++) {
		if (!http_header_line_ok(headers[i])) {
			log_warn("http", "response header line refused server=%s line=\"%.80s\": "
				 "not \"Name: value\", or a line the server writes itself",
				 server->options.name, headers[i]);
			return -EINVAL;
		}
		need += strlen(headers[i]) + 2;
	}
	if (!hc->conn)
		return -EPIPE;
	if (http_out_reserve(hc, need) < 0)
		return -ENOMEM;
	if (server->draining)
		ex->keep_alive = false;

	n = snprintf(hc->out, hc->out_cap, "HTTP/1.1 %d %s\r\n", status, http_status_text(status));
	len = (size_t)n;
	for (size_t i = 0; i < header_count; i++) {
		size_t line_len = strlen(headers[i]);

		memcpy(hc->out + len, headers[i], line_len);
		memcpy(hc->out + len + line_len, "\r\n", 2);
		len += line_len + 2;
	}
	if (!bodyless)
		len += (size_t)snprintf(hc->out + len, hc->out_cap - len, "Content-Length: %lld\r\n",
					(long long)content_length);
	len += (size_t)snprintf(hc->out + len, hc->out_cap - len, "Date: %s\r\n%s\r\n",
				http_date(server),
				!ex->keep_alive ? "Connection: close\r\n"
				: hc->request.version_minor == 0 ? "Connection: keep-alive\r\n"
								 : "");
	assert(len < hc->out_cap);
	rc = conn_send_bytes(hc->conn, hc->out, len);
	if (rc < 0)
		return rc;
	ex->started = true;
	ex->status = status;
	ex->no_body = ex->no_body || bodyless;
	ex->content_length = bodyless ? 0 : content_length;
	return 0;
}

int http_response_body(struct http_exchange *ex, const void *data, size_t len)
{
	struct http_conn *hc = ex->hc;
	int rc;

	assert(ex->active && ex->started);
	if (!ex->active || !ex->started)
		return -EINVAL;
	if (ex->no_body || len == 0)
		return 0;
	if (len > (uint64_t)ex->content_length - ex->body_bytes) {
		log_warn("http", "response body longer than its Content-Length server=%s "
			 "target=%.*s content_length=%lld queued=%llu more=%zu", hc->server->options.name,
			 HTTP_LOG_TARGET_MAX, hc->request.target, (long long)ex->content_length,
			 (unsigned long long)ex->body_bytes, len);
		return -EINVAL;
	}
	if (!hc->conn)
		return -EPIPE;
	rc = conn_send_bytes(hc->conn, data, len);
	if (rc < 0)
		return rc;
	ex->body_bytes += len;
	return 0;
}

static void http_file_sent(struct conn *conn, void *arg, int res)
{
	struct http_file *file = arg;
	struct http_conn *hc = file->hc;
	struct http_file sent = *file;

	(void)conn;
	/* conn runs dones in the order the payloads were queued. */
	assert(hc->files_count > 0 && file == &hc->files[hc->files_head]);
	hc->files_head = (hc->files_head + 1) % HTTP_FILES_MAX;
	hc->files_count--;
	sent.done(http_exchange_live(hc, sent.exchange_id) ? &hc->exchange : NULL, sent.arg, res);
}

/* A file payload that must not be sent: its done runs from the loop. */
static int http_skip_file(struct http_conn *hc, http_file_done_fn done, void *arg)
{
	struct http_server *server = hc->server;

	if (server->skipped_count == server->skipped_cap) {
		size_t cap = server->skipped_cap ? 2 * server->skipped_cap : 16;
		struct http_skipped *grown = realloc(server->skipped, cap * sizeof(*grown));

		if (!grown)
			return -ENOMEM;
		server->skipped = grown;
		server->skipped_cap = cap;
	}
	server->skipped[server->skipped_count++] = (struct http_skipped){
		.hc = hc, .exchange_id = hc->exchange.id, .done = done, .arg = arg,
	};
	http_pending_kick(server);
	return 0;
}

int http_response_file(struct http_exchange *ex, int fd, uint64_t offset, uint32_t length,
		       http_file_done_fn done, void *arg)
{
	struct http_conn *hc = ex->hc;
	struct http_file *file;
	int rc;

	assert(done);
	assert(ex->active && ex->started);
	if (!ex->active || !ex->started || fd < 0 || length == 0)
		return -EINVAL;
	if (ex->no_body)
		return http_skip_file(hc, done, arg);
	if (length > (uint64_t)ex->content_length - ex->body_bytes) {
		log_warn("http", "response body longer than its Content-Length server=%s "
			 "target=%.*s content_length=%lld queued=%llu more=%u", hc->server->options.name,
			 HTTP_LOG_TARGET_MAX, hc->request.target, (long long)ex->content_length,
			 (unsigned long long)ex->body_bytes, length);
		return -EINVAL;
	}
	if (!hc->conn)
		return -EPIPE;
	if (hc->files_count == HTTP_FILES_MAX)
		return -ENOBUFS;
	file = &hc->files[(hc->files_head + hc->files_count) % HTTP_FILES_MAX];
	file->hc = hc;
	file->exchange_id = ex->id;
	file->done = done;
	file->arg = arg;
	hc->files_count++;
	rc = conn_send_file(hc->conn, fd, offset, length, http_file_sent, file);
	if (rc < 0) {
		hc->files_count--; /* conn did not keep it: no done */
		return rc;
	}
	ex->body_bytes += length;
	return 0;
}

void http_response_end(struct http_exchange *ex)
{
	struct http_conn *hc = ex->hc;
	struct conn *conn = hc->conn;

	assert(ex->active);
	if (!ex->active)
		return;
	if (!ex->started) {
		log_warn("http", "response ended before it started server=%s target=%.*s",
			 hc->server->options.name, HTTP_LOG_TARGET_MAX, hc->request.target);
		http_response_abort(ex);
		return;
	}
	if (!ex->no_body && ex->body_bytes < (uint64_t)ex->content_length) {
		log_warn("http", "response ended short of its Content-Length, closing server=%s "
			 "peer=%s target=%.*s content_length=%lld queued=%llu",
			 hc->server->options.name, hc->peer, HTTP_LOG_TARGET_MAX, hc->request.target,
			 (long long)ex->content_length, (unsigned long long)ex->body_bytes);
		http_exchange_finish(hc, "short");
		if (conn) {
			hc->state = HTTP_CONN_CLOSING;
			conn_close_after_send(conn); /* what is queued is right, just short */
		}
		return;
	}
	http_exchange_finish(hc, NULL);
	if (!conn)
		return; /* closed meanwhile: the pending no-op frees it */
	if (ex->keep_alive && !hc->server->draining) {
		http_conn_next_request(hc);
		conn_input_again(conn); /* a pipelined request, from the next turn */
	} else {
		hc->state = HTTP_CONN_CLOSING;
		conn_close_after_send(conn);
	}
}

void http_response_abort(struct http_exchange *ex)
{
	struct http_conn *hc = ex->hc;
	struct conn *conn = hc->conn;
	bool started = ex->started;

	assert(ex->active);
	if (!ex->active)
		return;
	http_exchange_finish(hc, "aborted");
	if (!conn)
		return;
	hc->state = HTTP_CONN_CLOSING;
	if (started) {
		conn_close(conn); /* the client sees a short body */
	} else {
		(void)http_send_simple(hc, 500, "internal error: the response was abandoned");
		conn_close_after_send(conn);
	}
}

int http_reply(struct http_exchange *ex, int status, const char *content_type, const char *body)
{
	char line[128];
	const char *lines[1] = { NULL };
	size_t count = 0, len = body ? strlen(body) : 0;
	int rc;

	if (content_type) {
		snprintf(line, sizeof(line), "Content-Type: %s", content_type);
		lines[count++] = line;
	}
	rc = http_response_start(ex, status, lines, count, (int64_t)len);
	if (rc == 0 && len)
		rc = http_response_body(ex, body, len);
	if (rc < 0) {
		if (ex->active)
			http_response_abort(ex);
		return rc;
	}
	http_response_end(ex);
	return 0;
}
