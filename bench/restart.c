/*
 * Restart benchmark: how fast ringflyd answers again after kill -9, restarted immediately.
 *
 * ringfly-bench-restart [--ringflyd PATH] [--ref-listener PATH] [--cycles N] [--dir DIR]
 *                       [--block N] [--keep]
 *
 * Each cycle forks and execs the server on DIR/<name>.sock, times from just before fork()
 * until the socket accepts a connection *from that new pid*, kills it with SIGKILL, reaps
 * it and starts the next cycle at once, so every start but the very first finds the socket
 * file of a daemon that died a moment ago (the stale-socket case DESIGN.md is about).
 *
 * Why SO_PEERCRED: a killed io_uring daemon keeps its listening socket accepting for a few
 * milliseconds after waitpid() returns (PLATFORM.md). A bare "connect() succeeded" would
 * then time the corpse. A connection counts only when SO_PEERCRED names the child's pid;
 * connections that reach a dead pid are counted as "stale accepts".
 *
 * ringflyd and the reference listener (ref-listener.c: the same lock/probe/bind/rename
 * startup and nothing else) run in alternating blocks of --block cycles, so both see the
 * same weather on a noisy VM. Prints median/p90/p99/max of exec-to-accepting, the idle RSS
 * (VmRSS sampled every 10th cycle after the server answered), failures with their reasons,
 * and ours/reference ratios. Exit status: 0 when no start failed, 1 when any did (missed
 * targets are reported, not fatal), 2 on bad usage.
 */
#ifndef _GNU_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#endif

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define POLL_INTERVAL_NS    100000L /* connect() probe every 100 µs */
#define START_DEADLINE_MS   2000    /* a start not accepting by then is a failure */
#define RSS_SAMPLE_EVERY    10	    /* read VmRSS on every 10th cycle */
#define RSS_SETTLE_MS	    20	    /* let the server go idle before reading VmRSS */
#define FAILURE_REASONS_MAX 8
#define REASON_LENGTH_MAX   240

#define TARGET_MEDIAN_MS 15.0
#define TARGET_P99_MS	 30.0
#define TARGET_RSS_MIB	 8.0

struct failure_reason {
	char text[REASON_LENGTH_MAX];
	unsigned count;
};

/* One server under test: how to start it and what it measured. */
struct subject {
	const char *name;
	const char *binary;
	char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char log_path[PATH_MAX];
	char data_dir[PATH_MAX];
	bool is_ringflyd;

	double *start_ms; /* one per successful cycle, in order */
	unsigned starts;
	double *rss_mib;
	unsigned rss_samples;
	unsigned cycles_run;
	unsigned failures;
	unsigned stale_sockets_faced; /* socket file present before the start */
	unsigned stale_accepts;	      /* cycles where a dead pid still accepted */
	struct failure_reason reasons[FAILURE_REASONS_MAX];
	unsigned reasons_used;
};

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ns(long ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000L, .tv_nsec = ns % 1000000000L };

	while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
		;
}

static void record_failure(struct subject *s, const char *reason)
{
	unsigned i;

	s->failures++;
	for (i = 0; i < s->reasons_used; i++) {
		if (strcmp(s->reasons[i].text, reason) == 0) {
			s->reasons[i].count++;
			return;
		}
	}
	if (s->reasons_used == FAILURE_REASONS_MAX)
		i = FAILURE_REASONS_MAX - 1; /* lump the rest into the last slot */
	else
		i = s->reasons_used++;
	snprintf(s->reasons[i].text, sizeof(s->reasons[i].text), "%s", reason);
	s->reasons[i].count++;
}

/* First line the server wrote to its log since OFFSET, for failure reasons. */
static void log_first_line_since(const char *log_path, off_t offset, char *line, size_t size)
{
	ssize_t n;
	char *newline;
	int fd;

	line[0] = '\0';
	fd = open(log_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	n = pread(fd, line, size - 1, offset);
	close(fd);
	if (n <= 0) {
		line[0] = '\0';
		return;
	}
	line[n] = '\0';
	newline = strchr(line, '\n');
	if (newline)
		*newline = '\0';
}

/* VmRSS of PID in MiB, or a negative number when it cannot be read. */
static double read_rss_mib(pid_t pid)
{
	char path[64], line[256];
	double rss_mib = -1.0;
	long rss_kib;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1.0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "VmRSS: %ld kB", &rss_kib) == 1) {
			rss_mib = (double)rss_kib / 1024.0;
			break;
		}
	}
	fclose(f);
	return rss_mib;
}

/*
 * Probe the socket once. Returns the pid that listens on it (> 0), or 0 when nothing
 * accepted the connection this time.
 */
static pid_t probe_listener(const struct sockaddr_un *address)
{
	struct ucred peer;
	socklen_t peer_length = sizeof(peer);
	pid_t pid = 0;
	int fd;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return 0;
	if (connect(fd, (const struct sockaddr *)address, sizeof(*address)) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_length) == 0)
		pid = peer.pid;
	close(fd);
	return pid;
}

static pid_t spawn(const struct subject *s, int log_fd)
{
	char *argv_ringflyd[] = {
		(char *)s->binary,
		"--socket",
		(char *)s->socket_path,
		"--data-dir",
		(char *)s->data_dir,
		"--log-level",
		"warn",
		NULL,
	};
	char *argv_reference[] = { (char *)s->binary, (char *)s->socket_path, NULL };
	pid_t pid;
	int null_fd;

	pid = fork();
	if (pid != 0)
		return pid; /* parent, or -1 */

	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null_fd >= 0) {
		dup2(null_fd, STDIN_FILENO);
		dup2(null_fd, STDOUT_FILENO);
	}
	dup2(log_fd, STDERR_FILENO);
	execv(s->binary, s->is_ringflyd ? argv_ringflyd : argv_reference);
	dprintf(STDERR_FILENO, "restart-bench: exec %s: %s\n", s->binary, strerror(errno));
	_exit(127);
}

/* One cycle: start, wait until the new pid accepts, maybe sample RSS, kill -9, reap. */
static void run_cycle(struct subject *s, int log_fd, bool sample_rss)
{
	struct sockaddr_un address = { .sun_family = AF_UNIX };
	char reason[REASON_LENGTH_MAX], log_line[160];
	bool stale_accept_seen = false;
	double start, deadline;
	struct stat st;
	int status;
	off_t log_offset;
	pid_t pid, listener;

	memcpy(address.sun_path, s->socket_path, sizeof(address.sun_path));
	if (lstat(s->socket_path, &st) == 0 && S_ISSOCK(st.st_mode))
		s->stale_sockets_faced++;
	log_offset = lseek(log_fd, 0, SEEK_END);
	s->cycles_run++;

	start = now_ms();
	deadline = start + START_DEADLINE_MS;
	pid = spawn(s, log_fd);
	if (pid < 0) {
		snprintf(reason, sizeof(reason), "fork: %s", strerror(errno));
		record_failure(s, reason);
		return;
	}

	for (;;) {
		listener = probe_listener(&address);
		if (listener == pid)
			break;
		if (listener > 0)
			stale_accept_seen = true;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			log_first_line_since(s->log_path, log_offset, log_line, sizeof(log_line));
			if (WIFEXITED(status))
				snprintf(reason, sizeof(reason), "exited with status %d: %s",
					 WEXITSTATUS(status), log_line);
			else
				snprintf(reason, sizeof(reason), "killed by signal %d: %s",
					 WTERMSIG(status), log_line);
			record_failure(s, reason);
			return;
		}
		if (now_ms() > deadline) {
			snprintf(reason, sizeof(reason), "not accepting within %d ms",
				 START_DEADLINE_MS);
			record_failure(s, reason);
			goto out_kill;
		}
		sleep_ns(POLL_INTERVAL_NS);
	}
	s->start_ms[s->starts++] = now_ms() - start;
	if (stale_accept_seen)
		s->stale_accepts++;

	if (sample_rss) {
		double rss_mib;

		sleep_ns(RSS_SETTLE_MS * 1000000L);
		rss_mib = read_rss_mib(pid);
		if (rss_mib >= 0)
			s->rss_mib[s->rss_samples++] = rss_mib;
	}

out_kill:
	kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
}

static int compare_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Percentile P (0..100) of SORTED[0..N), linear interpolation between closest ranks. */
static double percentile(const double *sorted, unsigned n, double p)
{
	double rank, fraction;
	unsigned low;

	if (n == 0)
		return NAN;
	rank = p / 100.0 * (double)(n - 1);
	low = (unsigned)rank;
	fraction = rank - (double)low;
	if (low + 1 >= n)
		return sorted[n - 1];
	return sorted[low] + fraction * (sorted[low + 1] - sorted[low]);
}

struct summary {
	double first, median, p90, p99, max, rss_median;
};

static struct summary summarise(struct subject *s)
{
	struct summary out = { NAN, NAN, NAN, NAN, NAN, NAN };

	if (s->starts > 0) {
		out.first = s->start_ms[0];
		qsort(s->start_ms, s->starts, sizeof(double), compare_double);
		out.median = percentile(s->start_ms, s->starts, 50);
		out.p90 = percentile(s->start_ms, s->starts, 90);
		out.p99 = percentile(s->start_ms, s->starts, 99);
		out.max = s->start_ms[s->starts - 1];
	}
	if (s->rss_samples > 0) {
		qsort(s->rss_mib, s->rss_samples, sizeof(double), compare_double);
		out.rss_median = percentile(s->rss_mib, s->rss_samples, 50);
	}
	return out;
}

static void print_row(const struct subject *s, const struct summary *m)
{
	printf("  %-10s %6u %8u %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %7u/%-5u %6u\n", s->name,
	       s->cycles_run, s->failures, m->median, m->p90, m->p99, m->max, m->first,
	       m->rss_median, s->stale_sockets_faced, s->cycles_run, s->stale_accepts);
}

static void print_failures(const struct subject *s)
{
	for (unsigned i = 0; i < s->reasons_used; i++)
		printf("  %s failure x%u: %s\n", s->name, s->reasons[i].count, s->reasons[i].text);
}

static const char *verdict(double value, double target)
{
	if (isnan(value))
		return "no data";
	return value <= target ? "met" : "MISSED";
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	remove(path);
	return 0;
}

static int subject_init(struct subject *s, const char *name, const char *binary, const char *dir,
			bool is_ringflyd, unsigned cycles)
{
	const char *socket_name = is_ringflyd ? "ringflyd.sock" : "ref.sock";

	memset(s, 0, sizeof(*s));
	s->name = name;
	s->binary = binary;
	s->is_ringflyd = is_ringflyd;
	if (snprintf(s->socket_path, sizeof(s->socket_path), "%s/%s", dir, socket_name) >=
	    (int)sizeof(s->socket_path) - 16) {
		fprintf(stderr, "restart-bench: %s: directory path too long for a Unix socket\n",
			dir);
		return -ENAMETOOLONG;
	}
	snprintf(s->log_path, sizeof(s->log_path), "%s/%s.log", dir,
		 is_ringflyd ? "ringflyd" : "ref-listener");
	snprintf(s->data_dir, sizeof(s->data_dir), "%s/data", dir);
	s->start_ms = calloc(cycles, sizeof(double));
	s->rss_mib = calloc(cycles / RSS_SAMPLE_EVERY + 1, sizeof(double));
	if (!s->start_ms || !s->rss_mib)
		return -ENOMEM;
	if (access(binary, X_OK) < 0) {
		fprintf(stderr, "restart-bench: %s: %s\n", binary, strerror(errno));
		return -errno;
	}
	return 0;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ringfly-bench-restart [--ringflyd PATH] [--ref-listener PATH]\n"
		"                             [--cycles N] [--dir DIR] [--block N] [--keep]\n"
		"  --ringflyd PATH      daemon to measure (without it only the reference runs)\n"
		"  --ref-listener PATH  reference listener (default: ringfly-bench-ref-listener\n"
		"                       beside this program)\n"
		"  --cycles N           kill -9/restart cycles per server (default 1000)\n"
		"  --dir DIR            work directory (default: a new temp dir, removed after)\n"
		"  --block N            cycles per block; servers alternate blocks (default 50)\n"
		"  --keep               keep the work directory (logs) when it is a temp dir\n");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "ringflyd", required_argument, NULL, 'd' },
		{ "ref-listener", required_argument, NULL, 'r' },
		{ "cycles", required_argument, NULL, 'c' },
		{ "dir", required_argument, NULL, 'D' },
		{ "block", required_argument, NULL, 'b' },
		{ "keep", no_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char ref_default[PATH_MAX], temp_dir[] = "/tmp/ringfly-bench-restart.XXXXXX";
	const char *ringflyd = NULL, *ref_listener = NULL, *dir = NULL;
	struct subject subjects[2];
	unsigned cycles = 1000, block = 50, subject_count = 0, done, i;
	bool keep = false, made_dir = false, progress = isatty(STDERR_FILENO);
	struct summary summaries[2];
	int log_fds[2], opt, exit_code = 0;

	while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		switch (opt) {
		case 'd':
			ringflyd = optarg;
			break;
		case 'r':
			ref_listener = optarg;
			break;
		case 'c':
			cycles = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'D':
			dir = optarg;
			break;
		case 'b':
			block = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'k':
			keep = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || cycles == 0 || block == 0) {
		usage(stderr);
		return 2;
	}

	if (!ref_listener) {
		ssize_t n = readlink("/proc/self/exe", ref_default, sizeof(ref_default) - 32);
		if (n < 0) {
			fprintf(stderr, "restart-bench: readlink /proc/self/exe: %s\n",
				strerror(errno));
			return 1;
		}
		ref_default[n] = '\0';
		strcpy(strrchr(ref_default, '/') + 1, "ringfly-bench-ref-listener");
		ref_listener = ref_default;
	}

	if (dir) {
		if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
			fprintf(stderr, "restart-bench: mkdir %s: %s\n", dir, strerror(errno));
			return 1;
		}
	} else {
		dir = mkdtemp(temp_dir);
		if (!dir) {
			fprintf(stderr, "restart-bench: mkdtemp: %s\n", strerror(errno));
			return 1;
		}
		made_dir = true;
	}

	if (ringflyd) {
		if (subject_init(&subjects[subject_count], "ringflyd", ringflyd, dir, true,
				 cycles) < 0)
			return 1;
		subject_count++;
	}
	if (subject_init(&subjects[subject_count], "reference", ref_listener, dir, false, cycles) <
	    0)
		return 1;
	subject_count++;
	for (i = 0; i < subject_count; i++) {
		log_fds[i] =
			open(subjects[i].log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (log_fds[i] < 0) {
			fprintf(stderr, "restart-bench: open %s: %s\n", subjects[i].log_path,
				strerror(errno));
			return 1;
		}
	}

	printf("restart benchmark: fork+exec to accepting on the new pid, kill -9, restart at "
	       "once\n");
	printf("  dir        %s\n", dir);
	for (i = 0; i < subject_count; i++)
		printf("  %-10s %s\n", subjects[i].name, subjects[i].binary);
	printf("  cycles     %u each, alternating blocks of %u, probe every %ld us, "
	       "deadline %d ms\n",
	       cycles, block, POLL_INTERVAL_NS / 1000, START_DEADLINE_MS);
	fflush(stdout);

	for (done = 0; done < cycles; done += block) {
		unsigned this_block = cycles - done < block ? cycles - done : block;

		for (i = 0; i < subject_count; i++) {
			for (unsigned c = 0; c < this_block; c++) {
				unsigned cycle = done + c + 1;

				run_cycle(&subjects[i], log_fds[i], cycle % RSS_SAMPLE_EVERY == 0);
			}
		}
		if (progress)
			fprintf(stderr, "\r  %u/%u cycles", done + this_block, cycles);
	}
	if (progress)
		fprintf(stderr, "\n");

	/* Leave nothing running: the last cycle killed every server already. */
	printf("\n  %-10s %6s %8s %8s %8s %8s %8s %8s %8s %13s %6s\n", "", "cycles", "failures",
	       "median", "p90", "p99", "max", "first", "idle RSS", "stale socket", "stale");
	printf("  %-10s %6s %8s %8s %8s %8s %8s %8s %8s %13s %6s\n", "", "", "", "ms", "ms", "ms",
	       "ms", "ms", "MiB", "faced", "accept");
	for (i = 0; i < subject_count; i++) {
		summaries[i] = summarise(&subjects[i]);
		print_row(&subjects[i], &summaries[i]);
		if (subjects[i].failures)
			exit_code = 1;
	}
	for (i = 0; i < subject_count; i++)
		print_failures(&subjects[i]);

	if (subject_count == 2) {
		printf("\n  ratio ours/reference: median %.2f, p99 %.2f\n",
		       summaries[0].median / summaries[1].median,
		       summaries[0].p99 / summaries[1].p99);
		printf("  targets (ringflyd): median %.2f ms <= %.0f ms: %s; p99 %.2f ms <= %.0f ms:"
		       " %s; idle RSS %.2f MiB <= %.0f MiB: %s\n",
		       summaries[0].median, TARGET_MEDIAN_MS,
		       verdict(summaries[0].median, TARGET_MEDIAN_MS), summaries[0].p99,
		       TARGET_P99_MS, verdict(summaries[0].p99, TARGET_P99_MS),
		       summaries[0].rss_median, TARGET_RSS_MIB,
		       verdict(summaries[0].rss_median, TARGET_RSS_MIB));
	} else {
		printf("\n  (no --ringflyd: reference only, no ratio)\n");
	}
	printf("  first = the very first start (cold caches, no stale socket); stale accept = "
	       "cycles where a killed\n  pid still accepted a probe before the new one "
	       "listened\n");

	for (i = 0; i < subject_count; i++) {
		close(log_fds[i]);
		free(subjects[i].start_ms);
		free(subjects[i].rss_mib);
	}
	if (made_dir && !keep)
		nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	else if (made_dir)
		printf("  kept %s\n", dir);
	return exit_code;
}
