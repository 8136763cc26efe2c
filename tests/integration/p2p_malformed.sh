#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# A parent's peer port against hostile or broken clients (docs/INTERFACE-issue6.md).
# A holds 9 small files (5 pieces of 256 KiB each), nginx is stopped. Probes:
#  1. 20 x 4 KiB of random bytes, then EOF (socat): A answers with an Error
#     frame and closes each connection at once.
#  2. headers with huge lengths (SyncPieces 4 GiB, GetPiece 2 GiB): Error
#     FRAME_TOO_LARGE, then the daemon closes.
#  3. a truncated header, then EOF: an Error frame, closed at once.
#  4. SyncPieces of an unknown task: Error NOT_FOUND echoing the id, naming
#     "no such task"; the same connection then syncs a real task (done=1).
#  5. GetPiece of an unknown task: Error NOT_FOUND; then a real piece on the
#     same connection, its crc32c and bytes right.
#  6. GetPiece of piece 5 of 5: Error INVALID; then the last piece, right.
#  7. a frame of unknown type 99: Error UNKNOWN_TYPE, then close.
#  8. a SyncPieces that does not decode: Error MALFORMED, then close.
#  9. 1000 idle connections: exactly upload.max_connections (256) stay open,
#     the rest get BUSY and are closed; health answers meanwhile; once they
#     are closed A's fd count is back within 5 of before.
# After each probe: A answers health (same pid) and B gets the next file from
# A with the right bytes "from peers". Last, a daemon with upload.idle_timeout
# 1s closes a silent connection after about a second.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

require_peerwire
require_cmd socat
OUT="$T/out"
mkdir -p "$OUT"
PL=262144
SIZE=$((PL * 4 + 999))
COUNT=5
FILES=9
start_nginx
for ((i = 0; i < FILES; i++)); do
    make_file "$WWW/m$i" $SIZE
done
start_peer A
start_peer B
PA=${PEER_PORT[A]}
for ((i = 0; i < FILES; i++)); do
    expect_peer_get_ok "a$i" A "$NGINX_URL/m$i" "$OUT/a$i" "$WWW/m$i" --piece-length $PL
done
ID0=$(task_id_of "$NGINX_URL/m0")
OTHER=$(task_id_of "$NGINX_URL/not-here")
stop_nginx

# still_serves K WHAT: A is healthy (same pid) and B gets file K from it.
still_serves() {
    must_health "${PEER_SOCK[A]}" 5 "${PEER_PID[A]}"
    expect_peer_get_ok "b$1" B "$NGINX_URL/m$1" "$OUT/b$1" "$WWW/m$1" --parent "$(paddr A)"
    assert_source "b$1" peers
    log "after $2: A healthy, B got m$1 from it"
}

# wire NAME ACTION...: peerwire talk against A, output in $T/NAME.wire; sets W
# (the lines).
wire() {
    local name=$1
    shift
    peerwire talk "$PA" "$@" >"$T/$name.wire" 2>"$T/$name.wire.err" ||
        fail "peerwire $name ($*): $(cat "$T/$name.wire.err"); got: $(cat "$T/$name.wire")"
    mapfile -t W <"$T/$name.wire"
}

# piece_sha FILE N: sha256 of piece N of FILE.
piece_sha() {
    local len=$PL h
    (($2 == COUNT - 1)) && len=$((SIZE - PL * (COUNT - 1)))
    h=$(tail -c +$(($2 * PL + 1)) "$1" | head -c "$len" | sha256sum)
    printf '%s\n' "${h%% *}"
}

# right_piece LINE ID N: LINE is the header of piece N of m0 with the right bytes.
right_piece() {
    local len=$PL
    (($3 == COUNT - 1)) && len=$((SIZE - PL * (COUNT - 1)))
    assert_contains "$1" "header id=$2 number=$3 offset=$(($3 * PL)) length=$len " "answer to GetPiece $3"
    assert_eq "$(log_field "$1" crc32c)" "$(log_field "$1" payload_crc32c)" "crc32c in the header of piece $3 vs its bytes"
    assert_eq "$(piece_sha "$WWW/m0" "$3")" "$(log_field "$1" payload_sha256)" "bytes of piece $3"
}

# socat_send NAME FILE: FILE's bytes to A then EOF; A must answer an Error
# frame and close within 3 s (socat waits up to 5). Reply in $T/NAME.reply.
socat_send() {
    local t0
    now_ms; t0=$NOW_MS
    timeout -k 1 10 socat -t 5 - "TCP:127.0.0.1:$PA" <"$2" >"$T/$1.reply" 2>"$T/$1.socat.err" 9>&-
    now_ms
    ((NOW_MS - t0 < 3000)) || fail "$1: A kept the connection open $((NOW_MS - t0)) ms after garbage and EOF"
    (($(size_of "$T/$1.reply") >= 5)) || fail "$1: A closed without an Error frame (reply of $(size_of "$T/$1.reply") bytes)"
    assert_eq 02 "$(od -An -tx1 -j4 -N1 "$T/$1.reply" | tr -d ' ')" "frame type of A's reply to $1"
}

# 1. random bytes
for ((r = 0; r < 20; r++)); do
    head -c 4096 /dev/urandom >"$T/rand"
    socat_send "random$r" "$T/rand"
done
still_serves 0 "random bytes"

# 2. huge lengths, no EOF from us: A must close by itself.
wire huge1 send:ffffffff0b eof
assert_contains "${W[0]:-}" "error id=0 code=1 " "A's answer to a 4 GiB SyncPieces header"
assert_eq eof "${W[-1]}" "end of the 4 GiB header connection"
wire huge2 send:7fffffff0d eof
assert_contains "${W[0]:-}" "error id=0 code=1 " "A's answer to a 2 GiB GetPiece header"
assert_eq eof "${W[-1]}" "end of the 2 GiB header connection"
still_serves 1 "huge lengths"

# 3. a truncated header, then EOF.
printf '\x00\x00\x00' >"$T/trunc"
socat_send truncated "$T/trunc"
wire trunc2 send:0000 shut eof
assert_contains "${W[0]:-}" "error id=0 code=2 " "A's answer to a truncated header"
assert_eq eof "${W[-1]}" "end of the truncated header connection"
still_serves 2 "a truncated header"

# 4. SyncPieces of an unknown task, then of a real one on the same connection.
wire sync_unknown "sync:$OTHER:5" "sync:$ID0:6"
assert_contains "${W[0]}" "error id=5 code=12 " "A's answer to SyncPieces of an unknown task"
assert_contains "${W[0]}" "no such task" "A's answer to SyncPieces of an unknown task"
assert_eq "avail id=6 content_length=$SIZE piece_length=$PL pieces=$COUNT first=0 last=$((COUNT - 1)) done=1 failed=0" \
    "${W[-1]}" "A's answer to SyncPieces of m0 after the unknown task"
still_serves 3 "SyncPieces of an unknown task"

# 5. GetPiece of an unknown task, then a real piece.
wire get_unknown "get:$OTHER:7:0" "get:$ID0:8:0"
assert_contains "${W[0]}" "error id=7 code=12 " "A's answer to GetPiece of an unknown task"
assert_contains "${W[0]}" "no such task" "A's answer to GetPiece of an unknown task"
right_piece "${W[1]}" 8 0
still_serves 4 "GetPiece of an unknown task"

# 6. a piece number out of range, then the last piece.
wire get_range "get:$ID0:9:$COUNT" "get:$ID0:10:$((COUNT - 1))" "get:$ID0:11:4294967295"
assert_contains "${W[0]}" "error id=9 code=13 " "A's answer to GetPiece $COUNT of $COUNT"
right_piece "${W[1]}" 10 $((COUNT - 1))
assert_contains "${W[2]}" "error id=11 code=13 " "A's answer to GetPiece 4294967295"
still_serves 5 "a piece number out of range"

# 7. an unknown frame type.
wire unknown_type send:000000026300 eof
assert_contains "${W[0]:-}" "error id=0 code=3 " "A's answer to a frame of type 99"
assert_eq eof "${W[-1]}" "end of the unknown type connection"
still_serves 6 "an unknown frame type"

# 8. a SyncPieces that does not decode (field 2 claims 255 bytes, has none).
wire undecodable send:000000030b12ff eof
assert_contains "${W[0]:-}" "error id=0 code=2 " "A's answer to an undecodable SyncPieces"
assert_eq eof "${W[-1]}" "end of the undecodable frame connection"
still_serves 7 "an undecodable message"

# 9. 1000 idle connections.
fd0=$(fd_count "${PEER_PID[A]}")
mkfifo "$T/hold.in"
# python3 itself is the tracked pid (no timeout(1) in between), so the EXIT
# trap's SIGKILL reaches it; stdin is a FIFO this shell holds open until the end.
python3 "$T/peerwire.py" hold "$PA" 1000 --expect-open 256 <"$T/hold.in" >"$T/hold.out" 2>"$T/hold.err" 9>&- &
HOLD=$!
track "$HOLD" "peerwire hold"
exec 8>"$T/hold.in"
now_ms; t0=$NOW_MS
until grep -qx 'open 256' "$T/hold.out"; do
    if ! alive "$HOLD"; then
        wait_exit "$HOLD" 1
        fail "1000 connections to A: $(cat "$T/hold.err" "$T/hold.out")"
    fi
    now_ms
    ((NOW_MS - t0 > 30000)) && fail "1000 connections to A: not settled within 30 s: $(cat "$T/hold.out")"
    nap 0.02
done
log "1000 connections: 256 open, A has $(fd_count "${PEER_PID[A]}") fds (was $fd0)"
must_health "${PEER_SOCK[A]}" 5 "${PEER_PID[A]}"
log_has "${PEER_LOG[A]}" "upload busy peer=127\.0\.0\.1:" || fail "no 'upload busy' in A's log with 1000 connections"
exec 8>&-
wait_exit "$HOLD" 10
[[ $WAIT_RC == 0 ]] || fail "peerwire hold exited $WAIT_RC: $(cat "$T/hold.err")"
now_ms; t0=$NOW_MS
until (($(fd_count "${PEER_PID[A]}") <= fd0 + 5)); do
    now_ms
    ((NOW_MS - t0 > 10000)) && fail "A holds $(fd_count "${PEER_PID[A]}") fds 10 s after 1000 connections closed, had $fd0 before: $(find "/proc/${PEER_PID[A]}/fd" -mindepth 1 -printf '%f -> %l\n' 2>/dev/null | tail -n 20)"
    nap 0.02
done
still_serves 8 "1000 idle connections"

# An idle connection is closed after upload.idle_timeout.
printf 'upload:\n  idle_timeout: 1s\n' >"$T/e.yaml"
start_peer E --config "$T/e.yaml"
now_ms; t0=$NOW_MS
peerwire talk "${PEER_PORT[E]}" eof >"$T/idle.wire" 2>"$T/idle.err" ||
    fail "a silent connection to E (idle_timeout 1s) still open after 10 s: $(cat "$T/idle.err")"
now_ms
assert_eq eof "$(tail -n 1 "$T/idle.wire")" "end of the silent connection"
((NOW_MS - t0 >= 800 && NOW_MS - t0 <= 5000)) ||
    fail "E closed a silent connection after $((NOW_MS - t0)) ms, expected about 1 s (upload.idle_timeout 1s)"

p2p_pass
