# shellcheck shell=bash
# Globals set here (RUN_RC, HEALTH_MS, ...) are read by the test scripts.
# shellcheck disable=SC2034,SC2119,SC2120
# Common helpers for the integration tests. Source it first thing:
#
#     . "$(dirname "$0")/lib.sh"
#
# Environment: RINGFLYD, RINGFLY, RF_HOLDCONNS point at the binaries (ctest sets
# them). KEEP_TMP=1 keeps the temp dir of the test for inspection.
#
# Every helper that waits has a deadline; nothing sleeps a fixed time waiting for
# readiness. Every process a test starts through these helpers is tracked and
# SIGKILLed by the EXIT trap, and the temp dir is removed, whatever happens.

set -u
set -o pipefail
export LC_ALL=C
unset RINGFLY_SOCKET
umask 022

: "${RINGFLYD:?set RINGFLYD to the ringflyd binary}"
: "${RINGFLY:?set RINGFLY to the ringfly binary}"
: "${RF_HOLDCONNS:=}"

TEST_NAME=$(basename "$0" .sh)
T=$(mktemp -d /tmp/rfit.XXXXXX) || { echo "FAIL $TEST_NAME: mktemp failed" >&2; exit 1; }
mkdir -p "$T/data"

declare -A _PIDS=()     # pid -> what, for every process still to be cleaned up
_LOGS=()                # daemon logs, newest last (fail prints the last few)
_DCOUNT=0
_NAP_FIFO="$T/.idle"
mkfifo "$_NAP_FIFO"
# fd 9: a FIFO nobody ever writes to, held open read-write by this shell.
# read -t on it is a sleep without a fork; holders read it as a stdin that
# never reaches EOF. Children are started with 9>&- so they do not inherit it.
exec 9<>"$_NAP_FIFO"

# _kill_tracked: SIGKILLs every tracked process and reaps it.
_kill_tracked() {
    local pid
    for pid in "${!_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
    for pid in "${!_PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
}

# unmount_at_exit DIR: DIR, a mount the test makes, is unmounted however the
# test ends (after its processes are killed, before $T is removed; lazily if
# still busy), KEEP_TMP or not.
_MOUNTS=()
unmount_at_exit() { _MOUNTS+=("$1"); }
_unmount_tracked() {
    local m
    for m in "${_MOUNTS[@]}"; do
        if mountpoint -q "$m" 2>/dev/null; then
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        fi
    done
}

_cleanup() {
    local rc=$?
    trap - EXIT
    _kill_tracked
    _unmount_tracked
    exec 9>&-
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        echo "kept $T" >&2
    else
        rm -rf "$T"
    fi
    exit "$rc"
}
trap _cleanup EXIT
trap 'echo "FAIL $TEST_NAME: interrupted" >&2; exit 130' INT TERM HUP

track()   { _PIDS[$1]=${2:-process}; }
untrack() { unset "_PIDS[$1]"; }

# NOW_MS: milliseconds since the epoch (no fork).
now_ms() { local t=${EPOCHREALTIME//[.,]/}; NOW_MS=$((t / 1000)); }

# nap [seconds]: sleeps without forking (default 10 ms).
nap() { read -r -t "${1:-0.01}" -u 9 _ 2>/dev/null; return 0; }

# _ms SECONDS: "5", "0.5", "1.25" -> milliseconds in _MS.
_ms() {
    local s=$1 int frac
    int=${s%%.*}; frac=
    [[ $s == *.* ]] && frac=${s#*.}
    frac=${frac}000; frac=${frac:0:3}
    _MS=$((10#${int:-0} * 1000 + 10#$frac))
}

log() { echo "[$TEST_NAME] $*"; }

# fail MSG: prints MSG and the tail of the last daemon logs, exits 1.
fail() {
    local n=${#_LOGS[@]} i start f
    echo "FAIL $TEST_NAME: $*" >&2
    start=$((n > 3 ? n - 3 : 0))
    for ((i = start; i < n; i++)); do
        f=${_LOGS[$i]}
        [[ -f $f ]] || continue
        echo "--- tail of $f" >&2
        tail -n 25 "$f" >&2
    done
    exit 1
}

pass() { echo "PASS $TEST_NAME"; exit 0; }

skip() { echo "SKIP $TEST_NAME: $*"; exit 77; }

require_cmd() { command -v "$1" >/dev/null 2>&1 || skip "$1 not installed"; }

require_holdconns() {
    [[ -n $RF_HOLDCONNS && -x $RF_HOLDCONNS ]] || fail "RF_HOLDCONNS (rf-holdconns binary) not set or not executable"
}

# ---------------------------------------------------------------- assertions

# assert_eq EXPECTED ACTUAL [what]
assert_eq() {
    [[ $1 == "$2" ]] || fail "${3:-value}: expected '$1', got '$2'"
}

# assert_contains FILE|STRING SUBSTRING [what]: fixed-string match.
assert_contains() {
    if [[ -f $1 ]]; then
        grep -qF -- "$2" "$1" || fail "${3:-$1} does not contain '$2'; it holds: $(head -c 2000 "$1")"
    else
        [[ $1 == *"$2"* ]] || fail "${3:-string} does not contain '$2': '$1'"
    fi
}

# assert_not_contains FILE|STRING SUBSTRING [what]
assert_not_contains() {
    if [[ -f $1 ]]; then
        ! grep -qF -- "$2" "$1" || fail "${3:-$1} contains '$2' and must not; it holds: $(head -c 2000 "$1")"
    else
        [[ $1 != *"$2"* ]] || fail "${3:-string} contains '$2' and must not: '$1'"
    fi
}

# assert_exit CODE cmd...: runs cmd (bounded by ASSERT_TIMEOUT, default 30 s),
# stdout -> $T/last.out, stderr -> $T/last.err; fails unless it exits CODE.
assert_exit() {
    local want=$1 rc
    shift
    timeout -k 2 "${ASSERT_TIMEOUT:-30}" "$@" >"$T/last.out" 2>"$T/last.err" 9>&-
    rc=$?
    LAST_RC=$rc
    [[ $rc == "$want" ]] || fail "'$*' exited $rc, expected $want; stdout: $(head -c 1000 "$T/last.out"); stderr: $(head -c 2000 "$T/last.err")"
}

# run_fg NAME DEADLINE_S cmd...: runs cmd in the foreground bounded by the
# deadline (then SIGKILL), stdout/stderr -> $T/NAME.out/.err.
# Sets RUN_RC, RUN_MS, and RUN_TIMEDOUT=1 if it was still running at the
# deadline (then RUN_RC is 124 or 137).
run_fg() {
    local name=$1 deadline=$2 t0
    shift 2
    now_ms; t0=$NOW_MS
    timeout -k 2 "$deadline" env --default-signal=INT,QUIT "$@" >"$T/$name.out" 2>"$T/$name.err" 9>&-
    RUN_RC=$?
    RUN_TIMEDOUT=0
    [[ $RUN_RC == 124 || $RUN_RC == 137 ]] && RUN_TIMEDOUT=1
    now_ms; RUN_MS=$((NOW_MS - t0))
    _LOGS+=("$T/$name.err")
}

# inode_of PATH (of the node itself, symlinks not followed)
inode_of() { stat -c %i -- "$1"; }

# type_of PATH: "socket", "regular file", "directory", "symbolic link", "fifo", ...
type_of() { stat -c %F -- "$1"; }

# assert_socket PATH: the node exists and is a socket.
assert_socket() {
    [[ -S $1 && ! -L $1 ]] || fail "$1 is not a socket (${2:-}): $(ls -la -- "$1" 2>&1)"
}

assert_gone() {
    [[ ! -e $1 && ! -L $1 ]] || fail "$1 still exists (${2:-}): $(ls -la -- "$1" 2>&1)"
}

# ----------------------------------------------------------------- processes

# alive PID: the process exists and is not a zombie.
alive() {
    local st=
    [[ -e /proc/$1 ]] || return 1
    { read -r _ _ st _ <"/proc/$1/stat"; } 2>/dev/null || return 1
    [[ $st != Z ]]
}

# wait_exit PID DEADLINE_S: waits for a child of this shell to exit, reaps it.
# Returns (and sets WAIT_RC to) its exit status (128+signal if killed);
# on timeout returns 255 and sets WAIT_RC=timeout.
wait_exit() {
    local pid=$1 t0 rc
    _ms "${2:-10}"
    local limit=$_MS
    now_ms; t0=$NOW_MS
    while alive "$pid"; do
        now_ms
        if ((NOW_MS - t0 > limit)); then
            WAIT_RC=timeout
            return 255
        fi
        nap
    done
    wait "$pid" 2>/dev/null
    rc=$?
    untrack "$pid"
    WAIT_RC=$rc
    return "$rc"
}

# kill_and_reap PID [SIG]: signals (default KILL) and reaps within 10 s.
kill_and_reap() {
    kill -"${2:-KILL}" "$1" 2>/dev/null
    wait_exit "$1" 10
    [[ $WAIT_RC != timeout ]] || fail "pid $1 did not exit within 10 s of SIG${2:-KILL}"
}

# ------------------------------------------------------------------ daemons

# start_daemon SOCK [args...]: starts ringflyd in the background with default
# SIGINT/SIGQUIT handling (a non-interactive shell would start it with them
# ignored), stdout+stderr -> DAEMON_LOG. Sets DAEMON_PID and DAEMON_LOG.
start_daemon() {
    local sock=$1
    shift
    _DCOUNT=$((_DCOUNT + 1))
    DAEMON_LOG="$T/ringflyd.$_DCOUNT.log"
    env --default-signal=INT,QUIT "$RINGFLYD" --socket "$sock" --data-dir "$T/data" "$@" \
        >"$DAEMON_LOG" 2>&1 9>&- &
    DAEMON_PID=$!
    track "$DAEMON_PID" ringflyd
    _LOGS+=("$DAEMON_LOG")
}

# health SOCK [extra ringfly args]: one `ringfly health`; output -> $HEALTH_OUT,
# stderr -> $HEALTH_ERR; returns its exit status.
HEALTH_OUT="$T/health.out"
HEALTH_ERR="$T/health.err"
health() {
    local sock=$1
    shift
    timeout -k 1 10 "$RINGFLY" --socket "$sock" "$@" health >"$HEALTH_OUT" 2>"$HEALTH_ERR" 9>&-
}

# health_field KEY [FILE]: the value of "KEY: value" in the health output.
health_field() {
    local key val
    while IFS=': ' read -r key val; do
        if [[ $key == "$1" ]]; then
            printf '%s\n' "$val"
            return 0
        fi
    done <"${2:-$HEALTH_OUT}"
    return 1
}

# wait_health SOCK [DEADLINE_S] [PID]: polls `ringfly health` every ~10 ms
# until it answers "status: ok" (returns 0, sets HEALTH_PID and HEALTH_MS, the
# time it took) or the deadline (default 5 s) passes (returns 1). With PID (a
# child of this shell): returns 2 as soon as that process has exited (reaped,
# status in WAIT_RC) instead of waiting out the deadline.
wait_health() {
    local sock=$1 pid=${3:-} t0
    _ms "${2:-5}"
    local limit=$_MS
    now_ms; t0=$NOW_MS
    while :; do
        if health "$sock" && grep -qx 'status: ok' "$HEALTH_OUT"; then
            HEALTH_PID=$(health_field pid)
            now_ms; HEALTH_MS=$((NOW_MS - t0))
            return 0
        fi
        if [[ -n $pid ]] && ! alive "$pid"; then
            wait_exit "$pid" 1
            return 2
        fi
        now_ms
        ((NOW_MS - t0 > limit)) && return 1
        nap
    done
}

# must_health SOCK [DEADLINE_S] [PID]: like wait_health but fails the test
# (at once if PID exits first), and checks the pid: line when PID is given.
must_health() {
    local rc
    wait_health "$1" "${2:-5}" "${3:-}"
    rc=$?
    if ((rc == 2)); then
        fail "ringflyd (pid $3) exited with status $WAIT_RC before answering health at $1"
    elif ((rc != 0)); then
        fail "no healthy ringflyd at $1 within ${2:-5} s; last health stdout: $(cat "$HEALTH_OUT" 2>/dev/null) stderr: $(cat "$HEALTH_ERR" 2>/dev/null)"
    fi
    if [[ -n ${3:-} ]]; then
        assert_eq "$3" "$HEALTH_PID" "pid reported by health at $1"
    fi
}

# ---------------------------------------------------------------- rf-holdconns

# start_holdconns SOCK N [DEADLINE_S]: starts rf-holdconns and waits until it
# printed "held N". Sets HOLD_PID, HOLD_OUT.
_HCOUNT=0
start_holdconns() {
    local sock=$1 n=$2 t0
    require_holdconns
    _ms "${3:-10}"
    local limit=$_MS
    _HCOUNT=$((_HCOUNT + 1))
    HOLD_OUT="$T/holdconns.$_HCOUNT.out"
    : >"$HOLD_OUT"
    # stdin: the idle FIFO (never EOF while this shell lives), not /dev/null.
    "$RF_HOLDCONNS" "$sock" "$n" <"$_NAP_FIFO" >"$HOLD_OUT" 2>&1 9>&- &
    HOLD_PID=$!
    track "$HOLD_PID" rf-holdconns
    now_ms; t0=$NOW_MS
    while ! grep -qx "held $n" "$HOLD_OUT"; do
        if ! alive "$HOLD_PID"; then
            wait_exit "$HOLD_PID" 1
            fail "rf-holdconns $sock $n exited $WAIT_RC before holding: $(cat "$HOLD_OUT")"
        fi
        now_ms
        ((NOW_MS - t0 > limit)) && fail "rf-holdconns $sock $n: not all connected within ${3:-10} s: $(cat "$HOLD_OUT")"
        nap
    done
}

# stop_holdconns PID: SIGTERM, must exit 0 within 5 s.
stop_holdconns() {
    kill -TERM "$1" 2>/dev/null
    wait_exit "$1" 5
    [[ $WAIT_RC == 0 ]] || fail "rf-holdconns (pid $1) exited '$WAIT_RC' after SIGTERM, expected 0"
}

# fd_count PID: open file descriptors of PID.
fd_count() {
    local fds=("/proc/$1/fd/"*)
    echo "${#fds[@]}"
}

# ------------------------------------------------------------ foreign sockets

# start_socat_listener PATH: a foreign UNIX listener (socat) at PATH, echoing.
# Waits until it accepts connections. Sets SOCAT_PID.
start_socat_listener() {
    local path=$1 t0
    require_cmd socat
    socat "UNIX-LISTEN:$path,fork" EXEC:/bin/cat >"$T/socat.log" 2>&1 9>&- &
    SOCAT_PID=$!
    track "$SOCAT_PID" socat
    now_ms; t0=$NOW_MS
    # Bound and listening: a connect succeeds (a bare -S test races bind/listen).
    until [[ -S $path ]] && timeout 2 socat -u OPEN:/dev/null "UNIX-CONNECT:$path" 2>/dev/null 9>&-; do
        alive "$SOCAT_PID" || fail "socat listener on $path died: $(cat "$T/socat.log")"
        now_ms
        ((NOW_MS - t0 > 5000)) && fail "socat did not listen on $path within 5 s"
        nap
    done
}

# make_stale_socket PATH: a socket node at PATH with nobody listening (socat
# killed with -9 leaves it behind).
make_stale_socket() {
    local path=$1
    start_socat_listener "$path"
    kill_and_reap "$SOCAT_PID" KILL
    assert_socket "$path" "stale socket left by socat"
}
