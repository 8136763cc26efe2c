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
#     origin (it once failed the get: "cannot preallocate").
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
p2p_pass
