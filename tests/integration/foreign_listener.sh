#!/usr/bin/env bash
# A live listener that is not a ringflyd (socat) serves the path: the daemon
# must refuse, name socat's pid, and leave socat and its socket alone.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
require_cmd socat

SOCK="$T/ringflyd.sock"

start_socat_listener "$SOCK"
ino=$(inode_of "$SOCK")

run_fg daemon 5 "$RINGFLYD" --socket "$SOCK" --data-dir "$T/data"
((RUN_TIMEDOUT == 0)) || fail "daemon was still running after 5 s (it must refuse)"
assert_eq 1 "$RUN_RC" "exit status of the daemon"
((RUN_MS < 3000)) || fail "daemon took ${RUN_MS} ms to refuse"
assert_contains "$T/daemon.err" "a live process (pid $SOCAT_PID) already serves" "stderr of the daemon"
grep -q "^ringflyd: $SOCK: a live process (pid $SOCAT_PID) already serves this socket" "$T/daemon.err" ||
    fail "refusal line: $(cat "$T/daemon.err")"
assert_not_contains "$T/daemon.err" "removed stale socket" "stderr of the daemon"

alive "$SOCAT_PID" || fail "socat died"
assert_socket "$SOCK" "after the refused start"
assert_eq "$ino" "$(inode_of "$SOCK")" "inode of socat's socket"
# socat still serves it.
reply=$(echo "still here" | timeout 5 socat - "UNIX-CONNECT:$SOCK" 9>&-)
assert_eq "still here" "$reply" "echo through socat after the refused start"

# ringfly health against a foreign server fails (it is not a ringflyd) within its deadline.
now_ms; t0=$NOW_MS
health "$SOCK" --timeout 1s
rc=$?
now_ms
[[ $rc != 0 ]] || fail "ringfly health succeeded against socat/cat: $(cat "$HEALTH_OUT")"
((NOW_MS - t0 < 5000)) || fail "ringfly health against a foreign server took $((NOW_MS - t0)) ms"

pass
