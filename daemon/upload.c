/* upload: the peer service on TCP: SyncPieces streams and GetPiece answers from the cache. */
#include "daemon/upload.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/hash.h"
#include "core/log.h"

/* Piece numbers per PieceAvailability frame: 5 bytes each at most. */
#define UPLOAD_NUMBERS_PER_FRAME 65536u
/* SyncPieces streams open on one connection (a child needs one per task). */
#define UPLOAD_SYNCS_PER_CONN 16u
/* A seed starts a download for a peer's SyncPieces of a task it lacks only
 * while fewer than this many are under way (any peer may name any URL: each
 * new one is an origin connection, a file and memory). */
#define UPLOAD_SEED_FETCHES_MAX 64u
/*
 * Spreading (seeds): a piece a seed has just recorded, while children follow
 * the task, is told at once to one of their streams (in turn) and to the
 * others this much later. Told to all at once, every idle child asks for it at once
 * (a seed's newest piece is the rarest thing in the swarm), and the parent
 * sends it N times; told to one, the others get it from that one (or from
 * here, once the delay is over). A task that completes keeps its held
 * pieces held (the end of the stream, "done", waits for them): telling every
 * child at once had all of them ask the seed for the last pieces together
 * (P4: pieces sent 5 to 8 times). A stream that starts on a complete task
 * is told it whole. Peers tell everyone at once: they are where the others
 * should get it.
 *
 * The roots of the task, named by the seed's scheduler (upload_set_roots:
 * the head of the chain of downloading peers, scheduler/state.h) are the
 * streams told in turn, at once; the others hear of a piece only when
 * UPLOAD_SPREAD_MS is over: they get it down the chain from the head, and
 * the seed is their fallback for a chain that stalls (the scheduler names
 * it to them only then). Told a second after it went out, as without roots,
 * the peers down the chain asked the seed for pieces the peers before them
 * were still fetching and took the head's share of its uplink.
 */
#define UPLOAD_SPREAD_MS 3000u
/* Once the piece has gone out to a child, the others hear of it this much
 * later: time for that child to record and announce it. */
#define UPLOAD_SPREAD_AFTER_SENT_MS 1000u
/* ... and once the seed's own download is complete (its uplink carries
 * nothing new any more), this much later: P4 N=8 median 3.74 s against 4.70 s
 * with 1 s (12 runs each, alternated). Only for pieces already sent: telling
 * the unsent ones early brings back the end-of-download storm. The roots of
 * the task (below) hear as soon while it downloads. */
#define UPLOAD_SPREAD_DONE_MS 300u
#define UPLOAD_SPREAD_TICK_MS 50u

struct upload_get {
	uint64_t id;
	uint8_t task_id[32];
	uint32_t number;
};

/* A peer connection's state (its conn_user). Lives until the connection is
 * closed and the last payload it queued has been reported done. */
struct upload_conn {
	struct upload *upload;
	struct conn *conn;
	struct upload_get *queue;	/* ring of max_requests GetPiece not answered yet */
	unsigned head, count;
	unsigned sending;		/* payloads queued on the conn, not yet done */
	unsigned syncs;			/* its SyncPieces streams still open */
	struct store_task *kept;	/* a complete task kept open while we serve it */
	struct upload_conn *next_blocked;
	bool blocked;
	bool pumping;			/* inside upload_pump: not freed under it */
	bool closed;
};

/* One SyncPieces stream: told of every piece the store records for the task. */
struct upload_sync {
	struct upload_sync *next;
	struct upload_conn *uc;
	uint64_t id;
	uint8_t task_id[32];
	/* Pieces held back (spreading), oldest first, and when each is due. */
	uint32_t *held;
	uint64_t *held_due_ms;
	size_t held_count, held_cap;
	bool complete;		/* the task is: "done" goes once nothing is held */
	struct store_task *task;	/* held open meanwhile (complete only) */
	bool root;		/* the child is a root of the task (upload_set_roots) */
	char peer_id[160];	/* the child's, from SyncPieces ("" if none) */
};

/* One payload on its way: holds the task open until it is sent. */
struct upload_send {
	struct upload_conn *uc;
	struct store_task *task;
	uint32_t number;
};

static void upload_pump(struct upload_conn *uc);
static void upload_spread_sent(struct upload *upload, const uint8_t task_id[32], uint32_t number);

static void upload_conn_maybe_free(struct upload_conn *uc)
{
	if (!uc->closed || uc->sending || uc->blocked || uc->pumping)
		return;
	free(uc->queue);
	free(uc);
}

/* --- the rate limit: one token bucket over every upload, in bytes. */

static void upload_refill(struct upload *upload)
{
	uint64_t now = clock_monotonic_ms();
	/* At least one byte: with rate_limit / 4 == 0 the bucket never goes above 0. */
	int64_t burst = upload->options.rate_limit >= 4 ? (int64_t)(upload->options.rate_limit / 4) : 1;
	uint64_t gained;

	if (!upload->options.rate_limit)
		return; /* unlimited (a timer armed before a SIGHUP may still end) */
	if (now > upload->tokens_ms) {
		gained = upload->options.rate_limit * (now - upload->tokens_ms) / 1000;
		upload->tokens += (int64_t)gained;
		/* Only the time the gained bytes took: a fraction of a byte is not lost. */
		upload->tokens_ms += gained * 1000 / upload->options.rate_limit;
	}
	if (upload->tokens > burst) {
		upload->tokens = burst;
		upload->tokens_ms = now;
	}
}

static void upload_timer_done(struct loop_op *op, int res, uint32_t flags)
{
	struct upload *upload = op->owner;
	struct upload_conn *list = upload->blocked;

	(void)res;
	(void)flags;
	upload->timer_armed = false;
	upload->blocked = NULL;
	if (upload->closing) {
		while (list) {
			struct upload_conn *uc = list;

			list = uc->next_blocked;
			uc->blocked = false;
			upload_conn_maybe_free(uc);
		}
		return;
	}
	upload_refill(upload);
	while (list) {
		struct upload_conn *uc = list;

		list = uc->next_blocked;
		uc->blocked = false;
		if (uc->closed)
			upload_conn_maybe_free(uc);
		else
			upload_pump(uc);
	}
}

/* True if `uc` may send now; else it waits in the blocked list. */
static bool upload_may_send(struct upload_conn *uc)
{
	struct upload *upload = uc->upload;
	uint64_t wait_ms;

	if (!upload->options.rate_limit)
		return true;
	upload_refill(upload);
	if (upload->tokens > 0)
		return true;
	/* The timer first: a connection marked blocked with no timer to wake
	 * it would skip its pump for every later request. */
	if (!upload->timer_armed) {
		wait_ms = (uint64_t)(-upload->tokens) * 1000 / upload->options.rate_limit + 1;
		loop_op_init(&upload->timer_op, upload_timer_done, upload);
		if (loop_timeout(upload->loop, &upload->timer_op, wait_ms) < 0)
			return true; /* no timer: better unlimited than stuck */
		upload->timer_armed = true;
	}
	if (!uc->blocked) {
		uc->blocked = true;
		uc->next_blocked = upload->blocked;
		upload->blocked = uc;
	}
	return false;
}

void upload_set_rate_limit(struct upload *upload, uint64_t bytes_per_s)
{
	upload->options.rate_limit = bytes_per_s;
	upload->tokens = 0;
	upload->tokens_ms = clock_monotonic_ms();
	/* Connections waiting on a timer computed from the old limit: now. */
	if (upload->timer_armed)
		loop_cancel_op(upload->loop, &upload->timer_op);
	log_info("upload", "upload rate limit bytes_per_s=%llu%s", (unsigned long long)bytes_per_s,
		 bytes_per_s ? "" : " (none)");
}

/* --- GetPiece. */

static void upload_sent(struct conn *conn, void *arg, int res)
{
	struct upload_send *send = arg;
	struct upload_conn *uc = send->uc;

	(void)conn;
	if (res < 0)
		log_debug("upload", "payload not sent peer=%s error=\"%s\"",
			  uc->closed ? "-" : conn_peer_name(uc->conn), strerror(-res));
	else
		upload_spread_sent(uc->upload, store_task_info(send->task)->id, send->number);
	store_task_release(send->task);
	free(send);
	uc->sending--;
	if (uc->closed)
		upload_conn_maybe_free(uc);
	else
		upload_pump(uc);
}

static void upload_answer(struct upload_conn *uc, const struct upload_get *get)
{
	struct upload *upload = uc->upload;
	Ringfly__PieceHeader header = RINGFLY__PIECE_HEADER__INIT;
	char hex[HASH_SHA256_HEX_SIZE];
	struct store_task *task;
	struct upload_send *send;
	uint64_t offset;
	uint32_t length, count;
	int fd, rc;

	hash_hex(get->task_id, hex);
	rc = store_task_find(upload->store, get->task_id, &task);
	if (rc < 0) {
		conn_reply_error(uc->conn, get->id, rc == -ENOENT
				 ? RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND
				 : RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				 "no such task %s here%s%s", hex, rc == -ENOENT ? "" : ": ",
				 rc == -ENOENT ? "" : strerror(-rc));
		return;
	}
	count = store_task_info(task)->piece_count;
	if (get->number >= count) {
		conn_reply_error(uc->conn, get->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "piece %u out of range: task %s has %u pieces", get->number, hex,
				 count);
		store_task_release(task);
		return;
	}
	rc = store_piece_locate(task, get->number, &fd, &offset, &length);
	if (rc < 0) {
		conn_reply_error(uc->conn, get->id, rc == -ENOENT || rc == -EBADMSG
				 ? RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND
				 : RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				 "piece %u of task %s is not here: %s", get->number, hex,
				 rc == -ENOENT ? "not recorded (yet)"
					       : rc == -EBADMSG ? "its cached copy is damaged"
								: strerror(-rc));
		store_task_release(task);
		return;
	}
	/* Later requests for a complete task find it open. */
	if (store_task_is_complete(task) && uc->kept != task) {
		if (uc->kept)
			store_task_release(uc->kept);
		store_task_find(upload->store, get->task_id, &uc->kept);
	}
	header.id = get->id;
	header.number = get->number;
	header.offset = offset;
	header.length = length;
	header.crc32c = store_piece_crc(task, get->number);
	send = malloc(sizeof(*send));
	if (!send || conn_send_frame(uc->conn, FRAME_TYPE_PIECE_HEADER, &header.base) < 0) {
		free(send);
		store_task_release(task);
		if (!send)
			conn_reply_error(uc->conn, get->id, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY,
					 "out of memory");
		return;
	}
	send->uc = uc;
	send->task = task;
	send->number = get->number;
	rc = conn_send_file(uc->conn, fd, offset, length, upload_sent, send);
	if (rc < 0) {
		/* A header without its bytes: the stream cannot go on. */
		log_warn("upload", "cannot queue a piece peer=%s task=%s piece=%u error=\"%s\"",
			 conn_peer_name(uc->conn), hex, get->number, strerror(-rc));
		free(send);
		store_task_release(task);
		conn_close(uc->conn);
		return;
	}
	uc->sending++;
	upload->pieces_served++;
	upload->bytes_served += length;
	if (upload->options.rate_limit)
		upload->tokens -= length;
	log_debug("upload", "upload piece task=%s piece=%u peer=%s", hex, get->number,
		  conn_peer_name(uc->conn));
}

/* Answers queued requests in order while the rate limit allows. */
static void upload_pump(struct upload_conn *uc)
{
	unsigned cap = uc->upload->options.max_requests;

	if (uc->pumping)
		return;
	uc->pumping = true;
	/* Past CONN_FILES_MAX payloads the conn refuses more: the rest wait
	 * in the queue for upload_sent. */
	while (uc->count && !uc->closed && uc->sending < CONN_FILES_MAX && upload_may_send(uc)) {
		struct upload_get get = uc->queue[uc->head];

		uc->head = (uc->head + 1) % cap;
		uc->count--;
		upload_answer(uc, &get);
	}
	uc->pumping = false;
	upload_conn_maybe_free(uc);
}

static struct upload_conn *upload_conn_of(struct upload *upload, struct conn *conn)
{
	struct upload_conn *uc = conn_user(conn);

	if (uc)
		return uc;
	uc = calloc(1, sizeof(*uc));
	if (!uc)
		return NULL;
	uc->queue = calloc(upload->options.max_requests, sizeof(*uc->queue));
	if (!uc->queue) {
		free(uc);
		return NULL;
	}
	uc->upload = upload;
	uc->conn = conn;
	conn_set_user(conn, uc);
	return uc;
}

static bool upload_task_id(struct conn *conn, uint64_t id, const ProtobufCBinaryData *task_id)
{
	if (task_id->len == 32)
		return true;
	conn_reply_error(conn, id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
			 "task_id has %zu bytes, not 32", task_id->len);
	return false;
}

static void upload_get_piece(struct upload *upload, struct conn *conn, const Ringfly__GetPiece *m)
{
	struct upload_conn *uc = upload_conn_of(upload, conn);
	unsigned cap = upload->options.max_requests;
	struct upload_get *get;

	if (!uc) {
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY, "out of memory");
		return;
	}
	if (!upload_task_id(conn, m->id, &m->task_id))
		return;
	if (uc->count + uc->sending >= cap) {
		log_info("upload", "upload busy peer=%s requests=%u limit=%u", conn_peer_name(conn),
			 uc->count + uc->sending, cap);
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY,
				 "too many piece requests in flight (limit %u); try elsewhere", cap);
		return;
	}
	get = &uc->queue[(uc->head + uc->count) % cap];
	get->id = m->id;
	memcpy(get->task_id, m->task_id.data, 32);
	get->number = m->number;
	uc->count++;
	if (!uc->blocked)
		upload_pump(uc);
}

/* --- SyncPieces. */

static void upload_send_availability(struct conn *conn, uint64_t id, const struct meta_task *info,
				     uint32_t *numbers, size_t count, bool done, bool failed,
				     const char *reason)
{
	Ringfly__PieceAvailability m = RINGFLY__PIECE_AVAILABILITY__INIT;

	m.id = id;
	m.content_length = info->content_length;
	m.piece_length = info->piece_length;
	m.pieces = numbers;
	m.n_pieces = count;
	m.done = done;
	m.failed = failed;
	m.reason = (char *)(reason ? reason : "");
	conn_send_frame(conn, FRAME_TYPE_PIECE_AVAILABILITY, &m.base);
}

static void upload_sync_remove(struct upload *upload, struct upload_sync *sync)
{
	for (struct upload_sync **p = &upload->syncs; *p; p = &(*p)->next) {
		if (*p == sync) {
			*p = sync->next;
			sync->uc->syncs--;
			if (sync->task)
				store_task_release(sync->task);
			free(sync->held);
			free(sync->held_due_ms);
			free(sync);
			return;
		}
	}
}

/* NOT_FOUND for now: the child asks again (download.c reads the text). */
static void upload_reply_fetching(struct conn *conn, uint64_t id, const char *hex)
{
	conn_reply_error(conn, id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND,
			 "no such task %s here yet: " DOWNLOAD_FETCHING_NOW, hex);
}

/* A seed asked for a task it lacks starts fetching it; the child asks again. */
static bool upload_seed_fetch(struct upload *upload, struct conn *conn,
			      const Ringfly__SyncPieces *m, const char *hex)
{
	uint8_t id[32];
	char err[512];

	if (!upload->options.seed || !upload->options.engine || !m->url || !m->url[0])
		return false;
	download_task_id(m->url, id);
	if (memcmp(id, m->task_id.data, 32) != 0) {
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "task %s is not the task of %s", hex, m->url);
		return true;
	}
	if (!download_seed_may_fetch(m->url, upload->options.fetch_from, err, sizeof(err))) {
		log_warn("upload", "seed fetch refused task=%s url=%s peer=%s reason=\"%s\"", hex,
			 m->url, conn_peer_name(conn), err);
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "no such task %s here, and this seed does not fetch it for peers: %s",
				 hex, err);
		return true;
	}
	if (!download_task_running(upload->options.engine, id) &&
	    download_engine_active(upload->options.engine) >= UPLOAD_SEED_FETCHES_MAX) {
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY,
				 "no such task %s here, and this seed is fetching %u tasks already "
				 "(limit %u)", hex, download_engine_active(upload->options.engine),
				 UPLOAD_SEED_FETCHES_MAX);
		return true;
	}
	if (download_prefetch(upload->options.engine, m->url, NULL, err, sizeof(err)) < 0) {
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND,
				 "no such task %s here and cannot fetch it: %s", hex, err);
		return true;
	}
	log_info("upload", "seed fetch task=%s url=%s for peer=%s", hex, m->url,
		 conn_peer_name(conn));
	upload_reply_fetching(conn, m->id, hex);
	return true;
}

static void upload_sync_pieces(struct upload *upload, struct conn *conn,
			       const Ringfly__SyncPieces *m)
{
	struct upload_conn *uc = upload_conn_of(upload, conn);
	char hex[HASH_SHA256_HEX_SIZE];
	const struct meta_task *info;
	struct store_task *task;
	struct upload_sync *sync;
	uint32_t *numbers;
	size_t n = 0;
	bool complete, failed;
	int rc;

	if (!uc) {
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY, "out of memory");
		return;
	}
	if (!upload_task_id(conn, m->id, &m->task_id))
		return;
	if (uc->syncs >= UPLOAD_SYNCS_PER_CONN) {
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY,
				 "too many SyncPieces streams on one connection (limit %u)",
				 UPLOAD_SYNCS_PER_CONN);
		return;
	}
	hash_hex(m->task_id.data, hex);
	rc = store_task_find(upload->store, m->task_id.data, &task);
	if (rc == -ENOENT && upload_seed_fetch(upload, conn, m, hex))
		return;
	/* Our own download of it has not learned the length yet (a chain
	 * started all at once: our parent is probing too): the child waits
	 * as for a seed, not gives up after five tries. */
	if (rc == -ENOENT && upload->options.engine &&
	    download_task_running(upload->options.engine, m->task_id.data)) {
		upload_reply_fetching(conn, m->id, hex);
		return;
	}
	if (rc < 0) {
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND,
				 "no such task %s here%s%s", hex, rc == -ENOENT ? "" : ": ",
				 rc == -ENOENT ? "" : strerror(-rc));
		return;
	}
	info = store_task_info(task);
	complete = store_task_is_complete(task);
	failed = info->state == META_TASK_FAILED;
	numbers = malloc(sizeof(*numbers) * (info->piece_count < UPLOAD_NUMBERS_PER_FRAME
					     ? (info->piece_count ? info->piece_count : 1)
					     : UPLOAD_NUMBERS_PER_FRAME));
	sync = complete || failed ? NULL : calloc(1, sizeof(*sync));
	if (!numbers || (!complete && !failed && !sync)) {
		free(numbers);
		free(sync);
		store_task_release(task);
		conn_reply_error(conn, m->id, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY, "out of memory");
		return;
	}
	for (uint32_t i = 0; i < info->piece_count; i++) {
		if (!store_task_has_piece(task, i))
			continue;
		numbers[n++] = i;
		if (n == UPLOAD_NUMBERS_PER_FRAME) {
			upload_send_availability(conn, m->id, info, numbers, n, false, false, NULL);
			n = 0;
		}
	}
	upload_send_availability(conn, m->id, info, numbers, n, complete, failed,
				 failed ? store_task_error(task) : NULL);
	free(numbers);
	log_info("upload", "sync task=%s peer=%s state=%s pieces=%u/%u", hex, conn_peer_name(conn),
		 complete ? "complete" : failed ? "failed" : "pending", info->pieces_done,
		 info->piece_count);
	if (sync) {
		size_t id_len = m->peer_id ? strlen(m->peer_id) : 0;

		sync->uc = uc;
		sync->id = m->id;
		memcpy(sync->task_id, m->task_id.data, 32);
		if (m->peer_id && id_len < sizeof(sync->peer_id)) /* longer: not an id of ours */
			memcpy(sync->peer_id, m->peer_id, id_len + 1);
		sync->next = upload->syncs;
		upload->syncs = sync;
		uc->syncs++;
	}
	/* If nobody else holds it, nobody is filling it: the stream ends here
	 * (the observer says so). */
	store_task_release(task);
}

/* Sends the held pieces due by now_ms (all with `all`); the rest stay. */
static void upload_sync_flush(struct upload_sync *sync, const struct meta_task *info,
			      uint64_t now_ms, bool all)
{
	uint32_t due[256];
	size_t n = 0, kept = 0;

	for (size_t i = 0; i < sync->held_count; i++) {
		if ((all || sync->held_due_ms[i] <= now_ms) && n < sizeof(due) / sizeof(due[0])) {
			due[n++] = sync->held[i];
			continue;
		}
		sync->held[kept] = sync->held[i];
		sync->held_due_ms[kept++] = sync->held_due_ms[i];
	}
	sync->held_count = kept;
	if (n)
		upload_send_availability(sync->uc->conn, sync->id, info, due, n, false, false,
					 NULL);
	if (all && kept)
		upload_sync_flush(sync, info, now_ms, true);
}

/* A held piece went out to a child: the other streams hear of it soon. */
static void upload_spread_sent(struct upload *upload, const uint8_t task_id[32], uint32_t number)
{
	uint64_t now_ms = clock_monotonic_ms();
	bool chain = false;

	for (struct upload_sync *sync = upload->syncs; sync && !chain; sync = sync->next)
		chain = sync->root && memcmp(sync->task_id, task_id, 32) == 0;
	for (struct upload_sync *sync = upload->syncs; sync; sync = sync->next) {
		uint64_t due_ms = now_ms + (sync->complete || sync->root
						    ? UPLOAD_SPREAD_DONE_MS
						    : UPLOAD_SPREAD_AFTER_SENT_MS);

		if (!sync->held_count || memcmp(sync->task_id, task_id, 32) != 0)
			continue;
		/* The others get it from the head of the chain, down the
		 * chain: the seed is their fallback (UPLOAD_SPREAD_MS). */
		if (chain && !sync->root && !sync->complete)
			continue;
		for (size_t i = 0; i < sync->held_count; i++)
			if (sync->held[i] == number && sync->held_due_ms[i] > due_ms)
				sync->held_due_ms[i] = due_ms;
	}
}

static void upload_spread_arm(struct upload *upload);

static void upload_spread_done(struct loop_op *op, int res, uint32_t flags)
{
	struct upload *upload = op->owner;
	uint64_t now_ms = clock_monotonic_ms();

	(void)res;
	(void)flags;
	upload->spread_armed = false;
	if (upload->closing)
		return;
	for (struct upload_sync *sync = upload->syncs, *next; sync; sync = next) {
		const struct meta_task *info;
		struct store_task *task;

		next = sync->next;
		if (!sync->held_count)
			continue;
		if (sync->task) {
			task = sync->task; /* a complete task, held open */
		} else if (store_task_find(upload->store, sync->task_id, &task) < 0) {
			/* Gone while it was downloading: its stream gets the
			 * IDLE or FAILED event; nothing left to tell here. */
			sync->held_count = 0;
			continue;
		}
		info = store_task_info(task);
		upload_sync_flush(sync, info, now_ms, false);
		if (sync->complete && !sync->held_count) {
			upload_send_availability(sync->uc->conn, sync->id, info, NULL, 0, true,
						 false, NULL);
			upload_sync_remove(upload, sync); /* releases sync->task */
		} else if (!sync->task) {
			store_task_release(task);
		}
	}
	upload_spread_arm(upload);
}

static void upload_spread_arm(struct upload *upload)
{
	bool held = false;

	for (struct upload_sync *sync = upload->syncs; sync && !held; sync = sync->next)
		held = sync->held_count > 0;
	if (!held || upload->spread_armed || upload->closing)
		return;
	loop_op_init(&upload->spread_op, upload_spread_done, upload);
	if (loop_timeout(upload->loop, &upload->spread_op, UPLOAD_SPREAD_TICK_MS) == 0)
		upload->spread_armed = true;
}

/* Holds `number` back from `sync` until the spreading delay is over; false
 * (tell it now) if there is no memory for it. */
static bool upload_sync_hold(struct upload_sync *sync, uint32_t number, uint64_t due_ms)
{
	if (sync->held_count == sync->held_cap) {
		size_t cap = sync->held_cap ? sync->held_cap * 2 : 16;
		uint32_t *held = realloc(sync->held, cap * sizeof(*held));
		uint64_t *due;

		if (!held)
			return false;
		sync->held = held;
		due = realloc(sync->held_due_ms, cap * sizeof(*due));
		if (!due)
			return false;
		sync->held_due_ms = due;
		sync->held_cap = cap;
	}
	sync->held[sync->held_count] = number;
	sync->held_due_ms[sync->held_count++] = due_ms;
	return true;
}

/* A new piece: told now to the next stream in turn, later to the others. */
static void upload_spread_piece(struct upload *upload, const struct meta_task *info,
				uint32_t number)
{
	struct upload_sync *sync;
	unsigned streams = 0, roots = 0, chosen, i = 0;
	uint64_t due_ms = clock_monotonic_ms() + UPLOAD_SPREAD_MS;

	for (sync = upload->syncs; sync; sync = sync->next) {
		if (memcmp(sync->task_id, info->id, 32) != 0)
			continue;
		streams++;
		roots += sync->root;
	}
	/* In turn among the roots when the scheduler named some: the head of
	 * the chain passes each piece down. */
	if (roots)
		streams = roots;
	chosen = streams ? upload->spread_turn++ % streams : 0;
	for (sync = upload->syncs; sync; sync = sync->next) {
		bool turn;

		if (memcmp(sync->task_id, info->id, 32) != 0)
			continue;
		turn = (!roots || sync->root) && i++ == chosen;
		if (!upload->options.seed || !upload->options.spread || turn ||
		    !upload_sync_hold(sync, number, due_ms))
			upload_send_availability(sync->uc->conn, sync->id, info, &number, 1, false,
						 false, NULL);
	}
	upload_spread_arm(upload);
}

static void upload_observe(void *arg, struct store_task *task, enum store_event event,
			   uint32_t number)
{
	struct upload *upload = arg;
	const struct meta_task *info = store_task_info(task);
	struct upload_sync *sync, *next;

	if (event == STORE_EVENT_PIECE) {
		upload_spread_piece(upload, info, number);
		return;
	}
	for (sync = upload->syncs; sync; sync = next) {
		next = sync->next;
		if (memcmp(sync->task_id, info->id, 32) != 0)
			continue;
		switch (event) {
		case STORE_EVENT_PIECE:
			break;
		case STORE_EVENT_COMPLETE:
			/* upload_spread_done ends it, with the task held open
			 * until then (neither GC nor a delete can take it from
			 * under the stream; the task is open: a reference). */
			if (sync->held_count &&
			    store_task_find(upload->store, info->id, &sync->task) == 0) {
				sync->complete = true;
				break;
			}
			/* Every piece is told before the end. */
			upload_sync_flush(sync, info, 0, true);
			upload_send_availability(sync->uc->conn, sync->id, info, NULL, 0, true,
						 false, NULL);
			upload_sync_remove(upload, sync);
			break;
		case STORE_EVENT_FAILED:
			upload_send_availability(sync->uc->conn, sync->id, info, NULL, 0, false,
						 true, store_task_error(task));
			upload_sync_remove(upload, sync);
			break;
		case STORE_EVENT_IDLE:
			upload_send_availability(sync->uc->conn, sync->id, info, NULL, 0, false,
						 true, "the parent is not downloading this task");
			upload_sync_remove(upload, sync);
			break;
		}
	}
}

void upload_set_roots(struct upload *upload, const uint8_t task_id[32],
		      const char *const *peer_ids, size_t count)
{
	for (struct upload_sync *sync = upload->syncs; sync; sync = sync->next) {
		if (memcmp(sync->task_id, task_id, 32) != 0)
			continue;
		sync->root = false;
		for (size_t i = 0; i < count && sync->peer_id[0] && !sync->root; i++)
			sync->root = strcmp(sync->peer_id, peer_ids[i]) == 0;
	}
}

/* --- the service. */

bool upload_frame(struct upload *upload, struct conn *conn, uint8_t type,
		  const ProtobufCMessage *msg)
{
	switch (type) {
	case FRAME_TYPE_SYNC_PIECES:
		upload_sync_pieces(upload, conn, (const Ringfly__SyncPieces *)msg);
		return true;
	case FRAME_TYPE_GET_PIECE:
		upload_get_piece(upload, conn, (const Ringfly__GetPiece *)msg);
		return true;
	default:
		return false;
	}
}

void upload_conn_closed(struct upload *upload, struct conn *conn)
{
	struct upload_conn *uc = conn_user(conn);
	struct upload_sync *sync, *next;

	if (!uc)
		return;
	conn_set_user(conn, NULL);
	for (sync = upload->syncs; sync; sync = next) {
		next = sync->next;
		if (sync->uc == uc)
			upload_sync_remove(upload, sync);
	}
	uc->count = 0;
	uc->closed = true;
	uc->conn = NULL;
	if (uc->kept) {
		store_task_release(uc->kept);
		uc->kept = NULL;
	}
	upload_conn_maybe_free(uc);
}

void upload_init(struct upload *upload, struct loop *loop, struct store *store,
		 const struct upload_options *options)
{
	memset(upload, 0, sizeof(*upload));
	upload->loop = loop;
	upload->store = store;
	upload->options = *options;
	if (!upload->options.max_requests)
		upload->options.max_requests = 64;
	upload->tokens_ms = clock_monotonic_ms();
	store_set_observer(store, upload_observe, upload);
}

void upload_fini(struct upload *upload)
{
	upload->closing = true;
	store_set_observer(upload->store, NULL, NULL);
	while (upload->syncs)
		upload_sync_remove(upload, upload->syncs);
	/* The timer that would have freed them never completes now. */
	while (upload->blocked) {
		struct upload_conn *uc = upload->blocked;

		upload->blocked = uc->next_blocked;
		uc->blocked = false;
		uc->closed = true; /* its connection is gone with the loop */
		upload_conn_maybe_free(uc);
	}
}
