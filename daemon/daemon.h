/* daemon: the ringflyd node: listeners, the CLI service, life cycle. */
#ifndef RINGFLY_DAEMON_DAEMON_H
#define RINGFLY_DAEMON_DAEMON_H

#include "daemon/daemon-config.h"

/*
 * Runs the node until SIGTERM/SIGINT. Startup refusals (socket in use, not a
 * socket, ...) print one line "ringflyd: <reason>" on stderr.
 * Returns the process exit code: 0 after a clean shutdown, 1 otherwise.
 */
int daemon_run(const struct daemon_config *config);

#endif
