/* ringflyd: the node daemon's main: flags and config, then daemon_run. */
#include <stdio.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"
#include "daemon/daemon.h"

/* Flags that set a config key: the flag's name and the YAML key it sets. */
static const struct config_flag flag_keys[] = {
	{ "socket", "socket", false },
	{ "socket-mode", "socket_mode", false },
	{ "data-dir", "data_dir", false },
	{ "log-level", "log_level", false },
	{ "role", "role", false },
	{ "listen-peer", "listen_peer", false },
	{ "max-connections", "limits.max_connections", false },
	{ "shutdown-timeout", "shutdown_timeout", false },
	{ "storage-socket-path", "storage.socket_path", false },
	{ "upload-max-connections", "upload.max_connections", false },
	{ "upload-rate-limit", "upload.rate_limit", false },
	{ "scheduler", "scheduler.addresses", false },
	{ "location", "location", false },
	{ "advertise-ip", "advertise_ip", false },
	{ "parent-requests", "download.parent_requests", false },
	{ "parent-connections", "download.parent_connections", false },
	{ "http", "http.listen", false },
	{ "registry", "registry", false },
	{ "registry-insecure", "mirror.insecure", true },
	{ "verify-cache", "verify_cache", true },
};

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
		"                [--advertise-ip IP] [--parent-requests N] [--parent-connections N]\n"
		"                [--http HOST:PORT|off] [--registry [NS=]URL ...] [--registry-insecure]\n"
		"                [--help] [--version]\n"
		"Default socket: $RINGFLY_SOCKET, else /run/ringfly/ringflyd.sock.\n"
		"Precedence: defaults < $RINGFLY_SOCKET < config file < flags.\n");
}

static int load(void *config, const char *path, char *err, size_t err_size)
{
	return daemon_config_load(config, path, err, err_size);
}

static int set(void *config, const char *key, const char *value, char *err, size_t err_size)
{
	return daemon_config_set(config, key, value, err, err_size);
}

int main(int argc, char **argv)
{
	static const struct config_command_line command_line = {
		.program = "ringflyd",
		.version = RINGFLY_VERSION,
		.usage = usage,
		.flags = flag_keys,
		.flag_count = sizeof(flag_keys) / sizeof(flag_keys[0]),
		.load = load,
		.set = set,
	};
	struct daemon_config config;
	const char *config_path;
	enum log_level level;
	int rc;

	daemon_config_defaults(&config);
	rc = config_command_line(&command_line, &config, argc, argv, &config_path);
	if (rc >= 0)
		return rc;
	if (config_path) /* re-read on SIGHUP */
		snprintf(config.config_path, sizeof(config.config_path), "%s", config_path);
	if (log_level_parse(config.log_level, &level) == 0)
		log_set_level(level);
	return daemon_run(&config);
}
