/* test_loop: the io_uring loop's operations, timeouts, cancellation, buffers, signals. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/loop.h"

struct record {
	struct loop_op op;
	struct loop *loop;
	int calls;
	int res;
	uint32_t flags;
	bool stop;
};

static void record_done(struct loop_op *op, int res, uint32_t flags)
{
	struct record *r = op->owner;

	r->calls++;
	r->res = res;
	r->flags = flags;
	if (r->stop)
		loop_stop(r->loop);
}

static struct loop *new_loop(void)
{
	struct loop *loop = NULL;

	cr_assert_eq(loop_create(&loop, NULL), 0);
	return loop;
}

static void record_init(struct record *r, struct loop *loop, bool stop)
{
	memset(r, 0, sizeof(*r));
	r->loop = loop;
	r->stop = stop;
	loop_op_init(&r->op, record_done, r);
}

/* Runs the loop until nothing is in flight (pooled records complete too). */
static void drain(struct loop *loop)
{
	while (loop_inflight(loop) > 0) {
		struct record nop;

		record_init(&nop, loop, true);
		cr_assert_eq(loop_nop(loop, &nop.op), 0);
		cr_assert_eq(loop_run(loop), 0);
	}
}

Test(loop, probes_features)
{
	struct loop *loop = new_loop();
	const struct loop_features *features = loop_features(loop);

	/* The machines ringfly runs on have all of these (kernel >= 6.1). */
	cr_assert(features->multishot_accept);
	cr_assert(features->multishot_recv);
	cr_assert(features->splice);
	loop_destroy(loop);
}

Test(loop, nop_calls_back_once)
{
	struct loop *loop = new_loop();
	struct record r;

	record_init(&r, loop, true);
	cr_assert_eq(loop_nop(loop, &r.op), 0);
	cr_assert_eq(loop_inflight(loop), 1);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(r.calls, 1);
	cr_assert_eq(r.res, 0);
	cr_assert_eq(loop_inflight(loop), 0);
	loop_destroy(loop);
}

Test(loop, timeout_fires_after_its_time)
{
	struct loop *loop = new_loop();
	struct record r;
	uint64_t start = clock_monotonic_ms();

	record_init(&r, loop, true);
	cr_assert_eq(loop_timeout(loop, &r.op, 30), 0);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(r.res, -ETIME);
	cr_assert_geq(clock_monotonic_ms() - start, 29);
	loop_destroy(loop);
}

Test(loop, cancel_removes_a_timeout)
{
	struct loop *loop = new_loop();
	struct record r;

	record_init(&r, loop, true);
	cr_assert_eq(loop_timeout(loop, &r.op, 60000), 0);
	cr_assert_eq(loop_cancel_op(loop, &r.op), 0);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(r.res, -ECANCELED);
	loop_destroy(loop);
}

Test(loop, reinitialised_record_drops_stale_completion)
{
	struct loop *loop = new_loop();
	struct record stale, fresh;

	record_init(&stale, loop, false);
	cr_assert_eq(loop_nop(loop, &stale.op), 0);
	/* The owner is "closed and reused" before the completion arrives. */
	loop_op_init(&stale.op, record_done, &stale);
	record_init(&fresh, loop, true);
	cr_assert_eq(loop_timeout(loop, &fresh.op, 20), 0);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(stale.calls, 0, "a stale completion ran its callback");
	cr_assert_eq(fresh.calls, 1);
	cr_assert_eq(loop_inflight(loop), 0);
	loop_destroy(loop);
}

Test(loop, send_and_recv_on_a_socketpair)
{
	struct loop *loop = new_loop();
	struct record sent, received;
	char out[] = "hello ring", in[32] = { 0 };
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	record_init(&sent, loop, false);
	record_init(&received, loop, true);
	cr_assert_eq(loop_recv(loop, &received.op, sv[1], in, sizeof(in), 0), 0);
	cr_assert_eq(loop_send(loop, &sent.op, sv[0], out, sizeof(out), 0), 0);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(sent.res, (int)sizeof(out));
	cr_assert_eq(received.res, (int)sizeof(out));
	cr_assert_str_eq(in, out);
	close(sv[0]);
	close(sv[1]);
	loop_destroy(loop);
}

Test(loop, recv_with_linked_timeout_is_cancelled)
{
	struct loop *loop = new_loop();
	struct record r;
	char in[8];
	int sv[2];
	uint64_t start = clock_monotonic_ms();

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	record_init(&r, loop, true);
	cr_assert_eq(loop_recv(loop, &r.op, sv[1], in, sizeof(in), 40), 0);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(r.res, -ECANCELED);
	cr_assert_geq(clock_monotonic_ms() - start, 39);
	/* The pooled timeout record completes too. */
	drain(loop);
	close(sv[0]);
	close(sv[1]);
	loop_destroy(loop);
}

struct multishot {
	struct loop_op op;
	struct loop *loop;
	uint16_t group;
	char data[256];
	size_t len;
	size_t expect;
	int completions;
};

static void multishot_done(struct loop_op *op, int res, uint32_t flags)
{
	struct multishot *m = op->owner;

	if (res > 0) {
		uint16_t id = loop_cqe_buffer_id(flags);

		cr_assert(flags & LOOP_CQE_BUFFER);
		memcpy(m->data + m->len, loop_buf_data(m->loop, m->group, id), (size_t)res);
		m->len += (size_t)res;
		loop_buf_recycle(m->loop, m->group, id);
		m->completions++;
	}
	if (m->len >= m->expect || res <= 0)
		loop_stop(m->loop);
}

Test(loop, multishot_recv_with_provided_buffers)
{
	struct loop *loop = new_loop();
	struct multishot m = { .loop = loop };
	int sv[2];
	char payload[200];

	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (char)('a' + i % 26);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	/* Buffers of 16 bytes: 200 bytes need several completions. */
	cr_assert_eq(loop_buf_group_create(loop, 4, 16, &m.group), 0);
	cr_assert_eq(loop_buf_group_create(loop, 3, 16, &m.group), -EINVAL, "not a power of 2");
	loop_op_init(&m.op, multishot_done, &m);
	m.expect = sizeof(payload);
	cr_assert_eq(loop_recv_multishot(loop, &m.op, sv[1], m.group), 0);
	cr_assert_eq(write(sv[0], payload, sizeof(payload)), (ssize_t)sizeof(payload));
	while (m.len < m.expect) {
		cr_assert_eq(loop_run(loop), 0);
		/* The ring may run dry (ENOBUFS ends the multishot): re-arm. */
		if (m.len < m.expect && loop_inflight(loop) == 0)
			cr_assert_eq(loop_recv_multishot(loop, &m.op, sv[1], m.group), 0);
	}
	cr_assert_eq(memcmp(m.data, payload, sizeof(payload)), 0);
	cr_assert_gt(m.completions, 1);
	close(sv[0]);
	close(sv[1]);
	loop_destroy(loop);
}

struct acceptor {
	struct loop_op op;
	struct loop *loop;
	int accepted[8];
	int count;
	bool more;
};

static void acceptor_done(struct loop_op *op, int res, uint32_t flags)
{
	struct acceptor *a = op->owner;

	cr_assert_geq(res, 0, "accept failed: %s", strerror(-res));
	a->accepted[a->count++] = res;
	a->more = flags & LOOP_CQE_MORE;
	if (a->count == 3)
		loop_stop(a->loop);
}

Test(loop, multishot_accept_then_cancel_by_fd)
{
	struct loop *loop = new_loop();
	struct acceptor a = { .loop = loop };
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int listener, clients[3];

	snprintf(addr.sun_path, sizeof(addr.sun_path), "/tmp/rf-test-loop-%d.sock", getpid());
	unlink(addr.sun_path);
	listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(bind(listener, (struct sockaddr *)&addr, sizeof(addr)), 0);
	cr_assert_eq(listen(listener, 16), 0);
	loop_op_init(&a.op, acceptor_done, &a);
	cr_assert_eq(loop_accept_multishot(loop, &a.op, listener), 0);
	for (int i = 0; i < 3; i++) {
		clients[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		cr_assert_eq(connect(clients[i], (struct sockaddr *)&addr, sizeof(addr)), 0);
	}
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(a.count, 3);
	cr_assert(a.more, "multishot accept should stay armed");
	cr_assert_eq(loop_inflight(loop), 1);

	/* Cancel by fd: the accept ends with -ECANCELED, nothing left in flight. */
	struct record cancel_wait;
	record_init(&cancel_wait, loop, true);
	a.op.done = record_done;
	a.op.owner = &cancel_wait;
	cr_assert_eq(loop_cancel_fd(loop, listener), 0);
	while (loop_inflight(loop) > 0)
		cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(cancel_wait.res, -ECANCELED);
	for (int i = 0; i < 3; i++) {
		close(clients[i]);
		close(a.accepted[i]);
	}
	close(listener);
	unlink(addr.sun_path);
	loop_destroy(loop);
}

static int signal_seen;

static void on_signal(struct loop *loop, int signo, void *arg)
{
	(void)arg;
	signal_seen = signo;
	loop_stop(loop);
}

Test(loop, signals_arrive_through_the_ring)
{
	struct loop *loop = new_loop();
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	cr_assert_eq(loop_signals(loop, &set, on_signal, NULL), 0);
	cr_assert_eq(loop_signals(loop, &set, on_signal, NULL), -EBUSY);
	kill(getpid(), SIGUSR1);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(signal_seen, SIGUSR1);
	loop_destroy(loop);
}

Test(loop, many_operations_beyond_the_ring_size)
{
	struct loop_options options = { .entries = 8, .op_pool_size = 4 };
	struct loop *loop = NULL;
	struct record *records = calloc(1000, sizeof(*records));

	cr_assert_eq(loop_create(&loop, &options), 0);
	/* 1000 submissions through an 8-entry SQ, and 1000 pooled cancels
	 * through a pool of 4: both must grow or flush, never fail. */
	for (int i = 0; i < 1000; i++) {
		record_init(&records[i], loop, false);
		cr_assert_eq(loop_timeout(loop, &records[i].op, 60000), 0);
	}
	for (int i = 0; i < 1000; i++)
		cr_assert_eq(loop_cancel_op(loop, &records[i].op), 0);
	drain(loop);
	for (int i = 0; i < 1000; i++)
		cr_assert_eq(records[i].res, -ECANCELED, "record %d: %d", i, records[i].res);
	free(records);
	loop_destroy(loop);
}

Test(loop, poll_reports_readiness_and_cancels)
{
	struct loop *loop = new_loop();
	struct record r;
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	record_init(&r, loop, true);
	cr_assert_eq(loop_poll(loop, &r.op, sv[1], POLLIN), 0);
	cr_assert_eq(write(sv[0], "x", 1), 1);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert(r.res & POLLIN, "revents %d", r.res);

	/* Nothing to read once drained: the poll waits until cancelled. */
	char c;
	cr_assert_eq(read(sv[1], &c, 1), 1);
	record_init(&r, loop, true);
	cr_assert_eq(loop_poll(loop, &r.op, sv[1], POLLIN), 0);
	cr_assert_eq(loop_cancel_op(loop, &r.op), 0);
	cr_assert_eq(loop_run(loop), 0);
	cr_assert_eq(r.res, -ECANCELED);
	drain(loop);
	close(sv[0]);
	close(sv[1]);
	loop_destroy(loop);
}

/* loop_pipe_open: the size asked when the kernel grants it; else the pipe
 * keeps the kernel's default, works, and the refusal is flagged once. */
Test(loop, pipe_open_asks_a_size_and_flags_a_refusal_once)
{
	int fds[2], again[2], max_fd, capacity;
	char buf[32] = { 0 };
	unsigned long max_size;
	uint32_t above;
	bool warned = false;

	capacity = loop_pipe_open(fds, 1u << 20, &warned, "test");
	cr_assert_geq(capacity, 4096, "loop_pipe_open: %s", strerror(-capacity));
	cr_assert_eq(capacity, fcntl(fds[1], F_GETPIPE_SZ));
	cr_assert_eq(write(fds[1], "x", 1), 1, "the pipe does not work");
	close(fds[0]);
	close(fds[1]);

	/* Twice fs.pipe-max-size: refused unless we have CAP_SYS_RESOURCE. */
	max_fd = open("/proc/sys/fs/pipe-max-size", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(max_fd, 0);
	cr_assert_gt(read(max_fd, buf, sizeof(buf) - 1), 0);
	close(max_fd);
	max_size = strtoul(buf, NULL, 10);
	cr_assert_gt(max_size, 0, "fs.pipe-max-size reads \"%s\"", buf);
	above = max_size < (1ul << 29) ? (uint32_t)max_size * 2 : 1u << 30;
	warned = false;
	capacity = loop_pipe_open(fds, above, &warned, "test");
	cr_assert_gt(capacity, 0, "loop_pipe_open: %s", strerror(-capacity));
	cr_assert_eq(capacity, fcntl(fds[1], F_GETPIPE_SZ));
	if ((uint32_t)capacity == above) {
		cr_assert(!warned, "granted, yet flagged as refused");
	} else {
		cr_assert(warned, "refused (capacity %d of %u asked), not flagged", capacity, above);
		cr_assert_lt((uint32_t)capacity, above);
		/* Flagged already (not logged again): the next pipe still comes. */
		cr_assert_eq(loop_pipe_open(again, above, &warned, "test"), capacity);
		cr_assert(warned);
		close(again[0]);
		close(again[1]);
	}
	close(fds[0]);
	close(fds[1]);
}
