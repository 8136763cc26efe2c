#!/usr/bin/env bash
# Socket activation: the daemon serves the socket systemd passes (fd 3), says
# so in health, and never touches the path (no lock, no unlink on SIGTERM).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
require_cmd systemd-socket-activate

SOCK="$T/activated.sock"
LOG="$T/activated.log"
_LOGS+=("$LOG")

# systemd-socket-activate binds SOCK, waits for the first connection, then
# execs the daemon in its own pid with LISTEN_FDS=1 LISTEN_PID=<pid>.
env --default-signal=INT,QUIT systemd-socket-activate -l "$SOCK" \
    "$RINGFLYD" --socket "$SOCK" --data-dir "$T/data" >"$LOG" 2>&1 9>&- &
P=$!
track "$P" systemd-socket-activate
now_ms; t0=$NOW_MS
until [[ -S $SOCK ]]; do
    alive "$P" || fail "systemd-socket-activate died: $(cat "$LOG")"
    now_ms
    ((NOW_MS - t0 > 5000)) && fail "systemd-socket-activate did not create $SOCK within 5 s"
    nap
done
ino=$(inode_of "$SOCK")
mode=$(stat -c %a "$SOCK")

must_health "$SOCK" 5 "$P"
assert_eq yes "$(health_field socket_activated)" "socket_activated: line of health"
assert_eq "$SOCK" "$(health_field socket)" "socket: line of health"
cmdline=$(tr "\\0" " " <"/proc/$P/cmdline")
assert_contains "$cmdline" "$RINGFLYD --socket $SOCK" "command line of pid $P (systemd-socket-activate must have exec'd the daemon)"
[[ ! -e $SOCK.lock ]] || fail "the activated daemon created $SOCK.lock (it must not touch the path)"
assert_eq "$ino" "$(inode_of "$SOCK")" "inode of the activated socket"
assert_eq "$mode" "$(stat -c %a "$SOCK")" "mode of the activated socket (the daemon must not chmod it)"
assert_not_contains "$LOG" "removed stale socket" "log of the activated daemon"

# Several calls are served (the inherited fd keeps accepting).
for i in 1 2 3; do
    must_health "$SOCK" 2 "$P"
done

kill -TERM "$P"
wait_exit "$P" 10
[[ $WAIT_RC != timeout ]] || fail "activated daemon still running 10 s after SIGTERM"
assert_eq 0 "$WAIT_RC" "exit status after SIGTERM"
assert_socket "$SOCK" "the activated socket after SIGTERM (owned by systemd, must stay)"
assert_eq "$ino" "$(inode_of "$SOCK")" "inode of the activated socket after SIGTERM"
[[ ! -e $SOCK.lock ]] || fail "$SOCK.lock exists after the activated daemon exited"

# LISTEN_PID naming another process: not ours, the daemon must ignore LISTEN_FDS
# and bind the path itself (here a fresh one).
SOCK2="$T/plain.sock"
LISTEN_PID=1 LISTEN_FDS=1 start_daemon "$SOCK2"
must_health "$SOCK2" 5 "$DAEMON_PID"
assert_eq no "$(health_field socket_activated)" "socket_activated: with LISTEN_PID of another process"
kill -TERM "$DAEMON_PID"
wait_exit "$DAEMON_PID" 10
assert_eq 0 "$WAIT_RC" "exit status after SIGTERM (LISTEN_PID of another process)"
assert_gone "$SOCK2" "after SIGTERM (LISTEN_PID of another process)"

pass
