/* Reference sender for bench/ref: sendfile() a whole file over TCP, blocking, N times. */
/*
 * ringfly-ref-sender --connect HOST:PORT --file F [--repeat N]
 * ringfly-ref-sender --listen HOST:PORT --file F [--repeat N]
 *
 * --connect: N times, connect to HOST:PORT and sendfile() the whole of F on that
 * connection, then close it. --listen: bind and listen, print "ready HOST:PORT" (the
 * port actually bound, so port 0 works) on stdout and flush, then accept one connection
 * per repeat and send F to it. Short counts are looped over; nothing but the file is
 * sent, and the connection is closed after it. On success prints one key=value line
 * (bytes, seconds, GB/s of the whole run) on stderr.
 *
 * Exit codes: 0 success, 1 runtime failure, 2 bad usage.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench/common/bench-clock.h"
#include "bench/common/bench-net.h"

static void usage(void)
{
	fprintf(stderr,
		"usage: ringfly-ref-sender (--connect HOST:PORT | --listen HOST:PORT) --file F"
		" [--repeat N]\n");
	exit(2);
}

/* Split "HOST:PORT" or "[V6]:PORT" and resolve it; exits on failure. */
static struct addrinfo *resolve(const char *spec, int passive)
{
	struct addrinfo *res;
	char err[300];
	int rc = bench_resolve(spec, passive, &res, err, sizeof(err));

	if (rc == -EINVAL)
		usage();
	if (rc < 0) {
		fprintf(stderr, "ref-sender: %s\n", err);
		exit(1);
	}
	return res;
}

static int connect_to(const struct addrinfo *ai)
{
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		perror("ref-sender: connect");
		exit(1);
	}
	return fd;
}

static int listen_on(const struct addrinfo *ai)
{
	char ready[128];
	int fd = bench_listen(ai, 16, ready, sizeof(ready));

	if (fd < 0) {
		fprintf(stderr, "ref-sender: listen: %s\n", strerror(-fd));
		exit(1);
	}
	printf("%s\n", ready);
	fflush(stdout);
	return fd;
}

/* sendfile() the whole file from offset 0; loops on short counts. */
static void send_whole(int sock, int file, off_t size)
{
	off_t off = 0;

	while (off < size) {
		size_t want = size - off > 0x7ffff000 ? 0x7ffff000 : (size_t)(size - off);
		ssize_t n = sendfile(sock, file, &off, want);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("ref-sender: sendfile");
			exit(1);
		}
		if (n == 0) {
			fprintf(stderr, "ref-sender: file shrank at offset %lld\n", (long long)off);
			exit(1);
		}
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "connect", required_argument, NULL, 'c' },
		{ "listen", required_argument, NULL, 'l' },
		{ "file", required_argument, NULL, 'f' },
		{ "repeat", required_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 },
	};
	const char *connect_spec = NULL, *listen_spec = NULL, *path = NULL;
	long repeat = 1;
	struct addrinfo *ai;
	struct stat st;
	int file, lfd = -1, c;
	double t0, secs;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			connect_spec = optarg;
			break;
		case 'l':
			listen_spec = optarg;
			break;
		case 'f':
			path = optarg;
			break;
		case 'r':
			repeat = strtol(optarg, NULL, 10);
			if (repeat < 1)
				usage();
			break;
		default:
			usage();
		}
	}
	if (optind != argc || !path || !connect_spec == !listen_spec)
		usage();

	file = open(path, O_RDONLY | O_CLOEXEC);
	if (file < 0 || fstat(file, &st) < 0) {
		perror(path);
		return 1;
	}
	ai = resolve(connect_spec ? connect_spec : listen_spec, !!listen_spec);
	if (listen_spec)
		lfd = listen_on(ai);

	t0 = bench_now_s();
	for (long i = 0; i < repeat; i++) {
		int sock = lfd >= 0 ? accept4(lfd, NULL, NULL, SOCK_CLOEXEC) : connect_to(ai);

		if (sock < 0) {
			perror("ref-sender: accept");
			return 1;
		}
		send_whole(sock, file, st.st_size);
		close(sock);
	}
	secs = bench_now_s() - t0;
	fprintf(stderr, "sender bytes=%lld seconds=%.6f gb_per_s=%.3f\n",
		(long long)st.st_size * repeat, secs, st.st_size * repeat / secs / 1e9);
	freeaddrinfo(ai);
	return 0;
}
