/* swarm: benchmark P7, the scheduler's parent decisions for a simulated swarm, in process. */
/*
 * ringfly-bench-swarm [--peers N] [--tasks N] [--zipf S] [--seed-pct P] [--complete-pct P]
 *                     [--zones N] [--racks N] [--parents-in-use N] [--decisions N]
 *                     [--seconds S] [--ref-decisions N] [--block N] [--max-peers N]
 *                     [--rng-seed N]
 *
 * No network, no daemon: one thread drives scheduler/state.h (the library
 * ringfly-scheduler runs, linked with the same allocator) with the
 * announcements a swarm would send, and times every call.
 *
 * The swarm (deterministic for a given --rng-seed):
 *   - --peers virtual peers (10000), each known by its address
 *     "10.a.b.c:65002" (peer id = address, as the daemon does), each in one of
 *     --zones x --racks location labels "zone-Z|rack-R" (3 x 4), uniformly;
 *   - --tasks tasks (1000), 64 to 1024 pieces of 4 MiB each. Every task gets
 *     one peer, the others go to task k (k = 1, 2, ...) with probability
 *     proportional to 1 / k^S (Zipf-like popularity, --zipf 1.0; 0 = uniform);
 *   - --seed-pct of the peers (1 %) are seeds: complete on their task, and
 *     registered as seed hosts with the all-zero task id as the daemon's seed
 *     role does (1024 upload slots); --complete-pct (20 %) of the others are
 *     complete; the rest are downloading, pieces_done uniform in [0, count);
 *     256 upload slots, 0 to 32 in use.
 *
 * Warm-up: every peer announces its task once (the downloaders with
 * want_parents), in random order, seeds their registration too; the time
 * advances 1 s over the warm-up. RSS (VmRSS) is read before the state is
 * created and after the warm-up: their difference over --peers is the memory
 * per peer (the benchmark's own arrays are allocated and touched before).
 * Max RSS is the process's VmHWM at the end: the state, the benchmark's own
 * arrays (rss_before_kib) and the latency and answer records (12 bytes per
 * decision, twice).
 *
 * Measured phase, --decisions calls (300000), or up to the first block
 * boundary past --seconds (at most --decisions if given too). Each call:
 * a downloader picked uniformly at random (so a task's share follows its
 * popularity) announces its task with want_parents, pieces_done grown by 1 to
 * 8 (a download that would complete starts over at 0, so every call is a
 * parent decision), 0 to 32 uploads, and as parents_in_use the first
 * --parents-in-use (8) parents of its previous answer (the daemon reports
 * every parent it fetches from). Simulated time advances so that every
 * downloader announces about once a second. clock_gettime(CLOCK_MONOTONIC)
 * around each sched_announce() gives its latency; decisions per second is
 * calls / the sum of those latencies. Printed beside it: the loop's own rate
 * (with the driver's bookkeeping) and decisions per CPU-second (the loop's
 * CLOCK_THREAD_CPUTIME_ID: what the work costs when other processes share the
 * core and stretch the wall clock). sched_expire() is not called: expiry
 * costs per expired entry, not per decision.
 *
 * Every answer is checked: sched_announce returned 0, at least one parent or
 * back_to_source, never the asking peer, no parent twice. Exit status 1 if
 * any check failed.
 *
 * The reference: the plain way to make the same decision. The same sequence
 * of (peer, pieces_done, uploads), from the same starting point, on the
 * benchmark's own flat arrays: the peer's record updated in place (an
 * index, no hash lookup), the complete members of its task, its upstream
 * (the downloading member that came before it in the warm-up, nearest in
 * location, then the last: state.h) and, when it has none, its seeds and
 * every seed host outside it, gathered with the same keys (complete, pieces_done, common location
 * prefix, seed, free slots, id), the whole array qsort()ed with the
 * same order, the first 8 taken (the best seed in the last place if none is
 * among them, as state.h promises). No cycle check. Its answers are compared
 * with ours: they differ only where ours excluded a parent to avoid a cycle
 * (or when there are more seeds than SCHED_SEEDS_MAX).
 * ratio = ours / reference, decisions per second (each timed the same way).
 * The two alternate in blocks of --block decisions (10000): ours makes
 * decisions i..i+block, then the reference makes the same ones, so noise from
 * a shared machine falls on both; --ref-decisions stops the reference early.
 *
 * Prints a summary on stderr and one key=value line on stdout (run.sh reads it).
 * Exit 2: bad usage or a setup failure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scheduler/state.h"

#define SWARM_PEERS_MAX	      1000000u /* ids encode index + 1 in 10.a.b.c */
#define SWARM_TASKS_MAX	      1000000u
#define SWARM_LOCATIONS_MAX   4096u
#define SWARM_ID_SIZE	      24u /* "10.255.255.255:65002" and its NUL */
#define SWARM_LOCATION_SIZE   32u
#define SWARM_URL_SIZE	      64u
#define SWARM_PORT	      65002u
#define SWARM_PIECE_LENGTH    (4ull << 20)
#define SWARM_PIECES_MIN      64u
#define SWARM_PIECES_MAX      1024u
#define SWARM_PEER_SLOTS      256u  /* the daemon's upload.max_connections */
#define SWARM_SEED_SLOTS      1024u /* ... for a seed */
#define SWARM_UPLOADS_MAX     32u
#define SWARM_STEP_MAX	      8u /* pieces one announcement adds */
#define SWARM_FAILURES_SHOWN  10u
#define SWARM_DECISIONS_CAP   100000000u
#define SWARM_DEFAULT_DECIDE  300000u
#define SWARM_DEFAULT_BLOCK   10000u
#define SWARM_STATE_MAX_PEERS 10000u /* sched_options.max_peers 0 means this */

_Static_assert(SWARM_ID_SIZE <= SCHED_ADDRESS_MAX + 1, "a peer id is its address");
_Static_assert(SWARM_ID_SIZE <= SCHED_PEER_ID_MAX + 1, "peer id within the state's limit");
_Static_assert(SWARM_LOCATION_SIZE <= SCHED_LOCATION_MAX + 1, "location within the limit");
_Static_assert(SWARM_PEERS_MAX < (1u << 24), "index + 1 must fit in 10.a.b.c");

struct swarm_options {
	unsigned peers, tasks;
	double zipf;
	double seed_pct, complete_pct;
	unsigned zones, racks;
	unsigned parents_in_use;
	uint64_t decisions;	/* 0: SWARM_DEFAULT_DECIDE, or with seconds no limit */
	double seconds;		/* 0: run exactly `decisions` */
	uint64_t ref_decisions; /* 0: as many as ours ran */
	uint64_t block;		/* decisions per turn, ours then the reference's */
	unsigned max_peers;
	uint64_t rng_seed;
};

struct swarm_peer {
	char id[SWARM_ID_SIZE]; /* its peer id and its address */
	uint32_t task;
	uint32_t pieces_done;
	uint32_t upload_slots, uploads;
	uint32_t joined; /* its place in the warm-up's order: the state's order of arrival */
	uint32_t in_use[SCHED_PARENTS_IN_USE_MAX]; /* peer indices: its parents in use */
	uint8_t in_use_count;
	uint16_t location;
	bool seed, complete;
};

struct swarm_task {
	uint8_t id[SCHED_TASK_ID_SIZE];
	char url[SWARM_URL_SIZE];
	uint32_t piece_count;
	uint32_t member_first, member_count; /* into swarm.members */
	uint32_t seed_count;		     /* seeds among its members */
};

/* The reference's candidate: the keys of sched_candidate, and the peer. */
struct ref_candidate {
	const char *id;
	uint32_t index;
	uint32_t pieces_done;
	bool complete, seed;
	unsigned location_match;
	int64_t free_slots;
};

/* One measured phase. */
struct swarm_result {
	uint64_t decisions;
	double call_s; /* sum of the calls' latencies */
	double loop_s; /* wall time of the loop */
	double cpu_s;  /* this thread's CPU time in the loop */
	uint32_t *latency_ns;
	uint64_t *answer_hash; /* per decision: the parents' ids, in order */
	uint64_t capacity;
	uint64_t back_to_source;
	uint64_t parents_total;
	uint64_t candidates_total; /* members - 1 + seed hosts outside the task */
	uint64_t failures;
	double p50_us, p99_us, max_us;
};

struct swarm {
	struct swarm_options options;
	struct swarm_peer *peers;
	struct swarm_peer *ref_peers; /* the reference's copy, from the end of the warm-up */
	struct swarm_task *tasks;
	uint32_t *members; /* peer indices, grouped by task */
	uint32_t *downloaders;
	uint32_t downloader_count;
	uint32_t *seeds;
	uint32_t seed_count, complete_count;
	char (*locations)[SWARM_LOCATION_SIZE];
	unsigned location_count;
	uint32_t largest_task;
	struct ref_candidate *ref_candidates; /* a task's members + every seed */
};

static const uint8_t swarm_zero_task[SCHED_TASK_ID_SIZE];

static void __attribute__((noreturn, format(printf, 1, 2))) swarm_die(const char *fmt, ...)
{
	va_list ap;

	fputs("ringfly-bench-swarm: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static void *swarm_calloc(size_t count, size_t size, const char *what)
{
	void *p = calloc(count ? count : 1, size);

	if (!p)
		swarm_die("out of memory for %zu %s", count, what);
	memset(p, 0, (count ? count : 1) * size); /* resident before the first RSS reading */
	return p;
}

/* --- randomness: splitmix64, deterministic for a --rng-seed. */

static uint64_t swarm_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static uint64_t swarm_random(uint64_t *state)
{
	*state += 0x9e3779b97f4a7c15ull;
	return swarm_mix(*state);
}

/* Uniform in [0, bound), bound > 0 (bias below 2^-32 for our bounds). */
static uint32_t swarm_below(uint64_t *state, uint32_t bound)
{
	assert(bound > 0);
	return (uint32_t)(((swarm_random(state) >> 32) * bound) >> 32);
}

static double swarm_unit(uint64_t *state)
{
	return (double)(swarm_random(state) >> 11) / 9007199254740992.0; /* [0, 1) */
}

/* --- clocks and memory. */

static uint64_t swarm_clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t swarm_now_ns(void)
{
	return swarm_clock_ns(CLOCK_MONOTONIC);
}

/* A "Vm...:" field of /proc/self/status in KiB. */
static uint64_t swarm_status_kib(const char *field)
{
	char line[256];
	size_t len = strlen(field);
	uint64_t kib = 0;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		swarm_die("open /proc/self/status: %s", strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, field, len) == 0) {
			kib = strtoull(line + len, NULL, 10);
			break;
		}
	}
	fclose(f);
	if (!kib)
		swarm_die("/proc/self/status: no %s line", field);
	return kib;
}

/* --- the swarm. */

static void swarm_peer_id(uint32_t index, char id[SWARM_ID_SIZE])
{
	uint32_t n = index + 1;

	snprintf(id, SWARM_ID_SIZE, "10.%u.%u.%u:%u", n >> 16, (n >> 8) & 255u, n & 255u,
		 SWARM_PORT);
}

/* The index of the peer whose id is `id`, or UINT32_MAX. */
static uint32_t swarm_peer_index(const struct swarm *swarm, const char *id)
{
	unsigned part[3] = { 0 }, port = 0;
	const char *p = id;
	uint32_t index;

	if (strncmp(p, "10.", 3) != 0)
		return UINT32_MAX;
	p += 3;
	for (unsigned i = 0; i < 3; i++) {
		for (; *p >= '0' && *p <= '9'; p++)
			part[i] = part[i] * 10u + (unsigned)(*p - '0');
		if (*p++ != (i < 2 ? '.' : ':'))
			return UINT32_MAX;
	}
	for (; *p >= '0' && *p <= '9'; p++)
		port = port * 10u + (unsigned)(*p - '0');
	index = ((part[0] << 16) | (part[1] << 8) | part[2]) - 1u;
	if (*p || port != SWARM_PORT || index >= swarm->options.peers ||
	    strcmp(swarm->peers[index].id, id) != 0)
		return UINT32_MAX;
	return index;
}

static void swarm_build(struct swarm *swarm)
{
	const struct swarm_options *o = &swarm->options;
	uint64_t rng = o->rng_seed;
	double *cdf = swarm_calloc(o->tasks, sizeof(*cdf), "task weights");
	uint32_t *order = swarm_calloc(o->peers, sizeof(*order), "peer indices");
	uint32_t *fill;
	double total = 0;
	uint32_t seeds = (uint32_t)llround(o->peers * o->seed_pct / 100.0);
	uint32_t complete;

	swarm->peers = swarm_calloc(o->peers, sizeof(*swarm->peers), "peers");
	swarm->ref_peers = swarm_calloc(o->peers, sizeof(*swarm->ref_peers), "peers");
	swarm->tasks = swarm_calloc(o->tasks, sizeof(*swarm->tasks), "tasks");
	swarm->members = swarm_calloc(o->peers, sizeof(*swarm->members), "members");
	swarm->downloaders = swarm_calloc(o->peers, sizeof(*swarm->downloaders), "downloaders");
	swarm->seeds = swarm_calloc(o->peers, sizeof(*swarm->seeds), "seeds");
	swarm->location_count = o->zones * o->racks;
	swarm->locations =
		swarm_calloc(swarm->location_count, sizeof(*swarm->locations), "locations");
	swarm->ref_candidates =
		swarm_calloc(o->peers + 1u, sizeof(*swarm->ref_candidates), "candidates");

	for (unsigned l = 0; l < swarm->location_count; l++)
		snprintf(swarm->locations[l], SWARM_LOCATION_SIZE, "zone-%u|rack-%u", l / o->racks,
			 l % o->racks);
	for (uint32_t t = 0; t < o->tasks; t++) {
		struct swarm_task *task = &swarm->tasks[t];

		for (unsigned w = 0; w < SCHED_TASK_ID_SIZE / 8; w++) {
			uint64_t word = swarm_mix(((uint64_t)t << 2 | w) + 0x5157u);

			memcpy(task->id + 8 * w, &word, 8);
		}
		task->id[0] |= 1; /* never the seeds' all-zero id */
		snprintf(task->url, sizeof(task->url), "http://origin.example/swarm/task-%u", t);
		task->piece_count = SWARM_PIECES_MIN +
				    swarm_below(&rng, SWARM_PIECES_MAX - SWARM_PIECES_MIN + 1);
		total += o->zipf > 0 ? pow(t + 1.0, -o->zipf) : 1.0;
		cdf[t] = total;
	}

	/* One peer per task, the rest by popularity. */
	for (uint32_t i = 0; i < o->peers; i++) {
		struct swarm_peer *peer = &swarm->peers[i];
		uint32_t task = i;

		if (i >= o->tasks) {
			double x = swarm_unit(&rng) * total;
			uint32_t low = 0, high = o->tasks - 1;

			while (low < high) { /* the first t with cdf[t] > x */
				uint32_t mid = low + (high - low) / 2;

				if (cdf[mid] > x)
					high = mid;
				else
					low = mid + 1;
			}
			task = low;
		}
		swarm_peer_id(i, peer->id);
		peer->task = task;
		peer->location = (uint16_t)swarm_below(&rng, swarm->location_count);
		swarm->tasks[task].member_count++;
		order[i] = i;
	}
	for (uint32_t t = 0, first = 0; t < o->tasks; t++) {
		swarm->tasks[t].member_first = first;
		first += swarm->tasks[t].member_count;
		if (swarm->tasks[t].member_count > swarm->largest_task)
			swarm->largest_task = swarm->tasks[t].member_count;
	}
	fill = swarm_calloc(o->tasks, sizeof(*fill), "task fill");
	for (uint32_t i = 0; i < o->peers; i++) {
		struct swarm_task *task = &swarm->tasks[swarm->peers[i].task];

		swarm->members[task->member_first + fill[swarm->peers[i].task]++] = i;
	}

	/* Roles: a random permutation, seeds first, then complete peers. */
	for (uint32_t i = o->peers - 1; i > 0; i--) {
		uint32_t j = swarm_below(&rng, i + 1), swap = order[i];

		order[i] = order[j];
		order[j] = swap;
	}
	complete = (uint32_t)llround((o->peers - seeds) * o->complete_pct / 100.0);
	for (uint32_t k = 0; k < o->peers; k++) {
		struct swarm_peer *peer = &swarm->peers[order[k]];
		struct swarm_task *task = &swarm->tasks[peer->task];

		peer->seed = k < seeds;
		peer->complete = k < seeds + complete;
		peer->upload_slots = peer->seed ? SWARM_SEED_SLOTS : SWARM_PEER_SLOTS;
		peer->uploads = swarm_below(&rng, SWARM_UPLOADS_MAX + 1);
		if (peer->complete)
			peer->pieces_done = task->piece_count;
		else
			peer->pieces_done = swarm_below(&rng, task->piece_count);
		if (peer->seed) {
			swarm->seeds[swarm->seed_count++] = order[k];
			task->seed_count++;
		} else if (peer->complete) {
			swarm->complete_count++;
		} else {
			swarm->downloaders[swarm->downloader_count++] = order[k];
		}
	}
	if (!swarm->downloader_count)
		swarm_die("no downloading peer: lower --seed-pct or --complete-pct");
	free(fill);
	free(order);
	free(cdf);
}

/* --- ours: sched_announce. */

static void swarm_fill_announce(const struct swarm *swarm, const struct swarm_peer *peer,
				const char **in_use, struct sched_announce *a)
{
	const struct swarm_task *task = &swarm->tasks[peer->task];

	memset(a, 0, sizeof(*a));
	a->task_id = task->id;
	a->url = task->url;
	a->peer_id = peer->id;
	a->address = peer->id;
	a->location = swarm->locations[peer->location];
	a->seed = peer->seed;
	a->complete = peer->complete;
	a->want_parents = !peer->complete;
	a->upload_slots = peer->upload_slots;
	a->uploads = peer->uploads;
	a->content_length = task->piece_count * SWARM_PIECE_LENGTH;
	a->piece_length = SWARM_PIECE_LENGTH;
	a->piece_count = task->piece_count;
	a->pieces_done = peer->pieces_done;
	for (unsigned i = 0; i < peer->in_use_count; i++)
		in_use[i] = swarm->peers[peer->in_use[i]].id;
	a->parents_in_use = in_use;
	a->parents_in_use_count = peer->in_use_count;
}

static uint64_t swarm_hash_add(uint64_t hash, const char *text)
{
	for (; *text; text++) {
		hash ^= (uint8_t)*text;
		hash *= 0x100000001b3ull;
	}
	hash ^= '\n';
	return hash * 0x100000001b3ull;
}

static void __attribute__((format(printf, 3, 4)))
swarm_failure(struct swarm_result *result, const struct swarm_peer *child, const char *fmt, ...)
{
	va_list ap;

	if (result->failures++ >= SWARM_FAILURES_SHOWN)
		return;
	fprintf(stderr, "ringfly-bench-swarm: check failed, decision %llu, peer %s: ",
		(unsigned long long)result->decisions, child->id);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* Checks one answer of ours, records its parents as the peer's parents in
 * use, returns the hash of its parents' ids. */
static uint64_t swarm_take_answer(struct swarm *swarm, struct swarm_peer *child, int rc,
				  const struct sched_answer *answer, struct swarm_result *result)
{
	uint64_t hash = 0xcbf29ce484222325ull;
	uint32_t index[SCHED_PARENTS_MAX];

	if (rc != 0) {
		swarm_failure(result, child, "sched_announce returned %d (%s)", rc, answer->reason);
		return 0;
	}
	if (child->complete) {
		if (answer->parent_count || answer->back_to_source)
			swarm_failure(result, child,
				      "a complete peer got parents or back_to_source");
		return hash;
	}
	if (answer->parent_count == 0 && !answer->back_to_source)
		swarm_failure(result, child, "no parent and no back_to_source");
	if (answer->parent_count > SCHED_PARENTS_MAX)
		swarm_failure(result, child, "%u parents", answer->parent_count);
	result->back_to_source += answer->back_to_source;
	child->in_use_count = 0;
	for (unsigned i = 0; i < answer->parent_count && i < SCHED_PARENTS_MAX; i++) {
		const char *id = answer->parents[i].peer_id;

		if (strcmp(id, child->id) == 0 ||
		    strcmp(answer->parents[i].address, child->id) == 0)
			swarm_failure(result, child, "the asking peer is its own parent %u", i);
		index[i] = swarm_peer_index(swarm, id);
		if (index[i] == UINT32_MAX) {
			swarm_failure(result, child, "parent %u is no peer: \"%s\"", i, id);
			continue;
		}
		for (unsigned j = 0; j < i; j++)
			if (index[j] == index[i])
				swarm_failure(result, child, "parent %s twice", id);
		if (child->in_use_count < swarm->options.parents_in_use)
			child->in_use[child->in_use_count++] = index[i];
		hash = swarm_hash_add(hash, id);
	}
	result->parents_total += answer->parent_count;
	return hash ^ answer->back_to_source;
}

static void swarm_warm_up(struct swarm *swarm, struct sched_state *state, double *seconds)
{
	const struct swarm_options *o = &swarm->options;
	uint32_t *order = swarm_calloc(o->peers, sizeof(*order), "warm-up order");
	uint64_t rng = swarm_mix(o->rng_seed ^ 0x77a3u);
	struct swarm_result result = { 0 };
	const char *in_use[SCHED_PARENTS_IN_USE_MAX];
	struct sched_announce a;
	struct sched_answer answer;
	uint32_t max_peers = o->max_peers ? o->max_peers : SWARM_STATE_MAX_PEERS;
	uint32_t expect_peers = 0;
	uint32_t expect_seeds =
		swarm->seed_count < SCHED_SEEDS_MAX ? swarm->seed_count : SCHED_SEEDS_MAX;
	uint64_t start_ns;

	for (uint32_t i = 0; i < o->peers; i++)
		order[i] = i;
	for (uint32_t i = o->peers - 1; i > 0; i--) {
		uint32_t j = swarm_below(&rng, i + 1), swap = order[i];

		order[i] = order[j];
		order[j] = swap;
	}
	start_ns = swarm_now_ns();
	for (uint32_t i = 0; i < o->peers; i++) {
		struct swarm_peer *peer = &swarm->peers[order[i]];
		uint64_t now_ms = 1 + (uint64_t)i * 1000u / o->peers;
		int rc;

		peer->joined = i + 1;
		swarm_fill_announce(swarm, peer, in_use, &a);
		rc = sched_announce(state, &a, now_ms, &answer);
		swarm_take_answer(swarm, peer, rc, &answer, &result);
		if (!peer->seed)
			continue;
		/* The seed role's registration: all-zero task, no parents wanted. */
		memset(&a, 0, sizeof(a));
		a.task_id = swarm_zero_task;
		a.url = "";
		a.peer_id = peer->id;
		a.address = peer->id;
		a.location = swarm->locations[peer->location];
		a.seed = true;
		a.upload_slots = peer->upload_slots;
		a.uploads = peer->uploads;
		rc = sched_announce(state, &a, now_ms, &answer);
		if (rc != 0 || answer.parent_count || answer.back_to_source)
			swarm_failure(&result, peer, "seed registration: rc %d, %u parents", rc,
				      answer.parent_count);
	}
	*seconds = (double)(swarm_now_ns() - start_ns) / 1e9;
	free(order);
	if (result.failures)
		swarm_die("%llu checks failed during the warm-up",
			  (unsigned long long)result.failures);
	/* Each task keeps at most max_peers (the least recently seen go). */
	for (uint32_t t = 0; t < o->tasks; t++)
		expect_peers += swarm->tasks[t].member_count < max_peers ?
					swarm->tasks[t].member_count :
					max_peers;
	expect_peers += swarm->seed_count < max_peers ? swarm->seed_count : max_peers;
	if (sched_peer_count(state) != expect_peers ||
	    sched_task_count(state) != o->tasks + (swarm->seed_count > 0) ||
	    sched_seed_count(state) != expect_seeds)
		swarm_die("after the warm-up the state holds %u peer entries, %u tasks, %u seed "
			  "hosts; expected %u, %u, %u",
			  sched_peer_count(state), sched_task_count(state), sched_seed_count(state),
			  expect_peers, o->tasks + (swarm->seed_count > 0), expect_seeds);
}

/* One step of a downloader, in `peers` (ours' or the reference's copy): the
 * draws are the same whoever decides, so both see the same sequence. */
static struct swarm_peer *swarm_step(const struct swarm *swarm, struct swarm_peer *peers,
				     uint64_t *rng, uint32_t *pieces_done, uint32_t *uploads)
{
	struct swarm_peer *peer =
		&peers[swarm->downloaders[swarm_below(rng, swarm->downloader_count)]];
	uint32_t piece_count = swarm->tasks[peer->task].piece_count;

	assert(!peer->complete && peer->pieces_done < piece_count);
	*pieces_done = peer->pieces_done + 1 + swarm_below(rng, SWARM_STEP_MAX);
	if (*pieces_done >= piece_count)
		*pieces_done = 0; /* would complete: a new download of the same task */
	*uploads = swarm_below(rng, SWARM_UPLOADS_MAX + 1);
	return peer;
}

static void swarm_result_reserve(struct swarm_result *result, uint64_t need)
{
	uint64_t capacity = result->capacity ? result->capacity : 65536u;
	void *latency, *hashes;

	if (need <= result->capacity)
		return;
	while (capacity < need)
		capacity *= 2;
	latency = realloc(result->latency_ns, capacity * sizeof(*result->latency_ns));
	if (!latency)
		swarm_die("out of memory for %llu latencies", (unsigned long long)capacity);
	result->latency_ns = latency;
	hashes = realloc(result->answer_hash, capacity * sizeof(*result->answer_hash));
	if (!hashes)
		swarm_die("out of memory for %llu answers", (unsigned long long)capacity);
	result->answer_hash = hashes;
	result->capacity = capacity;
}

/* Ours: `count` decisions from result->decisions on. */
static void swarm_ours_block(struct swarm *swarm, struct sched_state *state, uint64_t *rng,
			     uint64_t count, struct swarm_result *result)
{
	const char *in_use[SCHED_PARENTS_IN_USE_MAX];
	uint64_t start_ns = swarm_now_ns(), call_ns = 0;
	uint64_t cpu_ns = swarm_clock_ns(CLOCK_THREAD_CPUTIME_ID);
	struct sched_announce a;
	struct sched_answer answer;

	swarm_result_reserve(result, result->decisions + count);
	for (uint64_t end = result->decisions + count; result->decisions < end;) {
		uint64_t i = result->decisions, now_ms = 1001 + i * 1000u / swarm->downloader_count;
		uint32_t pieces_done, uploads;
		struct swarm_peer *peer =
			swarm_step(swarm, swarm->peers, rng, &pieces_done, &uploads);
		const struct swarm_task *task = &swarm->tasks[peer->task];
		uint64_t t0, t1;
		int rc;

		if (pieces_done < peer->pieces_done)
			peer->in_use_count = 0; /* started over: no parents yet */
		peer->pieces_done = pieces_done;
		peer->uploads = uploads;
		swarm_fill_announce(swarm, peer, in_use, &a);
		assert(a.want_parents);
		t0 = swarm_now_ns();
		rc = sched_announce(state, &a, now_ms, &answer);
		t1 = swarm_now_ns();
		result->latency_ns[i] = (uint32_t)(t1 - t0 < UINT32_MAX ? t1 - t0 : UINT32_MAX);
		call_ns += t1 - t0;
		result->answer_hash[i] = swarm_take_answer(swarm, peer, rc, &answer, result);
		result->candidates_total +=
			task->member_count - 1u + swarm->seed_count - task->seed_count;
		result->decisions++;
	}
	result->loop_s += (double)(swarm_now_ns() - start_ns) / 1e9;
	result->cpu_s += (double)(swarm_clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_ns) / 1e9;
	result->call_s += (double)call_ns / 1e9;
}

/* --- the reference: a full qsort of the candidates by the same keys. */

static unsigned ref_location_match(const char *a, const char *b)
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

static int ref_compare(const void *left, const void *right)
{
	const struct ref_candidate *a = left, *b = right;

	if (a->complete != b->complete)
		return a->complete ? -1 : 1;
	if (!a->complete && a->pieces_done != b->pieces_done)
		return a->pieces_done > b->pieces_done ? -1 : 1;
	if (a->location_match != b->location_match)
		return a->location_match > b->location_match ? -1 : 1;
	if (a->seed != b->seed)
		return a->seed ? 1 : -1;
	if (a->free_slots != b->free_slots)
		return a->free_slots > b->free_slots ? -1 : 1;
	return strcmp(a->id, b->id);
}

/* The reference's decision for peer `child_index` of swarm->ref_peers:
 * parents' indices into parents[], returns how many (0 = back to source). */
static unsigned ref_decide(struct swarm *swarm, uint32_t child_index, uint32_t pieces_done,
			   uint32_t uploads, uint32_t parents[SCHED_PARENTS_MAX])
{
	struct swarm_peer *child = &swarm->ref_peers[child_index];
	const struct swarm_task *task = &swarm->tasks[child->task];
	const char *location = swarm->locations[child->location];
	struct ref_candidate *c = swarm->ref_candidates;
	unsigned chosen = 0, upstream_match = 0;
	uint32_t upstream = UINT32_MAX;
	bool have_seed = false;
	size_t count = 0;

	child->pieces_done = pieces_done;
	child->uploads = uploads;
	/* Its upstream: the downloading peer that came before it, nearest in
	 * location, then the last to come (no failures here). */
	for (uint32_t k = 0; !child->seed && k < task->member_count; k++) {
		uint32_t index = swarm->members[task->member_first + k];
		const struct swarm_peer *peer = &swarm->ref_peers[index];
		unsigned match;

		if (index == child_index || peer->complete || peer->seed ||
		    peer->joined > child->joined)
			continue;
		match = ref_location_match(location, swarm->locations[peer->location]);
		if (upstream == UINT32_MAX || match > upstream_match ||
		    (match == upstream_match && peer->joined > swarm->ref_peers[upstream].joined)) {
			upstream = index;
			upstream_match = match;
		}
	}
	for (uint32_t k = 0; k < task->member_count; k++) {
		uint32_t index = swarm->members[task->member_first + k];
		const struct swarm_peer *peer = &swarm->ref_peers[index];

		if (index == child_index)
			continue;
		if (!child->seed && !peer->complete && !peer->seed && index != upstream)
			continue;
		/* Seeds still downloading: for the head of the chain only (the
		 * simulated peers progress at every announcement, never stall). */
		if (!child->seed && !peer->complete && peer->seed && upstream != UINT32_MAX)
			continue;
		if (child->seed && !peer->complete && peer->pieces_done <= child->pieces_done)
			continue;
		c[count++] = (struct ref_candidate){
			.id = peer->id,
			.index = index,
			.pieces_done = peer->pieces_done,
			.complete = peer->complete,
			.seed = peer->seed,
			.location_match =
				ref_location_match(location, swarm->locations[peer->location]),
			.free_slots = (int64_t)peer->upload_slots - (int64_t)peer->uploads,
		};
	}
	for (uint32_t k = 0; !child->seed && upstream == UINT32_MAX && k < swarm->seed_count; k++) {
		uint32_t index = swarm->seeds[k];
		const struct swarm_peer *seed = &swarm->ref_peers[index];

		if (index == child_index || seed->task == child->task)
			continue; /* ranked above by its entry in the task */
		c[count++] = (struct ref_candidate){
			.id = seed->id,
			.index = index,
			.seed = true,
			.location_match =
				ref_location_match(location, swarm->locations[seed->location]),
			.free_slots = (int64_t)seed->upload_slots - (int64_t)seed->uploads,
		};
	}
	assert(count <= swarm->options.peers);
	qsort(c, count, sizeof(*c), ref_compare);
	for (; chosen < count && chosen < SCHED_PARENTS_MAX; chosen++) {
		parents[chosen] = c[chosen].index;
		have_seed |= c[chosen].seed;
	}
	for (size_t i = chosen; !have_seed && !child->seed && i < count; i++) {
		if (c[i].seed) { /* the best seed takes the last place */
			parents[chosen - 1] = c[i].index;
			break;
		}
	}
	return chosen;
}

/* The reference: `count` decisions from result->decisions on, the same
 * sequence as ours' (its own copy of the peers, its own copy of the draws). */
static void swarm_ref_block(struct swarm *swarm, uint64_t *rng, uint64_t count,
			    struct swarm_result *result)
{
	uint64_t start_ns = swarm_now_ns(), call_ns = 0;
	uint64_t cpu_ns = swarm_clock_ns(CLOCK_THREAD_CPUTIME_ID);
	uint32_t parents[SCHED_PARENTS_MAX];

	swarm_result_reserve(result, result->decisions + count);
	for (uint64_t end = result->decisions + count; result->decisions < end;) {
		uint64_t i = result->decisions, t0, t1, hash = 0xcbf29ce484222325ull;
		uint32_t pieces_done, uploads;
		struct swarm_peer *peer =
			swarm_step(swarm, swarm->ref_peers, rng, &pieces_done, &uploads);
		uint32_t child_index = (uint32_t)(peer - swarm->ref_peers);
		unsigned parent_count;

		t0 = swarm_now_ns();
		parent_count = ref_decide(swarm, child_index, pieces_done, uploads, parents);
		t1 = swarm_now_ns();
		result->latency_ns[i] = (uint32_t)(t1 - t0 < UINT32_MAX ? t1 - t0 : UINT32_MAX);
		call_ns += t1 - t0;
		for (unsigned k = 0; k < parent_count; k++) {
			if (parents[k] == child_index)
				swarm_failure(result, peer, "the reference chose the asking peer");
			hash = swarm_hash_add(hash, swarm->ref_peers[parents[k]].id);
		}
		result->answer_hash[i] = hash ^ (parent_count == 0);
		result->back_to_source += parent_count == 0;
		result->parents_total += parent_count;
		result->decisions++;
	}
	result->loop_s += (double)(swarm_now_ns() - start_ns) / 1e9;
	result->cpu_s += (double)(swarm_clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_ns) / 1e9;
	result->call_s += (double)call_ns / 1e9;
}

/*
 * The measured phase: blocks of --block decisions, ours then the reference on
 * the same decisions, so that both see the same noise from a shared machine.
 * Stops after --decisions, or at the first block boundary past --seconds.
 */
static void swarm_measure(struct swarm *swarm, struct sched_state *state, struct swarm_result *ours,
			  struct swarm_result *reference)
{
	const struct swarm_options *o = &swarm->options;
	uint64_t ours_rng = swarm_mix(o->rng_seed ^ 0x3e45u), ref_rng = ours_rng;
	uint64_t limit = o->decisions	? o->decisions :
			 o->seconds > 0 ? SWARM_DECISIONS_CAP :
					  SWARM_DEFAULT_DECIDE;
	uint64_t ref_limit = o->ref_decisions ? o->ref_decisions : SWARM_DECISIONS_CAP;
	uint64_t start_ns = swarm_now_ns();

	memcpy(swarm->ref_peers, swarm->peers, o->peers * sizeof(*swarm->peers));
	while (ours->decisions < limit) {
		uint64_t count =
			limit - ours->decisions < o->block ? limit - ours->decisions : o->block;
		uint64_t ref_end;

		swarm_ours_block(swarm, state, &ours_rng, count, ours);
		ref_end = ours->decisions < ref_limit ? ours->decisions : ref_limit;
		if (reference->decisions < ref_end)
			swarm_ref_block(swarm, &ref_rng, ref_end - reference->decisions, reference);
		if (o->seconds > 0 && (double)(swarm_now_ns() - start_ns) / 1e9 >= o->seconds)
			break;
	}
	assert(reference->decisions <= ours->decisions);
}

/* --- figures. */

static int swarm_compare_u32(const void *left, const void *right)
{
	uint32_t a = *(const uint32_t *)left, b = *(const uint32_t *)right;

	return (a > b) - (a < b);
}

/* Nearest-rank percentiles of the latencies (sorts them). */
static void swarm_percentiles(struct swarm_result *result)
{
	uint64_t n = result->decisions;

	if (!n)
		return;
	qsort(result->latency_ns, n, sizeof(*result->latency_ns), swarm_compare_u32);
	result->p50_us = result->latency_ns[(n * 50 + 99) / 100 - 1] / 1e3;
	result->p99_us = result->latency_ns[(n * 99 + 99) / 100 - 1] / 1e3;
	result->max_us = result->latency_ns[n - 1] / 1e3;
}

static double swarm_rate(const struct swarm_result *result)
{
	return result->call_s > 0 ? (double)result->decisions / result->call_s : 0;
}

static double swarm_cpu_rate(const struct swarm_result *result)
{
	return result->cpu_s > 0 ? (double)result->decisions / result->cpu_s : 0;
}

/* --- flags. */

static void swarm_usage(void)
{
	fprintf(stderr,
		"usage: ringfly-bench-swarm [--peers N] [--tasks N] [--zipf S] [--seed-pct P]\n"
		"                           [--complete-pct P] [--zones N] [--racks N]\n"
		"                           [--parents-in-use N] [--decisions N] [--seconds S]\n"
		"                           [--ref-decisions N] [--block N] [--max-peers N]\n"
		"                           [--rng-seed N]\n");
	exit(2);
}

static uint64_t swarm_flag_number(const char *flag, const char *text, uint64_t min, uint64_t max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || end == text || *end || text[0] == '-' || v < min || v > max)
		swarm_die("--%s: expected a whole number from %llu to %llu, got \"%s\"", flag,
			  (unsigned long long)min, (unsigned long long)max, text);
	return v;
}

static double swarm_flag_real(const char *flag, const char *text, double min, double max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(text, &end);
	if (errno || end == text || *end || !(v >= min && v <= max))
		swarm_die("--%s: expected a number from %g to %g, got \"%s\"", flag, min, max,
			  text);
	return v;
}

static void swarm_parse(int argc, char **argv, struct swarm_options *o)
{
	static const struct option longs[] = {
		{ "peers", required_argument, NULL, 'p' },
		{ "tasks", required_argument, NULL, 't' },
		{ "zipf", required_argument, NULL, 'z' },
		{ "seed-pct", required_argument, NULL, 's' },
		{ "complete-pct", required_argument, NULL, 'c' },
		{ "zones", required_argument, NULL, 'Z' },
		{ "racks", required_argument, NULL, 'R' },
		{ "parents-in-use", required_argument, NULL, 'u' },
		{ "decisions", required_argument, NULL, 'd' },
		{ "seconds", required_argument, NULL, 'S' },
		{ "ref-decisions", required_argument, NULL, 'r' },
		{ "block", required_argument, NULL, 'b' },
		{ "max-peers", required_argument, NULL, 'm' },
		{ "rng-seed", required_argument, NULL, 'g' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int opt, index;

	*o = (struct swarm_options){
		.peers = 10000,
		.tasks = 1000,
		.zipf = 1.0,
		.seed_pct = 1.0,
		.complete_pct = 20.0,
		.zones = 3,
		.racks = 4,
		.parents_in_use = SCHED_PARENTS_MAX,
		.block = SWARM_DEFAULT_BLOCK,
		.rng_seed = 1,
	};
	while ((opt = getopt_long(argc, argv, "", longs, &index)) != -1) {
		const char *name = opt == '?' || opt == 'h' ? "" : longs[index].name;

		switch (opt) {
		case 'p':
			o->peers = (unsigned)swarm_flag_number(name, optarg, 2, SWARM_PEERS_MAX);
			break;
		case 't':
			o->tasks = (unsigned)swarm_flag_number(name, optarg, 1, SWARM_TASKS_MAX);
			break;
		case 'z':
			o->zipf = swarm_flag_real(name, optarg, 0, 10);
			break;
		case 's':
			o->seed_pct = swarm_flag_real(name, optarg, 0, 100);
			break;
		case 'c':
			o->complete_pct = swarm_flag_real(name, optarg, 0, 100);
			break;
		case 'Z':
			o->zones = (unsigned)swarm_flag_number(name, optarg, 1, 64);
			break;
		case 'R':
			o->racks = (unsigned)swarm_flag_number(name, optarg, 1, 64);
			break;
		case 'u':
			o->parents_in_use = (unsigned)swarm_flag_number(name, optarg, 0,
									SCHED_PARENTS_IN_USE_MAX);
			break;
		case 'd':
			o->decisions = swarm_flag_number(name, optarg, 1, SWARM_DECISIONS_CAP);
			break;
		case 'S':
			o->seconds = swarm_flag_real(name, optarg, 0.001, 3600);
			break;
		case 'r':
			o->ref_decisions = swarm_flag_number(name, optarg, 1, SWARM_DECISIONS_CAP);
			break;
		case 'b':
			o->block = swarm_flag_number(name, optarg, 1, SWARM_DECISIONS_CAP);
			break;
		case 'm':
			o->max_peers =
				(unsigned)swarm_flag_number(name, optarg, 1, SWARM_PEERS_MAX);
			break;
		case 'g':
			o->rng_seed = swarm_flag_number(name, optarg, 0, UINT64_MAX);
			break;
		default:
			swarm_usage();
		}
	}
	if (optind != argc)
		swarm_usage();
	if (o->tasks > o->peers)
		swarm_die("--tasks %u is more than --peers %u: every task needs a peer", o->tasks,
			  o->peers);
	if (o->zones * o->racks > SWARM_LOCATIONS_MAX)
		swarm_die("--zones x --racks is more than %u labels", SWARM_LOCATIONS_MAX);
}

int main(int argc, char **argv)
{
	struct swarm swarm = { 0 };
	struct swarm_result ours = { 0 }, reference = { 0 };
	struct sched_options sched_options = { 0 };
	struct sched_state *state;
	uint64_t rss_before_kib, rss_after_kib, rss_measured_kib, max_rss_kib, identical = 0;
	double warm_up_s, bytes_per_peer, ratio, mean_candidates;
	int rc;

	swarm_parse(argc, argv, &swarm.options);
	swarm_build(&swarm);

	rss_before_kib = swarm_status_kib("VmRSS:");
	sched_options.max_peers = swarm.options.max_peers;
	rc = sched_state_create(&state, &sched_options);
	if (rc < 0)
		swarm_die("sched_state_create: %s", strerror(-rc));
	swarm_warm_up(&swarm, state, &warm_up_s);
	rss_after_kib = swarm_status_kib("VmRSS:");

	swarm_measure(&swarm, state, &ours, &reference);
	rss_measured_kib = swarm_status_kib("VmRSS:");
	max_rss_kib = swarm_status_kib("VmHWM:");
	for (uint64_t i = 0; i < reference.decisions; i++)
		identical += reference.answer_hash[i] == ours.answer_hash[i];

	swarm_percentiles(&ours);
	swarm_percentiles(&reference);
	bytes_per_peer = (double)(rss_after_kib - rss_before_kib) * 1024.0 / swarm.options.peers;
	ratio = swarm_rate(&reference) > 0 ? swarm_rate(&ours) / swarm_rate(&reference) : 0;
	mean_candidates = ours.decisions ? (double)ours.candidates_total / ours.decisions : 0;

	fprintf(stderr,
		"swarm: %u peers (%u seeds, %u complete, %u downloading) over %u tasks "
		"(zipf %.2f, largest %u peers), %u locations\n"
		"  warm-up: %u announcements in %.3f s; RSS %llu -> %llu KiB: %.0f bytes per peer\n"
		"  ours:      %llu decisions, %.0f per s (loop %.0f per s, %.0f per CPU-s), p50 %.2f "
		"us, p99 %.2f us, max %.1f us; %.1f candidates, %.2f parents per decision, %llu back "
		"to source\n"
		"  reference: %llu decisions, %.0f per s (loop %.0f per s, %.0f per CPU-s), p50 %.2f "
		"us, p99 %.2f us; identical answers %llu (%.2f %%)\n"
		"  ratio ours/reference %.2f; RSS after the measured phase %llu KiB, max %llu KiB; "
		"%llu failed checks\n",
		swarm.options.peers, swarm.seed_count, swarm.complete_count, swarm.downloader_count,
		swarm.options.tasks, swarm.options.zipf, swarm.largest_task, swarm.location_count,
		swarm.options.peers + swarm.seed_count, warm_up_s,
		(unsigned long long)rss_before_kib, (unsigned long long)rss_after_kib,
		bytes_per_peer, (unsigned long long)ours.decisions, swarm_rate(&ours),
		ours.decisions / ours.loop_s, swarm_cpu_rate(&ours), ours.p50_us, ours.p99_us,
		ours.max_us, mean_candidates,
		ours.decisions ? (double)ours.parents_total / ours.decisions : 0,
		(unsigned long long)ours.back_to_source, (unsigned long long)reference.decisions,
		swarm_rate(&reference),
		reference.decisions ? reference.decisions / reference.loop_s : 0,
		swarm_cpu_rate(&reference), reference.p50_us, reference.p99_us,
		(unsigned long long)identical,
		reference.decisions ? 100.0 * (double)identical / reference.decisions : 0, ratio,
		(unsigned long long)rss_measured_kib, (unsigned long long)max_rss_kib,
		(unsigned long long)(ours.failures + reference.failures));
	printf("peers=%u seeds=%u complete=%u downloading=%u tasks=%u zipf=%.2f largest_task=%u "
	       "locations=%u parents_in_use=%u warmup_s=%.3f rss_before_kib=%llu "
	       "rss_after_kib=%llu bytes_per_peer=%.0f max_rss_kib=%llu mean_candidates=%.1f "
	       "parents_per_decision=%.2f back_to_source=%llu ",
	       swarm.options.peers, swarm.seed_count, swarm.complete_count, swarm.downloader_count,
	       swarm.options.tasks, swarm.options.zipf, swarm.largest_task, swarm.location_count,
	       swarm.options.parents_in_use, warm_up_s, (unsigned long long)rss_before_kib,
	       (unsigned long long)rss_after_kib, bytes_per_peer, (unsigned long long)max_rss_kib,
	       mean_candidates, ours.decisions ? (double)ours.parents_total / ours.decisions : 0,
	       (unsigned long long)ours.back_to_source);
	printf("decisions=%llu ours_per_s=%.0f ours_loop_per_s=%.0f ours_cpu_per_s=%.0f "
	       "ours_p50_us=%.2f ours_p99_us=%.2f ours_max_us=%.1f ",
	       (unsigned long long)ours.decisions, swarm_rate(&ours), ours.decisions / ours.loop_s,
	       swarm_cpu_rate(&ours), ours.p50_us, ours.p99_us, ours.max_us);
	printf("ref_decisions=%llu ref_per_s=%.0f ref_loop_per_s=%.0f ref_cpu_per_s=%.0f "
	       "ref_p50_us=%.2f ref_p99_us=%.2f identical_pct=%.2f ratio=%.3f cpu_ratio=%.3f "
	       "failures=%llu\n",
	       (unsigned long long)reference.decisions, swarm_rate(&reference),
	       reference.decisions ? reference.decisions / reference.loop_s : 0,
	       swarm_cpu_rate(&reference), reference.p50_us, reference.p99_us,
	       reference.decisions ? 100.0 * (double)identical / reference.decisions : 0, ratio,
	       swarm_cpu_rate(&reference) > 0 ? swarm_cpu_rate(&ours) / swarm_cpu_rate(&reference) :
						0,
	       (unsigned long long)(ours.failures + reference.failures));

	sched_state_destroy(state);
	free(ours.latency_ns);
	free(ours.answer_hash);
	free(reference.latency_ns);
	free(reference.answer_hash);
	free(swarm.ref_candidates);
	free(swarm.locations);
	free(swarm.seeds);
	free(swarm.downloaders);
	free(swarm.members);
	free(swarm.tasks);
	free(swarm.ref_peers);
	free(swarm.peers);
	return (ours.failures + reference.failures) ? 1 : 0;
}
