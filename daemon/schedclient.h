/* schedclient: the daemon's connections to schedulers: announcements, parents, fail-over. */
#ifndef RINGFLY_DAEMON_SCHEDCLIENT_H
#define RINGFLY_DAEMON_SCHEDCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "rpc/ringfly.pb-c.h"

/*
 * Each task has its scheduler: the configured addresses ordered by
 * rendezvous hashing (highest sha256(address | task id) first); a request
 * goes to the first that answers within the timeout, else the next. One TCP
 * connection per scheduler, opened on demand, reopened after a failure no
 * sooner than a second later. The last announcement of every task is kept
 * (bounded) and sent again when a connection to its scheduler is made, so a
 * restarted scheduler learns what this daemon holds.
 */

#define SCHED_ADDRESSES_MAX 16u
#define SCHED_PARENTS_MAX 8u

/* A scheduler asks this seed to fetch url (preheat); digest is the
 * preheat's "sha256:<hex>" or "". */
typedef void (*sched_preheat_in_fn)(void *arg, const char *url, const char *digest);

struct sched_options {
	const char *addresses;		/* "host:port,host:port" */
	unsigned timeout_ms;		/* per scheduler; 0 = 2000 */
	const char *peer_id;		/* unused: a peer is known by ip:peer port */
	const char *ip;			/* advertised */
	const char *location;
	bool seed;
	unsigned upload_slots;
	sched_preheat_in_fn on_preheat;	/* seeds: preheat requests */
	void *on_preheat_arg;
};

struct sched_announce {
	uint8_t task_id[32];
	const char *url;
	uint64_t content_length, piece_length;
	uint32_t piece_count, pieces_done;
	bool complete;
	bool want_parents;
	const char *const *parents_in_use;	/* peer ids */
	size_t parents_in_use_count;
	const char *const *failed_parents;	/* "ip:port" that failed us since the last one */
	size_t failed_parents_count;
};

struct sched_parents {
	size_t count;
	char addresses[SCHED_PARENTS_MAX][160];
	bool seed[SCHED_PARENTS_MAX];		/* that parent is a seed peer */
	bool back_to_source;
	char reason[256];
	char scheduler[160];			/* who answered */
	/* To a seed: the task's roots (peer ids; scheduler/state.h). */
	size_t root_count;
	char roots[SCHED_PARENTS_MAX][160];
};

/* error 0: seeds ("a,b") are fetching it; else the reason (no scheduler
 * answered, or it said no: -ENOENT "no seed peer known"). */
typedef void (*sched_preheat_fn)(void *arg, int error, const char *seeds, const char *reason);

/* error 0: `parents` holds the answer; else no scheduler answered (reason). */
typedef void (*sched_parents_fn)(void *arg, int error, const struct sched_parents *parents,
				 const char *reason);

/* error 0: the scheduler's answer (borrowed for the call) and its address;
 * else no scheduler answered (reason). */
typedef void (*sched_stat_fn)(void *arg, int error, const Ringfly__TaskPeersResponse *answer,
			      const char *scheduler, const char *reason);

struct sched_client;
struct sched_request;

int sched_client_create(struct sched_client **out, struct loop *loop,
			const struct sched_options *options, char *err, size_t err_size);
/* After the loop has stopped for good. */
void sched_client_destroy(struct sched_client *client);
/* The daemon's peer port, once its listener is bound (0 until then). */
void sched_client_set_port(struct sched_client *client, unsigned port);
/* Our peer id, "ip:port" (what other peers fetch from and the scheduler
 * knows us by; port 0 while there is no peer port), in buf. */
void sched_client_peer_id(const struct sched_client *client, char *buf, size_t size);

/* Announces and asks for parents; fn runs once, from the loop (never from
 * inside this call), unless the request is cancelled first. */
int sched_ask(struct sched_client *client, const struct sched_announce *announce,
	      sched_parents_fn fn, void *arg, struct sched_request **out);
void sched_cancel(struct sched_request *request);

/* Asks the task's scheduler to have seeds fetch url; fn as for sched_ask. */
int sched_preheat(struct sched_client *client, const uint8_t task_id[32], const char *url,
		  const char *digest, sched_preheat_fn fn, void *arg, struct sched_request **out);

/* Asks the task's scheduler which peers hold it (`ringfly stat`); fn as for
 * sched_ask, and with an error once timeout_ms (0: none) have passed without
 * an answer from any scheduler. fn may run from inside this call when the
 * loop cannot take the failure report: set up what it uses first. */
int sched_task_peers(struct sched_client *client, const uint8_t task_id[32],
		     unsigned timeout_ms, sched_stat_fn fn, void *arg, struct sched_request **out);

/* Announces without waiting for the answer. Remembered for re-announcing. */
void sched_announce(struct sched_client *client, const struct sched_announce *announce);

/* A seed with an empty cache has no task to announce: it tells every
 * scheduler it exists (an announcement of the all-zero task id, refreshed
 * with the others) so that the first requester of a task can be sent to it. */
void sched_register_seed(struct sched_client *client);

/* SIGTERM: PeerLeave to every connected scheduler (best effort, no wait). */
void sched_leave_all(struct sched_client *client);

#endif
