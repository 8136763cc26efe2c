/* parent: one connection to a parent peer: its piece availability, pieces spliced into the cache. */
#include "daemon/parent.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "net/tcp.h"
#include "rpc/frame.h"
#include "storage/piece.h"

#define PARENT_REQUESTS_MAX 256u
#define PARENT_SYNC_ID 1u
#define PARENT_DISCARD_CHUNK (64u << 10)

enum parent_stage {
	PARENT_CONNECTING,
	PARENT_HEADER,		/* reading a frame's 5-byte header */
	PARENT_MESSAGE,		/* reading its message */
	PARENT_PAYLOAD,		/* the store reads a piece's bytes from the socket */
	PARENT_DISCARD,		/* reading a piece's bytes we cannot use */
	PARENT_DEAD,
};

struct parent_slot {
	uint64_t id;
	uint32_t number;
	uint64_t sent_ms;
	struct store_task *st;
};

/* One piece on its way from the socket into the cache. */
struct parent_write {
	struct parent *parent;
	struct parent_write *prev, *next; /* the parent's writes */
	uint32_t number;
	uint32_t length;
	bool received;
	bool report;			/* in flight at parent_close: still reported */
	uint64_t progress_ms;		/* when bytes of it last came off the socket */
};

struct parent {
	struct loop *loop;
	int fd;
	char address[160];
	uint8_t task_id[32];
	char *url;			/* sent with SyncPieces: a seed fetches it */
	char self_id[160];		/* sent with SyncPieces: our peer id, or "" */
	struct parent_callbacks cb;
	void *arg;

	enum parent_stage stage;
	bool closed;			/* parent_close: no callbacks any more */
	bool op_armed;			/* op in flight (poll or recv) */
	unsigned writes;		/* store writes reading or holding the socket */
	struct parent_write *write_list;
	unsigned calling;		/* inside a callback: not freed under it */
	struct loop_op op;
	uint64_t started_ms;

	uint8_t header[FRAME_HEADER_SIZE];
	size_t got;
	uint8_t type;
	uint8_t *msg;
	size_t msg_len, msg_cap;
	uint8_t *scratch;
	uint32_t discard_left;
	struct parent_write *discard_write; /* reported once its bytes are read */
	int discard_res;

	bool shaped, sync_ended;
	uint64_t content_length, piece_length;
	uint32_t piece_count;

	/* The piece whose bytes are being read (PAYLOAD, DISCARD): its request
	 * is off the queue but not answered yet, and times out the same way. */
	uint64_t payload_sent_ms;
	uint32_t payload_number;

	struct parent_slot queue[PARENT_REQUESTS_MAX];
	unsigned head, count;
	uint64_t next_id;
	uint64_t bytes;
};

static void parent_read_next(struct parent *parent);
static void parent_piece_done(struct store_task *st, uint32_t number, int res, void *arg);

static void parent_maybe_free(struct parent *parent)
{
	if (!parent->closed || parent->op_armed || parent->writes || parent->calling)
		return;
	if (parent->fd >= 0)
		close(parent->fd);
	free(parent->msg);
	free(parent->scratch);
	free(parent->url);
	free(parent);
}

/* Ends the connection: every outstanding request is reported, then gone(). */
static void parent_fail(struct parent *parent, int error, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void parent_fail(struct parent *parent, int error, const char *fmt, ...)
{
	char reason[300];
	va_list ap;

	if (parent->stage == PARENT_DEAD)
		return;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	parent->stage = PARENT_DEAD;
	/* Wakes whatever reads the socket (ours or the store's splice). */
	if (parent->fd >= 0)
		shutdown(parent->fd, SHUT_RDWR);
	if (parent->op_armed)
		loop_cancel_op(parent->loop, &parent->op);
	parent->calling++;
	/* A piece whose bytes were being read past, with no receive left to
	 * end it (the receive itself failed): it is over now. (With one
	 * armed, the cancelled receive's completion reports it.) */
	if (parent->discard_write && !parent->op_armed) {
		struct parent_write *w = parent->discard_write;

		parent->discard_write = NULL;
		parent_piece_done(NULL, w->number, -ECONNRESET, w);
	}
	while (parent->count && !parent->closed) {
		struct parent_slot slot = parent->queue[parent->head];

		parent->head = (parent->head + 1) % PARENT_REQUESTS_MAX;
		parent->count--;
		parent->cb.piece_done(parent, parent->arg, slot.number, 0, -ECONNRESET, reason);
	}
	parent->count = 0;
	if (!parent->closed)
		parent->cb.gone(parent, parent->arg, error, reason);
	parent->calling--;
	parent_maybe_free(parent);
}

/* --- sending: requests are small (a URL at most); the socket buffer always
 * has room. */

static int parent_send(struct parent *parent, uint8_t type, const ProtobufCMessage *msg)
{
	uint8_t frame[8192];
	ssize_t len = frame_pack(type, msg, frame, sizeof(frame));

	if (len < 0)
		return (int)len;
	if (send(parent->fd, frame, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL) != len)
		return errno ? -errno : -EAGAIN;
	return 0;
}

int parent_request(struct parent *parent, struct store_task *st, uint32_t number)
{
	Ringfly__GetPiece get = RINGFLY__GET_PIECE__INIT;
	struct parent_slot *slot;
	int rc;

	if (parent->closed || parent->stage == PARENT_DEAD || !parent->shaped)
		return -EPIPE;
	if (parent->count == PARENT_REQUESTS_MAX)
		return -EBUSY;
	get.id = parent->next_id++;
	get.task_id.data = parent->task_id;
	get.task_id.len = sizeof(parent->task_id);
	get.number = number;
	rc = parent_send(parent, FRAME_TYPE_GET_PIECE, &get.base);
	if (rc < 0) {
		parent_fail(parent, rc, "cannot send a request: %s", strerror(-rc));
		return rc;
	}
	slot = &parent->queue[(parent->head + parent->count) % PARENT_REQUESTS_MAX];
	slot->id = get.id;
	slot->number = number;
	slot->sent_ms = clock_monotonic_ms();
	slot->st = st;
	parent->count++;
	return 0;
}

/* --- pieces. */

static void parent_piece_received(struct store_task *st, uint32_t number, int res, void *arg)
{
	struct parent_write *w = arg;
	struct parent *parent = w->parent;

	(void)st;
	(void)res;
	w->received = true;
	if (parent->stage == PARENT_PAYLOAD) {
		parent->stage = PARENT_HEADER;
		parent_read_next(parent);
	}
	/* The next request can go out now, not once this piece is durable:
	 * an fdatasync takes milliseconds, during which a window counted to
	 * piece_done would leave the connection idle. */
	if (parent->cb.received && !parent->closed && parent->stage != PARENT_DEAD) {
		parent->calling++;
		parent->cb.received(parent, parent->arg, number);
		parent->calling--;
		parent_maybe_free(parent);
	}
}

static void parent_piece_checked(struct store_task *st, uint32_t number, int res, void *arg)
{
	struct parent_write *w = arg;
	struct parent *parent = w->parent;

	(void)st;
	(void)res;
	if (parent->cb.checked && (!parent->closed || w->report)) {
		parent->calling++;
		parent->cb.checked(parent, parent->arg, number, w->length);
		parent->calling--;
		parent_maybe_free(parent);
	}
}

static void parent_piece_done(struct store_task *st, uint32_t number, int res, void *arg)
{
	struct parent_write *w = arg;
	struct parent *parent = w->parent;
	bool received = w->received;
	bool report = w->report;
	uint32_t length = w->length;

	(void)st;
	if (w->prev)
		w->prev->next = w->next;
	else
		parent->write_list = w->next;
	if (w->next)
		w->next->prev = w->prev;
	free(w);
	parent->writes--;
	parent->calling++;
	if (res == 0)
		parent->bytes += length;
	if (!parent->closed || report)
		parent->cb.piece_done(parent, parent->arg, number, length, res,
				      res == -EBADMSG ? "crc mismatch" : NULL);
	/* Bytes of the piece still in the socket: the stream is lost. */
	if (!received && !parent->closed)
		parent_fail(parent, res, "connection broke in the middle of piece %u (%s)", number,
			    strerror(-res));
	parent->calling--;
	parent_maybe_free(parent);
}

static void parent_on_piece_header(struct parent *parent, const Ringfly__PieceHeader *h)
{
	struct parent_slot slot;
	struct parent_write *w;
	uint32_t want;
	int rc;

	if (!parent->count || h->id != parent->queue[parent->head].id ||
	    h->number != parent->queue[parent->head].number) {
		parent_fail(parent, -EPROTO, "answered piece %u (request %llu) out of turn",
			    h->number, (unsigned long long)h->id);
		return;
	}
	want = piece_size(parent->content_length, parent->piece_length, h->number);
	if (h->length != want ||
	    h->offset != piece_offset(parent->piece_length, h->number)) {
		parent_fail(parent, -EPROTO, "piece %u: %u bytes at %llu, expected %u at %llu",
			    h->number, h->length, (unsigned long long)h->offset, want,
			    (unsigned long long)piece_offset(parent->piece_length, h->number));
		return;
	}
	slot = parent->queue[parent->head];
	parent->head = (parent->head + 1) % PARENT_REQUESTS_MAX;
	parent->count--;
	parent->payload_sent_ms = slot.sent_ms;
	parent->payload_number = slot.number;
	w = calloc(1, sizeof(*w));
	if (!w) {
		parent_fail(parent, -ENOMEM, "out of memory");
		return;
	}
	w->parent = parent;
	w->number = h->number;
	w->length = h->length;
	w->next = parent->write_list;
	if (w->next)
		w->next->prev = w;
	parent->write_list = w;
	parent->writes++;
	parent->stage = PARENT_PAYLOAD;
	w->progress_ms = slot.sent_ms;
	rc = store_piece_from_stream(slot.st, h->number, parent->fd, true, h->crc32c,
				     parent_piece_received, parent_piece_checked, parent_piece_done, w,
				     &w->progress_ms);
	if (rc < 0) {
		/* Already recorded, or the store cannot take it: read the
		 * bytes past, then report. */
		w->received = true;
		parent->discard_write = w;
		parent->discard_res = rc;
		parent->discard_left = h->length;
		parent->stage = PARENT_DISCARD;
		parent_read_next(parent);
	}
}

/* --- availability. */

static void parent_on_availability(struct parent *parent, const Ringfly__PieceAvailability *m)
{
	if (m->id != PARENT_SYNC_ID || parent->sync_ended) {
		parent_fail(parent, -EPROTO, "availability for request %llu",
			    (unsigned long long)m->id);
		return;
	}
	if (!parent->shaped) {
		int rc;

		if (!piece_length_valid(m->piece_length) || m->content_length > (1ull << 50) ||
		    piece_count(m->content_length, m->piece_length) > PIECE_COUNT_MAX) {
			parent_fail(parent, -EPROTO, "announced an impossible task (length %llu, "
				    "piece length %llu)", (unsigned long long)m->content_length,
				    (unsigned long long)m->piece_length);
			return;
		}
		parent->content_length = m->content_length;
		parent->piece_length = m->piece_length;
		parent->piece_count = piece_count(m->content_length, m->piece_length);
		parent->shaped = true;
		rc = parent->cb.shape(parent, parent->arg, m->content_length, m->piece_length);
		if (parent->closed)
			return;
		if (rc < 0) {
			parent_fail(parent, rc, "refused: %s", strerror(-rc));
			return;
		}
	} else if (m->content_length != parent->content_length ||
		   m->piece_length != parent->piece_length) {
		parent_fail(parent, -EPROTO, "changed the task's shape mid-stream");
		return;
	}
	for (size_t i = 0; i < m->n_pieces; i++) {
		if (m->pieces[i] >= parent->piece_count) {
			parent_fail(parent, -EPROTO, "announced piece %u of %u", m->pieces[i],
				    parent->piece_count);
			return;
		}
	}
	if (m->n_pieces)
		parent->cb.have(parent, parent->arg, m->pieces, m->n_pieces);
	if (parent->closed || parent->stage == PARENT_DEAD)
		return;
	if (m->done || m->failed) {
		parent->sync_ended = true;
		parent->cb.sync_end(parent, parent->arg, m->done, m->failed ? m->reason : "");
	}
}

static void parent_on_error(struct parent *parent, const Ringfly__Error *e)
{
	if (e->id == PARENT_SYNC_ID && !parent->sync_ended) {
		parent->sync_ended = true;
		parent->cb.sync_end(parent, parent->arg, false, e->message);
		return;
	}
	if (parent->count && e->id == parent->queue[parent->head].id) {
		struct parent_slot slot = parent->queue[parent->head];
		int res = e->code == RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND ? -ENOENT
			: e->code == RINGFLY__ERROR_CODE__ERROR_CODE_BUSY ? -EBUSY
			: e->code == RINGFLY__ERROR_CODE__ERROR_CODE_INVALID ? -EINVAL : -EIO;

		parent->head = (parent->head + 1) % PARENT_REQUESTS_MAX;
		parent->count--;
		parent->cb.piece_done(parent, parent->arg, slot.number, 0, res, e->message);
		return;
	}
	parent_fail(parent, e->code == RINGFLY__ERROR_CODE__ERROR_CODE_BUSY ? -EBUSY : -EPROTO,
		    "said: %s", e->message);
}

static void parent_on_frame(struct parent *parent)
{
	ProtobufCMessage *msg = frame_unpack(parent->type, parent->msg, parent->msg_len, NULL);

	if (!msg) {
		parent_fail(parent, -EPROTO, "sent a %s that does not decode",
			    frame_type_name(parent->type));
		return;
	}
	parent->calling++;
	switch (parent->type) {
	case FRAME_TYPE_PIECE_AVAILABILITY:
		parent_on_availability(parent, (Ringfly__PieceAvailability *)msg);
		break;
	case FRAME_TYPE_PIECE_HEADER:
		parent_on_piece_header(parent, (Ringfly__PieceHeader *)msg);
		break;
	case FRAME_TYPE_ERROR:
		parent_on_error(parent, (Ringfly__Error *)msg);
		break;
	case FRAME_TYPE_HELLO:
		break;
	default:
		parent_fail(parent, -EPROTO, "sent an unexpected %s", frame_type_name(parent->type));
		break;
	}
	protobuf_c_message_free_unpacked(msg, NULL);
	parent->calling--;
	if (parent->closed) {
		parent_maybe_free(parent);
		return;
	}
	if (parent->stage == PARENT_HEADER)
		parent_read_next(parent);
}

/* --- reading. */

static void parent_recv_done(struct loop_op *op, int res, uint32_t flags)
{
	struct parent *parent = op->owner;

	(void)flags;
	parent->op_armed = false;
	if (parent->closed || parent->stage == PARENT_DEAD) {
		/* A piece whose bytes we were reading past is over too. */
		if (parent->discard_write) {
			struct parent_write *w = parent->discard_write;

			parent->discard_write = NULL;
			parent_piece_done(NULL, w->number, -ECONNRESET, w);
			return;
		}
		parent_maybe_free(parent);
		return;
	}
	if (res <= 0) {
		parent_fail(parent, res < 0 ? res : -ECONNRESET, "%s",
			    res == 0 ? "connection closed" : strerror(-res));
		return;
	}
	parent->got += (size_t)res;
	switch (parent->stage) {
	case PARENT_HEADER:
		if (parent->got < FRAME_HEADER_SIZE)
			break;
		{
			uint32_t length = (uint32_t)parent->header[0] << 24 |
					  (uint32_t)parent->header[1] << 16 |
					  (uint32_t)parent->header[2] << 8 | parent->header[3];
			uint32_t max;

			parent->type = parent->header[4];
			max = frame_type_message_max(parent->type);
			if (length == 0 || max == 0 || length - 1 > max) {
				parent_fail(parent, -EPROTO, "sent a bad frame (type %u, length %u)",
					    parent->type, length);
				return;
			}
			parent->msg_len = length - 1;
			if (parent->msg_len > parent->msg_cap) {
				uint8_t *grown = realloc(parent->msg, parent->msg_len);

				if (!grown) {
					parent_fail(parent, -ENOMEM, "out of memory");
					return;
				}
				parent->msg = grown;
				parent->msg_cap = parent->msg_len;
			}
			parent->got = 0;
			parent->stage = PARENT_MESSAGE;
			if (parent->msg_len == 0) {
				parent->stage = PARENT_HEADER;
				parent_on_frame(parent);
				return;
			}
		}
		break;
	case PARENT_MESSAGE:
		if (parent->got < parent->msg_len)
			break;
		parent->got = 0;
		parent->stage = PARENT_HEADER;
		parent_on_frame(parent);
		return;
	case PARENT_DISCARD:
		parent->discard_write->progress_ms = clock_monotonic_ms();
		parent->discard_left -= (uint32_t)res;
		parent->got = 0;
		if (parent->discard_left == 0) {
			struct parent_write *w = parent->discard_write;

			parent->discard_write = NULL;
			parent->stage = PARENT_HEADER;
			/* Reported as the store would have. */
			parent_piece_done(NULL, w->number, parent->discard_res, w);
			if (parent->closed || parent->stage == PARENT_DEAD)
				return;
		}
		break;
	default:
		return;
	}
	parent_read_next(parent);
}

static void parent_read_next(struct parent *parent)
{
	void *buf;
	size_t len;

	if (parent->op_armed || parent->closed || parent->stage == PARENT_DEAD)
		return;
	switch (parent->stage) {
	case PARENT_HEADER:
		buf = parent->header + parent->got;
		len = FRAME_HEADER_SIZE - parent->got;
		break;
	case PARENT_MESSAGE:
		buf = parent->msg + parent->got;
		len = parent->msg_len - parent->got;
		break;
	case PARENT_DISCARD:
		if (!parent->scratch && !(parent->scratch = malloc(PARENT_DISCARD_CHUNK))) {
			parent_fail(parent, -ENOMEM, "out of memory");
			return;
		}
		buf = parent->scratch;
		len = parent->discard_left < PARENT_DISCARD_CHUNK ? parent->discard_left
								  : PARENT_DISCARD_CHUNK;
		break;
	default:
		return;
	}
	loop_op_init(&parent->op, parent_recv_done, parent);
	if (loop_recv(parent->loop, &parent->op, parent->fd, buf, len, 0) < 0) {
		parent_fail(parent, -EBUSY, "cannot queue a receive");
		return;
	}
	parent->op_armed = true;
}

/* --- connecting. */

static void parent_connected(struct loop_op *op, int res, uint32_t flags)
{
	struct parent *parent = op->owner;
	Ringfly__SyncPieces sync = RINGFLY__SYNC_PIECES__INIT;
	int error = 0, one = 1, rc;
	socklen_t len = sizeof(error);

	(void)flags;
	parent->op_armed = false;
	if (parent->closed || parent->stage == PARENT_DEAD) {
		parent_maybe_free(parent);
		return;
	}
	if (res < 0)
		error = -res;
	else if (getsockopt(parent->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
		error = errno;
	if (error) {
		parent_fail(parent, -error, "cannot connect: %s", strerror(error));
		return;
	}
	setsockopt(parent->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	sync.id = PARENT_SYNC_ID;
	sync.task_id.data = parent->task_id;
	sync.task_id.len = sizeof(parent->task_id);
	sync.url = parent->url;
	sync.peer_id = parent->self_id;
	rc = parent_send(parent, FRAME_TYPE_SYNC_PIECES, &sync.base);
	if (rc < 0) {
		parent_fail(parent, rc, "cannot send SyncPieces: %s", strerror(-rc));
		return;
	}
	parent->stage = PARENT_HEADER;
	parent_read_next(parent);
}

int parent_open(struct parent **out, struct loop *loop, const char *address,
		const uint8_t task_id[32], const char *url, const char *self_id,
		const struct parent_callbacks *callbacks, void *arg, char *err, size_t err_size)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *found = NULL;
	struct parent *parent;
	char host[128], port_text[16];
	unsigned port;
	int rc;

	rc = tcp_parse_address(address, host, sizeof(host), &port, err, err_size);
	if (rc < 0)
		return rc;
	if (!host[0] || port == 0) {
		snprintf(err, err_size, "parent %s: want HOST:PORT", address);
		return -EINVAL;
	}
	snprintf(port_text, sizeof(port_text), "%u", port);
	rc = getaddrinfo(host, port_text, &hints, &found);
	if (rc != 0) {
		snprintf(err, err_size, "parent %s: cannot resolve %s: %s", address, host,
			 gai_strerror(rc));
		return -EHOSTUNREACH;
	}
	parent = calloc(1, sizeof(*parent));
	if (!parent) {
		freeaddrinfo(found);
		snprintf(err, err_size, "parent %s: out of memory", address);
		return -ENOMEM;
	}
	parent->loop = loop;
	snprintf(parent->address, sizeof(parent->address), "%s", address);
	memcpy(parent->task_id, task_id, sizeof(parent->task_id));
	snprintf(parent->self_id, sizeof(parent->self_id), "%s", self_id ? self_id : "");
	parent->cb = *callbacks;
	parent->arg = arg;
	parent->url = strdup(url ? url : "");
	if (!parent->url) {
		freeaddrinfo(found);
		free(parent);
		snprintf(err, err_size, "parent %s: out of memory", address);
		return -ENOMEM;
	}
	parent->next_id = PARENT_SYNC_ID + 1;
	parent->started_ms = clock_monotonic_ms();
	parent->fd = socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (parent->fd < 0 ||
	    (connect(parent->fd, found->ai_addr, found->ai_addrlen) < 0 && errno != EINPROGRESS)) {
		rc = -errno;
		snprintf(err, err_size, "parent %s: cannot connect: %s", address, strerror(errno));
		freeaddrinfo(found);
		if (parent->fd >= 0)
			close(parent->fd);
		free(parent->url);
		free(parent);
		return rc;
	}
	freeaddrinfo(found);
	parent->stage = PARENT_CONNECTING;
	loop_op_init(&parent->op, parent_connected, parent);
	if (loop_poll(loop, &parent->op, parent->fd, POLLOUT) < 0) {
		snprintf(err, err_size, "parent %s: cannot queue the connect", address);
		close(parent->fd);
		free(parent->url);
		free(parent);
		return -EBUSY;
	}
	parent->op_armed = true;
	*out = parent;
	return 0;
}

unsigned parent_outstanding(const struct parent *parent)
{
	return parent->count;
}

unsigned parent_receiving(const struct parent *parent)
{
	bool reading = parent->stage == PARENT_PAYLOAD || parent->stage == PARENT_DISCARD;

	return parent->count + (reading ? 1u : 0u);
}

static bool parent_reading_piece(const struct parent *parent)
{
	return parent->stage == PARENT_PAYLOAD || parent->stage == PARENT_DISCARD;
}

uint64_t parent_oldest_ms(const struct parent *parent)
{
	if (parent->stage == PARENT_DEAD)
		return 0;
	if (!parent->shaped && !parent->sync_ended)
		return parent->started_ms;
	/* A piece half read (a parent that stops mid-payload) is the oldest
	 * request: its clock runs from when its last bytes came (a slow but
	 * steady parent is not one that stopped). */
	if (parent_reading_piece(parent)) {
		uint64_t progress_ms = parent_payload_progress_ms(parent);

		return progress_ms ? progress_ms : parent->payload_sent_ms;
	}
	return parent->count ? parent->queue[parent->head].sent_ms : 0;
}

uint64_t parent_payload_progress_ms(const struct parent *parent)
{
	const struct parent_write *w;

	if (parent->stage == PARENT_DEAD || !parent_reading_piece(parent))
		return 0;
	w = parent->stage == PARENT_DISCARD ? parent->discard_write : parent->write_list;
	return w && w->progress_ms > parent->payload_sent_ms ? w->progress_ms : 0;
}

uint32_t parent_oldest_piece(const struct parent *parent)
{
	if (parent->stage != PARENT_DEAD && parent_reading_piece(parent))
		return parent->payload_number;
	return parent->count ? parent->queue[parent->head].number : UINT32_MAX;
}

uint64_t parent_bytes(const struct parent *parent)
{
	return parent->bytes;
}

const char *parent_address(const struct parent *parent)
{
	return parent->address;
}

bool parent_piece_pending(const struct parent *parent, uint32_t number)
{
	for (const struct parent_write *w = parent->write_list; w; w = w->next)
		if (w->number == number)
			return true;
	return false;
}

void parent_close(struct parent *parent)
{
	for (struct parent_write *w = parent->write_list; w; w = w->next)
		w->report = true;
	parent->closed = true;
	if (parent->stage != PARENT_DEAD) {
		parent->stage = PARENT_DEAD;
		if (parent->fd >= 0)
			shutdown(parent->fd, SHUT_RDWR);
		if (parent->op_armed)
			loop_cancel_op(parent->loop, &parent->op);
	}
	parent_maybe_free(parent);
}
