#!/usr/bin/env bash
# kill -9 then immediate restart, RF_CYCLES times (default 200); in odd cycles
# 50 clients hold connections to the daemon being killed. Every restart must
# answer health (deadline 5 s) with the new pid.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
require_holdconns

SOCK="$T/ringflyd.sock"
CYCLES=${RF_CYCLES:-200}
CLIENTS=50

start_daemon "$SOCK"
must_health "$SOCK" 5 "$DAEMON_PID"
# Keep only the logs of failed cycles (and the current one).
cur_log=$DAEMON_LOG

ok=0
failed=0
max_ms=0
total_ms=0
now_ms; t_start=$NOW_MS
for ((cycle = 1; cycle <= CYCLES; cycle++)); do
    hold=
    if ((cycle % 2 == 1)) && alive "$DAEMON_PID"; then
        start_holdconns "$SOCK" "$CLIENTS"
        hold=$HOLD_PID
    fi
    old=$DAEMON_PID
    old_log=$cur_log
    kill -KILL "$old" 2>/dev/null
    wait_exit "$old" 10
    [[ $WAIT_RC != timeout ]] || fail "cycle $cycle: pid $old not reaped 10 s after kill -9"
    # Immediately, no delay.
    start_daemon "$SOCK"
    cur_log=$DAEMON_LOG
    if wait_health "$SOCK" 5 "$DAEMON_PID" && [[ $HEALTH_PID == "$DAEMON_PID" ]]; then
        ok=$((ok + 1))
        total_ms=$((total_ms + HEALTH_MS))
        ((HEALTH_MS > max_ms)) && max_ms=$HEALTH_MS
        rm -f "$old_log"
    else
        failed=$((failed + 1))
        if ((failed <= 5)); then
            echo "cycle $cycle: restart (pid $DAEMON_PID) did not answer health with its pid within 5 s" >&2
            echo "  health stdout: $(tr '\n' ' ' <"$HEALTH_OUT") stderr: $(cat "$HEALTH_ERR")" >&2
            echo "  alive: $(alive "$DAEMON_PID" && echo yes || echo no); log:" >&2
            sed 's/^/    /' "$DAEMON_LOG" >&2
        fi
        # Get back to a known state: one healthy daemon.
        if ! alive "$DAEMON_PID"; then
            wait_exit "$DAEMON_PID" 1
            start_daemon "$SOCK"
            cur_log=$DAEMON_LOG
            wait_health "$SOCK" 5 || fail "cycle $cycle: could not get a healthy daemon back"
        fi
    fi
    if [[ -n $hold ]]; then
        stop_holdconns "$hold"
        rm -f "$HOLD_OUT"
    fi
done
now_ms
elapsed=$((NOW_MS - t_start))
avg=$((ok > 0 ? total_ms / ok : 0))
log "restarts answering health with the new pid: $ok/$CYCLES in ${elapsed} ms (restart to health: avg ${avg} ms, max ${max_ms} ms)"
assert_eq "$CYCLES" "$ok" "successful restarts"

kill -TERM "$DAEMON_PID"
wait_exit "$DAEMON_PID" 10
assert_eq 0 "$WAIT_RC" "exit status of the last daemon after SIGTERM"
assert_gone "$SOCK" "after SIGTERM"

pass
