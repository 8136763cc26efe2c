/* loop: the io_uring event loop every ringfly process runs (one per thread). */
#include "core/loop.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "core/log.h"
#include "core/uring-compat.h"

/*
 * user_data layout: the record's address in the low 48 bits (user-space
 * addresses on x86-64 and arm64 fit), its generation in the high 16. A
 * completion whose generation no longer matches the record's belongs to an
 * owner that was closed and re-initialised: it is counted and dropped.
 */
#define LOOP_UD_PTR_BITS 48
#define LOOP_UD_PTR_MASK ((UINT64_C(1) << LOOP_UD_PTR_BITS) - 1)

/* loop_op.loop_flags_ */
#define LOOP_OP_POOLED (1u << 0) /* record belongs to the loop's pool */

/* The CQE flags handed to callbacks are the kernel's, unchanged. */
_Static_assert(LOOP_CQE_BUFFER == IORING_CQE_F_BUFFER, "flag mirrors kernel");
_Static_assert(LOOP_CQE_MORE == IORING_CQE_F_MORE, "flag mirrors kernel");

#define LOOP_ENTRIES_DEFAULT 256u
#define LOOP_POOL_DEFAULT 256u
#define LOOP_BUF_GROUPS_MAX 8u
#define LOOP_CQE_BATCH 64u

struct loop_pool_op {
	struct loop_op op;
	struct loop_pool_op *next;
};

struct loop_pool_chunk {
	struct loop_pool_chunk *next;
	unsigned count;
	struct loop_pool_op ops[];
};

struct loop_buf_group {
	struct io_uring_buf_ring *ring; /* mmap'd, shared with the kernel */
	size_t ring_bytes;
	uint8_t *data;			/* count * size bytes */
	unsigned count;
	unsigned size;
	int mask;
};

struct loop {
	struct io_uring ring;
	struct loop_features features;
	bool stopping;
	unsigned inflight;
	unsigned sq_entries;

	/*
	 * Timeouts pass the kernel a pointer to a timespec that it reads at
	 * submission, not at prep time. One slot per SQ entry, indexed by the
	 * SQE's position, lives until that SQE is submitted.
	 */
	struct __kernel_timespec *timespecs;

	struct loop_pool_op *pool_free;
	struct loop_pool_chunk *pool_chunks;

	struct loop_buf_group groups[LOOP_BUF_GROUPS_MAX];
	unsigned group_count;

	int signal_fd;
	struct signalfd_siginfo signal_info;
	struct loop_op signal_op;
	loop_signal_fn signal_fn;
	void *signal_arg;

	uint64_t stale_completions;

	/* loop_nop's records, completed from user space at the next turn:
	 * the ring is not needed to run a callback soon, and a full ring
	 * would lose work deferred that way. */
	uint64_t *deferred;
	unsigned deferred_count, deferred_cap;
};

void loop_op_init(struct loop_op *op, loop_op_done_fn done, void *owner)
{
	uint16_t flags = op->loop_flags_;

	op->done = done;
	op->owner = owner;
	op->generation++;
	op->loop_flags_ = flags & LOOP_OP_POOLED;
}

static uint64_t loop_user_data(const struct loop_op *op)
{
	uint64_t address = (uint64_t)(uintptr_t)op;

	assert((address & ~LOOP_UD_PTR_MASK) == 0);
	return address | ((uint64_t)op->generation << LOOP_UD_PTR_BITS);
}

/* --- the pool of fire-and-forget records. */

static int loop_pool_grow(struct loop *loop, unsigned count)
{
	struct loop_pool_chunk *chunk;

	chunk = calloc(1, sizeof(*chunk) + count * sizeof(chunk->ops[0]));
	if (!chunk)
		return -ENOMEM;
	chunk->count = count;
	chunk->next = loop->pool_chunks;
	loop->pool_chunks = chunk;
	for (unsigned i = 0; i < count; i++) {
		chunk->ops[i].op.loop_flags_ = LOOP_OP_POOLED;
		chunk->ops[i].next = loop->pool_free;
		loop->pool_free = &chunk->ops[i];
	}
	return 0;
}

static void loop_pool_op_done(struct loop_op *op, int res, uint32_t flags)
{
	struct loop *loop = op->owner;
	struct loop_pool_op *pooled = (struct loop_pool_op *)op;

	(void)res;
	assert(op->loop_flags_ & LOOP_OP_POOLED);
	if (flags & LOOP_CQE_MORE)
		return;
	pooled->next = loop->pool_free;
	loop->pool_free = pooled;
}

static struct loop_op *loop_pool_get(struct loop *loop)
{
	struct loop_pool_op *pooled = loop->pool_free;

	if (!pooled) {
		if (loop_pool_grow(loop, LOOP_POOL_DEFAULT) < 0)
			return NULL;
		pooled = loop->pool_free;
	}
	loop->pool_free = pooled->next;
	loop_op_init(&pooled->op, loop_pool_op_done, loop);
	return &pooled->op;
}

/* --- submission queue. */

/*
 * Returns `count` consecutive free SQEs (the first; the rest follow it), or
 * NULL if the ring cannot take them even after submitting what is queued.
 */
static struct io_uring_sqe *loop_sqes(struct loop *loop, unsigned count)
{
	if (io_uring_sq_space_left(&loop->ring) < count) {
		int rc = io_uring_submit(&loop->ring);

		if (rc < 0 && rc != -EBUSY && rc != -EAGAIN && rc != -EINTR)
			log_error("loop", "submit failed error=\"%s\"", strerror(-rc));
		if (io_uring_sq_space_left(&loop->ring) < count)
			return NULL;
	}
	return io_uring_get_sqe(&loop->ring);
}

static struct __kernel_timespec *loop_sqe_timespec(struct loop *loop,
						   const struct io_uring_sqe *sqe,
						   uint64_t timeout_ms)
{
	size_t index = (size_t)(sqe - loop->ring.sq.sqes);
	struct __kernel_timespec *ts;

	assert(index < loop->sq_entries);
	ts = &loop->timespecs[index];
	ts->tv_sec = (long long)(timeout_ms / 1000);
	ts->tv_nsec = (long long)(timeout_ms % 1000) * 1000000;
	return ts;
}

static void loop_sqe_attach(struct loop *loop, struct io_uring_sqe *sqe, struct loop_op *op)
{
	assert(op->done);
	io_uring_sqe_set_data64(sqe, loop_user_data(op));
	loop->inflight++;
}

/* Links a timeout behind `sqe` (which must be the last SQE taken). */
static int loop_link_timeout(struct loop *loop, struct io_uring_sqe *sqe, unsigned timeout_ms)
{
	struct loop_op *timer = loop_pool_get(loop);
	struct io_uring_sqe *link;

	if (!timer)
		return -ENOMEM;
	link = io_uring_get_sqe(&loop->ring); /* room reserved by loop_sqes(.., 2) */
	assert(link);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_prep_link_timeout(link, loop_sqe_timespec(loop, link, timeout_ms), 0);
	loop_sqe_attach(loop, link, timer);
	return 0;
}

int loop_accept_multishot(struct loop *loop, struct loop_op *op, int listen_fd)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, 1);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, SOCK_CLOEXEC);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_recv(struct loop *loop, struct loop_op *op, int fd, void *buf, size_t len,
	      unsigned timeout_ms)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, timeout_ms ? 2 : 1);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_recv(sqe, fd, buf, len, 0);
	loop_sqe_attach(loop, sqe, op);
	return timeout_ms ? loop_link_timeout(loop, sqe, timeout_ms) : 0;
}

int loop_recvmsg(struct loop *loop, struct loop_op *op, int fd, struct msghdr *msg,
		 unsigned flags)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, 1);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_recvmsg(sqe, fd, msg, flags);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_recv_multishot(struct loop *loop, struct loop_op *op, int fd, uint16_t group)
{
	struct io_uring_sqe *sqe;

	if (group >= loop->group_count)
		return -EINVAL;
	sqe = loop_sqes(loop, 1);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = group;
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_send(struct loop *loop, struct loop_op *op, int fd, const void *buf, size_t len,
	      unsigned timeout_ms)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, timeout_ms ? 2 : 1);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	loop_sqe_attach(loop, sqe, op);
	return timeout_ms ? loop_link_timeout(loop, sqe, timeout_ms) : 0;
}

int loop_read(struct loop *loop, struct loop_op *op, int fd, void *buf, size_t len,
	      int64_t offset)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, 1);

	if (!sqe)
		return -EBUSY;
	assert(len <= UINT32_MAX);
	io_uring_prep_read(sqe, fd, buf, (unsigned)len, (uint64_t)offset);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_write(struct loop *loop, struct loop_op *op, int fd, const void *buf, size_t len,
	       int64_t offset)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, 1);

	if (!sqe)
		return -EBUSY;
	assert(len <= UINT32_MAX);
	io_uring_prep_write(sqe, fd, buf, (unsigned)len, (uint64_t)offset);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_splice(struct loop *loop, struct loop_op *op, int fd_in, int64_t offset_in, int fd_out,
		int64_t offset_out, unsigned len)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, 1);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_splice(sqe, fd_in, offset_in, fd_out, offset_out, len, SPLICE_F_MOVE);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_pipe_open(int fds[2], uint32_t size, bool *warned, const char *who)
{
	int capacity;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	if (fcntl(fds[1], F_SETPIPE_SZ, (int)size) < 0 && !*warned) {
		*warned = true;
		log_warn("loop", "pipes smaller than asked, splices move in smaller chunks for=%s "
			 "asked=%u error=\"%s\" hint=\"fs.pipe-max-size, fs.pipe-user-pages-soft\"",
			 who, size, strerror(errno));
	}
	capacity = fcntl(fds[1], F_GETPIPE_SZ);
	return capacity > 0 ? capacity : 65536; /* the kernel's default */
}

int loop_fsync(struct loop *loop, struct loop_op *op, int fd, bool datasync)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, 1);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_timeout(struct loop *loop, struct loop_op *op, uint64_t timeout_ms)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, 1);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_timeout(sqe, loop_sqe_timespec(loop, sqe, timeout_ms), 0, 0);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_cancel_op(struct loop *loop, struct loop_op *target)
{
	struct loop_op *op = loop_pool_get(loop);
	struct io_uring_sqe *sqe;

	if (!op)
		return -ENOMEM;
	sqe = loop_sqes(loop, 1);
	if (!sqe) {
		loop_pool_op_done(op, 0, 0);
		return -EBUSY;
	}
	io_uring_prep_cancel64(sqe, loop_user_data(target), 0);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_cancel_fd(struct loop *loop, int fd)
{
	struct loop_op *op = loop_pool_get(loop);
	struct io_uring_sqe *sqe;

	if (!op)
		return -ENOMEM;
	sqe = loop_sqes(loop, 1);
	if (!sqe) {
		loop_pool_op_done(op, 0, 0);
		return -EBUSY;
	}
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_poll(struct loop *loop, struct loop_op *op, int fd, unsigned events)
{
	struct io_uring_sqe *sqe = loop_sqes(loop, 1);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_add(sqe, fd, events);
	loop_sqe_attach(loop, sqe, op);
	return 0;
}

int loop_nop(struct loop *loop, struct loop_op *op)
{
	assert(op->done);
	if (loop->deferred_count == loop->deferred_cap) {
		unsigned cap = loop->deferred_cap ? loop->deferred_cap * 2 : 64;
		uint64_t *grown = realloc(loop->deferred, cap * sizeof(*grown));

		if (!grown)
			return -ENOMEM;
		loop->deferred = grown;
		loop->deferred_cap = cap;
	}
	loop->deferred[loop->deferred_count++] = loop_user_data(op);
	loop->inflight++;
	return 0;
}

/* --- provided-buffer rings. */

int loop_buf_group_create(struct loop *loop, unsigned count, unsigned size, uint16_t *group)
{
	struct loop_buf_group *g;
	struct io_uring_buf_reg reg;
	int rc;

	if (count == 0 || count > 32768 || (count & (count - 1)) != 0 || size == 0)
		return -EINVAL;
	if (loop->group_count == LOOP_BUF_GROUPS_MAX)
		return -ENOSPC;

	g = &loop->groups[loop->group_count];
	g->ring_bytes = count * sizeof(struct io_uring_buf);
	g->ring = mmap(NULL, g->ring_bytes, PROT_READ | PROT_WRITE,
		       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (g->ring == MAP_FAILED)
		return -errno;
	g->data = malloc((size_t)count * size);
	if (!g->data) {
		rc = -ENOMEM;
		goto out_unmap;
	}

	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)g->ring;
	reg.ring_entries = count;
	reg.bgid = (uint16_t)loop->group_count;
	rc = io_uring_register_buf_ring(&loop->ring, &reg, 0);
	if (rc < 0)
		goto out_free_data;

	g->count = count;
	g->size = size;
	g->mask = io_uring_buf_ring_mask(count);
	io_uring_buf_ring_init(g->ring);
	for (unsigned i = 0; i < count; i++)
		io_uring_buf_ring_add(g->ring, g->data + (size_t)i * size, size,
				      (unsigned short)i, g->mask, (int)i);
	io_uring_buf_ring_advance(g->ring, (int)count);

	*group = (uint16_t)loop->group_count++;
	loop->features.buf_ring = true;
	return 0;

out_free_data:
	free(g->data);
	g->data = NULL;
out_unmap:
	munmap(g->ring, g->ring_bytes);
	g->ring = NULL;
	return rc;
}

void *loop_buf_data(struct loop *loop, uint16_t group, uint16_t buffer_id)
{
	struct loop_buf_group *g = &loop->groups[group];

	assert(group < loop->group_count);
	assert(buffer_id < g->count);
	return g->data + (size_t)buffer_id * g->size;
}

void loop_buf_recycle(struct loop *loop, uint16_t group, uint16_t buffer_id)
{
	struct loop_buf_group *g = &loop->groups[group];

	assert(group < loop->group_count);
	assert(buffer_id < g->count);
	io_uring_buf_ring_add(g->ring, g->data + (size_t)buffer_id * g->size, g->size,
			      buffer_id, g->mask, 0);
	io_uring_buf_ring_advance(g->ring, 1);
}

/* --- signals. */

static void loop_signal_read_done(struct loop_op *op, int res, uint32_t flags)
{
	struct loop *loop = op->owner;

	(void)flags;
	if (res == (int)sizeof(loop->signal_info))
		loop->signal_fn(loop, (int)loop->signal_info.ssi_signo, loop->signal_arg);
	else if (res < 0 && res != -EAGAIN && res != -EINTR && res != -ECANCELED)
		log_error("loop", "signalfd read failed error=\"%s\"", strerror(-res));
	if (res == -ECANCELED || loop->signal_fd < 0)
		return;
	loop_op_init(&loop->signal_op, loop_signal_read_done, loop);
	if (loop_read(loop, &loop->signal_op, loop->signal_fd, &loop->signal_info,
		      sizeof(loop->signal_info), -1) < 0)
		log_error("loop", "cannot re-arm the signal read");
}

int loop_signals(struct loop *loop, const sigset_t *signals, loop_signal_fn fn, void *arg)
{
	int fd;

	if (loop->signal_fd >= 0)
		return -EBUSY;
	if (sigprocmask(SIG_BLOCK, signals, NULL) < 0)
		return -errno;
	fd = signalfd(-1, signals, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	loop->signal_fd = fd;
	loop->signal_fn = fn;
	loop->signal_arg = arg;
	loop_op_init(&loop->signal_op, loop_signal_read_done, loop);
	return loop_read(loop, &loop->signal_op, fd, &loop->signal_info,
			 sizeof(loop->signal_info), -1);
}

/* --- life cycle. */

static void loop_probe(struct loop *loop)
{
	struct io_uring_probe *probe = io_uring_get_probe_ring(&loop->ring);

	if (!probe)
		return;
	/* Multishot accept came with 5.19 (as did IORING_OP_SOCKET), multishot
	 * recv with 6.0 (as did IORING_OP_SEND_ZC): the opcodes date them. */
	loop->features.multishot_accept = io_uring_opcode_supported(probe, IORING_OP_SOCKET);
	loop->features.multishot_recv = io_uring_opcode_supported(probe, IORING_OP_SEND_ZC);
	loop->features.send_zc = io_uring_opcode_supported(probe, IORING_OP_SEND_ZC);
	loop->features.splice = io_uring_opcode_supported(probe, IORING_OP_SPLICE);
	io_uring_free_probe(probe);
}

int loop_create(struct loop **out, const struct loop_options *options)
{
	static const unsigned setup_attempts[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_COOP_TASKRUN,
		0,
	};
	unsigned entries = options && options->entries ? options->entries : LOOP_ENTRIES_DEFAULT;
	unsigned pool = options && options->op_pool_size ? options->op_pool_size : LOOP_POOL_DEFAULT;
	struct loop *loop;
	int rc = -EINVAL;

	loop = calloc(1, sizeof(*loop));
	if (!loop)
		return -ENOMEM;
	loop->signal_fd = -1;

	for (size_t i = 0; i < sizeof(setup_attempts) / sizeof(setup_attempts[0]); i++) {
		struct io_uring_params params;

		memset(&params, 0, sizeof(params));
		params.flags = setup_attempts[i] | IORING_SETUP_CQSIZE;
		params.cq_entries = entries * 4;
		rc = io_uring_queue_init_params(entries, &loop->ring, &params);
		if (rc == 0) {
			loop->features.single_issuer = params.flags & IORING_SETUP_SINGLE_ISSUER;
			loop->features.defer_taskrun = params.flags & IORING_SETUP_DEFER_TASKRUN;
			loop->sq_entries = params.sq_entries;
			break;
		}
		if (rc != -EINVAL)
			break;
	}
	if (rc < 0)
		goto out_free;

	loop->timespecs = calloc(loop->sq_entries, sizeof(loop->timespecs[0]));
	if (!loop->timespecs) {
		rc = -ENOMEM;
		goto out_ring;
	}
	rc = loop_pool_grow(loop, pool);
	if (rc < 0)
		goto out_timespecs;
	loop_probe(loop);
	*out = loop;
	return 0;

out_timespecs:
	free(loop->timespecs);
out_ring:
	io_uring_queue_exit(&loop->ring);
	free(loop->deferred);
out_free:
	free(loop);
	return rc;
}

void loop_destroy(struct loop *loop)
{
	if (!loop)
		return;
	io_uring_queue_exit(&loop->ring);
	free(loop->deferred);
	if (loop->signal_fd >= 0)
		close(loop->signal_fd);
	for (unsigned i = 0; i < loop->group_count; i++) {
		munmap(loop->groups[i].ring, loop->groups[i].ring_bytes);
		free(loop->groups[i].data);
	}
	while (loop->pool_chunks) {
		struct loop_pool_chunk *next = loop->pool_chunks->next;

		free(loop->pool_chunks);
		loop->pool_chunks = next;
	}
	free(loop->timespecs);
	free(loop);
}

const struct loop_features *loop_features(const struct loop *loop)
{
	return &loop->features;
}

unsigned loop_inflight(const struct loop *loop)
{
	return loop->inflight;
}

void loop_stop(struct loop *loop)
{
	loop->stopping = true;
}

static void loop_dispatch(struct loop *loop, uint64_t user_data, int res, uint32_t flags)
{
	struct loop_op *op = (struct loop_op *)(uintptr_t)(user_data & LOOP_UD_PTR_MASK);
	uint16_t generation = (uint16_t)(user_data >> LOOP_UD_PTR_BITS);

	assert(op);
	if (!(flags & IORING_CQE_F_MORE)) {
		assert(loop->inflight > 0);
		loop->inflight--;
	}
	if (op->generation != generation) {
		/* The owner re-initialised the record while this was in flight. */
		loop->stale_completions++;
		log_debug("loop", "dropped stale completion res=%d", res);
		return;
	}
	op->done(op, res, flags);
}

/* Completes the nops queued before this turn; those their callbacks queue
 * wait for the next one, after the ring's completions. */
static void loop_run_deferred(struct loop *loop)
{
	unsigned n = loop->deferred_count;

	if (n == 0)
		return;
	for (unsigned i = 0; i < n; i++)
		loop_dispatch(loop, loop->deferred[i], 0, 0);
	loop->deferred_count -= n;
	memmove(loop->deferred, loop->deferred + n, loop->deferred_count * sizeof(*loop->deferred));
}

int loop_run(struct loop *loop)
{
	struct io_uring_cqe *cqes[LOOP_CQE_BATCH];
	struct {
		uint64_t user_data;
		int res;
		uint32_t flags;
	} batch[LOOP_CQE_BATCH];

	loop->stopping = false;
	while (!loop->stopping) {
		/* With nops queued, the ring's completions are gathered without
		 * waiting for one. */
		int rc = loop->deferred_count ? io_uring_submit_and_get_events(&loop->ring)
					      : io_uring_submit_and_wait(&loop->ring, 1);

		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
			log_error("loop", "io_uring_enter failed error=\"%s\"", strerror(-rc));
			return rc;
		}
		for (;;) {
			unsigned n = io_uring_peek_batch_cqe(&loop->ring, cqes, LOOP_CQE_BATCH);

			if (n == 0)
				break;
			/* Copy out and free the CQ slots before the callbacks run:
			 * they submit, and submitting may post more completions. */
			for (unsigned i = 0; i < n; i++) {
				batch[i].user_data = cqes[i]->user_data;
				batch[i].res = cqes[i]->res;
				batch[i].flags = cqes[i]->flags;
			}
			io_uring_cq_advance(&loop->ring, n);
			for (unsigned i = 0; i < n; i++)
				loop_dispatch(loop, batch[i].user_data, batch[i].res,
					      batch[i].flags);
			if (n < LOOP_CQE_BATCH)
				break;
		}
		loop_run_deferred(loop);
	}
	/* Whatever the last callbacks queued (a cancel, a close) goes out now. */
	io_uring_submit(&loop->ring);
	return 0;
}
