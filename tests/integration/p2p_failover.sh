#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# A child survives bad parents (docs/INTERFACE-issue6.md), nginx up as the origin:
# (a) A fetches 16 MiB from an nginx paced at 4 pieces a second; B gets it with
#     --parent A; once B holds 2 MiB, A is killed with kill -9: B completes with
#     the right bytes "from peers and origin" (origin_bytes and peer_bytes > 0)
#     and logs `parent penalised|dropped ... parent=A`.
# (b) rf-badpeer close-after:3 as the only parent: right bytes, peer_bytes at
#     most the 3 pieces it served, the rest from the origin, the parent
#     penalised or dropped. Next to a good rf-badpeer: all from peers, no
#     request reaches nginx.
# (c) rf-badpeer corrupt as the only parent (three rounds): right bytes "from
#     origin" (peer_bytes=0: not one corrupt byte kept), `parent penalised ...
#     reason="piece N: crc mismatch"`.
# After each get the child is still healthy and its cache (ringfly export)
# holds the true bytes, not only the output file.
# (d) rf-badpeer stall as the only parent, download.piece_timeout 500ms (config
#     file): right bytes from the origin well before the 30 s default,
#     `parent penalised ... reason="piece N: no answer in 500 ms"`.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

require_badpeer
OUT="$T/out"
mkdir -p "$OUT"
MiB=1048576
make_file "$WWW/f1" $((16 * MiB))
make_file "$WWW/f2" $((8 * MiB + 77))
for k in 1 2 3; do
    make_file "$WWW/f3.$k" $((8 * MiB + 77))
done
make_file "$WWW/f4" $((8 * MiB + 77))
make_file "$WWW/f5" $((8 * MiB + 77))
start_nginx --req-rate 4

# --- (a) the parent killed mid-transfer.
URL="$NGINX_URL/slow/f1"
ID=$(task_id_of "$URL")
start_peer A
start_peer B1
peer_get_bg a A "$URL" "$OUT/a" --piece-length $MiB
wait_log "${PEER_LOG[A]}" "download start task=$ID" 10 "$BG_PID"
peer_get_bg b1 B1 "$URL" "$OUT/b1" --parent "$(paddr A)"
now_ms; t0=$NOW_MS
while :; do
    peer_stat B1 "$URL"
    ((${STAT_BYTES:-0} >= 2 * MiB)) && break
    alive "${_BG_PID[b1]}" || fail "B1's get ended before it held 2 MiB: $(cat "$T/b1.err")"
    now_ms
    ((NOW_MS - t0 > 20000)) && fail "B1 held < 2 MiB of $URL after 20 s; last stat: $(cat "$T/rf.out" "$T/rf.err")"
    nap 0.02
done
[[ $STAT_STATE == pending ]] || fail "B1's task is $STAT_STATE before A was killed; make A slower"
b1_bytes=$STAT_BYTES
peer_stat A "$URL"
[[ $STAT_STATE == pending ]] || fail "A's task is $STAT_STATE before it was killed; make it slower"
log "killing A (pid ${PEER_PID[A]}) at $STAT_BYTES bytes; B1 holds $b1_bytes"
kill_and_reap "${PEER_PID[A]}" KILL
peer_get_wait b1 40
check_get_ok b1 "$OUT/b1" "$WWW/f1"
assert_source b1 "peers and origin"
log_has "${PEER_LOG[B1]}" "parent (penalised|dropped) task=$ID parent=127\.0\.0\.1:${PEER_PORT[A]}" ||
    fail "no 'parent penalised|dropped task=$ID parent=127.0.0.1:${PEER_PORT[A]}' in B1's log"
assert_done B1 "$ID" peer $((16 * MiB)) '>0' '>0'
check_cache B1 "$ID" "$WWW/f1"
wait_exit "${_BG_PID[a]}" 10

# --- (b) a parent that closes every connection after 3 pieces.
URL="$NGINX_URL/f2"
ID=$(task_id_of "$URL")
start_badpeer close-after:3 "$URL" "$WWW/f2" $MiB
start_peer B2
expect_peer_get_ok b2 B2 "$URL" "$OUT/b2" "$WWW/f2" --parent "127.0.0.1:$BAD_PORT"
log_has "${PEER_LOG[B2]}" "parent (penalised|dropped) task=$ID parent=127\.0\.0\.1:$BAD_PORT" ||
    fail "no 'parent penalised|dropped task=$ID parent=127.0.0.1:$BAD_PORT' in B2's log"
check_cache B2 "$ID" "$WWW/f2"
stop_badpeer
assert_eq 3 "$BAD_SERVED" "pieces rf-badpeer close-after:3 served"
# Whether the 3 whole pieces before the break are kept is not promised: only
# that the bytes are right and nothing is counted twice.
assert_done B2 "$ID" - $((8 * MiB + 77)) '>0' -
done_line B2 "$ID"
peer_b=$(log_field "$DONE_LINE" peer_bytes)
origin_b=$(log_field "$DONE_LINE" origin_bytes)
((peer_b <= 3 * MiB)) || fail "B2 counts $peer_b bytes from a parent that served 3 pieces: $DONE_LINE"
log "B2 kept $peer_b bytes of the 3 pieces served before the break, $origin_b from the origin"

# --- (b2) the same next to a good parent: everything from peers, no origin request.
URL="$NGINX_URL/f5"
ID=$(task_id_of "$URL")
nginx_wait_idle
requests=$(origin_requests)
start_badpeer close-after:2 "$URL" "$WWW/f5" $MiB
bad_pid=$BAD_PID bad_err=$BAD_ERR bad_port=$BAD_PORT
start_badpeer good "$URL" "$WWW/f5" $MiB
start_peer B5
expect_peer_get_ok b5 B5 "$URL" "$OUT/b5" "$WWW/f5" --parent "127.0.0.1:$bad_port" --parent "127.0.0.1:$BAD_PORT"
assert_source b5 peers
assert_done B5 "$ID" peer $((8 * MiB + 77)) 0 $((8 * MiB + 77))
check_cache B5 "$ID" "$WWW/f5"
stop_badpeer "$bad_pid" "$bad_err"
if ((BAD_SERVED == 2)); then
    log_has "${PEER_LOG[B5]}" "parent (penalised|dropped) task=$ID parent=127\.0\.0\.1:$bad_port" ||
        fail "close-after:2 broke off but B5 logged no 'parent penalised|dropped task=$ID parent=127.0.0.1:$bad_port'"
fi
log "close-after:2 served $BAD_SERVED pieces to B5"
stop_badpeer
nginx_wait_idle
assert_eq "$requests" "$(origin_requests)" "requests nginx saw (none may come from B5's get)"

# --- (c) a parent that flips a byte of every piece, three times over (the
# corrupt bytes race the origin's for the same pieces).
for k in 1 2 3; do
    URL="$NGINX_URL/f3.$k"
    ID=$(task_id_of "$URL")
    start_badpeer corrupt "$URL" "$WWW/f3.$k" $MiB
    start_peer "B3$k"
    expect_peer_get_ok "b3$k" "B3$k" "$URL" "$OUT/b3$k" "$WWW/f3.$k" --parent "127.0.0.1:$BAD_PORT"
    # The worst first: a dead child or corrupt bytes in its cache.
    check_cache "B3$k" "$ID" "$WWW/f3.$k"
    assert_source "b3$k" origin
    log_has "${PEER_LOG[B3$k]}" "parent penalised task=$ID parent=127\.0\.0\.1:$BAD_PORT( [a-z_]+=[^ ]+)* reason=\"piece [0-9]+: crc mismatch" ||
        fail "no 'parent penalised task=$ID parent=127.0.0.1:$BAD_PORT reason=\"piece N: crc mismatch' in B3$k's log"
    stop_badpeer
    ((BAD_CORRUPT >= 1)) || fail "rf-badpeer corrupt served no piece (served=$BAD_SERVED corrupt=$BAD_CORRUPT)"
    assert_done "B3$k" "$ID" origin $((8 * MiB + 77)) $((8 * MiB + 77)) 0
done

# --- (d) a parent that never answers GetPiece.
URL="$NGINX_URL/f4"
ID=$(task_id_of "$URL")
start_badpeer stall "$URL" "$WWW/f4" $MiB
printf 'download:\n  piece_timeout: 500ms\n' >"$T/b4.yaml"
start_peer B4 --config "$T/b4.yaml"
expect_peer_get_ok b4 B4 "$URL" "$OUT/b4" "$WWW/f4" --parent "127.0.0.1:$BAD_PORT"
((GET_MS < 15000)) || fail "the get with a stalling parent took $GET_MS ms (piece_timeout 500ms)"
log_has "${PEER_LOG[B4]}" "parent penalised task=$ID parent=127\.0\.0\.1:$BAD_PORT( [a-z_]+=[^ ]+)* reason=\"piece [0-9]+: no answer in 500 ms" ||
    fail "no 'parent penalised task=$ID parent=127.0.0.1:$BAD_PORT reason=\"piece N: no answer in 500 ms' in B4's log"
assert_source b4 origin
check_cache B4 "$ID" "$WWW/f4"
stop_badpeer
assert_done B4 "$ID" origin $((8 * MiB + 77)) $((8 * MiB + 77)) 0

p2p_pass
