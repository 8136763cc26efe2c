#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# The chain loses a link (issue 7, docs/DESIGN.md "The downloading peers form a
# chain"), on loopback, any user: a scheduler, a seed and three peers; nginx
# throttled (2 MB/s a request, the seed's 4 ranges: about 8 MB/s) so that the
# swarm is still running when a peer dies.
# 1. p1, p2, p3 ask in turn (each after the scheduler's first answer to the one
#    before), all with --disable-back-to-source: the first answers are the
#    seed for p1, p1 for p2, p2 for p3 (one chain).
# 2. Once p3 has recorded a few pieces, p2 is killed with SIGKILL. p3, whose
#    only downloading parent it was, asks the scheduler again at once, p2
#    reported failed, and goes on from the peer before (p1) or the seed: its
#    get exits 0 with the source's sha256, `download done ... origin_bytes=0`,
#    no `falling back to the origin` in its log (before, the last parent gone
#    meant the origin at once, here "back-to-source is disabled": exit 5), and
#    the scheduler answered it a parent other than p2 after the kill.
# 3. nginx sent at most 1.05 x the file (the seed's fetch); p1 completes the
#    same way; no sanitizer report anywhere, p1, p3 and the seed alive.
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
SIZE=$((48 * MiB))
make_file "$WWW/big" $SIZE
SHA=$(sha "$WWW/big")

start_nginx --rate 2m
start_scheduler 127.0.0.1:0 --log-level debug
ZERO_TASK=$(printf '%064d' 0)
start_peer seed --role seed --scheduler "$SCHED_ADDR"
wait_log "$SCHED_LOG" "announce task=$ZERO_TASK peer=127\.0\.0\.1:${PEER_PORT[seed]} .*seed=1" 10 "$SCHED_PID"
for p in p1 p2 p3; do
    start_peer "$p" --scheduler "$SCHED_ADDR"
done
URL="$NGINX_URL/slow/big"
ID=$(task_id_of "$URL")

# --- 1. one chain: seed <- p1 <- p2 <- p3.
prev=seed
for p in p1 p2 p3; do
    peer_get_bg "g$p" "$p" "$URL" "$OUT/$p" --disable-back-to-source
    wait_log "$SCHED_LOG" "parents task=$ID peer=127\.0\.0\.1:${PEER_PORT[$p]} " 10 "$BG_PID"
    [[ $LOG_LINE =~ parents=127\.0\.0\.1:${PEER_PORT[$prev]}( |$) && $LOG_LINE == *" back_to_source=0"* ]] ||
        fail "the scheduler's first answer to $p is not $prev alone: $LOG_LINE"
    log "$p's first parent: $prev"
    prev=$p
done

# --- 2. p2 dies while p3 fetches from it.
deadline=$((SECONDS + 30))
while peer_stat p3 "$URL"; [[ ! $STAT_BYTES =~ ^[0-9]+$ ]] || ((STAT_BYTES < 8 * MiB)); do
    ((SECONDS < deadline)) || fail "p3 had not 8 MiB of $ID within 30 s (state '$STAT_STATE', bytes '$STAT_BYTES')"
    nap 0.05
done
[[ $STAT_STATE != complete ]] || fail "p3 completed before p2 could be killed: make the origin slower"
kill_and_reap "${PEER_PID[p2]}" KILL
untrack "${PEER_PID[p2]}"
log "p2 killed (SIGKILL) with p3 at $STAT_BYTES bytes ($STAT_STATE)"

peer_get_wait gp3 60
check_get_ok gp3 "$OUT/p3" "$WWW/big"
assert_done p3 "$ID" peer "$SIZE" 0 "$SIZE"
if log_has "${PEER_LOG[p3]}" "falling back to the origin task=$ID"; then
    fail "p3 fell back to the origin: $(grep -m 1 "falling back to the origin task=$ID" "${PEER_LOG[p3]}")"
fi
# The scheduler's last answer to p3 that named parents: not p2 alone (it was
# reported failed, and is gone).
after=$(grep -E "parents task=$ID peer=127\.0\.0\.1:${PEER_PORT[p3]} .*parents=[0-9]" "$SCHED_LOG" | tail -n 1)
[[ $after =~ parents=([^ ]+) ]] || fail "no answer of the scheduler to p3 with parents: $after"
[[ ${BASH_REMATCH[1]} != "127.0.0.1:${PEER_PORT[p2]}" ]] ||
    fail "the scheduler's last answer to p3 is still p2 alone: $after"
log "p3 completed from peers after p2 died; the scheduler's last answer: ${BASH_REMATCH[1]}"

# --- 3. p1, the origin, everyone else.
peer_get_wait gp1 60
check_get_ok gp1 "$OUT/p1" "$WWW/big"
assert_done p1 "$ID" peer "$SIZE" 0 "$SIZE"
peer_get_wait gp2 10 # killed with its daemon: any exit
nginx_wait_idle
sent=$(origin_bytes "$NGINX_ACCESS_LOG" /slow/big)
log "nginx sent $sent bytes of /slow/big for a file of $SIZE"
((sent * 100 <= SIZE * 105)) || fail "nginx sent $sent bytes of /slow/big, more than 1.05 x the file ($SIZE)"
sched_sanitizer_check
p2p_pass
