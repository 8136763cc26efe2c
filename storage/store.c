/* store: the node's cache: task content files, piece writes on the loop, recovery, GC. */

/*
 * Why a recorded piece is always a good piece
 * -------------------------------------------
 * A piece moves through four states, in this order, and only the last one is
 * visible in the metadata:
 *
 *   1. written:  its bytes are at their offset in the content file, by
 *                splice (socket -> pipe -> file, never in user space), by
 *                recv + write, or by write from a buffer;
 *   2. checked:  the crc32c of exactly those bytes matches: read back from the
 *                page cache after each splice into the file (while the bytes
 *                are still in the CPU's cache), computed on the buffer
 *                otherwise;
 *   3. synced:   the step a batch of checked pieces goes through before it
 *                is recorded (batched per task: after sync_batch_pieces
 *                pieces or sync_delay_ms, whichever first). With
 *                options.sync STORE_SYNC_PIECES it is an fdatasync of the
 *                content file that started after the pieces were checked;
 *                with STORE_SYNC_TASK (the default) a turn of the loop;
 *   4. recorded: one LMDB transaction adds the piece rows (durable at commit).
 *
 * A task is marked complete (store_task_finish) only after an fdatasync that
 * started once its last piece was recorded has ended: in STORE_SYNC_TASK mode
 * the recording of the last piece starts one of the whole file, beside the
 * digest check, and a finish waits for it (-EINPROGRESS, then the checked
 * callback, as for the digest). A recorded piece of an
 * incomplete task may not be on disk yet (STORE_SYNC_TASK): its bytes are
 * in the page cache, which outlives the daemon (kill -9, OOM), not a power
 * loss. That costs nothing to be sure of: recovery (store_recover) re-checks
 * every row of every incomplete task against its bytes at each start, and
 * drops any that does not match (a range never written back reads as zeros
 * from its unwritten extent). Complete tasks are trusted: they were synced.
 * Syncing each batch (STORE_SYNC_PIECES) only spares the refetch of what a
 * power loss took, and costs about 15 % of a peer's receive speed on the
 * project's VM (writeback and the inode's locks beside the incoming splices:
 * bench/README.md).
 *
 * Syncs run back to back while pieces keep coming, so the disk writes as the
 * bytes arrive and little is left to sync at the end; each one covers what
 * was checked while the one before ran, often two or three pieces. Recording
 * is batched apart from syncing: a commit is an fdatasync of its own, done on
 * the loop, so the pieces of several syncs go into one transaction (up to
 * sync_batch_pieces, at most sync_delay_ms after their sync, and at once
 * when no sync follows). Waiting longer to be recorded only makes the
 * metadata lag further behind the data, which a crash already allows.
 *
 * A crash anywhere leaves nothing believed that does not match its crc:
 * bytes without a row are simply fetched again, rows of incomplete tasks are
 * re-checked. Recovery also removes metadata whose file is gone and files
 * that have no metadata. A task is deleted metadata first, file second, so a
 * crash in between leaves an orphan file, which recovery removes, and never a
 * row pointing at nothing.
 *
 * The content file is created and fallocated before the task's metadata is
 * written: a full disk is reported before any byte is fetched, and a crash in
 * between leaves an orphan file, not a task without storage. On tmpfs (with
 * options.preallocate auto, the default; never: everywhere) the content
 * file is only sized (sparse) after a check of the free space:
 * fallocate there allocates and zeroes the task's whole length in memory at
 * once, in the loop, before a byte can arrive (0.2-2.5 s per GiB on the
 * project's VM, nine daemons of a swarm at the same moment), and the writes
 * that follow allocate the same pages anyway, a piece at a time. The early
 * "no space" signal stays; a reservation against concurrent tasks does not
 * (a write that meets a full tmpfs fails the task as on any full disk;
 * options.preallocate always keeps the reservation, and the cost).
 */

#include "storage/store.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/hash.h"
#include "core/log.h"
#include "storage/piece.h"

#define STORE_CHUNK_SIZE (1u << 20)	/* read-back, recv and copy unit */
#define STORE_JOB_NAME_MAX 512u		/* an import's source name kept for messages */
#define STORE_HASH_SLICE (4u << 20)	/* digest check: bytes per task per loop turn */
#define STORE_HASH_TURN (8u << 20)	/* digest checks: bytes per loop turn in all */
#define STORE_PIPE_SIZE (1u << 20)
#define STORE_SYNC_BATCH_DEFAULT 16u
#define STORE_SYNC_DELAY_DEFAULT_MS 20u
#define STORE_GC_TTL_DEFAULT_MS (6ll * 3600 * 1000)
#define STORE_GC_INTERVAL_DEFAULT_MS 60000ll
#define STORE_GC_HIGH_DEFAULT 90u
#define STORE_GC_LOW_DEFAULT 70u
#define STORE_POOL_KEEP 16u		/* idle chunks and pipes kept for reuse */
#define STORE_DRY_WAKES_MAX 64u		/* "readable" yet nothing to take: the stream is stuck */

enum piece_stage {
	PIECE_SPLICE_IN,	/* socket -> pipe: a poll, then splice() on the loop */
	PIECE_SPLICE_OUT,	/* pipe -> file */
	PIECE_RECV,		/* socket -> chunk */
	PIECE_WRITE,		/* chunk or caller's buffer -> file */
	PIECE_READBACK,		/* file -> chunk, for the crc */
	PIECE_WAIT_SYNC,	/* checked; waiting for fdatasync + record */
};

struct piece_write {
	struct store_task *task;
	struct piece_write *next;
	struct loop_op op;
	enum piece_stage stage;
	uint32_t number;
	uint64_t offset;	/* of the piece in the file */
	uint32_t size;
	uint32_t moved;		/* bytes at their place in the file */
	uint32_t checked;	/* bytes covered by crc */
	uint32_t crc;
	bool has_crc;
	uint32_t expected_crc;
	int sock_fd;
	const uint8_t *source;	/* buffer mode */
	int pipe_fds[2];	/* splice mode */
	uint32_t in_pipe;
	bool polling;		/* op is a poll for the socket's next bytes */
	uint32_t dry_wakes;	/* polls in a row that found nothing to take */
	uint8_t *chunk;		/* recv and read-back */
	uint32_t chunk_len, chunk_done;
	int res;		/* final result for done() */
	store_piece_done_fn received;	/* optional: every byte is off the socket */
	store_piece_done_fn on_checked;	/* optional: in the file, crc matched */
	uint64_t *progress_ms;		/* optional: when bytes last came off it */
	store_piece_done_fn done;
	void *arg;
};

struct store_task {
	struct store *store;
	struct store_task *prev, *next;
	unsigned refs;
	unsigned writes;		/* piece writes not yet done() */
	int fd;
	struct meta_task info;
	uint8_t *recorded;		/* bitmap of recorded pieces */
	uint8_t *writing;		/* bitmap of pieces with a write in flight */
	uint32_t *crcs;			/* crc of each recorded piece */
	bool failed;
	bool discard;			/* delete when the last reference goes */
	bool detached;			/* deleted already, off open_tasks: nobody finds it */
	char error[256];

	struct piece_write *waiting;	/* checked, waiting for the next sync */
	unsigned waiting_count;
	struct piece_write *syncing;	/* covered by the fdatasync in flight */
	unsigned syncing_count;
	struct piece_write *durable;	/* synced, recorded with the next sync's */
	unsigned durable_count;
	uint64_t durable_since_ms;	/* when the oldest of them became durable */
	struct meta_piece *rows;	/* one transaction's rows, reused */
	size_t rows_cap;
	bool sync_in_flight;
	bool sync_timer_armed;
	struct loop_op sync_op;
	struct loop_op sync_timer_op;

	/* The digest check of a task with a digest: its content hashed from
	 * the start as its pieces are recorded, a slice per loop turn, so that
	 * finishing does not read the whole file at once in the loop. */
	struct hash_sha256 *hash;
	uint64_t hashed;		/* bytes of content hashed, from 0 */
	bool hash_queued;		/* on store->hash_queue */
	unsigned hash_turn;		/* the last store->hash_turn that hashed it */
	struct store_task *hash_next;
	store_task_checked_fn checked;	/* store_task_on_checked */
	void *checked_arg;
	bool finish_waiting;		/* a finish (or a sha256) returned -EINPROGRESS */
	bool digest_checked;		/* the finish's digest check passed (no record since) */

	/* STORE_SYNC_TASK: the fdatasync of the whole file a finish waits for. */
	uint64_t record_gen;		/* bumped by every record of rows */
	uint64_t synced_gen;		/* the record_gen an ended whole-file sync covered */
	uint64_t whole_sync_gen;	/* ... the one in flight covers */
	bool whole_sync_in_flight;
	struct loop_op whole_sync_op;
	bool sha_wanted;		/* a complete task without a digest: compute it */
	int sha_error;			/* ... and reading it failed */
};

struct store {
	struct loop *loop;
	struct store_options options;
	char data_dir[PATH_MAX];
	char content_dir[PATH_MAX];
	bool sparse;			/* no fallocate: options.preallocate (top of file) */
	struct meta *meta;
	struct store_task *open_tasks;

	struct piece_write *free_writes;
	uint8_t *free_chunks[STORE_POOL_KEEP];
	unsigned free_chunk_count;
	int free_pipes[STORE_POOL_KEEP][2];
	unsigned free_pipe_count;
	bool pipe_size_warned;		/* F_SETPIPE_SZ refused: logged once */

	struct loop_op gc_op;
	bool gc_armed;
	int lock_fd;			/* flock on <data_dir>/lock: one daemon per data dir */
	unsigned long long job_seq;	/* names imports' temp files */

	/* Tasks whose digest check has recorded pieces to hash: a slice of
	 * each per loop turn (the op is the store's, so a task can go at any
	 * time without an operation in flight for it). */
	struct store_task *hash_queue;
	struct loop_op hash_op;
	bool hash_armed;
	bool hash_at_once;		/* store_hash_arm's fallback is running */
	unsigned hash_turn;

	store_observer_fn observer;
	void *observer_arg;
	uint64_t content_syncs;		/* store_content_syncs */
};

static void piece_step(struct piece_write *w);
static void piece_splice_in(struct piece_write *w);
static void task_sync_start(struct store_task *task);
static void task_whole_sync_start(struct store_task *task);
static bool job_tmp_ours(const char *name);
static void task_hash_kick(struct store_task *task);
static void task_hash_reset(struct store_task *task);
static void task_hash_unqueue(struct store_task *task);

static void notify(struct store_task *task, enum store_event event, uint32_t number)
{
	if (task->store->observer)
		task->store->observer(task->store->observer_arg, task, event, number);
}

uint64_t store_content_syncs(const struct store *store)
{
	return store->content_syncs;
}

void store_set_observer(struct store *store, store_observer_fn fn, void *arg)
{
	store->observer = fn;
	store->observer_arg = arg;
}

/* --- small helpers. */

static void id_hex(const uint8_t id[META_ID_SIZE], char out[HASH_SHA256_HEX_SIZE])
{
	hash_hex(id, out);
}

void store_content_path(const struct store *store, const uint8_t id[META_ID_SIZE], char *out,
			size_t out_size)
{
	char hex[HASH_SHA256_HEX_SIZE];

	id_hex(id, hex);
	snprintf(out, out_size, "%s/%.2s/%s", store->content_dir, hex, hex);
}

static uint64_t store_free_bytes(const struct store *store)
{
	struct statvfs st;

	if (statvfs(store->data_dir, &st) < 0)
		return 0;
	return (uint64_t)st.f_bavail * st.f_frsize;
}

/* tmpfs (see the top of this file): the free space is checked, the file
 * only sized. */
static int store_size_sparse(const struct store *store, int fd, uint64_t length)
{
	if (store_free_bytes(store) < length)
		return -ENOSPC;
	return ftruncate(fd, (off_t)length) < 0 ? -errno : 0;
}

static int mkdir_if_missing(const char *path, mode_t mode)
{
	if (mkdir(path, mode) == 0 || errno == EEXIST)
		return 0;
	return -errno;
}

static bool bit_get(const uint8_t *bits, uint32_t n)
{
	return bits[n / 8] & (1u << (n % 8));
}

static void bit_set(uint8_t *bits, uint32_t n, bool on)
{
	if (on)
		bits[n / 8] |= (uint8_t)(1u << (n % 8));
	else
		bits[n / 8] &= (uint8_t)~(1u << (n % 8));
}

/* --- pools: piece writes, chunks, pipes. Grown to the working set, then reused. */

static struct piece_write *pool_get_write(struct store *store)
{
	struct piece_write *w = store->free_writes;

	if (w)
		store->free_writes = w->next;
	else if (!(w = malloc(sizeof(*w))))
		return NULL;
	memset(w, 0, sizeof(*w));
	w->pipe_fds[0] = w->pipe_fds[1] = -1;
	w->sock_fd = -1;
	return w;
}

static uint8_t *pool_get_chunk(struct store *store)
{
	if (store->free_chunk_count)
		return store->free_chunks[--store->free_chunk_count];
	return malloc(STORE_CHUNK_SIZE);
}

static void pool_put_chunk(struct store *store, uint8_t *chunk)
{
	if (!chunk)
		return;
	if (store->free_chunk_count < STORE_POOL_KEEP)
		store->free_chunks[store->free_chunk_count++] = chunk;
	else
		free(chunk);
}

static int pool_get_pipe(struct store *store, int fds[2])
{
	int rc;

	if (store->free_pipe_count) {
		store->free_pipe_count--;
		fds[0] = store->free_pipes[store->free_pipe_count][0];
		fds[1] = store->free_pipes[store->free_pipe_count][1];
		return 0;
	}
	rc = loop_pipe_open(fds, STORE_PIPE_SIZE, &store->pipe_size_warned, store->data_dir);
	return rc < 0 ? rc : 0;
}

/* A pipe goes back to the pool only empty; one with bytes left is closed. */
static void pool_put_pipe(struct store *store, int fds[2], bool empty)
{
	if (fds[0] < 0)
		return;
	if (empty && store->free_pipe_count < STORE_POOL_KEEP) {
		store->free_pipes[store->free_pipe_count][0] = fds[0];
		store->free_pipes[store->free_pipe_count][1] = fds[1];
		store->free_pipe_count++;
	} else {
		close(fds[0]);
		close(fds[1]);
	}
	fds[0] = fds[1] = -1;
}

/* --- task failure and completion of piece writes. */

static void task_fail(struct store_task *task, int err, const char *what)
{
	char hex[HASH_SHA256_HEX_SIZE];

	if (task->failed)
		return;
	task->failed = true;
	id_hex(task->info.id, hex);
	if (err == -ENOSPC)
		snprintf(task->error, sizeof(task->error),
			 "data dir %s: no space left on device (%llu bytes free) while %s "
			 "task %s", task->store->data_dir,
			 (unsigned long long)store_free_bytes(task->store), what, hex);
	else
		snprintf(task->error, sizeof(task->error), "data dir %s: %s while %s task %s",
			 task->store->data_dir, strerror(-err), what, hex);
	log_error("store", "task failed reason=\"%s\"", task->error);
	/* A detached task's id may be another task's now: its record is not ours. */
	if (!task->detached)
		meta_task_set_state(task->store->meta, task->info.id, META_TASK_FAILED);
	task->info.state = META_TASK_FAILED;
	notify(task, STORE_EVENT_FAILED, 0);
}

static void piece_release(struct piece_write *w, bool report, int res);

/* Reports a piece write's result and returns its resources to the pools. */
static void piece_finish(struct piece_write *w, int res)
{
	piece_release(w, true, res);
}

static void piece_release(struct piece_write *w, bool report, int res)
{
	struct store_task *task = w->task;
	struct store *store = task->store;

	pool_put_pipe(store, w->pipe_fds, w->in_pipe == 0);
	pool_put_chunk(store, w->chunk);
	w->chunk = NULL;
	assert(task->writes > 0);
	task->writes--;
	bit_set(task->writing, w->number, false);
	if (report)
		w->done(task, w->number, res, w->arg);
	w->next = store->free_writes;
	store->free_writes = w;
	store_task_release(task); /* the reference the write held */
}

/* --- durability: batched fdatasync, then one metadata transaction. */

static void task_finish_call_back(struct store_task *task)
{
	if (task->finish_waiting && !task->hash_queued && !task->whole_sync_in_flight &&
	    task->checked) {
		task->finish_waiting = false;
		task->checked(task->checked_arg, task->info.id);
	}
}

static void task_whole_sync_done(struct loop_op *op, int res, uint32_t flags)
{
	struct store_task *task = op->owner;

	(void)flags;
	task->whole_sync_in_flight = false;
	if (res < 0)
		task_fail(task, res, "syncing");
	else if (task->whole_sync_gen > task->synced_gen)
		task->synced_gen = task->whole_sync_gen; /* a finish may have synced later ones */
	task_finish_call_back(task);
	store_task_release(task); /* the sync's reference */
}

/* STORE_SYNC_TASK: one fdatasync of the whole file, which covers every piece
 * recorded before it starts; a finish waits for it (store_task_finish). The
 * operation holds a reference. Without a ring to submit it on, it runs here. */
static void task_whole_sync_start(struct store_task *task)
{
	struct store *store = task->store;

	if (task->whole_sync_in_flight || task->failed ||
	    task->synced_gen == task->record_gen)
		return;
	task->whole_sync_gen = task->record_gen;
	task->whole_sync_in_flight = true;
	task->refs++;
	store->content_syncs++;
	loop_op_init(&task->whole_sync_op, task_whole_sync_done, task);
	if (!store->loop || loop_fsync(store->loop, &task->whole_sync_op, task->fd, true) < 0)
		task_whole_sync_done(&task->whole_sync_op, fdatasync(task->fd) < 0 ? -errno : 0,
				     0);
}

/* Records `list` (durable pieces) in one transaction, all or none, unless
 * rc already says why not; returns the result for their piece_finish. */
static int task_record(struct store_task *task, struct piece_write *list, int rc)
{
	struct piece_write *w;
	size_t n = 0;
	int res = rc;

	for (w = list; rc == 0 && w; w = w->next) {
		if (n == task->rows_cap) {
			size_t cap = task->rows_cap ? task->rows_cap * 2 : 32;
			struct meta_piece *grown = realloc(task->rows, cap * sizeof(*grown));

			if (!grown) {
				rc = -ENOMEM;
				break;
			}
			task->rows = grown;
			task->rows_cap = cap;
		}
		task->rows[n].number = w->number;
		task->rows[n].crc32c = w->crc;
		n++;
	}
	if (rc == 0 && n)
		rc = meta_pieces_record(task->store->meta, task->info.id, task->rows, n);
	if (rc < 0 && res == 0)
		task_fail(task, rc, "recording pieces of");
	if (rc == 0 && n) {
		for (w = list; w; w = w->next) {
			bit_set(task->recorded, w->number, true);
			task->crcs[w->number] = w->crc;
		}
		task->record_gen++;
		task->digest_checked = false;
		meta_task_get(task->store->meta, task->info.id, &task->info);
		/* Whole now: its fdatasync starts at once, beside the digest
		 * check, rather than when someone asks to finish it. */
		if (task->store->options.sync == STORE_SYNC_TASK &&
		    task->info.pieces_done == task->info.piece_count)
			task_whole_sync_start(task);
		for (w = list; w; w = w->next)
			notify(task, STORE_EVENT_PIECE, w->number);
		task_hash_kick(task);
	}
	return rc;
}

static void task_sync_done(struct loop_op *op, int res, uint32_t flags)
{
	struct store_task *task = op->owner;
	struct store *store = task->store;
	struct piece_write *list = task->syncing, *w;
	uint64_t now_ms = clock_monotonic_ms();
	bool again;
	int rc = res;

	(void)flags;
	task->sync_in_flight = false;
	if (list) {
		for (w = list; w->next; w = w->next)
			;
		w->next = task->durable;
		task->durable = list;
		if (!task->durable_count)
			task->durable_since_ms = now_ms;
		task->durable_count += task->syncing_count;
	}
	task->syncing = NULL;
	task->syncing_count = 0;
	if (rc < 0)
		task_fail(task, rc, "syncing");
	else if (task->failed)
		rc = -EIO; /* a failed earlier sync may have lost these pages */

	/* Pieces that finished waiting meanwhile go into the next sync now;
	 * the durable ones are recorded with its pieces when it ends, unless
	 * they are a batch already or have waited long enough. */
	again = task->waiting_count && !task->sync_timer_armed;
	list = NULL;
	if (rc < 0 || !again || task->durable_count >= store->options.sync_batch_pieces ||
	    now_ms - task->durable_since_ms >= store->options.sync_delay_ms) {
		list = task->durable;
		task->durable = NULL;
		task->durable_count = 0;
		rc = task_record(task, list, rc);
	}
	if (again)
		task_sync_start(task);
	while (list) {
		w = list;
		list = list->next;
		piece_finish(w, rc < 0 ? (rc == -EEXIST ? -EIO : rc) : 0);
	}
}

static void task_sync_start(struct store_task *task)
{
	struct store *store = task->store;
	int rc;

	if (task->sync_in_flight || !task->waiting)
		return;
	if (task->sync_timer_armed)
		loop_cancel_op(store->loop, &task->sync_timer_op);
	task->syncing = task->waiting;
	task->syncing_count = task->waiting_count;
	task->waiting = NULL;
	task->waiting_count = 0;
	loop_op_init(&task->sync_op, task_sync_done, task);
	/* STORE_SYNC_TASK: a turn of the loop, no fdatasync: the finish waits
	 * for one of the whole file (task_whole_sync_start). */
	if (store->options.sync == STORE_SYNC_PIECES) {
		rc = loop_fsync(store->loop, &task->sync_op, task->fd, true);
		if (rc == 0)
			store->content_syncs++;
	} else {
		rc = loop_nop(store->loop, &task->sync_op);
	}
	if (rc < 0) {
		task_sync_done(&task->sync_op, rc, 0);
		return;
	}
	task->sync_in_flight = true;
}

/* The timer holds a reference: the task outlives it even when the pieces
 * it was armed for finish through an earlier sync. */
static void task_sync_timer_done(struct loop_op *op, int res, uint32_t flags)
{
	struct store_task *task = op->owner;

	(void)flags;
	task->sync_timer_armed = false;
	/* Cancelled (res -ECANCELED) by a sync that started: pieces checked
	 * since then were left for that sync's end, which does not start
	 * another while this timer counts as armed. If it ended first,
	 * nothing else would sync them: this does (a no-op while a sync is
	 * in flight or nothing waits). */
	(void)res;
	task_sync_start(task);
	store_task_release(task);
}

static void piece_checked(struct piece_write *w)
{
	struct store_task *task = w->task;
	struct store *store = task->store;

	if (w->has_crc && w->crc != w->expected_crc) {
		char hex[HASH_SHA256_HEX_SIZE];

		id_hex(task->info.id, hex);
		log_warn("store", "piece does not match its crc task=%s piece=%u expected=%08x "
			 "got=%08x", hex, w->number, w->expected_crc, w->crc);
		piece_finish(w, -EBADMSG);
		return;
	}
	w->source = NULL; /* buffer mode: the caller's buffer is free again */
	if (w->on_checked) {
		/* The bytes can be read from the file; durability (maybe the
		 * whole file's) and the record follow. */
		store_piece_done_fn checked = w->on_checked;

		w->on_checked = NULL;
		checked(task, w->number, 0, w->arg);
	}
	/* Nothing reads into the chunk or splices through the pipe any more:
	 * both go back to the pools now, not once the piece is recorded (a
	 * piece may wait for its sync and record for a while). */
	pool_put_pipe(store, w->pipe_fds, w->in_pipe == 0);
	pool_put_chunk(store, w->chunk);
	w->chunk = NULL;
	w->stage = PIECE_WAIT_SYNC;
	w->next = task->waiting;
	task->waiting = w;
	task->waiting_count++;
	/* Sync now when the batch is full, or when no other piece of the task
	 * is still moving: nothing could join the batch by waiting. */
	if (task->waiting_count >= store->options.sync_batch_pieces ||
	    task->writes == task->waiting_count + task->syncing_count + task->durable_count) {
		task_sync_start(task);
	} else if (!task->sync_timer_armed && !task->sync_in_flight) {
		loop_op_init(&task->sync_timer_op, task_sync_timer_done, task);
		if (loop_timeout(store->loop, &task->sync_timer_op, store->options.sync_delay_ms) == 0) {
			task->sync_timer_armed = true;
			task->refs++;
		} else {
			task_sync_start(task);
		}
	}
}

/* --- the piece write state machine. */

/* Every byte of the piece is off the socket: the caller may start reading the
 * next piece from it while this one is written, checked and synced. */
static void piece_received(struct piece_write *w)
{
	store_piece_done_fn received = w->received;

	w->received = NULL;
	w->sock_fd = -1;
	if (received)
		received(w->task, w->number, 0, w->arg);
}

static void piece_op_done(struct loop_op *op, int res, uint32_t flags)
{
	struct piece_write *w = op->owner;
	struct store_task *task = w->task;

	(void)flags;
	if (w->polling) {
		w->polling = false;
		if (res >= 0) {
			piece_splice_in(w);
			return;
		}
	}
	if (res < 0 || (res == 0 && w->stage != PIECE_READBACK)) {
		bool disk = w->stage == PIECE_SPLICE_OUT || w->stage == PIECE_WRITE ||
			    w->stage == PIECE_READBACK;

		if (res == 0 && (w->stage == PIECE_SPLICE_IN || w->stage == PIECE_RECV))
			res = -EPIPE; /* the peer closed before the piece was whole */
		else if (res == 0)
			res = -EIO;
		if (disk)
			task_fail(task, res, "writing");
		piece_finish(w, res);
		return;
	}

	switch (w->stage) {
	case PIECE_SPLICE_IN:
		if (w->progress_ms)
			*w->progress_ms = clock_monotonic_ms();
		w->in_pipe = (uint32_t)res;
		w->stage = PIECE_SPLICE_OUT;
		if (w->moved + w->in_pipe == w->size)
			piece_received(w);
		break;
	case PIECE_SPLICE_OUT:
		w->in_pipe -= (uint32_t)res;
		w->moved += (uint32_t)res;
		/* Read the chunk back now, while its bytes are still in the
		 * CPU's cache, not after the whole piece. */
		if (w->in_pipe == 0)
			w->stage = PIECE_READBACK;
		break;
	case PIECE_RECV:
		if (w->progress_ms)
			*w->progress_ms = clock_monotonic_ms();
		/* The bytes are in user space: crc them here, no read-back. A
		 * chunk is filled before it is written: half the operations. */
		w->crc = hash_crc32c_extend(w->crc, w->chunk + w->chunk_len, (size_t)res);
		w->checked += (uint32_t)res;
		w->chunk_len += (uint32_t)res;
		if (w->chunk_len == STORE_CHUNK_SIZE || w->checked == w->size) {
			w->chunk_done = 0;
			w->stage = PIECE_WRITE;
		}
		if (w->checked == w->size)
			piece_received(w);
		break;
	case PIECE_WRITE:
		w->moved += (uint32_t)res;
		w->chunk_done += (uint32_t)res;
		if (w->source) {
			if (w->moved == w->size) {
				w->crc = hash_crc32c(w->source, w->size);
				w->checked = w->size;
			}
		} else if (w->chunk_done == w->chunk_len) {
			w->chunk_len = 0;
			w->stage = PIECE_RECV;
		}
		break;
	case PIECE_READBACK:
		if (res == 0) { /* the file is shorter than what we just wrote */
			task_fail(task, -EIO, "reading back");
			piece_finish(w, -EIO);
			return;
		}
		w->crc = hash_crc32c_extend(w->crc, w->chunk, (size_t)res);
		w->checked += (uint32_t)res;
		if (w->checked == w->moved && w->moved < w->size)
			w->stage = PIECE_SPLICE_IN;
		break;
	case PIECE_WAIT_SYNC:
		assert(!"no operation runs while waiting for sync");
		break;
	}
	piece_step(w);
}

/* The socket has bytes (or an error, or its end): move them into the empty
 * pipe here, on the loop. splice() cannot wait: what is there is taken and
 * nothing more. io_uring would hand a splice to an io-wq worker that blocks
 * in it until the bytes come: a kernel thread per waiting connection, and a
 * wake-up per chunk. */
static void piece_splice_in(struct piece_write *w)
{
	uint32_t left = w->size - w->moved;
	ssize_t n;

	if (left > STORE_PIPE_SIZE)
		left = STORE_PIPE_SIZE;
	n = splice(w->sock_fd, NULL, w->pipe_fds[1], NULL, left,
		   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		/* A wake-up with nothing to take: wait again. Over and over
		 * means bytes splice() cannot take (TCP urgent data, which no
		 * peer of ours sends): give the piece up rather than spin. */
		int rc;

		if (++w->dry_wakes > STORE_DRY_WAKES_MAX) {
			piece_op_done(&w->op, -EPROTO, 0);
			return;
		}
		loop_op_init(&w->op, piece_op_done, w);
		w->polling = true;
		rc = loop_poll(w->task->store->loop, &w->op, w->sock_fd, POLLIN);
		if (rc < 0)
			piece_finish(w, rc);
		return;
	}
	w->dry_wakes = 0;
	piece_op_done(&w->op, n < 0 ? -errno : (int)n, 0);
}

/* Submits the next operation of w, or moves it on when it has none. */
static void piece_step(struct piece_write *w)
{
	struct store_task *task = w->task;
	struct store *store = task->store;
	struct loop *loop = store->loop;
	uint32_t left;
	int rc = 0;

	if (w->moved == w->size && w->checked == w->size) {
		piece_checked(w);
		return;
	}
	if (w->moved == w->size && w->stage != PIECE_READBACK)
		w->stage = PIECE_READBACK;

	loop_op_init(&w->op, piece_op_done, w);
	switch (w->stage) {
	case PIECE_SPLICE_IN:
		w->polling = true;
		rc = loop_poll(loop, &w->op, w->sock_fd, POLLIN);
		break;
	case PIECE_SPLICE_OUT:
		rc = loop_splice(loop, &w->op, w->pipe_fds[0], -1, task->fd,
				 (int64_t)(w->offset + w->moved), w->in_pipe);
		break;
	case PIECE_RECV:
		left = w->size - w->checked;
		if (left > STORE_CHUNK_SIZE - w->chunk_len)
			left = STORE_CHUNK_SIZE - w->chunk_len;
		rc = loop_recv(loop, &w->op, w->sock_fd, w->chunk + w->chunk_len, left, 0);
		break;
	case PIECE_WRITE:
		if (w->source)
			rc = loop_write(loop, &w->op, task->fd, w->source + w->moved,
					w->size - w->moved, (int64_t)(w->offset + w->moved));
		else
			rc = loop_write(loop, &w->op, task->fd, w->chunk + w->chunk_done,
					w->chunk_len - w->chunk_done,
					(int64_t)(w->offset + w->moved));
		break;
	case PIECE_READBACK:
		if (!w->chunk && !(w->chunk = pool_get_chunk(store))) {
			rc = -ENOMEM;
			break;
		}
		left = w->moved - w->checked;
		rc = loop_read(loop, &w->op, task->fd, w->chunk,
			       left < STORE_CHUNK_SIZE ? left : STORE_CHUNK_SIZE,
			       (int64_t)(w->offset + w->checked));
		break;
	case PIECE_WAIT_SYNC:
		assert(!"unreachable");
		break;
	}
	if (rc < 0)
		piece_finish(w, rc);
}

static int piece_begin(struct store_task *task, uint32_t number, bool has_crc, uint32_t crc32c,
		       store_piece_done_fn done, void *arg, struct piece_write **out)
{
	struct store *store = task->store;
	struct piece_write *w;

	if (task->failed)
		return -EIO;
	if (number >= task->info.piece_count)
		return -EINVAL;
	if (bit_get(task->recorded, number))
		return -EALREADY;
	/* Two writers of one piece would write over each other's checked
	 * bytes (one from a parent that lies, say): one at a time. */
	if (bit_get(task->writing, number))
		return -EBUSY;
	w = pool_get_write(store);
	if (!w)
		return -ENOMEM;
	bit_set(task->writing, number, true);
	w->task = task;
	w->number = number;
	w->offset = piece_offset(task->info.piece_length, number);
	w->size = piece_size(task->info.content_length, task->info.piece_length, number);
	w->has_crc = has_crc;
	w->expected_crc = crc32c;
	w->done = done;
	w->arg = arg;
	task->refs++; /* held until done() */
	task->writes++;
	*out = w;
	return 0;
}

int store_piece_from_socket(struct store_task *task, uint32_t number, int sock_fd, bool has_crc,
			    uint32_t crc32c, store_piece_done_fn done, void *arg)
{
	return store_piece_from_stream(task, number, sock_fd, has_crc, crc32c, NULL, NULL, done,
				       arg, NULL);
}

int store_piece_from_stream(struct store_task *task, uint32_t number, int sock_fd, bool has_crc,
			    uint32_t crc32c, store_piece_done_fn received,
			    store_piece_done_fn checked, store_piece_done_fn done, void *arg,
			    uint64_t *progress_ms)
{
	struct store *store = task->store;
	struct piece_write *w;
	int rc = piece_begin(task, number, has_crc, crc32c, done, arg, &w);

	if (rc < 0)
		return rc;
	w->sock_fd = sock_fd;
	w->received = received;
	w->on_checked = checked;
	w->progress_ms = progress_ms;
	if (store->options.socket_path == STORE_SOCKET_SPLICE) {
		int fl = fcntl(sock_fd, F_GETFL);

		/* splice() on the loop must never wait for bytes. */
		if (fl >= 0 && !(fl & O_NONBLOCK))
			fcntl(sock_fd, F_SETFL, fl | O_NONBLOCK);
		rc = pool_get_pipe(store, w->pipe_fds);
		w->stage = PIECE_SPLICE_IN;
	} else {
		w->chunk = pool_get_chunk(store);
		rc = w->chunk ? 0 : -ENOMEM;
		w->stage = PIECE_RECV;
	}
	if (rc < 0) {
		piece_release(w, false, rc);
		return rc;
	}
	piece_step(w);
	return 0;
}

int store_piece_from_buffer(struct store_task *task, uint32_t number, const void *buf, size_t len,
			    bool has_crc, uint32_t crc32c, store_piece_done_fn written,
			    store_piece_done_fn done, void *arg)
{
	struct piece_write *w;
	int rc;

	if (number < task->info.piece_count &&
	    len != piece_size(task->info.content_length, task->info.piece_length, number))
		return -EINVAL;
	rc = piece_begin(task, number, has_crc, crc32c, done, arg, &w);
	if (rc < 0)
		return rc;
	w->source = buf;
	w->on_checked = written;
	w->stage = PIECE_WRITE;
	piece_step(w);
	return 0;
}

/* --- tasks. */

static int task_load_pieces_one(const struct meta_piece *piece, void *arg)
{
	struct store_task *task = arg;

	if (piece->number < task->info.piece_count) {
		bit_set(task->recorded, piece->number, true);
		task->crcs[piece->number] = piece->crc32c;
	}
	return 0;
}

static struct store_task *task_lookup(struct store *store, const uint8_t id[META_ID_SIZE])
{
	for (struct store_task *t = store->open_tasks; t; t = t->next)
		if (memcmp(t->info.id, id, META_ID_SIZE) == 0)
			return t;
	return NULL;
}

static void task_free(struct store_task *task)
{
	task_hash_unqueue(task);
	if (task->fd >= 0)
		close(task->fd);
	free(task->recorded);
	free(task->writing);
	free(task->crcs);
	free(task->rows);
	hash_sha256_free(task->hash);
	free(task);
}

/* Makes an in-memory task for a record whose file is open as fd. */
static int task_attach(struct store *store, const struct meta_task *info, int fd,
		       struct store_task **out)
{
	struct store_task *task = calloc(1, sizeof(*task));
	size_t bitmap_bytes = (info->piece_count + 7u) / 8u + 1u;

	if (!task)
		return -ENOMEM;
	task->store = store;
	task->fd = fd;
	task->info = *info;
	task->recorded = calloc(1, bitmap_bytes);
	task->writing = calloc(1, bitmap_bytes);
	task->crcs = calloc(info->piece_count + 1u, sizeof(uint32_t));
	if (!task->recorded || !task->writing || !task->crcs) {
		task->fd = -1;
		task_free(task);
		return -ENOMEM;
	}
	meta_pieces_foreach(store->meta, info->id, task_load_pieces_one, task);
	task->record_gen = 1; /* what an earlier run recorded: not known synced */
	task->refs = 1;
	task->next = store->open_tasks;
	if (store->open_tasks)
		store->open_tasks->prev = task;
	store->open_tasks = task;
	*out = task;
	return 0;
}

int store_task_find(struct store *store, const uint8_t id[META_ID_SIZE], struct store_task **out)
{
	struct store_task *task = task_lookup(store, id);
	struct meta_task info;
	char path[PATH_MAX];
	int fd, rc;

	if (task) {
		task->refs++;
		*out = task;
		return 0;
	}
	rc = meta_task_get(store->meta, id, &info);
	if (rc < 0)
		return rc;
	store_content_path(store, id, path, sizeof(path));
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	rc = task_attach(store, &info, fd, out);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	meta_task_touch(store->meta, id, clock_realtime_ms());
	return 0;
}

/*
 * Creates a new task's content file at path: preallocated (or, sparse,
 * sized after a check of the free space), or with adopt_path the finished
 * file there, open as adopt_fd, renamed into place. Returns the file's fd
 * (adopt_fd is the caller's no longer, whatever the outcome).
 */
static int task_file_create(struct store *store, const struct store_task_params *params,
			    const char *adopt_path, int adopt_fd, const char *path, char *err,
			    size_t err_size)
{
	char dir[PATH_MAX], hex[HASH_SHA256_HEX_SIZE];
	int fd, rc;

	id_hex(params->id, hex);
	snprintf(dir, sizeof(dir), "%s/%.2s", store->content_dir, hex);
	rc = mkdir_if_missing(dir, 0750);
	if (rc < 0) {
		snprintf(err, err_size, "%s: cannot create: %s", dir, strerror(-rc));
		if (adopt_path)
			close(adopt_fd);
		return rc;
	}
	if (adopt_path) {
		if (rename(adopt_path, path) == 0)
			return adopt_fd;
		rc = -errno;
		snprintf(err, err_size, "%s: cannot rename into %s: %s", adopt_path, path,
			 strerror(errno));
		close(adopt_fd);
		return rc;
	}
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, err_size, "%s: cannot create: %s", path, strerror(errno));
		return rc;
	}
	if (params->content_length == 0)
		rc = 0;
	else if (store->sparse)
		rc = store_size_sparse(store, fd, params->content_length);
	else
		rc = fallocate(fd, 0, 0, (off_t)params->content_length) < 0 ? -errno : 0;
	if (rc < 0) {
		if (rc == -ENOSPC)
			snprintf(err, err_size,
				 "data dir %s: no space left on device for task %s (%llu bytes "
				 "needed, %llu bytes free)", store->data_dir, hex,
				 (unsigned long long)params->content_length,
				 (unsigned long long)store_free_bytes(store));
		else
			snprintf(err, err_size, "%s: cannot preallocate %llu bytes: %s", path,
				 (unsigned long long)params->content_length, strerror(-rc));
		close(fd);
		unlink(path);
		return rc;
	}
	return fd;
}

/* store_task_open; with adopt_path (a new task only: -EEXIST if there is
 * one), task_file_create's. */
static int task_open(struct store *store, const struct store_task_params *params,
		     const char *adopt_path, int adopt_fd, struct store_task **out, char *err,
		     size_t err_size)
{
	struct meta_task info;
	char path[PATH_MAX], hex[HASH_SHA256_HEX_SIZE];
	uint64_t piece_length;
	int fd, rc;

	id_hex(params->id, hex);
	if (params->content_length == META_LENGTH_UNKNOWN) {
		snprintf(err, err_size, "task %s: content of unknown length is not supported yet", hex);
		if (adopt_path)
			close(adopt_fd);
		return -EINVAL;
	}
	piece_length = params->piece_length ? params->piece_length
					    : piece_length_for(params->content_length);
	if (!piece_length_valid(piece_length) ||
	    piece_count(params->content_length, piece_length) > PIECE_COUNT_MAX) {
		snprintf(err, err_size, "task %s: invalid piece length %llu", hex,
			 (unsigned long long)piece_length);
		if (adopt_path)
			close(adopt_fd);
		return -EINVAL;
	}

	rc = store_task_find(store, params->id, out);
	if (rc == 0 && adopt_path) {
		store_task_release(*out);
		snprintf(err, err_size, "task %s exists", hex);
		close(adopt_fd);
		return -EEXIST;
	}
	if (rc == 0) {
		const struct meta_task *have = &(*out)->info;

		if (have->content_length != params->content_length ||
		    (params->piece_length && have->piece_length != params->piece_length)) {
			snprintf(err, err_size,
				 "task %s exists with content length %llu and piece length %llu",
				 hex, (unsigned long long)have->content_length,
				 (unsigned long long)have->piece_length);
			store_task_release(*out);
			return -EEXIST;
		}
		return 0;
	}
	if (rc != -ENOENT || meta_task_get(store->meta, params->id, &info) == 0) {
		/* A record whose file is gone (store_task_find's -ENOENT is then
		 * open()'s): start the task afresh, without its old piece rows. */
		meta_task_delete(store->meta, params->id);
	}

	/* File first (preallocated: a full disk shows here), metadata second. */
	store_content_path(store, params->id, path, sizeof(path));
	fd = task_file_create(store, params, adopt_path, adopt_fd, path, err, err_size);
	if (fd < 0)
		return fd;

	memset(&info, 0, sizeof(info));
	memcpy(info.id, params->id, META_ID_SIZE);
	info.content_length = params->content_length;
	info.piece_length = piece_length;
	info.piece_count = piece_count(params->content_length, piece_length);
	info.state = META_TASK_PENDING;
	info.created_ms = info.accessed_ms = clock_realtime_ms();
	if (params->digest) {
		info.has_digest = true;
		memcpy(info.digest, params->digest, sizeof(info.digest));
	}
	if (params->url)
		snprintf(info.url, sizeof(info.url), "%s", params->url);
	if (params->validator)
		snprintf(info.validator, sizeof(info.validator), "%s", params->validator);
	rc = meta_task_put(store->meta, &info);
	if (rc < 0) {
		snprintf(err, err_size, "%s/meta: cannot record task %s: %s", store->data_dir, hex,
			 strerror(-rc));
		goto out_unlink;
	}
	rc = task_attach(store, &info, fd, out);
	if (rc < 0) {
		meta_task_delete(store->meta, params->id);
		snprintf(err, err_size, "task %s: %s", hex, strerror(-rc));
		goto out_unlink;
	}
	return 0;

out_unlink:
	close(fd);
	unlink(path);
	return rc;
}

int store_task_open(struct store *store, const struct store_task_params *params,
		    struct store_task **out, char *err, size_t err_size)
{
	return task_open(store, params, NULL, -1, out, err, err_size);
}

static int store_delete_task(struct store *store, const uint8_t id[META_ID_SIZE]);

/* Off the open tasks: no find or open reaches it any more. */
static void task_unlist(struct store_task *task)
{
	if (task->prev)
		task->prev->next = task->next;
	else
		task->store->open_tasks = task->next;
	if (task->next)
		task->next->prev = task->prev;
	task->prev = task->next = NULL;
}

/* A discarded task's record and file go (open descriptors stay valid). */
static void task_delete_discarded(struct store_task *task)
{
	char hex[HASH_SHA256_HEX_SIZE];
	int rc = store_delete_task(task->store, task->info.id);

	if (rc < 0 && rc != -ENOENT) {
		id_hex(task->info.id, hex);
		log_warn("store", "cannot delete a discarded task task=%s error=\"%s\"", hex,
			 strerror(-rc));
	}
}

void store_task_release(struct store_task *task)
{
	struct store *store = task->store;

	assert(task->refs > 0);
	if (--task->refs > 0)
		return;
	assert(task->writes == 0);
	assert(!task->sync_timer_armed && !task->sync_in_flight);
	if (task->detached) {
		task_free(task); /* its record and file went at store_task_discard */
		return;
	}
	task_unlist(task);
	if (task->info.state != META_TASK_COMPLETE)
		notify(task, STORE_EVENT_IDLE, 0);
	if (task->discard) {
		task_delete_discarded(task);
	} else {
		/* Unused from now on: GC's TTL and LRU count from here, not the open. */
		meta_task_touch(store->meta, task->info.id, clock_realtime_ms());
	}
	task_free(task);
}

void store_task_discard(struct store_task *task)
{
	if (task->refs > 1 && !task->detached && task->writes == 0) {
		/* Others still hold it (a peer's upload in flight): the task
		 * goes now, so that the next open of its id starts afresh
		 * instead of finding these pieces; their fd stays valid. */
		task_delete_discarded(task);
		task_unlist(task);
		task->detached = true;
		if (task->info.state != META_TASK_COMPLETE)
			notify(task, STORE_EVENT_IDLE, 0);
	} else {
		task->discard = true;
	}
	store_task_release(task);
}

int store_task_content_fd(const struct store_task *task)
{
	return task->fd;
}

const struct meta_task *store_task_info(const struct store_task *task)
{
	return &task->info;
}

bool store_task_has_piece(const struct store_task *task, uint32_t number)
{
	return number < task->info.piece_count && bit_get(task->recorded, number);
}

unsigned store_task_writes(const struct store_task *task)
{
	return task->writes;
}

bool store_task_piece_writing(const struct store_task *task, uint32_t number)
{
	return number < task->info.piece_count && bit_get(task->writing, number);
}

bool store_task_is_complete(const struct store_task *task)
{
	return task->info.state == META_TASK_COMPLETE;
}

const char *store_task_error(const struct store_task *task)
{
	return task->error;
}

/* crc32c of [offset, offset + length) of fd, read in chunks. */
static int file_crc32c(struct store *store, int fd, uint64_t offset, uint32_t length,
		       uint32_t *crc_out)
{
	uint8_t *chunk = pool_get_chunk(store);
	uint32_t crc = 0, done = 0;

	if (!chunk)
		return -ENOMEM;
	while (done < length) {
		uint32_t want = length - done < STORE_CHUNK_SIZE ? length - done : STORE_CHUNK_SIZE;
		ssize_t n = pread(fd, chunk, want, (off_t)(offset + done));

		if (n <= 0) {
			pool_put_chunk(store, chunk);
			return n < 0 ? -errno : -EIO;
		}
		crc = hash_crc32c_extend(crc, chunk, (size_t)n);
		done += (uint32_t)n;
	}
	pool_put_chunk(store, chunk);
	*crc_out = crc;
	return 0;
}

uint32_t store_piece_crc(const struct store_task *task, uint32_t number)
{
	return store_task_has_piece(task, number) ? task->crcs[number] : 0;
}

/* Recorded pieces whose bytes are no longer what was recorded: they are
 * dropped in one transaction (fetched again by the next download), and the
 * task is no longer complete, as in recovery. */
static void task_drop_damaged(struct store_task *task, const uint32_t *numbers, size_t count,
			      const char *why)
{
	char hex[HASH_SHA256_HEX_SIZE];

	id_hex(task->info.id, hex);
	/* One line, whatever the count (a task cut to nothing may have
	 * millions of small pieces); each piece at debug. */
	if (count == 1)
		log_warn("store", "dropping a piece that %s task=%s piece=%u data_dir=%s", why, hex,
			 numbers[0], task->store->data_dir);
	else
		log_warn("store", "dropping %zu pieces that %s task=%s pieces=%u..%u data_dir=%s",
			 count, why, hex, numbers[0], numbers[count - 1], task->store->data_dir);
	for (size_t i = 0; i < count; i++) {
		log_debug("store", "dropped piece task=%s piece=%u", hex, numbers[i]);
		bit_set(task->recorded, numbers[i], false);
	}
	task_hash_reset(task); /* they will be written again: hashed again */
	if (task->detached) {
		/* Its id may be another task's now: the records are not ours. */
		if (task->info.state == META_TASK_COMPLETE)
			task->info.state = META_TASK_PENDING;
		return;
	}
	meta_pieces_drop(task->store->meta, task->info.id, numbers, count);
	if (task->info.state == META_TASK_COMPLETE)
		meta_task_set_state(task->store->meta, task->info.id, META_TASK_PENDING);
	meta_task_get(task->store->meta, task->info.id, &task->info);
}

/* The file ends at `size`, before some recorded pieces: all of those go. */
static void task_drop_past(struct store_task *task, uint64_t size)
{
	const struct meta_task *info = &task->info;
	uint32_t *numbers = malloc(sizeof(*numbers) * (info->piece_count ? info->piece_count : 1));
	size_t count = 0;

	if (!numbers)
		return; /* what is read still fails; the next look drops them */
	for (uint32_t n = 0; n < info->piece_count; n++) {
		if (store_task_has_piece(task, n) &&
		    piece_offset(info->piece_length, n) +
				    piece_size(info->content_length, info->piece_length, n) > size)
			numbers[count++] = n;
	}
	if (count)
		task_drop_damaged(task, numbers, count, "its content file no longer holds");
	free(numbers);
}

int store_piece_locate(struct store_task *task, uint32_t number, int *fd, uint64_t *offset,
		       uint32_t *length)
{
	const struct meta_task *info = &task->info;
	struct stat st;

	if (!store_task_has_piece(task, number))
		return -ENOENT;
	*fd = task->fd;
	*offset = piece_offset(info->piece_length, number);
	*length = piece_size(info->content_length, info->piece_length, number);
	/* A file cut short behind our back (recovery checks at start only):
	 * every recorded piece past its end goes, not just this one. */
	if (fstat(task->fd, &st) == 0 && (uint64_t)st.st_size < *offset + *length) {
		task_drop_past(task, (uint64_t)st.st_size);
		return -EBADMSG;
	}
	if (task->store->options.verify_on_read) {
		uint32_t crc;
		int rc = file_crc32c(task->store, task->fd, *offset, *length, &crc);

		if (rc < 0)
			return rc;
		if (crc != task->crcs[number]) {
			task_drop_damaged(task, &number, 1, "no longer matches its crc");
			return -EBADMSG;
		}
	}
	return 0;
}

/* sha256 of the whole content file. */
static int file_sha256(struct store *store, int fd, uint64_t length, uint8_t out[HASH_SHA256_SIZE])
{
	struct hash_sha256 *h = hash_sha256_new();
	uint8_t *chunk = pool_get_chunk(store);
	uint64_t done = 0;
	int rc = 0;

	if (!h || !chunk) {
		rc = -ENOMEM;
		goto out;
	}
	while (done < length) {
		size_t want = length - done < STORE_CHUNK_SIZE ? (size_t)(length - done)
							       : STORE_CHUNK_SIZE;
		ssize_t n = pread(fd, chunk, want, (off_t)done);

		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			goto out;
		}
		hash_sha256_update(h, chunk, (size_t)n);
		done += (uint64_t)n;
	}
	hash_sha256_final(h, out);
out:
	pool_put_chunk(store, chunk);
	hash_sha256_free(h);
	return rc;
}

/* --- the digest check, as the pieces come. */

/* A task with a digest until it is complete; a complete one without a
 * digest whose sha256 was asked for (store_task_sha256). */
static bool task_hash_wanted(const struct store_task *task)
{
	if (task->failed || task->detached || task->hashed >= task->info.content_length)
		return false;
	if (task->info.has_digest)
		return task->info.state != META_TASK_COMPLETE;
	return task->sha_wanted && !task->sha_error && task->info.state == META_TASK_COMPLETE;
}

/* A complete task's sha256, hashed to its end: it becomes the task's digest
 * (the next store_task_sha256 answers at once). */
static void task_sha_record(struct store_task *task)
{
	struct meta_task info = task->info;

	hash_sha256_final(task->hash, info.digest);
	info.has_digest = true;
	task_hash_reset(task);
	task->sha_wanted = false;
	if (meta_task_put(task->store->meta, &info) < 0 ||
	    meta_task_get(task->store->meta, info.id, &task->info) < 0) {
		task->info.has_digest = true; /* known for this run at least */
		memcpy(task->info.digest, info.digest, sizeof(info.digest));
	}
}

static void task_hash_reset(struct store_task *task)
{
	hash_sha256_free(task->hash);
	task->hash = NULL;
	task->hashed = 0;
}

/* Hashes recorded content in order from task->hashed, about `budget` bytes,
 * up to the first piece not recorded. */
static int task_hash_some(struct store_task *task, uint64_t budget)
{
	const struct meta_task *info = &task->info;
	uint8_t *chunk;
	int rc = 0;

	if (!task->hash && !(task->hash = hash_sha256_new()))
		return -ENOMEM;
	chunk = pool_get_chunk(task->store);
	if (!chunk)
		return -ENOMEM;
	while (task->hashed < info->content_length && budget) {
		uint32_t number = (uint32_t)(task->hashed / info->piece_length);
		uint64_t end = ((uint64_t)number + 1) * info->piece_length;
		size_t want = STORE_CHUNK_SIZE;
		ssize_t n;

		if (!bit_get(task->recorded, number))
			break;
		if (end > info->content_length)
			end = info->content_length;
		if (end - task->hashed < want)
			want = (size_t)(end - task->hashed);
		n = pread(task->fd, chunk, want, (off_t)task->hashed);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			break;
		}
		hash_sha256_update(task->hash, chunk, (size_t)n);
		task->hashed += (uint64_t)n;
		budget -= (uint64_t)n < budget ? (uint64_t)n : budget;
	}
	pool_put_chunk(task->store, chunk);
	return rc;
}

static void task_hash_unqueue(struct store_task *task)
{
	if (!task->hash_queued)
		return;
	for (struct store_task **p = &task->store->hash_queue; *p; p = &(*p)->hash_next) {
		if (*p == task) {
			*p = task->hash_next;
			break;
		}
	}
	task->hash_queued = false;
}

static void store_hash_done(struct loop_op *op, int res, uint32_t flags);
static void store_hash_run(struct store *store, uint64_t budget);

/* False if the queue has work and no turn could be asked for. (A finish
 * only waits while a turn is armed; store_hash_done copes with a failure.) */
static bool store_hash_arm(struct store *store)
{
	if (store->hash_armed || !store->hash_queue || store->hash_at_once)
		return true;
	loop_op_init(&store->hash_op, store_hash_done, store);
	if (loop_nop(store->loop, &store->hash_op) < 0)
		return false;
	store->hash_armed = true;
	return true;
}

/* Goes on hashing in the next loop turn if the next piece in order is
 * recorded. */
static void task_hash_kick(struct store_task *task)
{
	struct store *store = task->store;
	struct store_task **tail = &store->hash_queue;

	if (task->hash_queued || !store->loop || !task_hash_wanted(task) ||
	    !bit_get(task->recorded, (uint32_t)(task->hashed / task->info.piece_length)))
		return;
	/* At the tail: the tasks served this turn go after those left for
	 * the next (round robin under the turn's budget). */
	while (*tail)
		tail = &(*tail)->hash_next;
	task->hash_next = NULL;
	*tail = task;
	task->hash_queued = true;
	task->hash_turn = store->hash_turn;
	store_hash_arm(store);
}

/* A slice of each queued task, each at most once per turn and STORE_HASH_TURN
 * bytes in all (a callback may release any task, which leaves the queue as
 * it goes). */
static void store_hash_run(struct store *store, uint64_t budget)
{
	unsigned turn = ++store->hash_turn;
	struct store_task *task;

	while (budget) {
		uint64_t before;
		int rc = 0;

		for (task = store->hash_queue; task && task->hash_turn == turn;
		     task = task->hash_next)
			;
		if (!task)
			break;
		task->refs++; /* whatever the callbacks below release */
		task->hash_turn = turn;
		task_hash_unqueue(task);
		if (task_hash_wanted(task)) {
			before = task->hashed;
			rc = task_hash_some(task, budget < STORE_HASH_SLICE ? budget : STORE_HASH_SLICE);
			budget -= task->hashed - before < budget ? task->hashed - before : budget;
			if (rc < 0 && task->info.has_digest)
				task_fail(task, rc, "reading for the digest check of");
			else if (rc < 0)
				task->sha_error = rc; /* a complete task stays complete */
			else if (task->hashed == task->info.content_length && !task->info.has_digest)
				task_sha_record(task);
			else
				task_hash_kick(task);
		}
		/* A finish or a sha256 waits: the hashing ended, failed or
		 * cannot go on (a piece dropped meanwhile): it asks again now
		 * (a finish: once the whole file's sync has ended too). */
		task_finish_call_back(task);
		store_task_release(task);
	}
}

static void store_hash_done(struct loop_op *op, int res, uint32_t flags)
{
	struct store *store = op->owner;

	(void)res;
	(void)flags;
	store->hash_armed = false;
	store_hash_run(store, STORE_HASH_TURN);
	if (store_hash_arm(store))
		return;
	/* No room in the ring: hashed now, to the end, rather than left waiting
	 * for a turn nothing asks for (a finish waiting would wait forever). */
	log_warn("store", "cannot queue a loop turn for digest checks: hashing at once");
	store->hash_at_once = true;
	while (store->hash_queue)
		store_hash_run(store, UINT64_MAX);
	store->hash_at_once = false;
}

int store_task_set_validator(struct store_task *task, const char *validator)
{
	struct meta_task info = task->info;
	int rc;

	if (strncmp(info.validator, validator, sizeof(info.validator) - 1) == 0)
		return 0;
	snprintf(info.validator, sizeof(info.validator), "%s", validator);
	rc = meta_task_put(task->store->meta, &info);
	if (rc == 0)
		rc = meta_task_get(task->store->meta, info.id, &task->info);
	return rc;
}

void store_task_on_checked(struct store_task *task, store_task_checked_fn fn, void *arg)
{
	task->checked = fn;
	task->checked_arg = arg;
}

int store_task_sha256(struct store_task *task, uint8_t out[HASH_SHA256_SIZE])
{
	int rc;

	if (task->info.has_digest) {
		memcpy(out, task->info.digest, HASH_SHA256_SIZE);
		return 0;
	}
	if (task->sha_error) {
		rc = task->sha_error;
		task->sha_error = 0; /* the next ask tries again */
		return rc;
	}
	if (!store_task_is_complete(task)) {
		/* Pieces dropped as damaged (meanwhile): no whole to hash. */
		task->sha_wanted = false;
		task_hash_unqueue(task);
		task_hash_reset(task);
		return -EBADMSG;
	}
	/* A large one is hashed a slice per loop turn (-EINPROGRESS until the
	 * callback), like a digest check. */
	if (task->checked && task->store->loop && store_task_is_complete(task) &&
	    task->info.content_length > STORE_HASH_SLICE) {
		task->sha_wanted = true;
		task_hash_kick(task);
		if (task->hash_queued && task->store->hash_armed) {
			task->finish_waiting = true;
			return -EINPROGRESS;
		}
		task->sha_wanted = false;
		task_hash_unqueue(task);
		task_hash_reset(task);
	}
	return file_sha256(task->store, task->fd, task->info.content_length, out);
}

int store_task_finish(struct store_task *task, char *err, size_t err_size)
{
	struct store *store = task->store;
	char hex[HASH_SHA256_HEX_SIZE];
	int rc;

	id_hex(task->info.id, hex);
	if (task->info.state == META_TASK_COMPLETE)
		return 0;
	if (task->failed) {
		snprintf(err, err_size, "%s", task->error);
		return -EIO;
	}
	if (task->info.pieces_done < task->info.piece_count) {
		snprintf(err, err_size, "task %s: %u of %u pieces recorded", hex,
			 task->info.pieces_done, task->info.piece_count);
		return -EAGAIN;
	}
	if (task->info.has_digest && !task->digest_checked) {
		uint64_t left = task->info.content_length - task->hashed;
		uint8_t digest[HASH_SHA256_SIZE];
		char want[HASH_SHA256_HEX_SIZE], got[HASH_SHA256_HEX_SIZE];

		/* What is not hashed yet: at once if it is little (or nobody
		 * waits), else in slices while the loop serves the rest. */
		if (left > STORE_HASH_SLICE && task->checked && task->store->loop) {
			task_hash_kick(task);
			if (task->hash_queued && task->store->hash_armed) {
				task->finish_waiting = true;
				snprintf(err, err_size, "task %s: checking its digest, %llu bytes to go",
					 hex, (unsigned long long)left);
				return -EINPROGRESS;
			}
		}
		task_hash_unqueue(task);
		rc = task_hash_some(task, UINT64_MAX);
		if (rc == 0 && task->hashed < task->info.content_length)
			rc = -EIO;
		if (rc == 0)
			hash_sha256_final(task->hash, digest);
		task_hash_reset(task);
		if (rc < 0) {
			snprintf(err, err_size, "task %s: cannot read its content: %s", hex,
				 strerror(-rc));
			return rc;
		}
		if (memcmp(digest, task->info.digest, sizeof(digest)) != 0) {
			hash_hex(task->info.digest, want);
			hash_hex(digest, got);
			snprintf(err, err_size, "task %s: digest mismatch: expected sha256:%s, got "
				 "sha256:%s", hex, want, got);
			/* Every piece matched its crc, yet the whole is wrong: the
			 * crcs came from a liar. Nothing of it is kept. */
			task->failed = true;
			snprintf(task->error, sizeof(task->error), "%s", err);
			meta_task_set_state(store->meta, task->info.id, META_TASK_FAILED);
			task->info.state = META_TASK_FAILED;
			notify(task, STORE_EVENT_FAILED, 0);
			return -EBADMSG;
		}
		task->digest_checked = true;
	}
	/* STORE_SYNC_TASK: complete means durable (recovery trusts complete
	 * tasks): the whole file's fdatasync first, started when the last
	 * piece was recorded. */
	if (store->options.sync == STORE_SYNC_TASK && task->synced_gen != task->record_gen) {
		rc = -EIO;
		if (!task->checked) {
			/* Nobody to call back: synced here, as a digest is hashed. */
			store->content_syncs++;
			if (fdatasync(task->fd) < 0) {
				rc = -errno;
				task_fail(task, rc, "syncing");
			} else {
				task->synced_gen = task->record_gen;
			}
		} else {
			task_whole_sync_start(task);
			if (task->whole_sync_in_flight) {
				task->finish_waiting = true;
				snprintf(err, err_size, "task %s: making its file durable (fdatasync)",
					 hex);
				return -EINPROGRESS;
			}
		}
		if (task->failed) {
			snprintf(err, err_size, "%s", task->error);
			return rc;
		}
	}
	rc = meta_task_set_state(store->meta, task->info.id, META_TASK_COMPLETE);
	if (rc < 0) {
		snprintf(err, err_size, "task %s: cannot record completion: %s", hex,
			 strerror(-rc));
		return rc;
	}
	task->info.state = META_TASK_COMPLETE;
	notify(task, STORE_EVENT_COMPLETE, 0);
	return 0;
}

/* --- delete, recovery, GC. */

/* Metadata first, file second: a crash in between leaves an orphan file. */
static int store_delete_task(struct store *store, const uint8_t id[META_ID_SIZE])
{
	char path[PATH_MAX];
	int rc = meta_task_delete(store->meta, id);

	store_content_path(store, id, path, sizeof(path));
	if (unlink(path) < 0 && errno != ENOENT && rc == 0)
		rc = -errno;
	return rc;
}

struct recover_walk {
	struct store *store;
	bool verify_all;
	struct store_recovery *report;
	uint32_t *bad;
	size_t bad_count, bad_cap;
	int fd;
	const struct meta_task *task;
};

static int recover_check_piece(const struct meta_piece *piece, void *arg)
{
	struct recover_walk *walk = arg;
	const struct meta_task *task = walk->task;
	uint64_t offset = piece_offset(task->piece_length, piece->number);
	uint32_t size = piece_size(task->content_length, task->piece_length, piece->number);
	uint32_t crc = 0;

	walk->report->pieces_checked++;
	if (file_crc32c(walk->store, walk->fd, offset, size, &crc) == 0 && crc == piece->crc32c)
		return 0;
	if (walk->bad_count == walk->bad_cap) {
		size_t cap = walk->bad_cap ? walk->bad_cap * 2 : 64;
		uint32_t *grown = realloc(walk->bad, cap * sizeof(*grown));

		if (!grown)
			return -ENOMEM;
		walk->bad = grown;
		walk->bad_cap = cap;
	}
	walk->bad[walk->bad_count++] = piece->number;
	return 0;
}

/* A task record that does not decode (a corrupt one): it is removed, and its
 * content file goes with the orphans after the walk; the walk goes on. */
static int recover_bad_record(const uint8_t id[META_ID_SIZE], void *arg)
{
	struct recover_walk *walk = arg;
	char hex[HASH_SHA256_HEX_SIZE];
	int rc = meta_task_delete(walk->store->meta, id);

	id_hex(id, hex);
	if (rc < 0) { /* e.g. a key that is not a task id's size: it stays */
		log_warn("store", "a task record that does not decode could not be removed "
			 "task=%s data_dir=%s error=\"%s\"", hex, walk->store->data_dir,
			 strerror(-rc));
		return 0;
	}
	log_warn("store", "removed a task record that does not decode task=%s data_dir=%s", hex,
		 walk->store->data_dir);
	walk->report->tasks_removed++;
	return 0;
}

/* GC and the complete-task walk step over an undecodable record (recovery
 * removes it at the next start). */
static int skip_bad_record(const uint8_t id[META_ID_SIZE], void *arg)
{
	char hex[HASH_SHA256_HEX_SIZE];

	(void)arg;
	id_hex(id, hex);
	log_debug("store", "skipped a task record that does not decode task=%s", hex);
	return 0;
}

static int recover_task(const struct meta_task *task, void *arg)
{
	struct recover_walk *walk = arg;
	struct store *store = walk->store;
	char path[PATH_MAX], hex[HASH_SHA256_HEX_SIZE];
	struct stat st;
	int fd;

	id_hex(task->id, hex);
	store_content_path(store, task->id, path, sizeof(path));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		if (fd >= 0)
			close(fd);
		log_info("store", "removed metadata of task %s: its content file %s is missing",
			 hex, path);
		store_delete_task(store, task->id);
		walk->report->tasks_removed++;
		return 0;
	}
	if (task->state == META_TASK_FAILED) {
		close(fd);
		return 0; /* GC removes it */
	}

	walk->bad_count = 0;
	walk->fd = fd;
	walk->task = task;
	if ((uint64_t)st.st_size < task->content_length || walk->verify_all ||
	    task->state != META_TASK_COMPLETE)
		meta_pieces_foreach(store->meta, task->id, recover_check_piece, walk);
	close(fd);

	if (walk->bad_count) {
		struct store_task *live = task_lookup(store, task->id);

		meta_pieces_drop(store->meta, task->id, walk->bad, walk->bad_count);
		walk->report->pieces_dropped += (unsigned)walk->bad_count;
		log_info("store", "dropped %zu piece(s) of task %s that do not match their crc "
			 "(file %s, %lld of %llu bytes)", walk->bad_count, hex, path,
			 (long long)st.st_size, (unsigned long long)task->content_length);
		if (task->state == META_TASK_COMPLETE)
			meta_task_set_state(store->meta, task->id, META_TASK_PENDING);
		/* The daemon answers before recovery: a task open in memory must not
		 * keep claiming the dropped pieces. */
		if (live) {
			for (size_t i = 0; i < walk->bad_count; i++)
				if (walk->bad[i] < live->info.piece_count)
					bit_set(live->recorded, walk->bad[i], false);
			meta_task_get(store->meta, task->id, &live->info);
			task_hash_reset(live); /* it may have hashed the bytes found bad */
		}
		walk->report->tasks_incomplete++;
	} else if (task->state == META_TASK_COMPLETE) {
		walk->report->tasks_complete++;
	} else {
		walk->report->tasks_incomplete++;
	}
	return 0;
}

static bool hex_name(const char *name)
{
	if (strlen(name) != 64)
		return false;
	for (const char *p = name; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

static void recover_orphans(struct store *store, struct store_recovery *report)
{
	DIR *top = opendir(store->content_dir);
	struct dirent *d;

	if (!top)
		return;
	while ((d = readdir(top))) {
		char sub[PATH_MAX];
		DIR *dir;
		struct dirent *f;

		if (d->d_name[0] == '.')
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", store->content_dir, d->d_name);
		dir = opendir(sub);
		if (!dir)
			continue;
		while ((f = readdir(dir))) {
			uint8_t id[META_ID_SIZE];
			struct meta_task info;
			char path[PATH_MAX];

			if (f->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", sub, f->d_name);
			if (strcmp(d->d_name, "tmp") == 0 && job_tmp_ours(f->d_name))
				continue; /* an import under way (the CLI is served already) */
			if (hex_name(f->d_name) && hash_parse_sha256(f->d_name, id) == 0 &&
			    strncmp(f->d_name, d->d_name, 2) == 0 &&
			    meta_task_get(store->meta, id, &info) == 0)
				continue;
			if (unlink(path) == 0) {
				log_info("store", "removed content file without metadata path=%s",
					 path);
				report->orphans_removed++;
			}
		}
		closedir(dir);
	}
	closedir(top);
}

struct complete_walk {
	int (*fn)(const struct meta_task *task, void *arg);
	void *arg;
};

static int complete_one(const struct meta_task *task, void *arg)
{
	struct complete_walk *walk = arg;

	return task->state == META_TASK_COMPLETE ? walk->fn(task, walk->arg) : 0;
}

int store_foreach_complete(struct store *store,
			   int (*fn)(const struct meta_task *task, void *arg), void *arg)
{
	struct complete_walk walk = { .fn = fn, .arg = arg };

	return meta_tasks_walk(store->meta, complete_one, skip_bad_record, &walk);
}

int store_recover(struct store *store, bool verify_all, struct store_recovery *report)
{
	struct store_recovery local;
	struct recover_walk walk = { .store = store, .verify_all = verify_all };
	int rc;

	if (!report)
		report = &local;
	memset(report, 0, sizeof(*report));
	walk.report = report;
	rc = meta_tasks_walk(store->meta, recover_task, recover_bad_record, &walk);
	free(walk.bad);
	if (rc < 0)
		return rc;
	recover_orphans(store, report);
	log_info("store", "recovered data_dir=%s complete=%u incomplete=%u removed=%u orphans=%u "
		 "pieces_checked=%u pieces_dropped=%u", store->data_dir, report->tasks_complete,
		 report->tasks_incomplete, report->tasks_removed, report->orphans_removed,
		 report->pieces_checked, report->pieces_dropped);
	return 0;
}

struct gc_candidate {
	uint8_t id[META_ID_SIZE];
	uint64_t accessed_ms;
	uint64_t bytes;
};

struct gc_walk {
	struct store *store;
	uint64_t now_ms;
	struct gc_candidate *lru;
	size_t count, cap;
	uint64_t content_bytes;
	int evicted;
};

static int gc_visit(const struct meta_task *task, void *arg)
{
	struct gc_walk *walk = arg;
	struct store *store = walk->store;
	int64_t ttl = store->options.gc_ttl_ms;

	if (task_lookup(store, task->id)) { /* in use: never evicted */
		walk->content_bytes += task->content_length;
		return 0;
	}
	if (task->state == META_TASK_FAILED ||
	    (ttl > 0 && walk->now_ms > task->accessed_ms &&
	     walk->now_ms - task->accessed_ms > (uint64_t)ttl)) {
		char hex[HASH_SHA256_HEX_SIZE];

		id_hex(task->id, hex);
		log_info("store", "gc: removed task %s reason=%s", hex,
			 task->state == META_TASK_FAILED ? "failed" : "ttl");
		store_delete_task(store, task->id);
		walk->evicted++;
		return 0;
	}
	walk->content_bytes += task->content_length;
	if (task->state != META_TASK_COMPLETE)
		return 0;
	if (walk->count == walk->cap) {
		size_t cap = walk->cap ? walk->cap * 2 : 64;
		struct gc_candidate *grown = realloc(walk->lru, cap * sizeof(*grown));

		if (!grown)
			return -ENOMEM;
		walk->lru = grown;
		walk->cap = cap;
	}
	memcpy(walk->lru[walk->count].id, task->id, META_ID_SIZE);
	walk->lru[walk->count].accessed_ms = task->accessed_ms;
	walk->lru[walk->count].bytes = task->content_length;
	walk->count++;
	return 0;
}

static int gc_by_age(const void *a, const void *b)
{
	const struct gc_candidate *x = a, *y = b;

	return x->accessed_ms < y->accessed_ms ? -1 : x->accessed_ms > y->accessed_ms;
}

/* Disk use in percent: of the quota when there is one, else of the filesystem. */
static unsigned gc_used_percent(const struct store *store, uint64_t content_bytes)
{
	struct statvfs st;

	if (store->options.gc_quota_bytes)
		return (unsigned)(content_bytes * 100 / store->options.gc_quota_bytes);
	if (statvfs(store->data_dir, &st) < 0 || st.f_blocks == 0)
		return 0;
	return (unsigned)((st.f_blocks - st.f_bavail) * 100 / st.f_blocks);
}

int store_gc(struct store *store)
{
	struct gc_walk walk = { .store = store, .now_ms = clock_realtime_ms() };
	int rc = meta_tasks_walk(store->meta, gc_visit, skip_bad_record, &walk);

	if (rc < 0) {
		free(walk.lru);
		return rc;
	}
	if (gc_used_percent(store, walk.content_bytes) > store->options.gc_high_percent) {
		qsort(walk.lru, walk.count, sizeof(walk.lru[0]), gc_by_age);
		for (size_t i = 0; i < walk.count; i++) {
			char hex[HASH_SHA256_HEX_SIZE];

			if (gc_used_percent(store, walk.content_bytes) <=
			    store->options.gc_low_percent)
				break;
			if (task_lookup(store, walk.lru[i].id))
				continue;
			id_hex(walk.lru[i].id, hex);
			log_info("store", "gc: removed task %s reason=watermark bytes=%llu", hex,
				 (unsigned long long)walk.lru[i].bytes);
			if (store_delete_task(store, walk.lru[i].id) == 0) {
				walk.content_bytes -= walk.lru[i].bytes;
				walk.evicted++;
			}
		}
	}
	free(walk.lru);
	return walk.evicted;
}

static void store_gc_timer_done(struct loop_op *op, int res, uint32_t flags)
{
	struct store *store = op->owner;

	(void)flags;
	store->gc_armed = false;
	if (res == -ECANCELED)
		return;
	res = store_gc(store);
	if (res < 0)
		log_warn("store", "gc pass failed data_dir=%s error=\"%s\"", store->data_dir,
			 strerror(-res));
	loop_op_init(&store->gc_op, store_gc_timer_done, store);
	if (loop_timeout(store->loop, &store->gc_op, (uint64_t)store->options.gc_interval_ms) == 0)
		store->gc_armed = true;
}

/* --- import / export, a slice at a time. */

/*
 * An import reads its source once: each chunk is hashed (the task id is the
 * sha256 of the content, each piece gets its crc32c) and written to a temp
 * file under <content>/tmp, which becomes the task's content file by a rename
 * once the whole is known; the daemon hashes what it wrote, not a second read
 * of a file its client may still be changing. store_import's path on the same
 * filesystem is hard-linked to the temp name instead and only read. Nothing is
 * under a task's name before its last byte is there; a crash leaves a temp
 * file, which recovery removes.
 */
struct store_job {
	struct store *store;
	struct store_task *task;	/* export: the task, held */
	int in_fd;			/* import: the source (borrowed) */
	int out_fd;			/* import: the temp file (owned); export: borrowed */
	bool linked;			/* import: out_fd is the source, linked: only read */
	bool use_sendfile;		/* export: copy_file_range refused this output */
	uint64_t length, done;
	uint64_t piece_length;
	uint32_t count;
	struct hash_sha256 *h;
	struct meta_piece *rows;
	uint8_t *chunk;
	uint8_t id[META_ID_SIZE];
	char name[STORE_JOB_NAME_MAX];	/* import: the source's name in messages */
	char tmp[PATH_MAX];		/* import: the temp file's path while it exists */
};

static void job_tmp_path(struct store *store, char *out, size_t out_size)
{
	snprintf(out, out_size, "%s/tmp/%d-%llu", store->content_dir, (int)getpid(),
		 (unsigned long long)++store->job_seq);
}

/* A temp file of this process: recovery leaves it to its import. */
static bool job_tmp_ours(const char *name)
{
	char prefix[32];
	int n = snprintf(prefix, sizeof(prefix), "%d-", (int)getpid());

	return strncmp(name, prefix, (size_t)n) == 0;
}

static int write_all(int fd, const uint8_t *buf, size_t len, uint64_t offset)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, (off_t)offset);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		buf += n;
		len -= (size_t)n;
		offset += (uint64_t)n;
	}
	return 0;
}

/* The source linked under the temp name: the same inode as in_fd, or a
 * copy it is (the path may have been replaced since it was opened). */
static bool job_link(struct store_job *job, const char *link_path, const struct stat *source)
{
	struct stat st;

	if (link(link_path, job->tmp) < 0)
		return false;
	job->out_fd = open(job->tmp, O_RDWR | O_CLOEXEC);
	if (job->out_fd >= 0 && fstat(job->out_fd, &st) == 0 && st.st_dev == source->st_dev &&
	    st.st_ino == source->st_ino)
		return true;
	if (job->out_fd >= 0)
		close(job->out_fd);
	job->out_fd = -1;
	unlink(job->tmp);
	return false;
}

static int job_import_open(struct store_job *job, const char *link_path,
			   const struct stat *source, char *err, size_t err_size)
{
	struct store *store = job->store;
	char dir[PATH_MAX];
	int rc;

	snprintf(dir, sizeof(dir), "%s/tmp", store->content_dir);
	rc = mkdir_if_missing(dir, 0750);
	if (rc < 0) {
		snprintf(err, err_size, "%s: cannot create: %s", dir, strerror(-rc));
		return rc;
	}
	job_tmp_path(store, job->tmp, sizeof(job->tmp));
	if (link_path && job_link(job, link_path, source)) {
		job->linked = true;
		return 0;
	}
	job->out_fd = open(job->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (job->out_fd < 0) {
		rc = -errno;
		snprintf(err, err_size, "%s: cannot create: %s", job->tmp, strerror(errno));
		job->tmp[0] = '\0';
		return rc;
	}
	if (job->length == 0)
		rc = 0;
	else if (store->sparse)
		rc = store_size_sparse(store, job->out_fd, job->length);
	else
		rc = fallocate(job->out_fd, 0, 0, (off_t)job->length) < 0 ? -errno : 0;
	if (rc == -ENOSPC)
		snprintf(err, err_size,
			 "%s: cannot import: data dir %s: no space left on device (%llu bytes "
			 "needed, %llu bytes free)", job->name, store->data_dir,
			 (unsigned long long)job->length,
			 (unsigned long long)store_free_bytes(store));
	else if (rc < 0)
		snprintf(err, err_size, "%s: cannot preallocate %llu bytes: %s", job->tmp,
			 (unsigned long long)job->length, strerror(-rc));
	return rc;
}

static int job_import_begin(struct store *store, int fd, const char *name,
			    const char *link_path, struct store_job **out, char *err,
			    size_t err_size)
{
	struct store_job *job;
	struct stat st;
	int rc;

	*out = NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, err_size, "%s: cannot import: not a regular file", name);
		return -EINVAL;
	}
	job = calloc(1, sizeof(*job));
	if (!job) {
		snprintf(err, err_size, "%s: out of memory", name);
		return -ENOMEM;
	}
	job->store = store;
	job->in_fd = fd;
	job->out_fd = -1;
	job->length = (uint64_t)st.st_size;
	job->piece_length = piece_length_for(job->length);
	job->count = piece_count(job->length, job->piece_length);
	snprintf(job->name, sizeof(job->name), "%s", name);
	job->h = hash_sha256_new();
	job->chunk = pool_get_chunk(store);
	job->rows = calloc(job->count + 1u, sizeof(*job->rows));
	if (!job->h || !job->chunk || !job->rows) {
		snprintf(err, err_size, "%s: out of memory", name);
		store_job_free(job);
		return -ENOMEM;
	}
	rc = job_import_open(job, link_path, &st, err, err_size);
	if (rc < 0) {
		store_job_free(job);
		return rc;
	}
	*out = job;
	return 0;
}

int store_import_begin(struct store *store, int fd, const char *name, struct store_job **out,
		       char *err, size_t err_size)
{
	return job_import_begin(store, fd, name, NULL, out, err, err_size);
}

int store_export_begin(struct store_task *task, int out_fd, struct store_job **out, char *err,
		       size_t err_size)
{
	char hex[HASH_SHA256_HEX_SIZE];
	struct store_job *job;

	*out = NULL;
	id_hex(task->info.id, hex);
	/* Durability is for the next start: a task being made durable (or
	 * never finished) reads the same once every piece is recorded and
	 * its digest, if it has one, checked. */
	if (!store_task_is_complete(task) &&
	    (task->failed || task->info.pieces_done < task->info.piece_count ||
	     (task->info.has_digest && !task->digest_checked))) {
		snprintf(err, err_size, "task %s is not complete", hex);
		return -EAGAIN;
	}
	job = calloc(1, sizeof(*job));
	if (!job) {
		snprintf(err, err_size, "task %s: out of memory", hex);
		return -ENOMEM;
	}
	job->store = task->store;
	job->task = task;
	task->refs++;
	job->in_fd = -1;
	job->out_fd = out_fd;
	job->length = task->info.content_length;
	memcpy(job->id, task->info.id, META_ID_SIZE);
	*out = job;
	return 0;
}

/* The whole content is in the temp file and hashed: it becomes the task. */
static int job_import_finish(struct store_job *job, char *err, size_t err_size)
{
	struct store *store = job->store;
	struct store_task_params params = { .url = "" };
	struct store_task *task;
	char hex[HASH_SHA256_HEX_SIZE];
	int fd, rc;

	hash_sha256_final(job->h, job->id);
	id_hex(job->id, hex);
	if (!job->linked && fdatasync(job->out_fd) < 0) {
		rc = -errno;
		snprintf(err, err_size, "%s: cannot import into %s: %s", job->name,
			 store->data_dir, strerror(errno));
		return rc;
	}
	if (store_task_find(store, job->id, &task) == 0) {
		bool complete = store_task_is_complete(task);

		store_task_release(task);
		if (complete)
			return 0; /* the same content is already here */
		if (task_lookup(store, job->id)) {
			/* Being fetched: deleting it would pull its file and record
			 * from under the holder (and fail this import). */
			snprintf(err, err_size, "%s: cannot import: task %s is being fetched",
				 job->name, hex);
			return -EBUSY;
		}
		store_delete_task(store, job->id);
	}
	memcpy(params.id, job->id, META_ID_SIZE);
	params.content_length = job->length;
	params.piece_length = job->piece_length;
	params.digest = job->id;
	fd = job->out_fd;
	job->out_fd = -1; /* task_open's now */
	rc = task_open(store, &params, job->tmp, fd, &task, err, err_size);
	if (rc < 0)
		return rc;
	job->tmp[0] = '\0';
	rc = meta_pieces_record(store->meta, job->id, job->rows, job->count);
	if (rc == 0)
		rc = meta_task_set_state(store->meta, job->id, META_TASK_COMPLETE);
	if (rc < 0) {
		snprintf(err, err_size, "%s: cannot import into %s: %s", job->name,
			 store->data_dir, strerror(-rc));
		store_task_release(task);
		store_delete_task(store, job->id);
		return rc;
	}
	log_info("store", "imported path=%s task=%s bytes=%llu%s", job->name, hex,
		 (unsigned long long)job->length, job->linked ? " linked" : "");
	meta_task_get(store->meta, job->id, &task->info);
	notify(task, STORE_EVENT_COMPLETE, 0);
	store_task_release(task);
	return 0;
}

static int job_import_step(struct store_job *job, size_t budget, char *err, size_t err_size)
{
	struct store *store = job->store;
	uint64_t start = job->done;
	int rc;

	while (job->done < job->length && budget) {
		uint32_t number = (uint32_t)(job->done / job->piece_length);
		uint64_t left = job->length - job->done;
		size_t want = left < STORE_CHUNK_SIZE ? (size_t)left : STORE_CHUNK_SIZE;
		ssize_t n;

		if ((job->done % job->piece_length) + want > job->piece_length)
			want = (size_t)(job->piece_length - job->done % job->piece_length);
		n = pread(job->linked ? job->out_fd : job->in_fd, job->chunk, want,
			  (off_t)job->done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			snprintf(err, err_size, "%s: read: %s", job->name,
				 n < 0 ? strerror(errno) : "the file shrank");
			return rc;
		}
		hash_sha256_update(job->h, job->chunk, (size_t)n);
		job->rows[number].number = number;
		job->rows[number].crc32c =
			hash_crc32c_extend(job->rows[number].crc32c, job->chunk, (size_t)n);
		if (!job->linked) {
			rc = write_all(job->out_fd, job->chunk, (size_t)n, job->done);
			if (rc == -ENOSPC) {
				snprintf(err, err_size,
					 "%s: cannot import: data dir %s: no space left on device "
					 "(%llu bytes needed, %llu bytes free)", job->name,
					 store->data_dir, (unsigned long long)(job->length - job->done),
					 (unsigned long long)store_free_bytes(store));
				return rc;
			}
			if (rc < 0) {
				snprintf(err, err_size, "%s: cannot import: writing %s: %s",
					 job->name, job->tmp, strerror(-rc));
				return rc;
			}
		}
		job->done += (uint64_t)n;
		budget -= (size_t)n < budget ? (size_t)n : budget;
	}
	/* Writeback starts now: the sync at the end has little left to wait for. */
	if (!job->linked && job->done > start)
		sync_file_range(job->out_fd, (off_t)start, (off_t)(job->done - start),
				SYNC_FILE_RANGE_WRITE);
	if (job->done < job->length)
		return 1;
	return job_import_finish(job, err, err_size);
}

static int job_export_step(struct store_job *job, size_t budget, char *err, size_t err_size)
{
	char hex[HASH_SHA256_HEX_SIZE];

	while (job->done < job->length && budget) {
		uint64_t left = job->length - job->done;
		size_t want = left < budget ? (size_t)left : budget;
		off_t offset = (off_t)job->done;
		ssize_t n;

		if (want > (1u << 30))
			want = 1u << 30;
		n = job->use_sendfile ? sendfile(job->out_fd, job->task->fd, &offset, want)
				      : copy_file_range(job->task->fd, &offset, job->out_fd, NULL,
							want, 0);
		if (n < 0 && !job->use_sendfile &&
		    (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS)) {
			job->use_sendfile = true; /* a pipe, a socket, an older kernel */
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int rc = n < 0 ? -errno : -EIO;

			id_hex(job->id, hex);
			snprintf(err, err_size, "task %s: export failed: %s", hex,
				 n < 0 ? strerror(errno) : "the cache's copy is shorter than the task");
			return rc;
		}
		job->done += (uint64_t)n;
		budget -= (size_t)n < budget ? (size_t)n : budget;
	}
	return job->done < job->length ? 1 : 0;
}

int store_job_step(struct store_job *job, size_t budget, char *err, size_t err_size)
{
	if (!budget)
		budget = 1;
	return job->task ? job_export_step(job, budget, err, err_size)
			 : job_import_step(job, budget, err, err_size);
}

void store_job_id(const struct store_job *job, uint8_t id[META_ID_SIZE])
{
	memcpy(id, job->id, META_ID_SIZE);
}

uint64_t store_job_done(const struct store_job *job)
{
	return job->done;
}

void store_job_free(struct store_job *job)
{
	if (!job)
		return;
	if (job->task)
		store_task_release(job->task);
	else if (job->out_fd >= 0)
		close(job->out_fd);
	if (job->tmp[0])
		unlink(job->tmp);
	free(job->rows);
	pool_put_chunk(job->store, job->chunk);
	hash_sha256_free(job->h);
	free(job);
}

/* A job run to its end at once. */
static int job_run(struct store_job *job, char *err, size_t err_size)
{
	int rc;

	do
		rc = store_job_step(job, SIZE_MAX, err, err_size);
	while (rc > 0);
	return rc;
}

int store_import(struct store *store, const char *path, uint8_t id_out[META_ID_SIZE], char *err,
		 size_t err_size)
{
	struct store_job *job;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int rc;

	if (fd < 0) {
		rc = -errno;
		snprintf(err, err_size, "%s: cannot import: %s", path, strerror(errno));
		return rc;
	}
	rc = job_import_begin(store, fd, path, path, &job, err, err_size);
	if (rc == 0) {
		rc = job_run(job, err, err_size);
		store_job_id(job, id_out);
		store_job_free(job);
	}
	close(fd);
	return rc;
}

int store_delete(struct store *store, const uint8_t id[META_ID_SIZE])
{
	if (task_lookup(store, id))
		return -EBUSY;
	return store_delete_task(store, id);
}

int store_export(struct store_task *task, int out_fd, char *err, size_t err_size)
{
	struct store_job *job;
	int rc = store_export_begin(task, out_fd, &job, err, err_size);

	if (rc == 0) {
		rc = job_run(job, err, err_size);
		store_job_free(job);
	}
	return rc;
}

/* --- open / close. */

/* With the lock ours, every import temp file left is a dead process's,
 * whatever its pid (a container's daemon is pid 1 every time). */
static void store_remove_import_temps(struct store *store)
{
	char dir[PATH_MAX];
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/tmp", store->content_dir);
	d = opendir(dir);
	if (!d)
		return;
	for (struct dirent *e; (e = readdir(d));) {
		char stale[PATH_MAX];

		if (e->d_name[0] == '.')
			continue;
		snprintf(stale, sizeof(stale), "%s/%s", dir, e->d_name);
		if (unlink(stale) == 0)
			log_info("store", "removed an import's temp file of an earlier run path=%s",
				 stale);
	}
	closedir(d);
}

/* Two daemons sharing a data dir would overwrite each other's pieces. */
static int store_lock(struct store *store, char *err, size_t err_size)
{
	char path[PATH_MAX], text[32];
	int fd, n;

	snprintf(path, sizeof(path), "%s/lock", store->data_dir);
	fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, err_size, "data dir %s: cannot open %s: %s", store->data_dir, path,
			 strerror(errno));
		return -errno;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		ssize_t len = pread(fd, text, sizeof(text) - 1, 0);

		text[len > 0 ? len : 0] = '\0';
		text[strcspn(text, "\n")] = '\0';
		if (e == EWOULDBLOCK)
			snprintf(err, err_size, "data dir %s is in use by another process (pid %s)",
				 store->data_dir, text[0] ? text : "unknown");
		else
			snprintf(err, err_size, "data dir %s: cannot lock %s: %s", store->data_dir,
				 path, strerror(e));
		close(fd);
		return e == EWOULDBLOCK ? -EBUSY : -e;
	}
	n = snprintf(text, sizeof(text), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, text, (size_t)n, 0) != n)
		log_warn("store", "cannot record our pid path=%s", path);
	store->lock_fd = fd;
	return 0;
}

int store_open(struct store **out, struct loop *loop, const struct store_options *options,
	       char *err, size_t err_size)
{
	struct store *store = calloc(1, sizeof(*store));
	char meta_dir[PATH_MAX];
	int rc;

	if (!store)
		return -ENOMEM;
	/* Room for "/content/aa/<64 hex>" and "/meta/lock.mdb" after it. */
	if (strlen(options->data_dir) + 80 >= sizeof(store->data_dir)) {
		snprintf(err, err_size, "data dir %.64s...: path too long", options->data_dir);
		free(store);
		return -ENAMETOOLONG;
	}
	store->loop = loop;
	store->options = *options;
	store->options.data_dir = NULL;
	if (!store->options.sync_batch_pieces)
		store->options.sync_batch_pieces = STORE_SYNC_BATCH_DEFAULT;
	if (!store->options.sync_delay_ms)
		store->options.sync_delay_ms = STORE_SYNC_DELAY_DEFAULT_MS;
	if (!store->options.gc_ttl_ms)
		store->options.gc_ttl_ms = STORE_GC_TTL_DEFAULT_MS;
	if (!store->options.gc_high_percent)
		store->options.gc_high_percent = STORE_GC_HIGH_DEFAULT;
	if (!store->options.gc_low_percent)
		store->options.gc_low_percent = STORE_GC_LOW_DEFAULT;
	if (!store->options.gc_interval_ms)
		store->options.gc_interval_ms = STORE_GC_INTERVAL_DEFAULT_MS;
	snprintf(store->data_dir, sizeof(store->data_dir), "%s", options->data_dir);
	snprintf(store->content_dir, sizeof(store->content_dir), "%s/content", options->data_dir);
	snprintf(meta_dir, sizeof(meta_dir), "%s/meta", options->data_dir);

	rc = mkdir_if_missing(store->data_dir, 0750);
	if (rc == 0)
		rc = mkdir_if_missing(store->content_dir, 0750);
	if (rc < 0) {
		snprintf(err, err_size, "data dir %s: cannot create: %s", store->data_dir,
			 strerror(-rc));
		free(store);
		return rc;
	}
	rc = store_lock(store, err, err_size);
	if (rc < 0) {
		free(store);
		return rc;
	}
	store_remove_import_temps(store);
	{
		struct statfs fs;

		bool tmpfs = statfs(store->data_dir, &fs) == 0 && fs.f_type == TMPFS_MAGIC;

		store->sparse = options->preallocate == STORE_PREALLOCATE_NEVER ||
				(options->preallocate == STORE_PREALLOCATE_AUTO && tmpfs);
	}
	rc = meta_open(&store->meta, meta_dir, options->meta_map_size, err, err_size);
	if (rc < 0) {
		close(store->lock_fd);
		free(store);
		return rc;
	}
	if (store->options.gc_interval_ms > 0 && loop) {
		loop_op_init(&store->gc_op, store_gc_timer_done, store);
		if (loop_timeout(loop, &store->gc_op, (uint64_t)store->options.gc_interval_ms) == 0)
			store->gc_armed = true;
	}
	*out = store;
	return 0;
}

void store_close(struct store *store)
{
	if (!store)
		return;
	while (store->open_tasks) {
		struct store_task *task = store->open_tasks;

		store->open_tasks = task->next;
		task_free(task);
	}
	while (store->free_writes) {
		struct piece_write *w = store->free_writes;

		store->free_writes = w->next;
		free(w);
	}
	while (store->free_chunk_count)
		free(store->free_chunks[--store->free_chunk_count]);
	while (store->free_pipe_count) {
		store->free_pipe_count--;
		close(store->free_pipes[store->free_pipe_count][0]);
		close(store->free_pipes[store->free_pipe_count][1]);
	}
	meta_close(store->meta);
	close(store->lock_fd);
	free(store);
}
