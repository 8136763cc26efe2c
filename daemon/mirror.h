/* mirror: the registry mirror (OCI distribution pull API) on the daemon's HTTP server. */
#ifndef RINGFLY_DAEMON_MIRROR_H
#define RINGFLY_DAEMON_MIRROR_H

#include <stdbool.h>
#include <stddef.h>

#include "core/loop.h"
#include "daemon/download.h"
#include "net/http.h"

/*
 * GET /v2/<name>/blobs/sha256:<hex> is a P2P task keyed by the digest
 * (download_task_id): fetched from parents, seeds or the registry, verified
 * against the digest, and streamed to the client as pieces arrive. The last
 * byte is held back until the digest has checked out, so a client of a blob
 * that lies gets a short body, never a complete wrong one. A Range request
 * is answered (206) from the verified blob.
 *
 * Authorization: before a blob is served, a HEAD for it goes to the registry
 * with the client's Authorization header. A 2xx, 307 or 308 lets the blob
 * through; anything else (401 with its WWW-Authenticate challenge, 403, 404,
 * a 302 to a login page) makes the mirror forward the client's GET unchanged, so the client sees exactly what
 * the registry said. A registry that cannot be reached serves only blobs this
 * daemon saw the registry hand out without credentials (kept in memory).
 *
 * Everything else under /v2/ (the /v2/ ping, manifests, tags, HEAD of blobs)
 * is forwarded to the registry unchanged: the client's headers but the
 * hop-by-hop ones, the registry's status, headers and body back. The mirror
 * is pull-only: other methods get 405.
 *
 * Upstreams: "URL" or "NS=URL" entries. No ?ns=: the first entry. containerd's
 * ?ns=HOST picks the entry whose NS (or URL host[:port]) is HOST;
 * "docker.io" also matches registry-1.docker.io; an ns naming none gets 404
 * (never another registry's tags).
 */

#define MIRROR_UPSTREAMS_MAX 16u

struct mirror_options {
	const char *registries;		/* "URL,NS=URL,...": comma-separated */
	bool insecure;			/* do not verify the registries' TLS certificates */
	const char *ca_file;		/* PEM bundle, NULL/"" = the system's */
	unsigned forward_timeout_ms;	/* a forwarded request; 0 = 60 s */
	size_t forward_max_bytes;	/* a forwarded response's body; 0 = 16 MiB */
};

struct mirror;

/* 0, or a negative errno with the reason in err (a bad registry URL names it). */
int mirror_create(struct mirror **out, struct loop *loop, struct download_engine *engine,
		  const struct mirror_options *options, char *err, size_t err_size);
/* After loop_run has returned for good, before the HTTP server is destroyed
 * (its aborted and payload done callbacks then only drop references: the
 * loop, the engine's requests and the origin are not touched again). */
void mirror_detach(struct mirror *mirror);
/* After mirror_detach and http_server_destroy. */
void mirror_destroy(struct mirror *mirror);

/* True for the requests the mirror answers (paths under /v2/). */
bool mirror_wants(const struct http_request *request);
void mirror_request(struct mirror *mirror, struct http_exchange *ex,
		    const struct http_request *request);
/* The http_handlers.aborted of an exchange the mirror took. */
void mirror_aborted(struct http_exchange *ex, void *user);

/* Requests in progress (forwarded or streaming). */
unsigned mirror_active(const struct mirror *mirror);

#endif
