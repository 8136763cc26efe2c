#!/usr/bin/env bash
# SIGTERM and SIGINT: exit 0 promptly, socket node removed, lock file kept;
# also with 20 idle clients connected (within the shutdown deadline).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
require_holdconns

SOCK="$T/ringflyd.sock"

# stop_case SIG DEADLINE_S [daemon args]
stop_case() {
    local sig=$1 deadline=$2 t0
    shift 2
    start_daemon "$SOCK" "$@"
    must_health "$SOCK" 5 "$DAEMON_PID"
    [[ -n ${HOLD_N:-} ]] && start_holdconns "$SOCK" "$HOLD_N"
    if [[ -n ${HOLD_N:-} ]]; then
        health "$SOCK" || fail "health with $HOLD_N clients held failed: $(cat "$HEALTH_ERR")"
        conns=$(health_field connections)
        ((conns >= HOLD_N + 1)) || fail "health reports connections: $conns with $HOLD_N clients held (expected >= $((HOLD_N + 1)))"
    fi
    now_ms; t0=$NOW_MS
    kill -"$sig" "$DAEMON_PID"
    wait_exit "$DAEMON_PID" "$deadline"
    now_ms
    [[ $WAIT_RC != timeout ]] || fail "SIG$sig: daemon still running after $deadline s"
    assert_eq 0 "$WAIT_RC" "SIG$sig: exit status"
    assert_gone "$SOCK" "SIG$sig: socket node after exit"
    [[ -e $SOCK.lock ]] || fail "SIG$sig: $SOCK.lock was removed (it must stay)"
    assert_eq 600 "$(stat -c %a "$SOCK.lock")" "SIG$sig: mode of the lock file"
    log "SIG$sig${HOLD_N:+ with $HOLD_N clients}: exit 0 in $((NOW_MS - t0)) ms"
    # Nobody answers afterwards.
    health "$SOCK"
    assert_eq 3 "$?" "SIG$sig: ringfly health after shutdown"
    assert_contains "$HEALTH_ERR" "no ringflyd at $SOCK" "SIG$sig: ringfly health stderr after shutdown"
}

HOLD_N=
stop_case TERM 3
stop_case INT 3

# With 20 clients connected: within the shutdown deadline (1 s) plus slack.
HOLD_N=20
stop_case TERM 4 --shutdown-timeout 1s
# The clients noticed nothing fatal: rf-holdconns is alive and exits 0 on SIGTERM.
alive "$HOLD_PID" || fail "rf-holdconns died when the daemon shut down: $(cat "$HOLD_OUT")"
stop_holdconns "$HOLD_PID"

# Default shutdown timeout (5 s) with 20 clients: still within it.
stop_case INT 8
stop_holdconns "$HOLD_PID"

pass
