/* test_http: the HTTP/1.1 server on a real loop and real sockets: keep-alive, pipelining,
 * HEAD, file bodies, late answers, limits (431, 413, 400, 408, 503), aborted exchanges. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/loop.h"
#include "net/http.h"
#include "net/tcp.h"

#define FILE_SIZE ((3u << 20) + 17u)
#define STREAM_FILES 16u
#define LATER_MAX 8u

static char dir[40];
static uint8_t *file_bytes; /* the file's content (the child has it too: fork) */
static int file_fd = -1;

static void setup(void)
{
	char path[128];
	uint64_t x = 0x2545f4914f6cdd1du;
	int fd;

	log_set_level(getenv("TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR);
	snprintf(dir, sizeof(dir), "/tmp/rf-http-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	file_bytes = malloc(FILE_SIZE);
	cr_assert_not_null(file_bytes);
	for (size_t i = 0; i < FILE_SIZE; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		file_bytes[i] = (uint8_t)x;
	}
	snprintf(path, sizeof(path), "%s/blob", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, file_bytes, FILE_SIZE), (ssize_t)FILE_SIZE);
	close(fd);
	file_fd = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(file_fd, 0);
}

static void teardown(void)
{
	char cmd[128];

	close(file_fd);
	file_fd = -1;
	free(file_bytes);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(http, .init = setup, .fini = teardown);

/* --- the server side (the parent).
 *
 *   /hello             200 "hello\n"
 *   /later?ms=N        200 "later\n", N ms later (from a timer)
 *   /file              200, the file by http_response_file
 *   /stream            200 declaring 16 files, all queued, never ended: the
 *                      client goes away and aborted must run
 *   /echo              200 with what the server parsed of the request
 *   /rules             a body longer than declared and a line of ours are
 *                      refused (-EINVAL), then 200 "abc"
 *   /short             ends 3 bytes short of its Content-Length: closed
 *   /drain             stops the server accepting, then 200 "draining\n"
 *   else               404
 */

static struct loop *test_loop;
static struct http_server *test_server;

static struct {
	unsigned requests, aborted, aborted_user_ok;
	unsigned files_queued, files_ok, files_failed, files_without_ex;
	unsigned files_runs_bad; /* a done that ran twice */
	int rules_longer, rules_line, rules_after_end;
} seen;

static unsigned file_runs[64];

static struct later {
	struct loop_op op;
	struct http_exchange *ex;
	bool armed;
} laters[LATER_MAX];

static void later_done(struct loop_op *op, int res, uint32_t flags)
{
	struct later *later = op->owner;

	(void)res;
	(void)flags;
	later->armed = false;
	if (later->ex) /* NULL: aborted meanwhile */
		cr_assert_eq(http_reply(later->ex, 200, "text/plain", "later\n"), 0);
	later->ex = NULL;
}

static void file_done(struct http_exchange *ex, void *arg, int res)
{
	unsigned index = (unsigned)(uintptr_t)arg;

	cr_assert_lt(index, 64);
	if (file_runs[index]++)
		seen.files_runs_bad++;
	if (!ex)
		seen.files_without_ex++;
	if (res == 0)
		seen.files_ok++;
	else
		seen.files_failed++;
}

static int queue_file(struct http_exchange *ex)
{
	int rc = http_response_file(ex, file_fd, 0, FILE_SIZE, file_done,
				    (void *)(uintptr_t)seen.files_queued);

	if (rc == 0)
		seen.files_queued++;
	return rc;
}

static const char *header(const struct http_request *request, const char *name)
{
	for (size_t i = 0; i < request->header_count; i++)
		if (strcasecmp(request->headers[i].name, name) == 0)
			return request->headers[i].value;
	return NULL;
}

static void on_request(struct http_exchange *ex, const struct http_request *request, void *context)
{
	static const char *const octets[] = { "Content-Type: application/octet-stream" };

	(void)context;
	seen.requests++;
	cr_assert_eq(http_exchange_request(ex), request);
	if (strcmp(request->path, "/hello") == 0) {
		cr_assert_eq(http_reply(ex, 200, "text/plain", "hello\n"), 0);
	} else if (strcmp(request->path, "/later") == 0) {
		unsigned ms = strncmp(request->query, "ms=", 3) == 0 ? (unsigned)atoi(request->query + 3)
								     : 50;
		struct later *later = NULL;

		for (unsigned i = 0; i < LATER_MAX && !later; i++)
			if (!laters[i].armed)
				later = &laters[i];
		cr_assert_not_null(later);
		later->ex = ex;
		http_exchange_set_user(ex, later);
		loop_op_init(&later->op, later_done, later);
		cr_assert_eq(loop_timeout(test_loop, &later->op, ms), 0);
		later->armed = true;
	} else if (strcmp(request->path, "/file") == 0) {
		cr_assert_eq(http_response_start(ex, 200, octets, 1, FILE_SIZE), 0);
		cr_assert_eq(queue_file(ex), 0);
		http_response_end(ex);
	} else if (strcmp(request->path, "/stream") == 0) {
		cr_assert_eq(http_response_start(ex, 200, octets, 1,
						 (int64_t)FILE_SIZE * STREAM_FILES), 0);
		for (unsigned i = 0; i < STREAM_FILES; i++)
			cr_assert_eq(queue_file(ex), 0);
		http_exchange_set_user(ex, &seen);
	} else if (strcmp(request->path, "/echo") == 0) {
		char body[512];
		const char *test = header(request, "X-Test");

		snprintf(body, sizeof(body), "method=%s path=%s query=%s target=%s minor=%u x-test=[%s] "
			 "headers=%zu\n", request->method_name, request->path, request->query,
			 request->target, request->version_minor, test ? test : "(none)",
			 request->header_count);
		cr_assert_eq(http_reply(ex, 200, "text/plain", body), 0);
	} else if (strcmp(request->path, "/rules") == 0) {
		static const char *const ours[] = { "content-length: 3" };

		seen.rules_line = http_response_start(ex, 200, ours, 1, 3);
		cr_assert_eq(http_response_start(ex, 200, NULL, 0, 3), 0);
		seen.rules_longer = http_response_body(ex, "abcd", 4);
		cr_assert_eq(http_response_body(ex, "abc", 3), 0);
		http_response_end(ex);
	} else if (strcmp(request->path, "/drain") == 0) {
		http_server_stop_accepting(test_server);
		cr_assert_eq(http_reply(ex, 200, "text/plain", "draining\n"), 0);
	} else if (strcmp(request->path, "/short") == 0) {
		cr_assert_eq(http_response_start(ex, 200, NULL, 0, 10), 0);
		cr_assert_eq(http_response_body(ex, "1234567", 7), 0);
		http_response_end(ex);
	} else {
		cr_assert_eq(http_reply(ex, 404, "text/plain", "no such path\n"), 0);
	}
}

static void on_aborted(struct http_exchange *ex, void *user)
{
	cr_assert_not_null(ex);
	seen.aborted++;
	if (user == &seen)
		seen.aborted_user_ok++;
	for (unsigned i = 0; i < LATER_MAX; i++)
		if (user == &laters[i])
			laters[i].ex = NULL;
}

/* Open descriptors of this process: the server must leave none behind. */
static unsigned count_fds(void)
{
	unsigned count = 0;

	for (int fd = 0; fd < 1024; fd++)
		if (fcntl(fd, F_GETFD) >= 0)
			count++;
	return count;
}

static void on_child_exit(struct loop *loop, int signo, void *arg)
{
	(void)signo;
	(void)arg;
	loop_stop(loop);
}

static int http_port;
static struct loop_op tick_op;
static bool tick_armed;

static void tick_done(struct loop_op *op, int res, uint32_t flags)
{
	(void)res;
	(void)flags;
	tick_armed = false;
	loop_stop(op->owner);
}

/* Runs the loop for up to `ms` (bounded waits for the server's side). */
static void run_loop_for(struct loop *loop, unsigned ms)
{
	if (!tick_armed) {
		loop_op_init(&tick_op, tick_done, loop);
		cr_assert_eq(loop_timeout(loop, &tick_op, ms), 0);
		tick_armed = true;
	}
	cr_assert_eq(loop_run(loop), 0);
}

/* Serves until the client child exits and every connection has finished;
 * returns the child's exit status. */
static int run_http(struct http_server_options *options, void (*client)(void))
{
	static const struct http_handlers handlers = { .request = on_request,
						       .aborted = on_aborted };
	struct http_server *server;
	char err[256];
	sigset_t set;
	unsigned fds_before = count_fds();
	uint64_t deadline_ms;
	int status, listen_fd;
	pid_t child;

	memset(&seen, 0, sizeof(seen));
	memset(file_runs, 0, sizeof(file_runs));
	memset(laters, 0, sizeof(laters));
	tick_armed = false;
	cr_assert_eq(loop_create(&test_loop, NULL), 0);
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	cr_assert_eq(loop_signals(test_loop, &set, on_child_exit, NULL), 0);
	listen_fd = tcp_listen("127.0.0.1:0", 16, err, sizeof(err));
	cr_assert_geq(listen_fd, 0, "%s", err);
	http_port = tcp_local_port(listen_fd);
	cr_assert_gt(http_port, 0);
	cr_assert_eq(http_server_create(&server, test_loop, &handlers, options, NULL), 0);
	test_server = server;
	cr_assert_eq(http_server_listen(server, listen_fd), 0);

	child = fork();
	if (child == 0) {
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		signal(SIGPIPE, SIG_IGN);
		alarm(20); /* a client stuck on a broken server fails, not hangs */
		client();
		_exit(0);
	}
	while (waitpid(child, &status, WNOHANG) == 0)
		cr_assert_eq(loop_run(test_loop), 0);
	deadline_ms = clock_monotonic_ms() + 5000;
	while (http_server_count(server) && clock_monotonic_ms() < deadline_ms)
		run_loop_for(test_loop, 10);
	cr_assert_eq(http_server_count(server), 0, "%u connections still open",
		     http_server_count(server));
	run_loop_for(test_loop, 10); /* aborted runs from the loop */
	close(listen_fd);
	loop_destroy(test_loop);
	http_server_destroy(server);
	cr_assert_eq(count_fds(), fds_before, "descriptors leaked");
	for (unsigned i = 0; i < seen.files_queued; i++)
		cr_assert_eq(file_runs[i], 1, "file %u: done ran %u times", i, file_runs[i]);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

/* --- the client side (the child: exit codes report failures). */

struct client {
	int fd;
	size_t len; /* received and not yet taken */
	char buf[1 << 16];
};

struct response {
	int status;
	long long content_length; /* -1: none */
	bool close;		  /* Connection: close */
	char head[8192];
	char *body;
};

static struct client clients[2];

static struct client *client_open(unsigned slot)
{
	struct client *c = &clients[slot];
	struct sockaddr_in address = { .sin_family = AF_INET };
	struct timeval timeout = { .tv_sec = 10 };

	address.sin_port = htons((uint16_t)http_port);
	address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&address, sizeof(address)) < 0)
		_exit(10);
	if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)) < 0)
		_exit(11);
	c->len = 0;
	return c;
}

static void client_send(struct client *c, const char *text)
{
	size_t len = strlen(text);

	if (send(c->fd, text, len, MSG_NOSIGNAL) != (ssize_t)len)
		_exit(12);
}

/* Sends without caring whether the server is still there to take it. */
static void client_send_maybe(struct client *c, const char *text)
{
	(void)!send(c->fd, text, strlen(text), MSG_NOSIGNAL);
}

static ssize_t client_fill(struct client *c)
{
	ssize_t n;

	if (c->len == sizeof(c->buf))
		_exit(13);
	n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
	if (n > 0)
		c->len += (size_t)n;
	return n;
}

static void client_take(struct client *c, void *out, size_t len)
{
	if (out)
		memcpy(out, c->buf, len);
	memmove(c->buf, c->buf + len, c->len - len);
	c->len -= len;
}

/* Reads one response (its body unless `head`). */
static void client_response(struct client *c, struct response *r, bool head)
{
	char *end, *line;
	size_t head_len;

	memset(r, 0, sizeof(*r));
	r->content_length = -1;
	while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4))) {
		ssize_t n = client_fill(c);

		if (n <= 0) {
			fprintf(stderr, "no response head: read %zd (%s), %zu bytes\n", n,
				n < 0 ? strerror(errno) : "EOF", c->len);
			_exit(14);
		}
	}
	head_len = (size_t)(end + 4 - c->buf);
	if (head_len >= sizeof(r->head))
		_exit(15);
	client_take(c, r->head, head_len);
	r->head[head_len] = '\0';
	if (sscanf(r->head, "HTTP/1.1 %d ", &r->status) != 1)
		_exit(16);
	line = strcasestr(r->head, "\r\nContent-Length: ");
	if (line)
		r->content_length = atoll(line + 18);
	r->close = strcasestr(r->head, "\r\nConnection: close\r\n") != NULL;
	if (r->status != 503 && !strcasestr(r->head, "\r\nDate: ")) /* 503: a canned answer */
		_exit(17);
	if (head || r->content_length <= 0)
		return;
	r->body = malloc((size_t)r->content_length + 1);
	if (!r->body)
		_exit(18);
	for (size_t got = 0; got < (size_t)r->content_length;) {
		size_t chunk;

		if (c->len == 0 && client_fill(c) <= 0) {
			fprintf(stderr, "body cut at %zu of %lld bytes\n", got, r->content_length);
			_exit(19);
		}
		chunk = c->len < (size_t)r->content_length - got ? c->len
								  : (size_t)r->content_length - got;
		client_take(c, r->body + got, chunk);
		got += chunk;
	}
	r->body[r->content_length] = '\0';
}

/* The next response must be `status` with `body` (NULL: not looked at). */
static void client_expect(struct client *c, int status, const char *body, bool head, int code)
{
	struct response r;

	client_response(c, &r, head);
	if (r.status != status || (body && (!r.body || strcmp(r.body, body) != 0))) {
		fprintf(stderr, "expected %d \"%s\", got %d \"%s\"\n%s", status, body ? body : "",
			r.status, r.body ? r.body : "", r.head);
		_exit(code);
	}
	free(r.body);
}

/* Nothing more: the server closes. */
static void client_expect_eof(struct client *c, int code)
{
	ssize_t n;

	if (c->len) {
		fprintf(stderr, "%zu bytes more than expected\n", c->len);
		_exit(code);
	}
	n = client_fill(c);
	if (n != 0 && !(n < 0 && errno == ECONNRESET)) {
		fprintf(stderr, "expected EOF, read returned %zd (%s)\n", n,
			n < 0 ? strerror(errno) : "bytes");
		_exit(code);
	}
}

static void client_close(struct client *c)
{
	close(c->fd);
	c->fd = -1;
}

/* --- keep-alive, pipelining, HEAD, files, late answers. */

static void client_keep_alive(void)
{
	struct client *c = client_open(0);
	struct response r;

	for (int i = 0; i < 2; i++) {
		client_send(c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
		client_response(c, &r, false);
		if (r.status != 200 || r.content_length != 6 || strcmp(r.body, "hello\n") != 0)
			_exit(30);
		if (r.close || !strstr(r.head, "HTTP/1.1 200 OK\r\n") ||
		    !strcasestr(r.head, "\r\nContent-Type: text/plain\r\n"))
			_exit(31);
		free(r.body);
	}
	client_send(c, "GET /echo?a=1&b=2 HTTP/1.1\r\nHost: x\r\nX-Test: \t padded  value \t\r\n\r\n");
	client_expect(c, 200, "method=GET path=/echo query=a=1&b=2 target=/echo?a=1&b=2 minor=1 "
		      "x-test=[padded  value] headers=2\n", false, 32);
	client_send(c, "DELETE /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(c, 404, "no such path\n", false, 33);
	client_close(c);
}

Test(http, keep_alive_serves_several_requests_on_one_connection, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_keep_alive);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.requests, 4);
	cr_assert_eq(seen.aborted, 0);
}

/* Request heads of every size around the point where the head's strings
 * fill the buffer: the path is copied out of that same buffer, which must be
 * grown before the copy, not during it (it once copied from the freed block:
 * under ASan a crash, without it an empty path and a 404). */
static void client_heads_across_the_buffer_size(void)
{
	struct client *c = client_open(0);
	static char pad[4096];

	for (size_t n = 700; n < 2300; n += 3) {
		char request[4200];

		memset(pad, 'p', n);
		pad[n] = '\0';
		snprintf(request, sizeof(request), "GET /echo HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n",
			 pad);
		client_send(c, request);
		client_expect(c, 200, "method=GET path=/echo query= target=/echo minor=1 "
			      "x-test=[(none)] headers=2\n", false, 35);
	}
	client_close(c);
}

Test(http, the_path_survives_the_buffer_growing, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_heads_across_the_buffer_size);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
}

static void client_pipelined(void)
{
	struct client *c = client_open(0);

	/* The first is answered late (timer), the second at once: the answers
	 * still come in order, and the third after both. */
	client_send(c, "GET /later?ms=100 HTTP/1.1\r\nHost: x\r\n\r\n"
		       "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
		       "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(c, 200, "later\n", false, 40);
	client_expect(c, 200, "hello\n", false, 41);
	client_expect(c, 200, "method=GET path=/echo query= target=/echo minor=1 x-test=[(none)] "
		      "headers=1\n", false, 42);
	client_close(c);
}

Test(http, pipelined_requests_are_answered_in_order, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_pipelined);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.requests, 3);
}

static void client_head(void)
{
	struct client *c = client_open(0);
	struct response r;

	client_send(c, "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	client_response(c, &r, true);
	if (r.status != 200 || r.content_length != 6)
		_exit(50);
	client_send(c, "HEAD /file HTTP/1.1\r\nHost: x\r\n\r\n");
	client_response(c, &r, true);
	if (r.status != 200 || r.content_length != FILE_SIZE)
		_exit(51);
	/* No body bytes came after either head: the next response is next. */
	client_send(c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(c, 200, "hello\n", false, 52);
	client_close(c);
}

Test(http, head_gets_the_headers_and_no_body, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_head);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.files_queued, 1);
	cr_assert_eq(seen.files_ok, 1, "the skipped file's done did not run with 0");
	cr_assert_eq(seen.files_without_ex, 1, "its exchange had ended: done gets NULL");
}

static void client_file(void)
{
	struct client *c = client_open(0);
	struct response r;

	for (int i = 0; i < 2; i++) {
		client_send(c, "GET /file HTTP/1.1\r\nHost: x\r\n\r\n");
		client_response(c, &r, false);
		if (r.status != 200 || r.content_length != FILE_SIZE ||
		    memcmp(r.body, file_bytes, FILE_SIZE) != 0)
			_exit(60);
		free(r.body);
	}
	client_close(c);
}

Test(http, file_body_arrives_byte_exact, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_file);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.files_queued, 2);
	cr_assert_eq(seen.files_ok, 2);
}

static void client_later(void)
{
	struct client *c = client_open(0);
	uint64_t start_ms = clock_monotonic_ms();

	client_send(c, "GET /later?ms=150 HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(c, 200, "later\n", false, 70);
	if (clock_monotonic_ms() - start_ms < 140)
		_exit(71);
	client_close(c);
}

Test(http, a_response_can_come_later_from_the_loop, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_later);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
}

static void client_rules(void)
{
	struct client *c = client_open(0);

	client_send(c, "GET /rules HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(c, 200, "abc", false, 80);
	client_send(c, "GET /short HTTP/1.1\r\nHost: x\r\n\r\n");
	/* 7 of the 10 bytes declared, then the connection closes. */
	{
		struct response r;
		char body[8];

		client_response(c, &r, true);
		if (r.status != 200 || r.content_length != 10)
			_exit(81);
		while (c->len < 7)
			if (client_fill(c) <= 0)
				_exit(82);
		client_take(c, body, 7);
		if (memcmp(body, "1234567", 7) != 0)
			_exit(83);
		client_expect_eof(c, 84);
	}
	client_close(c);
}

Test(http, response_calls_refuse_caller_bugs, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_rules);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.rules_line, -EINVAL);
	cr_assert_eq(seen.rules_longer, -EINVAL);
}

/* --- refusals: each answered, then the connection closes. */

static void client_headers_too_large(void)
{
	static char request[24 << 10];
	struct client *c = client_open(0);
	size_t len;

	/* 20 KiB of headers against the 16 KiB default. */
	len = (size_t)snprintf(request, sizeof(request), "GET /hello HTTP/1.1\r\nHost: x\r\n");
	for (int i = 0; len < (20u << 10); i++)
		len += (size_t)snprintf(request + len, sizeof(request) - len,
					"X-Pad-%d: %0100d\r\n", i, i);
	snprintf(request + len, sizeof(request) - len, "\r\n");
	client_send_maybe(c, request);
	client_expect(c, 431, NULL, false, 90);
	client_expect_eof(c, 91);
	client_close(c);

	/* Too many fields, each small. */
	c = client_open(0);
	len = (size_t)snprintf(request, sizeof(request), "GET /hello HTTP/1.1\r\n");
	for (int i = 0; i < 70; i++)
		len += (size_t)snprintf(request + len, sizeof(request) - len, "X-%d: %d\r\n", i, i);
	snprintf(request + len, sizeof(request) - len, "\r\n");
	client_send_maybe(c, request);
	client_expect(c, 431, "more than 64 header fields\n", false, 92);
	client_expect_eof(c, 93);
	client_close(c);
}

Test(http, headers_over_the_limit_get_431, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_headers_too_large);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.requests, 0);
}

static void client_bad_requests(void)
{
	struct client *c = client_open(0);

	client_send(c, "GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(c, 400, "bad request: invalid HTTP method\n", false, 100);
	client_expect_eof(c, 101);
	client_close(c);

	c = client_open(0);
	client_send(c, "GET / HTTP/2.0\r\nHost: x\r\n\r\n");
	client_expect(c, 400, "bad request: HTTP version 2.0 is not supported\n", false, 102);
	client_expect_eof(c, 103);
	client_close(c);

	/* A good request, then a bad one on the same connection. */
	c = client_open(0);
	client_send(c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /a b c\r\n\r\n");
	client_expect(c, 200, "hello\n", false, 104);
	client_expect(c, 400, NULL, false, 105);
	client_expect_eof(c, 106);
	client_close(c);
}

Test(http, malformed_requests_get_400, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_bad_requests);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.requests, 1);
}

static void client_bodies(void)
{
	struct client *c = client_open(0);

	client_send(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
	client_expect(c, 413, "request bodies are not accepted here\n", false, 110);
	client_expect_eof(c, 111);
	client_close(c);

	c = client_open(0);
	client_send(c, "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
		       "5\r\nhello\r\n0\r\n\r\n");
	client_expect(c, 413, NULL, false, 112);
	client_expect_eof(c, 113);
	client_close(c);

	/* Content-Length: 0 is no body. */
	c = client_open(0);
	client_send(c, "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
	client_expect(c, 200, "hello\n", false, 114);
	client_close(c);
}

Test(http, request_bodies_get_413, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_bodies);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.requests, 1);
}

static void client_slowloris(void)
{
	struct client *c = client_open(0);
	uint64_t start_ms = clock_monotonic_ms(), waited_ms;

	client_send(c, "GET / HTTP/1.1\r\nHost: x\r\n");
	client_expect(c, 408, "request head not complete within 300 ms\n", false, 120);
	client_expect_eof(c, 121);
	waited_ms = clock_monotonic_ms() - start_ms;
	if (waited_ms < 280 || waited_ms > 3000) {
		fprintf(stderr, "408 after %llu ms\n", (unsigned long long)waited_ms);
		_exit(122);
	}
	client_close(c);
}

Test(http, a_slow_request_head_gets_408, .timeout = 30)
{
	struct http_server_options options = { .name = "test", .header_timeout_ms = 300 };
	int rc = run_http(&options, client_slowloris);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.requests, 0);
}

static void client_busy(void)
{
	struct client *first = client_open(0), *second;

	/* The first is accepted and counted before the second connects. */
	client_send(first, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(first, 200, "hello\n", false, 130);
	second = client_open(1);
	client_expect(second, 503, "too many connections; try again later\n", false, 131);
	client_expect_eof(second, 132);
	client_close(second);
	client_close(first);
}

Test(http, past_the_connection_limit_gets_503, .timeout = 30)
{
	struct http_server_options options = { .name = "test", .max_connections = 1 };
	int rc = run_http(&options, client_busy);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
}

/* --- closing. */

static void client_connection_close(void)
{
	struct client *c = client_open(0);
	struct response r;

	client_send(c, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	client_response(c, &r, false);
	if (r.status != 200 || !r.close || strcmp(r.body, "hello\n") != 0)
		_exit(140);
	client_expect_eof(c, 141);
	client_close(c);

	/* HTTP/1.0: closes unless asked to keep alive. */
	c = client_open(0);
	client_send(c, "GET /hello HTTP/1.0\r\n\r\n");
	client_response(c, &r, false);
	if (r.status != 200 || !r.close)
		_exit(142);
	client_expect_eof(c, 143);
	client_close(c);

	c = client_open(0);
	client_send(c, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
	client_response(c, &r, false);
	if (r.status != 200 || r.close || !strcasestr(r.head, "\r\nConnection: keep-alive\r\n"))
		_exit(144);
	client_send(c, "GET /hello HTTP/1.0\r\n\r\n");
	client_expect(c, 200, "hello\n", false, 145);
	client_expect_eof(c, 146);
	client_close(c);
}

Test(http, connection_close_closes_after_the_response, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_connection_close);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.requests, 4);
}

static void client_leaves_mid_response(void)
{
	struct client *c = client_open(0);
	struct response r;

	client_send(c, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
	client_response(c, &r, true);
	if (r.status != 200 || r.content_length != (long long)FILE_SIZE * STREAM_FILES)
		_exit(150);
	while (c->len < 60000)
		if (client_fill(c) <= 0)
			_exit(151);
	if (memcmp(c->buf, file_bytes, 60000) != 0)
		_exit(152);
	client_close(c); /* 48 MiB still queued on the server */

	/* The server goes on serving. */
	c = client_open(0);
	client_send(c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(c, 200, "hello\n", false, 153);
	client_close(c);
}

Test(http, client_leaving_mid_response_runs_aborted, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_leaves_mid_response);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.aborted, 1);
	cr_assert_eq(seen.aborted_user_ok, 1);
	cr_assert_eq(seen.files_queued, STREAM_FILES);
	cr_assert_geq(seen.files_failed, 1);
	cr_assert_eq(seen.files_without_ex, 0, "the exchange was live for every done");
}

static void client_aborts_while_waiting(void)
{
	struct client *c = client_open(0);

	/* Gone before the late answer: aborted runs, the timer finds no
	 * exchange. */
	client_send(c, "GET /later?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n");
	client_close(c); /* the FIN arrives after the request: it reaches the handler */
	c = client_open(0);
	client_send(c, "GET /later?ms=400 HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(c, 200, "later\n", false, 160);
	client_close(c);
}

Test(http, client_leaving_before_a_late_answer_runs_aborted, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_aborts_while_waiting);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.requests, 2);
	cr_assert_eq(seen.aborted, 1);
}

static void client_idle(void)
{
	struct client *c = client_open(0);
	uint64_t start_ms, waited_ms;

	/* A response in progress is not idle, even past the idle timeout. */
	client_send(c, "GET /later?ms=700 HTTP/1.1\r\nHost: x\r\n\r\n");
	client_expect(c, 200, "later\n", false, 170);
	/* Then nothing: closed after about 300 ms. */
	start_ms = clock_monotonic_ms();
	client_expect_eof(c, 171);
	waited_ms = clock_monotonic_ms() - start_ms;
	if (waited_ms < 250 || waited_ms > 3000) {
		fprintf(stderr, "closed after %llu ms idle\n", (unsigned long long)waited_ms);
		_exit(172);
	}
	client_close(c);
}

Test(http, idle_connections_close_but_not_mid_response, .timeout = 30)
{
	struct http_server_options options = { .name = "test", .idle_timeout_ms = 300 };
	int rc = run_http(&options, client_idle);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.aborted, 0);
}

static void client_stops_reading(void)
{
	struct client *c = client_open(0);
	struct response r;
	struct pollfd pfd;

	client_send(c, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
	client_response(c, &r, true);
	if (r.status != 200)
		_exit(180);
	/* Never read again: the server gives up after its send timeout (300
	 * ms) and resets the connection. */
	pfd.fd = c->fd;
	pfd.events = POLLRDHUP;
	if (poll(&pfd, 1, 10000) != 1 || !(pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))
		_exit(181);
	client_close(c);
}

Test(http, a_client_that_stops_reading_is_aborted_after_the_send_timeout, .timeout = 30)
{
	struct http_server_options options = { .name = "test", .send_timeout_ms = 300 };
	int rc = run_http(&options, client_stops_reading);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(seen.aborted, 1);
	cr_assert_geq(seen.files_failed, 1);
}

static void client_drain(void)
{
	struct client *c = client_open(0);
	struct response r;

	/* Responses once the server drains close their connection. */
	client_send(c, "GET /drain HTTP/1.1\r\nHost: x\r\n\r\n");
	client_response(c, &r, false);
	if (r.status != 200 || !r.close || strcmp(r.body, "draining\n") != 0)
		_exit(190);
	client_expect_eof(c, 191);
	client_close(c);
}

Test(http, a_draining_server_closes_connections_after_their_response, .timeout = 30)
{
	struct http_server_options options = { .name = "test" };
	int rc = run_http(&options, client_drain);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
}
