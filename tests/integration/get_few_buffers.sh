#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# ringfly get with one piece buffer per task (download.memory 1; root: a tmpfs
# and a loop mount, else skipped). A fetch waits for a buffer to come back
# from the writes that hold it; two ways it once waited for good:
# a) range mode, the output slower than the cache: when an output write was a
#    buffer's last reader, nothing started the next fetch and the get hung
#    with its origin connections idle (seen in bench/origin on a cold first
#    run, 124 of 256 pieces in). Every piece takes that order here: the cache
#    on a tmpfs (its syncs cost nothing), the output on an ext4 image mounted
#    -o sync (every output write waits for the disk). 24 pieces of 1 MiB
#    arrive intact, each from the origin once.
# b) sequential mode (an origin without ranges): a chunk of the stream that
#    ends one piece and starts the next needs a second buffer while the task's
#    only one is the piece it is filling, so none could come back: the stream
#    paused for good with nothing recorded. Now it takes one beyond the bound;
#    the file arrives intact, the stream once from the origin.
# c) then a small file on the same daemon, intact.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
DATA="$T/data" # start_daemon's --data-dir
OUTFS="$T/outfs"
mkdir -p "$DATA" "$OUTFS"
unmount_at_exit "$DATA"
unmount_at_exit "$OUTFS"
[[ $(id -u) == 0 ]] || skip "mounting a tmpfs and a loop device needs root"
require_cmd mkfs.ext4
mount -t tmpfs -o size=128m,mode=0755 rf-slow-cache "$DATA" 2>"$T/mount.err" ||
    skip "mount -t tmpfs failed: $(cat "$T/mount.err")"
truncate -s 96M "$T/outfs.img"
mkfs.ext4 -q -F "$T/outfs.img" >"$T/mkfs.out" 2>&1 || fail "mkfs.ext4 $T/outfs.img: $(cat "$T/mkfs.out")"
mount -o loop,sync "$T/outfs.img" "$OUTFS" 2>"$T/mount.err" ||
    skip "mount -o loop,sync of an ext4 image failed: $(cat "$T/mount.err")"

cat >"$T/ringflyd.yaml" <<EOF
download:
  memory: 1
EOF

make_file "$WWW/a" $((24 << 20))
make_file "$WWW/b" $((5 << 20 | 12345))
make_file "$WWW/c" 100000
start_nginx
start_ringflyd --config "$T/ringflyd.yaml"

# Without the fix the first get never ends: bounded well below the test's
# timeout so that the failure says so.
RF_DEADLINE=40
expect_get_ok a "$NGINX_URL/a" "$OUTFS/a" "$WWW/a" --piece-length 1048576
assert_contains "$T/a.err" "from origin" "summary line of get a"
assert_eq $((24 << 20)) "$(origin_bytes "" /a)" "bytes nginx sent for /a"
log "a) 24 pieces through one buffer into a sync-mounted output: $(cat "$T/a.err")"

expect_get_ok b "$NGINX_URL/noranges/b" "$T/b" "$WWW/b" --piece-length 1048576
assert_eq "$(size_of "$WWW/b")" "$(origin_bytes "" /noranges/b)" "bytes nginx sent for /noranges/b"
grep -qF "fetching in one stream" "$DAEMON_LOG" || grep -qF "ranges=no" "$DAEMON_LOG" ||
    fail "no sign of the sequential mode (ranges=no or 'fetching in one stream') in the daemon log"
log "b) one stream, one buffer: $(cat "$T/b.err")"

expect_get_ok c "$NGINX_URL/c" "$OUTFS/c" "$WWW/c"
log "c) $(cat "$T/c.err")"
must_health "$SOCK" 5 "$DAEMON_PID"
# The tick restarts a task left with nothing in flight (and says so): the
# gets above must not have needed it.
assert_not_contains "$DAEMON_LOG" "nothing was in flight" "daemon log"
pass
