#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# A task whose get failed ("origin changed") is deleted, even while a peer
# still holds one of its pieces: a raw client asks for piece 0 (16 MiB) and
# does not read it, so the upload holds the task; the file is replaced (same
# size, new ETag) and the get fails with exit 6. The next get of the URL,
# while the piece is still held, must not reuse the failed task's pieces: it
# exits 0 with the new content's bytes (once the failed task had wound down,
# it finished with the old pieces 0 and 1 and the new piece 2, exit 0).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

require_peerwire
OUT="$T/out"
mkdir -p "$OUT"
PL=$((16 << 20))
SIZE=$((3 * PL))

make_file "$WWW/file" $SIZE
touch -d '2026-01-01 00:00:00' "$WWW/file"
make_file "$T/new" $SIZE
touch -d '2026-01-02 00:00:00' "$T/new"
new_sha=$(sha "$T/new")
start_nginx --rate 16m
URL="$NGINX_URL/slow/file"
ID=$(task_id_of "$URL")
start_peer A --log-level debug
SOCK=${PEER_SOCK[A]}

timeout -k 2 60 "$RINGFLY" --socket "$SOCK" get "$URL" -O "$OUT/first" --no-progress \
    --piece-length $PL --parallel 1 >"$T/get1.out" 2>"$T/get1.err" 9>&- &
GET_PID=$!
track "$GET_PID" "ringfly get"
wait_bytes_done "$URL" $PL 30

# Piece 0 asked for and left unread: the upload holds the task.
peerwire talk "${PEER_PORT[A]}" --deadline 60 "sendget:$ID:1:0" "sleep:20" \
    >"$T/hold.wire" 2>"$T/hold.err" 9>&- &
HOLD_PID=$!
track "$HOLD_PID" peerwire
wait_log "${PEER_LOG[A]}" "upload piece task=$ID piece=0" 10 "${PEER_PID[A]}"

# The origin changes: the get fails.
mv "$T/new" "$WWW/file"
wait_exit "$GET_PID" 30
untrack "$GET_PID"
assert_eq 6 "$WAIT_RC" "exit of the get whose origin changed ($(cat "$T/get1.err"))"
assert_contains "$T/get1.err" "origin changed" "stderr of the get whose origin changed"
alive "$HOLD_PID" || fail "the raw client holding piece 0 is gone: $(cat "$T/hold.err")"

# The next get, the piece still held: the new bytes only. ("still winding
# down from its last attempt" is an answer to try again, as a user would.)
now_ms
t0=$NOW_MS
while :; do
    peer_get second A "$URL" "$OUT/second" --piece-length $PL --parallel 1
    grep -qF "winding down" "$T/second.err" || break
    now_ms
    ((NOW_MS - t0 < 15000)) || fail "the URL's task still winding down after 15 s"
    nap 0.1
done
check_get_ok second "$OUT/second" "$WWW/file"
assert_eq "$new_sha" "$(sha "$OUT/second")" "sha256 of the get after the failed one"
alive "$HOLD_PID" || log "note: the holder ended before the second get finished"
kill "$HOLD_PID" 2>/dev/null
must_health "$SOCK" 5 "${PEER_PID[A]}"
pass
