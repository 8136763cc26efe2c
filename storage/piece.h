/* piece: how a task's content is cut into fixed-size pieces. Pure arithmetic. */
#ifndef RINGFLY_STORAGE_PIECE_H
#define RINGFLY_STORAGE_PIECE_H

#include <stdbool.h>
#include <stdint.h>

#define PIECE_LENGTH_MIN (4ull << 20)	/* 4 MiB */
#define PIECE_LENGTH_MAX (64ull << 20)	/* 64 MiB */
#define PIECE_TARGET_COUNT 500ull
#define PIECE_COUNT_MAX (1u << 24)	/* a task has at most this many pieces */

/*
 * The piece length for content of `content_length` bytes: the next power of
 * two of content_length / 500, clamped to [4 MiB, 64 MiB] (DESIGN.md). A
 * length the request sets wins if it is a power of two within
 * [64 KiB, 1 GiB]; piece_length_valid says whether it is.
 */
uint64_t piece_length_for(uint64_t content_length);
bool piece_length_valid(uint64_t piece_length);

/* Number of pieces: 0 for empty content, else ceil(content / piece_length). */
uint32_t piece_count(uint64_t content_length, uint64_t piece_length);

/* Offset of piece `number` in the content. */
uint64_t piece_offset(uint64_t piece_length, uint32_t number);

/* Bytes in piece `number` (the last one may be short); 0 if number is past
 * the end. */
uint32_t piece_size(uint64_t content_length, uint64_t piece_length, uint32_t number);

#endif
