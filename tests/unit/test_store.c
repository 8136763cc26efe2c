/* test_store: the store on a real loop: piece writes (buffer, splice, recv), batched
 * durability, reopen and resume, recovery, verify on read, GC, import/export, full disks. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <lmdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/hash.h"
#include "core/loop.h"
#include "storage/meta.h"
#include "storage/piece.h"
#include "storage/store.h"

#define KIB (1ull << 10)
#define MIB (1ull << 20)
#define PL (64 * KIB)		/* the piece length most tests use */
#define WATCHDOG_MS 10000u
#define MAX_PIECES 64

/* --- fixture: a temp dir, a loop with a watchdog, the store under test. */

struct fixture {
	char root[64];		/* /tmp/rf-store-XXXXXX */
	char data_dir[160];	/* root/data, or root/mnt/data on a small tmpfs */
	char mnt[128];
	bool mounted;
	struct loop *loop;
	struct store *store;
	struct store_options options;
	struct loop_op watchdog;
	bool watchdog_fired;
	unsigned done_count, done_target;
};

static struct fixture fx;

static void watchdog_done(struct loop_op *op, int res, uint32_t flags)
{
	(void)op;
	(void)flags;
	if (res == -ETIME) {
		fx.watchdog_fired = true;
		loop_stop(fx.loop);
	}
}

static void new_loop(void)
{
	cr_assert_eq(loop_create(&fx.loop, NULL), 0);
	fx.watchdog_fired = false;
	loop_op_init(&fx.watchdog, watchdog_done, NULL);
	cr_assert_eq(loop_timeout(fx.loop, &fx.watchdog, WATCHDOG_MS), 0);
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	remove(path);
	return 0;
}

static void rm_rf(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup(void)
{
	memset(&fx, 0, sizeof(fx));
	snprintf(fx.root, sizeof(fx.root), "/tmp/rf-store-XXXXXX");
	cr_assert_not_null(mkdtemp(fx.root));
	snprintf(fx.data_dir, sizeof(fx.data_dir), "%s/data", fx.root);
	new_loop();
}

static void teardown(void)
{
	/* The ring first (the daemon's order): nothing calls back into the store. */
	if (fx.loop)
		loop_destroy(fx.loop);
	if (fx.store)
		store_close(fx.store);
	fx.loop = NULL;
	fx.store = NULL;
	if (fx.mounted)
		umount2(fx.mnt, MNT_DETACH);
	rm_rf(fx.root);
}

static struct store_options base_options(void)
{
	struct store_options o = {
		.data_dir = fx.data_dir,
		.meta_map_size = 64 * MIB,
		.socket_path = STORE_SOCKET_SPLICE,
		.sync_batch_pieces = 4,
		.sync_delay_ms = 5,
		.gc_ttl_ms = -1,
		.gc_interval_ms = -1,
		/* No watermark on the filesystem the tests run on (a full
		 * /tmp must not evict what a TTL test keeps); the
		 * watermark tests set a quota and their own marks. */
		.gc_high_percent = 100,
		.gc_low_percent = 99,
	};
	return o;
}

static void open_store(const struct store_options *options)
{
	char err[512] = "";
	int rc = store_open(&fx.store, fx.loop, options, err, sizeof(err));

	cr_assert_eq(rc, 0, "store_open: %d %s", rc, err);
	fx.options = *options;
	fx.options.data_dir = fx.data_dir;
}

/* The header's rule: the loop has stopped for good before store_close. */
static void reopen_store(void)
{
	loop_destroy(fx.loop);
	fx.loop = NULL;
	store_close(fx.store);
	fx.store = NULL;
	new_loop();
	open_store(&fx.options);
}

/* Mounts a tmpfs of `size` at root/mnt and puts the data dir on it. */
static bool mount_small_fs(const char *size)
{
	char opts[64];

	snprintf(fx.mnt, sizeof(fx.mnt), "%s/mnt", fx.root);
	cr_assert_eq(mkdir(fx.mnt, 0700), 0);
	snprintf(opts, sizeof(opts), "size=%s", size);
	if (mount("tmpfs", fx.mnt, "tmpfs", 0, opts) < 0)
		return false;
	fx.mounted = true;
	snprintf(fx.data_dir, sizeof(fx.data_dir), "%s/data", fx.mnt);
	return true;
}

static uint64_t free_bytes(const char *path)
{
	struct statvfs st;

	cr_assert_eq(statvfs(path, &st), 0);
	return (uint64_t)st.f_bavail * st.f_frsize;
}

/* --- content, ids, files. */

static uint8_t *make_content(size_t len, uint64_t seed)
{
	uint8_t *buf = malloc(len ? len : 1);
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;

	cr_assert_not_null(buf);
	for (size_t i = 0; i < len; i++) {
		if (i % 8 == 0) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
		}
		buf[i] = (uint8_t)(x >> (8 * (i % 8)));
	}
	return buf;
}

static void make_id(uint8_t id[META_ID_SIZE], const char *name)
{
	hash_sha256(name, strlen(name), id);
}

static void hex_of(const uint8_t id[META_ID_SIZE], char out[HASH_SHA256_HEX_SIZE])
{
	hash_hex(id, out);
}

static uint8_t *read_whole(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *buf;
	size_t got = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	cr_assert_eq(fstat(fd, &st), 0);
	buf = malloc((size_t)st.st_size + 1);
	cr_assert_not_null(buf);
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

		cr_assert_gt(n, 0);
		got += (size_t)n;
	}
	close(fd);
	*len = got;
	return buf;
}

static void content_path(const uint8_t id[META_ID_SIZE], char *out, size_t size)
{
	store_content_path(fx.store, id, out, size);
}

static void expect_file(const char *path, const uint8_t *want, size_t len)
{
	size_t got_len;
	uint8_t *got = read_whole(path, &got_len);

	cr_assert_eq(got_len, len, "%s is %zu bytes, want %zu", path, got_len, len);
	cr_assert(memcmp(got, want, len) == 0, "%s differs from the source", path);
	free(got);
}

static void expect_content(const uint8_t id[META_ID_SIZE], const uint8_t *want, size_t len)
{
	char path[512];

	content_path(id, path, sizeof(path));
	expect_file(path, want, len);
}

static bool path_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* Flips one byte of the file at `offset`. */
static void corrupt_byte(const char *path, uint64_t offset)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	uint8_t b;

	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	cr_assert_eq(pread(fd, &b, 1, (off_t)offset), 1);
	b ^= 0x5a;
	cr_assert_eq(pwrite(fd, &b, 1, (off_t)offset), 1);
	close(fd);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* --- tasks and piece writes. */

static struct store_task *open_task(const uint8_t id[META_ID_SIZE], uint64_t length,
				    uint64_t piece_length, const uint8_t *digest)
{
	struct store_task_params params = {
		.url = "http://origin.test/blob",
		.content_length = length,
		.piece_length = piece_length,
		.digest = digest,
	};
	struct store_task *task = NULL;
	char err[512] = "";
	int rc;

	memcpy(params.id, id, META_ID_SIZE);
	rc = store_task_open(fx.store, &params, &task, err, sizeof(err));
	cr_assert_eq(rc, 0, "store_task_open: %d %s", rc, err);
	cr_assert_not_null(task);
	return task;
}

struct piece_result {
	int calls;
	int res;
	uint32_t number;
	bool recorded_at_done;
	uint32_t pieces_done_at_done;
	uint64_t done_ms;
};

static void piece_done(struct store_task *task, uint32_t number, int res, void *arg)
{
	struct piece_result *r = arg;

	r->calls++;
	r->res = res;
	r->number = number;
	r->recorded_at_done = store_task_has_piece(task, number);
	r->pieces_done_at_done = store_task_info(task)->pieces_done;
	r->done_ms = clock_monotonic_ms();
	fx.done_count++;
	if (fx.done_count >= fx.done_target)
		loop_stop(fx.loop);
}

static void begin_batch(void)
{
	fx.done_count = 0;
	fx.done_target = UINT32_MAX;
}

/* Runs the loop until `n` done callbacks ran since begin_batch. */
static void wait_done(unsigned n)
{
	fx.done_target = n;
	while (fx.done_count < n && !fx.watchdog_fired)
		cr_assert_eq(loop_run(fx.loop), 0);
	cr_assert(!fx.watchdog_fired, "watchdog: %u of %u piece writes done after %u ms",
		  fx.done_count, n, WATCHDOG_MS);
	cr_assert_eq(fx.done_count, n);
}

static void stop_done(struct loop_op *op, int res, uint32_t flags)
{
	(void)op;
	(void)res;
	(void)flags;
	loop_stop(fx.loop);
}

/* Runs the loop for `ms` (timers, GC). */
static void run_for(unsigned ms)
{
	struct loop_op op;

	loop_op_init(&op, stop_done, NULL);
	cr_assert_eq(loop_timeout(fx.loop, &op, ms), 0);
	cr_assert_eq(loop_run(fx.loop), 0);
	cr_assert(!fx.watchdog_fired);
}

static uint32_t piece_crc(const uint8_t *content, uint64_t length, uint64_t piece_length,
			  uint32_t number)
{
	return hash_crc32c(content + piece_offset(piece_length, number),
			   piece_size(length, piece_length, number));
}

/* Writes the listed pieces concurrently from the buffer (with their crc); each must be 0. */
static void write_pieces(struct store_task *task, const uint8_t *content, const uint32_t *numbers,
			 unsigned n)
{
	const struct meta_task *info = store_task_info(task);
	struct piece_result results[MAX_PIECES];

	cr_assert_leq(n, MAX_PIECES);
	memset(results, 0, sizeof(results));
	begin_batch();
	for (unsigned i = 0; i < n; i++) {
		uint32_t k = numbers[i];
		uint32_t size = piece_size(info->content_length, info->piece_length, k);
		int rc = store_piece_from_buffer(
			task, k, content + piece_offset(info->piece_length, k), size, true,
			piece_crc(content, info->content_length, info->piece_length, k), NULL, piece_done,
			&results[i]);

		cr_assert_eq(rc, 0, "piece %u: %d", k, rc);
	}
	wait_done(n);
	for (unsigned i = 0; i < n; i++) {
		cr_assert_eq(results[i].calls, 1, "piece %u", numbers[i]);
		cr_assert_eq(results[i].res, 0, "piece %u: %d (%s)", numbers[i], results[i].res,
			     store_task_error(task));
		cr_assert_eq(results[i].number, numbers[i]);
		cr_assert(results[i].recorded_at_done, "piece %u", numbers[i]);
		cr_assert(store_task_has_piece(task, numbers[i]));
	}
}

static void write_all_pieces(struct store_task *task, const uint8_t *content)
{
	uint32_t count = store_task_info(task)->piece_count;
	uint32_t numbers[MAX_PIECES];

	cr_assert_leq(count, MAX_PIECES);
	for (uint32_t i = 0; i < count; i++)
		numbers[i] = i;
	write_pieces(task, content, numbers, count);
}

static void finish_called_back(void *arg, const uint8_t id[META_ID_SIZE])
{
	(void)id;
	(*(unsigned *)arg)++;
	loop_stop(fx.loop);
}

/* Finishes the task as the daemon does, with a callback set: a finish that
 * waits (-EINPROGRESS: the whole file's fdatasync, or the rest of a digest
 * check) is asked again when the store calls back. */
static void finish_ok(struct store_task *task)
{
	char err[512] = "";
	unsigned calls = 0;
	int rc;

	store_task_on_checked(task, finish_called_back, &calls);
	rc = store_task_finish(task, err, sizeof(err));
	while (rc == -EINPROGRESS && !fx.watchdog_fired) {
		calls = 0;
		while (!calls && !fx.watchdog_fired)
			cr_assert_eq(loop_run(fx.loop), 0);
		rc = store_task_finish(task, err, sizeof(err));
	}
	store_task_on_checked(task, NULL, NULL);
	cr_assert_eq(rc, 0, "store_task_finish: %d %s", rc, err);
	cr_assert(store_task_is_complete(task));
}

/* A complete task of `length` bytes named `name` (released); its content in *content_out. */
static void make_complete_task(const char *name, uint64_t length, uint8_t id[META_ID_SIZE],
			       uint8_t **content_out)
{
	uint8_t *content = make_content(length, length + strlen(name));
	uint8_t digest[HASH_SHA256_SIZE];
	struct store_task *task;

	make_id(id, name);
	hash_sha256(content, length, digest);
	task = open_task(id, length, PL, digest);
	write_all_pieces(task, content);
	finish_ok(task);
	store_task_release(task);
	if (content_out)
		*content_out = content;
	else
		free(content);
}

TestSuite(store_buffer, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(store_socket, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(store_sync, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(store_reopen, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(store_recover, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(store_locate, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(store_gc, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(store_import, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(store_stream, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(store_enospc, .init = setup, .fini = teardown, .timeout = 60);

/* --- pieces from a buffer. */

Test(store_buffer, pieces_are_recorded_only_once_done_and_the_content_matches)
{
	const uint64_t length = 3 * PL + 1000; /* a short last piece */
	struct store_options options = base_options();
	struct piece_result results[4];
	uint8_t id[META_ID_SIZE], digest[HASH_SHA256_SIZE];
	uint8_t *content = make_content(length, 1);
	const struct meta_task *info;
	struct store_task *task;
	char err[512] = "", path[512], hex[HASH_SHA256_HEX_SIZE];
	struct stat st;

	open_store(&options);
	make_id(id, "buffer-basic");
	hex_of(id, hex);
	hash_sha256(content, length, digest);
	task = open_task(id, length, PL, digest);
	info = store_task_info(task);
	cr_assert_eq(memcmp(info->id, id, META_ID_SIZE), 0);
	cr_assert_eq(info->content_length, length);
	cr_assert_eq(info->piece_length, PL);
	cr_assert_eq(info->piece_count, 4);
	cr_assert_eq(info->pieces_done, 0);
	cr_assert_eq(info->bytes_done, 0);
	cr_assert_eq(info->state, META_TASK_PENDING);
	cr_assert(info->has_digest);
	cr_assert_str_eq(info->url, "http://origin.test/blob");
	cr_assert_str_eq(store_task_error(task), "");

	/* The content file exists, preallocated to the full length. */
	content_path(id, path, sizeof(path));
	cr_assert(strstr(path, "/content/") != NULL);
	cr_assert(strstr(path, hex) != NULL);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq((uint64_t)st.st_size, length);
	cr_assert_geq((uint64_t)st.st_blocks * 512, length);

	/* Pieces 0..2: not recorded until their done(0). */
	memset(results, 0, sizeof(results));
	begin_batch();
	for (uint32_t k = 0; k < 3; k++)
		cr_assert_eq(store_piece_from_buffer(task, k, content + k * PL, PL, true,
						     piece_crc(content, length, PL, k), NULL, piece_done,
						     &results[k]),
			     0);
	for (uint32_t k = 0; k < 3; k++) {
		cr_assert_not(store_task_has_piece(task, k));
		cr_assert_eq(results[k].calls, 0);
	}
	cr_assert_eq(info->pieces_done, 0);
	wait_done(3);
	for (uint32_t k = 0; k < 3; k++) {
		cr_assert_eq(results[k].calls, 1);
		cr_assert_eq(results[k].res, 0, "piece %u: %d", k, results[k].res);
		cr_assert(results[k].recorded_at_done);
		cr_assert_geq(results[k].pieces_done_at_done, 1);
		cr_assert(store_task_has_piece(task, k));
	}
	cr_assert_not(store_task_has_piece(task, 3));
	cr_assert_not(store_task_has_piece(task, 4)); /* past the end */
	cr_assert_eq(info->pieces_done, 3);
	cr_assert_eq(info->bytes_done, 3 * PL);

	/* Not complete yet. */
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EAGAIN);
	cr_assert(strstr(err, "3 of 4 pieces") != NULL, "%s", err);
	cr_assert_not(store_task_is_complete(task));

	/* The last, short piece. */
	begin_batch();
	cr_assert_eq(store_piece_from_buffer(task, 3, content + 3 * PL, 1000, true,
					     piece_crc(content, length, PL, 3), NULL, piece_done,
					     &results[3]),
		     0);
	wait_done(1);
	cr_assert_eq(results[3].res, 0);
	cr_assert(store_task_has_piece(task, 3));
	cr_assert_eq(info->pieces_done, 4);
	cr_assert_eq(info->bytes_done, length);

	finish_ok(task);
	cr_assert_eq(store_task_info(task)->state, META_TASK_COMPLETE);
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), 0); /* again: still fine */
	expect_content(id, content, length);
	store_task_release(task);

	/* The record outlives the reference. */
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_is_complete(task));
	cr_assert_eq(store_task_info(task)->bytes_done, length);
	store_task_release(task);
	free(content);
}

Test(store_buffer, piece_lengths_and_numbers_are_checked)
{
	const uint64_t length = 2 * PL + 10;
	struct store_options options = base_options();
	struct piece_result result = { 0 };
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length + PL, 2);
	struct store_task *task;

	open_store(&options);
	make_id(id, "buffer-lengths");
	task = open_task(id, length, PL, NULL);
	/* The last piece is 10 bytes: a full one is refused, and so is a short middle one. */
	cr_assert_eq(store_piece_from_buffer(task, 2, content, PL, false, 0, NULL, piece_done, &result),
		     -EINVAL);
	cr_assert_eq(store_piece_from_buffer(task, 2, content, 9, false, 0, NULL, piece_done, &result),
		     -EINVAL);
	cr_assert_eq(store_piece_from_buffer(task, 1, content, 10, false, 0, NULL, piece_done, &result),
		     -EINVAL);
	cr_assert_eq(store_piece_from_buffer(task, 3, content, 10, false, 0, NULL, piece_done, &result),
		     -EINVAL);
	cr_assert_eq(store_piece_from_buffer(task, UINT32_MAX, content, PL, false, 0, NULL, piece_done,
					     &result),
		     -EINVAL);
	run_for(30);
	cr_assert_eq(result.calls, 0, "done must not run for a refused write");
	cr_assert_eq(store_task_info(task)->pieces_done, 0);
	store_task_release(task);
	free(content);
}

Test(store_buffer, task_params_are_checked)
{
	struct store_options options = base_options();
	struct store_task_params params = { .content_length = META_LENGTH_UNKNOWN };
	struct store_task *task = NULL;
	char err[512] = "", path[512];

	open_store(&options);
	make_id(params.id, "bad-params");
	cr_assert_eq(store_task_open(fx.store, &params, &task, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "unknown length") != NULL, "%s", err);
	params.content_length = MIB;
	params.piece_length = 1000; /* not a power of two */
	cr_assert_eq(store_task_open(fx.store, &params, &task, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "invalid piece length 1000") != NULL, "%s", err);
	params.piece_length = 32 * KIB; /* below 64 KiB */
	cr_assert_eq(store_task_open(fx.store, &params, &task, err, sizeof(err)), -EINVAL);
	content_path(params.id, path, sizeof(path));
	cr_assert_not(path_exists(path));
	cr_assert_eq(store_task_find(fx.store, params.id, &task), -ENOENT);

	/* piece_length 0: the default for the length. */
	params.piece_length = 0;
	cr_assert_eq(store_task_open(fx.store, &params, &task, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(store_task_info(task)->piece_length, piece_length_for(MIB));
	cr_assert_eq(store_task_info(task)->piece_count, 1);
	store_task_release(task);
}

Test(store_buffer, empty_content_completes_with_its_digest)
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE], digest[HASH_SHA256_SIZE];
	struct store_task *task;

	open_store(&options);
	make_id(id, "empty");
	hash_sha256("", 0, digest);
	task = open_task(id, 0, PL, digest);
	cr_assert_eq(store_task_info(task)->piece_count, 0);
	finish_ok(task);
	expect_content(id, (const uint8_t *)"", 0);
	store_task_release(task);
}

/* store_task_on_checked's callback: counts, stops the loop. */
struct checked_calls {
	unsigned calls;
	uint8_t id[META_ID_SIZE];
};

static void on_checked(void *arg, const uint8_t id[META_ID_SIZE])
{
	struct checked_calls *c = arg;

	c->calls++;
	memcpy(c->id, id, META_ID_SIZE);
	loop_stop(fx.loop);
}

#define SLICES_LENGTH (11 * MIB + 5)

/* A task of SLICES_LENGTH bytes (`content`) with a digest (`wrong`: not the
 * content's) and a callback, its twelve 1 MiB pieces written last to first
 * (nothing can be hashed before the last write), then finished: -EINPROGRESS. */
static struct store_task *finish_in_slices(const char *name, const uint8_t *content, bool wrong,
					   struct checked_calls *calls, uint8_t id[META_ID_SIZE])
{
	uint8_t digest[HASH_SHA256_SIZE];
	uint32_t numbers[12];
	struct store_task *task;
	char err[512] = "";

	make_id(id, name);
	hash_sha256(content, SLICES_LENGTH, digest);
	digest[3] ^= wrong;
	task = open_task(id, SLICES_LENGTH, MIB, digest);
	store_task_on_checked(task, on_checked, calls);
	for (uint32_t i = 0; i < 12; i++)
		numbers[i] = 11 - i;
	write_pieces(task, content, numbers, 12);
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EINPROGRESS, "%s", err);
	cr_assert(strstr(err, "checking its digest"), "%s", err);
	return task;
}

/* finish_in_slices, then the loop hashes and calls back once, then the finish
 * answers (wrong: the digest mismatch). */
static void check_in_slices(bool wrong)
{
	const uint64_t length = SLICES_LENGTH;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 4);
	struct checked_calls calls = { 0 };
	struct store_task *task;
	char err[512] = "";

	open_store(&options);
	task = finish_in_slices(wrong ? "slices-wrong" : "slices", content, wrong, &calls, id);
	cr_assert_not(store_task_is_complete(task));
	while (!calls.calls && !fx.watchdog_fired)
		cr_assert_eq(loop_run(fx.loop), 0);
	cr_assert_eq(calls.calls, 1);
	cr_assert_eq(memcmp(calls.id, id, META_ID_SIZE), 0);
	if (wrong) {
		cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EBADMSG, "%s", err);
		cr_assert(strstr(err, "digest mismatch"), "%s", err);
		cr_assert_eq(store_task_info(task)->state, META_TASK_FAILED);
	} else {
		finish_ok(task);
		expect_content(id, content, length);
	}
	run_for(20);
	cr_assert_eq(calls.calls, 1, "called back again");
	store_task_release(task);
	free(content);
}

Test(store_buffer, a_large_digest_check_runs_in_slices_and_calls_back)
{
	check_in_slices(false);
}

Test(store_buffer, a_wrong_digest_found_in_slices_fails_the_task)
{
	check_in_slices(true);
}

/* The sha256 of a complete task without a digest (a get --digest of a
 * cached URL): a slice per turn, then a callback, then the answer, which is
 * the task's digest from then on. */
Test(store_buffer, the_sha256_of_a_large_complete_task_runs_in_slices)
{
	const uint64_t length = 11 * MIB + 5;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE], want[HASH_SHA256_SIZE], got[HASH_SHA256_SIZE];
	uint8_t *content = make_content(length, 6);
	struct checked_calls calls = { 0 };
	struct store_task *task;

	open_store(&options);
	make_id(id, "sha-of-complete");
	hash_sha256(content, length, want);
	task = open_task(id, length, MIB, NULL);
	write_all_pieces(task, content);
	finish_ok(task);
	cr_assert_not(store_task_info(task)->has_digest);
	store_task_on_checked(task, on_checked, &calls);
	cr_assert_eq(store_task_sha256(task, got), -EINPROGRESS);
	while (!calls.calls && !fx.watchdog_fired)
		cr_assert_eq(loop_run(fx.loop), 0);
	cr_assert_eq(calls.calls, 1);
	cr_assert_eq(store_task_sha256(task, got), 0);
	cr_assert_eq(memcmp(got, want, sizeof(want)), 0);
	cr_assert(store_task_info(task)->has_digest, "the sha256 is not the task's digest now");
	cr_assert(store_task_is_complete(task));
	store_task_release(task);
	/* Recorded in its metadata: the task found again knows it. */
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_info(task)->has_digest);
	cr_assert_eq(memcmp(store_task_info(task)->digest, want, sizeof(want)), 0);
	store_task_release(task);
	free(content);
}

/* Pieces recorded in order are hashed as they come: the finish after the
 * last has one slice left at most and answers at once. */
Test(store_buffer, pieces_in_order_are_hashed_as_they_are_recorded)
{
	const uint64_t length = 11 * MIB + 5;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE], digest[HASH_SHA256_SIZE];
	uint8_t *content = make_content(length, 5);
	struct checked_calls calls = { 0 };
	uint32_t first[8] = { 0, 1, 2, 3, 4, 5, 6, 7 }, rest[4] = { 8, 9, 10, 11 };
	struct store_task *task;

	open_store(&options);
	make_id(id, "in-order");
	hash_sha256(content, length, digest);
	task = open_task(id, length, MIB, digest);
	store_task_on_checked(task, on_checked, &calls);
	write_pieces(task, content, first, 8);
	run_for(50); /* two slices of 4 MiB: the first 8 MiB hashed */
	write_pieces(task, content, rest, 4);
	finish_ok(task);
	cr_assert_eq(calls.calls, 0);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

Test(store_buffer, wrong_digest_fails_the_task_and_names_both_digests)
{
	const uint64_t length = 2 * PL;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE], digest[HASH_SHA256_SIZE], wrong[HASH_SHA256_SIZE];
	char err[512] = "", want_hex[HASH_SHA256_HEX_SIZE], got_hex[HASH_SHA256_HEX_SIZE];
	uint8_t *content = make_content(length, 3);
	struct piece_result result = { 0 };
	struct store_task *task;

	open_store(&options);
	make_id(id, "wrong-digest");
	hash_sha256(content, length, digest);
	memcpy(wrong, digest, sizeof(wrong));
	wrong[7] ^= 1;
	hex_of(wrong, want_hex);
	hex_of(digest, got_hex);
	task = open_task(id, length, PL, wrong);
	write_all_pieces(task, content); /* every piece matches its crc */
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EBADMSG);
	cr_assert(strstr(err, "digest mismatch") != NULL, "%s", err);
	cr_assert(strstr(err, want_hex) != NULL, "expected digest not named: %s", err);
	cr_assert(strstr(err, got_hex) != NULL, "actual digest not named: %s", err);
	cr_assert_not(store_task_is_complete(task));
	cr_assert_eq(store_task_info(task)->state, META_TASK_FAILED);
	cr_assert(strstr(store_task_error(task), "digest mismatch") != NULL);
	/* A failed task takes no more writes and does not finish. */
	cr_assert_eq(store_piece_from_buffer(task, 0, content, PL, false, 0, NULL, piece_done, &result),
		     -EIO);
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EIO);
	cr_assert(strstr(err, "digest mismatch") != NULL, "%s", err);
	store_task_release(task);

	/* The failure is in the metadata too. */
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert_eq(store_task_info(task)->state, META_TASK_FAILED);
	store_task_release(task);
	free(content);
}

Test(store_buffer, crc_mismatch_is_ebadmsg_and_not_recorded)
{
	const uint64_t length = 2 * PL;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 4);
	struct piece_result bad = { 0 };
	struct store_task *task;
	uint32_t one = 1;

	open_store(&options);
	make_id(id, "buffer-crc");
	task = open_task(id, length, PL, NULL);
	begin_batch();
	cr_assert_eq(store_piece_from_buffer(task, 1, content + PL, PL, true,
					     piece_crc(content, length, PL, 1) ^ 1, NULL, piece_done,
					     &bad),
		     0);
	wait_done(1);
	cr_assert_eq(bad.calls, 1);
	cr_assert_eq(bad.res, -EBADMSG);
	cr_assert_not(bad.recorded_at_done);
	cr_assert_not(store_task_has_piece(task, 1));
	cr_assert_eq(store_task_info(task)->pieces_done, 0);
	cr_assert_str_eq(store_task_error(task), ""); /* not a task failure */

	/* The right bytes then go through. */
	write_pieces(task, content, &one, 1);
	cr_assert_eq(store_task_info(task)->pieces_done, 1);
	store_task_release(task);
	free(content);
}

Test(store_buffer, a_recorded_piece_is_ealready)
{
	const uint64_t length = PL;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 5);
	struct piece_result again = { 0 };
	struct store_task *task;

	open_store(&options);
	make_id(id, "buffer-already");
	task = open_task(id, length, PL, NULL);
	write_all_pieces(task, content);
	cr_assert_eq(store_piece_from_buffer(task, 0, content, PL, true,
					     piece_crc(content, length, PL, 0), NULL, piece_done, &again),
		     -EALREADY);
	run_for(30);
	cr_assert_eq(again.calls, 0);
	cr_assert_eq(store_task_info(task)->pieces_done, 1);
	store_task_release(task);
	free(content);
}

Test(store_buffer, without_crc_the_bytes_written_are_what_is_recorded)
{
	const uint64_t length = 3 * PL;
	struct store_options options = base_options();
	struct piece_result results[3];
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 6);
	struct store_task *task;

	options.verify_on_read = true;
	open_store(&options);
	make_id(id, "buffer-nocrc");
	task = open_task(id, length, PL, NULL);
	memset(results, 0, sizeof(results));
	begin_batch();
	for (uint32_t k = 0; k < 3; k++)
		cr_assert_eq(store_piece_from_buffer(task, k, content + k * PL, PL, false, 0, NULL,
						     piece_done, &results[k]),
			     0);
	wait_done(3);
	for (uint32_t k = 0; k < 3; k++) {
		int fd = -1;
		uint64_t offset = 0;
		uint32_t len = 0;

		cr_assert_eq(results[k].res, 0);
		/* verify_on_read compares against the recorded crc: it must be the real one. */
		cr_assert_eq(store_piece_locate(task, k, &fd, &offset, &len), 0);
		cr_assert_eq(offset, k * PL);
		cr_assert_eq(len, PL);
	}
	finish_ok(task); /* no digest: complete once every piece is in */
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

Test(store_buffer, the_same_piece_twice_at_once_is_ebusy_then_ealready)
{
	const uint64_t length = 2 * PL;
	struct store_options options = base_options();
	struct piece_result a = { 0 }, b = { 0 };
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 7);
	struct store_task *task;
	char err[256];

	open_store(&options);
	make_id(id, "buffer-twice");
	task = open_task(id, length, PL, NULL);
	begin_batch();
	cr_assert_eq(store_piece_from_buffer(task, 0, content, PL, true,
					     piece_crc(content, length, PL, 0), NULL, piece_done, &a),
		     0);
	/* A second writer would write over the first one's checked bytes. */
	cr_assert_eq(store_piece_from_buffer(task, 0, content, PL, true,
					     piece_crc(content, length, PL, 0), NULL, piece_done, &b),
		     -EBUSY);
	wait_done(1);
	cr_assert_eq(a.res, 0);
	cr_assert_eq(b.calls, 0);
	cr_assert_eq(store_piece_from_buffer(task, 0, content, PL, true,
					     piece_crc(content, length, PL, 0), NULL, piece_done, &b),
		     -EALREADY);
	cr_assert_eq(store_task_info(task)->pieces_done, 1);
	cr_assert_eq(store_task_info(task)->bytes_done, PL);
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EAGAIN);
	store_task_release(task);
	free(content);
}

/* --- pieces from sockets. */

struct writer {
	pthread_t thread;
	int fd;
	const uint8_t *buf;
	size_t len;	/* sent, then the writer closes its end */
	bool started;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	size_t sent = 0;

	while (sent < w->len) {
		ssize_t n = send(w->fd, w->buf + sent, w->len - sent, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		sent += (size_t)n;
	}
	close(w->fd);
	return NULL;
}

static void writer_start(struct writer *w, int fd, const uint8_t *buf, size_t len)
{
	w->fd = fd;
	w->buf = buf;
	w->len = len;
	cr_assert_eq(pthread_create(&w->thread, NULL, writer_main, w), 0);
	w->started = true;
}

static void writer_join(struct writer *w)
{
	if (w->started)
		pthread_join(w->thread, NULL);
	w->started = false;
}

/* A connected pair: [0] for the store, [1] for the writer. */
static void socket_pair(bool tcp, int fds[2])
{
	struct sockaddr_in addr = { .sin_family = AF_INET,
				    .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t addr_len = sizeof(addr);
	int listener;

	if (!tcp) {
		cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
		return;
	}
	listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(listener, 0);
	cr_assert_eq(bind(listener, (struct sockaddr *)&addr, sizeof(addr)), 0);
	cr_assert_eq(listen(listener, 4), 0);
	cr_assert_eq(getsockname(listener, (struct sockaddr *)&addr, &addr_len), 0);
	fds[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fds[1], 0);
	cr_assert_eq(connect(fds[1], (struct sockaddr *)&addr, sizeof(addr)), 0);
	fds[0] = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(fds[0], 0);
	close(listener);
}

static const char *path_name(enum store_socket_path path)
{
	return path == STORE_SOCKET_SPLICE ? "splice" : "recv";
}

/* Every piece of a task, each on its own socket (unix and TCP alternating), at once. */
static void socket_all_pieces(enum store_socket_path path, uint64_t length, uint64_t piece_length)
{
	struct store_options options = base_options();
	struct piece_result results[8];
	struct writer writers[8];
	int socks[8][2];
	uint8_t id[META_ID_SIZE], digest[HASH_SHA256_SIZE];
	uint8_t *content = make_content(length, 10 + path);
	struct store_task *task;
	uint32_t count;
	char name[64];

	options.socket_path = path;
	open_store(&options);
	snprintf(name, sizeof(name), "socket-%s-%llu", path_name(path),
		 (unsigned long long)piece_length);
	make_id(id, name);
	hash_sha256(content, length, digest);
	task = open_task(id, length, piece_length, digest);
	count = store_task_info(task)->piece_count;
	cr_assert_leq(count, 8);
	memset(results, 0, sizeof(results));
	memset(writers, 0, sizeof(writers));
	begin_batch();
	for (uint32_t k = 0; k < count; k++) {
		uint32_t size = piece_size(length, piece_length, k);

		socket_pair(k % 2 == 1, socks[k]);
		cr_assert_eq(store_piece_from_socket(task, k, socks[k][0], true,
						     piece_crc(content, length, piece_length, k),
						     piece_done, &results[k]),
			     0);
		cr_assert_not(store_task_has_piece(task, k));
		writer_start(&writers[k], socks[k][1], content + piece_offset(piece_length, k),
			     size);
	}
	wait_done(count);
	for (uint32_t k = 0; k < count; k++) {
		writer_join(&writers[k]);
		close(socks[k][0]);
		cr_assert_eq(results[k].calls, 1);
		cr_assert_eq(results[k].res, 0, "%s piece %u: %d", path_name(path), k,
			     results[k].res);
		cr_assert(results[k].recorded_at_done);
		cr_assert(store_task_has_piece(task, k));
	}
	cr_assert_eq(store_task_info(task)->pieces_done, count);
	cr_assert_eq(store_task_info(task)->bytes_done, length);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

Test(store_socket, splice_several_pieces_at_once)
{
	socket_all_pieces(STORE_SOCKET_SPLICE, 4 * PL + 777, PL);
}

Test(store_socket, recv_several_pieces_at_once)
{
	socket_all_pieces(STORE_SOCKET_RECV, 4 * PL + 777, PL);
}

/* Pieces larger than the pipe and the chunk (1 MiB): several rounds per piece. */
Test(store_socket, splice_pieces_larger_than_the_pipe)
{
	socket_all_pieces(STORE_SOCKET_SPLICE, 2 * 2 * MIB + 12345, 2 * MIB);
}

Test(store_socket, recv_pieces_larger_than_the_chunk)
{
	socket_all_pieces(STORE_SOCKET_RECV, 2 * 2 * MIB + 12345, 2 * MIB);
}

/* Piece 1 with a wrong crc, piece 2 from a writer that stops half way, piece 0
 * already recorded; then pieces 1 and 2 again, right. */
static void socket_failures(enum store_socket_path path)
{
	const uint64_t length = 3 * PL;
	struct store_options options = base_options();
	struct piece_result bad_crc = { 0 }, early = { 0 }, again = { 0 }, retry[2];
	struct writer w1 = { 0 }, w2 = { 0 }, r1 = { 0 }, r2 = { 0 };
	int s1[2], s2[2], s3[2], s4[2], s0[2];
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 20 + path);
	struct store_task *task;
	uint32_t zero = 0;
	char name[64];

	options.socket_path = path;
	open_store(&options);
	snprintf(name, sizeof(name), "socket-failures-%s", path_name(path));
	make_id(id, name);
	task = open_task(id, length, PL, NULL);
	write_pieces(task, content, &zero, 1);

	/* Already recorded: refused at once, done never runs. */
	socket_pair(false, s0);
	cr_assert_eq(store_piece_from_socket(task, 0, s0[0], true,
					     piece_crc(content, length, PL, 0), piece_done, &again),
		     -EALREADY);
	close(s0[0]);
	close(s0[1]);

	begin_batch();
	socket_pair(false, s1);
	socket_pair(true, s2);
	cr_assert_eq(store_piece_from_socket(task, 1, s1[0], true,
					     piece_crc(content, length, PL, 1) ^ 0x80000000u,
					     piece_done, &bad_crc),
		     0);
	cr_assert_eq(store_piece_from_socket(task, 2, s2[0], true,
					     piece_crc(content, length, PL, 2), piece_done, &early),
		     0);
	writer_start(&w1, s1[1], content + PL, PL);
	writer_start(&w2, s2[1], content + 2 * PL, PL / 2 + 3); /* then closes */
	wait_done(2);
	writer_join(&w1);
	writer_join(&w2);
	close(s1[0]);
	close(s2[0]);
	cr_assert_eq(bad_crc.calls, 1);
	cr_assert_eq(bad_crc.res, -EBADMSG, "%s: %d", path_name(path), bad_crc.res);
	cr_assert_not(bad_crc.recorded_at_done);
	cr_assert_eq(early.calls, 1);
	cr_assert_eq(early.res, -EPIPE, "%s: %d", path_name(path), early.res);
	cr_assert_not(early.recorded_at_done);
	cr_assert_not(store_task_has_piece(task, 1));
	cr_assert_not(store_task_has_piece(task, 2));
	cr_assert_eq(store_task_info(task)->pieces_done, 1);
	cr_assert_eq(again.calls, 0);
	cr_assert_str_eq(store_task_error(task), ""); /* the peer's fault, not the disk's */

	/* Fetched again, right, on fresh sockets (the pools are reused). */
	memset(retry, 0, sizeof(retry));
	begin_batch();
	socket_pair(true, s3);
	socket_pair(false, s4);
	cr_assert_eq(store_piece_from_socket(task, 1, s3[0], true,
					     piece_crc(content, length, PL, 1), piece_done,
					     &retry[0]),
		     0);
	cr_assert_eq(store_piece_from_socket(task, 2, s4[0], false, 0, piece_done, &retry[1]), 0);
	writer_start(&r1, s3[1], content + PL, PL);
	writer_start(&r2, s4[1], content + 2 * PL, PL);
	wait_done(2);
	writer_join(&r1);
	writer_join(&r2);
	close(s3[0]);
	close(s4[0]);
	cr_assert_eq(retry[0].res, 0);
	cr_assert_eq(retry[1].res, 0);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

Test(store_socket, splice_bad_crc_early_close_and_already_recorded)
{
	socket_failures(STORE_SOCKET_SPLICE);
}

Test(store_socket, recv_bad_crc_early_close_and_already_recorded)
{
	socket_failures(STORE_SOCKET_RECV);
}

/* A store on `path`, a task of one piece of PL, and a TCP pair for it. */
static struct store_task *one_piece_over_tcp(enum store_socket_path path, int s[2])
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	struct store_task *task;

	options.socket_path = path;
	open_store(&options);
	make_id(id, path_name(path));
	task = open_task(id, PL, PL, NULL);
	socket_pair(true, s);
	return task;
}

/* A writer that sends nothing and closes: EOF at once. */
static void socket_empty_peer(enum store_socket_path path)
{
	struct piece_result result = { 0 };
	int s[2];
	struct store_task *task = one_piece_over_tcp(path, s);

	close(s[1]);
	begin_batch();
	cr_assert_eq(store_piece_from_socket(task, 0, s[0], false, 0, piece_done, &result), 0);
	wait_done(1);
	close(s[0]);
	cr_assert_eq(result.res, -EPIPE);
	cr_assert_not(store_task_has_piece(task, 0));
	store_task_release(task);
}

Test(store_socket, splice_peer_closed_before_any_byte)
{
	socket_empty_peer(STORE_SOCKET_SPLICE);
}

Test(store_socket, recv_peer_closed_before_any_byte)
{
	socket_empty_peer(STORE_SOCKET_RECV);
}

/* TCP urgent data in the middle of a piece (no peer of ours sends it), the
 * socket still open: recv skips the urgent byte and the piece is whole;
 * splice() stops at it for good, so the piece fails at once (EPROTO) rather
 * than the loop spinning on "readable" until the caller's timeout. */
static void socket_urgent_byte(enum store_socket_path path, int want)
{
	struct piece_result result = { 0 };
	uint8_t *content = make_content(PL, 61 + path);
	int s[2];
	struct store_task *task = one_piece_over_tcp(path, s);

	cr_assert_eq(send(s[1], content, 1000, 0), 1000);
	cr_assert_eq(send(s[1], "!", 1, MSG_OOB), 1);
	cr_assert_eq(send(s[1], content + 1000, PL - 1000, 0), (ssize_t)(PL - 1000));
	begin_batch();
	cr_assert_eq(store_piece_from_socket(task, 0, s[0], true, piece_crc(content, PL, PL, 0),
					     piece_done, &result), 0);
	wait_done(1);
	cr_assert_eq(result.res, want, "%s: %d, expected %d", path_name(path), result.res, want);
	cr_assert_eq(store_task_has_piece(task, 0), want == 0);
	close(s[0]);
	close(s[1]);
	store_task_release(task);
	free(content);
}

Test(store_socket, splice_urgent_byte_mid_piece)
{
	socket_urgent_byte(STORE_SOCKET_SPLICE, -EPROTO);
}

Test(store_socket, recv_urgent_byte_mid_piece)
{
	socket_urgent_byte(STORE_SOCKET_RECV, 0);
}

/* --- durability batching. */

static void submit_pieces(struct store_task *task, const uint8_t *content, uint32_t first,
			  uint32_t n, struct piece_result *results)
{
	const struct meta_task *info = store_task_info(task);

	for (uint32_t k = first; k < first + n; k++)
		cr_assert_eq(store_piece_from_buffer(
				     task, k, content + k * PL,
				     piece_size(info->content_length, PL, k), true,
				     piece_crc(content, info->content_length, PL, k), NULL, piece_done,
				     &results[k]),
			     0);
}

Test(store_sync, batch_fill_and_delay_timer_both_complete_pieces)
{
	const uint64_t length = 9 * PL;
	struct store_options options = base_options();
	struct piece_result results[9];
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 30);
	struct store_task *task;

	options.sync_batch_pieces = 4;
	options.sync_delay_ms = 10;
	open_store(&options);
	make_id(id, "sync-small");
	task = open_task(id, length, PL, NULL);
	memset(results, 0, sizeof(results));

	/* A full batch. */
	begin_batch();
	submit_pieces(task, content, 0, 4, results);
	wait_done(4);
	/* One piece alone: nothing else is moving, so it is synced at once. */
	begin_batch();
	submit_pieces(task, content, 4, 1, results);
	wait_done(1);
	/* Two batches and one more at once. */
	begin_batch();
	submit_pieces(task, content, 5, 4, results);
	wait_done(4);
	for (uint32_t k = 0; k < 9; k++) {
		cr_assert_eq(results[k].calls, 1, "piece %u", k);
		cr_assert_eq(results[k].res, 0, "piece %u: %d", k, results[k].res);
		cr_assert(results[k].recorded_at_done, "piece %u", k);
	}
	cr_assert_eq(store_task_info(task)->pieces_done, 9);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

/* With a long delay: a full batch syncs at once, and so does a lone piece with
 * nothing else of its task moving (nothing could join its batch). */
Test(store_sync, full_batch_and_lone_piece_do_not_wait_for_the_timer)
{
	const uint64_t length = 5 * PL;
	const unsigned delay = 1500;
	struct store_options options = base_options();
	struct piece_result results[5];
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 31);
	struct store_task *task;
	uint64_t start;

	options.sync_batch_pieces = 4;
	options.sync_delay_ms = delay;
	open_store(&options);
	make_id(id, "sync-long");
	task = open_task(id, length, PL, NULL);
	memset(results, 0, sizeof(results));

	start = clock_monotonic_ms();
	begin_batch();
	submit_pieces(task, content, 0, 4, results);
	wait_done(4);
	cr_assert_lt(clock_monotonic_ms() - start, delay / 2,
		     "a full batch waited %llu ms",
		     (unsigned long long)(clock_monotonic_ms() - start));

	start = clock_monotonic_ms();
	begin_batch();
	submit_pieces(task, content, 4, 1, results);
	wait_done(1);
	cr_assert_lt(results[4].done_ms - start, delay / 2, "a lone piece waited %llu ms",
		     (unsigned long long)(results[4].done_ms - start));
	cr_assert(store_task_has_piece(task, 4));

	store_task_release(task);
	free(content);
}

/* A piece checked while another piece of its task is still moving waits for
 * the delay timer (its batch may still fill). */
Test(store_sync, piece_waits_for_the_timer_while_another_is_moving)
{
	const uint64_t length = 2 * PL;
	const unsigned delay = 1000;
	struct store_options options = base_options();
	struct piece_result results[2], stalled;
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 33);
	struct store_task *task;
	uint64_t start;
	int sv[2];

	options.sync_batch_pieces = 4;
	options.sync_delay_ms = delay;
	open_store(&options);
	make_id(id, "sync-timer");
	task = open_task(id, length, PL, NULL);
	memset(results, 0, sizeof(results));
	memset(&stalled, 0, sizeof(stalled));

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	begin_batch();
	cr_assert_eq(store_piece_from_socket(task, 1, sv[0], false, 0, piece_done, &stalled), 0);
	start = clock_monotonic_ms();
	submit_pieces(task, content, 0, 1, results);
	run_for(delay / 3);
	cr_assert_eq(results[0].calls, 0, "recorded before the timer while piece 1 moves");
	cr_assert_not(store_task_has_piece(task, 0));
	wait_done(1);
	cr_assert_eq(results[0].res, 0);
	cr_assert_geq(results[0].done_ms - start, delay - 50,
		      "synced after %llu ms, before the %u ms delay",
		      (unsigned long long)(results[0].done_ms - start), delay);
	cr_assert(store_task_has_piece(task, 0));
	close(sv[1]);
	begin_batch();
	wait_done(1);
	cr_assert_eq(stalled.res, -EPIPE);
	close(sv[0]);
	store_task_release(task);
	free(content);
}

/* Pieces checked while a sync runs go into the next one at once, and the
 * pieces of back-to-back syncs may be recorded together: none of them waits
 * for the delay timer, none is reported before it is recorded, and the last
 * sync (nothing follows it) records whatever is left. */
Test(store_sync, back_to_back_syncs_record_everything_without_the_timer)
{
	const uint64_t length = 24 * PL;
	const unsigned delay = 1500;
	struct store_options options = base_options();
	struct piece_result results[24];
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 34);
	struct store_task *task;
	uint64_t start;

	options.sync_batch_pieces = 8;
	options.sync_delay_ms = delay;
	open_store(&options);
	make_id(id, "sync-back-to-back");
	task = open_task(id, length, PL, NULL);
	memset(results, 0, sizeof(results));

	start = clock_monotonic_ms();
	begin_batch();
	submit_pieces(task, content, 0, 3, results);
	run_for(1);
	submit_pieces(task, content, 3, 21, results);
	wait_done(24);
	for (uint32_t k = 0; k < 24; k++) {
		cr_assert_eq(results[k].calls, 1, "piece %u", k);
		cr_assert_eq(results[k].res, 0, "piece %u: %d", k, results[k].res);
		cr_assert(results[k].recorded_at_done, "piece %u", k);
		cr_assert_lt(results[k].done_ms - start, delay / 2, "piece %u waited %llu ms", k,
			     (unsigned long long)(results[k].done_ms - start));
	}
	cr_assert_eq(store_task_info(task)->pieces_done, 24);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

/* Writes the first 7 of 8 pieces and returns the content fdatasyncs by then;
 * then the last: the task is whole and complete, and returns the syncs. */
static uint64_t seven_then_last(enum store_sync mode, uint64_t *syncs_at_seven)
{
	const uint64_t length = 8 * PL;
	struct store_options options = base_options();
	struct piece_result results[8];
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 35);
	struct store_task *task;
	uint64_t syncs;

	options.sync = mode;
	options.sync_batch_pieces = 2;
	options.sync_delay_ms = 5;
	open_store(&options);
	make_id(id, mode == STORE_SYNC_TASK ? "sync-task" : "sync-pieces");
	task = open_task(id, length, PL, NULL);
	memset(results, 0, sizeof(results));
	begin_batch();
	submit_pieces(task, content, 0, 7, results);
	wait_done(7);
	for (uint32_t k = 0; k < 7; k++) {
		cr_assert_eq(results[k].res, 0, "piece %u: %d", k, results[k].res);
		cr_assert(results[k].recorded_at_done, "piece %u", k);
	}
	cr_assert_eq(store_task_info(task)->pieces_done, 7);
	*syncs_at_seven = store_content_syncs(fx.store);
	begin_batch();
	submit_pieces(task, content, 7, 1, results);
	wait_done(1);
	cr_assert_eq(results[7].res, 0, "piece 7: %d", results[7].res);
	syncs = store_content_syncs(fx.store);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
	return syncs;
}

/* storage.sync task (the default): pieces are recorded without waiting for
 * the disk; the batch that makes the task whole waits for one fdatasync of
 * the whole file, so a complete task is a durable one. */
Test(store_sync, task_mode_syncs_once_before_the_task_is_whole)
{
	uint64_t at_seven, at_end = seven_then_last(STORE_SYNC_TASK, &at_seven);

	cr_assert_eq(at_seven, 0, "%llu fdatasyncs before the task was whole",
		     (unsigned long long)at_seven);
	cr_assert_eq(at_end, 1, "%llu fdatasyncs in all", (unsigned long long)at_end);
}

/* A finish with nobody to call back (no store_task_on_checked) does not wait
 * for the loop: it syncs the file itself and answers at once. */
Test(store_sync, task_mode_finish_without_a_callback_syncs_at_once)
{
	const uint64_t length = 3 * PL;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 36);
	struct store_task *task;
	char err[512] = "";
	int rc;

	options.sync = STORE_SYNC_TASK;
	open_store(&options);
	make_id(id, "sync-task-no-callback");
	task = open_task(id, length, PL, NULL);
	write_all_pieces(task, content);
	rc = store_task_finish(task, err, sizeof(err));
	cr_assert_eq(rc, 0, "store_task_finish: %d %s", rc, err);
	cr_assert(store_task_is_complete(task));
	cr_assert_geq(store_content_syncs(fx.store), 1);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

/* storage.sync pieces: every batch is synced before it is recorded. */
Test(store_sync, pieces_mode_syncs_every_batch)
{
	uint64_t at_seven, at_end = seven_then_last(STORE_SYNC_PIECES, &at_seven);

	cr_assert_geq(at_seven, 1, "7 pieces recorded without an fdatasync");
	cr_assert_gt(at_end, at_seven, "the last piece was recorded without an fdatasync");
}

/* A reference dropped while the pieces wait for their sync: the writes hold the task. */
Test(store_sync, release_while_pieces_wait_for_sync)
{
	const uint64_t length = 2 * PL;
	struct store_options options = base_options();
	struct piece_result results[2];
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 32);
	struct store_task *task;

	options.sync_batch_pieces = 16;
	options.sync_delay_ms = 20;
	open_store(&options);
	make_id(id, "sync-release");
	task = open_task(id, length, PL, NULL);
	memset(results, 0, sizeof(results));
	begin_batch();
	submit_pieces(task, content, 0, 2, results);
	store_task_release(task);
	wait_done(2);
	cr_assert_eq(results[0].res, 0);
	cr_assert_eq(results[1].res, 0);
	run_for(40); /* the timer's reference goes too */
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert_eq(store_task_info(task)->pieces_done, 2);
	store_task_release(task);
	free(content);
}

/* --- reopen and resume. */

Test(store_reopen, pieces_survive_and_the_task_resumes)
{
	const uint64_t length = 4 * PL + 5;
	struct store_options options = base_options();
	struct store_task_params params = { .content_length = length, .piece_length = PL };
	uint8_t id[META_ID_SIZE], digest[HASH_SHA256_SIZE];
	uint8_t *content = make_content(length, 40);
	uint32_t some[] = { 0, 2, 4 }, rest[] = { 1, 3 };
	struct store_task *task, *other;
	char err[512] = "", hex[HASH_SHA256_HEX_SIZE];

	open_store(&options);
	make_id(id, "reopen");
	hex_of(id, hex);
	hash_sha256(content, length, digest);
	task = open_task(id, length, PL, digest);
	write_pieces(task, content, some, 3);
	store_task_release(task);
	reopen_store();

	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_has_piece(task, 0));
	cr_assert_not(store_task_has_piece(task, 1));
	cr_assert(store_task_has_piece(task, 2));
	cr_assert_not(store_task_has_piece(task, 3));
	cr_assert(store_task_has_piece(task, 4));
	cr_assert_eq(store_task_info(task)->pieces_done, 3);
	cr_assert_eq(store_task_info(task)->bytes_done, 2 * PL + 5);
	cr_assert_eq(store_task_info(task)->state, META_TASK_PENDING);
	cr_assert(store_task_info(task)->has_digest);
	cr_assert_eq(memcmp(store_task_info(task)->digest, digest, sizeof(digest)), 0);

	/* Open with the same params: the same task, pieces kept. */
	memcpy(params.id, id, META_ID_SIZE);
	params.digest = digest;
	cr_assert_eq(store_task_open(fx.store, &params, &other, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(other, task);
	cr_assert_eq(store_task_info(other)->pieces_done, 3);
	store_task_release(other);

	/* Another length, or another piece length: -EEXIST, naming what is there. */
	params.content_length = length + 1;
	other = NULL;
	cr_assert_eq(store_task_open(fx.store, &params, &other, err, sizeof(err)), -EEXIST);
	cr_assert(strstr(err, hex) != NULL, "%s", err);
	cr_assert(strstr(err, "exists with content length") != NULL, "%s", err);
	params.content_length = length;
	params.piece_length = 2 * PL;
	cr_assert_eq(store_task_open(fx.store, &params, &other, err, sizeof(err)), -EEXIST);
	/* piece_length 0 means "whatever it has". */
	params.piece_length = 0;
	cr_assert_eq(store_task_open(fx.store, &params, &other, err, sizeof(err)), 0, "%s", err);
	store_task_release(other);

	write_pieces(task, content, rest, 2);
	finish_ok(task);
	store_task_release(task);

	/* After another restart, without a reference held: still complete, same bytes,
	 * and -EEXIST from the record (not from memory). */
	reopen_store();
	params.content_length = length - 1;
	cr_assert_eq(store_task_open(fx.store, &params, &other, err, sizeof(err)), -EEXIST);
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_is_complete(task));
	cr_assert_eq(store_task_info(task)->pieces_done, 5);
	store_task_release(task);
	expect_content(id, content, length);
	free(content);
}

Test(store_reopen, a_second_store_on_the_same_dir_is_refused)
{
	struct store_options options = base_options();
	struct store *second = NULL;
	char err[512] = "";

	open_store(&options);
	cr_assert_eq(store_open(&second, fx.loop, &options, err, sizeof(err)), -EBUSY);
	cr_assert(strstr(err, fx.data_dir) != NULL, "%s", err);
	cr_assert(strstr(err, "in use") != NULL, "%s", err);
}

/* A record whose content file is gone, opened again before any recovery: the
 * task starts afresh; the old piece rows must not claim bytes the new file lacks. */
Test(store_reopen, reopening_a_task_whose_file_is_gone_starts_afresh)
{
	const uint64_t length = 3 * PL;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 41);
	struct store_task *task;
	char path[512];

	options.verify_on_read = false;
	open_store(&options);
	make_id(id, "file-gone");
	task = open_task(id, length, PL, NULL);
	write_all_pieces(task, content);
	store_task_release(task);
	reopen_store();
	content_path(id, path, sizeof(path));
	cr_assert_eq(unlink(path), 0);

	cr_assert_eq(store_task_find(fx.store, id, &task), -ENOENT);
	task = open_task(id, length, PL, NULL);
	for (uint32_t k = 0; k < 3; k++)
		cr_assert_not(store_task_has_piece(task, k),
			      "piece %u recorded, but the new file has none of its bytes", k);
	cr_assert_eq(store_task_info(task)->pieces_done, 0);
	cr_assert_eq(store_task_info(task)->bytes_done, 0);
	write_all_pieces(task, content);
	cr_assert_eq(store_task_info(task)->pieces_done, 3);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

/* --- recovery. */

static void recover_ok(bool verify_all, struct store_recovery *report)
{
	memset(report, 0xff, sizeof(*report));
	cr_assert_eq(store_recover(fx.store, verify_all, report), 0);
}

Test(store_recover, a_corrupt_piece_of_an_incomplete_task_is_dropped)
{
	const uint64_t length = 5 * PL;
	struct store_options options = base_options();
	struct store_recovery report;
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 50);
	uint32_t four[] = { 0, 1, 2, 3 }, again[] = { 2, 4 };
	struct store_task *task;
	char path[512];

	open_store(&options);
	make_id(id, "recover-corrupt");
	task = open_task(id, length, PL, NULL);
	write_pieces(task, content, four, 4);
	store_task_release(task);
	reopen_store();
	content_path(id, path, sizeof(path));
	corrupt_byte(path, 2 * PL + 100);

	recover_ok(false, &report);
	cr_assert_eq(report.pieces_checked, 4);
	cr_assert_eq(report.pieces_dropped, 1);
	cr_assert_eq(report.tasks_incomplete, 1);
	cr_assert_eq(report.tasks_complete, 0);
	cr_assert_eq(report.tasks_removed, 0);
	cr_assert_eq(report.orphans_removed, 0);

	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_has_piece(task, 0));
	cr_assert(store_task_has_piece(task, 1));
	cr_assert_not(store_task_has_piece(task, 2));
	cr_assert(store_task_has_piece(task, 3));
	cr_assert_eq(store_task_info(task)->pieces_done, 3);
	cr_assert_eq(store_task_info(task)->bytes_done, 3 * PL);

	/* A second pass finds nothing more. */
	recover_ok(false, &report);
	cr_assert_eq(report.pieces_checked, 3);
	cr_assert_eq(report.pieces_dropped, 0);

	/* The dropped piece is fetched again. */
	write_pieces(task, content, again, 2);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

/* storage.sync task: pieces of an incomplete task are recorded before any
 * fdatasync. A power loss then leaves zeros where writeback had not reached
 * (an unwritten extent reads as zeros); recovery re-checks every row of an
 * incomplete task and drops exactly those, and the task completes with one
 * fdatasync once they are fetched again. */
Test(store_recover, unsynced_pieces_lost_to_a_power_loss_are_dropped)
{
	const uint64_t length = 5 * PL;
	struct store_options options = base_options();
	struct store_recovery report;
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 52);
	uint8_t *zeros = calloc(1, PL);
	uint32_t four[] = { 0, 1, 2, 3 }, again[] = { 1, 3, 4 };
	struct store_task *task;
	char path[512];
	int fd;

	cr_assert(zeros);
	options.sync = STORE_SYNC_TASK;
	open_store(&options);
	make_id(id, "recover-power-loss");
	task = open_task(id, length, PL, NULL);
	write_pieces(task, content, four, 4);
	cr_assert_eq(store_task_info(task)->pieces_done, 4);
	cr_assert_eq(store_content_syncs(fx.store), 0);
	store_task_release(task);
	reopen_store();
	content_path(id, path, sizeof(path));
	fd = open(path, O_WRONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	cr_assert_eq(pwrite(fd, zeros, PL, (off_t)PL), (ssize_t)PL);
	cr_assert_eq(pwrite(fd, zeros, PL, (off_t)(3 * PL)), (ssize_t)PL);
	close(fd);

	recover_ok(false, &report);
	cr_assert_eq(report.pieces_checked, 4);
	cr_assert_eq(report.pieces_dropped, 2);
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_has_piece(task, 0));
	cr_assert_not(store_task_has_piece(task, 1));
	cr_assert(store_task_has_piece(task, 2));
	cr_assert_not(store_task_has_piece(task, 3));

	write_pieces(task, content, again, 3);
	cr_assert_eq(store_content_syncs(fx.store), 1);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	free(zeros);
	free(content);
}

/* The daemon answers before recovery runs: a task may already be open. Its
 * in-memory view must agree with what recovery dropped. */
Test(store_recover, a_task_held_open_sees_the_dropped_piece)
{
	const uint64_t length = 3 * PL;
	struct store_options options = base_options();
	struct store_recovery report;
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 51);
	uint32_t two[] = { 0, 1 };
	struct store_task *task;
	char path[512], err[256];

	open_store(&options);
	make_id(id, "recover-open");
	task = open_task(id, length, PL, NULL);
	write_pieces(task, content, two, 2);
	content_path(id, path, sizeof(path));
	corrupt_byte(path, PL);
	recover_ok(false, &report);
	cr_assert_eq(report.pieces_dropped, 1);
	cr_assert(store_task_has_piece(task, 0));
	cr_assert_not(store_task_has_piece(task, 1));
	cr_assert_eq(store_task_info(task)->pieces_done, 1);
	/* ... so it can be written again, and the task does not finish without it. */
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EAGAIN);
	write_pieces(task, content, &two[1], 1);
	cr_assert_eq(store_task_info(task)->pieces_done, 2);
	store_task_release(task);
	free(content);
}

Test(store_recover, pieces_beyond_a_short_file_are_dropped)
{
	const uint64_t length = 4 * PL;
	struct store_options options = base_options();
	struct store_recovery report;
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 52);
	struct store_task *task;
	char path[512];

	open_store(&options);
	make_id(id, "recover-short");
	task = open_task(id, length, PL, NULL);
	write_all_pieces(task, content);
	store_task_release(task);
	reopen_store();
	content_path(id, path, sizeof(path));
	cr_assert_eq(truncate(path, (off_t)(PL + PL / 2)), 0); /* piece 1 is cut */
	recover_ok(false, &report);
	cr_assert_eq(report.pieces_checked, 4);
	cr_assert_eq(report.pieces_dropped, 3);
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_has_piece(task, 0));
	for (uint32_t k = 1; k < 4; k++)
		cr_assert_not(store_task_has_piece(task, k), "piece %u", k);
	store_task_release(task);
	free(content);
}

Test(store_recover, metadata_of_a_missing_file_is_removed)
{
	struct store_options options = base_options();
	struct store_recovery report;
	uint8_t gone[META_ID_SIZE], kept[META_ID_SIZE];
	uint8_t *content = make_content(2 * PL, 53);
	struct store_task *task;
	char path[512];

	open_store(&options);
	make_id(gone, "recover-gone");
	make_id(kept, "recover-kept");
	task = open_task(gone, 2 * PL, PL, NULL);
	write_all_pieces(task, content);
	store_task_release(task);
	task = open_task(kept, 2 * PL, PL, NULL);
	write_all_pieces(task, content);
	store_task_release(task);
	reopen_store();
	content_path(gone, path, sizeof(path));
	cr_assert_eq(unlink(path), 0);

	recover_ok(false, &report);
	cr_assert_eq(report.tasks_removed, 1);
	cr_assert_eq(report.tasks_incomplete, 1); /* kept */
	cr_assert_eq(report.pieces_dropped, 0);
	cr_assert_eq(report.orphans_removed, 0);
	cr_assert_eq(store_task_find(fx.store, gone, &task), -ENOENT);
	cr_assert_eq(store_task_find(fx.store, kept, &task), 0);
	cr_assert_eq(store_task_info(task)->pieces_done, 2);
	store_task_release(task);

	/* Gone for good: a fresh open starts empty. */
	task = open_task(gone, 2 * PL, PL, NULL);
	cr_assert_eq(store_task_info(task)->pieces_done, 0);
	store_task_release(task);
	free(content);
}

static void write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);

	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	cr_assert_eq(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

Test(store_recover, files_without_metadata_are_removed)
{
	struct store_options options = base_options();
	struct store_recovery report;
	uint8_t id[META_ID_SIZE], orphan[META_ID_SIZE];
	char hex[HASH_SHA256_HEX_SIZE], ohex[HASH_SHA256_HEX_SIZE];
	char kept_path[512], orphan_path[512], junk[512], junk2[512], misplaced[512], dir[512];
	uint8_t *content;

	open_store(&options);
	make_complete_task("recover-orphans", PL, id, &content);
	hex_of(id, hex);
	content_path(id, kept_path, sizeof(kept_path));

	/* content/ab/<64 hex> with no metadata. */
	make_id(orphan, "no-such-task");
	hex_of(orphan, ohex);
	snprintf(dir, sizeof(dir), "%s/content/%.2s", fx.data_dir, ohex);
	mkdir(dir, 0750);
	snprintf(orphan_path, sizeof(orphan_path), "%s/%s", dir, ohex);
	write_file(orphan_path, "orphan", 6);
	/* Junk next to it, and a task's file under the wrong prefix. */
	snprintf(junk, sizeof(junk), "%s/junk.tmp", dir);
	write_file(junk, "junk", 4);
	snprintf(dir, sizeof(dir), "%s/content/zz", fx.data_dir);
	cr_assert_eq(mkdir(dir, 0750), 0);
	snprintf(junk2, sizeof(junk2), "%s/NOT-HEX", dir);
	write_file(junk2, "junk", 4);
	snprintf(misplaced, sizeof(misplaced), "%s/%s", dir, hex);
	write_file(misplaced, "wrong dir", 9);

	recover_ok(false, &report);
	cr_assert_eq(report.orphans_removed, 4);
	cr_assert_eq(report.tasks_complete, 1);
	cr_assert_eq(report.tasks_removed, 0);
	cr_assert_not(path_exists(orphan_path));
	cr_assert_not(path_exists(junk));
	cr_assert_not(path_exists(junk2));
	cr_assert_not(path_exists(misplaced));
	cr_assert(path_exists(kept_path));
	expect_content(id, content, PL);
	free(content);
}

/* Replaces the task record of `id` with bytes no decoder takes (the store is
 * closed around it: one environment per process), then reopens the store. */
static void corrupt_task_record(const uint8_t id[META_ID_SIZE])
{
	char meta_dir[600];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi tasks;
	MDB_val key = { .mv_size = META_ID_SIZE, .mv_data = (void *)id };
	MDB_val val = { .mv_size = 5, .mv_data = "junk!" };

	loop_destroy(fx.loop);
	fx.loop = NULL;
	store_close(fx.store);
	fx.store = NULL;
	snprintf(meta_dir, sizeof(meta_dir), "%s/meta", fx.data_dir);
	cr_assert_eq(mdb_env_create(&env), 0);
	cr_assert_eq(mdb_env_set_maxdbs(env, 2), 0);
	cr_assert_eq(mdb_env_set_mapsize(env, fx.options.meta_map_size), 0);
	cr_assert_eq(mdb_env_open(env, meta_dir, MDB_NOTLS, 0600), 0);
	cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
	cr_assert_eq(mdb_dbi_open(txn, "tasks", 0, &tasks), 0);
	cr_assert_eq(mdb_put(txn, tasks, &key, &val, 0), 0);
	cr_assert_eq(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	new_loop();
	open_store(&fx.options);
}

/* One corrupt record stops neither recovery nor GC: recovery removes it (its
 * file goes with the orphans) and recovers the rest; GC steps over it. */
Test(store_recover, a_corrupt_task_record_is_removed_and_the_rest_recovers)
{
	struct store_options options = base_options();
	struct store_recovery report;
	uint8_t good[META_ID_SIZE], bad[META_ID_SIZE], old[META_ID_SIZE];
	uint8_t *content, *bad_content, *old_content;
	struct store_task *task;
	char bad_path[512], old_path[512], good_path[512];

	open_store(&options);
	make_complete_task("recover-old", PL, old, &old_content);
	make_complete_task("recover-bad", PL, bad, &bad_content);
	make_complete_task("recover-good", PL, good, &content);
	content_path(bad, bad_path, sizeof(bad_path));
	content_path(old, old_path, sizeof(old_path));
	content_path(good, good_path, sizeof(good_path));

	corrupt_task_record(bad);
	recover_ok(false, &report);
	cr_assert_eq(report.tasks_removed, 1);
	cr_assert_eq(report.tasks_complete, 2);
	cr_assert_eq(report.orphans_removed, 1);
	cr_assert_not(path_exists(bad_path));
	cr_assert_eq(store_task_find(fx.store, bad, &task), -ENOENT);
	expect_content(good, content, PL);
	expect_content(old, old_content, PL);

	/* Now "good" is the corrupt one, and GC has a 1 ms TTL: "old" is
	 * evicted by age whatever side of the corrupt record it walks on. */
	fx.options.gc_ttl_ms = 1;
	corrupt_task_record(good);
	usleep(5000);
	cr_assert_eq(store_gc(fx.store), 1);
	cr_assert_not(path_exists(old_path));
	cr_assert(path_exists(good_path));
	free(content);
	free(bad_content);
	free(old_content);
}

Test(store_recover, complete_tasks_are_checked_only_with_verify_all)
{
	const uint64_t length = 3 * PL;
	struct store_options options = base_options();
	struct store_recovery report;
	uint8_t id[META_ID_SIZE];
	uint8_t *content;
	struct store_task *task;
	uint32_t one = 1;
	char path[512];

	open_store(&options);
	make_complete_task("recover-verify-all", length, id, &content);
	reopen_store();
	content_path(id, path, sizeof(path));
	corrupt_byte(path, PL + 7);

	recover_ok(false, &report);
	cr_assert_eq(report.tasks_complete, 1);
	cr_assert_eq(report.pieces_checked, 0);
	cr_assert_eq(report.pieces_dropped, 0);

	recover_ok(true, &report);
	cr_assert_eq(report.pieces_checked, 3);
	cr_assert_eq(report.pieces_dropped, 1);
	cr_assert_eq(report.tasks_complete, 0);
	cr_assert_eq(report.tasks_incomplete, 1);

	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert_not(store_task_is_complete(task));
	cr_assert_not(store_task_has_piece(task, 1));
	cr_assert_eq(store_task_info(task)->pieces_done, 2);
	write_pieces(task, content, &one, 1);
	finish_ok(task); /* the digest is checked again */
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

Test(store_recover, an_empty_store_reports_nothing)
{
	struct store_options options = base_options();
	struct store_recovery report;

	open_store(&options);
	recover_ok(true, &report);
	cr_assert_eq(report.tasks_complete + report.tasks_incomplete + report.tasks_removed +
			     report.orphans_removed + report.pieces_checked +
			     report.pieces_dropped,
		     0);
	cr_assert_eq(store_recover(fx.store, false, NULL), 0);
}

/* --- locate, verify on read. */

Test(store_locate, a_recorded_piece_is_where_it_says)
{
	const uint64_t length = 3 * PL + 333;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 60);
	uint8_t *buf = malloc(PL);
	uint32_t some[] = { 1, 3 };
	struct store_task *task;

	options.verify_on_read = true;
	open_store(&options);
	make_id(id, "locate");
	task = open_task(id, length, PL, NULL);
	write_pieces(task, content, some, 2);
	for (uint32_t i = 0; i < 2; i++) {
		uint32_t k = some[i], len = 0;
		uint64_t offset = 0;
		int fd = -1;

		cr_assert_eq(store_piece_locate(task, k, &fd, &offset, &len), 0);
		cr_assert_geq(fd, 0);
		cr_assert_eq(offset, k * PL);
		cr_assert_eq(len, piece_size(length, PL, k));
		cr_assert_eq(pread(fd, buf, len, (off_t)offset), (ssize_t)len);
		cr_assert(memcmp(buf, content + offset, len) == 0, "piece %u", k);
	}
	{
		int fd = -1;
		uint64_t offset = 0;
		uint32_t len = 0;

		cr_assert_eq(store_piece_locate(task, 0, &fd, &offset, &len), -ENOENT);
		cr_assert_eq(store_piece_locate(task, 4, &fd, &offset, &len), -ENOENT);
	}
	store_task_release(task);
	free(buf);
	free(content);
}

Test(store_locate, a_corrupt_piece_is_ebadmsg_and_dropped)
{
	const uint64_t length = 3 * PL;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 61);
	struct store_task *task;
	uint64_t offset;
	uint32_t len, one = 1;
	char path[512];
	int fd;

	options.verify_on_read = true;
	open_store(&options);
	make_id(id, "locate-corrupt");
	task = open_task(id, length, PL, NULL);
	write_all_pieces(task, content);
	content_path(id, path, sizeof(path));
	corrupt_byte(path, PL + PL - 1);
	cr_assert_eq(store_piece_locate(task, 0, &fd, &offset, &len), 0);
	cr_assert_eq(store_piece_locate(task, 1, &fd, &offset, &len), -EBADMSG);
	cr_assert_not(store_task_has_piece(task, 1));
	cr_assert_eq(store_task_info(task)->pieces_done, 2);
	cr_assert_eq(store_task_info(task)->bytes_done, 2 * PL);
	cr_assert_eq(store_piece_locate(task, 1, &fd, &offset, &len), -ENOENT);
	cr_assert_eq(store_piece_locate(task, 2, &fd, &offset, &len), 0);
	store_task_release(task);

	/* Dropped in the metadata too. */
	reopen_store();
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert_not(store_task_has_piece(task, 1));
	write_pieces(task, content, &one, 1);
	cr_assert_eq(store_piece_locate(task, 1, &fd, &offset, &len), 0);
	store_task_release(task);
	free(content);
}

/* A complete task that loses a piece is no longer complete (as after recovery). */
Test(store_locate, a_complete_task_that_loses_a_piece_is_no_longer_complete)
{
	const uint64_t length = 2 * PL;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content;
	struct store_task *task;
	uint64_t offset;
	uint32_t len, zero = 0;
	char path[512], err[512] = "";
	int fd, pipe_fds[2];

	options.verify_on_read = true;
	open_store(&options);
	make_complete_task("locate-complete", length, id, &content);
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	content_path(id, path, sizeof(path));
	corrupt_byte(path, 5);
	cr_assert_eq(store_piece_locate(task, 0, &fd, &offset, &len), -EBADMSG);
	cr_assert_not(store_task_has_piece(task, 0));
	cr_assert_not(store_task_is_complete(task),
		      "complete with %u of %u pieces", store_task_info(task)->pieces_done,
		      store_task_info(task)->piece_count);
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EAGAIN);
	cr_assert_eq(pipe(pipe_fds), 0);
	cr_assert_eq(store_export(task, pipe_fds[1], err, sizeof(err)), -EAGAIN);
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	store_task_release(task);

	/* Also across a restart. */
	reopen_store();
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert_not(store_task_is_complete(task));
	write_pieces(task, content, &zero, 1);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	free(content);
}

Test(store_locate, without_verify_on_read_bytes_are_not_checked)
{
	const uint64_t length = PL;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 62);
	struct store_task *task;
	uint64_t offset;
	uint32_t len;
	char path[512];
	int fd;

	options.verify_on_read = false;
	open_store(&options);
	make_id(id, "locate-noverify");
	task = open_task(id, length, PL, NULL);
	write_all_pieces(task, content);
	content_path(id, path, sizeof(path));
	corrupt_byte(path, 0);
	cr_assert_eq(store_piece_locate(task, 0, &fd, &offset, &len), 0);
	cr_assert_eq(offset, 0);
	cr_assert_eq(len, PL);
	cr_assert(store_task_has_piece(task, 0));
	store_task_release(task);
	free(content);
}

/* --- GC. */

static bool task_exists(const uint8_t id[META_ID_SIZE])
{
	struct store_task *task;
	char path[512];
	bool file;

	content_path(id, path, sizeof(path));
	file = path_exists(path);
	if (store_task_find(fx.store, id, &task) != 0) {
		cr_assert_not(file, "%s left behind by an evicted task", path);
		return false;
	}
	store_task_release(task);
	cr_assert(file);
	return true;
}

/* Three complete tasks of PL bytes, created 5 ms apart: a oldest, c newest. */
static void make_three(uint8_t a[META_ID_SIZE], uint8_t b[META_ID_SIZE], uint8_t c[META_ID_SIZE])
{
	make_complete_task("gc-a", PL, a, NULL);
	sleep_ms(5);
	make_complete_task("gc-b", PL, b, NULL);
	sleep_ms(5);
	make_complete_task("gc-c", PL, c, NULL);
}

/* 3 x 64 KiB of a 200 KiB quota is 96%: above 90, so down to `low`. */
static struct store_options gc_options(unsigned low)
{
	struct store_options o = base_options();

	o.gc_quota_bytes = 200 * KIB;
	o.gc_high_percent = 90;
	o.gc_low_percent = low;
	return o;
}

Test(store_gc, the_least_recently_used_go_first_down_to_the_low_mark)
{
	struct store_options options = gc_options(70);
	uint8_t a[META_ID_SIZE], b[META_ID_SIZE], c[META_ID_SIZE];

	open_store(&options);
	make_three(a, b, c);
	cr_assert_eq(store_gc(fx.store), 1); /* 96% -> 64% */
	cr_assert_not(task_exists(a));
	cr_assert(task_exists(b));
	cr_assert(task_exists(c));
	/* Below the high mark now (the finds touched b and c: 64%): nothing more. */
	cr_assert_eq(store_gc(fx.store), 0);
	cr_assert(task_exists(b));
}

Test(store_gc, a_lower_low_mark_evicts_more)
{
	struct store_options options = gc_options(40);
	uint8_t a[META_ID_SIZE], b[META_ID_SIZE], c[META_ID_SIZE];

	open_store(&options);
	make_three(a, b, c);
	cr_assert_eq(store_gc(fx.store), 2); /* 96% -> 64% -> 32% */
	cr_assert_not(task_exists(a));
	cr_assert_not(task_exists(b));
	cr_assert(task_exists(c));
}

Test(store_gc, a_find_makes_a_task_recent)
{
	struct store_options options = gc_options(70);
	uint8_t a[META_ID_SIZE], b[META_ID_SIZE], c[META_ID_SIZE];
	struct store_task *task;

	open_store(&options);
	make_three(a, b, c);
	sleep_ms(5);
	cr_assert_eq(store_task_find(fx.store, a, &task), 0); /* touches a */
	store_task_release(task);
	cr_assert_eq(store_gc(fx.store), 1);
	cr_assert(task_exists(a));
	cr_assert_not(task_exists(b));
	cr_assert(task_exists(c));
}

Test(store_gc, a_referenced_task_is_never_evicted)
{
	struct store_options options = gc_options(10);
	uint8_t a[META_ID_SIZE], b[META_ID_SIZE], c[META_ID_SIZE];
	struct store_task *held;

	options.gc_ttl_ms = 1;
	open_store(&options);
	make_three(a, b, c);
	cr_assert_eq(store_task_find(fx.store, a, &held), 0); /* the oldest, held */
	sleep_ms(5);
	/* Everything else goes (TTL and watermark), never a. */
	cr_assert_eq(store_gc(fx.store), 2);
	cr_assert(store_task_is_complete(held));
	cr_assert_not(task_exists(b));
	cr_assert_not(task_exists(c));
	cr_assert(task_exists(a));
	cr_assert_eq(store_gc(fx.store), 0);
	store_task_release(held);
	sleep_ms(5);
	cr_assert_eq(store_gc(fx.store), 1);
	cr_assert_not(task_exists(a));
}

Test(store_gc, watermark_skips_referenced_tasks)
{
	struct store_options options = gc_options(70);
	uint8_t a[META_ID_SIZE], b[META_ID_SIZE], c[META_ID_SIZE];
	struct store_task *held;

	open_store(&options);
	make_three(a, b, c);
	cr_assert_eq(store_task_find(fx.store, a, &held), 0);
	cr_assert_eq(store_gc(fx.store), 1);
	cr_assert_not(task_exists(b));
	cr_assert(task_exists(c));
	cr_assert(task_exists(a));
	store_task_release(held);
}

Test(store_gc, below_the_high_mark_nothing_is_evicted)
{
	struct store_options options = gc_options(10);
	uint8_t a[META_ID_SIZE], b[META_ID_SIZE], c[META_ID_SIZE];

	options.gc_quota_bytes = 300 * KIB; /* 64% */
	open_store(&options);
	make_three(a, b, c);
	cr_assert_eq(store_gc(fx.store), 0);
	cr_assert(task_exists(a) && task_exists(b) && task_exists(c));
}

Test(store_gc, ttl_evicts_unused_tasks_complete_or_not)
{
	struct store_options options = base_options();
	uint8_t done_id[META_ID_SIZE], pending_id[META_ID_SIZE], held_id[META_ID_SIZE];
	uint8_t *content = make_content(PL, 70);
	struct store_task *pending, *held;

	options.gc_ttl_ms = 1;
	open_store(&options);
	make_complete_task("ttl-done", PL, done_id, NULL);
	make_id(pending_id, "ttl-pending");
	pending = open_task(pending_id, 2 * PL, PL, NULL);
	write_pieces(pending, content, (uint32_t[]){ 0 }, 1);
	store_task_release(pending);
	make_id(held_id, "ttl-held");
	held = open_task(held_id, PL, PL, NULL);
	sleep_ms(5);
	cr_assert_eq(store_gc(fx.store), 2);
	cr_assert_not(task_exists(done_id));
	cr_assert_not(task_exists(pending_id));
	cr_assert(task_exists(held_id));
	store_task_release(held);
	free(content);
}

Test(store_gc, ttl_keeps_tasks_used_recently)
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];

	options.gc_ttl_ms = 60000;
	open_store(&options);
	make_complete_task("ttl-recent", PL, id, NULL);
	cr_assert_eq(store_gc(fx.store), 0);
	cr_assert(task_exists(id));
}

/* A task used for longer than the TTL is not evicted the moment it is released. */
Test(store_gc, ttl_counts_from_the_last_release)
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	struct store_task *task;

	options.gc_ttl_ms = 100;
	open_store(&options);
	make_complete_task("long-use", PL, id, NULL);
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	sleep_ms(150); /* in use all along */
	cr_assert_eq(store_gc(fx.store), 0);
	store_task_release(task);
	cr_assert_eq(store_gc(fx.store), 0, "evicted right after its last use");
	cr_assert(task_exists(id));
	sleep_ms(150);
	cr_assert_eq(store_gc(fx.store), 1);
	cr_assert_not(task_exists(id));
}

Test(store_gc, failed_tasks_are_removed)
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE], ok_id[META_ID_SIZE], wrong[HASH_SHA256_SIZE] = { 1, 2, 3 };
	uint8_t *content = make_content(PL, 71);
	struct store_task *task;
	char err[512];
	int rc;

	open_store(&options); /* no TTL, no quota */
	make_complete_task("failed-neighbour", PL, ok_id, NULL);
	make_id(id, "failed");
	task = open_task(id, PL, PL, wrong);
	write_all_pieces(task, content);
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EBADMSG);
	cr_assert_eq(store_gc(fx.store), 0); /* still referenced */
	store_task_release(task);
	/* ... until the fdatasync its last piece started ends (the loop's). */
	while ((rc = store_gc(fx.store)) == 0 && !fx.watchdog_fired)
		run_for(1);
	cr_assert_eq(rc, 1);
	cr_assert_not(task_exists(id));
	cr_assert(task_exists(ok_id));
	free(content);
}

Test(store_gc, the_loop_runs_gc_every_interval)
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];

	options.gc_ttl_ms = 1;
	options.gc_interval_ms = 20;
	open_store(&options);
	make_complete_task("gc-timer", PL, id, NULL);
	cr_assert(task_exists(id));
	run_for(150);
	cr_assert_not(task_exists(id));
}

/* --- import / export. */

struct drain {
	pthread_t thread;
	int fd;
	uint8_t *buf;
	size_t cap, len;
};

static void *drain_main(void *arg)
{
	struct drain *d = arg;

	for (;;) {
		ssize_t n = read(d->fd, d->buf + d->len, d->cap - d->len);

		if (n <= 0)
			break;
		d->len += (size_t)n;
	}
	return NULL;
}

static void check_export(struct store_task *task, const uint8_t *content, size_t length)
{
	struct drain d = { 0 };
	char err[512] = "", out_path[256];
	int pipe_fds[2], fd;
	uint8_t *got;
	size_t got_len;

	/* To a pipe (no copy_file_range there). */
	cr_assert_eq(pipe2(pipe_fds, O_CLOEXEC), 0);
	d.fd = pipe_fds[0];
	d.cap = length + 1;
	d.buf = malloc(d.cap);
	cr_assert_eq(pthread_create(&d.thread, NULL, drain_main, &d), 0);
	cr_assert_eq(store_export(task, pipe_fds[1], err, sizeof(err)), 0, "%s", err);
	close(pipe_fds[1]);
	pthread_join(d.thread, NULL);
	close(pipe_fds[0]);
	cr_assert_eq(d.len, length);
	cr_assert(memcmp(d.buf, content, length) == 0);
	free(d.buf);

	/* To a regular file. */
	snprintf(out_path, sizeof(out_path), "%s/export.out", fx.root);
	fd = open(out_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(store_export(task, fd, err, sizeof(err)), 0, "%s", err);
	close(fd);
	got = read_whole(out_path, &got_len);
	cr_assert_eq(got_len, length);
	cr_assert(memcmp(got, content, length) == 0);
	free(got);
	unlink(out_path);
}

Test(store_import, same_filesystem_is_a_hard_link_and_a_complete_task)
{
	const size_t length = 5 * MIB + 123; /* two pieces of 4 MiB (the default) */
	struct store_options options = base_options();
	uint8_t *content = make_content(length, 80);
	uint8_t id[META_ID_SIZE], want[HASH_SHA256_SIZE], again[META_ID_SIZE];
	struct store_task *task;
	char src[256], err[512] = "", path[512];
	struct stat src_st, dst_st;
	uint64_t offset;
	uint32_t len;
	int fd;

	options.verify_on_read = true;
	open_store(&options);
	snprintf(src, sizeof(src), "%s/source.bin", fx.root);
	write_file(src, content, length);
	hash_sha256(content, length, want);

	cr_assert_eq(store_import(fx.store, src, id, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(memcmp(id, want, META_ID_SIZE), 0, "id is not the content's sha256");
	content_path(id, path, sizeof(path));
	cr_assert_eq(stat(src, &src_st), 0);
	cr_assert_eq(stat(path, &dst_st), 0);
	cr_assert_eq(src_st.st_ino, dst_st.st_ino, "not a hard link");
	cr_assert_eq(src_st.st_nlink, 2);

	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_is_complete(task));
	cr_assert_eq(store_task_info(task)->content_length, length);
	cr_assert_eq(store_task_info(task)->piece_length, piece_length_for(length));
	cr_assert_eq(store_task_info(task)->piece_count, 2);
	cr_assert_eq(store_task_info(task)->pieces_done, 2);
	cr_assert_eq(store_task_info(task)->bytes_done, length);
	cr_assert(store_task_info(task)->has_digest);
	cr_assert_eq(memcmp(store_task_info(task)->digest, want, sizeof(want)), 0);
	/* The recorded crcs are the pieces' (verify_on_read checks them). */
	cr_assert_eq(store_piece_locate(task, 0, &fd, &offset, &len), 0);
	cr_assert_eq(len, piece_length_for(length));
	cr_assert_eq(store_piece_locate(task, 1, &fd, &offset, &len), 0);
	cr_assert_eq(offset + len, length);
	check_export(task, content, length);
	store_task_release(task);

	/* Importing the same content again: the same task. */
	cr_assert_eq(store_import(fx.store, src, again, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(memcmp(again, id, META_ID_SIZE), 0);

	/* It survives a restart and a full verification. */
	reopen_store();
	{
		struct store_recovery report;

		recover_ok(true, &report);
		cr_assert_eq(report.tasks_complete, 1);
		cr_assert_eq(report.pieces_checked, 2);
		cr_assert_eq(report.pieces_dropped, 0);
		cr_assert_eq(report.orphans_removed, 0);
	}
	expect_content(id, content, length);
	free(content);
}

/* Importing content whose task is being fetched must not pull the task's file and
 * record from under its holder. */
Test(store_import, content_being_fetched_is_not_imported_over)
{
	const size_t length = 3 * PL;
	struct store_options options = base_options();
	uint8_t *content = make_content(length, 82);
	uint8_t id[META_ID_SIZE], got[META_ID_SIZE];
	uint32_t first = 0, rest[] = { 1, 2 };
	struct store_task *task;
	char src[256], err[512] = "";
	int rc;

	open_store(&options);
	hash_sha256(content, length, id);
	task = open_task(id, length, PL, id);
	write_pieces(task, content, &first, 1);
	snprintf(src, sizeof(src), "%s/source.bin", fx.root);
	write_file(src, content, length);
	rc = store_import(fx.store, src, got, err, sizeof(err));
	cr_assert_eq(rc, -EBUSY, "%d %s", rc, err);
	cr_assert(strstr(err, src) != NULL, "%s", err);
	/* The fetch goes on undisturbed. */
	write_pieces(task, content, rest, 2);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);
	/* Now complete: importing the same bytes is a no-op with the same id. */
	cr_assert_eq(store_import(fx.store, src, got, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(memcmp(got, id, META_ID_SIZE), 0);
	free(content);
}

/* An incomplete task nobody holds is replaced by the import. */
Test(store_import, an_abandoned_incomplete_task_is_replaced)
{
	const size_t length = 3 * PL;
	struct store_options options = base_options();
	uint8_t *content = make_content(length, 83);
	uint8_t id[META_ID_SIZE], got[META_ID_SIZE];
	uint32_t first = 0;
	struct store_task *task;
	char src[256], err[512] = "";

	open_store(&options);
	hash_sha256(content, length, id);
	task = open_task(id, length, PL, id);
	write_pieces(task, content, &first, 1);
	store_task_release(task);
	snprintf(src, sizeof(src), "%s/source.bin", fx.root);
	write_file(src, content, length);
	cr_assert_eq(store_import(fx.store, src, got, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(memcmp(got, id, META_ID_SIZE), 0);
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_is_complete(task));
	cr_assert_eq(store_task_info(task)->piece_length, piece_length_for(length));
	cr_assert_eq(store_task_info(task)->pieces_done, 1);
	check_export(task, content, length);
	store_task_release(task);
	free(content);
}

Test(store_import, an_empty_file)
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE], want[HASH_SHA256_SIZE];
	struct store_task *task;
	char src[256], err[512] = "";

	open_store(&options);
	snprintf(src, sizeof(src), "%s/empty.bin", fx.root);
	write_file(src, "", 0);
	hash_sha256("", 0, want);
	cr_assert_eq(store_import(fx.store, src, id, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(memcmp(id, want, META_ID_SIZE), 0);
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_is_complete(task));
	cr_assert_eq(store_task_info(task)->piece_count, 0);
	check_export(task, (const uint8_t *)"", 0);
	store_task_release(task);
}

Test(store_import, a_directory_or_a_missing_path_is_an_error)
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	char missing[256], err[512] = "";
	struct store_recovery report;

	open_store(&options);
	cr_assert_lt(store_import(fx.store, fx.root, id, err, sizeof(err)), 0);
	cr_assert(strstr(err, fx.root) != NULL, "%s", err);
	cr_assert(strstr(err, "not a regular file") != NULL, "%s", err);
	snprintf(missing, sizeof(missing), "%s/missing.bin", fx.root);
	cr_assert_eq(store_import(fx.store, missing, id, err, sizeof(err)), -ENOENT);
	cr_assert(strstr(err, missing) != NULL, "%s", err);
	recover_ok(false, &report);
	cr_assert_eq(report.tasks_complete + report.tasks_incomplete + report.orphans_removed, 0);
}

Test(store_import, export_of_an_incomplete_task_is_refused)
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	struct store_task *task;
	char err[512] = "", hex[HASH_SHA256_HEX_SIZE];
	int pipe_fds[2];

	open_store(&options);
	make_id(id, "export-incomplete");
	hex_of(id, hex);
	task = open_task(id, PL, PL, NULL);
	cr_assert_eq(pipe(pipe_fds), 0);
	cr_assert_eq(store_export(task, pipe_fds[1], err, sizeof(err)), -EAGAIN);
	cr_assert(strstr(err, hex) != NULL, "%s", err);
	cr_assert(strstr(err, "not complete") != NULL, "%s", err);
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	store_task_release(task);
}

/* Every piece recorded, the finish not done yet (storage.sync task: waiting
 * for the file's fdatasync): the bytes read the same, so an export goes on;
 * with a digest not checked yet it is refused. */
Test(store_import, export_of_a_whole_task_not_finished_yet)
{
	const uint64_t length = 3 * PL + 11;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE], id2[META_ID_SIZE], digest[HASH_SHA256_SIZE];
	uint8_t *content = make_content(length, 37);
	struct store_task *task, *with_digest;
	char err[512] = "", out[512];
	int fd;

	open_store(&options);
	make_id(id, "export-whole-unfinished");
	task = open_task(id, length, PL, NULL);
	write_all_pieces(task, content);
	cr_assert_not(store_task_is_complete(task));
	snprintf(out, sizeof(out), "%s/export.out", fx.root);
	fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0, "open %s: %s", out, strerror(errno));
	cr_assert_eq(store_export(task, fd, err, sizeof(err)), 0, "%s", err);
	close(fd);
	expect_file(out, content, length);

	make_id(id2, "export-digest-unchecked");
	hash_sha256(content, length, digest);
	with_digest = open_task(id2, length, PL, digest);
	write_all_pieces(with_digest, content);
	fd = open(out, O_WRONLY | O_TRUNC | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(store_export(with_digest, fd, err, sizeof(err)), -EAGAIN);
	cr_assert(strstr(err, "not complete") != NULL, "%s", err);
	finish_ok(with_digest);
	cr_assert_eq(store_export(with_digest, fd, err, sizeof(err)), 0, "%s", err);
	close(fd);
	expect_file(out, content, length);

	finish_ok(task);
	store_task_release(with_digest);
	store_task_release(task);
	free(content);
}

Test(store_import, another_filesystem_is_copied)
{
	const size_t length = 300 * KIB + 1;
	struct store_options options = base_options();
	uint8_t *content = make_content(length, 81);
	uint8_t id[META_ID_SIZE], want[HASH_SHA256_SIZE];
	struct store_task *task;
	char src[256], err[512] = "", path[512];
	struct stat src_st, dst_st;

	/* The source on a tmpfs, the store on /tmp. */
	if (!mount_small_fs("4m"))
		cr_skip_test("cannot mount a tmpfs: %s", strerror(errno));
	snprintf(fx.data_dir, sizeof(fx.data_dir), "%s/data", fx.root);
	options.data_dir = fx.data_dir;
	open_store(&options);
	snprintf(src, sizeof(src), "%s/source.bin", fx.mnt);
	write_file(src, content, length);
	hash_sha256(content, length, want);
	cr_assert_eq(store_import(fx.store, src, id, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(memcmp(id, want, META_ID_SIZE), 0);
	content_path(id, path, sizeof(path));
	cr_assert_eq(stat(src, &src_st), 0);
	cr_assert_eq(stat(path, &dst_st), 0);
	cr_assert_neq(src_st.st_dev, dst_st.st_dev);
	expect_content(id, content, length);
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_is_complete(task));
	check_export(task, content, length);
	store_task_release(task);
	free(content);
}

/* Files in <data dir>/content/tmp, where imports write before the rename. */
static unsigned import_temp_files(void)
{
	char dir[512];
	unsigned n = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/content/tmp", fx.data_dir);
	d = opendir(dir);
	if (!d)
		return 0;
	for (struct dirent *e; (e = readdir(d));)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

Test(store_import, in_slices_the_task_exists_only_after_the_last_one)
{
	const size_t length = 9 * MIB + 7; /* three pieces of 4 MiB */
	uint8_t *content = make_content(length, 81);
	uint8_t id[META_ID_SIZE], want[HASH_SHA256_SIZE];
	struct store_options options = base_options();
	struct store_task *task;
	struct store_job *job;
	char src[256], err[512] = "", path[512];
	unsigned steps = 0;
	struct stat st;
	int fd, rc;

	options.verify_on_read = true;
	open_store(&options);
	snprintf(src, sizeof(src), "%s/slices.bin", fx.root);
	write_file(src, content, length);
	hash_sha256(content, length, want);
	fd = open(src, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);

	cr_assert_eq(store_import_begin(fx.store, fd, "slices.bin", &job, err, sizeof(err)), 0,
		     "%s", err);
	while ((rc = store_job_step(job, MIB, err, sizeof(err))) == 1) {
		steps++;
		cr_assert_eq(store_task_find(fx.store, want, &task), -ENOENT,
			     "a task after %u of its slices", steps);
		cr_assert_eq(import_temp_files(), 1);
	}
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(steps, 9, "%u slices of 1 MiB before the last", steps);
	store_job_id(job, id);
	cr_assert_eq(memcmp(id, want, META_ID_SIZE), 0, "id is not the content's sha256");
	store_job_free(job);
	close(fd);
	cr_assert_eq(import_temp_files(), 0, "the temp file is still there");

	/* A copy (the daemon never links its clients' files), complete, checked. */
	content_path(id, path, sizeof(path));
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_nlink, 1);
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert(store_task_is_complete(task));
	cr_assert_eq(store_task_info(task)->pieces_done, 3);
	check_export(task, content, length);

	/* An export in slices of 1 MiB: ten of them, the same bytes. */
	snprintf(path, sizeof(path), "%s/slices.out", fx.root);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(store_export_begin(task, fd, &job, err, sizeof(err)), 0, "%s", err);
	steps = 0;
	while ((rc = store_job_step(job, MIB, err, sizeof(err))) == 1)
		steps++;
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(steps, 9);
	cr_assert_eq(store_job_done(job), length);
	store_job_free(job);
	close(fd);
	store_task_release(task);
	{
		size_t got_len;
		uint8_t *got = read_whole(path, &got_len);

		cr_assert_eq(got_len, length);
		cr_assert(memcmp(got, content, length) == 0);
		free(got);
	}
	free(content);
}

/* An import of `content` from fx.root/name begun and 2 MiB into it; the
 * source's fd (open for writing too) in *fd. */
static struct store_job *import_started(const char *name, const uint8_t *content, size_t length,
					int *fd)
{
	struct store_job *job;
	char src[256], err[512] = "";

	snprintf(src, sizeof(src), "%s/%s", fx.root, name);
	write_file(src, content, length);
	*fd = open(src, O_RDWR | O_CLOEXEC);
	cr_assert_geq(*fd, 0);
	cr_assert_eq(store_import_begin(fx.store, *fd, name, &job, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(store_job_step(job, 2 * MIB, err, sizeof(err)), 1, "%s", err);
	return job;
}

Test(store_import, an_abandoned_import_leaves_nothing_behind)
{
	const size_t length = 6 * MIB;
	uint8_t *content = make_content(length, 82);
	uint8_t want[HASH_SHA256_SIZE];
	struct store_options options = base_options();
	struct store_recovery report;
	struct store_task *task;
	struct store_job *job;
	int fd;

	open_store(&options);
	hash_sha256(content, length, want);
	job = import_started("abandoned.bin", content, length, &fd);
	cr_assert_eq(import_temp_files(), 1);
	/* Recovery (it runs while the CLI is served already) leaves our
	 * import's temp file alone. */
	recover_ok(false, &report);
	cr_assert_eq(report.orphans_removed, 0);
	cr_assert_eq(import_temp_files(), 1);
	store_job_free(job);
	cr_assert_eq(import_temp_files(), 0);
	cr_assert_eq(store_task_find(fx.store, want, &task), -ENOENT);

	/* A temp file of another process (a daemon killed mid-import) is an
	 * orphan. */
	{
		char stale[512];

		snprintf(stale, sizeof(stale), "%s/content/tmp/1-1", fx.data_dir);
		write_file(stale, content, 4096);
		recover_ok(false, &report);
		cr_assert_eq(report.orphans_removed, 1);
		cr_assert_not(path_exists(stale));
	}
	close(fd);
	free(content);
}

Test(store_import, a_file_that_shrinks_mid_import_is_an_error_naming_it)
{
	const size_t length = 6 * MIB;
	uint8_t *content = make_content(length, 83);
	struct store_options options = base_options();
	struct store_job *job;
	char err[512] = "";
	int fd;

	open_store(&options);
	job = import_started("shrinks.bin", content, length, &fd);
	cr_assert_eq(ftruncate(fd, 3 * MIB), 0);
	cr_assert_eq(store_job_step(job, 8 * MIB, err, sizeof(err)), -EIO);
	cr_assert(strstr(err, "shrinks.bin") && strstr(err, "the file shrank"), "%s", err);
	store_job_free(job);
	cr_assert_eq(import_temp_files(), 0);
	close(fd);
	free(content);
}

/* --- full disks (a small tmpfs; root only). */

/* A store on an 8 MiB tmpfs the test mounts (skipped when it cannot). */
static void open_small_store(struct store_options *options)
{
	if (!mount_small_fs("8m"))
		cr_skip_test("cannot mount a tmpfs: %s", strerror(errno));
	options->data_dir = fx.data_dir;
	options->meta_map_size = 4 * MIB;
	open_store(options);
}

Test(store_enospc, a_task_larger_than_the_free_space_fails_at_open)
{
	struct store_options options = base_options();
	struct store_task_params params = { .piece_length = PL };
	struct store_recovery report;
	struct store_task *task = NULL, *big;
	char err[512] = "", hex[HASH_SHA256_HEX_SIZE], path[512];
	uint64_t free_before;

	options.preallocate = STORE_PREALLOCATE_ALWAYS; /* on tmpfs, auto would not */
	open_small_store(&options);

	/* Larger than the whole filesystem, then larger than what is left. */
	make_id(params.id, "too-big");
	hex_of(params.id, hex);
	params.content_length = 16 * MIB;
	cr_assert_eq(store_task_open(fx.store, &params, &task, err, sizeof(err)), -ENOSPC, "%s",
		     err);
	cr_assert(strstr(err, fx.data_dir) != NULL, "%s", err);
	cr_assert(strstr(err, "no space left") != NULL, "%s", err);
	cr_assert(strstr(err, hex) != NULL, "%s", err);
	content_path(params.id, path, sizeof(path));
	cr_assert_not(path_exists(path), "%s left behind", path);
	cr_assert_eq(store_task_find(fx.store, params.id, &task), -ENOENT);

	big = open_task((uint8_t[META_ID_SIZE]){ 1 }, 5 * MIB, PL, NULL);
	free_before = free_bytes(fx.mnt);
	cr_assert_lt(free_before, 4 * MIB);
	make_id(params.id, "too-big-now");
	hex_of(params.id, hex);
	params.content_length = 4 * MIB;
	err[0] = '\0';
	cr_assert_eq(store_task_open(fx.store, &params, &task, err, sizeof(err)), -ENOSPC, "%s",
		     err);
	cr_assert(strstr(err, fx.data_dir) != NULL, "%s", err);
	cr_assert(strstr(err, "no space left") != NULL, "%s", err);
	cr_assert(strstr(err, hex) != NULL, "%s", err);
	content_path(params.id, path, sizeof(path));
	cr_assert_not(path_exists(path), "%s left behind", path);
	cr_assert_eq(store_task_find(fx.store, params.id, &task), -ENOENT);
	/* The failed preallocation gave its blocks back. */
	cr_assert_geq(free_bytes(fx.mnt) + 64 * KIB, free_before);

	recover_ok(false, &report);
	cr_assert_eq(report.tasks_incomplete, 1); /* the 5 MiB one */
	cr_assert_eq(report.tasks_removed, 0);
	cr_assert_eq(report.orphans_removed, 0);
	store_task_release(big);
}

/* Fills the filesystem at `dir` with a file until at most `leave` bytes are free;
 * returns the bytes written. */
static uint64_t fill_fs(const char *dir, uint64_t leave, char *path, size_t path_size)
{
	static uint8_t block[64 * KIB];
	uint64_t total = 0;
	int fd;

	snprintf(path, path_size, "%s/filler", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	memset(block, 0xee, sizeof(block));
	for (;;) {
		uint64_t left = free_bytes(dir);
		size_t chunk = sizeof(block);
		ssize_t n;

		if (left <= leave)
			break;
		if (left - leave < chunk)
			chunk = (size_t)(left - leave);
		n = write(fd, block, chunk);
		if (n <= 0)
			break;
		total += (uint64_t)n;
	}
	close(fd);
	return total;
}

/* The content's blocks are reserved at open: with far less free space than the
 * content, every piece still goes in (the slack is the metadata's). */
Test(store_enospc, an_import_that_does_not_fit_fails_naming_the_data_dir)
{
	const size_t length = 5 * MIB;
	uint8_t *content = make_content(length, 84);
	struct store_options options = base_options();
	struct store_task *task;
	struct store_job *job;
	uint8_t want[HASH_SHA256_SIZE];
	char src[256], filler[512], err[512] = "";
	int fd;

	open_small_store(&options); /* tmpfs: auto preallocation only checks */
	snprintf(src, sizeof(src), "%s/big.bin", fx.root);
	write_file(src, content, length);
	hash_sha256(content, length, want);
	fd = open(src, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);

	/* Filled before it begins: refused at once. */
	fill_fs(fx.mnt, 4 * MIB, filler, sizeof(filler));
	cr_assert_eq(store_import_begin(fx.store, fd, "big.bin", &job, err, sizeof(err)), -ENOSPC,
		     "%s", err);
	cr_assert(strstr(err, "big.bin") && strstr(err, fx.data_dir) &&
		  strstr(err, "no space left"), "%s", err);
	cr_assert_eq(import_temp_files(), 0);
	unlink(filler);

	/* Filled while it runs: the write fails, nothing is left. */
	err[0] = '\0';
	cr_assert_eq(store_import_begin(fx.store, fd, "big.bin", &job, err, sizeof(err)), 0, "%s",
		     err);
	cr_assert_eq(store_job_step(job, MIB, err, sizeof(err)), 1, "%s", err);
	fill_fs(fx.mnt, 512 * KIB, filler, sizeof(filler));
	cr_assert_eq(store_job_step(job, 8 * MIB, err, sizeof(err)), -ENOSPC, "%s", err);
	cr_assert(strstr(err, "big.bin") && strstr(err, fx.data_dir) &&
		  strstr(err, "no space left"), "%s", err);
	store_job_free(job);
	cr_assert_eq(import_temp_files(), 0);
	cr_assert_eq(store_task_find(fx.store, want, &task), -ENOENT);
	unlink(filler);
	close(fd);
	free(content);
}

Test(store_enospc, preallocated_pieces_are_written_on_a_nearly_full_disk)
{
	const uint64_t length = 2 * MIB; /* 32 pieces */
	struct store_options options = base_options();
	struct store_task_params params = { .content_length = MIB, .piece_length = PL };
	uint8_t id[META_ID_SIZE], digest[HASH_SHA256_SIZE];
	uint8_t *content = make_content(length, 90);
	struct store_task *task, *second = NULL;
	char err[512] = "", filler[512], hex[HASH_SHA256_HEX_SIZE];

	options.sync_batch_pieces = 8;
	options.preallocate = STORE_PREALLOCATE_ALWAYS; /* on tmpfs, auto would not */
	open_small_store(&options);
	make_id(id, "prealloc");
	hash_sha256(content, length, digest);
	task = open_task(id, length, PL, digest);

	cr_assert_gt(fill_fs(fx.mnt, 256 * KIB, filler, sizeof(filler)), 4 * MIB);
	cr_assert_leq(free_bytes(fx.mnt), 256 * KIB);

	write_all_pieces(task, content);
	cr_assert_eq(store_task_info(task)->pieces_done, 32);
	cr_assert_str_eq(store_task_error(task), "");
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);

	/* The next task does not fit: refused at open, before any byte. */
	make_id(params.id, "no-room");
	hex_of(params.id, hex);
	cr_assert_eq(store_task_open(fx.store, &params, &second, err, sizeof(err)), -ENOSPC, "%s",
		     err);
	cr_assert(strstr(err, "no space left") != NULL, "%s", err);
	cr_assert(strstr(err, hex) != NULL, "%s", err);
	unlink(filler);
	free(content);
}

/* On tmpfs by default (preallocate auto) a task's file is sparse: opening it
 * checks the free space and takes none; the space goes as pieces arrive, so a
 * second task checked against the same space fails when a write meets the full
 * disk, with the data dir, "no space left" and the task in its error. */
Test(store_enospc, on_tmpfs_a_task_is_checked_not_reserved)
{
	const uint64_t length = 4 * MIB; /* 64 pieces: two do not fit in 8 MiB with the metadata */
	struct store_options options = base_options();
	struct store_task_params params = { .content_length = 16 * MIB, .piece_length = PL };
	struct piece_result results[16];
	uint8_t id[META_ID_SIZE], id2[META_ID_SIZE], digest[HASH_SHA256_SIZE];
	uint8_t *content = make_content(length, 92);
	struct store_task *task, *second, *big = NULL;
	char err[512] = "", path[512], hex[HASH_SHA256_HEX_SIZE];
	uint64_t free_before;
	unsigned failed = 0;
	struct stat st;
	const char *why;

	open_small_store(&options);

	/* Larger than the free space: refused at open, as with fallocate. */
	make_id(params.id, "sparse-too-big");
	cr_assert_eq(store_task_open(fx.store, &params, &big, err, sizeof(err)), -ENOSPC, "%s",
		     err);
	cr_assert(strstr(err, "no space left") != NULL, "%s", err);
	cr_assert(strstr(err, "bytes free") != NULL, "%s", err);

	/* Fits: the file has its length and no blocks; the free space is untouched. */
	free_before = free_bytes(fx.mnt);
	make_id(id, "sparse-1");
	hash_sha256(content, length, digest);
	task = open_task(id, length, PL, digest);
	content_path(id, path, sizeof(path));
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq((uint64_t)st.st_size, length);
	cr_assert_lt((uint64_t)st.st_blocks * 512, 64 * KIB);
	cr_assert_geq(free_bytes(fx.mnt) + 64 * KIB, free_before);

	/* A second one fits the same free space: checked, not reserved. */
	make_id(id2, "sparse-2");
	hex_of(id2, hex);
	second = open_task(id2, length, PL, NULL);

	write_all_pieces(task, content);
	finish_ok(task);
	expect_content(id, content, length);
	store_task_release(task);

	/* The second one's writes meet the full disk: 16 pieces at a time until
	 * a batch has a failure (then the task is failed). */
	for (uint32_t from = 0; from < 64 && !failed; from += 16) {
		memset(results, 0, sizeof(results));
		begin_batch();
		for (uint32_t k = 0; k < 16; k++)
			cr_assert_eq(store_piece_from_buffer(second, from + k, content + (from + k) * PL,
							     PL, true,
							     piece_crc(content, length, PL, from + k),
							     NULL, piece_done, &results[k]),
				     0);
		wait_done(16);
		for (uint32_t k = 0; k < 16; k++) {
			cr_assert(results[k].res == 0 || results[k].res == -ENOSPC ||
				  results[k].res == -EIO, "piece %u: %d", from + k, results[k].res);
			cr_assert_eq(store_task_has_piece(second, from + k), results[k].res == 0);
			failed += results[k].res != 0;
		}
	}
	cr_assert_gt(failed, 0, "4 + 4 MiB and the metadata went into an 8 MiB tmpfs");
	why = store_task_error(second);
	cr_assert(strstr(why, fx.data_dir) != NULL, "%s", why);
	cr_assert(strstr(why, "no space left") != NULL, "%s", why);
	cr_assert(strstr(why, hex) != NULL, "%s", why);
	store_task_release(second);
	free(content);
}

/* With not one byte left, the metadata cannot grow: recording fails cleanly (the
 * task fails with a clear reason, nothing recorded), never a row without bytes. */
Test(store_enospc, a_disk_with_no_byte_left_fails_the_task_cleanly)
{
	const uint64_t length = 4 * PL;
	struct store_options options = base_options();
	struct piece_result results[4];
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 91);
	struct store_task *task;
	char filler[512], hex[HASH_SHA256_HEX_SIZE];
	const char *why;

	open_small_store(&options);
	make_id(id, "no-byte-left");
	hex_of(id, hex);
	task = open_task(id, length, PL, NULL);
	fill_fs(fx.mnt, 0, filler, sizeof(filler));
	cr_assert_lt(free_bytes(fx.mnt), 4 * KIB);

	memset(results, 0, sizeof(results));
	begin_batch();
	submit_pieces(task, content, 0, 4, results);
	wait_done(4);
	for (uint32_t k = 0; k < 4; k++) {
		cr_assert_eq(results[k].calls, 1);
		cr_assert(results[k].res == 0 || results[k].res == -ENOSPC, "piece %u: %d", k,
			  results[k].res);
		cr_assert_eq(store_task_has_piece(task, k), results[k].res == 0);
	}
	if (store_task_info(task)->pieces_done < 4) {
		why = store_task_error(task);
		cr_assert(strstr(why, fx.data_dir) != NULL, "%s", why);
		cr_assert(strstr(why, "no space left") != NULL, "%s", why);
		cr_assert(strstr(why, hex) != NULL, "%s", why);
	}
	store_task_release(task);

	/* Room again, a restart: whatever is recorded has its bytes. */
	unlink(filler);
	reopen_store();
	{
		struct store_recovery report;

		recover_ok(false, &report);
		cr_assert_eq(report.pieces_dropped, 0);
		cr_assert_eq(report.tasks_removed, 0);
	}
	free(content);
}

/* --- several pieces back to back on one stream (store_piece_from_stream). */

struct stream_run {
	struct store_task *task;
	int fd;
	uint32_t next, count;
	int order_errors;
	struct piece_result *results;
	const uint8_t *content;		/* what the file must hold when checked */
	uint64_t length;
	uint32_t checked;
};

static struct stream_run stream_run;

static void stream_received(struct store_task *task, uint32_t number, int res, void *arg);
static void stream_checked(struct store_task *task, uint32_t number, int res, void *arg);

static void stream_start(void)
{
	uint32_t number = stream_run.next++;

	cr_assert_eq(store_piece_from_stream(stream_run.task, number, stream_run.fd, false, 0,
					     stream_received, stream_checked, piece_done,
					     &stream_run.results[number], NULL),
		     0);
}

static void stream_received(struct store_task *task, uint32_t number, int res, void *arg)
{
	struct piece_result *r = arg;

	/* Received comes once, before done, and before the piece is recorded. */
	if (res != 0 || r->calls != 0 || store_task_has_piece(task, number))
		stream_run.order_errors++;
	if (stream_run.next < stream_run.count)
		stream_start();
}

/* Checked comes once, before done, with the piece's bytes readable from the
 * content file. */
static void stream_checked(struct store_task *task, uint32_t number, int res, void *arg)
{
	struct piece_result *r = arg;
	uint32_t size = piece_size(stream_run.length, PL, number);
	uint8_t *got = malloc(size);

	cr_assert(got);
	if (res != 0 || r->calls != 0 ||
	    pread(store_task_content_fd(task), got, size, (off_t)number * PL) != (ssize_t)size ||
	    memcmp(got, stream_run.content + (size_t)number * PL, size) != 0)
		stream_run.order_errors++;
	stream_run.checked++;
	free(got);
}

static void stream_pieces(enum store_socket_path path)
{
	const uint64_t length = 7 * PL + 123;
	struct store_options options = base_options();
	struct piece_result results[8];
	struct writer w;
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 41);
	struct store_task *task;
	int sv[2];

	options.socket_path = path;
	open_store(&options);
	make_id(id, path == STORE_SOCKET_SPLICE ? "stream-splice" : "stream-recv");
	task = open_task(id, length, PL, NULL);
	memset(results, 0, sizeof(results));
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	stream_run = (struct stream_run){ .task = task, .fd = sv[0], .count = 8,
					  .results = results, .content = content,
					  .length = length };
	begin_batch();
	writer_start(&w, sv[1], content, length);
	stream_start();
	wait_done(8);
	writer_join(&w);
	cr_assert_eq(stream_run.order_errors, 0);
	cr_assert_eq(stream_run.checked, 8);
	for (int k = 0; k < 8; k++)
		cr_assert_eq(results[k].res, 0, "piece %d: %d", k, results[k].res);
	cr_assert_eq(store_task_info(task)->pieces_done, 8);
	expect_content(id, content, length);
	close(sv[0]);
	store_task_release(task);
	free(content);
}

Test(store_stream, pieces_back_to_back_on_one_socket_splice)
{
	stream_pieces(STORE_SOCKET_SPLICE);
}

Test(store_stream, pieces_back_to_back_on_one_socket_recv)
{
	stream_pieces(STORE_SOCKET_RECV);
}

/* --- the observer (the peer upload service) and discarded tasks. */

TestSuite(store_observe, .init = setup, .fini = teardown, .timeout = 60);

struct observed {
	unsigned pieces, complete, failed, idle;
	uint8_t seen[MAX_PIECES];
	bool recorded_when_told;
};

static void observe(void *arg, struct store_task *task, enum store_event event, uint32_t number)
{
	struct observed *o = arg;

	switch (event) {
	case STORE_EVENT_PIECE:
		o->pieces++;
		cr_assert_lt(number, MAX_PIECES);
		o->seen[number]++;
		/* Servable at once: recorded by the time anyone hears of it. */
		o->recorded_when_told = store_task_has_piece(task, number);
		break;
	case STORE_EVENT_COMPLETE: o->complete++; break;
	case STORE_EVENT_FAILED: o->failed++; break;
	case STORE_EVENT_IDLE: o->idle++; break;
	}
}

Test(store_observe, every_recorded_piece_then_complete_once)
{
	const uint64_t length = 5 * PL + 7;
	struct store_options options = base_options();
	struct piece_result results[6];
	struct observed o = { 0 };
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 21);
	struct store_task *task;

	open_store(&options);
	store_set_observer(fx.store, observe, &o);
	make_id(id, "observe-basic");
	task = open_task(id, length, PL, NULL);
	memset(results, 0, sizeof(results));
	begin_batch();
	for (uint32_t k = 0; k < 6; k++)
		cr_assert_eq(store_piece_from_buffer(task, k, content + k * PL,
						     piece_size(length, PL, k), true,
						     piece_crc(content, length, PL, k), NULL, piece_done,
						     &results[k]),
			     0);
	wait_done(6);
	cr_assert_eq(o.pieces, 6);
	for (uint32_t k = 0; k < 6; k++)
		cr_assert_eq(o.seen[k], 1, "piece %u told %u times", k, o.seen[k]);
	cr_assert(o.recorded_when_told);
	cr_assert_eq(o.complete, 0);
	finish_ok(task);
	cr_assert_eq(o.complete, 1);
	store_task_release(task); /* complete: not idle */
	cr_assert_eq(o.idle, 0);
	cr_assert_eq(o.failed, 0);
	free(content);
}

Test(store_observe, a_bad_piece_is_not_told_and_an_abandoned_task_is_idle)
{
	const uint64_t length = 3 * PL;
	struct store_options options = base_options();
	struct piece_result results[2];
	struct observed o = { 0 };
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 22);
	struct store_task *task, *again;

	open_store(&options);
	store_set_observer(fx.store, observe, &o);
	make_id(id, "observe-idle");
	task = open_task(id, length, PL, NULL);
	cr_assert_eq(store_task_find(fx.store, id, &again), 0);
	memset(results, 0, sizeof(results));
	begin_batch();
	cr_assert_eq(store_piece_from_buffer(task, 0, content, PL, true,
					     piece_crc(content, length, PL, 0), NULL, piece_done,
					     &results[0]), 0);
	cr_assert_eq(store_piece_from_buffer(task, 1, content + PL, PL, true,
					     piece_crc(content, length, PL, 1) ^ 1, NULL, piece_done,
					     &results[1]), 0);
	wait_done(2);
	cr_assert_eq(results[1].res, -EBADMSG);
	cr_assert_eq(o.pieces, 1);
	cr_assert_eq(o.seen[0], 1);
	cr_assert_eq(o.seen[1], 0);
	store_task_release(task);
	cr_assert_eq(o.idle, 0, "another reference is still held");
	store_task_release(again);
	cr_assert_eq(o.idle, 1);
	cr_assert_eq(o.complete + o.failed, 0);
	free(content);
}

Test(store_observe, a_wrong_digest_is_failed)
{
	const uint64_t length = PL + 1;
	struct store_options options = base_options();
	struct piece_result results[2];
	struct observed o = { 0 };
	uint8_t id[META_ID_SIZE], digest[HASH_SHA256_SIZE] = { 1 };
	uint8_t *content = make_content(length, 23);
	struct store_task *task;
	char err[512];

	open_store(&options);
	store_set_observer(fx.store, observe, &o);
	make_id(id, "observe-digest");
	task = open_task(id, length, PL, digest);
	memset(results, 0, sizeof(results));
	begin_batch();
	for (uint32_t k = 0; k < 2; k++)
		cr_assert_eq(store_piece_from_buffer(task, k, content + k * PL,
						     piece_size(length, PL, k), false, 0, NULL,
						     piece_done, &results[k]), 0);
	wait_done(2);
	cr_assert_eq(store_task_finish(task, err, sizeof(err)), -EBADMSG);
	cr_assert_eq(o.failed, 1);
	cr_assert_eq(o.complete, 0);
	store_task_release(task);
	free(content);
}

/* A task discarded while someone else holds it (a peer's upload in flight)
 * goes at once: the next open of its id starts afresh without its pieces;
 * the holder's descriptor still reads the old bytes. */
Test(store_observe, a_task_discarded_while_held_elsewhere_goes_at_once)
{
	const uint64_t length = 2 * PL;
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 25);
	struct store_task *task, *held, *again;
	uint32_t first[1] = { 0 };
	uint8_t buf[64];
	char path[512];

	open_store(&options);
	make_id(id, "discard-held");
	task = open_task(id, length, PL, NULL);
	write_pieces(task, content, first, 1);
	cr_assert_eq(store_task_find(fx.store, id, &held), 0);
	cr_assert_eq(held, task);
	content_path(id, path, sizeof(path));

	store_task_discard(task);
	cr_assert_not(path_exists(path), "%s still exists", path);
	cr_assert_eq(store_task_find(fx.store, id, &again), -ENOENT);
	cr_assert_eq(pread(store_task_content_fd(held), buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
	cr_assert(memcmp(buf, content, sizeof(buf)) == 0);

	again = open_task(id, length, PL, NULL);
	cr_assert_neq(again, held);
	cr_assert_eq(store_task_info(again)->pieces_done, 0, "the discarded task's pieces came back");
	cr_assert_not(store_task_has_piece(again, 0));
	store_task_release(held);
	cr_assert(path_exists(path), "the holder's release removed the new task's file");
	cr_assert_eq(store_task_find(fx.store, id, &task), 0);
	cr_assert_eq(task, again);
	store_task_release(task);
	store_task_release(again);
	free(content);
}

/* The delete waits for the write that still holds the task. */
struct discard_at_done {
	struct piece_result result;
	bool discarded;
};

static void discard_in_done(struct store_task *task, uint32_t number, int res, void *arg)
{
	struct discard_at_done *d = arg;

	piece_done(task, number, res, &d->result);
	store_task_discard(task);
	d->discarded = true;
}

Test(store_observe, a_task_discarded_from_a_piece_callback_is_deleted_after_it)
{
	const uint64_t length = 2 * PL;
	struct store_options options = base_options();
	struct discard_at_done d = { 0 };
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(length, 24);
	struct store_task *task;
	char path[512];

	open_store(&options);
	make_id(id, "discard");
	task = open_task(id, length, PL, NULL);
	content_path(id, path, sizeof(path));
	cr_assert(path_exists(path));
	begin_batch();
	cr_assert_eq(store_piece_from_buffer(task, 0, content, PL, true,
					     piece_crc(content, length, PL, 0), NULL, discard_in_done,
					     &d), 0);
	wait_done(1);
	cr_assert(d.discarded);
	cr_assert_eq(d.result.res, 0);
	/* The write's own reference went after the callback: gone now. */
	cr_assert_not(path_exists(path), "%s still exists", path);
	cr_assert_eq(store_task_find(fx.store, id, &task), -ENOENT);
	cr_assert_eq(store_delete(fx.store, id), -ENOENT);
	free(content);
}

/* A daemon killed mid-import leaves content/tmp/<pid>-<n>; the next daemon
 * with the same pid (pid 1 in a container, every time) removes it at open, and
 * its first import does not collide with it (it did: EEXIST). */
Test(store_import, a_temp_file_of_an_earlier_daemon_with_our_pid_goes_at_open)
{
	const size_t length = 64 * 1024;
	uint8_t *content = make_content(length, 91);
	struct store_options options = base_options();
	struct store_recovery report;
	struct store_job *job = NULL;
	char stale[512], dir[512], src[256], err[512] = "";
	int fd, rc;

	/* What the killed daemon left, before this one opens the store. */
	mkdir(fx.data_dir, 0750);
	snprintf(dir, sizeof(dir), "%s/content", fx.data_dir);
	mkdir(dir, 0750);
	snprintf(dir, sizeof(dir), "%s/content/tmp", fx.data_dir);
	mkdir(dir, 0750);
	snprintf(stale, sizeof(stale), "%s/%d-1", dir, (int)getpid());
	write_file(stale, content, 4096);
	open_store(&options);
	recover_ok(false, &report);
	cr_assert_not(path_exists(stale), "%s is still there after open and recovery", stale);
	snprintf(src, sizeof(src), "%s/src.bin", fx.root);
	write_file(src, content, length);
	fd = open(src, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	rc = store_import_begin(fx.store, fd, "src.bin", &job, err, sizeof(err));
	cr_assert_eq(rc, 0, "the first import after the restart failed: %d (%s)", rc, err);
	store_job_free(job);
	close(fd);
	free(content);
}

/* A finish that answered -EINPROGRESS is called back even when a piece is
 * dropped meanwhile (verify_on_read finds it damaged while it is served to a
 * peer): the hash restarts and stops at the hole. */
Test(store_buffer, a_piece_dropped_during_the_check_still_calls_the_finish_back)
{
	struct store_options options = base_options();
	uint8_t id[META_ID_SIZE];
	uint8_t *content = make_content(SLICES_LENGTH, 92);
	struct checked_calls calls = { 0 };
	uint32_t len32;
	uint64_t off;
	struct store_task *task;
	char path[512];
	int fd;

	options.verify_on_read = true;
	open_store(&options);
	task = finish_in_slices("dropped-during-check", content, false, &calls, id);
	/* The disk flips a byte of piece 9; a peer asks for it. */
	content_path(id, path, sizeof(path));
	corrupt_byte(path, 9 * MIB + 100);
	cr_assert_eq(store_piece_locate(task, 9, &fd, &off, &len32), -EBADMSG);
	run_for(2000);
	cr_assert_eq(calls.calls, 1, "the finish that said -EINPROGRESS was never called back "
		     "(%u calls in 2 s)", calls.calls);
	store_task_release(task);
	free(content);
}
