/* tcp: TCP listeners for peer traffic (IPv4 and IPv6). */
#ifndef RINGFLY_NET_TCP_H
#define RINGFLY_NET_TCP_H

#include <stddef.h>

/*
 * Splits "host:port", "[v6-address]:port" or ":port" (any address) into
 * host[host_size] and *port. Returns 0 or -EINVAL with a reason in err.
 */
int tcp_parse_address(const char *address, char *host, size_t host_size, unsigned *port,
		      char *err, size_t err_size);

/*
 * Binds and listens on `address` (see tcp_parse_address; a host name is
 * resolved, the first address that binds wins) with SO_REUSEADDR.
 * Returns a CLOEXEC listening fd, or a negative errno with a one-line reason
 * naming the address in err (e.g. "listen 0.0.0.0:65002: Address already in use").
 */
int tcp_listen(const char *address, int backlog, char *err, size_t err_size);

/* The local port of a bound socket, or a negative errno. */
int tcp_local_port(int fd);

#endif
