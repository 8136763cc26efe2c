/* uds: Unix-socket listeners that survive kill -9 of their previous owner, and clients. */

/*
 * Why restarting on a socket path is safe
 * ---------------------------------------
 * A daemon killed with SIGKILL (or by the OOM killer) leaves its socket node
 * in the directory, and that directory (a Kubernetes hostPath, /run) outlives
 * it. bind() on the node fails with EADDRINUSE, so a naive daemon crash-loops.
 * Unlinking the path unconditionally is just as wrong: it steals the path of a
 * daemon that is still alive, or deletes a file that is not a socket at all.
 * uds_listen() therefore proves a node dead before it removes it:
 *
 * 1. An exclusive flock on "<path>.lock" (created 0600, never deleted). The
 *    kernel drops it when its holder dies however it dies, so it never goes
 *    stale, and while we hold it no other daemon of ours can be between its
 *    own check and its bind: the steps below are serialised. The holder
 *    writes its pid into the file so a refused daemon can name it.
 *
 * 2. lstat(path):
 *    - missing: nothing to clear;
 *    - not a socket (file, directory, symlink, FIFO, device): refuse, naming
 *      the type. We never delete what we did not create;
 *    - a socket: connect() to it.
 *        ECONNREFUSED: nobody listens; the node is dead: unlink it.
 *        Accepted: somebody listens. Ask the kernel who called listen() on
 *        it: SO_PEERPIDFD gives a pidfd for that process (immune to pid
 *        reuse, and valid across pid namespaces), SO_PEERCRED its pid on
 *        older kernels. If that process has exited, the node is still dead:
 *        an io_uring daemon killed with SIGKILL keeps accepting on its
 *        listener for several milliseconds after it is reaped, until the
 *        kernel tears its ring down (6-13 ms measured here). Unlink it.
 *        If it is alive, it is a live server (not one of ours: we hold the
 *        lock): refuse and name its pid.
 *      A listener whose backlog is full (EAGAIN) or whose pid we cannot see
 *      is probed again for a short while before we give up and refuse.
 *    Before unlinking, lstat again: the node must be the inode we probed.
 *
 * 3. bind() to "<dir>/.<name>.tmp" (ours alone while we hold the lock),
 *    chmod it to the configured mode, listen(), and only then rename it onto
 *    the path with RENAME_NOREPLACE: a client never sees a node that refuses
 *    or has the wrong mode, and if anything appeared at the path since step 2
 *    the rename fails instead of replacing it; we go back to step 2.
 *    (This listens before the rename, where DESIGN.md lists listen after it:
 *    see docs/DESIGN.md.)
 *
 * 4. On clean shutdown: unlink the path if it is still our node (same device
 *    and inode), then release the lock by closing it.
 *
 * 5. With systemd socket activation (LISTEN_PID is us, LISTEN_FDS >= 1) the
 *    inherited fd 3 is used as is: no lock, no probe, no unlink.
 */

#include "net/uds.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5, asm-generic/socket.h */
#endif
_Static_assert(SO_PEERPIDFD == 77, "kernel ABI");

#define UDS_BACKLOG_DEFAULT 4096
/* How long a listener that we can connect to but cannot judge (backlog full,
 * pid not visible) is probed again before we refuse to start. */
#define UDS_PROBE_RETRY_MS 500u
/* How long a held lock whose recorded holder is gone is waited for. */
#define UDS_LOCK_RETRY_MS 1000u
#define UDS_RENAME_ATTEMPTS 3

#define SD_LISTEN_FDS_START 3

static void uds_sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static const char *uds_node_type(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return "a regular file";
	case S_IFDIR: return "a directory";
	case S_IFLNK: return "a symbolic link";
	case S_IFIFO: return "a FIFO";
	case S_IFCHR: return "a character device";
	case S_IFBLK: return "a block device";
	case S_IFSOCK: return "a socket";
	default: return "of unknown type";
	}
}

static int uds_fill_address(struct sockaddr_un *addr, const char *path)
{
	size_t len = strlen(path);

	if (len == 0 || len > UDS_PATH_MAX)
		return -ENAMETOOLONG;
	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	memcpy(addr->sun_path, path, len);
	return 0;
}

/* --- is the process at the other end of a connection alive? */

enum uds_peer {
	UDS_PEER_ALIVE,
	UDS_PEER_DEAD,
	UDS_PEER_UNKNOWN, /* not visible from here (pid namespace), or no answer */
};

static bool uds_pid_is_zombie(pid_t pid)
{
	char path[64], buf[256];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	/* "pid (comm) S ...": comm may hold spaces and parentheses. */
	char *end = strrchr(buf, ')');
	return end && end[1] == ' ' && (end[2] == 'Z' || end[2] == 'X');
}

static enum uds_peer uds_pid_state(pid_t pid)
{
	if (pid <= 0)
		return UDS_PEER_UNKNOWN;
	if (kill(pid, 0) < 0 && errno == ESRCH)
		return UDS_PEER_DEAD;
	return uds_pid_is_zombie(pid) ? UDS_PEER_DEAD : UDS_PEER_ALIVE;
}

static enum uds_peer uds_peer_state(int fd, pid_t *pid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int pidfd = -1;

	*pid = 0;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
		*pid = cred.pid;

	len = sizeof(pidfd);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0) {
		/* A pidfd polls readable once its process has exited (zombie
		 * or reaped), whatever its pid has become since. */
		struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
		int ready = poll(&pfd, 1, 0);

		close(pidfd);
		if (ready >= 0)
			return ready > 0 ? UDS_PEER_DEAD : UDS_PEER_ALIVE;
	} else if (errno == ESRCH) {
		return UDS_PEER_DEAD; /* the listener's process is gone already */
	}
	return uds_pid_state(*pid);
}

/* --- step 2: prove the node at path dead, or refuse. */

enum uds_probe {
	UDS_PROBE_DEAD,
	UDS_PROBE_ALIVE,
	UDS_PROBE_UNSURE, /* probe again */
	UDS_PROBE_GONE,	  /* the node vanished meanwhile */
	UDS_PROBE_ERROR,
};

static enum uds_probe uds_probe_type(const char *path, int type, pid_t *pid, char *why,
				     size_t why_size)
{
	struct sockaddr_un addr;
	enum uds_probe result;
	int fd;

	uds_fill_address(&addr, path);
	fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		snprintf(why, why_size, "cannot create a probe socket: %s", strerror(errno));
		return UDS_PROBE_ERROR;
	}
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
		switch (uds_peer_state(fd, pid)) {
		case UDS_PEER_DEAD:
			snprintf(why, why_size, "its listener (pid %d) has exited", (int)*pid);
			result = UDS_PROBE_DEAD;
			break;
		case UDS_PEER_ALIVE:
			result = UDS_PROBE_ALIVE;
			break;
		default:
			snprintf(why, why_size, "its listener's pid is not visible from here");
			result = UDS_PROBE_UNSURE;
			break;
		}
		close(fd);
		return result;
	}

	int e = errno;
	close(fd);
	switch (e) {
	case ECONNREFUSED:
		snprintf(why, why_size, "connection refused");
		return UDS_PROBE_DEAD;
	case EAGAIN:
		snprintf(why, why_size, "its listener's backlog is full");
		return UDS_PROBE_UNSURE;
	case ENOENT:
		return UDS_PROBE_GONE;
	case EPROTOTYPE:
		return UDS_PROBE_ERROR; /* caller tries another socket type */
	default:
		snprintf(why, why_size, "cannot probe it: %s", strerror(e));
		return UDS_PROBE_ERROR;
	}
}

static enum uds_probe uds_probe(const char *path, pid_t *pid, char *why, size_t why_size)
{
	static const int types[] = { SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM };
	enum uds_probe result = UDS_PROBE_ERROR;

	why[0] = '\0';
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		result = uds_probe_type(path, types[i], pid, why, why_size);
		if (result != UDS_PROBE_ERROR || why[0] != '\0')
			return result;
	}
	snprintf(why, why_size, "cannot probe it: %s", strerror(EPROTOTYPE));
	return result;
}

static int uds_clear_path(const char *path, char *err, size_t err_size)
{
	uint64_t deadline_ms = clock_monotonic_ms() + UDS_PROBE_RETRY_MS;
	char why[160];

	for (;;) {
		struct stat before, after;
		pid_t pid = 0;

		if (lstat(path, &before) < 0) {
			if (errno == ENOENT)
				return 0;
			snprintf(err, err_size, "%s: cannot inspect it: %s", path, strerror(errno));
			return -errno;
		}
		if (!S_ISSOCK(before.st_mode)) {
			snprintf(err, err_size, "%s: is %s, not a socket; refusing to touch it",
				 path, uds_node_type(before.st_mode));
			return -EEXIST;
		}

		switch (uds_probe(path, &pid, why, sizeof(why))) {
		case UDS_PROBE_GONE:
			continue;
		case UDS_PROBE_ALIVE:
			if (pid > 0)
				snprintf(err, err_size,
					 "%s: a live process (pid %d) already serves this socket",
					 path, (int)pid);
			else
				snprintf(err, err_size,
					 "%s: a live process (pid not visible from here) already "
					 "serves this socket", path);
			return -EADDRINUSE;
		case UDS_PROBE_ERROR:
			snprintf(err, err_size, "%s: a socket node is there and %s", path, why);
			return -EACCES;
		case UDS_PROBE_UNSURE:
			if (clock_monotonic_ms() >= deadline_ms) {
				snprintf(err, err_size,
					 "%s: a process already listens on this socket (%s)",
					 path, why);
				return -EADDRINUSE;
			}
			uds_sleep_ms(1);
			continue;
		case UDS_PROBE_DEAD:
			break;
		}

		/* Dead. Unlink only the inode we probed. */
		if (lstat(path, &after) < 0 || after.st_dev != before.st_dev ||
		    after.st_ino != before.st_ino)
			continue;
		if (unlink(path) < 0 && errno != ENOENT) {
			snprintf(err, err_size, "%s: cannot remove the stale socket: %s", path,
				 strerror(errno));
			return -errno;
		}
		log_info("uds", "removed stale socket path=%s reason=\"left by a dead daemon (%s)\"",
			 path, why);
		return 0;
	}
}

/* --- step 1: the lock. */

static pid_t uds_lock_holder(int fd)
{
	char buf[32];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return (pid_t)strtol(buf, NULL, 10);
}

static int uds_lock(struct uds_listener *listener, const char *owner_name, char *err,
		    size_t err_size)
{
	uint64_t deadline_ms = clock_monotonic_ms() + UDS_LOCK_RETRY_MS;
	char pid_text[32];
	int fd, n;

	fd = open(listener->lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;

		snprintf(err, err_size, "%s: cannot open the lock file: %s", listener->lock_path,
			 e == ELOOP ? "it is a symbolic link" : strerror(e));
		return -e;
	}
	while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		pid_t holder;

		if (errno == EINTR)
			continue;
		if (errno != EWOULDBLOCK) {
			snprintf(err, err_size, "%s: cannot lock: %s", listener->lock_path,
				 strerror(errno));
			close(fd);
			return -EACCES;
		}
		/* Held. By a live daemon: refuse now. By one whose recorded
		 * pid is gone (it is dying, or has not written its pid yet):
		 * the lock is about to be released or named; look again. */
		holder = uds_lock_holder(fd);
		if (uds_pid_state(holder) == UDS_PEER_ALIVE ||
		    clock_monotonic_ms() >= deadline_ms) {
			if (holder > 0)
				snprintf(err, err_size, "another %s (pid %d) holds %s", owner_name,
					 (int)holder, listener->lock_path);
			else
				snprintf(err, err_size, "another %s holds %s", owner_name,
					 listener->lock_path);
			close(fd);
			return -EADDRINUSE;
		}
		uds_sleep_ms(1);
	}

	n = snprintf(pid_text, sizeof(pid_text), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, pid_text, (size_t)n, 0) != n)
		log_warn("uds", "cannot record our pid path=%s error=\"%s\"", listener->lock_path,
			 strerror(errno));
	listener->lock_fd = fd;
	return 0;
}

/* --- step 3: bind, chmod, listen, rename. */

static int uds_make_parent(const char *path, char *err, size_t err_size)
{
	char dir[PATH_MAX];
	size_t len = strlen(path);

	if (len >= sizeof(dir))
		return -ENAMETOOLONG;
	memcpy(dir, path, len + 1);
	/* Walk down the components, creating the missing ones 0755. */
	for (char *p = dir + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		if (*p == '\0')
			break; /* the last component is the socket itself */
		*p = '\0';
		if (mkdir(dir, 0755) == 0) {
			chmod(dir, 0755); /* whatever the umask */
		} else if (errno != EEXIST) {
			snprintf(err, err_size, "%s: cannot create directory %s: %s", path, dir,
				 strerror(errno));
			return -errno;
		}
		*p = '/';
	}
	return 0;
}

/* "<dir>/.<name>.tmp", or "" when it would not fit in sun_path. */
static void uds_temp_path(const char *path, char *out, size_t out_size)
{
	const char *slash = strrchr(path, '/');
	size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
	int n;

	n = snprintf(out, out_size, "%.*s.%s.tmp", (int)dir_len, path, path + dir_len);
	if (n < 0 || (size_t)n > UDS_PATH_MAX)
		out[0] = '\0';
}

static int uds_bind_listen(struct uds_listener *listener, const char *bind_path, mode_t mode,
			   int backlog, char *err, size_t err_size)
{
	struct sockaddr_un addr;
	int fd, rc;

	rc = uds_fill_address(&addr, bind_path);
	if (rc < 0) {
		snprintf(err, err_size, "%s: path longer than %zu bytes", bind_path, UDS_PATH_MAX);
		return rc;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, err_size, "%s: socket: %s", listener->path, strerror(errno));
		return -errno;
	}
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		rc = -errno;
		snprintf(err, err_size, "bind %s: %s", bind_path, strerror(errno));
		goto out_close;
	}
	if (chmod(bind_path, mode) < 0) {
		rc = -errno;
		snprintf(err, err_size, "chmod %s: %s", bind_path, strerror(errno));
		goto out_unlink;
	}
	if (listen(fd, backlog) < 0) {
		rc = -errno;
		snprintf(err, err_size, "listen %s: %s", bind_path, strerror(errno));
		goto out_unlink;
	}
	listener->fd = fd;
	return 0;

out_unlink:
	unlink(bind_path);
out_close:
	close(fd);
	return rc;
}

/* Moves the listening node at temp onto path without replacing anything. */
static int uds_publish(const char *temp, const char *path)
{
	if (renameat2(AT_FDCWD, temp, AT_FDCWD, path, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -errno;
	/* A filesystem without RENAME_NOREPLACE: link() never replaces either. */
	if (link(temp, path) < 0)
		return -errno;
	unlink(temp);
	return 0;
}

static int uds_remove_our_temp(const char *temp, char *err, size_t err_size)
{
	struct stat st;

	if (lstat(temp, &st) < 0)
		return 0;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, err_size, "%s: is %s, not a socket; refusing to touch it", temp,
			 uds_node_type(st.st_mode));
		return -EEXIST;
	}
	/* A socket under our private name, and we hold the lock: left by one of
	 * us that died between bind and rename. */
	unlink(temp);
	return 0;
}

static int uds_listen_path(struct uds_listener *listener, const struct uds_listen_options *options,
			   char *err, size_t err_size)
{
	int backlog = options->backlog > 0 ? options->backlog : UDS_BACKLOG_DEFAULT;
	char temp[UDS_PATH_MAX + 1];
	int rc;

	uds_temp_path(listener->path, temp, sizeof(temp));
	if (temp[0]) {
		rc = uds_remove_our_temp(temp, err, err_size);
		if (rc < 0)
			return rc;
	}

	for (int attempt = 0; attempt < UDS_RENAME_ATTEMPTS; attempt++) {
		rc = uds_clear_path(listener->path, err, err_size);
		if (rc < 0)
			return rc;
		if (!temp[0]) /* no room for a temporary name: bind in place */
			return uds_bind_listen(listener, listener->path, options->mode, backlog,
					       err, err_size);

		rc = uds_bind_listen(listener, temp, options->mode, backlog, err, err_size);
		if (rc < 0)
			return rc;
		rc = uds_publish(temp, listener->path);
		if (rc == 0)
			return 0;
		unlink(temp);
		close(listener->fd);
		listener->fd = -1;
		if (rc != -EEXIST) {
			snprintf(err, err_size, "rename %s to %s: %s", temp, listener->path,
				 strerror(-rc));
			return rc;
		}
		/* Something appeared at the path since we cleared it: judge it again. */
	}
	snprintf(err, err_size, "%s: keeps reappearing while we start; giving up", listener->path);
	return -EADDRINUSE;
}

/* --- step 5: socket activation. */

static bool uds_take_activated(struct uds_listener *listener)
{
	const char *pid_text = getenv("LISTEN_PID");
	const char *fds_text = getenv("LISTEN_FDS");
	int fd = SD_LISTEN_FDS_START, value = 0;
	socklen_t len = sizeof(value);
	struct sockaddr_un addr = { 0 };
	socklen_t addr_len = sizeof(addr);

	if (!pid_text || !fds_text || (pid_t)strtol(pid_text, NULL, 10) != getpid() ||
	    strtol(fds_text, NULL, 10) < 1)
		return false;
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");

	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &len) < 0 || !value) {
		log_warn("uds", "socket activation: fd 3 is not a listening socket; ignoring it");
		return false;
	}
	if (getsockname(fd, (struct sockaddr *)&addr, &addr_len) < 0 ||
	    addr.sun_family != AF_UNIX) {
		log_warn("uds", "socket activation: fd 3 is not a Unix socket; ignoring it");
		return false;
	}
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	listener->fd = fd;
	listener->activated = true;
	if (addr_len > offsetof(struct sockaddr_un, sun_path) && addr.sun_path[0]) {
		size_t n = strnlen(addr.sun_path, sizeof(addr.sun_path));

		memcpy(listener->path, addr.sun_path, n);
		listener->path[n] = '\0';
	}
	return true;
}

int uds_listen(struct uds_listener *listener, const struct uds_listen_options *options,
	       char *err, size_t err_size)
{
	size_t len = strlen(options->path);
	int rc;

	memset(listener, 0, sizeof(*listener));
	listener->fd = -1;
	listener->lock_fd = -1;
	if (len == 0 || len > UDS_PATH_MAX) {
		snprintf(err, err_size, "%s: socket path must be 1 to %zu bytes long (is %zu)",
			 options->path, UDS_PATH_MAX, len);
		return -ENAMETOOLONG;
	}
	memcpy(listener->path, options->path, len + 1);

	if (options->allow_activation && uds_take_activated(listener))
		return 0;

	snprintf(listener->lock_path, sizeof(listener->lock_path), "%s.lock", listener->path);
	rc = uds_make_parent(listener->path, err, err_size);
	if (rc < 0)
		return rc;
	rc = uds_lock(listener, options->owner_name, err, err_size);
	if (rc < 0)
		return rc;
	rc = uds_listen_path(listener, options, err, err_size);
	if (rc < 0)
		goto out_unlock;

	struct stat st;
	if (lstat(listener->path, &st) == 0) {
		listener->node_dev = st.st_dev;
		listener->node_ino = st.st_ino;
	}
	return 0;

out_unlock:
	close(listener->lock_fd);
	listener->lock_fd = -1;
	return rc;
}

void uds_close(struct uds_listener *listener)
{
	struct stat st;

	if (listener->fd >= 0) {
		close(listener->fd);
		listener->fd = -1;
	}
	if (listener->activated || listener->lock_fd < 0)
		return;
	/* Still the lock holder: nobody else can have bound the path, but a
	 * foreign process might have replaced the node; unlink only ours. */
	if (lstat(listener->path, &st) == 0 && st.st_dev == listener->node_dev &&
	    st.st_ino == listener->node_ino)
		unlink(listener->path);
	close(listener->lock_fd);
	listener->lock_fd = -1;
}

int uds_connect(const char *path, unsigned connect_timeout_ms, unsigned io_timeout_ms,
		char *err, size_t err_size)
{
	struct sockaddr_un addr;
	struct timeval tv;
	int fd, rc;

	rc = uds_fill_address(&addr, path);
	if (rc < 0) {
		snprintf(err, err_size, "socket path longer than %zu bytes", UDS_PATH_MAX);
		return rc;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, err_size, "socket: %s", strerror(errno));
		return -errno;
	}
	/* A blocking Unix connect waits for backlog room up to SO_SNDTIMEO. */
	tv.tv_sec = connect_timeout_ms / 1000;
	tv.tv_usec = (suseconds_t)(connect_timeout_ms % 1000) * 1000;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		rc = -errno;
		if (rc == -ECONNREFUSED)
			snprintf(err, err_size, "connection refused (stale socket: no daemon is running)");
		else if (rc == -EAGAIN || rc == -EINPROGRESS)
			snprintf(err, err_size, "no connection within %u ms (the daemon is overloaded)",
				 connect_timeout_ms);
		else
			snprintf(err, err_size, "%s", strerror(-rc));
		close(fd);
		return rc;
	}
	tv.tv_sec = io_timeout_ms / 1000;
	tv.tv_usec = (suseconds_t)(io_timeout_ms % 1000) * 1000;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}
