#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# Preheat (docs/INTERFACE-issue7.md): a scheduler with no seed answers
# `ringfly preheat` with "no seed peer known" (exit 1); a daemon without a
# scheduler says so (exit 1). With a seed registered, `ringfly preheat URL` on a
# peer prints "preheating TASK on SEED", the seed fetches the file from the
# origin (its log: download done ... source=origin), then nginx is stopped and
# eight peers get the URL at once: all complete from peers, origin_bytes=0, and the
# origin sent the file exactly once. Then the seed and a go away and b is
# killed and restarted: it announces its cache, and a new peer c gets the file
# from it. `ringfly stat` says where the task is all along: nowhere (exit 1,
# naming the scheduler), absent here but complete on the seed, complete here
# and on b; without a scheduler as before; with the scheduler gone, the local
# state and "none answered"; with a scheduler that never answers, within 1 s.
# The seed announces 1024 upload slots, a peer 256 (upload.max_connections
# unset); a preheat with a wrong --digest fails the seed's fetch ("digest
# mismatch") and the seed never holds that content.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

: "${RINGFLY_SCHEDULER:?set RINGFLY_SCHEDULER to the ringfly-scheduler binary}"
require_cmd python3
OUT="$T/out"
mkdir -p "$OUT"
SIZE=$((24 << 20))

make_file "$WWW/blob" $SIZE
make_file "$WWW/other" $((2 << 20))
start_nginx
url="$NGINX_URL/blob"
id=$(task_id_of "$url")

"$RINGFLY_SCHEDULER" --listen 127.0.0.1:0 --log-level debug 2>"$T/sched.log" 9>&- &
SCHED=$!
track "$SCHED" scheduler
wait_log "$T/sched.log" 'scheduler listening address=127\.0\.0\.1:0 port=[0-9]+' 10 "$SCHED"
SADDR=127.0.0.1:$(log_field "$LOG_LINE" port)

# No scheduler configured.
start_peer lonely
peer_rf lonely preheat "$url"
assert_eq 1 "$RF_RC" "exit code of preheat without a scheduler"
assert_contains "$T/rf.err" "has no scheduler" "stderr of preheat without a scheduler"
peer_rf lonely stat "$url"
assert_eq 1 "$RF_RC" "exit code of stat of an unknown task without a scheduler"
assert_contains "$T/rf.err" "stat $url: no such task" "stderr of stat without a scheduler"

# A scheduler, no seed yet.
start_peer a --scheduler "$SADDR"
peer_rf a preheat "$url"
assert_eq 1 "$RF_RC" "exit code of preheat with no seed"
assert_contains "$T/rf.err" "ringfly: preheat $url: no seed peer known" "stderr of preheat with no seed"
peer_rf a stat "$url"
assert_eq 1 "$RF_RC" "exit code of stat of a task nobody has"
assert_contains "$T/rf.err" "stat $url: no such task here nor at scheduler $SADDR" \
    "stderr of stat of a task nobody has"
peer_rf a preheat "$url" --digest md5:x
assert_eq 2 "$RF_RC" "exit code of preheat with a bad --digest"

# A seed registers as soon as its peer listener is up.
start_peer seed --role seed --scheduler "$SADDR"
SEED=$(paddr seed)
# (registration is asynchronous: preheat may say "no seed" for a moment)
deadline_ok=0
for _ in $(seq 1 100); do
    peer_rf a preheat "$url"
    if [[ $RF_RC == 0 ]]; then
        deadline_ok=1
        break
    fi
    nap 0.1
done
((deadline_ok)) || fail "preheat still failing after 10 s: $(cat "$T/rf.err")"
assert_contains "$T/rf.out" "preheating $id on $SEED" "stdout of preheat"
wait_log "${PEER_LOG[seed]}" "download done task=$id .*source=origin" 30 "${PEER_PID[seed]}"
log "the seed holds it: $LOG_LINE"
log_has "$T/sched.log" "preheat task=$id" || fail "no 'preheat task=$id' in the scheduler's log"
# A seed serves more children at once than a peer (upload.max_connections
# unset: 1024 for a seed, 256 for a peer), and tells the scheduler so.
wait_log "$T/sched.log" "announce task=.* address=$SEED seed=1 .*slots=1024" 10 "$SCHED"
# A preheat's digest goes to the seed: a wrong one fails the seed's fetch
# (digest mismatch), and the seed never holds that content as complete.
other="$NGINX_URL/other"
peer_rf a preheat "$other" --digest "sha256:$(printf '0%.0s' $(seq 64))"
assert_eq 0 "$RF_RC" "exit code of preheat with a wrong digest ($(cat "$T/rf.err"))"
wait_log "${PEER_LOG[seed]}" "digest mismatch" 30 "${PEER_PID[seed]}"
log "wrong digest: $LOG_LINE"
peer_rf seed stat "$other"
[[ $RF_RC != 0 || $(stat_field state) != complete ]] ||
    fail "the seed holds $other as complete after a preheat with a wrong digest: $(cat "$T/rf.out")"

# stat on a: not here, complete on the seed (once its last announcement is in).
for _ in $(seq 1 100); do
    peer_rf a stat "$url"
    [[ $RF_RC == 0 ]] && grep -qxF "  $SEED seed complete" "$T/rf.out" && break
    nap 0.1
done
assert_eq 0 "$RF_RC" "exit code of stat of the preheated task on a ($(cat "$T/rf.err"))"
assert_eq absent "$(stat_field state)" "state of the preheated task on a"
assert_eq "$id" "$(stat_field task)" "task of the preheated task's stat"
assert_eq "$url" "$(stat_field url)" "url of the preheated task's stat"
assert_eq "$SIZE" "$(stat_field length)" "length of the preheated task's stat"
assert_eq "$SADDR" "$(stat_field scheduler)" "scheduler of the preheated task's stat"
assert_eq "1 peers know it, 1 hold pieces" "$(stat_field swarm)" "swarm of the preheated task's stat"
grep -qxF "  $SEED seed complete" "$T/rf.out" || fail "stat does not show the seed holding it: $(cat "$T/rf.out")"

# The origin goes away; eight peers get it from the seed (and each other) at once.
nginx_wait_idle
stop_nginx
# Eight peers (a, b, q1..q6) get it at once.
start_peer b --scheduler "$SADDR"
for i in 1 2 3 4 5 6; do
    start_peer "q$i" --scheduler "$SADDR"
done
eight=(a b q1 q2 q3 q4 q5 q6)
for p in "${eight[@]}"; do
    peer_get_bg "g$p" "$p" "$url" "$OUT/$p"
done
for p in "${eight[@]}"; do
    peer_get_wait "g$p" 60
    check_get_ok "g$p" "$OUT/$p" "$WWW/blob"
    assert_source "g$p" peers
    assert_done "$p" "$id" peer "$SIZE" 0 "$SIZE"
done
wait_log "$T/sched.log" "announce task=$id .*address=$(paddr a) seed=0 .*slots=256" 10 "$SCHED"
assert_eq "$SIZE" "$(origin_bytes "$NGINX_ACCESS_LOG" /blob)" "body bytes the origin sent for /blob"

# A restarted daemon tells the scheduler what its cache holds: with the seed
# and a gone and b killed -9 and restarted, c gets the file from b.
kill_and_reap "${PEER_PID[seed]}"
kill_and_reap "${PEER_PID[a]}"
kill_and_reap "${PEER_PID[b]}"
start_peer b --scheduler "$SADDR"
wait_log "$T/sched.log" "announce task=$id peer=$(paddr b) .*complete=1" 10 "$SCHED"
start_peer c --scheduler "$SADDR"
expect_peer_get_ok gc c "$url" "$OUT/c" "$WWW/blob"
assert_source gc peers
assert_done c "$id" peer "$SIZE" 0 "$SIZE"
grep -F "parents from scheduler task=$id" "${PEER_LOG[c]}" | grep -qF "parents=" ||
    fail "c's parents did not come from the scheduler"

# stat on c: complete here; b and c complete in the swarm (the killed seed and
# a linger until the scheduler's peer TTL).
for _ in $(seq 1 100); do
    peer_rf c stat "$id"
    [[ $RF_RC == 0 ]] && grep -qxF "  $(paddr c) peer complete" "$T/rf.out" && break
    nap 0.1
done
assert_eq 0 "$RF_RC" "exit code of stat on c"
assert_eq complete "$(stat_field state)" "state of the task on c"
assert_eq "$url" "$(stat_field url)" "url of stat TASK on c"
for p in b c; do
    grep -qxF "  $(paddr "$p") peer complete" "$T/rf.out" ||
        fail "stat on c does not show $p holding it: $(cat "$T/rf.out")"
done
peer_rf lonely stat "$url"
assert_eq 1 "$RF_RC" "exit code of stat of a task lonely does not hold"
grep -q '^scheduler:' "$T/rf.out" && fail "stat without a scheduler printed a scheduler line"

# The scheduler goes: stat still shows the local state, and why there is no swarm.
kill_and_reap "$SCHED"
peer_rf c stat "$url"
assert_eq 0 "$RF_RC" "exit code of stat on c with the scheduler gone"
assert_eq complete "$(stat_field state)" "state on c with the scheduler gone"
assert_contains "$T/rf.out" "scheduler: none answered (" "stat on c with the scheduler gone"
peer_rf c stat "$NGINX_URL/nothing"
assert_eq 1 "$RF_RC" "exit code of stat of an unknown task with the scheduler gone"
assert_contains "$T/rf.err" "no such task here, and no scheduler answered (" \
    "stderr of stat of an unknown task with the scheduler gone"

# A scheduler that takes the connection and never answers (a hung host): stat
# of a task this node holds still answers within the CLI's default 2 s, with
# the local state and why the swarm is missing.
python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
print(s.getsockname()[1], flush=True); time.sleep(120)' >"$T/mute.port" 2>"$T/mute.err" 9>&- &
MUTE=$!
track "$MUTE" "mute scheduler"
for _ in $(seq 1 100); do
    [[ -s $T/mute.port ]] && break
    nap 0.05
done
[[ -s $T/mute.port ]] || fail "the mute scheduler did not report its port: $(cat "$T/mute.err")"
start_peer mute --scheduler "127.0.0.1:$(cat "$T/mute.port")"
make_file "$T/local.bin" $((1 << 20))
peer_rf mute import "$T/local.bin"
assert_eq 0 "$RF_RC" "exit code of import on mute ($(cat "$T/rf.err"))"
local_id=$(cat "$T/rf.out")
now_ms; t0=$NOW_MS
RF_DEADLINE=10 peer_rf mute stat "$local_id"
now_ms
assert_eq 0 "$RF_RC" "exit code of stat with a mute scheduler ($(cat "$T/rf.err"))"
assert_eq complete "$(stat_field state)" "state of the imported task with a mute scheduler"
assert_contains "$T/rf.out" "scheduler: none answered (no scheduler answered in 1000 ms)" \
    "stat with a mute scheduler"
((NOW_MS - t0 < 2000)) || fail "stat with a mute scheduler took $((NOW_MS - t0)) ms, the CLI's default deadline is 2000"
kill_and_reap "$MUTE"

for p in lonely b c mute; do
    must_health "${PEER_SOCK[$p]}" 5 "${PEER_PID[$p]}"
done
pass
