#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# ringfly get on a full disk (root; small tmpfs mounts, else skipped): exit 7
# with "no space left on device", nothing at the final path, no temp file,
# and the space given back:
#   a) cache full: the daemon's data dir is a 32 MiB tmpfs, the file 48 MiB;
#      no task claiming data is left and the data dir's free space is back;
#   a2) the data dir's disk filled by another writer: a file cached before is
#      still served from the cache (exit 0, right bytes);
#   b) output full: the cache takes the 12 MiB file, -O points into an 8 MiB
#      tmpfs; the output tmpfs is as empty as before;
#   b2) output full with a file of one piece: its one output write fails, the
#      last in flight (the daemon once freed the request and then used it): the
#      daemon stays up;
#   c) then a 1 MiB file fits in both and arrives intact.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
DATA="$T/data" # start_daemon's --data-dir
OUTFS="$T/outfs"
mkdir -p "$OUTFS"
unmount_at_exit "$DATA"
unmount_at_exit "$OUTFS"
[[ $(id -u) == 0 ]] || skip "mounting a tmpfs needs root"
mount -t tmpfs -o size=32m,mode=0755 rf-get-cache "$DATA" 2>"$T/mount.err" ||
    skip "mount -t tmpfs failed: $(cat "$T/mount.err")"
mount -t tmpfs -o size=8m,mode=0755 rf-get-out "$OUTFS" 2>"$T/mount.err" ||
    skip "mount -t tmpfs failed: $(cat "$T/mount.err")"

free_bytes() { stat -f -c '%a %S' "$1" | { read -r blocks size; echo $((blocks * size)); }; }

make_file "$WWW/huge" $((48 << 20))
make_file "$WWW/mid" $((12 << 20))
make_file "$WWW/small" $((1 << 20))
make_file "$WWW/one" $((9 << 20))
make_file "$WWW/early" $((2 << 20))
start_nginx
start_ringflyd
expect_get_ok early "$NGINX_URL/early" "$T/early" "$WWW/early" --piece-length 1048576

# a) The cache is too small.
url="$NGINX_URL/huge"
free_before=$(free_bytes "$DATA")
expect_get_fail huge "$url" "$T/huge" 7 "no space left on device" --piece-length 1048576
assert_no_data_task "$url"
free_after=$(free_bytes "$DATA")
((free_after + (1 << 20) >= free_before)) || fail "the failed get kept space in the data dir: $free_before bytes free before, $free_after after"
grep -F "download failed" "$DAEMON_LOG" | grep -qF "no space left on device" ||
    fail "no 'download failed ... no space left on device' in the daemon log"
log "a) cache full: $(cat "$T/huge.err")"

# a2) The data dir's disk full (another writer): what the cache holds is
#     still served, from the cache.
dd if=/dev/zero of="$DATA/filler" bs=1M 2>/dev/null || true
(($(free_bytes "$DATA") < (1 << 20))) || fail "the filler left $(free_bytes "$DATA") bytes free in $DATA"
expect_get_ok early-full "$NGINX_URL/early" "$T/early-full" "$WWW/early"
assert_contains "$T/early-full.err" "from cache" "summary line of a cached get on a full disk"
must_health "$SOCK" 5 "$DAEMON_PID"
rm -f "$DATA/filler"

# b) The output is too small.
url="$NGINX_URL/mid"
out_before=$(free_bytes "$OUTFS")
expect_get_fail mid "$url" "$OUTFS/mid" 7 "space left on device" --piece-length 1048576
left=$(find "$OUTFS" -mindepth 1 -print)
[[ -z $left ]] || fail "files left in the full output directory: $left"
assert_eq "$out_before" "$(free_bytes "$OUTFS")" "free bytes of the output tmpfs after the failed get"
assert_contains "$T/mid.err" "ringfly: output $OUTFS/mid: " "the CLI's note naming the full output"
log "b) output full: $(cat "$T/mid.err")"

# b2) One piece, larger than the output filesystem: one output write, and it fails.
expect_get_fail one "$NGINX_URL/one" "$OUTFS/one" 7 "space left on device" --piece-length $((16 << 20))
must_health "$SOCK" 5 "$DAEMON_PID"
left=$(find "$OUTFS" -mindepth 1 -print)
[[ -z $left ]] || fail "files left in the full output directory: $left"
assert_contains "$T/one.err" "ringfly: output $OUTFS/one: " "the CLI's note naming the full output"
assert_contains "$T/one.err" " $OUTFS has " "the CLI's note naming the output's filesystem"
log "b2) output full, one piece: $(cat "$T/one.err")"

# c) A file that fits.
expect_get_ok small "$NGINX_URL/small" "$OUTFS/small" "$WWW/small" --piece-length 1048576
assert_contains "$T/small.err" "from origin" "summary line of the get that fits"
must_health "$SOCK" 5 "$DAEMON_PID"
pass
