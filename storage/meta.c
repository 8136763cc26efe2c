/* meta: task records and recorded pieces in LMDB, with explicit on-disk encodings. */
#include "storage/meta.h"

#include <assert.h>
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "storage/piece.h"

/*
 * On-disk formats (never the structs' layout):
 *
 * "tasks" key: the task id, 32 bytes. Value, little endian, version 1:
 *    0  u8      version (1)
 *    1  u8      flags (bit 0: has_digest; other bits must be 0)
 *    2  u64     content_length
 *   10  u64     piece_length
 *   18  u32     piece_count
 *   22  u32     pieces_done
 *   26  u64     bytes_done
 *   34  u32     state
 *   38  u8[32]  digest (kept as given, whatever has_digest says)
 *   70  u64     created_ms
 *   78  u64     accessed_ms
 *   86  u32     url length n (<= META_URL_MAX - 1)
 *   90  u8[n]   url, no NUL; the value is exactly 90 + n bytes, unless
 * with flag bit 1 (has a validator; records without it are as before):
 * 90+n  u32     validator length m (<= META_VALIDATOR_MAX - 1)
 * 94+n  u8[m]   validator, no NUL; the value is exactly 94 + n + m bytes
 *
 * "pieces" key: task id (32 bytes) + piece number (u32 big endian). Value:
 * crc32c, u32 little endian.
 *
 * pieces_done and bytes_done belong to the store, not to the caller: they
 * always describe the task's piece rows. meta_task_put keeps them (or counts
 * the rows again when the task's lengths change); meta_pieces_record and
 * meta_pieces_drop change them in the transaction that changes the rows.
 */
#define META_RECORD_VERSION    1u
#define META_RECORD_HAS_DIGEST (1u << 0)
#define META_RECORD_HAS_VALIDATOR (1u << 1)
#define META_RECORD_FIXED      90u
#define META_RECORD_MAX	       (META_RECORD_FIXED + META_URL_MAX - 1 + 4 + META_VALIDATOR_MAX - 1)
#define META_PIECE_KEY_SIZE    (META_ID_SIZE + 4)
#define META_PIECE_VALUE_SIZE  4u

#define META_MAP_SIZE_DEFAULT (1ull << 30)
#define META_MAX_DBS	      2
/* Pieces read per read transaction by meta_pieces_foreach. */
#define META_PIECES_BATCH 256u

struct meta {
	MDB_env *env;
	MDB_dbi tasks;
	MDB_dbi pieces;
};

/* --- errors. */

/* LMDB's return codes as negative errnos. */
static int meta_errno(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_KEYEXIST:
		return -EEXIST;
	case MDB_MAP_FULL:
		return -ENOSPC;
	case MDB_TXN_FULL:
		return -E2BIG; /* too many dirty pages for one transaction */
	case MDB_READERS_FULL:
		return -EAGAIN;
	case MDB_BAD_VALSIZE:
		return -EINVAL;
	case MDB_CORRUPTED:
	case MDB_PANIC:
	case MDB_PAGE_NOTFOUND:
	case MDB_INVALID:
	case MDB_VERSION_MISMATCH:
		return -EIO;
	default:
		/* LMDB's own codes are negative; anything else is an errno. */
		return rc > 0 ? -rc : -EIO;
	}
}

/* --- byte order. */

static uint8_t *meta_put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
	return p + 4;
}

static uint8_t *meta_put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
	return p + 8;
}

static uint32_t meta_get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t meta_get_le64(const uint8_t *p)
{
	return (uint64_t)meta_get_le32(p) | (uint64_t)meta_get_le32(p + 4) << 32;
}

static void meta_piece_key(uint8_t key[META_PIECE_KEY_SIZE], const uint8_t id[META_ID_SIZE],
			   uint32_t number)
{
	memcpy(key, id, META_ID_SIZE);
	key[META_ID_SIZE + 0] = (uint8_t)(number >> 24);
	key[META_ID_SIZE + 1] = (uint8_t)(number >> 16);
	key[META_ID_SIZE + 2] = (uint8_t)(number >> 8);
	key[META_ID_SIZE + 3] = (uint8_t)number;
}

static uint32_t meta_piece_key_number(const uint8_t *key)
{
	const uint8_t *p = key + META_ID_SIZE;

	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Is key a row of task id in "pieces"? */
static bool meta_piece_key_of(const MDB_val *key, const uint8_t id[META_ID_SIZE])
{
	return key->mv_size >= META_ID_SIZE && memcmp(key->mv_data, id, META_ID_SIZE) == 0;
}

/* --- task records. */

static bool meta_state_valid(uint32_t state)
{
	return state == META_TASK_PENDING || state == META_TASK_COMPLETE ||
	       state == META_TASK_FAILED;
}

/* Lengths piece_size() can work with for every number below piece_count. */
/* The piece count is the one the lengths give, and one the store can hold:
 * a record saying otherwise (a corrupt one) would size its bitmaps wrong. */
static bool meta_lengths_valid(uint64_t content_length, uint64_t piece_length,
			       uint32_t piece_count)
{
	uint64_t count;

	if (content_length == 0 || content_length == META_LENGTH_UNKNOWN)
		return piece_count == 0;
	if (piece_length == 0 || piece_length > UINT32_MAX)
		return false;
	count = content_length / piece_length + (content_length % piece_length != 0);
	return count == piece_count && count <= PIECE_COUNT_MAX;
}

/* Encodes task into buf (META_RECORD_MAX bytes); returns the length. */
static size_t meta_record_encode(const struct meta_task *task, uint8_t *buf)
{
	size_t url_len = strnlen(task->url, META_URL_MAX);
	size_t validator_len = strnlen(task->validator, META_VALIDATOR_MAX);
	uint8_t *p = buf;

	assert(url_len < META_URL_MAX && validator_len < META_VALIDATOR_MAX);
	*p++ = META_RECORD_VERSION;
	*p++ = (task->has_digest ? META_RECORD_HAS_DIGEST : 0) |
	       (validator_len ? META_RECORD_HAS_VALIDATOR : 0);
	p = meta_put_le64(p, task->content_length);
	p = meta_put_le64(p, task->piece_length);
	p = meta_put_le32(p, task->piece_count);
	p = meta_put_le32(p, task->pieces_done);
	p = meta_put_le64(p, task->bytes_done);
	p = meta_put_le32(p, task->state);
	memcpy(p, task->digest, sizeof(task->digest));
	p += sizeof(task->digest);
	p = meta_put_le64(p, task->created_ms);
	p = meta_put_le64(p, task->accessed_ms);
	p = meta_put_le32(p, (uint32_t)url_len);
	assert((size_t)(p - buf) == META_RECORD_FIXED);
	memcpy(p, task->url, url_len);
	p += url_len;
	if (validator_len) {
		p = meta_put_le32(p, (uint32_t)validator_len);
		memcpy(p, task->validator, validator_len);
		p += validator_len;
	}
	return (size_t)(p - buf);
}

/* Decodes a record; out is written only if it is valid (else -EINVAL). */
static int meta_record_decode(const MDB_val *key, const MDB_val *val, struct meta_task *out)
{
	const uint8_t *p = val->mv_data;
	uint32_t url_len, validator_len = 0, state, piece_count, pieces_done;
	size_t end;

	if (key->mv_size != META_ID_SIZE || val->mv_size < META_RECORD_FIXED)
		return -EINVAL;
	if (p[0] != META_RECORD_VERSION ||
	    (p[1] & ~(META_RECORD_HAS_DIGEST | META_RECORD_HAS_VALIDATOR)) != 0)
		return -EINVAL;
	url_len = meta_get_le32(p + 86);
	if (url_len > META_URL_MAX - 1 || val->mv_size < META_RECORD_FIXED + url_len)
		return -EINVAL;
	end = META_RECORD_FIXED + url_len;
	if (p[1] & META_RECORD_HAS_VALIDATOR) {
		if (val->mv_size < end + 4)
			return -EINVAL;
		validator_len = meta_get_le32(p + end);
		if (validator_len == 0 || validator_len > META_VALIDATOR_MAX - 1)
			return -EINVAL;
		end += 4 + validator_len;
	}
	if (val->mv_size != end)
		return -EINVAL;
	if (memchr(p + META_RECORD_FIXED, '\0', url_len) ||
	    memchr(p + end - validator_len, '\0', validator_len))
		return -EINVAL;
	piece_count = meta_get_le32(p + 18);
	pieces_done = meta_get_le32(p + 22);
	state = meta_get_le32(p + 34);
	if (pieces_done > piece_count || !meta_state_valid(state) ||
	    !meta_lengths_valid(meta_get_le64(p + 2), meta_get_le64(p + 10), piece_count))
		return -EINVAL;

	memcpy(out->id, key->mv_data, META_ID_SIZE);
	out->has_digest = p[1] & META_RECORD_HAS_DIGEST;
	out->content_length = meta_get_le64(p + 2);
	out->piece_length = meta_get_le64(p + 10);
	out->piece_count = piece_count;
	out->pieces_done = pieces_done;
	out->bytes_done = meta_get_le64(p + 26);
	out->state = state;
	memcpy(out->digest, p + 38, sizeof(out->digest));
	out->created_ms = meta_get_le64(p + 70);
	out->accessed_ms = meta_get_le64(p + 78);
	memcpy(out->url, p + META_RECORD_FIXED, url_len);
	out->url[url_len] = '\0';
	memcpy(out->validator, p + end - validator_len, validator_len);
	out->validator[validator_len] = '\0';
	return 0;
}

static int meta_record_load(struct meta *meta, MDB_txn *txn, const uint8_t id[META_ID_SIZE],
			    struct meta_task *out)
{
	MDB_val key = { .mv_size = META_ID_SIZE, .mv_data = (void *)id };
	MDB_val val;
	int rc;

	rc = mdb_get(txn, meta->tasks, &key, &val);
	if (rc != MDB_SUCCESS)
		return meta_errno(rc);
	return meta_record_decode(&key, &val, out);
}

static int meta_record_store(struct meta *meta, MDB_txn *txn, const struct meta_task *task)
{
	uint8_t buf[META_RECORD_MAX];
	MDB_val key = { .mv_size = META_ID_SIZE, .mv_data = (void *)task->id };
	MDB_val val = { .mv_data = buf };

	val.mv_size = meta_record_encode(task, buf);
	return meta_errno(mdb_put(txn, meta->tasks, &key, &val, 0));
}

/* Counts the task's piece rows into task->pieces_done and bytes_done, with
 * its lengths. A row past its piece_count is -EINVAL. */
static int meta_pieces_count(struct meta *meta, MDB_txn *txn, struct meta_task *task)
{
	uint8_t first[META_PIECE_KEY_SIZE];
	MDB_val key = { .mv_size = sizeof(first), .mv_data = first };
	MDB_val val;
	MDB_cursor *cursor;
	uint32_t done = 0;
	uint64_t bytes = 0;
	int rc;

	rc = mdb_cursor_open(txn, meta->pieces, &cursor);
	if (rc != MDB_SUCCESS)
		return meta_errno(rc);
	meta_piece_key(first, task->id, 0);
	for (rc = mdb_cursor_get(cursor, &key, &val, MDB_SET_RANGE);
	     rc == MDB_SUCCESS && meta_piece_key_of(&key, task->id);
	     rc = mdb_cursor_get(cursor, &key, &val, MDB_NEXT)) {
		uint32_t number;

		if (key.mv_size != META_PIECE_KEY_SIZE) {
			rc = EINVAL;
			break;
		}
		number = meta_piece_key_number(key.mv_data);
		if (number >= task->piece_count) {
			rc = EINVAL;
			break;
		}
		done++;
		bytes += piece_size(task->content_length, task->piece_length, number);
	}
	mdb_cursor_close(cursor);
	if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND)
		return meta_errno(rc);
	task->pieces_done = done;
	task->bytes_done = bytes;
	return 0;
}

/* --- open and close. */

int meta_open(struct meta **out, const char *dir, uint64_t map_size, char *err, size_t err_size)
{
	struct meta *meta;
	const char *why;
	MDB_txn *txn;
	int rc;

	*out = NULL;
	if (map_size == 0)
		map_size = META_MAP_SIZE_DEFAULT;
#if SIZE_MAX < UINT64_MAX
	if (map_size > SIZE_MAX) {
		rc = -EINVAL;
		why = "map size too large";
		goto out_report;
	}
#endif
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		rc = -errno;
		why = strerror(errno);
		goto out_report;
	}
	meta = calloc(1, sizeof(*meta));
	if (!meta) {
		rc = -ENOMEM;
		why = strerror(ENOMEM);
		goto out_report;
	}
	rc = mdb_env_create(&meta->env);
	if (rc != MDB_SUCCESS)
		goto out_free;
	rc = mdb_env_set_maxdbs(meta->env, META_MAX_DBS);
	if (rc == MDB_SUCCESS)
		rc = mdb_env_set_mapsize(meta->env, (size_t)map_size);
	if (rc == MDB_SUCCESS)
		rc = mdb_env_open(meta->env, dir, MDB_NOTLS, 0600);
	if (rc != MDB_SUCCESS)
		goto out_close_env;

	rc = mdb_txn_begin(meta->env, NULL, 0, &txn);
	if (rc != MDB_SUCCESS)
		goto out_close_env;
	rc = mdb_dbi_open(txn, "tasks", MDB_CREATE, &meta->tasks);
	if (rc == MDB_SUCCESS)
		rc = mdb_dbi_open(txn, "pieces", MDB_CREATE, &meta->pieces);
	if (rc != MDB_SUCCESS) {
		mdb_txn_abort(txn);
		goto out_close_env;
	}
	rc = mdb_txn_commit(txn);
	if (rc != MDB_SUCCESS)
		goto out_close_env;

	*out = meta;
	return 0;

	/* rc is LMDB's here: mdb_strerror names its own codes and errnos alike. */
out_close_env:
	mdb_env_close(meta->env);
out_free:
	free(meta);
	why = mdb_strerror(rc);
	rc = meta_errno(rc);
out_report:
	snprintf(err, err_size, "%s: cannot open the metadata store: %s", dir, why);
	return rc;
}

void meta_close(struct meta *meta)
{
	if (!meta)
		return;
	mdb_env_close(meta->env);
	free(meta);
}

/* --- task records. */

int meta_task_put(struct meta *meta, const struct meta_task *task)
{
	struct meta_task record, old;
	MDB_txn *txn;
	int rc;

	if (strnlen(task->url, META_URL_MAX) == META_URL_MAX ||
	    strnlen(task->validator, META_VALIDATOR_MAX) == META_VALIDATOR_MAX ||
	    !meta_state_valid(task->state) ||
	    !meta_lengths_valid(task->content_length, task->piece_length, task->piece_count))
		return -EINVAL;
	record = *task;

	rc = mdb_txn_begin(meta->env, NULL, 0, &txn);
	if (rc != MDB_SUCCESS)
		return meta_errno(rc);
	rc = meta_record_load(meta, txn, task->id, &old);
	if (rc == 0 && old.content_length == record.content_length &&
	    old.piece_length == record.piece_length && old.piece_count == record.piece_count) {
		record.pieces_done = old.pieces_done;
		record.bytes_done = old.bytes_done;
	} else if (rc == 0 || rc == -ENOENT || rc == -EINVAL) {
		/* New lengths, a new task, or a record that did not decode
		 * (replacing it repairs it): count what the rows say. */
		rc = meta_pieces_count(meta, txn, &record);
		if (rc < 0)
			goto out_abort;
	} else {
		goto out_abort;
	}
	rc = meta_record_store(meta, txn, &record);
	if (rc < 0)
		goto out_abort;
	return meta_errno(mdb_txn_commit(txn));

out_abort:
	mdb_txn_abort(txn);
	return rc;
}

int meta_task_get(struct meta *meta, const uint8_t id[META_ID_SIZE], struct meta_task *out)
{
	MDB_txn *txn;
	int rc;

	rc = mdb_txn_begin(meta->env, NULL, MDB_RDONLY, &txn);
	if (rc != MDB_SUCCESS)
		return meta_errno(rc);
	rc = meta_record_load(meta, txn, id, out);
	mdb_txn_abort(txn);
	return rc;
}

int meta_task_delete(struct meta *meta, const uint8_t id[META_ID_SIZE])
{
	uint8_t first[META_PIECE_KEY_SIZE];
	MDB_val key = { .mv_size = META_ID_SIZE, .mv_data = (void *)id };
	MDB_val val;
	MDB_cursor *cursor;
	MDB_txn *txn;
	int rc;

	rc = mdb_txn_begin(meta->env, NULL, 0, &txn);
	if (rc != MDB_SUCCESS)
		return meta_errno(rc);
	rc = mdb_del(txn, meta->tasks, &key, NULL);
	if (rc != MDB_SUCCESS)
		goto out_abort;

	rc = mdb_cursor_open(txn, meta->pieces, &cursor);
	if (rc != MDB_SUCCESS)
		goto out_abort;
	meta_piece_key(first, id, 0);
	key.mv_size = sizeof(first);
	key.mv_data = first;
	/* After mdb_cursor_del the cursor stands on the next row: MDB_NEXT
	 * returns it rather than skipping it. */
	for (rc = mdb_cursor_get(cursor, &key, &val, MDB_SET_RANGE);
	     rc == MDB_SUCCESS && meta_piece_key_of(&key, id);
	     rc = mdb_cursor_get(cursor, &key, &val, MDB_NEXT)) {
		rc = mdb_cursor_del(cursor, 0);
		if (rc != MDB_SUCCESS)
			break;
	}
	mdb_cursor_close(cursor);
	if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND)
		goto out_abort;
	return meta_errno(mdb_txn_commit(txn));

out_abort:
	mdb_txn_abort(txn);
	return meta_errno(rc);
}

/* Loads the record in a write transaction, sets one field, stores it. */
enum meta_field {
	META_FIELD_ACCESSED,
	META_FIELD_STATE,
};

static int meta_task_update(struct meta *meta, const uint8_t id[META_ID_SIZE],
			    enum meta_field field, uint64_t value)
{
	struct meta_task task;
	MDB_txn *txn;
	int rc;

	rc = mdb_txn_begin(meta->env, NULL, 0, &txn);
	if (rc != MDB_SUCCESS)
		return meta_errno(rc);
	rc = meta_record_load(meta, txn, id, &task);
	if (rc < 0)
		goto out_abort;
	switch (field) {
	case META_FIELD_ACCESSED:
		task.accessed_ms = value;
		break;
	case META_FIELD_STATE:
		task.state = (uint32_t)value;
		break;
	}
	rc = meta_record_store(meta, txn, &task);
	if (rc < 0)
		goto out_abort;
	return meta_errno(mdb_txn_commit(txn));

out_abort:
	mdb_txn_abort(txn);
	return rc;
}

int meta_task_touch(struct meta *meta, const uint8_t id[META_ID_SIZE], uint64_t accessed_ms)
{
	return meta_task_update(meta, id, META_FIELD_ACCESSED, accessed_ms);
}

int meta_task_set_state(struct meta *meta, const uint8_t id[META_ID_SIZE], uint32_t state)
{
	if (!meta_state_valid(state))
		return -EINVAL;
	return meta_task_update(meta, id, META_FIELD_STATE, state);
}

/* --- pieces. */

int meta_pieces_record(struct meta *meta, const uint8_t id[META_ID_SIZE],
		       const struct meta_piece *pieces, size_t count)
{
	uint8_t key_buf[META_PIECE_KEY_SIZE], crc_buf[META_PIECE_VALUE_SIZE];
	struct meta_task task;
	MDB_txn *txn;
	int rc;

	if (count > 0 && !pieces)
		return -EINVAL;
	rc = mdb_txn_begin(meta->env, NULL, 0, &txn);
	if (rc != MDB_SUCCESS)
		return meta_errno(rc);
	rc = meta_record_load(meta, txn, id, &task);
	if (rc < 0)
		goto out_abort;

	for (size_t i = 0; i < count; i++) {
		MDB_val key = { .mv_size = sizeof(key_buf), .mv_data = key_buf };
		MDB_val val = { .mv_size = sizeof(crc_buf), .mv_data = crc_buf };
		uint32_t number = pieces[i].number;

		if (number >= task.piece_count) {
			rc = -EINVAL;
			goto out_abort;
		}
		meta_piece_key(key_buf, id, number);
		meta_put_le32(crc_buf, pieces[i].crc32c);
		rc = mdb_put(txn, meta->pieces, &key, &val, MDB_NOOVERWRITE);
		if (rc == MDB_KEYEXIST) {
			/* val now holds the recorded row. */
			if (val.mv_size != META_PIECE_VALUE_SIZE) {
				rc = -EINVAL;
				goto out_abort;
			}
			if (meta_get_le32(val.mv_data) != pieces[i].crc32c) {
				rc = -EEXIST;
				goto out_abort;
			}
			continue;
		}
		if (rc != MDB_SUCCESS) {
			rc = meta_errno(rc);
			goto out_abort;
		}
		/* A new row: the record counts fewer rows than piece_count. */
		if (task.pieces_done >= task.piece_count) {
			rc = -EIO;
			goto out_abort;
		}
		task.pieces_done++;
		task.bytes_done += piece_size(task.content_length, task.piece_length, number);
	}

	rc = meta_record_store(meta, txn, &task);
	if (rc < 0)
		goto out_abort;
	return meta_errno(mdb_txn_commit(txn));

out_abort:
	mdb_txn_abort(txn);
	return rc;
}

int meta_pieces_drop(struct meta *meta, const uint8_t id[META_ID_SIZE], const uint32_t *numbers,
		     size_t count)
{
	uint8_t key_buf[META_PIECE_KEY_SIZE];
	struct meta_task task;
	MDB_txn *txn;
	int rc;

	if (count > 0 && !numbers)
		return -EINVAL;
	rc = mdb_txn_begin(meta->env, NULL, 0, &txn);
	if (rc != MDB_SUCCESS)
		return meta_errno(rc);
	rc = meta_record_load(meta, txn, id, &task);
	if (rc < 0)
		goto out_abort;

	for (size_t i = 0; i < count; i++) {
		MDB_val key = { .mv_size = sizeof(key_buf), .mv_data = key_buf };
		uint32_t number = numbers[i];
		uint32_t size;

		if (number >= task.piece_count)
			continue; /* no row can exist */
		meta_piece_key(key_buf, id, number);
		rc = mdb_del(txn, meta->pieces, &key, NULL);
		if (rc == MDB_NOTFOUND)
			continue;
		if (rc != MDB_SUCCESS) {
			rc = meta_errno(rc);
			goto out_abort;
		}
		size = piece_size(task.content_length, task.piece_length, number);
		/* The record counted this row: anything else is corruption. */
		if (task.pieces_done == 0 || task.bytes_done < size) {
			rc = -EIO;
			goto out_abort;
		}
		task.pieces_done--;
		task.bytes_done -= size;
	}

	rc = meta_record_store(meta, txn, &task);
	if (rc < 0)
		goto out_abort;
	return meta_errno(mdb_txn_commit(txn));

out_abort:
	mdb_txn_abort(txn);
	return rc;
}

/*
 * Reads up to META_PIECES_BATCH rows of the task from number `from` on in
 * one read transaction. *more says whether rows may follow the batch. The
 * first batch also checks that the task exists.
 */
static int meta_pieces_batch(struct meta *meta, const uint8_t id[META_ID_SIZE], uint32_t from,
			     bool check_task, struct meta_piece *batch, size_t *n, bool *more)
{
	uint8_t first[META_PIECE_KEY_SIZE];
	MDB_val key, val;
	MDB_cursor *cursor;
	MDB_txn *txn;
	int rc;

	*n = 0;
	*more = false;
	rc = mdb_txn_begin(meta->env, NULL, MDB_RDONLY, &txn);
	if (rc != MDB_SUCCESS)
		return meta_errno(rc);
	if (check_task) {
		key.mv_size = META_ID_SIZE;
		key.mv_data = (void *)id;
		rc = mdb_get(txn, meta->tasks, &key, &val);
		if (rc != MDB_SUCCESS)
			goto out_abort;
	}
	rc = mdb_cursor_open(txn, meta->pieces, &cursor);
	if (rc != MDB_SUCCESS)
		goto out_abort;
	meta_piece_key(first, id, from);
	key.mv_size = sizeof(first);
	key.mv_data = first;
	for (rc = mdb_cursor_get(cursor, &key, &val, MDB_SET_RANGE);
	     rc == MDB_SUCCESS && meta_piece_key_of(&key, id);
	     rc = mdb_cursor_get(cursor, &key, &val, MDB_NEXT)) {
		if (*n == META_PIECES_BATCH) {
			*more = true;
			break;
		}
		if (key.mv_size != META_PIECE_KEY_SIZE || val.mv_size != META_PIECE_VALUE_SIZE) {
			rc = EINVAL;
			break;
		}
		batch[*n].number = meta_piece_key_number(key.mv_data);
		batch[*n].crc32c = meta_get_le32(val.mv_data);
		(*n)++;
	}
	mdb_cursor_close(cursor);
	if (rc == MDB_NOTFOUND)
		rc = MDB_SUCCESS;
out_abort:
	mdb_txn_abort(txn);
	return meta_errno(rc);
}

/*
 * In batches, each read in its own short read transaction and handed to fn
 * after it ends: fn may record or drop pieces (a change behind the walk's
 * position is not seen, one ahead of it is), and a slow fn does not pin old
 * pages of the map.
 */
int meta_pieces_foreach(struct meta *meta, const uint8_t id[META_ID_SIZE],
			int (*fn)(const struct meta_piece *piece, void *arg), void *arg)
{
	struct meta_piece batch[META_PIECES_BATCH];
	uint32_t from = 0;
	bool more = true;
	size_t n;
	int rc;

	for (bool first = true; more; first = false) {
		rc = meta_pieces_batch(meta, id, from, first, batch, &n, &more);
		if (rc < 0)
			return rc;
		for (size_t i = 0; i < n; i++) {
			rc = fn(&batch[i], arg);
			if (rc != 0)
				return rc;
		}
		if (n == 0)
			break;
		/* A batch is full only when a row follows its last, so its
		 * number is below UINT32_MAX. */
		assert(!more || batch[n - 1].number < UINT32_MAX);
		from = batch[n - 1].number + 1;
	}
	return 0;
}

/*
 * One read transaction for the whole walk: the snapshot the header promises.
 * fn runs inside it and may still call the write functions: MDB_NOTLS ties
 * the reader slot to the transaction, not to the thread, so the thread may
 * begin a write transaction meanwhile, and LMDB writers never wait for
 * readers. The cost: pages freed by writes during the walk are reused only
 * after it ends.
 */
int meta_tasks_foreach(struct meta *meta, int (*fn)(const struct meta_task *task, void *arg),
		       void *arg)
{
	return meta_tasks_walk(meta, fn, NULL, arg);
}

int meta_tasks_walk(struct meta *meta, int (*fn)(const struct meta_task *task, void *arg),
		    int (*bad)(const uint8_t id[META_ID_SIZE], void *arg), void *arg)
{
	struct meta_task *task;
	MDB_cursor *cursor;
	MDB_val key, val;
	MDB_txn *txn;
	int rc, ret = 0;

	/* 4 KiB of url: off the stack, fn may need it. */
	task = malloc(sizeof(*task));
	if (!task)
		return -ENOMEM;
	rc = mdb_txn_begin(meta->env, NULL, MDB_RDONLY, &txn);
	if (rc != MDB_SUCCESS)
		goto out_free;
	rc = mdb_cursor_open(txn, meta->tasks, &cursor);
	if (rc != MDB_SUCCESS)
		goto out_abort;
	/* rc is LMDB's, ret the decoder's or fn's (returned as it is). */
	for (rc = mdb_cursor_get(cursor, &key, &val, MDB_FIRST); rc == MDB_SUCCESS;
	     rc = mdb_cursor_get(cursor, &key, &val, MDB_NEXT)) {
		ret = meta_record_decode(&key, &val, task);
		if (ret == 0) {
			ret = fn(task, arg);
		} else if (bad) {
			uint8_t id[META_ID_SIZE] = { 0 };

			if (key.mv_size == META_ID_SIZE)
				memcpy(id, key.mv_data, META_ID_SIZE);
			ret = bad(id, arg);
		}
		if (ret != 0)
			break;
	}
	if (rc == MDB_NOTFOUND)
		rc = MDB_SUCCESS;
	mdb_cursor_close(cursor);
out_abort:
	mdb_txn_abort(txn);
out_free:
	free(task);
	return ret != 0 ? ret : meta_errno(rc);
}
