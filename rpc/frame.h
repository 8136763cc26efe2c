/* frame: the wire framing every ringfly connection carries, with size limits. */
#ifndef RINGFLY_RPC_FRAME_H
#define RINGFLY_RPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <protobuf-c/protobuf-c.h>

#include "rpc/ringfly.pb-c.h"

/*
 * A frame is
 *
 *     u32 length (big endian) | u8 type | protobuf-c message [| raw payload]
 *
 * where `length` counts the type byte and the message: 1 + packed size. A type
 * marked as carrying a payload (later: PieceHeader) is followed by exactly the
 * number of raw bytes its message states, outside `length`, so a receiver can
 * splice those bytes without parsing them.
 *
 * Every type has a maximum message size (default FRAME_MESSAGE_MAX_DEFAULT).
 * The decoder rejects a length over the type's maximum, or over the caller's
 * limit, before anything is allocated, so a hostile peer cannot make us
 * allocate more than the limit.
 */

#define FRAME_HEADER_SIZE 5u
#define FRAME_MESSAGE_MAX_DEFAULT (1u << 20) /* 1 MiB */

enum frame_type {
	FRAME_TYPE_HELLO = 1,
	FRAME_TYPE_ERROR = 2,
	FRAME_TYPE_HEALTH_REQUEST = 3,
	FRAME_TYPE_HEALTH_RESPONSE = 4,
	FRAME_TYPE_DOWNLOAD_TASK = 5,
	FRAME_TYPE_DOWNLOAD_PROGRESS = 6,
	FRAME_TYPE_STAT_TASK = 7,
	FRAME_TYPE_TASK_INFO = 8,
	FRAME_TYPE_IMPORT_FILE = 9,
	FRAME_TYPE_EXPORT_TASK = 10,
	FRAME_TYPE_SYNC_PIECES = 11,
	FRAME_TYPE_PIECE_AVAILABILITY = 12,
	FRAME_TYPE_GET_PIECE = 13,
	FRAME_TYPE_PIECE_HEADER = 14, /* + payload */
	FRAME_TYPE_ANNOUNCE_PEER = 15,
	FRAME_TYPE_PARENTS_RESPONSE = 16,
	FRAME_TYPE_PEER_LEAVE = 17,
	FRAME_TYPE_PREHEAT = 18,
	FRAME_TYPE_PREHEAT_RESPONSE = 19,
	FRAME_TYPE_TASK_PEERS = 20,
	FRAME_TYPE_TASK_PEERS_RESPONSE = 21,
	FRAME_TYPE_COUNT_ /* one past the last; not a type */
};

/* The descriptor of `type`'s message, or NULL for an unknown type. */
const ProtobufCMessageDescriptor *frame_type_descriptor(uint8_t type);
/* The largest message `type` may carry (0 for an unknown type). */
uint32_t frame_type_message_max(uint8_t type);
/* "HealthRequest" etc., or "unknown". */
const char *frame_type_name(uint8_t type);

enum frame_peek_result {
	FRAME_PEEK_OK = 0,	    /* a whole frame is in the buffer */
	FRAME_PEEK_NEED_MORE = 1,   /* not yet; *frame_size says how much if known */
	FRAME_PEEK_TOO_LARGE = -1,  /* length over the type's or caller's limit */
	FRAME_PEEK_UNKNOWN_TYPE = -2,
	FRAME_PEEK_EMPTY = -3,	    /* length 0: no type byte */
};

/*
 * Looks at the start of `buf[len]` (borrowed). On FRAME_PEEK_OK: *type, and
 * *message and *message_len point into buf at the packed message, and *frame_size
 * is the number of bytes the frame takes (header + message). On NEED_MORE,
 * *frame_size is the whole frame's size once the header is in (else 0), so the
 * caller can size its buffer. `limit` caps the message size on top of the
 * type's own maximum (0 = type maximum only).
 */
enum frame_peek_result frame_peek(const uint8_t *buf, size_t len, uint32_t limit,
				  uint8_t *type, const uint8_t **message,
				  size_t *message_len, size_t *frame_size);

/*
 * Decodes a message of `type`. Returns a new message the caller frees with
 * protobuf_c_message_free_unpacked(msg, allocator), or NULL when the bytes do
 * not decode (malformed). `allocator` may be NULL (malloc).
 */
ProtobufCMessage *frame_unpack(uint8_t type, const uint8_t *message, size_t message_len,
			       ProtobufCAllocator *allocator);

/* Header + packed size of `msg`. */
size_t frame_packed_size(const ProtobufCMessage *msg);

/*
 * Writes the frame for `msg` (borrowed) of `type` into out[cap].
 * Returns the bytes written, or -EMSGSIZE if it does not fit or the message is
 * over the type's maximum, -EINVAL if msg is not of type's descriptor.
 */
ssize_t frame_pack(uint8_t type, const ProtobufCMessage *msg, uint8_t *out, size_t cap);

/*
 * Packs an Error frame (id, code, message) into out[cap]; a message too long
 * for `cap` is cut. Returns bytes written or -EMSGSIZE when even an empty
 * Error does not fit.
 */
ssize_t frame_pack_error(uint64_t id, Ringfly__ErrorCode code, const char *message,
			 uint8_t *out, size_t cap);

#endif
