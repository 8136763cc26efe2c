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

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Hands each seed of the target to emit (name, bytes): valid inputs that
 * reach deep, from which the mutations start. */
typedef void (*fuzz_emit_fn)(void *arg, const char *name, const void *data, size_t len);
void fuzz_seeds(fuzz_emit_fn emit, void *arg);

/* The target's name, for messages and crash files. */
extern const char fuzz_target_name[];

/* A property does not hold: prints "fuzz_NAME: " and the reason, then
 * aborts (the driver saves the input first; libFuzzer does too). */
__attribute__((noreturn, format(printf, 1, 2))) void fuzz_fail(const char *fmt, ...);

#endif
