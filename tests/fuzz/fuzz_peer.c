/*
 * fuzz_peer: a parent's peer port (net/conn.c framing, daemon/upload.c) on any
 * bytes a child could send.
 *
 * Once: a loop, a store in a temporary data dir holding a complete task
 * (FULL, 4 pieces of 64 KiB, the last short) and an incomplete one (PART,
 * pieces 0 and 2 of 4), the upload service on them (at most 4 requests
 * queued per connection), and a conn server on a Unix socket that hands
 * frames to upload_frame as ringflyd's peer port does.
 *
 * Every input is one connection: connect, send the input, shut down the write
 * side, read everything until the server closes. What must hold:
 *   - the server closes the connection within 10 s (no hang, whatever the
 *     input: an open SyncPieces of PART ends with the connection);
 *   - it then lets the connection go (conn_server_count back to 0);
 *   - the process's descriptors do not grow from input to input;
 *   - a well-formed GetPiece of FULL, sent after, is still answered with the
 *     right header and bytes (checked every 64 inputs and at the end of the
 *     seeds: a daemon that survives but no longer serves is a failure too).
 * Memory errors are the sanitizers' (the Sanitize build runs this test).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/hash.h"
#include "core/log.h"
#include "core/loop.h"
#include "daemon/upload.h"
#include "net/conn.h"
#include "rpc/frame.h"
#include "storage/piece.h"
#include "storage/store.h"
#include "tests/fuzz/fuzz.h"

const char fuzz_target_name[] = "fuzz_peer";

#define PEER_PL (64u << 10)
#define PEER_LENGTH (3ull * PEER_PL + 1000)
#define PEER_PIECES 4u
#define PEER_DEADLINE_MS 10000u
#define PEER_FDS_SLACK 16u

static const uint8_t full_id[32] = { 0xf0, 0x11, 0xf0, 0x11, 0x01 };
static const uint8_t part_id[32] = { 0x9a, 0x27, 0x9a, 0x27, 0x02 };

static struct {
	bool ready;
	const char *dir;
	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int listen_fd;
	struct loop *loop;
	struct fuzz_ticker ticker;
	struct store *store;
	struct upload upload;
	struct conn_server *server;
	uint8_t *content;
	unsigned fds_after_setup;
	unsigned long inputs;
	unsigned pieces_left; /* piece writes of the setup still running */
} fx;

/* --- the server side, as ringflyd's peer port. */

static int peer_frame(struct conn *conn, uint8_t type, const uint8_t *message, size_t message_len)
{
	ProtobufCMessage *msg = frame_unpack(type, message, message_len, NULL);

	if (!msg) {
		conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED,
				"%s message of %zu bytes does not decode", frame_type_name(type),
				message_len);
		return 0;
	}
	if (type == FRAME_TYPE_ERROR)
		conn_close(conn);
	else if (type != FRAME_TYPE_HELLO && !upload_frame(&fx.upload, conn, type, msg))
		conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_UNEXPECTED,
				"ringflyd does not take %s messages here", frame_type_name(type));
	protobuf_c_message_free_unpacked(msg, NULL);
	return 0;
}

static void peer_closed(struct conn *conn)
{
	upload_conn_closed(&fx.upload, conn);
}

/* --- the client side: one connection, driven by the same loop. */

struct client {
	int fd;
	const uint8_t *data;
	size_t len, sent;
	bool send_done, eof, timed_out, deadline_armed;
	struct loop_op send_op, recv_op, deadline_op;
	uint8_t *got;	/* what the server sent, up to got_cap bytes kept */
	size_t got_len, got_cap;
	uint64_t received;
};

static void client_maybe_stop(struct client *c)
{
	if (c->send_done && c->eof)
		loop_stop(fx.loop);
}

static void client_send_next(struct client *c);

static void client_sent(struct loop_op *op, int res, uint32_t flags)
{
	struct client *c = op->owner;

	(void)flags;
	if (res > 0) {
		c->sent += (size_t)res;
		if (c->sent < c->len) {
			client_send_next(c);
			return;
		}
	}
	/* All sent, or the server closed first (EPIPE, ECONNRESET): fine. */
	if (res >= 0)
		shutdown(c->fd, SHUT_WR);
	c->send_done = true;
	client_maybe_stop(c);
}

static void client_send_next(struct client *c)
{
	loop_op_init(&c->send_op, client_sent, c);
	if (loop_send(fx.loop, &c->send_op, c->fd, c->data + c->sent, c->len - c->sent, 0) < 0)
		fuzz_fail("cannot queue a send");
}

static void client_recv_next(struct client *c);

static void client_received(struct loop_op *op, int res, uint32_t flags)
{
	struct client *c = op->owner;

	(void)flags;
	if (res <= 0) {
		c->eof = true; /* closed (0) or reset: either way the server let go */
		client_maybe_stop(c);
		return;
	}
	c->received += (uint64_t)res;
	c->got_len += (size_t)res;
	if (c->got_len == c->got_cap)
		c->got_len = 0; /* keep only what fits; the bytes are not checked */
	client_recv_next(c);
}

static void client_recv_next(struct client *c)
{
	loop_op_init(&c->recv_op, client_received, c);
	if (loop_recv(fx.loop, &c->recv_op, c->fd, c->got + c->got_len, c->got_cap - c->got_len,
		      0) < 0)
		fuzz_fail("cannot queue a receive");
}

static void client_deadline(struct loop_op *op, int res, uint32_t flags)
{
	struct client *c = op->owner;

	(void)flags;
	c->deadline_armed = false;
	if (res != -ECANCELED) {
		c->timed_out = true;
		loop_stop(fx.loop);
	}
}

static int client_connect(void)
{
	struct sockaddr_un address = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		fuzz_fail("socket: %s", strerror(errno));
	memcpy(address.sun_path, fx.sock_path, sizeof(fx.sock_path));
	if (connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0)
		fuzz_fail("connect %s: %s", fx.sock_path, strerror(errno));
	return fd;
}

/* Sends data[len] on a new connection and reads until the server closes it;
 * what came back in got[*got_len] (up to cap bytes). */
static void converse(const uint8_t *data, size_t len, uint8_t *got, size_t cap, size_t *got_len)
{
	struct client c = { .data = data, .len = len, .got = got, .got_cap = cap };
	unsigned waited = 0;

	c.fd = client_connect();
	loop_op_init(&c.deadline_op, client_deadline, &c);
	if (loop_timeout(fx.loop, &c.deadline_op, PEER_DEADLINE_MS) < 0)
		fuzz_fail("cannot queue a timer");
	c.deadline_armed = true;
	if (len) {
		client_send_next(&c);
	} else {
		shutdown(c.fd, SHUT_WR);
		c.send_done = true;
	}
	client_recv_next(&c);
	while (!(c.send_done && c.eof) && !c.timed_out)
		if (loop_run(fx.loop) < 0)
			fuzz_fail("the loop failed");
	if (c.timed_out)
		fuzz_fail("the server did not close within %u ms: %zu of %zu bytes sent, %llu "
			  "received", PEER_DEADLINE_MS, c.sent, len, (unsigned long long)c.received);
	close(c.fd);
	loop_cancel_op(fx.loop, &c.deadline_op);
	while (c.deadline_armed)
		fuzz_tick(&fx.ticker);
	/* The server's side goes once its operations are back. */
	while (conn_server_count(fx.server) > 0) {
		if (++waited > PEER_DEADLINE_MS)
			fuzz_fail("the server still holds a connection %u ms after it closed",
				  PEER_DEADLINE_MS);
		fuzz_tick(&fx.ticker);
	}
	if (got_len)
		*got_len = c.got_len;
}

/* --- frames for the seeds and the service check. */

static size_t put_get(uint8_t *out, size_t cap, uint64_t id, const uint8_t task[32], uint32_t n)
{
	Ringfly__GetPiece get = RINGFLY__GET_PIECE__INIT;

	get.id = id;
	get.task_id.data = (uint8_t *)task;
	get.task_id.len = 32;
	get.number = n;
	return fuzz_put_frame(out, cap, FRAME_TYPE_GET_PIECE, &get.base);
}

static size_t put_sync(uint8_t *out, size_t cap, uint64_t id, const uint8_t task[32])
{
	Ringfly__SyncPieces sync = RINGFLY__SYNC_PIECES__INIT;

	sync.id = id;
	sync.task_id.data = (uint8_t *)task;
	sync.task_id.len = 32;
	return fuzz_put_frame(out, cap, FRAME_TYPE_SYNC_PIECES, &sync.base);
}

/* A GetPiece of FULL's last piece is answered with its header and bytes. */
static void check_still_serves(void)
{
	static uint8_t got[PEER_PL + 4096];
	uint8_t req[64], type;
	uint32_t number = PEER_PIECES - 1, size = (uint32_t)(PEER_LENGTH - 3ull * PEER_PL);
	size_t req_len = put_get(req, sizeof(req), 77, full_id, number), got_len, message_len,
	       frame_size;
	const uint8_t *message;
	Ringfly__PieceHeader *h;

	converse(req, req_len, got, sizeof(got), &got_len);
	if (frame_peek(got, got_len, 0, &type, &message, &message_len, &frame_size) !=
		    FRAME_PEEK_OK || type != FRAME_TYPE_PIECE_HEADER)
		fuzz_fail("after %lu inputs, a GetPiece of a held piece got no PieceHeader (%zu "
			  "bytes back)", fx.inputs, got_len);
	h = (Ringfly__PieceHeader *)frame_unpack(type, message, message_len, NULL);
	if (!h || h->id != 77 || h->number != number || h->length != size ||
	    h->offset != 3ull * PEER_PL)
		fuzz_fail("after %lu inputs, a wrong PieceHeader for piece %u", fx.inputs, number);
	protobuf_c_message_free_unpacked(&h->base, NULL);
	if (got_len != frame_size + size ||
	    memcmp(got + frame_size, fx.content + 3ull * PEER_PL, size) != 0)
		fuzz_fail("after %lu inputs, piece %u came back with %zu bytes, not its %u", fx.inputs,
			  number, got_len - frame_size, size);
}

/* --- setup. */

static void piece_written(struct store_task *task, uint32_t number, int res, void *arg)
{
	(void)task;
	(void)arg;
	if (res < 0)
		fuzz_fail("setup: piece %u not written: %s", number, strerror(-res));
	if (--fx.pieces_left == 0)
		loop_stop(fx.loop);
}

static void finish_checked(void *arg, const uint8_t id[META_ID_SIZE])
{
	(void)id;
	*(bool *)arg = true;
	loop_stop(fx.loop);
}

static void make_task(const uint8_t id[32], const uint32_t *numbers, unsigned count, bool finish)
{
	struct store_task_params params = { .content_length = PEER_LENGTH,
					    .piece_length = PEER_PL };
	struct store_task *task;
	char err[512];
	int rc;

	memcpy(params.id, id, 32);
	rc = store_task_open(fx.store, &params, &task, err, sizeof(err));
	if (rc < 0)
		fuzz_fail("setup: store_task_open: %s", err);
	fx.pieces_left = count;
	for (unsigned i = 0; i < count; i++) {
		uint32_t k = numbers[i];
		uint32_t size = piece_size(PEER_LENGTH, PEER_PL, k);
		const uint8_t *bytes = fx.content + piece_offset(PEER_PL, k);

		rc = store_piece_from_buffer(task, k, bytes, size, true, hash_crc32c(bytes, size), NULL,
					     piece_written, NULL);
		if (rc < 0)
			fuzz_fail("setup: piece %u: %s", k, strerror(-rc));
	}
	while (fx.pieces_left)
		if (loop_run(fx.loop) < 0)
			fuzz_fail("setup: the loop failed");
	if (finish) {
		bool checked = false;

		store_task_on_checked(task, finish_checked, &checked);
		while ((rc = store_task_finish(task, err, sizeof(err))) == -EINPROGRESS) {
			checked = false;
			while (!checked)
				if (loop_run(fx.loop) < 0)
					fuzz_fail("setup: the loop failed");
		}
		store_task_on_checked(task, NULL, NULL);
		if (rc < 0)
			fuzz_fail("setup: store_task_finish: %s", err);
	}
	store_task_release(task);
}

static void setup(void)
{
	static const uint32_t all[] = { 0, 1, 2, 3 }, some[] = { 0, 2 };
	static const struct conn_handlers handlers = { .frame = peer_frame, .closed = peer_closed };
	struct conn_server_options server_options = { .max_connections = 4, .name = "peer" };
	struct upload_options upload_options = { .max_requests = 4 };
	struct store_options store_options = { .sync = STORE_SYNC_TASK, .gc_interval_ms = -1 };
	struct sockaddr_un address = { .sun_family = AF_UNIX };
	char err[512];
	int rc;

	log_set_level(LOG_LEVEL_ERROR); /* the service's warnings about bad input are expected */
	fx.dir = fuzz_temp_dir("fuzz-peer");
	fx.content = malloc(PEER_LENGTH);
	if (!fx.content)
		fuzz_fail("out of memory");
	for (uint64_t i = 0; i < PEER_LENGTH; i++)
		fx.content[i] = (uint8_t)(i * 131 + (i >> 9));
	if (loop_create(&fx.loop, NULL) < 0)
		fuzz_fail("setup: loop_create");
	fx.ticker.loop = fx.loop;
	store_options.data_dir = fx.dir;
	rc = store_open(&fx.store, fx.loop, &store_options, err, sizeof(err));
	if (rc < 0)
		fuzz_fail("setup: store_open: %s", err);
	make_task(full_id, all, 4, true);
	make_task(part_id, some, 2, false);
	upload_init(&fx.upload, fx.loop, fx.store, &upload_options);
	if (conn_server_create(&fx.server, fx.loop, &handlers, &server_options, NULL) < 0)
		fuzz_fail("setup: conn_server_create");

	snprintf(fx.sock_path, sizeof(fx.sock_path), "%s/peer.sock", fx.dir);
	memcpy(address.sun_path, fx.sock_path, sizeof(fx.sock_path));
	fx.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fx.listen_fd < 0 || bind(fx.listen_fd, (struct sockaddr *)&address, sizeof(address)) < 0 ||
	    listen(fx.listen_fd, 16) < 0)
		fuzz_fail("setup: listen on %s: %s", fx.sock_path, strerror(errno));
	if (conn_server_listen(fx.server, fx.listen_fd) < 0)
		fuzz_fail("setup: conn_server_listen");
	check_still_serves();
	fx.fds_after_setup = fuzz_count_fds();
	fx.ready = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t sink[1u << 16];
	unsigned fds;

	if (!fx.ready)
		setup();
	converse(data, size, sink, sizeof(sink), NULL);
	fx.inputs++;
	fds = fuzz_count_fds();
	if (fds > fx.fds_after_setup + PEER_FDS_SLACK)
		fuzz_fail("descriptors grow: %u after %lu inputs, %u after setup", fds, fx.inputs,
			  fx.fds_after_setup);
	if (fx.inputs % 64 == 0)
		check_still_serves();
	return 0;
}

void fuzz_seeds(fuzz_emit_fn emit, void *arg)
{
	uint8_t buf[4096];
	size_t n = 0;
	Ringfly__Hello hello = RINGFLY__HELLO__INIT;
	Ringfly__HealthRequest health = RINGFLY__HEALTH_REQUEST__INIT;

	/* What a child sends: SyncPieces, then pipelined GetPiece. */
	n = put_sync(buf, sizeof(buf), 1, full_id);
	for (uint32_t k = 0; k < PEER_PIECES; k++)
		n += put_get(buf + n, sizeof(buf) - n, 10 + k, full_id, k);
	emit(arg, "sync-get-full", buf, n);

	/* The incomplete task: held, missing and out-of-range pieces. */
	n = put_sync(buf, sizeof(buf), 1, part_id);
	n += put_get(buf + n, sizeof(buf) - n, 2, part_id, 0);
	n += put_get(buf + n, sizeof(buf) - n, 3, part_id, 1);
	n += put_get(buf + n, sizeof(buf) - n, 4, part_id, PEER_PIECES);
	emit(arg, "sync-get-part", buf, n);

	/* More requests than a connection may queue: BUSY. */
	n = 0;
	for (uint32_t k = 0; k < 12; k++)
		n += put_get(buf + n, sizeof(buf) - n, 100 + k, full_id, k % PEER_PIECES);
	emit(arg, "get-many", buf, n);

	/* Hello, then two streams of the same task on one connection, and a
	 * message the port does not take. */
	hello.id = 5;
	hello.peer_id = "198.18.0.9:65002";
	n = fuzz_put_frame(buf, sizeof(buf), FRAME_TYPE_HELLO, &hello.base);
	n += put_sync(buf + n, sizeof(buf) - n, 6, part_id);
	n += put_sync(buf + n, sizeof(buf) - n, 7, part_id);
	health.id = 8;
	n += fuzz_put_frame(buf + n, sizeof(buf) - n, FRAME_TYPE_HEALTH_REQUEST, &health.base);
	emit(arg, "hello-syncs-health", buf, n);
}
