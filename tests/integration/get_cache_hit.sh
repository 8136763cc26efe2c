#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# A completed task is served from the cache without the origin: get a file,
# kill nginx, get the same URL to another path -> the same bytes, summary
# "from cache", daemon log `download cache hit`; stat URL and stat TASK show
# the complete task (id = sha256("ringfly-task-v1\n" + URL), a #fragment does
# not change it); a restarted daemon still serves it from the cache.
# import FILE prints a 64-hex task id; export ID -O F gives the same bytes;
# stat ID shows it complete; export of the URL's task gives the file too.
# A 12 MiB file cached without a digest, got again with --digest: a wrong one
# exits 6 naming both digests, the right one exits 0 from the cache, and stat
# then shows the digest (computed a slice per loop turn, kept).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
PL=65536
SIZE=$((PL * 40 + 333))

make_file "$WWW/file" $SIZE
src_sha=$(sha "$WWW/file")
make_file "$WWW/large" $((12 << 20))
large_sha=$(sha "$WWW/large")
start_nginx
URL="$NGINX_URL/file"
ID=$(task_id_of "$URL")
start_ringflyd

# check_stat WHAT: $T/rf.out is the stat of the complete task of $URL.
check_stat() {
    local pieces=$(((SIZE + PL - 1) / PL)) digest
    [[ $RF_RC == 0 ]] || fail "stat $1 exited $RF_RC: $(cat "$T/rf.err")"
    assert_eq "$ID" "$(stat_field task)" "task of stat $1"
    assert_eq "$URL" "$(stat_field url)" "url of stat $1"
    assert_eq complete "$(stat_field state)" "state of stat $1"
    assert_eq "$SIZE" "$(stat_field length)" "length of stat $1"
    assert_eq "$PL" "$(stat_field piece_length)" "piece_length of stat $1"
    assert_eq "$pieces/$pieces" "$(stat_field pieces)" "pieces of stat $1"
    assert_eq "$SIZE" "$(stat_field bytes_done)" "bytes_done of stat $1"
    digest=$(stat_field digest) || fail "stat $1 has no digest line: $(cat "$T/rf.out")"
    [[ $digest == none || $digest == "sha256:$src_sha" ]] || fail "digest of stat $1: '$digest', expected none or sha256:$src_sha"
}

# 1. From the origin.
expect_get_ok first "$URL" "$OUT/first" "$WWW/file" --piece-length $PL
assert_contains "$T/first.err" "from origin" "summary line of the first get"
assert_contains "$T/first.err" "task $ID" "summary line of the first get"
rf stat "$URL"
check_stat "$URL"
rf stat "$ID"
check_stat "$ID"
nginx_wait_idle
assert_eq "$SIZE" "$(origin_bytes)" "body bytes nginx sent for the first get"
# A larger file, fetched without a digest (its task has none).
expect_get_ok large "$NGINX_URL/large" "$OUT/large" "$WWW/large"

# 2. The origin is gone: from the cache.
stop_nginx
port_listening "$NGINX_PORT" && fail "something still listens on the killed nginx's port $NGINX_PORT"
expect_get_ok second "$URL" "$OUT/second" "$WWW/file"
assert_contains "$T/second.err" "from cache" "summary line of the second get"
assert_not_contains "$T/second.err" "from origin" "summary line of the second get"
grep -F "download cache hit" "$DAEMON_LOG" | grep -qF "$ID" || fail "no 'download cache hit' for task $ID in the daemon log"
# A fragment is dropped from the task's URL: the same task.
expect_get_ok fragment "$URL#part" "$OUT/fragment" "$WWW/file"
assert_contains "$T/fragment.err" "from cache" "summary line of the get with a #fragment"
# To stdout as well.
rf_get stdout "$URL" -
[[ $GET_RC == 0 ]] || fail "get -O - from the cache exited $GET_RC: $(cat "$T/stdout.err")"
assert_eq "$src_sha" "$(sha "$T/stdout.out")" "sha256 of get -O - from the cache"
log "cache: $(tail -n 1 "$T/second.err")"
# --digest on a cached task without one: its sha256 is computed (a slice
# per loop turn past 4 MiB), checked and kept as the task's digest.
zeros=$(printf '0%.0s' $(seq 64))
expect_get_fail large-wrong "$NGINX_URL/large" "$OUT/large-wrong" 6 \
    "digest mismatch: expected sha256:$zeros, got sha256:$large_sha" --digest "sha256:$zeros"
expect_get_ok large-right "$NGINX_URL/large" "$OUT/large-right" "$WWW/large" --digest "sha256:$large_sha"
assert_contains "$T/large-right.err" "from cache" "summary line of the get --digest of the cached file"
rf stat "$NGINX_URL/large"
assert_eq "sha256:$large_sha" "$(stat_field digest)" "digest of the cached task after a get --digest"

# 3. A restarted daemon (same data dir) still has it.
kill -TERM "$DAEMON_PID"
wait_exit "$DAEMON_PID" 10
assert_eq 0 "$WAIT_RC" "ringflyd exit status after SIGTERM"
start_ringflyd
rf stat "$URL"
check_stat "$URL after a restart"
expect_get_ok third "$URL" "$OUT/third" "$WWW/file"
assert_contains "$T/third.err" "from cache" "summary line of the get after a restart"

# 4. export of the URL's task.
assert_exit 0 "$RINGFLY" --socket "$SOCK" export "$ID" -O "$OUT/exported-url"
assert_eq "$src_sha" "$(sha "$OUT/exported-url")" "sha256 of export of the URL's task"

# 5. import / export / stat of a local file.
make_file "$T/local" $((3 * 1048576 + 4097))
local_sha=$(sha "$T/local")
assert_exit 0 "$RINGFLY" --socket "$SOCK" import "$T/local"
imported=$(tr -d '\n' <"$T/last.out")
[[ $imported =~ ^[0-9a-f]{64}$ ]] || fail "import printed '$(cat "$T/last.out")', expected a 64-hex task id"
assert_exit 0 "$RINGFLY" --socket "$SOCK" export "$imported" -O "$OUT/exported"
assert_eq "$local_sha" "$(sha "$OUT/exported")" "sha256 of export of the imported file"
assert_no_temp "$OUT/exported"
rf stat "$imported"
[[ $RF_RC == 0 ]] || fail "stat $imported exited $RF_RC: $(cat "$T/rf.err")"
assert_eq "$imported" "$(stat_field task)" "task of stat of the imported task"
assert_eq complete "$(stat_field state)" "state of the imported task"
assert_eq "$(size_of "$T/local")" "$(stat_field length)" "length of the imported task"
assert_eq "$(size_of "$T/local")" "$(stat_field bytes_done)" "bytes_done of the imported task"
# The source file is untouched.
assert_eq "$local_sha" "$(sha "$T/local")" "sha256 of the imported file after import"
# Importing the same file again gives the same id (content-addressed or not,
# it must not fail).
assert_exit 0 "$RINGFLY" --socket "$SOCK" import "$T/local"
log "import: $imported; again: $(cat "$T/last.out")"

# Export of an unknown task fails, leaving nothing.
unknown=$(task_id_of "http://127.0.0.1:1/never")
assert_exit 1 "$RINGFLY" --socket "$SOCK" export "$unknown" -O "$OUT/nothing"
assert_contains "$T/last.err" "no such task" "stderr of export of an unknown task"
assert_gone "$OUT/nothing"
assert_no_temp "$OUT/nothing"

# Export into a pipe nobody reads (a raw ExportTask with the pipe's write end):
# refused at once with Error INVALID; the daemon answers health meanwhile (it
# once copied into the pipe on its loop, blocked until the pipe was drained).
cp "$(dirname "$0")/protowire.py" "$T/protowire.py"
python3 - "$SOCK" "$imported" "$T" >"$T/export-pipe.out" 2>"$T/export-pipe.err" <<'PY' ||
import os, socket, struct, sys
sys.path.insert(0, sys.argv[3])
from protowire import decode, field_text, field_varint, first, frame
path, task = sys.argv[1], sys.argv[2]
r, w = os.pipe()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(path)
s.sendmsg([frame(10, field_varint(1, 7) + field_text(2, task))],
          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", w))])
os.close(w)
buf = b""
while len(buf) < 5 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("closed before an answer")
    buf += chunk
ftype = buf[4]
f = decode(buf[5:4 + struct.unpack(">I", buf[:4])[0]])
print("type=%d id=%d message=%s" % (ftype, first(f, 1), first(f, 3, b"").decode()))
PY
    fail "raw export into a pipe: $(cat "$T/export-pipe.err")"
assert_contains "$T/export-pipe.out" "type=2 id=7 " "answer to an export into a pipe"
assert_contains "$T/export-pipe.out" "must be a regular file" "answer to an export into a pipe"
must_health "$SOCK" 5 "$DAEMON_PID"
pass
