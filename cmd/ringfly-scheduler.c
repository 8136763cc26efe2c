/* ringfly-scheduler: the scheduler's main: flags and config, then sched_server_run. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "net/tcp.h"
#include "scheduler/scheduler-config.h"
#include "scheduler/server.h"

/* Flags that set a config key: the flag's name and the YAML key it sets. */
static const struct {
	const char *flag;
	const char *key;
} flag_keys[] = {
	{ "listen", "listen" },	      { "log-level", "log_level" }, { "peer-ttl", "peer_ttl" },
	{ "max-peers", "max_peers" }, { "max-tasks", "max_tasks" },
};

#define FLAG_KEY_COUNT (sizeof(flag_keys) / sizeof(flag_keys[0]))

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ringfly-scheduler --listen HOST:PORT [--log-level debug|info|warn|error]\n"
		"                         [--peer-ttl DURATION] [--max-peers N] [--max-tasks N]\n"
		"                         [--config FILE] [--help] [--version]\n"
		"Defaults: --peer-ttl 30s, --max-peers 10000 (per task), --max-tasks 100000.\n"
		"Precedence: defaults < config file < flags.\n");
}

int main(int argc, char **argv)
{
	enum { OPT_CONFIG = 256, OPT_HELP, OPT_VERSION, OPT_KEY_FIRST };
	struct option options[FLAG_KEY_COUNT + 4];
	const char *config_path = NULL;
	struct sched_config config;
	enum log_level level;
	char err[512];
	int opt, rc;

	memset(options, 0, sizeof(options));
	options[0] = (struct option){ "config", required_argument, NULL, OPT_CONFIG };
	options[1] = (struct option){ "help", no_argument, NULL, OPT_HELP };
	options[2] = (struct option){ "version", no_argument, NULL, OPT_VERSION };
	for (size_t i = 0; i < FLAG_KEY_COUNT; i++)
		options[3 + i] = (struct option){ flag_keys[i].flag, required_argument, NULL,
						  OPT_KEY_FIRST + (int)i };

	/* Pass 1: --config, --help, --version and flag syntax. */
	opterr = 1;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case OPT_CONFIG:
			config_path = optarg;
			break;
		case OPT_HELP:
			usage(stdout);
			return 0;
		case OPT_VERSION:
			printf("ringfly-scheduler %s\n", RINGFLY_VERSION);
			return 0;
		case '?':
			usage(stderr);
			return 2;
		default:
			break;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ringfly-scheduler: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}

	sched_config_defaults(&config);
	if (config_path) {
		rc = sched_config_load(&config, config_path, err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "ringfly-scheduler: %s\n", err);
			return 2;
		}
	}

	/* Pass 2: flags override the file. */
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		if (opt < OPT_KEY_FIRST)
			continue;
		rc = sched_config_set(&config, flag_keys[opt - OPT_KEY_FIRST].key, optarg, err,
				      sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "ringfly-scheduler: --%s: %s\n",
				flag_keys[opt - OPT_KEY_FIRST].flag, err);
			return 2;
		}
	}
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
