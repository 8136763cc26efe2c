/* mirror: the registry mirror: blobs as P2P tasks, the rest forwarded. See mirror.h. */
#include "daemon/mirror.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/hash.h"
#include "core/log.h"
#include "net/origin.h"

#define MIRROR_FORWARD_TIMEOUT_DEFAULT_MS 60000u
#define MIRROR_CHECK_TIMEOUT_MS 30000u
#define MIRROR_FORWARD_MAX_DEFAULT (16u << 20) /* one answer; the total below */
#define MIRROR_FORWARD_TOTAL_MAX (128u << 20) /* forwarded bodies held at once, until sent */
#define MIRROR_RETRY_MS 10u		      /* no payload slot on the connection: look again */
#define MIRROR_CHUNK_BYTES (4u << 20)	 /* one spliced payload */
#define MIRROR_FILES_INFLIGHT 8u	 /* payloads queued per response */
#define MIRROR_PUBLIC_MAX 4096u		 /* blobs known to need no credentials */
#define MIRROR_HEADERS_MAX 64u
#define MIRROR_URL_MAX 4096u

struct mirror_upstream {
	char ns[256];	/* "" = only by its URL's host */
	char host[256]; /* host[:port] of the URL */
	char base[1024]; /* scheme://host[:port][/prefix], no trailing slash */
};

enum mirror_kind {
	MIRROR_FORWARD = 0, /* relay the registry's answer */
	MIRROR_BLOB,	    /* a blob task streamed */
};

struct mirror_xfer {
	struct mirror *mirror;
	struct mirror_xfer *prev, *next;
	enum mirror_kind kind;
	struct http_exchange *ex;	/* NULL once the response ended or the client left */
	bool head;			/* a HEAD request */
	char url[MIRROR_URL_MAX];	/* the registry's URL for this request */
	char peer[64];
	uint64_t started_ms;
	/* The client's headers for the registry ("Name: value"). */
	char *headers[MIRROR_HEADERS_MAX];
	size_t header_count;
	bool has_authorization;

	/* Forward, and the blob's authorization check. */
	struct origin_request *req;
	long status;
	int64_t content_length;
	char **reply_lines;
	size_t reply_line_count;
	int body_fd;			/* memfd: the answer's body, held (and counted) until sent */
	size_t body_len;
	unsigned busy;			/* inside one of our callbacks: not freed under it */
	struct loop_op retry_op;	/* the client's connection had no payload slot free */
	bool retry_armed;

	/* Blob. */
	uint8_t digest[32];
	char digest_text[7 + 65];	/* "sha256:<hex>" */
	struct download_watcher *watcher;
	int fd;				/* dup of the task's content file */
	uint64_t length;
	uint64_t readable;		/* from data() */
	bool verified;			/* done(0): the digest checked out */
	bool range;			/* a satisfiable Range: answered from the verified blob */
	uint64_t start, end;		/* the bytes to send: [start, end) */
	uint64_t sent;			/* queued up to here */
	unsigned files;			/* payloads queued, done not yet run */
	bool head_sent;
	enum download_source source;
};

struct mirror {
	struct loop *loop;
	struct download_engine *engine;
	struct origin *origin;
	struct mirror_options options;
	char ca_file[1024];
	struct mirror_upstream upstreams[MIRROR_UPSTREAMS_MAX];
	unsigned upstream_count;
	struct mirror_xfer *xfers;
	unsigned xfer_count;
	size_t forward_bytes;		/* forwarded bodies held until sent, all requests */
	bool detached;			/* the loop is gone: callbacks only drop references */
	/* Digests the registry served without credentials: a ring. */
	uint8_t (*public_digests)[32];
	unsigned public_count, public_next;
};

static bool mirror_header_is(const char *line, size_t name_len, const char *const *names)
{
	for (size_t i = 0; names[i]; i++)
		if (strlen(names[i]) == name_len && strncasecmp(line, names[i], name_len) == 0)
			return true;
	return false;
}

/* --- upstreams. */

static int mirror_upstream_parse(struct mirror_upstream *up, const char *entry, size_t len,
				 char *err, size_t err_size)
{
	const char *eq = memchr(entry, '=', len);
	const char *url = entry, *host, *host_end;
	size_t url_len = len;

	memset(up, 0, sizeof(*up));
	if (eq && (size_t)(eq - entry) < len && !memchr(entry, '/', (size_t)(eq - entry))) {
		snprintf(up->ns, sizeof(up->ns), "%.*s", (int)(eq - entry), entry);
		url = eq + 1;
		url_len = len - (size_t)(url - entry);
	}
	while (url_len && url[url_len - 1] == '/')
		url_len--;
	if (url_len >= sizeof(up->base) ||
	    !((url_len > 7 && strncmp(url, "http://", 7) == 0) ||
	      (url_len > 8 && strncmp(url, "https://", 8) == 0))) {
		snprintf(err, err_size, "registry \"%.*s\": not an http:// or https:// URL",
			 (int)len, entry);
		return -EINVAL;
	}
	memcpy(up->base, url, url_len);
	host = strstr(up->base, "://") + 3;
	host_end = host + strcspn(host, "/");
	if (host_end == host || (size_t)(host_end - host) >= sizeof(up->host)) {
		snprintf(err, err_size, "registry \"%.*s\": no host", (int)len, entry);
		return -EINVAL;
	}
	memcpy(up->host, host, (size_t)(host_end - host));
	return 0;
}

static int mirror_upstreams_parse(struct mirror *mirror, const char *list, char *err,
				  size_t err_size)
{
	const char *p = list ? list : "";

	while (*p) {
		size_t len = strcspn(p, ",");
		const char *entry = p;

		while (len && (*entry == ' ' || *entry == '\t')) {
			entry++;
			len--;
		}
		while (len && (entry[len - 1] == ' ' || entry[len - 1] == '\t'))
			len--;
		if (len) {
			int rc;

			if (mirror->upstream_count == MIRROR_UPSTREAMS_MAX) {
				snprintf(err, err_size, "more than %u registries",
					 MIRROR_UPSTREAMS_MAX);
				return -E2BIG;
			}
			rc = mirror_upstream_parse(&mirror->upstreams[mirror->upstream_count],
						   entry, len, err, err_size);
			if (rc < 0)
				return rc;
			mirror->upstream_count++;
		}
		p += strcspn(p, ",");
		if (*p == ',')
			p++;
	}
	return 0;
}

/* host[:port] equal to `ns`, a default port (:443 for https, :80 for http)
 * on either side not counting. */
static bool mirror_host_is(const struct mirror_upstream *up, const char *ns, size_t ns_len)
{
	const char *deflt = strncmp(up->base, "https:", 6) == 0 ? ":443" : ":80";
	size_t host_len = strlen(up->host), d = strlen(deflt);

	if (host_len > d && strcmp(up->host + host_len - d, deflt) == 0)
		host_len -= d;
	if (ns_len > d && strncmp(ns + ns_len - d, deflt, d) == 0)
		ns_len -= d;
	return host_len == ns_len && strncmp(up->host, ns, ns_len) == 0;
}

/* containerd's ?ns=HOST: the entry for that registry; no ns: the first. An
 * ns that names no entry gets none: answering a tag from another registry
 * would hand the client someone else's image. */
static const struct mirror_upstream *mirror_upstream_for(const struct mirror *mirror,
							 const char *ns, size_t ns_len)
{
	if (mirror->upstream_count == 0)
		return NULL;
	if (!ns)
		return &mirror->upstreams[0];
	for (unsigned i = 0; i < mirror->upstream_count; i++) {
		const struct mirror_upstream *up = &mirror->upstreams[i];

		if (up->ns[0] ? strlen(up->ns) == ns_len && strncmp(up->ns, ns, ns_len) == 0
			      : mirror_host_is(up, ns, ns_len) ||
					(ns_len == 9 && strncmp(ns, "docker.io", 9) == 0 &&
					 strcmp(up->host, "registry-1.docker.io") == 0))
			return up;
	}
	return NULL;
}

/* Percent-decodes src[0..len) into out (containerd sends ns=HOST%3APORT);
 * returns the decoded length, or -1 if it does not fit. */
static ssize_t mirror_unescape(const char *src, size_t len, char *out, size_t size)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		char c = src[i];

		if (c == '%' && i + 2 < len && isxdigit((unsigned char)src[i + 1]) &&
		    isxdigit((unsigned char)src[i + 2])) {
			char hex[3] = { src[i + 1], src[i + 2], '\0' };

			c = (char)strtol(hex, NULL, 16);
			i += 2;
		}
		if (n + 1 >= size)
			return -1;
		out[n++] = c;
	}
	out[n] = '\0';
	return (ssize_t)n;
}

/* No "." or ".." segment, plain or percent-encoded: the path stays under
 * the upstream's /v2/ (libcurl would resolve them). */
static bool mirror_path_ok(const char *path)
{
	for (const char *seg = path; *seg;) {
		size_t len;
		char dec[8];
		ssize_t n;

		while (*seg == '/')
			seg++;
		len = strcspn(seg, "/");
		if (len && len <= 6) { /* "%2e%2e" at the longest */
			n = mirror_unescape(seg, len, dec, sizeof(dec));
			if (n < 0 || strcmp(dec, ".") == 0 || strcmp(dec, "..") == 0)
				return false;
		}
		seg += len;
	}
	return true;
}

/*
 * The registry's URL for a request in url: the upstream's base + path + the
 * query without ns= (with keep_query). 0, -ENOENT (no upstream: none
 * configured, or ns= names none; *ns_out says which), -E2BIG (longer than
 * the URL buffer).
 */
static int mirror_target(const struct mirror *mirror, const struct http_request *request,
			 bool keep_query, char *url, size_t url_size, char *ns_out, size_t ns_size)
{
	const struct mirror_upstream *up;
	const char *ns = NULL, *q = request->query;
	size_t ns_len = 0, n;
	char query[MIRROR_URL_MAX];
	size_t query_len = 0;

	query[0] = '\0';
	ns_out[0] = '\0';
	while (*q) {
		size_t len = strcspn(q, "&");

		if (len > 3 && strncmp(q, "ns=", 3) == 0) {
			ssize_t dl = mirror_unescape(q + 3, len - 3, ns_out, ns_size);

			if (dl < 0)
				return -E2BIG;
			ns = ns_out;
			ns_len = (size_t)dl;
		} else if (len && keep_query) {
			if (query_len + len + 2 >= sizeof(query))
				return -E2BIG;
			query_len += (size_t)snprintf(query + query_len, sizeof(query) - query_len,
						      "%s%.*s", query_len ? "&" : "", (int)len, q);
		}
		q += len;
		if (*q == '&')
			q++;
	}
	up = mirror_upstream_for(mirror, ns, ns_len);
	if (!up)
		return -ENOENT;
	n = (size_t)snprintf(url, url_size, "%s%s%s%s", up->base, request->path,
			     query_len ? "?" : "", query);
	return n >= url_size ? -E2BIG : 0;
}

/* --- the public set: blobs the registry gave out without credentials. */

static bool mirror_public_has(const struct mirror *mirror, const uint8_t digest[32])
{
	for (unsigned i = 0; i < mirror->public_count; i++)
		if (memcmp(mirror->public_digests[i], digest, 32) == 0)
			return true;
	return false;
}

static void mirror_public_add(struct mirror *mirror, const uint8_t digest[32])
{
	if (!mirror->public_digests || mirror_public_has(mirror, digest))
		return;
	memcpy(mirror->public_digests[mirror->public_next], digest, 32);
	mirror->public_next = (mirror->public_next + 1) % MIRROR_PUBLIC_MAX;
	if (mirror->public_count < MIRROR_PUBLIC_MAX)
		mirror->public_count++;
}

/* --- exchanges. */

static void mirror_json_escape(char *out, size_t size, const char *text)
{
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *)text; *p && n + 7 < size; p++) {
		if (*p == '"' || *p == '\\') {
			out[n++] = '\\';
			out[n++] = (char)*p;
		} else if (*p < 0x20) {
			n += (size_t)snprintf(out + n, size - n, "\\u%04x", *p);
		} else {
			out[n++] = (char)*p;
		}
	}
	out[n] = '\0';
}

/* An error in the registry's own format, so that clients print it. */
static void mirror_reply_error(struct http_exchange *ex, int status, const char *code,
			       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void mirror_reply_error(struct http_exchange *ex, int status, const char *code,
			       const char *fmt, ...)
{
	static const char *const lines[] = {
		"Content-Type: application/json",
		"Docker-Distribution-Api-Version: registry/2.0",
	};
	char message[1024], escaped[2048], body[2300];
	va_list ap;
	int n;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	mirror_json_escape(escaped, sizeof(escaped), message);
	n = snprintf(body, sizeof(body), "{\"errors\":[{\"code\":\"%s\",\"message\":\"ringfly "
		     "mirror: %s\"}]}\n", code, escaped);
	if (http_response_start(ex, status, lines, 2, n) == 0 &&
	    http_response_body(ex, body, (size_t)n) == 0)
		http_response_end(ex);
	else
		http_response_abort(ex);
}

static struct mirror_xfer *mirror_xfer_new(struct mirror *mirror, struct http_exchange *ex,
					   const struct http_request *request,
					   enum mirror_kind kind)
{
	struct mirror_xfer *x = calloc(1, sizeof(*x));

	if (!x)
		return NULL;
	x->mirror = mirror;
	x->kind = kind;
	x->ex = ex;
	x->fd = -1;
	x->body_fd = -1;
	x->head = request->method == HTTP_METHOD_HEAD;
	x->started_ms = clock_monotonic_ms();
	snprintf(x->peer, sizeof(x->peer), "%s", request->peer ? request->peer : "?");
	x->next = mirror->xfers;
	if (mirror->xfers)
		mirror->xfers->prev = x;
	mirror->xfers = x;
	mirror->xfer_count++;
	http_exchange_set_user(ex, x);
	return x;
}

static void mirror_reply_lines_free(struct mirror_xfer *x)
{
	for (size_t i = 0; i < x->reply_line_count; i++)
		free(x->reply_lines[i]);
	free(x->reply_lines);
	x->reply_lines = NULL;
	x->reply_line_count = 0;
}

/* Frees the transfer once nothing refers to it any more. */
static void mirror_xfer_maybe_free(struct mirror_xfer *x)
{
	struct mirror *mirror = x->mirror;

	if (x->busy || mirror->detached || x->ex || x->req || x->watcher || x->files ||
	    x->retry_armed)
		return;
	if (x->prev)
		x->prev->next = x->next;
	else
		mirror->xfers = x->next;
	if (x->next)
		x->next->prev = x->prev;
	mirror->xfer_count--;
	if (x->fd >= 0)
		close(x->fd);
	for (size_t i = 0; i < x->header_count; i++)
		free(x->headers[i]);
	mirror_reply_lines_free(x);
	mirror->forward_bytes -= x->body_len;
	if (x->body_fd >= 0)
		close(x->body_fd);
	free(x);
}

/* The client's exchange, now ours to answer: the transfer no longer refers
 * to it. */
static struct http_exchange *mirror_take(struct mirror_xfer *x)
{
	struct http_exchange *ex = x->ex;

	x->ex = NULL;
	return ex;
}

/* Our callbacks hold the transfer: whatever they call (an abort that
 * finishes the connection and runs other payloads' dones, a cancel) cannot
 * free it under them; the last release does. */
static void mirror_hold(struct mirror_xfer *x)
{
	x->busy++;
}

static void mirror_release(struct mirror_xfer *x)
{
	x->busy--;
	mirror_xfer_maybe_free(x);
}

/* The client's request headers that go on to the registry. */
static int mirror_copy_headers(struct mirror_xfer *x, const struct http_request *request)
{
	static const char *const skip[] = {
		"Host", "Content-Length", "Expect", "Connection", "Keep-Alive",
		"Proxy-Connection", "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding",
		"Upgrade", NULL,
	};

	for (size_t i = 0; i < request->header_count; i++) {
		const struct http_header *h = &request->headers[i];

		if (mirror_header_is(h->name, strlen(h->name), skip))
			continue;
		if (x->header_count == MIRROR_HEADERS_MAX)
			return -E2BIG;
		if (asprintf(&x->headers[x->header_count], "%s: %s", h->name, h->value) < 0) {
			x->headers[x->header_count] = NULL;
			return -ENOMEM;
		}
		x->header_count++;
		if (strcasecmp(h->name, "Authorization") == 0)
			x->has_authorization = true;
	}
	return 0;
}

/* --- forwarding. */

static int mirror_forward_headers(struct origin_request *req, const struct origin_response *response,
				  void *arg)
{
	struct mirror_xfer *x = arg;
	static const char *const drop[] = {
		"Content-Length", "Date", "Connection", "Keep-Alive", "Proxy-Connection",
		"Proxy-Authenticate", "TE", "Trailer", "Trailers", "Transfer-Encoding", "Upgrade",
		NULL,
	};

	(void)req;
	x->status = response->status;
	x->content_length = response->content_length;
	mirror_reply_lines_free(x);
	x->reply_lines = calloc(response->header_line_count + 1, sizeof(char *));
	if (!x->reply_lines)
		return -ENOMEM;
	for (size_t i = 0; i < response->header_line_count; i++) {
		const char *line = response->header_lines[i];
		const char *colon = strchr(line, ':');

		if (!colon || mirror_header_is(line, (size_t)(colon - line), drop))
			continue;
		x->reply_lines[x->reply_line_count] = strdup(line);
		if (!x->reply_lines[x->reply_line_count])
			return -ENOMEM;
		x->reply_line_count++;
	}
	return 0;
}

static int mirror_forward_data(struct origin_request *req, const void *buf, size_t len, void *arg)
{
	struct mirror_xfer *x = arg;
	struct mirror *mirror = x->mirror;
	size_t max = mirror->options.forward_max_bytes;
	const char *p = buf;

	(void)req;
	if (x->body_len + len > max)
		return -EFBIG;
	if (mirror->forward_bytes + len > MIRROR_FORWARD_TOTAL_MAX)
		return -ENOBUFS;
	if (x->body_fd < 0) {
		x->body_fd = memfd_create("ringfly-forward", MFD_CLOEXEC);
		if (x->body_fd < 0)
			return -errno;
	}
	for (size_t left = len; left;) {
		ssize_t n = write(x->body_fd, p, left);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		left -= (size_t)n;
	}
	x->body_len += len;
	mirror->forward_bytes += len;
	return 0;
}

static void mirror_forward_file_done(struct http_exchange *ex, void *arg, int res)
{
	struct mirror_xfer *x = arg;

	(void)ex;
	(void)res; /* a connection that went: nothing else to do */
	x->files--;
	mirror_xfer_maybe_free(x);
}

static void mirror_forward_done(struct origin_request *req, const struct origin_result *result,
				void *arg)
{
	struct mirror_xfer *x = arg;
	struct http_exchange *ex = x->ex;
	int64_t length;
	int rc;

	(void)req;
	x->req = NULL;
	if (!ex) {
		mirror_xfer_maybe_free(x);
		return;
	}
	mirror_hold(x);
	x->ex = NULL;
	if (result->error == -EFBIG) {
		mirror_reply_error(ex, 502, "UNKNOWN", "%s: the registry's answer is larger than "
				   "%zu bytes", x->url, x->mirror->options.forward_max_bytes);
	} else if (result->error == -ENOBUFS) {
		mirror_reply_error(ex, 503, "UNAVAILABLE", "too many forwarded answers held at once "
				   "(%u MiB); try again", MIRROR_FORWARD_TOTAL_MAX >> 20);
	} else if (result->error) {
		log_warn("mirror", "forward failed url=%s client=%s reason=\"%s\"", x->url, x->peer,
			 result->message ? result->message : strerror(-result->error));
		mirror_reply_error(ex, 502, "UNKNOWN", "registry unreachable: %s",
				   result->message ? result->message : strerror(-result->error));
	} else {
		/* The body goes out of its memfd: held, and counted against the
		 * total, until it is in the socket. */
		length = x->head ? x->content_length : (int64_t)x->body_len;
		if (x->head && length < 0)
			length = 0;
		rc = http_response_start(ex, (int)x->status, (const char *const *)x->reply_lines,
					 x->reply_line_count, length);
		if (rc == 0 && !x->head && x->body_len) {
			rc = http_response_file(ex, x->body_fd, 0, (uint32_t)x->body_len,
						mirror_forward_file_done, x);
			if (rc == 0)
				x->files++;
		}
		if (rc < 0)
			http_response_abort(ex);
		else
			http_response_end(ex);
		log_debug("mirror", "forwarded url=%s status=%ld bytes=%zu client=%s", x->url,
			  x->status, x->body_len, x->peer);
	}
	mirror_release(x);
}

static int mirror_forward_start(struct mirror_xfer *x, enum origin_method method)
{
	static const struct origin_callbacks callbacks = {
		.on_headers = mirror_forward_headers,
		.on_data = mirror_forward_data,
		.on_done = mirror_forward_done,
	};
	struct origin_request_params params = {
		.url = x->url,
		.method = method,
		.headers = (const char *const *)x->headers,
		.header_count = x->header_count,
		.timeout_ms = x->mirror->options.forward_timeout_ms,
		.passthrough = true,
	};

	x->kind = MIRROR_FORWARD;
	mirror_reply_lines_free(x);
	return origin_request_start(x->mirror->origin, &params, &callbacks, x, &x->req);
}

/* --- blobs. */

static void mirror_blob_pump(struct mirror_xfer *x);

/* The client's Authorization line, the one header a blob's check and task
 * carry (not its Range or conditionals: the task is the whole blob). */
static size_t mirror_authorization(const struct mirror_xfer *x, const char *auth[1])
{
	for (size_t i = 0; i < x->header_count; i++) {
		if (strncasecmp(x->headers[i], "Authorization:", 14) == 0) {
			auth[0] = x->headers[i];
			return 1;
		}
	}
	return 0;
}

/* The client is given up on: its connection closes (a short body if the head
 * went out) and the download, if still ours, is cancelled. No aborted()
 * follows our own abort. */
static void mirror_blob_give_up(struct mirror_xfer *x)
{
	struct http_exchange *ex = mirror_take(x);

	if (ex)
		http_response_abort(ex);
	if (x->watcher) {
		struct download_watcher *watcher = x->watcher;

		x->watcher = NULL;
		download_watcher_cancel(watcher);
	}
}

static void mirror_blob_file_done(struct http_exchange *ex, void *arg, int res)
{
	struct mirror_xfer *x = arg;

	(void)ex;
	x->files--;
	if (x->mirror->detached)
		return;
	mirror_hold(x);
	if (res < 0 && x->ex)
		mirror_blob_give_up(x);
	if (x->ex)
		mirror_blob_pump(x);
	mirror_release(x);
}

static void mirror_blob_retry_done(struct loop_op *op, int res, uint32_t flags)
{
	struct mirror_xfer *x = op->owner;

	(void)res;
	(void)flags;
	x->retry_armed = false;
	if (x->mirror->detached)
		return;
	mirror_hold(x);
	mirror_blob_pump(x);
	mirror_release(x);
}

/* Parses "bytes=A-B", "bytes=A-", "bytes=-N" against the length: 1 and the
 * range, 0 when there is none to honour (absent, several ranges, not bytes),
 * -1 when it cannot be satisfied. */
static int mirror_range(const char *value, uint64_t length, uint64_t *start, uint64_t *end)
{
	unsigned long long a = 0, b = 0;
	char *p;

	if (!value || strncmp(value, "bytes=", 6) != 0 || strchr(value, ','))
		return 0;
	value += 6;
	if (*value == '-') {
		b = strtoull(value + 1, &p, 10);
		if (p == value + 1 || *p)
			return 0;
		if (b == 0)
			return -1;
		*start = b >= length ? 0 : length - b;
		*end = length;
		return length ? 1 : -1;
	}
	a = strtoull(value, &p, 10);
	if (p == value || *p != '-')
		return 0;
	if (p[1]) {
		char *q;

		b = strtoull(p + 1, &q, 10);
		if (*q || b < a)
			return 0;
	} else {
		b = length ? length - 1 : 0;
	}
	if (a >= length)
		return -1;
	*start = a;
	*end = (b >= length ? length - 1 : b) + 1;
	return 1;
}

static const char *mirror_request_header(const struct http_request *request, const char *name)
{
	for (size_t i = 0; i < request->header_count; i++)
		if (strcasecmp(request->headers[i].name, name) == 0)
			return request->headers[i].value;
	return NULL;
}

/* The status line and headers, once the length is known. */
static int mirror_blob_head(struct mirror_xfer *x)
{
	char digest_line[100], etag_line[100], range_line[100];
	const char *lines[8];
	size_t n = 0;
	int status = 200;

	snprintf(digest_line, sizeof(digest_line), "Docker-Content-Digest: %s", x->digest_text);
	snprintf(etag_line, sizeof(etag_line), "ETag: \"%s\"", x->digest_text);
	lines[n++] = "Content-Type: application/octet-stream";
	lines[n++] = digest_line;
	lines[n++] = etag_line;
	lines[n++] = "Accept-Ranges: bytes";
	lines[n++] = "Cache-Control: max-age=31536000";
	lines[n++] = "Docker-Distribution-Api-Version: registry/2.0";
	if (x->range) {
		status = 206;
		snprintf(range_line, sizeof(range_line), "Content-Range: bytes %" PRIu64 "-%" PRIu64
			 "/%" PRIu64, x->start, x->end - 1, x->length);
		lines[n++] = range_line;
	}
	x->head_sent = true;
	return http_response_start(x->ex, status, lines, n, (int64_t)(x->end - x->start));
}

/* Queues what may go out: readable bytes up to the last one, which waits for
 * the digest (all of a range waits for it). */
static void mirror_blob_pump(struct mirror_xfer *x)
{
	uint64_t limit;
	int rc;

	if (!x->ex)
		return;
	if (!x->head_sent) {
		const char *range;

		if (!x->verified && (x->readable == 0 || !x->watcher))
			return;
		if (!x->verified)
			x->length = download_watcher_length(x->watcher);
		x->start = 0;
		x->end = x->length;
		range = mirror_request_header(http_exchange_request(x->ex), "Range");
		if (range) {
			if (!x->verified)
				return; /* ranges come from the verified blob */
			rc = mirror_range(range, x->length, &x->start, &x->end);
			if (rc < 0) {
				char line[64];
				const char *lines[] = { line };
				struct http_exchange *ex = mirror_take(x);

				snprintf(line, sizeof(line), "Content-Range: bytes */%" PRIu64,
					 x->length);
				x->head_sent = true;
				if (http_response_start(ex, 416, lines, 1, 0) == 0)
					http_response_end(ex);
				else
					http_response_abort(ex);
				return;
			}
			x->range = rc == 1;
			if (!x->range) {
				x->start = 0;
				x->end = x->length;
			}
		}
		x->sent = x->start;
		if (mirror_blob_head(x) < 0)
			goto abort;
		if (x->head) {
			struct http_exchange *ex = mirror_take(x);

			http_response_end(ex);
			return;
		}
	}
	limit = x->verified ? x->end : (x->readable < x->end ? x->readable : x->end - 1);
	while (x->sent < limit && x->files < MIRROR_FILES_INFLIGHT) {
		uint64_t left = limit - x->sent;
		uint32_t chunk = left < MIRROR_CHUNK_BYTES ? (uint32_t)left : MIRROR_CHUNK_BYTES;

		rc = http_response_file(x->ex, x->fd, x->sent, chunk, mirror_blob_file_done, x);
		if (rc == -ENOBUFS && x->files == 0 && !x->retry_armed) {
			/* Earlier responses on this connection hold every
			 * payload slot; none of their dones comes to us. */
			loop_op_init(&x->retry_op, mirror_blob_retry_done, x);
			if (loop_timeout(x->mirror->loop, &x->retry_op, MIRROR_RETRY_MS) < 0)
				goto abort;
			x->retry_armed = true;
		}
		if (rc == -ENOBUFS)
			break;
		if (rc < 0)
			goto abort;
		x->files++;
		x->sent += chunk;
	}
	if (x->verified && x->sent == x->end) {
		struct http_exchange *ex = mirror_take(x);

		http_response_end(ex);
		log_info("mirror", "blob served digest=%s bytes=%" PRIu64 " source=%s ms=%llu "
			 "client=%s", x->digest_text, x->end - x->start,
			 x->source == DOWNLOAD_SOURCE_CACHE ? "cache"
			 : x->source == DOWNLOAD_SOURCE_PEER ? "peer" : "origin",
			 (unsigned long long)(clock_monotonic_ms() - x->started_ms), x->peer);
	}
	return;

abort:
	mirror_blob_give_up(x);
}

static void mirror_blob_data(void *arg, uint64_t readable)
{
	struct mirror_xfer *x = arg;

	mirror_hold(x);
	if (x->fd < 0 && x->watcher) {
		int fd = download_watcher_content_fd(x->watcher);

		x->fd = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
		if (x->fd < 0) {
			log_warn("mirror", "cannot hold the blob's content file digest=%s error=\"%s\"",
				 x->digest_text, strerror(errno));
			if (x->ex && !x->head_sent) {
				struct http_exchange *ex = mirror_take(x);

				mirror_reply_error(ex, 503, "UNAVAILABLE", "out of file descriptors");
			}
			mirror_blob_give_up(x);
			mirror_release(x);
			return;
		}
	}
	x->readable = readable;
	mirror_blob_pump(x);
	mirror_release(x); /* the pump may have given up on the client */
}

static void mirror_blob_progress(void *arg, const struct download_progress *progress)
{
	struct mirror_xfer *x = arg;

	x->source = progress->source;
}

static void mirror_blob_done(void *arg, int error, enum download_error_kind kind,
			     const char *message, const struct download_progress *progress)
{
	struct mirror_xfer *x = arg;

	mirror_hold(x);
	x->watcher = NULL;
	x->source = progress->source;
	if (error) {
		log_warn("mirror", "blob failed digest=%s client=%s reason=\"%s\"", x->digest_text,
			 x->peer, message ? message : strerror(-error));
		if (x->ex) {
			struct http_exchange *ex = mirror_take(x);

			if (x->head_sent)
				http_response_abort(ex); /* a short body: never the wrong bytes */
			else if (kind == DOWNLOAD_ERROR_INTEGRITY)
				mirror_reply_error(ex, 502, "DIGEST_INVALID", "%s", message);
			else
				mirror_reply_error(ex, 502, "BLOB_UNKNOWN", "%s", message);
		}
	} else {
		x->verified = true;
		x->length = progress->total_bytes;
		x->readable = x->length;
		mirror_blob_pump(x);
	}
	mirror_release(x);
}

static void mirror_blob_start(struct mirror_xfer *x)
{
	static const struct download_watcher_ops ops = {
		.progress = mirror_blob_progress,
		.done = mirror_blob_done,
		.data = mirror_blob_data,
	};
	const char *auth[1];
	struct download_request request = {
		.url = x->url,
		.output_fd = -1,
		.insecure = x->mirror->options.insecure,
		.ca_file = x->mirror->options.ca_file,
		.has_digest = true,
	};
	char err[600];
	int rc;

	request.headers = auth;
	request.header_count = mirror_authorization(x, auth);
	memcpy(request.digest, x->digest, 32);
	x->kind = MIRROR_BLOB;
	rc = download_start(x->mirror->engine, &request, &ops, x, &x->watcher, err, sizeof(err));
	if (rc < 0) {
		struct http_exchange *ex = mirror_take(x);

		x->watcher = NULL;
		log_warn("mirror", "blob failed digest=%s client=%s reason=\"%s\"", x->digest_text,
			 x->peer, err);
		mirror_reply_error(ex, rc == -EAGAIN ? 503 : 502, "UNKNOWN", "%s", err);
		mirror_xfer_maybe_free(x);
	}
}

static void mirror_check_decide(struct mirror_xfer *x, const struct origin_result *result);

static int mirror_check_headers(struct origin_request *req, const struct origin_response *response,
				void *arg)
{
	struct mirror_xfer *x = arg;

	(void)req;
	x->status = response->status;
	return 0;
}

/* The registry's word on this client and this blob. */
static void mirror_check_done(struct origin_request *req, const struct origin_result *result,
			      void *arg)
{
	struct mirror_xfer *x = arg;

	(void)req;
	x->req = NULL;
	if (!x->ex) {
		mirror_xfer_maybe_free(x);
		return;
	}
	mirror_hold(x);
	mirror_check_decide(x, result);
	mirror_release(x);
}

static void mirror_check_decide(struct mirror_xfer *x, const struct origin_result *result)
{
	struct mirror *mirror = x->mirror;

	if (result->error) {
		if (mirror_public_has(mirror, x->digest)) {
			log_warn("mirror", "registry unreachable, serving the blob from the swarm "
				 "digest=%s reason=\"%s\"", x->digest_text,
				 result->message ? result->message : strerror(-result->error));
			mirror_blob_start(x);
			return;
		}
		{
			struct http_exchange *ex = mirror_take(x);

			log_warn("mirror", "blob check failed digest=%s client=%s reason=\"%s\"",
				 x->digest_text, x->peer,
				 result->message ? result->message : strerror(-result->error));
			mirror_reply_error(ex, 502, "UNKNOWN", "registry unreachable and the blob "
					   "was never served here without credentials: %s",
					   result->message ? result->message
							   : strerror(-result->error));
		}
		mirror_xfer_maybe_free(x);
		return;
	}
	/* 2xx: the registry gives this client the blob. 307/308: it sends the
	 * client to its storage (S3 and the like), method kept: the same. A
	 * 301/302/303 may well be a login page: not a yes. */
	if ((x->status >= 200 && x->status < 300) || x->status == 307 || x->status == 308) {
		if (!x->has_authorization && x->status < 300)
			mirror_public_add(mirror, x->digest);
		mirror_blob_start(x);
		return;
	}
	/* 401 with its challenge, 403, 404...: the client hears it from the
	 * registry itself, its GET forwarded as it came (query included). */
	{
		char ns[256];
		int rc = mirror_target(mirror, http_exchange_request(x->ex), true, x->url,
				       sizeof(x->url), ns, sizeof(ns));

		if (rc == 0)
			rc = mirror_forward_start(x, ORIGIN_GET);
		if (rc < 0) {
			struct http_exchange *ex = mirror_take(x);

			x->req = NULL;
			mirror_reply_error(ex, 502, "UNKNOWN", "cannot forward to the registry: %s",
					   origin_strerror(rc));
		}
	}
}

static int mirror_check_start(struct mirror_xfer *x)
{
	static const struct origin_callbacks callbacks = {
		.on_headers = mirror_check_headers,
		.on_done = mirror_check_done,
	};
	const char *auth[1];
	struct origin_request_params params = {
		.url = x->url,
		.method = ORIGIN_HEAD,
		.headers = auth,
		.header_count = mirror_authorization(x, auth),
		.timeout_ms = MIRROR_CHECK_TIMEOUT_MS,
		.passthrough = true,
	};

	return origin_request_start(x->mirror->origin, &params, &callbacks, x, &x->req);
}

/* "/v2/<name>/blobs/sha256:<64 hex>": the digest. */
static bool mirror_blob_path(const char *path, uint8_t digest[32])
{
	char url[MIRROR_URL_MAX];

	if (strlen(path) + 16 >= sizeof(url))
		return false;
	snprintf(url, sizeof(url), "http://mirror%s", path);
	return download_blob_digest(url, digest);
}

/* --- the API. */

bool mirror_wants(const struct http_request *request)
{
	return strncmp(request->path, "/v2/", 4) == 0 || strcmp(request->path, "/v2") == 0;
}

void mirror_request(struct mirror *mirror, struct http_exchange *ex,
		    const struct http_request *request)
{
	struct mirror_xfer *x;
	uint8_t digest[32];
	bool blob = mirror_blob_path(request->path, digest);
	char ns[256];
	int rc;

	if (request->method == HTTP_METHOD_OTHER) {
		static const char *const lines[] = { "Allow: GET, HEAD" };
		static const char body[] = "ringfly mirror: pull-only, GET and HEAD\n";

		if (http_response_start(ex, 405, lines, 1, sizeof(body) - 1) == 0 &&
		    http_response_body(ex, body, sizeof(body) - 1) == 0)
			http_response_end(ex);
		else
			http_response_abort(ex);
		return;
	}
	if (mirror->upstream_count == 0) {
		mirror_reply_error(ex, 503, "UNAVAILABLE", "no upstream registry configured "
				   "(ringflyd --registry URL, or mirror.registries)");
		return;
	}
	if (!mirror_path_ok(request->path)) {
		mirror_reply_error(ex, 400, "NAME_INVALID", "a path with . or .. segments");
		return;
	}
	x = mirror_xfer_new(mirror, ex, request, blob ? MIRROR_BLOB : MIRROR_FORWARD);
	if (!x) {
		mirror_reply_error(ex, 503, "UNAVAILABLE", "out of memory");
		return;
	}
	/* A blob task's URL carries no query: the same blob, the same task. */
	rc = mirror_target(mirror, request, !blob || x->head, x->url, sizeof(x->url), ns,
			   sizeof(ns));
	if (rc == 0) {
		rc = mirror_copy_headers(x, request);
		if (rc == -E2BIG)
			rc = -EMSGSIZE; /* headers, not the target */
	}
	if (rc < 0) {
		x->ex = NULL;
		if (rc == -ENOENT)
			mirror_reply_error(ex, 404, "NAME_UNKNOWN", "no upstream registry for ns=%s "
					   "(mirror.registries names none)", ns);
		else if (rc == -E2BIG)
			mirror_reply_error(ex, 414, "UNKNOWN", "request target too long to forward");
		else if (rc == -EMSGSIZE)
			mirror_reply_error(ex, 431, "UNKNOWN", "more than %u headers to forward",
					   MIRROR_HEADERS_MAX);
		else
			mirror_reply_error(ex, 503, "UNAVAILABLE", "out of memory");
		mirror_xfer_maybe_free(x);
		return;
	}
	if (blob && !x->head) {
		memcpy(x->digest, digest, 32);
		memcpy(x->digest_text, "sha256:", 7);
		hash_hex(digest, x->digest_text + 7);
		rc = mirror_check_start(x);
	} else {
		rc = mirror_forward_start(x, x->head ? ORIGIN_HEAD : ORIGIN_GET);
	}
	if (rc < 0) {
		x->req = NULL;
		x->ex = NULL;
		mirror_reply_error(ex, 503, "UNAVAILABLE", "cannot start a request to the "
				   "registry: %s", origin_strerror(rc));
		mirror_xfer_maybe_free(x);
	}
}

void mirror_aborted(struct http_exchange *ex, void *user)
{
	struct mirror_xfer *x = user;

	(void)ex;
	if (!x)
		return;
	x->ex = NULL;
	if (x->mirror->detached)
		return; /* the loop is gone: the engine and origin are not touched */
	if (x->req) {
		origin_request_cancel(x->req);
		x->req = NULL;
	}
	if (x->watcher) {
		struct download_watcher *watcher = x->watcher;

		x->watcher = NULL;
		download_watcher_cancel(watcher);
	}
	log_debug("mirror", "client left url=%s client=%s sent=%" PRIu64, x->url, x->peer,
		  x->sent);
	mirror_xfer_maybe_free(x);
}

void mirror_detach(struct mirror *mirror)
{
	if (mirror)
		mirror->detached = true;
}

unsigned mirror_active(const struct mirror *mirror)
{
	return mirror ? mirror->xfer_count : 0;
}

int mirror_create(struct mirror **out, struct loop *loop, struct download_engine *engine,
		  const struct mirror_options *options, char *err, size_t err_size)
{
	struct mirror *mirror = calloc(1, sizeof(*mirror));
	struct origin_options origin_options = { 0 };
	int rc;

	if (!mirror) {
		snprintf(err, err_size, "out of memory");
		return -ENOMEM;
	}
	mirror->loop = loop;
	mirror->engine = engine;
	mirror->options = *options;
	mirror->options.registries = NULL;
	if (options->ca_file && options->ca_file[0])
		snprintf(mirror->ca_file, sizeof(mirror->ca_file), "%s", options->ca_file);
	mirror->options.ca_file = mirror->ca_file[0] ? mirror->ca_file : NULL;
	if (!mirror->options.forward_timeout_ms)
		mirror->options.forward_timeout_ms = MIRROR_FORWARD_TIMEOUT_DEFAULT_MS;
	if (!mirror->options.forward_max_bytes)
		mirror->options.forward_max_bytes = MIRROR_FORWARD_MAX_DEFAULT;
	rc = mirror_upstreams_parse(mirror, options->registries, err, err_size);
	if (rc < 0)
		goto out_free;
	mirror->public_digests = calloc(MIRROR_PUBLIC_MAX, 32);
	origin_options.ca_file = mirror->options.ca_file;
	origin_options.insecure = options->insecure;
	rc = origin_create(&mirror->origin, loop, &origin_options);
	if (rc < 0) {
		snprintf(err, err_size, "cannot set up the HTTP client: %s", strerror(-rc));
		goto out_free;
	}
	*out = mirror;
	return 0;

out_free:
	free(mirror->public_digests);
	free(mirror);
	return rc;
}

void mirror_destroy(struct mirror *mirror)
{
	if (!mirror)
		return;
	/* Detached, the HTTP server destroyed: no callback runs any more.
	 * Watchers belong to the engine (freed with it). */
	origin_destroy(mirror->origin);
	while (mirror->xfers) {
		struct mirror_xfer *x = mirror->xfers;

		mirror->xfers = x->next;
		if (x->fd >= 0)
			close(x->fd);
		for (size_t i = 0; i < x->header_count; i++)
			free(x->headers[i]);
		mirror_reply_lines_free(x);
		if (x->body_fd >= 0)
			close(x->body_fd);
		free(x);
	}
	free(mirror->public_digests);
	free(mirror);
}
