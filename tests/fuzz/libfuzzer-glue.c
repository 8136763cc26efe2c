/*
 * libfuzzer-glue: what driver.c gives a target, for the libFuzzer build
 * (RINGFLY_FUZZ=ON): fuzz_on_fail does nothing (libFuzzer saves the input
 * when the process aborts), and
 * FUZZ_WRITE_SEEDS=DIR writes the target's seeds into DIR at start, a corpus
 * to begin from:
 *
 *     FUZZ_WRITE_SEEDS=corpus ./fuzz_peer -runs=0 corpus && ./fuzz_peer corpus
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

void fuzz_on_fail(void)
{
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

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("FUZZ_WRITE_SEEDS");

	(void)argc;
	(void)argv;
	if (dir && *dir) {
		if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
			fprintf(stderr, "%s: %s: %s\n", fuzz_target_name, dir, strerror(errno));
			exit(1);
		}
		fuzz_seeds(write_seed, (void *)dir);
	}
	return 0;
}
