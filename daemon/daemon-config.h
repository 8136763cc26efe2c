/* daemon-config: ringflyd's settings, their defaults, YAML keys and flags. */
#ifndef RINGFLY_DAEMON_DAEMON_CONFIG_H
#define RINGFLY_DAEMON_DAEMON_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/uds.h"

#define DAEMON_SOCKET_DEFAULT "/run/ringfly/ringflyd.sock"
#define DAEMON_DATA_DIR_DEFAULT "/var/lib/ringfly"

struct daemon_config {
	char socket_path[UDS_PATH_MAX + 1];	/* socket */
	uint32_t socket_mode;			/* socket_mode */
	char data_dir[PATH_MAX];		/* data_dir */
	char log_level[16];			/* log_level */
	char role[16];				/* role: peer | seed */
	char listen_peer[256];			/* listen_peer: HOST:PORT, "" = none */
	int64_t shutdown_timeout_ms;		/* shutdown_timeout */
	int64_t max_connections;		/* limits.max_connections */
	int64_t max_message_bytes;		/* limits.max_message_bytes */
	int64_t idle_timeout_ms;		/* limits.idle_timeout */
	char storage_socket_path[16];		/* storage.socket_path: splice | recv */
	char storage_preallocate[16];		/* storage.preallocate: auto | always | never */
	bool storage_verify_on_read;		/* storage.verify_on_read */
	char storage_sync[16];			/* storage.sync: task | pieces */
	int64_t storage_sync_batch;		/* storage.sync_batch (pieces) */
	int64_t storage_sync_delay_ms;		/* storage.sync_delay */
	int64_t gc_ttl_ms;			/* gc.ttl (0 = never) */
	int64_t gc_high_percent;		/* gc.high_watermark */
	int64_t gc_low_percent;			/* gc.low_watermark */
	int64_t gc_quota_bytes;			/* gc.quota (0 = the filesystem) */
	int64_t gc_interval_ms;			/* gc.interval */
	bool verify_cache;			/* --verify-cache (flag only) */
	int64_t upload_max_connections;		/* upload.max_connections; 0: by role */
	int64_t upload_max_requests;		/* upload.max_requests (per connection) */
	int64_t upload_rate_limit;		/* upload.rate_limit (bytes/s, 0 = none) */
	bool upload_spread;			/* upload.spread (seeds) */
	int64_t upload_notsent_lowat;		/* upload.notsent_lowat, bytes; 0 = none */
	int64_t upload_idle_timeout_ms;		/* upload.idle_timeout */
	int64_t download_piece_timeout_ms;	/* download.piece_timeout */
	int64_t download_parent_requests;	/* download.parent_requests */
	int64_t download_parent_connections;	/* download.parent_connections */
	int64_t download_parallel;		/* download.parallel: origin ranges at once */
	int64_t download_memory_bytes;		/* download.memory: piece buffers of all tasks */
	char config_path[PATH_MAX];		/* --config, re-read on SIGHUP ("" = none) */
	char scheduler_addresses[1024];		/* scheduler.addresses: HOST:PORT,... */
	int64_t scheduler_timeout_ms;		/* scheduler.timeout */
	char location[128];			/* location: e.g. zone-a|rack-3 */
	char advertise_ip[64];			/* advertise_ip: what peers connect to */
	bool back_to_source;			/* download.back_to_source */
	/* http.listen: HOST:PORT; "" = 127.0.0.1:65001 if free (best effort),
	 * "off" = none. Set explicitly, a port that cannot be had stops the
	 * daemon. */
	char http_listen[256];
	int64_t http_max_connections;		/* http.max_connections */
	int64_t http_header_timeout_ms;		/* http.header_timeout */
	int64_t http_idle_timeout_ms;		/* http.idle_timeout */
	char mirror_registries[4096];		/* mirror.registries: URL or NS=URL, comma-separated */
	char registry_flags[4096];		/* --registry URL (repeatable): replaces the above */
	bool mirror_insecure;			/* mirror.insecure */
	char mirror_ca_file[PATH_MAX];		/* mirror.ca_file */
	char seed_fetch_from[1024];		/* seed.fetch_from: HOST[:PORT],... or "*" */
};

#define DAEMON_HTTP_DEFAULT "127.0.0.1:65001"

/* Built-in defaults; the socket default comes from $RINGFLY_SOCKET when set. */
void daemon_config_defaults(struct daemon_config *config);

/* Reads a YAML file over the current values. 0 or negative errno; err names
 * the file, line and key. */
int daemon_config_load(struct daemon_config *config, const char *path, char *err,
		       size_t err_size);

/* The config file's keys whose values differ between a and b, as "k1, k2"
 * in keys[keys_size]; returns how many differ. */
size_t daemon_config_diff(const struct daemon_config *a, const struct daemon_config *b,
			  char *keys, size_t keys_size);

/* Sets one key (YAML name, e.g. "limits.max_connections") from a flag value. */
int daemon_config_set(struct daemon_config *config, const char *key, const char *value,
		      char *err, size_t err_size);

/* The socket path a client should use by default: $RINGFLY_SOCKET or the
 * built-in default. */
const char *daemon_default_socket(void);

/* upload.max_connections, or its default for the role: a seed is the swarm's
 * source of last resort and serves more children at once. */
#define DAEMON_PEER_UPLOAD_SLOTS 256
#define DAEMON_SEED_UPLOAD_SLOTS 1024
int64_t daemon_config_upload_slots(const struct daemon_config *config);

#endif
