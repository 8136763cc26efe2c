/* ringflyd: the node daemon's main: flags and config, then daemon_run. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "daemon/daemon.h"

/* Flags that set a config key: the flag's name and the YAML key it sets. */
static const struct {
	const char *flag;
	const char *key;
} flag_keys[] = {
	{ "socket", "socket" },
	{ "socket-mode", "socket_mode" },
	{ "data-dir", "data_dir" },
	{ "log-level", "log_level" },
	{ "role", "role" },
	{ "listen-peer", "listen_peer" },
	{ "max-connections", "limits.max_connections" },
	{ "shutdown-timeout", "shutdown_timeout" },
	{ "storage-socket-path", "storage.socket_path" },
	{ "upload-max-connections", "upload.max_connections" },
	{ "upload-rate-limit", "upload.rate_limit" },
	{ "scheduler", "scheduler.addresses" },
	{ "location", "location" },
	{ "advertise-ip", "advertise_ip" },
};

#define FLAG_KEY_COUNT (sizeof(flag_keys) / sizeof(flag_keys[0]))

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ringflyd [--config FILE] [--socket PATH] [--socket-mode OCTAL]\n"
		"                [--data-dir DIR] [--log-level debug|info|warn|error]\n"
		"                [--role peer|seed] [--listen-peer HOST:PORT]\n"
		"                [--max-connections N] [--shutdown-timeout DURATION]\n"
		"                [--storage-socket-path splice|recv] [--verify-cache]\n"
		"                [--upload-max-connections N] [--upload-rate-limit BYTES]\n"
		"                [--scheduler HOST:PORT[,HOST:PORT...]] [--location LABEL]\n"
		"                [--advertise-ip IP]\n"
		"                [--help] [--version]\n"
		"Default socket: $RINGFLY_SOCKET, else /run/ringfly/ringflyd.sock.\n"
		"Precedence: defaults < $RINGFLY_SOCKET < config file < flags.\n");
}

int main(int argc, char **argv)
{
	enum { OPT_CONFIG = 256, OPT_HELP, OPT_VERSION, OPT_VERIFY, OPT_KEY_FIRST };
	struct option options[FLAG_KEY_COUNT + 5];
	const char *config_path = NULL;
	struct daemon_config config;
	enum log_level level;
	char err[512];
	int opt, rc;

	memset(options, 0, sizeof(options));
	options[0] = (struct option){ "config", required_argument, NULL, OPT_CONFIG };
	options[1] = (struct option){ "help", no_argument, NULL, OPT_HELP };
	options[2] = (struct option){ "version", no_argument, NULL, OPT_VERSION };
	options[3] = (struct option){ "verify-cache", no_argument, NULL, OPT_VERIFY };
	for (size_t i = 0; i < FLAG_KEY_COUNT; i++)
		options[4 + i] = (struct option){ flag_keys[i].flag, required_argument, NULL,
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
			printf("ringflyd %s\n", RINGFLY_VERSION);
			return 0;
		case '?':
			usage(stderr);
			return 2;
		default:
			break;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ringflyd: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}

	daemon_config_defaults(&config);
	if (config_path) {
		snprintf(config.config_path, sizeof(config.config_path), "%s", config_path);
		rc = daemon_config_load(&config, config_path, err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "ringflyd: %s\n", err);
			return 2;
		}
	}

	/* Pass 2: flags override the file. */
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		if (opt == OPT_VERIFY)
			config.verify_cache = true;
		if (opt < OPT_KEY_FIRST)
			continue;
		rc = daemon_config_set(&config, flag_keys[opt - OPT_KEY_FIRST].key, optarg, err,
				       sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "ringflyd: --%s: %s\n", flag_keys[opt - OPT_KEY_FIRST].flag,
				err);
			return 2;
		}
	}

	if (log_level_parse(config.log_level, &level) == 0)
		log_set_level(level);
	return daemon_run(&config);
}
