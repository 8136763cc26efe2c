/* state: the scheduler's in-memory model of tasks and their peers, and the ranking of parents. */
#ifndef RINGFLY_SCHEDULER_STATE_H
#define RINGFLY_SCHEDULER_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The scheduler knows, per task (32-byte id), the peers that announced it:
 * their address, role, location, upload slots, progress and the peers they
 * fetch from (parents_in_use). It also knows the seed hosts: every peer that
 * announced any task as a seed, whatever the task; a seed is offered for
 * tasks it does not hold yet, since a seed fetches from the origin what
 * nobody has (docs/INTERFACE-issue7.md).
 *
 * No I/O, no clock, no randomness: time is the caller's now_ms, and the same
 * calls give the same answers, so tests assert exact orders. now_ms must not
 * go backwards; a smaller value than the last one counts as the last one.
 *
 * Ranking, for a child C of task T asking for parents (best first, at most
 * SCHED_PARENTS_MAX):
 *   - never C itself, nor a peer without a peer port (address ""), nor a peer
 *     P from which C is reachable through parents_in_use (P fetches from C,
 *     or from someone who does, ...): C fetching from P would close a cycle.
 *     The walk visits at most SCHED_WALK_MAX peers; a walk that would visit
 *     more excludes P (cannot prove it safe);
 *   - the candidates of a non-seed C: every complete peer, every seed, and
 *     one peer still downloading, its *upstream*: of the incomplete non-seed
 *     peers that joined T before C (their first announcement came first),
 *     the one that has not failed lately, then shares the longest location
 *     prefix with C, then came last; one that fetches from C is skipped,
 *     SCHED_UPSTREAM_TRIES times at most (then none); one that failed
 *     lately is none. The downloading peers thus form a chain in order of
 *     arrival (per location: a tree when locations differ), fed by the seed
 *     at its head: every uplink carries the file once, and within one
 *     scheduler's life a parent always came before its child, so no cycle
 *     (after a restart, parents a daemon kept from the old order can close
 *     one until they go: the walk skips ids not announced yet);
 *   - the candidates of a seed C: the peers that have more pieces than it
 *     (complete, or more pieces_done): it fetches from the origin what
 *     nobody else has;
 *   - order: complete peers first, then more pieces_done, then the longest
 *     common location prefix with C (in "|"-separated parts), then
 *     non-seeds before seeds, then the most free upload slots (upload_slots
 *     - uploads), then peer id (bytewise) so that the order is total; a
 *     parent that failed a child lately after all the others;
 *   - seeds (seed hosts, and the task's seed peers until complete) are
 *     candidates of a non-seed C only when C has no upstream (it heads the
 *     chain: the first requester of a task is pointed at a seed), when its
 *     upstream failed lately, or when C announced no new piece for
 *     SCHED_STALL_MS (since it joined or since its last one): down the
 *     chain they would take the seed's uplink from the head. Then C always
 *     gets one when one is known (the best one takes the last place if the
 *     list is full without one).
 * back_to_source is set exactly when that list is empty. A complete C, or one
 * that does not want parents, gets an empty list without back_to_source.
 *
 * Roots, for a seed C of task T that is fetching it and asks for parents:
 * the heads of T's chains, the incomplete non-seed peers with a peer port
 * whose last ranking found them no upstream (none came before them, or the
 * one that did failed lately), first joined first, at most
 * SCHED_ROOTS_MAX. The seed tells them its new pieces at once and the others
 * later (upload.c): they get them down the chain.
 *
 * Preheat: each seed host keeps the registration (an opaque handle, in the
 * server the connection) of its latest seed announcement, until that
 * registration is forgotten (the connection closed) or the seed host goes
 * (expired, left, evicted, no longer a seed). sched_pick_seeds orders the
 * seed hosts that have one by rendezvous hashing: highest
 * sha256(address "|" task id) first, as daemons order schedulers, so one
 * task goes to the same seeds whatever else joins or goes.
 *
 * Bounds: at most max_tasks tasks (a new one evicts the least recently
 * announced), max_peers peers per task (a new one evicts the task's least
 * recently seen), max_entries peer entries in all (a new one evicts the
 * least recently seen of any task: about 850 bytes each), SCHED_SEEDS_MAX seed hosts (a new one replaces the least
 * recently seen). expire() drops peers not seen for peer_ttl_ms (and seed
 * hosts likewise); a task whose last peer goes is dropped with it.
 */

#define SCHED_TASK_ID_SIZE	 32
#define SCHED_PEER_ID_MAX	 128 /* bytes of a peer id, printable ASCII, no space */
#define SCHED_ADDRESS_MAX	 63  /* "ip:port" or "[v6]:port" */
#define SCHED_LOCATION_MAX	 128
#define SCHED_URL_MAX		 8192
#define SCHED_PARENTS_IN_USE_MAX 16  /* more are ignored */
#define SCHED_FAILED_MAX	 16  /* failed parents per announcement; more are ignored */
#define SCHED_FAILURE_MS	 30000 /* a parent that failed a child ranks last this long */
#define SCHED_PARENTS_MAX	 8   /* parents in one answer */
#define SCHED_SEEDS_MAX		 256 /* seed hosts remembered */
#define SCHED_WALK_MAX		 256 /* peers one cycle check may visit */
#define SCHED_WEIGHT_SIZE	 32  /* a rendezvous weight: a sha256 digest */
#define SCHED_ROOTS_MAX		 8   /* roots told to a seed: heads of chains */
#define SCHED_UPSTREAM_TRIES	 8   /* upstream peers fetching from the child tried before none */
#define SCHED_STALL_MS		 3000 /* a child with no new piece this long gets the seeds too */

struct sched_state;

enum sched_drop_reason {
	SCHED_DROP_EXPIRED, /* not seen for peer_ttl_ms */
	SCHED_DROP_LEFT,    /* PeerLeave */
	SCHED_DROP_EVICTED, /* over max_peers or max_entries, or its task was over max_tasks */
};

/*
 * Called for every peer entry dropped from a task, before it is freed (the
 * strings are borrowed for the call). It must not call into the state.
 */
typedef void (*sched_drop_fn)(void *arg, const uint8_t task_id[SCHED_TASK_ID_SIZE],
			      const char *peer_id, enum sched_drop_reason reason);

struct sched_options {
	unsigned max_tasks;    /* 0 = 100000 */
	unsigned max_peers;    /* per task; 0 = 10000 */
	unsigned max_entries;  /* peer entries over all tasks; 0 = 1000000 */
	uint64_t peer_ttl_ms;  /* 0 = 30 s */
	sched_drop_fn dropped; /* optional */
	void *arg;	       /* for dropped */
};

/* One announcement (everything borrowed for the call). */
struct sched_announce {
	const uint8_t *task_id; /* SCHED_TASK_ID_SIZE bytes */
	const char *url;	/* may be NULL or "" */
	const char *peer_id;	/* 1..SCHED_PEER_ID_MAX printable bytes, no space */
	const char *address;	/* "ip:port" other peers reach it at; "" = none */
	const char *location;	/* may be NULL or "" */
	bool seed;
	bool complete;
	bool want_parents;
	uint32_t upload_slots, uploads;
	uint64_t content_length, piece_length;
	uint32_t piece_count, pieces_done;
	const char *const *parents_in_use; /* peer ids; the first SCHED_PARENTS_IN_USE_MAX count */
	size_t parents_in_use_count;
	/* Addresses of parents that failed this peer since its last
	 * announcement (a bad piece, no answer, gone mid-piece): they rank
	 * after every parent that did not fail anyone for SCHED_FAILURE_MS. */
	const char *const *failed_parents;
	size_t failed_parents_count;
	/* The caller's handle of where it came from (NULL: none). Kept, not
	 * dereferenced, by a seed host until sched_forget_registration. */
	void *registration;
};

struct sched_parent {
	char peer_id[SCHED_PEER_ID_MAX + 1];
	char address[SCHED_ADDRESS_MAX + 1];
	bool seed;
	bool complete;
	uint32_t pieces_done;
};

struct sched_answer {
	struct sched_parent parents[SCHED_PARENTS_MAX]; /* best first */
	unsigned parent_count;
	/* To a seed: the peer ids of the task's roots (see above); empty for
	 * others. */
	char roots[SCHED_ROOTS_MAX][SCHED_PEER_ID_MAX + 1];
	unsigned root_count;
	bool back_to_source;
	const char *reason; /* static text: why back to source, or what was wrong; "" if none */
};

/* Returns 0 and a new state in *out (free with sched_state_destroy), or -ENOMEM. */
int sched_state_create(struct sched_state **out, const struct sched_options *options);
void sched_state_destroy(struct sched_state *state);

/*
 * Records an announcement (a new task or peer, or an update) seen at now_ms,
 * and fills *answer with the ranked parents for that peer. Returns 0,
 * -EINVAL (a field is wrong: answer->reason says which; nothing recorded) or
 * -ENOMEM (nothing recorded). May evict (the dropped callback runs).
 */
int sched_announce(struct sched_state *state, const struct sched_announce *announce,
		   uint64_t now_ms, struct sched_answer *answer);

/*
 * Drops peer_id from task_id, or with task_id NULL from every task (and from
 * the seed hosts). Returns the number of task entries dropped (the dropped
 * callback runs for each, reason SCHED_DROP_LEFT).
 */
unsigned sched_leave(struct sched_state *state, const uint8_t *task_id, const char *peer_id);

/* Drops every peer (and seed host) not seen for peer_ttl_ms at now_ms.
 * Returns the number of task entries dropped. */
unsigned sched_expire(struct sched_state *state, uint64_t now_ms);

/* A seed host to ask for a task, from sched_pick_seeds. */
struct sched_seed_pick {
	char peer_id[SCHED_PEER_ID_MAX + 1];
	char address[SCHED_ADDRESS_MAX + 1];
	void *registration;		   /* as last announced; never NULL */
	uint8_t weight[SCHED_WEIGHT_SIZE]; /* sha256(address "|" task id) */
};

/*
 * Fills out[max] with the seed hosts that have a registration, best first:
 * the highest weight (compared bytewise), then the address bytewise. Returns
 * how many it filled (at most max). The state is not changed.
 */
unsigned sched_pick_seeds(const struct sched_state *state,
			  const uint8_t task_id[SCHED_TASK_ID_SIZE], struct sched_seed_pick *out,
			  unsigned max);

/* Every seed host holding `registration` (borrowed for the call) forgets it:
 * call before the handle becomes invalid. Returns how many held it. */
unsigned sched_forget_registration(struct sched_state *state, const void *registration);

/* What sched_task_peers tells of a task (`ringfly stat`). */
struct sched_task_view {
	char url[SCHED_URL_MAX + 1];	/* "" until an announcement names it */
	uint64_t content_length;
	uint32_t piece_count;
	unsigned peer_count;		/* all its peers; out may list fewer */
};

/*
 * Fills out[max] with the peers of task_id that hold some of it (complete,
 * or pieces_done > 0): complete first, then more pieces_done, then seeds,
 * then peer id bytewise. Returns how many it filled; *view describes the
 * task (peer_count 0 and url "" when it is unknown). The state is not
 * changed.
 */
unsigned sched_task_peers(const struct sched_state *state,
			  const uint8_t task_id[SCHED_TASK_ID_SIZE], struct sched_parent *out,
			  unsigned max, struct sched_task_view *view);

/* Tasks known, peer entries over all tasks, seed hosts known. */
unsigned sched_task_count(const struct sched_state *state);
unsigned sched_peer_count(const struct sched_state *state);
unsigned sched_seed_count(const struct sched_state *state);
/* Peers of one task (0 when the task is unknown). */
unsigned sched_task_peer_count(const struct sched_state *state,
			       const uint8_t task_id[SCHED_TASK_ID_SIZE]);
/* Whether peer_id has an entry in task_id. */
bool sched_has_peer(const struct sched_state *state, const uint8_t task_id[SCHED_TASK_ID_SIZE],
		    const char *peer_id);

#endif
