#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# kill -9 of the daemon in the middle of a get, restart, get again: the get
# resumes. 200 MiB in 1 MiB pieces through nginx's limit_req at 40 requests a
# second (about 5 s); once stat shows at least 40 % recorded (and not complete) the daemon is
# SIGKILLed; the waiting `ringfly get` fails (exit 1, nothing at the final
# path, no temp file). A daemon restarted on the same socket and data dir
# still has the recorded pieces (stat bytes_done >= what was seen), and a new
# get completes with the right bytes, fetching from the origin no more than
# the pieces not recorded: bytes nginx sends after the restart <= size -
# bytes_done seen before the kill, and all in all < 2 x the size.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
SIZE=$((200 << 20))
PL=$((1 << 20))

make_file "$WWW/big" $SIZE
start_nginx --req-rate 40
URL="$NGINX_URL/slow/big"
start_ringflyd

timeout -k 2 120 "$RINGFLY" --socket "$SOCK" get "$URL" -O "$OUT/big" --parallel 4 --piece-length $PL \
    >"$T/get1.out" 2>"$T/get1.err" 9>&- &
GET_PID=$!
track "$GET_PID" "ringfly get"

wait_bytes_done "$URL" $((SIZE * 2 / 5)) 60
seen=$BYTES_DONE
assert_in_progress "$OUT/big"
kill -KILL "$DAEMON_PID"
wait_exit "$DAEMON_PID" 10
log "killed ringflyd at bytes_done=$seen of $SIZE"
# Make sure no more pieces can arrive before the origin's bytes are counted.
alive "$DAEMON_PID" && fail "ringflyd survived SIGKILL"

wait_exit "$GET_PID" 20
[[ $WAIT_RC != timeout ]] || fail "ringfly get still running 20 s after its daemon was killed"
[[ $WAIT_RC != 0 ]] || fail "ringfly get exited 0 although its daemon was killed mid-download"
log "first get: exit $WAIT_RC: $(tail -n 1 "$T/get1.err")"
assert_eq 1 "$WAIT_RC" "exit of the get whose daemon was killed (stderr: $(cat "$T/get1.err"))"
assert_gone "$OUT/big" "after the get whose daemon was killed"
assert_no_temp "$OUT/big"

nginx_wait_idle 15
before=$(origin_bytes)
lines_before=$(wc -l <"$NGINX_ACCESS_LOG")
log "nginx sent $before bytes before the kill"

start_ringflyd
rf stat "$URL"
[[ $RF_RC == 0 ]] || fail "stat $URL after the restart exited $RF_RC: $(cat "$T/rf.err"): the recorded pieces are lost"
assert_eq pending "$(stat_field state)" "state of the interrupted task after the restart"
resumed=$(stat_field bytes_done)
((resumed >= seen)) || fail "after the restart bytes_done is $resumed, less than the $seen seen before the kill"
assert_eq "$SIZE" "$(stat_field length)" "length of the interrupted task"
log "after the restart: bytes_done=$resumed pieces=$(stat_field pieces)"

RF_DEADLINE=120 expect_get_ok get2 "$URL" "$OUT/big" "$WWW/big" --parallel 4 --piece-length $PL
assert_contains "$T/get2.err" "from origin" "summary line of the resumed get"
log "resumed get: $(tail -n 1 "$T/get2.err")"

nginx_wait_idle
after=$(tail -n +$((lines_before + 1)) "$NGINX_ACCESS_LOG" | awk '$7 !~ /^\/\.rfit-ready/ { s += $10 } END { printf "%.0f\n", s }')
total=$(origin_bytes)
log "nginx sent $after bytes after the restart (at most $((SIZE - resumed)) expected), $total in all"
((after <= SIZE - resumed)) || fail "the resumed get fetched $after bytes from the origin, more than the $((SIZE - resumed)) not recorded (bytes_done $resumed of $SIZE)"
((total < 2 * SIZE)) || fail "nginx sent $total bytes in all for one $SIZE-byte file"
grep -F "download done" "$DAEMON_LOG" | grep -qF "origin_bytes=$after" ||
    log "note: no 'download done ... origin_bytes=$after' in the daemon log: $(grep -F 'download done' "$DAEMON_LOG")"

rf stat "$URL"
assert_eq complete "$(stat_field state)" "state after the resumed get"
must_health "$SOCK" 5 "$DAEMON_PID"
pass
