#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# Two schedulers (docs/INTERFACE-issue7.md): each task's scheduler is picked by
# rendezvous hashing, so 12 tasks split between S1 and S2 (both get some, each
# task only ever asks one); a seed and two peers on loopback; every get is
# answered by parents (the seed, then the peers) and the origin sends each file
# once. Then S1 is killed with SIGKILL: gets of its tasks fail over to S2 within
# scheduler.timeout (`scheduler unavailable`, then `parents from scheduler ...
# scheduler=S2`) and still complete with the origin sending each file once.
# Finally, with both schedulers down, a get goes back to source at once and
# completes; with --disable-back-to-source it fails (exit 5) and leaves nothing.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

: "${RINGFLY_SCHEDULER:?set RINGFLY_SCHEDULER to the ringfly-scheduler binary}"
OUT="$T/out"
mkdir -p "$OUT"
TASKS=12
SIZE=$((3 << 20))

# start_scheduler NAME: ringfly-scheduler on 127.0.0.1:0; sets SCHED_PID[NAME],
# SCHED_ADDR[NAME], SCHED_LOG[NAME].
declare -A SCHED_PID=() SCHED_ADDR=() SCHED_LOG=()
start_scheduler() {
    local name=$1 log="$T/$1.log" port
    "$RINGFLY_SCHEDULER" --listen 127.0.0.1:0 --peer-ttl 30s 2>"$log" 9>&- &
    SCHED_PID[$name]=$!
    track "${SCHED_PID[$name]}" "scheduler $name"
    SCHED_LOG[$name]=$log
    wait_log "$log" 'scheduler listening address=127\.0\.0\.1:0 port=[0-9]+' 10 "${SCHED_PID[$name]}"
    port=$(log_field "$LOG_LINE" port)
    SCHED_ADDR[$name]=127.0.0.1:$port
    log "scheduler $name: pid ${SCHED_PID[$name]} at ${SCHED_ADDR[$name]}"
}

# asked TASK NAME: scheduler NAME logged a `parents task=TASK` line.
asked() { log_has "${SCHED_LOG[$2]}" "parents task=$1 "; }

# Two digits: "/f1" would also count "/f10".. in nginx's log.
for i in $(seq -w 1 $TASKS); do
    make_file "$WWW/f$i" $((SIZE + 10#$i))
done
start_nginx
start_scheduler S1
start_scheduler S2
SCHEDS="${SCHED_ADDR[S1]},${SCHED_ADDR[S2]}"
start_peer seed --role seed --scheduler "$SCHEDS" --log-level debug
start_peer a --scheduler "$SCHEDS"
start_peer b --scheduler "$SCHEDS"

# 1. Every task: a, then b; the seed fetches, the peers fetch from it.
n1=0 n2=0
for i in $(seq -w 1 $TASKS); do
    url="$NGINX_URL/f$i"
    id=$(task_id_of "$url")
    expect_peer_get_ok "a$i" a "$url" "$OUT/a$i" "$WWW/f$i"
    assert_source "a$i" peers
    expect_peer_get_ok "b$i" b "$url" "$OUT/b$i" "$WWW/f$i"
    assert_source "b$i" peers
    if asked "$id" S1; then
        n1=$((n1 + 1))
        asked "$id" S2 && fail "task $i ($id) was scheduled by both S1 and S2"
    elif asked "$id" S2; then
        n2=$((n2 + 1))
    else
        fail "no scheduler logged parents for task $i ($id)"
    fi
done
log "tasks by scheduler: S1 $n1, S2 $n2"
((n1 > 0 && n2 > 0)) || fail "rendezvous hashing put all $TASKS tasks on one scheduler (S1 $n1, S2 $n2)"
nginx_wait_idle
for i in $(seq -w 1 $TASKS); do
    assert_eq "$((SIZE + 10#$i))" "$(origin_bytes "$NGINX_ACCESS_LOG" "/f$i")" "body bytes nginx sent for /f$i"
done

# 2. S1 dies: tasks it would have had go to S2.
kill -KILL "${SCHED_PID[S1]}"
wait_exit "${SCHED_PID[S1]}" 5
# About half of these 12 tasks hash to S1 first (all 12 on S2 by chance:
# 1 in 4096): every one must now be scheduled by S2, with parents from it.
for i in $(seq 101 112); do
    make_file "$WWW/g$i" $((SIZE + i))
    url="$NGINX_URL/g$i"
    id=$(task_id_of "$url")
    expect_peer_get_ok "ga$i" a "$url" "$OUT/ga$i" "$WWW/g$i"
    assert_source "ga$i" peers
    asked "$id" S2 || fail "S2 did not schedule task g$i ($id) with S1 down"
    asked "$id" S1 && fail "the dead S1 scheduled task g$i"
    grep -F "parents from scheduler task=$id" "${PEER_LOG[a]}" |
        grep -qF "scheduler=${SCHED_ADDR[S2]}" || fail "a's parents for g$i did not come from S2"
done
log_has "${PEER_LOG[a]}" "scheduler (connection lost|unavailable) scheduler=${SCHED_ADDR[S1]}" ||
    fail "a never noticed that S1 is gone"
nginx_wait_idle
for i in $(seq 101 112); do
    assert_eq "$((SIZE + i))" "$(origin_bytes "$NGINX_ACCESS_LOG" "/g$i")" "body bytes nginx sent for /g$i"
done

# 3. No scheduler at all: back to source at once, unless disabled.
kill -KILL "${SCHED_PID[S2]}"
wait_exit "${SCHED_PID[S2]}" 5
make_file "$WWW/h" $SIZE
url="$NGINX_URL/h"
peer_get hb-none b "$url" "$OUT/hb-none" --disable-back-to-source
assert_eq 5 "$GET_RC" "exit code of a get with no scheduler and --disable-back-to-source"
assert_contains "$T/hb-none.err" "back-to-source is disabled" "stderr of that get"
assert_gone "$OUT/hb-none" "after the get that may not go back to source"
assert_no_temp "$OUT/hb-none"
expect_peer_get_ok hb b "$url" "$OUT/hb" "$WWW/h"
assert_source hb origin
((GET_MS < 5000)) || fail "the get with no scheduler took $GET_MS ms"
log_has "${PEER_LOG[b]}" "scheduler unavailable task=$(task_id_of "$url")" ||
    fail "b did not log 'scheduler unavailable' for the last task"
for p in seed a b; do
    must_health "${PEER_SOCK[$p]}" 5 "${PEER_PID[$p]}"
done
pass
