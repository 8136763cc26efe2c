/* ringfly-scheduler: the scheduler's main: flags and config, then sched_server_run. */
#include <stdio.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"
#include "net/tcp.h"
#include "scheduler/scheduler-config.h"
#include "scheduler/server.h"

/* Flags that set a config key: the flag's name and the YAML key it sets. */
static const struct config_flag flag_keys[] = {
	{ "listen", "listen", false },	      { "log-level", "log_level", false },
	{ "peer-ttl", "peer_ttl", false },    { "max-peers", "max_peers", false },
	{ "max-tasks", "max_tasks", false },
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ringfly-scheduler --listen HOST:PORT [--log-level debug|info|warn|error]\n"
		"                         [--peer-ttl DURATION] [--max-peers N] [--max-tasks N]\n"
		"                         [--config FILE] [--help] [--version]\n"
		"Defaults: --peer-ttl 30s, --max-peers 10000 (per task), --max-tasks 100000.\n"
		"Precedence: defaults < config file < flags.\n");
}

static int load(void *config, const char *path, char *err, size_t err_size)
{
	return sched_config_load(config, path, err, err_size);
}

static int set(void *config, const char *key, const char *value, char *err, size_t err_size)
{
	return sched_config_set(config, key, value, err, err_size);
}

int main(int argc, char **argv)
{
	static const struct config_command_line command_line = {
		.program = "ringfly-scheduler",
		.version = RINGFLY_VERSION,
		.usage = usage,
		.flags = flag_keys,
		.flag_count = sizeof(flag_keys) / sizeof(flag_keys[0]),
		.load = load,
		.set = set,
	};
	struct sched_config config;
	const char *config_path;
	enum log_level level;
	char err[512];
	int rc;

	sched_config_defaults(&config);
	rc = config_command_line(&command_line, &config, argc, argv, &config_path);
	if (rc >= 0)
		return rc;
	if (!config.listen[0]) {
		fprintf(stderr,
			"ringfly-scheduler: no address to listen on: give --listen HOST:PORT "
			"(or listen: in the config file)\n");
		usage(stderr);
		return 2;
	}

	{
		char host[256];
		unsigned port;

		if (tcp_parse_address(config.listen, host, sizeof(host), &port, err, sizeof(err)) <
		    0) {
			fprintf(stderr, "ringfly-scheduler: listen: %s\n", err);
			return 2;
		}
	}

	if (log_level_parse(config.log_level, &level) == 0)
		log_set_level(level);
	return sched_server_run(&config);
}
