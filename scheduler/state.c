/* state: the scheduler's in-memory model of tasks and their peers, and the ranking of parents. */
#include "scheduler/state.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"

/*
 * Layout. Tasks live in a chained hash table keyed by their id and on a list
 * ordered by last announcement (least recent first: the one max_tasks
 * evicts). Peer entries, one per (task, peer id), live in a second table
 * keyed by both, on their task's list (least recently seen first: the one
 * max_peers evicts) and on one list over every task, also least recently
 * seen first. Announcements move an entry to the tail of its lists; since
 * now_ms never goes backwards those lists stay sorted by last_seen_ms, so
 * expire() only looks at the heads, and every eviction is O(1).
 *
 * Invariants: every task has at least one peer (the last one going drops the
 * task); a peer is on exactly the lists of its task; the counters equal the
 * lengths of the lists.
 *
 * parents_in_use are kept as 64-bit hashes of the ids: a cycle check follows
 * them through the peers table by (task, id hash) without string compares.
 * Two ids with the same hash could at worst exclude a parent that was safe.
 */

#define SCHED_MAX_TASKS_DEFAULT	    100000u
#define SCHED_MAX_PEERS_DEFAULT	    10000u
#define SCHED_MAX_ENTRIES_DEFAULT   1000000u
#define SCHED_PEER_TTL_MS_DEFAULT   30000u
#define SCHED_TABLE_BUCKETS_INITIAL 64u
#define SCHED_RANK_WINDOW	    (2u * SCHED_PARENTS_MAX) /* candidates sorted before the rest */

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* --- intrusive lists (a head is a node whose neighbours are the ends). */

struct sched_node {
	struct sched_node *prev, *next;
};

static void sched_list_init(struct sched_node *head)
{
	head->prev = head->next = head;
}

static bool sched_list_empty(const struct sched_node *head)
{
	return head->next == head;
}

static void sched_list_unlink(struct sched_node *node)
{
	assert(node->prev && node->next);
	node->prev->next = node->next;
	node->next->prev = node->prev;
	node->prev = node->next = NULL;
}

static void sched_list_append(struct sched_node *head, struct sched_node *node)
{
	node->prev = head->prev;
	node->next = head;
	head->prev->next = node;
	head->prev = node;
}

static void sched_list_move_tail(struct sched_node *head, struct sched_node *node)
{
	sched_list_unlink(node);
	sched_list_append(head, node);
}

/* --- chained hash tables of intrusive links. */

struct sched_link {
	struct sched_link *next;
	uint64_t hash;
};

struct sched_table {
	struct sched_link **buckets;
	size_t bucket_count; /* a power of two */
	size_t count;
};

static int sched_table_init(struct sched_table *table)
{
	table->buckets = calloc(SCHED_TABLE_BUCKETS_INITIAL, sizeof(*table->buckets));
	if (!table->buckets)
		return -ENOMEM;
	table->bucket_count = SCHED_TABLE_BUCKETS_INITIAL;
	table->count = 0;
	return 0;
}

static struct sched_link *sched_table_chain(const struct sched_table *table, uint64_t hash)
{
	return table->buckets[hash & (table->bucket_count - 1)];
}

/* Doubles the buckets; on allocation failure the chains just get longer. */
static void sched_table_grow(struct sched_table *table)
{
	size_t count = table->bucket_count * 2;
	struct sched_link **buckets = calloc(count, sizeof(*buckets));

	if (!buckets)
		return;
	for (size_t i = 0; i < table->bucket_count; i++) {
		struct sched_link *link = table->buckets[i], *next;

		for (; link; link = next) {
			next = link->next;
			link->next = buckets[link->hash & (count - 1)];
			buckets[link->hash & (count - 1)] = link;
		}
	}
	free(table->buckets);
	table->buckets = buckets;
	table->bucket_count = count;
}

static void sched_table_insert(struct sched_table *table, struct sched_link *link)
{
	struct sched_link **bucket;

	if (table->count >= table->bucket_count)
		sched_table_grow(table);
	bucket = &table->buckets[link->hash & (table->bucket_count - 1)];
	link->next = *bucket;
	*bucket = link;
	table->count++;
}

static void sched_table_remove(struct sched_table *table, struct sched_link *link)
{
	struct sched_link **at = &table->buckets[link->hash & (table->bucket_count - 1)];

	while (*at != link) {
		assert(*at); /* the link is in its chain */
		at = &(*at)->next;
	}
	*at = link->next;
	link->next = NULL;
	assert(table->count > 0);
	table->count--;
}

/* --- hashing: FNV-1a, then the splitmix64 finalizer to spread the bits. */

static uint64_t sched_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static uint64_t sched_hash_bytes(const void *data, size_t len)
{
	const uint8_t *bytes = data;
	uint64_t hash = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < len; i++) {
		hash ^= bytes[i];
		hash *= 0x100000001b3ull;
	}
	return sched_mix(hash);
}

static uint64_t sched_hash_id(const char *id)
{
	return sched_hash_bytes(id, strlen(id));
}

/* --- the model. */

struct sched_task {
	struct sched_link link;	 /* state->tasks, by id */
	struct sched_node lru;	 /* state->task_lru: least recently announced first */
	struct sched_node peers; /* its peers, least recently seen first */
	unsigned peer_count;
	uint8_t id[SCHED_TASK_ID_SIZE];
	char *url; /* NULL until an announcement names it */
	uint64_t content_length, piece_length;
	uint32_t piece_count;
	uint64_t joins; /* peers that ever joined: the next one's sched_peer.joined */
};

struct sched_peer {
	struct sched_link link;	   /* state->peers, by (task, id) */
	struct sched_node in_task; /* task->peers */
	struct sched_node lru;	   /* state->peer_lru: least recently seen first */
	struct sched_task *task;
	uint64_t id_hash;
	uint64_t last_seen_ms;
	uint64_t walk_stamp; /* the cycle check that last visited it */
	uint64_t joined;     /* its place in the task's order of arrival, from 1 */
	uint64_t progress_ms; /* when it joined, or pieces_done last grew */
	bool head;	      /* its last ranking found it no upstream */
	bool seed, complete;
	uint32_t upload_slots, uploads;
	uint32_t pieces_done, piece_count;
	uint64_t failed_ms;	/* a child said it failed: when (0 = never) */
	unsigned parents_in_use_count;
	uint64_t parents_in_use[SCHED_PARENTS_IN_USE_MAX]; /* id hashes */
	char id[SCHED_PEER_ID_MAX + 1];
	char address[SCHED_ADDRESS_MAX + 1];
	char location[SCHED_LOCATION_MAX + 1];
};

/* A peer that announced some task as a seed: offered for any task. */
struct sched_seed {
	uint64_t id_hash;
	uint64_t last_seen_ms;
	void *registration; /* the caller's handle of its last announcement, or NULL */
	uint64_t failed_ms;	/* a child said it failed: when (0 = never) */
	uint32_t upload_slots, uploads;
	char id[SCHED_PEER_ID_MAX + 1];
	char address[SCHED_ADDRESS_MAX + 1];
	char location[SCHED_LOCATION_MAX + 1];
};

/* One possible parent while ranking. */
struct sched_candidate {
	const char *id;
	const char *address;
	struct sched_peer *peer; /* NULL: a seed host that does not hold the task */
	uint32_t pieces_done;
	bool complete, seed;
	bool failed;		/* failed a child within SCHED_FAILURE_MS */
	bool safe;		/* the child's upstream: walked already */
	unsigned location_match;
	int64_t free_slots;
};

struct sched_state {
	struct sched_options options;
	struct sched_table tasks;
	struct sched_table peers;
	struct sched_node task_lru;
	struct sched_node peer_lru;
	struct sched_seed seeds[SCHED_SEEDS_MAX];
	unsigned seed_count;
	uint64_t now_ms;
	uint64_t walk_stamp;
	struct sched_peer *walk_stack[SCHED_WALK_MAX];
	struct sched_candidate *candidates; /* grown to the largest task seen */
	size_t candidate_cap;
};

static uint64_t sched_peer_key(const struct sched_task *task, uint64_t id_hash)
{
	return sched_mix(task->link.hash ^ (id_hash * 0x9e3779b97f4a7c15ull));
}

static struct sched_task *sched_task_find(const struct sched_state *state, const uint8_t *id)
{
	uint64_t hash = sched_hash_bytes(id, SCHED_TASK_ID_SIZE);

	for (struct sched_link *link = sched_table_chain(&state->tasks, hash); link;
	     link = link->next) {
		struct sched_task *task = container_of(link, struct sched_task, link);

		if (link->hash == hash && memcmp(task->id, id, SCHED_TASK_ID_SIZE) == 0)
			return task;
	}
	return NULL;
}

/* The entry of the peer whose id hashes to id_hash in task (id: NULL = any
 * id with that hash, as parents_in_use are followed). */
static struct sched_peer *sched_peer_find(const struct sched_state *state,
					  const struct sched_task *task, uint64_t id_hash,
					  const char *id)
{
	uint64_t key = sched_peer_key(task, id_hash);

	for (struct sched_link *link = sched_table_chain(&state->peers, key); link;
	     link = link->next) {
		struct sched_peer *peer = container_of(link, struct sched_peer, link);

		if (link->hash == key && peer->task == task && peer->id_hash == id_hash &&
		    (!id || strcmp(peer->id, id) == 0))
			return peer;
	}
	return NULL;
}

static void sched_task_free(struct sched_task *task)
{
	free(task->url);
	free(task);
}

/* Unlinks and frees one entry; its task goes with its last peer. */
static void sched_peer_drop(struct sched_state *state, struct sched_peer *peer,
			    enum sched_drop_reason reason)
{
	struct sched_task *task = peer->task;

	assert(task->peer_count > 0);
	if (state->options.dropped)
		state->options.dropped(state->options.arg, task->id, peer->id, reason);
	sched_table_remove(&state->peers, &peer->link);
	sched_list_unlink(&peer->in_task);
	sched_list_unlink(&peer->lru);
	free(peer);
	if (--task->peer_count > 0)
		return;
	assert(sched_list_empty(&task->peers));
	sched_table_remove(&state->tasks, &task->link);
	sched_list_unlink(&task->lru);
	sched_task_free(task);
}

static void sched_task_evict(struct sched_state *state, struct sched_task *task)
{
	for (;;) {
		bool last = task->peer_count == 1;

		sched_peer_drop(state, container_of(task->peers.next, struct sched_peer, in_task),
				SCHED_DROP_EVICTED);
		if (last)
			return; /* the task went with it */
	}
}

/* --- seed hosts. */

static struct sched_seed *sched_seed_find(struct sched_state *state, uint64_t id_hash,
					  const char *id)
{
	for (unsigned i = 0; i < state->seed_count; i++)
		if (state->seeds[i].id_hash == id_hash && strcmp(state->seeds[i].id, id) == 0)
			return &state->seeds[i];
	return NULL;
}

static void sched_seed_remove(struct sched_state *state, const struct sched_seed *seed)
{
	unsigned index = (unsigned)(seed - state->seeds);

	assert(index < state->seed_count);
	state->seeds[index] = state->seeds[--state->seed_count];
}

static void sched_seed_update(struct sched_state *state, const struct sched_peer *peer,
			      void *registration)
{
	struct sched_seed *seed = sched_seed_find(state, peer->id_hash, peer->id);

	if (!seed && state->seed_count < SCHED_SEEDS_MAX) {
		seed = &state->seeds[state->seed_count++];
		seed->failed_ms = 0;
	} else if (!seed) {
		/* Full: the least recently seen goes. */
		seed = &state->seeds[0];
		for (unsigned i = 1; i < state->seed_count; i++)
			if (state->seeds[i].last_seen_ms < seed->last_seen_ms)
				seed = &state->seeds[i];
		seed->failed_ms = 0;
	}
	seed->id_hash = peer->id_hash;
	seed->last_seen_ms = peer->last_seen_ms;
	seed->registration = registration;
	seed->upload_slots = peer->upload_slots;
	seed->uploads = peer->uploads;
	memcpy(seed->id, peer->id, sizeof(seed->id));
	memcpy(seed->address, peer->address, sizeof(seed->address));
	memcpy(seed->location, peer->location, sizeof(seed->location));
}

/* --- ranking. */

/* Leading "|"-separated parts two locations share ("" has none). */
static unsigned sched_location_match(const char *a, const char *b)
{
	unsigned parts = 0;

	if (!a[0] || !b[0])
		return 0;
	for (;;) {
		size_t len_a = strcspn(a, "|"), len_b = strcspn(b, "|");

		if (len_a != len_b || memcmp(a, b, len_a) != 0)
			return parts;
		parts++;
		if (!a[len_a] || !b[len_b])
			return parts;
		a += len_a + 1;
		b += len_b + 1;
	}
}

static int sched_candidate_compare(const void *left, const void *right)
{
	const struct sched_candidate *a = left, *b = right;

	if (a->failed != b->failed)
		return a->failed ? 1 : -1;
	if (a->complete != b->complete)
		return a->complete ? -1 : 1;
	if (!a->complete && a->pieces_done != b->pieces_done)
		return a->pieces_done > b->pieces_done ? -1 : 1;
	if (a->location_match != b->location_match)
		return a->location_match > b->location_match ? -1 : 1;
	/* A seed is the source of last resort: its larger upload slots (1024
	 * by default) do not put it before peers otherwise as good. */
	if (a->seed != b->seed)
		return a->seed ? 1 : -1;
	if (a->free_slots != b->free_slots)
		return a->free_slots > b->free_slots ? -1 : 1;
	return strcmp(a->id, b->id);
}

/*
 * Whether `child` is reachable from `from` through parents_in_use within
 * from's task: from fetches from the child, or from a peer that does, ...
 * A walk that would visit more than SCHED_WALK_MAX peers answers true.
 */
static bool sched_fetches_from(struct sched_state *state, struct sched_peer *from,
			       const struct sched_peer *child)
{
	uint64_t stamp = ++state->walk_stamp;
	unsigned depth = 0, visited = 1;

	from->walk_stamp = stamp;
	state->walk_stack[depth++] = from;
	while (depth > 0) {
		struct sched_peer *peer = state->walk_stack[--depth];

		for (unsigned i = 0; i < peer->parents_in_use_count; i++) {
			uint64_t id_hash = peer->parents_in_use[i];
			struct sched_peer *next;

			if (id_hash == child->id_hash)
				return true;
			next = sched_peer_find(state, from->task, id_hash, NULL);
			if (!next || next->walk_stamp == stamp)
				continue;
			if (visited == SCHED_WALK_MAX)
				return true;
			visited++;
			next->walk_stamp = stamp;
			assert(depth < SCHED_WALK_MAX);
			state->walk_stack[depth++] = next;
		}
	}
	return false;
}

static void sched_answer_add(struct sched_answer *answer, const struct sched_candidate *candidate,
			     unsigned index)
{
	struct sched_parent *parent = &answer->parents[index];

	assert(index < SCHED_PARENTS_MAX);
	snprintf(parent->peer_id, sizeof(parent->peer_id), "%s", candidate->id);
	snprintf(parent->address, sizeof(parent->address), "%s", candidate->address);
	parent->seed = candidate->seed;
	parent->complete = candidate->complete;
	parent->pieces_done = candidate->pieces_done;
}

static bool sched_recently_failed(const struct sched_state *state, uint64_t failed_ms)
{
	return failed_ms && state->now_ms - failed_ms < SCHED_FAILURE_MS;
}

/* A possible upstream of a child, with its keys (state.h). */
struct sched_upstream_key {
	struct sched_peer *peer;
	bool failed;
	unsigned location_match;
};

static bool sched_upstream_before(const struct sched_upstream_key *a,
				  const struct sched_upstream_key *b)
{
	if (a->failed != b->failed)
		return !a->failed;
	if (a->location_match != b->location_match)
		return a->location_match > b->location_match;
	return a->peer->joined > b->peer->joined;
}

/*
 * The one downloading peer a non-seed child fetches from (state.h): the best
 * by sched_upstream_before of the incomplete non-seed peers with a peer port
 * that joined the task before it, skipping those the child is reachable
 * from: one pass keeps the SCHED_UPSTREAM_TRIES best, then one walk each
 * until one is safe. NULL: none (the child heads the chain).
 */
static struct sched_peer *sched_upstream(struct sched_state *state, struct sched_peer *child)
{
	struct sched_task *task = child->task;
	struct sched_upstream_key best[SCHED_UPSTREAM_TRIES];
	unsigned count = 0;

	for (struct sched_node *node = task->peers.next; node != &task->peers; node = node->next) {
		struct sched_peer *peer = container_of(node, struct sched_peer, in_task);
		struct sched_upstream_key key;
		unsigned at;

		if (peer == child || !peer->address[0] || peer->complete || peer->seed ||
		    peer->joined > child->joined)
			continue;
		key.peer = peer;
		key.failed = sched_recently_failed(state, peer->failed_ms);
		key.location_match = sched_location_match(child->location, peer->location);
		if (count == SCHED_UPSTREAM_TRIES && !sched_upstream_before(&key, &best[count - 1]))
			continue;
		at = count < SCHED_UPSTREAM_TRIES ? count++ : count - 1;
		while (at > 0 && sched_upstream_before(&key, &best[at - 1])) {
			best[at] = best[at - 1];
			at--;
		}
		best[at] = key;
	}
	for (unsigned i = 0; i < count; i++)
		if (!sched_fetches_from(state, best[i].peer, child))
			return best[i].peer;
	return NULL;
}

static size_t sched_gather(struct sched_state *state, struct sched_peer *child)
{
	struct sched_task *task = child->task;
	struct sched_peer *upstream = child->seed ? NULL : sched_upstream(state, child);
	bool seeds;
	size_t count = 0;

	/* An upstream that failed lately is no upstream: the child heads a
	 * chain of its own (sched_upstream puts one that did not first). */
	if (upstream && sched_recently_failed(state, upstream->failed_ms))
		upstream = NULL;
	child->head = !child->seed && !upstream;
	/* A seed that is still downloading feeds the heads of chains; the
	 * others get its pieces down the chain, and the seed only when they
	 * made no progress for SCHED_STALL_MS. */
	seeds = !upstream || state->now_ms - child->progress_ms >= SCHED_STALL_MS;

	for (struct sched_node *node = task->peers.next; node != &task->peers; node = node->next) {
		struct sched_peer *peer = container_of(node, struct sched_peer, in_task);
		struct sched_candidate *candidate;

		if (peer == child || !peer->address[0])
			continue;
		/* One downloading peer, the nearest upstream (state.h). */
		if (!child->seed && !peer->complete && !peer->seed && peer != upstream)
			continue;
		if (!child->seed && !peer->complete && peer->seed && !seeds)
			continue;
		/* A seed fetches from the origin what nobody else has. */
		if (child->seed && !peer->complete && peer->pieces_done <= child->pieces_done)
			continue;
		assert(count < state->candidate_cap);
		candidate = &state->candidates[count++];
		candidate->id = peer->id;
		candidate->address = peer->address;
		candidate->peer = peer;
		candidate->pieces_done = peer->pieces_done;
		candidate->complete = peer->complete;
		candidate->seed = peer->seed;
		candidate->failed = sched_recently_failed(state, peer->failed_ms);
		candidate->safe = peer == upstream;
		candidate->location_match = sched_location_match(child->location, peer->location);
		candidate->free_slots = (int64_t)peer->upload_slots - (int64_t)peer->uploads;
	}
	if (child->seed || !seeds)
		return count;
	for (unsigned i = 0; i < state->seed_count; i++) {
		const struct sched_seed *seed = &state->seeds[i];
		struct sched_candidate *candidate;

		if ((seed->id_hash == child->id_hash && strcmp(seed->id, child->id) == 0) ||
		    sched_peer_find(state, task, seed->id_hash, seed->id))
			continue; /* itself, or ranked by its entry in the task */
		assert(count < state->candidate_cap);
		candidate = &state->candidates[count++];
		candidate->id = seed->id;
		candidate->address = seed->address;
		candidate->peer = NULL;
		candidate->pieces_done = 0;
		candidate->complete = false;
		candidate->seed = true;
		candidate->failed = sched_recently_failed(state, seed->failed_ms);
		candidate->safe = false;
		candidate->location_match = sched_location_match(child->location, seed->location);
		candidate->free_slots = (int64_t)seed->upload_slots - (int64_t)seed->uploads;
	}
	return count;
}

/*
 * Puts the `want` best of c[count] in order at the front (the others behind
 * them in no order) and returns how many are sorted. A swarm re-announces
 * every second, so ranking must not sort thousands of peers to keep eight:
 * most candidates cost one comparison with the last of the window.
 */
static size_t sched_select_best(struct sched_candidate *c, size_t count, size_t want)
{
	if (want >= count) {
		qsort(c, count, sizeof(*c), sched_candidate_compare);
		return count;
	}
	qsort(c, want, sizeof(*c), sched_candidate_compare);
	for (size_t i = want; i < count; i++) {
		struct sched_candidate moving;
		size_t at = want - 1;

		if (sched_candidate_compare(&c[i], &c[at]) >= 0)
			continue;
		moving = c[i];
		c[i] = c[at]; /* the window's last goes behind */
		while (at > 0 && sched_candidate_compare(&moving, &c[at - 1]) < 0) {
			c[at] = c[at - 1];
			at--;
		}
		c[at] = moving;
	}
	return want;
}

/* Moves the seeds of c[count] to the front, returns how many there are. */
static size_t sched_seeds_first(struct sched_candidate *c, size_t count)
{
	struct sched_candidate swap;
	size_t seeds = 0;

	for (size_t i = 0; i < count; i++) {
		if (!c[i].seed)
			continue;
		swap = c[seeds];
		c[seeds++] = c[i];
		c[i] = swap;
	}
	return seeds;
}

static void sched_rank(struct sched_state *state, struct sched_peer *child, bool want_parents,
		       struct sched_answer *answer)
{
	struct sched_candidate *candidates = state->candidates;
	size_t gathered, count, sorted, seeds_left = 0;
	unsigned chosen = 0;
	bool have_seed = false;

	memset(answer, 0, sizeof(*answer));
	answer->reason = "";
	if (child->complete || !want_parents)
		return;

	gathered = count = sched_gather(state, child);
	for (size_t i = 0; i < count; i++)
		seeds_left += candidates[i].seed;
	sorted = sched_select_best(candidates, count, SCHED_RANK_WINDOW);
	for (size_t i = 0; i < count; i++) {
		const struct sched_candidate *candidate;

		/* Full: only a seed may still come in, in the last place. */
		if (chosen == SCHED_PARENTS_MAX && (have_seed || child->seed || seeds_left == 0))
			break;
		if (i == sorted) {
			/* Past the window (cycles excluded many, or a seed is
			 * still to come): rank the rest, or when full only
			 * the seeds among it. */
			if (chosen == SCHED_PARENTS_MAX)
				count = i + sched_seeds_first(candidates + i, count - i);
			qsort(candidates + i, count - i, sizeof(*candidates),
			      sched_candidate_compare);
			sorted = count;
		}
		candidate = &candidates[i];
		if (candidate->seed) {
			assert(seeds_left > 0);
			seeds_left--;
		}
		if (chosen == SCHED_PARENTS_MAX && !candidate->seed)
			continue;
		if (candidate->peer && !candidate->safe &&
		    sched_fetches_from(state, candidate->peer, child))
			continue;
		if (chosen == SCHED_PARENTS_MAX) {
			sched_answer_add(answer, candidate, SCHED_PARENTS_MAX - 1);
			have_seed = true;
			break;
		}
		sched_answer_add(answer, candidate, chosen++);
		have_seed |= candidate->seed;
	}
	answer->parent_count = chosen;
	if (chosen > 0)
		return;
	answer->back_to_source = true;
	if (child->seed)
		answer->reason = "a seed and no other peer has pieces it lacks";
	else if (child->task->peer_count == 1 && gathered == 0)
		answer->reason = "no other peer has the task and no seed is known";
	else
		answer->reason = "no other peer can serve it: they fetch from this one or have no "
				 "peer port";
}

/*
 * Fills answer->roots for the seed `seed` (state.h): the heads of the task's
 * chains, the incomplete non-seed peers with a peer port that their last
 * ranking found no upstream, first joined first, SCHED_ROOTS_MAX at most.
 * O(peers of the task): a seed asks once a second per task it is fetching.
 */
static void sched_roots(const struct sched_peer *seed, struct sched_answer *answer)
{
	struct sched_task *task = seed->task;
	const struct sched_peer *best[SCHED_ROOTS_MAX];
	unsigned count = 0;

	for (struct sched_node *node = task->peers.next; node != &task->peers; node = node->next) {
		const struct sched_peer *peer = container_of(node, struct sched_peer, in_task);
		unsigned at;

		if (!peer->head || peer->seed || peer->complete || !peer->address[0])
			continue;
		if (count == SCHED_ROOTS_MAX && peer->joined > best[count - 1]->joined)
			continue;
		at = count < SCHED_ROOTS_MAX ? count++ : count - 1;
		while (at > 0 && peer->joined < best[at - 1]->joined) {
			best[at] = best[at - 1];
			at--;
		}
		best[at] = peer;
	}
	for (unsigned i = 0; i < count; i++)
		snprintf(answer->roots[answer->root_count++], sizeof(answer->roots[0]), "%s",
			 best[i]->id);
}

/* --- announcements. */

static bool sched_peer_id_valid(const char *id)
{
	size_t len = id ? strnlen(id, SCHED_PEER_ID_MAX + 1) : 0;

	if (len == 0 || len > SCHED_PEER_ID_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (id[i] <= ' ' || id[i] > '~')
			return false; /* ids go into log lines as they are */
	return true;
}

static const char *sched_announce_check(const struct sched_announce *announce)
{
	if (!announce->task_id)
		return "task_id must be 32 bytes";
	if (!sched_peer_id_valid(announce->peer_id))
		return "peer_id must be 1 to 128 printable characters without spaces";
	if (announce->address &&
	    strnlen(announce->address, SCHED_ADDRESS_MAX + 1) > SCHED_ADDRESS_MAX)
		return "address too long";
	if (announce->location &&
	    strnlen(announce->location, SCHED_LOCATION_MAX + 1) > SCHED_LOCATION_MAX)
		return "location longer than 128 bytes";
	if (announce->url && strnlen(announce->url, SCHED_URL_MAX + 1) > SCHED_URL_MAX)
		return "url longer than 8192 bytes";
	if (announce->parents_in_use_count && !announce->parents_in_use)
		return "parents_in_use missing";
	return NULL;
}

/* Room to rank any task's peers and every seed host. */
static int sched_reserve_candidates(struct sched_state *state, size_t count)
{
	struct sched_candidate *candidates;

	if (count <= state->candidate_cap)
		return 0;
	candidates = realloc(state->candidates, count * sizeof(*candidates));
	if (!candidates)
		return -ENOMEM;
	state->candidates = candidates;
	state->candidate_cap = count;
	return 0;
}

static void sched_peer_update(struct sched_peer *peer, const struct sched_announce *announce,
			      uint64_t now_ms)
{
	if (announce->pieces_done > peer->pieces_done || announce->complete != peer->complete)
		peer->progress_ms = now_ms;
	peer->last_seen_ms = now_ms;
	peer->seed = announce->seed;
	peer->complete = announce->complete;
	peer->upload_slots = announce->upload_slots;
	peer->uploads = announce->uploads;
	peer->pieces_done = announce->pieces_done;
	peer->piece_count = announce->piece_count;
	snprintf(peer->address, sizeof(peer->address), "%s",
		 announce->address ? announce->address : "");
	snprintf(peer->location, sizeof(peer->location), "%s",
		 announce->location ? announce->location : "");
	peer->parents_in_use_count = 0;
	for (size_t i = 0; i < announce->parents_in_use_count &&
			   peer->parents_in_use_count < SCHED_PARENTS_IN_USE_MAX;
	     i++) {
		const char *id = announce->parents_in_use[i];

		if (id && id[0])
			peer->parents_in_use[peer->parents_in_use_count++] = sched_hash_id(id);
	}
}

/* The parents a child says failed it: in this task, and as seed hosts. */
static void sched_note_failures(struct sched_state *state, struct sched_task *task,
				const struct sched_announce *announce, uint64_t now_ms)
{
	for (size_t i = 0; i < announce->failed_parents_count && i < SCHED_FAILED_MAX; i++) {
		const char *address = announce->failed_parents ? announce->failed_parents[i] : NULL;

		if (!address || !address[0])
			continue;
		for (struct sched_node *node = task->peers.next; node != &task->peers;
		     node = node->next) {
			struct sched_peer *peer = container_of(node, struct sched_peer, in_task);

			if (strcmp(peer->address, address) == 0)
				peer->failed_ms = now_ms;
		}
		for (unsigned k = 0; k < state->seed_count; k++)
			if (strcmp(state->seeds[k].address, address) == 0)
				state->seeds[k].failed_ms = now_ms;
	}
}

static void sched_task_update(struct sched_task *task, const struct sched_announce *announce)
{
	if (!task->url && announce->url && announce->url[0])
		task->url = strdup(announce->url); /* for information: NULL is fine */
	if (announce->content_length)
		task->content_length = announce->content_length;
	if (announce->piece_length)
		task->piece_length = announce->piece_length;
	if (announce->piece_count)
		task->piece_count = announce->piece_count;
}

int sched_announce(struct sched_state *state, const struct sched_announce *announce,
		   uint64_t now_ms, struct sched_answer *answer)
{
	struct sched_task *task, *new_task = NULL;
	struct sched_peer *peer, *new_peer = NULL;
	const char *problem = sched_announce_check(announce);
	uint64_t id_hash;

	memset(answer, 0, sizeof(*answer));
	answer->reason = "";
	if (problem) {
		answer->reason = problem;
		return -EINVAL;
	}
	if (now_ms > state->now_ms)
		state->now_ms = now_ms;
	now_ms = state->now_ms;
	id_hash = sched_hash_id(announce->peer_id);

	/* Everything that can fail first: then nothing is half recorded. */
	task = sched_task_find(state, announce->task_id);
	peer = task ? sched_peer_find(state, task, id_hash, announce->peer_id) : NULL;
	if (sched_reserve_candidates(state, (task ? task->peer_count : 0) + 1u + state->seed_count +
						    1u) < 0)
		return -ENOMEM;
	if (!task) {
		new_task = calloc(1, sizeof(*new_task));
		if (!new_task)
			return -ENOMEM;
		memcpy(new_task->id, announce->task_id, SCHED_TASK_ID_SIZE);
		new_task->link.hash = sched_hash_bytes(new_task->id, SCHED_TASK_ID_SIZE);
		sched_list_init(&new_task->peers);
		task = new_task;
	}
	if (!peer) {
		new_peer = calloc(1, sizeof(*new_peer));
		if (!new_peer) {
			free(new_task);
			return -ENOMEM;
		}
		peer = new_peer;
	}

	if (new_task) {
		sched_table_insert(&state->tasks, &task->link);
		sched_list_append(&state->task_lru, &task->lru);
	} else {
		sched_list_move_tail(&state->task_lru, &task->lru);
	}
	if (new_peer) {
		snprintf(peer->id, sizeof(peer->id), "%s", announce->peer_id);
		peer->id_hash = id_hash;
		peer->task = task;
		peer->joined = ++task->joins;
		peer->progress_ms = now_ms;
		peer->link.hash = sched_peer_key(task, id_hash);
		sched_table_insert(&state->peers, &peer->link);
		sched_list_append(&task->peers, &peer->in_task);
		sched_list_append(&state->peer_lru, &peer->lru);
		task->peer_count++;
	} else {
		sched_list_move_tail(&task->peers, &peer->in_task);
		sched_list_move_tail(&state->peer_lru, &peer->lru);
	}
	sched_peer_update(peer, announce, now_ms);
	sched_task_update(task, announce);
	sched_note_failures(state, task, announce, now_ms);

	/* Over a bound: the least recently seen goes (never the entry just
	 * announced: it is at the tail, behind at least one other). */
	while (task->peer_count > state->options.max_peers) {
		struct sched_peer *oldest =
			container_of(task->peers.next, struct sched_peer, in_task);

		assert(oldest != peer);
		sched_peer_drop(state, oldest, SCHED_DROP_EVICTED);
	}
	while (state->tasks.count > state->options.max_tasks) {
		struct sched_task *oldest =
			container_of(state->task_lru.next, struct sched_task, lru);

		assert(oldest != task);
		sched_task_evict(state, oldest);
	}
	/* All tasks together: a client announcing a new task and peer per
	 * frame must not grow the state without end (max_tasks x max_peers
	 * is 10^9 entries by default). */
	while (state->peers.count > state->options.max_entries) {
		struct sched_peer *oldest =
			container_of(state->peer_lru.next, struct sched_peer, lru);

		assert(oldest != peer);
		sched_peer_drop(state, oldest, SCHED_DROP_EVICTED);
	}

	if (peer->seed && peer->address[0]) {
		sched_seed_update(state, peer, announce->registration);
	} else {
		struct sched_seed *seed = sched_seed_find(state, peer->id_hash, peer->id);

		if (seed) /* no longer a seed, or no longer reachable */
			sched_seed_remove(state, seed);
	}
	sched_rank(state, peer, announce->want_parents, answer);
	if (peer->seed && !peer->complete && announce->want_parents)
		sched_roots(peer, answer);
	return 0;
}

/* --- leaving, expiry. */

unsigned sched_leave(struct sched_state *state, const uint8_t *task_id, const char *peer_id)
{
	uint64_t id_hash;
	unsigned dropped = 0;

	if (!peer_id || !peer_id[0])
		return 0;
	id_hash = sched_hash_id(peer_id);
	if (task_id) {
		struct sched_task *task = sched_task_find(state, task_id);
		struct sched_peer *peer =
			task ? sched_peer_find(state, task, id_hash, peer_id) : NULL;

		if (!peer)
			return 0;
		sched_peer_drop(state, peer, SCHED_DROP_LEFT);
		return 1;
	}
	for (struct sched_node *node = state->peer_lru.next, *next; node != &state->peer_lru;
	     node = next) {
		struct sched_peer *peer = container_of(node, struct sched_peer, lru);

		next = node->next; /* dropping a peer (and its task) leaves the others */
		if (peer->id_hash == id_hash && strcmp(peer->id, peer_id) == 0) {
			sched_peer_drop(state, peer, SCHED_DROP_LEFT);
			dropped++;
		}
	}
	{
		struct sched_seed *seed = sched_seed_find(state, id_hash, peer_id);

		if (seed)
			sched_seed_remove(state, seed);
	}
	return dropped;
}

unsigned sched_expire(struct sched_state *state, uint64_t now_ms)
{
	uint64_t ttl_ms = state->options.peer_ttl_ms;
	unsigned dropped = 0;

	if (now_ms > state->now_ms)
		state->now_ms = now_ms;
	now_ms = state->now_ms;
	while (!sched_list_empty(&state->peer_lru)) {
		struct sched_peer *oldest =
			container_of(state->peer_lru.next, struct sched_peer, lru);

		assert(oldest->last_seen_ms <= now_ms);
		if (now_ms - oldest->last_seen_ms < ttl_ms)
			break; /* the rest were seen later */
		sched_peer_drop(state, oldest, SCHED_DROP_EXPIRED);
		dropped++;
	}
	for (unsigned i = 0; i < state->seed_count;) {
		if (now_ms - state->seeds[i].last_seen_ms >= ttl_ms)
			sched_seed_remove(state, &state->seeds[i]); /* the last moves to i */
		else
			i++;
	}
	return dropped;
}

/* --- preheat: seeds by rendezvous hashing. */

_Static_assert(SCHED_WEIGHT_SIZE == HASH_SHA256_SIZE, "weights are sha256 digests");

static void sched_seed_weight(const struct sched_seed *seed,
			      const uint8_t task_id[SCHED_TASK_ID_SIZE],
			      uint8_t weight[SCHED_WEIGHT_SIZE])
{
	uint8_t key[SCHED_ADDRESS_MAX + 1 + SCHED_TASK_ID_SIZE];
	size_t len = strnlen(seed->address, SCHED_ADDRESS_MAX + 1);

	assert(len > 0 && len <= SCHED_ADDRESS_MAX); /* seeds without an address are not kept */
	memcpy(key, seed->address, len);
	key[len] = '|';
	memcpy(key + len + 1, task_id, SCHED_TASK_ID_SIZE);
	hash_sha256(key, len + 1 + SCHED_TASK_ID_SIZE, weight);
}

/* Negative when a goes before b: higher weight, then lower address. */
static int sched_pick_compare(const struct sched_seed_pick *a, const struct sched_seed_pick *b)
{
	int order = memcmp(b->weight, a->weight, SCHED_WEIGHT_SIZE);

	return order ? order : strcmp(a->address, b->address);
}

unsigned sched_pick_seeds(const struct sched_state *state,
			  const uint8_t task_id[SCHED_TASK_ID_SIZE], struct sched_seed_pick *out,
			  unsigned max)
{
	struct sched_seed_pick candidate;
	unsigned count = 0;

	assert(state->seed_count <= SCHED_SEEDS_MAX);
	for (unsigned i = 0; i < state->seed_count; i++) {
		const struct sched_seed *seed = &state->seeds[i];
		unsigned at;

		if (!seed->registration)
			continue;
		memcpy(candidate.peer_id, seed->id, sizeof(candidate.peer_id));
		memcpy(candidate.address, seed->address, sizeof(candidate.address));
		candidate.registration = seed->registration;
		sched_seed_weight(seed, task_id, candidate.weight);
		/* Insertion into the max best so far: max is small (a few seeds). */
		at = count < max ? count++ : max;
		while (at > 0 && sched_pick_compare(&candidate, &out[at - 1]) < 0) {
			if (at < max)
				out[at] = out[at - 1];
			at--;
		}
		if (at < max)
			out[at] = candidate;
	}
	assert(count <= max);
	return count;
}

unsigned sched_forget_registration(struct sched_state *state, const void *registration)
{
	unsigned forgotten = 0;

	if (!registration)
		return 0;
	for (unsigned i = 0; i < state->seed_count; i++) {
		if (state->seeds[i].registration != registration)
			continue;
		state->seeds[i].registration = NULL;
		forgotten++;
	}
	return forgotten;
}

/* --- life cycle, counters. */

int sched_state_create(struct sched_state **out, const struct sched_options *options)
{
	struct sched_state *state = calloc(1, sizeof(*state));

	if (!state)
		return -ENOMEM;
	state->options = *options;
	if (!state->options.max_tasks)
		state->options.max_tasks = SCHED_MAX_TASKS_DEFAULT;
	if (!state->options.max_peers)
		state->options.max_peers = SCHED_MAX_PEERS_DEFAULT;
	if (!state->options.max_entries)
		state->options.max_entries = SCHED_MAX_ENTRIES_DEFAULT;
	if (!state->options.peer_ttl_ms)
		state->options.peer_ttl_ms = SCHED_PEER_TTL_MS_DEFAULT;
	sched_list_init(&state->task_lru);
	sched_list_init(&state->peer_lru);
	if (sched_table_init(&state->tasks) < 0)
		goto out_free_state;
	if (sched_table_init(&state->peers) < 0)
		goto out_free_tasks;
	*out = state;
	return 0;

out_free_tasks:
	free(state->tasks.buckets);
out_free_state:
	free(state);
	return -ENOMEM;
}

void sched_state_destroy(struct sched_state *state)
{
	if (!state)
		return;
	while (!sched_list_empty(&state->peer_lru)) {
		struct sched_peer *peer =
			container_of(state->peer_lru.next, struct sched_peer, lru);
		struct sched_task *task = peer->task;

		sched_table_remove(&state->peers, &peer->link);
		sched_list_unlink(&peer->in_task);
		sched_list_unlink(&peer->lru);
		free(peer);
		if (--task->peer_count == 0) {
			sched_table_remove(&state->tasks, &task->link);
			sched_list_unlink(&task->lru);
			sched_task_free(task);
		}
	}
	assert(state->tasks.count == 0 && state->peers.count == 0);
	free(state->tasks.buckets);
	free(state->peers.buckets);
	free(state->candidates);
	free(state);
}

static int sched_holder_compare(const struct sched_parent *a, const struct sched_parent *b)
{
	if (a->complete != b->complete)
		return a->complete ? -1 : 1;
	if (a->pieces_done != b->pieces_done)
		return a->pieces_done > b->pieces_done ? -1 : 1;
	if (a->seed != b->seed)
		return a->seed ? -1 : 1;
	return strcmp(a->peer_id, b->peer_id);
}

unsigned sched_task_peers(const struct sched_state *state,
			  const uint8_t task_id[SCHED_TASK_ID_SIZE], struct sched_parent *out,
			  unsigned max, struct sched_task_view *view)
{
	const struct sched_task *task = sched_task_find(state, task_id);
	unsigned count = 0;

	memset(view, 0, sizeof(*view));
	if (!task)
		return 0;
	snprintf(view->url, sizeof(view->url), "%s", task->url ? task->url : "");
	view->content_length = task->content_length;
	view->piece_count = task->piece_count;
	view->peer_count = task->peer_count;
	/* Insertion into out, kept sorted; past max the worst falls off. */
	for (const struct sched_node *n = task->peers.next; n != &task->peers; n = n->next) {
		const struct sched_peer *peer = container_of(n, struct sched_peer, in_task);
		struct sched_parent holder;
		unsigned at;

		if (!peer->complete && peer->pieces_done == 0)
			continue;
		memset(&holder, 0, sizeof(holder));
		snprintf(holder.peer_id, sizeof(holder.peer_id), "%s", peer->id);
		snprintf(holder.address, sizeof(holder.address), "%s", peer->address);
		holder.seed = peer->seed;
		holder.complete = peer->complete;
		holder.pieces_done = peer->pieces_done;
		at = count;
		while (at > 0 && sched_holder_compare(&holder, &out[at - 1]) < 0)
			at--;
		if (at >= max)
			continue;
		if (count < max)
			count++;
		memmove(&out[at + 1], &out[at], (count - 1 - at) * sizeof(*out));
		out[at] = holder;
	}
	return count;
}

unsigned sched_task_count(const struct sched_state *state)
{
	return (unsigned)state->tasks.count;
}

unsigned sched_peer_count(const struct sched_state *state)
{
	return (unsigned)state->peers.count;
}

unsigned sched_seed_count(const struct sched_state *state)
{
	return state->seed_count;
}

unsigned sched_task_peer_count(const struct sched_state *state,
			       const uint8_t task_id[SCHED_TASK_ID_SIZE])
{
	const struct sched_task *task = sched_task_find(state, task_id);

	return task ? task->peer_count : 0;
}

bool sched_has_peer(const struct sched_state *state, const uint8_t task_id[SCHED_TASK_ID_SIZE],
		    const char *peer_id)
{
	const struct sched_task *task = sched_task_find(state, task_id);

	return task && peer_id && sched_peer_find(state, task, sched_hash_id(peer_id), peer_id);
}
