#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# Parents that never finish what they start, against a child with
# download.piece_timeout 500ms and the origin up (rf-badpeer):
#  a) hold-half, the only parent of a one-piece file: a PieceHeader and half
#     the payload, then silence on an open connection; the get completes from
#     the origin with the right bytes, the parent penalised for the piece
#     ("no answer in 500 ms") (it once hung forever: the request being read
#     was off the queue the timeout looked at);
#  b) two hold-half parents of a four-piece file: the same;
#  c) notfound-reannounce: announces every piece, answers every GetPiece with
#     NOT_FOUND and announces piece 0 again every 100 ms; the get completes
#     from the origin (it once hung: each announcement re-trusted the piece
#     and counted as progress, so the origin was never brought in);
#  d) stall with a fake length of 16 TiB in 64 MiB pieces, the only parent:
#     the parent is refused ("its shape ..."), the get completes from the
#     origin (it once failed the get: "cannot preallocate");
#  e) notfound-once, the only parent, back-to-source disabled: NOT_FOUND once,
#     then the piece announced again and served: the get completes from it;
#  f) a task with pieces recorded by a get cut short, then a parent announcing
#     another shape: refused, the pieces kept, the origin sends only the rest;
#  g) stall and a good parent G with every piece, back-to-source disabled: the
#     stalled parent is dropped and G brings its pieces (the get once failed
#     in that same tick: "nothing from the parents in 500 ms", G idle).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

require_badpeer
MiB=1048576
OUT="$T/out"
mkdir -p "$OUT"
make_file "$WWW/one" $((MiB - 5))
make_file "$WWW/four" $((4 * MiB))
make_file "$WWW/f" $((4 * MiB + 3))
start_nginx
printf 'download:\n  piece_timeout: 500ms\n' >"$T/child.yaml"
start_peer C --config "$T/child.yaml"

# expect_from_origin NAME URL SRC PARENT...: the get exits 0 within 20 s with
# SRC's bytes, some of them from the origin.
expect_from_origin() {
    local name=$1 url=$2 src=$3 args=() p
    shift 3
    for p in "$@"; do args+=(--parent "127.0.0.1:$p"); done
    RF_DEADLINE=20 peer_get "$name" C "$url" "$OUT/$name" --piece-length $MiB "${args[@]}"
    check_get_ok "$name" "$OUT/$name" "$src"
    assert_contains "$T/$name.err" "origin" "summary line of get $name"
    log "$name: $GET_MS ms: $(tail -n 1 "$T/$name.err")"
}

# a) one parent, one piece, half its payload.
start_badpeer hold-half "$NGINX_URL/one" "$WWW/one" $MiB
expect_from_origin a "$NGINX_URL/one" "$WWW/one" "$BAD_PORT"
grep -E "parent penalised task=$(task_id_of "$NGINX_URL/one") parent=127\.0\.0\.1:$BAD_PORT .*piece 0: no answer in 500 ms" \
    "${PEER_LOG[C]}" >/dev/null || fail "a) no 'parent penalised ... piece 0: no answer in 500 ms' in C's log"

# b) two such parents, four pieces.
start_badpeer hold-half "$NGINX_URL/four" "$WWW/four" $MiB
p1=$BAD_PORT
start_badpeer hold-half "$NGINX_URL/four" "$WWW/four" $MiB
expect_from_origin b "$NGINX_URL/four" "$WWW/four" "$p1" "$BAD_PORT"

# c) NOT_FOUND for everything it announces, announced again and again.
start_badpeer notfound-reannounce "$NGINX_URL/f" "$WWW/f" $MiB
expect_from_origin c "$NGINX_URL/f" "$WWW/f" "$BAD_PORT"

# d) The only parent announces 16 TiB in 64 MiB pieces (and serves nothing):
#    the parent is refused, not the get.
start_badpeer stall "$NGINX_URL/f?d" "$WWW/f" $((64 * MiB)) --fake-length $((16 << 40))
RF_DEADLINE=20 peer_get d C "$NGINX_URL/f?d" "$OUT/d" --parent "127.0.0.1:$BAD_PORT"
check_get_ok d "$OUT/d" "$WWW/f"
grep -E "parent refused task=$(task_id_of "$NGINX_URL/f?d") parent=127\.0\.0\.1:$BAD_PORT reason=\"its shape \(length 17592186044416" \
    "${PEER_LOG[C]}" >/dev/null || fail "d) no 'parent refused ... its shape (length 17592186044416' in C's log"
log "d: $GET_MS ms: $(tail -n 1 "$T/d.err")"

# e) An honest parent that answers one NOT_FOUND (it dropped a damaged copy)
#    and then has the piece again and announces it: asked again, the get
#    completes from it, back-to-source disabled (it once waited forever: a
#    denial was for good).
start_badpeer notfound-once "$NGINX_URL/one?e" "$WWW/one" $MiB
RF_DEADLINE=20 peer_get e C "$NGINX_URL/one?e" "$OUT/e" --piece-length $MiB \
    --parent "127.0.0.1:$BAD_PORT" --disable-back-to-source
check_get_ok e "$OUT/e" "$WWW/one"
assert_source e peers
log "e: $GET_MS ms: $(tail -n 1 "$T/e.err")"

# g) A stalled parent beside a good one, back-to-source disabled.
make_file "$WWW/sixteen" $((16 * MiB))
url="$NGINX_URL/sixteen"
start_peer G
expect_peer_get_ok gfill G "$url" "$OUT/gfill" "$WWW/sixteen" --piece-length $MiB
start_badpeer stall "$url" "$WWW/sixteen" $MiB
RF_DEADLINE=20 peer_get g C "$url" "$OUT/g" --piece-length $MiB \
    --parent "127.0.0.1:$BAD_PORT" --parent "$(paddr G)" --disable-back-to-source
check_get_ok g "$OUT/g" "$WWW/sixteen"
assert_source g peers
grep -E "parent penalised task=$(task_id_of "$url") parent=127\.0\.0\.1:$BAD_PORT " "${PEER_LOG[C]}" >/dev/null ||
    fail "g) no 'parent penalised ... parent=127.0.0.1:$BAD_PORT' in C's log (was the stalled parent asked at all?)"
log "g: $GET_MS ms: $(tail -n 1 "$T/g.err")"

# f) A task with pieces recorded by an earlier get (cut short) and a parent
#    announcing another shape: the parent is refused and the recorded pieces
#    stay (the origin fetches only the rest); they were once discarded first.
make_file "$WWW/g" $((16 * MiB))
start_nginx --req-rate 20
url="$NGINX_URL/slow/g"
SOCK=${PEER_SOCK[C]}
peer_get_bg cut C "$url" "$OUT/cut" --piece-length 262144
GET_PID=$BG_PID
wait_bytes_done "$url" $((2 * MiB)) 30
kill -KILL "$GET_PID"
wait_exit "$GET_PID" 10
wait_log "${PEER_LOG[C]}" "nobody waits for the task.*$(task_id_of "$url")|$(task_id_of "$url").*nobody waits" 10 "${PEER_PID[C]}"
rf stat "$url"
kept=$(stat_field bytes_done)
((kept >= 2 * MiB)) || fail "f) the cut get left $kept bytes recorded"
lines_before=$(wc -l <"$NGINX_ACCESS_LOG")
start_badpeer stall "$url" "$WWW/g" $((64 * MiB)) --fake-length $((16 << 40))
RF_DEADLINE=60 peer_get f C "$url" "$OUT/f" --parent "127.0.0.1:$BAD_PORT"
check_get_ok f "$OUT/f" "$WWW/g"
assert_not_contains "${PEER_LOG[C]}" "dropping the recorded pieces" "C's log (a refused parent's shape)"
nginx_wait_idle
after=$(tail -n +$((lines_before + 1)) "$NGINX_ACCESS_LOG" | awk '$7 !~ /^\/\.rfit-ready/ { s += $10 } END { printf "%.0f\n", s }')
((after <= 16 * MiB - kept)) || fail "f) nginx sent $after bytes after the cut, more than the $((16 * MiB - kept)) not recorded"
log "f: $kept bytes kept, $after from the origin after: $(tail -n 1 "$T/f.err")"
p2p_pass
