/* test_frame: the frame codec, including every malformed input it must refuse. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "rpc/frame.h"

static size_t pack_health(uint8_t *out, size_t cap, uint64_t id)
{
	Ringfly__HealthRequest request = RINGFLY__HEALTH_REQUEST__INIT;
	ssize_t n;

	request.id = id;
	n = frame_pack(FRAME_TYPE_HEALTH_REQUEST, &request.base, out, cap);
	cr_assert_gt(n, 0);
	return (size_t)n;
}

static void put_header(uint8_t *p, uint32_t length, uint8_t type)
{
	p[0] = (uint8_t)(length >> 24);
	p[1] = (uint8_t)(length >> 16);
	p[2] = (uint8_t)(length >> 8);
	p[3] = (uint8_t)length;
	p[4] = type;
}

Test(frame, round_trip)
{
	uint8_t buf[256];
	size_t n = pack_health(buf, sizeof(buf), 42);
	const uint8_t *message;
	size_t message_len, frame_size;
	uint8_t type;

	cr_assert_eq(frame_peek(buf, n, 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_OK);
	cr_assert_eq(type, FRAME_TYPE_HEALTH_REQUEST);
	cr_assert_eq(frame_size, n);
	cr_assert_eq(message, buf + FRAME_HEADER_SIZE);
	/* Big-endian length of type + message. */
	cr_assert_eq(((uint32_t)buf[0] << 24 | buf[1] << 16 | buf[2] << 8 | buf[3]),
		     1 + message_len);

	ProtobufCMessage *msg = frame_unpack(type, message, message_len, NULL);
	cr_assert_not_null(msg);
	cr_assert_eq(((Ringfly__HealthRequest *)msg)->id, 42);
	protobuf_c_message_free_unpacked(msg, NULL);
}

Test(frame, every_prefix_needs_more)
{
	uint8_t buf[256];
	size_t n = pack_health(buf, sizeof(buf), 7);
	const uint8_t *message;
	size_t message_len, frame_size;
	uint8_t type;

	for (size_t len = 0; len < n; len++) {
		cr_assert_eq(frame_peek(buf, len, 0, &type, &message, &message_len, &frame_size),
			     FRAME_PEEK_NEED_MORE, "prefix of %zu bytes", len);
		/* Once the header is in, the whole size is known. */
		cr_assert_eq(frame_size, len >= FRAME_HEADER_SIZE ? n : 0);
	}
}

Test(frame, two_frames_back_to_back)
{
	uint8_t buf[512];
	size_t a = pack_health(buf, sizeof(buf), 1);
	size_t b = pack_health(buf + a, sizeof(buf) - a, 2);
	const uint8_t *message;
	size_t message_len, frame_size;
	uint8_t type;

	cr_assert_eq(frame_peek(buf, a + b, 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_OK);
	cr_assert_eq(frame_size, a);
	cr_assert_eq(frame_peek(buf + a, b, 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_OK);
	ProtobufCMessage *msg = frame_unpack(type, message, message_len, NULL);
	cr_assert_eq(((Ringfly__HealthRequest *)msg)->id, 2);
	protobuf_c_message_free_unpacked(msg, NULL);
}

Test(frame, oversized_length_is_refused_before_the_body)
{
	uint8_t buf[FRAME_HEADER_SIZE];
	const uint8_t *message;
	size_t message_len, frame_size;
	uint8_t type;

	/* 4 GiB - 1: refused from the header alone, nothing to allocate. */
	put_header(buf, UINT32_MAX, FRAME_TYPE_HEALTH_REQUEST);
	cr_assert_eq(frame_peek(buf, sizeof(buf), 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_TOO_LARGE);
	/* One byte over the type's own maximum. */
	put_header(buf, frame_type_message_max(FRAME_TYPE_HEALTH_REQUEST) + 2,
		   FRAME_TYPE_HEALTH_REQUEST);
	cr_assert_eq(frame_peek(buf, sizeof(buf), 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_TOO_LARGE);
	/* Exactly the maximum is fine (needs more). */
	put_header(buf, frame_type_message_max(FRAME_TYPE_HEALTH_REQUEST) + 1,
		   FRAME_TYPE_HEALTH_REQUEST);
	cr_assert_eq(frame_peek(buf, sizeof(buf), 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_NEED_MORE);
	/* The caller's limit applies on top of the type's. */
	put_header(buf, 101, FRAME_TYPE_HELLO);
	cr_assert_eq(frame_peek(buf, sizeof(buf), 99, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_TOO_LARGE);
	cr_assert_eq(frame_peek(buf, sizeof(buf), 100, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_NEED_MORE);
}

Test(frame, unknown_type_and_empty_frame)
{
	uint8_t buf[FRAME_HEADER_SIZE];
	const uint8_t *message;
	size_t message_len, frame_size;
	uint8_t type;

	put_header(buf, 1, 0);
	cr_assert_eq(frame_peek(buf, sizeof(buf), 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_UNKNOWN_TYPE);
	put_header(buf, 1, 200);
	cr_assert_eq(frame_peek(buf, sizeof(buf), 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_UNKNOWN_TYPE);
	put_header(buf, 1, FRAME_TYPE_COUNT_);
	cr_assert_eq(frame_peek(buf, sizeof(buf), 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_UNKNOWN_TYPE);
	put_header(buf, 0, FRAME_TYPE_HELLO);
	cr_assert_eq(frame_peek(buf, sizeof(buf), 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_EMPTY);
	cr_assert_null(frame_type_descriptor(0));
	cr_assert_null(frame_type_descriptor(255));
	cr_assert_str_eq(frame_type_name(99), "unknown");
}

Test(frame, undecodable_message_returns_null)
{
	/* Field 1 as a varint whose continuation never ends. */
	static const uint8_t truncated_varint[] = { 0x08, 0xff, 0xff, 0xff };
	/* A length-delimited field claiming more bytes than there are. */
	static const uint8_t long_string[] = { 0x12, 0x7f, 'a' };
	/* Wire type 7 does not exist. */
	static const uint8_t bad_wire_type[] = { 0x0f, 0x00 };

	cr_assert_null(frame_unpack(FRAME_TYPE_HEALTH_REQUEST, truncated_varint,
				    sizeof(truncated_varint), NULL));
	cr_assert_null(frame_unpack(FRAME_TYPE_HELLO, long_string, sizeof(long_string), NULL));
	cr_assert_null(frame_unpack(FRAME_TYPE_HELLO, bad_wire_type, sizeof(bad_wire_type), NULL));
	cr_assert_null(frame_unpack(0, long_string, 0, NULL));
}

Test(frame, pack_refuses_wrong_descriptor_and_small_buffer)
{
	Ringfly__HealthRequest request = RINGFLY__HEALTH_REQUEST__INIT;
	uint8_t buf[4];

	request.id = 1;
	cr_assert_eq(frame_pack(FRAME_TYPE_HELLO, &request.base, buf, sizeof(buf)), -EINVAL);
	cr_assert_eq(frame_pack(FRAME_TYPE_HEALTH_REQUEST, &request.base, buf, sizeof(buf)),
		     -EMSGSIZE);
	cr_assert_eq(frame_pack(0, &request.base, buf, sizeof(buf)), -EINVAL);
}

Test(frame, pack_refuses_message_over_type_limit)
{
	static char big[(64u << 10) + 1];
	Ringfly__Hello hello = RINGFLY__HELLO__INIT;
	static uint8_t out[(64u << 10) + 64];

	memset(big, 'x', sizeof(big) - 1);
	hello.version = big;
	cr_assert_eq(frame_pack(FRAME_TYPE_HELLO, &hello.base, out, sizeof(out)), -EMSGSIZE);
}

Test(frame, error_frame_cuts_long_text_to_fit)
{
	uint8_t small[64];
	char text[1000];
	ssize_t n;

	memset(text, 'e', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	n = frame_pack_error(9, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED, text, small,
			     sizeof(small));
	cr_assert_gt(n, 0);
	cr_assert_leq((size_t)n, sizeof(small));

	const uint8_t *message;
	size_t message_len, frame_size;
	uint8_t type;
	cr_assert_eq(frame_peek(small, (size_t)n, 0, &type, &message, &message_len, &frame_size),
		     FRAME_PEEK_OK);
	cr_assert_eq(type, FRAME_TYPE_ERROR);
	Ringfly__Error *error = (Ringfly__Error *)frame_unpack(type, message, message_len, NULL);
	cr_assert_not_null(error);
	cr_assert_eq(error->id, 9);
	cr_assert_eq(error->code, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED);
	cr_assert_gt(strlen(error->message), 0);
	protobuf_c_message_free_unpacked(&error->base, NULL);

	cr_assert_eq(frame_pack_error(1, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY, "x", small, 4),
		     -EMSGSIZE);
}

Test(frame, random_garbage_never_crashes)
{
	uint8_t buf[512];
	uint32_t state = 12345;

	for (int round = 0; round < 20000; round++) {
		size_t len = (size_t)(round % (int)sizeof(buf));
		const uint8_t *message;
		size_t message_len, frame_size;
		uint8_t type;

		for (size_t i = 0; i < len; i++) {
			state = state * 1103515245u + 12345u;
			buf[i] = (uint8_t)(state >> 16);
		}
		if (len >= FRAME_HEADER_SIZE && round % 2) {
			/* Plausible header, garbage body. */
			put_header(buf, (uint32_t)(len - 4), (uint8_t)(1 + round % 4));
		}
		if (frame_peek(buf, len, 0, &type, &message, &message_len, &frame_size) ==
		    FRAME_PEEK_OK) {
			cr_assert_leq(frame_size, len);
			ProtobufCMessage *msg = frame_unpack(type, message, message_len, NULL);
			if (msg)
				protobuf_c_message_free_unpacked(msg, NULL);
		}
	}
}
