/* scheduler-config: ringfly-scheduler's settings, their defaults, YAML keys and flags. */
#include "scheduler/scheduler-config.h"

#include <stdio.h>
#include <string.h>

#include "core/config.h"

static const char *const sched_log_levels[] = { "debug", "info", "warn", "error", NULL };

static const struct config_option sched_options[] = {
	{ "listen", CONFIG_STRING, offsetof(struct sched_config, listen),
	  sizeof(((struct sched_config *)0)->listen), 0, 0, NULL },
	{ "log_level", CONFIG_CHOICE, offsetof(struct sched_config, log_level),
	  sizeof(((struct sched_config *)0)->log_level), 0, 0, sched_log_levels },
	{ "peer_ttl", CONFIG_DURATION, offsetof(struct sched_config, peer_ttl_ms), 0, 100,
	  24 * 3600000LL, NULL },
	{ "max_peers", CONFIG_INT, offsetof(struct sched_config, max_peers), 0, 1, 1000000, NULL },
	{ "max_tasks", CONFIG_INT, offsetof(struct sched_config, max_tasks), 0, 1, 10000000, NULL },
	{ "max_entries", CONFIG_INT, offsetof(struct sched_config, max_entries), 0, 1, 100000000,
	  NULL },
};

#define SCHED_OPTION_COUNT (sizeof(sched_options) / sizeof(sched_options[0]))

void sched_config_defaults(struct sched_config *config)
{
	memset(config, 0, sizeof(*config));
	snprintf(config->log_level, sizeof(config->log_level), "info");
	config->peer_ttl_ms = 30000;
	config->max_peers = 10000;
	config->max_tasks = 100000;
	config->max_entries = 1000000;
}

int sched_config_load(struct sched_config *config, const char *path, char *err, size_t err_size)
{
	return config_load_file(path, sched_options, SCHED_OPTION_COUNT, config, err, err_size);
}

int sched_config_set(struct sched_config *config, const char *key, const char *value, char *err,
		     size_t err_size)
{
	return config_set(sched_options, SCHED_OPTION_COUNT, config, key, value, err, err_size);
}
