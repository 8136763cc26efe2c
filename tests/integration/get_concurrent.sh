#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# 20 (RF_GETS) concurrent `ringfly get` of the same URL (64 MiB in 1 MiB pieces
# through nginx's limit_req at 12 requests a second: about 5 s, so the gets
# overlap) to 20 paths: all exit 0 with the right
# bytes, and they share one task: nginx sends the file once (its access-log
# body bytes <= 1.1 x the size). The gets with --no-progress print only the
# summary line; the one without prints progress lines (stderr is no TTY) of
# the form "ringfly: FILE: X of Y (P%) RATE from origin". Each requester's pid
# and uid are in the daemon log. Then a get with --timeout and one without
# share a slow task: each has its own deadline.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
N=${RF_GETS:-20}
SIZE=$((64 << 20))
PL=$((1 << 20))
start_nginx --req-rate 12
make_file "$WWW/big" $SIZE
src_sha=$(sha "$WWW/big")
URL="$NGINX_URL/slow/big"
start_ringflyd

declare -A GPIDS=()
for ((i = 0; i < N; i++)); do
    np=(--no-progress)
    ((i == 0)) && np=()
    # No timeout wrapper: the pid is ringfly's own (the daemon logs it);
    # wait_exit below bounds the wait and the EXIT trap kills what is left.
    "$RINGFLY" --socket "$SOCK" get "$URL" -O "$OUT/f$i" --parallel 4 --piece-length $PL "${np[@]}" \
        >"$T/get$i.out" 2>"$T/get$i.err" 9>&- &
    GPIDS[$i]=$!
    track "$!" "ringfly get $i"
done
log "started $N gets of $URL"

for ((i = 0; i < N; i++)); do
    wait_exit "${GPIDS[$i]}" 120
    [[ $WAIT_RC == 0 ]] || fail "get $i exited $WAIT_RC; stderr: $(head -c 2000 "$T/get$i.err")"
done
for ((i = 0; i < N; i++)); do
    assert_eq "$src_sha" "$(sha "$OUT/f$i")" "sha256 of output $i"
    assert_no_temp "$OUT/f$i"
    assert_contains "$T/get$i.err" "ringfly: $OUT/f$i: $SIZE bytes in" "summary line of get $i"
    if ((i > 0)); then
        assert_eq 1 "$(grep -c . "$T/get$i.err")" "stderr lines of get $i with --no-progress ($(cat "$T/get$i.err"))"
    fi
done
grep -qE "^ringfly: $OUT/f0: [0-9.]+ [KMG]?i?B of 64\.0 MiB \([0-9]+%\) .* from origin" "$T/get0.err" ||
    fail "no progress line in the stderr of the get without --no-progress: $(cat "$T/get0.err")"
log "get 0: $(tail -n 1 "$T/get0.err")"

nginx_wait_idle
sent=$(origin_bytes)
log "nginx sent $sent body bytes for $N gets of $SIZE bytes in $(origin_requests) requests"
((sent >= SIZE)) || fail "nginx sent $sent bytes, less than the file ($SIZE): not all from the origin?"
((sent * 10 <= SIZE * 11)) || fail "nginx sent $sent bytes for $N concurrent gets of one $SIZE-byte URL: more than 1.1 x, not one shared transfer"
# Every requester is logged with its pid and uid (SO_PEERCRED): the first in
# `download start`, the others joining the task (the interface names only
# `download start`; any download line with url, pid and uid counts).
uid=$(id -u)
for ((i = 0; i < N; i++)); do
    grep -F "download " "$DAEMON_LOG" | grep -F "url=$URL" | grep -F "pid=${GPIDS[$i]} " |
        grep -qF "uid=$uid" || fail "get $i (pid ${GPIDS[$i]}) is not logged with its pid and uid=$uid"
done
starts=$(grep -c "download start" "$DAEMON_LOG")
log "daemon: $starts 'download start' lines, $(grep -c "download done" "$DAEMON_LOG") 'download done'"
rf stat "$URL"
assert_eq complete "$(stat_field state)" "state of the shared task"

must_health "$SOCK" 5 "$DAEMON_PID"

# A requester's --timeout is its own: a get with --timeout 2s starts a task
# (one slow stream: no ranges, 4 MiB/s, 16 MiB), a get without one joins it.
# The first fails at its deadline; the second goes on to the end. (The first
# get's deadline was once every origin request's: the stream was cut at 2 s
# and the second get failed with "timed out after 2000 ms" too.)
start_nginx --no-ranges --rate 4m
make_file "$WWW/slowone" $((16 << 20))
URL2="$NGINX_URL/slow/slowone"
"$RINGFLY" --socket "$SOCK" get "$URL2" -O "$OUT/t1" --no-progress --timeout 2s \
    >"$T/t1.out" 2>"$T/t1.err" 9>&- &
T1=$!
track "$T1" "ringfly get --timeout 2s"
now_ms; deadline_ms=$((NOW_MS + 10000))
until grep -F "download start" "$DAEMON_LOG" | grep -qF "url=$URL2 "; do
    now_ms; ((NOW_MS < deadline_ms)) || fail "no 'download start' for $URL2 in 10 s"
    nap
done
"$RINGFLY" --socket "$SOCK" get "$URL2" -O "$OUT/t2" --no-progress \
    >"$T/t2.out" 2>"$T/t2.err" 9>&- &
T2=$!
track "$T2" "ringfly get (no timeout)"
wait_exit "$T1" 30 || true
assert_eq 5 "$WAIT_RC" "exit of the get with --timeout 2s ($(cat "$T/t1.err"))"
assert_contains "$T/t1.err" "timed out after 2000 ms" "stderr of the get with --timeout 2s"
assert_gone "$OUT/t1" "after the get that timed out"
wait_exit "$T2" 60
assert_eq 0 "$WAIT_RC" "exit of the get without --timeout that joined it ($(cat "$T/t2.err"))"
assert_eq "$(sha "$WWW/slowone")" "$(sha "$OUT/t2")" "sha256 of the get that joined"
log "own deadlines: $(cat "$T/t1.err") / $(cat "$T/t2.err")"
pass
