/* ringfly: the command-line client of the local ringflyd. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/config.h"
#include "core/hash.h"
#include "daemon/daemon-config.h"
#include "net/uds.h"
#include "rpc/frame.h"
#include "cmd/progress.h"

#define CLI_CONNECT_TIMEOUT_MS 1000u
/* After --timeout, how long the daemon gets to say so itself. */
#define CLI_TIMEOUT_GRACE_MS 5000u

/* Exit codes (docs/INTERFACE-issue5.md). */
enum cli_exit {
	CLI_EXIT_OK = 0,
	CLI_EXIT_FAILED = 1,
	CLI_EXIT_USAGE = 2,
	CLI_EXIT_NO_DAEMON = 3,
	CLI_EXIT_ORIGIN_HTTP = 4,
	CLI_EXIT_ORIGIN_UNREACHABLE = 5,
	CLI_EXIT_INTEGRITY = 6,
	CLI_EXIT_NO_SPACE = 7,
};

struct cli_options {
	char socket_path[UDS_PATH_MAX + 1];
	int64_t timeout_ms;
};

static const struct config_option cli_option_table[] = {
	{ "socket", CONFIG_STRING, offsetof(struct cli_options, socket_path),
	  sizeof(((struct cli_options *)0)->socket_path), 0, 0, NULL },
	{ "timeout", CONFIG_SECONDS, offsetof(struct cli_options, timeout_ms), 0, 1,
	  24LL * 3600 * 1000, NULL },
};

struct cli_call {
	const char *socket_path;
	int fd;
	uint64_t deadline_ms;
	unsigned timeout_ms;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ringfly [--socket PATH] [--timeout DURATION] COMMAND\n"
		"commands:\n"
		"  health    show whether the local ringflyd answers, and its state\n"
		"  get URL -O FILE [-H 'Name: value']... [--digest sha256:HEX] [--timeout D]\n"
		"            [--piece-length BYTES] [--parallel N] [--no-progress] [--insecure]\n"
		"            [--ca-file PEM] [--fsync] [--parent HOST:PORT]... [--rate-limit BYTES]\n"
		"            [--disable-back-to-source]\n"
		"            download URL through ringflyd into FILE (- for stdout)\n"
		"  import FILE             add a local file to the cache; prints its task id\n"
		"  export TASK -O FILE     copy a complete task out of the cache\n"
		"  stat URL|TASK           show a task's state (with schedulers: which peers hold it)\n"
		"  preheat URL [--digest sha256:HEX]\n"
		"                          have the scheduler's seed peers fetch URL now\n"
		"DURATION, D: 30 (seconds), 500ms, 5s, 2m, 1h.\n"
		"Default socket: $RINGFLY_SOCKET, else /run/ringfly/ringflyd.sock.\n");
}

static int cli_fail(const struct cli_call *call, const char *fmt, const char *detail)
{
	fprintf(stderr, "ringfly: no ringflyd at %s: ", call->socket_path);
	fprintf(stderr, fmt, detail);
	fputc('\n', stderr);
	return CLI_EXIT_NO_DAEMON;
}

static volatile sig_atomic_t cli_interrupted;

static void cli_on_signal(int signo)
{
	cli_interrupted = signo;
}

/* Reads exactly len bytes before the call's deadline (0: none). 0,
 * -ETIMEDOUT, -EPIPE (EOF), -EINTR (a signal asked us to stop) or another
 * negative errno. */
static int cli_read_full(struct cli_call *call, uint8_t *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		uint64_t now_ms = clock_monotonic_ms();
		struct pollfd pfd = { .fd = call->fd, .events = POLLIN };
		int wait_ms = -1, ready;
		ssize_t n;

		if (cli_interrupted)
			return -EINTR;
		if (call->deadline_ms) {
			if (now_ms >= call->deadline_ms)
				return -ETIMEDOUT;
			wait_ms = (int)(call->deadline_ms - now_ms);
		}
		ready = poll(&pfd, 1, wait_ms);
		if (ready < 0 && errno == EINTR)
			continue;
		if (ready == 0)
			return -ETIMEDOUT;
		n = read(call->fd, buf + got, len - got);
		if (n == 0)
			return -EPIPE;
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		got += (size_t)n;
	}
	return 0;
}

static int cli_connect(struct cli_call *call, char *err, size_t err_size)
{
	unsigned timeout_ms = call->timeout_ms ? call->timeout_ms : CLI_CONNECT_TIMEOUT_MS;

	call->fd = uds_connect(call->socket_path, CLI_CONNECT_TIMEOUT_MS < timeout_ms ?
			       CLI_CONNECT_TIMEOUT_MS : timeout_ms, timeout_ms, err, err_size);
	return call->fd < 0 ? call->fd : 0;
}

/* Sends one frame; with pass_fd >= 0 that descriptor rides with its first
 * byte (SCM_RIGHTS). */
static int cli_send(struct cli_call *call, uint8_t type, const ProtobufCMessage *message,
		    int pass_fd)
{
	union {
		struct cmsghdr align;
		uint8_t bytes[CMSG_SPACE(sizeof(int))];
	} control;
	size_t size = frame_packed_size(message), sent = 0;
	uint8_t *frame = malloc(size);
	ssize_t n;
	int rc = 0;

	if (!frame)
		return -ENOMEM;
	n = frame_pack(type, message, frame, size);
	if (n < 0) {
		free(frame);
		return (int)n;
	}
	while (sent < (size_t)n) {
		struct iovec iov = { .iov_base = frame + sent, .iov_len = (size_t)n - sent };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t k;

		if (sent == 0 && pass_fd >= 0) {
			struct cmsghdr *c;

			memset(&control, 0, sizeof(control));
			msg.msg_control = control.bytes;
			msg.msg_controllen = sizeof(control.bytes);
			c = CMSG_FIRSTHDR(&msg);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
		}
		k = sendmsg(call->fd, &msg, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			rc = -errno;
			break;
		}
		sent += (size_t)k;
	}
	free(frame);
	return rc;
}

/* Reads one frame: 0 and the decoded message (caller frees) with its type,
 * or a negative errno as cli_read_full, -EPROTO for bytes that are no
 * ringfly frame. */
static int cli_read_frame(struct cli_call *call, uint8_t *type, ProtobufCMessage **out)
{
	uint8_t header[FRAME_HEADER_SIZE];
	uint8_t *body;
	const uint8_t *message = NULL;
	size_t message_len = 0, frame_size = 0;
	enum frame_peek_result result;
	int rc;

	rc = cli_read_full(call, header, sizeof(header));
	if (rc < 0)
		return rc;
	/* The header alone tells the whole frame's size (bounded by the type's
	 * maximum), or that this is no ringfly frame. */
	result = frame_peek(header, sizeof(header), 0, type, &message, &message_len, &frame_size);
	if (result != FRAME_PEEK_OK && result != FRAME_PEEK_NEED_MORE)
		return -EPROTO;
	body = malloc(frame_size);
	if (!body)
		return -ENOMEM;
	memcpy(body, header, sizeof(header));
	rc = cli_read_full(call, body + sizeof(header), frame_size - sizeof(header));
	if (rc == 0 && frame_peek(body, frame_size, 0, type, &message, &message_len,
				  &frame_size) != FRAME_PEEK_OK)
		rc = -EPROTO;
	if (rc == 0) {
		*out = frame_unpack(*type, message, message_len, NULL);
		if (!*out)
			rc = -EPROTO;
	}
	free(body);
	return rc;
}

static const char *cli_read_error(int rc)
{
	switch (rc) {
	case -EPIPE: return "the connection closed before an answer (the daemon stopped?)";
	case -EPROTO: return "the answer is not a valid ringfly frame";
	default: return strerror(-rc);
	}
}

/* Sends one request frame and returns the decoded reply (caller frees) in
 * *reply with its type in *reply_type; prints the reason and returns non-zero
 * on failure. */
static int cli_request(struct cli_call *call, uint8_t type, const ProtobufCMessage *request,
		       int pass_fd, uint8_t *reply_type, ProtobufCMessage **reply)
{
	char err[256];
	int rc;

	if (cli_connect(call, err, sizeof(err)) < 0)
		return cli_fail(call, "%s", err);
	rc = cli_send(call, type, request, pass_fd);
	if (rc < 0)
		return cli_fail(call, "cannot send the request: %s", strerror(-rc));
	rc = cli_read_frame(call, reply_type, reply);
	if (rc == -ETIMEDOUT) {
		snprintf(err, sizeof(err), "%u", call->timeout_ms);
		return cli_fail(call, "no answer within %s ms", err);
	}
	if (rc < 0)
		return cli_fail(call, "%s", cli_read_error(rc));
	return 0;
}

static int cli_exit_for(Ringfly__ErrorCode code)
{
	switch (code) {
	case RINGFLY__ERROR_CODE__ERROR_CODE_ORIGIN_HTTP: return CLI_EXIT_ORIGIN_HTTP;
	case RINGFLY__ERROR_CODE__ERROR_CODE_ORIGIN_UNREACHABLE:
		return CLI_EXIT_ORIGIN_UNREACHABLE;
	case RINGFLY__ERROR_CODE__ERROR_CODE_INTEGRITY: return CLI_EXIT_INTEGRITY;
	case RINGFLY__ERROR_CODE__ERROR_CODE_NO_SPACE: return CLI_EXIT_NO_SPACE;
	default: return CLI_EXIT_FAILED;
	}
}

static int cli_health(struct cli_call *call)
{
	Ringfly__HealthRequest request = RINGFLY__HEALTH_REQUEST__INIT;
	ProtobufCMessage *reply = NULL;
	uint8_t reply_type;
	int rc;

	request.id = 1;
	rc = cli_request(call, FRAME_TYPE_HEALTH_REQUEST, &request.base, -1, &reply_type, &reply);
	if (rc)
		return rc;
	if (reply_type == FRAME_TYPE_ERROR) {
		Ringfly__Error *error = (Ringfly__Error *)reply;

		fprintf(stderr, "ringfly: ringflyd at %s refused: %s\n", call->socket_path,
			error->message);
		rc = 1;
	} else if (reply_type != FRAME_TYPE_HEALTH_RESPONSE) {
		rc = cli_fail(call, "unexpected %s answer", frame_type_name(reply_type));
	} else {
		Ringfly__HealthResponse *health = (Ringfly__HealthResponse *)reply;

		printf("status: ok\n"
		       "version: %s\n"
		       "pid: %u\n"
		       "uptime_ms: %llu\n"
		       "role: %s\n"
		       "socket: %s\n"
		       "connections: %u\n"
		       "socket_activated: %s\n",
		       health->version, health->pid, (unsigned long long)health->uptime_ms,
		       health->role, health->socket_path, health->open_connections,
		       health->socket_activated ? "yes" : "no");
	}
	protobuf_c_message_free_unpacked(reply, NULL);
	return rc;
}

/* --- get. */

struct cli_get_options {
	const char *url;
	const char *output;
	const char *headers[64];
	size_t header_count;
	const char *parents[16];
	size_t parent_count;
	char digest[80];
	int64_t timeout_ms;
	int64_t piece_length;
	int64_t parallel;
	int64_t rate_limit;
	bool no_progress;
	bool no_back_to_source;
	bool insecure;
	bool fsync;
	char ca_file[PATH_MAX];
};

static const struct config_option cli_get_table[] = {
	{ "timeout", CONFIG_SECONDS, offsetof(struct cli_get_options, timeout_ms), 0, 1,
	  7LL * 24 * 3600 * 1000, NULL },
	{ "piece-length", CONFIG_BYTES, offsetof(struct cli_get_options, piece_length), 0,
	  64LL << 10, 1LL << 30, NULL },
	{ "parallel", CONFIG_INT, offsetof(struct cli_get_options, parallel), 0, 1, 64, NULL },
	{ "rate-limit", CONFIG_BYTES, offsetof(struct cli_get_options, rate_limit), 0, 1,
	  INT64_MAX / 1000, NULL },
	{ "digest", CONFIG_STRING, offsetof(struct cli_get_options, digest),
	  sizeof(((struct cli_get_options *)0)->digest), 0, 0, NULL },
	{ "ca-file", CONFIG_STRING, offsetof(struct cli_get_options, ca_file),
	  sizeof(((struct cli_get_options *)0)->ca_file), 0, 0, NULL },
};

/* Where the bytes go until they are complete: a temp file beside the
 * destination (renamed over it at the end), or an unnamed one for stdout. */
struct cli_output {
	const char *final_path;	/* NULL: streamed into sink_fd at the end */
	char temp_path[PATH_MAX];
	char dir[PATH_MAX];
	int fd;			/* what the daemon fills; -1 with `discard` */
	int sink_fd;		/* stdout, or a device or FIFO named by -O */
	bool discard;		/* -O /dev/null: nothing to fill at all */
};

/* The output's filesystem ran out of space (the partial file is gone): which
 * one, what the file needs and what is free there. */
static void cli_output_space_note(const struct cli_output *out, uint64_t total_bytes)
{
	struct statvfs vfs;

	if (statvfs(out->dir, &vfs) < 0)
		return;
	if (total_bytes)
		fprintf(stderr, "ringfly: output %s: the file needs %llu bytes, %s has %llu free\n",
			out->final_path, (unsigned long long)total_bytes, out->dir,
			(unsigned long long)vfs.f_bavail * vfs.f_frsize);
	else
		fprintf(stderr, "ringfly: output %s: %s has %llu bytes free\n", out->final_path,
			out->dir, (unsigned long long)vfs.f_bavail * vfs.f_frsize);
}

/*
 * A regular file (new or not) gets a temp file beside it, renamed over it at
 * the end. Anything else that exists is never replaced: /dev/null (with
 * allow_discard) takes nothing, a device or FIFO gets the bytes written into
 * it at the end, like stdout (-), from an unnamed temp file.
 */
static int cli_output_open(struct cli_output *out, const char *path, bool allow_discard)
{
	char copy[PATH_MAX];
	const char *tmpdir = getenv("TMPDIR");
	struct stat st;
	bool stream = strcmp(path, "-") == 0;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	out->sink_fd = STDOUT_FILENO;
	if (!stream && stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		if (S_ISDIR(st.st_mode)) {
			fprintf(stderr, "ringfly: %s: is a directory\n", path);
			return -1;
		}
		if (allow_discard && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3)) {
			out->discard = true;
			return 0;
		}
		out->sink_fd = open(path, O_WRONLY | O_CLOEXEC);
		if (out->sink_fd < 0) {
			fprintf(stderr, "ringfly: %s: cannot open: %s\n", path, strerror(errno));
			return -1;
		}
		stream = true;
	}
	if (stream) {
		if (!tmpdir || !tmpdir[0])
			tmpdir = "/tmp";
		out->fd = open(tmpdir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (out->fd >= 0)
			return 0;
		snprintf(out->temp_path, sizeof(out->temp_path), "%s/.ringfly-stdout-XXXXXX", tmpdir);
		out->fd = mkostemp(out->temp_path, O_CLOEXEC);
		if (out->fd < 0) {
			fprintf(stderr, "ringfly: %s: cannot create a temporary file: %s\n", tmpdir,
				strerror(errno));
			return -1;
		}
		unlink(out->temp_path);
		out->temp_path[0] = '\0';
		return 0;
	}
	out->final_path = path;
	snprintf(copy, sizeof(copy), "%s", path);
	snprintf(out->dir, sizeof(out->dir), "%s", dirname(copy));
	snprintf(copy, sizeof(copy), "%s", path);
	if ((size_t)snprintf(out->temp_path, sizeof(out->temp_path), "%s/.%s.ringfly-XXXXXX",
			     out->dir, basename(copy)) >= sizeof(out->temp_path)) {
		fprintf(stderr, "ringfly: %s: path too long\n", path);
		return -1;
	}
	out->fd = mkostemp(out->temp_path, O_CLOEXEC);
	if (out->fd < 0) {
		fprintf(stderr, "ringfly: %s: cannot create a file in %s: %s\n", path, out->dir,
			strerror(errno));
		out->temp_path[0] = '\0';
		return -1;
	}
	return 0;
}

/* On failure: nothing at the final path, no temp file left. */
static void cli_output_discard(struct cli_output *out)
{
	if (out->fd >= 0)
		close(out->fd);
	out->fd = -1;
	if (out->sink_fd > STDERR_FILENO)
		close(out->sink_fd);
	out->sink_fd = -1;
	if (out->temp_path[0])
		unlink(out->temp_path);
	out->temp_path[0] = '\0';
}

/* Makes the bytes visible under the final name (or sends them to stdout);
 * with `durable`, on disk first (fsync of the file and its directory), as
 * curl and wget do not by default. */
static int cli_output_commit(struct cli_output *out, uint64_t length, bool durable)
{
	mode_t mask = umask(0);
	int dir_fd;

	umask(mask);
	if (out->discard)
		return 0;
	if (!out->final_path) {
		off_t offset = 0;

		while ((uint64_t)offset < length) {
			ssize_t n = sendfile(out->sink_fd, out->fd, &offset,
					     length - (uint64_t)offset > (1u << 30)
						     ? (1u << 30) : (size_t)(length - (uint64_t)offset));

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				fprintf(stderr, "ringfly: writing to %s: %s\n",
					out->sink_fd == STDOUT_FILENO ? "stdout" : "the output",
					n < 0 ? strerror(errno) : "short write");
				return -1;
			}
		}
		close(out->fd);
		out->fd = -1;
		if (out->sink_fd > STDERR_FILENO)
			close(out->sink_fd);
		out->sink_fd = -1;
		return 0;
	}
	if ((durable && fsync(out->fd) < 0) || fchmod(out->fd, 0666 & ~mask) < 0) {
		fprintf(stderr, "ringfly: %s: %s\n", out->temp_path, strerror(errno));
		return -1;
	}
	if (rename(out->temp_path, out->final_path) < 0) {
		fprintf(stderr, "ringfly: cannot rename %s to %s: %s\n", out->temp_path,
			out->final_path, strerror(errno));
		return -1;
	}
	out->temp_path[0] = '\0';
	close(out->fd);
	out->fd = -1;
	dir_fd = durable ? open(out->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	if (dir_fd >= 0) {
		fsync(dir_fd);
		close(dir_fd);
	}
	return 0;
}

static int cli_get_parse(struct cli_get_options *get, int argc, char **argv)
{
	static const struct option options[] = {
		{ "output", required_argument, NULL, 'O' },
		{ "header", required_argument, NULL, 'H' },
		{ "digest", required_argument, NULL, 'd' },
		{ "timeout", required_argument, NULL, 't' },
		{ "piece-length", required_argument, NULL, 'p' },
		{ "parallel", required_argument, NULL, 'j' },
		{ "no-progress", no_argument, NULL, 'q' },
		{ "insecure", no_argument, NULL, 'k' },
		{ "ca-file", required_argument, NULL, 'c' },
		{ "fsync", no_argument, NULL, 'f' },
		{ "parent", required_argument, NULL, 'P' },
		{ "rate-limit", required_argument, NULL, 'r' },
		{ "disable-back-to-source", no_argument, NULL, 'B' },
		{ NULL, 0, NULL, 0 },
	};
	const size_t table_size = sizeof(cli_get_table) / sizeof(cli_get_table[0]);
	char err[256];
	int opt;

	optind = 0; /* glibc: start over, argv[0] is the command */
	while ((opt = getopt_long(argc, argv, "O:H:", options, NULL)) != -1) {
		const char *key = NULL;

		switch (opt) {
		case 'O': get->output = optarg; break;
		case 'H':
			if (get->header_count == sizeof(get->headers) / sizeof(get->headers[0]) ||
			    !strchr(optarg, ':')) {
				fprintf(stderr, "ringfly: get: -H '%s': want 'Name: value' (at most "
					"64)\n", optarg);
				return -1;
			}
			get->headers[get->header_count++] = optarg;
			break;
		case 'P':
			if (get->parent_count == sizeof(get->parents) / sizeof(get->parents[0]) ||
			    !strchr(optarg, ':')) {
				fprintf(stderr, "ringfly: get: --parent '%s': want HOST:PORT (at most "
					"16)\n", optarg);
				return -1;
			}
			get->parents[get->parent_count++] = optarg;
			break;
		case 'd': key = "digest"; break;
		case 't': key = "timeout"; break;
		case 'p': key = "piece-length"; break;
		case 'j': key = "parallel"; break;
		case 'r': key = "rate-limit"; break;
		case 'B': get->no_back_to_source = true; break;
		case 'c': key = "ca-file"; break;
		case 'q': get->no_progress = true; break;
		case 'k': get->insecure = true; break;
		case 'f': get->fsync = true; break;
		default: return -1;
		}
		if (key && config_set(cli_get_table, table_size, get, key, optarg, err,
				      sizeof(err)) < 0) {
			fprintf(stderr, "ringfly: get: --%s\n", err);
			return -1;
		}
	}
	if (optind + 1 != argc || !get->output) {
		fprintf(stderr, "ringfly: get: want exactly one URL and -O FILE\n");
		return -1;
	}
	get->url = argv[optind];
	if (get->digest[0]) {
		uint8_t digest[HASH_SHA256_SIZE];

		if (hash_parse_sha256(get->digest, digest) < 0) {
			fprintf(stderr, "ringfly: get: --digest \"%s\" is not "
				"sha256:<64 hex digits>\n", get->digest);
			return -1;
		}
	}
	if (get->piece_length && (get->piece_length & (get->piece_length - 1))) {
		fprintf(stderr, "ringfly: get: --piece-length %lld is not a power of two\n",
			(long long)get->piece_length);
		return -1;
	}
	return 0;
}

static int cli_get(struct cli_call *call, int argc, char **argv)
{
	struct cli_get_options get = { 0 };
	Ringfly__DownloadTask request = RINGFLY__DOWNLOAD_TASK__INIT;
	struct cli_output out;
	struct progress progress;
	struct sigaction action = { .sa_handler = cli_on_signal };
	char err[256];
	int rc, exit_code = CLI_EXIT_FAILED;
	uint64_t total_bytes = 0;	/* as the last progress said */
	bool space_note = false;

	if (cli_get_parse(&get, argc, argv) < 0)
		return CLI_EXIT_USAGE;
	sigaction(SIGINT, &action, NULL);
	sigaction(SIGTERM, &action, NULL);
	sigaction(SIGHUP, &action, NULL);
	if (cli_output_open(&out, get.output, true) < 0)
		return CLI_EXIT_FAILED;

	request.id = 1;
	request.url = (char *)get.url;
	request.headers = (char **)get.headers;
	request.n_headers = get.header_count;
	request.digest = get.digest;
	request.piece_length = (uint64_t)get.piece_length;
	request.timeout_ms = (uint32_t)get.timeout_ms;
	request.insecure = get.insecure;
	request.ca_file = get.ca_file;
	request.output_fd = out.fd >= 0;
	request.parallel = (uint32_t)get.parallel;
	request.parents = (char **)get.parents;
	request.n_parents = get.parent_count;
	request.rate_limit = (uint64_t)get.rate_limit;
	request.disable_back_to_source = get.no_back_to_source;
	if (get.ca_file[0] && get.ca_file[0] != '/') {
		/* The daemon resolves paths from its own directory. */
		char absolute[PATH_MAX];

		if (!realpath(get.ca_file, absolute)) {
			fprintf(stderr, "ringfly: get: --ca-file %s: %s\n", get.ca_file,
				strerror(errno));
			cli_output_discard(&out);
			return CLI_EXIT_USAGE;
		}
		snprintf(get.ca_file, sizeof(get.ca_file), "%s", absolute);
	}

	call->timeout_ms = 0;
	call->deadline_ms = 0;
	if (cli_connect(call, err, sizeof(err)) < 0) {
		cli_output_discard(&out);
		return cli_fail(call, "%s", err);
	}
	rc = cli_send(call, FRAME_TYPE_DOWNLOAD_TASK, &request.base, out.fd);
	if (rc < 0) {
		cli_output_discard(&out);
		return cli_fail(call, "cannot send the request: %s", strerror(-rc));
	}
	if (get.timeout_ms)
		call->deadline_ms = clock_monotonic_ms() + (uint64_t)get.timeout_ms +
				    CLI_TIMEOUT_GRACE_MS;
	progress_init(&progress, stderr,
		      out.final_path ? out.final_path : strcmp(get.output, "-") ? get.output : "stdout",
		      get.no_progress);

	for (;;) {
		ProtobufCMessage *reply = NULL;
		uint8_t type;

		rc = cli_read_frame(call, &type, &reply);
		if (rc < 0) {
			progress_clear(&progress);
			if (rc == -EINTR)
				fprintf(stderr, "ringfly: get %s: interrupted\n", get.url);
			else if (rc == -ETIMEDOUT)
				fprintf(stderr, "ringfly: get %s: timed out after %lld ms\n", get.url,
					(long long)get.timeout_ms);
			else
				fprintf(stderr, "ringfly: get %s: ringflyd at %s: %s\n", get.url,
					call->socket_path, cli_read_error(rc));
			exit_code = rc == -EINTR ? 128 + (int)cli_interrupted
				    : rc == -ETIMEDOUT ? CLI_EXIT_ORIGIN_UNREACHABLE : CLI_EXIT_FAILED;
			break;
		}
		if (type == FRAME_TYPE_ERROR) {
			Ringfly__Error *error = (Ringfly__Error *)reply;

			progress_clear(&progress);
			fprintf(stderr, "ringfly: %s\n", error->message);
			exit_code = cli_exit_for(error->code);
			/* The daemon writes into a descriptor: only we can name the
			 * output's filesystem and what it has left. */
			space_note = error->code == RINGFLY__ERROR_CODE__ERROR_CODE_NO_SPACE &&
				     out.final_path && strstr(error->message, "writing the output");
			protobuf_c_message_free_unpacked(reply, NULL);
			break;
		}
		if (type != FRAME_TYPE_DOWNLOAD_PROGRESS) {
			progress_clear(&progress);
			fprintf(stderr, "ringfly: get %s: unexpected %s from ringflyd\n", get.url,
				frame_type_name(type));
			protobuf_c_message_free_unpacked(reply, NULL);
			break;
		}
		Ringfly__DownloadProgress *p = (Ringfly__DownloadProgress *)reply;

		if (!p->done) {
			total_bytes = p->total_bytes;
			progress_update(&progress, p->bytes_done, p->total_bytes,
					p->rate_bytes_per_s, p->source);
			protobuf_c_message_free_unpacked(reply, NULL);
			continue;
		}
		progress_clear(&progress);
		if (cli_output_commit(&out, p->total_bytes, get.fsync) == 0) {
			progress_summary(&progress, p->total_bytes, p->source, p->task_id);
			exit_code = CLI_EXIT_OK;
		}
		protobuf_c_message_free_unpacked(reply, NULL);
		break;
	}
	if (exit_code != CLI_EXIT_OK)
		cli_output_discard(&out);
	if (space_note)
		cli_output_space_note(&out, total_bytes);
	return exit_code;
}

/* --- import, export, stat. */

/* Where the task is, when the daemon asked its scheduler (stat). */
static void cli_print_swarm(const Ringfly__TaskInfo *info)
{
	if (info->swarm_error[0]) {
		printf("scheduler: none answered (%s)\n", info->swarm_error);
		return;
	}
	if (!info->scheduler[0])
		return;
	printf("scheduler: %s\n"
	       "swarm: %u peers know it, %zu hold pieces\n",
	       info->scheduler, info->swarm_peers, info->n_swarm);
	for (size_t i = 0; i < info->n_swarm; i++) {
		const Ringfly__Parent *p = info->swarm[i];

		if (p->complete)
			printf("  %s %s complete\n", p->address[0] ? p->address : p->peer_id,
			       p->seed ? "seed" : "peer");
		else
			printf("  %s %s %u/%u pieces\n", p->address[0] ? p->address : p->peer_id,
			       p->seed ? "seed" : "peer", p->pieces_done, info->piece_count);
	}
}

static int cli_print_info(struct cli_call *call, const char *what, uint8_t type,
			  ProtobufCMessage *reply, bool id_only)
{
	int rc = CLI_EXIT_OK;

	if (type == FRAME_TYPE_ERROR) {
		Ringfly__Error *error = (Ringfly__Error *)reply;

		fprintf(stderr, "ringfly: %s\n", error->message);
		rc = cli_exit_for(error->code);
	} else if (type != FRAME_TYPE_TASK_INFO) {
		fprintf(stderr, "ringfly: %s: unexpected %s from ringflyd at %s\n", what,
			frame_type_name(type), call->socket_path);
		rc = CLI_EXIT_FAILED;
	} else if (id_only) {
		printf("%s\n", ((Ringfly__TaskInfo *)reply)->task_id);
	} else {
		Ringfly__TaskInfo *info = (Ringfly__TaskInfo *)reply;

		printf("task: %s\n"
		       "url: %s\n"
		       "state: %s\n"
		       "length: %llu\n"
		       "piece_length: %llu\n"
		       "pieces: %u/%u\n"
		       "bytes_done: %llu\n"
		       "digest: %s\n",
		       info->task_id, info->url, info->state,
		       (unsigned long long)info->content_length,
		       (unsigned long long)info->piece_length, info->pieces_done, info->piece_count,
		       (unsigned long long)info->bytes_done, info->digest[0] ? info->digest : "none");
		cli_print_swarm(info);
	}
	protobuf_c_message_free_unpacked(reply, NULL);
	return rc;
}

static int cli_stat(struct cli_call *call, const char *name)
{
	Ringfly__StatTask request = RINGFLY__STAT_TASK__INIT;
	ProtobufCMessage *reply = NULL;
	uint8_t type;
	int rc;

	request.id = 1;
	request.url = (char *)name;
	rc = cli_request(call, FRAME_TYPE_STAT_TASK, &request.base, -1, &type, &reply);
	return rc ? rc : cli_print_info(call, "stat", type, reply, false);
}

static int cli_preheat(struct cli_call *call, int argc, char **argv)
{
	Ringfly__Preheat request = RINGFLY__PREHEAT__INIT;
	ProtobufCMessage *reply = NULL;
	const char *url = NULL, *digest = "";
	uint8_t type, parsed[HASH_SHA256_SIZE];
	int rc;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--digest") == 0 && i + 1 < argc)
			digest = argv[++i];
		else if (!url && argv[i][0] != '-')
			url = argv[i];
		else {
			url = NULL; /* anything else: usage */
			break;
		}
	}
	if (!url) {
		fprintf(stderr, "ringfly: preheat: want URL [--digest sha256:HEX]\n");
		return CLI_EXIT_USAGE;
	}
	if (digest[0] && hash_parse_sha256(digest, parsed) < 0) {
		fprintf(stderr, "ringfly: preheat: --digest \"%s\" is not sha256:<64 hex digits>\n",
			digest);
		return CLI_EXIT_USAGE;
	}
	request.id = 1;
	request.url = (char *)url;
	request.digest = (char *)digest;
	call->timeout_ms = 0; /* the daemon bounds it with scheduler.timeout */
	call->deadline_ms = 0;
	rc = cli_request(call, FRAME_TYPE_PREHEAT, &request.base, -1, &type, &reply);
	if (rc)
		return rc;
	if (type == FRAME_TYPE_ERROR) {
		Ringfly__Error *error = (Ringfly__Error *)reply;

		fprintf(stderr, "ringfly: preheat %s: %s\n", url, error->message);
		rc = error->code == RINGFLY__ERROR_CODE__ERROR_CODE_ORIGIN_UNREACHABLE
			     ? CLI_EXIT_ORIGIN_UNREACHABLE : CLI_EXIT_FAILED;
	} else if (type == FRAME_TYPE_PREHEAT_RESPONSE) {
		Ringfly__PreheatResponse *r = (Ringfly__PreheatResponse *)reply;

		printf("preheating %s on", r->task_id);
		for (size_t i = 0; i < r->n_seeds; i++)
			printf("%s%s", i ? "," : " ", r->seeds[i]);
		printf("\n");
	} else {
		fprintf(stderr, "ringfly: preheat: unexpected %s from ringflyd at %s\n",
			frame_type_name(type), call->socket_path);
		rc = CLI_EXIT_FAILED;
	}
	protobuf_c_message_free_unpacked(reply, NULL);
	return rc;
}

static int cli_import(struct cli_call *call, const char *path)
{
	Ringfly__ImportFile request = RINGFLY__IMPORT_FILE__INIT;
	ProtobufCMessage *reply = NULL;
	struct stat st;
	uint8_t type;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "ringfly: import %s: %s\n", path,
			fd < 0 ? strerror(errno) : "not a regular file");
		if (fd >= 0)
			close(fd);
		return CLI_EXIT_FAILED;
	}
	request.id = 1;
	request.name = (char *)path;
	call->timeout_ms = 0; /* hashing a large file takes a while */
	call->deadline_ms = 0;
	rc = cli_request(call, FRAME_TYPE_IMPORT_FILE, &request.base, fd, &type, &reply);
	close(fd);
	return rc ? rc : cli_print_info(call, "import", type, reply, true);
}

static int cli_export(struct cli_call *call, int argc, char **argv)
{
	Ringfly__ExportTask request = RINGFLY__EXPORT_TASK__INIT;
	ProtobufCMessage *reply = NULL;
	struct cli_output out;
	uint8_t type;
	int rc;

	if (argc != 4 || strcmp(argv[2], "-O") != 0) {
		fprintf(stderr, "ringfly: export: want TASK -O FILE\n");
		return CLI_EXIT_USAGE;
	}
	if (cli_output_open(&out, argv[3], false) < 0)
		return CLI_EXIT_FAILED;
	request.id = 1;
	request.task_id = argv[1];
	call->timeout_ms = 0;
	call->deadline_ms = 0;
	rc = cli_request(call, FRAME_TYPE_EXPORT_TASK, &request.base, out.fd, &type, &reply);
	if (rc == 0) {
		uint64_t length = type == FRAME_TYPE_TASK_INFO
					  ? ((Ringfly__TaskInfo *)reply)->content_length : 0;
		bool ok = type == FRAME_TYPE_TASK_INFO;

		rc = cli_print_info(call, "export", type, reply, true);
		if (ok && rc == 0 && cli_output_commit(&out, length, false) < 0)
			rc = CLI_EXIT_FAILED;
	}
	if (rc != 0)
		cli_output_discard(&out);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_options cli = { .timeout_ms = 2000 };
	struct cli_call call = { .fd = -1 };
	const size_t table_size = sizeof(cli_option_table) / sizeof(cli_option_table[0]);
	char err[256];
	int opt, rc;

	snprintf(cli.socket_path, sizeof(cli.socket_path), "%s", daemon_default_socket());
	while ((opt = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
		switch (opt) {
		case 's':
		case 't':
			rc = config_set(cli_option_table, table_size, &cli,
					opt == 's' ? "socket" : "timeout", optarg, err, sizeof(err));
			if (rc < 0) {
				fprintf(stderr, "ringfly: --%s\n", err);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("ringfly %s\n", RINGFLY_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}

	call.socket_path = cli.socket_path;
	call.timeout_ms = (unsigned)cli.timeout_ms;
	call.deadline_ms = clock_monotonic_ms() + call.timeout_ms;
	if (strcmp(argv[optind], "health") == 0 && optind + 1 == argc) {
		rc = cli_health(&call);
	} else if (strcmp(argv[optind], "get") == 0) {
		rc = cli_get(&call, argc - optind, argv + optind);
	} else if (strcmp(argv[optind], "stat") == 0 && optind + 2 == argc) {
		rc = cli_stat(&call, argv[optind + 1]);
	} else if (strcmp(argv[optind], "import") == 0 && optind + 2 == argc) {
		rc = cli_import(&call, argv[optind + 1]);
	} else if (strcmp(argv[optind], "export") == 0) {
		rc = cli_export(&call, argc - optind, argv + optind);
	} else if (strcmp(argv[optind], "preheat") == 0) {
		rc = cli_preheat(&call, argc - optind, argv + optind);
	} else {
		fprintf(stderr, "ringfly: unknown command '%s'\n", argv[optind]);
		usage(stderr);
		rc = 2;
	}
	if (call.fd >= 0)
		close(call.fd);
	return rc;
}
