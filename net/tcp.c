/* tcp: TCP listeners for peer traffic (IPv4 and IPv6). */
#include "net/tcp.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TCP_BACKLOG_DEFAULT 4096

int tcp_parse_address(const char *address, char *host, size_t host_size, unsigned *port,
		      char *err, size_t err_size)
{
	const char *colon, *host_start = address, *host_end;
	char *end;
	unsigned long value;

	if (address[0] == '[') {
		host_end = strchr(address, ']');
		if (!host_end || host_end[1] != ':')
			goto bad;
		host_start = address + 1;
		colon = host_end + 1;
	} else {
		colon = strrchr(address, ':');
		if (!colon || memchr(address, ':', (size_t)(colon - address)))
			goto bad; /* a bare IPv6 address needs brackets */
		host_end = colon;
	}
	if ((size_t)(host_end - host_start) >= host_size)
		goto bad;
	errno = 0;
	value = strtoul(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || errno || value > 65535)
		goto bad;
	memcpy(host, host_start, (size_t)(host_end - host_start));
	host[host_end - host_start] = '\0';
	*port = (unsigned)value;
	return 0;
bad:
	snprintf(err, err_size, "'%s': expected HOST:PORT, [IPV6]:PORT or :PORT", address);
	return -EINVAL;
}

int tcp_listen(const char *address, int backlog, char *err, size_t err_size)
{
	struct addrinfo hints, *results, *ai;
	char host[256], service[8];
	unsigned port;
	int rc, fd = -1, last_errno = EADDRNOTAVAIL;

	rc = tcp_parse_address(address, host, sizeof(host), &port, err, err_size);
	if (rc < 0)
		return rc;
	snprintf(service, sizeof(service), "%u", port);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(host[0] ? host : NULL, service, &hints, &results);
	if (rc != 0) {
		snprintf(err, err_size, "listen %s: %s", address, gai_strerror(rc));
		return -EADDRNOTAVAIL;
	}
	for (ai = results; ai; ai = ai->ai_next) {
		int one = 1;

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			last_errno = errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, backlog > 0 ? backlog : TCP_BACKLOG_DEFAULT) == 0)
			break;
		last_errno = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(results);
	if (fd < 0) {
		snprintf(err, err_size, "listen %s: %s", address, strerror(last_errno));
		return -last_errno;
	}
	return fd;
}

int tcp_local_port(int fd)
{
	struct sockaddr_storage addr = { 0 };
	socklen_t len = sizeof(addr);

	if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
		return -errno;
	if (addr.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&addr)->sin_port);
	if (addr.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
	return -EAFNOSUPPORT;
}
