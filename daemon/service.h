/* service: the CLI's requests on the Unix socket: get (DownloadTask), stat, import, export. */
#ifndef RINGFLY_DAEMON_SERVICE_H
#define RINGFLY_DAEMON_SERVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/download.h"
#include "daemon/schedclient.h"
#include "net/conn.h"
#include "storage/store.h"

struct service_get;

struct service {
	struct loop *loop;
	struct store *store;
	struct download_engine *engine;
	struct sched_client *sched;	/* NULL without schedulers */
	/* Imports and exports in progress, a slice each per loop turn. */
	struct service_get *jobs;
	struct loop_op work_op;
	bool work_armed;
	unsigned work_turn;
};

/*
 * Handles `msg` (decoded, of frame type `type`) if it is one of the
 * service's requests, answering on conn; false if it is not. Requests that
 * carry a file descriptor take it from the connection (conn_take_fd).
 */
bool service_frame(struct service *service, struct conn *conn, uint8_t type,
		   const ProtobufCMessage *msg);

/* The connection is gone: its downloads lose their requester, its imports
 * and exports stop. */
void service_conn_closed(struct service *service, struct conn *conn);

/* After the loop is gone: what is left of imports and exports is dropped. */
void service_fini(struct service *service);

#endif
