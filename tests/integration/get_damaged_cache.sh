#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# A complete task whose cache file is cut short while the daemon runs (a disk
# error, someone's truncate): two gets of its URL at once each exit 6 with a
# message naming the task as damaged (or 0 with the right bytes, if it came
# after), none hangs; the daemon drops every recorded piece past the file's
# end in one go (one log line; stat: no longer complete); the origin sends
# just those pieces again; a get after that is byte-identical and the one
# after it a cache hit. (It once failed
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
# Two gets at once: each exits 6 naming the task as damaged (the one that did
# not meet the cut itself once waited forever for a piece nothing fetched),
# or 0 with the right bytes if it started after the first one ended.
r=()
gets=()
for c in c1 c2; do
    timeout 30 "$RINGFLY" --socket "$SOCK" get "$URL" -O "$OUT/$c" --no-progress \
        >"$T/$c.out" 2>"$T/$c.err" 9>&- &
    gets+=($!)
    track $! "get $c"
done
for p in "${gets[@]}"; do
    wait "$p" || true
done
for c in c1 c2; do
    if grep -qF "is damaged" "$T/$c.err"; then
        assert_contains "$T/$c.err" "task $ID" "stderr of get $c of the damaged task"
        assert_gone "$OUT/$c" "after get $c of the damaged task"
        r+=(6)
    elif [[ -f $OUT/$c ]]; then
        assert_eq "$(sha "$WWW/file")" "$(sha "$OUT/$c")" "sha256 of get $c"
        r+=(0)
    else
        fail "get $c neither failed as damaged nor delivered: $(cat "$T/$c.err")"
    fi
done
[[ " ${r[*]} " == *" 6 "* ]] || fail "no get reported the damage: ${r[*]}"
assert_eq 1 "$(grep -cF "dropping $((COUNT - KEEP)) pieces that its content file no longer holds task=$ID pieces=$KEEP..$((COUNT - 1))" "$DAEMON_LOG")" \
    "the daemon's one line for the pieces dropped"
if [[ ${r[*]} == "6 6" ]]; then
    rf stat "$URL"
    [[ $RF_RC == 0 ]] || fail "stat after the damage exited $RF_RC: $(cat "$T/rf.err")"
    assert_eq "$KEEP/$COUNT" "$(stat_field pieces)" "pieces of stat after the damage"
    [[ $(stat_field state) != complete ]] || fail "stat says complete after pieces were dropped"
fi

expect_get_ok third "$URL" "$OUT/third" "$WWW/file"
nginx_wait_idle
refetched=$(($(origin_bytes) - before))
((refetched >= SIZE - PL * KEEP && refetched < SIZE)) ||
    fail "the origin sent $refetched bytes after the damage; the dropped pieces are $((SIZE - PL * KEEP))"
rf stat "$URL"
assert_eq complete "$(stat_field state)" "state of stat after the refetch"

expect_get_ok fourth "$URL" "$OUT/fourth" "$WWW/file"
assert_contains "$T/fourth.err" "from cache" "summary line of the last get"
must_health "$SOCK" 5 "$DAEMON_PID"
log "damaged: $(grep -hF 'is damaged' "$T/c1.err" "$T/c2.err" | head -n 1); gets ${r[*]}; refetched $refetched bytes"
pass
