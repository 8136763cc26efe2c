#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# The origin's content changes (same size, new ETag) while the daemon is down
# in the middle of a get: the next get must not mix the old recorded pieces
# with the new bytes. 64 MiB in 1 MiB pieces through nginx's limit_req; the
# daemon is SIGKILLed once stat shows at least 25 % recorded, the file is
# replaced by other bytes of the same size with a later mtime (nginx's ETag
# changes), the daemon restarted: the new get exits 0 with the new bytes'
# sha256, the daemon logs that it dropped the earlier run's pieces (naming
# both validators), and nginx sends the whole file again. A third get of the
# unchanged origin after a kill resumes (the validator recorded matches).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
SIZE=$((64 << 20))
PL=$((1 << 20))

make_file "$WWW/big" $SIZE
touch -d '2026-01-01 00:00:00' "$WWW/big"
start_nginx --req-rate 40
URL="$NGINX_URL/slow/big"
start_ringflyd

# get_and_kill NAME: a get of $URL, the daemon SIGKILLed at >= 25 %.
get_and_kill() {
    timeout -k 2 120 "$RINGFLY" --socket "$SOCK" get "$URL" -O "$OUT/$1" --parallel 4 \
        --piece-length $PL >"$T/$1.out" 2>"$T/$1.err" 9>&- &
    GET_PID=$!
    track "$GET_PID" "ringfly get"
    wait_bytes_done "$URL" $((SIZE / 4)) 60
    seen=$BYTES_DONE
    kill -KILL "$DAEMON_PID"
    wait_exit "$DAEMON_PID" 10
    wait_exit "$GET_PID" 20
    assert_eq 1 "$WAIT_RC" "exit of the get whose daemon was killed ($(cat "$T/$1.err"))"
    assert_gone "$OUT/$1"
    log "$1: killed ringflyd at bytes_done=$seen of $SIZE"
}

# 1. Killed mid-get; the origin's file replaced meanwhile.
get_and_kill get1
nginx_wait_idle 15
make_file "$WWW/big.new" $SIZE
mv "$WWW/big.new" "$WWW/big"
touch -d '2026-01-02 00:00:00' "$WWW/big"
new_sha=$(sha "$WWW/big")
lines_before=$(wc -l <"$NGINX_ACCESS_LOG")

# 2. After the restart: the new bytes only, the old pieces dropped.
start_ringflyd
rf stat "$URL"
assert_eq pending "$(stat_field state)" "state of the interrupted task after the restart"
RF_DEADLINE=120 expect_get_ok get2 "$URL" "$OUT/get2" "$WWW/big" --parallel 4 --piece-length $PL
assert_eq "$new_sha" "$(sha "$OUT/get2")" "sha256 of the get after the origin changed"
grep -F "dropping the recorded pieces of an earlier run" "$DAEMON_LOG" >"$T/dropped" ||
    fail "no 'dropping the recorded pieces of an earlier run' in the daemon log"
assert_contains "$T/dropped" "validator=etag:" "the drop line (the old ETag)"
assert_contains "$T/dropped" "now_validator=etag:" "the drop line (the new ETag)"
nginx_wait_idle
after=$(tail -n +$((lines_before + 1)) "$NGINX_ACCESS_LOG" | awk '$7 !~ /^\/\.rfit-ready/ { s += $10 } END { printf "%.0f\n", s }')
((after >= SIZE)) || fail "nginx sent $after bytes after the change, less than the $SIZE of the new file"

# 3. Killed again on the same (now unchanged) content under a new URL's
#    task: the restart resumes, fetching at most what was not recorded.
URL="$NGINX_URL/slow/big?second"
get_and_kill get3
nginx_wait_idle 15
lines_before=$(wc -l <"$NGINX_ACCESS_LOG")
start_ringflyd
rf stat "$URL"
resumed=$(stat_field bytes_done)
RF_DEADLINE=120 expect_get_ok get4 "$URL" "$OUT/get4" "$WWW/big" --parallel 4 --piece-length $PL
nginx_wait_idle
after=$(tail -n +$((lines_before + 1)) "$NGINX_ACCESS_LOG" | awk '$7 !~ /^\/\.rfit-ready/ { s += $10 } END { printf "%.0f\n", s }')
((after <= SIZE - resumed)) || fail "the resumed get fetched $after bytes, more than the $((SIZE - resumed)) not recorded"
[[ $(grep -cF "dropping the recorded pieces" "$DAEMON_LOG") == 0 ]] ||
    fail "the unchanged task's pieces were dropped: $(grep -F 'dropping the recorded' "$DAEMON_LOG")"
must_health "$SOCK" 5 "$DAEMON_PID"
pass
