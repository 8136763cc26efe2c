/*
 * fuzz_frame: rpc/frame.c's decoder on any bytes.
 *
 * The first byte picks the caller's limit (0 = the type's own maximum), the
 * rest is read as a stream of frames, as net/conn.c does. For every input:
 * frame_peek never claims more bytes than there are nor a message over the
 * limit; a message that decodes (with no unknown fields) packs again into a
 * frame that peeks and decodes to the same bytes once more
 * (pack(unpack(pack(m))) == pack(m));
 * an Error frame made from any text fits a small buffer and decodes.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/frame.h"
#include "tests/fuzz/fuzz.h"

const char fuzz_target_name[] = "fuzz_frame";

static const uint32_t limits[] = { 0, 1, 16, 1024, 8192, 65536, 1u << 20 };

/* Packs msg of type into a new buffer; *len its size, NULL if it does not fit
 * the type's maximum. */
static uint8_t *pack_new(uint8_t type, const ProtobufCMessage *msg, size_t *len)
{
	size_t cap = frame_packed_size(msg);
	uint8_t *out = malloc(cap);
	ssize_t n;

	if (!out)
		fuzz_fail("out of memory");
	n = frame_pack(type, msg, out, cap);
	if (n == -EMSGSIZE && cap - FRAME_HEADER_SIZE > frame_type_message_max(type)) {
		free(out);
		return NULL;
	}
	if (n != (ssize_t)cap)
		fuzz_fail("frame_pack of a decoded %s: %zd, expected %zu", frame_type_name(type), n,
			  cap);
	*len = cap;
	return out;
}

/* True if msg or a message inside it kept unknown fields. */
static bool has_unknown_fields(const ProtobufCMessage *msg)
{
	const ProtobufCMessageDescriptor *d = msg->descriptor;

	if (msg->n_unknown_fields)
		return true;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const char *base = (const char *)msg;

		if (f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)(base + f->quantifier_offset);
			ProtobufCMessage *const *items = *(ProtobufCMessage *const *const *)(base + f->offset);

			for (size_t k = 0; k < n; k++)
				if (items[k] && has_unknown_fields(items[k]))
					return true;
		} else {
			const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)(base + f->offset);

			if (sub && has_unknown_fields(sub))
				return true;
		}
	}
	return false;
}

static void check_round_trip(uint8_t type, const ProtobufCMessage *msg)
{
	size_t len1, len2, message_len, frame_size;
	uint8_t *first = pack_new(type, msg, &len1), *second, type2;
	const uint8_t *message;
	ProtobufCMessage *again;

	if (!first)
		return;
	if (has_unknown_fields(msg)) {
		/* Kept verbatim and packed again as they came: protobuf-c takes
		 * a tag of field 0 written in two bytes (80 00) but not in one
		 * (00), so such a message packs into bytes it will not decode.
		 * ringfly never sends on a message it received. */
		free(first);
		return;
	}
	if (frame_peek(first, len1, 0, &type2, &message, &message_len, &frame_size) != FRAME_PEEK_OK ||
	    type2 != type || frame_size != len1)
		fuzz_fail("a packed %s does not peek back", frame_type_name(type));
	again = frame_unpack(type, message, message_len, NULL);
	if (!again)
		fuzz_fail("a packed %s does not decode", frame_type_name(type));
	second = pack_new(type, again, &len2);
	if (!second || len1 != len2 || memcmp(first, second, len1) != 0)
		fuzz_fail("%s packs differently after a round trip (%zu, then %zu bytes)",
			  frame_type_name(type), len1, second ? len2 : 0);
	protobuf_c_message_free_unpacked(again, NULL);
	free(first);
	free(second);
}

static void check_error(const uint8_t *data, size_t size)
{
	char text[700];
	uint8_t out[64], type;
	const uint8_t *message;
	size_t message_len, frame_size, n = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
	ssize_t len;
	ProtobufCMessage *msg;

	/* Text up to the first NUL; protobuf strings are UTF-8 but the
	 * encoder does not check: whatever a caller passes must go out. */
	memcpy(text, data, n);
	text[n] = '\0';
	len = frame_pack_error(~0ull, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED, text, out,
			       sizeof(out));
	if (len <= 0 || (size_t)len > sizeof(out))
		fuzz_fail("frame_pack_error into %zu bytes: %zd", sizeof(out), len);
	if (frame_peek(out, (size_t)len, 0, &type, &message, &message_len, &frame_size) !=
		    FRAME_PEEK_OK || type != FRAME_TYPE_ERROR || frame_size != (size_t)len)
		fuzz_fail("an Error frame does not peek back");
	msg = frame_unpack(type, message, message_len, NULL);
	if (!msg)
		fuzz_fail("an Error frame does not decode");
	protobuf_c_message_free_unpacked(msg, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t limit;
	size_t at = 1;

	if (size == 0)
		return 0;
	limit = limits[data[0] % (sizeof(limits) / sizeof(limits[0]))];
	while (at < size) {
		const uint8_t *message;
		size_t message_len, frame_size, left = size - at;
		uint8_t type;
		enum frame_peek_result r = frame_peek(data + at, left, limit, &type, &message,
						      &message_len, &frame_size);
		ProtobufCMessage *msg;
		uint32_t max;

		if (r != FRAME_PEEK_OK) {
			if (r == FRAME_PEEK_NEED_MORE && frame_size && frame_size <= left)
				fuzz_fail("NEED_MORE for a frame of %zu bytes with %zu there",
					  frame_size, left);
			break;
		}
		max = frame_type_message_max(type);
		if (limit && limit < max)
			max = limit;
		if (frame_size > left || message_len > max || message != data + at + FRAME_HEADER_SIZE ||
		    frame_size != FRAME_HEADER_SIZE + message_len)
			fuzz_fail("frame_peek: a %s of %zu bytes (message %zu, limit %u) in %zu",
				  frame_type_name(type), frame_size, message_len, max, left);
		msg = frame_unpack(type, message, message_len, NULL);
		if (msg) {
			check_round_trip(type, msg);
			protobuf_c_message_free_unpacked(msg, NULL);
		}
		at += frame_size;
	}
	check_error(data, size);
	return 0;
}

static void seed_frame(fuzz_emit_fn emit, void *arg, const char *name, uint8_t type,
		       const ProtobufCMessage *msg)
{
	uint8_t buf[1 + 4096];
	ssize_t n = frame_pack(type, msg, buf + 1, sizeof(buf) - 1);

	if (n < 0)
		fuzz_fail("seed %s does not pack: %zd", name, n);
	buf[0] = 0;
	emit(arg, name, buf, (size_t)n + 1);
}

void fuzz_seeds(fuzz_emit_fn emit, void *arg)
{
	static uint8_t task_id[32] = { 0xa1, 0xa1, 0xa1 };
	static uint32_t pieces[] = { 0, 1, 2, 70000, 4294967295u };
	Ringfly__Hello hello = RINGFLY__HELLO__INIT;
	Ringfly__SyncPieces sync = RINGFLY__SYNC_PIECES__INIT;
	Ringfly__GetPiece get = RINGFLY__GET_PIECE__INIT;
	Ringfly__PieceAvailability avail = RINGFLY__PIECE_AVAILABILITY__INIT;
	Ringfly__PieceHeader header = RINGFLY__PIECE_HEADER__INIT;
	Ringfly__Error error = RINGFLY__ERROR__INIT;

	hello.id = 1;
	hello.version = "0.1.0";
	hello.peer_id = "198.18.0.1:65002";
	hello.role = "peer";
	seed_frame(emit, arg, "hello", FRAME_TYPE_HELLO, &hello.base);
	sync.id = 2;
	sync.task_id.data = task_id;
	sync.task_id.len = sizeof(task_id);
	sync.url = "http://origin.example/blob";
	seed_frame(emit, arg, "sync", FRAME_TYPE_SYNC_PIECES, &sync.base);
	get.id = 3;
	get.task_id = sync.task_id;
	get.number = 7;
	seed_frame(emit, arg, "get", FRAME_TYPE_GET_PIECE, &get.base);
	avail.id = 2;
	avail.content_length = 1ull << 40;
	avail.piece_length = 4u << 20;
	avail.n_pieces = sizeof(pieces) / sizeof(pieces[0]);
	avail.pieces = pieces;
	seed_frame(emit, arg, "availability", FRAME_TYPE_PIECE_AVAILABILITY, &avail.base);
	header.id = 3;
	header.number = 7;
	header.offset = 7ull << 22;
	header.length = 4u << 20;
	header.crc32c = 0xdeadbeef;
	seed_frame(emit, arg, "header", FRAME_TYPE_PIECE_HEADER, &header.base);
	error.id = 3;
	error.code = RINGFLY__ERROR_CODE__ERROR_CODE_BUSY;
	error.message = "busy: 256 uploads";
	seed_frame(emit, arg, "error", FRAME_TYPE_ERROR, &error.base);
}
