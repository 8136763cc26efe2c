/*
 * driver: runs a fuzz target without libFuzzer (what ctest runs).
 *
 *     fuzz_NAME [--mutations N] [--seed S] [--max-len L] [--write-seeds DIR]
 *               [FILE|DIR ...]
 *
 * Runs the target's built-in seeds and every FILE (a DIR: each regular file in
 * it), then N inputs made by mutating a random one of those (bit flips, bytes
 * set to edge values, big-endian lengths rewritten, ranges inserted, deleted,
 * repeated, or crossed with another input), from a seeded xorshift PRNG: the
 * same S gives the same inputs. --write-seeds DIR writes the seeds as files
 * and exits (a starting corpus for libFuzzer).
 *
 * Whatever ends the process early (fuzz_fail, a sanitizer report, a signal)
 * first writes the input being run to fuzz-crash-NAME (in $FUZZ_CRASH_DIR,
 * else the working directory): run the binary on that file to replay it.
 * Exit 0 when every input ran; 1 with a message otherwise; 2 on usage.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tests/fuzz/fuzz.h"

#define DRIVER_INPUTS_MAX 4096
#define DRIVER_FILE_MAX (4u << 20)

struct input {
	uint8_t *data;
	size_t len;
};

static struct input inputs[DRIVER_INPUTS_MAX];
static size_t input_count;
static uint64_t rng_state;

/* The input being run, for the crash file. */
static const uint8_t *current;
static size_t current_len;
static char crash_path[4096];

/* Declared weak: present under ASan/UBSan, absent (NULL) otherwise. */
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static void save_current(void)
{
	size_t done = 0;
	int fd;

	if (!current)
		return;
	fd = open(crash_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	while (done < current_len) {
		ssize_t n = write(fd, current + done, current_len - done);

		if (n <= 0)
			break;
		done += (size_t)n;
	}
	close(fd);
	/* Async-signal-safe: no stdio. */
	(void)!write(STDERR_FILENO, "input saved to ", 15);
	(void)!write(STDERR_FILENO, crash_path, strlen(crash_path));
	(void)!write(STDERR_FILENO, "\n", 1);
	current = NULL;
}

static void on_fatal_signal(int signo)
{
	save_current();
	signal(signo, SIG_DFL);
	raise(signo);
}

void fuzz_on_fail(void)
{
	save_current();
}

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static size_t rng_below(size_t n)
{
	return n ? (size_t)(rng() % n) : 0;
}

static void add_input(const void *data, size_t len)
{
	uint8_t *copy;

	if (input_count == DRIVER_INPUTS_MAX) {
		fprintf(stderr, "%s: more than %d inputs; the rest are left out\n", fuzz_target_name,
			DRIVER_INPUTS_MAX);
		return;
	}
	copy = malloc(len ? len : 1);
	if (!copy) {
		fprintf(stderr, "%s: out of memory\n", fuzz_target_name);
		exit(1);
	}
	memcpy(copy, data, len);
	inputs[input_count].data = copy;
	inputs[input_count].len = len;
	input_count++;
}

static void emit_seed(void *arg, const char *name, const void *data, size_t len)
{
	(void)arg;
	(void)name;
	add_input(data, len);
}

static int load_file(const char *path)
{
	struct stat st;
	uint8_t *buf;
	FILE *f;
	size_t n;

	if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > DRIVER_FILE_MAX) {
		fprintf(stderr, "%s: %s: not a regular file of at most %u bytes\n", fuzz_target_name,
			path, DRIVER_FILE_MAX);
		return -1;
	}
	f = fopen(path, "rb");
	buf = malloc((size_t)st.st_size + 1);
	if (!f || !buf) {
		fprintf(stderr, "%s: %s: %s\n", fuzz_target_name, path, strerror(errno));
		if (f)
			fclose(f);
		free(buf);
		return -1;
	}
	n = fread(buf, 1, (size_t)st.st_size, f);
	fclose(f);
	add_input(buf, n);
	free(buf);
	return 0;
}

static int load_path(const char *path)
{
	struct stat st;
	struct dirent **names;
	int count, rc = 0;

	if (stat(path, &st) < 0) {
		fprintf(stderr, "%s: %s: %s\n", fuzz_target_name, path, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode))
		return load_file(path);
	/* Sorted: the same directory gives the same run. */
	count = scandir(path, &names, NULL, alphasort);
	if (count < 0) {
		fprintf(stderr, "%s: %s: %s\n", fuzz_target_name, path, strerror(errno));
		return -1;
	}
	for (int i = 0; i < count; i++) {
		char file[4096];

		if (names[i]->d_name[0] != '.') {
			snprintf(file, sizeof(file), "%s/%s", path, names[i]->d_name);
			if (load_file(file) < 0)
				rc = -1;
		}
		free(names[i]);
	}
	free(names);
	return rc;
}

static const uint32_t edge_values[] = { 0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0xffff,
					0x10000, 0x100000, 0x7fffffff, 0x80000000,
					0xfffffffe, 0xffffffff };

/* One mutation of buf[*len] (capacity cap) in place. */
static void mutate_once(uint8_t *buf, size_t *len, size_t cap)
{
	size_t n = *len, at, span;
	const struct input *other;

	switch (rng_below(8)) {
	case 0: /* flip a bit */
		if (n)
			buf[rng_below(n)] ^= (uint8_t)(1u << rng_below(8));
		break;
	case 1: /* a byte to an edge value or a random one */
		if (n)
			buf[rng_below(n)] = rng_below(2) ? (uint8_t)edge_values[rng_below(5)]
							 : (uint8_t)rng();
		break;
	case 2: /* a big-endian u32 (a frame length, say) to an edge value */
		if (n >= 4) {
			uint32_t v = edge_values[rng_below(sizeof(edge_values) / sizeof(edge_values[0]))];

			at = rng_below(n - 3);
			if (rng_below(2))
				v = ((uint32_t)buf[at] << 24 | (uint32_t)buf[at + 1] << 16 |
				     (uint32_t)buf[at + 2] << 8 | buf[at + 3]) +
				    (uint32_t)rng_below(17) - 8u;
			buf[at] = (uint8_t)(v >> 24);
			buf[at + 1] = (uint8_t)(v >> 16);
			buf[at + 2] = (uint8_t)(v >> 8);
			buf[at + 3] = (uint8_t)v;
		}
		break;
	case 3: /* insert random bytes */
		span = 1 + rng_below(16);
		if (n + span <= cap) {
			at = rng_below(n + 1);
			memmove(buf + at + span, buf + at, n - at);
			for (size_t i = 0; i < span; i++)
				buf[at + i] = (uint8_t)rng();
			*len = n + span;
		}
		break;
	case 4: /* delete a range */
		if (n) {
			at = rng_below(n);
			span = 1 + rng_below(n - at < 64 ? n - at : 64);
			memmove(buf + at, buf + at + span, n - at - span);
			*len = n - span;
		}
		break;
	case 5: /* repeat a range (a frame sent twice, say) */
		if (n) {
			at = rng_below(n);
			span = 1 + rng_below(n - at);
			if (n + span <= cap) {
				memmove(buf + at + 2 * span, buf + at + span, n - at - span);
				memcpy(buf + at + span, buf + at, span);
				*len = n + span;
			}
		}
		break;
	case 6: /* cut the tail */
		if (n)
			*len = rng_below(n);
		break;
	default: /* cross over: our head, another input's tail */
		other = &inputs[rng_below(input_count)];
		at = rng_below(n + 1);
		span = other->len ? rng_below(other->len) : 0;
		if (at + (other->len - span) <= cap) {
			memcpy(buf + at, other->data + span, other->len - span);
			*len = at + (other->len - span);
		}
		break;
	}
}

static void run_one(const uint8_t *data, size_t len)
{
	current = data;
	current_len = len;
	LLVMFuzzerTestOneInput(data, len);
	current = NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: %s [--mutations N] [--seed S] [--max-len L] [--write-seeds DIR] "
			"[FILE|DIR ...]\n", fuzz_target_name);
	exit(2);
}

int main(int argc, char **argv)
{
	unsigned long long mutations = 0, seed = 1, max_len = 65536;
	const char *dir;
	struct timespec t0, t1;
	uint8_t *buf;
	int i;

	for (i = 1; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
		char *end;

		if (i + 1 >= argc)
			usage();
		if (!strcmp(argv[i], "--write-seeds")) {
			fuzz_write_seeds(argv[i + 1]);
			return 0;
		}
		errno = 0;
		unsigned long long v = strtoull(argv[i + 1], &end, 10);

		if (errno || *end || end == argv[i + 1])
			usage();
		if (!strcmp(argv[i], "--mutations"))
			mutations = v;
		else if (!strcmp(argv[i], "--seed"))
			seed = v;
		else if (!strcmp(argv[i], "--max-len") && v > 0 && v <= DRIVER_FILE_MAX)
			max_len = v;
		else
			usage();
		i++;
	}
	dir = getenv("FUZZ_CRASH_DIR");
	snprintf(crash_path, sizeof(crash_path), "%s/fuzz-crash-%s", dir && *dir ? dir : ".",
		 fuzz_target_name);
	if (__sanitizer_set_death_callback)
		__sanitizer_set_death_callback(save_current);
	signal(SIGSEGV, on_fatal_signal);
	signal(SIGBUS, on_fatal_signal);
	signal(SIGFPE, on_fatal_signal);
	signal(SIGILL, on_fatal_signal);
	signal(SIGABRT, on_fatal_signal);

	fuzz_seeds(emit_seed, NULL);
	for (; i < argc; i++)
		if (load_path(argv[i]) < 0)
			return 1;
	if (!input_count) {
		fprintf(stderr, "%s: no inputs\n", fuzz_target_name);
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (size_t k = 0; k < input_count; k++)
		run_one(inputs[k].data, inputs[k].len);

	buf = malloc(max_len);
	if (!buf) {
		fprintf(stderr, "%s: out of memory\n", fuzz_target_name);
		return 1;
	}
	rng_state = seed * 0x9e3779b97f4a7c15ull + 1;
	for (unsigned long long m = 0; m < mutations; m++) {
		const struct input *from = &inputs[rng_below(input_count)];
		size_t len = from->len < max_len ? from->len : max_len;
		unsigned rounds = 1 + (unsigned)rng_below(8);

		memcpy(buf, from->data, len);
		for (unsigned r = 0; r < rounds; r++)
			mutate_once(buf, &len, max_len);
		run_one(buf, len);
	}
	free(buf);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%s: %zu inputs and %llu mutations (seed %llu) ran in %.1f s, no failure\n",
	       fuzz_target_name, input_count, mutations, seed,
	       (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	for (size_t k = 0; k < input_count; k++)
		free(inputs[k].data);
	return 0;
}
