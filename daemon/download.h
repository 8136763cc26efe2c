/* download: the node's task manager: fetch a URL into the cache (back to source), share
 * one task among concurrent requesters, and fill each requester's output file. */
#ifndef RINGFLY_DAEMON_DOWNLOAD_H
#define RINGFLY_DAEMON_DOWNLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "storage/store.h"

/*
 * A download is a task (one per task id, storage/store.h) and its watchers
 * (the requesters: a CLI get each). The first request for an id creates the
 * task; later ones attach to it and see the same pieces arrive, so twenty
 * concurrent gets of one URL make one origin transfer.
 *
 * Back to source: a HEAD learns the length, whether ranges work and the
 * ETag; then pieces are fetched as range requests, `parallel` at once, each
 * into a buffer of one piece that goes to the store (store_piece_from_buffer)
 * once full. Buffers are bounded per engine (memory_bytes): a fetch starts
 * only when it has one, and a sequential transfer (a server without ranges) is
 * paused while none is free. A range answer whose total length or ETag differ
 * from the HEAD's fails the task ("origin changed during the download").
 *
 * Output: a watcher's fd (a regular file the requester opened) receives each
 * piece with copy_file_range as soon as the piece and all before it are
 * recorded, so the output fills while the download runs; done() runs after
 * the last piece is in the output and the digest (if any) checked. Nothing is
 * ever written to a path: the daemon only writes into descriptors it is given.
 */

enum download_error_kind {
	DOWNLOAD_ERROR_INTERNAL = 0,
	DOWNLOAD_ERROR_ORIGIN_HTTP,	   /* the origin answered 4xx/5xx */
	DOWNLOAD_ERROR_ORIGIN_UNREACHABLE, /* refused, TLS, timeout, transfer failed */
	DOWNLOAD_ERROR_INTEGRITY,	   /* digest mismatch, origin changed */
	DOWNLOAD_ERROR_NO_SPACE,	   /* cache or output disk full */
	DOWNLOAD_ERROR_INVALID,		   /* the request is wrong */
};

enum download_source {
	DOWNLOAD_SOURCE_ORIGIN = 0,
	DOWNLOAD_SOURCE_CACHE,
	DOWNLOAD_SOURCE_PEER,	/* some bytes came from parents */
};

struct download_options {
	unsigned parallel;	/* ranges at once per task; 0 = 4 */
	uint64_t memory_bytes;	/* piece buffers of all tasks; 0 = 256 MiB */
	unsigned progress_ms;	/* progress() interval; 0 = 250 */
	size_t origin_buffer_bytes; /* libcurl's receive buffer; 0 = 1 MiB */
	unsigned parent_requests;   /* GetPiece in flight per parent; 0 = 8 */
	unsigned piece_timeout_ms;  /* a parent silent this long is dropped; 0 = 30 s */
	unsigned parent_connections; /* connections to each parent, each its own
				      * pipeline (socket and disk overlap); 0 = 2 */
	struct sched_client *sched;  /* parents from schedulers (borrowed); NULL = none */
	/* A scheduler's answer named the task's roots (to a seed; peer ids,
	 * borrowed for the call; count 0: none). Optional. */
	void (*roots)(void *arg, const uint8_t task_id[32], const char *const *peer_ids,
		      size_t count);
	void *roots_arg;
	bool no_back_to_source;	     /* never the origin (download.back_to_source: false) */
};

struct download_request {
	const char *url;
	const char *const *headers; /* "Name: value" */
	size_t header_count;
	bool has_digest;
	uint8_t digest[32];
	uint64_t piece_length;	/* 0 = from the length */
	unsigned timeout_ms;	/* the whole download for this requester; 0 = none */
	bool insecure;
	const char *ca_file;	/* "" or NULL: the system's CAs */
	unsigned parallel;	/* 0 = the engine's default */
	int output_fd;		/* owned by the engine from the call on; -1: none */
	const char *const *parents; /* "host:port" of peers to fetch pieces from first */
	size_t parent_count;
	uint64_t rate_limit;	/* bytes/s the task may fetch (parents and origin); 0 = none */
	bool no_back_to_source;	/* never the origin: fail if parents cannot give it */
	int requester_pid;	/* for logs */
	unsigned requester_uid;
};

struct download_progress {
	char task_hex[65];
	uint64_t bytes_done;	/* recorded in the cache */
	uint64_t total_bytes;	/* 0 while unknown */
	uint64_t rate_bytes_per_s;
	uint64_t origin_bytes;
	uint64_t peer_bytes;
	enum download_source source;
};

struct download_watcher;

struct download_watcher_ops {
	void (*progress)(void *arg, const struct download_progress *progress);
	/* The end for this watcher (its output is closed by then): error 0 =
	 * done, else a negative errno with kind and a one-line message naming
	 * the URL and the reason. The watcher is gone once this returns. */
	void (*done)(void *arg, int error, enum download_error_kind kind, const char *message,
		     const struct download_progress *progress);
	/*
	 * Optional, for a watcher without an output fd that streams the
	 * content elsewhere (the registry mirror's HTTP response): bytes
	 * [0, readable) can now be read from download_watcher_content_fd.
	 * Runs each time that prefix grows, before done. The bytes are not
	 * verified against the digest until done(0): hold some back until
	 * then. May call download_watcher_cancel.
	 */
	void (*data)(void *arg, uint64_t readable);
};

struct download_engine;

int download_engine_create(struct download_engine **out, struct loop *loop, struct store *store,
			   const struct download_options *options);
/* After loop_run has returned for good (like origin_destroy). */
void download_engine_destroy(struct download_engine *engine);
/* Tasks still running or winding down (writes in flight). */
unsigned download_engine_active(const struct download_engine *engine);

/*
 * Starts (or joins) the download of request->url. Returns 0 and the watcher
 * in *out; ops run from the loop, never before this returns. On a negative
 * errno (bad URL or digest, out of memory) err says why, nothing runs and
 * output_fd has been closed.
 */
int download_start(struct download_engine *engine, const struct download_request *request,
		   const struct download_watcher_ops *ops, void *arg,
		   struct download_watcher **out, char *err, size_t err_size);

/* A seed peer asked for a task it lacks, or preheated: fetch it (no output,
 * nobody waits), checked against digest (sha256, 32 bytes) if not NULL.
 * 0, or a negative errno with the reason in err. */
int download_prefetch(struct download_engine *engine, const char *url, const uint8_t *digest,
		      char *err, size_t err_size);

/*
 * Whether a seed fetches `url` when someone else asks (a peer's SyncPieces,
 * a preheat): its host must be in `allow` (comma-separated HOST or HOST:PORT,
 * case-insensitive; "*" = any host), and is never a link-local address
 * (169.254.0.0/16, fe80::/10: cloud metadata services answer there). False
 * with the reason in why.
 */
bool download_seed_may_fetch(const char *url, const char *allow, char *why, size_t why_size);

/* The task `id` is being downloaded (a get or a prefetch would join it). */
bool download_task_running(struct download_engine *engine, const uint8_t id[32]);

/* In a parent's NOT_FOUND answer: it is fetching the task (a seed for the
 * child, or a peer whose own download is still probing): ask again. */
#define DOWNLOAD_FETCHING_NOW "fetching it now"


/* The requester went away: no callback runs for this watcher any more, its
 * output is closed; a task nobody watches any more stops (its recorded
 * pieces stay for the next request). */
void download_watcher_cancel(struct download_watcher *watcher);

/* The task's content file (borrowed: dup it to keep it past the watcher), or
 * -1 before the task has one. Bytes a data() callback announced are in it at
 * their own offsets. */
int download_watcher_content_fd(const struct download_watcher *watcher);
/* The content's length once the task knows it (always by the first data()). */
uint64_t download_watcher_length(const struct download_watcher *watcher);

/*
 * The task id of a URL: sha256("ringfly-task-v1\n" + url without its
 * fragment), except for a registry blob: a URL whose path is
 * /v2/<name>/blobs/sha256:<64 hex> is the blob with that digest wherever it
 * comes from, task id sha256("ringfly-blob-v1\nsha256:<hex>"), and its
 * content is verified against the digest.
 */
void download_task_id(const char *url, uint8_t id[32]);
/* The digest of a registry blob URL (see download_task_id); false if the URL
 * is not one. */
bool download_blob_digest(const char *url, uint8_t digest[32]);
void download_blob_task_id(const uint8_t digest[32], uint8_t id[32]);

#endif
