/* test_uds: the stale-socket startup check, node by node, in one process. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.h"
#include "net/tcp.h"
#include "net/uds.h"

static char dir[40];
static char path[100];
static char err[512];

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/rf-uds-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/d.sock", dir);
	err[0] = '\0';
	log_set_level(LOG_LEVEL_ERROR);
}

static void teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

static struct uds_listen_options options_for(const char *p)
{
	struct uds_listen_options o = {
		.path = p, .mode = 0660, .owner_name = "ringflyd", .allow_activation = false,
	};
	return o;
}

/* Binds and listens at p, then closes without unlinking: a dead node. */
static void make_stale_socket(const char *p)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", p);
	cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	cr_assert_eq(listen(fd, 1), 0);
	close(fd);
}

static ino_t inode_of(const char *p)
{
	struct stat st;

	cr_assert_eq(lstat(p, &st), 0, "%s: %s", p, strerror(errno));
	return st.st_ino;
}

static bool accepts(const char *p)
{
	char e[128];
	int fd = uds_connect(p, 200, 200, e, sizeof(e));

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

TestSuite(uds, .init = setup, .fini = teardown);

Test(uds, missing_path_listens_with_mode_and_parent_dirs)
{
	struct uds_listener l;
	struct uds_listen_options o;
	char nested[160];
	struct stat st;

	snprintf(nested, sizeof(nested), "%s/a/b/d.sock", dir);
	o = options_for(nested);
	o.mode = 0600;
	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), 0, "%s", err);
	cr_assert(accepts(nested));
	cr_assert_eq(lstat(nested, &st), 0);
	cr_assert(S_ISSOCK(st.st_mode));
	cr_assert_eq(st.st_mode & 07777, 0600);
	snprintf(nested, sizeof(nested), "%s/a/b", dir);
	cr_assert_eq(stat(nested, &st), 0);
	cr_assert_eq(st.st_mode & 07777, 0755);
	uds_close(&l);
	snprintf(nested, sizeof(nested), "%s/a/b/d.sock", dir);
	cr_assert_eq(access(nested, F_OK), -1, "clean close leaves no node");
	uds_close(&l); /* twice is harmless */
}

Test(uds, stale_socket_is_removed_and_replaced)
{
	struct uds_listener l;
	struct uds_listen_options o = options_for(path);

	make_stale_socket(path);
	cr_assert(!accepts(path));
	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), 0, "%s", err);
	cr_assert(accepts(path), "the new listener answers");
	uds_close(&l);
}

Test(uds, live_listener_in_another_process_is_refused)
{
	struct uds_listener first, second;
	struct uds_listen_options o = options_for(path);
	char lock[256];
	ino_t before;

	cr_assert_eq(uds_listen(&first, &o, err, sizeof(err)), 0, "%s", err);
	before = inode_of(path);
	/* A second daemon: the lock (a new open file description) is held. */
	cr_assert_eq(uds_listen(&second, &o, err, sizeof(err)), -EADDRINUSE);
	snprintf(lock, sizeof(lock), "another ringflyd (pid %d) holds %s.lock", getpid(), path);
	cr_assert_str_eq(err, lock);
	cr_assert_eq(inode_of(path), before);
	cr_assert(accepts(path));
	uds_close(&first);
}

Test(uds, foreign_live_listener_is_refused_and_untouched)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct uds_listener l;
	struct uds_listen_options o = options_for(path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	char expect[200];
	ino_t before;

	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
	cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	cr_assert_eq(listen(fd, 8), 0);
	before = inode_of(path);
	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), -EADDRINUSE);
	snprintf(expect, sizeof(expect), "%s: a live process (pid %d) already serves this socket",
		 path, getpid());
	cr_assert_str_eq(err, expect);
	cr_assert_eq(inode_of(path), before);
	close(fd);
}

Test(uds, listener_whose_process_exited_is_dead)
{
	/*
	 * What an io_uring daemon killed with SIGKILL leaves for a few ms: a
	 * listener that still accepts while the process that called listen()
	 * is gone. Here a child listens and exits; a grandchild keeps the
	 * socket open (as the dying ring does).
	 */
	struct uds_listener l;
	struct uds_listen_options o = options_for(path);
	int ready[2], hold[2];
	pid_t child, grandchild = 0;
	char c;

	cr_assert_eq(pipe(ready), 0);
	cr_assert_eq(pipe(hold), 0);
	child = fork();
	if (child == 0) {
		struct sockaddr_un addr = { .sun_family = AF_UNIX };
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);

		snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
		if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(fd, 8))
			_exit(1);
		pid_t g = fork();
		if (g == 0) { /* holds the listener until the pipe closes */
			close(hold[1]);
			while (read(hold[0], &c, 1) > 0)
				;
			_exit(0);
		}
		if (write(ready[1], &g, sizeof(g)) != sizeof(g))
			_exit(1);
		_exit(0);
	}
	close(hold[0]);
	cr_assert_eq(read(ready[0], &grandchild, sizeof(grandchild)), (ssize_t)sizeof(grandchild));
	waitpid(child, NULL, 0);
	cr_assert(accepts(path), "the orphaned listener still accepts");

	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), 0, "%s", err);
	cr_assert(accepts(path));
	uds_close(&l);
	close(hold[1]);
	waitpid(grandchild, NULL, 0);
}

Test(uds, regular_file_is_refused_and_kept)
{
	struct uds_listener l;
	struct uds_listen_options o = options_for(path);
	char expect[200], content[16] = { 0 };
	int fd = open(path, O_CREAT | O_WRONLY, 0644);

	cr_assert_eq(write(fd, "keep me", 7), 7);
	close(fd);
	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), -EEXIST);
	snprintf(expect, sizeof(expect), "%s: is a regular file, not a socket; refusing to touch it",
		 path);
	cr_assert_str_eq(err, expect);
	fd = open(path, O_RDONLY);
	cr_assert_eq(read(fd, content, sizeof(content)), 7);
	cr_assert_str_eq(content, "keep me");
	close(fd);
}

Test(uds, directory_symlink_and_fifo_are_refused)
{
	struct uds_listener l;
	struct uds_listen_options o = options_for(path);
	char target[160];

	cr_assert_eq(mkdir(path, 0755), 0);
	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), -EEXIST);
	cr_assert(strstr(err, "is a directory, not a socket"), "%s", err);
	rmdir(path);

	snprintf(target, sizeof(target), "%s/target.sock", dir);
	make_stale_socket(target); /* even a link to a dead socket is not ours */
	cr_assert_eq(symlink(target, path), 0);
	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), -EEXIST);
	cr_assert(strstr(err, "is a symbolic link, not a socket"), "%s", err);
	cr_assert_eq(access(target, F_OK), 0);
	unlink(path);

	cr_assert_eq(mkfifo(path, 0600), 0);
	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), -EEXIST);
	cr_assert(strstr(err, "is a FIFO, not a socket"), "%s", err);
}

Test(uds, close_leaves_a_replaced_node_alone)
{
	struct uds_listener l;
	struct uds_listen_options o = options_for(path);
	int fd;

	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), 0, "%s", err);
	/* Somebody replaces the node behind our back. */
	cr_assert_eq(unlink(path), 0);
	fd = open(path, O_CREAT | O_WRONLY, 0644);
	close(fd);
	uds_close(&l);
	cr_assert_eq(access(path, F_OK), 0, "a node we did not create was removed");
}

Test(uds, leftover_temp_socket_is_cleared)
{
	struct uds_listener l;
	struct uds_listen_options o = options_for(path);
	char temp[160];

	snprintf(temp, sizeof(temp), "%s/.d.sock.tmp", dir);
	make_stale_socket(temp);
	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(access(temp, F_OK), -1);
	uds_close(&l);
}

Test(uds, path_too_long_is_an_error)
{
	struct uds_listener l;
	char long_path[200];
	struct uds_listen_options o;

	memset(long_path, 'x', sizeof(long_path) - 1);
	long_path[0] = '/';
	long_path[sizeof(long_path) - 1] = '\0';
	o = options_for(long_path);
	cr_assert_eq(uds_listen(&l, &o, err, sizeof(err)), -ENAMETOOLONG);
	cr_assert(strstr(err, "socket path must be 1 to 107 bytes long"), "%s", err);
}

Test(uds, connect_reports_missing_and_stale)
{
	char e[128];

	cr_assert_eq(uds_connect(path, 100, 100, e, sizeof(e)), -ENOENT);
	cr_assert_str_eq(e, "No such file or directory");
	make_stale_socket(path);
	cr_assert_eq(uds_connect(path, 100, 100, e, sizeof(e)), -ECONNREFUSED);
	cr_assert(strstr(e, "connection refused"), "%s", e);
}

Test(tcp, parses_addresses)
{
	char host[64];
	unsigned port;

	cr_assert_eq(tcp_parse_address("127.0.0.1:65002", host, sizeof(host), &port, err,
				       sizeof(err)), 0);
	cr_assert_str_eq(host, "127.0.0.1");
	cr_assert_eq(port, 65002);
	cr_assert_eq(tcp_parse_address("[::1]:80", host, sizeof(host), &port, err, sizeof(err)), 0);
	cr_assert_str_eq(host, "::1");
	cr_assert_eq(tcp_parse_address(":9", host, sizeof(host), &port, err, sizeof(err)), 0);
	cr_assert_str_eq(host, "");
	cr_assert_eq(tcp_parse_address("::1:80", host, sizeof(host), &port, err, sizeof(err)),
		     -EINVAL);
	cr_assert_eq(tcp_parse_address("host:", host, sizeof(host), &port, err, sizeof(err)),
		     -EINVAL);
	cr_assert_eq(tcp_parse_address("host:70000", host, sizeof(host), &port, err, sizeof(err)),
		     -EINVAL);
	cr_assert_eq(tcp_parse_address("noport", host, sizeof(host), &port, err, sizeof(err)),
		     -EINVAL);
	cr_assert(strstr(err, "expected HOST:PORT"), "%s", err);
}

Test(tcp, listens_on_ipv4_and_ipv6_and_reports_busy_port)
{
	int v4 = tcp_listen("127.0.0.1:0", 16, err, sizeof(err));
	char again[64];

	cr_assert_geq(v4, 0, "%s", err);
	cr_assert_gt(tcp_local_port(v4), 0);
	snprintf(again, sizeof(again), "127.0.0.1:%d", tcp_local_port(v4));
	cr_assert_eq(tcp_listen(again, 16, err, sizeof(err)), -EADDRINUSE);
	cr_assert(strstr(err, "Address already in use"), "%s", err);
	close(v4);

	int v6 = tcp_listen("[::1]:0", 16, err, sizeof(err));
	if (v6 >= 0) { /* a machine may have IPv6 off */
		cr_assert_gt(tcp_local_port(v6), 0);
		close(v6);
	}
}
