/* bench-net: address parsing and listening shared by the benchmark programs. */
#ifndef RINGFLY_BENCH_NET_H
#define RINGFLY_BENCH_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <netdb.h>

/*
 * Resolves "HOST:PORT" or "[V6]:PORT" (numeric port) for a stream socket,
 * for bind (passive) or connect. Returns 0 and a list in *out (freeaddrinfo),
 * -EINVAL when spec is not of that form, or -EHOSTUNREACH with the resolver's
 * reason in err.
 */
int bench_resolve(const char *spec, bool passive, struct addrinfo **out, char *err,
		  size_t err_size);

/*
 * Binds (SO_REUSEADDR) and listens on ai with `backlog`; writes
 * "ready HOST:PORT" (the bound address, so port 0 shows the real one) into
 * ready[ready_size]. Returns the CLOEXEC fd or a negative errno.
 */
int bench_listen(const struct addrinfo *ai, int backlog, char *ready, size_t ready_size);

#endif
