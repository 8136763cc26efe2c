/* test_piece: piece length choice, piece count, offsets and sizes, at every edge. */
#include <criterion/criterion.h>
#include <stdint.h>

#include "storage/piece.h"

#define KIB (1ull << 10)
#define MIB (1ull << 20)
#define GIB (1ull << 30)
#define TIB (1ull << 40)

/* Sum of every piece_size is the content length; pieces tile it in order. */
static void expect_tiling(uint64_t content, uint64_t piece_length)
{
	uint32_t count = piece_count(content, piece_length);
	uint64_t total = 0;

	for (uint32_t i = 0; i < count; i++) {
		uint32_t size = piece_size(content, piece_length, i);

		cr_assert_eq(piece_offset(piece_length, i), total, "piece %u", i);
		cr_assert_gt(size, 0, "piece %u of %u", i, count);
		if (i + 1 < count)
			cr_assert_eq(size, piece_length, "piece %u of %u", i, count);
		total += size;
	}
	cr_assert_eq(total, content, "content %llu piece %llu", (unsigned long long)content,
		     (unsigned long long)piece_length);
	cr_assert_eq(piece_size(content, piece_length, count), 0);
}

Test(piece, empty_content)
{
	cr_assert_eq(piece_length_for(0), PIECE_LENGTH_MIN);
	cr_assert_eq(piece_count(0, PIECE_LENGTH_MIN), 0);
	cr_assert_eq(piece_count(0, 1), 0);
	cr_assert_eq(piece_size(0, PIECE_LENGTH_MIN, 0), 0);
	cr_assert_eq(piece_size(0, PIECE_LENGTH_MIN, 1), 0);
	cr_assert_eq(piece_offset(PIECE_LENGTH_MIN, 0), 0);
	expect_tiling(0, PIECE_LENGTH_MIN);
}

Test(piece, one_byte)
{
	cr_assert_eq(piece_length_for(1), PIECE_LENGTH_MIN);
	cr_assert_eq(piece_count(1, PIECE_LENGTH_MIN), 1);
	cr_assert_eq(piece_size(1, PIECE_LENGTH_MIN, 0), 1);
	cr_assert_eq(piece_size(1, PIECE_LENGTH_MIN, 1), 0);
	expect_tiling(1, PIECE_LENGTH_MIN);
}

Test(piece, exactly_one_piece_and_one_off)
{
	const uint64_t p = PIECE_LENGTH_MIN;

	cr_assert_eq(piece_count(p - 1, p), 1);
	cr_assert_eq(piece_size(p - 1, p, 0), p - 1);
	cr_assert_eq(piece_size(p - 1, p, 1), 0);

	cr_assert_eq(piece_count(p, p), 1);
	cr_assert_eq(piece_size(p, p, 0), p);
	cr_assert_eq(piece_size(p, p, 1), 0);

	cr_assert_eq(piece_count(p + 1, p), 2);
	cr_assert_eq(piece_size(p + 1, p, 0), p);
	cr_assert_eq(piece_size(p + 1, p, 1), 1);
	cr_assert_eq(piece_offset(p, 1), p);
	cr_assert_eq(piece_size(p + 1, p, 2), 0);

	cr_assert_eq(piece_count(2 * p, p), 2);
	cr_assert_eq(piece_count(2 * p + 1, p), 3);
	for (uint64_t c = p - 2; c <= p + 2; c++)
		expect_tiling(c, p);
	for (uint64_t c = 2 * p - 2; c <= 2 * p + 2; c++)
		expect_tiling(c, p);
}

Test(piece, last_piece_short)
{
	const uint64_t p = 8 * MIB;
	const uint64_t content = 10 * p + 12345;

	cr_assert_eq(piece_count(content, p), 11);
	cr_assert_eq(piece_offset(p, 10), 10 * p);
	cr_assert_eq(piece_size(content, p, 9), p);
	cr_assert_eq(piece_size(content, p, 10), 12345);
	cr_assert_eq(piece_size(content, p, 11), 0);
	expect_tiling(content, p);
}

Test(piece, small_pieces_tile)
{
	for (uint64_t p = 1; p <= 9; p++)
		for (uint64_t c = 0; c <= 100; c++)
			expect_tiling(c, p);
	for (uint64_t c = 0; c <= 3 * 64 * KIB + 1; c += 4093)
		expect_tiling(c, 64 * KIB);
}

Test(piece, past_the_end)
{
	const uint64_t content = 3 * PIECE_LENGTH_MIN;

	cr_assert_eq(piece_size(content, PIECE_LENGTH_MIN, 2), PIECE_LENGTH_MIN);
	cr_assert_eq(piece_size(content, PIECE_LENGTH_MIN, 3), 0);
	cr_assert_eq(piece_size(content, PIECE_LENGTH_MIN, 1000), 0);
	cr_assert_eq(piece_size(content, PIECE_LENGTH_MIN, UINT32_MAX), 0);
	/* number * piece_length past 2^64: still past the end, not wrapped. */
	cr_assert_eq(piece_size(UINT64_MAX, 1ull << 40, UINT32_MAX), 0);
	cr_assert_eq(piece_size(UINT64_MAX, 1ull << 33, 1u << 31), 0);
	cr_assert_eq(piece_offset(1ull << 33, 1u << 31), UINT64_MAX);
	cr_assert_eq(piece_offset(UINT64_MAX, 2), UINT64_MAX);
	cr_assert_eq(piece_offset(UINT64_MAX, 1), UINT64_MAX);
	cr_assert_eq(piece_offset(1ull << 32, UINT32_MAX), (1ull << 32) * UINT32_MAX);
}

Test(piece, huge_content)
{
	/* 1 TiB: 1 TiB / 500 is ~2.1 GiB, so the 64 MiB clamp; 16384 pieces. */
	cr_assert_eq(piece_length_for(TIB), PIECE_LENGTH_MAX);
	cr_assert_eq(piece_count(TIB, PIECE_LENGTH_MAX), 16384);
	cr_assert_eq(piece_size(TIB, PIECE_LENGTH_MAX, 16383), PIECE_LENGTH_MAX);
	cr_assert_eq(piece_size(TIB, PIECE_LENGTH_MAX, 16384), 0);
	cr_assert_eq(piece_offset(PIECE_LENGTH_MAX, 16383), TIB - PIECE_LENGTH_MAX);
	cr_assert_eq(piece_count(TIB + 1, PIECE_LENGTH_MAX), 16385);
	cr_assert_eq(piece_size(TIB + 1, PIECE_LENGTH_MAX, 16384), 1);

	/* The largest task at 64 MiB pieces: PIECE_COUNT_MAX pieces, 1 PiB. */
	const uint64_t pib = (uint64_t)PIECE_COUNT_MAX * PIECE_LENGTH_MAX;
	cr_assert_eq(pib, 1ull << 50);
	cr_assert_eq(piece_count(pib, PIECE_LENGTH_MAX), PIECE_COUNT_MAX);
	cr_assert_gt(piece_count(pib + 1, PIECE_LENGTH_MAX), PIECE_COUNT_MAX);
	cr_assert_eq(piece_size(pib, PIECE_LENGTH_MAX, PIECE_COUNT_MAX - 1), PIECE_LENGTH_MAX);

	/* Counts past 32 bits saturate, and so stay over PIECE_COUNT_MAX. */
	cr_assert_eq(piece_length_for(UINT64_MAX), PIECE_LENGTH_MAX);
	cr_assert_eq(piece_count(UINT64_MAX, PIECE_LENGTH_MAX), UINT32_MAX);
	cr_assert_eq(piece_count(UINT64_MAX, 1), UINT32_MAX);
	cr_assert_eq(piece_count((uint64_t)UINT32_MAX, 1), UINT32_MAX);
	cr_assert_eq(piece_count((uint64_t)UINT32_MAX - 1, 1), UINT32_MAX - 1);
	cr_assert_eq(piece_count(UINT64_MAX, 1ull << 63), 2);
	cr_assert_eq(piece_count(UINT64_MAX, UINT64_MAX), 1);
	cr_assert_eq(piece_size(UINT64_MAX, PIECE_LENGTH_MAX, 7), PIECE_LENGTH_MAX);
	cr_assert_eq(piece_size(UINT64_MAX, GIB, UINT32_MAX), GIB);
	/* The last piece of 2^64 - 1 bytes at 4 GiB: offset 2^64 - 2^32, no wrap. */
	cr_assert_eq(piece_offset(1ull << 32, UINT32_MAX), UINT64_MAX - UINT32_MAX);
	cr_assert_eq(piece_size(UINT64_MAX, 1ull << 32, UINT32_MAX), UINT32_MAX);
}

/* The rule: smallest power of two p with 500 * p >= content, clamped to [4, 64] MiB. */
Test(piece, length_for_thresholds)
{
	const uint64_t low = PIECE_TARGET_COUNT * PIECE_LENGTH_MIN;  /* 500 * 4 MiB */
	const uint64_t high = PIECE_TARGET_COUNT * PIECE_LENGTH_MAX; /* 500 * 64 MiB */

	cr_assert_eq(piece_length_for(1), 4 * MIB);
	cr_assert_eq(piece_length_for(GIB), 4 * MIB);
	cr_assert_eq(piece_length_for(low - 1), 4 * MIB);
	cr_assert_eq(piece_length_for(low), 4 * MIB);
	cr_assert_eq(piece_count(low, piece_length_for(low)), 500);
	cr_assert_eq(piece_length_for(low + 1), 8 * MIB);
	cr_assert_eq(piece_count(low + 1, piece_length_for(low + 1)), 251);

	cr_assert_eq(piece_length_for(500 * 8 * MIB), 8 * MIB);
	cr_assert_eq(piece_length_for(500 * 8 * MIB + 1), 16 * MIB);
	cr_assert_eq(piece_length_for(500 * 16 * MIB), 16 * MIB);
	cr_assert_eq(piece_length_for(500 * 16 * MIB + 1), 32 * MIB);
	cr_assert_eq(piece_length_for(500 * 32 * MIB), 32 * MIB);
	/* 64 MiB pieces start once content / 500 passes 32 MiB... */
	cr_assert_eq(piece_length_for(500 * 32 * MIB + 1), 64 * MIB);
	/* ...and stay there: past 500 * 64 MiB the count grows beyond 500. */
	cr_assert_eq(piece_length_for(high - 1), 64 * MIB);
	cr_assert_eq(piece_length_for(high), 64 * MIB);
	cr_assert_eq(piece_count(high, PIECE_LENGTH_MAX), 500);
	cr_assert_eq(piece_length_for(high + 1), 64 * MIB);
	cr_assert_eq(piece_count(high + 1, PIECE_LENGTH_MAX), 501);
	cr_assert_eq(piece_length_for(2 * high), 64 * MIB);
}

/* Against a plain loop, over content lengths of every magnitude. */
Test(piece, length_for_is_next_power_of_two)
{
	uint64_t seed = 0x9e3779b97f4a7c15ull;

	for (int round = 0; round < 200000; round++) {
		uint64_t content;

		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		content = seed >> (seed % 64);

		uint64_t p = 1;
		while (p * PIECE_TARGET_COUNT < content && p < PIECE_LENGTH_MAX)
			p <<= 1;
		if (p < PIECE_LENGTH_MIN)
			p = PIECE_LENGTH_MIN;

		uint64_t got = piece_length_for(content);
		cr_assert_eq(got, p, "content %llu: %llu, want %llu", (unsigned long long)content,
			     (unsigned long long)got, (unsigned long long)p);
		cr_assert_eq(got & (got - 1), 0);
		if (got < PIECE_LENGTH_MAX)
			cr_assert_leq(piece_count(content, got), PIECE_TARGET_COUNT);
		if (got > PIECE_LENGTH_MIN)
			cr_assert_gt(piece_count(content, got / 2), PIECE_TARGET_COUNT);
	}
	/* Around every power of two in range. */
	for (uint64_t p = PIECE_LENGTH_MIN; p <= PIECE_LENGTH_MAX / 2; p <<= 1) {
		cr_assert_eq(piece_length_for(500 * p), p);
		cr_assert_eq(piece_length_for(500 * p + 1), 2 * p);
		cr_assert_eq(piece_length_for(500 * p - 1), p);
	}
}

Test(piece, length_valid_bounds)
{
	cr_assert_not(piece_length_valid(0));
	cr_assert_not(piece_length_valid(1));
	cr_assert_not(piece_length_valid(32 * KIB));
	cr_assert_not(piece_length_valid(64 * KIB - 1));
	cr_assert(piece_length_valid(64 * KIB));
	cr_assert_not(piece_length_valid(64 * KIB + 1));
	cr_assert(piece_length_valid(128 * KIB));
	cr_assert_not(piece_length_valid(96 * KIB));
	cr_assert(piece_length_valid(PIECE_LENGTH_MIN));
	cr_assert(piece_length_valid(PIECE_LENGTH_MAX));
	cr_assert_not(piece_length_valid(PIECE_LENGTH_MIN + PIECE_LENGTH_MAX));
	cr_assert(piece_length_valid(512 * MIB));
	cr_assert_not(piece_length_valid(GIB - 1));
	cr_assert(piece_length_valid(GIB));
	cr_assert_not(piece_length_valid(GIB + 1));
	cr_assert_not(piece_length_valid(2 * GIB));
	cr_assert_not(piece_length_valid(1ull << 63));
	cr_assert_not(piece_length_valid(UINT64_MAX));

	int valid = 0;
	for (int shift = 0; shift < 64; shift++)
		valid += piece_length_valid(1ull << shift);
	cr_assert_eq(valid, 15); /* 2^16 .. 2^30 */
}

/* A request's own piece length is used as is: sizes up to 1 GiB fit uint32_t. */
Test(piece, requested_lengths)
{
	expect_tiling(3 * GIB + 5, GIB);
	cr_assert_eq(piece_count(3 * GIB + 5, GIB), 4);
	cr_assert_eq(piece_size(3 * GIB + 5, GIB, 2), GIB);
	cr_assert_eq(piece_size(3 * GIB + 5, GIB, 3), 5);
	expect_tiling(1 * MIB + 3, 64 * KIB);
	cr_assert_eq(piece_count(1 * MIB + 3, 64 * KIB), 17);
	/* A piece length over 4 GiB is fine while the piece itself is smaller. */
	cr_assert_eq(piece_size(100, 1ull << 40, 0), 100);
	cr_assert_eq(piece_count(100, 1ull << 40), 1);
}
