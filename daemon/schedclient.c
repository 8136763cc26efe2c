/* schedclient: the daemon's connections to schedulers: announcements, parents, fail-over. */
#include "daemon/schedclient.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/hash.h"
#include "core/log.h"
#include "net/tcp.h"
#include "rpc/frame.h"

#define SCHED_TIMEOUT_DEFAULT_MS 2000u
#define SCHED_RETRY_MS 1000u		/* a scheduler that failed is left alone this long */
#define SCHED_TICK_MS 100u
#define SCHED_MEMO_MAX 4096u		/* tasks whose last announcement is kept */
#define SCHED_INPUT_MAX (128u << 10)
/* Every remembered announcement goes again this often: a scheduler drops
 * peers it has not heard from for its peer TTL (30 s by default). */
#define SCHED_REFRESH_MS 10000u

enum sched_conn_state { SC_IDLE, SC_CONNECTING, SC_UP, SC_DOWN };

struct sched_conn {
	struct sched_client *client;
	unsigned index;
	char address[160];
	int fd;
	enum sched_conn_state state;
	uint64_t retry_after_ms;
	struct loop_op op;		/* the connect poll, then the recv */
	bool op_armed;
	uint8_t *in;
	size_t in_len, in_cap;
};

struct sched_request {
	struct sched_client *client;
	struct sched_request *prev, *next;
	uint64_t id;
	uint8_t task_id[32];
	unsigned order[SCHED_ADDRESSES_MAX];
	unsigned tried;			/* index into order of the scheduler asked now */
	bool sent;			/* the frame went to order[tried] */
	uint64_t deadline_ms;
	uint64_t give_up_ms;		/* over every scheduler (0: none) */
	unsigned give_up_after_ms;
	sched_parents_fn fn;		/* an ask, or */
	sched_preheat_fn preheat_fn;	/* a preheat, or */
	sched_stat_fn stat_fn;		/* a TaskPeers */
	void *arg;
	uint8_t *frame;
	size_t frame_len;
	char reason[300];
	struct loop_op done_op;		/* a failure reported from the next turn */
	bool done_armed, cancelled;
};

struct sched_memo {
	uint8_t task_id[32];
	uint8_t *frame;
	size_t frame_len;
};

struct sched_client {
	struct loop *loop;
	unsigned timeout_ms;
	char *peer_id, *ip, *location;
	bool seed;
	unsigned upload_slots;
	sched_preheat_in_fn on_preheat;
	void *on_preheat_arg;
	unsigned port;
	struct sched_conn conns[SCHED_ADDRESSES_MAX];
	unsigned conn_count;
	struct sched_request *requests;
	uint64_t next_id;
	struct loop_op tick_op;
	bool tick_armed;
	struct loop_op refresh_op;
	bool refresh_armed;
	struct loop_op reconnect_op;	/* a scheduler went down: try it again soon */
	bool reconnect_armed;
	struct sched_memo *memos;
	size_t memo_count, memo_next;
	uint8_t *registration;		/* a seed's announcement to every scheduler */
	size_t registration_len;
};

static void sched_conn_connect(struct sched_conn *conn);
static void sched_request_advance(struct sched_request *req, const char *why);

/* "ip:port" or "[v6]:port" with an IP literal (no name to resolve). */
static bool sched_address_numeric(const char *address)
{
	char host[64], err[128];
	unsigned port;
	struct in6_addr v6;
	struct in_addr v4;

	if (tcp_parse_address(address, host, sizeof(host), &port, err, sizeof(err)) < 0 || !host[0])
		return false;
	return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1;
}

/* --- rendezvous hashing. */

static uint64_t sched_weight(const char *address, const uint8_t task_id[32])
{
	struct hash_sha256 *h = hash_sha256_new();
	uint8_t digest[32];
	uint64_t weight = 0;

	if (!h)
		return 0;
	hash_sha256_update(h, address, strlen(address));
	hash_sha256_update(h, "|", 1);
	hash_sha256_update(h, task_id, 32);
	hash_sha256_final(h, digest);
	hash_sha256_free(h);
	for (int i = 0; i < 8; i++)
		weight = weight << 8 | digest[i];
	return weight;
}

static void sched_order(const struct sched_client *client, const uint8_t task_id[32],
			unsigned order[SCHED_ADDRESSES_MAX])
{
	uint64_t weights[SCHED_ADDRESSES_MAX];

	for (unsigned i = 0; i < client->conn_count; i++) {
		unsigned j = i;

		weights[i] = sched_weight(client->conns[i].address, task_id);
		order[i] = i;
		/* Insertion sort, highest weight first. */
		while (j > 0 && weights[order[j - 1]] < weights[i]) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = i;
	}
}

/* --- frames. */

static uint8_t *sched_pack_announce(struct sched_client *client,
				    const struct sched_announce *a, uint64_t id, size_t *len)
{
	Ringfly__AnnouncePeer m = RINGFLY__ANNOUNCE_PEER__INIT;
	Ringfly__PeerHost host = RINGFLY__PEER_HOST__INIT;
	char peer_id[200];
	uint8_t *frame;
	ssize_t n;

	sched_client_peer_id(client, peer_id, sizeof(peer_id));
	host.ip = client->ip;
	host.peer_port = client->port;
	host.seed = client->seed;
	host.location = client->location;
	host.upload_slots = client->upload_slots;
	m.id = id;
	m.task_id.data = (uint8_t *)a->task_id;
	m.task_id.len = 32;
	m.url = (char *)(a->url ? a->url : "");
	m.peer_id = peer_id;
	m.host = &host;
	m.content_length = a->content_length;
	m.piece_length = a->piece_length;
	m.piece_count = a->piece_count;
	m.pieces_done = a->pieces_done;
	m.complete = a->complete;
	m.want_parents = a->want_parents;
	m.parents_in_use = (char **)a->parents_in_use;
	m.n_parents_in_use = a->parents_in_use_count;
	m.failed_parents = (char **)a->failed_parents;
	m.n_failed_parents = a->failed_parents_count;
	*len = frame_packed_size(&m.base);
	frame = malloc(*len);
	if (!frame)
		return NULL;
	n = frame_pack(FRAME_TYPE_ANNOUNCE_PEER, &m.base, frame, *len);
	if (n < 0) {
		free(frame);
		return NULL;
	}
	*len = (size_t)n;
	return frame;
}

/* Whole small frames only: a scheduler connection that cannot take one now
 * is treated as broken. */
static int sched_conn_send(struct sched_conn *conn, const uint8_t *frame, size_t len)
{
	ssize_t n = send(conn->fd, frame, len, MSG_DONTWAIT | MSG_NOSIGNAL);

	if (n == (ssize_t)len)
		return 0;
	return n < 0 ? -errno : -EAGAIN;
}

/* --- the memo of announcements. */

static void sched_memo_put(struct sched_client *client, const uint8_t task_id[32],
			   const uint8_t *frame, size_t len)
{
	struct sched_memo *memo = NULL;
	uint8_t *copy = malloc(len);

	if (!copy)
		return;
	memcpy(copy, frame, len);
	for (size_t i = 0; i < client->memo_count; i++)
		if (memcmp(client->memos[i].task_id, task_id, 32) == 0)
			memo = &client->memos[i];
	if (!memo && client->memo_count < SCHED_MEMO_MAX)
		memo = &client->memos[client->memo_count++];
	if (!memo) /* full: the oldest slot goes, round robin */
		memo = &client->memos[client->memo_next++ % SCHED_MEMO_MAX];
	free(memo->frame);
	memcpy(memo->task_id, task_id, 32);
	memo->frame = copy;
	memo->frame_len = len;
}

/* A connection is up: what this daemon told the schedulers before goes again
 * to this one for the tasks it is now the first scheduler up for. */
static void sched_memo_replay(struct sched_conn *conn)
{
	struct sched_client *client = conn->client;
	unsigned order[SCHED_ADDRESSES_MAX];
	unsigned sent = 0;

	if (client->registration)
		sched_conn_send(conn, client->registration, client->registration_len);
	for (size_t i = 0; i < client->memo_count; i++) {
		unsigned first = 0;
		bool pending = false;

		/* An ask waiting for this connection sends its own copy. */
		for (struct sched_request *req = client->requests; req; req = req->next)
			pending = pending || (req->fn && !req->sent &&
					      req->tried < client->conn_count &&
					      req->order[req->tried] == conn->index &&
					      memcmp(req->task_id, client->memos[i].task_id, 32) == 0);
		if (pending)
			continue;

		/* The task's scheduler is the first one up in its order. */
		sched_order(client, client->memos[i].task_id, order);
		while (first < client->conn_count && client->conns[order[first]].state != SC_UP)
			first++;
		if (first == client->conn_count || order[first] != conn->index)
			continue;
		if (sched_conn_send(conn, client->memos[i].frame, client->memos[i].frame_len) < 0)
			break;
		sent++;
	}
	if (sent)
		log_info("sched", "re-announced tasks=%u scheduler=%s", sent, conn->address);
}

/* --- requests. */

/* Off the list (the memory stays with the caller). */
static void sched_request_unlink(struct sched_request *req)
{
	struct sched_client *client = req->client;

	if (req->prev)
		req->prev->next = req->next;
	else if (client->requests == req)
		client->requests = req->next;
	if (req->next)
		req->next->prev = req->prev;
	req->prev = req->next = NULL;
	free(req->frame);
	req->frame = NULL;
}

/* A failure, to whichever callback the request has. */
static void sched_request_report(struct sched_request *req, int error, const char *reason)
{
	if (req->preheat_fn)
		req->preheat_fn(req->arg, error, NULL, reason);
	else if (req->stat_fn)
		req->stat_fn(req->arg, error, NULL, NULL, reason);
	else
		req->fn(req->arg, error, NULL, reason);
}

static void sched_request_done_op(struct loop_op *op, int res, uint32_t flags)
{
	struct sched_request *req = op->owner;

	(void)res;
	(void)flags;
	req->done_armed = false;
	if (!req->cancelled)
		sched_request_report(req, -EHOSTUNREACH, req->reason);
	free(req);
}

/* Every scheduler failed: the caller hears it from the next loop turn. */
static void sched_request_fail(struct sched_request *req)
{
	sched_request_unlink(req);
	loop_op_init(&req->done_op, sched_request_done_op, req);
	if (loop_nop(req->client->loop, &req->done_op) == 0) {
		req->done_armed = true;
		return;
	}
	sched_request_report(req, -EHOSTUNREACH, req->reason);
	free(req);
}

/* Sends to order[tried], connecting first if need be; moves on while a
 * scheduler is known to be down. */
static void sched_request_send(struct sched_request *req)
{
	struct sched_client *client = req->client;
	uint64_t now = clock_monotonic_ms();

	while (req->tried < client->conn_count) {
		struct sched_conn *conn = &client->conns[req->order[req->tried]];

		req->deadline_ms = now + client->timeout_ms;
		req->sent = false;
		if (conn->state == SC_DOWN && now < conn->retry_after_ms) {
			snprintf(req->reason, sizeof(req->reason), "scheduler %s: down", conn->address);
			req->tried++;
			continue;
		}
		if (conn->state == SC_IDLE || conn->state == SC_DOWN)
			sched_conn_connect(conn);
		if (conn->state == SC_CONNECTING)
			return; /* sent once connected */
		if (conn->state == SC_UP && sched_conn_send(conn, req->frame, req->frame_len) == 0) {
			req->sent = true;
			return;
		}
		snprintf(req->reason, sizeof(req->reason), "scheduler %s: cannot reach it",
			 conn->address);
		req->tried++;
	}
	sched_request_fail(req);
}

static void sched_request_advance(struct sched_request *req, const char *why)
{
	log_warn("sched", "scheduler unavailable scheduler=%s reason=\"%s\"",
		 req->client->conns[req->order[req->tried]].address, why);
	snprintf(req->reason, sizeof(req->reason), "scheduler %s: %s",
		 req->client->conns[req->order[req->tried]].address, why);
	req->tried++;
	sched_request_send(req);
}

/* --- connections. */

static void sched_reconnect_done(struct loop_op *op, int res, uint32_t flags)
{
	struct sched_client *client = op->owner;
	uint64_t now = clock_monotonic_ms();

	(void)flags;
	client->reconnect_armed = false;
	if (res == -ECANCELED)
		return;
	for (unsigned i = 0; i < client->conn_count; i++)
		if (client->conns[i].state == SC_DOWN && now >= client->conns[i].retry_after_ms)
			sched_conn_connect(&client->conns[i]); /* replays once up */
}

/* The connection is gone (or never came): left alone for SCHED_RETRY_MS,
 * then tried again if there is anything to tell it (a restarted scheduler
 * learns what this daemon holds within about a second). */
static void sched_conn_mark_down(struct sched_conn *conn, const char *why)
{
	struct sched_client *client = conn->client;

	if (!client->reconnect_armed && (client->memo_count || client->registration)) {
		loop_op_init(&client->reconnect_op, sched_reconnect_done, client);
		if (loop_timeout(client->loop, &client->reconnect_op, SCHED_RETRY_MS + 100) == 0)
			client->reconnect_armed = true;
	}
	if (conn->state == SC_UP || conn->state == SC_CONNECTING)
		log_warn("sched", "scheduler connection lost scheduler=%s reason=\"%s\"",
			 conn->address, why);
	if (conn->fd >= 0) {
		shutdown(conn->fd, SHUT_RDWR);
		if (!conn->op_armed) {
			close(conn->fd);
			conn->fd = -1;
		}
	}
	conn->state = SC_DOWN;
	conn->retry_after_ms = clock_monotonic_ms() + SCHED_RETRY_MS;
	conn->in_len = 0;
}

/* Same, and the requests waiting on it go to their next scheduler. */
static void sched_conn_down(struct sched_conn *conn, const char *why)
{
	struct sched_client *client = conn->client;
	struct sched_request *req, *next;

	sched_conn_mark_down(conn, why);
	for (req = client->requests; req; req = next) {
		next = req->next;
		if (req->tried < client->conn_count && req->order[req->tried] == conn->index)
			sched_request_advance(req, why);
	}
}

static struct sched_request *sched_request_by_id(struct sched_client *client, uint64_t id)
{
	for (struct sched_request *req = client->requests; req; req = req->next)
		if (req->id == id)
			return req;
	return NULL;
}

/* A scheduler asks this seed to fetch a task ahead of demand. */
static void sched_on_preheat(struct sched_conn *conn, const Ringfly__Preheat *m)
{
	struct sched_client *client = conn->client;

	if (!client->seed || !client->on_preheat || !m->url || !m->url[0])
		return;
	log_info("sched", "preheat url=%s digest=%s from scheduler=%s", m->url,
		 m->digest && m->digest[0] ? m->digest : "-", conn->address);
	client->on_preheat(client->on_preheat_arg, m->url, m->digest ? m->digest : "");
}

/* An Error answering a request, or a PreheatResponse. */
static void sched_on_answer(struct sched_conn *conn, uint8_t type, ProtobufCMessage *msg)
{
	struct sched_client *client = conn->client;
	struct sched_request *req;

	if (type == FRAME_TYPE_ERROR) {
		Ringfly__Error *e = (Ringfly__Error *)msg;

		req = e->id ? sched_request_by_id(client, e->id) : NULL;
		if (!req) {
			log_warn("sched", "scheduler said scheduler=%s message=\"%s\"", conn->address,
				 e->message);
			return;
		}
		sched_request_unlink(req);
		sched_request_report(req, e->code == RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND
				     ? -ENOENT : -EPROTO, e->message);
		free(req);
		return;
	}
	{
		Ringfly__PreheatResponse *r = (Ringfly__PreheatResponse *)msg;
		char seeds[1024] = "";
		size_t at = 0;

		req = sched_request_by_id(client, r->id);
		if (!req || !req->preheat_fn)
			return;
		for (size_t i = 0; i < r->n_seeds && at < sizeof(seeds); i++)
			at += (size_t)snprintf(seeds + at, sizeof(seeds) - at, "%s%s", i ? "," : "",
					       r->seeds[i]);
		sched_request_unlink(req);
		req->preheat_fn(req->arg, 0, seeds, NULL);
		free(req);
	}
}

static void sched_on_frame(struct sched_conn *conn, uint8_t type, const uint8_t *message,
			   size_t len)
{
	struct sched_client *client = conn->client;
	ProtobufCMessage *msg = frame_unpack(type, message, len, NULL);
	Ringfly__ParentsResponse *r;
	struct sched_parents parents;
	struct sched_request *req;
	const char *first_ignored = NULL;
	unsigned ignored;

	if (!msg)
		return;
	if (type == FRAME_TYPE_PREHEAT) {
		sched_on_preheat(conn, (Ringfly__Preheat *)msg);
		protobuf_c_message_free_unpacked(msg, NULL);
		return;
	}
	if (type == FRAME_TYPE_ERROR || type == FRAME_TYPE_PREHEAT_RESPONSE) {
		sched_on_answer(conn, type, msg);
		protobuf_c_message_free_unpacked(msg, NULL);
		return;
	}
	if (type == FRAME_TYPE_TASK_PEERS_RESPONSE) {
		Ringfly__TaskPeersResponse *answer = (Ringfly__TaskPeersResponse *)msg;

		req = sched_request_by_id(client, answer->id);
		if (req && req->stat_fn) {
			sched_request_unlink(req);
			req->stat_fn(req->arg, 0, answer, conn->address, NULL);
			free(req);
		}
		protobuf_c_message_free_unpacked(msg, NULL);
		return;
	}
	if (type != FRAME_TYPE_PARENTS_RESPONSE) {
		protobuf_c_message_free_unpacked(msg, NULL);
		return;
	}
	r = (Ringfly__ParentsResponse *)msg;
	req = sched_request_by_id(client, r->id);
	if (!req || !req->fn) { /* the answer to an announcement */
		protobuf_c_message_free_unpacked(msg, NULL);
		return;
	}
	memset(&parents, 0, sizeof(parents));
	ignored = 0;
	for (size_t i = 0; i < r->n_parents && parents.count < SCHED_PARENTS_MAX; i++) {
		const char *address = r->parents[i]->address;
		size_t address_len = address ? strlen(address) : 0;

		/* A peer without a peer listener announces port 0: no parent. */
		if (address_len < 3 || strcmp(address + address_len - 2, ":0") == 0)
			continue;
		/* The scheduler names peers by the addresses they announced, IP
		 * literals: a host name here would be resolved, blocking, on the
		 * loop (a lying scheduler could stall the daemon per parent). */
		if (!sched_address_numeric(address)) {
			if (!ignored++)
				first_ignored = address;
			continue;
		}
		parents.seed[parents.count] = r->parents[i]->seed;
		snprintf(parents.addresses[parents.count++], sizeof(parents.addresses[0]), "%s",
			 r->parents[i]->address);
	}
	if (ignored) /* one line per answer, however many */
		log_warn("sched", "scheduler named parents that are not ip:port, ignored count=%u "
			 "first=\"%.80s\" scheduler=%s", ignored, first_ignored, conn->address);
	for (size_t i = 0; i < r->n_roots && parents.root_count < SCHED_PARENTS_MAX; i++)
		if (r->roots[i] && r->roots[i][0])
			snprintf(parents.roots[parents.root_count++], sizeof(parents.roots[0]),
				 "%s", r->roots[i]);
	parents.back_to_source = r->back_to_source;
	snprintf(parents.reason, sizeof(parents.reason), "%s", r->reason ? r->reason : "");
	snprintf(parents.scheduler, sizeof(parents.scheduler), "%s", conn->address);
	protobuf_c_message_free_unpacked(msg, NULL);
	sched_request_unlink(req);
	req->fn(req->arg, 0, &parents, NULL);
	free(req);
}

static void sched_conn_read(struct sched_conn *conn);

static void sched_conn_recv_done(struct loop_op *op, int res, uint32_t flags)
{
	struct sched_conn *conn = op->owner;
	size_t at = 0;

	(void)flags;
	conn->op_armed = false;
	if (conn->state != SC_UP) {
		if (conn->fd >= 0) {
			close(conn->fd);
			conn->fd = -1;
		}
		return;
	}
	if (res <= 0) {
		sched_conn_down(conn, res == 0 ? "connection closed" : strerror(-res));
		return;
	}
	conn->in_len += (size_t)res;
	for (;;) {
		uint8_t type;
		const uint8_t *message;
		size_t message_len, frame_size;
		enum frame_peek_result peek = frame_peek(conn->in + at, conn->in_len - at, 0, &type,
							 &message, &message_len, &frame_size);

		if (peek == FRAME_PEEK_NEED_MORE)
			break;
		if (peek != FRAME_PEEK_OK) {
			sched_conn_down(conn, "bad frame");
			return;
		}
		sched_on_frame(conn, type, message, message_len);
		at += frame_size;
		if (conn->state != SC_UP)
			return;
	}
	memmove(conn->in, conn->in + at, conn->in_len - at);
	conn->in_len -= at;
	sched_conn_read(conn);
}

static void sched_conn_read(struct sched_conn *conn)
{
	if (conn->in_len == conn->in_cap) {
		size_t cap = conn->in_cap ? conn->in_cap * 2 : 4096;
		uint8_t *grown = cap <= SCHED_INPUT_MAX ? realloc(conn->in, cap) : NULL;

		if (!grown) {
			sched_conn_down(conn, "answer too large");
			return;
		}
		conn->in = grown;
		conn->in_cap = cap;
	}
	loop_op_init(&conn->op, sched_conn_recv_done, conn);
	if (loop_recv(conn->client->loop, &conn->op, conn->fd, conn->in + conn->in_len,
		      conn->in_cap - conn->in_len, 0) < 0) {
		sched_conn_down(conn, "cannot queue a receive");
		return;
	}
	conn->op_armed = true;
}

static void sched_conn_connected(struct loop_op *op, int res, uint32_t flags)
{
	struct sched_conn *conn = op->owner;
	struct sched_client *client = conn->client;
	int error = 0, one = 1;
	socklen_t len = sizeof(error);

	(void)flags;
	conn->op_armed = false;
	if (conn->state != SC_CONNECTING) {
		if (conn->fd >= 0) {
			close(conn->fd);
			conn->fd = -1;
		}
		return;
	}
	if (res < 0)
		error = -res;
	else if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
		error = errno;
	if (error) {
		sched_conn_down(conn, strerror(error));
		return;
	}
	setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	conn->state = SC_UP;
	log_info("sched", "scheduler connected address=%s", conn->address);
	sched_memo_replay(conn);
	for (struct sched_request *req = client->requests, *next; req; req = next) {
		next = req->next;
		if (req->tried < client->conn_count && req->order[req->tried] == conn->index &&
		    !req->sent)
			sched_request_send(req);
	}
	if (conn->state == SC_UP)
		sched_conn_read(conn);
}

static void sched_conn_connect(struct sched_conn *conn)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *found = NULL;
	char host[128], port_text[16], err[200];
	unsigned port;

	if (conn->fd >= 0 || conn->op_armed)
		return; /* the old socket is still closing */
	if (tcp_parse_address(conn->address, host, sizeof(host), &port, err, sizeof(err)) < 0 ||
	    !host[0]) {
		sched_conn_mark_down(conn, "not HOST:PORT");
		return;
	}
	snprintf(port_text, sizeof(port_text), "%u", port);
	if (getaddrinfo(host, port_text, &hints, &found) != 0) {
		sched_conn_mark_down(conn, "cannot resolve the host");
		return;
	}
	conn->fd = socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (conn->fd < 0 ||
	    (connect(conn->fd, found->ai_addr, found->ai_addrlen) < 0 && errno != EINPROGRESS)) {
		int e = errno;

		freeaddrinfo(found);
		if (conn->fd >= 0)
			close(conn->fd);
		conn->fd = -1;
		sched_conn_mark_down(conn, strerror(e));
		return;
	}
	freeaddrinfo(found);
	conn->state = SC_CONNECTING;
	loop_op_init(&conn->op, sched_conn_connected, conn);
	if (loop_poll(conn->client->loop, &conn->op, conn->fd, POLLOUT) < 0) {
		close(conn->fd);
		conn->fd = -1;
		sched_conn_mark_down(conn, "cannot queue the connect");
		return;
	}
	conn->op_armed = true;
}

/* --- deadlines. */

static void sched_tick_arm(struct sched_client *client);

static void sched_tick_done(struct loop_op *op, int res, uint32_t flags)
{
	struct sched_client *client = op->owner;
	uint64_t now = clock_monotonic_ms();

	(void)res;
	(void)flags;
	client->tick_armed = false;
	for (struct sched_request *req = client->requests, *next; req; req = next) {
		next = req->next;
		if (req->give_up_ms && now >= req->give_up_ms) {
			snprintf(req->reason, sizeof(req->reason), "no scheduler answered in %u ms",
				 req->give_up_after_ms);
			sched_request_fail(req);
			next = client->requests; /* the list changed: start over */
			continue;
		}
		if (now >= req->deadline_ms) {
			char why[64];
			struct sched_conn *conn = &client->conns[req->order[req->tried]];

			snprintf(why, sizeof(why), "no answer in %u ms", client->timeout_ms);
			/* A scheduler that does not answer is as good as down. */
			if (conn->state == SC_CONNECTING || conn->state == SC_UP)
				sched_conn_down(conn, why);
			else
				sched_request_advance(req, why);
			next = client->requests; /* the list may have changed: start over */
			now = clock_monotonic_ms();
		}
	}
	sched_tick_arm(client);
}

static void sched_tick_arm(struct sched_client *client)
{
	if (client->tick_armed || !client->requests)
		return;
	loop_op_init(&client->tick_op, sched_tick_done, client);
	if (loop_timeout(client->loop, &client->tick_op, SCHED_TICK_MS) == 0)
		client->tick_armed = true;
}

static void sched_refresh_arm(struct sched_client *client);

static void sched_refresh_done(struct loop_op *op, int res, uint32_t flags)
{
	struct sched_client *client = op->owner;
	uint64_t now = clock_monotonic_ms();

	(void)flags;
	client->refresh_armed = false;
	if (res == -ECANCELED)
		return;
	for (unsigned i = 0; i < client->conn_count; i++) {
		struct sched_conn *conn = &client->conns[i];

		if (conn->state == SC_UP)
			sched_memo_replay(conn);
		else if (conn->state == SC_IDLE ||
			 (conn->state == SC_DOWN && now >= conn->retry_after_ms))
			sched_conn_connect(conn); /* replays once up */
	}
	sched_refresh_arm(client);
}

static void sched_refresh_arm(struct sched_client *client)
{
	if (client->refresh_armed || (!client->memo_count && !client->registration))
		return;
	loop_op_init(&client->refresh_op, sched_refresh_done, client);
	if (loop_timeout(client->loop, &client->refresh_op, SCHED_REFRESH_MS) == 0)
		client->refresh_armed = true;
}

/* --- the API. */

/* Queues a request whose frame is built; it goes to the task's scheduler. */
static void sched_request_start(struct sched_client *client, struct sched_request *req,
				const uint8_t task_id[32])
{
	sched_order(client, task_id, req->order);
	req->next = client->requests;
	if (client->requests)
		client->requests->prev = req;
	client->requests = req;
	sched_request_send(req);
	sched_tick_arm(client);
}

static struct sched_request *sched_request_new(struct sched_client *client,
					       const uint8_t task_id[32], void *arg)
{
	struct sched_request *req = calloc(1, sizeof(*req));

	if (!req)
		return NULL;
	req->client = client;
	req->id = client->next_id++;
	memcpy(req->task_id, task_id, 32);
	req->arg = arg;
	return req;
}

/* Packs m (whose id is req->id) as the request's frame and queues it; on
 * failure req is freed. */
static int sched_request_queue(struct sched_request *req, uint8_t type, const ProtobufCMessage *m,
			       struct sched_request **out)
{
	ssize_t n;

	req->frame_len = frame_packed_size(m);
	req->frame = malloc(req->frame_len);
	n = req->frame ? frame_pack(type, m, req->frame, req->frame_len) : -1;
	if (n < 0) {
		free(req->frame);
		free(req);
		return -ENOMEM;
	}
	req->frame_len = (size_t)n;
	*out = req;
	sched_request_start(req->client, req, req->task_id);
	return 0;
}

int sched_preheat(struct sched_client *client, const uint8_t task_id[32], const char *url,
		  const char *digest, sched_preheat_fn fn, void *arg, struct sched_request **out)
{
	Ringfly__Preheat m = RINGFLY__PREHEAT__INIT;
	struct sched_request *req = sched_request_new(client, task_id, arg);

	if (!req)
		return -ENOMEM;
	req->preheat_fn = fn;
	m.id = req->id;
	m.url = (char *)url;
	m.task_id.data = (uint8_t *)task_id;
	m.task_id.len = 32;
	m.digest = (char *)(digest ? digest : "");
	return sched_request_queue(req, FRAME_TYPE_PREHEAT, &m.base, out);
}

int sched_task_peers(struct sched_client *client, const uint8_t task_id[32],
		     unsigned timeout_ms, sched_stat_fn fn, void *arg, struct sched_request **out)
{
	Ringfly__TaskPeers m = RINGFLY__TASK_PEERS__INIT;
	struct sched_request *req = sched_request_new(client, task_id, arg);

	if (!req)
		return -ENOMEM;
	req->stat_fn = fn;
	req->give_up_after_ms = timeout_ms;
	req->give_up_ms = timeout_ms ? clock_monotonic_ms() + timeout_ms : 0;
	m.id = req->id;
	m.task_id.data = (uint8_t *)task_id;
	m.task_id.len = 32;
	return sched_request_queue(req, FRAME_TYPE_TASK_PEERS, &m.base, out);
}

int sched_ask(struct sched_client *client, const struct sched_announce *announce,
	      sched_parents_fn fn, void *arg, struct sched_request **out)
{
	struct sched_request *req = sched_request_new(client, announce->task_id, arg);

	if (!req)
		return -ENOMEM;
	req->fn = fn;
	req->frame = sched_pack_announce(client, announce, req->id, &req->frame_len);
	if (!req->frame) {
		free(req);
		return -ENOMEM;
	}
	sched_memo_put(client, announce->task_id, req->frame, req->frame_len);
	sched_refresh_arm(client);
	*out = req;
	sched_request_start(client, req, announce->task_id);
	return 0;
}

void sched_cancel(struct sched_request *request)
{
	if (request->done_armed) {
		request->cancelled = true;
		return;
	}
	sched_request_unlink(request);
	free(request);
}

void sched_announce(struct sched_client *client, const struct sched_announce *announce)
{
	unsigned order[SCHED_ADDRESSES_MAX];
	struct sched_conn *conn;
	uint8_t *frame;
	size_t len;

	frame = sched_pack_announce(client, announce, client->next_id++, &len);
	if (!frame)
		return;
	sched_memo_put(client, announce->task_id, frame, len);
	sched_refresh_arm(client);
	sched_order(client, announce->task_id, order);
	for (unsigned i = 0; i < client->conn_count; i++) {
		conn = &client->conns[order[i]];
		if (conn->state == SC_UP) {
			if (sched_conn_send(conn, frame, len) < 0)
				sched_conn_down(conn, "cannot send");
			break;
		}
		if (conn->state == SC_IDLE ||
		    (conn->state == SC_DOWN && clock_monotonic_ms() >= conn->retry_after_ms)) {
			sched_conn_connect(conn); /* the memo goes once it is up */
			break;
		}
	}
	free(frame);
}

void sched_register_seed(struct sched_client *client)
{
	struct sched_announce a = { .url = "" };

	free(client->registration);
	client->registration = sched_pack_announce(client, &a, client->next_id++,
						   &client->registration_len);
	if (!client->registration)
		return;
	for (unsigned i = 0; i < client->conn_count; i++) {
		struct sched_conn *conn = &client->conns[i];

		if (conn->state == SC_UP)
			sched_conn_send(conn, client->registration, client->registration_len);
		else
			sched_conn_connect(conn); /* sent once up */
	}
	sched_refresh_arm(client);
}

void sched_leave_all(struct sched_client *client)
{
	Ringfly__PeerLeave leave = RINGFLY__PEER_LEAVE__INIT;
	uint8_t frame[512];
	char peer_id[200];
	ssize_t len;

	sched_client_peer_id(client, peer_id, sizeof(peer_id));
	leave.peer_id = peer_id;
	len = frame_pack(FRAME_TYPE_PEER_LEAVE, &leave.base, frame, sizeof(frame));
	for (unsigned i = 0; len > 0 && i < client->conn_count; i++)
		if (client->conns[i].state == SC_UP)
			sched_conn_send(&client->conns[i], frame, (size_t)len);
}

void sched_client_set_port(struct sched_client *client, unsigned port)
{
	client->port = port;
}

void sched_client_peer_id(const struct sched_client *client, char *buf, size_t size)
{
	/* Other peers know us by the address they fetch from. */
	snprintf(buf, size, "%s:%u", client->ip, client->port);
}

int sched_client_create(struct sched_client **out, struct loop *loop,
			const struct sched_options *options, char *err, size_t err_size)
{
	struct sched_client *client = calloc(1, sizeof(*client));
	const char *p = options->addresses;

	if (!client)
		return -ENOMEM;
	client->loop = loop;
	client->timeout_ms = options->timeout_ms ? options->timeout_ms : SCHED_TIMEOUT_DEFAULT_MS;
	client->peer_id = strdup(options->peer_id ? options->peer_id : "");
	client->ip = strdup(options->ip);
	client->location = strdup(options->location ? options->location : "");
	client->seed = options->seed;
	client->upload_slots = options->upload_slots;
	client->on_preheat = options->on_preheat;
	client->on_preheat_arg = options->on_preheat_arg;
	client->next_id = 1;
	client->memos = calloc(SCHED_MEMO_MAX, sizeof(*client->memos));
	if (!client->peer_id || !client->ip || !client->location || !client->memos) {
		sched_client_destroy(client);
		return -ENOMEM;
	}
	while (p && *p) {
		size_t len = strcspn(p, ",");
		struct sched_conn *conn;

		if (len == 0 || len >= sizeof(conn->address) ||
		    client->conn_count == SCHED_ADDRESSES_MAX) {
			snprintf(err, err_size, "scheduler.addresses: '%.*s' is not HOST:PORT (at most "
				 "%u addresses)", (int)len, p, SCHED_ADDRESSES_MAX);
			sched_client_destroy(client);
			return -EINVAL;
		}
		conn = &client->conns[client->conn_count];
		conn->client = client;
		conn->index = client->conn_count++;
		conn->fd = -1;
		memcpy(conn->address, p, len);
		conn->address[len] = '\0';
		p += len;
		if (*p == ',')
			p++;
	}
	if (client->conn_count == 0) {
		snprintf(err, err_size, "scheduler.addresses: no address");
		sched_client_destroy(client);
		return -EINVAL;
	}
	*out = client;
	return 0;
}

void sched_client_destroy(struct sched_client *client)
{
	if (!client)
		return;
	while (client->requests) {
		struct sched_request *req = client->requests;

		client->requests = req->next;
		free(req->frame);
		free(req);
	}
	for (unsigned i = 0; i < client->conn_count; i++) {
		if (client->conns[i].fd >= 0)
			close(client->conns[i].fd);
		free(client->conns[i].in);
	}
	for (size_t i = 0; client->memos && i < client->memo_count; i++)
		free(client->memos[i].frame);
	free(client->memos);
	free(client->registration);
	free(client->peer_id);
	free(client->ip);
	free(client->location);
	free(client);
}
