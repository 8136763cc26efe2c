/* upload: the peer service on TCP: SyncPieces streams and GetPiece answers from the cache. */
#ifndef RINGFLY_DAEMON_UPLOAD_H
#define RINGFLY_DAEMON_UPLOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "core/loop.h"
#include "daemon/download.h"
#include "net/conn.h"
#include "storage/store.h"

struct upload_options {
	unsigned max_requests;	/* GetPiece queued per connection; past it: BUSY */
	uint64_t rate_limit;	/* bytes/s over every upload; 0 = none */
	/* A seed: SyncPieces of a task it lacks, with its URL, starts fetching
	 * it from the origin through engine (borrowed). */
	bool seed;
	/* A seed tells a piece it has just recorded to one child first (see
	 * "Spreading" in upload.c); off: to every child at once. */
	bool spread;
	struct download_engine *engine;
	/* seed.fetch_from: the origins a seed fetches from for peers
	 * (download_seed_may_fetch); borrowed. */
	const char *fetch_from;
};

struct upload_sync;
struct upload_conn;

struct upload {
	struct loop *loop;
	struct store *store;
	struct upload_options options;
	struct upload_sync *syncs;	/* every SyncPieces stream still open */
	struct upload_conn *blocked;	/* connections waiting for rate tokens */
	int64_t tokens;			/* bytes that may leave now (may go negative) */
	uint64_t tokens_ms;		/* when tokens were last refilled */
	struct loop_op timer_op;
	bool timer_armed;
	struct loop_op spread_op;	/* held piece announcements (spreading) */
	bool spread_armed;
	unsigned spread_turn;		/* which stream hears of the next piece first */
	bool closing;
	uint64_t pieces_served, bytes_served;
};

/* Sets up the service and becomes the store's observer. */
void upload_init(struct upload *upload, struct loop *loop, struct store *store,
		 const struct upload_options *options);
/* After the loop has stopped for good (like loop_destroy). */
void upload_fini(struct upload *upload);
/* SIGHUP: a new rate limit (0 = none) applies from now on. */
void upload_set_rate_limit(struct upload *upload, uint64_t bytes_per_s);

/* Handles a peer request; false if `type` is not one (the caller answers). */
bool upload_frame(struct upload *upload, struct conn *conn, uint8_t type,
		  const ProtobufCMessage *msg);
/* The scheduler named the roots of task_id (peer ids; scheduler/state.h): a
 * seed tells them of its held pieces sooner ("Spreading" in upload.c).
 * Streams opened later wait for the next list (a seed asks every second). */
void upload_set_roots(struct upload *upload, const uint8_t task_id[32],
		      const char *const *peer_ids, size_t count);
/* The connection is gone: its streams and queued requests go with it. */
void upload_conn_closed(struct upload *upload, struct conn *conn);

#endif
