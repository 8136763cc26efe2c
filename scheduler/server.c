/* server: ringfly-scheduler: the TCP listener, announcements, preheat, expiry, shutdown. */
#include "scheduler/server.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/loop.h"
#include "net/conn.h"
#include "net/tcp.h"
#include "rpc/frame.h"
#include "scheduler/state.h"

/*
 * One loop, one conn server on one TCP listener, one state. Every request is
 * answered from memory within its frame callback; nothing waits. The 1 s
 * timer drops the peers that stopped announcing, and reports evictions (a
 * limit reached) once per tick rather than once per peer.
 *
 * Preheat sends frames on a connection other than the one being answered:
 * the one a seed last announced on. The state keeps that conn pointer (as an
 * opaque registration of the seed host) and nothing else does. It is safe
 * because a conn's memory stays valid until handlers->closed has returned
 * (net/conn.h), and sched_closed makes the state forget the pointer there,
 * before the conn can be reused for another peer; a seed host that goes
 * (expiry, leave, eviction) takes its pointer with it. (After a second
 * signal conn_server_destroy frees open conns without closed; the state goes
 * right after, nothing reading it in between.) Between conn_close and
 * closed a conn is still valid but takes no frames: conn_send_frame says
 * -EPIPE, and the next seed in the order is asked instead.
 */

#define SCHED_EXPIRE_INTERVAL_MS 1000u
#define SCHED_STOP_POLL_MS	 5u
#define SCHED_STOP_GRACE_MS	 1000u /* for cancellations once every connection is closed */
#define SCHED_IDLE_TIMEOUT_MS	 (5u * 60u * 1000u)
#define SCHED_MESSAGE_MAX	 (64u << 10) /* AnnouncePeer's own limit (rpc/frame.c) */
#define SCHED_PARENTS_TEXT_MAX	 (SCHED_PARENTS_MAX * (SCHED_ADDRESS_MAX + 1) + 1)
#define SCHED_PREHEAT_SEEDS	 2u /* seeds asked to fetch one task */
#define SCHED_STAT_PEERS	 32u /* peers of a task listed for `ringfly stat` */
#define SCHED_PREHEAT_TRIES	 8u /* seeds tried when some connections are closing */
#define SCHED_PREHEAT_TEXT_MAX	 (SCHED_PREHEAT_SEEDS * (SCHED_ADDRESS_MAX + 1) + 1)

_Static_assert(SCHED_PREHEAT_SEEDS <= SCHED_PREHEAT_TRIES, "every seed asked was tried");

_Static_assert(SCHED_TASK_ID_SIZE == HASH_SHA256_SIZE, "task ids are sha256 digests");

struct sched_server {
	const struct sched_config *config;
	struct loop *loop;
	struct conn_server *conns;
	struct sched_state *state;
	int listen_fd;
	char address[300]; /* the bound "host:port", for health */
	uint64_t started_ms;
	unsigned evicted; /* peers evicted since the last tick */
	bool stopping;
	uint64_t stop_started_ms;
	struct loop_op expire_op;
	struct loop_op stop_op;
};

static const char *sched_signal_name(int signo)
{
	return signo == SIGINT ? "SIGINT" : signo == SIGTERM ? "SIGTERM" : "signal";
}

/* The request id of any message (field 1, uint64, in every request), or 0. */
static uint64_t sched_message_id(const ProtobufCMessage *msg)
{
	const ProtobufCFieldDescriptor *field =
		protobuf_c_message_descriptor_get_field(msg->descriptor, 1);

	if (!field || field->type != PROTOBUF_C_TYPE_UINT64 ||
	    field->label == PROTOBUF_C_LABEL_REPEATED)
		return 0;
	return *(const uint64_t *)(const void *)((const char *)msg + field->offset);
}

/* --- state events. */

static void sched_dropped(void *arg, const uint8_t task_id[SCHED_TASK_ID_SIZE], const char *peer_id,
			  enum sched_drop_reason reason)
{
	struct sched_server *server = arg;
	char hex[HASH_SHA256_HEX_SIZE];

	hash_hex(task_id, hex);
	switch (reason) {
	case SCHED_DROP_EXPIRED:
		log_info("scheduler", "peer expired task=%s peer=%s", hex, peer_id);
		break;
	case SCHED_DROP_LEFT:
		log_info("scheduler", "peer left task=%s peer=%s", hex, peer_id);
		break;
	case SCHED_DROP_EVICTED:
		log_debug("scheduler", "peer evicted task=%s peer=%s", hex, peer_id);
		server->evicted++;
		break;
	}
}

/* --- requests. */

/* "ip:port" or "[ip]:port" of an announced host; "" when it has no peer port.
 * Returns NULL, or what is wrong. */
static const char *sched_host_address(const Ringfly__PeerHost *host, char *out, size_t size)
{
	unsigned char binary[sizeof(struct in6_addr)];
	bool v6;

	out[0] = '\0';
	if (!host || !host->ip[0] || host->peer_port == 0)
		return NULL;
	if (host->peer_port > 65535)
		return "host.peer_port is over 65535";
	v6 = strchr(host->ip, ':') != NULL;
	if (inet_pton(v6 ? AF_INET6 : AF_INET, host->ip, binary) != 1)
		return "host.ip is not an IP address";
	snprintf(out, size, v6 ? "[%s]:%u" : "%s:%u", host->ip, host->peer_port);
	return NULL;
}

static void sched_send_parents(struct conn *conn, const Ringfly__AnnouncePeer *request,
			       const struct sched_answer *answer)
{
	Ringfly__ParentsResponse response = RINGFLY__PARENTS_RESPONSE__INIT;
	Ringfly__Parent parents[SCHED_PARENTS_MAX];
	Ringfly__Parent *pointers[SCHED_PARENTS_MAX];
	char *roots[SCHED_ROOTS_MAX];

	assert(answer->parent_count <= SCHED_PARENTS_MAX);
	assert(answer->root_count <= SCHED_ROOTS_MAX);
	for (unsigned i = 0; i < answer->parent_count; i++) {
		ringfly__parent__init(&parents[i]);
		parents[i].peer_id = (char *)answer->parents[i].peer_id;
		parents[i].address = (char *)answer->parents[i].address;
		parents[i].seed = answer->parents[i].seed;
		parents[i].pieces_done = answer->parents[i].pieces_done;
		parents[i].complete = answer->parents[i].complete;
		pointers[i] = &parents[i];
	}
	response.id = request->id;
	response.task_id = request->task_id;
	response.n_parents = answer->parent_count;
	response.parents = pointers;
	response.back_to_source = answer->back_to_source;
	response.reason = (char *)answer->reason;
	for (unsigned i = 0; i < answer->root_count; i++)
		roots[i] = (char *)answer->roots[i];
	response.n_roots = answer->root_count;
	response.roots = roots;
	conn_send_frame(conn, FRAME_TYPE_PARENTS_RESPONSE, &response.base);
}

static void sched_take_announce(struct sched_server *server, struct conn *conn,
				const Ringfly__AnnouncePeer *request)
{
	const Ringfly__PeerHost *host = request->host;
	char address[SCHED_ADDRESS_MAX + 1], hex[HASH_SHA256_HEX_SIZE];
	char parents_text[SCHED_PARENTS_TEXT_MAX];
	struct sched_announce announce = { 0 };
	struct sched_answer answer;
	const char *problem;
	size_t used = 0;
	int rc;

	if (request->task_id.len != SCHED_TASK_ID_SIZE) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "AnnouncePeer: task_id must be 32 bytes, got %zu",
				 request->task_id.len);
		return;
	}
	problem = sched_host_address(host, address, sizeof(address));
	if (problem) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "AnnouncePeer: %s", problem);
		return;
	}
	announce.task_id = request->task_id.data;
	announce.url = request->url;
	announce.peer_id = request->peer_id;
	announce.address = address;
	announce.location = host ? host->location : "";
	announce.seed = host && host->seed;
	announce.upload_slots = host ? host->upload_slots : 0;
	announce.uploads = host ? host->uploads : 0;
	announce.complete = request->complete;
	announce.want_parents = request->want_parents;
	announce.content_length = request->content_length;
	announce.piece_length = request->piece_length;
	announce.piece_count = request->piece_count;
	announce.pieces_done = request->pieces_done;
	announce.parents_in_use = (const char *const *)request->parents_in_use;
	announce.parents_in_use_count = request->n_parents_in_use;
	announce.failed_parents = (const char *const *)request->failed_parents;
	announce.failed_parents_count = request->n_failed_parents;
	announce.registration = conn; /* kept by a seed host until sched_closed */

	rc = sched_announce(server->state, &announce, clock_monotonic_ms(), &answer);
	if (rc == -EINVAL) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "AnnouncePeer: %s", answer.reason);
		return;
	}
	if (rc < 0) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_BUSY,
				 "ringfly-scheduler: cannot record the announcement: %s",
				 strerror(-rc));
		return;
	}
	hash_hex(request->task_id.data, hex);
	for (size_t i = 0; i < request->n_failed_parents && i < SCHED_FAILED_MAX; i++) {
		const char *failed = request->failed_parents[i];
		size_t len = strnlen(failed, SCHED_ADDRESS_MAX + 1);
		bool printable = len <= SCHED_ADDRESS_MAX;

		for (size_t k = 0; printable && k < len; k++)
			printable = failed[k] > ' ' && failed[k] < 127;
		if (printable) /* what we log is an address, not whatever a peer sent */
			log_info("scheduler", "parent failed task=%s parent=%s reported_by=%s", hex,
				 failed, address);
	}
	log_debug("scheduler",
		  "announce task=%s peer=%s address=%s seed=%d pieces=%u/%u complete=%d slots=%u",
		  hex, request->peer_id, address, announce.seed, request->pieces_done,
		  request->piece_count, request->complete, (unsigned)announce.upload_slots);
	if (request->want_parents) {
		parents_text[0] = '\0';
		for (unsigned i = 0; i < answer.parent_count; i++)
			used += (size_t)snprintf(parents_text + used, sizeof(parents_text) - used,
						 "%s%s", i ? "," : "", answer.parents[i].address);
		log_info("scheduler", "parents task=%s peer=%s parents=%s back_to_source=%d", hex,
			 request->peer_id, parents_text, answer.back_to_source);
	}
	if (answer.root_count) {
		char roots_text[SCHED_ROOTS_MAX * (SCHED_PEER_ID_MAX + 1) + 1];

		roots_text[0] = '\0';
		used = 0;
		for (unsigned i = 0; i < answer.root_count; i++)
			used += (size_t)snprintf(roots_text + used, sizeof(roots_text) - used,
						 "%s%s", i ? "," : "", answer.roots[i]);
		log_debug("scheduler", "roots task=%s seed=%s roots=%s", hex, request->peer_id,
			  roots_text);
	}
	sched_send_parents(conn, request, &answer);
}

static void sched_take_leave(struct sched_server *server, struct conn *conn,
			     const Ringfly__PeerLeave *request)
{
	if (request->task_id.len != 0 && request->task_id.len != SCHED_TASK_ID_SIZE) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "PeerLeave: task_id must be 32 bytes or empty, got %zu",
				 request->task_id.len);
		return;
	}
	if (!request->peer_id[0]) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "PeerLeave: peer_id is empty");
		return;
	}
	sched_leave(server->state, request->task_id.len ? request->task_id.data : NULL,
		    request->peer_id);
}

/* What is wrong with a Preheat's url or digest, or NULL. */
static const char *sched_preheat_problem(const Ringfly__Preheat *request)
{
	uint8_t digest[HASH_SHA256_SIZE];
	size_t url_len = strnlen(request->url, SCHED_URL_MAX + 1);

	if (url_len == 0)
		return "url is empty";
	if (url_len > SCHED_URL_MAX)
		return "url longer than 8192 bytes";
	for (size_t i = 0; i < url_len; i++)
		if ((unsigned char)request->url[i] < 0x20 || request->url[i] == 0x7f)
			return "url has a control character"; /* it goes into log lines */
	/* As `ringfly preheat --digest` takes it: the "sha256:" may be left out. */
	if (request->digest[0] && hash_parse_sha256(request->digest, digest) < 0)
		return "digest must be \"sha256:\" and 64 hex digits, or empty";
	return NULL;
}

/*
 * Asks up to SCHED_PREHEAT_SEEDS seeds, in rendezvous order, to fetch the
 * task (Preheat id 0 on the connection each registered on), and answers the
 * requester with the seeds asked.
 */
static void sched_take_preheat(struct sched_server *server, struct conn *conn,
			       const Ringfly__Preheat *request)
{
	Ringfly__Preheat order = RINGFLY__PREHEAT__INIT;
	Ringfly__PreheatResponse response = RINGFLY__PREHEAT_RESPONSE__INIT;
	struct sched_seed_pick picks[SCHED_PREHEAT_TRIES];
	char *asked[SCHED_PREHEAT_SEEDS];
	char hex[HASH_SHA256_HEX_SIZE], seeds_text[SCHED_PREHEAT_TEXT_MAX];
	const char *problem;
	unsigned count, sent = 0;
	size_t used = 0;

	if (request->task_id.len != SCHED_TASK_ID_SIZE) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "Preheat: task_id must be 32 bytes, got %zu",
				 request->task_id.len);
		return;
	}
	problem = sched_preheat_problem(request);
	if (problem) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "Preheat: %s", problem);
		return;
	}
	count = sched_pick_seeds(server->state, request->task_id.data, picks, SCHED_PREHEAT_TRIES);
	assert(count <= SCHED_PREHEAT_TRIES);
	order.url = request->url;
	order.task_id = request->task_id;
	order.digest = request->digest;
	hash_hex(request->task_id.data, hex);
	seeds_text[0] = '\0';
	for (unsigned i = 0; i < count && sent < SCHED_PREHEAT_SEEDS; i++) {
		int rc;

		assert(picks[i].registration);
		rc = conn_send_frame(picks[i].registration, FRAME_TYPE_PREHEAT, &order.base);
		if (rc < 0) {
			log_debug("scheduler", "preheat not sent task=%s seed=%s error=\"%s\"", hex,
				  picks[i].address, strerror(-rc));
			continue;
		}
		used += (size_t)snprintf(seeds_text + used, sizeof(seeds_text) - used, "%s%s",
					 sent ? "," : "", picks[i].address);
		asked[sent++] = picks[i].address;
	}
	log_info("scheduler", "preheat task=%s url=%s seeds=%s", hex, request->url, seeds_text);
	if (sent == 0) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND,
				 "no seed peer known");
		return;
	}
	response.id = request->id;
	response.n_seeds = sent;
	response.seeds = asked;
	response.task_id = hex;
	conn_send_frame(conn, FRAME_TYPE_PREHEAT_RESPONSE, &response.base);
}

/* `ringfly stat` through a daemon: the peers holding a task. */
static void sched_take_task_peers(struct sched_server *server, struct conn *conn,
				  const Ringfly__TaskPeers *request)
{
	Ringfly__TaskPeersResponse response = RINGFLY__TASK_PEERS_RESPONSE__INIT;
	struct sched_parent holders[SCHED_STAT_PEERS];
	Ringfly__Parent parents[SCHED_STAT_PEERS], *list[SCHED_STAT_PEERS];
	struct sched_task_view *view;
	unsigned count;

	if (request->task_id.len != SCHED_TASK_ID_SIZE) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				 "TaskPeers: task_id must be 32 bytes, got %zu",
				 request->task_id.len);
		return;
	}
	view = malloc(sizeof(*view)); /* 8 KiB of url: not on the loop's stack */
	if (!view) {
		conn_reply_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				 "TaskPeers: out of memory");
		return;
	}
	count = sched_task_peers(server->state, request->task_id.data, holders, SCHED_STAT_PEERS,
				 view);
	for (unsigned i = 0; i < count; i++) {
		ringfly__parent__init(&parents[i]);
		parents[i].peer_id = holders[i].peer_id;
		parents[i].address = holders[i].address;
		parents[i].seed = holders[i].seed;
		parents[i].complete = holders[i].complete;
		parents[i].pieces_done = holders[i].pieces_done;
		list[i] = &parents[i];
	}
	response.id = request->id;
	response.task_id = request->task_id;
	response.url = view->url;
	response.content_length = view->content_length;
	response.piece_count = view->piece_count;
	response.n_peers = count;
	response.peers = list;
	response.peer_count = view->peer_count;
	conn_send_frame(conn, FRAME_TYPE_TASK_PEERS_RESPONSE, &response.base);
	free(view);
}

static void sched_answer_health(struct sched_server *server, struct conn *conn, uint64_t id)
{
	Ringfly__HealthResponse response = RINGFLY__HEALTH_RESPONSE__INIT;

	response.id = id;
	response.version = (char *)RINGFLY_VERSION;
	response.pid = (uint32_t)getpid();
	response.uptime_ms = clock_monotonic_ms() - server->started_ms;
	response.role = (char *)"scheduler";
	response.socket_path = server->address;
	response.open_connections = conn_server_count(server->conns);
	conn_send_frame(conn, FRAME_TYPE_HEALTH_RESPONSE, &response.base);
}

static int sched_frame(struct conn *conn, uint8_t type, const uint8_t *message, size_t message_len)
{
	struct sched_server *server = conn_server_context(conn_get_server(conn));
	ProtobufCMessage *msg = frame_unpack(type, message, message_len, NULL);

	if (!msg) {
		conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED,
				"%s message of %zu bytes does not decode", frame_type_name(type),
				message_len);
		return 0;
	}
	switch (type) {
	case FRAME_TYPE_ANNOUNCE_PEER:
		sched_take_announce(server, conn, (Ringfly__AnnouncePeer *)msg);
		break;
	case FRAME_TYPE_PEER_LEAVE:
		sched_take_leave(server, conn, (Ringfly__PeerLeave *)msg);
		break;
	case FRAME_TYPE_PREHEAT:
		sched_take_preheat(server, conn, (Ringfly__Preheat *)msg);
		break;
	case FRAME_TYPE_TASK_PEERS:
		sched_take_task_peers(server, conn, (Ringfly__TaskPeers *)msg);
		break;
	case FRAME_TYPE_HEALTH_REQUEST:
		sched_answer_health(server, conn, ((Ringfly__HealthRequest *)msg)->id);
		break;
	case FRAME_TYPE_ERROR: {
		const Ringfly__Error *error = (const Ringfly__Error *)msg;

		/* Answering an Error with one would never end. */
		log_info("scheduler", "peer reported an error peer=%s code=%d message=\"%s\"",
			 conn_peer_name(conn), (int)error->code, error->message);
		conn_close(conn);
		break;
	}
	default:
		conn_reply_error(
			conn, sched_message_id(msg), RINGFLY__ERROR_CODE__ERROR_CODE_UNEXPECTED,
			"ringfly-scheduler does not take %s messages", frame_type_name(type));
		break;
	}
	protobuf_c_message_free_unpacked(msg, NULL);
	return 0;
}

/* The conn is about to be reused: no seed host may keep pointing at it. */
static void sched_closed(struct conn *conn)
{
	struct sched_server *server = conn_server_context(conn_get_server(conn));
	unsigned forgotten = sched_forget_registration(server->state, conn);

	if (forgotten)
		log_debug("scheduler", "seed registration closed peer=%s seeds=%u",
			  conn_peer_name(conn), forgotten);
}

/* --- the tick: expiry, evictions. */

static void sched_expire_done(struct loop_op *op, int res, uint32_t flags);

static void sched_arm_expire(struct sched_server *server)
{
	loop_op_init(&server->expire_op, sched_expire_done, server);
	if (loop_timeout(server->loop, &server->expire_op, SCHED_EXPIRE_INTERVAL_MS) < 0)
		log_error("scheduler", "cannot arm the expiry timer: peers no longer expire");
}

static void sched_expire_done(struct loop_op *op, int res, uint32_t flags)
{
	struct sched_server *server = op->owner;

	(void)flags;
	if (res == -ECANCELED || server->stopping)
		return;
	sched_expire(server->state, clock_monotonic_ms());
	if (server->evicted) {
		log_warn("scheduler",
			 "limit reached, evicted peers=%u max_tasks=%lld "
			 "max_peers=%lld max_entries=%lld tasks=%u peers=%u",
			 server->evicted, (long long)server->config->max_tasks,
			 (long long)server->config->max_peers,
			 (long long)server->config->max_entries, sched_task_count(server->state),
			 sched_peer_count(server->state));
		server->evicted = 0;
	}
	sched_arm_expire(server);
}

/* --- shutdown: stop accepting, close every connection, wait until they are
 * finished (the kernel no longer holds their buffers), stop. */

static void sched_stop_done(struct loop_op *op, int res, uint32_t flags);

static void sched_arm_stop(struct sched_server *server)
{
	loop_op_init(&server->stop_op, sched_stop_done, server);
	if (loop_timeout(server->loop, &server->stop_op, SCHED_STOP_POLL_MS) < 0)
		loop_stop(server->loop);
}

static void sched_stop_done(struct loop_op *op, int res, uint32_t flags)
{
	struct sched_server *server = op->owner;

	(void)res;
	(void)flags;
	if ((!conn_server_accepting(server->conns) && conn_server_count(server->conns) == 0) ||
	    clock_monotonic_ms() - server->stop_started_ms >= SCHED_STOP_GRACE_MS) {
		loop_stop(server->loop);
		return;
	}
	conn_server_close_idle(server->conns, true);
	sched_arm_stop(server);
}

static void sched_signal(struct loop *loop, int signo, void *arg)
{
	struct sched_server *server = arg;

	if (server->stopping) {
		log_info("scheduler", "second %s, stopping now", sched_signal_name(signo));
		loop_stop(loop);
		return;
	}
	server->stopping = true;
	server->stop_started_ms = clock_monotonic_ms();
	log_info("scheduler", "shutting down signal=%s connections=%u tasks=%u peers=%u",
		 sched_signal_name(signo), conn_server_count(server->conns),
		 sched_task_count(server->state), sched_peer_count(server->state));
	conn_server_stop_accepting(server->conns);
	conn_server_close_idle(server->conns, true);
	loop_cancel_op(loop, &server->expire_op);
	sched_arm_stop(server);
}

/* --- startup. */

/* The address health reports: the configured host with the bound port. */
static void sched_bound_address(struct sched_server *server, int port)
{
	char host[256], err[128];
	unsigned configured_port;

	if (tcp_parse_address(server->config->listen, host, sizeof(host), &configured_port, err,
			      sizeof(err)) < 0)
		snprintf(host, sizeof(host), "%s", server->config->listen);
	snprintf(server->address, sizeof(server->address), strchr(host, ':') ? "[%s]:%d" : "%s:%d",
		 host, port);
}

int sched_server_run(const struct sched_config *config)
{
	static const struct conn_handlers handlers = { .frame = sched_frame,
						       .closed = sched_closed };
	struct conn_server_options conn_options = {
		.max_message_bytes = SCHED_MESSAGE_MAX,
		.idle_timeout_ms = SCHED_IDLE_TIMEOUT_MS,
		.name = "scheduler",
	};
	struct sched_server server = { .config = config, .listen_fd = -1 };
	struct sched_options state_options = {
		.max_tasks = (unsigned)config->max_tasks,
		.max_peers = (unsigned)config->max_peers,
		.max_entries = (unsigned)config->max_entries,
		.peer_ttl_ms = (uint64_t)config->peer_ttl_ms,
		.dropped = sched_dropped,
		.arg = &server,
	};
	char err[512];
	sigset_t signals;
	int rc, port, exit_code = 1;

	server.started_ms = clock_monotonic_ms();
	signal(SIGPIPE, SIG_IGN);
	rc = sched_state_create(&server.state, &state_options);
	if (rc < 0) {
		fprintf(stderr, "ringfly-scheduler: %s\n", strerror(-rc));
		return 1;
	}
	rc = loop_create(&server.loop, NULL);
	if (rc < 0) {
		fprintf(stderr, "ringfly-scheduler: cannot set up io_uring: %s\n", strerror(-rc));
		goto out_state;
	}
	sigemptyset(&signals);
	sigaddset(&signals, SIGTERM);
	sigaddset(&signals, SIGINT);
	rc = loop_signals(server.loop, &signals, sched_signal, &server);
	if (rc < 0) {
		fprintf(stderr, "ringfly-scheduler: cannot watch signals: %s\n", strerror(-rc));
		goto out_loop;
	}
	server.listen_fd = tcp_listen(config->listen, 0, err, sizeof(err));
	if (server.listen_fd < 0) {
		fprintf(stderr, "ringfly-scheduler: %s\n", err);
		goto out_loop;
	}
	port = tcp_local_port(server.listen_fd);
	sched_bound_address(&server, port);
	rc = conn_server_create(&server.conns, server.loop, &handlers, &conn_options, &server);
	if (rc == 0)
		rc = conn_server_listen(server.conns, server.listen_fd);
	if (rc < 0) {
		fprintf(stderr, "ringfly-scheduler: %s: cannot accept: %s\n", config->listen,
			strerror(-rc));
		goto out_listener;
	}
	sched_arm_expire(&server);
	log_info("scheduler", "scheduler listening address=%s port=%d", config->listen, port);
	log_debug("scheduler",
		  "limits pid=%d peer_ttl_ms=%lld max_peers=%lld max_tasks=%lld max_entries=%lld",
		  (int)getpid(), (long long)config->peer_ttl_ms, (long long)config->max_peers,
		  (long long)config->max_tasks, (long long)config->max_entries);

	rc = loop_run(server.loop);
	if (rc < 0) {
		log_error("scheduler", "the event loop failed error=\"%s\"", strerror(-rc));
	} else {
		log_info("scheduler", "stopped cleanly uptime_ms=%llu",
			 (unsigned long long)(clock_monotonic_ms() - server.started_ms));
		exit_code = 0;
	}

out_listener:
	close(server.listen_fd);
out_loop:
	/* The ring goes first: no completion can arrive for what we free next. */
	loop_destroy(server.loop);
	if (server.conns)
		conn_server_destroy(server.conns);
out_state:
	sched_state_destroy(server.state);
	return exit_code;
}
