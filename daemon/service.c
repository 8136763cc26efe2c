/* service: the CLI's requests on the Unix socket: get (DownloadTask), stat, import, export. */
#include "daemon/service.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/hash.h"
#include "core/log.h"

/* How long a stat waits for the task's scheduler before it answers with the
 * local state alone: well inside the CLI's default 2 s deadline. */
#define SERVICE_STAT_SCHED_MS 1000u
#define SERVICE_SWARM_MAX 32u	  /* peers listed (the scheduler sends at most that) */
#define SERVICE_URL_MAX 8192u	  /* a url taken from a scheduler's answer */
/* What an import or an export does per loop turn: a few milliseconds of
 * copying and hashing, then the loop serves everyone else. */
#define SERVICE_JOB_SLICE (4u << 20)
#define SERVICE_JOB_TURN (8u << 20)	/* all jobs together, per loop turn */

/* One get in progress on a connection (the connection's list: conn_user). */
struct service_get {
	struct service *service;
	struct conn *conn;
	struct download_watcher *watcher;	/* a get, or */
	struct sched_request *sched;		/* a preheat or a stat's TaskPeers */
	uint64_t request_id;
	uint8_t task_id[32];
	char task_hex[65];
	char *name;				/* a stat's: the URL or id asked for */
	struct store_job *job;			/* an import or an export, with */
	struct store_task *task;		/* an export's task (held) */
	int fd;					/* the client's file (owned) */
	unsigned turn;				/* the last work turn that stepped it */
	struct service_get *next;
	struct service_get *job_next;		/* service->jobs */
};

static Ringfly__ErrorCode service_error_code(enum download_error_kind kind)
{
	switch (kind) {
	case DOWNLOAD_ERROR_ORIGIN_HTTP: return RINGFLY__ERROR_CODE__ERROR_CODE_ORIGIN_HTTP;
	case DOWNLOAD_ERROR_ORIGIN_UNREACHABLE:
		return RINGFLY__ERROR_CODE__ERROR_CODE_ORIGIN_UNREACHABLE;
	case DOWNLOAD_ERROR_INTEGRITY: return RINGFLY__ERROR_CODE__ERROR_CODE_INTEGRITY;
	case DOWNLOAD_ERROR_NO_SPACE: return RINGFLY__ERROR_CODE__ERROR_CODE_NO_SPACE;
	case DOWNLOAD_ERROR_INVALID: return RINGFLY__ERROR_CODE__ERROR_CODE_INVALID;
	default: return RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL;
	}
}

static const char *service_source_name(const struct download_progress *p)
{
	if (p->source == DOWNLOAD_SOURCE_CACHE)
		return "cache";
	if (p->peer_bytes)
		return p->origin_bytes ? "peers and origin" : "peers";
	return "origin";
}

static void service_send_progress(struct service_get *get, const struct download_progress *p,
				  bool done)
{
	Ringfly__DownloadProgress message = RINGFLY__DOWNLOAD_PROGRESS__INIT;

	message.id = get->request_id;
	message.task_id = (char *)p->task_hex;
	message.bytes_done = p->bytes_done;
	message.total_bytes = p->total_bytes;
	message.rate_bytes_per_s = p->rate_bytes_per_s;
	message.source = (char *)service_source_name(p);
	message.done = done;
	message.origin_bytes = p->origin_bytes;
	message.peer_bytes = p->peer_bytes;
	conn_send_frame(get->conn, FRAME_TYPE_DOWNLOAD_PROGRESS, &message.base);
}

static void service_get_progress(void *arg, const struct download_progress *progress)
{
	service_send_progress(arg, progress, false);
}

static void service_get_unlink(struct service_get *get)
{
	struct service_get *head = conn_user(get->conn);

	if (head == get) {
		conn_set_user(get->conn, get->next);
		return;
	}
	for (struct service_get *g = head; g; g = g->next) {
		if (g->next == get) {
			g->next = get->next;
			return;
		}
	}
}

static void service_get_link(struct service_get *get)
{
	get->next = conn_user(get->conn);
	conn_set_user(get->conn, get);
}

static void service_get_free(struct service_get *get)
{
	free(get->name);
	free(get);
}

static void service_get_done(void *arg, int error, enum download_error_kind kind,
			     const char *message, const struct download_progress *progress)
{
	struct service_get *get = arg;

	service_get_unlink(get);
	if (error == 0)
		service_send_progress(get, progress, true);
	else
		conn_send_error(get->conn, get->request_id, service_error_code(kind), "%s",
				message);
	service_get_free(get);
}

/* What the daemon writes a task into for a client: a regular file it may
 * write (the CLI passes a temp file, or an unnamed one for stdout). */
static bool service_output_ok(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	       (fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDONLY;
}

static void service_download(struct service *service, struct conn *conn,
			     const Ringfly__DownloadTask *request)
{
	static const struct download_watcher_ops ops = {
		.progress = service_get_progress,
		.done = service_get_done,
	};
	struct download_request params = {
		.url = request->url,
		.headers = (const char *const *)request->headers,
		.header_count = request->n_headers,
		.piece_length = request->piece_length,
		.timeout_ms = request->timeout_ms,
		.insecure = request->insecure,
		.ca_file = request->ca_file,
		.parallel = request->parallel,
		.parents = (const char *const *)request->parents,
		.parent_count = request->n_parents,
		.rate_limit = request->rate_limit,
		.no_back_to_source = request->disable_back_to_source,
		.output_fd = -1,
	};
	struct service_get *get;
	char err[768];
	int rc;

	conn_peer(conn, &params.requester_pid, &params.requester_uid);
	if (request->output_fd) {
		params.output_fd = conn_take_fd(conn);
		if (params.output_fd < 0) {
			conn_send_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
					"get %s: the request says an output file descriptor comes "
					"with it, but none arrived", request->url);
			return;
		}
		if (!service_output_ok(params.output_fd)) {
			close(params.output_fd);
			conn_send_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
					"get %s: the output must be a regular file open for "
					"writing", request->url);
			return;
		}
	}
	if (request->digest[0]) {
		if (hash_parse_sha256(request->digest, params.digest) < 0) {
			if (params.output_fd >= 0)
				close(params.output_fd);
			conn_send_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
					"get %s: digest \"%s\" is not sha256:<64 hex digits>",
					request->url, request->digest);
			return;
		}
		params.has_digest = true;
	}
	get = calloc(1, sizeof(*get));
	if (!get) {
		if (params.output_fd >= 0)
			close(params.output_fd);
		conn_send_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				"get %s: out of memory", request->url);
		return;
	}
	get->service = service;
	get->conn = conn;
	get->request_id = request->id;
	rc = download_start(service->engine, &params, &ops, get, &get->watcher, err, sizeof(err));
	if (rc < 0) {
		service_get_free(get);
		conn_send_error(conn, request->id,
				rc == -EINVAL || rc == -E2BIG ? RINGFLY__ERROR_CODE__ERROR_CODE_INVALID
				: rc == -EAGAIN ? RINGFLY__ERROR_CODE__ERROR_CODE_BUSY
				: rc == -EHOSTUNREACH ? RINGFLY__ERROR_CODE__ERROR_CODE_ORIGIN_UNREACHABLE
				: RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL, "%s", err);
		return;
	}
	service_get_link(get);
}

/* --- stat, import, export. */

/* Where a task is in the swarm, for a stat's TaskInfo: its scheduler's
 * answer, or why there is none. */
struct service_swarm {
	const Ringfly__TaskPeersResponse *answer; /* NULL: not asked, or error */
	const char *scheduler;
	const char *error;
};

static void service_fill_info(Ringfly__TaskInfo *message, const struct meta_task *info,
			      char hex[65], char digest[7 + 65])
{
	hash_hex(info->id, hex);
	digest[0] = '\0';
	if (info->has_digest) {
		memcpy(digest, "sha256:", 7);
		hash_hex(info->digest, digest + 7);
	}
	message->task_id = hex;
	message->url = (char *)info->url;
	message->state = info->state == META_TASK_COMPLETE ? "complete"
			 : info->state == META_TASK_FAILED ? "failed" : "pending";
	message->content_length = info->content_length;
	message->piece_length = info->piece_length;
	message->piece_count = info->piece_count;
	message->pieces_done = info->pieces_done;
	message->bytes_done = info->bytes_done;
	message->digest = digest;
}

/* info NULL: this daemon does not hold the task, the swarm's answer says
 * what it is ("absent"). */
static void service_send_info(struct conn *conn, uint64_t request_id, const uint8_t id[32],
			      const struct meta_task *info, const struct service_swarm *swarm)
{
	Ringfly__TaskInfo message = RINGFLY__TASK_INFO__INIT;
	char hex[65], digest[7 + 65] = "";

	message.id = request_id;
	if (info) {
		service_fill_info(&message, info, hex, digest);
	} else {
		hash_hex(id, hex);
		message.task_id = hex;
		message.state = "absent";
		message.digest = digest;
		/* As announced; a scheduler's longer one is not ours to pass on. */
		if (swarm && swarm->answer && strlen(swarm->answer->url) <= SERVICE_URL_MAX) {
			message.url = swarm->answer->url;
			message.content_length = swarm->answer->content_length;
			message.piece_count = swarm->answer->piece_count;
		}
	}
	if (swarm) {
		message.scheduler = (char *)(swarm->scheduler ? swarm->scheduler : "");
		message.swarm_error = (char *)(swarm->error ? swarm->error : "");
		if (swarm->answer) {
			message.n_swarm = swarm->answer->n_peers < SERVICE_SWARM_MAX
						  ? swarm->answer->n_peers : SERVICE_SWARM_MAX;
			message.swarm = swarm->answer->peers;
			message.swarm_peers = swarm->answer->peer_count;
		}
	}
	if (conn_send_frame(conn, FRAME_TYPE_TASK_INFO, &message.base) == -EMSGSIZE && swarm) {
		/* Too large for a TaskInfo (a scheduler's peers with long ids):
		 * the local state alone, and why. */
		message.n_swarm = 0;
		message.swarm_error = "the scheduler's answer does not fit in a TaskInfo";
		conn_send_frame(conn, FRAME_TYPE_TASK_INFO, &message.base);
	}
}

/* The id of a task named by its 64-hex id, or by its URL. */
static void service_task_id(const char *name, uint8_t id[32])
{
	if (strlen(name) != 64 || hash_parse_sha256(name, id) < 0)
		download_task_id(name, id);
}

static int service_find_task(struct service *service, const char *name, struct store_task **out)
{
	uint8_t id[32];

	service_task_id(name, id);
	return store_task_find(service->store, id, out);
}

/* A stat's answer: what this daemon holds (if anything) and the swarm. */
static void service_stat_reply(struct service *service, struct conn *conn, uint64_t request_id,
			       const char *name, const uint8_t id[32],
			       const struct service_swarm *swarm)
{
	struct store_task *task;
	int rc = store_task_find(service->store, id, &task);

	if (rc == 0) {
		service_send_info(conn, request_id, id, store_task_info(task), swarm);
		store_task_release(task);
	} else if (rc == -ENOENT && swarm && swarm->answer && swarm->answer->peer_count) {
		service_send_info(conn, request_id, id, NULL, swarm);
	} else if (rc == -ENOENT && swarm && swarm->error) {
		conn_send_error(conn, request_id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND,
				"stat %s: no such task here, and no scheduler answered (%s)", name,
				swarm->error);
	} else if (rc == -ENOENT && swarm) {
		conn_send_error(conn, request_id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND,
				"stat %s: no such task here nor at scheduler %s", name,
				swarm->scheduler);
	} else {
		conn_send_error(conn, request_id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND,
				"stat %s: %s", name, rc == -ENOENT ? "no such task" : strerror(-rc));
	}
}

static void service_stat_done(void *arg, int error, const Ringfly__TaskPeersResponse *answer,
			      const char *scheduler, const char *reason)
{
	struct service_get *get = arg;
	struct service_swarm swarm = { answer, scheduler, error ? reason : NULL };

	service_get_unlink(get);
	service_stat_reply(get->service, get->conn, get->request_id, get->name, get->task_id,
			   &swarm);
	service_get_free(get);
}

/* With schedulers, the task's scheduler is asked which peers hold it. */
static void service_stat(struct service *service, struct conn *conn,
			 const Ringfly__StatTask *request)
{
	const char *name = request->task_id[0] ? request->task_id : request->url;
	struct service_get *get;
	uint8_t id[32];

	service_task_id(name, id);
	get = service->sched ? calloc(1, sizeof(*get)) : NULL;
	if (get)
		get->name = strdup(name);
	if (get && get->name) {
		/* Ready for the answer before asking: a failure may be
		 * reported from inside sched_task_peers. */
		get->service = service;
		get->conn = conn;
		get->request_id = request->id;
		memcpy(get->task_id, id, 32);
		hash_hex(id, get->task_hex);
		service_get_link(get);
		if (sched_task_peers(service->sched, id, SERVICE_STAT_SCHED_MS, service_stat_done,
				     get, &get->sched) == 0)
			return;
		service_get_unlink(get);
	}
	if (get)
		service_get_free(get);
	service_stat_reply(service, conn, request->id, name, id,
			   service->sched ? &(struct service_swarm){ NULL, "", "out of memory" }
					  : NULL);
}

/* --- imports and exports: a slice per loop turn. */

static void service_job_unlink(struct service *service, struct service_get *get)
{
	for (struct service_get **p = &service->jobs; *p; p = &(*p)->job_next) {
		if (*p == get) {
			*p = get->job_next;
			return;
		}
	}
}

static void service_job_free(struct service_get *get)
{
	store_job_free(get->job);
	if (get->task)
		store_task_release(get->task);
	close(get->fd);
	service_get_free(get);
}

static void service_work_done(struct loop_op *op, int res, uint32_t flags);
static void service_work(struct service *service, uint64_t budget);

static void service_work_arm(struct service *service)
{
	if (service->work_armed || !service->jobs)
		return;
	loop_op_init(&service->work_op, service_work_done, service);
	if (loop_nop(service->loop, &service->work_op) == 0) {
		service->work_armed = true;
		return;
	}
	/* No room in the ring: the jobs run to their end now, as they once
	 * always did, rather than wait for a turn nothing asks for. */
	log_warn("service", "cannot queue a loop turn for imports and exports: running them "
		 "at once");
	while (service->jobs)
		service_work(service, UINT64_MAX);
}

/* Appends at the tail: the jobs served this turn go after those left for the
 * next (round robin under the turn's budget). */
static void service_job_append(struct service *service, struct service_get *get)
{
	struct service_get **tail = &service->jobs;

	while (*tail)
		tail = &(*tail)->job_next;
	get->job_next = NULL;
	*tail = get;
}

static void service_job_reply(struct service_get *get, int rc, const char *err)
{
	const char *what = get->task ? "export" : "import";
	struct store_task *task = NULL;
	uint8_t id[32];

	if (rc == 0 && !get->task) {
		store_job_id(get->job, id);
		rc = store_task_find(get->service->store, id, &task);
		if (rc < 0)
			err = strerror(-rc);
	}
	if (rc < 0) {
		conn_send_error(get->conn, get->request_id,
				rc == -ENOSPC ? RINGFLY__ERROR_CODE__ERROR_CODE_NO_SPACE
				: RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				"%s %s: %s", what, get->name, err);
		return;
	}
	if (get->task) {
		log_info("service", "exported task=%s bytes=%llu", get->task_hex,
			 (unsigned long long)store_job_done(get->job));
		task = get->task;
	}
	service_send_info(get->conn, get->request_id, store_task_info(task)->id,
			  store_task_info(task), NULL);
	if (task != get->task)
		store_task_release(task);
}

/* One slice of every job, each once per turn (a reply may close its
 * connection and with it that connection's other jobs). */
/* A connection with a job is busy: a drain lets the job finish (until the
 * shutdown deadline closes everything). */
static void service_conn_busy_update(struct conn *conn)
{
	bool busy = false;

	for (struct service_get *g = conn_user(conn); g && !busy; g = g->next)
		busy = g->job != NULL;
	conn_set_busy(conn, busy);
}

/* A slice of each job, each at most once and `budget` bytes in all. */
static void service_work(struct service *service, uint64_t budget)
{
	unsigned turn = ++service->work_turn;
	struct service_get *get;

	while (budget) {
		char err[768] = "";
		uint64_t before;
		int rc;

		for (get = service->jobs; get && get->turn == turn; get = get->job_next)
			;
		if (!get)
			break;
		get->turn = turn;
		before = store_job_done(get->job);
		rc = store_job_step(get->job, budget < SERVICE_JOB_SLICE ? (size_t)budget
									 : SERVICE_JOB_SLICE,
				    err, sizeof(err));
		budget -= store_job_done(get->job) - before < budget
				  ? store_job_done(get->job) - before : budget;
		service_job_unlink(service, get);
		if (rc > 0) {
			service_job_append(service, get);
			continue;
		}
		service_get_unlink(get);
		service_conn_busy_update(get->conn);
		service_job_reply(get, rc, err);
		service_job_free(get);
	}
}

static void service_work_done(struct loop_op *op, int res, uint32_t flags)
{
	struct service *service = op->owner;

	(void)res;
	(void)flags;
	service->work_armed = false;
	service_work(service, SERVICE_JOB_TURN);
	service_work_arm(service);
}

static void service_job_start(struct service *service, struct service_get *get)
{
	get->turn = service->work_turn;
	service_job_append(service, get);
	service_get_link(get);
	conn_set_busy(get->conn, true);
	service_work_arm(service);
}

/* The request's file, checked; -1 after an error was sent. */
static int service_job_fd(struct conn *conn, uint64_t request_id, const char *what,
			  const char *name, bool output)
{
	int fd = conn_take_fd(conn);

	if (fd < 0) {
		conn_send_error(conn, request_id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				"%s %s: no file descriptor came with the request", what, name);
		return -1;
	}
	/* A pipe or socket would block the loop in the copy for as long as the
	 * other end pleases. */
	if (output && !service_output_ok(fd)) {
		close(fd);
		conn_send_error(conn, request_id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				"%s %s: the output must be a regular file open for writing", what,
				name);
		return -1;
	}
	return fd;
}

static struct service_get *service_job_new(struct service *service, struct conn *conn,
					   uint64_t request_id, const char *what,
					   const char *name, int fd)
{
	struct service_get *get = calloc(1, sizeof(*get));

	if (get)
		get->name = strdup(name);
	if (!get || !get->name) {
		free(get);
		close(fd);
		conn_send_error(conn, request_id, RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				"%s %s: out of memory", what, name);
		return NULL;
	}
	get->service = service;
	get->conn = conn;
	get->request_id = request_id;
	get->fd = fd;
	return get;
}

static void service_import(struct service *service, struct conn *conn,
			   const Ringfly__ImportFile *request)
{
	int fd = service_job_fd(conn, request->id, "import", request->name, false);
	struct service_get *get;
	char err[768] = "";
	int rc;

	if (fd < 0)
		return;
	get = service_job_new(service, conn, request->id, "import", request->name, fd);
	if (!get)
		return;
	rc = store_import_begin(service->store, fd, request->name, &get->job, err, sizeof(err));
	if (rc == 0) {
		int pid;
		unsigned uid;

		conn_peer(conn, &pid, &uid);
		log_info("service", "import name=%s pid=%d uid=%u", request->name, pid, uid);
	}
	if (rc < 0) {
		conn_send_error(conn, request->id,
				rc == -ENOSPC ? RINGFLY__ERROR_CODE__ERROR_CODE_NO_SPACE
				: rc == -EINVAL ? RINGFLY__ERROR_CODE__ERROR_CODE_INVALID
				: RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				"import %s: %s", request->name, err);
		service_job_free(get);
		return;
	}
	service_job_start(service, get);
}

static void service_export(struct service *service, struct conn *conn,
			   const Ringfly__ExportTask *request)
{
	int fd = service_job_fd(conn, request->id, "export", request->task_id, true);
	struct service_get *get;
	char err[768] = "";
	int rc;

	if (fd < 0)
		return;
	get = service_job_new(service, conn, request->id, "export", request->task_id, fd);
	if (!get)
		return;
	rc = service_find_task(service, request->task_id, &get->task);
	if (rc < 0) {
		conn_send_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND,
				"export %s: %s", request->task_id,
				rc == -ENOENT ? "no such task" : strerror(-rc));
		service_job_free(get);
		return;
	}
	hash_hex(store_task_info(get->task)->id, get->task_hex);
	rc = store_export_begin(get->task, fd, &get->job, err, sizeof(err));
	if (rc < 0) {
		conn_send_error(conn, request->id,
				rc == -EAGAIN ? RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND
					      : RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				"export %s: %s", request->task_id, err);
		service_job_free(get);
		return;
	}
	service_job_start(service, get);
}

static void service_preheat_done(void *arg, int error, const char *seeds, const char *reason)
{
	struct service_get *get = arg;
	Ringfly__PreheatResponse response = RINGFLY__PREHEAT_RESPONSE__INIT;
	char *list[8];
	char copy[1024];
	size_t n = 0;

	service_get_unlink(get);
	if (error) {
		conn_send_error(get->conn, get->request_id,
				error == -ENOENT ? RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND
						 : RINGFLY__ERROR_CODE__ERROR_CODE_ORIGIN_UNREACHABLE,
				"%s", reason);
		service_get_free(get);
		return;
	}
	snprintf(copy, sizeof(copy), "%s", seeds);
	for (char *save = NULL, *s = strtok_r(copy, ",", &save); s && n < 8;
	     s = strtok_r(NULL, ",", &save))
		list[n++] = s;
	response.id = get->request_id;
	response.seeds = list;
	response.n_seeds = n;
	response.task_id = (char *)get->task_hex;
	conn_send_frame(get->conn, FRAME_TYPE_PREHEAT_RESPONSE, &response.base);
	service_get_free(get);
}

static void service_preheat(struct service *service, struct conn *conn,
			    const Ringfly__Preheat *request)
{
	struct service_get *get;
	uint8_t id[32];
	int rc;

	if (!service->sched) {
		conn_send_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				"preheat %s: this ringflyd has no scheduler (scheduler.addresses)",
				request->url);
		return;
	}
	if (strncmp(request->url, "http://", 7) != 0 && strncmp(request->url, "https://", 8) != 0) {
		conn_send_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID,
				"preheat %s: only http:// and https:// URLs are supported",
				request->url);
		return;
	}
	get = calloc(1, sizeof(*get));
	if (!get) {
		conn_send_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				"preheat %s: out of memory", request->url);
		return;
	}
	download_task_id(request->url, id);
	hash_hex(id, get->task_hex);
	get->service = service;
	get->conn = conn;
	get->request_id = request->id;
	log_info("download", "preheat task=%s url=%s", get->task_hex, request->url);
	/* Linked before asking: a failure may be reported from inside. */
	service_get_link(get);
	rc = sched_preheat(service->sched, id, request->url, request->digest,
			   service_preheat_done, get, &get->sched);
	if (rc < 0) {
		service_get_unlink(get);
		service_get_free(get);
		conn_send_error(conn, request->id, RINGFLY__ERROR_CODE__ERROR_CODE_INTERNAL,
				"preheat %s: %s", request->url, strerror(-rc));
	}
}

void service_conn_closed(struct service *service, struct conn *conn)
{
	while (conn_user(conn)) {
		struct service_get *get = conn_user(conn);

		conn_set_user(conn, get->next);
		if (get->watcher)
			download_watcher_cancel(get->watcher);
		if (get->sched)
			sched_cancel(get->sched);
		if (get->job) {
			/* An import abandoned leaves nothing; an export, what it
			 * wrote into the client's temp file, which the CLI removes. */
			log_info("service", "%s abandoned, its client is gone name=%s bytes=%llu",
				 get->task ? "export" : "import", get->name,
				 (unsigned long long)store_job_done(get->job));
			service_job_unlink(service, get);
			service_job_free(get);
			continue;
		}
		service_get_free(get);
	}
}

void service_fini(struct service *service)
{
	while (service->jobs) {
		struct service_get *get = service->jobs;

		service->jobs = get->job_next;
		service_job_free(get);
	}
}

bool service_frame(struct service *service, struct conn *conn, uint8_t type,
		   const ProtobufCMessage *msg)
{
	switch (type) {
	case FRAME_TYPE_PREHEAT:
		service_preheat(service, conn, (const Ringfly__Preheat *)msg);
		return true;
	case FRAME_TYPE_DOWNLOAD_TASK:
		service_download(service, conn, (const Ringfly__DownloadTask *)msg);
		return true;
	case FRAME_TYPE_STAT_TASK:
		service_stat(service, conn, (const Ringfly__StatTask *)msg);
		return true;
	case FRAME_TYPE_IMPORT_FILE:
		service_import(service, conn, (const Ringfly__ImportFile *)msg);
		return true;
	case FRAME_TYPE_EXPORT_TASK:
		service_export(service, conn, (const Ringfly__ExportTask *)msg);
		return true;
	default:
		return false;
	}
}
