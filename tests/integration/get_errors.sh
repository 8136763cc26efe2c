#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# ringfly get failures, each with its exit code and reason on stderr
# (`ringfly: get URL: ...`), and each leaving nothing at the final path, no
# `.NAME.ringfly-*` temp file, and no task claiming data (stat: no such task,
# or a task neither complete nor holding bytes); the daemon logs
# `download failed` and stays healthy:
#   404 -> 4 "HTTP 404", 403 -> 4 "HTTP 403", 500 -> 4 "HTTP 500",
#   connection refused -> 5 "connection refused",
#   a server that never answers, --timeout 2s, 2 (plain seconds) and 500ms ->
#   5 "timed out after N ms",
#   within the timeout plus a margin,
#   a transfer slower than --timeout 1s -> 5 "timed out after 1000 ms" (its
#   task may keep recorded pieces; a get without --timeout then completes it),
#   wrong --digest -> 6 "digest mismatch: expected sha256:WRONG, got sha256:RIGHT",
#   then the right digest succeeds (the failed task kept nothing),
#   a header the origin needs: without -H 403 (4), with -H the bytes,
#   usage errors -> 2, output directory missing -> 1, no daemon at the socket -> 3.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
PL=65536

make_file "$WWW/data" $((PL * 6 + 5))
make_file "$WWW/trickle" $((4 << 20))
make_file "$WWW/secret" $((PL * 3 + 1))
start_nginx --req-rate 10
start_ringflyd

fails_before=0
# failure NAME URL CODE TEXT [args]: the get fails as told, leaves nothing, the
# daemon logs one more `download failed`. With PARTIAL_OK=1 the task may stay
# pending with recorded pieces (a get cut short by its --timeout, see below),
# but never complete.
failure() {
    local name=$1 url=$2 code=$3 text=$4 n
    shift 4
    expect_get_fail "$name" "$url" "$OUT/$name" "$code" "$text" "$@"
    # One line, the reason.
    n=$(grep -c . "$T/$name.err")
    assert_eq 1 "$n" "lines on stderr of the failed get $name ($(cat "$T/$name.err"))"
    assert_eq 0 "$(size_of "$T/$name.out")" "stdout bytes of the failed get $name"
    if [[ ${PARTIAL_OK:-0} == 1 ]]; then
        rf stat "$url"
        if [[ $RF_RC == 0 ]]; then
            [[ $(stat_field state) != complete ]] || fail "stat $url after a failed get says complete: $(cat "$T/rf.out")"
            log "$name: the task stays: $(stat_field state), bytes_done $(stat_field bytes_done)"
        fi
    else
        assert_no_data_task "$url"
    fi
    # Only the temp files / outputs this test made are in $OUT.
    left=$(find "$OUT" -mindepth 1 -name ".*" -print)
    [[ -z $left ]] || fail "hidden files left in $OUT after $name: $left"
    n=$(grep -c "download failed" "$DAEMON_LOG")
    ((n > fails_before)) || fail "no new 'download failed' line in the daemon log after $name"
    fails_before=$n
    log "$name: exit $GET_RC in $GET_MS ms: $(head -n 1 "$T/$name.err")"
}

# HTTP errors: exit 4.
failure e404 "$NGINX_URL/missing" 4 "HTTP 404"
failure e403 "$NGINX_URL/forbidden" 4 "HTTP 403"
failure e500 "$NGINX_URL/error500" 4 "HTTP 500"

# Connection refused: exit 5.
closed_port
failure refused "http://127.0.0.1:$CLOSED_PORT/x" 5 "connection refused"

# Nobody answers: --timeout bounds the get.
start_stall_server
failure stall2s "$STALL_URL/stall2s" 5 "timed out after 2000 ms" --timeout 2s
((GET_MS >= 1900 && GET_MS < 6000)) || fail "get --timeout 2s against a silent server took $GET_MS ms"
failure stall2 "$STALL_URL/stall2" 5 "timed out after 2000 ms" --timeout 2
((GET_MS >= 1900 && GET_MS < 6000)) || fail "get --timeout 2 (seconds) against a silent server took $GET_MS ms"
failure stall500ms "$STALL_URL/stall500ms" 5 "timed out after 500 ms" --timeout 500ms
((GET_MS >= 450 && GET_MS < 4000)) || fail "get --timeout 500ms against a silent server took $GET_MS ms"

# A transfer slower than the timeout (64 pieces at 10 range requests a second).
# The interface says a failed task is deleted and an interrupted one keeps its
# pieces; which a timed-out get is, it does not say: here the task may keep
# recorded pieces but must not be complete, and a get without --timeout then
# completes it with the right bytes.
url="$NGINX_URL/slow/trickle"
PARTIAL_OK=1 failure trickle "$url" 5 "timed out after 1000 ms" --timeout 1s --piece-length $PL
((GET_MS < 5000)) || fail "get --timeout 1s of a slow transfer took $GET_MS ms"
RF_DEADLINE=60 expect_get_ok trickle-again "$url" "$OUT/trickle" "$WWW/trickle" --piece-length $PL

# Wrong digest: exit 6, both digests named.
url="$NGINX_URL/data"
right=$(sha "$WWW/data")
wrong=$(printf 'not the data' | sha256sum)
wrong=${wrong%% *}
failure digest "$url" 6 "digest mismatch" --digest "sha256:$wrong" --piece-length $PL
assert_contains "$T/digest.err" "expected sha256:$wrong" "stderr of the digest mismatch"
assert_contains "$T/digest.err" "got sha256:$right" "stderr of the digest mismatch"
# The failed task is gone: the right digest fetches the right bytes again.
expect_get_ok digest-ok "$url" "$OUT/data" "$WWW/data" --digest "sha256:$right" --piece-length $PL
assert_contains "$T/digest-ok.err" "from origin" "summary line of the get with the right digest"

# A header the origin wants (not part of the task id).
url="$NGINX_URL/auth/secret"
failure noheader "$url" 4 "HTTP 403" --piece-length $PL
expect_get_ok header "$url" "$OUT/secret" "$WWW/secret" -H 'X-Rfit-Token: s3cret' --piece-length $PL

# Usage: exit 2 (no -O; bad --timeout; bad --digest), nothing written.
assert_exit 2 "$RINGFLY" --socket "$SOCK" get "$NGINX_URL/data"
assert_exit 2 "$RINGFLY" --socket "$SOCK" get "$NGINX_URL/data" -O "$OUT/usage1" --timeout soon
assert_exit 2 "$RINGFLY" --socket "$SOCK" get "$NGINX_URL/data" -O "$OUT/usage2" --digest md5:abc
assert_gone "$OUT/usage1"
assert_gone "$OUT/usage2"

# The output cannot be written (its directory does not exist): exit 1.
rf_get nodir "$NGINX_URL/data" "$T/no-such-dir/data"
assert_eq 1 "$GET_RC" "exit of a get into a missing directory (stderr: $(cat "$T/nodir.err"))"
assert_contains "$T/nodir.err" "ringfly: " "stderr of a get into a missing directory"
assert_gone "$T/no-such-dir"

# No daemon at the socket: exit 3.
assert_exit 3 "$RINGFLY" --socket "$T/nobody.sock" get "$NGINX_URL/data" -O "$OUT/nodaemon" --no-progress
assert_gone "$OUT/nodaemon"
assert_no_temp "$OUT/nodaemon"

# stat of an unknown URL and task.
rf stat "$NGINX_URL/never-asked"
assert_eq 1 "$RF_RC" "exit of stat of an unknown URL"
assert_contains "$T/rf.err" "ringfly: stat $NGINX_URL/never-asked: no such task" "stderr of stat of an unknown URL"
rf stat "$(task_id_of "$NGINX_URL/never-asked")"
assert_eq 1 "$RF_RC" "exit of stat of an unknown task id"
assert_contains "$T/rf.err" "no such task" "stderr of stat of an unknown task id"

must_health "$SOCK" 5 "$DAEMON_PID"
pass
