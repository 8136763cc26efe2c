/* store: the node's cache: task content files, piece writes on the loop, recovery, GC. */
#ifndef RINGFLY_STORAGE_STORE_H
#define RINGFLY_STORAGE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "storage/meta.h"

/*
 * Layout under data_dir:
 *     content/<first 2 hex of id>/<64 hex id>   one file per task
 *     meta/                                       LMDB (storage/meta.h)
 *
 * The ordering that makes it crash-safe: a piece's bytes are written at
 * their offset, read back and checked against their crc32c, and only then
 * recorded in the metadata (in batches per task). A task is marked complete
 * only once an fdatasync of its whole file has ended, and recovery re-checks
 * every recorded piece of an incomplete task against its bytes; with
 * options.sync STORE_SYNC_PIECES each batch is made durable before it is
 * recorded. After any crash nothing that does not match its crc is believed.
 * See storage/store.c.
 */

/* How a task's content file gets its length (store.c explains). */
enum store_preallocate {
	STORE_PREALLOCATE_AUTO = 0,	/* fallocate, except on tmpfs: a free-space check */
	STORE_PREALLOCATE_ALWAYS = 1,	/* fallocate: the space is reserved at open */
	STORE_PREALLOCATE_NEVER = 2,	/* a free-space check and a sparse file */
};

enum store_socket_path {
	STORE_SOCKET_SPLICE = 0, /* socket -> pipe -> file, bytes never in user space */
	STORE_SOCKET_RECV = 1,	 /* recv into a pooled buffer, crc there, write */
};

/* When a task's content file is fdatasync'ed (store.c explains). */
enum store_sync {
	STORE_SYNC_TASK = 0,	/* once the task is whole: its finish waits for it */
	STORE_SYNC_PIECES = 1,	/* before every batch of pieces is recorded */
};

struct store_options {
	const char *data_dir;		/* borrowed for store_open only */
	uint64_t meta_map_size;		/* 0 = 1 GiB */
	enum store_socket_path socket_path;
	enum store_preallocate preallocate;
	bool verify_on_read;		/* check a piece's crc before serving it */
	enum store_sync sync;
	unsigned sync_batch_pieces;	/* record (sync) once this many pieces wait; 0 = 16 */
	unsigned sync_delay_ms;		/* ... or once the oldest waited this long; 0 = 20 */
	int64_t gc_ttl_ms;		/* evict tasks unused this long; 0 = 6 h; < 0 = never */
	unsigned gc_high_percent;	/* start evicting above this disk use; 0 = 90 */
	unsigned gc_low_percent;	/* ... down to this; 0 = 70 */
	uint64_t gc_quota_bytes;	/* or above this much content; 0 = none */
	int64_t gc_interval_ms;		/* how often GC runs on the loop; 0 = 60 s; < 0 = never */
};

struct store;
struct store_task;

enum store_event {
	STORE_EVENT_PIECE,	/* piece `number` is recorded: verified, servable */
	STORE_EVENT_COMPLETE,	/* every piece recorded and durable, the digest checked */
	STORE_EVENT_FAILED,	/* the task failed (store_task_error says why) */
	STORE_EVENT_IDLE,	/* the last reference to an incomplete task went:
				 * nobody is filling it now */
};

/* Runs on the loop inside store calls: it must not open, release or write
 * tasks; `task` is borrowed for the call. */
typedef void (*store_observer_fn)(void *arg, struct store_task *task, enum store_event event,
				  uint32_t number);

/* Opens the store (creating the layout) and its metadata. No recovery yet:
 * call store_recover once the daemon already answers. err names the path. */
int store_open(struct store **out, struct loop *loop, const struct store_options *options,
	       char *err, size_t err_size);
/* After the loop has stopped for good (like loop_destroy): tasks still open
 * and operations in flight are abandoned. */
void store_close(struct store *store);

/* One observer of every task's pieces and state (the peer upload server). */
void store_set_observer(struct store *store, store_observer_fn fn, void *arg);

/* fdatasyncs of content files started since store_open (for stat and tests). */
uint64_t store_content_syncs(const struct store *store);

struct store_recovery {
	unsigned tasks_complete, tasks_incomplete;
	unsigned tasks_removed;	      /* metadata whose content file was missing, or corrupt */
	unsigned orphans_removed;     /* content files without metadata */
	unsigned pieces_checked, pieces_dropped;
};

/*
 * Makes metadata and content agree after whatever ended the last run: drops
 * metadata whose file is missing, pieces beyond a short file, files without
 * metadata (one log line each), and re-checks the crc of the recorded pieces
 * of incomplete tasks (of every task with verify_all: ringflyd
 * --verify-cache), dropping the bad ones. Synchronous.
 */
int store_recover(struct store *store, bool verify_all, struct store_recovery *report);

/* Runs one GC pass now (the loop also runs it every gc_interval_ms). Returns
 * the number of tasks evicted or a negative errno. */
int store_gc(struct store *store);

/* --- tasks. */

struct store_task_params {
	uint8_t id[META_ID_SIZE];
	const char *url;	  /* may be NULL */
	uint64_t content_length;  /* META_LENGTH_UNKNOWN not supported yet: -EINVAL */
	uint64_t piece_length;	  /* 0 = piece_length_for(content_length) */
	const uint8_t *digest;	  /* sha256 the whole content must have, or NULL */
	const char *validator;	  /* the origin's ETag or Last-Modified (meta_task), or NULL */
};

/*
 * Opens the task `params->id`, creating it (metadata and a content file
 * preallocated with fallocate) if it does not exist. An existing task keeps
 * its recorded pieces (resume); its lengths must match params (-EEXIST).
 * Returns a reference (store_task_release) in *out. A full disk is reported
 * here, before any byte is fetched: -ENOSPC with err naming the data dir, the
 * free space and the task.
 */
int store_task_open(struct store *store, const struct store_task_params *params,
		    struct store_task **out, char *err, size_t err_size);
/* An existing task by id, or -ENOENT. */
int store_task_find(struct store *store, const uint8_t id[META_ID_SIZE], struct store_task **out);
/* Drops a reference; a task with none left may be evicted by GC. */
void store_task_release(struct store_task *task);
/* Drops a reference and deletes the task (record and content) when the last
 * one goes, even if that is a piece write finishing later: what failed for a
 * reason of its content leaves nothing behind. */
void store_task_discard(struct store_task *task);

/* The task's record (borrowed; valid while the reference is held). */
const struct meta_task *store_task_info(const struct store_task *task);
bool store_task_has_piece(const struct store_task *task, uint32_t number);
/* A write of the piece is under way (started, not yet finished either way). */
bool store_task_piece_writing(const struct store_task *task, uint32_t number);
/* Piece writes under way, whoever started them. */
unsigned store_task_writes(const struct store_task *task);
bool store_task_is_complete(const struct store_task *task);
/* The reason the task failed ("" if it has not). */
const char *store_task_error(const struct store_task *task);

/*
 * A piece has one write at a time: starting another while one is in flight
 * is -EBUSY (nothing happens), starting one of a recorded piece -EALREADY.
 *
 * res: 0 = the piece is written, checked, durable and recorded;
 * -EBADMSG = its bytes do not match the expected crc (nothing recorded; fetch
 * it again elsewhere); -EPIPE = the socket ended before the piece did;
 * -EPROTO = the socket holds bytes splice() cannot take (TCP urgent data);
 * -ENOSPC / -EIO = the disk failed: the task has failed (store_task_error says
 * why) and nothing of this piece is recorded; -EALREADY = already recorded.
 */
typedef void (*store_piece_done_fn)(struct store_task *task, uint32_t number, int res, void *arg);

/*
 * Receives piece `number` from sock_fd (exactly its size in bytes) into the
 * content file, by the configured socket path. With has_crc, the bytes must
 * match `crc32c`. done runs once, from the loop. sock_fd is borrowed until
 * then, and made non-blocking (O_NONBLOCK) for good. Returns 0 once started,
 * or a negative errno (done will not run).
 */
int store_piece_from_socket(struct store_task *task, uint32_t number, int sock_fd, bool has_crc,
			    uint32_t crc32c, store_piece_done_fn done, void *arg);

/*
 * Same, for pieces that follow each other on one stream: received(task,
 * number, 0, arg) runs once every byte of this piece is off the socket (the
 * socket is no longer used by this write), so the caller can start the next
 * piece while this one is still being written, checked and synced. checked,
 * optional, runs once the bytes are in the content file and match their crc:
 * they can be read from the file (store_task_content_fd), not yet recorded
 * (that waits for the batch: storage.sync_batch, sync_delay, and with
 * options.sync pieces its fdatasync). received and checked do not run if the
 * piece fails before them; done always runs, after them. progress_ms,
 * optional (valid until done), is set to clock_monotonic_ms() whenever bytes
 * of the piece come off the socket: a caller's timeout can tell a slow
 * sender from a silent one.
 */
int store_piece_from_stream(struct store_task *task, uint32_t number, int sock_fd, bool has_crc,
			    uint32_t crc32c, store_piece_done_fn received,
			    store_piece_done_fn checked, store_piece_done_fn done, void *arg,
			    uint64_t *progress_ms);

/*
 * Same from a buffer holding exactly the piece, borrowed until written (or
 * done, if written is NULL or the write fails first). written(task, number,
 * 0, arg), optional, runs once the bytes are in the content file and match
 * their crc: the buffer is free again and the bytes can be read from the file
 * (store_task_content_fd), but they are not yet durable nor recorded. done
 * always runs, after it.
 */
int store_piece_from_buffer(struct store_task *task, uint32_t number, const void *buf, size_t len,
			    bool has_crc, uint32_t crc32c, store_piece_done_fn written,
			    store_piece_done_fn done, void *arg);

/* The task's content file (borrowed, valid while the reference is held), to
 * read pieces a written() or checked() callback announced. */
int store_task_content_fd(const struct store_task *task);

/*
 * Where a recorded piece lies, for splice/sendfile to a socket: the content
 * fd (borrowed, valid while the reference is held), offset and length. With
 * verify_on_read the crc is checked first (-EBADMSG: the piece is dropped).
 * -ENOENT if the piece is not recorded.
 */
int store_piece_locate(struct store_task *task, uint32_t number, int *fd, uint64_t *offset,
		       uint32_t *length);
/* The crc32c of a recorded piece (0 if it is not recorded). */
uint32_t store_piece_crc(const struct store_task *task, uint32_t number);

/*
 * Once every piece is recorded: checks the digest (if the task has one),
 * marks the task complete. -EAGAIN if pieces are missing, -EBADMSG (task
 * failed, content dropped) if the digest does not match.
 *
 * A task with a digest is hashed from its start as its pieces are recorded,
 * a slice per loop turn. With a callback set (store_task_on_checked), a
 * finish that finds more than a slice not hashed yet returns -EINPROGRESS
 * and the hashing goes on a slice per turn; fn(arg, task id) is called once
 * it has ended (or failed): call store_task_finish again then. Without one,
 * the rest is hashed at once.
 *
 * With options.sync task, complete means durable: the recording of the last
 * piece starts an fdatasync of the whole file, and a finish that comes
 * before it has ended returns -EINPROGRESS ("making its file durable") and
 * calls fn back the same way once it has (-EIO then if it failed). Without
 * fn, the finish calls fdatasync itself.
 */
int store_task_finish(struct store_task *task, char *err, size_t err_size);
typedef void (*store_task_checked_fn)(void *arg, const uint8_t id[META_ID_SIZE]);

/* Records what the origin says identifies the content (meta_task.validator;
 * cut to META_VALIDATOR_MAX - 1 bytes), if it is not that already. */
int store_task_set_validator(struct store_task *task, const char *validator);
void store_task_on_checked(struct store_task *task, store_task_checked_fn fn, void *arg);

/* The sha256 of a complete task's content: the recorded digest if it has one,
 * else read and hashed: with a callback set (store_task_on_checked) and more
 * than a slice to read, a slice per loop turn (-EINPROGRESS, then the
 * callback, then ask again: the sha256 is the task's recorded digest from
 * then on); else now (synchronous). -EBADMSG if a task without a digest is
 * not complete (any more: pieces dropped as damaged). */
int store_task_sha256(struct store_task *task, uint8_t out[32]);

/* Imports a local file as a complete task with id = sha256 of its content
 * (hard link when on the same filesystem, else a copy), at once. */
int store_import(struct store *store, const char *path, uint8_t id_out[META_ID_SIZE], char *err,
		 size_t err_size);

/*
 * An import or an export done a slice at a time, so that a large file does
 * not hold the loop: begin, then store_job_step until it returns 0 (done) or
 * a negative errno (err says why), then store_job_free, which also abandons
 * an unfinished job (an import leaves nothing behind).
 *
 * store_import_begin: the regular file open as fd (borrowed until the free;
 * copied, never linked: the daemon imports files its clients open), `name`
 * for messages; store_job_id gives the task id once done. No task exists
 * under that id before the last byte is written, hashed and synced.
 * store_export_begin: a complete task's content to out_fd (borrowed until
 * the free) from its output offset; the job holds the task. -EAGAIN if the
 * task is not complete, unless every piece is recorded and its digest (if
 * it has one) checked: a finish waiting for the file's fdatasync (options.sync
 * task) does not hold an export back.
 */
struct store_job;
int store_import_begin(struct store *store, int fd, const char *name, struct store_job **out,
		       char *err, size_t err_size);
int store_export_begin(struct store_task *task, int out_fd, struct store_job **out, char *err,
		       size_t err_size);
/* Works through about `budget` bytes: 1 if there is more, 0 when done, < 0 failed. */
int store_job_step(struct store_job *job, size_t budget, char *err, size_t err_size);
void store_job_id(const struct store_job *job, uint8_t id[META_ID_SIZE]);
uint64_t store_job_done(const struct store_job *job);
void store_job_free(struct store_job *job);

/* Calls fn for every complete task's record (borrowed for the call), in id
 * order; a non-zero return stops the walk and is returned. */
int store_foreach_complete(struct store *store,
			   int (*fn)(const struct meta_task *task, void *arg), void *arg);

/* Deletes a task's record and content file. -EBUSY while anyone holds it
 * open, -ENOENT if there is no such task. */
int store_delete(struct store *store, const uint8_t id[META_ID_SIZE]);

/* Copies a complete task's content to out_fd (borrowed) from its start, at once. */
int store_export(struct store_task *task, int out_fd, char *err, size_t err_size);

/* The content file path of a task id into out[out_size]. */
void store_content_path(const struct store *store, const uint8_t id[META_ID_SIZE], char *out,
			size_t out_size);

#endif
