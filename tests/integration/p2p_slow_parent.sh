#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# Honest but slow parents are not dropped: two seeds behind a steady 1 MiB/s
# link each (trickle.py, a pacing TCP proxy) serve a 16 MiB file in 4 MiB
# pieces to a child with download.piece_timeout 2s. Each piece takes about 4 s
# while its bytes flow all along: the timeout runs from the last bytes, not
# from the request, so no parent is penalised, the get exits 0 with the right
# bytes, all from peers. (Counting from the request dropped every one.)
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

require_cmd python3
MiB=1048576
OUT="$T/out"
mkdir -p "$OUT"
make_file "$WWW/f" $((16 * MiB))
start_nginx
start_peer S1
start_peer S2
for s in S1 S2; do
    expect_peer_get_ok "fill$s" "$s" "$NGINX_URL/f" "$OUT/fill$s" "$WWW/f" --piece-length $((4 * MiB))
done
stop_nginx

# start_trickle TARGET_PORT: a 1 MiB/s proxy to it; sets TRICKLE_PORT.
start_trickle() {
    local port attempt t0
    for attempt in 1 2 3 4 5; do
        port=$(rand_port)
        python3 "$(dirname "$0")/trickle.py" "$port" "$1" "$MiB" 2>"$T/trickle.$port.err" 9>&- &
        track $! trickle
        now_ms; t0=$NOW_MS
        until port_listening "$port"; do
            alive $! || break
            now_ms
            ((NOW_MS - t0 < 5000)) || fail "trickle.py did not listen on $port within 5 s"
            nap 0.02
        done
        port_listening "$port" && { TRICKLE_PORT=$port; return 0; }
        log "trickle.py could not bind $port (attempt $attempt): $(cat "$T/trickle.$port.err")"
    done
    fail "no trickle.py proxy after 5 attempts"
}
start_trickle "${PEER_PORT[S1]}"
T1=$TRICKLE_PORT
start_trickle "${PEER_PORT[S2]}"
T2=$TRICKLE_PORT

printf 'download:\n  piece_timeout: 2s\n' >"$T/child.yaml"
start_peer C --config "$T/child.yaml"
RF_DEADLINE=60 peer_get c C "$NGINX_URL/f" "$OUT/c" --piece-length $((4 * MiB)) \
    --parent "127.0.0.1:$T1" --parent "127.0.0.1:$T2"
check_get_ok c "$OUT/c" "$WWW/f"
assert_source c peers
assert_not_contains "${PEER_LOG[C]}" "parent penalised" "C's log (slow but steady parents)"
log "c: $GET_MS ms: $(tail -n 1 "$T/c.err")"
p2p_pass
