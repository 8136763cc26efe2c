/*
 * fuzz_config: the YAML config loader (core/config.c) on any file, with
 * ringflyd's keys and the scheduler's.
 *
 * For every input, for both key sets: the load returns 0, or -EINVAL with a
 * one-line reason that names the file. Never another error (the file is
 * there and readable), never an empty or multi-line reason.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "daemon/daemon-config.h"
#include "scheduler/scheduler-config.h"
#include "tests/fuzz/fuzz.h"

const char fuzz_target_name[] = "fuzz_config";

static void check_result(const char *who, int rc, const char *err, const char *path)
{
	if (rc == 0)
		return;
	if (rc != -EINVAL)
		fuzz_fail("%s: load returned %d (%s), expected 0 or -EINVAL", who, rc, err);
	if (!err[0] || strchr(err, '\n'))
		fuzz_fail("%s: an empty or multi-line reason: \"%s\"", who, err);
	if (!strstr(err, path))
		fuzz_fail("%s: the reason does not name %s: \"%s\"", who, path, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct daemon_config daemon_config;
	static struct sched_config sched_config;
	char path[64], err[1024];
	size_t done = 0;
	int fd, rc;

	fd = memfd_create("fuzz-config", MFD_CLOEXEC);
	if (fd < 0)
		fuzz_fail("memfd_create: %s", strerror(errno));
	while (done < size) {
		ssize_t n = write(fd, data + done, size - done);

		if (n <= 0)
			fuzz_fail("write to the memfd: %s", strerror(errno));
		done += (size_t)n;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

	daemon_config_defaults(&daemon_config);
	err[0] = '\0';
	rc = daemon_config_load(&daemon_config, path, err, sizeof(err));
	check_result("ringflyd", rc, err, path);

	sched_config_defaults(&sched_config);
	err[0] = '\0';
	rc = sched_config_load(&sched_config, path, err, sizeof(err));
	check_result("scheduler", rc, err, path);
	close(fd);
	return 0;
}

void fuzz_seeds(fuzz_emit_fn emit, void *arg)
{
	static const char daemon_yaml[] =
		"# ringflyd\n"
		"socket: /run/ringfly/ringflyd.sock\n"
		"socket_mode: 0660\n"
		"data_dir: /var/lib/ringfly\n"
		"log_level: info\n"
		"role: seed\n"
		"listen_peer: 0.0.0.0:65002\n"
		"shutdown_timeout: 5s\n"
		"limits:\n"
		"  max_connections: 4096\n"
		"  max_message_bytes: 1MiB\n"
		"storage:\n"
		"  sync: task\n"
		"  sync_batch: 16\n"
		"  sync_delay: 20ms\n"
		"  preallocate: auto\n"
		"  socket_path: splice\n"
		"  verify_on_read: true\n"
		"gc: {ttl: 6h, high_watermark: 90, low_watermark: 70, quota: 10GiB}\n"
		"download:\n"
		"  parent_connections: 2\n"
		"  parent_requests: 8\n"
		"  memory: 256MiB\n"
		"  piece_timeout: 2s\n"
		"upload:\n"
		"  max_connections: 256\n"
		"  rate_limit: 100MiB\n"
		"  idle_timeout: 60s\n"
		"scheduler:\n"
		"  addresses: 198.18.0.1:65003,198.18.0.2:65003\n"
		"http: {listen: 127.0.0.1:65001, header_timeout: 10s}\n"
		"mirror:\n"
		"  registries: docker.io=https://registry-1.docker.io\n";
	static const char sched_yaml[] =
		"listen: 0.0.0.0:65003\n"
		"log_level: debug\n"
		"peer_ttl: 5m\n"
		"max_peers: 10000\n";
	static const char flow_yaml[] = "{storage: {sync: pieces}, upload: [1, 2], \"a\": &x 1, b: *x}\n";
	static const char bad_yaml[] = "storage:\n  sync: later\n  - 1\nunknown_key: 1\n\t: x\n";

	emit(arg, "daemon", daemon_yaml, sizeof(daemon_yaml) - 1);
	emit(arg, "scheduler", sched_yaml, sizeof(sched_yaml) - 1);
	emit(arg, "flow", flow_yaml, sizeof(flow_yaml) - 1);
	emit(arg, "bad", bad_yaml, sizeof(bad_yaml) - 1);
}
