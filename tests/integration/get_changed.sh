#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# The origin's file changes in the middle of a get: 32 MiB in 256 KiB pieces
# through nginx's limit_req at 20 requests a second (about 6 s); once stat shows recorded bytes,
# the file is replaced (a new file of another size and content moved over it:
# new inode, new ETag and length). Range responses then disagree with the HEAD:
# the get exits 6 with "origin changed", nothing at the final path, no temp
# file, no task claiming data. A new get of the URL then gets the new content
# only (no piece of the old one mixed in). Then the same with a replacement of
# the same size (16 MiB; only the ETag differs).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
PL=262144

make_file "$WWW/file" $((32 << 20))
make_file "$T/new" $((5 << 20))
start_nginx --req-rate 20
URL="$NGINX_URL/slow/file"
etag_old=$(curl -sI "$URL" | tr -d '\r' | grep -i '^etag:')
start_ringflyd

timeout -k 2 60 "$RINGFLY" --socket "$SOCK" get "$URL" -O "$OUT/file" --no-progress --piece-length $PL \
    >"$T/get.out" 2>"$T/get.err" 9>&- &
GET_PID=$!
track "$GET_PID" "ringfly get"

wait_bytes_done "$URL" 1 20
assert_in_progress "$OUT/file"
log "bytes_done $BYTES_DONE: replacing the origin's file"
cp "$T/new" "$WWW/.file.new"
chmod 644 "$WWW/.file.new"
mv -f "$WWW/.file.new" "$WWW/file"
etag_new=$(curl -sI "$URL" | tr -d '\r' | grep -i '^etag:')
[[ $etag_new != "$etag_old" ]] || fail "nginx's ETag did not change with the file ($etag_old)"

wait_exit "$GET_PID" 40
[[ $WAIT_RC != timeout ]] || fail "the get did not end within 40 s of the origin change"
assert_eq 6 "$WAIT_RC" "exit of the get whose origin changed (stderr: $(cat "$T/get.err"))"
assert_contains "$T/get.err" "ringfly: get $URL: origin changed" "stderr of the get whose origin changed"
assert_gone "$OUT/file" "after the get whose origin changed"
assert_no_temp "$OUT/file"
assert_no_data_task "$URL"
grep -F "download failed" "$DAEMON_LOG" | grep -qF "origin changed" ||
    fail "no 'download failed ... origin changed' line in the daemon log"
log "changed: $(cat "$T/get.err")"

# Again: the new content, whole.
RF_DEADLINE=60 expect_get_ok again "$URL" "$OUT/file" "$T/new" --piece-length $PL
assert_contains "$T/again.err" "from origin" "summary line of the get after the change"

# The same with a file of the same size: only the ETag (nginx: mtime-size)
# tells the change. 16 MiB, replaced by other bytes with an mtime 10 s later.
make_file "$WWW/same" $((16 << 20))
make_file "$T/same-new" $((16 << 20))
touch -d "@$(($(stat -c %Y "$WWW/same") + 10))" "$T/same-new"
URL="$NGINX_URL/slow/same"
etag_old=$(curl -sI "$URL" | tr -d '\r' | grep -i '^etag:')
timeout -k 2 60 "$RINGFLY" --socket "$SOCK" get "$URL" -O "$OUT/same" --no-progress --piece-length $PL \
    >"$T/get-same.out" 2>"$T/get-same.err" 9>&- &
GET_PID=$!
track "$GET_PID" "ringfly get"
wait_bytes_done "$URL" 1 20
log "bytes_done $BYTES_DONE: replacing the origin's file by one of the same size"
cp -p "$T/same-new" "$WWW/.same.new"
chmod 644 "$WWW/.same.new"
mv -f "$WWW/.same.new" "$WWW/same"
etag_new=$(curl -sI "$URL" | tr -d '\r' | grep -i '^etag:')
[[ $etag_new != "$etag_old" ]] || fail "nginx's ETag did not change with the file ($etag_old)"
wait_exit "$GET_PID" 40
[[ $WAIT_RC != timeout ]] || fail "the get did not end within 40 s of the origin change"
assert_eq 6 "$WAIT_RC" "exit of the get whose origin changed to the same size (stderr: $(cat "$T/get-same.err"))"
assert_contains "$T/get-same.err" "ringfly: get $URL: origin changed" "stderr of the get whose origin changed (same size)"
assert_gone "$OUT/same" "after the get whose origin changed (same size)"
assert_no_temp "$OUT/same"
assert_no_data_task "$URL"
log "changed (same size): $(cat "$T/get-same.err")"
RF_DEADLINE=60 expect_get_ok same-again "$URL" "$OUT/same" "$T/same-new" --piece-length $PL

must_health "$SOCK" 5 "$DAEMON_PID"
pass
