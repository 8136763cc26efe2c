#!/usr/bin/env bash
# Mode of the socket node: default 0660, --socket-mode 0600; a missing parent
# directory is created 0755. The lock file is 0600.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# mode_case NAME SOCK EXPECTED_OCTAL EXPECTED_SYMBOLIC [daemon args]
mode_case() {
    local name=$1 sock=$2 want=$3 want_sym=$4
    shift 4
    start_daemon "$sock" "$@"
    must_health "$sock" 5 "$DAEMON_PID"
    assert_socket "$sock" "$name"
    assert_eq "$want" "$(stat -c %a "$sock")" "$name: mode of the socket node"
    assert_eq "$want_sym" "$(stat -c %A "$sock")" "$name: mode of the socket node"
    assert_eq 600 "$(stat -c %a "$sock.lock")" "$name: mode of the lock file"
    log "$name: $(stat -c '%A %n' "$sock")"
    kill -TERM "$DAEMON_PID"
    wait_exit "$DAEMON_PID" 10
    assert_eq 0 "$WAIT_RC" "$name: exit status after SIGTERM"
    assert_gone "$sock" "$name: after SIGTERM"
}

mode_case default "$T/a.sock" 660 srw-rw----
mode_case mode_0600 "$T/b.sock" 600 srw------- --socket-mode 0600
mode_case mode_0666 "$T/c.sock" 666 srw-rw-rw- --socket-mode 0666

# The configured mode does not depend on the umask of whoever starts the daemon.
umask 077
mode_case umask_077 "$T/d.sock" 660 srw-rw----
umask 022

# Parent directory that does not exist yet: created 0755.
mode_case new_parent "$T/newdir/e.sock" 660 srw-rw----
[[ -d $T/newdir ]] || fail "parent directory was not created"
assert_eq 755 "$(stat -c %a "$T/newdir")" "mode of the created parent directory"
# A restart with the directory in place works the same.
mode_case existing_parent "$T/newdir/e.sock" 660 srw-rw----
assert_eq 755 "$(stat -c %a "$T/newdir")" "mode of the parent directory after a restart"

pass
