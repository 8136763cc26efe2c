/*
 * fuzz_parent: a child's side of a parent connection (daemon/parent.c, and
 * the store's splice of payloads) on any bytes a parent could send: the
 * surface a lying or broken peer of the swarm reaches.
 *
 * Once: a loop, a store in a temporary data dir and a TCP listener on
 * 127.0.0.1 that plays the parent. Every input is one connection: the child
 * opens it with parent_open (SyncPieces), the "parent" accepts, sends the
 * input and shuts its write side; the child requests every piece announced
 * (up to 8 outstanding, each written into a new task of the announced shape,
 * at most 1 MiB), as the download engine does, and closes the parent from
 * its gone() callback, as the engine does. What must hold:
 *   - gone() comes, once, within 10 s (the input always ends with EOF);
 *   - every request gets exactly one piece_done, and nothing else is called
 *     after gone();
 *   - a piece reported recorded (0) is in the task, and was announced;
 *   - the task's writes all end, and descriptors do not grow.
 * Memory errors are the sanitizers' (the Sanitize build runs this test).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/hash.h"
#include "core/log.h"
#include "core/loop.h"
#include "daemon/parent.h"
#include "rpc/frame.h"
#include "storage/piece.h"
#include "storage/store.h"
#include "tests/fuzz/fuzz.h"

const char fuzz_target_name[] = "fuzz_parent";

#define CHILD_DEADLINE_MS 10000u
#define CHILD_OUTSTANDING_MAX 8u
#define CHILD_LENGTH_MAX (1u << 20)
#define CHILD_PIECES_MAX 64u
#define CHILD_FDS_SLACK 16u
#define SEED_PL (64u << 10)

static struct {
	bool ready;
	int listen_fd;
	char address[64];
	struct loop *loop;
	struct fuzz_ticker ticker;
	struct store *store;
	unsigned fds_after_setup;
	unsigned long inputs;
} fx;

/* One conversation: the child's view and the parent's socket. */
struct talk {
	uint8_t task_id[32];
	struct parent *parent;
	struct store_task *st;
	uint32_t piece_count;
	uint8_t announced[CHILD_PIECES_MAX];
	uint8_t requested[CHILD_PIECES_MAX];
	uint8_t done[CHILD_PIECES_MAX];
	unsigned outstanding, requests, dones, gones, recorded, bad_crc;
	bool closed;

	/* the parent's end */
	int fd;
	const uint8_t *data;
	size_t len, sent;
	bool send_armed, recv_armed;
	struct loop_op send_op, recv_op;
	uint8_t sink[4096];
};

/* --- the child: callbacks as the download engine uses them. */

static void request_more(struct talk *t)
{
	for (uint32_t n = 0; n < t->piece_count && t->outstanding < CHILD_OUTSTANDING_MAX; n++) {
		if (!t->announced[n] || t->requested[n] || t->closed)
			continue;
		if (parent_request(t->parent, t->st, n) < 0)
			return;
		t->requested[n] = 1;
		t->outstanding++;
		t->requests++;
	}
}

static int on_shape(struct parent *parent, void *arg, uint64_t content_length,
		    uint64_t piece_length)
{
	struct talk *t = arg;
	struct store_task_params params = { .content_length = content_length,
					    .piece_length = piece_length };
	char err[512];
	int rc;

	(void)parent;
	if (t->closed || t->gones)
		fuzz_fail("shape() after gone()");
	if (content_length > CHILD_LENGTH_MAX ||
	    piece_count(content_length, piece_length) > CHILD_PIECES_MAX)
		return -EFBIG; /* refused: the connection closes, gone() follows */
	memcpy(params.id, t->task_id, sizeof(t->task_id));
	rc = store_task_open(fx.store, &params, &t->st, err, sizeof(err));
	if (rc < 0)
		return rc;
	t->piece_count = piece_count(content_length, piece_length);
	return 0;
}

static void on_have(struct parent *parent, void *arg, const uint32_t *numbers, size_t count)
{
	struct talk *t = arg;

	(void)parent;
	if (t->closed || t->gones)
		fuzz_fail("have() after gone()");
	for (size_t i = 0; i < count; i++) {
		if (numbers[i] >= t->piece_count)
			fuzz_fail("have() of piece %u of %u: not validated", numbers[i],
				  t->piece_count);
		t->announced[numbers[i]] = 1;
	}
	request_more(t);
}

static void on_sync_end(struct parent *parent, void *arg, bool complete, const char *reason)
{
	struct talk *t = arg;

	(void)parent;
	(void)complete;
	if (!reason)
		fuzz_fail("sync_end() without a reason");
	if (t->closed || t->gones)
		fuzz_fail("sync_end() after gone()");
}

static void on_piece_done(struct parent *parent, void *arg, uint32_t number, uint32_t length,
			  int res, const char *reason)
{
	struct talk *t = arg;

	(void)parent;
	(void)length;
	(void)reason;
	if (number >= t->piece_count || !t->requested[number])
		fuzz_fail("piece_done() of piece %u, never requested", number);
	if (t->done[number]++)
		fuzz_fail("piece_done() of piece %u a second time (res %d)", number, res);
	if (res == 0 && (!t->announced[number] || !store_task_has_piece(t->st, number)))
		fuzz_fail("piece %u reported recorded but %s", number,
			  t->announced[number] ? "not in the task" : "never announced");
	t->outstanding--;
	t->dones++;
	t->recorded += res == 0;
	t->bad_crc += res == -EBADMSG;
	if (!t->closed && !t->gones)
		request_more(t);
	loop_stop(fx.loop);
}

static void on_gone(struct parent *parent, void *arg, int error, const char *reason)
{
	struct talk *t = arg;

	(void)error;
	if (!reason || !reason[0])
		fuzz_fail("gone() without a reason");
	if (t->gones++)
		fuzz_fail("gone() a second time: %s", reason);
	/* As the engine does: close it from here. */
	t->closed = true;
	parent_close(parent);
	loop_stop(fx.loop);
}

static const struct parent_callbacks child_callbacks = {
	.shape = on_shape,
	.have = on_have,
	.sync_end = on_sync_end,
	.piece_done = on_piece_done,
	.gone = on_gone,
};

/* --- the parent's end: send the input, drain the requests. */

static void parent_send_next(struct talk *t);

static void parent_sent(struct loop_op *op, int res, uint32_t flags)
{
	struct talk *t = op->owner;

	(void)flags;
	t->send_armed = false;
	if (res > 0) {
		t->sent += (size_t)res;
		if (t->sent < t->len) {
			parent_send_next(t);
			return;
		}
	}
	shutdown(t->fd, SHUT_WR); /* all sent, or the child closed first */
}

static void parent_send_next(struct talk *t)
{
	loop_op_init(&t->send_op, parent_sent, t);
	if (loop_send(fx.loop, &t->send_op, t->fd, t->data + t->sent, t->len - t->sent, 0) < 0)
		fuzz_fail("cannot queue a send");
	t->send_armed = true;
}

static void parent_recv_next(struct talk *t);

static void parent_received(struct loop_op *op, int res, uint32_t flags)
{
	struct talk *t = op->owner;

	(void)flags;
	t->recv_armed = false;
	if (res > 0)
		parent_recv_next(t); /* the child's requests: read and dropped */
}

static void parent_recv_next(struct talk *t)
{
	loop_op_init(&t->recv_op, parent_received, t);
	if (loop_recv(fx.loop, &t->recv_op, t->fd, t->sink, sizeof(t->sink), 0) < 0)
		fuzz_fail("cannot queue a receive");
	t->recv_armed = true;
}

static void converse(const uint8_t *data, size_t size, struct talk *out);

struct seed_pick {
	const char *name;
	uint8_t data[2048];
	size_t len;
};

static void pick_seed(void *arg, const char *name, const void *data, size_t len)
{
	struct seed_pick *pick = arg;

	if (strcmp(name, pick->name) == 0 && len <= sizeof(pick->data)) {
		memcpy(pick->data, data, len);
		pick->len = len;
	}
}

/* Runs the seed called `name` and says what the child made of it. */
static void converse_seed(const char *name, struct talk *result)
{
	static struct seed_pick pick;

	pick.name = name;
	pick.len = 0;
	fuzz_seeds(pick_seed, &pick);
	if (!pick.len)
		fuzz_fail("setup: no seed \"%s\"", name);
	converse(pick.data, pick.len, result);
}

/* The harness sees what it must: an honest parent's piece is recorded, a
 * lying one's is refused for its crc. */
static void self_test(void)
{
	struct talk result;

	converse_seed("honest", &result);
	if (result.recorded != 1 || result.requests != 1)
		fuzz_fail("setup: an honest parent's piece: %u recorded of %u requested",
			  result.recorded, result.requests);
	converse_seed("corrupt", &result);
	if (result.recorded != 0 || result.bad_crc != 1)
		fuzz_fail("setup: a corrupt piece: %u recorded, %u refused for its crc",
			  result.recorded, result.bad_crc);
}

static void setup(void)
{
	struct store_options store_options = { .sync = STORE_SYNC_TASK, .gc_interval_ms = -1 };
	struct sockaddr_in address = { .sin_family = AF_INET,
				       .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t address_len = sizeof(address);
	char err[512];

	log_set_level(LOG_LEVEL_ERROR); /* warnings about the parent's lies are expected */
	/* The child may close while the "parent" still sends: an EPIPE, not a death. */
	signal(SIGPIPE, SIG_IGN);
	store_options.data_dir = fuzz_temp_dir("fuzz-parent");
	if (loop_create(&fx.loop, NULL) < 0)
		fuzz_fail("setup: loop_create");
	fx.ticker.loop = fx.loop;
	if (store_open(&fx.store, fx.loop, &store_options, err, sizeof(err)) < 0)
		fuzz_fail("setup: store_open: %s", err);
	fx.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fx.listen_fd < 0 || bind(fx.listen_fd, (struct sockaddr *)&address, sizeof(address)) < 0 ||
	    listen(fx.listen_fd, 16) < 0 ||
	    getsockname(fx.listen_fd, (struct sockaddr *)&address, &address_len) < 0)
		fuzz_fail("setup: listen on 127.0.0.1: %s", strerror(errno));
	snprintf(fx.address, sizeof(fx.address), "127.0.0.1:%u", ntohs(address.sin_port));
	self_test();
	fx.fds_after_setup = fuzz_count_fds();
	fx.ready = true;
}

/* One conversation; what the child made of it in *out (t's counters). */
static void converse(const uint8_t *data, size_t size, struct talk *out)
{
	struct talk *t;
	char err[512];
	unsigned waited = 0;

	t = calloc(1, sizeof(*t));
	if (!t)
		fuzz_fail("out of memory");
	t->data = data;
	t->len = size;
	t->fd = -1;
	fx.inputs++;
	memcpy(t->task_id, &fx.inputs, sizeof(fx.inputs)); /* a new task each time */
	t->task_id[31] = 0xf2;
	if (parent_open(&t->parent, fx.loop, fx.address, t->task_id, "http://origin.test/f", NULL,
			&child_callbacks, t, err, sizeof(err)) < 0)
		fuzz_fail("parent_open: %s", err);

	/* The parent's end: accept, send the input, then EOF. */
	while (t->fd < 0) {
		t->fd = accept4(fx.listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (t->fd >= 0)
			break;
		if (errno != EAGAIN && errno != EINTR)
			fuzz_fail("accept: %s", strerror(errno));
		if (++waited > CHILD_DEADLINE_MS)
			fuzz_fail("the child did not connect within %u ms", CHILD_DEADLINE_MS);
		fuzz_tick(&fx.ticker);
	}
	if (size)
		parent_send_next(t);
	else
		shutdown(t->fd, SHUT_WR);
	parent_recv_next(t);

	waited = 0;
	while (!t->gones) {
		if (++waited > CHILD_DEADLINE_MS)
			fuzz_fail("no gone() within %u ms: %zu of %zu bytes sent, %u requests, %u "
				  "answered", CHILD_DEADLINE_MS, t->sent, size, t->requests, t->dones);
		fuzz_tick(&fx.ticker);
	}
	/* Writes still in the store end (soon: the socket is shut down). */
	waited = 0;
	while (t->dones < t->requests || t->send_armed || (t->st && store_task_writes(t->st))) {
		if (++waited > CHILD_DEADLINE_MS)
			fuzz_fail("%u of %u requests answered, %u writes in the store, %u ms after "
				  "gone()", t->dones, t->requests, t->st ? store_task_writes(t->st) : 0,
				  CHILD_DEADLINE_MS);
		fuzz_tick(&fx.ticker);
	}
	shutdown(t->fd, SHUT_RDWR);
	while (t->recv_armed)
		fuzz_tick(&fx.ticker);
	close(t->fd);
	if (t->st) {
		int rc;

		/* The store lets go of the task once its last sync turn ends. */
		store_task_release(t->st);
		waited = 0;
		while ((rc = store_delete(fx.store, t->task_id)) == -EBUSY) {
			if (++waited > CHILD_DEADLINE_MS)
				fuzz_fail("the store still holds the task %u ms after its writes",
					  CHILD_DEADLINE_MS);
			fuzz_tick(&fx.ticker);
		}
		if (rc < 0)
			fuzz_fail("the task of input %lu cannot be deleted: %s", fx.inputs,
				  strerror(-rc));
	}
	if (out)
		*out = *t;
	free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned fds;

	if (!fx.ready)
		setup();
	converse(data, size, NULL);
	fds = fuzz_count_fds();
	if (fds > fx.fds_after_setup + CHILD_FDS_SLACK)
		fuzz_fail("descriptors grow: %u after %lu inputs, %u after setup", fds, fx.inputs,
			  fx.fds_after_setup);
	return 0;
}

/* --- seeds: what an honest parent, and a few dishonest ones, send. */

static size_t put_availability(uint8_t *out, size_t cap, uint64_t length, uint64_t pl,
			       uint32_t *pieces, size_t count, bool done)
{
	Ringfly__PieceAvailability m = RINGFLY__PIECE_AVAILABILITY__INIT;

	m.id = 1; /* the child's SyncPieces */
	m.content_length = length;
	m.piece_length = pl;
	m.pieces = pieces;
	m.n_pieces = count;
	m.done = done;
	return fuzz_put_frame(out, cap, FRAME_TYPE_PIECE_AVAILABILITY, &m.base);
}

/* The header of piece `number` (request id `id`) and its bytes; crc of the
 * true bytes, the payload flipped when `lie`. */
static size_t put_piece(uint8_t *out, size_t cap, uint64_t id, uint64_t length, uint64_t pl,
			uint32_t number, bool lie)
{
	Ringfly__PieceHeader h = RINGFLY__PIECE_HEADER__INIT;
	uint32_t size = piece_size(length, pl, number);
	uint8_t bytes[256];
	size_t n;

	if (size > sizeof(bytes))
		fuzz_fail("a seed piece of %u bytes", size);
	for (uint32_t i = 0; i < size; i++)
		bytes[i] = (uint8_t)(number * 7 + i);
	h.id = id;
	h.number = number;
	h.offset = piece_offset(pl, number);
	h.length = size;
	h.crc32c = hash_crc32c(bytes, size);
	if (lie)
		bytes[size / 2] ^= 0x40;
	n = fuzz_put_frame(out, cap, FRAME_TYPE_PIECE_HEADER, &h.base);
	if (n + size > cap)
		fuzz_fail("a seed does not fit");
	memcpy(out + n, bytes, size);
	return n + size;
}

void fuzz_seeds(fuzz_emit_fn emit, void *arg)
{
	/* Two pieces: 64 KiB (not served whole in the seeds: too big to
	 * fuzz) and a short last one of 100 bytes. */
	const uint64_t length = SEED_PL + 100;
	uint32_t last[] = { 1 }, both[] = { 1, 0 };
	Ringfly__Error e = RINGFLY__ERROR__INIT;
	uint8_t buf[2048];
	size_t n;

	/* Honest: availability of the last piece, done; the piece. */
	n = put_availability(buf, sizeof(buf), length, SEED_PL, last, 1, true);
	n += put_piece(buf + n, sizeof(buf) - n, 2, length, SEED_PL, 1, false);
	emit(arg, "honest", buf, n);

	/* Lying about the bytes: crc mismatch. */
	n = put_availability(buf, sizeof(buf), length, SEED_PL, last, 1, false);
	n += put_piece(buf + n, sizeof(buf) - n, 2, length, SEED_PL, 1, true);
	emit(arg, "corrupt", buf, n);

	/* Both announced, the first refused (BUSY), the second served; then
	 * a header for a request never made. */
	n = put_availability(buf, sizeof(buf), length, SEED_PL, both, 2, true);
	e.id = 2;
	e.code = RINGFLY__ERROR_CODE__ERROR_CODE_BUSY;
	e.message = "busy";
	n += fuzz_put_frame(buf + n, sizeof(buf) - n, FRAME_TYPE_ERROR, &e.base);
	n += put_piece(buf + n, sizeof(buf) - n, 3, length, SEED_PL, 1, false);
	n += put_piece(buf + n, sizeof(buf) - n, 9, length, SEED_PL, 1, false);
	emit(arg, "busy-then-unasked", buf, n);

	/* The task is not there: Error for the sync. */
	e.id = 1;
	e.code = RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND;
	e.message = "no such task";
	n = fuzz_put_frame(buf, sizeof(buf), FRAME_TYPE_ERROR, &e.base);
	emit(arg, "not-found", buf, n);

	/* A shape that changes mid-stream, and half a payload. */
	n = put_availability(buf, sizeof(buf), length, SEED_PL, last, 1, false);
	n += put_availability(buf + n, sizeof(buf) - n, length + 1, SEED_PL, last, 1, true);
	emit(arg, "reshape", buf, n);
	n = put_availability(buf, sizeof(buf), length, SEED_PL, last, 1, true);
	n += put_piece(buf + n, sizeof(buf) - n, 2, length, SEED_PL, 1, false) - 50;
	emit(arg, "half-payload", buf, n);
}
