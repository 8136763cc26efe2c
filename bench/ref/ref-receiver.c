/* Reference receiver for bench/ref: one TCP connection into a new file, blocking syscalls. */
/*
 * ringfly-ref-receiver --listen HOST:PORT --out FILE --bytes N --mode splice|recv
 *                      [--pipe-size 1048576] [--chunk 1048576] [--crc] [--sync]
 *
 * The kernel's shortest path from a socket to a file, for the storage benchmark to
 * compare ringfly against. Removes FILE if present (a regular file only: anything else is
 * refused) and creates it (O_CREAT|O_TRUNC), listens, prints "ready HOST:PORT" (the port
 * actually bound, so port 0 works) on stdout and flushes, accepts one connection and
 * receives exactly N bytes into FILE:
 *
 *   splice: socket -> pipe (F_SETPIPE_SZ to --pipe-size) -> file at increasing offsets;
 *   recv:   recv() into one --chunk buffer until it is full (or the data ends), then
 *           pwrite() it at the next offset.
 *
 * --crc checks what a ringfly child checks: the crc32c of every byte, with core/hash.c's
 * code. splice: each batch, once in the file, is read back (pread into a --chunk buffer,
 * at once, while it is in the CPU's cache) and added to the crc, as the store does; recv:
 * the buffer is added before it is written. The crc is printed (crc32c=, "-" without).
 *
 * --sync adds fdatasync() at the end, inside the timed part. The clock and getrusage
 * (RUSAGE_SELF) start when accept() returns and stop after the last write (or the
 * fdatasync), so setup is not counted. Prints one line of key=value on stdout:
 *
 *   mode= bytes= seconds= gb_per_s= user_s= sys_s= cpu_s_per_gib= pipe_size= chunk= sync=
 *   crc32c=
 *
 * GB/s is 10^9 bytes per second; CPU-s/GiB is (user + sys) / (bytes / 2^30).
 * Exit codes: 0 success, 1 runtime failure (including EOF before N bytes), 2 bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bench/common/bench-clock.h"
#include "bench/common/bench-net.h"
#include "core/hash.h"

enum mode { MODE_SPLICE, MODE_RECV };

/* --crc: the crc32c of what was received so far. */
static bool check_crc;
static uint32_t crc;

static void usage(void)
{
	fprintf(stderr,
		"usage: ringfly-ref-receiver --listen HOST:PORT --out FILE --bytes N"
		" --mode splice|recv\n"
		"                            [--pipe-size BYTES] [--chunk BYTES] [--crc] [--sync]\n");
	exit(2);
}

static void die(const char *what)
{
	fprintf(stderr, "ref-receiver: %s: %s\n", what, strerror(errno));
	exit(1);
}

static long long parse_size(const char *s)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v <= 0)
		usage();
	return v;
}

/* Bind and listen on "HOST:PORT" or "[V6]:PORT", then announce "ready HOST:PORT". */
static int listen_on(const char *spec)
{
	struct addrinfo *ai;
	char err[300], ready[128];
	int rc = bench_resolve(spec, true, &ai, err, sizeof(err)), fd;

	if (rc == -EINVAL)
		usage();
	if (rc < 0) {
		fprintf(stderr, "ref-receiver: %s\n", err);
		exit(1);
	}
	fd = bench_listen(ai, 1, ready, sizeof(ready));
	freeaddrinfo(ai);
	if (fd < 0) {
		errno = -fd;
		die("listen");
	}
	printf("%s\n", ready);
	fflush(stdout);
	return fd;
}

static void early_eof(long long got, long long want)
{
	fprintf(stderr, "ref-receiver: peer closed after %lld of %lld bytes\n", got, want);
	exit(1);
}

/* --crc, splice: reads [start, end) of the file back into buf (chunk bytes at a time)
 * and adds it to the crc. */
static void read_back(int out, loff_t start, loff_t end, char *buf, size_t chunk)
{
	while (start < end) {
		size_t len = end - start < (loff_t)chunk ? (size_t)(end - start) : chunk;
		ssize_t n = pread(out, buf, len, start);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("pread (read-back)");
		}
		if (n == 0) {
			fprintf(stderr, "ref-receiver: the file ends at %lld, before %lld\n",
				(long long)start, (long long)end);
			exit(1);
		}
		crc = hash_crc32c_extend(crc, buf, (size_t)n);
		start += n;
	}
}

/* socket -> pipe -> file; each batch moved in is drained to the file (and with --crc read
 * back) before the next. */
static void receive_splice(int sock, int out, long long want, int pipe_fds[2], size_t pipe_sz,
			   char *buf, size_t chunk)
{
	loff_t off = 0;

	while (off < want) {
		size_t len = want - off < (long long)pipe_sz ? (size_t)(want - off) : pipe_sz;
		ssize_t in = splice(sock, NULL, pipe_fds[1], NULL, len, SPLICE_F_MOVE | SPLICE_F_MORE);
		loff_t start = off;

		if (in < 0) {
			if (errno == EINTR)
				continue;
			die("splice socket -> pipe");
		}
		if (in == 0)
			early_eof(off, want);
		while (in > 0) {
			/* splice advances off by what it wrote. */
			ssize_t n = splice(pipe_fds[0], NULL, out, &off, in, SPLICE_F_MOVE);

			if (n < 0) {
				if (errno == EINTR)
					continue;
				die("splice pipe -> file");
			}
			in -= n;
		}
		if (check_crc)
			read_back(out, start, off, buf, chunk);
	}
}

/* Fill one chunk with recv(), pwrite() it whole, repeat. */
static void receive_recv(int sock, int out, long long want, char *buf, size_t chunk)
{
	long long off = 0;

	while (off < want) {
		size_t len = want - off < (long long)chunk ? (size_t)(want - off) : chunk;
		size_t fill = 0, done = 0;

		while (fill < len) {
			ssize_t n = recv(sock, buf + fill, len - fill, 0);

			if (n < 0) {
				if (errno == EINTR)
					continue;
				die("recv");
			}
			if (n == 0)
				early_eof(off + fill, want);
			fill += n;
		}
		if (check_crc)
			crc = hash_crc32c_extend(crc, buf, fill);
		while (done < fill) {
			ssize_t n = pwrite(out, buf + done, fill - done, off + done);

			if (n < 0) {
				if (errno == EINTR)
					continue;
				die("pwrite");
			}
			done += n;
		}
		off += fill;
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "out", required_argument, NULL, 'o' },
		{ "bytes", required_argument, NULL, 'b' },
		{ "mode", required_argument, NULL, 'm' },
		{ "pipe-size", required_argument, NULL, 'p' },
		{ "chunk", required_argument, NULL, 'c' },
		{ "sync", no_argument, NULL, 's' },
		{ "crc", no_argument, NULL, 'k' },
		{ NULL, 0, NULL, 0 },
	};
	const char *listen_spec = NULL, *path = NULL, *mode_name = NULL;
	long long want = 0;
	size_t pipe_sz = 1 << 20, chunk = 1 << 20;
	int sync_end = 0, mode = -1, c;
	int lfd, sock, out, pipe_fds[2] = { -1, -1 };
	char *buf = NULL;
	struct rusage ru0, ru1;
	double t0, secs, user_s, sys_s;
	char crc_text[9] = "-";
	struct stat st;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			listen_spec = optarg;
			break;
		case 'o':
			path = optarg;
			break;
		case 'b':
			want = parse_size(optarg);
			break;
		case 'm':
			mode_name = optarg;
			if (!strcmp(optarg, "splice"))
				mode = MODE_SPLICE;
			else if (!strcmp(optarg, "recv"))
				mode = MODE_RECV;
			else
				usage();
			break;
		case 'p':
			pipe_sz = parse_size(optarg);
			break;
		case 'c':
			chunk = parse_size(optarg);
			break;
		case 's':
			sync_end = 1;
			break;
		case 'k':
			check_crc = true;
			break;
		default:
			usage();
		}
	}
	if (optind != argc || !listen_spec || !path || !want || mode < 0)
		usage();

	/* Replaces a regular file only: run as root with --out /dev/null, an
	 * unlink would remove the device node. */
	if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		fprintf(stderr, "ref-receiver: %s: exists and is not a regular file\n", path);
		exit(1);
	}
	if (unlink(path) < 0 && errno != ENOENT)
		die(path);
	/* Read and write: --crc reads the file back. */
	out = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
		die(path);

	if (mode == MODE_SPLICE) {
		int got;

		if (pipe2(pipe_fds, O_CLOEXEC) < 0)
			die("pipe2");
		got = fcntl(pipe_fds[1], F_SETPIPE_SZ, (int)pipe_sz);
		if (got < 0)
			die("F_SETPIPE_SZ");
		pipe_sz = got;
	}
	if (mode == MODE_RECV || check_crc) {
		if (posix_memalign((void **)&buf, 4096, chunk))
			die("posix_memalign");
		/* Touch it now: first-touch memory is slow on the VM, and not what we time. */
		memset(buf, 0, chunk);
	}

	lfd = listen_on(listen_spec);
	sock = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (sock < 0)
		die("accept");
	close(lfd);

	getrusage(RUSAGE_SELF, &ru0);
	t0 = bench_now_s();
	if (mode == MODE_SPLICE)
		receive_splice(sock, out, want, pipe_fds, pipe_sz, buf, chunk);
	else
		receive_recv(sock, out, want, buf, chunk);
	if (sync_end && fdatasync(out) < 0)
		die("fdatasync");
	secs = bench_now_s() - t0;
	getrusage(RUSAGE_SELF, &ru1);

	if (check_crc)
		snprintf(crc_text, sizeof(crc_text), "%08x", (unsigned)crc);
	user_s = bench_tv_s(ru1.ru_utime) - bench_tv_s(ru0.ru_utime);
	sys_s = bench_tv_s(ru1.ru_stime) - bench_tv_s(ru0.ru_stime);
	printf("mode=%s bytes=%lld seconds=%.6f gb_per_s=%.3f user_s=%.3f sys_s=%.3f"
	       " cpu_s_per_gib=%.3f pipe_size=%zu chunk=%zu sync=%d crc32c=%s\n",
	       mode_name, want, secs, want / secs / 1e9, user_s, sys_s,
	       (user_s + sys_s) / ((double)want / (1 << 30)), mode == MODE_SPLICE ? pipe_sz : 0,
	       mode == MODE_RECV || check_crc ? chunk : 0, sync_end, crc_text);
	fflush(stdout);

	if (close(out) < 0)
		die("close");
	close(sock);
	free(buf);
	return 0;
}
