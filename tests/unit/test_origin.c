/* test_origin: the libcurl-on-the-loop HTTP(S) client against a real nginx on loopback. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/loop.h"
#include "net/curl-load.h"
#include "net/origin.h"

#define BIG_SIZE	((1u << 20) + 7u)
#define RUN_DEADLINE_MS 10000u
#define CONF_MAX	(256u << 10)
#define WIDE_VALUE_LEN	3500 /* one nginx config token stays under its 4 KiB buffer */

static char dir[64];
static int port;
static int tls_port; /* 0 unless the suite set up HTTPS */
static pid_t nginx_pid = -1;
static pid_t raw_pid = -1; /* a one-shot raw HTTP server, see raw_serve */
static uint8_t *big;
static struct loop *loop;
static struct origin *origin;
static struct origin *tls_origins[3];

/* --- nginx, started per test in its own temp dir. */

static void write_file(const char *name, const void *data, size_t len)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	cr_assert_eq(fwrite(data, 1, len, f), len);
	cr_assert_eq(fclose(f), 0);
	chmod(path, 0644);
}

static int free_port(void)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t len = sizeof(addr);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int p;

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
	p = ntohs(addr.sin_port);
	close(fd);
	return p;
}

static bool port_open(int p)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)p) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	bool ok;

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ok = connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0;
	close(fd);
	return ok;
}

static void run_shell(const char *cmd)
{
	cr_assert_eq(system(cmd), 0, "failed: %s", cmd);
}

/* A CA and a certificate for 127.0.0.1 signed by it, made with the openssl CLI. */
static void make_certificates(void)
{
	char cmd[2048];

	snprintf(cmd, sizeof(cmd),
		 "cd %s && "
		 "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ringfly-test-ca "
		 "-keyout ca.key -out ca.pem 2>/dev/null && "
		 "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 "
		 "-keyout server.key -out server.csr 2>/dev/null && "
		 "printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf && "
		 "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
		 "-days 2 -extfile ext.cnf -out server.pem 2>/dev/null && chmod 644 *.key",
		 dir);
	run_shell(cmd);
}

/* Appends `count` add_header lines, each with a value of value_len bytes. */
static size_t add_headers(char *conf, size_t off, const char *name, int count, size_t value_len)
{
	for (int i = 0; i < count; i++) {
		off += (size_t)snprintf(conf + off, CONF_MAX - off, " add_header %s-%d ", name, i);
		cr_assert_lt(off + value_len + 8, CONF_MAX);
		memset(conf + off, 'v', value_len);
		off += value_len;
		off += (size_t)snprintf(conf + off, CONF_MAX - off, ";\n");
	}
	return off;
}

/* Locations for passthrough: a registry-like 404, a 307, ordered headers,
 * and heads at and past the passthrough bounds (nginx adds 5 lines of its
 * own: Server, Date, Content-Type, Content-Length, Connection). */
static size_t passthrough_locations(char *conf, size_t off)
{
	off += (size_t)snprintf(
		conf + off, CONF_MAX - off,
		"  location = /denied { add_header WWW-Authenticate"
		" 'Bearer realm=\"https://auth.example/token\",service=\"reg\"' always;"
		" return 404 \"no such manifest\\n\"; }\n"
		"  location = /moved { return 307 /big; }\n"
		"  location = /ordered { add_header X-One 1; add_header X-Two two;"
		" add_header X-Three 3; return 200 \"ok\"; }\n"
		"  location = /lines-95 {\n");
	off = add_headers(conf, off, "X-L", 90, 1);
	off += (size_t)snprintf(conf + off, CONF_MAX - off,
				" return 200 \"ok\"; }\n  location = /lines-101 {\n");
	off = add_headers(conf, off, "X-L", 96, 1);
	off += (size_t)snprintf(conf + off, CONF_MAX - off,
				" return 200 \"ok\"; }\n  location = /wide-53k {\n");
	off = add_headers(conf, off, "X-W", 15, WIDE_VALUE_LEN);
	off += (size_t)snprintf(conf + off, CONF_MAX - off,
				" return 200 \"ok\"; }\n  location = /wide-70k {\n");
	off = add_headers(conf, off, "X-W", 20, WIDE_VALUE_LEN);
	off += (size_t)snprintf(conf + off, CONF_MAX - off, " return 200 \"ok\"; }\n");
	cr_assert_lt(off, CONF_MAX);
	return off;
}

static void start_nginx(bool tls)
{
	char tls_server[1024] = "", path[256];
	char *conf = malloc(CONF_MAX);
	size_t off;
	uint64_t deadline;
	pid_t parent;
	uint8_t one = 'x';

	snprintf(dir, sizeof(dir), "/tmp/rf-origin-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	chmod(dir, 0755);
	snprintf(path, sizeof(path), "%s/www", dir);
	cr_assert_eq(mkdir(path, 0755), 0);

	big = malloc(BIG_SIZE);
	cr_assert_not_null(big);
	srand((unsigned)getpid());
	for (size_t i = 0; i < BIG_SIZE; i++)
		big[i] = (uint8_t)rand();
	write_file("www/big", big, BIG_SIZE);
	write_file("www/empty", "", 0);
	write_file("www/one", &one, 1);

	port = free_port();
	if (tls) {
		make_certificates();
		tls_port = free_port();
		snprintf(tls_server, sizeof(tls_server),
			 "server { listen 127.0.0.1:%d ssl; root %s/www;"
			 " ssl_certificate %s/server.pem; ssl_certificate_key %s/server.key; }",
			 tls_port, dir, dir, dir);
	}
	cr_assert_not_null(conf);
	off = (size_t)snprintf(
		conf, CONF_MAX,
		"error_log %s/error.log;\n"
		"pid %s/nginx.pid;\n"
		"events { worker_connections 256; }\n"
		"http {\n"
		" access_log %s/access.log;\n"
		" client_body_temp_path %s/body; proxy_temp_path %s/proxy;\n"
		" fastcgi_temp_path %s/fastcgi; uwsgi_temp_path %s/uwsgi; scgi_temp_path %s/scgi;\n"
		" default_type application/octet-stream;\n"
		" server {\n"
		"  listen 127.0.0.1:%d;\n"
		"  root %s/www;\n"
		"  location = /redirect { return 302 /big; }\n"
		"  location = /loop { return 302 /loop; }\n"
		"  location = /echo { return 200 \"[$http_x_test]\"; }\n"
		"  location /noranges/ { alias %s/www/; max_ranges 0; }\n",
		dir, dir, dir, dir, dir, dir, dir, dir, port, dir, dir);
	off = passthrough_locations(conf, off);
	off += (size_t)snprintf(conf + off, CONF_MAX - off, " }\n %s\n}\n", tls_server);
	cr_assert_lt(off, CONF_MAX);
	write_file("nginx.conf", conf, off);
	free(conf);

	parent = getpid();
	nginx_pid = fork();
	cr_assert_neq(nginx_pid, -1);
	if (nginx_pid == 0) {
		/* Ends with the test: one that dies on a failed check or a
		 * sanitizer report never gets to teardown (25 nginx processes
		 * once outlived a failed run). */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(126);
		snprintf(path, sizeof(path), "%s/nginx.conf", dir);
		execl("/usr/sbin/nginx", "nginx", "-p", dir, "-c", path, "-g",
		      "daemon off; master_process off;", (char *)NULL);
		_exit(127);
	}
	deadline = clock_monotonic_ms() + 5000;
	while (!port_open(port) || (tls && !port_open(tls_port))) {
		int status;

		cr_assert_eq(waitpid(nginx_pid, &status, WNOHANG), 0, "nginx exited (see %s)", dir);
		cr_assert_lt(clock_monotonic_ms(), deadline, "nginx not listening on %d", port);
		usleep(2000); /* a bounded poll, not a readiness guess */
	}
}

static void setup_common(bool tls)
{
	log_set_level(LOG_LEVEL_ERROR);
	start_nginx(tls);
	cr_assert_eq(loop_create(&loop, NULL), 0);
}

static void setup(void)
{
	struct origin_options options = { .buffer_bytes = 64 << 10 };

	setup_common(false);
	cr_assert_eq(origin_create(&origin, loop, &options), 0);
}

static void setup_tls(void)
{
	setup_common(true);
}

static void teardown(void)
{
	char cmd[128];

	loop_destroy(loop);
	origin_destroy(origin);
	origin = NULL;
	for (int i = 0; i < 3; i++) {
		origin_destroy(tls_origins[i]);
		tls_origins[i] = NULL;
	}
	if (nginx_pid > 0) {
		int status;

		kill(nginx_pid, SIGKILL);
		waitpid(nginx_pid, &status, 0);
		nginx_pid = -1;
	}
	if (raw_pid > 0) {
		int status;

		kill(raw_pid, SIGKILL);
		waitpid(raw_pid, &status, 0);
		raw_pid = -1;
	}
	free(big);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	(void)system(cmd);
}

TestSuite(origin, .init = setup, .fini = teardown, .timeout = 30);

/* --- one request's view. */

static void url_for(char *url, size_t len, const char *path)
{
	snprintf(url, len, "http://127.0.0.1:%d%s", port, path);
}

struct fetch {
	struct origin_request *req;
	uint8_t *body;
	size_t len, cap;
	int headers_calls;
	struct origin_response response;
	char etag[256], effective[512], reason[64];
	char **lines; /* passthrough's header lines, copied */
	size_t line_count;
	bool done;
	struct origin_result result;
	char message[1024];
	/* behaviours */
	int pause_first;     /* pause on the first data call, resume after this many ms */
	bool pause_every;    /* pause on every call, resume from a 0 ms timeout */
	bool cancel_in_data; /* cancel from the first on_data */
	struct fetch *spawn; /* started from on_headers (inside libcurl): GET /one */
	int paused_count;
	bool take_next;
	uint64_t paused_at_ms, resumed_at_ms;
	struct loop_op resume_op;
};

static const struct origin_callbacks fetch_callbacks;
static unsigned done_count, done_expected;
static bool deadline_hit;
static struct loop_op deadline_ops[16]; /* one per run: a cancelled one may be in flight */
static unsigned deadline_next;

static void deadline_done(struct loop_op *op, int res, uint32_t flags)
{
	(void)op;
	(void)flags;
	if (res == -ETIME) {
		deadline_hit = true;
		loop_stop(loop);
	}
}

/* Runs the loop until `expected` requests are done (or the deadline). */
static void run(unsigned expected, unsigned deadline_ms)
{
	struct loop_op *deadline_op = &deadline_ops[deadline_next++];

	cr_assert_lt(deadline_next, 16);
	done_expected = expected;
	deadline_hit = false;
	loop_op_init(deadline_op, deadline_done, NULL);
	cr_assert_eq(loop_timeout(loop, deadline_op, deadline_ms), 0);
	if (done_count < done_expected)
		cr_assert_eq(loop_run(loop), 0);
	loop_cancel_op(loop, deadline_op);
}

static int fetch_headers(struct origin_request *req, const struct origin_response *response,
			 void *arg)
{
	struct fetch *f = arg;

	cr_assert_eq(req, f->req);
	f->headers_calls++;
	f->response = *response;
	snprintf(f->etag, sizeof(f->etag), "%s", response->etag);
	snprintf(f->effective, sizeof(f->effective), "%s", response->effective_url);
	f->response.etag = f->etag;
	f->response.effective_url = f->effective;
	cr_assert_not_null(response->reason);
	snprintf(f->reason, sizeof(f->reason), "%s", response->reason);
	f->response.reason = f->reason;
	cr_assert_eq(response->header_lines == NULL, response->header_line_count == 0);
	f->line_count = response->header_line_count;
	if (f->line_count) {
		f->lines = calloc(f->line_count, sizeof(*f->lines));
		cr_assert_not_null(f->lines);
	}
	for (size_t i = 0; i < f->line_count; i++) {
		f->lines[i] = strdup(response->header_lines[i]);
		cr_assert_not_null(f->lines[i]);
	}
	f->response.header_lines = NULL; /* borrowed for the call only */
	if (f->spawn) {
		char url[256];
		struct origin_request_params params = { .url = url };

		url_for(url, sizeof(url), "/one");
		cr_assert_eq(origin_request_start(origin, &params, &fetch_callbacks, f->spawn,
						  &f->spawn->req),
			     0);
	}
	return 0;
}

static void fetch_resume_done(struct loop_op *op, int res, uint32_t flags)
{
	struct fetch *f = op->owner;

	(void)res;
	(void)flags;
	f->resumed_at_ms = clock_monotonic_ms();
	origin_request_resume(f->req);
}

static int fetch_data(struct origin_request *req, const void *buf, size_t len, void *arg)
{
	struct fetch *f = arg;

	cr_assert_eq(req, f->req);
	cr_assert_eq(f->headers_calls, 1, "on_data before on_headers");
	if (f->cancel_in_data) {
		origin_request_cancel(req);
		return 0;
	}
	if (f->take_next) {
		f->take_next = false; /* the bytes declined before the pause */
	} else if ((f->pause_first && f->paused_count == 0) || f->pause_every) {
		f->take_next = true;
		f->paused_count++;
		f->paused_at_ms = clock_monotonic_ms();
		f->resumed_at_ms = 0;
		loop_op_init(&f->resume_op, fetch_resume_done, f);
		cr_assert_eq(loop_timeout(loop, &f->resume_op,
					  f->pause_every ? 0 : (uint64_t)f->pause_first),
			     0);
		return ORIGIN_PAUSE;
	}
	if (f->len + len > f->cap) {
		f->cap = (f->len + len) * 2;
		f->body = realloc(f->body, f->cap);
		cr_assert_not_null(f->body);
	}
	memcpy(f->body + f->len, buf, len);
	f->len += len;
	return 0;
}

static void fetch_done(struct origin_request *req, const struct origin_result *result, void *arg)
{
	struct fetch *f = arg;

	cr_assert_eq(req, f->req);
	cr_assert_not(f->done, "on_done twice");
	f->done = true;
	f->result = *result;
	snprintf(f->message, sizeof(f->message), "%s", result->message ? result->message : "");
	f->result.message = f->message;
	if (++done_count == done_expected)
		loop_stop(loop);
}

static const struct origin_callbacks fetch_callbacks = {
	.on_headers = fetch_headers,
	.on_data = fetch_data,
	.on_done = fetch_done,
};

static void start(struct fetch *f, struct origin_request_params *params)
{
	cr_assert_eq(origin_request_start(origin, params, &fetch_callbacks, f, &f->req), 0);
}

/* GET path and wait for it. */
static void get(struct fetch *f, const char *path)
{
	char url[256];
	struct origin_request_params params = { .url = url, .timeout_ms = 5000 };

	url_for(url, sizeof(url), path);
	start(f, &params);
	run(done_count + 1, RUN_DEADLINE_MS);
	cr_assert(f->done, "no on_done before the deadline for %s", url);
}

static void expect_body(struct fetch *f, const void *data, size_t len)
{
	cr_assert_eq(f->len, len, "got %zu bytes, want %zu", f->len, len);
	cr_assert(len == 0 || memcmp(f->body, data, len) == 0, "bytes differ");
	cr_assert_eq(f->result.body_bytes, len);
}

static void expect_ok(struct fetch *f)
{
	cr_assert_eq(f->result.error, 0, "error %d: %s", f->result.error, f->message);
	cr_assert_eq(f->message[0], '\0', "%s", f->message);
	cr_assert_eq(f->headers_calls, 1);
}

static void fetch_free(struct fetch *f)
{
	for (size_t i = 0; i < f->line_count; i++)
		free(f->lines[i]);
	free(f->lines);
	free(f->body);
}

/* --- tests. */

Test(origin, get_whole_files)
{
	struct fetch f[3] = { 0 };

	get(&f[0], "/big");
	expect_ok(&f[0]);
	cr_assert_eq(f[0].response.status, 200);
	cr_assert_eq(f[0].response.content_length, BIG_SIZE);
	cr_assert_eq(f[0].response.total_length, BIG_SIZE);
	cr_assert(f[0].response.accepts_ranges);
	cr_assert_neq(f[0].etag[0], '\0', "nginx sends an ETag");
	expect_body(&f[0], big, BIG_SIZE);

	get(&f[1], "/empty");
	expect_ok(&f[1]);
	cr_assert_eq(f[1].response.content_length, 0);
	expect_body(&f[1], "", 0);

	get(&f[2], "/one");
	expect_ok(&f[2]);
	cr_assert_eq(f[2].response.content_length, 1);
	expect_body(&f[2], "x", 1);
	for (int i = 0; i < 3; i++)
		fetch_free(&f[i]);
	cr_assert_eq(origin_active(origin), 0);
}

Test(origin, head_gives_length_and_ranges)
{
	struct fetch f = { 0 };
	char url[256];
	struct origin_request_params params = { .url = url, .method = ORIGIN_HEAD };

	url_for(url, sizeof(url), "/big");
	start(&f, &params);
	run(1, RUN_DEADLINE_MS);
	expect_ok(&f);
	cr_assert_eq(f.response.status, 200);
	cr_assert_eq(f.response.content_length, BIG_SIZE);
	cr_assert_eq(f.response.total_length, BIG_SIZE);
	cr_assert(f.response.accepts_ranges);
	expect_body(&f, "", 0);
}

Test(origin, range_gives_exact_slice)
{
	struct fetch f[2] = { 0 };
	char url[256];
	struct origin_request_params params = {
		.url = url, .range = true, .range_start = 1000, .range_length = 65537
	};

	url_for(url, sizeof(url), "/big");
	start(&f[0], &params);
	params.range_start = BIG_SIZE - 5;
	params.range_length = 0; /* to the end */
	start(&f[1], &params);
	run(2, RUN_DEADLINE_MS);

	expect_ok(&f[0]);
	cr_assert_eq(f[0].response.status, 206);
	cr_assert(f[0].response.accepts_ranges);
	cr_assert_eq(f[0].response.content_length, 65537);
	cr_assert_eq(f[0].response.total_length, BIG_SIZE);
	expect_body(&f[0], big + 1000, 65537);

	expect_ok(&f[1]);
	cr_assert_eq(f[1].response.status, 206);
	expect_body(&f[1], big + BIG_SIZE - 5, 5);
	fetch_free(&f[0]);
	fetch_free(&f[1]);
}

Test(origin, range_ignored_by_server_is_reported)
{
	struct fetch f = { 0 };
	char url[256];
	struct origin_request_params params = {
		.url = url, .range = true, .range_start = 1000, .range_length = 10
	};

	url_for(url, sizeof(url), "/noranges/big");
	start(&f, &params);
	run(1, RUN_DEADLINE_MS);
	expect_ok(&f);
	cr_assert_eq(f.response.status, 200);
	cr_assert_not(f.response.accepts_ranges);
	cr_assert_eq(f.response.content_length, BIG_SIZE);
	expect_body(&f, big, BIG_SIZE); /* the whole resource, from byte 0 */
	fetch_free(&f);
}

Test(origin, pause_and_resume)
{
	struct fetch f = { .pause_first = 50 };

	get(&f, "/big");
	expect_ok(&f);
	cr_assert_eq(f.paused_count, 1);
	cr_assert_geq(f.resumed_at_ms - f.paused_at_ms, 49, "resumed after %" PRIu64 " ms",
		      f.resumed_at_ms - f.paused_at_ms);
	expect_body(&f, big, BIG_SIZE);
	fetch_free(&f);
}

Test(origin, pause_on_every_chunk)
{
	struct fetch f = { .pause_every = true };

	get(&f, "/big");
	expect_ok(&f);
	cr_assert_gt(f.paused_count, 1);
	expect_body(&f, big, BIG_SIZE);
	fetch_free(&f);
}

Test(origin, not_found_names_status_and_url)
{
	struct fetch f[2] = { 0 };
	char url[256];

	get(&f[0], "/missing");
	url_for(url, sizeof(url), "/missing");
	cr_assert_eq(f[0].result.error, -ENOENT);
	cr_assert_eq(f[0].result.status, 404);
	cr_assert_not_null(strstr(f[0].message, "404"), "%s", f[0].message);
	cr_assert_not_null(strstr(f[0].message, url), "%s", f[0].message);
	cr_assert_eq(f[0].headers_calls, 0);
	cr_assert_eq(f[0].len, 0);

	/* The same for a HEAD. */
	{
		struct origin_request_params params = { .url = url, .method = ORIGIN_HEAD };

		start(&f[1], &params);
		run(2, RUN_DEADLINE_MS);
		cr_assert_eq(f[1].result.error, -ENOENT);
		cr_assert_not_null(strstr(f[1].message, "HEAD"), "%s", f[1].message);
	}
}

Test(origin, connection_refused)
{
	struct fetch f = { 0 };
	char url[256];
	struct origin_request_params params = { .url = url };

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/big", free_port());
	start(&f, &params);
	run(1, RUN_DEADLINE_MS);
	cr_assert(f.done);
	cr_assert_eq(f.result.error, -ECONNREFUSED, "%s", f.message);
	cr_assert_not_null(strstr(f.message, "connection refused"), "%s", f.message);
	cr_assert_not_null(strstr(f.message, url), "%s", f.message);
}

Test(origin, timeout_on_a_silent_server)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t addr_len = sizeof(addr);
	struct fetch f = { 0 };
	char url[256];
	struct origin_request_params params = { .url = url, .timeout_ms = 300 };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	uint64_t started;

	/* Listens, never accepts: connect succeeds, no byte ever comes. */
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	cr_assert_eq(listen(fd, 4), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&addr, &addr_len), 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/big", ntohs(addr.sin_port));
	started = clock_monotonic_ms();
	start(&f, &params);
	run(1, 5000);
	cr_assert(f.done, "no timeout");
	cr_assert_eq(f.result.error, -ETIMEDOUT, "%s", f.message);
	cr_assert_not_null(strstr(f.message, "timed out"), "%s", f.message);
	cr_assert_lt(clock_monotonic_ms() - started, 2000);
	cr_assert_geq(clock_monotonic_ms() - started, 290);
	close(fd);
}

Test(origin, redirect_followed)
{
	struct fetch f[2] = { 0 };
	char url[256];

	get(&f[0], "/redirect");
	expect_ok(&f[0]);
	cr_assert_eq(f[0].response.status, 200);
	url_for(url, sizeof(url), "/big");
	cr_assert_str_eq(f[0].effective, url);
	expect_body(&f[0], big, BIG_SIZE);
	fetch_free(&f[0]);

	get(&f[1], "/loop");
	cr_assert_eq(f[1].result.error, -ELOOP, "%s", f[1].message);
	cr_assert_not_null(strstr(f[1].message, "redirects"), "%s", f[1].message);
}

Test(origin, extra_headers_reach_the_server)
{
	static const char *const headers[] = { "X-Test: hello-ringfly", "X-Other: 1" };
	static const char *const bad[] = { "X-Test: a\r\nX-Injected: b" };
	struct fetch f = { 0 };
	char url[256];
	struct origin_request_params params = { .url = url, .headers = headers, .header_count = 2 };
	struct origin_request *req;

	url_for(url, sizeof(url), "/echo");
	start(&f, &params);
	run(1, RUN_DEADLINE_MS);
	expect_ok(&f);
	expect_body(&f, "[hello-ringfly]", 15);
	fetch_free(&f);

	params.headers = bad;
	params.header_count = 1;
	cr_assert_eq(origin_request_start(origin, &params, &fetch_callbacks, &f, &req), -EINVAL);
	params.url = "ftp://127.0.0.1/x";
	params.header_count = 0;
	cr_assert_eq(origin_request_start(origin, &params, &fetch_callbacks, &f, &req), -EINVAL);
	cr_assert_eq(origin_active(origin), 0);
}

static void cancel_timer_done(struct loop_op *op, int res, uint32_t flags)
{
	struct fetch *f = op->owner;

	(void)res;
	(void)flags;
	origin_request_cancel(f->req);
	loop_stop(loop);
}

static void stop_done(struct loop_op *op, int res, uint32_t flags)
{
	(void)op;
	(void)res;
	(void)flags;
	loop_stop(loop);
}

Test(origin, cancel_mid_transfer)
{
	struct fetch f[3] = { [0] = { .pause_first = 100000 }, [1] = { .cancel_in_data = true } };
	struct loop_op cancel_op, stop_op;
	char url[256];
	struct origin_request_params params = { .url = url };

	url_for(url, sizeof(url), "/big");
	/* Paused mid-transfer, cancelled from a timer: no on_done. */
	start(&f[0], &params);
	loop_op_init(&cancel_op, cancel_timer_done, &f[0]);
	cr_assert_eq(loop_timeout(loop, &cancel_op, 100), 0);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(f[0].paused_count, 1);
	cr_assert_not(f[0].done);
	cr_assert_eq(origin_active(origin), 0);

	/* Cancelled from inside its own on_data: deferred, still silent. */
	start(&f[1], &params);
	loop_op_init(&stop_op, stop_done, NULL);
	cr_assert_eq(loop_timeout(loop, &stop_op, 200), 0);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_not(f[1].done);
	cr_assert_eq(origin_active(origin), 0);

	/* The origin still works (and reuses the released request). */
	get(&f[2], "/big");
	expect_ok(&f[2]);
	expect_body(&f[2], big, BIG_SIZE);
	fetch_free(&f[2]);
}

#define CONCURRENT 32

Test(origin, many_concurrent_requests)
{
	static struct fetch f[CONCURRENT];
	char url[256];

	memset(f, 0, sizeof(f));
	url_for(url, sizeof(url), "/big");
	for (int i = 0; i < CONCURRENT; i++) {
		struct origin_request_params params = { .url = url };

		if (i % 2) {
			params.range = true;
			params.range_start = (uint64_t)i * 30000;
			params.range_length = 30000 + (uint64_t)i;
		}
		if (i % 5 == 0)
			f[i].pause_first = 20;
		start(&f[i], &params);
	}
	run(CONCURRENT, RUN_DEADLINE_MS);
	for (int i = 0; i < CONCURRENT; i++) {
		expect_ok(&f[i]);
		if (i % 2)
			expect_body(&f[i], big + i * 30000, 30000 + (size_t)i);
		else
			expect_body(&f[i], big, BIG_SIZE);
		fetch_free(&f[i]);
	}
	cr_assert_eq(origin_active(origin), 0);
}

/* Starting from on_done (inside the origin's own completion path) works. */
static int chain_left;
static struct fetch chain[4];

static void chain_done(struct origin_request *req, const struct origin_result *result, void *arg);

static const struct origin_callbacks chain_callbacks = {
	.on_headers = fetch_headers,
	.on_data = fetch_data,
	.on_done = chain_done,
};

static void chain_done(struct origin_request *req, const struct origin_result *result, void *arg)
{
	char url[256];
	struct origin_request_params params = { .url = url };
	struct fetch *next;

	fetch_done(req, result, arg);
	if (chain_left-- <= 0)
		return;
	next = &chain[3 - chain_left];
	url_for(url, sizeof(url), "/one");
	cr_assert_eq(origin_request_start(origin, &params, &chain_callbacks, next, &next->req), 0);
}

Test(origin, start_from_on_done)
{
	char url[256];
	struct origin_request_params params = { .url = url };

	memset(chain, 0, sizeof(chain));
	chain_left = 3;
	url_for(url, sizeof(url), "/one");
	cr_assert_eq(
		origin_request_start(origin, &params, &chain_callbacks, &chain[0], &chain[0].req),
		0);
	run(4, RUN_DEADLINE_MS);
	for (int i = 0; i < 4; i++) {
		expect_ok(&chain[i]);
		expect_body(&chain[i], "x", 1);
		fetch_free(&chain[i]);
	}
}

Test(origin, start_from_inside_a_callback)
{
	struct fetch spawned = { 0 };
	struct fetch f = { .spawn = &spawned };

	get(&f, "/big");
	run(2, RUN_DEADLINE_MS);
	expect_ok(&f);
	expect_body(&f, big, BIG_SIZE);
	expect_ok(&spawned);
	expect_body(&spawned, "x", 1);
	fetch_free(&f);
	fetch_free(&spawned);
}

/* --- passthrough: the response relayed as it is. */

/* Passthrough `method` of path and wait for it. */
static void pass(struct fetch *f, const char *path, enum origin_method method)
{
	char url[256];
	struct origin_request_params params = {
		.url = url, .method = method, .timeout_ms = 5000, .passthrough = true
	};

	url_for(url, sizeof(url), path);
	start(f, &params);
	run(done_count + 1, RUN_DEADLINE_MS);
	cr_assert(f->done, "no on_done before the deadline for %s", url);
}

/* The index of the first header line that starts with `prefix`, or -1. */
static int line_index(const struct fetch *f, const char *prefix)
{
	for (size_t i = 0; i < f->line_count; i++)
		if (strncasecmp(f->lines[i], prefix, strlen(prefix)) == 0)
			return (int)i;
	return -1;
}

static void expect_line(const struct fetch *f, const char *line)
{
	for (size_t i = 0; i < f->line_count; i++)
		if (strcmp(f->lines[i], line) == 0)
			return;
	cr_assert_fail("no header line \"%s\" among %zu", line, f->line_count);
}

/* No line carries a CR or LF, none is the status line, none is empty. */
static void expect_clean_lines(const struct fetch *f)
{
	for (size_t i = 0; i < f->line_count; i++) {
		cr_assert_null(strpbrk(f->lines[i], "\r\n"), "line %zu: %s", i, f->lines[i]);
		cr_assert_neq(strncmp(f->lines[i], "HTTP/", 5), 0, "line %zu: %s", i, f->lines[i]);
		cr_assert_not_null(strchr(f->lines[i], ':'), "line %zu: %s", i, f->lines[i]);
	}
}

Test(origin, passthrough_relays_a_404_with_its_body)
{
	struct fetch f = { 0 };

	pass(&f, "/denied", ORIGIN_GET);
	expect_ok(&f);
	cr_assert_eq(f.response.status, 404);
	cr_assert_str_eq(f.reason, "Not Found");
	cr_assert_eq(f.result.status, 404);
	expect_clean_lines(&f);
	expect_line(&f, "WWW-Authenticate: Bearer realm=\"https://auth.example/token\","
			"service=\"reg\"");
	expect_line(&f, "Content-Length: 17");
	cr_assert_eq(f.response.content_length, 17);
	expect_body(&f, "no such manifest\n", 17);
	fetch_free(&f);
}

Test(origin, passthrough_relays_a_307_without_following)
{
	struct fetch f = { 0 };
	char location[300], url[256];

	pass(&f, "/moved", ORIGIN_GET);
	expect_ok(&f);
	cr_assert_eq(f.response.status, 307);
	cr_assert_str_eq(f.reason, "Temporary Redirect");
	url_for(url, sizeof(url), "/moved");
	cr_assert_str_eq(f.effective, url, "not followed");
	snprintf(location, sizeof(location), "Location: http://127.0.0.1:%d/big", port);
	expect_line(&f, location);
	cr_assert_gt(f.len, 0, "nginx's 307 page is relayed");
	cr_assert_not_null(memmem(f.body, f.len, "307", 3));
	cr_assert_eq(f.result.body_bytes, f.len);
	fetch_free(&f);
}

Test(origin, passthrough_keeps_header_order)
{
	struct fetch f = { 0 };
	int one, two, three;

	pass(&f, "/ordered", ORIGIN_GET);
	expect_ok(&f);
	cr_assert_eq(f.response.status, 200);
	cr_assert_str_eq(f.reason, "OK");
	expect_clean_lines(&f);
	cr_assert_eq(f.line_count, 8, "nginx's 5 lines and ours, got %zu", f.line_count);
	cr_assert_eq(line_index(&f, "Server: nginx"), 0, "the first line as sent");
	one = line_index(&f, "X-One: 1");
	two = line_index(&f, "X-Two: two");
	three = line_index(&f, "X-Three: 3");
	cr_assert(one >= 0 && two == one + 1 && three == two + 1, "%d %d %d", one, two, three);
	cr_assert_geq(line_index(&f, "Date: "), 0);
	cr_assert_geq(line_index(&f, "Connection: "), 0);
	expect_line(&f, "Content-Length: 2");
	expect_body(&f, "ok", 2);
	fetch_free(&f);
}

Test(origin, passthrough_head)
{
	struct fetch f[2] = { 0 };
	char length[64];

	pass(&f[0], "/big", ORIGIN_HEAD);
	expect_ok(&f[0]);
	cr_assert_eq(f[0].response.status, 200);
	cr_assert_eq(f[0].response.content_length, BIG_SIZE);
	snprintf(length, sizeof(length), "Content-Length: %u", BIG_SIZE);
	expect_line(&f[0], length);
	cr_assert_geq(line_index(&f[0], "ETag: "), 0);
	expect_body(&f[0], "", 0);

	/* A HEAD of a missing blob: the 404 relayed, no error. */
	pass(&f[1], "/missing", ORIGIN_HEAD);
	expect_ok(&f[1]);
	cr_assert_eq(f[1].response.status, 404);
	cr_assert_geq(line_index(&f[1], "Content-Length: "), 0);
	expect_body(&f[1], "", 0);
	fetch_free(&f[0]);
	fetch_free(&f[1]);
}

Test(origin, passthrough_bounds_the_response_head)
{
	struct fetch f[4] = { 0 };

	/* At the bounds: 95 lines, 53 KB. */
	pass(&f[0], "/lines-95", ORIGIN_GET);
	expect_ok(&f[0]);
	cr_assert_eq(f[0].line_count, 95);
	expect_line(&f[0], "X-L-89: v");
	expect_body(&f[0], "ok", 2);
	pass(&f[1], "/wide-53k", ORIGIN_GET);
	expect_ok(&f[1]);
	cr_assert_eq(f[1].line_count, 20);
	cr_assert_eq(strlen(f[1].lines[line_index(&f[1], "X-W-14: ")]), 8 + WIDE_VALUE_LEN);
	expect_body(&f[1], "ok", 2);

	/* Past them: 101 lines, 70 KB. */
	pass(&f[2], "/lines-101", ORIGIN_GET);
	pass(&f[3], "/wide-70k", ORIGIN_GET);
	for (int i = 2; i < 4; i++) {
		cr_assert_eq(f[i].result.error, -E2BIG, "%d: %s", f[i].result.error, f[i].message);
		cr_assert_not_null(strstr(f[i].message, "response headers too large"), "%s",
				   f[i].message);
		cr_assert_not_null(strstr(f[i].message, "GET http://127.0.0.1"), "%s",
				   f[i].message);
		cr_assert_eq(f[i].headers_calls, 0);
		cr_assert_eq(f[i].len, 0);
	}
	for (int i = 0; i < 4; i++)
		fetch_free(&f[i]);
	cr_assert_eq(origin_active(origin), 0);
}

Test(origin, without_passthrough_nothing_changes)
{
	struct fetch f[3] = { 0 };
	char url[256];

	/* The same 404 with a body is an error, body unseen. */
	get(&f[0], "/denied");
	cr_assert_eq(f[0].result.error, -ENOENT, "%s", f[0].message);
	cr_assert_eq(f[0].result.status, 404);
	cr_assert_not_null(strstr(f[0].message, "HTTP 404 Not Found"), "%s", f[0].message);
	cr_assert_eq(f[0].headers_calls, 0);
	cr_assert_eq(f[0].len, 0);
	cr_assert_eq(f[0].result.body_bytes, 0);

	/* The 307 is followed; no header lines outside passthrough. */
	get(&f[1], "/moved");
	expect_ok(&f[1]);
	cr_assert_eq(f[1].response.status, 200);
	url_for(url, sizeof(url), "/big");
	cr_assert_str_eq(f[1].effective, url);
	cr_assert_eq(f[1].line_count, 0);
	cr_assert_str_eq(f[1].reason, "OK");
	expect_body(&f[1], big, BIG_SIZE);

	get(&f[2], "/ordered");
	expect_ok(&f[2]);
	cr_assert_eq(f[2].line_count, 0);
	for (int i = 0; i < 3; i++)
		fetch_free(&f[i]);
}

/*
 * Serves `response` (raw bytes) to one connection on a loopback port from a
 * child process, once the request's head has arrived; returns the port. For
 * what nginx will not send: a 1xx before the response, a folded line.
 */
static int raw_serve(const char *response)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t addr_len = sizeof(addr);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	cr_assert_eq(listen(fd, 4), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&addr, &addr_len), 0);
	cr_assert_eq(raw_pid, -1);
	raw_pid = fork();
	cr_assert_neq(raw_pid, -1);
	if (raw_pid == 0) {
		char request[8192];
		size_t len = 0, left = strlen(response);
		int conn;

		alarm(10); /* never outlives a failed test for long */
		conn = accept(fd, NULL, NULL);
		while (conn >= 0 && len < sizeof(request) - 1 &&
		       !memmem(request, len, "\r\n\r\n", 4)) {
			ssize_t n = read(conn, request + len, sizeof(request) - 1 - len);

			if (n <= 0)
				_exit(1);
			len += (size_t)n;
		}
		while (conn >= 0 && left) {
			ssize_t n = write(conn, response, left);

			if (n <= 0)
				_exit(1);
			response += n;
			left -= (size_t)n;
		}
		_exit(0);
	}
	close(fd);
	return ntohs(addr.sin_port);
}

static void raw_reap(void)
{
	int status;

	cr_assert_eq(waitpid(raw_pid, &status, 0), raw_pid);
	raw_pid = -1;
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "raw server failed");
}

static void raw_pass(struct fetch *f, const char *response)
{
	char url[256];
	struct origin_request_params params = { .url = url,
						.timeout_ms = 5000,
						.passthrough = true };

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/", raw_serve(response));
	start(f, &params);
	run(done_count + 1, RUN_DEADLINE_MS);
	cr_assert(f->done, "no on_done before the deadline for %s", url);
	raw_reap();
}

Test(origin, passthrough_reports_only_the_final_head)
{
	struct fetch f = { 0 };

	raw_pass(&f, "HTTP/1.1 103 Early Hints\r\n"
		     "Link: </style.css>; rel=preload\r\n"
		     "\r\n"
		     "HTTP/1.1 401 Unauthorized\r\n"
		     "Content-Type: application/json\r\n"
		     "X-Folded: first\r\n"
		     "  second\r\n"
		     "Content-Length: 5\r\n"
		     "Connection: close\r\n"
		     "\r\n"
		     "hello");
	expect_ok(&f);
	cr_assert_eq(f.response.status, 401);
	cr_assert_str_eq(f.reason, "Unauthorized");
	cr_assert_eq(line_index(&f, "Link:"), -1, "the 103's line is not the final head's");
	cr_assert_eq(f.line_count, 4, "got %zu lines", f.line_count);
	cr_assert_str_eq(f.lines[0], "Content-Type: application/json");
	cr_assert_str_eq(f.lines[1], "X-Folded: first second");
	cr_assert_str_eq(f.lines[2], "Content-Length: 5");
	cr_assert_str_eq(f.lines[3], "Connection: close");
	expect_body(&f, "hello", 5);
	fetch_free(&f);
}

Test(origin, passthrough_decodes_chunked_bodies)
{
	struct fetch f = { 0 };

	raw_pass(&f, "HTTP/1.1 500 Internal Server Error\r\n"
		     "Transfer-Encoding: chunked\r\n"
		     "Connection: close\r\n"
		     "\r\n"
		     "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
	expect_ok(&f);
	cr_assert_eq(f.response.status, 500);
	cr_assert_eq(f.response.content_length, -1);
	expect_line(&f, "Transfer-Encoding: chunked"); /* as received: the caller drops it */
	expect_body(&f, "hello world", 11);
	fetch_free(&f);
}

Test(origin, passthrough_transport_errors_stay_errors)
{
	struct fetch f[2] = { 0 };
	char url[256];
	struct origin_request_params params = { .url = url, .passthrough = true };

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/", free_port());
	start(&f[0], &params);
	run(1, RUN_DEADLINE_MS);
	cr_assert_eq(f[0].result.error, -ECONNREFUSED, "%s", f[0].message);
	cr_assert_eq(f[0].headers_calls, 0);

	/* A response cut short (Content-Length promised more). */
	raw_pass(&f[1], "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhel");
	cr_assert_lt(f[1].result.error, 0, "a short body is an error");
	cr_assert_eq(f[1].headers_calls, 1);
	fetch_free(&f[0]);
	fetch_free(&f[1]);
}

/* --- HTTPS with a CA the test makes. */

TestSuite(origin_tls, .init = setup_tls, .fini = teardown, .timeout = 30);

static void tls_get(int i, struct fetch *f, const char *ca_file, bool insecure)
{
	struct origin_options options = { .ca_file = ca_file, .insecure = insecure };
	char url[256];
	struct origin_request_params params = { .url = url, .timeout_ms = 5000 };

	/* One origin per TLS setting, all destroyed after the loop in teardown. */
	cr_assert_eq(origin_create(&tls_origins[i], loop, &options), 0);
	origin = tls_origins[i];
	snprintf(url, sizeof(url), "https://127.0.0.1:%d/big", tls_port);
	start(f, &params);
	run(done_count + 1, RUN_DEADLINE_MS);
	origin = NULL;
	cr_assert(f->done);
}

Test(origin_tls, verification)
{
	struct fetch f[3] = { 0 };
	char ca[128];

	tls_get(0, &f[0], NULL, false);
	cr_assert_eq(f[0].result.error, -EPROTO, "%s", f[0].message);
	cr_assert_not_null(strstr(f[0].message, "TLS"), "%s", f[0].message);
	cr_assert_not_null(strstr(f[0].message, "https://127.0.0.1"), "%s", f[0].message);
	cr_assert_eq(f[0].len, 0);

	snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
	tls_get(1, &f[1], ca, false);
	expect_ok(&f[1]);
	expect_body(&f[1], big, BIG_SIZE);

	tls_get(2, &f[2], NULL, true);
	expect_ok(&f[2]);
	expect_body(&f[2], big, BIG_SIZE);
	for (int i = 0; i < 3; i++)
		fetch_free(&f[i]);
}

/* --- libcurl is loaded by the first request (net/curl-load.c). Criterion runs
 * each test in a process of its own, so this one loads (or fails to) afresh. */

Test(origin_load, missing_library_fails_requests_not_the_origin, .timeout = 30)
{
	static const char lib[] = "/nonexistent/ringfly-test/libcurl.so.4";
	struct origin_request_params params = { .url = "http://127.0.0.1:9/x" };
	struct origin *o = NULL;
	struct origin_request *req = NULL;
	struct fetch f = { 0 };
	char path[] = "/tmp/rf-origin-load.XXXXXX", logged[2048];
	int fd, saved, rc;
	ssize_t n;

	cr_assert_eq(setenv("RINGFLY_LIBCURL", lib, 1), 0);
	fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	unlink(path);
	saved = dup(STDERR_FILENO);
	cr_assert_geq(saved, 0);
	cr_assert_geq(dup2(fd, STDERR_FILENO), 0);
	log_set_level(LOG_LEVEL_ERROR);

	/* The origin (and a daemon with it) comes up without the library ... */
	cr_assert_eq(loop_create(&loop, NULL), 0);
	cr_assert_eq(origin_create(&o, loop, NULL), 0);
	/* ... and every request says why it cannot start, with nothing leaked. */
	for (int i = 0; i < 2; i++) {
		rc = origin_request_start(o, &params, &fetch_callbacks, &f, &req);
		cr_assert_eq(rc, -ELIBACC, "request %d: %d", i, rc);
		cr_assert_null(req);
		cr_assert_eq(origin_active(o), 0);
	}
	cr_assert_str_eq(origin_strerror(rc),
			 "cannot load /nonexistent/ringfly-test/libcurl.so.4: "
			 "/nonexistent/ringfly-test/libcurl.so.4: cannot open shared object file: "
			 "No such file or directory");
	cr_assert_str_eq(origin_strerror(-ENOENT), strerror(ENOENT));
	origin_destroy(o);
	loop_destroy(loop);
	loop = NULL;

	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	n = pread(fd, logged, sizeof(logged) - 1, 0);
	close(fd);
	cr_assert_gt(n, 0, "nothing logged");
	logged[n] = '\0';
	/* Said once, at error level, naming the library and the way out. */
	cr_assert_not_null(strstr(logged, "libcurl unavailable: no request to an origin can be "
					  "made library=/nonexistent/ringfly-test/libcurl.so.4"),
			   "%s", logged);
	cr_assert_not_null(strstr(logged, "install Debian's libcurl4"), "%s", logged);
	cr_assert_null(strstr(strstr(logged, "libcurl unavailable") + 1, "libcurl unavailable"),
		       "logged twice: %s", logged);
}

Test(origin_load, library_from_the_environment, .timeout = 30)
{
	/* The default is the soname the headers were built for. */
	unsetenv("RINGFLY_LIBCURL");
	cr_assert_str_eq(curl_load_path(), "libcurl.so.4");
	cr_assert_eq(setenv("RINGFLY_LIBCURL", "", 1), 0);
	cr_assert_str_eq(curl_load_path(), "libcurl.so.4");
	cr_assert_eq(setenv("RINGFLY_LIBCURL", "/opt/x/libcurl.so.4", 1), 0);
	cr_assert_str_eq(curl_load_path(), "/opt/x/libcurl.so.4");
	cr_assert_null(curl_load_error());
}
