/* test_scheduler: the scheduler's state: ranking, cycles, back to source, expiry, leave, bounds,
 * seeds for preheat. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/hash.h"
#include "scheduler/state.h"

static struct sched_state *state;
static char drops[8192]; /* "reason:task:peer " per dropped entry, in order */

static const char *reason_name(enum sched_drop_reason reason)
{
	switch (reason) {
	case SCHED_DROP_EXPIRED:
		return "expired";
	case SCHED_DROP_LEFT:
		return "left";
	case SCHED_DROP_EVICTED:
		return "evicted";
	}
	return "?";
}

static void on_drop(void *arg, const uint8_t task_id[SCHED_TASK_ID_SIZE], const char *peer_id,
		    enum sched_drop_reason reason)
{
	size_t used = strlen(drops);

	cr_assert_eq(arg, &drops);
	snprintf(drops + used, sizeof(drops) - used, "%s:%u:%s ", reason_name(reason), task_id[0],
		 peer_id);
}

/* Task ids: 32 bytes, the first one n (drops name tasks by it). */
static const uint8_t *task(unsigned n)
{
	static uint8_t ids[256][SCHED_TASK_ID_SIZE];

	cr_assert_lt(n, 256u);
	memset(ids[n], 0xa5, SCHED_TASK_ID_SIZE);
	ids[n][0] = (uint8_t)n;
	return ids[n];
}

static unsigned next_max_entries; /* for the next make_state only; 0 = the default */

static void make_state(unsigned max_tasks, unsigned max_peers, uint64_t peer_ttl_ms)
{
	struct sched_options options = {
		.max_tasks = max_tasks,
		.max_peers = max_peers,
		.max_entries = next_max_entries,
		.peer_ttl_ms = peer_ttl_ms,
		.dropped = on_drop,
		.arg = &drops,
	};

	next_max_entries = 0;
	if (state)
		sched_state_destroy(state);
	drops[0] = '\0';
	cr_assert_eq(sched_state_create(&state, &options), 0);
}

static void setup(void)
{
	make_state(0, 0, 0);
}

static void teardown(void)
{
	sched_state_destroy(state);
	state = NULL;
}

TestSuite(sched, .init = setup, .fini = teardown);

/* One peer's announcement; fields not given are zero. want_parents follows
 * !complete unless `quiet`. */
struct peer {
	const char *id;
	const char *address;
	const char *location;
	bool seed, complete, quiet;
	uint32_t pieces, slots, uploads;
	const char *parents[4];
	const char *failed[4];	/* addresses of parents that failed it */
	void *registration;
};

static struct sched_answer last;

static int announce_at(unsigned task_n, uint64_t now_ms, struct peer peer)
{
	char address[64];
	size_t parent_count = 0;
	struct sched_announce announce = {
		.task_id = task(task_n),
		.url = "http://origin/file",
		.peer_id = peer.id,
		.address = peer.address,
		.location = peer.location,
		.seed = peer.seed,
		.complete = peer.complete,
		.want_parents = !peer.complete && !peer.quiet,
		.upload_slots = peer.slots,
		.uploads = peer.uploads,
		.piece_count = 10,
		.pieces_done = peer.complete ? 10 : peer.pieces,
		.parents_in_use = peer.parents,
		.registration = peer.registration,
	};

	if (!peer.address) {
		/* Default: an address made from the id, so lists are easy to read. */
		snprintf(address, sizeof(address), "10.0.0.1:%zu", 1000 + strlen(peer.id));
		announce.address = address;
	}
	while (parent_count < 4 && peer.parents[parent_count])
		parent_count++;
	announce.parents_in_use_count = parent_count;
	announce.failed_parents = peer.failed;
	while (announce.failed_parents_count < 4 && peer.failed[announce.failed_parents_count])
		announce.failed_parents_count++;
	return sched_announce(state, &announce, now_ms, &last);
}

#define ANNOUNCE(task_n, now_ms, ...) \
	cr_assert_eq(announce_at(task_n, now_ms, (struct peer){ __VA_ARGS__ }), 0)

/* The answer's parents as "id,id,...". */
static const char *ids(const struct sched_answer *answer)
{
	static char text[SCHED_PARENTS_MAX * (SCHED_PEER_ID_MAX + 1) + 1];
	size_t used = 0;

	text[0] = '\0';
	for (unsigned i = 0; i < answer->parent_count; i++)
		used += (size_t)snprintf(text + used, sizeof(text) - used, "%s%s", i ? "," : "",
					 answer->parents[i].peer_id);
	return text;
}

/* --- ranking. */

Test(sched, ranking_order_complete_pieces_location_slots)
{
	ANNOUNCE(1, 0, .id = "c-far", .complete = true, .location = "z2|r1", .slots = 10);
	ANNOUNCE(1, 0, .id = "c-near", .complete = true, .location = "z1|r9", .slots = 1);
	ANNOUNCE(1, 0, .id = "c-rack", .complete = true, .location = "z1|r1", .slots = 1,
		 .uploads = 1);
	ANNOUNCE(1, 0, .id = "p7", .pieces = 7, .quiet = true);
	ANNOUNCE(1, 0, .id = "p3-near", .pieces = 3, .location = "z1|r1", .quiet = true);
	ANNOUNCE(1, 0, .id = "p3-far", .pieces = 3, .location = "z3", .quiet = true);
	ANNOUNCE(1, 0, .id = "p3-slots", .pieces = 3, .location = "z3", .slots = 5, .quiet = true);
	ANNOUNCE(1, 0, .id = "p1", .pieces = 1, .quiet = true);
	ANNOUNCE(1, 0, .id = "p0", .pieces = 0, .quiet = true);

	ANNOUNCE(1, 0, .id = "child", .pieces = 2, .location = "z1|r1");
	/* Complete first (by location, then free slots), then one peer still
	 * downloading: of those that came before the child, the nearest in
	 * its location (p3-near), not the one with the most pieces. */
	cr_assert_str_eq(ids(&last), "c-rack,c-near,c-far,p3-near");
	cr_assert_eq(last.parent_count, 4);
	cr_assert_not(last.back_to_source);
	cr_assert_str_eq(last.reason, "");
	cr_assert_str_eq(last.parents[0].address, "10.0.0.1:1006");
	cr_assert(last.parents[0].complete);
	cr_assert_eq(last.parents[0].pieces_done, 10);
	cr_assert_not(last.parents[3].complete);
	cr_assert_eq(last.parents[3].pieces_done, 3);
	cr_assert_not(last.parents[3].seed);
	/* Without a location: the one that came just before it. */
	ANNOUNCE(1, 0, .id = "child2", .pieces = 2);
	cr_assert_str_eq(ids(&last), "c-far,c-near,c-rack,child");
	/* Complete ones beyond eight: the freer first, then by id ("-" before
	 * digits); the downloading one is left out. */
	for (int i = 0; i < 8; i++) {
		char id[16];

		snprintf(id, sizeof(id), "c%d", i);
		ANNOUNCE(1, 0, .id = id, .complete = true, .slots = (uint32_t)i);
	}
	ANNOUNCE(1, 0, .id = "child2", .pieces = 2);
	cr_assert_str_eq(ids(&last), "c-far,c7,c6,c5,c4,c3,c2,c-near");
}

/* The downloading peers form a chain in the order they came: each fetches
 * from the one before it (and from every complete peer), so every uplink
 * carries the file once and nobody fetches from someone behind it. */
Test(sched, downloading_peers_form_a_chain_in_order_of_arrival)
{
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .pieces = 0, .quiet = true);
	ANNOUNCE(1, 0, .id = "a");
	cr_assert_str_eq(ids(&last), "seed");
	ANNOUNCE(1, 0, .id = "b");
	cr_assert_str_eq(ids(&last), "a");
	ANNOUNCE(1, 0, .id = "c");
	cr_assert_str_eq(ids(&last), "b");
	/* Pieces change nothing: b stays c's, and a never gets a parent that
	 * came after it, however far ahead. */
	ANNOUNCE(1, 100, .id = "b", .pieces = 9, .parents = { "a" });
	cr_assert_str_eq(ids(&last), "a");
	ANNOUNCE(1, 100, .id = "c", .pieces = 1, .parents = { "b" });
	cr_assert_str_eq(ids(&last), "b");
	ANNOUNCE(1, 200, .id = "a", .pieces = 1);
	cr_assert_str_eq(ids(&last), "seed");
	/* A re-announcement keeps the place: c is still after b. */
	ANNOUNCE(1, 300, .id = "c", .pieces = 2, .parents = { "b" });
	cr_assert_str_eq(ids(&last), "b");
	/* b completes: c's parents are b, and the one before b still
	 * downloading. */
	ANNOUNCE(1, 400, .id = "b", .complete = true);
	ANNOUNCE(1, 400, .id = "c", .pieces = 3, .parents = { "b" });
	cr_assert_str_eq(ids(&last), "b,a");
	/* a leaves: c heads the chain, the seed and b are its parents. */
	cr_assert_eq(sched_leave(state, task(1), "a"), 1);
	ANNOUNCE(1, 500, .id = "c", .pieces = 3, .parents = { "b" });
	cr_assert_str_eq(ids(&last), "b,seed");
}

/* --- task peers (`ringfly stat`). */

static const char *holder_text(const struct sched_parent *holders, unsigned count)
{
	static char text[64 * 32];
	size_t used = 0;

	text[0] = '\0';
	for (unsigned i = 0; i < count; i++)
		used += (size_t)snprintf(text + used, sizeof(text) - used, "%s%s%s%s:%u",
					 i ? "," : "", holders[i].peer_id,
					 holders[i].seed ? "(seed)" : "",
					 holders[i].complete ? "(c)" : "", holders[i].pieces_done);
	return text;
}

Test(sched, task_peers_lists_holders_most_first)
{
	struct sched_parent holders[4];
	struct sched_task_view view;

	cr_assert_eq(sched_task_peers(state, task(1), holders, 4, &view), 0);
	cr_assert_eq(view.peer_count, 0);
	cr_assert_str_eq(view.url, "");

	ANNOUNCE(1, 0, .id = "p3", .pieces = 3);
	ANNOUNCE(1, 0, .id = "p0", .pieces = 0);
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .complete = true);
	ANNOUNCE(1, 0, .id = "b", .complete = true);
	ANNOUNCE(1, 0, .id = "a", .complete = true);
	ANNOUNCE(1, 0, .id = "p7", .pieces = 7);
	ANNOUNCE(2, 0, .id = "other", .complete = true);

	/* Complete first (seeds, then by id), then by pieces; p0 holds nothing. */
	cr_assert_eq(sched_task_peers(state, task(1), holders, 4, &view), 4);
	cr_assert_str_eq(holder_text(holders, 4), "seed(seed)(c):10,a(c):10,b(c):10,p7:7");
	cr_assert_eq(view.peer_count, 6);
	cr_assert_eq(view.piece_count, 10);
	cr_assert_str_eq(view.url, "http://origin/file");
	cr_assert_str_eq(holders[1].address, "10.0.0.1:1001");
	/* Fewer places: the best ones. */
	cr_assert_eq(sched_task_peers(state, task(1), holders, 2, &view), 2);
	cr_assert_str_eq(holder_text(holders, 2), "seed(seed)(c):10,a(c):10");
	/* Gone peers are not listed. */
	cr_assert_eq(sched_leave(state, task(1), "seed"), 1);
	cr_assert_eq(sched_task_peers(state, task(1), holders, 4, &view), 4);
	cr_assert_str_eq(holder_text(holders, 4), "a(c):10,b(c):10,p7:7,p3:3");
	cr_assert_eq(view.peer_count, 5);
}

Test(sched, a_parent_that_failed_a_child_ranks_last_for_a_while)
{
	ANNOUNCE(1, 0, .id = "good", .complete = true, .address = "10.0.0.9:1");
	ANNOUNCE(1, 0, .id = "bad", .complete = true, .address = "10.0.0.9:2", .slots = 50);
	ANNOUNCE(1, 0, .id = "half", .pieces = 5, .quiet = true);
	ANNOUNCE(1, 0, .id = "child");
	cr_assert_str_eq(ids(&last), "bad,good,half", "free slots first while nobody failed");

	/* The child says "bad" failed it: last for everyone, not gone. */
	ANNOUNCE(1, 1000, .id = "child", .failed = { "10.0.0.9:2" });
	cr_assert_str_eq(ids(&last), "good,half,bad");
	ANNOUNCE(1, 2000, .id = "other");
	cr_assert_str_eq(ids(&last), "good,child,bad");
	/* Forgiven after SCHED_FAILURE_MS (the others announce meanwhile). */
	ANNOUNCE(1, SCHED_FAILURE_MS, .id = "good", .complete = true, .address = "10.0.0.9:1");
	ANNOUNCE(1, SCHED_FAILURE_MS, .id = "bad", .complete = true, .address = "10.0.0.9:2",
		 .slots = 50);
	ANNOUNCE(1, SCHED_FAILURE_MS, .id = "half", .pieces = 5, .quiet = true);
	ANNOUNCE(1, SCHED_FAILURE_MS, .id = "child", .quiet = true);
	ANNOUNCE(1, 1000 + SCHED_FAILURE_MS, .id = "other");
	cr_assert_str_eq(ids(&last), "bad,good,child");
}

/* The peer before it failed the child: the one before that; every one
 * before it failed lately: none, the child heads a chain of its own (the
 * seeds, or back to source without one). */
Test(sched, a_failed_peer_is_skipped_in_the_chain)
{
	ANNOUNCE(1, 0, .id = "a", .address = "10.0.0.9:1");
	ANNOUNCE(1, 0, .id = "b", .address = "10.0.0.9:2");
	ANNOUNCE(1, 0, .id = "c", .address = "10.0.0.9:3");
	cr_assert_str_eq(ids(&last), "b");
	ANNOUNCE(1, 100, .id = "c", .address = "10.0.0.9:3", .failed = { "10.0.0.9:2" });
	cr_assert_str_eq(ids(&last), "a");
	ANNOUNCE(1, 200, .id = "c", .address = "10.0.0.9:3", .failed = { "10.0.0.9:1" });
	cr_assert_eq(last.parent_count, 0);
	cr_assert(last.back_to_source);
	ANNOUNCE(1, 300, .id = "seed", .seed = true, .quiet = true);
	ANNOUNCE(1, 400, .id = "c", .address = "10.0.0.9:3");
	cr_assert_str_eq(ids(&last), "seed");
	/* Forgiven: b first again, the seed still there because c has had no
	 * new piece for SCHED_STALL_MS. */
	ANNOUNCE(1, 400 + SCHED_FAILURE_MS, .id = "c", .address = "10.0.0.9:3");
	cr_assert_str_eq(ids(&last), "b,seed");
	ANNOUNCE(1, 500 + SCHED_FAILURE_MS, .id = "c", .address = "10.0.0.9:3", .pieces = 1);
	cr_assert_str_eq(ids(&last), "b");
}

Test(sched, location_is_compared_by_leading_parts)
{
	ANNOUNCE(1, 0, .id = "a", .complete = true, .location = "z1|r2|h1");
	ANNOUNCE(1, 0, .id = "b", .complete = true, .location = "z1|r1|h9");
	ANNOUNCE(1, 0, .id = "c", .complete = true, .location = "z1|r1|h1");
	ANNOUNCE(1, 0, .id = "d", .complete = true, .location = "z1r1h1");
	ANNOUNCE(1, 0, .id = "e", .complete = true);
	ANNOUNCE(1, 0, .id = "child", .location = "z1|r1|h1");
	cr_assert_str_eq(ids(&last), "c,b,a,d,e");
	/* No location: nothing shared, free slots and ids decide (the first
	 * child has no pieces: last). */
	ANNOUNCE(1, 0, .id = "child2");
	cr_assert_str_eq(ids(&last), "a,b,c,d,e,child");
}

Test(sched, seeds_come_last_among_equals)
{
	ANNOUNCE(1, 0, .id = "a-seed", .seed = true, .complete = true, .slots = 4);
	ANNOUNCE(1, 0, .id = "b-peer", .complete = true, .slots = 4);
	ANNOUNCE(1, 0, .id = "c-peer", .complete = true, .slots = 4);
	ANNOUNCE(1, 0, .id = "child");
	cr_assert_str_eq(ids(&last), "b-peer,c-peer,a-seed");
	cr_assert(last.parents[2].seed);
	/* Even with more free slots (a seed has 1024 by default): after the
	 * peers as good as it. Among peers, the freer first. */
	ANNOUNCE(1, 0, .id = "a-seed", .seed = true, .complete = true, .slots = 1024);
	ANNOUNCE(1, 0, .id = "c-peer", .complete = true, .slots = 5);
	ANNOUNCE(1, 0, .id = "child");
	cr_assert_str_eq(ids(&last), "c-peer,b-peer,a-seed");
}

Test(sched, a_seed_is_always_included)
{
	char id[16];

	for (int i = 0; i < 9; i++) {
		snprintf(id, sizeof(id), "p%d", i);
		ANNOUNCE(1, 0, .id = id, .complete = true, .quiet = true);
	}
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .pieces = 0, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	/* Eight complete peers outrank it; the seed takes the last place. */
	cr_assert_str_eq(ids(&last), "p0,p1,p2,p3,p4,p5,p6,seed");
	cr_assert(last.parents[7].seed);
	cr_assert_eq(last.parents[7].pieces_done, 0);
}

Test(sched, a_seed_of_another_task_is_offered)
{
	ANNOUNCE(2, 0, .id = "seed", .seed = true, .complete = true, .address = "10.9.9.9:65002",
		 .location = "z1", .slots = 1024);
	cr_assert_eq(sched_seed_count(state), 1);
	ANNOUNCE(1, 0, .id = "p", .pieces = 3, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 0, .location = "z1");
	/* Down the chain: p only, until the child has had no new piece for
	 * SCHED_STALL_MS. */
	cr_assert_str_eq(ids(&last), "p");
	ANNOUNCE(1, SCHED_STALL_MS - 1, .id = "child", .pieces = 0, .location = "z1");
	cr_assert_str_eq(ids(&last), "p");
	ANNOUNCE(1, SCHED_STALL_MS, .id = "child", .pieces = 0, .location = "z1");
	cr_assert_str_eq(ids(&last), "p,seed");
	cr_assert_str_eq(last.parents[1].address, "10.9.9.9:65002");
	cr_assert(last.parents[1].seed);
	cr_assert_not(last.parents[1].complete);
	cr_assert_eq(last.parents[1].pieces_done, 0);
	/* A new piece: the chain again, for SCHED_STALL_MS. */
	ANNOUNCE(1, SCHED_STALL_MS + 1, .id = "child", .pieces = 1, .location = "z1");
	cr_assert_str_eq(ids(&last), "p");
	ANNOUNCE(1, 2 * SCHED_STALL_MS + 1, .id = "child", .pieces = 1, .location = "z1");
	cr_assert_str_eq(ids(&last), "p,seed");
	/* An unknown task: the seed fetches it, no back to source. */
	ANNOUNCE(3, 0, .id = "first");
	cr_assert_str_eq(ids(&last), "seed");
	cr_assert_not(last.back_to_source);
	/* The seed's own entry in a task is what ranks, once it has one. */
	ANNOUNCE(3, 0, .id = "seed", .seed = true, .pieces = 4, .address = "10.9.9.9:65002",
		 .quiet = true);
	ANNOUNCE(3, 0, .id = "first");
	cr_assert_str_eq(ids(&last), "seed");
	cr_assert_eq(last.parents[0].pieces_done, 4);
}

Test(sched, never_itself_nor_a_peer_without_address)
{
	ANNOUNCE(1, 0, .id = "other", .pieces = 1, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 9);
	ANNOUNCE(1, 0, .id = "hidden", .complete = true, .address = "");
	ANNOUNCE(1, 0, .id = "hidden2", .pieces = 5, .address = "", .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 9);
	cr_assert_str_eq(ids(&last), "other");
	/* A seed without a peer port is no seed host either. */
	ANNOUNCE(2, 0, .id = "s", .seed = true, .complete = true, .address = "");
	cr_assert_eq(sched_seed_count(state), 0);
}

/* --- cycles. */

Test(sched, a_peer_fetching_from_the_child_is_excluded)
{
	ANNOUNCE(1, 0, .id = "a", .pieces = 8, .parents = { "child" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "b", .pieces = 4, .parents = { "x", "y" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 2);
	cr_assert_str_eq(ids(&last), "b");
	/* In another task, the same ids are unrelated. */
	ANNOUNCE(2, 0, .id = "a", .pieces = 8, .quiet = true);
	ANNOUNCE(2, 0, .id = "child", .pieces = 2);
	cr_assert_str_eq(ids(&last), "a");
}

Test(sched, a_peer_fetching_from_the_child_transitively_is_excluded)
{
	/* child <- a <- b <- c; d fetches from c and from e; f from "gone";
	 * they came in the order f, e, a, b, c, d (the nearest first). */
	ANNOUNCE(1, 0, .id = "f", .pieces = 4, .parents = { "gone" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "e", .pieces = 5, .parents = { "f" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "a", .pieces = 6, .parents = { "child" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "b", .pieces = 7, .parents = { "a" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "c", .pieces = 8, .parents = { "x", "b" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "d", .pieces = 9, .parents = { "e", "c" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	cr_assert_str_eq(ids(&last), "e");
	/* A cycle among the others does not stop the walk. */
	ANNOUNCE(1, 0, .id = "e", .pieces = 5, .parents = { "f" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "f", .pieces = 4, .parents = { "e" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	cr_assert_str_eq(ids(&last), "e");
	/* c drops b: c and the peers above it are safe again. */
	ANNOUNCE(1, 0, .id = "c", .pieces = 8, .parents = { "x" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	cr_assert_str_eq(ids(&last), "d");
}

Test(sched, a_walk_longer_than_the_bound_excludes)
{
	char id[16], parent[16];
	unsigned n = SCHED_WALK_MAX + 5;

	/* A chain p0 <- p1 <- ... that never reaches the child. */
	for (unsigned i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "p%03u", i);
		snprintf(parent, sizeof(parent), "p%03u", i ? i - 1 : 999);
		ANNOUNCE(1, 0, .id = id, .pieces = i == n - 1 ? 9 : 5, .parents = { parent },
			 .quiet = true);
	}
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	/* The end of the chain cannot be proven safe; the nearest that can
	 * (its walk visits SCHED_WALK_MAX peers), the sixth tried, is the
	 * parent. */
	snprintf(id, sizeof(id), "p%03u", SCHED_WALK_MAX - 1);
	cr_assert_str_eq(ids(&last), id);
}

/* --- back to source. */

Test(sched, unknown_task_without_seed_goes_back_to_source)
{
	ANNOUNCE(1, 0, .id = "first");
	cr_assert_eq(last.parent_count, 0);
	cr_assert(last.back_to_source);
	cr_assert_str_eq(last.reason, "no other peer has the task and no seed is known");
	cr_assert_eq(sched_task_count(state), 1);
	cr_assert_eq(sched_task_peer_count(state, task(1)), 1);
	/* The second one gets the first (it fetches from the origin). */
	ANNOUNCE(1, 0, .id = "second");
	cr_assert_str_eq(ids(&last), "first");
	cr_assert_not(last.back_to_source);
}

Test(sched, everyone_excluded_goes_back_to_source)
{
	ANNOUNCE(1, 0, .id = "a", .pieces = 3, .parents = { "child" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "child");
	cr_assert_eq(last.parent_count, 0);
	cr_assert(last.back_to_source);
	cr_assert_str_eq(
		last.reason,
		"no other peer can serve it: they fetch from this one or have no peer port");
}

Test(sched, a_seed_lacking_pieces_nobody_has_goes_back_to_source)
{
	ANNOUNCE(1, 0, .id = "a", .pieces = 0, .quiet = true);
	ANNOUNCE(1, 0, .id = "b", .pieces = 2, .quiet = true);
	ANNOUNCE(1, 0, .id = "other-seed", .seed = true, .pieces = 2, .quiet = true);
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .pieces = 2);
	cr_assert_eq(last.parent_count, 0);
	cr_assert(last.back_to_source);
	cr_assert_str_eq(last.reason, "a seed and no other peer has pieces it lacks");
	/* Someone with more pieces: the seed takes those (only those). */
	ANNOUNCE(1, 0, .id = "c", .pieces = 5, .quiet = true);
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .pieces = 2);
	cr_assert_str_eq(ids(&last), "c");
	cr_assert_not(last.back_to_source);
	ANNOUNCE(1, 0, .id = "d", .complete = true);
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .pieces = 2);
	cr_assert_str_eq(ids(&last), "d,c");
}

Test(sched, a_complete_peer_or_one_not_asking_gets_nothing)
{
	ANNOUNCE(1, 0, .id = "a", .complete = true);
	cr_assert_eq(last.parent_count, 0);
	cr_assert_not(last.back_to_source);
	ANNOUNCE(1, 0, .id = "b", .pieces = 1, .quiet = true);
	cr_assert_eq(last.parent_count, 0);
	cr_assert_not(last.back_to_source);
	ANNOUNCE(1, 0, .id = "b", .pieces = 1);
	cr_assert_str_eq(ids(&last), "a");
}

/* --- expiry, leave. */

Test(sched, peers_expire_after_the_ttl)
{
	make_state(0, 0, 1000);
	ANNOUNCE(1, 0, .id = "a", .complete = true);
	ANNOUNCE(1, 500, .id = "b", .quiet = true);
	ANNOUNCE(2, 600, .id = "s", .seed = true, .complete = true);
	cr_assert_eq(sched_expire(state, 999), 0);
	cr_assert_eq(sched_peer_count(state), 3);
	cr_assert_eq(sched_expire(state, 1000), 1);
	cr_assert_str_eq(drops, "expired:1:a ");
	cr_assert_not(sched_has_peer(state, task(1), "a"));
	cr_assert(sched_has_peer(state, task(1), "b"));
	/* An announcement keeps a peer: b is seen again at 1400. */
	ANNOUNCE(1, 1400, .id = "b", .quiet = true);
	cr_assert_eq(sched_expire(state, 1600), 1);
	cr_assert_str_eq(drops, "expired:1:a expired:2:s ");
	cr_assert_eq(sched_seed_count(state), 0);
	cr_assert_eq(sched_expire(state, 2399), 0);
	cr_assert_eq(sched_expire(state, 2400), 1);
	cr_assert_str_eq(drops, "expired:1:a expired:2:s expired:1:b ");
	cr_assert_eq(sched_task_count(state), 0);
	cr_assert_eq(sched_peer_count(state), 0);
	/* Time does not go back: an older now_ms counts as the latest. */
	ANNOUNCE(1, 100, .id = "late", .quiet = true);
	cr_assert_eq(sched_expire(state, 3399), 0);
	cr_assert_eq(sched_expire(state, 3400), 1);
}

Test(sched, leave_one_task_or_all)
{
	ANNOUNCE(1, 0, .id = "s", .seed = true, .complete = true);
	ANNOUNCE(2, 0, .id = "s", .seed = true, .complete = true);
	ANNOUNCE(2, 0, .id = "p", .quiet = true);
	ANNOUNCE(3, 0, .id = "s", .seed = true, .complete = true);
	cr_assert_eq(sched_leave(state, task(9), "s"), 0);
	cr_assert_eq(sched_leave(state, task(1), "nobody"), 0);
	cr_assert_eq(sched_leave(state, task(1), "s"), 1);
	cr_assert_str_eq(drops, "left:1:s ");
	cr_assert_eq(sched_task_count(state), 2);
	cr_assert_eq(sched_seed_count(state), 1);
	/* The parent disappears from the answers. */
	ANNOUNCE(1, 0, .id = "child");
	cr_assert(last.back_to_source == false);
	cr_assert_str_eq(ids(&last), "s"); /* still a seed host */
	cr_assert_eq(sched_leave(state, NULL, "s"), 2);
	cr_assert_str_eq(drops, "left:1:s left:2:s left:3:s ");
	cr_assert_eq(sched_seed_count(state), 0);
	cr_assert_eq(sched_task_count(state), 2);
	cr_assert(sched_has_peer(state, task(2), "p"));
	ANNOUNCE(1, 0, .id = "child");
	cr_assert(last.back_to_source);
	cr_assert_eq(sched_leave(state, NULL, "s"), 0);
}

/* --- bounds. */

Test(sched, past_max_tasks_the_least_recently_announced_goes)
{
	make_state(2, 0, 0);
	ANNOUNCE(1, 0, .id = "a", .quiet = true);
	ANNOUNCE(1, 0, .id = "b", .quiet = true);
	ANNOUNCE(2, 1, .id = "a", .quiet = true);
	ANNOUNCE(1, 2, .id = "b", .quiet = true); /* task 1 is now the most recent */
	ANNOUNCE(3, 3, .id = "c", .quiet = true);
	cr_assert_str_eq(drops, "evicted:2:a ");
	cr_assert_eq(sched_task_count(state), 2);
	cr_assert_eq(sched_task_peer_count(state, task(1)), 2);
	cr_assert_eq(sched_task_peer_count(state, task(2)), 0);
	ANNOUNCE(4, 4, .id = "d", .quiet = true);
	cr_assert_str_eq(drops, "evicted:2:a evicted:1:a evicted:1:b ");
	cr_assert_eq(sched_task_count(state), 2);
	cr_assert_eq(sched_peer_count(state), 2);
}

Test(sched, past_max_peers_the_least_recently_seen_goes)
{
	make_state(0, 2, 0);
	ANNOUNCE(1, 0, .id = "a", .complete = true);
	ANNOUNCE(1, 1, .id = "b", .complete = true);
	ANNOUNCE(1, 2, .id = "a", .complete = true);
	ANNOUNCE(1, 3, .id = "c", .pieces = 1);
	cr_assert_str_eq(drops, "evicted:1:b ");
	cr_assert_str_eq(ids(&last), "a");
	cr_assert_eq(sched_task_peer_count(state, task(1)), 2);
	/* Per task: another task has its own room. */
	ANNOUNCE(2, 4, .id = "x", .quiet = true);
	ANNOUNCE(2, 4, .id = "y", .quiet = true);
	cr_assert_eq(sched_peer_count(state), 4);
	make_state(0, 1, 0);
	ANNOUNCE(1, 0, .id = "a", .complete = true);
	ANNOUNCE(1, 1, .id = "b");
	cr_assert_str_eq(drops, "evicted:1:a ");
	cr_assert(last.back_to_source);
	cr_assert_eq(sched_task_count(state), 1);
}

/* All tasks together: one peer entry per (task, peer), the least recently
 * seen of any task goes; a client announcing a new task per frame stays
 * within max_entries. */
Test(sched, past_max_entries_the_least_recently_seen_of_any_task_goes)
{
	next_max_entries = 3;
	make_state(0, 0, 0);
	ANNOUNCE(1, 0, .id = "a", .complete = true);
	ANNOUNCE(2, 1, .id = "b", .complete = true);
	ANNOUNCE(1, 2, .id = "a", .complete = true); /* seen again: b is the oldest */
	ANNOUNCE(3, 3, .id = "c", .quiet = true);
	cr_assert_str_eq(drops, "");
	ANNOUNCE(4, 4, .id = "d", .quiet = true);
	cr_assert_str_eq(drops, "evicted:2:b ");
	cr_assert_eq(sched_peer_count(state), 3);
	cr_assert_eq(sched_task_count(state), 3); /* task 2 went with its last peer */
	for (unsigned i = 0; i < 150; i++) {
		char id[16];

		snprintf(id, sizeof(id), "p%u", i);
		ANNOUNCE(100 + i, 5 + i, .id = id, .quiet = true);
		cr_assert_leq(sched_peer_count(state), 3);
		cr_assert_leq(sched_task_count(state), 3);
	}
}

Test(sched, many_tasks_and_peers_stay_consistent)
{
	char id[16];

	make_state(100, 50, 1000);
	for (unsigned round = 0; round < 20; round++)
		for (unsigned t = 0; t < 150; t++) {
			snprintf(id, sizeof(id), "p%u", (round * 7 + t) % 60);
			ANNOUNCE(t, round * 100 + t / 10, .id = id, .pieces = t % 10,
				 .quiet = t % 3);
		}
	cr_assert_eq(sched_task_count(state), 100);
	cr_assert_leq(sched_peer_count(state), 100 * 50);
	sched_expire(state, 100000);
	cr_assert_eq(sched_task_count(state), 0);
	cr_assert_eq(sched_peer_count(state), 0);
}

/* --- input. */

Test(sched, wrong_fields_are_refused_and_not_recorded)
{
	char long_id[SCHED_PEER_ID_MAX + 2];
	char long_location[SCHED_LOCATION_MAX + 2];

	memset(long_id, 'x', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	memset(long_location, 'z', sizeof(long_location) - 1);
	long_location[sizeof(long_location) - 1] = '\0';
	cr_assert_eq(announce_at(1, 0, (struct peer){ .id = "with space" }), -EINVAL);
	cr_assert_str_eq(last.reason,
			 "peer_id must be 1 to 128 printable characters without spaces");
	cr_assert_eq(announce_at(1, 0, (struct peer){ .id = "" }), -EINVAL);
	cr_assert_eq(announce_at(1, 0, (struct peer){ .id = "new\nline" }), -EINVAL);
	cr_assert_eq(announce_at(1, 0, (struct peer){ .id = long_id }), -EINVAL);
	cr_assert_eq(announce_at(1, 0, (struct peer){ .id = "ok", .location = long_location }),
		     -EINVAL);
	cr_assert_str_eq(last.reason, "location longer than 128 bytes");
	cr_assert_eq(sched_task_count(state), 0);
	long_id[SCHED_PEER_ID_MAX] = '\0'; /* exactly the maximum */
	cr_assert_eq(announce_at(1, 0, (struct peer){ .id = long_id }), 0);
	cr_assert_eq(sched_leave(state, NULL, ""), 0);
}

Test(sched, parents_in_use_beyond_the_limit_are_ignored)
{
	const char *many[SCHED_PARENTS_IN_USE_MAX + 1];
	char names[SCHED_PARENTS_IN_USE_MAX + 1][8];
	struct sched_announce announce = {
		.task_id = task(1),
		.peer_id = "a",
		.address = "10.0.0.2:1",
		.pieces_done = 5,
		.parents_in_use = many,
		.parents_in_use_count = SCHED_PARENTS_IN_USE_MAX + 1,
	};

	for (unsigned i = 0; i <= SCHED_PARENTS_IN_USE_MAX; i++) {
		snprintf(names[i], sizeof(names[i]), "q%u", i);
		many[i] = names[i];
	}
	/* The child is the 17th: not recorded, so a stays a candidate. */
	many[SCHED_PARENTS_IN_USE_MAX] = "child";
	cr_assert_eq(sched_announce(state, &announce, 0, &last), 0);
	ANNOUNCE(1, 0, .id = "child");
	cr_assert_str_eq(ids(&last), "a");
	many[0] = "child";
	cr_assert_eq(sched_announce(state, &announce, 0, &last), 0);
	ANNOUNCE(1, 0, .id = "child");
	cr_assert(last.back_to_source);
}

Test(sched, same_inputs_same_answers)
{
	char first[1024];

	for (int run = 0; run < 2; run++) {
		make_state(0, 0, 0);
		ANNOUNCE(1, 0, .id = "m", .pieces = 4, .slots = 3, .quiet = true);
		ANNOUNCE(1, 0, .id = "k", .pieces = 4, .slots = 3, .quiet = true);
		ANNOUNCE(1, 0, .id = "z", .pieces = 4, .slots = 3, .quiet = true);
		ANNOUNCE(1, 0, .id = "s", .seed = true, .pieces = 4, .slots = 3, .quiet = true);
		ANNOUNCE(1, 0, .id = "child");
		if (run == 0)
			snprintf(first, sizeof(first), "%s", ids(&last));
		else
			cr_assert_str_eq(ids(&last), first);
	}
	cr_assert_str_eq(first, "z");
}

/* --- ranking past the first candidates sorted. */

Test(sched, many_excluded_best_candidates)
{
	char id[16];

	for (int i = 0; i < 25; i++) {
		snprintf(id, sizeof(id), "p%02d", i);
		if (i < 12)
			ANNOUNCE(1, 0, .id = id, .complete = true, .slots = 9,
				 .parents = { "child" }, .quiet = true);
		else
			ANNOUNCE(1, 0, .id = id, .complete = true, .slots = i < 20 ? 8 : 7,
				 .quiet = true);
	}
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	cr_assert_str_eq(ids(&last), "p12,p13,p14,p15,p16,p17,p18,p19");
}

/* Upstream peers that fetch from the child: the next nearest, up to
 * SCHED_UPSTREAM_TRIES of them; past that, none (the seed and complete
 * peers only). */
Test(sched, upstream_peers_fetching_from_the_child_are_skipped_a_few_times)
{
	char id[16];

	ANNOUNCE(1, 0, .id = "safe", .pieces = 2, .quiet = true);
	for (int i = 0; i < SCHED_UPSTREAM_TRIES - 1; i++) {
		snprintf(id, sizeof(id), "x%02d", i);
		ANNOUNCE(1, 0, .id = id, .pieces = 2, .parents = { "child" }, .quiet = true);
	}
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	cr_assert_str_eq(ids(&last), "safe");
	ANNOUNCE(1, 0, .id = "x99", .pieces = 2, .parents = { "child" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	/* x99 came after the child: never its parent, and not one of the
	 * tries either. */
	cr_assert_str_eq(ids(&last), "safe");
	ANNOUNCE(2, 0, .id = "safe", .pieces = 2, .quiet = true);
	for (int i = 0; i < SCHED_UPSTREAM_TRIES; i++) {
		snprintf(id, sizeof(id), "x%02d", i);
		ANNOUNCE(2, 0, .id = id, .pieces = 2, .parents = { "child" }, .quiet = true);
	}
	ANNOUNCE(2, 0, .id = "seed", .seed = true, .quiet = true);
	ANNOUNCE(2, 0, .id = "child", .pieces = 1);
	cr_assert_str_eq(ids(&last), "seed");
}

/* The answer's roots as "id,id,...". */
static const char *root_ids(const struct sched_answer *answer)
{
	static char text[SCHED_ROOTS_MAX * (SCHED_PEER_ID_MAX + 1) + 1];
	size_t used = 0;

	text[0] = '\0';
	for (unsigned i = 0; i < answer->root_count; i++)
		used += (size_t)snprintf(text + used, sizeof(text) - used, "%s%s", i ? "," : "",
					 answer->roots[i]);
	return text;
}

Test(sched, a_seed_is_told_the_heads_of_the_chains)
{
	char id[16];

	/* Never a peer without a peer port, a complete one or a seed. */
	ANNOUNCE(1, 0, .id = "no-port", .address = "", .pieces = 5);
	ANNOUNCE(1, 0, .id = "done", .complete = true);
	ANNOUNCE(1, 0, .id = "other-seed", .seed = true, .pieces = 5);
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .pieces = 0);
	cr_assert_eq(last.root_count, 0);
	/* a came first: the head; b and c have an upstream. */
	ANNOUNCE(1, 0, .id = "a", .pieces = 1, .address = "10.0.0.9:1");
	ANNOUNCE(1, 0, .id = "b", .pieces = 3, .address = "10.0.0.9:2", .parents = { "a" });
	ANNOUNCE(1, 0, .id = "c", .pieces = 1, .parents = { "b" });
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .pieces = 0);
	cr_assert_str_eq(root_ids(&last), "a");
	/* Not for a peer that is not a seed, nor for a seed's announcement
	 * that does not ask (its task complete, or a refresh). */
	ANNOUNCE(1, 0, .id = "h", .pieces = 0, .parents = { "seed" });
	cr_assert_eq(last.root_count, 0);
	ANNOUNCE(1, 0, .id = "seed", .seed = true, .pieces = 0, .quiet = true);
	cr_assert_eq(last.root_count, 0);
	/* c says a failed it: b, whose upstream a is, heads a chain of its
	 * own once it asks again; a still heads its own. */
	ANNOUNCE(1, 100, .id = "c", .pieces = 1, .failed = { "10.0.0.9:1" }, .parents = { "b" });
	ANNOUNCE(1, 100, .id = "seed", .seed = true, .pieces = 0);
	cr_assert_str_eq(root_ids(&last), "a");
	ANNOUNCE(1, 100, .id = "b", .pieces = 3, .address = "10.0.0.9:2", .parents = { "a" });
	ANNOUNCE(1, 100, .id = "seed", .seed = true, .pieces = 0);
	cr_assert_str_eq(root_ids(&last), "a,b");
	/* a completes: b. */
	ANNOUNCE(1, 200, .id = "a", .complete = true, .address = "10.0.0.9:1");
	ANNOUNCE(1, 200, .id = "seed", .seed = true, .pieces = 0);
	cr_assert_str_eq(root_ids(&last), "b");
	ANNOUNCE(1, 200, .id = "seed", .seed = true, .complete = true);
	cr_assert_eq(last.root_count, 0);
	/* More heads than SCHED_ROOTS_MAX (each peer says the one before it
	 * failed, so every one heads a chain): the first joined. */
	for (unsigned i = 0; i < SCHED_ROOTS_MAX + 2; i++) {
		snprintf(id, sizeof(id), "x%02u", i);
		ANNOUNCE(2, 0, .id = id, .pieces = 1, .address = id);
	}
	for (unsigned i = 1; i < SCHED_ROOTS_MAX + 2; i++) {
		char failed[16];

		snprintf(id, sizeof(id), "x%02u", i);
		snprintf(failed, sizeof(failed), "x%02u", i - 1);
		ANNOUNCE(2, 10, .id = id, .pieces = 1, .address = id, .failed = { failed });
	}
	for (unsigned i = 1; i < SCHED_ROOTS_MAX + 2; i++) {
		snprintf(id, sizeof(id), "x%02u", i);
		ANNOUNCE(2, 20, .id = id, .pieces = 1, .address = id);
	}
	ANNOUNCE(2, 20, .id = "seed", .seed = true, .pieces = 0);
	cr_assert_eq(last.root_count, SCHED_ROOTS_MAX);
	cr_assert_str_eq(root_ids(&last), "x00,x01,x02,x03,x04,x05,x06,x07");
}

Test(sched, a_seed_far_down_the_ranking_is_still_included)
{
	char id[16];

	for (int i = 0; i < 20; i++) {
		snprintf(id, sizeof(id), "p%02d", i);
		ANNOUNCE(1, 0, .id = id, .complete = true, .quiet = true);
	}
	ANNOUNCE(1, 0, .id = "s1", .seed = true, .parents = { "child" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "s2", .seed = true, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	cr_assert_str_eq(ids(&last), "p00,p01,p02,p03,p04,p05,p06,s2");
	/* No seed that can serve: the eight best. */
	ANNOUNCE(1, 0, .id = "s2", .seed = true, .parents = { "p00", "s1" }, .quiet = true);
	ANNOUNCE(1, 0, .id = "child", .pieces = 1);
	cr_assert_str_eq(ids(&last), "p00,p01,p02,p03,p04,p05,p06,p07");
}

/*
 * Random swarms against a plain reference: the complete peers, the seeds and
 * the one upstream peer sorted by the documented order, cycles found by a
 * full walk, the eight first, a seed in the last place if none came in.
 */
struct ref_peer {
	char id[8];
	char location[8];
	uint32_t pieces, slots, uploads;
	bool complete, seed;
	int parents[4];
	int parent_count;
};

static struct ref_peer ref[64];
static int ref_count;
static uint32_t rnd_state = 12345;

static uint32_t rnd(uint32_t below)
{
	rnd_state = rnd_state * 1103515245u + 12345u;
	return (rnd_state >> 16) % below;
}

static unsigned ref_location_match(const char *a, const char *b)
{
	unsigned parts = 0;

	while (a[0] && b[0]) {
		size_t len_a = strcspn(a, "|"), len_b = strcspn(b, "|");

		if (len_a != len_b || strncmp(a, b, len_a) != 0)
			break;
		parts++;
		if (!a[len_a] || !b[len_b])
			break;
		a += len_a + 1;
		b += len_b + 1;
	}
	return parts;
}

static int ref_compare(const void *left, const void *right)
{
	const struct ref_peer *a = &ref[*(const int *)left], *b = &ref[*(const int *)right];
	unsigned match_a = ref_location_match(ref[0].location, a->location);
	unsigned match_b = ref_location_match(ref[0].location, b->location);
	int64_t free_a = (int64_t)a->slots - a->uploads, free_b = (int64_t)b->slots - b->uploads;

	if (a->complete != b->complete)
		return a->complete ? -1 : 1;
	if (!a->complete && a->pieces != b->pieces)
		return a->pieces > b->pieces ? -1 : 1;
	if (match_a != match_b)
		return match_a > match_b ? -1 : 1;
	if (a->seed != b->seed)
		return a->seed ? 1 : -1;
	if (free_a != free_b)
		return free_a > free_b ? -1 : 1;
	return strcmp(a->id, b->id);
}

/* Whether peer 0 (the child) is reachable from `from` through parents. */
static bool ref_reaches_child(int from)
{
	bool seen[64] = { false };
	int stack[64], depth = 0;

	stack[depth++] = from;
	seen[from] = true;
	while (depth) {
		const struct ref_peer *peer = &ref[stack[--depth]];

		for (int i = 0; i < peer->parent_count; i++) {
			int next = peer->parents[i];

			if (next == 0)
				return true;
			if (!seen[next]) {
				seen[next] = true;
				stack[depth++] = next;
			}
		}
	}
	return false;
}

/* Whether a is a better upstream than b for the child (peers came in index
 * order, the child last). */
static bool ref_upstream_before(int a, int b)
{
	unsigned match_a = ref_location_match(ref[0].location, ref[a].location);
	unsigned match_b = ref_location_match(ref[0].location, ref[b].location);

	if (match_a != match_b)
		return match_a > match_b;
	return a > b;
}

/* The child's one downloading parent: the best upstream not reaching the
 * child, among the first SCHED_UPSTREAM_TRIES best; -1: none. */
static int ref_upstream(void)
{
	int order[64], n = 0;

	for (int i = 1; i < ref_count; i++)
		if (!ref[i].complete && !ref[i].seed)
			order[n++] = i;
	for (int i = 1; i < n; i++)
		for (int k = i; k > 0 && ref_upstream_before(order[k], order[k - 1]); k--) {
			int swap = order[k];

			order[k] = order[k - 1];
			order[k - 1] = swap;
		}
	for (int i = 0; i < n && i < SCHED_UPSTREAM_TRIES; i++)
		if (!ref_reaches_child(order[i]))
			return order[i];
	return -1;
}

static void ref_expected(char *out, size_t size)
{
	int order[64], chosen[SCHED_PARENTS_MAX], count = 0, n = 0;
	int upstream = ref_upstream();
	bool have_seed = false;

	/* Seeds still downloading only for the head of the chain (no
	 * upstream; nobody failed, no time passes here). */
	for (int i = 1; i < ref_count; i++)
		if (ref[i].complete || (ref[i].seed && upstream < 0) || i == upstream)
			order[n++] = i;
	qsort(order, (size_t)n, sizeof(order[0]), ref_compare);
	for (int i = 0; i < n; i++) {
		const struct ref_peer *peer = &ref[order[i]];

		if (ref_reaches_child(order[i]))
			continue;
		if (count < SCHED_PARENTS_MAX) {
			chosen[count++] = order[i];
			have_seed |= peer->seed;
		} else if (!have_seed && peer->seed) {
			chosen[SCHED_PARENTS_MAX - 1] = order[i];
			break;
		}
	}
	out[0] = '\0';
	for (int i = 0; i < count; i++) {
		size_t used = strlen(out);

		snprintf(out + used, size - used, "%s%s", i ? "," : "", ref[chosen[i]].id);
	}
}

Test(sched, random_swarms_match_the_reference)
{
	static const char *const locations[] = { "", "z1", "z1|r1", "z1|r2", "z2|r1" };
	char expected[256];

	for (int round = 0; round < 300; round++) {
		make_state(0, 0, 0);
		ref_count = 1 + (int)rnd(60);
		for (int i = 0; i < ref_count; i++) {
			struct ref_peer *peer = &ref[i];

			snprintf(peer->id, sizeof(peer->id), "r%02d", i);
			snprintf(peer->location, sizeof(peer->location), "%s", locations[rnd(5)]);
			peer->complete = i > 0 && rnd(5) == 0;
			peer->seed = i > 0 && rnd(8) == 0;
			peer->pieces = peer->complete ? 10 : rnd(i ? 11 : 10);
			peer->slots = rnd(5);
			peer->uploads = rnd(peer->slots + 1);
			peer->parent_count = (int)rnd(4);
			for (int j = 0; j < peer->parent_count; j++)
				peer->parents[j] = (int)rnd((uint32_t)ref_count);
		}
		/* The child last, so that it sees everyone. */
		for (int k = 1; k <= ref_count; k++) {
			int i = k % ref_count;
			struct ref_peer *peer = &ref[i];
			struct peer spec = {
				.id = peer->id,
				.location = peer->location,
				.seed = peer->seed,
				.complete = peer->complete,
				.quiet = i != 0,
				.pieces = peer->pieces,
				.slots = peer->slots,
				.uploads = peer->uploads,
			};

			for (int j = 0; j < peer->parent_count; j++)
				spec.parents[j] = ref[peer->parents[j]].id;
			cr_assert_eq(announce_at(1, 0, spec), 0);
		}
		ref_expected(expected, sizeof(expected));
		cr_assert_str_eq(ids(&last), expected, "round %d, %d peers", round, ref_count);
		cr_assert_eq(last.back_to_source, expected[0] == '\0');
	}
}

/*
 * Random announcements over time, as daemons make them: each peer keeps
 * every parent it was ever named (its parents_in_use), pieces grow, some
 * complete, some report a parent failed. Every answer names at most one
 * downloading non-seed parent, one that came before the child; the graph
 * of the parents kept among downloading peers never has a cycle.
 */
#define SEQ_PEERS 12

static int seq_index(const char *id)
{
	return id[0] == 'q' ? atoi(id + 1) : -1;
}

static bool seq_cycle_from(bool kept[SEQ_PEERS][SEQ_PEERS], const bool *done, int from,
			   int at, int depth)
{
	if (depth > SEQ_PEERS)
		return true;
	for (int k = 0; k < SEQ_PEERS; k++) {
		if (!kept[at][k] || done[k])
			continue;
		if (k == from || seq_cycle_from(kept, done, from, k, depth + 1))
			return true;
	}
	return false;
}

Test(sched, announcements_over_time_keep_one_upstream_and_no_cycle)
{
	for (int round = 0; round < 200; round++) {
		static const char *const locations[] = { "", "z1", "z2" };
		bool kept[SEQ_PEERS][SEQ_PEERS] = { { false } }, done[SEQ_PEERS] = { false };
		uint32_t pieces[SEQ_PEERS] = { 0 };
		int joined[SEQ_PEERS], joins = 0;
		char names[SEQ_PEERS][8];

		make_state(0, 0, 0);
		ANNOUNCE(1, 0, .id = "seed", .seed = true, .quiet = true);
		for (int i = 0; i < SEQ_PEERS; i++) {
			snprintf(names[i], sizeof(names[i]), "q%d", i);
			joined[i] = -1;
		}
		for (int step = 0; step < 120; step++) {
			int i = (int)rnd(SEQ_PEERS), downloading = 0;
			struct peer spec = { .id = names[i], .location = locations[i % 3] };
			unsigned used = 0;
			char address[32], failed[32];

			if (joined[i] < 0)
				joined[i] = joins++;
			snprintf(address, sizeof(address), "10.0.0.2:%d", 2000 + i);
			spec.address = address;
			if (!done[i] && rnd(3) == 0)
				pieces[i] += 1 + rnd(3);
			if (pieces[i] >= 10)
				done[i] = true;
			spec.complete = done[i];
			spec.pieces = pieces[i];
			for (int k = 0; k < SEQ_PEERS && used < 4; k++)
				if (kept[i][k])
					spec.parents[used++] = names[k];
			if (rnd(8) == 0) {
				int k = (int)rnd(SEQ_PEERS);

				snprintf(failed, sizeof(failed), "10.0.0.2:%d", 2000 + k);
				spec.failed[0] = failed;
			}
			cr_assert_eq(announce_at(1, (uint64_t)step * 300u, spec), 0);
			for (unsigned p = 0; p < last.parent_count; p++) {
				int k = seq_index(last.parents[p].peer_id);

				cr_assert_neq(k, i, "round %d step %d: itself", round, step);
				if (k < 0 || last.parents[p].complete)
					continue;
				downloading++;
				cr_assert_lt(joined[k], joined[i],
					     "round %d step %d: %s got %s, which came after it", round,
					     step, names[i], names[k]);
				kept[i][k] = true;
			}
			cr_assert_leq(downloading, 1, "round %d step %d: %s got %s", round, step,
				      names[i], ids(&last));
			for (int k = 0; k < SEQ_PEERS; k++)
				cr_assert_not(!done[k] && seq_cycle_from(kept, done, k, k, 0),
					      "round %d step %d: a cycle through %s", round, step,
					      names[k]);
		}
	}
}

/* --- seeds for preheat. */

static int registrations[16]; /* their addresses are the handles */

/* A seed's registration: the all-zero task, seed, peer id = address. */
static void register_seed(uint64_t now_ms, const char *address, void *registration)
{
	static const uint8_t zero[SCHED_TASK_ID_SIZE];
	struct sched_announce announce = {
		.task_id = zero,
		.peer_id = address,
		.address = address,
		.seed = true,
		.upload_slots = 1024,
		.registration = registration,
	};

	cr_assert_eq(sched_announce(state, &announce, now_ms, &last), 0);
}

/* The picks' addresses as "a,b,...". */
static const char *pick_text(const struct sched_seed_pick *picks, unsigned count)
{
	static char text[SCHED_SEEDS_MAX * (SCHED_ADDRESS_MAX + 1) + 1];
	size_t used = 0;

	text[0] = '\0';
	for (unsigned i = 0; i < count; i++)
		used += (size_t)snprintf(text + used, sizeof(text) - used, "%s%s", i ? "," : "",
					 picks[i].address);
	return text;
}

static const char *pick(unsigned task_n, unsigned max)
{
	struct sched_seed_pick picks[SCHED_SEEDS_MAX];
	unsigned count;

	cr_assert_leq(max, SCHED_SEEDS_MAX);
	count = sched_pick_seeds(state, task(task_n), picks, max);
	cr_assert_leq(count, max);
	return pick_text(picks, count);
}

/* The weight the daemons give a scheduler (daemon/schedclient.c), written
 * out again here: sha256 of the address, "|", the task id. */
static void ref_weight(const char *address, const uint8_t *task_id, uint8_t out[32])
{
	struct hash_sha256 *h = hash_sha256_new();

	cr_assert_not_null(h);
	hash_sha256_update(h, address, strlen(address));
	hash_sha256_update(h, "|", 1);
	hash_sha256_update(h, task_id, SCHED_TASK_ID_SIZE);
	hash_sha256_final(h, out);
	hash_sha256_free(h);
}

/* addresses[count] sorted highest weight first, as "a,b,...". */
static const char *ref_order(const char *const *addresses, unsigned count, const uint8_t *task_id)
{
	const char *order[16];
	uint8_t weights[16][32];
	static char text[16 * 64];
	size_t used = 0;

	cr_assert_leq(count, 16u);
	for (unsigned i = 0; i < count; i++) {
		unsigned at = i;
		uint8_t weight[32];

		ref_weight(addresses[i], task_id, weight);
		while (at > 0 && memcmp(weights[at - 1], weight, 32) < 0) {
			order[at] = order[at - 1];
			memcpy(weights[at], weights[at - 1], 32);
			at--;
		}
		order[at] = addresses[i];
		memcpy(weights[at], weight, 32);
	}
	text[0] = '\0';
	for (unsigned i = 0; i < count; i++)
		used += (size_t)snprintf(text + used, sizeof(text) - used, "%s%s", i ? "," : "",
					 order[i]);
	return text;
}

static const char *const seed_addresses[] = {
	"10.0.1.1:7000", "10.0.1.2:7000", "10.0.1.3:7000",  "10.0.1.4:7000",
	"10.0.1.5:7000", "10.0.1.6:7000", "[fd00::7]:7000", "10.0.1.8:7001",
};
#define SEED_COUNT (sizeof(seed_addresses) / sizeof(seed_addresses[0]))

Test(sched, preheat_seeds_in_rendezvous_order)
{
	struct sched_seed_pick picks[SEED_COUNT];
	char prefix[SEED_COUNT * 64];
	unsigned firsts = 0;

	for (unsigned i = 0; i < SEED_COUNT; i++)
		register_seed(0, seed_addresses[i], &registrations[i]);
	for (unsigned n = 1; n < 40; n++) {
		const char *expected = ref_order(seed_addresses, SEED_COUNT, task(n));
		unsigned count = sched_pick_seeds(state, task(n), picks, SEED_COUNT);

		cr_assert_eq(count, SEED_COUNT);
		cr_assert_str_eq(pick_text(picks, count), expected, "task %u", n);
		for (unsigned i = 0; i < count; i++) {
			unsigned index = (unsigned)((int *)picks[i].registration - registrations);
			uint8_t weight[32];

			cr_assert_lt(index, SEED_COUNT);
			cr_assert_str_eq(picks[i].address, seed_addresses[index]);
			cr_assert_str_eq(picks[i].peer_id, seed_addresses[index]);
			ref_weight(picks[i].address, task(n), weight);
			cr_assert_arr_eq(picks[i].weight, weight, 32);
		}
		/* Fewer wanted: the best ones, in the same order. */
		snprintf(prefix, sizeof(prefix), "%s,%s", picks[0].address, picks[1].address);
		cr_assert_str_eq(pick(n, 2), prefix);
		cr_assert_str_eq(pick(n, 1), picks[0].address);
		cr_assert_str_eq(pick(n, 0), "");
		firsts |= 1u << ((int *)picks[0].registration - registrations);
	}
	/* The tasks spread over the seeds. */
	cr_assert_geq(__builtin_popcount(firsts), 4, "first picks %#x", firsts);
}

Test(sched, preheat_only_seeds_with_an_open_registration)
{
	char before[SEED_COUNT * 64];

	cr_assert_str_eq(pick(1, 2), "");
	/* Peers that are not seeds, seeds without a peer port or a registration:
	 * none to ask. */
	ANNOUNCE(1, 0, .id = "plain", .address = "10.0.2.1:7000", .complete = true,
		 .registration = &registrations[9]);
	ANNOUNCE(1, 0, .id = "portless", .address = "", .seed = true,
		 .registration = &registrations[10]);
	register_seed(0, "10.0.2.2:7000", NULL);
	cr_assert_eq(sched_seed_count(state), 1);
	cr_assert_str_eq(pick(1, 2), "");

	for (unsigned i = 0; i < 4; i++)
		register_seed(0, seed_addresses[i], &registrations[i]);
	snprintf(before, sizeof(before), "%s", pick(1, 4));
	cr_assert_str_eq(before, ref_order(seed_addresses, 4, task(1)));

	/* The first one's connection closes: the others keep their order. */
	{
		struct sched_seed_pick first;

		cr_assert_eq(sched_pick_seeds(state, task(1), &first, 1), 1);
		cr_assert_eq(sched_forget_registration(state, first.registration), 1);
		cr_assert_eq(sched_forget_registration(state, first.registration), 0);
		cr_assert_str_eq(pick(1, 4), strchr(before, ',') + 1);
		cr_assert_eq(sched_seed_count(state), 5); /* still a seed for parents */
		/* It registers again on another connection: back in its place. */
		register_seed(10, first.peer_id, &registrations[12]);
		cr_assert_str_eq(pick(1, 4), before);
		cr_assert_eq(sched_forget_registration(state, first.registration), 0);
		cr_assert_eq(sched_forget_registration(state, &registrations[12]), 1);
		register_seed(10, first.peer_id, first.registration);
	}
	/* Announcing a task as a seed updates the registration too (the last
	 * connection it announced on), and forgetting an unrelated one changes
	 * nothing. */
	ANNOUNCE(2, 20, .id = seed_addresses[0], .address = seed_addresses[0], .seed = true,
		 .registration = &registrations[13]);
	cr_assert_eq(sched_forget_registration(state, &registrations[0]), 0);
	cr_assert_eq(sched_forget_registration(state, &registrations[14]), 0);
	cr_assert_eq(sched_forget_registration(state, NULL), 0);
	cr_assert_str_eq(pick(1, 4), before);
	cr_assert_eq(sched_forget_registration(state, &registrations[13]), 1);
	cr_assert_eq(strstr(pick(1, 4), seed_addresses[0]), NULL);
}

Test(sched, preheat_forgets_seeds_that_go)
{
	make_state(0, 0, 1000);
	register_seed(0, seed_addresses[0], &registrations[0]);
	register_seed(0, seed_addresses[1], &registrations[1]);
	register_seed(500, seed_addresses[2], &registrations[2]);
	register_seed(500, seed_addresses[3], &registrations[3]);
	cr_assert_str_eq(pick(1, 8), ref_order(seed_addresses, 4, task(1)));

	/* Expired. */
	sched_expire(state, 1000);
	cr_assert_str_eq(pick(1, 8), ref_order(seed_addresses + 2, 2, task(1)));
	/* Left one task: still a seed host. Left every task: gone. */
	ANNOUNCE(1, 600, .id = seed_addresses[2], .address = seed_addresses[2], .seed = true,
		 .registration = &registrations[2]);
	cr_assert_eq(sched_leave(state, task(1), seed_addresses[2]), 1);
	cr_assert_str_eq(pick(1, 8), ref_order(seed_addresses + 2, 2, task(1)));
	sched_leave(state, NULL, seed_addresses[2]);
	cr_assert_str_eq(pick(1, 8), seed_addresses[3]);
	/* No longer a seed. */
	ANNOUNCE(1, 700, .id = seed_addresses[3], .address = seed_addresses[3], .quiet = true,
		 .registration = &registrations[3]);
	cr_assert_str_eq(pick(1, 8), "");
	cr_assert_eq(sched_forget_registration(state, &registrations[3]), 0);
}

Test(sched, preheat_past_the_seed_limit_the_least_recently_seen_goes)
{
	char address[SCHED_ADDRESS_MAX + 1];

	for (unsigned i = 0; i < SCHED_SEEDS_MAX; i++) {
		snprintf(address, sizeof(address), "10.1.%u.%u:7000", i / 250, i % 250);
		register_seed(i, address, i == 0 ? &registrations[0] : &registrations[1]);
	}
	cr_assert_eq(sched_seed_count(state), SCHED_SEEDS_MAX);
	cr_assert_eq(sched_forget_registration(state, &registrations[0]), 1);
	register_seed(0, "10.1.0.0:7000", &registrations[0]);
	/* A new seed replaces the least recently seen (10.1.0.1, seen at 1),
	 * registration and all. */
	register_seed(SCHED_SEEDS_MAX, "10.2.0.0:7000", &registrations[2]);
	cr_assert_eq(sched_seed_count(state), SCHED_SEEDS_MAX);
	cr_assert_eq(sched_forget_registration(state, &registrations[1]), SCHED_SEEDS_MAX - 2);
	{
		static const char *const left[] = { "10.1.0.0:7000", "10.2.0.0:7000" };

		cr_assert_str_eq(pick(1, SCHED_SEEDS_MAX), ref_order(left, 2, task(1)));
	}
	cr_assert_eq(sched_forget_registration(state, &registrations[2]), 1);
	cr_assert_str_eq(pick(1, 8), "10.1.0.0:7000");
}
