#!/usr/bin/env bash
# ringflyd and its cache: a second daemon on the same data dir is refused; a
# restart recovers the cache after it already answers; --verify-cache finds
# and drops pieces of complete tasks whose bytes no longer match their crc,
# which a plain restart does not look at; the tasks then resume to the right
# bytes. The cache is filled and judged with rf-storefill.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
[[ -n ${RF_STOREFILL:-} && -x $RF_STOREFILL ]] || fail "RF_STOREFILL (rf-storefill binary) not set or not executable"

SOCK="$T/ringflyd.sock"
DATA="$T/data" # start_daemon's --data-dir
GEOMETRY=(--data-dir "$DATA" --tasks 2 --size 1M --piece-length 64K)
ASSERT_TIMEOUT=60

# wait_log FILE TEXT DEADLINE_S: polls until FILE contains TEXT.
wait_log() {
    local t0
    now_ms; t0=$NOW_MS
    until grep -qF -- "$2" "$1" 2>/dev/null; do
        now_ms
        ((NOW_MS - t0 < $3 * 1000)) || fail "no '$2' in $1 within $3 s; it holds: $(cat "$1")"
        alive "$DAEMON_PID" || fail "ringflyd exited; its log: $(cat "$1")"
        nap
    done
}

stop_daemon() {
    kill -TERM "$DAEMON_PID"
    wait_exit "$DAEMON_PID" 10
    assert_eq 0 "$WAIT_RC" "ringflyd exit status after SIGTERM"
}

# A full cache of two complete tasks (16 pieces each).
assert_exit 0 "$RF_STOREFILL" fill "${GEOMETRY[@]}"
assert_exit 0 "$RF_STOREFILL" check "${GEOMETRY[@]}" --verify-all

# One daemon per data dir.
start_daemon "$SOCK"
must_health "$SOCK" 5 "$DAEMON_PID"
wait_log "$DAEMON_LOG" "info store: recovered data_dir=$DATA complete=2 incomplete=0" 10
first=$DAEMON_PID
assert_exit 1 "$RINGFLYD" --socket "$T/other.sock" --data-dir "$DATA"
assert_contains "$T/last.err" "ringflyd: data dir $DATA is in use by another process (pid $first)"
[[ ! -e $T/other.sock ]] || fail "the refused daemon left its socket behind"
must_health "$SOCK" 5 "$first"
stop_daemon

# Flip the first byte of every content file: piece 0 of both tasks goes bad.
mapfile -t files < <(find "$DATA/content" -type f | sort)
assert_eq 2 "${#files[@]}" "content files"
for f in "${files[@]}"; do
    b=$(od -An -tu1 -N1 "$f" | tr -d ' ')
    printf "$(printf '\\%03o' $(((b + 1) % 256)))" | dd of="$f" bs=1 count=1 conv=notrunc status=none
done

# A plain restart re-checks incomplete tasks only: these are complete.
start_daemon "$SOCK"
must_health "$SOCK" 5 "$DAEMON_PID"
wait_log "$DAEMON_LOG" "pieces_checked=0 pieces_dropped=0" 10
stop_daemon

# --verify-cache re-checks all 32 pieces and drops the two bad ones.
start_daemon "$SOCK" --verify-cache
must_health "$SOCK" 5 "$DAEMON_PID"
wait_log "$DAEMON_LOG" "verified the cache pieces_checked=32 pieces_dropped=2" 10
assert_contains "$DAEMON_LOG" "dropped 1 piece(s) of task"
stop_daemon

# What is left is consistent (nothing for recovery to repair), both tasks
# incomplete; a fill resumes them to the right bytes.
assert_exit 0 "$RF_STOREFILL" check "${GEOMETRY[@]}" --expect i,i
assert_exit 0 "$RF_STOREFILL" fill "${GEOMETRY[@]}"
assert_exit 0 "$RF_STOREFILL" check "${GEOMETRY[@]}" --verify-all

pass
