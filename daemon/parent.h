/* parent: one connection to a parent peer: its piece availability, pieces spliced into the cache. */
#ifndef RINGFLY_DAEMON_PARENT_H
#define RINGFLY_DAEMON_PARENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "storage/store.h"

/*
 * A child opens one TCP connection per parent and task: SyncPieces first,
 * then GetPiece requests pipelined (answered in order). Each PieceHeader's
 * bytes go from the socket into the cache by the store's stream path
 * (splice socket -> pipe -> file), checked against the header's crc32c.
 * Frames are read exactly (header, then message), so no payload byte is ever
 * read into a buffer of ours.
 *
 * Every callback runs from the loop; none runs after parent_close.
 */

struct parent;

struct parent_callbacks {
	/* The task's shape, from the first PieceAvailability. Return a
	 * negative errno to refuse the parent (it closes, gone() follows). */
	int (*shape)(struct parent *parent, void *arg, uint64_t content_length,
		     uint64_t piece_length);
	/* Pieces the parent now has (numbers validated against the shape). */
	void (*have)(struct parent *parent, void *arg, const uint32_t *numbers, size_t count);
	/* No more availability: complete (every piece announced) or not (the
	 * parent failed, or does not have the task: reason). */
	void (*sync_end)(struct parent *parent, void *arg, bool complete, const char *reason);
	/*
	 * A requested piece ended: 0 = recorded in the cache; -EBADMSG = its
	 * bytes do not match the parent's crc; -ENOENT/-EBUSY/-EINVAL = the
	 * parent answered with an Error (reason); -EALREADY = we had it; other
	 * = the store failed (store_task_error) or the connection broke.
	 */
	void (*piece_done)(struct parent *parent, void *arg, uint32_t number, uint32_t length,
			   int res, const char *reason);
	/* Optional: every byte of piece `number` is off the socket; its
	 * check, fdatasync and record follow (then piece_done). The
	 * connection can carry another request's bytes from now on. */
	void (*received)(struct parent *parent, void *arg, uint32_t number);
	/* Optional: piece `number` is in the cache file and matches its crc:
	 * readable from there; its record follows (then piece_done). */
	void (*checked)(struct parent *parent, void *arg, uint32_t number, uint32_t length);
	/* The connection is gone (after a piece_done for every request still
	 * outstanding): the parent is unusable from now on. */
	void (*gone)(struct parent *parent, void *arg, int error, const char *reason);
};

/* Connects to `address` ("host:port") and subscribes to task_id, saying
 * who we are (self_id: our peer id, "ip:port"; NULL or "" = not a peer): a
 * seed parent tells the roots its scheduler names of its pieces sooner.
 * 0, or a negative errno with the reason in err (bad address). */
int parent_open(struct parent **out, struct loop *loop, const char *address,
		const uint8_t task_id[32], const char *url, const char *self_id,
		const struct parent_callbacks *callbacks, void *arg, char *err, size_t err_size);

/* Asks for piece `number`, to be written into st (the task of the shape;
 * held by the caller). 0, or a negative errno (too many outstanding,
 * closing): nothing was sent. */
int parent_request(struct parent *parent, struct store_task *st, uint32_t number);

/* Requests sent and not yet answered. */
unsigned parent_outstanding(const struct parent *parent);
/* Requests whose bytes are not all off the socket yet: those not answered
 * and the piece being read. Pieces being checked and made durable are not
 * counted (parent_piece_pending). */
unsigned parent_receiving(const struct parent *parent);
/* When the oldest outstanding request was sent (monotonic ms), 0 if none;
 * for the piece being read, when its bytes last came (if later). */
uint64_t parent_oldest_ms(const struct parent *parent);
/* When bytes of the piece being read last came (monotonic ms), 0 if none. */
uint64_t parent_payload_progress_ms(const struct parent *parent);
/* The piece of the oldest outstanding request, UINT32_MAX if none. */
uint32_t parent_oldest_piece(const struct parent *parent);
/* Pieces this parent has delivered into the cache, and their bytes. */
uint64_t parent_bytes(const struct parent *parent);
const char *parent_address(const struct parent *parent);

/* True while a write of piece `number` from this parent is in flight (the
 * store is reading its bytes from the socket, or checking and syncing them):
 * its piece_done still comes after parent_close. */
bool parent_piece_pending(const struct parent *parent, uint32_t number);

/* Stops: no callback runs any more, except piece_done for the writes
 * parent_piece_pending says are in flight (soon: the socket is shut down);
 * the memory goes once the loop and the store are done with it. */
void parent_close(struct parent *parent);

#endif
