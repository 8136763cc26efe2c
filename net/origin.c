/* origin: HTTP(S) client for back-to-source downloads, libcurl's multi interface on the loop. */
#include "net/origin.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "core/clock.h"
#include "core/log.h"
#include "net/curl-load.h"

/*
 * How libcurl runs on the ring, and why the records are safe.
 *
 * libcurl's multi_socket API says, per socket, which readiness it wants
 * (CURLMOPT_SOCKETFUNCTION) and when it must run even without I/O
 * (CURLMOPT_TIMERFUNCTION). Each socket it names gets a record (struct
 * origin_socket) with a one-shot poll on the ring; the completion hands the
 * readiness to curl_multi_socket_action, and the poll is re-armed if curl
 * still wants the socket. A poll is level-triggered when armed, so readiness
 * that appears between a completion and the re-arm is not lost.
 *
 * Lifetime: a poll record belongs to the kernel until its completion
 * arrives. On CURL_POLL_REMOVE libcurl may close the fd at once and even open
 * a new socket with the same number before our cancellation completes (a poll
 * on a closed fd never completes by itself: io_uring holds the file). So a
 * removal only marks the record and cancels its poll; the record returns to
 * the free list when that poll's completion (usually -ECANCELED) comes back,
 * and a new socket with the same number gets a fresh record (curl hands us a
 * NULL socketp for it). A change of wanted events while a poll is armed also
 * goes through a cancellation; its completion re-arms with what curl wants
 * by then. A record is (re)initialised only when it is armed again after its
 * completion, so it is never in the kernel twice, and `dispatching` keeps it
 * alive while curl_multi_socket_action runs for it (curl may remove the
 * socket from inside).
 *
 * The timer is lazy: curl moves its deadline often, so a later deadline only
 * updates timer_due_ms and the armed timeout, when it fires early, arms the
 * remainder; only an earlier deadline cancels it. Timer records come from a
 * small free list for the same reason as sockets: a cancelled one stays the
 * kernel's until its -ECANCELED arrives.
 *
 * Reentrancy: on_headers and on_data run inside libcurl's callbacks, where
 * curl_multi_add_handle, curl_multi_remove_handle and (for another handle)
 * curl_easy_pause are not allowed. `in_curl` counts how deep we are in
 * libcurl; starts, cancels and resumes made there are queued on the work list
 * and run from a nop at the next loop turn. A cancelled request also makes
 * its callbacks return an error, so libcurl stops it at once.
 *
 * Passthrough keeps the header lines of the response being received in the
 * request's head_bytes, each stored without its CRLF and NUL-terminated, at
 * head_offsets[]; a status line empties them, so on_headers sees only the
 * final response's lines (libcurl hands 1xx heads to the header callback
 * too). What is stored is never longer than what was received, so the
 * bound on received bytes bounds the buffer. The buffer stays with the
 * record for its next request unless it grew past ORIGIN_HEAD_KEEP_BYTES.
 */

#define ORIGIN_CONNECT_TIMEOUT_DEFAULT_MS 10000u
#define ORIGIN_LOW_SPEED_TIME_DEFAULT_S	  30u
#define ORIGIN_LOW_SPEED_DEFAULT_BPS	  1u
#define ORIGIN_MAX_REDIRECTS_DEFAULT	  10
#define ORIGIN_MAX_REQUESTS_DEFAULT	  1024u
#define ORIGIN_MAX_HEADERS_DEFAULT	  64u
#define ORIGIN_BUFFER_DEFAULT		  (256u << 10)
#define ORIGIN_URL_MAX			  8192u
#define ORIGIN_MESSAGE_MAX		  2048u
#define ORIGIN_NO_DEADLINE		  UINT64_MAX
#define ORIGIN_HEAD_KEEP_BYTES		  4096u /* a passthrough head buffer kept for reuse */
#define ORIGIN_HEAD_MIN_BYTES		  1024u /* its first allocation */

/* origin_request.flags */
#define REQ_ADDED	 (1u << 0) /* the easy handle is in the multi */
#define REQ_HEADERS_SENT (1u << 1) /* on_headers ran for the final response */
#define REQ_PAUSED	 (1u << 2) /* on_data asked for a pause */
#define REQ_CANCELLED	 (1u << 3) /* no more callbacks; release soon */
#define REQ_RESUME	 (1u << 4) /* a deferred resume */
#define REQ_QUEUED	 (1u << 5) /* on the work list */
#define REQ_ABORTED	 (1u << 6) /* we stopped it: HTTP error or a callback's errno */
#define REQ_DONE	 (1u << 7) /* on_done ran or runs: release soon */
#define REQ_IN_HEAD	 (1u << 8) /* between a status line and its blank line */

struct origin_socket {
	struct origin *origin;
	struct origin_socket *next;	/* free list */
	struct origin_socket *all_next; /* every record, for origin_destroy */
	struct loop_op op;
	int fd;
	unsigned want;	       /* POLLIN/POLLOUT curl wants now */
	unsigned armed_events; /* of the poll in flight */
	bool armed;	       /* a poll is in flight */
	bool cancelling;       /* its cancellation is submitted */
	bool removed;	       /* curl let go: free once nothing holds the record */
	bool dispatching;      /* inside curl_multi_socket_action for it */
};

struct origin_timer {
	struct origin *origin;
	struct origin_timer *next;
	struct origin_timer *all_next;
	struct loop_op op;
	uint64_t due_ms; /* when this timeout fires */
};

struct origin_request {
	struct origin *origin;
	struct origin_request *prev, *next; /* active list (doubly) or free list (next) */
	struct origin_request *work_next;
	CURL *easy;
	struct curl_slist *headers;
	struct origin_callbacks callbacks;
	void *arg;
	char *url;
	unsigned flags;
	enum origin_method method;
	bool range;
	bool passthrough;
	int abort_error;	  /* a callback's negative errno, or ours */
	const char *abort_reason; /* ours: why we set abort_error; NULL for a callback's */

	/* The response being received (reset at each status line). */
	long status;
	int64_t content_length;
	int64_t total_length;
	bool accept_ranges_header;
	bool content_range_seen;
	uint64_t body_bytes;
	char reason[64];
	char etag[256];
	char last_modified[64];
	char errbuf[CURL_ERROR_SIZE];

	/* Passthrough: the header lines of the response being received (see
	 * the essay). head_received counts their bytes as received. */
	char *head_bytes;
	size_t head_capacity, head_used, head_received;
	unsigned head_line_count;
	uint32_t head_offsets[ORIGIN_PASSTHROUGH_HEAD_LINES_MAX];
};

_Static_assert(ORIGIN_PASSTHROUGH_HEAD_BYTES_MAX < UINT32_MAX, "head offsets fit in uint32_t");
_Static_assert(ORIGIN_PASSTHROUGH_HEAD_BYTES_MAX == 65536 &&
		       ORIGIN_PASSTHROUGH_HEAD_LINES_MAX == 100,
	       "ORIGIN_HEAD_TOO_LARGE names the limits");
#define ORIGIN_HEAD_TOO_LARGE "response headers too large (more than 65536 bytes or 100 lines)"

struct origin {
	struct loop *loop;
	CURLM *multi;
	struct origin_options options;
	char *ca_file;
	char *user_agent;

	struct origin_request *active;	      /* doubly linked */
	struct origin_request *free_requests; /* singly linked via next */
	unsigned active_count;
	struct origin_request *work_head, *work_tail;

	struct origin_socket *free_sockets, *all_sockets;
	struct origin_timer *free_timers, *all_timers;
	struct origin_timer *timer; /* the armed timeout that counts, or NULL */
	uint64_t timer_due_ms;	    /* curl's deadline, or ORIGIN_NO_DEADLINE */

	struct loop_op kick_op;
	bool kick_armed;
	unsigned in_curl; /* depth inside libcurl calls */
	bool destroying;
};

/* libcurl is loaded (net/curl-load.h) and initialised by the first request
 * of the process, not at origin_create: a daemon that never goes to the
 * source starts and runs without it. */
static pthread_once_t origin_global_once = PTHREAD_ONCE_INIT;
static CURLcode origin_global_rc;

static void origin_global_init(void)
{
	origin_global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
	if (origin_global_rc != CURLE_OK) {
		const char *why = curl_load_error();

		log_error("origin",
			  "libcurl unavailable: no request to an origin can be made "
			  "library=%s error=\"%s\" hint=\"install Debian's libcurl4, or set "
			  "RINGFLY_LIBCURL to the library's path\"",
			  curl_load_path(), why ? why : "curl_global_init failed");
	}
}

static void origin_reap(struct origin *origin);
static void origin_kick(struct origin *origin);
static void origin_request_resume_now(struct origin_request *req);

static const char *origin_method_name(enum origin_method method)
{
	return method == ORIGIN_HEAD ? "HEAD" : "GET";
}

/* --- driving libcurl. */

static void origin_socket_action(struct origin *origin, curl_socket_t fd, int ev_bitmask)
{
	int running;
	CURLMcode rc;

	origin->in_curl++;
	rc = curl_multi_socket_action(origin->multi, fd, ev_bitmask, &running);
	origin->in_curl--;
	if (rc != CURLM_OK)
		log_error("origin", "curl_multi_socket_action failed error=\"%s\"",
			  curl_multi_strerror(rc));
}

/* --- sockets. */

static void origin_socket_done(struct loop_op *op, int res, uint32_t flags);

static struct origin_socket *origin_socket_get(struct origin *origin, int fd)
{
	struct origin_socket *sock = origin->free_sockets;

	if (sock) {
		origin->free_sockets = sock->next;
	} else {
		sock = calloc(1, sizeof(*sock));
		if (!sock)
			return NULL;
		sock->origin = origin;
		sock->all_next = origin->all_sockets;
		origin->all_sockets = sock;
	}
	sock->next = NULL;
	sock->fd = fd;
	sock->want = 0;
	sock->armed_events = 0;
	sock->armed = false;
	sock->cancelling = false;
	sock->removed = false;
	sock->dispatching = false;
	return sock;
}

static void origin_socket_put(struct origin_socket *sock)
{
	struct origin *origin = sock->origin;

	assert(!sock->armed && !sock->dispatching);
	sock->next = origin->free_sockets;
	origin->free_sockets = sock;
}

/* Makes the poll in flight match what curl wants (see the essay). */
static void origin_socket_arm(struct origin_socket *sock)
{
	struct origin *origin = sock->origin;
	int rc;

	if (sock->removed || sock->dispatching)
		return;
	if (sock->armed) {
		if (sock->armed_events != sock->want && !sock->cancelling) {
			rc = loop_cancel_op(origin->loop, &sock->op);
			if (rc < 0)
				log_error("origin", "cannot cancel a poll fd=%d error=\"%s\"",
					  sock->fd, strerror(-rc));
			else
				sock->cancelling = true;
		}
		return;
	}
	if (!sock->want)
		return;
	loop_op_init(&sock->op, origin_socket_done, sock);
	rc = loop_poll(origin->loop, &sock->op, sock->fd, sock->want);
	if (rc < 0) {
		/* The transfer then stalls until its low-speed or request
		 * timeout ends it: slow, never stuck. */
		log_error("origin", "cannot poll fd=%d error=\"%s\"", sock->fd, strerror(-rc));
		return;
	}
	sock->armed = true;
	sock->armed_events = sock->want;
	sock->cancelling = false;
}

static void origin_socket_done(struct loop_op *op, int res, uint32_t flags)
{
	struct origin_socket *sock = op->owner;
	struct origin *origin = sock->origin;
	int ev = 0;

	(void)flags;
	assert(sock->armed);
	sock->armed = false;
	sock->cancelling = false;
	if (sock->removed) {
		origin_socket_put(sock);
		return;
	}
	if (res > 0 && sock->want) {
		if (res & (POLLIN | POLLHUP | POLLRDHUP))
			ev |= CURL_CSELECT_IN;
		if (res & POLLOUT)
			ev |= CURL_CSELECT_OUT;
		if (res & (POLLERR | POLLNVAL))
			ev |= CURL_CSELECT_ERR;
	} else if (res < 0 && res != -ECANCELED) {
		log_warn("origin", "poll failed fd=%d error=\"%s\"", sock->fd, strerror(-res));
		ev = CURL_CSELECT_ERR;
	}
	if (ev) {
		sock->dispatching = true;
		origin_socket_action(origin, sock->fd, ev);
		sock->dispatching = false;
	}
	if (sock->removed)
		origin_socket_put(sock);
	else
		origin_socket_arm(sock);
	origin_reap(origin);
}

/* CURLMOPT_SOCKETFUNCTION */
static int origin_socket_update(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct origin *origin = userp;
	struct origin_socket *sock = socketp;

	(void)easy;
	if (origin->destroying)
		return 0;
	if (what == CURL_POLL_REMOVE) {
		if (!sock)
			return 0;
		sock->want = 0;
		sock->removed = true;
		if (sock->armed) {
			if (!sock->cancelling && loop_cancel_op(origin->loop, &sock->op) == 0)
				sock->cancelling = true;
		} else if (!sock->dispatching) {
			origin_socket_put(sock);
		}
		return 0;
	}
	if (!sock) {
		sock = origin_socket_get(origin, fd);
		if (!sock)
			return -1;
		curl_multi_assign(origin->multi, fd, sock);
	}
	assert(sock->fd == fd && !sock->removed);
	sock->want =
		((what & CURL_POLL_IN) ? POLLIN : 0u) | ((what & CURL_POLL_OUT) ? POLLOUT : 0u);
	origin_socket_arm(sock);
	return 0;
}

/* --- the timer. */

static void origin_timer_done(struct loop_op *op, int res, uint32_t flags);

static int origin_timer_arm(struct origin *origin, uint64_t now_ms)
{
	struct origin_timer *timer = origin->free_timers;
	uint64_t delay_ms;
	int rc;

	assert(!origin->timer && origin->timer_due_ms != ORIGIN_NO_DEADLINE);
	if (timer) {
		origin->free_timers = timer->next;
	} else {
		timer = calloc(1, sizeof(*timer));
		if (!timer)
			return -ENOMEM;
		timer->origin = origin;
		timer->all_next = origin->all_timers;
		origin->all_timers = timer;
	}
	delay_ms = origin->timer_due_ms > now_ms ? origin->timer_due_ms - now_ms : 0;
	loop_op_init(&timer->op, origin_timer_done, timer);
	rc = loop_timeout(origin->loop, &timer->op, delay_ms);
	if (rc < 0) {
		timer->next = origin->free_timers;
		origin->free_timers = timer;
		return rc;
	}
	timer->due_ms = origin->timer_due_ms;
	origin->timer = timer;
	return 0;
}

static void origin_timer_done(struct loop_op *op, int res, uint32_t flags)
{
	struct origin_timer *timer = op->owner;
	struct origin *origin = timer->origin;
	bool current = origin->timer == timer;
	uint64_t now_ms;

	(void)res;
	(void)flags;
	timer->next = origin->free_timers;
	origin->free_timers = timer;
	if (!current)
		return; /* cancelled for an earlier deadline */
	origin->timer = NULL;
	if (origin->timer_due_ms == ORIGIN_NO_DEADLINE)
		return;
	now_ms = clock_monotonic_ms();
	if (now_ms < origin->timer_due_ms) {
		/* The deadline moved later while this one was armed. */
		if (origin_timer_arm(origin, now_ms) < 0)
			log_error("origin", "cannot re-arm the timer");
		return;
	}
	origin->timer_due_ms = ORIGIN_NO_DEADLINE;
	origin_socket_action(origin, CURL_SOCKET_TIMEOUT, 0);
	origin_reap(origin);
}

/* CURLMOPT_TIMERFUNCTION */
static int origin_timer_update(CURLM *multi, long timeout_ms, void *userp)
{
	struct origin *origin = userp;
	uint64_t now_ms;

	(void)multi;
	if (origin->destroying)
		return 0;
	if (timeout_ms < 0) {
		/* Deleted: an armed timeout finds no deadline and does nothing. */
		origin->timer_due_ms = ORIGIN_NO_DEADLINE;
		return 0;
	}
	now_ms = clock_monotonic_ms();
	origin->timer_due_ms = now_ms + (uint64_t)timeout_ms;
	if (origin->timer) {
		if (origin->timer->due_ms <= origin->timer_due_ms)
			return 0; /* fires first and re-arms for the rest */
		if (loop_cancel_op(origin->loop, &origin->timer->op) < 0)
			return 0; /* it still fires, late: re-arms then */
		origin->timer = NULL;
	}
	if (origin_timer_arm(origin, now_ms) < 0) {
		log_error("origin", "cannot arm the timer");
		return -1;
	}
	return 0;
}

/* --- requests: life cycle. */

static void origin_request_release(struct origin_request *req)
{
	struct origin *origin = req->origin;

	assert(!(req->flags & (REQ_ADDED | REQ_QUEUED)));
	assert(origin->active_count > 0);
	if (req->prev)
		req->prev->next = req->next;
	else
		origin->active = req->next;
	if (req->next)
		req->next->prev = req->prev;
	origin->active_count--;

	curl_slist_free_all(req->headers);
	req->headers = NULL;
	free(req->url);
	req->url = NULL;
	req->flags = 0;
	if (req->head_capacity > ORIGIN_HEAD_KEEP_BYTES) {
		free(req->head_bytes);
		req->head_bytes = NULL;
		req->head_capacity = 0;
	}
	curl_easy_reset(req->easy);
	req->prev = NULL;
	req->next = origin->free_requests;
	origin->free_requests = req;
}

static void origin_request_queue(struct origin_request *req)
{
	struct origin *origin = req->origin;

	if (!(req->flags & REQ_QUEUED)) {
		req->flags |= REQ_QUEUED;
		req->work_next = NULL;
		if (origin->work_tail)
			origin->work_tail->work_next = req;
		else
			origin->work_head = req;
		origin->work_tail = req;
	}
	origin_kick(origin);
}

static void origin_request_remove(struct origin_request *req)
{
	if (req->flags & REQ_ADDED) {
		curl_multi_remove_handle(req->origin->multi, req->easy);
		req->flags &= ~REQ_ADDED;
	}
}

static int origin_errno_for_status(long status)
{
	if (status == 404 || status == 410)
		return -ENOENT;
	if (status == 401 || status == 403)
		return -EACCES;
	return -EIO;
}

/* Says what went wrong into reason[], returns the negative errno. */
static int origin_explain(struct origin_request *req, CURLcode code, char *reason,
			  size_t reason_len)
{
	const char *detail = req->errbuf[0] ? req->errbuf : curl_easy_strerror(code);
	long os_errno = 0;

	if (req->flags & REQ_ABORTED) {
		if (req->abort_error && req->abort_reason) {
			snprintf(reason, reason_len, "%s", req->abort_reason);
			return req->abort_error;
		}
		if (req->abort_error) {
			snprintf(reason, reason_len, "stopped by the caller (%s)",
				 strerror(-req->abort_error));
			return req->abort_error;
		}
		snprintf(reason, reason_len, "HTTP %ld%s%s", req->status, req->reason[0] ? " " : "",
			 req->reason);
		return origin_errno_for_status(req->status);
	}
	if (code == CURLE_OK) {
		if (req->status >= 300 && req->status < 400) {
			snprintf(reason, reason_len, "HTTP %ld%s%s (redirect not followed)",
				 req->status, req->reason[0] ? " " : "", req->reason);
			return -EIO;
		}
		snprintf(reason, reason_len, "no usable HTTP response (status %ld)", req->status);
		return -EIO;
	}
	switch (code) {
	case CURLE_COULDNT_CONNECT:
		curl_easy_getinfo(req->easy, CURLINFO_OS_ERRNO, &os_errno);
		if (os_errno == ECONNREFUSED) {
			snprintf(reason, reason_len, "connection refused");
			return -ECONNREFUSED;
		}
		snprintf(reason, reason_len, "cannot connect (%s)", detail);
		return os_errno > 0 ? -(int)os_errno : -EHOSTUNREACH;
	case CURLE_OPERATION_TIMEDOUT:
		snprintf(reason, reason_len, "timed out (%s)", detail);
		return -ETIMEDOUT;
	case CURLE_COULDNT_RESOLVE_HOST:
		snprintf(reason, reason_len, "cannot resolve host (%s)", detail);
		return -EHOSTUNREACH;
	case CURLE_PEER_FAILED_VERIFICATION:
		snprintf(reason, reason_len, "TLS certificate verification failed (%s)", detail);
		return -EPROTO;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_SHUTDOWN_FAILED:
	case CURLE_SSL_ENGINE_INITFAILED:
		snprintf(reason, reason_len, "TLS error (%s)", detail);
		return -EPROTO;
	case CURLE_TOO_MANY_REDIRECTS:
		snprintf(reason, reason_len, "too many redirects (limit %d)",
			 req->origin->options.max_redirects);
		return -ELOOP;
	case CURLE_UNSUPPORTED_PROTOCOL:
		snprintf(reason, reason_len, "unsupported protocol (%s)", detail);
		return -EINVAL;
	case CURLE_OUT_OF_MEMORY:
		snprintf(reason, reason_len, "out of memory");
		return -ENOMEM;
	default:
		snprintf(reason, reason_len, "%s (%s)", curl_easy_strerror(code), detail);
		return -EIO;
	}
}

/* The transfer ended (curl's result `code`): on_done, then release. */
static void origin_request_finish(struct origin_request *req, CURLcode code)
{
	struct origin_result result = { 0 };
	char message[ORIGIN_MESSAGE_MAX];
	char reason[512];
	const char *effective = NULL;
	bool failed;

	origin_request_remove(req);
	req->flags |= REQ_DONE;
	if (req->flags & REQ_CANCELLED)
		goto out_release;

	result.status = req->status;
	result.body_bytes = req->body_bytes;
	if (req->passthrough)
		failed = code != CURLE_OK || (req->flags & REQ_ABORTED) ||
			 !(req->flags & REQ_HEADERS_SENT);
	else
		failed = code != CURLE_OK || (req->flags & REQ_ABORTED) || req->status < 200 ||
			 req->status >= 300;
	if (failed) {
		result.error = origin_explain(req, code, reason, sizeof(reason));
		curl_easy_getinfo(req->easy, CURLINFO_EFFECTIVE_URL, &effective);
		if (effective && strcmp(effective, req->url) != 0)
			snprintf(message, sizeof(message), "%s %s (redirected to %s): %s",
				 origin_method_name(req->method), req->url, effective, reason);
		else
			snprintf(message, sizeof(message), "%s %s: %s",
				 origin_method_name(req->method), req->url, reason);
		result.message = message;
		assert(result.error < 0);
	}
	if (req->callbacks.on_done)
		req->callbacks.on_done(req, &result, req->arg);
out_release:
	/* A request on the work list is released from there. */
	if (!(req->flags & REQ_QUEUED))
		origin_request_release(req);
}

/* Hands every finished transfer to its on_done. */
static void origin_reap(struct origin *origin)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(origin->multi, &left))) {
		struct origin_request *req = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&req);
		assert(req && req->easy == msg->easy_handle);
		origin_request_finish(req, msg->data.result);
	}
}

/* Returns false if the request could not start (it is then finished). */
static bool origin_request_add(struct origin_request *req)
{
	CURLMcode rc = curl_multi_add_handle(req->origin->multi, req->easy);

	if (rc != CURLM_OK) {
		snprintf(req->errbuf, sizeof(req->errbuf), "%s", curl_multi_strerror(rc));
		origin_request_finish(req, CURLE_OUT_OF_MEMORY);
		return false;
	}
	req->flags |= REQ_ADDED;
	return true;
}

/* Runs what was deferred while inside libcurl (see the essay). */
static void origin_run_work(struct origin *origin)
{
	struct origin_request *req;

	assert(origin->in_curl == 0);
	while ((req = origin->work_head)) {
		origin->work_head = req->work_next;
		if (!origin->work_head)
			origin->work_tail = NULL;
		req->flags &= ~REQ_QUEUED;
		if (req->flags & (REQ_CANCELLED | REQ_DONE)) {
			origin_request_remove(req);
			origin_request_release(req);
			continue;
		}
		if (!(req->flags & REQ_ADDED) && !origin_request_add(req))
			continue; /* finished and released */
		if (req->flags & REQ_RESUME) {
			req->flags &= ~REQ_RESUME;
			origin_request_resume_now(req);
		}
	}
}

static void origin_kick_done(struct loop_op *op, int res, uint32_t flags)
{
	struct origin *origin = op->owner;

	(void)res;
	(void)flags;
	origin->kick_armed = false;
	origin_run_work(origin);
	origin_reap(origin);
}

static void origin_kick(struct origin *origin)
{
	int rc;

	if (origin->kick_armed)
		return;
	loop_op_init(&origin->kick_op, origin_kick_done, origin);
	rc = loop_nop(origin->loop, &origin->kick_op);
	if (rc < 0) {
		log_error("origin", "cannot queue deferred work error=\"%s\"", strerror(-rc));
		return;
	}
	origin->kick_armed = true;
}

/* --- libcurl's callbacks for one transfer. */

static void origin_copy_value(char *dst, size_t dst_len, const char *value, size_t len)
{
	if (len >= dst_len)
		len = dst_len - 1;
	memcpy(dst, value, len);
	dst[len] = '\0';
}

static int64_t origin_parse_length(const char *value)
{
	char *end;
	unsigned long long n;

	errno = 0;
	n = strtoull(value, &end, 10);
	if (end == value || errno || n > INT64_MAX)
		return -1;
	return (int64_t)n;
}

/* One "Name: value" line of the response being received. */
static void origin_parse_header(struct origin_request *req, const char *line, size_t len)
{
	const char *colon = memchr(line, ':', len);
	char value[512];
	size_t name_len, value_len;
	const char *v;

	if (!colon)
		return;
	name_len = (size_t)(colon - line);
	v = colon + 1;
	value_len = len - name_len - 1;
	while (value_len && (*v == ' ' || *v == '\t')) {
		v++;
		value_len--;
	}
	while (value_len && (v[value_len - 1] == '\r' || v[value_len - 1] == '\n' ||
			     v[value_len - 1] == ' ' || v[value_len - 1] == '\t'))
		value_len--;
	origin_copy_value(value, sizeof(value), v, value_len);

#define NAME_IS(s) (name_len == sizeof(s) - 1 && strncasecmp(line, s, name_len) == 0)
	if (NAME_IS("Content-Length")) {
		req->content_length = origin_parse_length(value);
	} else if (NAME_IS("Content-Range")) {
		/* bytes START-END/TOTAL (TOTAL may be "*") */
		const char *slash = strchr(value, '/');

		req->content_range_seen = true;
		if (slash)
			req->total_length = origin_parse_length(slash + 1);
	} else if (NAME_IS("Accept-Ranges")) {
		req->accept_ranges_header = strcasestr(value, "bytes") != NULL;
	} else if (NAME_IS("ETag")) {
		origin_copy_value(req->etag, sizeof(req->etag), v, value_len);
	} else if (NAME_IS("Last-Modified")) {
		origin_copy_value(req->last_modified, sizeof(req->last_modified), v, value_len);
	}
#undef NAME_IS
}

static void origin_parse_status(struct origin_request *req, const char *line, size_t len)
{
	const char *p = memchr(line, ' ', len);
	size_t rest;

	req->status = 0;
	req->reason[0] = '\0';
	req->content_length = -1;
	req->total_length = -1;
	req->accept_ranges_header = false;
	req->content_range_seen = false;
	req->etag[0] = '\0';
	req->last_modified[0] = '\0';
	req->head_used = 0;
	req->head_received = 0;
	req->head_line_count = 0;
	if (!p)
		return;
	p++;
	rest = len - (size_t)(p - line);
	if (rest >= 3 && p[0] >= '1' && p[0] <= '9')
		req->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
	if (rest > 4) {
		size_t reason_len = rest - 4;

		while (reason_len &&
		       (p[4 + reason_len - 1] == '\r' || p[4 + reason_len - 1] == '\n'))
			reason_len--;
		origin_copy_value(req->reason, sizeof(req->reason), p + 4, reason_len);
	}
}

/* Makes room for `need` bytes in head_bytes: 0 or -ENOMEM. */
static int origin_head_reserve(struct origin_request *req, size_t need)
{
	size_t capacity = req->head_capacity ? req->head_capacity : ORIGIN_HEAD_MIN_BYTES;
	char *bytes;

	if (need <= req->head_capacity)
		return 0;
	while (capacity < need)
		capacity *= 2;
	bytes = realloc(req->head_bytes, capacity);
	if (!bytes)
		return -ENOMEM;
	req->head_bytes = bytes;
	req->head_capacity = capacity;
	return 0;
}

/* Passthrough: keeps one header line of the response being received. */
static int origin_head_keep(struct origin_request *req, const char *line, size_t len)
{
	bool folded = len && (line[0] == ' ' || line[0] == '\t');
	size_t need;

	req->head_received += len;
	if (req->head_received > ORIGIN_PASSTHROUGH_HEAD_BYTES_MAX)
		return -E2BIG;
	while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		len--;
	if (folded) {
		/* obs-fold: joined to the line before with one space. */
		while (len && (line[0] == ' ' || line[0] == '\t')) {
			line++;
			len--;
		}
		if (!len || !req->head_line_count)
			return 0; /* nothing to join, or nothing to join it to */
		assert(req->head_used > 0 && req->head_bytes[req->head_used - 1] == '\0');
		need = req->head_used + 1 + len;
		if (origin_head_reserve(req, need) < 0)
			return -ENOMEM;
		req->head_bytes[req->head_used - 1] = ' ';
	} else {
		if (req->head_line_count == ORIGIN_PASSTHROUGH_HEAD_LINES_MAX)
			return -E2BIG;
		need = req->head_used + len + 1;
		if (origin_head_reserve(req, need) < 0)
			return -ENOMEM;
		req->head_offsets[req->head_line_count++] = (uint32_t)req->head_used;
	}
	memcpy(req->head_bytes + req->head_used, line, len);
	req->head_used += len;
	req->head_bytes[req->head_used++] = '\0';
	assert(req->head_used == need);
	return 0;
}

/* The blank line after a head: returns false to stop the transfer. */
static bool origin_head_complete(struct origin_request *req)
{
	const char *lines[ORIGIN_PASSTHROUGH_HEAD_LINES_MAX];
	struct origin_response response;
	const char *effective = NULL;
	int rc;

	if (req->status < 200)
		return true; /* 1xx: the real response follows */
	if (req->status < 300 || req->passthrough)
		goto out_final; /* passthrough relays any final status */
	if (req->status < 400)
		return true;	   /* followed by libcurl, or reported at the end */
	req->flags |= REQ_ABORTED; /* an HTTP error: on_done names it */
	return false;

out_final:
	if (req->flags & REQ_HEADERS_SENT)
		return true;
	req->flags |= REQ_HEADERS_SENT;
	if (!req->callbacks.on_headers)
		return true;
	curl_easy_getinfo(req->easy, CURLINFO_EFFECTIVE_URL, &effective);
	response.status = req->status;
	response.content_length = req->content_length;
	if (req->status == 206)
		response.total_length = req->total_length;
	else
		response.total_length = req->content_length;
	if (req->range)
		response.accepts_ranges = req->status == 206 && req->content_range_seen;
	else
		response.accepts_ranges = req->accept_ranges_header;
	response.etag = req->etag;
	response.last_modified = req->last_modified;
	response.effective_url = effective ? effective : req->url;
	response.reason = req->reason;
	response.header_lines = NULL;
	response.header_line_count = 0;
	if (req->passthrough) {
		assert(req->head_line_count <= ORIGIN_PASSTHROUGH_HEAD_LINES_MAX);
		for (unsigned i = 0; i < req->head_line_count; i++) {
			assert(req->head_offsets[i] < req->head_used);
			lines[i] = req->head_bytes + req->head_offsets[i];
		}
		response.header_lines = lines;
		response.header_line_count = req->head_line_count;
	}
	rc = req->callbacks.on_headers(req, &response, req->arg);
	if (req->flags & REQ_CANCELLED)
		return false;
	if (rc < 0) {
		req->abort_error = rc;
		req->flags |= REQ_ABORTED;
		return false;
	}
	return true;
}

/* CURLOPT_HEADERFUNCTION: one header line (status line, fields, blank line). */
static size_t origin_header(char *buffer, size_t size, size_t nitems, void *userdata)
{
	struct origin_request *req = userdata;
	size_t len = size * nitems;

	if (req->flags & (REQ_CANCELLED | REQ_ABORTED))
		return 0;
	if (len >= 5 && strncmp(buffer, "HTTP/", 5) == 0) {
		origin_parse_status(req, buffer, len);
		req->flags |= REQ_IN_HEAD;
		return len;
	}
	if (!(req->flags & REQ_IN_HEAD))
		return len; /* trailers */
	if (len <= 2 && (buffer[0] == '\r' || buffer[0] == '\n')) {
		req->flags &= ~REQ_IN_HEAD;
		return origin_head_complete(req) ? len : 0;
	}
	if (req->passthrough) {
		int rc = origin_head_keep(req, buffer, len);

		if (rc < 0) {
			req->abort_error = rc;
			req->abort_reason = rc == -E2BIG ? ORIGIN_HEAD_TOO_LARGE :
							   "out of memory for response headers";
			req->flags |= REQ_ABORTED;
			return 0;
		}
	}
	origin_parse_header(req, buffer, len);
	return len;
}

/* CURLOPT_WRITEFUNCTION: body bytes of the current response. */
static size_t origin_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct origin_request *req = userdata;
	size_t len = size * nmemb;
	int rc = 0;

	if (req->flags & (REQ_CANCELLED | REQ_ABORTED))
		return CURL_WRITEFUNC_ERROR;
	if (req->status >= 300 && req->status < 400 && !req->passthrough)
		return len; /* a redirect's body */
	if (!(req->flags & REQ_HEADERS_SENT)) {
		/* Body without a 2xx head (HTTP/0.9, or a broken server). */
		req->abort_error = -EPROTO;
		req->flags |= REQ_ABORTED;
		return CURL_WRITEFUNC_ERROR;
	}
	if (req->callbacks.on_data)
		rc = req->callbacks.on_data(req, ptr, len, req->arg);
	if (req->flags & REQ_CANCELLED)
		return CURL_WRITEFUNC_ERROR;
	if (rc == ORIGIN_PAUSE) {
		req->flags |= REQ_PAUSED;
		return CURL_WRITEFUNC_PAUSE;
	}
	if (rc < 0) {
		req->abort_error = rc;
		req->flags |= REQ_ABORTED;
		return CURL_WRITEFUNC_ERROR;
	}
	assert(rc == 0);
	req->body_bytes += len;
	return len;
}

/* --- requests: the API. */

static int origin_request_setup(struct origin_request *req,
				const struct origin_request_params *params)
{
	const struct origin_options *options = &req->origin->options;
	CURL *easy = req->easy;
	CURLcode rc = CURLE_OK;

#define SET(option, value)                                          \
	do {                                                        \
		if (rc == CURLE_OK)                                 \
			rc = curl_easy_setopt(easy, option, value); \
	} while (0)
	SET(CURLOPT_URL, req->url);
	SET(CURLOPT_PRIVATE, (void *)req);
	SET(CURLOPT_ERRORBUFFER, req->errbuf);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
	SET(CURLOPT_HEADERFUNCTION, origin_header);
	SET(CURLOPT_HEADERDATA, (void *)req);
	SET(CURLOPT_WRITEFUNCTION, origin_write);
	SET(CURLOPT_WRITEDATA, (void *)req);
	SET(CURLOPT_BUFFERSIZE, (long)options->buffer_bytes);
	SET(CURLOPT_CONNECTTIMEOUT_MS, (long)options->connect_timeout_ms);
	SET(CURLOPT_LOW_SPEED_TIME, (long)options->low_speed_time_s);
	SET(CURLOPT_LOW_SPEED_LIMIT, (long)options->low_speed_bytes_per_s);
	SET(CURLOPT_TIMEOUT_MS, (long)params->timeout_ms);
	SET(CURLOPT_USERAGENT, req->origin->user_agent);
	SET(CURLOPT_SSL_VERIFYPEER, options->insecure ? 0L : 1L);
	SET(CURLOPT_SSL_VERIFYHOST, options->insecure ? 0L : 2L);
	if (req->origin->ca_file)
		SET(CURLOPT_CAINFO, req->origin->ca_file);
	if (params->passthrough) {
		SET(CURLOPT_FOLLOWLOCATION, 0L); /* a 3xx is relayed, not followed */
	} else if (options->max_redirects >= 0) {
		SET(CURLOPT_FOLLOWLOCATION, 1L);
		SET(CURLOPT_MAXREDIRS, (long)options->max_redirects);
	}
	if (params->method == ORIGIN_HEAD)
		SET(CURLOPT_NOBODY, 1L);
	else
		SET(CURLOPT_HTTPGET, 1L);
	if (params->range) {
		char range[64];

		if (params->range_length)
			snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, params->range_start,
				 params->range_start + params->range_length - 1);
		else
			snprintf(range, sizeof(range), "%" PRIu64 "-", params->range_start);
		SET(CURLOPT_RANGE, range); /* copied by libcurl */
	}
	if (req->headers)
		SET(CURLOPT_HTTPHEADER, req->headers);
#undef SET
	if (rc == CURLE_OUT_OF_MEMORY)
		return -ENOMEM;
	return rc == CURLE_OK ? 0 : -EINVAL;
}

static bool origin_url_valid(const char *url)
{
	return url &&
	       (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) &&
	       strnlen(url, ORIGIN_URL_MAX) < ORIGIN_URL_MAX && !strpbrk(url, "\r\n ");
}

/* The multi handle, made on the first request: -ELIBACC if libcurl could
 * not be loaded (logged once, above), -ENOMEM or -EINVAL if libcurl fails. */
static int origin_multi_open(struct origin *origin)
{
	CURLMcode mrc;

	if (origin->multi)
		return 0;
	pthread_once(&origin_global_once, origin_global_init);
	if (origin_global_rc != CURLE_OK)
		return -ELIBACC;
	origin->multi = curl_multi_init();
	if (!origin->multi)
		return -ENOMEM;
	mrc = curl_multi_setopt(origin->multi, CURLMOPT_SOCKETFUNCTION, origin_socket_update);
	if (mrc == CURLM_OK)
		mrc = curl_multi_setopt(origin->multi, CURLMOPT_SOCKETDATA, (void *)origin);
	if (mrc == CURLM_OK)
		mrc = curl_multi_setopt(origin->multi, CURLMOPT_TIMERFUNCTION, origin_timer_update);
	if (mrc == CURLM_OK)
		mrc = curl_multi_setopt(origin->multi, CURLMOPT_TIMERDATA, (void *)origin);
	if (mrc != CURLM_OK) {
		curl_multi_cleanup(origin->multi);
		origin->multi = NULL;
		return -EINVAL;
	}
	return 0;
}

int origin_request_start(struct origin *origin, const struct origin_request_params *params,
			 const struct origin_callbacks *callbacks, void *arg,
			 struct origin_request **out)
{
	struct origin_request *req;
	int rc;

	assert(!origin->destroying);
	if (!origin_url_valid(params->url) ||
	    (params->method != ORIGIN_GET && params->method != ORIGIN_HEAD) ||
	    (params->range && params->range_length &&
	     params->range_start + params->range_length < params->range_start) ||
	    (params->header_count && !params->headers))
		return -EINVAL;
	if (params->header_count > origin->options.max_headers)
		return -E2BIG;
	for (size_t i = 0; i < params->header_count; i++)
		if (!params->headers[i] || !strchr(params->headers[i], ':') ||
		    strpbrk(params->headers[i], "\r\n"))
			return -EINVAL;
	if (origin->active_count >= origin->options.max_requests)
		return -EBUSY;
	rc = origin_multi_open(origin);
	if (rc < 0)
		return rc;

	req = origin->free_requests;
	if (req) {
		origin->free_requests = req->next;
	} else {
		req = calloc(1, sizeof(*req));
		if (!req)
			return -ENOMEM;
		req->origin = origin;
		req->easy = curl_easy_init();
		if (!req->easy) {
			free(req);
			return -ENOMEM;
		}
	}
	/* On the active list from here: release undoes everything. */
	req->prev = NULL;
	req->next = origin->active;
	if (origin->active)
		origin->active->prev = req;
	origin->active = req;
	origin->active_count++;
	req->flags = 0;
	req->callbacks = *callbacks;
	req->arg = arg;
	req->method = params->method;
	req->range = params->range;
	req->passthrough = params->passthrough;
	req->abort_error = 0;
	req->abort_reason = NULL;
	req->head_used = 0;
	req->head_received = 0;
	req->head_line_count = 0;
	req->status = 0;
	req->reason[0] = '\0';
	req->content_length = -1;
	req->total_length = -1;
	req->body_bytes = 0;
	req->etag[0] = '\0';
	req->last_modified[0] = '\0';
	req->errbuf[0] = '\0';
	req->headers = NULL;
	req->url = strdup(params->url);
	if (!req->url) {
		rc = -ENOMEM;
		goto out_release;
	}
	for (size_t i = 0; i < params->header_count; i++) {
		struct curl_slist *list = curl_slist_append(req->headers, params->headers[i]);

		if (!list) {
			rc = -ENOMEM;
			goto out_release;
		}
		req->headers = list;
	}
	rc = origin_request_setup(req, params);
	if (rc < 0)
		goto out_release;

	if (origin->in_curl) {
		origin_request_queue(req);
	} else if (curl_multi_add_handle(origin->multi, req->easy) != CURLM_OK) {
		rc = -ENOMEM;
		goto out_release;
	} else {
		req->flags |= REQ_ADDED;
	}
	*out = req;
	return 0;

out_release:
	origin_request_release(req);
	return rc;
}

static void origin_request_resume_now(struct origin_request *req)
{
	struct origin *origin = req->origin;
	CURLcode rc;

	assert(origin->in_curl == 0);
	if (!(req->flags & REQ_PAUSED) || !(req->flags & REQ_ADDED))
		return;
	req->flags &= ~REQ_PAUSED;
	/* libcurl may hand over the bytes it held right here: on_data can
	 * run (and pause again) inside curl_easy_pause. */
	origin->in_curl++;
	rc = curl_easy_pause(req->easy, CURLPAUSE_CONT);
	origin->in_curl--;
	if (rc != CURLE_OK)
		log_warn("origin", "curl_easy_pause failed url=%s error=\"%s\"", req->url,
			 curl_easy_strerror(rc));
}

void origin_request_resume(struct origin_request *req)
{
	if (req->flags & (REQ_CANCELLED | REQ_DONE))
		return;
	if (req->origin->in_curl || (req->flags & REQ_QUEUED)) {
		req->flags |= REQ_RESUME;
		origin_request_queue(req);
		return;
	}
	origin_request_resume_now(req);
}

void origin_request_cancel(struct origin_request *req)
{
	if (req->flags & (REQ_CANCELLED | REQ_DONE))
		return;
	req->flags |= REQ_CANCELLED;
	if (req->origin->in_curl || (req->flags & REQ_QUEUED)) {
		origin_request_queue(req);
		return;
	}
	origin_request_remove(req);
	origin_request_release(req);
}

unsigned origin_active(const struct origin *origin)
{
	return origin->active_count;
}

const char *origin_strerror(int rc)
{
	const char *why;

	if (rc != -ELIBACC)
		return strerror(-rc);
	why = curl_load_error();
	return why ? why : "libcurl is loaded but curl_global_init failed";
}

/* --- the origin. */

int origin_create(struct origin **out, struct loop *loop, const struct origin_options *options)
{
	struct origin *origin;

	origin = calloc(1, sizeof(*origin));
	if (!origin)
		return -ENOMEM;
	origin->loop = loop;
	origin->timer_due_ms = ORIGIN_NO_DEADLINE;
	if (options)
		origin->options = *options;
	if (!origin->options.connect_timeout_ms)
		origin->options.connect_timeout_ms = ORIGIN_CONNECT_TIMEOUT_DEFAULT_MS;
	if (!origin->options.low_speed_time_s)
		origin->options.low_speed_time_s = ORIGIN_LOW_SPEED_TIME_DEFAULT_S;
	if (!origin->options.low_speed_bytes_per_s)
		origin->options.low_speed_bytes_per_s = ORIGIN_LOW_SPEED_DEFAULT_BPS;
	if (!origin->options.max_redirects)
		origin->options.max_redirects = ORIGIN_MAX_REDIRECTS_DEFAULT;
	if (!origin->options.max_requests)
		origin->options.max_requests = ORIGIN_MAX_REQUESTS_DEFAULT;
	if (!origin->options.max_headers)
		origin->options.max_headers = ORIGIN_MAX_HEADERS_DEFAULT;
	if (!origin->options.buffer_bytes)
		origin->options.buffer_bytes = ORIGIN_BUFFER_DEFAULT;
	if (origin->options.buffer_bytes > CURL_MAX_READ_SIZE)
		origin->options.buffer_bytes = CURL_MAX_READ_SIZE;
	origin->options.ca_file = NULL; /* borrowed pointers: use our copies */
	origin->options.user_agent = NULL;

	if (options && options->ca_file) {
		origin->ca_file = strdup(options->ca_file);
		if (!origin->ca_file)
			goto out_free;
	}
	origin->user_agent = strdup(options && options->user_agent ? options->user_agent :
								     "ringfly/" RINGFLY_VERSION);
	if (!origin->user_agent)
		goto out_free;

	*out = origin;
	return 0;

out_free:
	free(origin->user_agent);
	free(origin->ca_file);
	free(origin);
	return -ENOMEM;
}

void origin_destroy(struct origin *origin)
{
	if (!origin)
		return;
	origin->destroying = true;
	if (origin->multi) { /* NULL: no request was ever made */
		curl_multi_setopt(origin->multi, CURLMOPT_SOCKETFUNCTION, NULL);
		curl_multi_setopt(origin->multi, CURLMOPT_TIMERFUNCTION, NULL);
	}
	/* Requests still here are dropped silently (see the header). */
	origin->work_head = origin->work_tail = NULL;
	while (origin->active) {
		struct origin_request *req = origin->active;

		req->flags &= ~REQ_QUEUED;
		origin_request_remove(req);
		origin_request_release(req);
	}
	while (origin->free_requests) {
		struct origin_request *req = origin->free_requests;

		origin->free_requests = req->next;
		curl_easy_cleanup(req->easy);
		free(req->head_bytes);
		free(req);
	}
	if (origin->multi)
		curl_multi_cleanup(origin->multi);
	/* The loop has stopped for good: records it still held are ours. */
	while (origin->all_sockets) {
		struct origin_socket *sock = origin->all_sockets;

		origin->all_sockets = sock->all_next;
		free(sock);
	}
	while (origin->all_timers) {
		struct origin_timer *timer = origin->all_timers;

		origin->all_timers = timer->all_next;
		free(timer);
	}
	free(origin->user_agent);
	free(origin->ca_file);
	free(origin);
}
