#!/usr/bin/env bash
# 1000 `ringfly health` at once: all answer "status: ok", and the daemon's fd
# count returns to its idle value afterwards (no leaked connections).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SOCK="$T/ringflyd.sock"
N=${RF_CONCURRENT:-1000}

hard=$(ulimit -Hn)
want=8192
[[ $hard != unlimited ]] && ((hard < want)) && want=$hard
ulimit -n "$want" || fail "cannot raise ulimit -n to $want"

start_daemon "$SOCK"
D=$DAEMON_PID
must_health "$SOCK" 5 "$D"

# idle_fds: the fd count, once it is the same 5 times in a row 20 ms apart.
stable_fds() {
    local prev=-1 same=0 cur t0
    now_ms; t0=$NOW_MS
    while ((same < 5)); do
        cur=$(fd_count "$D")
        if [[ $cur == "$prev" ]]; then same=$((same + 1)); else same=0; prev=$cur; fi
        now_ms
        ((NOW_MS - t0 > 5000)) && break
        nap 0.02
    done
    echo "$prev"
}
health "$SOCK" || fail "health failed: $(cat "$HEALTH_ERR")"
idle=$(stable_fds)
log "idle fd count: $idle"

mkdir "$T/c"
pids=()
now_ms; t0=$NOW_MS
for ((i = 0; i < N; i++)); do
    timeout -k 1 30 "$RINGFLY" --socket "$SOCK" health >"$T/c/$i.out" 2>"$T/c/$i.err" 9>&- &
    pids[i]=$!
done
peak=$(fd_count "$D")
bad=0
for ((i = 0; i < N; i++)); do
    wait "${pids[i]}"
    rc=$?
    if [[ $rc != 0 ]] || ! grep -qx 'status: ok' "$T/c/$i.out"; then
        bad=$((bad + 1))
        if ((bad <= 5)); then
            echo "health #$i: exit $rc, stdout: $(tr '\n' ' ' <"$T/c/$i.out") stderr: $(cat "$T/c/$i.err")" >&2
        fi
    fi
done
now_ms
log "$((N - bad))/$N concurrent health calls ok in $((NOW_MS - t0)) ms (fd count seen while running: $peak)"
((bad == 0)) || fail "$bad of $N concurrent health calls failed"

# Every answer names the daemon.
others=$(cat "$T/c/"*.out | grep '^pid: ' | sort -u)
assert_eq "pid: $D" "$others" "pid: lines of the concurrent answers"

# fds back to idle within 5 s.
now_ms; t0=$NOW_MS
while :; do
    cur=$(fd_count "$D")
    ((cur <= idle)) && break
    now_ms
    ((NOW_MS - t0 > 5000)) && fail "daemon fd count stays at $cur 5 s after the calls (idle: $idle): $(find "/proc/$D/fd" -mindepth 1 -printf "%f -> %l\n" | tail -n 20)"
    nap
done
log "fd count back to $cur (idle $idle)"

alive "$D" || fail "daemon died"
must_health "$SOCK" 2 "$D"
assert_eq 1 "$(health_field connections)" "connections: after the storm"

kill -TERM "$D"
wait_exit "$D" 10
assert_eq 0 "$WAIT_RC" "exit status after SIGTERM"

pass
