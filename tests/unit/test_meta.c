/* test_meta: the LMDB metadata store: records, pieces, walks, persistence, errors. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/meta.h"
#include "storage/piece.h"

#define MIB (1ull << 20)

static char dir[40];
static char path[100];
static char err[512];
static struct meta *m;

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/rf-meta-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/meta", dir);
	err[0] = '\0';
	cr_assert_eq(meta_open(&m, path, 0, err, sizeof(err)), 0, "%s", err);
}

static void teardown(void)
{
	char cmd[128];

	meta_close(m);
	m = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(meta, .init = setup, .fini = teardown);

static void reopen(void)
{
	meta_close(m);
	m = NULL;
	cr_assert_eq(meta_open(&m, path, 0, err, sizeof(err)), 0, "%s", err);
}

/* Ids that sort by n: a fixed 30-byte prefix, then n big endian. */
static void make_id(uint8_t id[META_ID_SIZE], unsigned n)
{
	for (int i = 0; i < META_ID_SIZE; i++)
		id[i] = (uint8_t)(0xA0 + i);
	id[30] = (uint8_t)(n >> 8);
	id[31] = (uint8_t)n;
}

static void make_task(struct meta_task *t, unsigned n, uint64_t content_length,
		      uint64_t piece_length)
{
	memset(t, 0, sizeof(*t));
	make_id(t->id, n);
	t->content_length = content_length;
	t->piece_length = piece_length;
	t->piece_count = piece_count(content_length, piece_length);
	t->state = META_TASK_PENDING;
	t->created_ms = 1700000000000ull + n;
	t->accessed_ms = 1700000000500ull + n;
	snprintf(t->url, sizeof(t->url), "https://origin.example/blob/%u", n);
}

static void put_task(unsigned n, uint64_t content_length, uint64_t piece_length)
{
	struct meta_task t;

	make_task(&t, n, content_length, piece_length);
	cr_assert_eq(meta_task_put(m, &t), 0);
}

static void assert_task_eq(const struct meta_task *a, const struct meta_task *b)
{
	cr_assert_eq(memcmp(a->id, b->id, META_ID_SIZE), 0);
	cr_assert_eq(a->content_length, b->content_length);
	cr_assert_eq(a->piece_length, b->piece_length);
	cr_assert_eq(a->piece_count, b->piece_count);
	cr_assert_eq(a->pieces_done, b->pieces_done);
	cr_assert_eq(a->bytes_done, b->bytes_done);
	cr_assert_eq(a->state, b->state);
	cr_assert_eq(a->has_digest, b->has_digest);
	cr_assert_eq(memcmp(a->digest, b->digest, sizeof(a->digest)), 0);
	cr_assert_eq(a->created_ms, b->created_ms);
	cr_assert_eq(a->accessed_ms, b->accessed_ms);
	cr_assert_str_eq(a->url, b->url);
	cr_assert_str_eq(a->validator, b->validator);
}

static void record(unsigned n, uint32_t number, uint32_t crc)
{
	struct meta_piece p = { .number = number, .crc32c = crc };
	uint8_t id[META_ID_SIZE];

	make_id(id, n);
	cr_assert_eq(meta_pieces_record(m, id, &p, 1), 0);
}

static struct meta_task get_task(unsigned n)
{
	struct meta_task t;
	uint8_t id[META_ID_SIZE];

	make_id(id, n);
	cr_assert_eq(meta_task_get(m, id, &t), 0);
	return t;
}

/* --- collecting pieces. */

struct pieces_seen {
	struct meta_piece list[2048];
	size_t count;
	size_t stop_after; /* 0: never stop */
	bool drop_each;
	const uint8_t *id;
};

static int collect_piece(const struct meta_piece *piece, void *arg)
{
	struct pieces_seen *seen = arg;

	cr_assert_lt(seen->count, sizeof(seen->list) / sizeof(seen->list[0]));
	seen->list[seen->count++] = *piece;
	if (seen->drop_each)
		cr_assert_eq(meta_pieces_drop(m, seen->id, &piece->number, 1), 0);
	if (seen->stop_after && seen->count == seen->stop_after)
		return 77;
	return 0;
}

static size_t pieces_of(unsigned n, struct pieces_seen *seen)
{
	uint8_t id[META_ID_SIZE];

	make_id(id, n);
	memset(seen, 0, sizeof(*seen));
	cr_assert_eq(meta_pieces_foreach(m, id, collect_piece, seen), 0);
	return seen->count;
}

/* --- raw LMDB access, for bytes the API would never write. */

struct raw {
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi tasks, pieces;
};

/* The store must be closed: one process must not open an environment twice. */
static void raw_begin(struct raw *r)
{
	cr_assert_null(m);
	cr_assert_eq(mdb_env_create(&r->env), 0);
	cr_assert_eq(mdb_env_set_maxdbs(r->env, 2), 0);
	cr_assert_eq(mdb_env_open(r->env, path, MDB_NOTLS, 0600), 0);
	cr_assert_eq(mdb_txn_begin(r->env, NULL, 0, &r->txn), 0);
	cr_assert_eq(mdb_dbi_open(r->txn, "tasks", 0, &r->tasks), 0);
	cr_assert_eq(mdb_dbi_open(r->txn, "pieces", 0, &r->pieces), 0);
}

static void raw_put(struct raw *r, MDB_dbi dbi, const void *key, size_t key_size, const void *val,
		    size_t val_size)
{
	MDB_val k = { .mv_size = key_size, .mv_data = (void *)key };
	MDB_val v = { .mv_size = val_size, .mv_data = (void *)val };

	cr_assert_eq(mdb_put(r->txn, dbi, &k, &v, 0), 0);
}

/* Copies the value at key into buf; returns its size. */
static size_t raw_get(struct raw *r, MDB_dbi dbi, const void *key, size_t key_size, void *buf,
		      size_t buf_size)
{
	MDB_val k = { .mv_size = key_size, .mv_data = (void *)key };
	MDB_val v;

	cr_assert_eq(mdb_get(r->txn, dbi, &k, &v), 0);
	cr_assert_leq(v.mv_size, buf_size);
	memcpy(buf, v.mv_data, v.mv_size);
	return v.mv_size;
}

static void raw_end(struct raw *r)
{
	cr_assert_eq(mdb_txn_commit(r->txn), 0);
	mdb_env_close(r->env);
	cr_assert_eq(meta_open(&m, path, 0, err, sizeof(err)), 0, "%s", err);
}

/* The version 1 encoding, written out independently of meta.c. */
static size_t golden_record(const struct meta_task *t, uint8_t *out)
{
	uint8_t *p = out;
	size_t url_len = strlen(t->url), validator_len = strlen(t->validator);

#define LE(v, n)                                                     \
	do {                                                         \
		for (int i_ = 0; i_ < (n); i_++)                     \
			*p++ = (uint8_t)((uint64_t)(v) >> (8 * i_)); \
	} while (0)
	*p++ = 1;
	*p++ = (t->has_digest ? 1 : 0) | (validator_len ? 2 : 0);
	LE(t->content_length, 8);
	LE(t->piece_length, 8);
	LE(t->piece_count, 4);
	LE(t->pieces_done, 4);
	LE(t->bytes_done, 8);
	LE(t->state, 4);
	memcpy(p, t->digest, 32);
	p += 32;
	LE(t->created_ms, 8);
	LE(t->accessed_ms, 8);
	LE(url_len, 4);
	memcpy(p, t->url, url_len);
	p += url_len;
	if (validator_len) {
		LE(validator_len, 4);
		memcpy(p, t->validator, validator_len);
		p += validator_len;
	}
#undef LE
	return (size_t)(p - out);
}

/* --- task records. */

Test(meta, task_round_trip_every_field)
{
	struct meta_task t, got;

	make_task(&t, 1, 0x0123456789ABull, 8 * MIB);
	t.state = META_TASK_COMPLETE;
	t.has_digest = true;
	for (int i = 0; i < 32; i++)
		t.digest[i] = (uint8_t)(0xF0 ^ i);
	t.created_ms = 0x1122334455667788ull;
	t.accessed_ms = UINT64_MAX - 1;
	cr_assert_eq(meta_task_put(m, &t), 0);
	memset(&got, 0x5A, sizeof(got));
	cr_assert_eq(meta_task_get(m, t.id, &got), 0);
	assert_task_eq(&got, &t);

	/* Unknown length, no digest (digest bytes kept as given), empty url. */
	make_task(&t, 2, META_LENGTH_UNKNOWN, 4 * MIB);
	t.piece_count = 0;
	t.state = META_TASK_FAILED;
	t.digest[0] = 9;
	t.url[0] = '\0';
	cr_assert_eq(meta_task_put(m, &t), 0);
	cr_assert_eq(meta_task_get(m, t.id, &got), 0);
	assert_task_eq(&got, &t);

	/* A validator (the origin's ETag), of the largest length. */
	make_task(&t, 3, 5 * MIB, 4 * MIB);
	snprintf(t.validator, sizeof(t.validator), "etag:\"5f3a-1000\"");
	cr_assert_eq(meta_task_put(m, &t), 0);
	cr_assert_eq(meta_task_get(m, t.id, &got), 0);
	assert_task_eq(&got, &t);
	memset(t.validator, 'v', META_VALIDATOR_MAX - 1);
	t.validator[META_VALIDATOR_MAX - 1] = '\0';
	cr_assert_eq(meta_task_put(m, &t), 0);
	cr_assert_eq(meta_task_get(m, t.id, &got), 0);
	assert_task_eq(&got, &t);
	t.validator[META_VALIDATOR_MAX - 1] = 'v';
	cr_assert_eq(meta_task_put(m, &t), -EINVAL);
}

Test(meta, record_bytes_are_the_documented_encoding)
{
	struct meta_task t, got;
	uint8_t want[5000], have[5000];
	size_t want_size, have_size;
	struct raw r;

	make_task(&t, 3, 10 * MIB + 123, 4 * MIB);
	t.has_digest = true;
	memset(t.digest, 0xC3, sizeof(t.digest));
	cr_assert_eq(meta_task_put(m, &t), 0);
	meta_close(m);
	m = NULL;

	raw_begin(&r);
	want_size = golden_record(&t, want);
	have_size = raw_get(&r, r.tasks, t.id, META_ID_SIZE, have, sizeof(have));
	cr_assert_eq(have_size, want_size);
	cr_assert_eq(memcmp(have, want, want_size), 0);
	cr_assert_eq(have_size, 90 + strlen(t.url));

	/* And the decoder reads what the layout says, counters included. */
	make_task(&t, 4, 100 * MIB, 4 * MIB);
	t.pieces_done = 7;
	t.bytes_done = 28 * MIB;
	want_size = golden_record(&t, want);
	raw_put(&r, r.tasks, t.id, META_ID_SIZE, want, want_size);
	raw_end(&r);
	cr_assert_eq(meta_task_get(m, t.id, &got), 0);
	assert_task_eq(&got, &t);

	/* With a validator: flag bit 1, then its length and bytes after the url. */
	{
		make_task(&t, 5, 10 * MIB, 4 * MIB);
		snprintf(t.validator, sizeof(t.validator), "lm:Thu, 26 Nov 2026 13:00:00 GMT");
		cr_assert_eq(meta_task_put(m, &t), 0);
		meta_close(m);
		m = NULL;
		raw_begin(&r);
		want_size = golden_record(&t, want);
		have_size = raw_get(&r, r.tasks, t.id, META_ID_SIZE, have, sizeof(have));
		raw_end(&r);
		cr_assert_eq(have_size, want_size);
		cr_assert_eq(memcmp(have, want, want_size), 0);
		cr_assert_eq(have_size, 90 + strlen(t.url) + 4 + strlen(t.validator));
		cr_assert_eq(have[1], 2);
		cr_assert_eq(meta_task_get(m, t.id, &got), 0);
		assert_task_eq(&got, &t);
	}
}

Test(meta, url_lengths)
{
	struct meta_task t, got;

	make_task(&t, 1, MIB, 64 << 10);
	memset(t.url, 'u', META_URL_MAX - 1);
	t.url[META_URL_MAX - 1] = '\0';
	cr_assert_eq(meta_task_put(m, &t), 0);
	cr_assert_eq(meta_task_get(m, t.id, &got), 0);
	cr_assert_eq(strlen(got.url), META_URL_MAX - 1);
	assert_task_eq(&got, &t);

	/* No NUL within META_URL_MAX: too long, and nothing is written. */
	make_task(&t, 2, MIB, 64 << 10);
	memset(t.url, 'u', META_URL_MAX);
	cr_assert_eq(meta_task_put(m, &t), -EINVAL);
	cr_assert_eq(meta_task_get(m, t.id, &got), -ENOENT);
}

Test(meta, missing_task_is_enoent)
{
	struct meta_piece p = { .number = 0, .crc32c = 1 };
	uint32_t number = 0;
	uint8_t id[META_ID_SIZE];
	struct pieces_seen seen = { 0 };
	struct meta_task t;

	make_id(id, 42);
	cr_assert_eq(meta_task_get(m, id, &t), -ENOENT);
	cr_assert_eq(meta_task_delete(m, id), -ENOENT);
	cr_assert_eq(meta_task_touch(m, id, 5), -ENOENT);
	cr_assert_eq(meta_task_set_state(m, id, META_TASK_COMPLETE), -ENOENT);
	cr_assert_eq(meta_pieces_record(m, id, &p, 1), -ENOENT);
	cr_assert_eq(meta_pieces_drop(m, id, &number, 1), -ENOENT);
	cr_assert_eq(meta_pieces_foreach(m, id, collect_piece, &seen), -ENOENT);
	cr_assert_eq(seen.count, 0);
}

Test(meta, touch_and_set_state)
{
	struct meta_task t, got;

	make_task(&t, 1, 10 * MIB, 4 * MIB);
	cr_assert_eq(meta_task_put(m, &t), 0);
	cr_assert_eq(meta_task_touch(m, t.id, 123456789), 0);
	cr_assert_eq(meta_task_set_state(m, t.id, META_TASK_COMPLETE), 0);
	cr_assert_eq(meta_task_set_state(m, t.id, 0), -EINVAL);
	cr_assert_eq(meta_task_set_state(m, t.id, 4), -EINVAL);
	cr_assert_eq(meta_task_get(m, t.id, &got), 0);
	t.accessed_ms = 123456789;
	t.state = META_TASK_COMPLETE;
	assert_task_eq(&got, &t);

	/* Bad arguments to put leave the record as it was. */
	t.state = 7;
	cr_assert_eq(meta_task_put(m, &t), -EINVAL);
	t.state = META_TASK_PENDING;
	t.piece_length = 0;
	cr_assert_eq(meta_task_put(m, &t), -EINVAL);
	t.piece_length = 1ull << 33;
	cr_assert_eq(meta_task_put(m, &t), -EINVAL);
	cr_assert_eq(meta_task_get(m, t.id, &got), 0);
	cr_assert_eq(got.state, META_TASK_COMPLETE);
	cr_assert_eq(got.piece_length, 4 * MIB);
}

Test(meta, put_keeps_the_counters_the_store_maintains)
{
	struct meta_piece p[2] = { { 0, 10 }, { 2, 12 } };
	struct meta_task t, got;

	make_task(&t, 1, 10 * MIB + 5, 4 * MIB); /* 3 pieces, the last 2 MiB + 5 */
	t.pieces_done = 3;			 /* ignored: no rows yet */
	t.bytes_done = 999;
	cr_assert_eq(meta_task_put(m, &t), 0);
	got = get_task(1);
	cr_assert_eq(got.pieces_done, 0);
	cr_assert_eq(got.bytes_done, 0);

	cr_assert_eq(meta_pieces_record(m, t.id, p, 2), 0);
	got = get_task(1);
	cr_assert_eq(got.pieces_done, 2);
	cr_assert_eq(got.bytes_done, 6 * MIB + 5);

	/* Read, change, write back with stale counters: the rows win. */
	t.pieces_done = 0;
	t.bytes_done = 0;
	t.has_digest = true;
	cr_assert_eq(meta_task_put(m, &t), 0);
	got = get_task(1);
	cr_assert(got.has_digest);
	cr_assert_eq(got.pieces_done, 2);
	cr_assert_eq(got.bytes_done, 6 * MIB + 5);

	/* New lengths: counted again from the rows (piece 2 is now full). */
	t.content_length = 12 * MIB;
	cr_assert_eq(meta_task_put(m, &t), 0);
	got = get_task(1);
	cr_assert_eq(got.pieces_done, 2);
	cr_assert_eq(got.bytes_done, 8 * MIB);

	/* Lengths that would leave row 2 past the end: refused, nothing changes. */
	t.content_length = 8 * MIB;
	t.piece_count = 2;
	cr_assert_eq(meta_task_put(m, &t), -EINVAL);
	got = get_task(1);
	cr_assert_eq(got.content_length, 12 * MIB);
	cr_assert_eq(got.piece_count, 3);
}

/* --- pieces. */

Test(meta, pieces_record_and_walk_in_number_order)
{
	/* Numbers whose little-endian bytes would sort differently. */
	struct meta_piece p[] = {
		{ 300, 0xDEADBEEF },   { 1, 0x11 }, { 256, 0x256 }, { 0, 0 },
		{ 65536, 0xFFFFFFFF }, { 2, 0x22 },
	};
	static const uint32_t order[] = { 0, 1, 2, 256, 300, 65536 };
	struct pieces_seen seen;
	struct meta_task t;

	make_task(&t, 1, 100000ull * (64 << 10), 64 << 10);
	cr_assert_eq(meta_task_put(m, &t), 0);
	cr_assert_eq(meta_pieces_record(m, t.id, p, sizeof(p) / sizeof(p[0])), 0);
	cr_assert_eq(pieces_of(1, &seen), 6);
	for (size_t i = 0; i < 6; i++) {
		cr_assert_eq(seen.list[i].number, order[i]);
		for (size_t j = 0; j < 6; j++)
			if (p[j].number == order[i])
				cr_assert_eq(seen.list[i].crc32c, p[j].crc32c);
	}
	t = get_task(1);
	cr_assert_eq(t.pieces_done, 6);
	cr_assert_eq(t.bytes_done, 6ull * (64 << 10));

	/* No pieces at all: nothing to call, not an error. */
	put_task(2, MIB, 64 << 10);
	cr_assert_eq(pieces_of(2, &seen), 0);
	/* And zero pieces to record is a no-op. */
	cr_assert_eq(meta_pieces_record(m, t.id, NULL, 0), 0);
}

Test(meta, duplicate_with_same_crc_is_skipped)
{
	struct meta_piece p[] = { { 1, 0xAA }, { 1, 0xAA }, { 2, 0xBB } };
	struct pieces_seen seen;
	struct meta_task t;

	put_task(1, 40 * MIB, 4 * MIB);
	record(1, 1, 0xAA);
	make_id(t.id, 1);
	cr_assert_eq(meta_pieces_record(m, t.id, p, 3), 0); /* 1 twice, and again */
	t = get_task(1);
	cr_assert_eq(t.pieces_done, 2);
	cr_assert_eq(t.bytes_done, 8 * MIB);
	cr_assert_eq(pieces_of(1, &seen), 2);
}

Test(meta, different_crc_is_eexist_and_writes_nothing)
{
	struct meta_piece p[] = { { 3, 0x33 }, { 4, 0x44 }, { 1, 0xAB }, { 5, 0x55 } };
	struct meta_piece twice[] = { { 6, 0x66 }, { 6, 0x67 } };
	struct pieces_seen seen;
	struct meta_task t;

	put_task(1, 40 * MIB, 4 * MIB);
	record(1, 1, 0xAA);
	make_id(t.id, 1);
	cr_assert_eq(meta_pieces_record(m, t.id, p, 4), -EEXIST);
	/* Within one call, too. */
	cr_assert_eq(meta_pieces_record(m, t.id, twice, 2), -EEXIST);

	cr_assert_eq(pieces_of(1, &seen), 1);
	cr_assert_eq(seen.list[0].number, 1);
	cr_assert_eq(seen.list[0].crc32c, 0xAA);
	t = get_task(1);
	cr_assert_eq(t.pieces_done, 1);
	cr_assert_eq(t.bytes_done, 4 * MIB);
}

Test(meta, number_past_the_end_is_einval_and_writes_nothing)
{
	struct meta_piece p[] = { { 0, 1 }, { 10, 2 } }; /* 10 pieces: 0..9 */
	struct pieces_seen seen;
	struct meta_task t;

	put_task(1, 40 * MIB, 4 * MIB);
	make_id(t.id, 1);
	cr_assert_eq(meta_pieces_record(m, t.id, p, 2), -EINVAL);
	cr_assert_eq(pieces_of(1, &seen), 0);
	cr_assert_eq(get_task(1).pieces_done, 0);
}

Test(meta, drop_subtracts_and_skips_absent)
{
	struct meta_piece p[] = { { 0, 1 }, { 1, 2 }, { 2, 3 }, { 3, 4 } };
	uint32_t drop[] = { 1, 3, 3, 9, 100000 }; /* 3 twice, 9 absent, 100000 past the end */
	struct pieces_seen seen;
	struct meta_task t;

	put_task(1, 40 * MIB, 4 * MIB);
	make_id(t.id, 1);
	cr_assert_eq(meta_pieces_record(m, t.id, p, 4), 0);
	cr_assert_eq(meta_pieces_drop(m, t.id, drop, 5), 0);
	cr_assert_eq(pieces_of(1, &seen), 2);
	cr_assert_eq(seen.list[0].number, 0);
	cr_assert_eq(seen.list[1].number, 2);
	t = get_task(1);
	cr_assert_eq(t.pieces_done, 2);
	cr_assert_eq(t.bytes_done, 8 * MIB);

	/* A dropped piece may be recorded again, with another crc. */
	record(1, 1, 0x99);
	cr_assert_eq(get_task(1).pieces_done, 3);
	cr_assert_eq(meta_pieces_drop(m, t.id, NULL, 0), 0);
}

Test(meta, counters_with_a_short_last_piece)
{
	const uint64_t length = 10 * MIB + 123; /* 4 MiB, 4 MiB, 2 MiB + 123 */
	struct meta_piece all[] = { { 2, 3 }, { 0, 1 }, { 1, 2 } };
	uint32_t last = 2, first = 0;
	struct meta_task t;

	put_task(1, length, 4 * MIB);
	t = get_task(1);
	cr_assert_eq(t.piece_count, 3);

	record(1, 2, 3);
	t = get_task(1);
	cr_assert_eq(t.pieces_done, 1);
	cr_assert_eq(t.bytes_done, 2 * MIB + 123);

	cr_assert_eq(meta_pieces_record(m, t.id, all, 3), 0);
	t = get_task(1);
	cr_assert_eq(t.pieces_done, 3);
	cr_assert_eq(t.bytes_done, length);

	cr_assert_eq(meta_pieces_drop(m, t.id, &last, 1), 0);
	t = get_task(1);
	cr_assert_eq(t.pieces_done, 2);
	cr_assert_eq(t.bytes_done, 8 * MIB);
	cr_assert_eq(meta_pieces_drop(m, t.id, &first, 1), 0);
	t = get_task(1);
	cr_assert_eq(t.pieces_done, 1);
	cr_assert_eq(t.bytes_done, 4 * MIB);

	/* Content of one short piece. */
	put_task(2, 1000, 4 * MIB);
	record(2, 0, 7);
	t = get_task(2);
	cr_assert_eq(t.pieces_done, 1);
	cr_assert_eq(t.bytes_done, 1000);
}

static void add_pieces(const uint8_t id[META_ID_SIZE], uint32_t from, uint32_t count,
		       uint32_t crc_base)
{
	struct meta_piece p[500];

	for (uint32_t done = 0; done < count;) {
		uint32_t n = count - done < 500 ? count - done : 500;

		for (uint32_t i = 0; i < n; i++) {
			p[i].number = from + done + i;
			p[i].crc32c = crc_base + done + i;
		}
		cr_assert_eq(meta_pieces_record(m, id, p, n), 0);
		done += n;
	}
}

Test(meta, delete_removes_its_pieces_and_only_its)
{
	/* Ids 0x..7F, 0x..80, 0x..81 differ only in the last byte: their rows
	 * are neighbours in the pieces table. Each has pieces 0..1499 and the
	 * highest number a task can have (PIECE_COUNT_MAX pieces). */
	const unsigned ids[] = { 0x7F, 0x80, 0x81 };
	struct meta_piece top;
	struct pieces_seen seen;
	struct meta_task t;

	for (int i = 0; i < 3; i++) {
		make_task(&t, ids[i], 0, 1u << 30);
		t.content_length = (uint64_t)PIECE_COUNT_MAX << 30;
		t.piece_count = PIECE_COUNT_MAX;
		cr_assert_eq(meta_task_put(m, &t), 0);
		add_pieces(t.id, 0, 1500, ids[i] << 16);
		top.number = PIECE_COUNT_MAX - 1;
		top.crc32c = ids[i];
		cr_assert_eq(meta_pieces_record(m, t.id, &top, 1), 0);
		cr_assert_eq(get_task(ids[i]).pieces_done, 1501);
	}

	make_id(t.id, 0x80);
	cr_assert_eq(meta_task_delete(m, t.id), 0);
	cr_assert_eq(meta_task_get(m, t.id, &t), -ENOENT);
	cr_assert_eq(meta_task_delete(m, t.id), -ENOENT);
	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(meta_pieces_foreach(m, t.id, collect_piece, &seen), -ENOENT);
	cr_assert_eq(seen.count, 0);

	for (int i = 0; i < 3; i += 2) {
		cr_assert_eq(pieces_of(ids[i], &seen), 1501);
		for (uint32_t n = 0; n < 1500; n++) {
			cr_assert_eq(seen.list[n].number, n);
			cr_assert_eq(seen.list[n].crc32c, (ids[i] << 16) + n);
		}
		cr_assert_eq(seen.list[1500].number, PIECE_COUNT_MAX - 1);
		cr_assert_eq(seen.list[1500].crc32c, ids[i]);
		cr_assert_eq(get_task(ids[i]).pieces_done, 1501);
	}

	/* A task created again under the deleted id starts with no pieces. */
	make_task(&t, 0x80, 40 * MIB, 4 * MIB);
	cr_assert_eq(meta_task_put(m, &t), 0);
	cr_assert_eq(pieces_of(0x80, &seen), 0);
	cr_assert_eq(get_task(0x80).pieces_done, 0);
}

Test(meta, pieces_walk_in_batches_may_drop_and_stops)
{
	struct pieces_seen *seen = calloc(1, sizeof(*seen));
	struct meta_task t;

	cr_assert_not_null(seen);
	make_task(&t, 1, 2000ull * (64 << 10), 64 << 10);
	cr_assert_eq(meta_task_put(m, &t), 0);
	add_pieces(t.id, 0, 1000, 0); /* several batches */

	seen->stop_after = 600;
	cr_assert_eq(meta_pieces_foreach(m, t.id, collect_piece, seen), 77);
	cr_assert_eq(seen->count, 600);

	/* fn drops each piece it is given: every piece still seen once, in order. */
	memset(seen, 0, sizeof(*seen));
	seen->drop_each = true;
	seen->id = t.id;
	cr_assert_eq(meta_pieces_foreach(m, t.id, collect_piece, seen), 0);
	cr_assert_eq(seen->count, 1000);
	for (uint32_t n = 0; n < 1000; n++)
		cr_assert_eq(seen->list[n].number, n);
	t = get_task(1);
	cr_assert_eq(t.pieces_done, 0);
	cr_assert_eq(t.bytes_done, 0);
	cr_assert_eq(pieces_of(1, seen), 0);
	free(seen);
}

/* --- walking tasks. */

struct tasks_seen {
	unsigned count;
	uint8_t last[META_ID_SIZE];
	bool delete_odd;
	bool meddle; /* first call: delete the last task, add one after it */
	unsigned stop_after;
	unsigned seen_1099;
};

static int visit_task(const struct meta_task *t, void *arg)
{
	struct tasks_seen *seen = arg;
	struct meta_task check;

	if (seen->count > 0)
		cr_assert_gt(memcmp(t->id, seen->last, META_ID_SIZE), 0, "ids in order");
	memcpy(seen->last, t->id, META_ID_SIZE);
	if (!seen->meddle) /* else task 9 is gone from the store, not from the walk */
		cr_assert_eq(meta_task_get(m, t->id, &check), 0);
	if (seen->delete_odd && seen->count % 2 == 1)
		cr_assert_eq(meta_task_delete(m, t->id), 0);
	if (seen->meddle && seen->count == 0) {
		uint8_t id[META_ID_SIZE];

		make_id(id, 9);
		cr_assert_eq(meta_task_delete(m, id), 0);
		put_task(1099, MIB, 64 << 10);
	}
	if (t->id[31] == (1099 & 0xFF) && t->id[30] == 1099 >> 8)
		seen->seen_1099++;
	seen->count++;
	if (seen->stop_after && seen->count == seen->stop_after)
		return -ECANCELED;
	return 0;
}

Test(meta, tasks_walk_with_fn_deleting_every_other, .timeout = 90)
{
	struct tasks_seen seen = { .delete_odd = true };

	for (unsigned n = 0; n < 1000; n++) {
		put_task(n, 8 * MIB, 4 * MIB);
		if (n % 2 == 1)
			record(n, 1, n);
	}
	cr_assert_eq(meta_tasks_foreach(m, visit_task, &seen), 0);
	cr_assert_eq(seen.count, 1000);

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(meta_tasks_foreach(m, visit_task, &seen), 0);
	cr_assert_eq(seen.count, 500);
	for (unsigned n = 0; n < 1000; n++) {
		struct meta_task t;
		uint8_t id[META_ID_SIZE];

		make_id(id, n);
		cr_assert_eq(meta_task_get(m, id, &t), n % 2 ? -ENOENT : 0);
	}
}

Test(meta, tasks_walk_is_a_snapshot_and_stops)
{
	struct tasks_seen seen = { .meddle = true };

	for (unsigned n = 0; n < 10; n++)
		put_task(n, MIB, 64 << 10);
	cr_assert_eq(meta_tasks_foreach(m, visit_task, &seen), 0);
	cr_assert_eq(seen.count, 10); /* 9 still seen, 1099 not */
	cr_assert_eq(seen.seen_1099, 0);
	cr_assert_eq(seen.last[31], 9);

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(meta_tasks_foreach(m, visit_task, &seen), 0);
	cr_assert_eq(seen.count, 10);
	cr_assert_eq(seen.seen_1099, 1);

	memset(&seen, 0, sizeof(seen));
	seen.stop_after = 3;
	cr_assert_eq(meta_tasks_foreach(m, visit_task, &seen), -ECANCELED);
	cr_assert_eq(seen.count, 3);
}

/* --- persistence. */

Test(meta, reopen_keeps_everything)
{
	struct meta_task want[5], got;
	struct pieces_seen seen;

	for (unsigned n = 0; n < 5; n++) {
		make_task(&want[n], n, 10 * MIB + n, 4 * MIB);
		want[n].has_digest = n % 2;
		memset(want[n].digest, (int)n, sizeof(want[n].digest));
		cr_assert_eq(meta_task_put(m, &want[n]), 0);
		for (uint32_t p = 0; p <= n && p < 3; p++)
			record(n, p, n * 10 + p);
		want[n] = get_task(n);
	}
	cr_assert_eq(meta_task_set_state(m, want[4].id, META_TASK_COMPLETE), 0);
	want[4].state = META_TASK_COMPLETE;

	reopen();
	for (unsigned n = 0; n < 5; n++) {
		cr_assert_eq(meta_task_get(m, want[n].id, &got), 0);
		assert_task_eq(&got, &want[n]);
		cr_assert_eq(pieces_of(n, &seen), n < 3 ? n + 1 : 3);
		for (uint32_t p = 0; p < seen.count; p++) {
			cr_assert_eq(seen.list[p].number, p);
			cr_assert_eq(seen.list[p].crc32c, n * 10 + p);
		}
	}
	struct tasks_seen walk = { 0 };
	cr_assert_eq(meta_tasks_foreach(m, visit_task, &walk), 0);
	cr_assert_eq(walk.count, 5);
}

/* --- errors. */

Test(meta, full_map_is_enospc_and_consistent)
{
	struct meta_piece p[64];
	struct meta_task t, got;
	char small[120];
	int rc = 0;
	uint32_t recorded = 0;
	unsigned n;

	meta_close(m);
	snprintf(small, sizeof(small), "%s/small", dir);
	cr_assert_eq(meta_open(&m, small, 64 << 10, err, sizeof(err)), 0, "%s", err);

	/* Pieces until the map is full: the counters match the rows. */
	make_task(&t, 1, 1ull << 40, 64 << 10);
	cr_assert_eq(meta_task_put(m, &t), 0);
	for (int round = 0; round < 1000; round++) {
		for (int i = 0; i < 64; i++) {
			p[i].number = recorded + (uint32_t)i;
			p[i].crc32c = 1;
		}
		rc = meta_pieces_record(m, t.id, p, 64);
		if (rc < 0)
			break;
		recorded += 64;
	}
	cr_assert_eq(rc, -ENOSPC);
	cr_assert_gt(recorded, 0);
	got = get_task(1);
	cr_assert_eq(got.pieces_done, recorded);

	/* Tasks until full: the one refused is not there, the others are. */
	for (n = 2; n < 1000; n++) {
		make_task(&t, n, MIB, 64 << 10);
		memset(t.url, 'x', 3000);
		t.url[3000] = '\0';
		rc = meta_task_put(m, &t);
		if (rc < 0)
			break;
	}
	cr_assert_eq(rc, -ENOSPC);
	cr_assert_eq(meta_task_get(m, t.id, &got), -ENOENT);
	for (unsigned i = 2; i < n; i++)
		cr_assert_eq(get_task(i).url[2999], 'x');
}

static int no_good_record(const struct meta_task *task, void *arg)
{
	(void)arg;
	cr_assert_fail("record %02x... decoded", task->id[0]);
	return -1;
}

static int count_bad(const uint8_t id[META_ID_SIZE], void *arg)
{
	unsigned *count = arg;
	uint8_t want[META_ID_SIZE];

	make_id(want, *count); /* the records below are ids 0, 1, ... in order */
	cr_assert_eq(memcmp(id, want, META_ID_SIZE), 0, "record %u", *count);
	(*count)++;
	return 0;
}

Test(meta, corrupt_records_are_einval)
{
	/* A good record of task n is 90 + strlen(url) bytes; url "abcdefghij". */
	uint8_t good[200], value[200];
	struct meta_task t, got;
	struct raw r;
	size_t good_size;
	unsigned n;

	make_task(&t, 0, 10 * MIB, 4 * MIB);
	snprintf(t.url, sizeof(t.url), "abcdefghij");
	good_size = golden_record(&t, good);
	cr_assert_eq(good_size, 100);

	struct {
		const char *what;
		size_t size;
		size_t at;
		const uint8_t *bytes;
		size_t count;
	} bad[] = {
		{ "empty", 0, 0, NULL, 0 },
		{ "one byte short of the fixed part", 89, 0, NULL, 0 },
		{ "version 0", 100, 0, (const uint8_t *)"\x00", 1 },
		{ "version 2", 100, 0, (const uint8_t *)"\x02", 1 },
		{ "unknown flag", 100, 1, (const uint8_t *)"\x04", 1 },
		{ "validator flag, no validator", 100, 1, (const uint8_t *)"\x02", 1 },
		{ "validator flag, validator length 0", 104, 1, (const uint8_t *)"\x02", 1 },
		{ "validator bytes without the flag", 104, 0, NULL, 0 },
		{ "url longer than the value", 100, 86, (const uint8_t *)"\x0b\x00\x00\x00", 4 },
		{ "url length 2^32-1", 100, 86, (const uint8_t *)"\xff\xff\xff\xff", 4 },
		{ "url length 4096", 100, 86, (const uint8_t *)"\x00\x10\x00\x00", 4 },
		{ "trailing byte", 101, 0, NULL, 0 },
		{ "truncated url", 99, 0, NULL, 0 },
		{ "NUL inside the url", 100, 93, (const uint8_t *)"\x00", 1 },
		{ "state 0", 100, 34, (const uint8_t *)"\x00\x00\x00\x00", 4 },
		{ "state 4", 100, 34, (const uint8_t *)"\x04\x00\x00\x00", 4 },
		{ "pieces_done > piece_count", 100, 22, (const uint8_t *)"\x04\x00\x00\x00", 4 },
		{ "piece_length 0", 100, 10, (const uint8_t *)"\x00\x00\x00\x00\x00\x00\x00\x00",
		  8 },
		{ "piece_length 2^40", 100, 10, (const uint8_t *)"\x00\x00\x00\x00\x00\x01\x00\x00",
		  8 },
		{ "piece_count not the lengths' (5 for 10 MiB / 4 MiB)", 100, 18,
		  (const uint8_t *)"\x05\x00\x00\x00", 4 },
		{ "piece_count 2^32-1", 100, 18, (const uint8_t *)"\xff\xff\xff\xff", 4 },
	};
	const size_t nbad = sizeof(bad) / sizeof(bad[0]);

	meta_close(m);
	m = NULL;
	raw_begin(&r);
	for (n = 0; n < nbad; n++) {
		uint8_t id[META_ID_SIZE];

		memset(value, 0, sizeof(value));
		memcpy(value, good, good_size);
		if (bad[n].bytes)
			memcpy(value + bad[n].at, bad[n].bytes, bad[n].count);
		make_id(id, n);
		raw_put(&r, r.tasks, id, META_ID_SIZE, value, bad[n].size);
	}
	raw_end(&r);

	for (n = 0; n < nbad; n++) {
		struct meta_piece p = { 0, 1 };
		uint32_t number = 0;
		uint8_t id[META_ID_SIZE];

		make_id(id, n);
		memset(&got, 0x5A, sizeof(got));
		cr_assert_eq(meta_task_get(m, id, &got), -EINVAL, "%s", bad[n].what);
		cr_assert_eq(got.url[0], 0x5A, "%s: out written", bad[n].what);
		cr_assert_eq(meta_task_touch(m, id, 1), -EINVAL, "%s", bad[n].what);
		cr_assert_eq(meta_task_set_state(m, id, META_TASK_FAILED), -EINVAL);
		cr_assert_eq(meta_pieces_record(m, id, &p, 1), -EINVAL, "%s", bad[n].what);
		cr_assert_eq(meta_pieces_drop(m, id, &number, 1), -EINVAL, "%s", bad[n].what);
	}
	struct tasks_seen seen = { 0 };
	cr_assert_eq(meta_tasks_foreach(m, visit_task, &seen), -EINVAL);
	cr_assert_eq(seen.count, 0);
	/* meta_tasks_walk reports each to bad() and goes on. */
	unsigned bad_seen = 0;
	cr_assert_eq(meta_tasks_walk(m, no_good_record, count_bad, &bad_seen), 0);
	cr_assert_eq(bad_seen, nbad);

	/* A corrupt record can be deleted, or repaired by putting it again. */
	make_id(t.id, 0);
	cr_assert_eq(meta_task_put(m, &t), 0);
	cr_assert_eq(meta_task_get(m, t.id, &got), 0);
	assert_task_eq(&got, &t);
	for (n = 1; n < nbad; n++) {
		make_id(t.id, n);
		cr_assert_eq(meta_task_delete(m, t.id), 0);
	}
	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(meta_tasks_foreach(m, visit_task, &seen), 0);
	cr_assert_eq(seen.count, 1);
}

Test(meta, corrupt_piece_rows_and_keys_are_einval)
{
	uint8_t key[META_ID_SIZE + 4], after[META_ID_SIZE];
	struct meta_piece p = { 5, 0x55 };
	struct pieces_seen seen;
	struct meta_task t;
	struct raw r;

	put_task(1, 40 * MIB, 4 * MIB);
	record(1, 4, 0x44);
	meta_close(m);
	m = NULL;
	raw_begin(&r);
	make_id(key, 1);
	memcpy(key + META_ID_SIZE, "\x00\x00\x00\x05", 4);
	raw_put(&r, r.pieces, key, sizeof(key), "\x55\x00\x00", 3); /* a 3-byte crc */
	make_id(after, 0x200); /* 31 bytes of it: a short key that sorts after task 1 */
	raw_put(&r, r.tasks, after, META_ID_SIZE - 1, "x", 1);
	raw_end(&r);

	make_id(t.id, 1);
	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(meta_pieces_foreach(m, t.id, collect_piece, &seen), -EINVAL);
	cr_assert_eq(meta_pieces_record(m, t.id, &p, 1), -EINVAL);
	struct tasks_seen walk = { 0 };
	cr_assert_eq(meta_tasks_foreach(m, visit_task, &walk), -EINVAL);
	cr_assert_eq(walk.count, 1); /* task 1, then the short key */
	/* Deleting the task removes the bad row with the good ones. */
	cr_assert_eq(meta_task_delete(m, t.id), 0);
	put_task(1, 40 * MIB, 4 * MIB);
	cr_assert_eq(pieces_of(1, &seen), 0);
}

Test(meta, open_errors_name_the_directory_and_the_reason)
{
	struct meta *other = (struct meta *)&other; /* not NULL: a failed open clears it */
	char bad[160], file[120];
	struct stat st;
	int fd;

	cr_assert_eq(stat(path, &st), 0);
	cr_assert(S_ISDIR(st.st_mode));
	cr_assert_eq(st.st_mode & 0777, 0700);

	snprintf(bad, sizeof(bad), "%s/no/such/meta", dir);
	cr_assert_eq(meta_open(&other, bad, 0, err, sizeof(err)), -ENOENT);
	cr_assert_null(other);
	cr_assert_str_eq(strstr(err, bad), err, "%s", err);
	cr_assert_not_null(
		strstr(err, ": cannot open the metadata store: No such file or directory"), "%s",
		err);

	snprintf(file, sizeof(file), "%s/file", dir);
	fd = open(file, O_CREAT | O_WRONLY, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	snprintf(bad, sizeof(bad), "%s/meta", file);
	cr_assert_eq(meta_open(&other, bad, 0, err, sizeof(err)), -ENOTDIR);
	cr_assert_not_null(strstr(err, bad), "%s", err);
	cr_assert_not_null(strstr(err, "Not a directory"), "%s", err);

	/* The directory itself a file. */
	cr_assert_eq(meta_open(&other, file, 0, err, sizeof(err)), -ENOTDIR);
	cr_assert_not_null(strstr(err, file), "%s", err);

	/* A data file that is not LMDB: corruption is -EIO. */
	snprintf(bad, sizeof(bad), "%s/garbage", dir);
	cr_assert_eq(mkdir(bad, 0700), 0);
	snprintf(file, sizeof(file), "%s/garbage/data.mdb", dir);
	fd = open(file, O_CREAT | O_WRONLY, 0600);
	cr_assert_geq(fd, 0);
	for (int i = 0; i < 4; i++) {
		char junk[4096];

		memset(junk, 'J', sizeof(junk));
		cr_assert_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	}
	close(fd);
	cr_assert_eq(meta_open(&other, bad, 0, err, sizeof(err)), -EIO);
	cr_assert_not_null(strstr(err, bad), "%s", err);
	cr_assert_not_null(strstr(err, "cannot open the metadata store: "), "%s", err);

	/* Closing nothing is fine. */
	meta_close(NULL);
}
