/* download: the node's task manager: back-to-source fetches into the cache, shared
 * tasks, and requesters' outputs filled from the cache. See download.h. */
#include "daemon/download.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/hash.h"
#include "core/log.h"
#include "daemon/parent.h"
#include "daemon/schedclient.h"
#include "net/origin.h"
#include "storage/piece.h"

/*
 * Life of a task (struct dl_task):
 *
 *     PROBING --HEAD ok--> FETCHING --last piece recorded, digest ok--> COMPLETE
 *        |                    |
 *        +------ error -------+--> FAILED        (every watcher told why)
 *        +-- last watcher gone-+--> STOPPED      (recorded pieces stay)
 *
 * A task found complete in the cache starts in COMPLETE. A task leaves the
 * engine (dl_task_maybe_end) only when it is in a final state and nothing
 * refers to it any more: no watcher, no origin request, no piece write in
 * flight (the store still reads its buffer), no output copy queued. Origin
 * requests are cancelled synchronously (origin_request_cancel: no callback
 * afterwards), piece writes are waited for: the store's done callback is the
 * only place their buffers come back.
 */

#define DOWNLOAD_PARALLEL_DEFAULT 4u
#define DOWNLOAD_PARALLEL_MAX 64u
#define DOWNLOAD_MEMORY_DEFAULT (256ull << 20)
#define DOWNLOAD_PROGRESS_DEFAULT_MS 250u
#define DOWNLOAD_ORIGIN_BUFFER_DEFAULT (1u << 20)
#define DOWNLOAD_ORIGINS_MAX 8u
/* Output bytes copied per loop turn before yielding to other work. */
#define DOWNLOAD_COPY_TURN_BYTES (64ull << 20)
#define DOWNLOAD_HEADERS_MAX 64u
#define DOWNLOAD_PARENTS_MAX 64u	/* connections to parents per task */
#define DOWNLOAD_PARENT_CONNECTIONS_DEFAULT 2u
#define DOWNLOAD_PARENT_REQUESTS_DEFAULT 8u
#define DOWNLOAD_PIECE_TIMEOUT_DEFAULT_MS 30000u
/* A parent that sent this many pieces with a wrong crc is dropped. */
/* Requests in flight per connection once a task has several parents (a
 * swarm): a child that asked one parent for a deep pipeline of pieces would
 * have that parent (the seed, first to have anything) send it a large part
 * of the file before its siblings could; one piece per connection leaves
 * the rest to whoever has it next. One parent alone keeps parent_requests. */
#define DL_SWARM_REQUESTS 1u
/* NOT_FOUNDs of one piece from one parent before its announcements of it
 * are no longer believed. */
#define DL_DENIALS_MAX 3u
/* Pieces of one connection whose bytes are in, still being checked, synced
 * and recorded (piece_done not yet come). They free their request's place on
 * the wire (parent_receiving) but stay bounded: the store records in batches
 * of up to storage.sync_batch (16), so two batches fit without stopping the
 * wire; with a disk slower than the network the wire waits for it here. */
#define DL_SETTLING_MAX 32u
#define DL_PARENT_STRIKES 3u
#define DL_FAILED_REPORT_MAX 8u	/* failed parents told per announcement */
/* A parent without the task yet (it may be about to start it: a chain
 * started all at once) is asked again after 50, 100, 200, 400, 800 ms ... */
#define DL_PARENT_RETRIES 5u
/* ... and one that is fetching it (DOWNLOAD_FETCHING_NOW: a seed fetching it for
 * us, a peer whose own download is still probing) every 400 ms at most, for
 * 6.35 s in all: a chain started at once learns the length hop by hop, and a
 * doubling delay summed over the hops sent the tail to the origin. */
#define DL_PARENT_RETRIES_FETCHING 18u
#define DL_PARENT_RETRY_MAX_MS 400u
#define DL_ANNOUNCE_MS 1000u
/* How long a task whose last parent went waits for the scheduler to name
 * others (asked at the next tick) before the origin. */
#define DL_SCHED_HOPE_MS (2u * DL_ANNOUNCE_MS)
#define DL_PARENT_RETRY_MS 50u
/* Outputs a piece is written into straight from its buffer; more watchers
 * of one task get it copied from the cache file afterwards. */
#define DL_PIECE_OUTPUTS 4u

enum dl_state {
	DL_PROBING = 0,
	DL_FETCHING,
	DL_COMPLETE,
	DL_FAILED,
	DL_STOPPED,
};

/* One origin (libcurl multi) per TLS setting, for the engine's lifetime:
 * an origin can only be destroyed once the loop has stopped. */
struct dl_origin {
	bool insecure;
	char ca_file[PATH_MAX];
	struct origin *origin;
};

struct dl_buffer {
	struct dl_buffer *next;
};

/* One piece on its way: fetched by a range request (or cut from the
 * sequential stream) into buf, then written by the store. */
struct dl_output_write {
	struct loop_op op;
	struct dl_piece *piece;
	struct download_watcher *watcher;
	uint32_t done;
};

/*
 * A piece's buffer is read by the store's write and by one write per output
 * (io_uring writes at the piece's offset, run beside each other on io-wq
 * workers). It goes back to the pool once the store has it in the file
 * (written) and no output write reads it any more; the piece itself goes once
 * the store is done with it (recorded or failed) as well.
 */
struct dl_piece {
	struct dl_task *task;
	struct dl_piece *prev, *next;	/* the task's fetching list */
	struct origin_request *req;	/* range mode, while the request runs */
	uint32_t number;
	uint64_t offset;
	uint32_t size;
	uint32_t filled;
	uint8_t *buf;
	bool written;			/* the store no longer reads buf */
	bool stored;			/* the store is done with the piece */
	unsigned output_pending;
	struct dl_output_write outputs[DL_PIECE_OUTPUTS];
	char problem[256];		/* why on_headers refused the answer */
};

/* A parent of a task (given with the request): one connection, its pieces. */
struct dl_parent {
	struct dl_task *task;
	struct dl_parent *next;
	struct parent *parent;		/* NULL once dropped */
	char address[160];
	uint8_t *has;			/* pieces it announced (and we still trust it for) */
	uint8_t *asked;			/* pieces requested from it, not yet done */
	uint8_t *denied;		/* per piece: times it said it lacks it (DL_DENIALS_MAX:
					 * never believed again, as after a crc failure) */
	unsigned inflight;
	unsigned strikes;		/* pieces that failed their crc */
	bool synced;			/* its availability stream ended */
	bool seed;			/* the scheduler said it is a seed peer */
	unsigned retries;		/* reconnections after "no such task" */
	uint64_t retry_at_ms;		/* dropped, to be reopened then (0: not) */
	uint64_t bytes;
};

struct dl_task {
	struct download_engine *engine;
	struct dl_task *prev, *next;
	uint8_t id[32];
	char hex[65];
	char *url;
	char **headers;
	size_t header_count;
	struct dl_origin *origin;
	enum dl_state state;
	enum download_source source;
	struct store_task *st;

	bool has_digest;
	uint8_t digest[32];
	uint64_t piece_length_wanted;
	unsigned parallel;

	/* What the HEAD said. */
	uint64_t length;
	uint32_t piece_count;
	uint64_t piece_length;
	char etag[256];
	/* What the HEAD said identifies the content ("etag:..." or "lm:...",
	 * meta_task.validator): an earlier run's pieces of other content go. */
	char validator[META_VALIDATOR_MAX];
	bool ranges;
	struct origin_request *head_req;

	/* Fetching. */
	uint8_t *busy;			/* pieces being fetched, written or synced */
	uint8_t *ready;			/* written this run: readable, maybe not durable */
	uint32_t ready_count;		/* pieces readable (recorded or ready) */
	uint64_t ready_bytes;
	uint32_t scan;			/* no piece below this needs fetching */
	struct dl_piece *fetching;	/* range requests running */
	unsigned fetch_count;
	unsigned write_count;		/* store writes in flight */
	unsigned output_writes;		/* writes into outputs in flight */
	struct dl_buffer *free_buffers;
	unsigned buffers_out;		/* allocated, free or not */

	/* Sequential mode: one GET of everything. */
	bool sequential;
	struct origin_request *seq_req;
	uint64_t seq_offset;
	struct dl_piece *seq_piece;	/* the piece being filled */
	bool seq_paused;

	uint64_t origin_bytes;
	uint64_t started_ms;

	/* Parents: pieces from peers first, the origin only for what they cannot
	 * give (none left, none has it, or none delivers for piece_timeout). */
	struct dl_parent *parents;
	unsigned parents_live;
	unsigned parent_addresses;	/* distinct parents ever opened */
	uint16_t *avail;		/* live parents that have each piece */
	uint16_t *avail_peers;		/* of them, parents that are not seeds */
	unsigned peer_inflight;		/* pieces asked of parents, not done */
	uint64_t peer_bytes;
	uint64_t peer_progress_ms;	/* the last sign of life from parents */
	bool origin_allowed;		/* the origin fetches too */
	bool stuck_changed;		/* a parent or piece changed: look again */
	bool no_origin;			/* back to source disabled */
	struct sched_request *sched_req;	/* asking a scheduler for parents */
	bool sched_reask;		/* that ask is a later one: new parents only */
	/* Parents that failed us since the last announcement (told to the
	 * scheduler with it, which ranks them last for a while). */
	char failed[DL_FAILED_REPORT_MAX][160];
	unsigned failed_count;
	uint64_t announce_ms;		/* the last announcement to the scheduler */
	uint64_t sched_hope_ms;		/* the last parent went: until then the scheduler's
					 * next answer may name others (0: none pending) */

	/* The task's rate limit: a piece starts only while tokens are left
	 * (they may go negative by a piece); refilled as time passes. */
	uint64_t rate_limit;
	int64_t tokens;
	uint64_t tokens_ms;
	bool origin_ready;		/* its HEAD answered (fetching) */
	uint64_t rate_bytes, rate_ms, rate_bytes_per_s;

	int error;
	enum download_error_kind kind;
	char message[512];
	bool delete_at_end;		/* a failed task leaves nothing claiming data */

	struct download_watcher *watchers;
	unsigned watcher_count;
	struct loop_op copy_op;		/* the next turn of output copying */
	bool copy_armed;
	unsigned in_callback;		/* inside a watcher's data() or the tick: the task stays */
};

struct download_watcher {
	struct dl_task *task;
	struct download_watcher *prev, *next;
	struct download_watcher_ops ops;
	void *arg;
	int out_fd;			/* closed only when no write uses it */
	bool use_sendfile;
	uint8_t *have;			/* pieces in the output */
	uint8_t *pending;		/* pieces being written into it from a buffer */
	uint32_t have_count;
	uint32_t first_missing;		/* every piece below is in the output */
	unsigned inflight;		/* output writes in flight */
	bool gone;			/* finished or cancelled: freed once inflight is 0 */
	bool from_cache;		/* every piece was in the cache when it came */
	uint64_t streamed;		/* ops.data: readable bytes reported so far */
	bool has_digest;
	uint8_t digest[32];
	uint64_t deadline_ms;		/* 0 = none */
	unsigned timeout_ms;
};

struct download_engine {
	struct loop *loop;
	struct store *store;
	struct download_options options;
	uint64_t rng;			/* xorshift state: each daemon picks differently */
	struct loop_op retry_op;	/* parents to ask again soon (finer than the tick) */
	bool retry_armed;
	struct dl_origin origins[DOWNLOAD_ORIGINS_MAX];
	unsigned origin_count;
	struct dl_task *tasks;
	unsigned task_count;
	uint64_t buffer_bytes;
	struct loop_op tick_op;
	bool tick_armed;
	/* Watchers gone while writes into their outputs were in flight. */
	struct download_watcher *zombies;
	unsigned zombie_count;
};

static void dl_pump(struct dl_task *task);
static struct dl_task *dl_task_find(struct download_engine *engine, const uint8_t id[32]);
static void dl_copy_done(struct loop_op *op, int res, uint32_t flags);
static void dl_outputs_advance(struct dl_task *task);
static void dl_task_maybe_end(struct dl_task *task);
static int dl_head_start(struct dl_task *task);
static int dl_open_store_task(struct dl_task *task, char *err, size_t err_size);
static int dl_fetch_setup(struct dl_task *task);
static void dl_stop_requests(struct dl_task *task);
static void dl_fail(struct dl_task *task, int error, enum download_error_kind kind,
		   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* --- ids and small helpers. */

bool download_blob_digest(const char *url, uint8_t digest[32])
{
	static const char marker[] = "/blobs/sha256:";
	const size_t marker_len = sizeof(marker) - 1;
	const char *scheme_end = strstr(url, "://");
	const char *path, *end, *hex;
	char copy[65];

	if (!scheme_end)
		return false;
	path = scheme_end + 3;
	path += strcspn(path, "/?#");
	end = path + strcspn(path, "?#");
	/* "/v2/<name>/blobs/sha256:<64 lower-case hex>", nothing after. */
	if (strncmp(path, "/v2/", 4) != 0 || end - path < (ptrdiff_t)(4 + 1 + marker_len + 64))
		return false;
	hex = end - 64;
	if (memcmp(hex - marker_len, marker, marker_len) != 0)
		return false;
	for (int i = 0; i < 64; i++)
		if (!((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f')))
			return false;
	memcpy(copy, hex, 64);
	copy[64] = '\0';
	return hash_parse_sha256(copy, digest) == 0;
}

void download_blob_task_id(const uint8_t digest[32], uint8_t id[32])
{
	static const char prefix[] = "ringfly-blob-v1\nsha256:";
	char buf[sizeof(prefix) + 64];

	memcpy(buf, prefix, sizeof(prefix) - 1);
	hash_hex(digest, buf + sizeof(prefix) - 1);
	hash_sha256(buf, sizeof(prefix) - 1 + 64, id);
}

void download_task_id(const char *url, uint8_t id[32])
{
	static const char prefix[] = "ringfly-task-v1\n";
	struct hash_sha256 *h;
	size_t len = strcspn(url, "#");
	uint8_t digest[32];

	if (download_blob_digest(url, digest)) {
		download_blob_task_id(digest, id);
		return;
	}
	h = hash_sha256_new();

	if (!h) { /* out of memory: a one-shot hash of a bounded copy */
		char buf[META_URL_MAX + sizeof(prefix)];

		snprintf(buf, sizeof(buf), "%s%.*s", prefix, (int)len, url);
		hash_sha256(buf, strlen(buf), id);
		return;
	}
	hash_sha256_update(h, prefix, sizeof(prefix) - 1);
	hash_sha256_update(h, url, len);
	hash_sha256_final(h, id);
	hash_sha256_free(h);
}

static bool bit_get(const uint8_t *bits, uint32_t n)
{
	return (bits[n / 8] >> (n % 8)) & 1u;
}

static void bit_set(uint8_t *bits, uint32_t n, bool on)
{
	if (on)
		bits[n / 8] |= (uint8_t)(1u << (n % 8));
	else
		bits[n / 8] &= (uint8_t)~(1u << (n % 8));
}

static bool dl_final(const struct dl_task *task)
{
	return task->state == DL_COMPLETE || task->state == DL_FAILED ||
	       task->state == DL_STOPPED;
}

static void dl_progress_fill(const struct dl_task *task, struct download_progress *progress)
{
	memset(progress, 0, sizeof(*progress));
	memcpy(progress->task_hex, task->hex, sizeof(progress->task_hex));
	if (task->st) {
		progress->bytes_done = task->ready_bytes;
		progress->total_bytes = store_task_info(task->st)->content_length;
	}
	progress->rate_bytes_per_s = task->rate_bytes_per_s;
	progress->origin_bytes = task->origin_bytes;
	progress->peer_bytes = task->peer_bytes;
	progress->source = task->source;
}

/* --- buffers: one piece each, bounded across the engine. */

/* A new buffer for the task, whatever the bound. */
static uint8_t *dl_buffer_alloc(struct dl_task *task)
{
	struct dl_buffer *buffer = malloc(task->piece_length < sizeof(*buffer)
						  ? sizeof(*buffer) : task->piece_length);

	if (!buffer)
		return NULL;
	task->buffers_out++;
	task->engine->buffer_bytes += task->piece_length;
	return (uint8_t *)buffer;
}

/* A new buffer within the bound (a task with none at all always gets one:
 * it must progress), or NULL. */
static uint8_t *dl_buffer_new(struct dl_task *task)
{
	struct download_engine *engine = task->engine;

	if (task->buffers_out > 0 &&
	    engine->buffer_bytes + task->piece_length > engine->options.memory_bytes)
		return NULL;
	return dl_buffer_alloc(task);
}

static uint8_t *dl_buffer_get(struct dl_task *task)
{
	struct dl_buffer *buffer = task->free_buffers;

	if (buffer) {
		task->free_buffers = buffer->next;
		return (uint8_t *)buffer;
	}
	return dl_buffer_new(task);
}

static void dl_buffer_put(struct dl_task *task, uint8_t *data)
{
	struct dl_buffer *buffer = (struct dl_buffer *)(void *)data;

	buffer->next = task->free_buffers;
	task->free_buffers = buffer;
}

/*
 * Puts `need` buffers on the free list of a sequential task's stream: 1, or
 * 0 if it must pause until one of its buffers comes back from a write
 * (dl_piece_settle resumes it), or -ENOMEM. A stream with none out to come
 * back (it holds only the piece it is filling; the rest of the bound is
 * other tasks') cannot wait for that: it gets them beyond the bound, a
 * chunk's worth at most. It once paused there for good.
 */
static int dl_seq_buffers_reserve(struct dl_task *task, uint64_t need)
{
	uint64_t free_count = 0;
	unsigned held;

	if (need == 0)
		return 1; /* the chunk is inside the piece being filled: most are */
	for (const struct dl_buffer *b = task->free_buffers; b; b = b->next)
		free_count++;
	held = (unsigned)free_count + (task->seq_piece && task->seq_piece->buf ? 1u : 0u);
	for (; free_count < need; free_count++, held++) {
		uint8_t *buf = dl_buffer_new(task);

		if (!buf && task->buffers_out > held)
			return 0; /* one is in a write: it comes back */
		if (!buf)
			buf = dl_buffer_alloc(task);
		if (!buf)
			return -ENOMEM;
		dl_buffer_put(task, buf);
	}
	return 1;
}

static void dl_buffers_free(struct dl_task *task)
{
	while (task->free_buffers) {
		struct dl_buffer *buffer = task->free_buffers;

		task->free_buffers = buffer->next;
		free(buffer);
		task->buffers_out--;
		task->engine->buffer_bytes -= task->piece_length;
	}
}

static struct dl_piece *dl_piece_new(struct dl_task *task, uint32_t number)
{
	struct dl_piece *piece;
	uint8_t *buf = dl_buffer_get(task);

	if (!buf)
		return NULL;
	piece = calloc(1, sizeof(*piece));
	if (!piece) {
		dl_buffer_put(task, buf);
		return NULL;
	}
	piece->task = task;
	piece->number = number;
	piece->offset = piece_offset(task->piece_length, number);
	piece->size = piece_size(task->length, task->piece_length, number);
	piece->buf = buf;
	bit_set(task->busy, number, true);
	return piece;
}

static void dl_piece_free(struct dl_piece *piece)
{
	struct dl_task *task = piece->task;

	bit_set(task->busy, piece->number, false);
	if (piece->number < task->scan)
		task->scan = piece->number;
	if (piece->buf)
		dl_buffer_put(task, piece->buf);
	free(piece);
}

/* --- origins. */

static struct dl_origin *dl_origin_for(struct download_engine *engine, bool insecure,
				       const char *ca_file)
{
	struct origin_options options = {
		.ca_file = ca_file && ca_file[0] ? ca_file : NULL,
		.insecure = insecure,
		.buffer_bytes = engine->options.origin_buffer_bytes,
	};
	struct dl_origin *o;

	if (!ca_file)
		ca_file = "";
	for (unsigned i = 0; i < engine->origin_count; i++) {
		o = &engine->origins[i];
		if (o->insecure == insecure && strcmp(o->ca_file, ca_file) == 0)
			return o;
	}
	if (engine->origin_count == DOWNLOAD_ORIGINS_MAX || strlen(ca_file) >= sizeof(o->ca_file))
		return NULL;
	o = &engine->origins[engine->origin_count];
	if (origin_create(&o->origin, engine->loop, &options) < 0)
		return NULL;
	o->insecure = insecure;
	snprintf(o->ca_file, sizeof(o->ca_file), "%s", ca_file);
	engine->origin_count++;
	return o;
}

/* The reason in an origin's message, without its "GET <url>: " prefix. */
static const char *dl_origin_reason(const struct origin_result *result, const char *url)
{
	const char *m = result->message ? result->message : "failed";
	const char *space = strchr(m, ' ');
	size_t url_len = strlen(url);

	if (space && strncmp(space + 1, url, url_len) == 0 && strncmp(space + 1 + url_len, ": ", 2) == 0)
		return space + 1 + url_len + 2;
	return m;
}

static void dl_fail_from_result(struct dl_task *task, const struct origin_result *result,
				const char *problem)
{
	enum download_error_kind kind = DOWNLOAD_ERROR_ORIGIN_UNREACHABLE;

	if (problem && problem[0]) {
		dl_fail(task, result->error, DOWNLOAD_ERROR_INTEGRITY, "%s", problem);
		return;
	}
	if (result->status >= 400)
		kind = DOWNLOAD_ERROR_ORIGIN_HTTP;
	dl_fail(task, result->error ? result->error : -EIO, kind, "%s",
		dl_origin_reason(result, task->url));
}

/* The answer to a range or whole GET describes the resource the HEAD saw. */
static bool dl_same_resource(struct dl_task *task, const struct origin_response *response,
			     char *problem, size_t problem_size)
{
	int64_t total = response->total_length;

	if (total >= 0 && (uint64_t)total != task->length) {
		snprintf(problem, problem_size,
			 "origin changed during the download: length %llu became %lld",
			 (unsigned long long)task->length, (long long)total);
		return false;
	}
	if (task->etag[0] && response->etag[0] && strcmp(task->etag, response->etag) != 0) {
		snprintf(problem, problem_size,
			 "origin changed during the download: ETag %s became %s", task->etag,
			 response->etag);
		return false;
	}
	return true;
}

static void dl_request_params(const struct dl_task *task, struct origin_request_params *params)
{
	memset(params, 0, sizeof(*params));
	params->url = task->url;
	params->method = ORIGIN_GET;
	params->headers = (const char *const *)task->headers;
	params->header_count = task->header_count;
	/* No deadline of its own: a requester's --timeout is its watcher's
	 * (dl_tick_done), and a task is shared. The first get's deadline on
	 * every request once failed the later gets that had none, or a
	 * longer one. A stalled origin ends at curl's low-speed limit. */
}

/* --- piece writes: into the cache, and into the outputs from the same buffer. */

static void dl_watcher_finish(struct download_watcher *watcher, int error,
			      enum download_error_kind kind, const char *message);
static void dl_watcher_settle(struct download_watcher *watcher);

/* Returns the buffer and frees the piece once nothing uses them. True if
 * the piece is gone. */
static bool dl_piece_settle(struct dl_piece *piece)
{
	struct dl_task *task = piece->task;

	if (piece->output_pending)
		return false;
	if (piece->buf && (piece->written || piece->stored)) {
		dl_buffer_put(task, piece->buf);
		piece->buf = NULL;
		if (task->seq_paused && task->seq_req) {
			task->seq_paused = false;
			origin_request_resume(task->seq_req);
		}
	}
	if (!piece->stored)
		return false;
	dl_piece_free(piece);
	return true;
}

static void dl_piece_stored(struct store_task *st, uint32_t number, int res, void *arg)
{
	struct dl_piece *piece = arg;
	struct dl_task *task = piece->task;

	(void)st;
	(void)number;
	assert(task->write_count > 0);
	task->write_count--;
	piece->stored = true;
	dl_piece_settle(piece);
	if (res < 0 && res != -EALREADY && !dl_final(task)) {
		const char *why = store_task_error(task->st);

		dl_fail(task, res, res == -ENOSPC ? DOWNLOAD_ERROR_NO_SPACE : DOWNLOAD_ERROR_INTERNAL,
			"%s", why[0] ? why : strerror(-res));
	}
	if (dl_final(task)) {
		dl_task_maybe_end(task);
		return;
	}
	dl_pump(task);
}

/* The piece is in the cache file (not yet durable): outputs that did not
 * get it from the buffer can copy it from there. */
static void dl_piece_written(struct store_task *st, uint32_t number, int res, void *arg)
{
	struct dl_piece *piece = arg;
	struct dl_task *task = piece->task;

	(void)st;
	(void)res;
	piece->written = true;
	bit_set(task->ready, number, true);
	task->ready_count++;
	task->ready_bytes += piece->size;
	dl_piece_settle(piece); /* not freed: the store still holds it */
	if (dl_final(task))
		return;
	dl_outputs_advance(task);
	dl_pump(task);
}

static void dl_output_write_done(struct loop_op *op, int res, uint32_t flags);

static int dl_output_write_submit(struct dl_output_write *ow)
{
	struct dl_piece *piece = ow->piece;

	loop_op_init(&ow->op, dl_output_write_done, ow);
	return loop_write(piece->task->engine->loop, &ow->op, ow->watcher->out_fd,
			  piece->buf + ow->done, piece->size - ow->done,
			  (int64_t)(piece->offset + ow->done));
}

static void dl_output_write_done(struct loop_op *op, int res, uint32_t flags)
{
	struct dl_output_write *ow = op->owner;
	struct dl_piece *piece = ow->piece;
	struct download_watcher *watcher = ow->watcher;
	struct dl_task *task = piece->task;
	uint32_t number = piece->number;
	bool was_gone = watcher->gone;

	(void)flags;
	if (res > 0 && !watcher->gone) {
		ow->done += (uint32_t)res;
		if (ow->done < piece->size && dl_output_write_submit(ow) == 0)
			return; /* a short write: the rest */
		if (ow->done < piece->size)
			res = -ENOMEM;
	}
	if (res == 0)
		res = -EIO;
	piece->output_pending--;
	task->output_writes--;
	watcher->inflight--;
	bit_set(watcher->pending, number, false);
	if (!watcher->gone) {
		if (res > 0) {
			bit_set(watcher->have, number, true);
			watcher->have_count++;
		} else {
			char message[600];

			snprintf(message, sizeof(message), "get %s: writing the output: %s",
				 task->url, strerror(-res));
			dl_watcher_finish(watcher, res, res == -ENOSPC ? DOWNLOAD_ERROR_NO_SPACE
								      : DOWNLOAD_ERROR_INTERNAL, message);
		}
	}
	/* Only a watcher that was gone already may be freed here: one that
	 * dl_watcher_finish just unlinked with no write left in flight is
	 * freed by it, and must not be touched again. */
	if (was_gone)
		dl_watcher_settle(watcher);
	dl_piece_settle(piece);
	if (!dl_final(task) || task->state == DL_COMPLETE)
		dl_outputs_advance(task);
	if (task->state == DL_FETCHING) {
		/* This write may have held the piece's buffer last (the store
		 * was done with it first, as when the output's disk is slower
		 * than the cache's): a fetch that waited for a buffer starts
		 * now, or nothing would ever start it. */
		task->in_callback++;
		dl_pump(task);
		task->in_callback--;
	}
	dl_task_maybe_end(task);
}

static bool dl_watcher_prepare(struct download_watcher *watcher)
{
	size_t bytes = watcher->task->piece_count / 8u + 1u;

	if (watcher->have)
		return true;
	watcher->have = calloc(bytes, 1);
	watcher->pending = calloc(bytes, 1);
	if (watcher->have && watcher->pending)
		return true;
	free(watcher->have);
	free(watcher->pending);
	watcher->have = watcher->pending = NULL;
	return false;
}

/* Writes the full buffer of `piece` into the outputs that want it. */
static void dl_piece_to_outputs(struct dl_piece *piece)
{
	struct dl_task *task = piece->task;

	for (struct download_watcher *w = task->watchers; w; w = w->next) {
		struct dl_output_write *ow;

		if (piece->output_pending == DL_PIECE_OUTPUTS)
			break;
		if (w->out_fd < 0 || !dl_watcher_prepare(w) || bit_get(w->have, piece->number) ||
		    bit_get(w->pending, piece->number))
			continue;
		ow = &piece->outputs[piece->output_pending];
		ow->piece = piece;
		ow->watcher = w;
		ow->done = 0;
		if (dl_output_write_submit(ow) < 0)
			continue; /* copied from the cache file instead */
		piece->output_pending++;
		task->output_writes++;
		w->inflight++;
		bit_set(w->pending, piece->number, true);
	}
}

static void dl_piece_write(struct dl_piece *piece)
{
	struct dl_task *task = piece->task;
	int rc;

	dl_piece_to_outputs(piece);
	task->write_count++;
	rc = store_piece_from_buffer(task->st, piece->number, piece->buf, piece->size, false, 0,
				     dl_piece_written, dl_piece_stored, piece);
	if (rc == -EALREADY || rc == -EBUSY) {
		/* Recorded meanwhile, or another source is writing it: that
		 * write decides (a failed one leaves the piece to fetch again). */
		task->write_count--;
		piece->stored = true;
		dl_piece_settle(piece);
		task->scan = 0;
		return;
	}
	if (rc < 0) {
		uint32_t number = piece->number;

		task->write_count--;
		piece->stored = true;
		dl_piece_settle(piece);
		dl_fail(task, rc, rc == -ENOSPC ? DOWNLOAD_ERROR_NO_SPACE : DOWNLOAD_ERROR_INTERNAL,
			"cannot write piece %u into the cache: %s", number, strerror(-rc));
	}
}

/* --- range mode. */

static int dl_range_headers(struct origin_request *req, const struct origin_response *response,
			    void *arg)
{
	struct dl_piece *piece = arg;

	(void)req;
	if (!response->accepts_ranges)
		return -EOPNOTSUPP; /* a 200 to our Range: go sequential */
	if (!dl_same_resource(piece->task, response, piece->problem, sizeof(piece->problem)))
		return -ESTALE;
	return 0;
}

static int dl_range_data(struct origin_request *req, const void *buf, size_t len, void *arg)
{
	struct dl_piece *piece = arg;

	(void)req;
	if (len > piece->size - piece->filled) {
		snprintf(piece->problem, sizeof(piece->problem),
			 "origin sent more than the %u bytes of range %llu-%llu", piece->size,
			 (unsigned long long)piece->offset,
			 (unsigned long long)(piece->offset + piece->size - 1));
		return -EPROTO;
	}
	memcpy(piece->buf + piece->filled, buf, len);
	piece->filled += (uint32_t)len;
	piece->task->origin_bytes += len;
	return 0;
}

static void dl_fetch_unlink(struct dl_piece *piece)
{
	struct dl_task *task = piece->task;

	if (piece->prev)
		piece->prev->next = piece->next;
	else
		task->fetching = piece->next;
	if (piece->next)
		piece->next->prev = piece->prev;
	piece->prev = piece->next = NULL;
	piece->req = NULL;
	task->fetch_count--;
}

static void dl_cancel_fetches(struct dl_task *task)
{
	while (task->fetching) {
		struct dl_piece *piece = task->fetching;

		origin_request_cancel(piece->req);
		dl_fetch_unlink(piece);
		dl_piece_free(piece);
	}
}

static void dl_sequential_start(struct dl_task *task);

static void dl_range_done(struct origin_request *req, const struct origin_result *result,
			  void *arg)
{
	struct dl_piece *piece = arg;
	struct dl_task *task = piece->task;

	(void)req;
	dl_fetch_unlink(piece);
	if (result->error == -EOPNOTSUPP && !piece->problem[0]) {
		log_info("download", "origin ignores ranges, fetching in one stream task=%s url=%s",
			 task->hex, task->url);
		dl_piece_free(piece);
		dl_cancel_fetches(task);
		dl_sequential_start(task);
		return;
	}
	if (result->error) {
		char problem[256];

		snprintf(problem, sizeof(problem), "%s", piece->problem);
		dl_piece_free(piece);
		if (result->error == -EPROTO && problem[0])
			dl_fail(task, -EPROTO, DOWNLOAD_ERROR_ORIGIN_UNREACHABLE, "%s", problem);
		else
			dl_fail_from_result(task, result, problem);
		dl_task_maybe_end(task);
		return;
	}
	if (piece->filled != piece->size) {
		uint32_t filled = piece->filled, size = piece->size;

		dl_piece_free(piece);
		dl_fail(task, -EPROTO, DOWNLOAD_ERROR_ORIGIN_UNREACHABLE,
			"origin sent %u of the %u bytes of a range", filled, size);
		dl_task_maybe_end(task);
		return;
	}
	dl_piece_write(piece);
	if (dl_final(task))
		dl_task_maybe_end(task);
	else
		dl_pump(task);
}

static void dl_range_start(struct dl_task *task, struct dl_piece *piece)
{
	static const struct origin_callbacks callbacks = {
		.on_headers = dl_range_headers,
		.on_data = dl_range_data,
		.on_done = dl_range_done,
	};
	struct origin_request_params params;
	int rc;

	dl_request_params(task, &params);
	params.range = true;
	params.range_start = piece->offset;
	params.range_length = piece->size;
	rc = origin_request_start(task->origin->origin, &params, &callbacks, piece, &piece->req);
	if (rc < 0) {
		dl_piece_free(piece);
		dl_fail(task, rc, DOWNLOAD_ERROR_INTERNAL, "cannot start a request to the origin: %s",
			origin_strerror(rc));
		return;
	}
	piece->next = task->fetching;
	if (task->fetching)
		task->fetching->prev = piece;
	task->fetching = piece;
	task->fetch_count++;
}

/* --- sequential mode. */

static int dl_seq_headers(struct origin_request *req, const struct origin_response *response,
			  void *arg)
{
	struct dl_task *task = arg;
	struct origin_response whole = *response;

	(void)req;
	if (whole.total_length < 0)
		whole.total_length = whole.content_length;
	if (!dl_same_resource(task, &whole, task->message, sizeof(task->message)))
		return -ESTALE;
	return 0;
}

static int dl_seq_data(struct origin_request *req, const void *buf, size_t len, void *arg)
{
	struct dl_task *task = arg;
	const uint8_t *bytes = buf;
	uint64_t need = 0, end = task->seq_offset + len;
	int rc;

	(void)req;
	if (end > task->length) {
		snprintf(task->message, sizeof(task->message),
			 "origin changed during the download: it sent more than %llu bytes",
			 (unsigned long long)task->length);
		return -ESTALE;
	}
	/* Take all of these bytes or none: count the buffers they need. */
	for (uint64_t at = task->seq_offset; at < end;) {
		uint32_t n = (uint32_t)(at / task->piece_length);

		if (!(task->seq_piece && task->seq_piece->number == n) &&
		    at == piece_offset(task->piece_length, n) &&
		    !store_task_has_piece(task->st, n) && !bit_get(task->busy, n))
			need++;
		at = piece_offset(task->piece_length, n + 1);
	}
	rc = dl_seq_buffers_reserve(task, need);
	if (rc < 0)
		return rc;
	if (rc == 0) {
		task->seq_paused = true;
		return ORIGIN_PAUSE;
	}
	while (len > 0) {
		uint32_t n = (uint32_t)(task->seq_offset / task->piece_length);
		uint64_t in_piece = task->seq_offset - piece_offset(task->piece_length, n);
		uint32_t size = piece_size(task->length, task->piece_length, n);
		size_t chunk = size - in_piece < len ? (size_t)(size - in_piece) : len;

		/* A piece is taken from its first byte only: one a parent
		 * was fetching (busy) when the stream reached it, and
		 * dropped midway, is left to the others. */
		if (!task->seq_piece && in_piece == 0 && !store_task_has_piece(task->st, n) &&
		    !bit_get(task->busy, n)) {
			task->seq_piece = dl_piece_new(task, n);
			if (!task->seq_piece)
				return -ENOMEM;
		}
		if (task->seq_piece) {
			struct dl_piece *piece = task->seq_piece;

			memcpy(piece->buf + piece->filled, bytes, chunk);
			piece->filled += (uint32_t)chunk;
			if (piece->filled == piece->size) {
				task->seq_piece = NULL;
				dl_piece_write(piece);
				if (dl_final(task))
					return -EIO;
			}
		}
		task->seq_offset += chunk;
		task->origin_bytes += chunk;
		bytes += chunk;
		len -= chunk;
	}
	return 0;
}

static void dl_seq_done(struct origin_request *req, const struct origin_result *result, void *arg)
{
	struct dl_task *task = arg;

	(void)req;
	task->seq_req = NULL;
	if (task->seq_piece) {
		dl_piece_free(task->seq_piece);
		task->seq_piece = NULL;
	}
	if (dl_final(task)) {
		dl_task_maybe_end(task);
		return;
	}
	if (result->error == -ESTALE)
		dl_fail(task, -ESTALE, DOWNLOAD_ERROR_INTEGRITY, "%s", task->message);
	else if (result->error)
		dl_fail_from_result(task, result, NULL);
	else if (task->seq_offset != task->length)
		dl_fail(task, -EPROTO, DOWNLOAD_ERROR_ORIGIN_UNREACHABLE,
			"origin sent %llu of %llu bytes", (unsigned long long)task->seq_offset,
			(unsigned long long)task->length);
	if (dl_final(task))
		dl_task_maybe_end(task);
	else
		dl_pump(task); /* finishes once the last writes are recorded */
}

static void dl_sequential_start(struct dl_task *task)
{
	static const struct origin_callbacks callbacks = {
		.on_headers = dl_seq_headers,
		.on_data = dl_seq_data,
		.on_done = dl_seq_done,
	};
	struct origin_request_params params;
	int rc;

	task->sequential = true;
	task->seq_offset = 0;
	dl_request_params(task, &params);
	rc = origin_request_start(task->origin->origin, &params, &callbacks, task, &task->seq_req);
	if (rc < 0) {
		task->seq_req = NULL;
		dl_fail(task, rc, DOWNLOAD_ERROR_INTERNAL, "cannot start a request to the origin: %s",
			origin_strerror(rc));
	}
}


/* --- parents. */

static void dl_origin_allow(struct dl_task *task, const char *why);
static bool dl_parents_hope(const struct dl_task *task);
static void dl_retry_arm(struct download_engine *engine);

/* dp announced piece n (delta 1), or no longer counts for it (-1). */
static void dl_avail_change(struct dl_parent *dp, uint32_t n, int delta)
{
	struct dl_task *task = dp->task;

	task->avail[n] = (uint16_t)(task->avail[n] + delta);
	if (!dp->seed)
		task->avail_peers[n] = (uint16_t)(task->avail_peers[n] + delta);
}

/* Forgets a parent: no callback comes from it any more; what was asked of it
 * can be asked elsewhere. */
static void dl_parent_drop(struct dl_parent *dp, const char *reason)
{
	struct dl_task *task = dp->task;

	if (!dp->parent)
		return;
	log_info("download", "parent dropped task=%s parent=%s delivered=%llu reason=\"%s\"",
		 task->hex, dp->address, (unsigned long long)dp->bytes, reason);
	for (uint32_t n = 0; dp->has && n < task->piece_count; n++) {
		if (bit_get(dp->has, n) && task->avail && task->avail[n])
			dl_avail_change(dp, n, -1);
		/* A piece being written is still reported (its bytes may be
		 * recorded, and no second write of it may start meanwhile),
		 * also one an earlier connection of this dp is still writing
		 * (dropped and reconnected while its pieces settled); the rest
		 * can be asked elsewhere now. */
		if (dp->asked && bit_get(dp->asked, n) && !parent_piece_pending(dp->parent, n) &&
		    !(task->st && store_task_piece_writing(task->st, n))) {
			bit_set(dp->asked, n, false);
			bit_set(task->busy, n, false);
			dp->inflight--;
			task->peer_inflight--;
		}
	}
	if (dp->has)
		memset(dp->has, 0, task->piece_count / 8u + 1u);
	parent_close(dp->parent);
	dp->parent = NULL;
	task->parents_live--;
	task->scan = 0;
	task->stuck_changed = true;
	/* The last parent went (a chain gives a child one downloading
	 * parent): ask the scheduler at the next tick, who it reported
	 * failed in hand, and wait for its answer before the origin. */
	if (!task->parents_live && task->engine->options.sched && task->state == DL_FETCHING &&
	    !task->origin_allowed) {
		task->announce_ms = 0;
		task->sched_hope_ms = clock_monotonic_ms() + DL_SCHED_HOPE_MS;
	}
}

static void dl_parents_close(struct dl_task *task, const char *reason)
{
	for (struct dl_parent *dp = task->parents; dp; dp = dp->next)
		dl_parent_drop(dp, reason);
}

/* Remembers a parent that failed us, for the next announcement. */
static void dl_parent_failed(struct dl_parent *dp)
{
	struct dl_task *task = dp->task;

	for (unsigned i = 0; i < task->failed_count; i++)
		if (strcmp(task->failed[i], dp->address) == 0)
			return;
	if (task->failed_count < DL_FAILED_REPORT_MAX)
		snprintf(task->failed[task->failed_count++], sizeof(task->failed[0]), "%s",
			 dp->address);
}

static void dl_parent_penalise(struct dl_parent *dp, uint32_t number, const char *reason)
{
	struct dl_task *task = dp->task;

	dp->strikes++;
	dl_parent_failed(dp);
	log_warn("download", "parent penalised task=%s parent=%s strikes=%u reason=\"piece %u: %s\"",
		 task->hex, dp->address, dp->strikes, number, reason);
	/* Never asked for that piece again. */
	if (dp->denied)
		dp->denied[number] = DL_DENIALS_MAX;
	if (dp->has && bit_get(dp->has, number)) {
		bit_set(dp->has, number, false);
		dl_avail_change(dp, number, -1);
	}
	if (dp->strikes >= DL_PARENT_STRIKES)
		dl_parent_drop(dp, "too many bad pieces");
}

static int dl_parent_shape(struct parent *parent, void *arg, uint64_t content_length,
			   uint64_t piece_length)
{
	struct dl_parent *dp = arg;
	struct dl_task *task = dp->task;
	size_t bytes;

	(void)parent;
	if (dl_final(task))
		return -ECANCELED;
	if (task->piece_length_wanted && piece_length != task->piece_length_wanted) {
		log_warn("download", "parent refused task=%s parent=%s reason=\"piece length %llu, "
			 "asked for %llu\"", task->hex, dp->address,
			 (unsigned long long)piece_length,
			 (unsigned long long)task->piece_length_wanted);
		return -EINVAL;
	}
	if (task->state == DL_PROBING) {
		uint64_t asked = task->piece_length_wanted;
		char err[512];
		int rc;

		/* The first parent to answer gives the shape -- but not over
		 * the pieces an earlier run recorded: only the origin (its
		 * validator) says those are of other content. */
		if (task->st && (store_task_info(task->st)->content_length != content_length ||
				 store_task_info(task->st)->piece_length != piece_length)) {
			log_warn("download", "parent refused task=%s parent=%s reason=\"its shape "
				 "(length %llu, piece length %llu) is not the recorded task's\"",
				 task->hex, dp->address, (unsigned long long)content_length,
				 (unsigned long long)piece_length);
			return -ESTALE;
		}
		task->length = content_length;
		task->piece_length_wanted = piece_length;
		rc = dl_open_store_task(task, err, sizeof(err));
		if (rc < 0) {
			/* A shape this node cannot hold (a parent announcing 16 TiB,
			 * a full disk): the parent is refused, not the get; another
			 * parent or the origin decides (and says so if it is the
			 * disk). */
			log_warn("download", "parent refused task=%s parent=%s reason=\"its shape "
				 "(length %llu, piece length %llu): %s\"", task->hex, dp->address,
				 (unsigned long long)content_length, (unsigned long long)piece_length,
				 err);
			task->length = 0;
			task->piece_length_wanted = asked;
			/* Its fault (told to the scheduler) only if the shape is
			 * impossible, not if this node's disk is full. */
			if (rc == -EFBIG || rc == -EINVAL)
				dl_parent_failed(dp);
			return rc;
		}
		if (dl_fetch_setup(task) < 0) {
			dl_fail(task, -ENOMEM, DOWNLOAD_ERROR_INTERNAL, "out of memory");
			return -ENOMEM;
		}
		task->peer_progress_ms = clock_monotonic_ms();
		log_info("download", "fetching from parents task=%s length=%llu piece_length=%llu "
			 "pieces=%u recorded=%u parents=%u", task->hex,
			 (unsigned long long)task->length, (unsigned long long)task->piece_length,
			 task->piece_count, store_task_info(task->st)->pieces_done,
			 task->parents_live);
	} else if (content_length != task->length || piece_length != task->piece_length) {
		log_warn("download", "parent refused task=%s parent=%s reason=\"length %llu piece "
			 "length %llu, the task has %llu and %llu\"", task->hex, dp->address,
			 (unsigned long long)content_length, (unsigned long long)piece_length,
			 (unsigned long long)task->length, (unsigned long long)task->piece_length);
		return -ESTALE;
	}
	/* A task that started without parents (back to source) and is given
	 * some later (a re-ask answered) counts their pieces from now on. */
	if (!task->avail)
		task->avail = calloc(task->piece_count + 1u, sizeof(*task->avail));
	if (!task->avail_peers)
		task->avail_peers = calloc(task->piece_count + 1u, sizeof(*task->avail_peers));
	if (!task->avail || !task->avail_peers)
		return -ENOMEM;
	bytes = task->piece_count / 8u + 1u;
	if (!dp->has)
		dp->has = calloc(bytes, 1);
	if (!dp->asked)
		dp->asked = calloc(bytes, 1);
	if (!dp->denied)
		dp->denied = calloc(task->piece_count + 1u, 1);
	if (!dp->has || !dp->asked || !dp->denied)
		return -ENOMEM;
	log_info("download", "parent connected task=%s parent=%s", task->hex, dp->address);
	return 0;
}

static void dl_parent_have(struct parent *parent, void *arg, const uint32_t *numbers,
			   size_t count)
{
	struct dl_parent *dp = arg;
	struct dl_task *task = dp->task;

	bool added = false, again = false;

	(void)parent;
	for (size_t i = 0; i < count; i++) {
		/* Announced again after it said it lacks it (it may have
		 * fetched it again): asked again, a few times, but never a sign
		 * of progress; after a crc failure, not believed any more. */
		if (bit_get(dp->has, numbers[i]) || dp->denied[numbers[i]] >= DL_DENIALS_MAX)
			continue;
		bit_set(dp->has, numbers[i], true);
		dl_avail_change(dp, numbers[i], 1);
		if (dp->denied[numbers[i]])
			again = true;
		else
			added = true;
	}
	if (!added && !again)
		return;
	if (added)
		task->peer_progress_ms = clock_monotonic_ms();
	dl_pump(task);
}

static bool dl_parent_has_missing(const struct dl_task *task, const struct dl_parent *dp)
{
	for (uint32_t n = 0; dp->has && n < task->piece_count; n++)
		if (bit_get(dp->has, n) && !store_task_has_piece(task->st, n))
			return true;
	return false;
}

static void dl_parent_connect(struct dl_parent *dp);

/* Asks again the parents whose retry time has come, on a timer of its own:
 * the tick (250 ms) is too coarse for the first retries. */
static void dl_retry_done(struct loop_op *op, int res, uint32_t flags)
{
	struct download_engine *engine = op->owner;
	uint64_t now = clock_monotonic_ms();
	bool pending = false;

	(void)flags;
	engine->retry_armed = false;
	if (res == -ECANCELED)
		return;
	for (struct dl_task *task = engine->tasks; task; task = task->next) {
		if (dl_final(task))
			continue;
		for (struct dl_parent *dp = task->parents; dp; dp = dp->next) {
			if (dp->parent || !dp->retry_at_ms)
				continue;
			if (now < dp->retry_at_ms) {
				pending = true;
				continue;
			}
			log_info("download", "parent asked again task=%s parent=%s retry=%u",
				 task->hex, dp->address, dp->retries);
			dl_parent_connect(dp);
		}
	}
	if (pending)
		dl_retry_arm(engine);
}

static void dl_retry_arm(struct download_engine *engine)
{
	if (engine->retry_armed)
		return;
	loop_op_init(&engine->retry_op, dl_retry_done, engine);
	if (loop_timeout(engine->loop, &engine->retry_op, DL_PARENT_RETRY_MS) == 0)
		engine->retry_armed = true;
}

static bool dl_parent_had_any(const struct dl_task *task, const struct dl_parent *dp)
{
	for (uint32_t n = 0; dp->has && n < task->piece_count; n++)
		if (bit_get(dp->has, n))
			return true;
	return false;
}

static void dl_parent_sync_end(struct parent *parent, void *arg, bool complete,
			       const char *reason)
{
	struct dl_parent *dp = arg;
	struct dl_task *task = dp->task;

	(void)parent;
	dp->synced = true;
	task->stuck_changed = true;
	if (!complete) {
		log_info("download", "parent stops announcing task=%s parent=%s reason=\"%s\"",
			 task->hex, dp->address, reason);
		if (task->state != DL_FETCHING || !dl_parent_has_missing(task, dp)) {
			bool never_had = !dl_parent_had_any(task, dp);
			bool fetching = strstr(reason, DOWNLOAD_FETCHING_NOW) != NULL;
			unsigned limit = fetching ? DL_PARENT_RETRIES_FETCHING : DL_PARENT_RETRIES;

			dl_parent_drop(dp, reason[0] ? reason : "nothing more to give");
			if (never_had && dp->retries < limit) {
				uint64_t delay = (uint64_t)DL_PARENT_RETRY_MS << dp->retries;

				if (fetching && delay > DL_PARENT_RETRY_MAX_MS)
					delay = DL_PARENT_RETRY_MAX_MS;
				dp->retry_at_ms = clock_monotonic_ms() + delay;
				dp->retries++;
				dl_retry_arm(task->engine);
			}
		}
	}
	dl_pump(task);
}

/* The parent's piece is readable in the cache: counted once (the ready bit;
 * nobody else writes the piece meanwhile: one writer per piece). */
static void dl_parent_delivered(struct dl_parent *dp, uint32_t number, uint32_t length)
{
	struct dl_task *task = dp->task;

	if (bit_get(task->ready, number))
		return;
	bit_set(task->ready, number, true);
	task->ready_count++;
	task->ready_bytes += length;
	dp->bytes += length;
	task->peer_bytes += length;
	task->peer_progress_ms = clock_monotonic_ms();
	if (task->source == DOWNLOAD_SOURCE_ORIGIN)
		task->source = DOWNLOAD_SOURCE_PEER;
}

static void dl_parent_piece_done(struct parent *parent, void *arg, uint32_t number,
				 uint32_t length, int res, const char *reason)
{
	struct dl_parent *dp = arg;
	struct dl_task *task = dp->task;

	(void)parent;
	if (dp->asked && bit_get(dp->asked, number)) {
		bit_set(dp->asked, number, false);
		bit_set(task->busy, number, false);
		dp->inflight--;
		task->peer_inflight--;
	}
	if (res < 0)
		task->stuck_changed = true;
	switch (res) {
	case 0:
		dl_parent_delivered(dp, number, length); /* at checked, as a rule */
		break;
	case -EALREADY:
		break;
	case -EBADMSG:
		dl_parent_penalise(dp, number, reason ? reason : "crc mismatch");
		task->scan = 0;
		break;
	case -ENOENT:
	case -EINVAL:
		/* It no longer has it (or never had): not asked again until
		 * it announces it again (a few times at most). */
		if (dp->denied && dp->denied[number] < DL_DENIALS_MAX)
			dp->denied[number]++;
		if (dp->has && bit_get(dp->has, number)) {
			bit_set(dp->has, number, false);
			dl_avail_change(dp, number, -1);
		}
		task->scan = 0;
		break;
	case -EBUSY:
		dl_parent_drop(dp, reason ? reason : "busy");
		break;
	case -ENOSPC:
	case -EIO:
	case -EROFS: {
		const char *why = store_task_error(task->st);

		if (why[0])
			dl_fail(task, res, res == -ENOSPC ? DOWNLOAD_ERROR_NO_SPACE
							  : DOWNLOAD_ERROR_INTERNAL, "%s", why);
		task->scan = 0;
		break;
	}
	default:
		task->scan = 0; /* the connection broke: gone() follows */
		break;
	}
	if (dl_final(task)) {
		dl_task_maybe_end(task);
		return;
	}
	dl_outputs_advance(task);
	dl_pump(task);
}

/* A piece's bytes are off the socket: the connection may take the next
 * request while this one is checked and made durable. */
static void dl_parent_received(struct parent *parent, void *arg, uint32_t number)
{
	struct dl_parent *dp = arg;

	(void)parent;
	(void)number;
	if (!dl_final(dp->task))
		dl_pump(dp->task);
}

/* The piece is in the cache file and checked: readable before it is
 * recorded (its batch, and with storage.sync pieces an fdatasync, which no
 * output needs). */
static void dl_parent_checked(struct parent *parent, void *arg, uint32_t number, uint32_t length)
{
	struct dl_parent *dp = arg;

	(void)parent;
	dl_parent_delivered(dp, number, length);
	if (!dl_final(dp->task))
		dl_outputs_advance(dp->task);
}

static void dl_parent_gone(struct parent *parent, void *arg, int error, const char *reason)
{
	struct dl_parent *dp = arg;
	struct dl_task *task = dp->task;

	(void)parent;
	(void)error;
	if (dp->strikes == 0 && dp->bytes == 0 && dp->has == NULL)
		log_warn("download", "parent unusable task=%s parent=%s reason=\"%s\"", task->hex,
			 dp->address, reason);
	else
		log_warn("download", "parent penalised task=%s parent=%s strikes=%u reason=\"%s\"",
			 task->hex, dp->address, ++dp->strikes, reason);
	if (dp->strikes)
		dl_parent_failed(dp);
	dl_parent_drop(dp, reason);
	if (dl_final(task)) {
		dl_task_maybe_end(task);
		return;
	}
	dl_pump(task);
}

static const struct parent_callbacks dl_parent_callbacks = {
	.shape = dl_parent_shape,
	.have = dl_parent_have,
	.sync_end = dl_parent_sync_end,
	.piece_done = dl_parent_piece_done,
	.received = dl_parent_received,
	.checked = dl_parent_checked,
	.gone = dl_parent_gone,
};

/* True if the task may start fetching a piece of `length` bytes now (and
 * takes the tokens). The tick pumps again as the bucket refills. */
static bool dl_rate_take(struct dl_task *task, uint32_t length)
{
	uint64_t now = clock_monotonic_ms();
	int64_t burst = (int64_t)(task->rate_limit / 4);

	if (!task->rate_limit)
		return true;
	if (now > task->tokens_ms) {
		task->tokens += (int64_t)(task->rate_limit * (now - task->tokens_ms) / 1000);
		task->tokens_ms = now;
		if (task->tokens > burst)
			task->tokens = burst;
	}
	if (task->tokens <= 0)
		return false;
	task->tokens -= length;
	return true;
}

/* xorshift64*: seeded per daemon from getrandom, so that children of one
 * parent start on different pieces and have something to give each other. */
static uint64_t dl_random(struct download_engine *engine)
{
	uint64_t x = engine->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	engine->rng = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* Rarest first among the pieces `dp` has that nobody is fetching, with a
 * random start as the tie-break. A seed is asked only for pieces no other
 * parent has: its uplink is what brings new pieces into the swarm, and a
 * piece a sibling holds would cost it a second copy (the P4 swarm: the seed
 * sent the file 1.8 times and was the bottleneck). */
static bool dl_parent_pick(struct dl_task *task, struct dl_parent *dp, uint32_t *out)
{
	uint32_t start = task->piece_count ? (uint32_t)(dl_random(task->engine) % task->piece_count)
					   : 0;
	uint32_t best = UINT32_MAX, best_avail = UINT32_MAX;

	for (uint32_t i = 0; i < task->piece_count; i++) {
		uint32_t n = (start + i) % task->piece_count;

		if (!bit_get(dp->has, n) || bit_get(task->busy, n) || bit_get(task->ready, n) ||
		    (dp->seed && task->avail_peers[n]) || store_task_has_piece(task->st, n))
			continue;
		if (task->avail[n] < best_avail) {
			best = n;
			best_avail = task->avail[n];
			if (best_avail <= 1)
				break;
		}
	}
	*out = best;
	return best != UINT32_MAX;
}

static void dl_parents_pump(struct dl_task *task)
{
	unsigned depth = task->parent_addresses > 1 ? DL_SWARM_REQUESTS
						    : task->engine->options.parent_requests;

	/* `depth` requests on the wire per connection; behind them up to
	 * DL_SETTLING_MAX received pieces waiting for their check and
	 * fdatasync (dl_parent_received), so a sync never idles the wire. */
	for (struct dl_parent *dp = task->parents; dp && task->state == DL_FETCHING; dp = dp->next) {
		while (dp->parent && dp->has && dp->inflight < depth + DL_SETTLING_MAX &&
		       parent_receiving(dp->parent) < depth) {
			uint32_t n;

			if (!dl_parent_pick(task, dp, &n))
				break;
			if (!dl_rate_take(task, piece_size(task->length, task->piece_length, n)))
				return;
			if (parent_request(dp->parent, task->st, n) < 0)
				break; /* it failed: gone() has dropped it or will */
			log_debug("download", "request piece=%u parent=%s seed=%d avail=%u peers=%u", n,
				  dp->address, dp->seed, task->avail[n], task->avail_peers[n]);
			bit_set(task->busy, n, true);
			bit_set(dp->asked, n, true);
			dp->inflight++;
			task->peer_inflight++;
		}
	}
}

/* True when the parents cannot finish the task on their own: none left, or
 * a missing piece that no live parent has and none will announce. */
static bool dl_parents_stuck(struct dl_task *task)
{
	bool announcing = false;

	if (!dl_parents_hope(task))
		return true;
	if (!task->parents_live && task->sched_hope_ms &&
	    clock_monotonic_ms() < task->sched_hope_ms)
		return false; /* the scheduler is asked for others */
	for (const struct dl_parent *dp = task->parents; dp; dp = dp->next)
		if (dp->parent && !dp->synced)
			announcing = true;
	if (announcing || task->state != DL_FETCHING || !task->stuck_changed)
		return false;
	/* Only after a parent went, stopped announcing or failed a piece:
	 * not a scan of every piece per piece. */
	task->stuck_changed = false;
	for (uint32_t n = 0; n < task->piece_count; n++)
		if (task->avail[n] == 0 && !store_task_has_piece(task->st, n) &&
		    !bit_get(task->ready, n) && !bit_get(task->busy, n))
			return true;
	return false;
}

/* The origin joins in (HEAD first if the parents gave the shape). */
static void dl_origin_allow(struct dl_task *task, const char *why)
{
	int rc;

	if (task->origin_allowed || dl_final(task))
		return;
	if (task->no_origin) {
		dl_fail(task, -EHOSTUNREACH, DOWNLOAD_ERROR_ORIGIN_UNREACHABLE,
			"no parent can serve it and back-to-source is disabled (%s)", why);
		return;
	}
	task->origin_allowed = true;
	if (task->parents)
		log_info("download", "falling back to the origin task=%s reason=\"%s\"", task->hex,
			 why);
	if (task->head_req || task->origin_ready)
		return;
	rc = dl_head_start(task);
	if (rc < 0) {
		task->head_req = NULL;
		dl_fail(task, rc, DOWNLOAD_ERROR_INTERNAL, "cannot start a request to the origin: %s",
			origin_strerror(rc));
	}
}

/* `connections` to each parent: one piece at a time moves on a connection
 * (socket -> pipe -> file), so several overlap the network and the disk. */
static void dl_parent_connect(struct dl_parent *dp)
{
	struct dl_task *task = dp->task;
	char err[256], self_id[160] = "";

	dp->retry_at_ms = 0;
	dp->synced = false;
	if (task->engine->options.sched)
		sched_client_peer_id(task->engine->options.sched, self_id, sizeof(self_id));
	if (parent_open(&dp->parent, task->engine->loop, dp->address, task->id, task->url,
			self_id, &dl_parent_callbacks, dp, err, sizeof(err)) < 0) {
		dp->parent = NULL;
		log_warn("download", "parent unusable task=%s parent=%s reason=\"%s\"", task->hex,
			 dp->address, err);
		return;
	}
	task->parents_live++;
}

/* Parents connected, or to be asked again soon. */
static bool dl_parents_hope(const struct dl_task *task)
{
	if (task->parents_live)
		return true;
	if (task->sched_hope_ms && clock_monotonic_ms() < task->sched_hope_ms)
		return true;
	for (const struct dl_parent *dp = task->parents; dp; dp = dp->next)
		if (dp->retry_at_ms)
			return true;
	return false;
}

static bool dl_parent_known(const struct dl_task *task, const char *address)
{
	for (const struct dl_parent *dp = task->parents; dp; dp = dp->next)
		if (strcmp(dp->address, address) == 0)
			return true;
	return false;
}

/* One more connection to `address`. */
static int dl_parent_add(struct dl_task *task, const char *address, bool seed)
{
	struct dl_parent *dp = calloc(1, sizeof(*dp));

	if (!dp)
		return -ENOMEM;
	dp->task = task;
	snprintf(dp->address, sizeof(dp->address), "%s", address);
	dp->seed = seed;
	dp->next = task->parents;
	task->parents = dp;
	dl_parent_connect(dp);
	return 0;
}

static int dl_parents_open(struct dl_task *task, const char *const *addresses,
			   const bool *seeds, size_t count)
{
	unsigned connections = task->engine->options.parent_connections;
	const char *fresh[DOWNLOAD_PARENTS_MAX];
	bool fresh_seed[DOWNLOAD_PARENTS_MAX];
	size_t n = 0, seed_count = 0;

	for (size_t i = 0; seeds && i < count; i++)
		seed_count += seeds[i];
	/* Parents the task already has (the scheduler names them again) stay;
	 * one given up on (it had no such task then) is asked again: the
	 * scheduler names it because it has pieces now. */
	for (size_t i = 0; i < count && n < DOWNLOAD_PARENTS_MAX; i++) {
		if (!dl_parent_known(task, addresses[i])) {
			fresh_seed[n] = seeds && seeds[i];
			fresh[n++] = addresses[i];
			continue;
		}
		for (struct dl_parent *dp = task->parents; dp; dp = dp->next) {
			if (strcmp(dp->address, addresses[i]) != 0 || dp->parent ||
			    dp->retry_at_ms || dp->strikes)
				continue;
			dp->retries = 0;
			dl_parent_connect(dp);
		}
		/* A seed named alone again (this child heads the chain now,
		 * its upstream gone): all the connections, not the one it
		 * had as a fallback. */
		if (seed_count == count) {
			unsigned have = 0;
			bool struck = false;

			for (const struct dl_parent *dp = task->parents; dp; dp = dp->next) {
				if (strcmp(dp->address, addresses[i]) != 0)
					continue;
				have++;
				struck |= dp->strikes > 0;
			}
			for (; !struck && have < connections; have++)
				if (dl_parent_add(task, addresses[i], true) < 0)
					return -ENOMEM;
		}
	}
	if (n == 0)
		return 0;
	task->parent_addresses += (unsigned)n;
	if (n * connections > DOWNLOAD_PARENTS_MAX)
		connections = (unsigned)(DOWNLOAD_PARENTS_MAX / n ? DOWNLOAD_PARENTS_MAX / n : 1);
	for (size_t k = 0; k < n * connections; k++) {
		/* One connection to a seed that comes with other parents: it
		 * is their fallback, and its uplink shared by fewer transfers
		 * brings each new piece sooner to the peer that passes it on.
		 * Named alone (the head of a chain, scheduler/state.h), it is
		 * where every piece comes from: all the connections. */
		if (fresh_seed[k % n] && k >= n && seed_count < count)
			continue;
		if (dl_parent_add(task, fresh[k % n], fresh_seed[k % n]) < 0)
			return -ENOMEM;
	}
	task->peer_progress_ms = clock_monotonic_ms();
	return 0;
}

/* --- schedulers. */

/* Tells the task's scheduler where it stands (and, with want_parents, asks). */
static void dl_sched_fill(const struct dl_task *task, struct sched_announce *a,
			  const char **in_use, size_t in_use_max)
{
	const struct meta_task *info = task->st ? store_task_info(task->st) : NULL;

	memset(a, 0, sizeof(*a));
	memcpy(a->task_id, task->id, 32);
	a->url = task->url;
	if (info) {
		a->content_length = info->content_length;
		a->piece_length = info->piece_length;
		a->piece_count = info->piece_count;
		a->pieces_done = info->pieces_done;
		a->complete = info->state == META_TASK_COMPLETE;
	}
	a->want_parents = !a->complete;
	for (const struct dl_parent *dp = task->parents; dp; dp = dp->next) {
		bool seen = false;

		if (!dp->parent)
			continue;
		for (size_t i = 0; i < a->parents_in_use_count; i++)
			seen = seen || strcmp(in_use[i], dp->address) == 0;
		if (!seen && a->parents_in_use_count < in_use_max)
			in_use[a->parents_in_use_count++] = dp->address;
	}
	a->parents_in_use = in_use;
}

/* The parents that failed us since the last announcement go with this one. */
static void dl_sched_fill_failed(struct dl_task *task, struct sched_announce *a,
				 const char *failed[DL_FAILED_REPORT_MAX])
{
	for (unsigned i = 0; i < task->failed_count; i++)
		failed[i] = task->failed[i];
	a->failed_parents = failed;
	a->failed_parents_count = task->failed_count;
}

static void dl_sched_announce(struct dl_task *task)
{
	struct sched_announce a;
	const char *in_use[SCHED_PARENTS_MAX * 2];
	const char *failed[DL_FAILED_REPORT_MAX];

	if (!task->engine->options.sched)
		return;
	dl_sched_fill(task, &a, in_use, sizeof(in_use) / sizeof(in_use[0]));
	dl_sched_fill_failed(task, &a, failed);
	sched_announce(task->engine->options.sched, &a);
	task->failed_count = 0;
	task->announce_ms = clock_monotonic_ms();
}

static void dl_sched_parents(void *arg, int error, const struct sched_parents *parents,
			     const char *reason)
{
	struct dl_task *task = arg;
	const char *addresses[SCHED_PARENTS_MAX];

	bool reask = task->sched_reask;

	task->sched_req = NULL;
	task->sched_reask = false;
	if (dl_final(task)) {
		dl_task_maybe_end(task);
		return;
	}
	if (!error && task->engine->options.roots) {
		const char *roots[SCHED_PARENTS_MAX];

		for (size_t i = 0; i < parents->root_count; i++)
			roots[i] = parents->roots[i];
		task->engine->options.roots(task->engine->options.roots_arg, task->id, roots,
					    parents->root_count);
	}
	if (reask) {
		/* Peers that joined since: parents too. No answer, or "go to
		 * the origin", changes nothing for a task under way. */
		for (size_t i = 0; !error && i < parents->count; i++)
			addresses[i] = parents->addresses[i];
		if (!error && parents->count &&
		    dl_parents_open(task, addresses, parents->seed, parents->count) < 0)
			dl_fail(task, -ENOMEM, DOWNLOAD_ERROR_INTERNAL, "out of memory");
		if (dl_final(task))
			dl_task_maybe_end(task);
		else
			dl_pump(task);
		return;
	}
	if (error) {
		log_warn("download", "scheduler unavailable task=%s reason=\"%s\"", task->hex,
			 reason);
		dl_origin_allow(task, "no scheduler answered");
		dl_task_maybe_end(task);
		return;
	}
	log_info("download", "parents from scheduler task=%s scheduler=%s parents=%zu "
		 "back_to_source=%d%s%s", task->hex, parents->scheduler, parents->count,
		 parents->back_to_source ? 1 : 0, parents->reason[0] ? " reason=" : "",
		 parents->reason);
	for (size_t i = 0; i < parents->count; i++)
		addresses[i] = parents->addresses[i];
	if (parents->count && dl_parents_open(task, addresses, parents->seed, parents->count) < 0)
		dl_fail(task, -ENOMEM, DOWNLOAD_ERROR_INTERNAL, "out of memory");
	if (!parents->count || parents->back_to_source)
		dl_origin_allow(task, parents->reason[0] ? parents->reason
							 : "the scheduler has no parent for it");
	if (dl_final(task))
		dl_task_maybe_end(task);
	else
		dl_pump(task);
}

static int dl_sched_ask(struct dl_task *task)
{
	struct sched_announce a;
	const char *in_use[1];

	dl_sched_fill(task, &a, in_use, 0);
	a.want_parents = true;
	task->announce_ms = clock_monotonic_ms();
	return sched_ask(task->engine->options.sched, &a, dl_sched_parents, task, &task->sched_req);
}

/* Every announcement of a task under way asks again: peers that started
 * after our first ask (a swarm starting at once) become parents too. */
static void dl_sched_reask(struct dl_task *task)
{
	struct sched_announce a;
	const char *in_use[SCHED_PARENTS_MAX * 2];
	const char *failed[DL_FAILED_REPORT_MAX];

	if (task->sched_req || task->st == NULL) {
		dl_sched_announce(task);
		return;
	}
	dl_sched_fill(task, &a, in_use, sizeof(in_use) / sizeof(in_use[0]));
	dl_sched_fill_failed(task, &a, failed);
	task->announce_ms = clock_monotonic_ms();
	if (!a.want_parents) {
		sched_announce(task->engine->options.sched, &a);
		task->failed_count = 0;
		return;
	}
	task->sched_reask = true;
	if (sched_ask(task->engine->options.sched, &a, dl_sched_parents, task,
		      &task->sched_req) < 0) {
		task->sched_reask = false;
		task->sched_req = NULL;
		return;
	}
	task->failed_count = 0;
}

static void dl_parents_free(struct dl_task *task)
{
	while (task->parents) {
		struct dl_parent *dp = task->parents;

		task->parents = dp->next;
		if (dp->parent)
			parent_close(dp->parent);
		free(dp->has);
		free(dp->asked);
		free(dp->denied);
		free(dp);
	}
	free(task->avail);
	free(task->avail_peers);
	task->avail = NULL;
	task->avail_peers = NULL;
}

/* Checks parents' deadlines: a request unanswered for piece_timeout drops
 * its parent; parents that deliver nothing for as long bring in the origin. */
static void dl_parents_tick(struct dl_task *task, uint64_t now_ms)
{
	unsigned timeout = task->engine->options.piece_timeout_ms;

	if (task->engine->options.sched && task->st && !dl_final(task) &&
	    now_ms - task->announce_ms >= DL_ANNOUNCE_MS)
		dl_sched_reask(task);
	if (!task->parents || dl_final(task))
		return;
	for (struct dl_parent *dp = task->parents; dp; dp = dp->next) {
		uint64_t since = dp->parent ? parent_oldest_ms(dp->parent) : 0;
		char reason[128];

		/* Bytes of a piece coming in are progress, however slow. */
		if (dp->parent && parent_payload_progress_ms(dp->parent) > task->peer_progress_ms)
			task->peer_progress_ms = parent_payload_progress_ms(dp->parent);

		if (!dp->parent && dp->retry_at_ms && now_ms >= dp->retry_at_ms) {
			log_info("download", "parent asked again task=%s parent=%s retry=%u",
				 task->hex, dp->address, dp->retries);
			dl_parent_connect(dp);
			continue;
		}
		if (!since || now_ms - since < timeout)
			continue;
		if (dp->has && parent_oldest_piece(dp->parent) != UINT32_MAX)
			snprintf(reason, sizeof(reason), "piece %u: no answer in %u ms",
				 parent_oldest_piece(dp->parent), timeout);
		else
			snprintf(reason, sizeof(reason), "no availability in %u ms", timeout);
		dp->strikes++;
		log_warn("download", "parent penalised task=%s parent=%s strikes=%u reason=\"%s\"",
			 task->hex, dp->address, dp->strikes, reason);
		dl_parent_failed(dp);
		dl_parent_drop(dp, reason);
		/* Its pieces go to the others only now: they get a whole
		 * timeout to bring them (an idle good parent once counted as
		 * "nothing from the parents" in this same tick). */
		task->peer_progress_ms = now_ms;
	}
	if (!task->origin_allowed && now_ms - task->peer_progress_ms >= timeout) {
		char reason[128];

		snprintf(reason, sizeof(reason), "nothing from the parents in %u ms", timeout);
		dl_origin_allow(task, reason);
	}
	dl_pump(task);
}

/* --- the task. */

/* The store's digest check of a task (or the sha256 of a complete one) has
 * ended: its finish, or the gets with a --digest, can go on. */
static void dl_checked(void *arg, const uint8_t id[32])
{
	struct dl_task *task = dl_task_find(arg, id);

	if (!task)
		return;
	task->in_callback++;
	dl_pump(task);
	dl_outputs_advance(task);
	task->in_callback--;
	dl_task_maybe_end(task);
}

static void dl_finish(struct dl_task *task)
{
	char err[512];
	int rc = store_task_finish(task->st, err, sizeof(err));

	if (rc == -EINPROGRESS)
		return; /* the digest check goes on: dl_checked */
	if (rc < 0) {
		const char *reason = strstr(err, "digest mismatch");

		dl_fail(task, rc, rc == -EBADMSG ? DOWNLOAD_ERROR_INTEGRITY : DOWNLOAD_ERROR_INTERNAL,
			"%s", reason ? reason : err);
		return;
	}
	task->state = DL_COMPLETE;
	dl_stop_requests(task);
	dl_sched_announce(task); /* complete: a parent for others now */
	log_info("download", "download done task=%s source=%s bytes=%llu origin_bytes=%llu "
		 "peer_bytes=%llu ms=%llu", task->hex,
		 task->source == DOWNLOAD_SOURCE_CACHE ? "cache"
		 : task->source == DOWNLOAD_SOURCE_PEER ? "peer" : "origin",
		 (unsigned long long)task->length, (unsigned long long)task->origin_bytes,
		 (unsigned long long)task->peer_bytes,
		 (unsigned long long)(clock_monotonic_ms() - task->started_ms));
}

/* A live parent has the piece and has been delivering lately: the origin
 * leaves it to the parent. */
static bool dl_parent_will_bring(const struct dl_task *task, uint32_t number)
{
	return task->avail && task->avail[number] && task->parents_live &&
	       clock_monotonic_ms() - task->peer_progress_ms <
		       task->engine->options.piece_timeout_ms;
}

/* Starts whatever can start: fetches up to `parallel`, or the end. */
static void dl_pump(struct dl_task *task)
{
	if (task->state == DL_PROBING && task->parents && !dl_parents_hope(task))
		dl_origin_allow(task, "no parent has the task");
	if (task->state != DL_FETCHING)
		return;
	if (store_task_info(task->st)->pieces_done == task->piece_count) {
		if (task->write_count == 0 && task->fetch_count == 0 && !task->seq_req &&
		    task->peer_inflight == 0) {
			dl_finish(task);
			dl_outputs_advance(task);
			dl_task_maybe_end(task);
		}
		return;
	}
	if (task->parents) {
		/* A request that cannot be sent fails its parent inside, whose
		 * callbacks may end the task: it stays until the loop is done. */
		task->in_callback++;
		dl_parents_pump(task);
		task->in_callback--;
		if (dl_final(task)) {
			dl_task_maybe_end(task);
			return;
		}
		if (!task->origin_allowed && dl_parents_stuck(task))
			dl_origin_allow(task, task->parents_live ? "a piece no parent has"
								 : "no parent left");
		if (!task->origin_ready || task->state != DL_FETCHING)
			return;
		/* A stream that passed pieces the parents then failed to bring
		 * goes again for them. */
		if (task->sequential && !task->seq_req && !task->write_count &&
		    !task->peer_inflight) {
			dl_sequential_start(task);
			return;
		}
	}
	if (task->sequential)
		return;
	while (task->fetch_count < task->parallel && task->state == DL_FETCHING) {
		struct dl_piece *piece;

		while (task->scan < task->piece_count &&
		       (store_task_has_piece(task->st, task->scan) || bit_get(task->busy, task->scan) ||
			dl_parent_will_bring(task, task->scan)))
			task->scan++;
		if (task->scan == task->piece_count)
			break;
		if (!dl_rate_take(task, piece_size(task->length, task->piece_length, task->scan)))
			break;
		piece = dl_piece_new(task, task->scan);
		if (!piece)
			break; /* buffers come back as writes finish */
		dl_range_start(task, piece);
	}
}

/* A task kept from an earlier run learns what identifies its content now
 * (an older record has none). */
static int dl_record_validator(struct dl_task *task)
{
	int rc;

	if (!task->validator[0])
		return 0;
	rc = store_task_set_validator(task->st, task->validator);
	if (rc < 0)
		log_warn("download", "cannot record the origin's validator task=%s error=\"%s\"",
			 task->hex, strerror(-rc));
	return 0;
}

static int dl_open_store_task(struct dl_task *task, char *err, size_t err_size)
{
	struct store *store = task->engine->store;
	struct store_task_params params = {
		.url = task->url,
		.content_length = task->length,
		.piece_length = task->piece_length_wanted,
		.digest = task->has_digest ? task->digest : NULL,
	};
	int rc;

	memcpy(params.id, task->id, sizeof(params.id));
	params.validator = task->validator;
	if (task->st) {
		const struct meta_task *info = store_task_info(task->st);
		bool changed = info->validator[0] && task->validator[0] &&
			       strcmp(info->validator, task->validator) != 0;

		if (info->content_length == task->length && !changed &&
		    (!task->piece_length_wanted || info->piece_length == task->piece_length_wanted))
			return dl_record_validator(task);
		/* Left by an earlier run for other content (or cut otherwise). */
		log_info("download", "dropping the recorded pieces of an earlier run task=%s "
			 "length=%llu now=%llu validator=%s now_validator=%s", task->hex,
			 (unsigned long long)info->content_length, (unsigned long long)task->length,
			 info->validator[0] ? info->validator : "-",
			 task->validator[0] ? task->validator : "-");
		/* Gone at once, even while a peer is being served from it. */
		store_task_discard(task->st);
		task->st = NULL;
		if (store_task_find(store, task->id, &task->st) == 0) {
			/* Its old pieces would be taken for the new content. */
			store_task_release(task->st);
			task->st = NULL;
			snprintf(err, err_size,
				 "task %s: the origin's content changed since an earlier run and "
				 "the old pieces cannot be dropped yet (being written); try again",
				 task->hex);
			return -EBUSY;
		}
	}
	rc = store_task_open(store, &params, &task->st, err, err_size);
	if (rc < 0)
		task->st = NULL;
	return rc;
}

/* The store task is open with its shape: the fetch bookkeeping, FETCHING. */
static int dl_fetch_setup(struct dl_task *task)
{
	const struct meta_task *info = store_task_info(task->st);
	size_t bytes;

	store_task_on_checked(task->st, dl_checked, task->engine);
	task->length = info->content_length;
	task->piece_length = info->piece_length;
	task->piece_count = info->piece_count;
	bytes = task->piece_count / 8u + 1u;
	task->busy = calloc(bytes, 1);
	task->ready = calloc(bytes, 1);
	if (task->parents) {
		task->avail = calloc(task->piece_count + 1u, sizeof(*task->avail));
		task->avail_peers = calloc(task->piece_count + 1u, sizeof(*task->avail_peers));
	}
	if (!task->busy || !task->ready ||
	    (task->parents && (!task->avail || !task->avail_peers)))
		return -ENOMEM;
	task->ready_count = info->pieces_done;
	task->ready_bytes = info->bytes_done;
	task->state = DL_FETCHING;
	return 0;
}

static int dl_head_headers(struct origin_request *req, const struct origin_response *response,
			   void *arg)
{
	struct dl_task *task = arg;
	int64_t length = response->total_length >= 0 ? response->total_length
						       : response->content_length;

	(void)req;
	if (length < 0) {
		snprintf(task->message, sizeof(task->message),
			 "the origin does not say how long the content is (no Content-Length)");
		return -ENODATA;
	}
	if (task->state == DL_FETCHING && (uint64_t)length != task->length) {
		/* The shape came from the parents. */
		snprintf(task->message, sizeof(task->message),
			 "the origin's length %lld differs from the parents' %llu", (long long)length,
			 (unsigned long long)task->length);
		return -ESTALE;
	}
	task->length = (uint64_t)length;
	task->ranges = response->accepts_ranges;
	snprintf(task->etag, sizeof(task->etag), "%s", response->etag);
	if (response->etag[0])
		snprintf(task->validator, sizeof(task->validator), "etag:%s", response->etag);
	else if (response->last_modified[0])
		snprintf(task->validator, sizeof(task->validator), "lm:%s",
			 response->last_modified);
	return 0;
}

static void dl_head_done(struct origin_request *req, const struct origin_result *result,
			 void *arg)
{
	struct dl_task *task = arg;
	char err[512];
	int rc;

	(void)req;
	task->head_req = NULL;
	if (dl_final(task)) {
		dl_task_maybe_end(task);
		return;
	}
	if (result->error == -ENODATA || result->error == -ESTALE) {
		dl_fail(task, result->error, result->error == -ESTALE ? DOWNLOAD_ERROR_INTEGRITY
				: DOWNLOAD_ERROR_ORIGIN_UNREACHABLE, "%s", task->message);
		dl_task_maybe_end(task);
		return;
	}
	if (result->error) {
		dl_fail_from_result(task, result, NULL);
		dl_task_maybe_end(task);
		return;
	}
	if (task->state == DL_FETCHING) {
		/* The fallback HEAD of a task the parents started. */
		log_info("download", "fetching from the origin task=%s length=%llu pieces=%u "
			 "recorded=%u ranges=%s (parents left %u)", task->hex,
			 (unsigned long long)task->length, task->piece_count,
			 store_task_info(task->st)->pieces_done, task->ranges ? "yes" : "no",
			 task->parents_live);
		task->origin_ready = true;
		task->scan = 0;
		if (!task->ranges)
			dl_sequential_start(task);
		dl_pump(task);
		return;
	}
	rc = dl_open_store_task(task, err, sizeof(err));
	if (rc < 0) {
		dl_fail(task, rc, rc == -ENOSPC ? DOWNLOAD_ERROR_NO_SPACE :
			rc == -EINVAL ? DOWNLOAD_ERROR_INVALID : DOWNLOAD_ERROR_INTERNAL, "%s", err);
		dl_task_maybe_end(task);
		return;
	}
	if (dl_fetch_setup(task) < 0) {
		dl_fail(task, -ENOMEM, DOWNLOAD_ERROR_INTERNAL, "out of memory");
		dl_task_maybe_end(task);
		return;
	}
	task->origin_ready = true;
	log_info("download", "fetching from the origin task=%s length=%llu piece_length=%llu "
		 "pieces=%u recorded=%u ranges=%s parallel=%u", task->hex,
		 (unsigned long long)task->length, (unsigned long long)task->piece_length,
		 task->piece_count, store_task_info(task->st)->pieces_done,
		 task->ranges ? "yes" : "no", task->ranges ? task->parallel : 1u);
	if (!task->ranges && store_task_info(task->st)->pieces_done < task->piece_count)
		dl_sequential_start(task);
	dl_pump(task);
}

static int dl_head_start(struct dl_task *task)
{
	static const struct origin_callbacks callbacks = {
		.on_headers = dl_head_headers,
		.on_done = dl_head_done,
	};
	struct origin_request_params params;

	dl_request_params(task, &params);
	params.method = ORIGIN_HEAD;
	return origin_request_start(task->origin->origin, &params, &callbacks, task,
				    &task->head_req);
}

/* Stops every request; pieces being written finish on their own. */
static void dl_stop_requests(struct dl_task *task)
{
	if (task->sched_req) {
		sched_cancel(task->sched_req);
		task->sched_req = NULL;
	}
	dl_parents_close(task, dl_final(task) && task->state == DL_COMPLETE ? "the task is complete"
								: "the task stopped");
	if (task->head_req) {
		origin_request_cancel(task->head_req);
		task->head_req = NULL;
	}
	if (task->seq_req) {
		origin_request_cancel(task->seq_req);
		task->seq_req = NULL;
	}
	if (task->seq_piece) {
		dl_piece_free(task->seq_piece);
		task->seq_piece = NULL;
	}
	dl_cancel_fetches(task);
}

static void dl_watcher_finish(struct download_watcher *watcher, int error,
			      enum download_error_kind kind, const char *message);

static void dl_fail(struct dl_task *task, int error, enum download_error_kind kind,
		   const char *fmt, ...)
{
	char reason[400];
	va_list ap;

	if (dl_final(task))
		return;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	task->state = DL_FAILED;
	task->error = error < 0 ? error : -EIO;
	task->kind = kind;
	snprintf(task->message, sizeof(task->message), "get %s: %s", task->url, reason);
	/* What failed for a reason of the content or the disk is not kept;
	 * a transfer that broke keeps its recorded pieces for a retry. */
	task->delete_at_end = kind != DOWNLOAD_ERROR_ORIGIN_UNREACHABLE &&
			      kind != DOWNLOAD_ERROR_INTERNAL;
	log_warn("download", "download failed task=%s reason=\"%s\"", task->hex, task->message);
	dl_stop_requests(task);
	while (task->watchers)
		dl_watcher_finish(task->watchers, task->error, task->kind, task->message);
}

static void dl_task_maybe_end(struct dl_task *task)
{
	struct download_engine *engine = task->engine;

	if (task->in_callback || !dl_final(task) || task->watcher_count || task->write_count ||
	    task->output_writes ||
	    task->fetch_count || task->head_req || task->seq_req || task->copy_armed ||
	    task->peer_inflight || task->sched_req)
		return;
	if (task->st) {
		/* The store may still hold it for a moment (this can run inside
		 * its piece callback): the delete waits for the last reference. */
		if (task->delete_at_end)
			store_task_discard(task->st);
		else
			store_task_release(task->st);
		task->st = NULL;
	} else if (task->delete_at_end) {
		int rc = store_delete(engine->store, task->id);

		if (rc < 0 && rc != -ENOENT)
			log_warn("download", "cannot delete a failed task task=%s error=\"%s\"",
				 task->hex, strerror(-rc));
	}
	dl_buffers_free(task);
	dl_parents_free(task);
	assert(task->buffers_out == 0);
	if (task->prev)
		task->prev->next = task->next;
	else
		engine->tasks = task->next;
	if (task->next)
		task->next->prev = task->prev;
	engine->task_count--;
	for (size_t i = 0; i < task->header_count; i++)
		free(task->headers[i]);
	free(task->headers);
	free(task->busy);
	free(task->ready);
	free(task->url);
	free(task);
}

/* --- watchers and their outputs. */

static void dl_watcher_free(struct download_watcher *watcher)
{
	if (watcher->out_fd >= 0)
		close(watcher->out_fd);
	free(watcher->have);
	free(watcher->pending);
	free(watcher);
}

/* Takes the watcher off its task: no callback any more. Its memory and its
 * output fd stay until the writes into that fd have completed (closing it
 * earlier could let a new file take its number under a queued write). */
static void dl_watcher_unlink(struct download_watcher *watcher)
{
	struct dl_task *task = watcher->task;
	struct download_engine *engine = task->engine;

	if (watcher->prev)
		watcher->prev->next = watcher->next;
	else
		task->watchers = watcher->next;
	if (watcher->next)
		watcher->next->prev = watcher->prev;
	task->watcher_count--;
	watcher->gone = true;
	watcher->prev = NULL;
	watcher->next = NULL;
	if (watcher->inflight == 0) {
		dl_watcher_free(watcher);
		return;
	}
	watcher->next = engine->zombies;
	if (engine->zombies)
		engine->zombies->prev = watcher;
	engine->zombies = watcher;
	engine->zombie_count++;
}

/* A gone watcher whose last write just completed is freed. */
static void dl_watcher_settle(struct download_watcher *watcher)
{
	struct download_engine *engine = watcher->task->engine;

	if (!watcher->gone || watcher->inflight)
		return;
	if (watcher->prev)
		watcher->prev->next = watcher->next;
	else
		engine->zombies = watcher->next;
	if (watcher->next)
		watcher->next->prev = watcher->prev;
	engine->zombie_count--;
	dl_watcher_free(watcher);
}

static void dl_watcher_finish(struct download_watcher *watcher, int error,
			      enum download_error_kind kind, const char *message)
{
	struct dl_task *task = watcher->task;
	struct download_progress progress;
	struct download_watcher_ops ops = watcher->ops;
	void *arg = watcher->arg;

	dl_progress_fill(task, &progress);
	if (watcher->from_cache)
		progress.source = DOWNLOAD_SOURCE_CACHE;
	dl_watcher_unlink(watcher); /* may free it */
	ops.done(arg, error, kind, message, &progress);
}

/* A task nobody waits for any more stops; its recorded pieces stay. */
static void dl_task_unwatched(struct dl_task *task)
{
	if (task->watcher_count || dl_final(task))
		return;
	if (task->state == DL_FETCHING && task->ready_count == task->piece_count)
		return; /* only durability left: finish it, the cache is complete */
	log_info("download", "nobody waits for the task any more, stopping task=%s recorded=%llu",
		 task->hex, task->st ? (unsigned long long)store_task_info(task->st)->bytes_done : 0ull);
	task->state = DL_STOPPED;
	dl_stop_requests(task);
}

void download_watcher_cancel(struct download_watcher *watcher)
{
	struct dl_task *task = watcher->task;

	dl_watcher_unlink(watcher);
	dl_task_unwatched(task);
	if (task->in_callback) {
		/* From a data() callback: the task ends on the next turn (or
		 * the next tick, if the ring is full). */
		if (!task->copy_armed) {
			loop_op_init(&task->copy_op, dl_copy_done, task);
			if (loop_nop(task->engine->loop, &task->copy_op) == 0)
				task->copy_armed = true;
		}
		return;
	}
	dl_task_maybe_end(task);
}

/* Copies piece `number` (readable in the cache file) into the watcher's
 * output at its offset. */
static int dl_copy_piece(struct download_watcher *watcher, uint32_t number)
{
	struct dl_task *task = watcher->task;
	uint64_t offset;
	uint32_t length;
	int in_fd, rc;
	loff_t in_offset, out_offset;

	if (task->ready && bit_get(task->ready, number)) {
		in_fd = store_task_content_fd(task->st);
		offset = piece_offset(task->piece_length, number);
		length = piece_size(task->length, task->piece_length, number);
	} else {
		rc = store_piece_locate(task->st, number, &in_fd, &offset, &length);
		if (rc < 0)
			return rc;
	}
	in_offset = out_offset = (loff_t)offset;
	while (length > 0) {
		ssize_t n;

		if (watcher->use_sendfile) {
			/* sendfile writes at the file position. */
			off_t sendfile_offset = in_offset;

			if (lseek(watcher->out_fd, out_offset, SEEK_SET) < 0)
				return -errno;
			n = sendfile(watcher->out_fd, in_fd, &sendfile_offset, length);
			if (n > 0) {
				in_offset = sendfile_offset;
				out_offset += n;
			}
		} else {
			n = copy_file_range(in_fd, &in_offset, watcher->out_fd, &out_offset, length, 0);
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && !watcher->use_sendfile &&
		    (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS)) {
			watcher->use_sendfile = true; /* another filesystem */
			continue;
		}
		if (n == 0) {
			/* The cache file ends before the piece does: the store's
			 * check drops what it no longer holds (if recorded yet). */
			int fd;

			store_piece_locate(task->st, number, &fd, &offset, &length);
			return -EBADMSG;
		}
		if (n < 0)
			return -errno;
		length -= (uint32_t)n;
	}
	return 0;
}

static bool dl_piece_readable(const struct dl_task *task, uint32_t number)
{
	return (task->ready && bit_get(task->ready, number)) ||
	       store_task_has_piece(task->st, number);
}

/* Copies into one output the readable pieces it lacks (those no buffer
 * write brings), from its first missing piece up to the first piece not yet
 * readable, within *budget bytes. 0 or a negative errno. */
static int dl_output_catch_up(struct download_watcher *watcher, uint64_t *budget)
{
	struct dl_task *task = watcher->task;

	while (watcher->first_missing < task->piece_count &&
	       bit_get(watcher->have, watcher->first_missing))
		watcher->first_missing++;
	for (uint32_t n = watcher->first_missing; n < task->piece_count && *budget > 0; n++) {
		int rc;

		if (bit_get(watcher->have, n) || bit_get(watcher->pending, n))
			continue;
		if (!dl_piece_readable(task, n)) {
			/* A complete task missing a piece: the store dropped it
			 * as damaged (for this watcher or another); nothing will
			 * fetch it for this task. */
			if (task->state == DL_COMPLETE)
				return -EBADMSG;
			break;
		}
		rc = dl_copy_piece(watcher, n);
		if (rc < 0)
			return rc;
		bit_set(watcher->have, n, true);
		watcher->have_count++;
		*budget -= *budget < task->piece_length ? *budget : task->piece_length;
	}
	return 0;
}

/* A watcher without output that streams (ops.data): reports the readable
 * prefix of the content when it grew. False if data() cancelled it (it is
 * freed then). */
static bool dl_watcher_stream(struct download_watcher *watcher)
{
	struct dl_task *task = watcher->task;
	uint64_t readable;

	while (watcher->first_missing < task->piece_count &&
	       dl_piece_readable(task, watcher->first_missing))
		watcher->first_missing++;
	readable = watcher->first_missing == task->piece_count
			   ? task->length
			   : (uint64_t)watcher->first_missing * task->piece_length;
	if (readable <= watcher->streamed)
		return true;
	watcher->streamed = readable;
	/* Held in flight over the call: a cancel inside parks it, and it is
	 * freed here once the call returns. */
	watcher->inflight++;
	task->in_callback++;
	watcher->ops.data(watcher->arg, readable);
	task->in_callback--;
	watcher->inflight--;
	if (!watcher->gone)
		return true;
	dl_watcher_settle(watcher);
	return false;
}

/* Moves every watcher's output forward (up to DOWNLOAD_COPY_TURN_BYTES of
 * copying this turn) and finishes the watchers that have everything. Never
 * frees the task: callers end with dl_task_maybe_end. */
/* A watcher of a complete task missing a piece (dropped as damaged). */
static void dl_watcher_damaged(struct download_watcher *watcher)
{
	struct dl_task *task = watcher->task;
	char message[600];

	snprintf(message, sizeof(message),
		 "get %s: the cache's copy of task %s is damaged (a piece's bytes are gone or "
		 "changed); what the store found damaged was dropped: a get again fetches it",
		 task->url, task->hex);
	dl_watcher_finish(watcher, -EBADMSG, DOWNLOAD_ERROR_INTEGRITY, message);
}

static void dl_outputs_advance(struct dl_task *task)
{
	uint64_t budget = DOWNLOAD_COPY_TURN_BYTES;
	struct download_watcher *watcher, *next;

	if (task->copy_armed || !task->st ||
	    (task->state != DL_FETCHING && task->state != DL_COMPLETE))
		return;
	for (watcher = task->watchers; watcher; watcher = next) {
		bool whole;
		int rc = 0;

		next = watcher->next;
		if (watcher->out_fd >= 0) {
			rc = dl_watcher_prepare(watcher) ? dl_output_catch_up(watcher, &budget)
							 : -ENOMEM;
		} else if (watcher->ops.data && !dl_watcher_stream(watcher)) {
			continue; /* cancelled from its data() */
		} else if (watcher->ops.data && task->state == DL_COMPLETE &&
			   watcher->first_missing < task->piece_count) {
			rc = -EBADMSG; /* as in dl_output_catch_up: a damaged piece */
		}
		if (rc == -EBADMSG) {
			dl_watcher_damaged(watcher);
			continue;
		}
		if (rc < 0) {
			char message[600];

			snprintf(message, sizeof(message), "get %s: writing the output: %s",
				 task->url, strerror(-rc));
			dl_watcher_finish(watcher, rc, rc == -ENOSPC ? DOWNLOAD_ERROR_NO_SPACE
								     : DOWNLOAD_ERROR_INTERNAL, message);
			continue;
		}
		whole = watcher->out_fd < 0 || watcher->have_count == task->piece_count;
		/* Done once the output has every piece: a plain get does not
		 * wait for the cache to be durable; one with a digest waits for
		 * the task's check. */
		if (whole && (task->state == DL_COMPLETE ||
			      (!watcher->has_digest && task->ready_count == task->piece_count))) {
			uint8_t digest[32];
			char message[600], want[65], got[65];

			rc = watcher->has_digest ? store_task_sha256(task->st, digest) : 0;
			if (rc == -EINPROGRESS)
				continue; /* hashed a slice per turn: dl_checked */
			if (rc == -EBADMSG) {
				dl_watcher_damaged(watcher); /* pieces dropped while hashed */
			} else if (rc < 0) {
				snprintf(message, sizeof(message),
					 "get %s: cannot check the digest of task %s: %s", task->url,
					 task->hex, strerror(-rc));
				dl_watcher_finish(watcher, rc, DOWNLOAD_ERROR_INTERNAL, message);
			} else if (watcher->has_digest &&
				   memcmp(digest, watcher->digest, sizeof(digest)) != 0) {
				hash_hex(watcher->digest, want);
				hash_hex(digest, got);
				snprintf(message, sizeof(message),
					 "get %s: digest mismatch: expected sha256:%s, got sha256:%s",
					 task->url, want, got);
				dl_watcher_finish(watcher, -EBADMSG, DOWNLOAD_ERROR_INTEGRITY, message);
			} else {
				dl_watcher_finish(watcher, 0, DOWNLOAD_ERROR_INTERNAL, NULL);
			}
		}
	}
	if (budget == 0 && task->watchers) {
		loop_op_init(&task->copy_op, dl_copy_done, task);
		if (loop_nop(task->engine->loop, &task->copy_op) == 0)
			task->copy_armed = true;
	}
}

static void dl_copy_done(struct loop_op *op, int res, uint32_t flags)
{
	struct dl_task *task = op->owner;

	(void)res;
	(void)flags;
	task->copy_armed = false;
	dl_outputs_advance(task);
	dl_task_maybe_end(task);
}

/* --- progress and deadlines. */

static void dl_tick_arm(struct download_engine *engine);

/* An origin-only task in range mode with pieces left and nothing at all in
 * flight: no request, no write into the cache (its own or another's: a
 * piece another source writes is left to it) or an output. */
static bool dl_origin_stranded(const struct dl_task *task)
{
	return task->state == DL_FETCHING && task->origin_ready && !task->parents &&
	       !task->sequential && task->st && task->fetch_count == 0 &&
	       task->write_count == 0 && task->output_writes == 0 &&
	       store_task_writes(task->st) == 0 &&
	       store_task_info(task->st)->pieces_done < task->piece_count;
}

static void dl_tick_done(struct loop_op *op, int res, uint32_t flags)
{
	struct download_engine *engine = op->owner;
	uint64_t now_ms = clock_monotonic_ms();

	(void)res;
	(void)flags;
	engine->tick_armed = false;
	for (struct dl_task *task = engine->tasks, *next_task; task; task = next_task) {
		struct download_progress progress;
		uint64_t bytes = task->st ? store_task_info(task->st)->bytes_done : 0;

		next_task = task->next;
		if (now_ms > task->rate_ms) {
			uint64_t instant = (bytes - task->rate_bytes) * 1000u / (now_ms - task->rate_ms);

			task->rate_bytes_per_s = task->rate_bytes_per_s
				? (task->rate_bytes_per_s + instant) / 2 : instant;
			task->rate_bytes = bytes;
			task->rate_ms = now_ms;
		}
		dl_progress_fill(task, &progress);
		/* Whatever ends the task below (a timeout, the last parent
		 * gone, the last piece in), it is freed only at the end. */
		task->in_callback++;
		for (struct download_watcher *w = task->watchers, *next; w; w = next) {
			next = w->next;
			if (w->deadline_ms && now_ms >= w->deadline_ms) {
				char message[600];

				if (task->watcher_count == 1 && !dl_final(task)) {
					/* Its only requester gave up: so does the task
					 * (recorded pieces stay for a retry). */
					dl_fail(task, -ETIMEDOUT, DOWNLOAD_ERROR_ORIGIN_UNREACHABLE,
						"timed out after %u ms", w->timeout_ms);
					break;
				}
				snprintf(message, sizeof(message), "get %s: timed out after %u ms",
					 task->url, w->timeout_ms);
				dl_watcher_finish(w, -ETIMEDOUT, DOWNLOAD_ERROR_ORIGIN_UNREACHABLE,
						  message);
				continue;
			}
			w->ops.progress(w->arg, &progress);
		}
		dl_task_unwatched(task);
		dl_parents_tick(task, now_ms);
		if (task->rate_limit && task->state == DL_FETCHING)
			dl_pump(task); /* the bucket refilled */
		else if (dl_origin_stranded(task)) {
			/* Every path that frees a buffer or ends a request pumps;
			 * one that did not would leave the get waiting forever.
			 * A tick later it goes on, and says so. */
			dl_pump(task);
			if (task->fetch_count)
				log_warn("download", "nothing was in flight for the task; fetches "
					 "restarted task=%s pieces_left=%u", task->hex,
					 task->piece_count - store_task_info(task->st)->pieces_done);
		}
		task->in_callback--;
		dl_task_maybe_end(task);
	}
	dl_tick_arm(engine);
}

static void dl_tick_arm(struct download_engine *engine)
{
	if (engine->tick_armed || !engine->tasks)
		return;
	loop_op_init(&engine->tick_op, dl_tick_done, engine);
	if (loop_timeout(engine->loop, &engine->tick_op, engine->options.progress_ms) == 0)
		engine->tick_armed = true;
}

/* --- the API. */

static struct dl_task *dl_task_find(struct download_engine *engine, const uint8_t id[32])
{
	for (struct dl_task *task = engine->tasks; task; task = task->next)
		if (memcmp(task->id, id, 32) == 0)
			return task;
	return NULL;
}

static int dl_task_new(struct download_engine *engine, const struct download_request *request,
		       const uint8_t id[32], struct dl_task **out, char *err, size_t err_size)
{
	struct dl_task *task = calloc(1, sizeof(*task));
	struct store_task *st = NULL;
	int rc;

	if (!task)
		return -ENOMEM;
	task->engine = engine;
	memcpy(task->id, id, 32);
	hash_hex(id, task->hex);
	task->url = strdup(request->url);
	task->headers = calloc(request->header_count + 1, sizeof(char *));
	if (!task->url || !task->headers)
		goto out_nomem;
	for (size_t i = 0; i < request->header_count; i++) {
		task->headers[i] = strdup(request->headers[i]);
		if (!task->headers[i])
			goto out_nomem;
		task->header_count++;
	}
	task->has_digest = request->has_digest;
	memcpy(task->digest, request->digest, sizeof(task->digest));
	task->piece_length_wanted = request->piece_length;
	task->parallel = request->parallel ? request->parallel : engine->options.parallel;
	if (task->parallel > DOWNLOAD_PARALLEL_MAX)
		task->parallel = DOWNLOAD_PARALLEL_MAX;
	task->started_ms = task->rate_ms = clock_monotonic_ms();
	task->rate_limit = request->rate_limit;
	task->no_origin = request->no_back_to_source || engine->options.no_back_to_source;
	task->tokens_ms = task->started_ms;
	task->source = DOWNLOAD_SOURCE_ORIGIN;

	rc = store_task_find(engine->store, id, &st);
	if (rc == 0 && store_task_info(st)->state == META_TASK_FAILED) {
		store_task_release(st);
		store_delete(engine->store, id);
		st = NULL;
	}
	if (st && store_task_is_complete(st)) {
		task->st = st;
		store_task_on_checked(st, dl_checked, engine);
		task->state = DL_COMPLETE;
		task->source = DOWNLOAD_SOURCE_CACHE;
		task->length = store_task_info(st)->content_length;
		task->piece_length = store_task_info(st)->piece_length;
		task->piece_count = store_task_info(st)->piece_count;
		task->ready_count = task->piece_count;
		task->ready_bytes = task->length;
	} else {
		task->st = st; /* pending from an earlier run, or NULL */
		task->state = DL_PROBING;
		task->origin = dl_origin_for(engine, request->insecure, request->ca_file);
		if (!task->origin) {
			snprintf(err, err_size, "get %s: cannot set up the HTTP client (too many "
				 "different TLS settings at once?)", request->url);
			rc = -EBUSY;
			goto out_free;
		}
		if (request->parent_count) {
			rc = dl_parents_open(task, request->parents, NULL, request->parent_count);
			if (rc < 0) {
				snprintf(err, err_size, "get %s: out of memory", request->url);
				goto out_free;
			}
		}
		if (task->parents_live) {
			rc = 0;
		} else if (engine->options.sched && !request->parent_count) {
			rc = dl_sched_ask(task);
			if (rc < 0) {
				snprintf(err, err_size, "get %s: cannot ask a scheduler: %s",
					 request->url, strerror(-rc));
				goto out_free;
			}
		} else if (task->no_origin) {
			snprintf(err, err_size, "get %s: no parent can serve it and back-to-source is "
				 "disabled (no --parent and no scheduler)", request->url);
			rc = -EHOSTUNREACH;
			goto out_free;
		} else {
			task->origin_allowed = true;
			rc = dl_head_start(task);
		}
		if (rc < 0) {
			snprintf(err, err_size, "get %s: cannot start a request: %s", request->url,
				 origin_strerror(rc));
			goto out_free;
		}
	}
	task->next = engine->tasks;
	if (engine->tasks)
		engine->tasks->prev = task;
	engine->tasks = task;
	engine->task_count++;
	*out = task;
	return 0;

out_nomem:
	snprintf(err, err_size, "get %s: out of memory", request->url);
	rc = -ENOMEM;
out_free:
	dl_parents_free(task);
	if (task->st)
		store_task_release(task->st);
	for (size_t i = 0; i < task->header_count; i++)
		free(task->headers[i]);
	free(task->headers);
	free(task->url);
	free(task);
	return rc;
}

int download_start(struct download_engine *engine, const struct download_request *request,
		   const struct download_watcher_ops *ops, void *arg,
		   struct download_watcher **out, char *err, size_t err_size)
{
	struct download_watcher *watcher;
	struct download_request blob_request;
	struct dl_task *task;
	uint8_t id[32], blob_digest[32];
	int rc;

	if (strncmp(request->url, "http://", 7) != 0 && strncmp(request->url, "https://", 8) != 0) {
		snprintf(err, err_size, "get %s: only http:// and https:// URLs are supported",
			 request->url);
		rc = -EINVAL;
		goto out_close;
	}
	if (strlen(request->url) >= META_URL_MAX) {
		snprintf(err, err_size, "get: the URL is longer than %d bytes", META_URL_MAX - 1);
		rc = -EINVAL;
		goto out_close;
	}
	if (request->header_count > DOWNLOAD_HEADERS_MAX) {
		snprintf(err, err_size, "get %s: more than %u headers", request->url,
			 DOWNLOAD_HEADERS_MAX);
		rc = -E2BIG;
		goto out_close;
	}
	if (request->piece_length && !piece_length_valid(request->piece_length)) {
		snprintf(err, err_size, "get %s: piece length %llu is not a power of two between "
			 "64 KiB and 1 GiB", request->url,
			 (unsigned long long)request->piece_length);
		rc = -EINVAL;
		goto out_close;
	}
	if (download_blob_digest(request->url, blob_digest)) {
		/* A registry blob: its bytes are what its name says. */
		if (request->has_digest && memcmp(request->digest, blob_digest, 32) != 0) {
			snprintf(err, err_size, "get %s: the digest asked for is not the blob's "
				 "digest in the URL", request->url);
			rc = -EINVAL;
			goto out_close;
		}
		blob_request = *request;
		blob_request.has_digest = true;
		memcpy(blob_request.digest, blob_digest, 32);
		request = &blob_request;
	}
	watcher = calloc(1, sizeof(*watcher));
	if (!watcher) {
		snprintf(err, err_size, "get %s: out of memory", request->url);
		rc = -ENOMEM;
		goto out_close;
	}
	download_task_id(request->url, id);
	task = dl_task_find(engine, id);
	if (task && (task->state == DL_FAILED || task->state == DL_STOPPED)) {
		free(watcher);
		snprintf(err, err_size, "get %s: the task is still winding down from its last "
			 "attempt; try again", request->url);
		rc = -EAGAIN;
		goto out_close;
	}
	if (!task) {
		rc = dl_task_new(engine, request, id, &task, err, err_size);
		if (rc < 0) {
			free(watcher);
			goto out_close;
		}
		if (task->source == DOWNLOAD_SOURCE_CACHE)
			log_info("download", "download cache hit task=%s url=%s pid=%d uid=%u",
				 task->hex, task->url, request->requester_pid, request->requester_uid);
		else
			log_info("download", "download start task=%s url=%s pid=%d uid=%u",
				 task->hex, task->url, request->requester_pid, request->requester_uid);
	} else {
		log_info("download", "download joined task=%s url=%s pid=%d uid=%u", task->hex,
			 task->url, request->requester_pid, request->requester_uid);
	}
	watcher->task = task;
	watcher->ops = *ops;
	watcher->arg = arg;
	watcher->out_fd = request->output_fd;
	watcher->has_digest = request->has_digest;
	memcpy(watcher->digest, request->digest, sizeof(watcher->digest));
	watcher->timeout_ms = request->timeout_ms;
	watcher->from_cache = task->state != DL_PROBING && task->ready_count == task->piece_count;
	if (request->timeout_ms)
		watcher->deadline_ms = clock_monotonic_ms() + request->timeout_ms;
	watcher->next = task->watchers;
	if (task->watchers)
		task->watchers->prev = watcher;
	task->watchers = watcher;
	task->watcher_count++;
	if (task->state == DL_COMPLETE && !task->copy_armed) {
		/* Outputs fill from the next turn: no callback before we return. */
		loop_op_init(&task->copy_op, dl_copy_done, task);
		if (loop_nop(engine->loop, &task->copy_op) == 0)
			task->copy_armed = true;
	}
	dl_tick_arm(engine);
	*out = watcher;
	return 0;

out_close:
	if (request->output_fd >= 0)
		close(request->output_fd);
	return rc;
}

int download_engine_create(struct download_engine **out, struct loop *loop, struct store *store,
			   const struct download_options *options)
{
	struct download_engine *engine = calloc(1, sizeof(*engine));

	if (!engine)
		return -ENOMEM;
	engine->loop = loop;
	engine->store = store;
	if (getrandom(&engine->rng, sizeof(engine->rng), GRND_NONBLOCK) != sizeof(engine->rng))
		engine->rng = clock_monotonic_ms() ^ ((uint64_t)getpid() << 32);
	engine->rng |= 1; /* never the all-zero state */
	if (options)
		engine->options = *options;
	if (!engine->options.parallel)
		engine->options.parallel = DOWNLOAD_PARALLEL_DEFAULT;
	if (!engine->options.memory_bytes)
		engine->options.memory_bytes = DOWNLOAD_MEMORY_DEFAULT;
	if (!engine->options.progress_ms)
		engine->options.progress_ms = DOWNLOAD_PROGRESS_DEFAULT_MS;
	if (!engine->options.origin_buffer_bytes)
		engine->options.origin_buffer_bytes = DOWNLOAD_ORIGIN_BUFFER_DEFAULT;
	if (!engine->options.parent_requests)
		engine->options.parent_requests = DOWNLOAD_PARENT_REQUESTS_DEFAULT;
	if (!engine->options.piece_timeout_ms)
		engine->options.piece_timeout_ms = DOWNLOAD_PIECE_TIMEOUT_DEFAULT_MS;
	if (!engine->options.parent_connections)
		engine->options.parent_connections = DOWNLOAD_PARENT_CONNECTIONS_DEFAULT;
	*out = engine;
	return 0;
}

int download_watcher_content_fd(const struct download_watcher *watcher)
{
	const struct dl_task *task = watcher->task;

	return task->st ? store_task_content_fd(task->st) : -1;
}

uint64_t download_watcher_length(const struct download_watcher *watcher)
{
	const struct dl_task *task = watcher->task;

	return task->st ? store_task_info(task->st)->content_length : 0;
}

/* The authority of url ("host:port" or "[v6]:port", no userinfo) into out. */
static bool dl_url_authority(const char *url, char *out, size_t out_size)
{
	const char *p = strstr(url, "://"), *end, *at;
	size_t len;

	if (!p)
		return false;
	p += 3;
	end = p + strcspn(p, "/?#");
	at = memchr(p, '@', (size_t)(end - p));
	if (at)
		p = at + 1;
	len = (size_t)(end - p);
	if (len == 0 || len >= out_size)
		return false;
	memcpy(out, p, len);
	out[len] = '\0';
	return true;
}

bool download_seed_may_fetch(const char *url, const char *allow, char *why, size_t why_size)
{
	char authority[512], host[512], list[1024];
	struct in6_addr a6;
	struct in_addr a4;
	const char *colon;

	if (!dl_url_authority(url, authority, sizeof(authority))) {
		snprintf(why, why_size, "no host in %s", url);
		return false;
	}
	/* The host alone: "[v6]:port" -> v6, "host:port" -> host. */
	if (authority[0] == '[') {
		snprintf(host, sizeof(host), "%.*s", (int)strcspn(authority + 1, "]"), authority + 1);
	} else {
		colon = strrchr(authority, ':');
		snprintf(host, sizeof(host), "%.*s",
			 (int)(colon ? (size_t)(colon - authority) : strlen(authority)), authority);
	}
	if ((inet_pton(AF_INET, host, &a4) == 1 && (ntohl(a4.s_addr) >> 16) == 0xa9feu) ||
	    (inet_pton(AF_INET6, host, &a6) == 1 && a6.s6_addr[0] == 0xfe &&
	     (a6.s6_addr[1] & 0xc0) == 0x80)) {
		snprintf(why, why_size, "%s is a link-local address", host);
		return false;
	}
	if (!allow || strcmp(allow, "*") == 0)
		return true;
	snprintf(list, sizeof(list), "%s", allow);
	for (char *save = NULL, *e = strtok_r(list, ", ", &save); e; e = strtok_r(NULL, ", ", &save))
		if (strcasecmp(e, "*") == 0 || strcasecmp(e, host) == 0 || strcasecmp(e, authority) == 0)
			return true;
	snprintf(why, why_size, "%s is not in seed.fetch_from", authority);
	return false;
}

bool download_task_running(struct download_engine *engine, const uint8_t id[32])
{
	return dl_task_find(engine, id) != NULL;
}

unsigned download_engine_active(const struct download_engine *engine)
{
	return engine->task_count + engine->zombie_count;
}

void download_engine_destroy(struct download_engine *engine)
{
	if (!engine)
		return;
	/* The loop is gone: requests and writes in flight will never call
	 * back. Origins first (they own the requests), then the tasks. */
	for (unsigned i = 0; i < engine->origin_count; i++)
		origin_destroy(engine->origins[i].origin);
	while (engine->zombies) {
		struct download_watcher *watcher = engine->zombies;

		engine->zombies = watcher->next;
		dl_watcher_free(watcher);
	}
	while (engine->tasks) {
		struct dl_task *task = engine->tasks;

		engine->tasks = task->next;
		while (task->watchers) {
			struct download_watcher *watcher = task->watchers;

			task->watchers = watcher->next;
			dl_watcher_free(watcher);
		}
		while (task->fetching) {
			struct dl_piece *piece = task->fetching;

			task->fetching = piece->next;
			free(piece->buf);
			free(piece);
		}
		if (task->seq_piece) {
			free(task->seq_piece->buf);
			free(task->seq_piece);
		}
		/* Pieces whose writes were in flight are abandoned with the
		 * store (store_close); their buffers leak only at exit. */
		dl_buffers_free(task);
		for (size_t i = 0; i < task->header_count; i++)
			free(task->headers[i]);
		free(task->headers);
		free(task->busy);
		free(task->ready);
		free(task->url);
		free(task);
	}
	free(engine);
}

/* --- fetching for others (a seed asked for a task it lacks). */

static void dl_prefetch_progress(void *arg, const struct download_progress *progress)
{
	(void)arg;
	(void)progress;
}

static void dl_prefetch_done(void *arg, int error, enum download_error_kind kind,
			     const char *message, const struct download_progress *progress)
{
	(void)arg;
	(void)kind;
	(void)progress;
	if (error)
		log_warn("download", "fetch for peers failed reason=\"%s\"", message);
}

int download_prefetch(struct download_engine *engine, const char *url, const uint8_t *digest,
		      char *err, size_t err_size)
{
	static const struct download_watcher_ops ops = {
		.progress = dl_prefetch_progress,
		.done = dl_prefetch_done,
	};
	struct download_request request = { .url = url, .output_fd = -1 };
	struct download_watcher *watcher;

	if (digest) {
		request.has_digest = true;
		memcpy(request.digest, digest, sizeof(request.digest));
	}

	return download_start(engine, &request, &ops, NULL, &watcher, err, err_size);
}
