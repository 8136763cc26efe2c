#!/usr/bin/env bash
# A full disk, on a 64 MiB tmpfs (root; skipped if it cannot be mounted). Tasks
# (rf-storefill, 1 MiB pieces): 0 = 24 MiB, 1 = 100 MiB, 2 = 20 MiB, 3 = 40 MiB.
#   a) task 0 fills completely.
#   b) task 1 cannot fit: store_task_open refuses it before any byte moves
#      (exit 3, "no space left on device", the data dir, "bytes free"); no file,
#      no metadata and no space left behind; task 0 intact.
#   c) task 2 fills completely beside it.
#   d) task 3 cannot fit either (about 20 MiB free).
#   e) task 2 is used again, so task 0 is the least recently used.
#   f) one GC pass with watermarks 60 % / 40 % of the filesystem evicts task 0
#      only (evicting task 2 instead would not reach the low mark).
#   g) now task 3 fits and fills completely.
#   h) GC empties the disk; task 3 again, and once it is open another writer
#      takes the space it was checked against (--ballast; on tmpfs the store
#      checks the free space instead of preallocating): the write that meets
#      the full disk fails the task with "no space left on device", the data
#      dir and "while writing"; the pieces recorded before it are intact, no
#      stray file (rf-storefill check, the task expected failed).
# rf-storefill check runs after every step: recorded pieces and complete tasks
# byte for byte, nothing for recovery to repair, no stray file, each task in
# the expected state.
# shellcheck source=tests/integration/lib.sh
: "${RINGFLYD:=unused}" "${RINGFLY:=unused}" # lib.sh wants them; no daemon runs here
. "$(dirname "$0")/lib.sh"

[[ -n ${RF_STOREFILL:-} && -x $RF_STOREFILL ]] || fail "RF_STOREFILL (rf-storefill binary) not set or not executable"

MNT="$T/disk"
DATA="$MNT/data"
mkdir -p "$MNT"
unmount_at_exit "$MNT"
[[ $(id -u) == 0 ]] || skip "mounting a tmpfs needs root"
mount -t tmpfs -o size=64m,mode=0755 rf-full-disk "$MNT" 2>"$T/mount.err" ||
    skip "mount -t tmpfs failed: $(cat "$T/mount.err")"

# shellcheck disable=SC2054 # --size takes a comma-separated list
GEOMETRY=(--data-dir "$DATA" --tasks 4 --size 24M,100M,20M,40M --piece-length 1M)
ASSERT_TIMEOUT=60

free_bytes() { stat -f -c '%a %S' "$MNT" | { read -r blocks size; echo $((blocks * size)); }; }
content_files() { find "$DATA/content" -type f | wc -l; }

# fill I EXPECTED_EXIT
fill() {
    assert_exit "$2" "$RF_STOREFILL" fill "${GEOMETRY[@]}" --only "$1"
}

# check EXPECT (c complete, i incomplete, a absent, per task)
check() {
    assert_exit 0 "$RF_STOREFILL" check "${GEOMETRY[@]}" --expect "$1"
    assert_contains "$T/last.out" "orphans_removed=0" "check output (a stray file was left)"
}

# a) 24 MiB
fill 0 0
assert_contains "$T/last.out" "fill: ok tasks=1 finished=1" "fill of task 0"
check c,a,a,a
log "a) task 0 (24 MiB) complete; $(free_bytes) bytes free"

# b) 100 MiB: refused up front
free_before=$(free_bytes)
fill 1 3
assert_contains "$T/last.err" "no space left on device" "stderr of the 100 MiB fill"
assert_contains "$T/last.err" "data dir $DATA:" "stderr of the 100 MiB fill"
assert_contains "$T/last.err" "bytes free" "stderr of the 100 MiB fill"
assert_contains "$T/last.err" "104857600 bytes needed" "stderr of the 100 MiB fill"
enospc_line=$(grep -F "no space left on device" "$T/last.err")
free_after=$(free_bytes)
# Nothing of the refused task stays: the preallocation is given back.
((free_after + (1 << 20) >= free_before)) || fail "the refused task kept space: $free_before bytes free before, $free_after after"
assert_eq 1 "$(content_files)" "content files after the refused task"
check c,a,a,a
log "b) task 1 (100 MiB) refused: $enospc_line"

# c) 20 MiB beside it
fill 2 0
check c,a,c,a
log "c) task 2 (20 MiB) complete; $(free_bytes) bytes free"

# d) 40 MiB does not fit now
fill 3 3
assert_contains "$T/last.err" "no space left on device" "stderr of the first 40 MiB fill"
assert_contains "$T/last.err" "bytes free" "stderr of the first 40 MiB fill"
assert_eq 2 "$(content_files)" "content files after the refused 40 MiB task"
check c,a,c,a
log "d) task 3 (40 MiB) refused with $(free_bytes) bytes free"

# e) task 2 used after task 0 (accessed times are in ms: let one pass)
nap 0.01
fill 2 0
assert_contains "$T/last.out" "already_complete=1" "second fill of task 2"

# f) one GC pass: above 60 % used, evict least recently used down to 40 %
free_before=$(free_bytes)
assert_exit 0 "$RF_STOREFILL" gc --data-dir "$DATA" --high 60 --low 40 --ttl-ms -1
assert_contains "$T/last.out" "gc: evicted=1" "gc output"
assert_contains "$T/last.err" "reason=watermark" "gc log"
free_after=$(free_bytes)
((free_after - free_before >= 24 << 20)) || fail "gc freed $((free_after - free_before)) bytes, expected at least 24 MiB"
assert_eq 1 "$(content_files)" "content files after gc"
check a,a,c,a
log "f) gc evicted task 0; $free_after bytes free"

# g) the 40 MiB task now succeeds
fill 3 0
assert_contains "$T/last.out" "fill: ok tasks=1 finished=1" "fill of task 3 after gc"
check a,a,c,c
log "g) task 3 (40 MiB) complete; $(free_bytes) bytes free"

# h) full while writing
assert_exit 0 "$RF_STOREFILL" gc --data-dir "$DATA" --high 1 --low 1 --ttl-ms -1
assert_contains "$T/last.out" "gc: evicted=2" "gc output (everything)"
check a,a,a,a
assert_exit 1 "$RF_STOREFILL" fill "${GEOMETRY[@]}" --only 3 --ballast "$MNT/ballast" --ballast-leave 10M
assert_contains "$T/last.err" "no space left on device" "stderr of the fill that met a full disk"
assert_contains "$T/last.err" "data dir $DATA:" "stderr of the fill that met a full disk"
assert_contains "$T/last.err" "while writing task" "stderr of the fill that met a full disk"
enospc_line=$(grep -F "no space left on device" "$T/last.err" | head -n 1)
check a,a,a,f
assert_contains "$T/last.out" "task 3 " "check output"
rm -f "$MNT/ballast"
log "h) full while writing: $enospc_line; $(grep -F 'after-recovery: task 3' "$T/last.out")"

pass
