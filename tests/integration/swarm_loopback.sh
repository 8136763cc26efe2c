#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# A small swarm on loopback, any user (docs/INTERFACE-issue7.md): a
# ringfly-scheduler, one seed (--role seed) and four peers, each daemon with
# --scheduler and its own socket, data dir and peer port on 127.0.0.1; nginx
# (lib-http.sh) is the origin.
# 1. The seed registers with the scheduler as soon as its peer listener is
#    bound, cache empty: `announce task=000...0 peer=SEED ... seed=1` in the
#    scheduler's debug log, waited for before any get.
# 2. The four peers get one 64 MiB file at once (no --parent): all exit 0 with
#    the source's sha256; nginx sent at most 1.05 x the size of that file (one
#    origin transfer for the whole swarm); the scheduler logged `parents
#    task=ID` for each of the four, its first answer one parent with
#    back_to_source=0: the seed for exactly one (the head of the chain), the
#    peer before it for the others, the four in one chain from the seed (no
#    cycle); each peer's `download done` (source,
#    origin_bytes, peer_bytes) is logged.
# 3. The scheduler is stopped (SIGTERM: exit 0). `ringfly get
#    --disable-back-to-source` of a new file without --parent: exit 5, "no
#    parent can serve it and back-to-source is disabled", nothing at the output
#    path, no temp file, no task claiming data, nginx saw no request for it.
#    The same for a plain get from a daemon whose config says
#    download.back_to_source: false.
# 4. A new peer whose scheduler is down (refused): its get starts from the
#    origin within 2 s (`scheduler unavailable task=ID`, then `fetching from
#    the origin task=ID`, timed from the get) and completes from the origin.
# 5. A peer whose scheduler accepts and never answers (a stall server): the
#    origin takes over after scheduler.timeout (2 s) and the get completes;
#    the time to `fetching from the origin` is logged and bounded by 3 s.
# At the end every daemon and the scheduler logs hold no sanitizer report and
# every daemon is alive.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"
# shellcheck source=tests/integration/lib-netns.sh
. "$(dirname "$0")/lib-netns.sh"

require_scheduler
OUT="$T/out"
mkdir -p "$OUT"
MiB=1048576
SIZE=$((64 * MiB))
NPEERS=4
make_file "$WWW/big" $SIZE
make_file "$WWW/nobts" $((4 * MiB))
make_file "$WWW/late" $((16 * MiB + 3))
make_file "$WWW/stalled" $((8 * MiB))
SHA=$(sha "$WWW/big")

start_nginx
start_scheduler 127.0.0.1:0 --log-level debug
# shellcheck disable=SC2153 # set by start_scheduler
SCHED1_LOG=$SCHED_LOG

# since_ms NAME: milliseconds since background get NAME started (peer_get_bg).
since_ms() {
    now_ms
    SINCE_MS=$((NOW_MS - _BG_T0[$1]))
}

# --- 1. the seed registers with the scheduler, its cache empty.
ZERO_TASK=$(printf '%064d' 0)
start_peer seed --role seed --scheduler "$SCHED_ADDR"
wait_log "$SCHED1_LOG" "announce task=$ZERO_TASK peer=127\.0\.0\.1:${PEER_PORT[seed]} .*seed=1" 10 "$SCHED_PID"
log "the seed registered: $LOG_LINE"

# --- 2. four peers get one file at once.
for ((i = 1; i <= NPEERS; i++)); do
    start_peer "p$i" --scheduler "$SCHED_ADDR"
done
URL="$NGINX_URL/big"
ID=$(task_id_of "$URL")
for ((i = 1; i <= NPEERS; i++)); do
    peer_get_bg "g$i" "p$i" "$URL" "$OUT/g$i"
done
for ((i = 1; i <= NPEERS; i++)); do
    peer_get_wait "g$i" 60
    check_get_ok "g$i" "$OUT/g$i" "$WWW/big"
    log "get g$i at p$i: exit 0, sha256 $SHA, summary: $(grep -oE '[0-9]+ bytes in .* from [a-z ]*, task' "$T/g$i.err")"
done
from_peers=0
declare -A FIRST_PARENT=()
for ((i = 1; i <= NPEERS; i++)); do
    assert_done "p$i" "$ID" - $SIZE - -
    src=$(log_field "$DONE_LINE" source)
    log "p$i: source=$src origin_bytes=$(log_field "$DONE_LINE" origin_bytes) peer_bytes=$(log_field "$DONE_LINE" peer_bytes) ms=$(log_field "$DONE_LINE" ms)"
    [[ $src == peer ]] && from_peers=$((from_peers + 1))
    # Its first answer, not back to source (a seed is known): either the seed
    # alone (the head of the chain: it came first) or one other peer, the one
    # that came just before it (the chain, scheduler/state.h).
    line=$(grep -m 1 -E "parents task=$ID peer=127\.0\.0\.1:${PEER_PORT[p$i]} " "$SCHED1_LOG") ||
        fail "no 'parents task=$ID peer=127.0.0.1:${PEER_PORT[p$i]}' in the scheduler's log: $(grep -E "parents task=$ID" "$SCHED1_LOG" | head -n 8)"
    [[ $line == *" back_to_source=0"* && $line =~ parents=127\.0\.0\.1:([0-9]+)( |$) ]] ||
        fail "the scheduler's first answer to p$i is not one parent without back to source: $line"
    FIRST_PARENT[p$i]=${BASH_REMATCH[1]}
done
# One head, fed by the seed; every other peer's first parent another peer;
# following them from any peer reaches the head without a cycle.
heads=0
for ((i = 1; i <= NPEERS; i++)); do
    [[ ${FIRST_PARENT[p$i]} == "${PEER_PORT[seed]}" ]] && heads=$((heads + 1))
    port=${PEER_PORT[p$i]} hops=0
    while [[ $port != "${PEER_PORT[seed]}" ]]; do
        next=
        for ((k = 1; k <= NPEERS; k++)); do
            [[ ${PEER_PORT[p$k]} == "$port" ]] && next=${FIRST_PARENT[p$k]}
        done
        [[ -n $next ]] || fail "p$i's chain reaches port $port, neither a peer nor the seed: $(grep -E "parents task=$ID" "$SCHED1_LOG" | head -n 8)"
        port=$next hops=$((hops + 1))
        ((hops <= NPEERS)) || fail "the first answers make a cycle through p$i: $(grep -E "parents task=$ID" "$SCHED1_LOG" | head -n 8)"
    done
done
((heads == 1)) || fail "$heads peers were first offered the seed, expected exactly 1 (the head of the chain): $(grep -E "parents task=$ID" "$SCHED1_LOG" | head -n 8)"
log "first answers: one chain from the seed through all $NPEERS peers"
if log_has "${PEER_LOG[seed]}" "download done task=$ID"; then
    done_line seed "$ID"
    log "seed: $(grep -oE 'source=[a-z]+ bytes=[0-9]+ origin_bytes=[0-9]+ peer_bytes=[0-9]+' <<<"$DONE_LINE")"
else
    log "the seed did not fetch $URL (no download done for it in its log)"
fi
nginx_wait_idle
sent=$(origin_bytes "$NGINX_ACCESS_LOG" /big)
log "nginx sent $sent bytes of /big ($(origin_requests "$NGINX_ACCESS_LOG" /big) requests) for $NPEERS gets of $SIZE; $from_peers of $NPEERS peers had bytes from peers"
((sent * 100 <= SIZE * 105)) ||
    fail "nginx sent $sent bytes of /big for $NPEERS gets of $SIZE, expected at most 1.05 x (one origin transfer for the swarm); parents lines: $(grep -E "parents task=$ID" "$SCHED1_LOG" | head -n 8)"
((sent >= SIZE)) || fail "nginx sent only $sent bytes of /big, less than the file ($SIZE): the access log is incomplete?"

# --- 3. the scheduler stopped, back-to-source disabled: exit 5, nothing left.
stop_scheduler TERM
log "scheduler stopped (SIGTERM, exit 0)"
URLN="$NGINX_URL/nobts"
peer_get nobts p1 "$URLN" "$OUT/nobts" --disable-back-to-source
[[ $GET_RC == 5 ]] || fail "get --disable-back-to-source with the scheduler down: exit $GET_RC, expected 5; stderr: $(head -c 2000 "$T/nobts.err")"
assert_contains "$T/nobts.err" "ringfly: get $URLN: no parent can serve it and back-to-source is disabled" "stderr of the get with --disable-back-to-source"
assert_gone "$OUT/nobts" "after the get with --disable-back-to-source"
assert_no_temp "$OUT/nobts"
SOCK=${PEER_SOCK[p1]} assert_no_data_task "$URLN"
nginx_wait_idle
assert_eq 0 "$(origin_requests "$NGINX_ACCESS_LOG" /nobts)" "requests nginx saw for /nobts (back-to-source disabled)"
log "--disable-back-to-source: exit 5 in $GET_MS ms: $(head -n 1 "$T/nobts.err")"
# The same from the daemon's config (download.back_to_source: false), no flag.
printf 'download:\n  back_to_source: false\n' >"$T/nobts.yaml"
start_peer nb --scheduler "$SCHED_ADDR" --config "$T/nobts.yaml"
URLC="$NGINX_URL/nobts-config"
peer_get nobtsc nb "$URLC" "$OUT/nobtsc"
[[ $GET_RC == 5 ]] || fail "get from a daemon with download.back_to_source false, scheduler down: exit $GET_RC, expected 5; stderr: $(head -c 2000 "$T/nobtsc.err")"
assert_contains "$T/nobtsc.err" "back-to-source is disabled" "stderr of the get from a daemon with back_to_source false"
assert_gone "$OUT/nobtsc" "after the get from a daemon with back_to_source false"
nginx_wait_idle
assert_eq 0 "$(origin_requests "$NGINX_ACCESS_LOG" /nobts-config)" "requests nginx saw for /nobts-config (download.back_to_source false)"

# --- 4. a new peer, its scheduler down (refused): from the origin within 2 s.
start_peer p5 --scheduler "$SCHED_ADDR"
URLL="$NGINX_URL/late"
IDL=$(task_id_of "$URLL")
peer_get_bg late p5 "$URLL" "$OUT/late"
wait_log "${PEER_LOG[p5]}" "fetching from the origin task=$IDL" 10 "$BG_PID"
since_ms late
log_has "${PEER_LOG[p5]}" "scheduler unavailable task=$IDL" ||
    fail "p5 went to the origin without logging 'scheduler unavailable task=$IDL': $(grep -E "$IDL|sched" "${PEER_LOG[p5]}" | head -n 8)"
log "scheduler down (refused): the origin fetch started $SINCE_MS ms after the get: $(grep -m 1 "scheduler unavailable task=$IDL" "${PEER_LOG[p5]}")"
((SINCE_MS <= 2000)) || fail "with its scheduler down the get started from the origin after $SINCE_MS ms, expected within 2 s"
peer_get_wait late 30
check_get_ok late "$OUT/late" "$WWW/late"
assert_source late origin
assert_done p5 "$IDL" origin $((16 * MiB + 3)) $((16 * MiB + 3)) 0

# --- 5. a scheduler that accepts and never answers: the timeout, then the origin.
start_stall_server
start_peer p6 --scheduler "127.0.0.1:$STALL_PORT"
URLS="$NGINX_URL/stalled"
IDS=$(task_id_of "$URLS")
peer_get_bg stalled p6 "$URLS" "$OUT/stalled"
wait_log "${PEER_LOG[p6]}" "fetching from the origin task=$IDS" 10 "$BG_PID"
since_ms stalled
log "silent scheduler: the origin fetch started $SINCE_MS ms after the get (scheduler.timeout 2 s): $(grep -m 1 "scheduler unavailable task=$IDS" "${PEER_LOG[p6]}")"
log_has "${PEER_LOG[p6]}" "scheduler unavailable task=$IDS" ||
    fail "p6 went to the origin without logging 'scheduler unavailable task=$IDS'"
((SINCE_MS <= 3000)) || fail "with a silent scheduler the get started from the origin after $SINCE_MS ms, expected about 2 s (scheduler.timeout)"
peer_get_wait stalled 30
check_get_ok stalled "$OUT/stalled" "$WWW/stalled"
assert_source stalled origin

sched_sanitizer_check
p2p_pass
