/* uds: Unix-socket listeners that survive kill -9 of their previous owner, and clients. */
#ifndef RINGFLY_NET_UDS_H
#define RINGFLY_NET_UDS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/un.h>
#include <limits.h>

#define UDS_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

struct uds_listener {
	int fd;			   /* listening socket, CLOEXEC, blocking */
	int lock_fd;		   /* holds flock on lock_path; -1 when activated */
	bool activated;		   /* inherited from systemd (LISTEN_FDS) */
	dev_t node_dev;		   /* the node we created at path, to unlink only it */
	ino_t node_ino;
	char path[UDS_PATH_MAX + 1];
	char lock_path[PATH_MAX];
};

struct uds_listen_options {
	const char *path;	 /* socket path (borrowed) */
	mode_t mode;		 /* mode of the socket node, e.g. 0660 */
	int backlog;		 /* listen() backlog; 0 = 4096 */
	const char *owner_name;	 /* who we are in messages, e.g. "ringflyd" */
	bool allow_activation;	 /* take a socket passed by systemd (LISTEN_FDS) */
};

/*
 * Opens the listener at options->path, clearing the node a dead owner left
 * behind and never touching anything else: see the essay at the top of
 * net/uds.c for the steps and why they are safe.
 *
 * Returns 0 with *listener filled, or a negative errno with a one-line reason
 * in err[err_size] naming the path (and the pid of a live owner):
 *   -EADDRINUSE  a live process serves the path, or another daemon holds the lock
 *   -EEXIST      the path is not a socket (a file, directory, symlink, ...)
 *   -ENAMETOOLONG, -EACCES, ... for the rest.
 * One info log line is written for each dead node removed.
 */
int uds_listen(struct uds_listener *listener, const struct uds_listen_options *options,
	       char *err, size_t err_size);

/*
 * Closes the listening socket. Unless it was socket-activated: unlinks the
 * node if it is still the one we created (not a node somebody put there since),
 * then releases the lock. Safe to call twice.
 */
void uds_close(struct uds_listener *listener);

/*
 * Connects a client to `path` with a deadline for the connect itself
 * (connect_timeout_ms) and sets SO_RCVTIMEO/SO_SNDTIMEO to io_timeout_ms.
 * Returns a blocking, CLOEXEC fd, or a negative errno with a reason in err
 * (e.g. "connection refused (stale socket: no daemon is running)").
 */
int uds_connect(const char *path, unsigned connect_timeout_ms, unsigned io_timeout_ms,
		char *err, size_t err_size);

#endif
