/* daemon-config: ringflyd's settings, their defaults, YAML keys and flags. */
#include "daemon/daemon-config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include "core/config.h"

static const char *const daemon_roles[] = { "peer", "seed", NULL };
static const char *const daemon_log_levels[] = { "debug", "info", "warn", "error", NULL };
static const char *const daemon_socket_paths[] = { "splice", "recv", NULL };
static const char *const daemon_preallocate[] = { "auto", "always", "never", NULL };
static const char *const daemon_syncs[] = { "task", "pieces", NULL };

#define STRING_OPTION(name, field) \
	{ name, CONFIG_STRING, offsetof(struct daemon_config, field), \
	  sizeof(((struct daemon_config *)0)->field), 0, 0, NULL }
#define CHOICE_OPTION(name, field, list) \
	{ name, CONFIG_CHOICE, offsetof(struct daemon_config, field), \
	  sizeof(((struct daemon_config *)0)->field), 0, 0, list }
#define NUMBER_OPTION(name, type, field, lo, hi) \
	{ name, type, offsetof(struct daemon_config, field), 0, lo, hi, NULL }

static const struct config_option daemon_options[] = {
	STRING_OPTION("socket", socket_path),
	{ "socket_mode", CONFIG_MODE, offsetof(struct daemon_config, socket_mode), 0, 0, 0, NULL },
	STRING_OPTION("data_dir", data_dir),
	CHOICE_OPTION("log_level", log_level, daemon_log_levels),
	CHOICE_OPTION("role", role, daemon_roles),
	STRING_OPTION("listen_peer", listen_peer),
	NUMBER_OPTION("shutdown_timeout", CONFIG_DURATION, shutdown_timeout_ms, 0, 3600000),
	NUMBER_OPTION("limits.max_connections", CONFIG_INT, max_connections, 1, 1000000),
	NUMBER_OPTION("limits.max_message_bytes", CONFIG_BYTES, max_message_bytes, 4096,
		      1 << 20),
	NUMBER_OPTION("limits.idle_timeout", CONFIG_DURATION, idle_timeout_ms, 0,
		      7 * 24 * 3600000LL),
	CHOICE_OPTION("storage.socket_path", storage_socket_path, daemon_socket_paths),
	CHOICE_OPTION("storage.preallocate", storage_preallocate, daemon_preallocate),
	{ "storage.verify_on_read", CONFIG_BOOL, offsetof(struct daemon_config, storage_verify_on_read),
	  0, 0, 0, NULL },
	CHOICE_OPTION("storage.sync", storage_sync, daemon_syncs),
	NUMBER_OPTION("storage.sync_batch", CONFIG_INT, storage_sync_batch, 1, 4096),
	NUMBER_OPTION("storage.sync_delay", CONFIG_DURATION, storage_sync_delay_ms, 1, 10000),
	NUMBER_OPTION("gc.ttl", CONFIG_DURATION, gc_ttl_ms, 0, 365 * 24 * 3600000LL),
	NUMBER_OPTION("gc.high_watermark", CONFIG_INT, gc_high_percent, 1, 100),
	NUMBER_OPTION("gc.low_watermark", CONFIG_INT, gc_low_percent, 1, 100),
	NUMBER_OPTION("gc.quota", CONFIG_BYTES, gc_quota_bytes, 0, INT64_MAX),
	NUMBER_OPTION("gc.interval", CONFIG_DURATION, gc_interval_ms, 1000, 24 * 3600000LL),
	{ "verify_cache", CONFIG_BOOL, offsetof(struct daemon_config, verify_cache), 0, 0, 0, NULL },
	NUMBER_OPTION("upload.max_connections", CONFIG_INT, upload_max_connections, 1, 1000000),
	NUMBER_OPTION("upload.max_requests", CONFIG_INT, upload_max_requests, 1, 4096),
	NUMBER_OPTION("upload.rate_limit", CONFIG_BYTES, upload_rate_limit, 0, INT64_MAX / 1000),
	{ "upload.spread", CONFIG_BOOL, offsetof(struct daemon_config, upload_spread), 0, 0, 0,
	  NULL },
	NUMBER_OPTION("upload.notsent_lowat", CONFIG_BYTES, upload_notsent_lowat, 0, 64LL << 20),
	NUMBER_OPTION("upload.idle_timeout", CONFIG_DURATION, upload_idle_timeout_ms, 0,
		      7 * 24 * 3600000LL),
	NUMBER_OPTION("download.piece_timeout", CONFIG_DURATION, download_piece_timeout_ms, 100,
		      3600000),
	NUMBER_OPTION("download.parallel", CONFIG_INT, download_parallel, 1, 64),
	NUMBER_OPTION("download.memory", CONFIG_BYTES, download_memory_bytes, 1, 1LL << 40),
	NUMBER_OPTION("download.parent_requests", CONFIG_INT, download_parent_requests, 1, 256),
	NUMBER_OPTION("download.parent_connections", CONFIG_INT, download_parent_connections, 1,
		      16),
	{ "download.back_to_source", CONFIG_BOOL, offsetof(struct daemon_config, back_to_source),
	  0, 0, 0, NULL },
	STRING_OPTION("scheduler.addresses", scheduler_addresses),
	NUMBER_OPTION("scheduler.timeout", CONFIG_DURATION, scheduler_timeout_ms, 100, 60000),
	STRING_OPTION("location", location),
	STRING_OPTION("advertise_ip", advertise_ip),
	STRING_OPTION("http.listen", http_listen),
	NUMBER_OPTION("http.max_connections", CONFIG_INT, http_max_connections, 1, 1000000),
	NUMBER_OPTION("http.header_timeout", CONFIG_DURATION, http_header_timeout_ms, 100, 3600000),
	NUMBER_OPTION("http.idle_timeout", CONFIG_DURATION, http_idle_timeout_ms, 100,
		      7 * 24 * 3600000LL),
	STRING_OPTION("mirror.registries", mirror_registries),
	{ "mirror.insecure", CONFIG_BOOL, offsetof(struct daemon_config, mirror_insecure), 0, 0, 0,
	  NULL },
	STRING_OPTION("mirror.ca_file", mirror_ca_file),
	STRING_OPTION("seed.fetch_from", seed_fetch_from),
};

#define DAEMON_OPTION_COUNT (sizeof(daemon_options) / sizeof(daemon_options[0]))

const char *daemon_default_socket(void)
{
	const char *env = getenv("RINGFLY_SOCKET");

	return env && env[0] ? env : DAEMON_SOCKET_DEFAULT;
}

void daemon_config_defaults(struct daemon_config *config)
{
	memset(config, 0, sizeof(*config));
	snprintf(config->socket_path, sizeof(config->socket_path), "%s", daemon_default_socket());
	config->socket_mode = 0660;
	snprintf(config->data_dir, sizeof(config->data_dir), "%s", DAEMON_DATA_DIR_DEFAULT);
	snprintf(config->log_level, sizeof(config->log_level), "info");
	snprintf(config->role, sizeof(config->role), "peer");
	config->shutdown_timeout_ms = 5000;
	config->max_connections = 4096;
	config->max_message_bytes = 1 << 20;
	config->idle_timeout_ms = 5 * 60 * 1000;
	snprintf(config->storage_socket_path, sizeof(config->storage_socket_path), "splice");
	snprintf(config->storage_preallocate, sizeof(config->storage_preallocate), "auto");
	snprintf(config->storage_sync, sizeof(config->storage_sync), "task");
	config->storage_sync_batch = 16;
	config->storage_sync_delay_ms = 20;
	config->gc_ttl_ms = 6 * 3600 * 1000LL;
	config->gc_high_percent = 90;
	config->gc_low_percent = 70;
	config->gc_interval_ms = 60 * 1000;
	config->upload_max_connections = 0; /* by role: daemon_config_upload_slots */
	config->upload_max_requests = 64;
	config->upload_idle_timeout_ms = 60 * 1000;
	config->upload_spread = true;
	config->upload_notsent_lowat = 128 << 10;
	config->download_piece_timeout_ms = 30 * 1000;
	config->download_parent_requests = 8;
	config->download_parent_connections = 2;
	config->download_parallel = 4;
	config->download_memory_bytes = 256LL << 20;
	snprintf(config->seed_fetch_from, sizeof(config->seed_fetch_from), "*");
	config->back_to_source = true;
	config->scheduler_timeout_ms = 2000;
	config->http_max_connections = 1024;
	config->http_header_timeout_ms = 10 * 1000;
	config->http_idle_timeout_ms = 60 * 1000;
}

int daemon_config_load(struct daemon_config *config, const char *path, char *err,
		       size_t err_size)
{
	return config_load_file(path, daemon_options, DAEMON_OPTION_COUNT, config, err, err_size);
}

size_t daemon_config_diff(const struct daemon_config *a, const struct daemon_config *b,
			 char *keys, size_t keys_size)
{
	return config_diff(daemon_options, DAEMON_OPTION_COUNT, a, b, keys, keys_size);
}

int daemon_config_set(struct daemon_config *config, const char *key, const char *value,
		      char *err, size_t err_size)
{
	if (strcmp(key, "registry") == 0) { /* --registry, repeatable: one more */
		size_t len = strlen(config->registry_flags);

		if (len + 1 + strlen(value) >= sizeof(config->registry_flags)) {
			snprintf(err, err_size, "too many or too long registries");
			return -E2BIG;
		}
		snprintf(config->registry_flags + len, sizeof(config->registry_flags) - len, "%s%s",
			 len ? "," : "", value);
		return 0;
	}
	return config_set(daemon_options, DAEMON_OPTION_COUNT, config, key, value, err, err_size);
}

int64_t daemon_config_upload_slots(const struct daemon_config *config)
{
	if (config->upload_max_connections)
		return config->upload_max_connections;
	return strcmp(config->role, "seed") == 0 ? DAEMON_SEED_UPLOAD_SLOTS
						 : DAEMON_PEER_UPLOAD_SLOTS;
}
