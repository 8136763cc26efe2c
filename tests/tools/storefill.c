/*
 * rf-storefill: drives the real store (storage/store.h) on a real loop, for the
 * storage stress tests (tests/integration/storage_*.sh).
 *
 *   rf-storefill fill  --data-dir D --tasks N --size BYTES[,BYTES...] --piece-length L
 *                      [--mode splice|recv] [--seed S] [--inflight K] [--only I]
 *                      [--sync-batch B] [--sync-delay-ms MS] [--sync task|pieces]
 *                      [--no-recover] [--ballast PATH [--ballast-leave BYTES]]
 *   rf-storefill check --data-dir D --tasks N --size BYTES[,BYTES...] --piece-length L
 *                      [--seed S] [--verify-all] [--expect c,i,a,-...] [--allow-repair]
 *   rf-storefill gc    --data-dir D [--quota BYTES] [--high PCT] [--low PCT] [--ttl-ms MS]
 *
 * Task i (0 <= i < N) has id sha256("rf-storefill <seed> <i>"), the i-th size
 * of --size (the last one repeats), and content that is a pure function of
 * (seed, i, offset): splitmix64 of the 8-byte word index, little endian. Its
 * digest is the sha256 of that content.
 *
 * fill opens the store (gc off), recovers (verify_all = false), then for each
 * task (or only task I) opens it (resuming its recorded pieces) and writes
 * every missing piece through store_piece_from_socket: a socketpair per piece,
 * a writer thread sending exactly the piece's bytes into one end, the store
 * reading the other, K pieces in flight, the expected crc given. A task with
 * every piece recorded is finished (digest checked; with --sync task, the
 * default, once the whole file's fdatasync has ended). Exits 0 once every task
 * is complete; 3 if store_task_open reports a full disk (its message verbatim
 * on stderr); 1 on any other error, naming what failed. --no-recover skips
 * the recovery: the requests a daemon serves before its recovery has run.
 * --ballast PATH: once a task is open, PATH is written until its filesystem
 * is full but for about --ballast-leave bytes (another writer taking the
 * space the task was checked against).
 *
 * check is the oracle after a crash: it reads every task's state BEFORE
 * recovery (the metadata must never lead the data a kill -9 leaves, which is
 * what the page cache holds: every recorded piece's bytes must already equal
 * the expected bytes, every complete task's whole file must), then runs store_recover(verify_all = true), which must have
 * nothing to repair after a mere kill -9 (no piece dropped, no task removed;
 * --allow-repair lifts this), then checks the same again, and that no file
 * under D/content is anything but a known task's content file. --verify-all:
 * every task must exist and be complete. --expect: the state of each task
 * after recovery (c complete, i incomplete, a absent, f failed: allowed and its
 * recorded pieces checked, - any but failed). Exits 0, or 1
 * with the first discrepancy.
 *
 * gc opens the store with the given GC settings, recovers, runs one store_gc
 * pass and prints how many tasks it evicted.
 *
 * Usage errors exit 2.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/hash.h"
#include "core/loop.h"
#include "storage/meta.h"
#include "storage/piece.h"
#include "storage/store.h"

#define TASKS_MAX	      4096u
#define INFLIGHT_MAX	      64u
#define PIECE_LENGTH_TOOL_MAX (64ull << 20) /* buffers are piece-sized */
#define GEN_CHUNK	      (1u << 20)

enum exit_code {
	EXIT_OK = 0,
	EXIT_FAILED = 1,
	EXIT_USAGE = 2,
	EXIT_NO_SPACE = 3,
};

struct args {
	const char *data_dir;
	unsigned tasks;
	uint64_t sizes[TASKS_MAX];
	unsigned size_count;
	uint64_t piece_length;
	enum store_socket_path mode;
	uint64_t seed;
	unsigned inflight;
	int only; /* -1: every task */
	unsigned sync_batch;
	unsigned sync_delay_ms;
	enum store_sync sync;
	bool verify_all;
	bool allow_repair;
	bool no_recover;
	const char *ballast; /* fill: filled up to ENOSPC once a task is open */
	uint64_t ballast_leave; /* ... but for this many bytes */
	char expect[TASKS_MAX]; /* 'c', 'i', 'a', '-' per task; 0 = none given */
	uint64_t quota;
	unsigned high, low;
	int64_t ttl_ms;
};

/* --- the deterministic content. */

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t content_base(uint64_t seed, unsigned index)
{
	return splitmix64(seed ^ splitmix64(0x5f0e5f0e00000000ull + index));
}

/* The expected bytes [offset, offset + len) of task `index`. */
static void content_fill(uint64_t seed, unsigned index, uint64_t offset, uint8_t *buf, size_t len)
{
	uint64_t base = content_base(seed, index);

	if (offset % 8 == 0) { /* the usual case: whole words */
		for (; len >= 8; len -= 8, buf += 8, offset += 8) {
			uint64_t word = htole64(splitmix64(base + offset / 8));

			memcpy(buf, &word, 8);
		}
	}
	while (len > 0) {
		uint64_t word = splitmix64(base + offset / 8);
		unsigned skip = (unsigned)(offset % 8);
		size_t n = 8 - skip < len ? 8 - skip : len;

		for (size_t k = 0; k < n; k++)
			buf[k] = (uint8_t)(word >> (8 * (skip + k)));
		buf += n;
		offset += n;
		len -= n;
	}
}

static void task_id(uint64_t seed, unsigned index, uint8_t id[META_ID_SIZE])
{
	char text[96];
	int n = snprintf(text, sizeof(text), "rf-storefill %" PRIu64 " %u", seed, index);

	hash_sha256(text, (size_t)n, id);
}

static uint64_t task_size(const struct args *a, unsigned index)
{
	return a->sizes[index < a->size_count ? index : a->size_count - 1];
}

static int content_digest(uint64_t seed, unsigned index, uint64_t size, uint8_t out[32])
{
	struct hash_sha256 *h = hash_sha256_new();
	uint8_t *buf = malloc(GEN_CHUNK);

	if (!h || !buf) {
		hash_sha256_free(h);
		free(buf);
		return -ENOMEM;
	}
	for (uint64_t off = 0; off < size;) {
		size_t n = size - off < GEN_CHUNK ? (size_t)(size - off) : GEN_CHUNK;

		content_fill(seed, index, off, buf, n);
		hash_sha256_update(h, buf, n);
		off += n;
	}
	hash_sha256_final(h, out);
	hash_sha256_free(h);
	free(buf);
	return 0;
}

static void short_hex(const uint8_t id[META_ID_SIZE], char out[HASH_SHA256_HEX_SIZE])
{
	hash_hex(id, out);
	out[16] = '\0';
}

/* --- fill. */

struct fill;

struct piece_slot {
	struct fill *fill;
	bool busy;
	uint32_t number;
	uint32_t size;
	uint8_t *buf; /* piece_length bytes: the piece as sent */
	int store_fd, writer_fd;
	pthread_t writer;
	bool writer_started;
	int writer_err; /* errno of a failed send, or 0 */
};

struct fill {
	const struct args *args;
	struct loop *loop;
	struct store *store;
	struct piece_slot slots[INFLIGHT_MAX];
	unsigned inflight;

	unsigned next_task, task_end;
	unsigned task_index;
	struct store_task *task;
	uint32_t next_piece;

	bool pumping, pump_again;
	bool done; /* every task complete, or gave up */
	int exit_code;
	char error[1024];

	bool finishing; /* store_task_finish said -EINPROGRESS: fill_finished */
	unsigned tasks_finished, tasks_already;
	uint64_t pieces_written, pieces_resumed, bytes_written;
};

static void fill_fail(struct fill *f, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void fill_fail(struct fill *f, int code, const char *fmt, ...)
{
	va_list ap;

	if (f->exit_code != EXIT_OK)
		return; /* the first failure is the one reported */
	f->exit_code = code;
	va_start(ap, fmt);
	vsnprintf(f->error, sizeof(f->error), fmt, ap);
	va_end(ap);
}

static void *piece_writer(void *arg)
{
	struct piece_slot *slot = arg;
	uint32_t sent = 0;

	while (sent < slot->size) {
		ssize_t n =
			send(slot->writer_fd, slot->buf + sent, slot->size - sent, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			slot->writer_err = n < 0 ? errno : EIO;
			break;
		}
		sent += (uint32_t)n;
	}
	return NULL;
}

static void fill_pump(struct fill *f);

static void piece_done(struct store_task *task, uint32_t number, int res, void *arg)
{
	struct piece_slot *slot = arg;
	struct fill *f = slot->fill;

	/* Our end first: a writer still blocked in send() gets EPIPE. */
	close(slot->store_fd);
	if (slot->writer_started)
		pthread_join(slot->writer, NULL);
	close(slot->writer_fd);
	slot->busy = false;
	slot->writer_started = false;
	f->inflight--;

	if (res < 0) {
		char hex[HASH_SHA256_HEX_SIZE];

		short_hex(store_task_info(task)->id, hex);
		fill_fail(f, EXIT_FAILED, "task %u (%s...) piece %u: the store reports %s%s%s",
			  f->task_index, hex, number, strerror(-res),
			  store_task_error(task)[0] ? ": " : "", store_task_error(task));
	} else if (slot->writer_err) {
		fill_fail(f, EXIT_FAILED,
			  "task %u piece %u: the writer failed (%s) yet the store "
			  "recorded the piece",
			  f->task_index, number, strerror(slot->writer_err));
	} else {
		f->pieces_written++;
		f->bytes_written += slot->size;
	}
	fill_pump(f);
}

static int piece_start(struct fill *f, uint32_t number)
{
	const struct meta_task *info = store_task_info(f->task);
	struct piece_slot *slot = NULL;
	uint32_t crc;
	int fds[2], rc;

	for (unsigned k = 0; k < f->args->inflight; k++) {
		if (!f->slots[k].busy) {
			slot = &f->slots[k];
			break;
		}
	}
	if (!slot) {
		fill_fail(f, EXIT_FAILED, "internal: no free piece slot");
		return -EBUSY;
	}
	slot->number = number;
	slot->size = piece_size(info->content_length, info->piece_length, number);
	content_fill(f->args->seed, f->task_index, piece_offset(info->piece_length, number),
		     slot->buf, slot->size);
	crc = hash_crc32c(slot->buf, slot->size);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) {
		fill_fail(f, EXIT_FAILED, "socketpair: %s", strerror(errno));
		return -errno;
	}
	slot->store_fd = fds[0];
	slot->writer_fd = fds[1];
	slot->writer_err = 0;
	rc = pthread_create(&slot->writer, NULL, piece_writer, slot);
	if (rc != 0) {
		close(fds[0]);
		close(fds[1]);
		fill_fail(f, EXIT_FAILED, "pthread_create: %s", strerror(rc));
		return -rc;
	}
	slot->writer_started = true;
	slot->busy = true;
	f->inflight++;
	/* done may run before this returns (a submission that failed at once). */
	rc = store_piece_from_socket(f->task, number, slot->store_fd, true, crc, piece_done, slot);
	if (rc < 0) {
		close(slot->store_fd);
		pthread_join(slot->writer, NULL);
		close(slot->writer_fd);
		slot->busy = false;
		slot->writer_started = false;
		f->inflight--;
		fill_fail(f, EXIT_FAILED, "task %u piece %u: store_piece_from_socket: %s",
			  f->task_index, number, strerror(-rc));
		return rc;
	}
	return 0;
}

/* Opens task f->next_task; a task already complete is counted and let go. */
static int fill_ballast(const char *path, uint64_t leave);

static int fill_open_task(struct fill *f)
{
	const struct args *a = f->args;
	struct store_task_params params = { .url = "rf-storefill://" };
	struct store_task *existing = NULL;
	uint8_t digest[HASH_SHA256_SIZE];
	char err[512];
	unsigned index = f->next_task++;
	int rc;

	task_id(a->seed, index, params.id);
	params.content_length = task_size(a, index);
	params.piece_length = a->piece_length;
	/* The digest only matters to a task being created: computing it for
	 * every task at every start would make most kills land before any
	 * piece moves. The reference from find keeps the task in memory, so
	 * store_task_open below resumes exactly that one. */
	if (store_task_find(f->store, params.id, &existing) < 0) {
		existing = NULL;
		rc = content_digest(a->seed, index, params.content_length, digest);
		if (rc < 0) {
			fill_fail(f, EXIT_FAILED, "task %u: %s", index, strerror(-rc));
			return rc;
		}
		params.digest = digest;
	}
	err[0] = '\0';
	rc = store_task_open(f->store, &params, &f->task, err, sizeof(err));
	if (existing)
		store_task_release(existing);
	if (rc == -ENOSPC) {
		fill_fail(f, EXIT_NO_SPACE, "%s", err);
		f->task = NULL;
		return rc;
	}
	if (rc < 0) {
		fill_fail(f, EXIT_FAILED, "task %u: store_task_open: %s (%s)", index, err,
			  strerror(-rc));
		f->task = NULL;
		return rc;
	}
	f->task_index = index;
	f->next_piece = 0;
	if (f->args->ballast && fill_ballast(f->args->ballast, f->args->ballast_leave) < 0) {
		fill_fail(f, EXIT_FAILED, "ballast %s: %s", f->args->ballast, strerror(errno));
		store_task_release(f->task);
		f->task = NULL;
		return -EIO;
	}
	if (store_task_info(f->task)->state == META_TASK_FAILED) {
		char hex[HASH_SHA256_HEX_SIZE];

		hash_hex(params.id, hex);
		fill_fail(f, EXIT_FAILED, "task %u (%s) is failed: %s", index, hex,
			  store_task_error(f->task));
		store_task_release(f->task);
		f->task = NULL;
		return -EIO;
	}
	if (store_task_is_complete(f->task)) {
		f->tasks_already++;
		store_task_release(f->task);
		f->task = NULL;
	}
	return 0;
}

/* --ballast: another writer takes what the task was checked against (on a
 * tmpfs the store only checks the free space). Fills PATH's filesystem but
 * for about `leave` bytes. */
static int fill_ballast(const char *path, uint64_t leave)
{
	static const uint8_t zeros[1 << 20];
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	struct statvfs vfs;

	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t n;

		if (leave && fstatvfs(fd, &vfs) == 0 &&
		    (uint64_t)vfs.f_bavail * vfs.f_frsize <= leave + sizeof(zeros))
			break;
		n = write(fd, zeros, sizeof(zeros));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != ENOSPC) {
			int saved = errno;

			close(fd);
			errno = saved;
			return -1;
		}
		if (n < (ssize_t)sizeof(zeros))
			break; /* full */
	}
	close(fd);
	return 0;
}

static void fill_finish_task(struct fill *f);

/* The finish that waited (digest check, the file's fdatasync) can answer. */
static void fill_finished(void *arg, const uint8_t id[META_ID_SIZE])
{
	struct fill *f = arg;

	(void)id;
	f->finishing = false;
	fill_finish_task(f);
	fill_pump(f);
}

static void fill_finish_task(struct fill *f)
{
	char err[512];
	int rc;

	err[0] = '\0';
	rc = store_task_finish(f->task, err, sizeof(err));
	if (rc == -EINPROGRESS) {
		f->finishing = true;
		store_task_on_checked(f->task, fill_finished, f);
		return;
	}
	if (rc < 0)
		fill_fail(f, EXIT_FAILED, "task %u: store_task_finish: %s (%s)", f->task_index, err,
			  strerror(-rc));
	else if (!store_task_is_complete(f->task))
		fill_fail(f, EXIT_FAILED, "task %u: finished but not complete", f->task_index);
	else
		f->tasks_finished++;
	store_task_release(f->task);
	f->task = NULL;
}

/* Moves the fill on as far as it can without waiting. */
static void fill_step(struct fill *f)
{
	for (;;) {
		const struct meta_task *info;

		if (f->finishing)
			return; /* fill_finished */
		if (f->exit_code != EXIT_OK) {
			if (f->inflight == 0) {
				if (f->task) {
					store_task_release(f->task);
					f->task = NULL;
				}
				f->done = true;
			}
			return;
		}
		if (!f->task) {
			if (f->next_task >= f->task_end) {
				f->done = true;
				return;
			}
			if (fill_open_task(f) < 0)
				continue;
			continue;
		}
		info = store_task_info(f->task);
		while (f->exit_code == EXIT_OK && f->inflight < f->args->inflight &&
		       f->next_piece < info->piece_count) {
			uint32_t number = f->next_piece++;

			if (store_task_has_piece(f->task, number)) {
				f->pieces_resumed++;
				continue;
			}
			piece_start(f, number);
		}
		if (f->exit_code != EXIT_OK)
			continue;
		if (f->next_piece < info->piece_count || f->inflight > 0)
			return; /* wait for pieces */
		fill_finish_task(f);
	}
}

static void fill_pump(struct fill *f)
{
	if (f->pumping) {
		f->pump_again = true;
		return;
	}
	f->pumping = true;
	do {
		f->pump_again = false;
		fill_step(f);
	} while (f->pump_again);
	f->pumping = false;
	if (f->done)
		loop_stop(f->loop);
}

static int open_store(const struct args *a, struct loop *loop, struct store **store)
{
	struct store_options options = {
		.data_dir = a->data_dir,
		.socket_path = a->mode,
		.sync_batch_pieces = a->sync_batch,
		.sync_delay_ms = a->sync_delay_ms,
		.sync = a->sync,
		.gc_interval_ms = -1,
		.gc_ttl_ms = a->ttl_ms,
		.gc_quota_bytes = a->quota,
		.gc_high_percent = a->high,
		.gc_low_percent = a->low,
	};
	char err[512];
	int rc;

	err[0] = '\0';
	rc = store_open(store, loop, &options, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "rf-storefill: store_open: %s (%s)\n", err, strerror(-rc));
	return rc;
}

static void print_recovery(const char *what, const struct store_recovery *r)
{
	printf("%s: complete=%u incomplete=%u removed=%u orphans=%u pieces_checked=%u "
	       "pieces_dropped=%u\n",
	       what, r->tasks_complete, r->tasks_incomplete, r->tasks_removed, r->orphans_removed,
	       r->pieces_checked, r->pieces_dropped);
}

static int cmd_fill(const struct args *a)
{
	struct fill *f = calloc(1, sizeof(*f));
	struct store_recovery report;
	uint64_t t0 = clock_monotonic_ms();
	int rc, code = EXIT_FAILED;

	if (!f) {
		fprintf(stderr, "rf-storefill: out of memory\n");
		return EXIT_FAILED;
	}
	f->args = a;
	f->next_task = a->only >= 0 ? (unsigned)a->only : 0;
	f->task_end = a->only >= 0 ? (unsigned)a->only + 1 : a->tasks;
	for (unsigned k = 0; k < a->inflight; k++) {
		f->slots[k].fill = f;
		f->slots[k].buf = malloc((size_t)a->piece_length);
		if (!f->slots[k].buf) {
			fprintf(stderr, "rf-storefill: out of memory for %u piece buffers\n",
				a->inflight);
			goto out_free;
		}
	}
	rc = loop_create(&f->loop, NULL);
	if (rc < 0) {
		fprintf(stderr, "rf-storefill: loop_create: %s\n", strerror(-rc));
		goto out_free;
	}
	if (open_store(a, f->loop, &f->store) < 0)
		goto out_destroy_loop;
	if (!a->no_recover) {
		rc = store_recover(f->store, false, &report);
		if (rc < 0) {
			fprintf(stderr, "rf-storefill: store_recover %s: %s\n", a->data_dir,
				strerror(-rc));
			goto out_close_store;
		}
		print_recovery("recover", &report);
	}

	fill_pump(f);
	while (!f->done) {
		rc = loop_run(f->loop);
		if (rc < 0) {
			fill_fail(f, EXIT_FAILED, "loop_run: %s", strerror(-rc));
			break;
		}
	}
	code = f->exit_code;
	if (code == EXIT_OK)
		printf("fill: ok tasks=%u finished=%u already_complete=%u pieces_written=%" PRIu64
		       " pieces_resumed=%" PRIu64 " bytes_written=%" PRIu64
		       " mode=%s time_ms=%" PRIu64 "\n",
		       f->task_end - (a->only >= 0 ? (unsigned)a->only : 0), f->tasks_finished,
		       f->tasks_already, f->pieces_written, f->pieces_resumed, f->bytes_written,
		       a->mode == STORE_SOCKET_SPLICE ? "splice" : "recv",
		       clock_monotonic_ms() - t0);
	else if (code == EXIT_NO_SPACE)
		fprintf(stderr, "%s\n", f->error); /* the store's text, verbatim */
	else
		fprintf(stderr, "rf-storefill fill: %s\n", f->error);
	if (f->inflight > 0)
		return code; /* the loop failed with writers running: leave it all be */
out_close_store:
	store_close(f->store);
out_destroy_loop:
	loop_destroy(f->loop);
out_free:
	for (unsigned k = 0; k < a->inflight; k++)
		free(f->slots[k].buf);
	free(f);
	return code;
}

/* --- check. */

enum task_state_seen {
	SEEN_ABSENT = 'a',
	SEEN_INCOMPLETE = 'i',
	SEEN_COMPLETE = 'c',
	SEEN_FAILED = 'f',
};

struct check {
	const struct args *args;
	struct store *store;
	uint8_t *expected, *actual; /* piece_length each */
	char error[1024];
	/* Per pass. */
	unsigned complete, incomplete, absent;
	uint64_t recorded, checked;
	char seen[TASKS_MAX];
};

static int check_fail(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int check_fail(struct check *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
	return -1;
}

/* Compares a piece's file bytes (c->actual) with the expected ones. */
static int check_bytes(struct check *c, const char *pass, unsigned index, const char *hex,
		       uint32_t number, uint64_t offset, uint32_t size)
{
	if (memcmp(c->actual, c->expected, size) == 0)
		return 0;
	for (uint32_t k = 0; k < size; k++) {
		if (c->actual[k] == c->expected[k])
			continue;
		return check_fail(c,
				  "%s: task %u (%s) piece %u is recorded, but byte %" PRIu64
				  " of the content file is 0x%02x, expected 0x%02x (crc32c of the "
				  "piece on disk %08x, expected %08x)",
				  pass, index, hex, number, offset + k, c->actual[k],
				  c->expected[k], hash_crc32c(c->actual, size),
				  hash_crc32c(c->expected, size));
	}
	return 0;
}

/* Checks every recorded piece of `task` (or, complete, all of it) byte for byte
 * against the expected content, and its record against the content. */
static int check_task_content(struct check *c, const char *pass, unsigned index, const char *hex,
			      struct store_task *task)
{
	const struct args *a = c->args;
	const struct meta_task *info = store_task_info(task);
	uint64_t size = task_size(a, index), bytes = 0;
	uint32_t count = piece_count(size, a->piece_length), recorded = 0;
	uint8_t digest[HASH_SHA256_SIZE];
	bool complete = store_task_is_complete(task);
	struct hash_sha256 *h;

	h = hash_sha256_new();
	if (!h)
		return check_fail(c, "out of memory");
	for (uint32_t n = 0; n < count && !c->error[0]; n++) {
		uint64_t offset = piece_offset(a->piece_length, n), at = 0;
		uint32_t psize = piece_size(size, a->piece_length, n), length = 0;
		int fd = -1, rc;
		ssize_t got;

		content_fill(a->seed, index, offset, c->expected, psize);
		hash_sha256_update(h, c->expected, psize);
		if (!store_task_has_piece(task, n)) {
			if (complete)
				check_fail(c,
					   "%s: task %u (%s) is complete, yet piece %u is not "
					   "recorded",
					   pass, index, hex, n);
			continue;
		}
		recorded++;
		bytes += psize;
		rc = store_piece_locate(task, n, &fd, &at, &length);
		if (rc < 0 || at != offset || length != psize) {
			check_fail(c,
				   "%s: task %u (%s) piece %u: store_piece_locate: %s (at %" PRIu64
				   ", %u bytes)",
				   pass, index, hex, n, rc < 0 ? strerror(-rc) : "wrong place", at,
				   length);
			continue;
		}
		got = pread(fd, c->actual, psize, (off_t)offset);
		if (got != (ssize_t)psize)
			check_fail(c, "%s: task %u (%s) piece %u: pread: %s", pass, index, hex, n,
				   got < 0 ? strerror(errno) : "short read");
		else
			check_bytes(c, pass, index, hex, n, offset, psize);
	}
	hash_sha256_final(h, digest);
	hash_sha256_free(h);
	if (c->error[0])
		return -1;
	if (recorded != info->pieces_done || bytes != info->bytes_done)
		return check_fail(c,
				  "%s: task %u (%s): %u pieces (%" PRIu64 " bytes) recorded, "
				  "the task record says %u (%" PRIu64 ")",
				  pass, index, hex, recorded, bytes, info->pieces_done,
				  info->bytes_done);
	if (!info->has_digest || memcmp(info->digest, digest, sizeof(digest)) != 0)
		return check_fail(c, "%s: task %u (%s): the recorded digest is not the content's",
				  pass, index, hex);
	c->seen[index] = complete ? SEEN_COMPLETE : SEEN_INCOMPLETE;
	if (complete)
		c->complete++;
	else
		c->incomplete++;
	c->recorded += recorded;
	c->checked += recorded;
	printf("%s: task %u %.16s: %s, %u/%u pieces recorded, all checked byte for byte\n", pass,
	       index, hex, complete ? "complete" : "incomplete", recorded, count);
	return 0;
}

static int check_task(struct check *c, const char *pass, unsigned index)
{
	const struct args *a = c->args;
	uint64_t size = task_size(a, index);
	uint32_t count = piece_count(size, a->piece_length);
	uint8_t id[META_ID_SIZE];
	char hex[HASH_SHA256_HEX_SIZE], path[PATH_MAX];
	const struct meta_task *info;
	struct store_task *task;
	struct stat st;
	int rc;

	task_id(a->seed, index, id);
	hash_hex(id, hex);
	rc = store_task_find(c->store, id, &task);
	if (rc == -ENOENT) {
		c->seen[index] = SEEN_ABSENT;
		c->absent++;
		printf("%s: task %u %.16s: absent\n", pass, index, hex);
		return 0;
	}
	if (rc < 0)
		return check_fail(c, "%s: task %u (%s): store_task_find: %s", pass, index, hex,
				  strerror(-rc));
	info = store_task_info(task);
	store_content_path(c->store, id, path, sizeof(path));
	if (info->content_length != size || info->piece_length != a->piece_length ||
	    info->piece_count != count)
		check_fail(c,
			   "%s: task %u (%s): recorded lengths content=%" PRIu64 " piece=%" PRIu64
			   " count=%u, expected %" PRIu64 "/%" PRIu64 "/%u",
			   pass, index, hex, info->content_length, info->piece_length,
			   info->piece_count, size, a->piece_length, count);
	else if (info->state == META_TASK_FAILED && a->expect[index] != 'f')
		check_fail(c, "%s: task %u (%s) is failed: %s", pass, index, hex,
			   store_task_error(task));
	else if (stat(path, &st) < 0)
		check_fail(c, "%s: task %u (%s): %s: %s", pass, index, hex, path, strerror(errno));
	else if ((uint64_t)st.st_size != size)
		check_fail(c, "%s: task %u (%s): %s is %lld bytes, expected %" PRIu64, pass, index,
			   hex, path, (long long)st.st_size, size);
	else if (check_task_content(c, pass, index, hex, task) == 0 &&
		 info->state == META_TASK_FAILED) {
		/* Expected (--expect f): its pieces checked; recovery does not
		 * count it among the incomplete. */
		c->seen[index] = SEEN_FAILED;
		c->incomplete--;
	}
	store_task_release(task);
	return c->error[0] ? -1 : 0;
}

static int check_pass(struct check *c, const char *pass)
{
	c->complete = c->incomplete = c->absent = 0;
	c->recorded = c->checked = 0;
	for (unsigned i = 0; i < c->args->tasks; i++)
		if (check_task(c, pass, i) < 0)
			return -1;
	return 0;
}

/* Every file under D/content is the content file of a task found present. */
static int check_no_strays(struct check *c)
{
	const struct args *a = c->args;
	char content[PATH_MAX];
	struct dirent *d;
	DIR *top;
	int rc = 0;

	snprintf(content, sizeof(content), "%s/content", a->data_dir);
	top = opendir(content);
	if (!top)
		return check_fail(c, "opendir %s: %s", content, strerror(errno));
	while (rc == 0 && (d = readdir(top))) {
		char sub[PATH_MAX];
		struct dirent *f;
		DIR *dir;

		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", content, d->d_name);
		dir = opendir(sub);
		if (!dir) {
			rc = check_fail(c, "%s is not a directory of content files (%s)", sub,
					strerror(errno));
			break;
		}
		while (rc == 0 && (f = readdir(dir))) {
			bool known = false;

			if (strcmp(f->d_name, ".") == 0 || strcmp(f->d_name, "..") == 0)
				continue;
			for (unsigned i = 0; i < a->tasks && !known; i++) {
				uint8_t id[META_ID_SIZE];
				char hex[HASH_SHA256_HEX_SIZE];

				task_id(a->seed, i, id);
				hash_hex(id, hex);
				known = strcmp(f->d_name, hex) == 0 &&
					strncmp(d->d_name, hex, 2) == 0 && strlen(d->d_name) == 2 &&
					c->seen[i] != SEEN_ABSENT;
			}
			if (!known)
				rc = check_fail(
					c,
					"%s/%s: a file under content/ that is not the "
					"content file of a task in the store (recovery must "
					"have removed it)",
					sub, f->d_name);
		}
		closedir(dir);
	}
	closedir(top);
	return rc;
}

/* The checks of cmd_check on an open store: 0, or -1 with c->error set. */
static int check_run(struct check *c)
{
	const struct args *a = c->args;
	struct store_recovery report;
	uint64_t t0 = clock_monotonic_ms();
	uint64_t pre_recorded;
	unsigned pre_complete;
	int rc;

	/* Before recovery: what the crash left must already be consistent. */
	if (check_pass(c, "before-recovery") < 0)
		return -1;
	pre_recorded = c->recorded;
	pre_complete = c->complete;

	rc = store_recover(c->store, true, &report);
	if (rc < 0)
		return check_fail(c, "store_recover %s: %s", a->data_dir, strerror(-rc));
	print_recovery("recover", &report);
	if (!a->allow_repair && (report.pieces_dropped || report.tasks_removed))
		return check_fail(c,
				  "recovery had to repair the store: %u recorded piece(s) did not "
				  "match their bytes, %u task record(s) had no content file",
				  report.pieces_dropped, report.tasks_removed);

	if (check_pass(c, "after-recovery") < 0)
		return -1;
	if (report.tasks_complete != c->complete || report.tasks_incomplete != c->incomplete)
		return check_fail(c,
				  "recovery counted %u complete and %u incomplete tasks, the known "
				  "ids give %u and %u (a task record this tool does not know?)",
				  report.tasks_complete, report.tasks_incomplete, c->complete,
				  c->incomplete);
	if (!a->allow_repair && (c->recorded != pre_recorded || c->complete != pre_complete))
		return check_fail(c,
				  "recovery changed the store: %" PRIu64 " pieces and %u complete "
				  "tasks before, %" PRIu64 " and %u after",
				  pre_recorded, pre_complete, c->recorded, c->complete);
	if (check_no_strays(c) < 0)
		return -1;
	for (unsigned i = 0; i < a->tasks; i++) {
		if (a->verify_all && c->seen[i] != SEEN_COMPLETE)
			return check_fail(c, "--verify-all: task %u is %s", i,
					  c->seen[i] == SEEN_ABSENT ? "absent" : "incomplete");
		if (a->expect[i] && a->expect[i] != '-' && a->expect[i] != c->seen[i])
			return check_fail(c,
					  "--expect: task %u is %c (c complete, i incomplete, "
					  "a absent, f failed), expected %c",
					  i, c->seen[i], a->expect[i]);
	}
	printf("check: ok tasks=%u complete=%u incomplete=%u absent=%u pieces_recorded=%" PRIu64
	       " pieces_checked=%" PRIu64 " orphans_removed=%u time_ms=%" PRIu64 "\n",
	       a->tasks, c->complete, c->incomplete, c->absent, c->recorded, c->checked,
	       report.orphans_removed, clock_monotonic_ms() - t0);
	return 0;
}

static int cmd_check(const struct args *a)
{
	struct check *c = calloc(1, sizeof(*c));
	struct loop *loop;
	int rc, code = EXIT_FAILED;

	if (!c) {
		fprintf(stderr, "rf-storefill: out of memory\n");
		return EXIT_FAILED;
	}
	c->args = a;
	c->expected = malloc((size_t)a->piece_length);
	c->actual = malloc((size_t)a->piece_length);
	if (!c->expected || !c->actual) {
		fprintf(stderr, "rf-storefill: out of memory\n");
		goto out_free;
	}
	rc = loop_create(&loop, NULL);
	if (rc < 0) {
		fprintf(stderr, "rf-storefill: loop_create: %s\n", strerror(-rc));
		goto out_free;
	}
	if (open_store(a, loop, &c->store) < 0)
		goto out_destroy_loop;
	if (check_run(c) == 0) {
		code = EXIT_OK;
	} else {
		fflush(stdout);
		fprintf(stderr, "rf-storefill check: FAIL: %s\n", c->error);
	}
	store_close(c->store);
out_destroy_loop:
	loop_destroy(loop);
out_free:
	free(c->expected);
	free(c->actual);
	free(c);
	return code;
}

/* --- gc. */

static int cmd_gc(const struct args *a)
{
	struct store_recovery report;
	struct store *store;
	struct loop *loop;
	int rc, code = EXIT_FAILED;

	rc = loop_create(&loop, NULL);
	if (rc < 0) {
		fprintf(stderr, "rf-storefill: loop_create: %s\n", strerror(-rc));
		return EXIT_FAILED;
	}
	if (open_store(a, loop, &store) < 0)
		goto out_destroy_loop;
	rc = store_recover(store, false, &report);
	if (rc < 0) {
		fprintf(stderr, "rf-storefill: store_recover %s: %s\n", a->data_dir, strerror(-rc));
		goto out_close_store;
	}
	rc = store_gc(store);
	if (rc < 0) {
		fprintf(stderr, "rf-storefill gc: store_gc %s: %s\n", a->data_dir, strerror(-rc));
		goto out_close_store;
	}
	printf("gc: evicted=%d\n", rc);
	code = EXIT_OK;
out_close_store:
	store_close(store);
out_destroy_loop:
	loop_destroy(loop);
	return code;
}

/* --- arguments. */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: rf-storefill fill  --data-dir D --tasks N --size BYTES[,BYTES...] "
		"--piece-length L\n"
		"                          [--mode splice|recv] [--seed S] [--inflight K] "
		"[--only I]\n"
		"                          [--sync-batch B] [--sync-delay-ms MS] [--sync task|pieces]\n"
		"                          [--no-recover]\n"
		"                          [--ballast PATH [--ballast-leave BYTES]]\n"
		"       rf-storefill check --data-dir D --tasks N --size BYTES[,BYTES...] "
		"--piece-length L\n"
		"                          [--seed S] [--verify-all] [--expect c,i,a,-...] "
		"[--allow-repair]\n"
		"       rf-storefill gc    --data-dir D [--quota BYTES] [--high PCT] [--low PCT] "
		"[--ttl-ms MS]\n"
		"BYTES take a K, M or G suffix (powers of 1024).\n");
}

static int parse_u64(const char *text, uint64_t *out, bool suffix)
{
	char *end = NULL;
	unsigned long long v;

	errno = 0;
	if (!text[0] || text[0] == '-')
		return -EINVAL;
	v = strtoull(text, &end, 10);
	if (errno || end == text)
		return -EINVAL;
	if (suffix && *end) {
		unsigned shift = *end == 'K' || *end == 'k' ? 10 :
				 *end == 'M' || *end == 'm' ? 20 :
				 *end == 'G' || *end == 'g' ? 30 :
							      0;

		if (!shift || end[1] || v > (UINT64_MAX >> shift))
			return -EINVAL;
		v <<= shift;
		end++;
	}
	if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_sizes(struct args *a, const char *text)
{
	char *copy = strdup(text), *save = NULL, *tok;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	a->size_count = 0;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (a->size_count == TASKS_MAX || parse_u64(tok, &a->sizes[a->size_count], true)) {
			rc = -EINVAL;
			break;
		}
		a->size_count++;
	}
	free(copy);
	return rc == 0 && a->size_count == 0 ? -EINVAL : rc;
}

static int parse_expect(struct args *a, const char *text)
{
	unsigned n = 0;

	for (const char *p = text; *p; p++) {
		if (*p == ',')
			continue;
		if (!strchr("ciaf-", *p) || n == TASKS_MAX)
			return -EINVAL;
		a->expect[n++] = *p;
	}
	return n ? 0 : -EINVAL;
}

static int parse_args(int argc, char **argv, struct args *a, const char *cmd)
{
	enum {
		OPT_DATA_DIR = 256,
		OPT_TASKS,
		OPT_SIZE,
		OPT_PIECE_LENGTH,
		OPT_MODE,
		OPT_SYNC,
		OPT_SEED,
		OPT_INFLIGHT,
		OPT_ONLY,
		OPT_SYNC_BATCH,
		OPT_SYNC_DELAY,
		OPT_VERIFY_ALL,
		OPT_EXPECT,
		OPT_ALLOW_REPAIR,
		OPT_QUOTA,
		OPT_HIGH,
		OPT_LOW,
		OPT_TTL,
		OPT_NO_RECOVER,
		OPT_BALLAST,
		OPT_BALLAST_LEAVE,
	};
	static const struct option options[] = {
		{ "data-dir", required_argument, NULL, OPT_DATA_DIR },
		{ "tasks", required_argument, NULL, OPT_TASKS },
		{ "size", required_argument, NULL, OPT_SIZE },
		{ "piece-length", required_argument, NULL, OPT_PIECE_LENGTH },
		{ "mode", required_argument, NULL, OPT_MODE },
		{ "sync", required_argument, NULL, OPT_SYNC },
		{ "seed", required_argument, NULL, OPT_SEED },
		{ "inflight", required_argument, NULL, OPT_INFLIGHT },
		{ "only", required_argument, NULL, OPT_ONLY },
		{ "sync-batch", required_argument, NULL, OPT_SYNC_BATCH },
		{ "sync-delay-ms", required_argument, NULL, OPT_SYNC_DELAY },
		{ "verify-all", no_argument, NULL, OPT_VERIFY_ALL },
		{ "expect", required_argument, NULL, OPT_EXPECT },
		{ "allow-repair", no_argument, NULL, OPT_ALLOW_REPAIR },
		{ "quota", required_argument, NULL, OPT_QUOTA },
		{ "high", required_argument, NULL, OPT_HIGH },
		{ "low", required_argument, NULL, OPT_LOW },
		{ "ttl-ms", required_argument, NULL, OPT_TTL },
		{ "no-recover", no_argument, NULL, OPT_NO_RECOVER },
		{ "ballast", required_argument, NULL, OPT_BALLAST },
		{ "ballast-leave", required_argument, NULL, OPT_BALLAST_LEAVE },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool is_gc = strcmp(cmd, "gc") == 0;
	int opt;

	a->only = -1;
	a->inflight = 8;
	a->mode = STORE_SOCKET_SPLICE;
	while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		uint64_t v = 0;
		int bad = 0;

		switch (opt) {
		case OPT_DATA_DIR:
			a->data_dir = optarg;
			break;
		case OPT_TASKS:
			bad = parse_u64(optarg, &v, false) || v == 0 || v > TASKS_MAX;
			a->tasks = (unsigned)v;
			break;
		case OPT_SIZE:
			bad = parse_sizes(a, optarg) != 0;
			break;
		case OPT_PIECE_LENGTH:
			bad = parse_u64(optarg, &v, true) || !piece_length_valid(v) ||
			      v > PIECE_LENGTH_TOOL_MAX;
			a->piece_length = v;
			break;
		case OPT_MODE:
			if (strcmp(optarg, "splice") == 0)
				a->mode = STORE_SOCKET_SPLICE;
			else if (strcmp(optarg, "recv") == 0)
				a->mode = STORE_SOCKET_RECV;
			else
				bad = 1;
			break;
		case OPT_SYNC:
			if (strcmp(optarg, "task") == 0)
				a->sync = STORE_SYNC_TASK;
			else if (strcmp(optarg, "pieces") == 0)
				a->sync = STORE_SYNC_PIECES;
			else
				bad = 1;
			break;
		case OPT_SEED:
			bad = parse_u64(optarg, &a->seed, false);
			break;
		case OPT_INFLIGHT:
			bad = parse_u64(optarg, &v, false) || v == 0 || v > INFLIGHT_MAX;
			a->inflight = (unsigned)v;
			break;
		case OPT_ONLY:
			bad = parse_u64(optarg, &v, false) || v >= TASKS_MAX;
			a->only = (int)v;
			break;
		case OPT_SYNC_BATCH:
			bad = parse_u64(optarg, &v, false) || v > 100000;
			a->sync_batch = (unsigned)v;
			break;
		case OPT_SYNC_DELAY:
			bad = parse_u64(optarg, &v, false) || v > 600000;
			a->sync_delay_ms = (unsigned)v;
			break;
		case OPT_VERIFY_ALL:
			a->verify_all = true;
			break;
		case OPT_EXPECT:
			bad = parse_expect(a, optarg) != 0;
			break;
		case OPT_ALLOW_REPAIR:
			a->allow_repair = true;
			break;
		case OPT_NO_RECOVER:
			a->no_recover = true;
			break;
		case OPT_BALLAST:
			a->ballast = optarg;
			break;
		case OPT_BALLAST_LEAVE:
			bad = parse_u64(optarg, &a->ballast_leave, true);
			break;
		case OPT_QUOTA:
			bad = parse_u64(optarg, &a->quota, true);
			break;
		case OPT_HIGH:
		case OPT_LOW:
			bad = parse_u64(optarg, &v, false) || v == 0 || v > 100;
			*(opt == OPT_HIGH ? &a->high : &a->low) = (unsigned)v;
			break;
		case OPT_TTL:
			if (strcmp(optarg, "-1") == 0)
				a->ttl_ms = -1;
			else
				bad = parse_u64(optarg, &v, false) || v > INT64_MAX;
			if (!bad && a->ttl_ms != -1)
				a->ttl_ms = (int64_t)v;
			break;
		case 'h':
			usage(stdout);
			exit(EXIT_OK);
		default:
			usage(stderr);
			return -EINVAL;
		}
		if (bad) {
			fprintf(stderr, "rf-storefill %s: bad value for --%s: '%s'\n", cmd,
				options[opt - OPT_DATA_DIR].name, optarg);
			return -EINVAL;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "rf-storefill %s: unexpected argument '%s'\n", cmd, argv[optind]);
		return -EINVAL;
	}
	if (!a->data_dir) {
		fprintf(stderr, "rf-storefill %s: --data-dir is required\n", cmd);
		return -EINVAL;
	}
	if (is_gc)
		return 0;
	if (!a->tasks || !a->size_count || !a->piece_length) {
		fprintf(stderr,
			"rf-storefill %s: --tasks, --size and --piece-length are required\n", cmd);
		return -EINVAL;
	}
	if (a->only >= 0 && (unsigned)a->only >= a->tasks) {
		fprintf(stderr, "rf-storefill %s: --only %d is not below --tasks %u\n", cmd,
			a->only, a->tasks);
		return -EINVAL;
	}
	for (unsigned i = 0; i < a->tasks; i++) {
		if (piece_count(task_size(a, i), a->piece_length) > PIECE_COUNT_MAX) {
			fprintf(stderr, "rf-storefill %s: task %u has too many pieces\n", cmd, i);
			return -EINVAL;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	static struct args args;
	const char *cmd;

	if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? EXIT_USAGE : EXIT_OK;
	}
	cmd = argv[1];
	if (strcmp(cmd, "fill") != 0 && strcmp(cmd, "check") != 0 && strcmp(cmd, "gc") != 0) {
		fprintf(stderr, "rf-storefill: unknown command '%s'\n", cmd);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (parse_args(argc - 1, argv + 1, &args, cmd) < 0)
		return EXIT_USAGE;
	signal(SIGPIPE, SIG_IGN);
	/* Every line of the summary reaches the pipe before a kill -9 would. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (strcmp(cmd, "fill") == 0)
		return cmd_fill(&args);
	if (strcmp(cmd, "check") == 0)
		return cmd_check(&args);
	return cmd_gc(&args);
}
