/*
 * rf-badpeer: a parent that speaks the peer protocol (docs/INTERFACE-issue6.md)
 * for one file, well or badly, so that the tests can make a child meet a
 * corrupt, stalling or vanishing parent on demand.
 *
 *     rf-badpeer --listen HOST:PORT --url URL --file PATH --piece-length N
 *                --mode good|corrupt|stall|close-after:K|hold-half|notfound-reannounce|
 *                       notfound-once [--fake-length N]
 *
 * Prints "port=N" on stdout (flushed) once listening. The task is URL's
 * (sha256("ringfly-task-v1\n" + URL), fragment dropped), its content the
 * bytes of PATH cut into pieces of N bytes. SyncPieces of that task gets every
 * piece and done (in frames of at most 65536 numbers); any other task gets
 * Error NOT_FOUND and the connection stays open. GetPiece gets PieceHeader
 * {id, number, offset, length, crc32c of the true bytes} and the payload:
 *
 *   good           the true bytes
 *   corrupt        one byte of every payload flipped (the header's crc32c
 *                  stays that of the true bytes)
 *   stall          SyncPieces answered, GetPiece never; connections stay open
 *   close-after:K  K pieces served correctly (over all connections), then
 *                  piece K+1 gets its header and half its bytes and every
 *                  connection is closed; later connections are closed at once
 *   hold-half      the header and half the payload, then nothing more on that
 *                  connection (it stays open)
 *   notfound-reannounce  availability never done, piece 0 announced again every
 *                  100 ms, every GetPiece answered Error NOT_FOUND
 *   notfound-once  the same, but only the first GetPiece of each connection
 *                  gets NOT_FOUND (an honest parent that dropped a damaged
 *                  piece and has it again); the rest are served
 *   --fake-length N  announce N bytes instead of the file's length
 *
 * GetPiece of another task: Error NOT_FOUND; a number past the last piece:
 * Error INVALID. A malformed frame or one of a type it does not take: Error,
 * then close. Hello frames are ignored.
 *
 * One thread, poll(2), non-blocking sockets, one output queue per connection
 * (input is read only while that queue holds less than OUT_HIGH bytes, so a
 * child that does not read cannot make it grow without bound).
 *
 * SIGTERM/SIGINT: prints "served=N corrupt=M" on stderr (pieces whose whole
 * payload was queued; corrupt ones among them) and exits 0. Events go to
 * stderr one line each ("badpeer: ..."). Exit 1 on a setup error, 2 on usage.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/hash.h"
#include "rpc/frame.h"

#define CONN_MAX	 256
#define IN_CAP		 (64u << 10) /* requests are small; frame limit below */
#define FRAME_LIMIT	 (16u << 10)
#define OUT_HIGH	 (8u << 20) /* stop reading input above this much queued */
#define SYNC_NUMBERS_MAX 65536u

enum mode { MODE_GOOD, MODE_CORRUPT, MODE_STALL, MODE_CLOSE_AFTER, MODE_HOLD_HALF,
	    MODE_NOTFOUND_REANNOUNCE };

struct peer_conn {
	int fd;
	char name[64];
	uint8_t in[IN_CAP];
	size_t in_len;
	uint8_t *out;
	size_t out_pos, out_len, out_cap;
	bool closing; /* flush what is queued, then shut down */
	bool shut;    /* FIN sent: input is read and dropped until EOF */
	bool held;    /* hold-half: a half piece sent, nothing more ever */
	bool synced;  /* notfound-reannounce: gets availability again each second */
	uint64_t sync_id;
	bool denied_once; /* notfound-once: its first GetPiece was answered NOT_FOUND */
};

static struct {
	enum mode mode;
	bool notfound_once; /* notfound-once: notfound-reannounce, served after one NOT_FOUND */
	uint64_t close_after;
	bool tripped; /* close-after: K pieces were served */
	uint8_t task_id[HASH_SHA256_SIZE];
	char task_hex[HASH_SHA256_HEX_SIZE];
	const uint8_t *content;
	uint64_t content_length;
	uint64_t piece_length;
	uint32_t piece_count;
	uint64_t fake_length; /* --fake-length: announced instead of the true length */
	uint32_t fake_count;
	uint64_t served, corrupt;
	struct peer_conn *conns[CONN_MAX];
} bp;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void die(const char *what)
{
	fprintf(stderr, "rf-badpeer: %s\n", what);
	exit(1);
}

static uint32_t piece_bytes(uint32_t number)
{
	uint64_t offset = (uint64_t)number * bp.piece_length;
	uint64_t left = bp.content_length - offset;

	return (uint32_t)(left < bp.piece_length ? left : bp.piece_length);
}

/* Room for `more` bytes at the end of the output queue; returns where they go. */
static uint8_t *out_reserve(struct peer_conn *c, size_t more)
{
	if (c->out_pos == c->out_len)
		c->out_pos = c->out_len = 0;
	if (c->out_len + more > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		uint8_t *p;

		while (cap < c->out_len + more)
			cap *= 2;
		p = realloc(c->out, cap);
		if (!p)
			die("out of memory");
		c->out = p;
		c->out_cap = cap;
	}
	return c->out + c->out_len;
}

static void out_frame(struct peer_conn *c, uint8_t type, const ProtobufCMessage *msg)
{
	size_t size = frame_packed_size(msg);
	ssize_t n = frame_pack(type, msg, out_reserve(c, size), size);

	if (n < 0)
		die("frame_pack failed");
	c->out_len += (size_t)n;
}

static void out_error(struct peer_conn *c, uint64_t id, Ringfly__ErrorCode code,
		      const char *message)
{
	uint8_t buf[512];
	ssize_t n = frame_pack_error(id, code, message, buf, sizeof(buf));

	if (n < 0)
		die("frame_pack_error failed");
	memcpy(out_reserve(c, (size_t)n), buf, (size_t)n);
	c->out_len += (size_t)n;
}

static void conn_close(struct peer_conn *c)
{
	for (int i = 0; i < CONN_MAX; i++)
		if (bp.conns[i] == c)
			bp.conns[i] = NULL;
	close(c->fd);
	free(c->out);
	free(c);
}

static bool task_is_ours(const ProtobufCBinaryData *task_id)
{
	return task_id->len == HASH_SHA256_SIZE &&
	       memcmp(task_id->data, bp.task_id, HASH_SHA256_SIZE) == 0;
}

static void on_sync(struct peer_conn *c, const Ringfly__SyncPieces *req)
{
	uint32_t *numbers;
	uint32_t next = 0;

	if (!task_is_ours(&req->task_id)) {
		fprintf(stderr, "badpeer: sync of an unknown task peer=%s\n", c->name);
		out_error(c, req->id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND, "no such task");
		return;
	}
	c->synced = true;
	c->sync_id = req->id;
	fprintf(stderr, "badpeer: sync task=%s peer=%s pieces=%u\n", bp.task_hex, c->name,
		bp.piece_count);
	numbers = malloc(sizeof(*numbers) * SYNC_NUMBERS_MAX);
	if (!numbers)
		die("out of memory");
	do {
		Ringfly__PieceAvailability avail = RINGFLY__PIECE_AVAILABILITY__INIT;
		uint32_t n = 0;

		while (n < SYNC_NUMBERS_MAX && next < bp.piece_count)
			numbers[n++] = next++;
		avail.id = req->id;
		avail.content_length = bp.fake_length ? bp.fake_length : bp.content_length;
		avail.piece_length = bp.piece_length;
		avail.n_pieces = n;
		avail.pieces = numbers;
		avail.done = next == bp.piece_count && bp.mode != MODE_NOTFOUND_REANNOUNCE;
		out_frame(c, FRAME_TYPE_PIECE_AVAILABILITY, &avail.base);
	} while (next < bp.piece_count);
	free(numbers);
}

/* close-after: piece K+1 half sent, then every connection goes. */
static void trip(struct peer_conn *c, const Ringfly__GetPiece *req)
{
	Ringfly__PieceHeader header = RINGFLY__PIECE_HEADER__INIT;
	uint32_t length = piece_bytes(req->number);
	uint64_t offset = (uint64_t)req->number * bp.piece_length;

	header.id = req->id;
	header.number = req->number;
	header.offset = offset;
	header.length = length;
	header.crc32c = hash_crc32c(bp.content + offset, length);
	out_frame(c, FRAME_TYPE_PIECE_HEADER, &header.base);
	memcpy(out_reserve(c, length / 2), bp.content + offset, length / 2);
	c->out_len += length / 2;
	bp.tripped = true;
	fprintf(stderr,
		"badpeer: closing every connection at piece %u (half of %u bytes) "
		"after %llu served\n",
		req->number, length, (unsigned long long)bp.served);
	for (int i = 0; i < CONN_MAX; i++)
		if (bp.conns[i])
			bp.conns[i]->closing = true;
}

static void on_get(struct peer_conn *c, const Ringfly__GetPiece *req)
{
	Ringfly__PieceHeader header = RINGFLY__PIECE_HEADER__INIT;
	uint32_t length;
	uint64_t offset;
	uint8_t *payload;

	if (!task_is_ours(&req->task_id)) {
		out_error(c, req->id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND, "no such task");
		return;
	}
	if (req->number >= bp.piece_count) {
		char msg[96];

		snprintf(msg, sizeof(msg), "piece %u out of range (%u pieces)", req->number,
			 bp.piece_count);
		out_error(c, req->id, RINGFLY__ERROR_CODE__ERROR_CODE_INVALID, msg);
		return;
	}
	if (bp.mode == MODE_STALL || c->held)
		return; /* never answered */
	if (bp.mode == MODE_NOTFOUND_REANNOUNCE && (!bp.notfound_once || !c->denied_once)) {
		/* notfound-once: an honest parent whose piece was dropped as
		 * damaged, fetched again and announced again: NOT_FOUND to the
		 * first GetPiece of each connection, served from then on. */
		c->denied_once = true;
		out_error(c, req->id, RINGFLY__ERROR_CODE__ERROR_CODE_NOT_FOUND, "gone meanwhile");
		return;
	}
	if (bp.mode == MODE_CLOSE_AFTER && bp.served >= bp.close_after) {
		trip(c, req);
		return;
	}
	length = piece_bytes(req->number);
	offset = (uint64_t)req->number * bp.piece_length;
	header.id = req->id;
	header.number = req->number;
	header.offset = offset;
	header.length = length;
	header.crc32c = hash_crc32c(bp.content + offset, length);
	out_frame(c, FRAME_TYPE_PIECE_HEADER, &header.base);
	if (bp.mode == MODE_HOLD_HALF) {
		memcpy(out_reserve(c, length / 2), bp.content + offset, length / 2);
		c->out_len += length / 2;
		c->held = true;
		fprintf(stderr, "badpeer: holding piece %u half sent peer=%s\n", req->number, c->name);
		return;
	}
	payload = out_reserve(c, length);
	memcpy(payload, bp.content + offset, length);
	if (bp.mode == MODE_CORRUPT && length > 0) {
		payload[length / 2] ^= 0x5a;
		bp.corrupt++;
	}
	c->out_len += length;
	bp.served++;
}

/* Handles every whole frame in c->in (a bad one sets c->closing); always true. */
static bool conn_parse(struct peer_conn *c)
{
	size_t used = 0;

	while (!c->closing && c->out_len - c->out_pos < OUT_HIGH) {
		const uint8_t *message;
		size_t message_len, frame_size;
		uint8_t type;
		ProtobufCMessage *msg;
		enum frame_peek_result r = frame_peek(c->in + used, c->in_len - used, FRAME_LIMIT,
						      &type, &message, &message_len, &frame_size);

		if (r == FRAME_PEEK_NEED_MORE)
			break;
		if (r != FRAME_PEEK_OK) {
			fprintf(stderr, "badpeer: bad frame from %s (peek %d)\n", c->name, (int)r);
			out_error(c, 0,
				  r == FRAME_PEEK_TOO_LARGE ?
					  RINGFLY__ERROR_CODE__ERROR_CODE_FRAME_TOO_LARGE :
					  RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED,
				  "bad frame");
			c->closing = true;
			break;
		}
		msg = frame_unpack(type, message, message_len, NULL);
		if (!msg) {
			out_error(c, 0, RINGFLY__ERROR_CODE__ERROR_CODE_MALFORMED,
				  "malformed message");
			c->closing = true;
			break;
		}
		switch (type) {
		case FRAME_TYPE_HELLO:
			break;
		case FRAME_TYPE_SYNC_PIECES:
			on_sync(c, (const Ringfly__SyncPieces *)msg);
			break;
		case FRAME_TYPE_GET_PIECE:
			on_get(c, (const Ringfly__GetPiece *)msg);
			break;
		default:
			out_error(c, 0, RINGFLY__ERROR_CODE__ERROR_CODE_UNEXPECTED,
				  "unexpected message");
			c->closing = true;
			break;
		}
		protobuf_c_message_free_unpacked(msg, NULL);
		used += frame_size;
	}
	memmove(c->in, c->in + used, c->in_len - used);
	c->in_len -= used;
	return true;
}

/* Reads what is there; false: EOF or error (close). */
static bool conn_read(struct peer_conn *c)
{
	for (;;) {
		ssize_t n;

		if (c->in_len == IN_CAP) {
			/* A frame bigger than FRAME_LIMIT was caught by peek already. */
			return conn_parse(c) && c->in_len < IN_CAP;
		}
		n = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
		if (n > 0) {
			c->in_len += (size_t)n;
			if (!conn_parse(c))
				return false;
			if (c->out_len - c->out_pos >= OUT_HIGH || c->closing)
				return true;
			continue;
		}
		if (n == 0)
			return false;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN || errno == EWOULDBLOCK;
	}
}

/* After our FIN: reads and drops input; false at the child's EOF or an error. */
static bool conn_drain(struct peer_conn *c)
{
	uint8_t buf[4096];

	for (;;) {
		ssize_t n = read(c->fd, buf, sizeof(buf));

		if (n > 0)
			continue;
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
	}
}

/* Writes what is queued; false: error (close). */
static bool conn_write(struct peer_conn *c)
{
	while (c->out_pos < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_pos, c->out_len - c->out_pos, MSG_NOSIGNAL);

		if (n > 0) {
			c->out_pos += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		return false;
	}
	return true;
}

static void accept_all(int listen_fd)
{
	for (;;) {
		struct sockaddr_in addr;
		socklen_t len = sizeof(addr);
		int fd = accept4(listen_fd, (struct sockaddr *)&addr, &len,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct peer_conn *c;
		int slot = -1, one = 1;

		if (fd < 0)
			return;
		if (bp.tripped) {
			close(fd);
			continue;
		}
		for (int i = 0; i < CONN_MAX; i++) {
			if (!bp.conns[i]) {
				slot = i;
				break;
			}
		}
		if (slot < 0) {
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (!c)
			die("out of memory");
		c->fd = fd;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		snprintf(c->name, sizeof(c->name), "%s:%u", inet_ntoa(addr.sin_addr),
			 ntohs(addr.sin_port));
		bp.conns[slot] = c;
		fprintf(stderr, "badpeer: connection from %s\n", c->name);
	}
}

static int parse_listen(const char *text, struct sockaddr_in *addr)
{
	const char *colon = strrchr(text, ':');
	char host[64];
	char *end;
	unsigned long port;

	if (!colon || (size_t)(colon - text) >= sizeof(host))
		return -EINVAL;
	memcpy(host, text, (size_t)(colon - text));
	host[colon - text] = '\0';
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || port > 65535)
		return -EINVAL;
	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &addr->sin_addr) != 1)
		return -EINVAL;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: rf-badpeer --listen HOST:PORT --url URL --file PATH "
			"--piece-length N --mode good|corrupt|stall|close-after:K\n");
	exit(2);
}

static void load_file(const char *path)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) != 0) {
		fprintf(stderr, "rf-badpeer: open %s: %s\n", path, strerror(errno));
		exit(1);
	}
	bp.content_length = (uint64_t)st.st_size;
	bp.content = (const uint8_t *)"";
	if (st.st_size > 0) {
		void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);

		if (p == MAP_FAILED) {
			fprintf(stderr, "rf-badpeer: mmap %s: %s\n", path, strerror(errno));
			exit(1);
		}
		bp.content = p;
	}
	close(fd);
}

int main(int argc, char **argv)
{
	const char *listen_text = NULL, *url = NULL, *file = NULL, *mode = NULL;
	struct sockaddr_in addr;
	socklen_t addr_len = sizeof(addr);
	struct sigaction sa;
	sigset_t block, orig;
	char *end;
	int listen_fd, one = 1;

	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		if (strcmp(argv[i], "--listen") == 0)
			listen_text = argv[++i];
		else if (strcmp(argv[i], "--url") == 0)
			url = argv[++i];
		else if (strcmp(argv[i], "--file") == 0)
			file = argv[++i];
		else if (strcmp(argv[i], "--piece-length") == 0) {
			errno = 0;
			bp.piece_length = strtoull(argv[++i], &end, 10);
			if (errno || *end || bp.piece_length == 0 || bp.piece_length > (1u << 30))
				usage();
		} else if (strcmp(argv[i], "--fake-length") == 0) {
			bp.fake_length = strtoull(argv[++i], &end, 10);
		} else if (strcmp(argv[i], "--mode") == 0)
			mode = argv[++i];
		else
			usage();
	}
	if (!listen_text || !url || !file || !mode || !bp.piece_length)
		usage();
	if (strcmp(mode, "good") == 0) {
		bp.mode = MODE_GOOD;
	} else if (strcmp(mode, "corrupt") == 0) {
		bp.mode = MODE_CORRUPT;
	} else if (strcmp(mode, "stall") == 0) {
		bp.mode = MODE_STALL;
	} else if (strcmp(mode, "hold-half") == 0) {
		bp.mode = MODE_HOLD_HALF;
	} else if (strcmp(mode, "notfound-reannounce") == 0) {
		bp.mode = MODE_NOTFOUND_REANNOUNCE;
	} else if (strcmp(mode, "notfound-once") == 0) {
		bp.mode = MODE_NOTFOUND_REANNOUNCE;
		bp.notfound_once = true;
	} else if (strncmp(mode, "close-after:", 12) == 0) {
		bp.mode = MODE_CLOSE_AFTER;
		errno = 0;
		bp.close_after = strtoull(mode + 12, &end, 10);
		if (errno || *end || end == mode + 12)
			usage();
	} else {
		usage();
	}
	if (parse_listen(listen_text, &addr) < 0) {
		fprintf(stderr, "rf-badpeer: --listen %s: want IPv4:PORT\n", listen_text);
		return 2;
	}

	load_file(file);
	bp.piece_count = (uint32_t)((bp.content_length + bp.piece_length - 1) / bp.piece_length);
	{
		static const char prefix[] = "ringfly-task-v1\n";
		size_t url_len = strcspn(url, "#");
		struct hash_sha256 *h = hash_sha256_new();

		if (!h)
			die("out of memory");
		hash_sha256_update(h, prefix, sizeof(prefix) - 1);
		hash_sha256_update(h, url, url_len);
		hash_sha256_final(h, bp.task_id);
		hash_sha256_free(h);
		hash_hex(bp.task_id, bp.task_hex);
	}

	signal(SIGPIPE, SIG_IGN);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	/* Pending until ppoll() below unblocks them: no lost wake-up. */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigprocmask(SIG_BLOCK, &block, &orig);

	listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (listen_fd < 0)
		die("socket failed");
	(void)setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(listen_fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
	    listen(listen_fd, 128) != 0) {
		fprintf(stderr, "rf-badpeer: listen %s: %s\n", listen_text, strerror(errno));
		return 1;
	}
	if (getsockname(listen_fd, (struct sockaddr *)&addr, &addr_len) != 0)
		die("getsockname failed");
	fprintf(stderr, "badpeer: task=%s length=%llu piece_length=%llu pieces=%u mode=%s\n",
		bp.task_hex, (unsigned long long)bp.content_length,
		(unsigned long long)bp.piece_length, bp.piece_count, mode);
	printf("port=%u\n", ntohs(addr.sin_port));
	fflush(stdout);

	while (!stop_requested) {
		struct pollfd pfds[CONN_MAX + 1];
		struct peer_conn *owners[CONN_MAX + 1];
		int n = 0;

		pfds[n] = (struct pollfd){ .fd = listen_fd, .events = POLLIN };
		owners[n++] = NULL;
		for (int i = 0; i < CONN_MAX; i++) {
			struct peer_conn *c = bp.conns[i];
			short events = 0;

			if (!c)
				continue;
			if ((!c->closing && c->out_len - c->out_pos < OUT_HIGH) || c->shut)
				events |= POLLIN;
			if (c->out_pos < c->out_len)
				events |= POLLOUT;
			pfds[n] = (struct pollfd){ .fd = c->fd, .events = events };
			owners[n++] = c;
		}
		struct timespec tick = { .tv_nsec = 100000000 };
		if (ppoll(pfds, (nfds_t)n, bp.mode == MODE_NOTFOUND_REANNOUNCE ? &tick : NULL, &orig) < 0) {
			if (errno == EINTR)
				continue;
			die("poll failed");
		}
		if (pfds[0].revents & POLLIN)
			accept_all(listen_fd);
		if (bp.mode == MODE_NOTFOUND_REANNOUNCE) {
			static struct timespec last;
			struct timespec now;

			clock_gettime(CLOCK_MONOTONIC, &now);
			if ((now.tv_sec - last.tv_sec) * 1000 + (now.tv_nsec - last.tv_nsec) / 1000000 >= 100) {
				last = now;
				for (int i = 0; i < CONN_MAX; i++) {
					struct peer_conn *c = bp.conns[i];
					Ringfly__PieceAvailability avail = RINGFLY__PIECE_AVAILABILITY__INIT;
					uint32_t one_piece = 0;

					if (!c || !c->synced || c->closing)
						continue;
					avail.id = c->sync_id;
					avail.content_length = bp.content_length;
					avail.piece_length = bp.piece_length;
					avail.n_pieces = 1;
					avail.pieces = &one_piece;
					out_frame(c, FRAME_TYPE_PIECE_AVAILABILITY, &avail.base);
					conn_write(c);
				}
			}
		}
		for (int i = 1; i < n; i++) {
			struct peer_conn *c = owners[i];
			bool ok = true;

			if (!pfds[i].revents)
				continue;
			if (c->shut) {
				if (!conn_drain(c))
					conn_close(c);
				continue;
			}
			if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR))
				ok = conn_read(c);
			if (ok && (pfds[i].revents & POLLOUT || c->out_pos < c->out_len))
				ok = conn_write(c);
			/* Input left over once the queue drained (backpressure lifted). */
			if (ok && c->in_len > 0 && !c->closing)
				ok = conn_parse(c) && conn_write(c);
			if (!ok) {
				fprintf(stderr, "badpeer: connection from %s closed\n", c->name);
				conn_close(c);
			}
		}
		/*
		 * A closing connection sends what is queued, then FIN (the child sees
		 * the half piece, then EOF); its input is drained until the child
		 * closes too, so that no unread byte turns our close into an RST
		 * that could overtake the queued bytes.
		 */
		for (int i = 0; i < CONN_MAX; i++) {
			struct peer_conn *c = bp.conns[i];

			if (!c || !c->closing || c->shut)
				continue;
			if (!conn_write(c)) {
				conn_close(c);
			} else if (c->out_pos == c->out_len) {
				fprintf(stderr, "badpeer: shutting down the connection from %s\n",
					c->name);
				shutdown(c->fd, SHUT_WR);
				c->shut = true;
			}
		}
	}
	fprintf(stderr, "served=%llu corrupt=%llu\n", (unsigned long long)bp.served,
		(unsigned long long)bp.corrupt);
	return 0;
}
