#!/usr/bin/env bash
# Bad configuration exits 2 naming the file, line and key; `ringfly health`
# without a daemon exits 1 within 1 s naming the path.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SOCK="$T/ringflyd.sock"

# config_case NAME YAML EXPECTED_SUBSTRING...: the daemon must exit 2 and name them.
config_case() {
    local name=$1 yaml=$2 cfg
    shift 2
    cfg="$T/$name.yaml"
    printf '%s' "$yaml" >"$cfg"
    run_fg "$name" 5 "$RINGFLYD" --config "$cfg" --socket "$SOCK" --data-dir "$T/data"
    ((RUN_TIMEDOUT == 0)) || fail "$name: daemon still running after 5 s"
    assert_eq 2 "$RUN_RC" "$name: exit status"
    grep -q '^ringflyd: ' "$T/$name.err" || fail "$name: no line starting with 'ringflyd: ' in stderr: $(cat "$T/$name.err")"
    local want
    for want in "$@"; do
        assert_contains "$T/$name.err" "${want//@CFG@/$cfg}" "$name: stderr"
    done
    [[ ! -e $SOCK ]] || fail "$name: the daemon created $SOCK despite the bad config"
    log "$name: $(grep '^ringflyd: ' "$T/$name.err" | head -n 1)"
}

config_case unknown_key $'log_level: info\nrole: peer\nsockt: /tmp/x.sock\n' \
    "@CFG@:3: unknown key 'sockt'"
config_case unknown_nested_key $'limits:\n  max_connections: 10\n  max_conections: 64\n' \
    "@CFG@:3:" "max_conections"
config_case wrong_type_int $'socket_mode: 0660\nlimits:\n  max_connections: lots\n' \
    "@CFG@:3:" "max_connections" "lots"
config_case wrong_type_duration $'shutdown_timeout: soon\n' \
    "@CFG@:1:" "shutdown_timeout"
config_case wrong_type_mode $'socket_mode: rw-rw----\n' \
    "@CFG@:1:" "socket_mode"
config_case bad_role $'\n# comment\nrole: leech\n' \
    "@CFG@:3:" "role"
config_case bad_preallocate $'storage:\n  preallocate: sometimes\n' \
    "@CFG@:2:" "preallocate" "auto, always, never" "sometimes"

# Missing config file: exit 2 naming the path.
run_fg missing_config 5 "$RINGFLYD" --config "$T/nope/ringflyd.yaml" --socket "$SOCK" --data-dir "$T/data"
assert_eq 2 "$RUN_RC" "missing config: exit status"
assert_contains "$T/missing_config.err" "$T/nope/ringflyd.yaml" "missing config: stderr"
[[ ! -e $SOCK ]] || fail "missing config: the daemon created $SOCK"

# Bad --socket-mode values: exit 2.
for mode in 999 0999 rw abc 017777 -1 ''; do
    run_fg bad_mode 5 "$RINGFLYD" --socket-mode "$mode" --socket "$SOCK" --data-dir "$T/data"
    ((RUN_TIMEDOUT == 0)) || fail "--socket-mode '$mode': daemon still running after 5 s"
    assert_eq 2 "$RUN_RC" "--socket-mode '$mode': exit status (stderr: $(cat "$T/bad_mode.err"))"
    assert_contains "$T/bad_mode.err" "socket_mode" "--socket-mode '$mode': stderr"
    [[ ! -e $SOCK ]] || fail "--socket-mode '$mode': the daemon created $SOCK"
done

# Other usage errors: exit 2.
run_fg bad_flag 5 "$RINGFLYD" --no-such-flag --socket "$SOCK" --data-dir "$T/data"
assert_eq 2 "$RUN_RC" "unknown flag: exit status"
run_fg bad_level 5 "$RINGFLYD" --log-level loud --socket "$SOCK" --data-dir "$T/data"
assert_eq 2 "$RUN_RC" "--log-level loud: exit status"
[[ ! -e $SOCK ]] || fail "usage errors: the daemon created $SOCK"

# A valid config file is accepted (the errors above are not spurious).
printf 'socket: %s\nsocket_mode: 0640\nlog_level: info\nrole: seed\nshutdown_timeout: 2s\nlimits:\n  max_connections: 64\n  idle_timeout: 0\n' "$SOCK" >"$T/good.yaml"
start_daemon "$SOCK" --config "$T/good.yaml"
must_health "$SOCK" 5 "$DAEMON_PID"
assert_eq seed "$(health_field role)" "role from the config file"
assert_eq 640 "$(stat -c %a "$SOCK")" "socket_mode from the config file"
kill -TERM "$DAEMON_PID"
wait_exit "$DAEMON_PID" 10
assert_eq 0 "$WAIT_RC" "exit status after SIGTERM (good config)"

# timed_health NAME PATH: ringfly health must exit 3 (no daemon) within 1 s, naming PATH.
timed_health() {
    local name=$1 path=$2
    run_fg "$name" 10 "$RINGFLY" --socket "$path" health
    assert_eq 3 "$RUN_RC" "$name: ringfly health exit status (stdout: $(cat "$T/$name.out"))"
    ((RUN_MS < 1000)) || fail "$name: ringfly health took ${RUN_MS} ms (must fail within 1 s)"
    grep -q "^ringfly: no ringflyd at $path: " "$T/$name.err" ||
        fail "$name: stderr must start with 'ringfly: no ringflyd at $path: ', got: $(cat "$T/$name.err")"
    [[ ! -s $T/$name.out ]] || fail "$name: stdout not empty: $(cat "$T/$name.out")"
    log "$name: exit 1 in ${RUN_MS} ms: $(head -n 1 "$T/$name.err")"
}

timed_health missing_socket "$T/absent.sock"
assert_contains "$T/missing_socket.err" "No such file or directory" "missing socket: reason"

# A stale socket node: socat listening, then killed with -9.
if command -v socat >/dev/null 2>&1; then
    make_stale_socket "$T/stale.sock"
    timed_health stale_socket "$T/stale.sock"
    assert_socket "$T/stale.sock" "ringfly health must not remove the stale node"
fi

# The same via a ringflyd killed with -9.
start_daemon "$T/killed.sock"
must_health "$T/killed.sock" 5 "$DAEMON_PID"
kill_and_reap "$DAEMON_PID" KILL
assert_socket "$T/killed.sock" "left by the killed daemon"
timed_health killed_daemon "$T/killed.sock"

# The shipped config (deploy/ringflyd.yaml) loads, every key known, and the
# daemon runs on it (its socket, data dir and ports overridden) and stops
# cleanly.
start_daemon "$T/shipped.sock" --config "$(dirname "$0")/../../deploy/ringflyd.yaml" \
    --listen-peer 127.0.0.1:0 --http 127.0.0.1:0
must_health "$T/shipped.sock" 10 "$DAEMON_PID"
kill -TERM "$DAEMON_PID"
wait_exit "$DAEMON_PID" 10
assert_eq 0 "$WAIT_RC" "exit of ringflyd on deploy/ringflyd.yaml after SIGTERM ($(tail -n 3 "$DAEMON_LOG"))"
assert_not_contains "$DAEMON_LOG" "unknown key" "log of ringflyd on deploy/ringflyd.yaml"

# RINGFLY_SOCKET replaces the default socket path of the CLI.
RINGFLY_SOCKET="$T/envpath.sock" run_fg env_socket 10 "$RINGFLY" health
assert_eq 3 "$RUN_RC" "RINGFLY_SOCKET: ringfly health exit status"
assert_contains "$T/env_socket.err" "no ringflyd at $T/envpath.sock" "RINGFLY_SOCKET: stderr"

pass
