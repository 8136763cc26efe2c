#!/usr/bin/env bash
# A second daemon on the path of a live one must refuse promptly, name the pid
# of the live one, and leave its socket alone.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SOCK="$T/ringflyd.sock"

start_daemon "$SOCK"
A=$DAEMON_PID
must_health "$SOCK" 5 "$A"
ino=$(inode_of "$SOCK")

run_fg daemon_b 5 "$RINGFLYD" --socket "$SOCK" --data-dir "$T/data"
((RUN_TIMEDOUT == 0)) || fail "second daemon was still running after 5 s (it must refuse)"
assert_eq 1 "$RUN_RC" "exit status of the second daemon"
((RUN_MS < 3000)) || fail "second daemon took ${RUN_MS} ms to refuse (must be prompt)"
assert_contains "$T/daemon_b.err" "another ringflyd (pid $A)" "stderr of the second daemon"
assert_contains "$T/daemon_b.err" "holds $SOCK.lock" "stderr of the second daemon"
grep -q "^ringflyd: another ringflyd (pid $A) holds $SOCK.lock" "$T/daemon_b.err" ||
    fail "refusal line must start with 'ringflyd: ': $(cat "$T/daemon_b.err")"
assert_not_contains "$T/daemon_b.err" "removed stale socket" "stderr of the second daemon"
log "second daemon refused in ${RUN_MS} ms"

# A is untouched.
alive "$A" || fail "daemon A died"
assert_socket "$SOCK" "after the refused start"
assert_eq "$ino" "$(inode_of "$SOCK")" "inode of the socket node"
must_health "$SOCK" 2 "$A"

# Same through a config file naming the socket.
printf 'socket: %s\n' "$SOCK" >"$T/b.yaml"
run_fg daemon_c 5 "$RINGFLYD" --config "$T/b.yaml" --data-dir "$T/data"
assert_eq 1 "$RUN_RC" "exit status of the third daemon (socket from config)"
assert_contains "$T/daemon_c.err" "another ringflyd (pid $A)" "stderr of the third daemon"
assert_eq "$ino" "$(inode_of "$SOCK")" "inode of the socket node"
must_health "$SOCK" 2 "$A"

kill -TERM "$A"
wait_exit "$A" 10
assert_eq 0 "$WAIT_RC" "exit status of A after SIGTERM"

pass
