/* meta: the cache's metadata in LMDB: task records and the pieces each has on disk. */
#ifndef RINGFLY_STORAGE_META_H
#define RINGFLY_STORAGE_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Two LMDB databases in one environment at <data_dir>/meta/:
 *   "tasks":  key = task id (32 bytes) -> task record (versioned, little endian)
 *   "pieces": key = task id (32 bytes) + piece number (u32 big endian, so a
 *             cursor walks a task's pieces in order) -> crc32c (u32)
 * A piece row exists only for a piece whose bytes the storage layer made
 * durable before calling meta_pieces_record: the metadata is never ahead of
 * the data. Every write is one LMDB transaction, durable at commit.
 *
 * Functions return 0 or a negative errno: -ENOENT (no such task), -ENOSPC
 * (the map is full), -EIO (LMDB reported corruption or an I/O error),
 * -EINVAL (a record that does not decode, or bad arguments), -ENOMEM.
 */

#define META_ID_SIZE 32
#define META_URL_MAX 4096
#define META_VALIDATOR_MAX 256	/* an origin's ETag or Last-Modified, tagged */
#define META_LENGTH_UNKNOWN UINT64_MAX

enum meta_task_state {
	META_TASK_PENDING = 1,	/* being filled; resumable */
	META_TASK_COMPLETE = 2, /* every piece recorded and the digest checked */
	META_TASK_FAILED = 3,	/* gave up; kept only until GC */
};

struct meta_task {
	uint8_t id[META_ID_SIZE];
	uint64_t content_length;   /* META_LENGTH_UNKNOWN while unknown */
	uint64_t piece_length;
	uint32_t piece_count;
	uint32_t pieces_done;	   /* maintained by meta_pieces_record/drop */
	uint64_t bytes_done;	   /* maintained by meta_pieces_record/drop */
	uint32_t state;		   /* enum meta_task_state */
	bool has_digest;
	uint8_t digest[32];	   /* sha256 of the whole content, if known */
	uint64_t created_ms;	   /* wall clock, ms since the epoch */
	uint64_t accessed_ms;
	char url[META_URL_MAX];	   /* NUL-terminated; may be empty (imports) */
	/* What the origin said identifies this content ("etag:..." or "lm:..."),
	 * so that a resume after a restart can tell it changed; may be empty. */
	char validator[META_VALIDATOR_MAX];
};

struct meta_piece {
	uint32_t number;
	uint32_t crc32c;
};

struct meta;

/*
 * Opens (creating if needed, 0700) the environment in directory `dir` with a
 * map of map_size bytes (0 = 1 GiB). err names the directory and the reason.
 */
int meta_open(struct meta **out, const char *dir, uint64_t map_size, char *err, size_t err_size);
void meta_close(struct meta *meta);

/* Creates or replaces a task record (pieces untouched). url longer than
 * META_URL_MAX - 1 or validator longer than META_VALIDATOR_MAX - 1 is -EINVAL. */
int meta_task_put(struct meta *meta, const struct meta_task *task);
int meta_task_get(struct meta *meta, const uint8_t id[META_ID_SIZE], struct meta_task *out);
/* Removes the record and all its pieces. -ENOENT if there was no record. */
int meta_task_delete(struct meta *meta, const uint8_t id[META_ID_SIZE]);
int meta_task_touch(struct meta *meta, const uint8_t id[META_ID_SIZE], uint64_t accessed_ms);
int meta_task_set_state(struct meta *meta, const uint8_t id[META_ID_SIZE], uint32_t state);

/*
 * Records `count` pieces in one transaction and adds them to the task's
 * pieces_done and bytes_done (piece sizes from storage/piece.h and the task's
 * lengths). A piece already recorded with the same crc is skipped (not counted
 * twice); with a different crc it is -EEXIST and nothing is written. A number
 * >= piece_count is -EINVAL. -ENOENT without a task record.
 */
int meta_pieces_record(struct meta *meta, const uint8_t id[META_ID_SIZE],
		       const struct meta_piece *pieces, size_t count);
/* Removes recorded pieces (found bad) and subtracts them; absent ones are skipped. */
int meta_pieces_drop(struct meta *meta, const uint8_t id[META_ID_SIZE], const uint32_t *numbers,
		     size_t count);
/* Calls fn for each recorded piece of the task in number order; a non-zero
 * return from fn stops the walk and is returned. */
int meta_pieces_foreach(struct meta *meta, const uint8_t id[META_ID_SIZE],
			int (*fn)(const struct meta_piece *piece, void *arg), void *arg);
/* Calls fn for every task in id order (read-only snapshot: fn may call the
 * write functions above; they do not change what this walk sees). A non-zero
 * return from fn stops the walk and is returned. */
int meta_tasks_foreach(struct meta *meta, int (*fn)(const struct meta_task *task, void *arg),
		       void *arg);
/* The same walk, but a record that does not decode (a corrupt one) goes to
 * bad(id, arg) instead of ending the walk (its key, when it is an id's size;
 * else a zero id). A non-zero return from either stops the walk. */
int meta_tasks_walk(struct meta *meta, int (*fn)(const struct meta_task *task, void *arg),
		    int (*bad)(const uint8_t id[META_ID_SIZE], void *arg), void *arg);

#endif
