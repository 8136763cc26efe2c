/* bench-net: address parsing and listening shared by the benchmark programs. */
#include "bench/common/bench-net.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int bench_resolve(const char *spec, bool passive, struct addrinfo **out, char *err,
		  size_t err_size)
{
	const char *colon = strrchr(spec, ':');
	struct addrinfo hints = { 0 };
	char host[256];
	size_t len;
	int rc;

	if (!colon || colon == spec || !colon[1])
		return -EINVAL;
	len = (size_t)(colon - spec);
	if (spec[0] == '[' && len >= 2 && spec[len - 1] == ']') {
		spec++;
		len -= 2;
	}
	if (len >= sizeof(host))
		return -EINVAL;
	memcpy(host, spec, len);
	host[len] = '\0';

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
	rc = getaddrinfo(host, colon + 1, &hints, out);
	if (rc) {
		snprintf(err, err_size, "%s: %s", host, gai_strerror(rc));
		return -EHOSTUNREACH;
	}
	return 0;
}

int bench_listen(const struct addrinfo *ai, int backlog, char *ready, size_t ready_size)
{
	char host[INET6_ADDRSTRLEN], port[16];
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	int fd, one = 1;

	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	if (getnameinfo((struct sockaddr *)&ss, sslen, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV) == 0)
		snprintf(ready, ready_size,
			 ss.ss_family == AF_INET6 ? "ready [%s]:%s" : "ready %s:%s", host, port);
	else
		snprintf(ready, ready_size, "ready");
	return fd;
}
