/* fuzz-util: what the targets share (fuzz.h). */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

void fuzz_fail(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", fuzz_target_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
	fuzz_on_fail();
	abort();
}

static void ticker_done(struct loop_op *op, int res, uint32_t flags)
{
	struct fuzz_ticker *t = op->owner;

	(void)res;
	(void)flags;
	t->armed = false;
	loop_stop(t->loop);
}

void fuzz_tick(struct fuzz_ticker *t)
{
	if (!t->armed) {
		loop_op_init(&t->op, ticker_done, t);
		if (loop_timeout(t->loop, &t->op, 1) < 0)
			fuzz_fail("cannot queue a timer");
		t->armed = true;
	}
	if (loop_run(t->loop) < 0)
		fuzz_fail("the loop failed");
}

unsigned fuzz_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	unsigned n = 0;

	if (!d)
		fuzz_fail("/proc/self/fd: %s", strerror(errno));
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static char temp_dir[256];

static void temp_dir_remove(void)
{
	char cmd[sizeof(temp_dir) + 16];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", temp_dir);
	(void)!system(cmd);
}

const char *fuzz_temp_dir(const char *name)
{
	const char *tmp = getenv("TMPDIR");

	if (temp_dir[0])
		fuzz_fail("fuzz_temp_dir: one per process");
	snprintf(temp_dir, sizeof(temp_dir), "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", name);
	if (!mkdtemp(temp_dir))
		fuzz_fail("mkdtemp %s: %s", temp_dir, strerror(errno));
	atexit(temp_dir_remove);
	return temp_dir;
}

static void write_seed(void *arg, const char *name, const void *data, size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/seed-%s", (const char *)arg, name);
	f = fopen(path, "wb");
	if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
		fprintf(stderr, "%s: cannot write %s: %s\n", fuzz_target_name, path, strerror(errno));
		exit(1);
	}
}

void fuzz_write_seeds(const char *dir)
{
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "%s: %s: %s\n", fuzz_target_name, dir, strerror(errno));
		exit(1);
	}
	fuzz_seeds(write_seed, (void *)dir);
}

size_t fuzz_put_frame(uint8_t *out, size_t cap, uint8_t type, const ProtobufCMessage *msg)
{
	ssize_t n = frame_pack(type, msg, out, cap);

	if (n < 0)
		fuzz_fail("a %s does not pack: %zd", frame_type_name(type), n);
	return (size_t)n;
}
