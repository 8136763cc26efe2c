#!/usr/bin/env bash
# Two daemons started on one path at the same instant: exactly one serves, the
# other refuses (non-zero), RF_RACE_ROUNDS rounds (default 50).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SOCK="$T/ringflyd.sock"
ROUNDS=${RF_RACE_ROUNDS:-50}

now_ms; t_start=$NOW_MS
for ((round = 1; round <= ROUNDS; round++)); do
    l1="$T/race.$round.a.log"
    l2="$T/race.$round.b.log"
    _LOGS+=("$l1" "$l2")
    env --default-signal=INT,QUIT "$RINGFLYD" --socket "$SOCK" --data-dir "$T/data" >"$l1" 2>&1 9>&- & p1=$!; env --default-signal=INT,QUIT "$RINGFLYD" --socket "$SOCK" --data-dir "$T/data" >"$l2" 2>&1 9>&- & p2=$!
    track "$p1" ringflyd
    track "$p2" ringflyd

    must_health "$SOCK" 5
    if [[ $HEALTH_PID == "$p1" ]]; then
        winner=$p1 loser=$p2 llog=$l2
    elif [[ $HEALTH_PID == "$p2" ]]; then
        winner=$p2 loser=$p1 llog=$l1
    else
        fail "round $round: health pid $HEALTH_PID is neither $p1 nor $p2"
    fi

    wait_exit "$loser" 5
    [[ $WAIT_RC != timeout ]] || fail "round $round: the loser (pid $loser) still runs 5 s after the start"
    [[ $WAIT_RC != 0 ]] || fail "round $round: the loser (pid $loser) exited 0; it must refuse: $(cat "$llog")"
    assert_eq 1 "$WAIT_RC" "round $round: exit status of the loser"
    if grep -qF "another ringflyd (pid " "$llog"; then
        assert_contains "$llog" "another ringflyd (pid $winner) holds $SOCK.lock" "round $round: loser's refusal"
    else
        assert_contains "$llog" "a live process (pid $winner) already serves" "round $round: loser's refusal"
    fi
    assert_not_contains "$llog" "removed stale socket" "round $round: loser's log"

    alive "$winner" || fail "round $round: the winner (pid $winner) died"
    must_health "$SOCK" 2 "$winner"

    kill -TERM "$winner"
    wait_exit "$winner" 10
    assert_eq 0 "$WAIT_RC" "round $round: exit status of the winner after SIGTERM"
    assert_gone "$SOCK" "round $round: after SIGTERM of the winner"
done
now_ms
log "$ROUNDS/$ROUNDS rounds, $((NOW_MS - t_start)) ms"

pass
