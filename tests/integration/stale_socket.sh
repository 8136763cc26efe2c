#!/usr/bin/env bash
# A daemon killed with -9 leaves its socket node behind; an immediate restart
# must remove it (one log line naming it) and serve again.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SOCK="$T/ringflyd.sock"

start_daemon "$SOCK"
first=$DAEMON_PID
must_health "$SOCK" 5 "$first"
assert_socket "$SOCK" "after start"
assert_contains "$DAEMON_LOG" "listening path=$SOCK" "log of the first daemon"
assert_eq "$SOCK" "$(health_field socket)" "socket: line of health"
assert_eq "no" "$(health_field socket_activated)" "socket_activated: line of health"
assert_eq "peer" "$(health_field role)" "role: line of health"

kill_and_reap "$first" KILL
assert_eq 137 "$WAIT_RC" "exit status of the daemon killed with -9"
assert_socket "$SOCK" "the node a daemon killed with -9 leaves behind"

# Immediately, no delay.
start_daemon "$SOCK"
second=$DAEMON_PID
must_health "$SOCK" 5 "$second"
log "restarted in ${HEALTH_MS} ms (pid $first -> $second)"
assert_socket "$SOCK" "after restart"
assert_contains "$DAEMON_LOG" "removed stale socket" "log of the restarted daemon"
assert_contains "$DAEMON_LOG" "path=$SOCK" "log of the restarted daemon"
assert_contains "$DAEMON_LOG" "removed stale socket path=$SOCK reason=\"left by a dead daemon" "log of the restarted daemon"
n=$(grep -c "removed stale socket" "$DAEMON_LOG")
assert_eq 1 "$n" "number of 'removed stale socket' lines"
assert_contains "$DAEMON_LOG" "listening path=$SOCK" "log of the restarted daemon"

# The restarted daemon shuts down cleanly.
kill -TERM "$second"
wait_exit "$second" 10
assert_eq 0 "$WAIT_RC" "exit status after SIGTERM"
assert_gone "$SOCK" "after SIGTERM"

pass
