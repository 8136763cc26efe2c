/* frame: the wire framing every ringfly connection carries, with size limits. */
#include "rpc/frame.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

struct frame_type_info {
	const char *name;
	const ProtobufCMessageDescriptor *descriptor;
	uint32_t message_max;
};

static const struct frame_type_info frame_types[FRAME_TYPE_COUNT_] = {
	[FRAME_TYPE_HELLO] = { "Hello", &ringfly__hello__descriptor, 64u << 10 },
	[FRAME_TYPE_ERROR] = { "Error", &ringfly__error__descriptor, 64u << 10 },
	[FRAME_TYPE_HEALTH_REQUEST] = { "HealthRequest", &ringfly__health_request__descriptor,
					4u << 10 },
	[FRAME_TYPE_HEALTH_RESPONSE] = { "HealthResponse",
					 &ringfly__health_response__descriptor, 64u << 10 },
	[FRAME_TYPE_DOWNLOAD_TASK] = { "DownloadTask", &ringfly__download_task__descriptor,
				       256u << 10 },
	[FRAME_TYPE_DOWNLOAD_PROGRESS] = { "DownloadProgress",
					   &ringfly__download_progress__descriptor, 4u << 10 },
	[FRAME_TYPE_STAT_TASK] = { "StatTask", &ringfly__stat_task__descriptor, 16u << 10 },
	/* The url (8 KiB at most) and up to 32 swarm peers of ~200 bytes. */
	[FRAME_TYPE_TASK_INFO] = { "TaskInfo", &ringfly__task_info__descriptor, 64u << 10 },
	[FRAME_TYPE_IMPORT_FILE] = { "ImportFile", &ringfly__import_file__descriptor, 8u << 10 },
	[FRAME_TYPE_EXPORT_TASK] = { "ExportTask", &ringfly__export_task__descriptor, 4u << 10 },
	/* The task's url (4 KiB at most, META_URL_MAX) and the child's peer id. */
	[FRAME_TYPE_SYNC_PIECES] = { "SyncPieces", &ringfly__sync_pieces__descriptor, 8u << 10 },
	/* Up to 2^17 piece numbers of 5 bytes each in the first frame. */
	[FRAME_TYPE_PIECE_AVAILABILITY] = { "PieceAvailability",
					    &ringfly__piece_availability__descriptor, 1u << 20 },
	[FRAME_TYPE_GET_PIECE] = { "GetPiece", &ringfly__get_piece__descriptor, 1u << 10 },
	[FRAME_TYPE_PIECE_HEADER] = { "PieceHeader", &ringfly__piece_header__descriptor, 1u << 10 },
	[FRAME_TYPE_ANNOUNCE_PEER] = { "AnnouncePeer", &ringfly__announce_peer__descriptor,
				       64u << 10 },
	[FRAME_TYPE_PARENTS_RESPONSE] = { "ParentsResponse",
					  &ringfly__parents_response__descriptor, 64u << 10 },
	[FRAME_TYPE_PEER_LEAVE] = { "PeerLeave", &ringfly__peer_leave__descriptor, 1u << 10 },
	[FRAME_TYPE_PREHEAT] = { "Preheat", &ringfly__preheat__descriptor, 16u << 10 },
	[FRAME_TYPE_PREHEAT_RESPONSE] = { "PreheatResponse",
					  &ringfly__preheat_response__descriptor, 16u << 10 },
	[FRAME_TYPE_TASK_PEERS] = { "TaskPeers", &ringfly__task_peers__descriptor, 1u << 10 },
	[FRAME_TYPE_TASK_PEERS_RESPONSE] = { "TaskPeersResponse",
					     &ringfly__task_peers_response__descriptor, 64u << 10 },
};

static const struct frame_type_info *frame_type_info(uint8_t type)
{
	if (type >= FRAME_TYPE_COUNT_ || !frame_types[type].descriptor)
		return NULL;
	return &frame_types[type];
}

const ProtobufCMessageDescriptor *frame_type_descriptor(uint8_t type)
{
	const struct frame_type_info *info = frame_type_info(type);

	return info ? info->descriptor : NULL;
}

uint32_t frame_type_message_max(uint8_t type)
{
	const struct frame_type_info *info = frame_type_info(type);

	if (!info)
		return 0;
	assert(info->message_max <= FRAME_MESSAGE_MAX_DEFAULT);
	return info->message_max;
}

const char *frame_type_name(uint8_t type)
{
	const struct frame_type_info *info = frame_type_info(type);

	return info ? info->name : "unknown";
}

static uint32_t frame_read_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void frame_write_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

enum frame_peek_result frame_peek(const uint8_t *buf, size_t len, uint32_t limit,
				  uint8_t *type, const uint8_t **message,
				  size_t *message_len, size_t *frame_size)
{
	uint32_t length, max;

	*frame_size = 0;
	if (len < FRAME_HEADER_SIZE)
		return FRAME_PEEK_NEED_MORE;

	length = frame_read_be32(buf);
	if (length == 0)
		return FRAME_PEEK_EMPTY;
	*type = buf[4];
	max = frame_type_message_max(*type);
	if (max == 0)
		return FRAME_PEEK_UNKNOWN_TYPE;
	if (limit && limit < max)
		max = limit;
	/* length counts the type byte: the message is length - 1 bytes. */
	if (length - 1 > max)
		return FRAME_PEEK_TOO_LARGE;

	*frame_size = 4 + (size_t)length;
	if (len < *frame_size)
		return FRAME_PEEK_NEED_MORE;
	*message = buf + FRAME_HEADER_SIZE;
	*message_len = length - 1;
	return FRAME_PEEK_OK;
}

ProtobufCMessage *frame_unpack(uint8_t type, const uint8_t *message, size_t message_len,
			       ProtobufCAllocator *allocator)
{
	const ProtobufCMessageDescriptor *descriptor = frame_type_descriptor(type);

	if (!descriptor)
		return NULL;
	assert(message_len <= frame_type_message_max(type));
	return protobuf_c_message_unpack(descriptor, allocator, message_len, message);
}

size_t frame_packed_size(const ProtobufCMessage *msg)
{
	return FRAME_HEADER_SIZE + protobuf_c_message_get_packed_size(msg);
}

ssize_t frame_pack(uint8_t type, const ProtobufCMessage *msg, uint8_t *out, size_t cap)
{
	const struct frame_type_info *info = frame_type_info(type);
	size_t size, packed;

	if (!info || msg->descriptor != info->descriptor)
		return -EINVAL;
	size = protobuf_c_message_get_packed_size(msg);
	if (size > info->message_max || FRAME_HEADER_SIZE + size > cap)
		return -EMSGSIZE;

	packed = protobuf_c_message_pack(msg, out + FRAME_HEADER_SIZE);
	assert(packed == size);
	frame_write_be32(out, (uint32_t)(1 + packed));
	out[4] = type;
	return (ssize_t)(FRAME_HEADER_SIZE + packed);
}

ssize_t frame_pack_error(uint64_t id, Ringfly__ErrorCode code, const char *message,
			 uint8_t *out, size_t cap)
{
	Ringfly__Error error = RINGFLY__ERROR__INIT;
	char text[512];
	size_t text_len = strlen(message);

	/* An Error always fits the caller's buffer: cut the text if it must. */
	if (text_len >= sizeof(text))
		text_len = sizeof(text) - 1;
	memcpy(text, message, text_len);
	text[text_len] = '\0';

	error.id = id;
	error.code = code;
	error.message = text;
	for (;;) {
		ssize_t n = frame_pack(FRAME_TYPE_ERROR, &error.base, out, cap);

		if (n != -EMSGSIZE || text_len == 0)
			return n;
		text_len = text_len > 16 ? text_len - 16 : 0;
		text[text_len] = '\0';
	}
}
