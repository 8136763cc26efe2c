/*
 * rf-holdconns SOCKET N: opens N AF_UNIX stream connections to SOCKET, prints
 * "held N" once all of them are connected, then holds them until stdin reaches
 * EOF (or is closed) or SIGTERM/SIGINT/SIGHUP arrives. Exits 0 then.
 *
 * Exits 1 with a message on stderr if a connection cannot be made (each
 * connect is bounded by a 10 s deadline, so a full backlog cannot hang it),
 * 2 on bad usage. Connections the peer resets or closes later (the daemon was
 * killed) are fine: nothing is ever written to them, SIGPIPE is ignored anyway.
 *
 * Note: a non-interactive shell gives background jobs /dev/null as stdin,
 * which is an immediate EOF; give it a pipe or FIFO that stays open instead.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_S 10

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void raise_fd_limit(long want)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur >= want)
		return;
	if (rl.rlim_max != RLIM_INFINITY && (long)rl.rlim_max < want)
		rl.rlim_cur = rl.rlim_max;
	else
		rl.rlim_cur = (rlim_t)want;
	(void)setrlimit(RLIMIT_NOFILE, &rl);
}

static int connect_one(const struct sockaddr_un *addr, socklen_t addr_len, int *err)
{
	struct timeval tv = { .tv_sec = CONNECT_TIMEOUT_S, .tv_usec = 0 };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		*err = errno;
		return -1;
	}
	/* For AF_UNIX a blocking connect on a full backlog waits up to SO_SNDTIMEO. */
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	for (;;) {
		if (connect(fd, (const struct sockaddr *)addr, addr_len) == 0)
			return fd;
		if (errno == EINTR)
			continue;
		*err = errno == EINPROGRESS ? ETIMEDOUT : errno;
		close(fd);
		return -1;
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr;
	struct sigaction sa;
	sigset_t block, orig;
	socklen_t addr_len;
	char *end = NULL;
	long n, i;
	int *fds;
	int rc = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: rf-holdconns SOCKET N\n");
		return 2;
	}
	errno = 0;
	n = strtol(argv[2], &end, 10);
	if (errno != 0 || end == argv[2] || *end != '\0' || n < 0 || n > 1000000) {
		fprintf(stderr, "rf-holdconns: bad connection count '%s'\n", argv[2]);
		return 2;
	}
	if (strlen(argv[1]) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "rf-holdconns: %s: path too long for a Unix socket\n", argv[1]);
		return 2;
	}
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, argv[1], strlen(argv[1]) + 1);
	addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(argv[1]) + 1);

	signal(SIGPIPE, SIG_IGN);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	/* Termination requests stay pending until ppoll() below unblocks them. */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGHUP);
	sigprocmask(SIG_BLOCK, &block, &orig);

	raise_fd_limit(n + 64);
	fds = calloc((size_t)(n > 0 ? n : 1), sizeof(*fds));
	if (fds == NULL) {
		fprintf(stderr, "rf-holdconns: out of memory\n");
		return 1;
	}
	for (i = 0; i < n; i++) {
		int err = 0;

		fds[i] = connect_one(&addr, addr_len, &err);
		if (fds[i] < 0) {
			fprintf(stderr, "rf-holdconns: connect %s (connection %ld of %ld): %s\n",
				argv[1], i + 1, n, strerror(err));
			while (i-- > 0)
				close(fds[i]);
			free(fds);
			return 1;
		}
	}
	printf("held %ld\n", n);
	fflush(stdout);

	while (!stop_requested) {
		struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN, .revents = 0 };
		char buf[512];
		ssize_t got;
		int ready = ppoll(&pfd, 1, NULL, &orig);

		if (ready < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "rf-holdconns: poll: %s\n", strerror(errno));
			rc = 1;
			break;
		}
		if (pfd.revents & POLLNVAL)
			break; /* stdin closed: nothing will ever arrive, same as EOF */
		if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		got = read(STDIN_FILENO, buf, sizeof(buf));
		if (got == 0)
			break;
		if (got < 0 && errno != EINTR && errno != EAGAIN)
			break;
	}

	for (i = 0; i < n; i++)
		close(fds[i]);
	free(fds);
	return rc;
}
