/* daemon: the ringflyd node: listeners, the CLI service, life cycle. */
#include "daemon/daemon.h"

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/loop.h"
#include "daemon/download.h"
#include "daemon/mirror.h"
#include "daemon/schedclient.h"
#include "daemon/service.h"
#include "daemon/upload.h"
#include "net/conn.h"
#include "net/http.h"
#include "net/tcp.h"
#include "net/uds.h"
#include "rpc/frame.h"
#include "storage/store.h"

/*
 * Startup order matters more than anything else here: nothing slow happens
 * before the Unix listener is registered on the ring. A restarted daemon
 * answers health within milliseconds; later work (cache recovery, scheduler
 * registration, the peer listener) happens once it already does.
 */

#define DAEMON_DRAIN_POLL_MS 5u
#define DAEMON_PEER_RETRY_MS 20u
#define DAEMON_PEER_RETRY_LIMIT 250 /* 5 s: a dying predecessor's port frees in ms */
/* After the shutdown deadline closed everything, how long cancellations may
 * take before we stop regardless. */
#define DAEMON_STOP_GRACE_MS 1000u

struct daemon {
	const struct daemon_config *config;
	/* The config file's values over the defaults, as read at start (flags
	 * left out): what a SIGHUP's re-read is compared with. */
	struct daemon_config file_at_start;
	struct loop *loop;
	struct uds_listener uds;
	struct conn_server *cli;
	struct conn_server *peer;
	int peer_fd;
	int peer_attempts;
	uint64_t started_ms;
	bool draining;
	bool failed;	/* the shutdown was caused by a failure: exit 1 */
	bool deadline_passed;
	uint64_t drain_started_ms;

	struct store *store;
	struct loop_op recover_op;
	struct download_engine *engine;
	struct service service;
	struct upload upload;
	bool upload_ready;
	struct sched_client *sched;
	bool recovered;			/* the cache is recovered (first loop turn) */
	bool peer_bound;		/* the peer listener has its port */
	bool cache_announced;

	struct loop_op drain_op;
	struct loop_op peer_retry_op;
	bool peer_retry_armed;

	/* HTTP: the registry mirror and /healthz. */
	struct http_server *http;
	struct mirror *mirror;
	char http_address[256];
	bool http_best_effort;		/* the built-in default: a port in use is not fatal */
	int http_fd;
	int http_attempts;
	struct loop_op http_retry_op;
	bool http_retry_armed;
};

static const char *daemon_signal_name(int signo)
{
	switch (signo) {
	case SIGTERM: return "SIGTERM";
	case SIGINT: return "SIGINT";
	case SIGHUP: return "SIGHUP";
	default: return "signal";
	}
}

/* --- requests. */

static unsigned daemon_connection_count(const struct daemon *daemon)
{
	return conn_server_count(daemon->cli) + (daemon->peer ? conn_server_count(daemon->peer) : 0) +
	       (daemon->http ? http_server_count(daemon->http) : 0);
}

static void daemon_answer_health(struct daemon *daemon, struct conn *conn, uint64_t id)
{
	Ringfly__HealthResponse response = RINGFLY__HEALTH_RESPONSE__INIT;

	response.id = id;
	response.version = (char *)RINGFLY_VERSION;
	response.pid = (uint32_t)getpid();
	response.uptime_ms = clock_monotonic_ms() - daemon->started_ms;
	response.role = (char *)daemon->config->role;
	response.socket_path = daemon->uds.path;
	response.open_connections = daemon_connection_count(daemon);
	response.socket_activated = daemon->uds.activated;
	conn_send_frame(conn, FRAME_TYPE_HEALTH_RESPONSE, &response.base);
}

static void daemon_answer_hello(struct daemon *daemon, struct conn *conn, uint64_t id)
{
	Ringfly__Hello hello = RINGFLY__HELLO__INIT;
	char hostname[256] = "";

	gethostname(hostname, sizeof(hostname) - 1);
	hello.id = id;
	hello.version = (char *)RINGFLY_VERSION;
	hello.hostname = hostname;
	hello.pid = (uint32_t)getpid();
	hello.role = (char *)daemon->config->role;
	conn_send_frame(conn, FRAME_TYPE_HELLO, &hello.base);
}

static int daemon_frame(struct conn *conn, uint8_t type, const uint8_t *message,
			size_t message_len)
{
	struct daemon *daemon = conn_server_context(conn_get_server(conn));
	ProtobufCMessage *msg = frame_unpack(type, message, message_len, NULL);

	if (!msg) {
		conn_send_error(conn, 0, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED,
				"%s message of %zu bytes does not decode", frame_type_name(type),
				message_len);
		return 0;
	}
	switch (type) {
	case FRAME_TYPE_HEALTH_REQUEST:
		daemon_answer_health(daemon, conn, ((Ringfly__HealthRequest *)msg)->id);
		break;
	case FRAME_TYPE_HELLO:
		daemon_answer_hello(daemon, conn, ((Ringfly__Hello *)msg)->id);
		break;
	case FRAME_TYPE_ERROR: {
		Ringfly__Error *error = (Ringfly__Error *)msg;
		int pid;
		unsigned uid;

		conn_peer(conn, &pid, &uid);
		log_info("daemon", "peer reported an error pid=%d code=%d message=\"%s\"", pid,
			 (int)error->code, error->message);
		conn_close(conn);
		break;
	}
	default:
		/* Downloads and the cache only for local clients. */
		if (conn_get_server(conn) == daemon->cli && !daemon->draining &&
		    service_frame(&daemon->service, conn, type, msg))
			break;
		/* Pieces only for peers. */
		if (conn_get_server(conn) == daemon->peer && !daemon->draining &&
		    upload_frame(&daemon->upload, conn, type, msg))
			break;
		conn_send_error(conn, 0, daemon->draining
				? RINGFLY__ERROR_CODE__ERROR_CODE_SHUTTING_DOWN
				: RINGFLY__ERROR_CODE__ERROR_CODE_UNEXPECTED,
				daemon->draining ? "ringflyd is shutting down; %s refused"
						 : "ringflyd does not take %s messages here",
				frame_type_name(type));
		break;
	}
	protobuf_c_message_free_unpacked(msg, NULL);
	return 0;
}

static void daemon_conn_closed(struct conn *conn)
{
	struct daemon *daemon = conn_server_context(conn_get_server(conn));

	if (conn_get_server(conn) == daemon->cli)
		service_conn_closed(&daemon->service, conn);
	else if (daemon->upload_ready)
		upload_conn_closed(&daemon->upload, conn);
}

/* --- shutdown. */

/* Closes idle connections, or with `all` every connection. */
static void daemon_close_connections(struct daemon *daemon, bool all)
{
	conn_server_close_idle(daemon->cli, all);
	if (daemon->peer)
		conn_server_close_idle(daemon->peer, all);
	if (daemon->http)
		http_server_close_idle(daemon->http, all);
}

static void daemon_drain_done(struct loop_op *op, int res, uint32_t flags);

/* Looks again in DAEMON_DRAIN_POLL_MS; stops the loop if it cannot. */
static void daemon_arm_drain(struct daemon *daemon)
{
	loop_op_init(&daemon->drain_op, daemon_drain_done, daemon);
	if (loop_timeout(daemon->loop, &daemon->drain_op, DAEMON_DRAIN_POLL_MS) < 0)
		loop_stop(daemon->loop);
}

static bool daemon_drained(const struct daemon *daemon)
{
	if (conn_server_accepting(daemon->cli) || conn_server_count(daemon->cli))
		return false;
	if (daemon->peer && (conn_server_accepting(daemon->peer) || conn_server_count(daemon->peer)))
		return false;
	if (daemon->http && http_server_count(daemon->http))
		return false;
	return !daemon->peer_retry_armed && !daemon->http_retry_armed && !daemon->service.jobs &&
	       download_engine_active(daemon->engine) == 0 && mirror_active(daemon->mirror) == 0;
}

static void daemon_drain_done(struct loop_op *op, int res, uint32_t flags)
{
	struct daemon *daemon = op->owner;
	uint64_t elapsed_ms = clock_monotonic_ms() - daemon->drain_started_ms;

	(void)res;
	(void)flags;
	if (daemon_drained(daemon) ||
	    elapsed_ms >= (uint64_t)daemon->config->shutdown_timeout_ms + DAEMON_STOP_GRACE_MS) {
		loop_stop(daemon->loop);
		return;
	}
	if (!daemon->deadline_passed && elapsed_ms >= (uint64_t)daemon->config->shutdown_timeout_ms) {
		daemon->deadline_passed = true;
		log_warn("daemon", "shutdown deadline passed, closing connections left=%u",
			 daemon_connection_count(daemon));
		daemon_close_connections(daemon, true);
	} else {
		/* Connections that went idle since the last look. */
		daemon_close_connections(daemon, false);
	}
	daemon_arm_drain(daemon);
}

static void daemon_begin_shutdown(struct daemon *daemon, int signo)
{
	if (daemon->draining) {
		/* A second signal: do not wait for anyone. */
		log_info("daemon", "second %s, closing every connection now",
			 daemon_signal_name(signo));
		daemon_close_connections(daemon, true);
		daemon->deadline_passed = true;
		return;
	}
	daemon->draining = true;
	daemon->drain_started_ms = clock_monotonic_ms();
	if (daemon->sched)
		sched_leave_all(daemon->sched);
	log_info("daemon", "shutting down signal=%s connections=%u deadline_ms=%lld",
		 daemon_signal_name(signo), daemon_connection_count(daemon),
		 (long long)daemon->config->shutdown_timeout_ms);

	conn_server_stop_accepting(daemon->cli);
	if (daemon->peer)
		conn_server_stop_accepting(daemon->peer);
	if (daemon->peer_retry_armed)
		loop_cancel_op(daemon->loop, &daemon->peer_retry_op);
	if (daemon->http)
		http_server_stop_accepting(daemon->http);
	if (daemon->http_retry_armed)
		loop_cancel_op(daemon->loop, &daemon->http_retry_op);
	if (daemon->http_fd >= 0) {
		close(daemon->http_fd);
		daemon->http_fd = -1;
	}
	/* New clients now find no socket (or the next daemon's). */
	uds_close(&daemon->uds);
	if (daemon->peer_fd >= 0) {
		close(daemon->peer_fd);
		daemon->peer_fd = -1;
	}
	daemon_close_connections(daemon, false);
	daemon_arm_drain(daemon);
}

/* The config file's values over the defaults, without the flags. */
static int daemon_read_file(const struct daemon *daemon, struct daemon_config *out, char *err,
			    size_t err_size)
{
	daemon_config_defaults(out);
	return daemon_config_load(out, daemon->config->config_path, err, err_size);
}

/* SIGHUP: re-reads the config file; only upload.rate_limit applies live. The
 * other keys whose values differ from the file read at start are named in the
 * log: they wait for a restart. */
static void daemon_reload(struct daemon *daemon)
{
	struct daemon_config fresh = *daemon->config, file;
	char err[512], keys[512];

	if (!daemon->config->config_path[0]) {
		log_info("daemon", "SIGHUP: no config file to re-read");
		return;
	}
	if (daemon_config_load(&fresh, daemon->config->config_path, err, sizeof(err)) < 0) {
		log_warn("daemon", "SIGHUP: config not reloaded, keeping the running one: %s", err);
		return;
	}
	log_info("daemon", "SIGHUP: reloaded path=%s", daemon->config->config_path);
	if (daemon->upload_ready &&
	    (uint64_t)fresh.upload_rate_limit != daemon->upload.options.rate_limit)
		upload_set_rate_limit(&daemon->upload, (uint64_t)fresh.upload_rate_limit);
	if (daemon_read_file(daemon, &file, err, sizeof(err)) < 0)
		return; /* read a moment ago; gone or changed since */
	/* Compared without the flags: a key a flag sets is not a change. */
	file.upload_rate_limit = daemon->file_at_start.upload_rate_limit;
	if (daemon_config_diff(&daemon->file_at_start, &file, keys, sizeof(keys)) > 0)
		log_warn("daemon", "SIGHUP: changed, not applied until a restart path=%s keys=\"%s\"",
			 daemon->config->config_path, keys);
}

/* A scheduler asks this seed to fetch a task ahead of demand. */
static void daemon_on_preheat(void *arg, const char *url, const char *digest)
{
	struct daemon *daemon = arg;
	uint8_t sha[32];
	char err[512];

	if (!daemon->engine || daemon->draining)
		return;
	if (!download_seed_may_fetch(url, daemon->config->seed_fetch_from, err, sizeof(err))) {
		log_warn("daemon", "preheat refused url=%s reason=\"%s\"", url, err);
		return;
	}
	if (digest[0] && hash_parse_sha256(digest, sha) < 0) {
		log_warn("daemon", "preheat refused url=%s reason=\"digest %s is not "
			 "sha256:<64 hex digits>\"", url, digest);
		return;
	}
	if (download_prefetch(daemon->engine, url, digest[0] ? sha : NULL, err, sizeof(err)) < 0)
		log_warn("daemon", "preheat failed url=%s reason=\"%s\"", url, err);
}

/* A scheduler named a task's roots (this is a seed). */
static void daemon_on_roots(void *arg, const uint8_t task_id[32], const char *const *peer_ids,
			    size_t count)
{
	struct daemon *daemon = arg;

	if (daemon->upload_ready)
		upload_set_roots(&daemon->upload, task_id, peer_ids, count);
}

/* The address other peers reach this daemon at: advertise_ip, else the
 * peer listener's host unless it is a wildcard, else 127.0.0.1. */
static void daemon_advertise_ip(const struct daemon_config *config, char *ip, size_t size)
{
	char host[128], err[128];
	unsigned port;

	if (config->advertise_ip[0]) {
		snprintf(ip, size, "%s", config->advertise_ip);
		return;
	}
	if (config->listen_peer[0] &&
	    tcp_parse_address(config->listen_peer, host, sizeof(host), &port, err, sizeof(err)) == 0 &&
	    host[0] && strcmp(host, "0.0.0.0") != 0 && strcmp(host, "::") != 0) {
		snprintf(ip, size, "%s", host);
		return;
	}
	snprintf(ip, size, "127.0.0.1");
}

static void daemon_signal(struct loop *loop, int signo, void *arg)
{
	struct daemon *daemon = arg;

	(void)loop;
	if (signo == SIGHUP) {
		daemon_reload(daemon);
		return;
	}
	daemon_begin_shutdown(daemon, signo);
}

/* --- the peer listener: after the daemon already answers health. */

static struct conn_server_options daemon_server_options(const struct daemon *daemon,
							const char *name)
{
	struct conn_server_options options = {
		.max_connections = (unsigned)daemon->config->max_connections,
		.max_message_bytes = (uint32_t)daemon->config->max_message_bytes,
		.idle_timeout_ms = (unsigned)daemon->config->idle_timeout_ms,
		.name = name,
	};
	return options;
}

static void daemon_peer_listen(struct daemon *daemon);
static void daemon_announce_cache(struct daemon *daemon);

static void daemon_peer_retry_done(struct loop_op *op, int res, uint32_t flags)
{
	struct daemon *daemon = op->owner;

	(void)flags;
	daemon->peer_retry_armed = false;
	if (res == -ECANCELED || daemon->draining)
		return;
	daemon_peer_listen(daemon);
}

static void daemon_peer_listen(struct daemon *daemon)
{
	char err[256];
	int fd;

	fd = tcp_listen(daemon->config->listen_peer, 0, err, sizeof(err));
	if (fd == -EADDRINUSE && ++daemon->peer_attempts < DAEMON_PEER_RETRY_LIMIT) {
		/* Likely our own predecessor, killed a moment ago: its ring
		 * still holds the port for a few milliseconds. */
		loop_op_init(&daemon->peer_retry_op, daemon_peer_retry_done, daemon);
		if (loop_timeout(daemon->loop, &daemon->peer_retry_op, DAEMON_PEER_RETRY_MS) == 0) {
			daemon->peer_retry_armed = true;
			return;
		}
	}
	if (fd < 0) {
		log_error("daemon", "peer listener unavailable, stopping: %s", err);
		fprintf(stderr, "ringflyd: %s\n", err);
		daemon->failed = true;
		daemon_begin_shutdown(daemon, SIGTERM);
		return;
	}
	daemon->peer_fd = fd;
	if (conn_server_listen(daemon->peer, fd) < 0) {
		log_error("daemon", "cannot accept on the peer listener address=%s",
			  daemon->config->listen_peer);
		return;
	}
	log_info("daemon", "listening peer=%s port=%d", daemon->config->listen_peer,
		 tcp_local_port(fd));
	if (daemon->sched) {
		sched_client_set_port(daemon->sched, (unsigned)tcp_local_port(fd));
		if (strcmp(daemon->config->role, "seed") == 0)
			sched_register_seed(daemon->sched);
		daemon->peer_bound = true;
		daemon_announce_cache(daemon);
	}
}

/* --- HTTP: the registry mirror and health, after the daemon answers on its socket. */

static void daemon_http_request(struct http_exchange *ex, const struct http_request *request,
				void *context)
{
	struct daemon *daemon = context;

	if (strcmp(request->path, "/healthz") == 0) {
		char body[160];

		snprintf(body, sizeof(body), "ok pid=%d role=%s uptime_ms=%llu%s\n", (int)getpid(),
			 daemon->config->role,
			 (unsigned long long)(clock_monotonic_ms() - daemon->started_ms),
			 daemon->draining ? " draining" : "");
		http_reply(ex, daemon->draining ? 503 : 200, "text/plain", body);
		return;
	}
	if (daemon->mirror && mirror_wants(request)) {
		if (daemon->draining) {
			http_reply(ex, 503, "text/plain", "ringflyd is shutting down\n");
			return;
		}
		mirror_request(daemon->mirror, ex, request);
		return;
	}
	http_reply(ex, 404, "text/plain", "ringflyd: no such path (the registry mirror is "
		   "under /v2/, health at /healthz)\n");
}

static void daemon_http_aborted(struct http_exchange *ex, void *user)
{
	if (user) /* only the mirror keeps state on an exchange */
		mirror_aborted(ex, user);
}

static void daemon_http_listen(struct daemon *daemon);

static void daemon_http_retry_done(struct loop_op *op, int res, uint32_t flags)
{
	struct daemon *daemon = op->owner;

	(void)flags;
	daemon->http_retry_armed = false;
	if (res == -ECANCELED || daemon->draining)
		return;
	daemon_http_listen(daemon);
}

static void daemon_http_listen(struct daemon *daemon)
{
	char err[256];
	int fd;

	fd = tcp_listen(daemon->http_address, 0, err, sizeof(err));
	if (fd == -EADDRINUSE && ++daemon->http_attempts < DAEMON_PEER_RETRY_LIMIT) {
		/* Our predecessor's port, freed in a moment (see the peer
		 * listener); the built-in default gives up sooner. */
		if (!daemon->http_best_effort || daemon->http_attempts < 10) {
			loop_op_init(&daemon->http_retry_op, daemon_http_retry_done, daemon);
			if (loop_timeout(daemon->loop, &daemon->http_retry_op,
					 DAEMON_PEER_RETRY_MS) == 0) {
				daemon->http_retry_armed = true;
				return;
			}
		}
	}
	if (fd < 0 && daemon->http_best_effort) {
		log_warn("daemon", "http listener off (the registry mirror and /healthz with it): "
			 "%s; set http.listen (--http HOST:PORT) to choose another", err);
		return;
	}
	if (fd < 0) {
		log_error("daemon", "http listener unavailable, stopping: %s", err);
		fprintf(stderr, "ringflyd: %s\n", err);
		daemon->failed = true;
		daemon_begin_shutdown(daemon, SIGTERM);
		return;
	}
	daemon->http_fd = fd;
	if (http_server_listen(daemon->http, fd) < 0) {
		log_error("daemon", "cannot accept on the http listener address=%s",
			  daemon->http_address);
		return;
	}
	log_info("daemon", "listening http=%s port=%d mirror_registries=%s", daemon->http_address,
		 tcp_local_port(fd),
		 daemon->config->registry_flags[0] ? daemon->config->registry_flags
		 : daemon->config->mirror_registries[0] ? daemon->config->mirror_registries : "none");
}

/* Creates the HTTP server and the mirror; the port is taken by daemon_http_listen. */
static int daemon_http_setup(struct daemon *daemon)
{
	static const struct http_handlers handlers = {
		.request = daemon_http_request,
		.aborted = daemon_http_aborted,
	};
	const struct daemon_config *config = daemon->config;
	struct http_server_options options = {
		.max_connections = (unsigned)config->http_max_connections,
		.header_timeout_ms = (unsigned)config->http_header_timeout_ms,
		.idle_timeout_ms = (unsigned)config->http_idle_timeout_ms,
		.name = "http",
	};
	struct mirror_options mirror_options = {
		.registries = config->registry_flags[0] ? config->registry_flags
							: config->mirror_registries,
		.insecure = config->mirror_insecure,
		.ca_file = config->mirror_ca_file,
	};
	char err[512];
	int rc;

	if (strcmp(config->http_listen, "off") == 0)
		return 0;
	daemon->http_best_effort = config->http_listen[0] == '\0';
	snprintf(daemon->http_address, sizeof(daemon->http_address), "%s",
		 daemon->http_best_effort ? DAEMON_HTTP_DEFAULT : config->http_listen);
	rc = mirror_create(&daemon->mirror, daemon->loop, daemon->engine, &mirror_options, err,
			   sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "ringflyd: registry mirror: %s\n", err);
		return rc;
	}
	rc = http_server_create(&daemon->http, daemon->loop, &handlers, &options, daemon);
	if (rc < 0) {
		fprintf(stderr, "ringflyd: http server: %s\n", strerror(-rc));
		return rc;
	}
	return 0;
}

/* --- the cache: opened before the listener is registered (fast: a lock and
 * the LMDB environment), recovered on the first loop turn after it. */

static struct store_options daemon_store_options(const struct daemon_config *config)
{
	struct store_options options = {
		.data_dir = config->data_dir,
		.socket_path = strcmp(config->storage_socket_path, "recv") == 0 ? STORE_SOCKET_RECV
										 : STORE_SOCKET_SPLICE,
		.preallocate = strcmp(config->storage_preallocate, "always") == 0
				       ? STORE_PREALLOCATE_ALWAYS
			       : strcmp(config->storage_preallocate, "never") == 0
				       ? STORE_PREALLOCATE_NEVER
				       : STORE_PREALLOCATE_AUTO,
		.verify_on_read = config->storage_verify_on_read,
		.sync = strcmp(config->storage_sync, "pieces") == 0 ? STORE_SYNC_PIECES
								    : STORE_SYNC_TASK,
		.sync_batch_pieces = (unsigned)config->storage_sync_batch,
		.sync_delay_ms = (unsigned)config->storage_sync_delay_ms,
		.gc_ttl_ms = config->gc_ttl_ms ? config->gc_ttl_ms : -1,
		.gc_high_percent = (unsigned)config->gc_high_percent,
		.gc_low_percent = (unsigned)config->gc_low_percent,
		.gc_quota_bytes = (uint64_t)config->gc_quota_bytes,
		.gc_interval_ms = config->gc_interval_ms,
	};
	return options;
}

static int daemon_announce_one(const struct meta_task *task, void *arg)
{
	struct daemon *daemon = arg;
	struct sched_announce a = {
		.url = task->url,
		.content_length = task->content_length,
		.piece_length = task->piece_length,
		.piece_count = task->piece_count,
		.pieces_done = task->pieces_done,
		.complete = true,
	};

	memcpy(a.task_id, task->id, sizeof(a.task_id));
	sched_announce(daemon->sched, &a);
	return 0;
}

/* Once the cache is recovered and peers can reach us: the schedulers learn
 * every complete task this daemon holds (kept and refreshed by schedclient,
 * so a restarted scheduler learns them again). */
static void daemon_announce_cache(struct daemon *daemon)
{
	if (!daemon->sched || !daemon->recovered || !daemon->peer_bound ||
	    daemon->cache_announced || daemon->draining)
		return;
	daemon->cache_announced = true;
	store_foreach_complete(daemon->store, daemon_announce_one, daemon);
}

static void daemon_recover_done(struct loop_op *op, int res, uint32_t flags)
{
	struct daemon *daemon = op->owner;
	struct store_recovery report;
	int rc;

	(void)res;
	(void)flags;
	if (daemon->draining)
		return;
	rc = store_recover(daemon->store, daemon->config->verify_cache, &report);
	if (rc < 0)
		log_error("daemon", "cache recovery failed data_dir=%s error=\"%s\"",
			  daemon->config->data_dir, strerror(-rc));
	else if (daemon->config->verify_cache)
		log_info("daemon", "verified the cache pieces_checked=%u pieces_dropped=%u",
			 report.pieces_checked, report.pieces_dropped);
	daemon->recovered = true;
	daemon_announce_cache(daemon);
}

/* --- startup. */

static void daemon_raise_fd_limit(void)
{
	struct rlimit limit;

	if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
		limit.rlim_cur = limit.rlim_max;
		setrlimit(RLIMIT_NOFILE, &limit);
	}
}

int daemon_run(const struct daemon_config *config)
{
	static const struct conn_handlers handlers = {
		.frame = daemon_frame,
		.closed = daemon_conn_closed,
	};
	struct uds_listen_options uds_options = {
		.path = config->socket_path,
		.mode = config->socket_mode,
		.owner_name = "ringflyd",
		.allow_activation = true,
	};
	struct daemon daemon = { .config = config, .peer_fd = -1, .http_fd = -1 };
	struct conn_server_options options;
	char err[512];
	sigset_t signals;
	int rc, exit_code = 1;

	daemon.started_ms = clock_monotonic_ms();
	if (config->config_path[0] &&
	    daemon_read_file(&daemon, &daemon.file_at_start, err, sizeof(err)) < 0) {
		fprintf(stderr, "ringflyd: %s\n", err);
		return 1;
	}
	daemon_raise_fd_limit();
	signal(SIGPIPE, SIG_IGN);

	rc = loop_create(&daemon.loop, NULL);
	if (rc < 0) {
		fprintf(stderr, "ringflyd: cannot set up io_uring: %s\n", strerror(-rc));
		return 1;
	}
	/* Block the signals before anything can be killed half-way through. */
	sigemptyset(&signals);
	sigaddset(&signals, SIGTERM);
	sigaddset(&signals, SIGINT);
	sigaddset(&signals, SIGHUP);
	rc = loop_signals(daemon.loop, &signals, daemon_signal, &daemon);
	if (rc < 0) {
		fprintf(stderr, "ringflyd: cannot watch signals: %s\n", strerror(-rc));
		goto out_loop;
	}

	rc = uds_listen(&daemon.uds, &uds_options, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "ringflyd: %s\n", err);
		goto out_loop;
	}

	{
		struct store_options store_options = daemon_store_options(config);

		rc = store_open(&daemon.store, daemon.loop, &store_options, err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "ringflyd: %s\n", err);
			goto out_uds;
		}
	}
	if (config->scheduler_addresses[0]) {
		char ip[64];
		struct sched_options sched_options = {
			.addresses = config->scheduler_addresses,
			.timeout_ms = (unsigned)config->scheduler_timeout_ms,
			.ip = ip,
			.location = config->location,
			.seed = strcmp(config->role, "seed") == 0,
			.upload_slots = (unsigned)daemon_config_upload_slots(config),
		};

		sched_options.on_preheat = daemon_on_preheat;
		sched_options.on_preheat_arg = &daemon;
		daemon_advertise_ip(config, ip, sizeof(ip));
		rc = sched_client_create(&daemon.sched, daemon.loop, &sched_options, err,
					 sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "ringflyd: %s\n", err[0] ? err : strerror(-rc));
			goto out_uds;
		}
	}
	{
		struct download_options download_options = {
			.parent_requests = (unsigned)config->download_parent_requests,
			.piece_timeout_ms = (unsigned)config->download_piece_timeout_ms,
			.parent_connections = (unsigned)config->download_parent_connections,
			.parallel = (unsigned)config->download_parallel,
			.memory_bytes = (uint64_t)config->download_memory_bytes,
			.sched = daemon.sched,
			.no_back_to_source = !config->back_to_source,
			.roots = daemon_on_roots,
			.roots_arg = &daemon,
		};

		rc = download_engine_create(&daemon.engine, daemon.loop, daemon.store,
					    &download_options);
	}
	if (rc < 0) {
		fprintf(stderr, "ringflyd: cannot set up downloads: %s\n", strerror(-rc));
		goto out_uds;
	}
	daemon.service.loop = daemon.loop;
	daemon.service.store = daemon.store;
	daemon.service.engine = daemon.engine;
	daemon.service.sched = daemon.sched;
	{
		struct upload_options upload_options = {
			.max_requests = (unsigned)config->upload_max_requests,
			.rate_limit = (uint64_t)config->upload_rate_limit,
			.spread = config->upload_spread,
			.seed = strcmp(config->role, "seed") == 0,
			.engine = daemon.engine,
			.fetch_from = config->seed_fetch_from,
		};

		upload_init(&daemon.upload, daemon.loop, daemon.store, &upload_options);
		daemon.upload_ready = true;
	}

	options = daemon_server_options(&daemon, "cli");
	options.pass_fds = true;
	rc = conn_server_create(&daemon.cli, daemon.loop, &handlers, &options, &daemon);
	if (rc == 0)
		rc = conn_server_listen(daemon.cli, daemon.uds.fd);
	if (rc < 0) {
		fprintf(stderr, "ringflyd: %s: cannot accept: %s\n", daemon.uds.path, strerror(-rc));
		goto out_uds;
	}
	log_info("daemon", "listening path=%s pid=%d role=%s activated=%s single_issuer=%s "
		 "defer_taskrun=%s", daemon.uds.path, (int)getpid(), config->role,
		 daemon.uds.activated ? "yes" : "no",
		 loop_features(daemon.loop)->single_issuer ? "yes" : "no",
		 loop_features(daemon.loop)->defer_taskrun ? "yes" : "no");

	/* Everything below runs while the daemon already answers. */
	loop_op_init(&daemon.recover_op, daemon_recover_done, &daemon);
	loop_nop(daemon.loop, &daemon.recover_op);
	if (config->listen_peer[0]) {
		options = daemon_server_options(&daemon, "upload");
		options.max_connections = (unsigned)daemon_config_upload_slots(config);
		options.idle_timeout_ms = (unsigned)config->upload_idle_timeout_ms;
		options.notsent_lowat = (uint32_t)config->upload_notsent_lowat;
		rc = conn_server_create(&daemon.peer, daemon.loop, &handlers, &options, &daemon);
		if (rc < 0) {
			fprintf(stderr, "ringflyd: peer listener: %s\n", strerror(-rc));
			goto out_servers;
		}
		daemon_peer_listen(&daemon);
	}
	if (daemon_http_setup(&daemon) < 0)
		goto out_servers;
	if (daemon.http)
		daemon_http_listen(&daemon);

	rc = loop_run(daemon.loop);
	if (rc == 0 && daemon.draining) {
		log_info("daemon", "stopped cleanly uptime_ms=%llu",
			 (unsigned long long)(clock_monotonic_ms() - daemon.started_ms));
		exit_code = daemon.failed ? 1 : 0;
	}

out_servers:
	if (daemon.peer_fd >= 0)
		close(daemon.peer_fd);
	if (daemon.http_fd >= 0)
		close(daemon.http_fd);
out_uds:
	mirror_detach(daemon.mirror);
	uds_close(&daemon.uds);
	/* The ring goes first: no completion can arrive for what we free next. */
	loop_destroy(daemon.loop);
	conn_server_destroy(daemon.cli);
	service_fini(&daemon.service);
	conn_server_destroy(daemon.peer);
	http_server_destroy(daemon.http);
	mirror_destroy(daemon.mirror);
	if (daemon.upload_ready)
		upload_fini(&daemon.upload);
	download_engine_destroy(daemon.engine);
	sched_client_destroy(daemon.sched);
	store_close(daemon.store);
	return exit_code;
out_loop:
	loop_destroy(daemon.loop);
	return 1;
}
