/* piece: how a task's content is cut into fixed-size pieces. Pure arithmetic. */
#include "storage/piece.h"

#include <assert.h>

#define PIECE_LENGTH_REQUEST_MIN (64ull << 10) /* 64 KiB */
#define PIECE_LENGTH_REQUEST_MAX (1ull << 30)  /* 1 GiB */

_Static_assert((PIECE_LENGTH_MIN & (PIECE_LENGTH_MIN - 1)) == 0, "power of two");
_Static_assert((PIECE_LENGTH_MAX & (PIECE_LENGTH_MAX - 1)) == 0, "power of two");
_Static_assert(PIECE_LENGTH_REQUEST_MAX <= UINT32_MAX, "a piece's size fits piece_size()");

/*
 * "The next power of two of content_length / 500" is read exactly: the
 * smallest power of two p with p >= content_length / 500, that is with
 * 500 * p >= content_length. So content of up to 500 * 4 MiB gets 4 MiB
 * pieces, one byte more gets 8 MiB, and unless the 64 MiB clamp applies a
 * task never has more than 500 pieces.
 */
uint64_t piece_length_for(uint64_t content_length)
{
	uint64_t per_piece, length;

	if (content_length <= PIECE_TARGET_COUNT * PIECE_LENGTH_MIN)
		return PIECE_LENGTH_MIN;
	if (content_length > PIECE_TARGET_COUNT * (PIECE_LENGTH_MAX / 2))
		return PIECE_LENGTH_MAX;
	/* ceil(content_length / 500), in (4 MiB, 32 MiB]: no overflow below. */
	per_piece = (content_length - 1) / PIECE_TARGET_COUNT + 1;
	length = 1ull << (64 - __builtin_clzll(per_piece - 1));
	assert(length > PIECE_LENGTH_MIN && length <= PIECE_LENGTH_MAX);
	assert(length >= per_piece && length / 2 < per_piece);
	return length;
}

bool piece_length_valid(uint64_t piece_length)
{
	return piece_length >= PIECE_LENGTH_REQUEST_MIN &&
	       piece_length <= PIECE_LENGTH_REQUEST_MAX && (piece_length & (piece_length - 1)) == 0;
}

/*
 * A count that does not fit 32 bits (content beyond 2^32 pieces) comes back
 * as UINT32_MAX, which is over PIECE_COUNT_MAX: callers refuse the task.
 */
uint32_t piece_count(uint64_t content_length, uint64_t piece_length)
{
	uint64_t count;

	assert(piece_length > 0);
	count = content_length / piece_length + (content_length % piece_length != 0);
	return count > UINT32_MAX ? UINT32_MAX : (uint32_t)count;
}

/* An offset past 2^64 - 1 comes back as UINT64_MAX: beyond any content. */
uint64_t piece_offset(uint64_t piece_length, uint32_t number)
{
	uint64_t offset;

	if (__builtin_mul_overflow(piece_length, (uint64_t)number, &offset))
		return UINT64_MAX;
	return offset;
}

uint32_t piece_size(uint64_t content_length, uint64_t piece_length, uint32_t number)
{
	uint64_t offset, size;

	assert(piece_length > 0);
	if (__builtin_mul_overflow(piece_length, (uint64_t)number, &offset) ||
	    offset >= content_length)
		return 0;
	size = content_length - offset;
	if (size > piece_length)
		size = piece_length;
	/* Piece lengths in use are at most 1 GiB; anything larger is a caller bug. */
	assert(size <= UINT32_MAX);
	return (uint32_t)size;
}
