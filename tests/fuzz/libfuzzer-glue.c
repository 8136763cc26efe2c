/*
 * libfuzzer-glue: what driver.c gives a target, for the libFuzzer build
 * (RINGFLY_FUZZ=ON): fuzz_on_fail does nothing (libFuzzer saves the input
 * when the process aborts), and
 * FUZZ_WRITE_SEEDS=DIR writes the target's seeds into DIR at start, a corpus
 * to begin from:
 *
 *     FUZZ_WRITE_SEEDS=corpus ./fuzz_peer -runs=0 corpus && ./fuzz_peer corpus
 */
#include <stdlib.h>

#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

void fuzz_on_fail(void)
{
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("FUZZ_WRITE_SEEDS");

	(void)argc;
	(void)argv;
	if (dir && *dir)
		fuzz_write_seeds(dir);
	return 0;
}
