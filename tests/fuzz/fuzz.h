/*
 * fuzz: what every fuzz target provides (tests/fuzz/README.md).
 *
 * A target is one LLVMFuzzerTestOneInput, built two ways: with clang's
 * libFuzzer (RINGFLY_FUZZ=ON, for long coverage-guided runs), or with
 * driver.c (every build; what ctest runs): the target's seeds, any corpus
 * files given, then a fixed number of seeded random mutations of them.
 *
 * A target checks what must hold for every input and calls fuzz_fail() when
 * it does not; memory errors are the sanitizers' to find (the Sanitize build
 * runs the same tests).
 */
#ifndef RINGFLY_TESTS_FUZZ_H
#define RINGFLY_TESTS_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "rpc/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Hands each seed of the target to emit (name, bytes): valid inputs that
 * reach deep, from which the mutations start. */
typedef void (*fuzz_emit_fn)(void *arg, const char *name, const void *data, size_t len);
void fuzz_seeds(fuzz_emit_fn emit, void *arg);

/* The target's name, for messages and crash files. */
extern const char fuzz_target_name[];

/* A property does not hold: prints "fuzz_NAME: " and the reason, calls
 * fuzz_on_fail, then aborts. */
__attribute__((noreturn, format(printf, 1, 2))) void fuzz_fail(const char *fmt, ...);
/* The driver saves the input being run; under libFuzzer nothing (it saves
 * the input itself when the process aborts). */
void fuzz_on_fail(void);

/* --- shared by the targets (fuzz-util.c). */

/* Turns of a loop no longer than 1 ms: fuzz_tick returns when something
 * calls loop_stop, or when its timer fires. Set `loop`; keep the ticker for
 * the loop's life (its timer may be in flight). */
struct fuzz_ticker {
	struct loop *loop;
	struct loop_op op;
	bool armed;
};
void fuzz_tick(struct fuzz_ticker *t);

/* Open descriptors of this process. */
unsigned fuzz_count_fds(void);
/* A new directory $TMPDIR/NAME.XXXXXX (/tmp without TMPDIR), removed with
 * its content at exit; one per process. */
const char *fuzz_temp_dir(const char *name);
/* Writes the target's seeds as DIR/seed-NAME (DIR made if missing); exits 1
 * with the path and the reason when it cannot. */
void fuzz_write_seeds(const char *dir);
/* frame_pack into out[cap]; a frame that does not pack is a failure. */
size_t fuzz_put_frame(uint8_t *out, size_t cap, uint8_t type, const ProtobufCMessage *msg);

#endif
