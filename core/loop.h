/* loop: the io_uring event loop every ringfly process runs (one per thread). */
#ifndef RINGFLY_CORE_LOOP_H
#define RINGFLY_CORE_LOOP_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct msghdr;

/*
 * Model: Redis ae.h, on io_uring. The caller owns operation records
 * (struct loop_op), usually embedded in the object the operation works for
 * (a connection, a listener). Submitting an operation hands the record to the
 * kernel until its last completion: for a one-shot operation the first
 * completion, for a multishot one the completion without LOOP_CQE_MORE. The
 * caller must not reuse or free the record before then. Completions call
 * op->done(op, res, flags) from loop_run(); `res` is the kernel's result (bytes,
 * a new fd, or a negative errno) and `flags` the CQE flags.
 *
 * Fire-and-forget operations (cancellations, the timeouts linked behind a
 * recv or a send) use records from a per-loop pool: nothing is allocated per
 * submission once the pool has grown to the working set.
 *
 * Each record carries a generation that travels in the high bits of the
 * submission's user_data. loop_op_init() bumps it, so a completion for a record
 * that was re-initialised (an owner closed and reused) is detected and
 * dropped instead of running a callback on the wrong owner.
 *
 * Nothing outside core/loop.c touches struct io_uring.
 */

struct loop;
struct loop_op;

typedef void (*loop_op_done_fn)(struct loop_op *op, int res, uint32_t flags);

struct loop_op {
	loop_op_done_fn done;
	void *owner;		 /* whatever the callback needs; the loop never reads it */
	uint16_t generation;	 /* bumped by loop_op_init(); see above */
	uint16_t loop_flags_;	 /* private to core/loop.c */
};

/* CQE flags as passed to callbacks. */
#define LOOP_CQE_BUFFER (1u << 0) /* a provided buffer was used: see loop_cqe_buffer_id */
#define LOOP_CQE_MORE (1u << 1)	  /* a multishot operation stays armed */

static inline uint16_t loop_cqe_buffer_id(uint32_t flags)
{
	return (uint16_t)(flags >> 16);
}

/* (Re)arms a record: sets the callback and owner, bumps the generation. */
void loop_op_init(struct loop_op *op, loop_op_done_fn done, void *owner);

struct loop_options {
	unsigned entries;	/* SQ entries; 0 = 256 */
	unsigned op_pool_size;	/* pooled records made at start; 0 = 256 */
};

/* What the ring could be set up with (probed at loop_create). */
struct loop_features {
	bool single_issuer;	/* IORING_SETUP_SINGLE_ISSUER */
	bool defer_taskrun;	/* IORING_SETUP_DEFER_TASKRUN */
	bool multishot_accept;
	bool multishot_recv;
	bool buf_ring;		/* provided-buffer rings */
	bool send_zc;
	bool splice;
};

/* Returns 0 and a new loop in *out (free with loop_destroy), or a negative errno. */
int loop_create(struct loop **out, const struct loop_options *options);
/* Closes the ring. Operations still in flight are abandoned (their records are
 * never called back): only for teardown after loop_run has returned. */
void loop_destroy(struct loop *loop);
const struct loop_features *loop_features(const struct loop *loop);

/* Runs until loop_stop(); returns 0 or a negative errno if the ring fails. */
int loop_run(struct loop *loop);
/* Makes loop_run return after the completions of the current batch. */
void loop_stop(struct loop *loop);
/* Operations submitted and not yet finished (records held by the kernel). */
unsigned loop_inflight(const struct loop *loop);

/* --- operations. Each returns 0 once queued (submitted at the next loop turn). */

/* Multishot accept on a listening socket; each completion's res is a new fd
 * (SOCK_CLOEXEC) or a negative errno. Re-arm when LOOP_CQE_MORE is missing. */
int loop_accept_multishot(struct loop *loop, struct loop_op *op, int listen_fd);

/* One-shot recv into buf[len] (borrowed until completion). timeout_ms > 0
 * links a timeout: the recv then completes with -ECANCELED if it expires. */
int loop_recv(struct loop *loop, struct loop_op *op, int fd, void *buf, size_t len,
	      unsigned timeout_ms);

/* Multishot recv into buffers of `group` (see loop_buf_group_create). Each
 * completion with res > 0 carries LOOP_CQE_BUFFER and a buffer id; hand the
 * buffer back with loop_buf_recycle. res == 0 is EOF; -ENOBUFS means the group
 * ran dry (the multishot ends; re-arm once buffers are back). */
int loop_recv_multishot(struct loop *loop, struct loop_op *op, int fd, uint16_t group);

/* One-shot recvmsg(2) into msg (borrowed with its buffers until completion),
 * e.g. to receive file descriptors (SCM_RIGHTS); res as for recv. */
int loop_recvmsg(struct loop *loop, struct loop_op *op, int fd, struct msghdr *msg,
		 unsigned flags);

/* One-shot send of buf[len] (borrowed until completion). res may be short:
 * the caller sends the rest. timeout_ms > 0 links a timeout as for recv. */
int loop_send(struct loop *loop, struct loop_op *op, int fd, const void *buf, size_t len,
	      unsigned timeout_ms);

/* One-shot read at `offset` (-1: the file position). */
int loop_read(struct loop *loop, struct loop_op *op, int fd, void *buf, size_t len,
	      int64_t offset);

/* One-shot write of buf[len] (borrowed until completion) at `offset` (-1:
 * the file position). res may be short: the caller writes the rest. */
int loop_write(struct loop *loop, struct loop_op *op, int fd, const void *buf, size_t len,
	       int64_t offset);

/* splice(2) on the ring: up to len bytes from fd_in (at offset_in, or -1 for
 * a pipe or socket) to fd_out (at offset_out, or -1). One end must be a pipe.
 * res is the bytes moved (0: the input reached EOF). Into a regular file the
 * kernel runs it on an io-wq worker. */
int loop_splice(struct loop *loop, struct loop_op *op, int fd_in, int64_t offset_in, int fd_out,
		int64_t offset_out, unsigned len);

/* A pipe for splices (O_CLOEXEC), asked to hold `size` bytes. Returns its
 * capacity in bytes, or -errno. Past fs.pipe-max-size or the user's pipe
 * pages the kernel refuses the size and the pipe keeps its default (64 KiB):
 * it works, in smaller chunks. That costs speed, so it is logged, naming
 * `who`, the first time *warned is false (then set). */
int loop_pipe_open(int fds[2], uint32_t size, bool *warned, const char *who);

/* fdatasync (datasync true) or fsync of fd. */
int loop_fsync(struct loop *loop, struct loop_op *op, int fd, bool datasync);

/* Timeout after timeout_ms: res is -ETIME when it fires, -ECANCELED when
 * removed with loop_cancel_op. */
int loop_timeout(struct loop *loop, struct loop_op *op, uint64_t timeout_ms);

/* Asks the kernel to cancel `target` (a record in flight). Its completion then
 * arrives with -ECANCELED (or its real result if it was already finishing). */
int loop_cancel_op(struct loop *loop, struct loop_op *target);
/* Cancels every operation in flight on `fd`. */
int loop_cancel_fd(struct loop *loop, int fd);

/* One-shot poll for `events` (POLLIN, POLLOUT, ...) on fd: res is the
 * revents mask, or a negative errno (-ECANCELED once cancelled). */
int loop_poll(struct loop *loop, struct loop_op *op, int fd, unsigned events);

/* A no-op that completes at the next turn (res 0): to run a callback soon.
 * Queued in user space, not on the ring (a full ring cannot lose it):
 * fails only without memory (-ENOMEM). */
int loop_nop(struct loop *loop, struct loop_op *op);

/* --- provided-buffer rings (multishot recv). */

/* Creates a ring of `count` buffers (a power of two, <= 32768) of `size`
 * bytes each, registered as a new buffer group; its id goes to *group. */
int loop_buf_group_create(struct loop *loop, unsigned count, unsigned size, uint16_t *group);
/* The memory of buffer `buffer_id` of `group` (valid until recycled). */
void *loop_buf_data(struct loop *loop, uint16_t group, uint16_t buffer_id);
/* Returns buffer `buffer_id` to `group` for the kernel to fill again. */
void loop_buf_recycle(struct loop *loop, uint16_t group, uint16_t buffer_id);

/* --- signals. */

typedef void (*loop_signal_fn)(struct loop *loop, int signo, void *arg);

/* Blocks `signals` for the process and delivers them through a signalfd read
 * on the ring: fn(loop, signo, arg) runs from loop_run. One handler per loop. */
int loop_signals(struct loop *loop, const sigset_t *signals, loop_signal_fn fn, void *arg);

#endif
