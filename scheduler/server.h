/* server: ringfly-scheduler: the TCP listener, announcements, preheat, expiry, shutdown. */
#ifndef RINGFLY_SCHEDULER_SERVER_H
#define RINGFLY_SCHEDULER_SERVER_H

#include "scheduler/scheduler-config.h"

/*
 * Listens on config->listen, answers AnnouncePeer with ParentsResponse, takes
 * PeerLeave, answers Preheat with PreheatResponse (after sending Preheat to up
 * to 2 seeds on their registration connections, docs/INTERFACE-issue7.md),
 * answers HealthRequest, and drops peers not seen for the peer
 * TTL once a second, until SIGTERM or SIGINT (config borrowed for the call).
 * Returns the process exit code: 0 after a signal, 1 when it cannot start
 * (the reason, naming the address, on stderr).
 */
int sched_server_run(const struct sched_config *config);

#endif
