#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# A complete task whose cache file is cut short while the daemon runs (a disk
# error, someone's truncate): the next get of its URL fails with exit 6 and a
# message naming the task as damaged, and the daemon drops every recorded
# piece past the file's end (log "dropping a piece ..."; stat: no longer
# complete); the get after it fetches just those pieces from the origin and
# is byte-identical; the one after that is a cache hit again. (It once failed
# every get with "writing the output: Input/output error" until a restart.)
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
PL=65536
COUNT=11
SIZE=$((PL * (COUNT - 1) + 123))
KEEP=3 # whole pieces left in the cut file

make_file "$WWW/file" $SIZE
start_nginx
URL="$NGINX_URL/file"
ID=$(task_id_of "$URL")
start_ringflyd

expect_get_ok first "$URL" "$OUT/first" "$WWW/file" --piece-length $PL
assert_contains "$T/first.err" "from origin" "summary line of the first get"
content="$T/data/content/${ID:0:2}/$ID"
[[ -f $content ]] || fail "no cache file at $content"
nginx_wait_idle
before=$(origin_bytes)

truncate -s $((PL * KEEP + 10)) "$content"
expect_get_fail second "$URL" "$OUT/second" 6 "is damaged"
assert_contains "$T/second.err" "task $ID" "stderr of the get of the damaged task"
assert_eq $((COUNT - KEEP)) "$(grep -F "dropping a piece that its content file no longer holds task=$ID" "$DAEMON_LOG" | wc -l)" \
    "pieces dropped (log lines)"
rf stat "$URL"
[[ $RF_RC == 0 ]] || fail "stat after the damage exited $RF_RC: $(cat "$T/rf.err")"
assert_eq "$KEEP/$COUNT" "$(stat_field pieces)" "pieces of stat after the damage"
[[ $(stat_field state) != complete ]] || fail "stat says complete after pieces were dropped"

expect_get_ok third "$URL" "$OUT/third" "$WWW/file"
assert_contains "$T/third.err" "from origin" "summary line of the get after the damage"
nginx_wait_idle
refetched=$(($(origin_bytes) - before))
((refetched >= SIZE - PL * KEEP && refetched < SIZE)) ||
    fail "the origin sent $refetched bytes after the damage; the dropped pieces are $((SIZE - PL * KEEP))"
rf stat "$URL"
assert_eq complete "$(stat_field state)" "state of stat after the refetch"

expect_get_ok fourth "$URL" "$OUT/fourth" "$WWW/file"
assert_contains "$T/fourth.err" "from cache" "summary line of the last get"
must_health "$SOCK" 5 "$DAEMON_PID"
log "damaged: $(head -n 1 "$T/second.err"); refetched $refetched bytes"
pass
