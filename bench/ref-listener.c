/*
 * Reference listener for bench/restart: the minimum a crash-safe UDS server does at startup.
 *
 * ringfly-bench-ref-listener SOCKET_PATH
 *
 * It performs the same startup steps as ringflyd's listener (DESIGN.md, "The failure this
 * project exists to get right") with nothing else around them: no config, no event loop,
 * no allocator, no logging except errors (ringflyd runs at --log-level warn, which does not
 * log the removal either). Then it waits in pause(). The restart benchmark times it next
 * to ringflyd, so that "ours / reference" says how much ringflyd's own startup adds on top
 * of what the kernel makes every server pay (fork, exec, dynamic linking, the lock, the
 * probe, bind/listen/rename).
 *
 *   1. flock(LOCK_EX|LOCK_NB) on SOCKET_PATH.lock (0600), held until death; write our pid.
 *   2. lstat(SOCKET_PATH): ENOENT -> nothing to do; not a socket -> refuse; a socket ->
 *      connect(): ECONNREFUSED -> dead node, unlink; connected -> SO_PEERCRED pid; pid gone
 *      -> dead node, unlink; pid alive -> refuse.
 *   3. socket, bind to SOCKET_PATH.tmp.<pid>, chmod 0660, listen, renameat2 onto SOCKET_PATH
 *      with RENAME_NOREPLACE (docs/DESIGN.md, "Listen before rename").
 *   4. SIGTERM/SIGINT: unlink SOCKET_PATH, exit 0.
 *
 * Exit codes: 0 on SIGTERM/SIGINT, 1 startup refused or failed, 2 bad usage.
 */
#ifndef _GNU_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#endif

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static const char *socket_path;

static void on_terminate(int signo)
{
	(void)signo;
	unlink(socket_path);
	_exit(0);
}

static const char *file_type_name(mode_t mode)
{
	if (S_ISREG(mode))
		return "a regular file";
	if (S_ISDIR(mode))
		return "a directory";
	if (S_ISLNK(mode))
		return "a symbolic link";
	if (S_ISFIFO(mode))
		return "a FIFO";
	if (S_ISCHR(mode))
		return "a character device";
	if (S_ISBLK(mode))
		return "a block device";
	return "not a socket";
}

static int fill_address(struct sockaddr_un *address, const char *path)
{
	memset(address, 0, sizeof(*address));
	address->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(address->sun_path))
		return -ENAMETOOLONG;
	strcpy(address->sun_path, path);
	return 0;
}

/*
 * Returns 0 when PATH is free to bind (absent, or a dead node now removed), else -errno
 * after printing why.
 */
static int clear_stale_node(const char *path)
{
	struct sockaddr_un address;
	struct ucred peer;
	socklen_t peer_length = sizeof(peer);
	struct stat st;
	int fd, err;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		err = errno;
		fprintf(stderr, "ref-listener: lstat %s: %s\n", path, strerror(err));
		return -err;
	}
	if (!S_ISSOCK(st.st_mode)) {
		fprintf(stderr, "ref-listener: %s: is %s, not a socket; refusing to touch it\n",
			path, file_type_name(st.st_mode));
		return -EEXIST;
	}

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	err = fill_address(&address, path);
	if (err < 0)
		goto out_close_fd;
	if (connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
		err = -errno;
		if (err == -ECONNREFUSED)
			goto remove_node;
		fprintf(stderr, "ref-listener: probe %s: %s\n", path, strerror(-err));
		goto out_close_fd;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_length) < 0) {
		err = -errno;
		goto out_close_fd;
	}
	if (kill(peer.pid, 0) == 0 || errno != ESRCH) {
		fprintf(stderr,
			"ref-listener: %s: a live process (pid %d) already serves this "
			"socket\n",
			path, (int)peer.pid);
		err = -EADDRINUSE;
		goto out_close_fd;
	}

remove_node:
	if (unlink(path) < 0 && errno != ENOENT) {
		err = -errno;
		fprintf(stderr, "ref-listener: unlink %s: %s\n", path, strerror(-err));
		goto out_close_fd;
	}
	err = 0;
out_close_fd:
	close(fd);
	return err;
}

int main(int argc, char **argv)
{
	char lock_path[sizeof(((struct sockaddr_un *)0)->sun_path) + 16];
	char temp_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct sockaddr_un address;
	struct sigaction action;
	int lock_fd, listen_fd;

	if (argc != 2 || argv[1][0] == '-') {
		fprintf(stderr, "usage: ringfly-bench-ref-listener SOCKET_PATH\n");
		return 2;
	}
	socket_path = argv[1];
	if (snprintf(temp_path, sizeof(temp_path), "%s.tmp.%d", socket_path, (int)getpid()) >=
	    (int)sizeof(temp_path)) {
		fprintf(stderr, "ref-listener: %s: path too long for a Unix socket\n", socket_path);
		return 2;
	}
	snprintf(lock_path, sizeof(lock_path), "%s.lock", socket_path);

	lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lock_fd < 0) {
		fprintf(stderr, "ref-listener: open %s: %s\n", lock_path, strerror(errno));
		return 1;
	}
	if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		fprintf(stderr, "ref-listener: %s: %s\n", lock_path,
			errno == EWOULDBLOCK ? "held by another listener" : strerror(errno));
		return 1;
	}
	/* Like ringflyd: the holder names itself in the lock file. */
	if (ftruncate(lock_fd, 0) == 0)
		dprintf(lock_fd, "%d\n", (int)getpid());

	if (clear_stale_node(socket_path) < 0)
		return 1;

	memset(&action, 0, sizeof(action));
	action.sa_handler = on_terminate;
	sigemptyset(&action.sa_mask);
	sigaction(SIGTERM, &action, NULL);
	sigaction(SIGINT, &action, NULL);

	listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (listen_fd < 0 || fill_address(&address, temp_path) < 0) {
		fprintf(stderr, "ref-listener: socket: %s\n", strerror(errno));
		return 1;
	}
	unlink(temp_path);
	if (bind(listen_fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
		fprintf(stderr, "ref-listener: bind %s: %s\n", temp_path, strerror(errno));
		return 1;
	}
	if (chmod(temp_path, 0660) < 0 || listen(listen_fd, 511) < 0 ||
	    renameat2(AT_FDCWD, temp_path, AT_FDCWD, socket_path, RENAME_NOREPLACE) < 0) {
		fprintf(stderr, "ref-listener: set up %s: %s\n", socket_path, strerror(errno));
		unlink(temp_path);
		return 1;
	}

	for (;;)
		pause();
}
