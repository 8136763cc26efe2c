/* ringfly: the command-line client of the local ringflyd. */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/config.h"
#include "daemon/daemon-config.h"
#include "net/uds.h"
#include "rpc/frame.h"

#define CLI_CONNECT_TIMEOUT_MS 1000u

struct cli_options {
	char socket_path[UDS_PATH_MAX + 1];
	int64_t timeout_ms;
};

static const struct config_option cli_option_table[] = {
	{ "socket", CONFIG_STRING, offsetof(struct cli_options, socket_path),
	  sizeof(((struct cli_options *)0)->socket_path), 0, 0, NULL },
	{ "timeout", CONFIG_DURATION, offsetof(struct cli_options, timeout_ms), 0, 1,
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
		"Default socket: $RINGFLY_SOCKET, else /run/ringfly/ringflyd.sock.\n");
}

static int cli_fail(const struct cli_call *call, const char *fmt, const char *detail)
{
	fprintf(stderr, "ringfly: no ringflyd at %s: ", call->socket_path);
	fprintf(stderr, fmt, detail);
	fputc('\n', stderr);
	return 1;
}

/* Reads exactly len bytes before the call's deadline. 0, -ETIMEDOUT, -EPIPE
 * (EOF) or another negative errno. */
static int cli_read_full(struct cli_call *call, uint8_t *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		uint64_t now_ms = clock_monotonic_ms();
		struct pollfd pfd = { .fd = call->fd, .events = POLLIN };
		ssize_t n;

		if (now_ms >= call->deadline_ms)
			return -ETIMEDOUT;
		if (poll(&pfd, 1, (int)(call->deadline_ms - now_ms)) == 0)
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

/* Sends one request frame and returns the decoded reply (caller frees) in
 * *reply with its type in *reply_type; prints the reason and returns 1 on
 * failure. */
static int cli_request(struct cli_call *call, uint8_t type, const ProtobufCMessage *request,
		       uint8_t *reply_type, ProtobufCMessage **reply)
{
	uint8_t header[FRAME_HEADER_SIZE], frame[4096];
	uint8_t *body = NULL;
	const uint8_t *message = NULL;
	size_t message_len = 0, frame_size = 0;
	char err[256];
	ssize_t n;
	int rc;

	call->fd = uds_connect(call->socket_path, CLI_CONNECT_TIMEOUT_MS < call->timeout_ms ?
			       CLI_CONNECT_TIMEOUT_MS : call->timeout_ms, call->timeout_ms,
			       err, sizeof(err));
	if (call->fd < 0)
		return cli_fail(call, "%s", err);

	n = frame_pack(type, request, frame, sizeof(frame));
	if (n < 0 || write(call->fd, frame, (size_t)n) != n)
		return cli_fail(call, "cannot send the request: %s",
				n < 0 ? strerror((int)-n) : strerror(errno));

	rc = cli_read_full(call, header, sizeof(header));
	if (rc == 0) {
		/* The header alone tells the whole frame's size (bounded by the
		 * type's maximum), or that this is no ringfly frame. */
		enum frame_peek_result result = frame_peek(header, sizeof(header), 0, reply_type,
							   &message, &message_len, &frame_size);
		if (result != FRAME_PEEK_OK && result != FRAME_PEEK_NEED_MORE)
			return cli_fail(call, "%s", "the answer is not a valid ringfly frame");
		body = malloc(frame_size);
		if (!body)
			return cli_fail(call, "%s", "out of memory");
		memcpy(body, header, sizeof(header));
		rc = cli_read_full(call, body + sizeof(header), frame_size - sizeof(header));
	}
	if (rc == -ETIMEDOUT) {
		free(body);
		snprintf(err, sizeof(err), "%u", call->timeout_ms);
		return cli_fail(call, "no answer within %s ms", err);
	}
	if (rc < 0) {
		free(body);
		return cli_fail(call, "%s", rc == -EPIPE ?
				"the connection closed before an answer (the daemon stopped?)" :
				strerror(-rc));
	}
	if (frame_peek(body, frame_size, 0, reply_type, &message, &message_len, &frame_size) !=
	    FRAME_PEEK_OK) {
		free(body);
		return cli_fail(call, "%s", "the answer is not a valid ringfly frame");
	}
	*reply = frame_unpack(*reply_type, message, message_len, NULL);
	free(body);
	if (!*reply)
		return cli_fail(call, "%s", "the answer does not decode");
	return 0;
}

static int cli_health(struct cli_call *call)
{
	Ringfly__HealthRequest request = RINGFLY__HEALTH_REQUEST__INIT;
	ProtobufCMessage *reply = NULL;
	uint8_t reply_type;
	int rc;

	request.id = 1;
	rc = cli_request(call, FRAME_TYPE_HEALTH_REQUEST, &request.base, &reply_type, &reply);
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
	} else {
		fprintf(stderr, "ringfly: unknown command '%s'\n", argv[optind]);
		usage(stderr);
		rc = 2;
	}
	if (call.fd >= 0)
		close(call.fd);
	return rc;
}
