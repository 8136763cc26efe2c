/* test_conn: framed connections: pipelining, short sends, limits and malformed input. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "net/conn.h"
#include "net/uds.h"

static char dir[40], path[100];

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/rf-conn-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/c.sock", dir);
	log_set_level(LOG_LEVEL_ERROR);
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

static void on_child_exit(struct loop *loop, int signo, void *arg)
{
	(void)signo;
	(void)arg;
	loop_stop(loop);
}

/* Runs a conn server until the client child exits; returns its exit status. */
static int run_with_client(struct conn_server_options *options, void (*client)(void))
{
	static const struct conn_handlers handlers = { .frame = server_frame };
	struct uds_listen_options uds_options = { .path = path, .mode = 0600, .owner_name = "test" };
	struct uds_listener listener;
	struct conn_server *server;
	struct loop *loop;
	char err[256];
	sigset_t set;
	int status;
	pid_t child;

	cr_assert_eq(loop_create(&loop, NULL), 0);
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	cr_assert_eq(loop_signals(loop, &set, on_child_exit, NULL), 0);
	cr_assert_eq(uds_listen(&listener, &uds_options, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(conn_server_create(&server, loop, &handlers, options, NULL), 0);
	cr_assert_eq(conn_server_listen(server, listener.fd), 0);

	child = fork();
	if (child == 0) {
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		client();
		_exit(0);
	}
	while (waitpid(child, &status, WNOHANG) == 0)
		cr_assert_eq(loop_run(loop), 0);
	uds_close(&listener);
	loop_destroy(loop);
	conn_server_destroy(server);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

/* --- client side helpers (run in the child: exit codes report failures). */

static int client_connect(void)
{
	char err[128];
	int fd = uds_connect(path, 1000, 5000, err, sizeof(err));

	if (fd < 0)
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
