/* Storage benchmark receiver: one TCP connection into a ringfly store task, piece by piece. */
/*
 * ringfly-bench-store-recv --listen HOST:PORT --data-dir DIR --bytes N --mode splice|recv
 *                          [--piece-length L] [--inflight K] [--sync-batch P]
 *                          [--sync-delay-ms MS] [--out FILE]
 *
 * The counterpart of bench/ref/ref-receiver.c (same CLI and output contract) that goes
 * through storage/store.h instead of plain syscalls: the node's real write path.
 *
 * Before listening (untimed, as the reference creates its file before listening) it
 * removes whatever DIR holds, opens a fresh store there (the given socket path,
 * gc_interval_ms -1, sync_batch_pieces / sync_delay_ms from the flags, 0 = the store's
 * defaults: 16 pieces / 20 ms) and opens one task of N bytes with a random id and
 * piece length L (default or 0: the store's choice for N bytes, as the daemon's:
 * 4 MiB for 1 GiB; fallocated by the store). Then it prints
 * "ready HOST:PORT", accepts one connection and receives the pieces in order with
 * store_piece_from_stream: piece n + 1 starts reading the socket as soon as piece n's
 * bytes are off it (its `received` callback), while piece n is still being written,
 * crc32c-checked (read back from the page cache for splice), fdatasync'd and
 * recorded. The run ends when the last piece's done callback reports it recorded.
 * --inflight is accepted for the CLI contract; only one piece can read one stream at a
 * time, so only K = 1 is meaningful.
 *
 * The clock and getrusage (RUSAGE_SELF: every thread, including the io_uring io-wq
 * workers that run the splices into the file and the fdatasyncs) start when accept()
 * returns and stop in the last piece's done callback. Prints one line:
 *
 *   mode= bytes= seconds= gb_per_s= user_s= sys_s= cpu_s_per_gib= piece_length= pieces=
 *   inflight= sync_batch= sync_delay_ms= received_s=
 *
 * received_s: accept to the last byte off the socket (what the sender sees; the rest
 * of `seconds` is the last piece's read-back, crc, fdatasync and record).
 *
 * (sync_batch and sync_delay_ms as in effect: 0 on the command line is the store's
 * default, printed as 16 and 20.)
 *
 * --out FILE hard-links the task's content file to FILE before the store data is
 * removed, so that the harness can check the size and content as it does for the
 * reference. At exit the task data (content file and metadata) is deleted: DIR is
 * emptied. Exit codes: 0 success, 1 runtime failure, 2 bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bench/common/bench-clock.h"
#include "bench/common/bench-net.h"

#include "core/loop.h"
#include "storage/store.h"

static void usage(void)
{
	fprintf(stderr,
		"usage: ringfly-bench-store-recv --listen HOST:PORT --data-dir DIR --bytes N"
		" --mode splice|recv\n"
		"                                [--piece-length L] [--inflight 1]"
		" [--sync-batch P] [--sync-delay-ms MS]\n"
		"                                [--out FILE]\n");
	exit(2);
}

static void die(const char *what)
{
	fprintf(stderr, "store-recv: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void die_rc(const char *what, int rc, const char *detail)
{
	fprintf(stderr, "store-recv: %s: %s%s%s\n", what, strerror(-rc), detail && *detail ? ": " : "",
		detail ? detail : "");
	exit(1);
}

static long long parse_num(const char *s, long long min)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min)
		usage();
	return v;
}

/* Bind and listen on "HOST:PORT" or "[V6]:PORT"; returns the fd and the bound address. */
static int listen_on(const char *spec, char *ready, size_t ready_size)
{
	struct addrinfo *ai;
	char err[300];
	int rc = bench_resolve(spec, true, &ai, err, sizeof(err)), fd;

	if (rc == -EINVAL)
		usage();
	if (rc < 0) {
		fprintf(stderr, "store-recv: %s\n", err);
		exit(1);
	}
	fd = bench_listen(ai, 1, ready, ready_size);
	freeaddrinfo(ai);
	if (fd < 0) {
		errno = -fd;
		die("listen");
	}
	return fd;
}

/* --- emptying DIR (before: a fresh store; after: the task data is deleted). */

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	if (ftw->level == 0)
		return 0; /* DIR itself stays */
	if (remove(path) < 0 && errno != ENOENT) {
		fprintf(stderr, "store-recv: %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

static void empty_dir(const char *dir)
{
	struct stat st;

	if (stat(dir, &st) < 0) {
		if (errno == ENOENT)
			return;
		die(dir);
	}
	if (nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
		exit(1);
}

/* --- the transfer. */

struct bench {
	struct loop *loop;
	struct store_task *task;
	int sock;
	uint32_t next, count, recorded;
	int failed;
	double t_received;	/* the last byte is off the socket */
	double t_end;
	struct rusage ru_end;
};

static void piece_done(struct store_task *task, uint32_t number, int res, void *arg);
static void piece_received(struct store_task *task, uint32_t number, int res, void *arg);

static void piece_start(struct bench *b)
{
	int rc = store_piece_from_stream(b->task, b->next, b->sock, false, 0, piece_received, NULL,
					 piece_done, b, NULL);

	if (rc < 0) {
		fprintf(stderr, "store-recv: piece %u: cannot start: %s\n", b->next, strerror(-rc));
		b->failed = 1;
		loop_stop(b->loop);
		return;
	}
	b->next++;
}

/* Piece n's bytes are off the socket: piece n + 1 may read it now. */
static void piece_received(struct store_task *task, uint32_t number, int res, void *arg)
{
	struct bench *b = arg;

	(void)task;
	(void)number;
	(void)res;
	if (b->next < b->count)
		piece_start(b);
	else
		b->t_received = bench_now_s();
}

static void piece_done(struct store_task *task, uint32_t number, int res, void *arg)
{
	struct bench *b = arg;

	if (res < 0) {
		fprintf(stderr, "store-recv: piece %u: %s%s%s\n", number, strerror(-res),
			*store_task_error(task) ? ": " : "", store_task_error(task));
		b->failed = 1;
		loop_stop(b->loop);
		return;
	}
	if (++b->recorded < b->count)
		return;
	/* The last piece is durable and recorded: stop the clock here. */
	b->t_end = bench_now_s();
	getrusage(RUSAGE_SELF, &b->ru_end);
	loop_stop(b->loop);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "data-dir", required_argument, NULL, 'd' },
		{ "bytes", required_argument, NULL, 'b' },
		{ "mode", required_argument, NULL, 'm' },
		{ "piece-length", required_argument, NULL, 'p' },
		{ "inflight", required_argument, NULL, 'k' },
		{ "sync-batch", required_argument, NULL, 'B' },
		{ "sync-delay-ms", required_argument, NULL, 'D' },
		{ "out", required_argument, NULL, 'o' },
		{ NULL, 0, NULL, 0 },
	};
	const char *listen_spec = NULL, *dir = NULL, *mode_name = NULL, *out_path = NULL;
	long long want = 0, piece_length = 0, inflight = 1;
	long long sync_batch = 0, sync_delay_ms = 0;
	int mode = -1, c, lfd, rc;
	struct store_options so = { 0 };
	struct store_task_params tp = { 0 };
	struct store *store = NULL;
	struct bench b = { 0 };
	struct rusage ru0;
	char err[512], ready[300], content[PATH_MAX];
	double t0, secs, user_s, sys_s;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			listen_spec = optarg;
			break;
		case 'd':
			dir = optarg;
			break;
		case 'b':
			want = parse_num(optarg, 1);
			break;
		case 'm':
			mode_name = optarg;
			if (!strcmp(optarg, "splice"))
				mode = STORE_SOCKET_SPLICE;
			else if (!strcmp(optarg, "recv"))
				mode = STORE_SOCKET_RECV;
			else
				usage();
			break;
		case 'p':
			piece_length = parse_num(optarg, 0);
			break;
		case 'k':
			inflight = parse_num(optarg, 1);
			break;
		case 'B':
			sync_batch = parse_num(optarg, 0);
			break;
		case 'D':
			sync_delay_ms = parse_num(optarg, 0);
			break;
		case 'o':
			out_path = optarg;
			break;
		default:
			usage();
		}
	}
	if (optind != argc || !listen_spec || !dir || !want || mode < 0)
		usage();
	if (inflight != 1) {
		fprintf(stderr, "store-recv: --inflight %lld: one stream is read by one piece at a "
			"time (the next starts when its bytes are off the socket)\n", inflight);
		exit(2);
	}

	/* A fresh store: nothing left from an earlier run. */
	empty_dir(dir);
	if (out_path && unlink(out_path) < 0 && errno != ENOENT)
		die(out_path);

	rc = loop_create(&b.loop, NULL);
	if (rc < 0)
		die_rc("loop_create", rc, NULL);
	so.data_dir = dir;
	so.socket_path = (enum store_socket_path)mode;
	so.sync_batch_pieces = (unsigned)sync_batch;
	so.sync_delay_ms = (unsigned)sync_delay_ms;
	so.gc_interval_ms = -1;
	so.gc_ttl_ms = -1;
	err[0] = '\0';
	rc = store_open(&store, b.loop, &so, err, sizeof(err));
	if (rc < 0)
		die_rc("store_open", rc, err);

	if (getrandom(tp.id, sizeof(tp.id), 0) != (ssize_t)sizeof(tp.id))
		die("getrandom");
	tp.content_length = (uint64_t)want;
	tp.piece_length = (uint64_t)piece_length;
	rc = store_task_open(store, &tp, &b.task, err, sizeof(err));
	if (rc < 0)
		die_rc("store_task_open", rc, err);
	b.count = store_task_info(b.task)->piece_count;
	piece_length = (long long)store_task_info(b.task)->piece_length; /* as in effect */
	store_content_path(store, tp.id, content, sizeof(content));

	lfd = listen_on(listen_spec, ready, sizeof(ready));
	printf("%s\n", ready);
	fflush(stdout);
	b.sock = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (b.sock < 0)
		die("accept");
	close(lfd);

	getrusage(RUSAGE_SELF, &ru0);
	t0 = bench_now_s();
	piece_start(&b);
	if (!b.failed) {
		rc = loop_run(b.loop);
		if (rc < 0)
			die_rc("loop_run", rc, NULL);
	}
	if (b.failed)
		exit(1);
	if (!store_task_has_piece(b.task, b.count - 1) ||
	    store_task_info(b.task)->bytes_done != (uint64_t)want) {
		fprintf(stderr, "store-recv: the task holds %llu of %lld bytes after the last piece\n",
			(unsigned long long)store_task_info(b.task)->bytes_done, want);
		exit(1);
	}

	secs = b.t_end - t0;
	user_s = bench_tv_s(b.ru_end.ru_utime) - bench_tv_s(ru0.ru_utime);
	sys_s = bench_tv_s(b.ru_end.ru_stime) - bench_tv_s(ru0.ru_stime);
	printf("mode=%s bytes=%lld seconds=%.6f gb_per_s=%.3f user_s=%.3f sys_s=%.3f"
	       " cpu_s_per_gib=%.3f piece_length=%lld pieces=%u inflight=%lld sync_batch=%lld"
	       " sync_delay_ms=%lld received_s=%.6f\n",
	       mode_name, want, secs, want / secs / 1e9, user_s, sys_s,
	       (user_s + sys_s) / ((double)want / (1 << 30)), piece_length, b.count, inflight,
	       sync_batch ? sync_batch : 16, sync_delay_ms ? sync_delay_ms : 20,
	       b.t_received - t0);
	fflush(stdout);

	/* Untimed: hand the content to the harness, then delete the task data. */
	if (out_path && link(content, out_path) < 0)
		die(out_path);
	store_task_release(b.task);
	store_close(store);
	loop_destroy(b.loop);
	close(b.sock);
	empty_dir(dir);
	return 0;
}
