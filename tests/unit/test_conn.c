/* test_conn: framed connections: pipelining, short sends, limits, malformed input, file
 * payloads between frames over Unix and TCP sockets. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/loop.h"
#include "net/conn.h"
#include "net/tcp.h"
#include "net/uds.h"

static char dir[40], path[100];

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/rf-conn-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/c.sock", dir);
	log_set_level(getenv("TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR);
}

static void teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(conn, .init = setup, .fini = teardown);

/* --- server side: answers HealthRequest{id} with HealthResponse{id}; a Hello
 * with role "flood" makes it answer with `pid` Hello frames of 1 KiB each. */

static int server_frame(struct conn *conn, uint8_t type, const uint8_t *message, size_t len)
{
	ProtobufCMessage *msg = frame_unpack(type, message, len, NULL);

	if (!msg) {
		conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED, "bad message");
		return 0;
	}
	if (type == FRAME_TYPE_HEALTH_REQUEST) {
		Ringfly__HealthResponse response = RINGFLY__HEALTH_RESPONSE__INIT;

		response.id = ((Ringfly__HealthRequest *)msg)->id;
		response.pid = (uint32_t)getpid();
		if (response.id == 50)
			conn_set_busy(conn, true); /* idle sweep test: work under way */
		if (response.id >= 100) {
			/* fd tests: odd ids are requests that declare a
			 * descriptor (as DownloadTask's output_fd does) and take
			 * one from the queue; pid says whether one was there,
			 * which gets "ok" written into it. Descriptors are queued
			 * per connection, not per frame: one recvmsg may carry
			 * the frame before too. */
			int fd = response.id % 2 ? conn_take_fd(conn) : -1;

			response.pid = fd >= 0;
			if (fd >= 0) {
				cr_assert_eq(write(fd, "ok", 2), 2);
				close(fd);
			}
		}
		cr_assert_eq(conn_send_frame(conn, FRAME_TYPE_HEALTH_RESPONSE, &response.base), 0);
	} else if (type == FRAME_TYPE_HELLO) {
		Ringfly__Hello *hello = (Ringfly__Hello *)msg;
		static char filler[1024];
		Ringfly__Hello reply = RINGFLY__HELLO__INIT;

		memset(filler, 'f', sizeof(filler) - 1);
		reply.version = filler;
		for (uint32_t i = 0; i < hello->pid; i++) {
			reply.id = i;
			if (conn_send_frame(conn, FRAME_TYPE_HELLO, &reply.base) < 0)
				break; /* output limit: the connection is closing */
		}
	}
	protobuf_c_message_free_unpacked(msg, NULL);
	return 0;
}

/* Open descriptors of this process: a server must leave none behind. */
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

/* Where the server listens and the client connects (set before the fork). */
enum transport { VIA_UNIX, VIA_TCP };
static enum transport transport;
static int tcp_port;

/* TCP_NOTSENT_LOWAT of the server's accepted connections, as request 13 saw
 * them: the lowest and the highest (-1: none seen yet). */
static long long lowat_min = -1, lowat_max = -1;

static struct loop_op tick_op;
static bool tick_armed;

static void tick_done(struct loop_op *op, int res, uint32_t flags)
{
	(void)res;
	(void)flags;
	tick_armed = false;
	loop_stop(op->owner);
}

/* After the client is gone: every connection must finish, promptly. */
static void wait_for_no_connections(struct loop *loop, struct conn_server *server)
{
	uint64_t deadline_ms = clock_monotonic_ms() + 5000;

	while (conn_server_count(server) && clock_monotonic_ms() < deadline_ms) {
		if (!tick_armed) {
			loop_op_init(&tick_op, tick_done, loop);
			cr_assert_eq(loop_timeout(loop, &tick_op, 10), 0);
			tick_armed = true;
		}
		cr_assert_eq(loop_run(loop), 0);
	}
	cr_assert_eq(conn_server_count(server), 0, "%u connections still open",
		     conn_server_count(server));
}

/*
 * Runs a conn server (on `via`) until the client child exits and every
 * connection has finished; returns the child's exit status. With `stop_early`
 * the server is torn down as soon as the child raises SIGUSR1 (connections
 * still open), then the child is killed (status 0 if it was still waiting).
 */
static int run_server(enum transport via, const struct conn_handlers *handlers,
		      struct conn_server_options *options, void (*client)(void), bool stop_early)
{
	struct uds_listen_options uds_options = { .path = path, .mode = 0600, .owner_name = "test" };
	struct uds_listener listener;
	struct conn_server *server;
	struct loop *loop;
	char err[256];
	sigset_t set;
	unsigned fds_before = count_fds();
	int status, listen_fd;
	pid_t child;

	tick_armed = false;
	transport = via;
	cr_assert_eq(loop_create(&loop, NULL), 0);
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGUSR1);
	cr_assert_eq(loop_signals(loop, &set, on_child_exit, NULL), 0);
	if (via == VIA_TCP) {
		listen_fd = tcp_listen("127.0.0.1:0", 16, err, sizeof(err));
		cr_assert_geq(listen_fd, 0, "%s", err);
		tcp_port = tcp_local_port(listen_fd);
		cr_assert_gt(tcp_port, 0);
	} else {
		cr_assert_eq(uds_listen(&listener, &uds_options, err, sizeof(err)), 0, "%s", err);
		listen_fd = listener.fd;
	}
	cr_assert_eq(conn_server_create(&server, loop, handlers, options, NULL), 0);
	cr_assert_eq(conn_server_listen(server, listen_fd), 0);

	child = fork();
	if (child == 0) {
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		alarm(20); /* a client stuck on a broken server fails, not hangs */
		client();
		_exit(0);
	}
	if (stop_early) {
		cr_assert_eq(loop_run(loop), 0);
		if (waitpid(child, &status, WNOHANG) == 0) {
			kill(child, SIGKILL); /* raised SIGUSR1 and waits, as it should */
			waitpid(child, &status, 0);
			status = 0;
		}
	} else {
		while (waitpid(child, &status, WNOHANG) == 0)
			cr_assert_eq(loop_run(loop), 0);
		wait_for_no_connections(loop, server);
	}
	if (via == VIA_TCP)
		close(listen_fd);
	else
		uds_close(&listener);
	loop_destroy(loop);
	conn_server_destroy(server);
	cr_assert_eq(count_fds(), fds_before, "descriptors leaked");
	return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

/* Runs a conn server on the Unix socket until the client child exits. */
static int run_with_client(struct conn_server_options *options, void (*client)(void))
{
	static const struct conn_handlers handlers = { .frame = server_frame };

	return run_server(VIA_UNIX, &handlers, options, client, false);
}

/* --- client side helpers (run in the child: exit codes report failures). */

static int client_connect(void)
{
	struct sockaddr_in address = { .sin_family = AF_INET };
	char err[128];
	int fd;

	if (transport == VIA_UNIX) {
		fd = uds_connect(path, 1000, 5000, err, sizeof(err));
		if (fd < 0)
			_exit(10);
		return fd;
	}
	address.sin_port = htons((uint16_t)tcp_port);
	address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0)
		_exit(10);
	return fd;
}

static void client_read_full(int fd, uint8_t *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);

		if (n <= 0)
			_exit(11);
		got += (size_t)n;
	}
}

/* Reads one frame; returns its decoded message (type in *type). */
static ProtobufCMessage *client_read_frame(int fd, uint8_t *type)
{
	static uint8_t buf[1 << 16];
	const uint8_t *message;
	size_t message_len, frame_size;

	client_read_full(fd, buf, FRAME_HEADER_SIZE);
	if (frame_peek(buf, FRAME_HEADER_SIZE, 0, type, &message, &message_len, &frame_size) !=
	    FRAME_PEEK_NEED_MORE || frame_size > sizeof(buf))
		_exit(12);
	client_read_full(fd, buf + FRAME_HEADER_SIZE, frame_size - FRAME_HEADER_SIZE);
	if (frame_peek(buf, frame_size, 0, type, &message, &message_len, &frame_size) !=
	    FRAME_PEEK_OK)
		_exit(13);
	return frame_unpack(*type, message, message_len, NULL);
}

static void client_expect_error(int fd, Ringfly__ErrorCode code, const char *text)
{
	uint8_t type;
	ProtobufCMessage *msg = client_read_frame(fd, &type);
	Ringfly__Error *error = (Ringfly__Error *)msg;
	char c;

	if (!msg || type != FRAME_TYPE_ERROR)
		_exit(20);
	if (error->code != code)
		_exit(21);
	if (!strstr(error->message, text)) {
		fprintf(stderr, "error text: %s\n", error->message);
		_exit(22);
	}
	protobuf_c_message_free_unpacked(msg, NULL);
	/* ... then the server closes. */
	if (read(fd, &c, 1) != 0)
		_exit(23);
}

static size_t pack_request(uint8_t *buf, size_t cap, uint64_t id)
{
	Ringfly__HealthRequest request = RINGFLY__HEALTH_REQUEST__INIT;

	request.id = id;
	return (size_t)frame_pack(FRAME_TYPE_HEALTH_REQUEST, &request.base, buf, cap);
}

static void client_pipelined(void)
{
	uint8_t buf[256];
	size_t len = 0;
	int fd = client_connect();

	for (uint64_t id = 1; id <= 3; id++)
		len += pack_request(buf + len, sizeof(buf) - len, id);
	if (write(fd, buf, len) != (ssize_t)len)
		_exit(30);
	for (uint64_t id = 1; id <= 3; id++) {
		uint8_t type;
		ProtobufCMessage *msg = client_read_frame(fd, &type);

		if (!msg || type != FRAME_TYPE_HEALTH_RESPONSE ||
		    ((Ringfly__HealthResponse *)msg)->id != id)
			_exit(31);
		protobuf_c_message_free_unpacked(msg, NULL);
	}
	close(fd);
}

/* One health request on fd, its answer read; exits `code` if not. */
static void client_health(int fd, uint64_t id, int code)
{
	uint8_t buf[64], type;
	size_t len = pack_request(buf, sizeof(buf), id);
	ProtobufCMessage *msg;

	if (write(fd, buf, len) != (ssize_t)len)
		_exit(code);
	msg = client_read_frame(fd, &type);
	if (!msg || type != FRAME_TYPE_HEALTH_RESPONSE || ((Ringfly__HealthResponse *)msg)->id != id)
		_exit(code + 1);
	protobuf_c_message_free_unpacked(msg, NULL);
}

/* Two connections silent for 2.5 s past a 1 s idle timeout: the one marked
 * busy (request 50: an import under way, say) still answers; the other was
 * closed by the sweep. */
static void client_busy_and_idle(void)
{
	int busy = client_connect(), idle = client_connect();
	char byte;

	client_health(busy, 50, 40);
	client_health(idle, 1, 42);
	usleep(2500000); /* the silence is what is tested */
	if (read(idle, &byte, 1) != 0)
		_exit(44); /* not closed for idleness */
	client_health(busy, 2, 45);
	close(busy);
	close(idle);
}

Test(conn, the_idle_sweep_leaves_a_busy_connection, .timeout = 30)
{
	struct conn_server_options options = { .name = "test", .idle_timeout_ms = 1000 };

	cr_assert_eq(run_with_client(&options, client_busy_and_idle), 0);
}

Test(conn, pipelined_requests_are_answered_in_order)
{
	struct conn_server_options options = { .name = "test" };

	cr_assert_eq(run_with_client(&options, client_pipelined), 0);
}

static void client_byte_at_a_time(void)
{
	uint8_t buf[64], type;
	size_t len = pack_request(buf, sizeof(buf), 77);
	int fd = client_connect();

	for (size_t i = 0; i < len; i++)
		if (write(fd, buf + i, 1) != 1)
			_exit(40);
	ProtobufCMessage *msg = client_read_frame(fd, &type);
	if (!msg || ((Ringfly__HealthResponse *)msg)->id != 77)
		_exit(41);
	protobuf_c_message_free_unpacked(msg, NULL);
	close(fd);
}

Test(conn, frame_split_into_single_bytes)
{
	struct conn_server_options options = { .name = "test" };

	cr_assert_eq(run_with_client(&options, client_byte_at_a_time), 0);
}

static void client_oversized(void)
{
	/* Claims 512 MiB: refused from the header, nothing allocated. */
	uint8_t header[] = { 0x20, 0x00, 0x00, 0x00, FRAME_TYPE_HELLO };
	int fd = client_connect();

	if (write(fd, header, sizeof(header)) != sizeof(header))
		_exit(50);
	client_expect_error(fd, RINGFLY__ERROR_CODE__ERROR_CODE_FRAME_TOO_LARGE,
			    "frame of type Hello (1) is larger than its limit of 65536 bytes");
	close(fd);
}

Test(conn, oversized_frame_gets_an_error_then_close)
{
	struct conn_server_options options = { .name = "test" };

	cr_assert_eq(run_with_client(&options, client_oversized), 0);
}

static void client_unknown_type(void)
{
	uint8_t frame[] = { 0, 0, 0, 1, 99 };
	int fd = client_connect();

	if (write(fd, frame, sizeof(frame)) != sizeof(frame))
		_exit(60);
	client_expect_error(fd, RINGFLY__ERROR_CODE__ERROR_CODE_UNKNOWN_TYPE,
			    "unknown frame type 99");
	close(fd);
}

Test(conn, unknown_type_gets_an_error_then_close)
{
	struct conn_server_options options = { .name = "test" };

	cr_assert_eq(run_with_client(&options, client_unknown_type), 0);
}

static void client_truncated(void)
{
	uint8_t buf[64];
	size_t len = pack_request(buf, sizeof(buf), 5);
	int fd = client_connect();

	if (write(fd, buf, len - 1) != (ssize_t)(len - 1))
		_exit(70);
	shutdown(fd, SHUT_WR);
	client_expect_error(fd, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED, "truncated frame");
	close(fd);
}

Test(conn, truncated_frame_at_eof_gets_an_error)
{
	struct conn_server_options options = { .name = "test" };

	cr_assert_eq(run_with_client(&options, client_truncated), 0);
}

static void client_undecodable(void)
{
	uint8_t frame[] = { 0, 0, 0, 3, FRAME_TYPE_HEALTH_REQUEST, 0x08, 0xff };
	int fd = client_connect();

	if (write(fd, frame, sizeof(frame)) != sizeof(frame))
		_exit(80);
	client_expect_error(fd, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED, "bad message");
	close(fd);
}

Test(conn, undecodable_message_gets_an_error)
{
	struct conn_server_options options = { .name = "test" };

	cr_assert_eq(run_with_client(&options, client_undecodable), 0);
}

static void client_over_limit(void)
{
	int first = client_connect();
	uint8_t buf[64], type;
	size_t len = pack_request(buf, sizeof(buf), 1);

	/* Make sure the first is accepted and counted before the second. */
	if (write(first, buf, len) != (ssize_t)len)
		_exit(90);
	ProtobufCMessage *msg = client_read_frame(first, &type);
	if (!msg)
		_exit(91);
	protobuf_c_message_free_unpacked(msg, NULL);

	int second = client_connect();
	client_expect_error(second, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY,
			    "too many connections (limit 1)");
	close(second);
	close(first);
}

Test(conn, connection_limit_answers_busy)
{
	struct conn_server_options options = { .name = "test", .max_connections = 1 };

	cr_assert_eq(run_with_client(&options, client_over_limit), 0);
}

static void client_flood(void)
{
	Ringfly__Hello hello = RINGFLY__HELLO__INIT;
	uint8_t buf[128], type;
	int fd = client_connect();
	ssize_t len;

	/* 3000 replies of ~1 KiB: far beyond the socket buffer, so the
	 * server's sends come back short and its output grows mid-send. */
	hello.pid = 3000;
	len = frame_pack(FRAME_TYPE_HELLO, &hello.base, buf, sizeof(buf));
	if (write(fd, buf, (size_t)len) != len)
		_exit(100);
	usleep(100000); /* let the server's output pile up */
	for (uint32_t i = 0; i < 3000; i++) {
		ProtobufCMessage *msg = client_read_frame(fd, &type);

		if (!msg || type != FRAME_TYPE_HELLO || ((Ringfly__Hello *)msg)->id != i ||
		    strlen(((Ringfly__Hello *)msg)->version) != 1023)
			_exit(101);
		protobuf_c_message_free_unpacked(msg, NULL);
	}
	close(fd);
}

Test(conn, large_output_survives_short_sends)
{
	struct conn_server_options options = { .name = "test" };

	cr_assert_eq(run_with_client(&options, client_flood), 0);
}

static void client_slow_reader(void)
{
	Ringfly__Hello hello = RINGFLY__HELLO__INIT;
	uint8_t buf[128];
	char c;
	int fd = client_connect();
	ssize_t len;

	/* 8 MiB of replies against a 1 MiB output limit, never read: the
	 * server must close instead of buffering without bound. */
	hello.pid = 8192;
	len = frame_pack(FRAME_TYPE_HELLO, &hello.base, buf, sizeof(buf));
	if (write(fd, buf, (size_t)len) != len)
		_exit(110);
	usleep(200000);
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	(void)c; /* EOF: the server gave up on us */
	close(fd);
}

Test(conn, output_limit_closes_a_peer_that_does_not_read)
{
	struct conn_server_options options = { .name = "test", .output_max_bytes = 1u << 20 };

	cr_assert_eq(run_with_client(&options, client_slow_reader), 0);
}

/* --- descriptors passed with frames (pass_fds). */

static void client_send_with_fd(int sock, const uint8_t *buf, size_t len, int fd)
{
	union {
		struct cmsghdr align;
		uint8_t bytes[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *c;

	memset(&control, 0, sizeof(control));
	msg.msg_control = control.bytes;
	msg.msg_controllen = sizeof(control.bytes);
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &msg, 0) != (ssize_t)len)
		_exit(60);
}

static void client_fds(void)
{
	uint8_t buf[256];
	int fds[2], sock = client_connect();
	size_t len;
	char got[3] = "";

	if (pipe(fds) < 0)
		_exit(61);
	/* 100: plain; 101: takes the pipe sent with it; 102: plain again;
	 * 103: wants one but none was sent, so gets none. */
	len = pack_request(buf, sizeof(buf), 100);
	if (write(sock, buf, len) != (ssize_t)len)
		_exit(62);
	len = pack_request(buf, sizeof(buf), 101);
	client_send_with_fd(sock, buf, len, fds[1]);
	close(fds[1]);
	len = pack_request(buf, sizeof(buf), 102);
	if (write(sock, buf, len) != (ssize_t)len)
		_exit(63);
	len = pack_request(buf, sizeof(buf), 103);
	if (write(sock, buf, len) != (ssize_t)len)
		_exit(63);
	for (uint64_t id = 100; id <= 103; id++) {
		uint8_t type;
		ProtobufCMessage *msg = client_read_frame(sock, &type);
		Ringfly__HealthResponse *response = (Ringfly__HealthResponse *)msg;

		if (!msg || type != FRAME_TYPE_HEALTH_RESPONSE || response->id != id)
			_exit(64);
		if (response->pid != (id == 101))
			_exit(65);
		protobuf_c_message_free_unpacked(msg, NULL);
	}
	if (read(fds[0], got, 2) != 2 || strcmp(got, "ok") != 0)
		_exit(66);
	close(sock);
}

Test(conn, descriptor_arrives_with_its_frame)
{
	struct conn_server_options options = { .name = "test", .pass_fds = true };

	int rc = run_with_client(&options, client_fds);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
}

Test(conn, recvmsg_path_pipelines_and_reassembles)
{
	struct conn_server_options options = { .name = "test", .pass_fds = true };

	cr_assert_eq(run_with_client(&options, client_pipelined), 0);
	cr_assert_eq(run_with_client(&options, client_byte_at_a_time), 0);
	cr_assert_eq(run_with_client(&options, client_oversized), 0);
}

/* A handler that closes its connection (as the daemon does on an Error frame
 * from the CLI) with more frames behind in the same read, after a frame that
 * grew the input past what a connection keeps: the close waits for the parse
 * loop to end (it once freed the input under it). */
static int closing_frame(struct conn *conn, uint8_t type, const uint8_t *message, size_t len)
{
	if (type == FRAME_TYPE_HEALTH_REQUEST) {
		Ringfly__HealthRequest *request =
			(Ringfly__HealthRequest *)frame_unpack(type, message, len, NULL);
		bool close_now = request && request->id == 7;

		if (request)
			protobuf_c_message_free_unpacked(&request->base, NULL);
		if (close_now) {
			conn_close(conn);
			return 0;
		}
	}
	return server_frame(conn, type, message, len);
}

static void client_big_frame_then_close(void)
{
	static uint8_t buf[160 << 10];
	static char url[100000];
	Ringfly__DownloadTask task = RINGFLY__DOWNLOAD_TASK__INIT;
	int sock = client_connect();
	size_t len;
	ssize_t n;
	char c;

	memset(url, 'u', sizeof(url) - 1);
	task.url = url; /* the handler ignores it; the input grows past 64 KiB */
	n = frame_pack(FRAME_TYPE_DOWNLOAD_TASK, &task.base, buf, sizeof(buf));
	if (n <= 0)
		_exit(70);
	len = (size_t)n;
	len += pack_request(buf + len, sizeof(buf) - len, 7); /* closes */
	len += pack_request(buf + len, sizeof(buf) - len, 8); /* behind it: never answered */
	if (write(sock, buf, len) != (ssize_t)len)
		_exit(71);
	if (read(sock, &c, 1) != 0)
		_exit(72); /* closed, with no answer */
	close(sock);
}

Test(conn, handler_closing_mid_input_after_a_large_frame)
{
	static const struct conn_handlers handlers = { .frame = closing_frame };
	struct conn_server_options options = { .name = "test", .pass_fds = true };

	for (int i = 0; i < 3; i++)
		cr_assert_eq(run_server(VIA_UNIX, &handlers, &options, client_big_frame_then_close,
					false), 0);
	options.pass_fds = false;
	cr_assert_eq(run_server(VIA_UNIX, &handlers, &options, client_big_frame_then_close, false),
		     0);
}

/* --- file payloads between frames (conn_send_file) and conn_reply_error.
 *
 * The server answers HealthRequest{id} by scenario, id:
 *   1  H1, 3 MiB of the file from 12345, H2, 200000 bytes from 4 MiB - 300000, H3
 *   2  H2, then 16 payloads of the whole 4 MiB file (64 MiB), then H99
 *   3  H3, 5000 bytes from 4 MiB - 1000 (the file ends 4000 bytes early), H4
 *   4  Error{4, NOT_FOUND, "... <conn_peer_name>"}, the connection stays open
 *   5  65 one-byte payloads (byte i of the file): the 65th is refused, then H5
 *   6  H6, 3 MiB of the file's bytes in our memory by /proc/self/mem (cannot
 *      splice: sent by pread + send), H7
 *   10 H10 with pid = the number of open connections
 *   11 H11, the whole file (4 MiB), H12
 *   else  H<id>
 * Hn is HealthResponse{id n}. The child has the same file bytes (fork).
 */

#define PAYLOAD_FILE_SIZE (4u << 20)
#define PAYLOADS_MAX 256u

static uint8_t *payload_bytes; /* the file's content */
static int payload_fd = -1;    /* the file */
static int memory_fd = -1;     /* /proc/self/mem */
static bool in_send_file;      /* done must never run inside conn_send_file */
static uint64_t drains_on_loop, drains_by_workers; /* as of the last frame served */
static int refused_65th;       /* what conn_send_file said to payload 65 */

/* What became of each payload queued by the server. */
static struct {
	unsigned queued, ok, failed;
	unsigned failed_pipe, failed_reset, failed_timeout, failed_nodata, failed_other;
	unsigned runs[PAYLOADS_MAX]; /* done calls per payload: exactly one each */
} sent;

static void payload_setup(void)
{
	char file[128];
	uint64_t x = 0x9e3779b97f4a7c15u;
	int fd;

	payload_bytes = malloc(PAYLOAD_FILE_SIZE);
	cr_assert_not_null(payload_bytes);
	for (size_t i = 0; i < PAYLOAD_FILE_SIZE; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		payload_bytes[i] = (uint8_t)x;
	}
	snprintf(file, sizeof(file), "%s/payload", dir);
	fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, payload_bytes, PAYLOAD_FILE_SIZE), (ssize_t)PAYLOAD_FILE_SIZE);
	close(fd);
	payload_fd = open(file, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(payload_fd, 0);
	memory_fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(memory_fd, 0);
	memset(&sent, 0, sizeof(sent));
	refused_65th = 0;
	drains_on_loop = drains_by_workers = 0;
	lowat_min = lowat_max = -1;
}

/* Every accepted TCP socket of the test server (local port tcp_port, not the
 * listener) in this process: their TCP_NOTSENT_LOWAT into lowat_min/max. */
static void note_server_lowats(void)
{
	for (int fd = 0; fd < 1024; fd++) {
		struct sockaddr_in address;
		socklen_t len = sizeof(address);
		int listening = 0;
		unsigned lowat = 0;

		if (getsockname(fd, (struct sockaddr *)&address, &len) < 0 ||
		    address.sin_family != AF_INET || ntohs(address.sin_port) != tcp_port)
			continue;
		len = sizeof(listening);
		if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || listening)
			continue;
		len = sizeof(lowat);
		cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, &len), 0);
		if (lowat_min < 0 || lowat < lowat_min)
			lowat_min = lowat;
		if ((long long)lowat > lowat_max)
			lowat_max = lowat;
	}
}

static void payload_sent(struct conn *conn, void *arg, int res)
{
	unsigned index = (unsigned)(uintptr_t)arg;

	cr_assert_not_null(conn);
	cr_assert(!in_send_file, "done ran inside conn_send_file");
	cr_assert_lt(index, sent.queued);
	sent.runs[index]++;
	if (res == 0) {
		sent.ok++;
		return;
	}
	sent.failed++;
	if (res == -EPIPE)
		sent.failed_pipe++;
	else if (res == -ECONNRESET)
		sent.failed_reset++;
	else if (res == -ETIMEDOUT)
		sent.failed_timeout++;
	else if (res == -ENODATA)
		sent.failed_nodata++;
	else
		sent.failed_other++;
}

static int server_send_file(struct conn *conn, int fd, uint64_t offset, uint32_t length)
{
	int rc;

	cr_assert_lt(sent.queued, PAYLOADS_MAX);
	in_send_file = true;
	rc = conn_send_file(conn, fd, offset, length, payload_sent, (void *)(uintptr_t)sent.queued);
	in_send_file = false;
	if (rc == 0)
		sent.queued++;
	return rc;
}

static void server_respond(struct conn *conn, uint64_t id)
{
	Ringfly__HealthResponse response = RINGFLY__HEALTH_RESPONSE__INIT;

	response.id = id;
	cr_assert_eq(conn_send_frame(conn, FRAME_TYPE_HEALTH_RESPONSE, &response.base), 0);
}

static int file_server_frame(struct conn *conn, uint8_t type, const uint8_t *message, size_t len)
{
	ProtobufCMessage *msg = frame_unpack(type, message, len, NULL);
	uint64_t id;

	conn_server_drains(conn_get_server(conn), &drains_on_loop, &drains_by_workers);

	cr_assert_not_null(msg);
	cr_assert_eq(type, FRAME_TYPE_HEALTH_REQUEST);
	id = ((Ringfly__HealthRequest *)msg)->id;
	protobuf_c_message_free_unpacked(msg, NULL);
	switch (id) {
	case 1:
		server_respond(conn, 1);
		cr_assert_eq(server_send_file(conn, payload_fd, 12345, 3u << 20), 0);
		server_respond(conn, 2);
		cr_assert_eq(server_send_file(conn, payload_fd, PAYLOAD_FILE_SIZE - 300000, 200000),
			     0);
		server_respond(conn, 3);
		break;
	case 2:
		server_respond(conn, 2);
		for (unsigned i = 0; i < 16; i++)
			cr_assert_eq(server_send_file(conn, payload_fd, 0, PAYLOAD_FILE_SIZE), 0);
		server_respond(conn, 99);
		break;
	case 3:
		server_respond(conn, 3);
		cr_assert_eq(server_send_file(conn, payload_fd, PAYLOAD_FILE_SIZE - 1000, 5000), 0);
		server_respond(conn, 4);
		break;
	case 4:
		conn_reply_error(conn, 4, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND,
				 "no such piece here for %s", conn_peer_name(conn));
		break;
	case 5:
		for (unsigned i = 0; i < CONN_FILES_MAX; i++)
			cr_assert_eq(server_send_file(conn, payload_fd, i, 1), 0);
		refused_65th = server_send_file(conn, payload_fd, 64, 1);
		server_respond(conn, 5);
		break;
	case 6:
		server_respond(conn, 6);
		cr_assert_eq(server_send_file(conn, memory_fd,
					      (uint64_t)(uintptr_t)payload_bytes + 5, 3u << 20),
			     0);
		server_respond(conn, 7);
		break;
	case 11:
		server_respond(conn, 11);
		cr_assert_eq(server_send_file(conn, payload_fd, 0, PAYLOAD_FILE_SIZE), 0);
		server_respond(conn, 12);
		break;
	case 13:
		note_server_lowats();
		server_respond(conn, 13);
		break;
	case 10: {
		Ringfly__HealthResponse response = RINGFLY__HEALTH_RESPONSE__INIT;

		response.id = 10;
		response.pid = conn_server_count(conn_get_server(conn));
		cr_assert_eq(conn_send_frame(conn, FRAME_TYPE_HEALTH_RESPONSE, &response.base), 0);
		break;
	}
	default:
		server_respond(conn, id);
		break;
	}
	return 0;
}

static int run_file_server(enum transport via, struct conn_server_options *options,
			   void (*client)(void))
{
	static const struct conn_handlers handlers = { .frame = file_server_frame };

	return run_server(via, &handlers, options, client, false);
}

/* --- file tests: the client side. */

static void client_request(int fd, uint64_t id)
{
	uint8_t buf[64];
	size_t len = pack_request(buf, sizeof(buf), id);

	if (write(fd, buf, len) != (ssize_t)len)
		_exit(120);
}

static void client_expect_response(int fd, uint64_t id)
{
	uint8_t type;
	ProtobufCMessage *msg = client_read_frame(fd, &type);

	if (!msg || type != FRAME_TYPE_HEALTH_RESPONSE) {
		fprintf(stderr, "expected HealthResponse %llu, got type %u\n",
			(unsigned long long)id, type);
		_exit(121);
	}
	if (((Ringfly__HealthResponse *)msg)->id != id) {
		fprintf(stderr, "expected HealthResponse %llu, got %llu\n", (unsigned long long)id,
			(unsigned long long)((Ringfly__HealthResponse *)msg)->id);
		_exit(122);
	}
	protobuf_c_message_free_unpacked(msg, NULL);
}

/* Reads len bytes and compares them with `expected`. */
static void client_expect_bytes(int fd, const uint8_t *expected, size_t len)
{
	static uint8_t buf[1 << 16];

	for (size_t done = 0; done < len;) {
		size_t chunk = len - done < sizeof(buf) ? len - done : sizeof(buf);

		client_read_full(fd, buf, chunk);
		if (memcmp(buf, expected + done, chunk) != 0) {
			fprintf(stderr, "payload differs in bytes %zu..%zu\n", done, done + chunk);
			_exit(123);
		}
		done += chunk;
	}
}

/* Nothing more: the server closes (after our shutdown, or on its own). */
static void client_expect_eof(int fd)
{
	uint8_t c;
	ssize_t n = read(fd, &c, 1);

	if (n != 0) {
		fprintf(stderr, "expected EOF, read returned %zd (%s)\n", n,
			n < 0 ? strerror(errno) : "a byte");
		_exit(124);
	}
}

static void client_expect_sequence_1(int fd)
{
	client_expect_response(fd, 1);
	client_expect_bytes(fd, payload_bytes + 12345, 3u << 20);
	client_expect_response(fd, 2);
	client_expect_bytes(fd, payload_bytes + PAYLOAD_FILE_SIZE - 300000, 200000);
	client_expect_response(fd, 3);
}

static void client_sequence(void)
{
	int fd = client_connect();

	/* Two pipelined: the second's frames queue behind the first's files. */
	client_request(fd, 1);
	client_request(fd, 1);
	client_expect_sequence_1(fd);
	client_expect_sequence_1(fd);
	shutdown(fd, SHUT_WR);
	client_expect_eof(fd);
	close(fd);
}

static void assert_all_done_once(void)
{
	for (unsigned i = 0; i < sent.queued; i++)
		cr_assert_eq(sent.runs[i], 1, "payload %u: done ran %u times", i, sent.runs[i]);
	cr_assert_eq(sent.ok + sent.failed, sent.queued);
}

static void test_sequence(enum transport via)
{
	struct conn_server_options options = { .name = "test" };
	int rc;

	payload_setup();
	rc = run_file_server(via, &options, client_sequence);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(sent.queued, 4);
	cr_assert_eq(sent.ok, 4);
	assert_all_done_once();
}

Test(conn, frames_and_files_arrive_in_order_over_unix, .timeout = 30)
{
	test_sequence(VIA_UNIX);
}

Test(conn, frames_and_files_arrive_in_order_over_tcp, .timeout = 30)
{
	test_sequence(VIA_TCP);
}

/* Polls (bounded) until this is the server's only connection. */
static void client_wait_alone(int fd)
{
	for (int attempt = 0; attempt < 500; attempt++) {
		uint8_t type;
		ProtobufCMessage *msg;
		uint32_t count;

		client_request(fd, 10);
		msg = client_read_frame(fd, &type);
		if (!msg || type != FRAME_TYPE_HEALTH_RESPONSE)
			_exit(125);
		count = ((Ringfly__HealthResponse *)msg)->pid;
		protobuf_c_message_free_unpacked(msg, NULL);
		if (count == 1)
			return;
		usleep(10000);
	}
	_exit(126);
}

static void client_closes_mid_payload(void)
{
	int fd = client_connect();

	client_request(fd, 2);
	client_expect_response(fd, 2);
	client_expect_bytes(fd, payload_bytes, 100000);
	close(fd); /* 64 MiB queued: most of it is still on the server */

	/* The server goes on serving, once the first connection is gone with
	 * the pipe it was splicing through (which must not be reused: it may
	 * still hold bytes of the first payload). */
	fd = client_connect();
	client_wait_alone(fd);
	client_request(fd, 1);
	client_expect_sequence_1(fd);
	client_request(fd, 7);
	client_expect_response(fd, 7);
	close(fd);
}

static void test_close_mid_payload(enum transport via)
{
	struct conn_server_options options = { .name = "test" };
	int rc;

	payload_setup();
	rc = run_file_server(via, &options, client_closes_mid_payload);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(sent.queued, 18);
	assert_all_done_once();
	cr_assert_geq(sent.failed, 1, "every payload claims to be sent");
	cr_assert_eq(sent.failed, sent.failed_pipe + sent.failed_reset,
		     "failed with something else than EPIPE/ECONNRESET: %u timeout, %u nodata, "
		     "%u other", sent.failed_timeout, sent.failed_nodata, sent.failed_other);
	cr_assert_geq(sent.ok, 2, "the second client's payloads failed");
}

Test(conn, client_closing_mid_payload_fails_its_payloads_over_unix, .timeout = 30)
{
	test_close_mid_payload(VIA_UNIX);
}

Test(conn, client_closing_mid_payload_fails_its_payloads_over_tcp, .timeout = 30)
{
	test_close_mid_payload(VIA_TCP);
}

/* More connections splicing at once than drain on the loop: every byte
 * still arrives, in order, whichever way each pipeful went. */
#define MANY_CLIENTS 6

static void client_many_at_once(void)
{
	int fds[MANY_CLIENTS];

	for (int i = 0; i < MANY_CLIENTS; i++) {
		fds[i] = client_connect();
		client_request(fds[i], 2);
	}
	/* One at a time: the others' sockets fill meanwhile and their
	 * payloads wait in the server, all of them splicing. */
	for (int i = 0; i < MANY_CLIENTS; i++) {
		client_expect_response(fds[i], 2);
		for (int p = 0; p < 16; p++)
			client_expect_bytes(fds[i], payload_bytes, PAYLOAD_FILE_SIZE);
		client_expect_response(fds[i], 99);
	}
	client_request(fds[0], 12); /* the server notes its drain counts */
	client_expect_response(fds[0], 12);
	for (int i = 0; i < MANY_CLIENTS; i++)
		close(fds[i]);
}

/* Runs `client` (MANY_CLIENTS connections, 16 payloads each) against a TCP
 * file server with `options`: every payload arrives once, and both drain
 * ways were used. */
static void run_many_clients(struct conn_server_options *options, void (*client)(void))
{
	int rc;

	payload_setup();
	rc = run_file_server(VIA_TCP, options, client);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(sent.queued, 16 * MANY_CLIENTS);
	cr_assert_eq(sent.ok, 16 * MANY_CLIENTS);
	assert_all_done_once();
	cr_assert_gt(drains_by_workers, 0, "%d connections splicing, none drained by io-wq",
		     MANY_CLIENTS);
	cr_assert_gt(drains_on_loop, 0, "no connection drained on the loop");
}

Test(conn, many_connections_splicing_drain_by_workers_and_loop, .timeout = 60)
{
	struct conn_server_options options = { .name = "test" };

	run_many_clients(&options, client_many_at_once);
}

/* Every connection's socket says the server's notsent_lowat, then the many
 * payloads go as above. */
static void client_many_with_lowat(void)
{
	int fd = client_connect();

	client_request(fd, 13);
	client_expect_response(fd, 13);
	close(fd);
	client_many_at_once();
}

/* With TCP_NOTSENT_LOWAT the kernel takes at most that much unsent data at a
 * time: the loop's splices go in smaller steps and io-wq's wait more often.
 * Every byte still arrives, in order, both ways, and the option is on every
 * accepted socket; with 0, on none. */
Test(conn, notsent_lowat_is_set_and_every_byte_still_arrives, .timeout = 60)
{
	struct conn_server_options options = { .name = "test", .notsent_lowat = 96 << 10 };

	run_many_clients(&options, client_many_with_lowat);
	cr_assert_eq(lowat_min, 96 << 10, "TCP_NOTSENT_LOWAT %lld, not the option's %d", lowat_min,
		     96 << 10);
	cr_assert_eq(lowat_max, 96 << 10);
}

Test(conn, notsent_lowat_0_leaves_the_kernel_default, .timeout = 60)
{
	struct conn_server_options options = { .name = "test" };

	run_many_clients(&options, client_many_with_lowat);
	cr_assert_eq(lowat_min, 0, "no accepted socket seen (%lld)", lowat_min);
	cr_assert_eq(lowat_max, 0, "TCP_NOTSENT_LOWAT %lld set with the option 0", lowat_max);
}

static void client_short_file(void)
{
	int fd = client_connect();

	client_request(fd, 3);
	client_expect_response(fd, 3);
	/* The 1000 bytes there are, then the connection closes: no H4. */
	client_expect_bytes(fd, payload_bytes + PAYLOAD_FILE_SIZE - 1000, 1000);
	client_expect_eof(fd);
	close(fd);
}

static void test_short_file(enum transport via)
{
	struct conn_server_options options = { .name = "test" };
	int rc;

	payload_setup();
	rc = run_file_server(via, &options, client_short_file);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(sent.queued, 1);
	assert_all_done_once();
	cr_assert_eq(sent.failed_nodata, 1);
}

Test(conn, file_shorter_than_its_payload_closes_over_unix, .timeout = 30)
{
	test_short_file(VIA_UNIX);
}

Test(conn, file_shorter_than_its_payload_closes_over_tcp, .timeout = 30)
{
	test_short_file(VIA_TCP);
}

static void client_reply_error(void)
{
	int fd = client_connect();
	uint8_t type;
	ProtobufCMessage *msg;
	Ringfly__Error *error;
	char want[96];

	if (transport == VIA_TCP) {
		struct sockaddr_in self;
		socklen_t len = sizeof(self);

		if (getsockname(fd, (struct sockaddr *)&self, &len) < 0)
			_exit(130);
		snprintf(want, sizeof(want), "no such piece here for 127.0.0.1:%u",
			 ntohs(self.sin_port));
	} else {
		snprintf(want, sizeof(want), "no such piece here for pid %d uid %u", (int)getpid(),
			 (unsigned)getuid());
	}
	client_request(fd, 4);
	msg = client_read_frame(fd, &type);
	error = (Ringfly__Error *)msg;
	if (!msg || type != FRAME_TYPE_ERROR)
		_exit(131);
	if (error->id != 4 || error->code != RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND)
		_exit(132);
	if (strcmp(error->message, want) != 0) {
		fprintf(stderr, "error text: \"%s\", expected \"%s\"\n", error->message, want);
		_exit(133);
	}
	protobuf_c_message_free_unpacked(msg, NULL);
	/* Still open: the next request is answered. */
	client_request(fd, 8);
	client_expect_response(fd, 8);
	client_request(fd, 4);
	client_request(fd, 9);
	msg = client_read_frame(fd, &type);
	if (!msg || type != FRAME_TYPE_ERROR)
		_exit(134);
	protobuf_c_message_free_unpacked(msg, NULL);
	client_expect_response(fd, 9);
	shutdown(fd, SHUT_WR);
	client_expect_eof(fd);
	close(fd);
}

Test(conn, reply_error_keeps_the_connection_over_unix, .timeout = 30)
{
	struct conn_server_options options = { .name = "test" };
	int rc;

	payload_setup();
	rc = run_file_server(VIA_UNIX, &options, client_reply_error);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
}

Test(conn, reply_error_keeps_the_connection_over_tcp, .timeout = 30)
{
	struct conn_server_options options = { .name = "test" };
	int rc;

	payload_setup();
	rc = run_file_server(VIA_TCP, &options, client_reply_error);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
}

static void client_stops_reading(void)
{
	struct pollfd pfd;
	int fd = client_connect();

	client_request(fd, 2);
	client_expect_response(fd, 2);
	/* Never read again: the server must give up within its send timeout
	 * (300 ms) and close, which shows as RDHUP with our buffer still full. */
	pfd.fd = fd;
	pfd.events = POLLRDHUP;
	if (poll(&pfd, 1, 10000) != 1)
		_exit(140);
	if (!(pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))
		_exit(141);
	close(fd);
}

static void test_stalled_reader(enum transport via)
{
	struct conn_server_options options = { .name = "test", .send_timeout_ms = 300 };
	uint64_t start_ms = clock_monotonic_ms();
	int rc;

	payload_setup();
	rc = run_file_server(via, &options, client_stops_reading);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_lt(clock_monotonic_ms() - start_ms, 8000);
	cr_assert_eq(sent.queued, 16);
	assert_all_done_once();
	cr_assert_geq(sent.failed, 1);
	cr_assert_eq(sent.failed, sent.failed_timeout, "%u failed, %u of them timed out",
		     sent.failed, sent.failed_timeout);
}

Test(conn, reader_that_stops_reading_is_closed_over_unix, .timeout = 30)
{
	test_stalled_reader(VIA_UNIX);
}

Test(conn, reader_that_stops_reading_is_closed_over_tcp, .timeout = 30)
{
	test_stalled_reader(VIA_TCP);
}

static void client_reads_slowly(void)
{
	static uint8_t buf[32 << 10];
	int size = 64 << 10, fd;

	/* A small window, read 32 KiB every 20 ms (1.6 MB/s): each pipeful
	 * (1 MiB) takes longer than the server's send timeout to go, but the
	 * peer never stops taking bytes for anything near it. */
	transport = VIA_TCP;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)) < 0)
		_exit(150);
	{
		struct sockaddr_in address = { .sin_family = AF_INET };

		address.sin_port = htons((uint16_t)tcp_port);
		address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0)
			_exit(151);
	}
	client_request(fd, 11);
	client_expect_response(fd, 11);
	for (size_t done = 0; done < PAYLOAD_FILE_SIZE; done += sizeof(buf)) {
		client_read_full(fd, buf, sizeof(buf));
		if (memcmp(buf, payload_bytes + done, sizeof(buf)) != 0)
			_exit(152);
		usleep(20000);
	}
	client_expect_response(fd, 12);
	close(fd);
}

Test(conn, slow_reader_is_not_a_stuck_one_over_tcp, .timeout = 30)
{
	struct conn_server_options options = { .name = "test", .send_timeout_ms = 400 };
	int rc;

	payload_setup();
	rc = run_file_server(VIA_TCP, &options, client_reads_slowly);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(sent.ok, 1);
	assert_all_done_once();
}

static void client_many_payloads(void)
{
	int fd = client_connect();

	client_request(fd, 5);
	client_expect_bytes(fd, payload_bytes, CONN_FILES_MAX);
	client_expect_response(fd, 5);
	shutdown(fd, SHUT_WR);
	client_expect_eof(fd);
	close(fd);
}

Test(conn, at_most_64_payloads_queued, .timeout = 30)
{
	struct conn_server_options options = { .name = "test" };
	int rc;

	payload_setup();
	rc = run_file_server(VIA_UNIX, &options, client_many_payloads);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(refused_65th, -ENOBUFS);
	cr_assert_eq(sent.queued, CONN_FILES_MAX);
	cr_assert_eq(sent.ok, CONN_FILES_MAX);
	assert_all_done_once();
}

static void client_unspliceable(void)
{
	int fd = client_connect();

	client_request(fd, 6);
	client_expect_response(fd, 6);
	client_expect_bytes(fd, payload_bytes + 5, 3u << 20);
	client_expect_response(fd, 7);
	shutdown(fd, SHUT_WR);
	client_expect_eof(fd);
	close(fd);
}

static void test_unspliceable(enum transport via)
{
	struct conn_server_options options = { .name = "test" };
	int rc;

	payload_setup();
	rc = run_file_server(via, &options, client_unspliceable);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(sent.queued, 1);
	cr_assert_eq(sent.ok, 1);
	assert_all_done_once();
}

Test(conn, file_that_cannot_splice_goes_by_read_over_unix, .timeout = 30)
{
	test_unspliceable(VIA_UNIX);
}

Test(conn, file_that_cannot_splice_goes_by_read_over_tcp, .timeout = 30)
{
	test_unspliceable(VIA_TCP);
}

static void client_holds_payloads(void)
{
	int fd = client_connect();

	client_request(fd, 2);
	client_expect_response(fd, 2);
	kill(getppid(), SIGUSR1); /* the server is torn down with our payloads queued */
	pause();
}

Test(conn, server_destroy_fails_queued_payloads, .timeout = 30)
{
	static const struct conn_handlers handlers = { .frame = file_server_frame };
	struct conn_server_options options = { .name = "test" };

	int rc;

	payload_setup();
	rc = run_server(VIA_TCP, &handlers, &options, client_holds_payloads, true);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(sent.queued, 16);
	assert_all_done_once();
	cr_assert_geq(sent.failed, 1);
	cr_assert_eq(sent.failed, sent.failed_pipe);
}

/* --- stream mode (handlers->data): a line protocol on raw bytes.
 *
 * The server takes one whole line per call (a partial one stays buffered)
 * and asks conn_input_again for the next:
 *   "echo X"  X and a newline
 *   "file"    "A", 3 MiB of the file from 12345, "B", 200000 bytes from
 *             4 MiB - 300000, "C" (raw bytes around file payloads)
 *   "quit"    "bye\n", then data returns an error: closed after the send
 *   "hold"    consumes nothing, ever: the input piles up to its limit
 */

static struct {
	unsigned calls, lines;
	unsigned partial; /* calls offered no whole line */
	size_t max_len;	  /* the most bytes data was offered at once */
} stream;

static void stream_send(struct conn *conn, const char *text)
{
	cr_assert_eq(conn_send_bytes(conn, text, strlen(text)), 0);
}

static ssize_t stream_data(struct conn *conn, const uint8_t *bytes, size_t len)
{
	const uint8_t *end = memchr(bytes, '\n', len);
	size_t line_len;

	stream.calls++;
	if (len > stream.max_len)
		stream.max_len = len;
	if (!end) {
		stream.partial++;
		return 0; /* a partial line: offered again with more bytes */
	}
	line_len = (size_t)(end - bytes);
	stream.lines++;
	if (line_len == 4 && memcmp(bytes, "hold", 4) == 0)
		return 0;
	if (line_len == 4 && memcmp(bytes, "quit", 4) == 0) {
		stream_send(conn, "bye\n");
		return -ECONNABORTED;
	}
	if (line_len == 4 && memcmp(bytes, "file", 4) == 0) {
		stream_send(conn, "A");
		cr_assert_eq(server_send_file(conn, payload_fd, 12345, 3u << 20), 0);
		stream_send(conn, "B");
		cr_assert_eq(server_send_file(conn, payload_fd, PAYLOAD_FILE_SIZE - 300000, 200000),
			     0);
		stream_send(conn, "C");
	} else if (line_len >= 5 && memcmp(bytes, "echo ", 5) == 0) {
		cr_assert_eq(conn_send_bytes(conn, bytes + 5, line_len - 5), 0);
		stream_send(conn, "\n");
	}
	/* One line per call: the next one from the next loop turn. */
	if (line_len + 1 < len)
		conn_input_again(conn);
	return (ssize_t)(line_len + 1);
}

static int run_stream_server(enum transport via, struct conn_server_options *options,
			     void (*client)(void))
{
	static const struct conn_handlers handlers = { .data = stream_data };

	memset(&stream, 0, sizeof(stream));
	payload_setup();
	return run_server(via, &handlers, options, client, false);
}

static void client_write_text(int fd, const char *text)
{
	size_t len = strlen(text);

	if (write(fd, text, len) != (ssize_t)len)
		_exit(160);
}

static void client_expect_text(int fd, const char *text)
{
	char buf[256];
	size_t len = strlen(text);

	if (len >= sizeof(buf))
		_exit(161);
	client_read_full(fd, (uint8_t *)buf, len);
	if (memcmp(buf, text, len) != 0) {
		buf[len] = '\0';
		fprintf(stderr, "expected \"%s\", read \"%s\"\n", text, buf);
		_exit(162);
	}
}

static void client_stream_lines(void)
{
	const char *line = "echo bytes\n";
	int fd = client_connect();

	/* The second line is offered (from conn_input_again) while partial,
	 * kept, and taken once whole. */
	client_write_text(fd, "echo 1\necho sp");
	client_expect_text(fd, "1\n");
	client_write_text(fd, "lit\n");
	client_expect_text(fd, "split\n");
	for (size_t i = 0; line[i]; i++)
		if (write(fd, line + i, 1) != 1)
			_exit(163);
	client_expect_text(fd, "bytes\n");
	/* Three in one write: one per call, in order (conn_input_again). */
	client_write_text(fd, "echo 1\necho 2\necho 3\nquit\n");
	client_expect_text(fd, "1\n2\n3\nbye\n");
	client_expect_eof(fd);
	close(fd);
}

Test(conn, stream_mode_consumes_partially_and_offers_the_rest_again, .timeout = 30)
{
	struct conn_server_options options = { .name = "test" };
	int rc = run_stream_server(VIA_UNIX, &options, client_stream_lines);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(stream.lines, 7);
	cr_assert_geq(stream.partial, 1, "a partial line was never offered");
}

static void client_stream_flood(void)
{
	static char junk[8192];
	uint8_t c;
	ssize_t n;
	int fd = client_connect();

	/* The server holds everything: past 1024 bytes it must close. */
	memset(junk, 'x', sizeof(junk));
	client_write_text(fd, "hold\n");
	(void)!write(fd, junk, sizeof(junk)); /* may fail: the server is gone */
	n = read(fd, &c, 1);
	if (n != 0 && !(n < 0 && errno == ECONNRESET))
		_exit(164);
	close(fd);
}

Test(conn, stream_mode_input_never_exceeds_its_limit, .timeout = 30)
{
	struct conn_server_options options = { .name = "test", .max_message_bytes = 1024 };
	int rc;

	rc = run_stream_server(VIA_TCP, &options, client_stream_flood);
	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_leq(stream.max_len, 1024);
}

static void client_stream_files(void)
{
	int fd = client_connect();

	client_write_text(fd, "file\nfile\n");
	for (int i = 0; i < 2; i++) {
		client_expect_text(fd, "A");
		client_expect_bytes(fd, payload_bytes + 12345, 3u << 20);
		client_expect_text(fd, "B");
		client_expect_bytes(fd, payload_bytes + PAYLOAD_FILE_SIZE - 300000, 200000);
		client_expect_text(fd, "C");
	}
	client_write_text(fd, "quit\n");
	client_expect_text(fd, "bye\n");
	client_expect_eof(fd);
	close(fd);
}

static void test_stream_files(enum transport via)
{
	struct conn_server_options options = { .name = "test" };
	int rc = run_stream_server(via, &options, client_stream_files);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
	cr_assert_eq(sent.queued, 4);
	cr_assert_eq(sent.ok, 4);
	assert_all_done_once();
}

Test(conn, stream_bytes_and_files_arrive_in_order_over_unix, .timeout = 30)
{
	test_stream_files(VIA_UNIX);
}

Test(conn, stream_bytes_and_files_arrive_in_order_over_tcp, .timeout = 30)
{
	test_stream_files(VIA_TCP);
}

static void client_stream_eof(void)
{
	int fd = client_connect();

	/* A whole line and a partial one, then EOF: the answer to the first
	 * still comes, then the server closes without a word (no frame). */
	client_write_text(fd, "echo a\npart");
	shutdown(fd, SHUT_WR);
	client_expect_text(fd, "a\n");
	client_expect_eof(fd);
	close(fd);
}

Test(conn, stream_mode_eof_closes_after_the_replies, .timeout = 30)
{
	struct conn_server_options options = { .name = "test" };
	int rc = run_stream_server(VIA_TCP, &options, client_stream_eof);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
}

static void client_stream_busy(void)
{
	int first = client_connect(), second;

	/* The first is accepted and counted before the second connects. */
	client_write_text(first, "echo here\n");
	client_expect_text(first, "here\n");
	second = client_connect();
	client_expect_text(second, "BUSY\n");
	client_expect_eof(second);
	close(second);
	close(first);
}

Test(conn, stream_mode_busy_reply_at_the_connection_limit, .timeout = 30)
{
	struct conn_server_options options = {
		.name = "test", .max_connections = 1, .busy_reply = "BUSY\n",
	};
	int rc = run_stream_server(VIA_TCP, &options, client_stream_busy);

	cr_assert_eq(rc, 0, "the client exited with %d", rc);
}
