#!/usr/bin/env bash
# kill -9 of the store mid-fill, RF_CYCLES times (default 200). rf-storefill fill
# (4 tasks of about 2 MiB, 64 KiB pieces, the last task's last piece short) runs in
# the background on one data dir and is killed after a random 0-40 ms: odd cycles
# splice with 8 pieces in flight, recorded every 4 pieces or 20 ms and one fdatasync
# per task before it is complete (storage.sync task), even cycles recv with 16 in
# flight and an fdatasync before every record of 3 pieces or 2 ms (sync pieces). After
# each kill rf-storefill check must pass: before recovery every recorded piece's
# bytes and every complete task's whole file equal the expected bytes (the
# metadata never leads the data), recovery finds nothing to repair, no stray
# content file is left. A fill that finishes before its kill starts the data dir
# afresh, so the kills keep landing mid-fill. At the end one fill runs to
# completion and check --verify-all passes.
# shellcheck source=tests/integration/lib.sh
: "${RINGFLYD:=unused}" "${RINGFLY:=unused}" # lib.sh wants them; no daemon runs here
. "$(dirname "$0")/lib.sh"

[[ -n ${RF_STOREFILL:-} && -x $RF_STOREFILL ]] || fail "RF_STOREFILL (rf-storefill binary) not set or not executable"

CYCLES=${RF_CYCLES:-200}
DATA="$T/store"
# shellcheck disable=SC2054 # --size takes a comma-separated list
GEOMETRY=(--data-dir "$DATA" --tasks 4 --size 2M,2M,2M,2000001 --piece-length 64K)
SPLICE_OPTS=(--mode splice --inflight 8 --sync-batch 4 --sync-delay-ms 20 --sync task)
RECV_OPTS=(--mode recv --inflight 16 --sync-batch 3 --sync-delay-ms 2 --sync pieces)

killed=0      # the kill hit before the fill was done
progressed=0  # ... after the fill had recorded more pieces or completed more tasks
completed=0   # the fill was done before the kill
fresh=1       # data dirs started from nothing
last_state=   # "complete=A ... pieces_recorded=B" of the last check
now_ms; t_start=$NOW_MS
for ((cycle = 1; cycle <= CYCLES; cycle++)); do
    mode=splice
    opts=("${SPLICE_OPTS[@]}")
    if ((cycle % 2 == 0)); then
        mode=recv
        opts=("${RECV_OPTS[@]}")
    fi
    _LOGS=("$T/fill.err" "$T/fill.out")
    "$RF_STOREFILL" fill "${GEOMETRY[@]}" "${opts[@]}" >"$T/fill.out" 2>"$T/fill.err" 9>&- &
    pid=$!
    track "$pid" rf-storefill
    # A random moment, not a readiness wait: where the kill lands is the test.
    delay_ms=$((RANDOM % 41))
    nap "$(printf '0.%03d' "$delay_ms")"
    kill -KILL "$pid" 2>/dev/null
    wait_exit "$pid" 30
    case $WAIT_RC in
    137) killed=$((killed + 1)) ;;
    0) completed=$((completed + 1)) ;;
    timeout) fail "cycle $cycle: rf-storefill fill (pid $pid) not reaped 30 s after kill -9" ;;
    *) fail "cycle $cycle ($mode, killed after $delay_ms ms): rf-storefill fill exited $WAIT_RC" ;;
    esac

    run_fg check 60 "$RF_STOREFILL" check "${GEOMETRY[@]}"
    if [[ $RUN_RC != 0 ]]; then
        _LOGS=("$T/fill.err" "$T/check.out" "$T/check.err")
        fail "cycle $cycle ($mode, fill exit $WAIT_RC after $delay_ms ms): rf-storefill check exited $RUN_RC: $(grep -h 'FAIL' "$T/check.err")"
    fi
    state=$(grep -o 'complete=.*pieces_recorded=[0-9]*' "$T/check.out")
    [[ $WAIT_RC == 137 && $state != "$last_state" ]] && progressed=$((progressed + 1))
    last_state=$state
    if [[ $WAIT_RC == 0 ]]; then
        rm -rf "$DATA"
        fresh=$((fresh + 1))
        last_state=
    fi
done
now_ms
loop_ms=$((NOW_MS - t_start))

# Then the same store filled to the end, byte for byte.
_LOGS=()
run_fg fill-final 120 "$RF_STOREFILL" fill "${GEOMETRY[@]}" "${SPLICE_OPTS[@]}"
[[ $RUN_RC == 0 ]] || fail "final fill exited $RUN_RC: $(tail -n 5 "$T/fill-final.err")"
run_fg check-final 120 "$RF_STOREFILL" check "${GEOMETRY[@]}" --verify-all
[[ $RUN_RC == 0 ]] || fail "final check --verify-all exited $RUN_RC: $(grep -h FAIL "$T/check-final.err")"
assert_contains "$T/check-final.out" "check: ok tasks=4 complete=4 incomplete=0 absent=0 pieces_recorded=127 pieces_checked=127" "final check output"
now_ms

log "cycles: $CYCLES, killed mid-fill: $killed ($progressed after some progress), done before the kill: $completed, data dirs started afresh: $fresh; kill/check loop ${loop_ms} ms, total $((NOW_MS - t_start)) ms"
# Kills that never land mid-fill, or never after a piece moved, would test little.
((killed * 4 >= CYCLES)) || fail "only $killed of $CYCLES kills landed before the fill was done"
((progressed * 20 >= CYCLES)) || fail "only $progressed of $CYCLES kills landed after the fill had moved on"
pass
