/* scheduler-config: ringfly-scheduler's settings, their defaults, YAML keys and flags. */
#ifndef RINGFLY_SCHEDULER_SCHEDULER_CONFIG_H
#define RINGFLY_SCHEDULER_SCHEDULER_CONFIG_H

#include <stddef.h>
#include <stdint.h>

struct sched_config {
	char listen[256];    /* listen: HOST:PORT ("" = not given) */
	char log_level[16];  /* log_level */
	int64_t peer_ttl_ms; /* peer_ttl */
	int64_t max_peers;   /* max_peers (per task) */
	int64_t max_tasks;   /* max_tasks */
	int64_t max_entries; /* max_entries (peer entries over all tasks) */
};

/* Built-in defaults: no listen address, info, 30 s, 10000 peers, 100000 tasks. */
void sched_config_defaults(struct sched_config *config);

/* Reads a YAML file over the current values. 0 or a negative errno; err
 * names the file, line and key. */
int sched_config_load(struct sched_config *config, const char *path, char *err, size_t err_size);

/* Sets one key (YAML name, e.g. "peer_ttl") from a flag value. */
int sched_config_set(struct sched_config *config, const char *key, const char *value, char *err,
		     size_t err_size);

#endif
