#!/usr/bin/env bash
# ringfly demo: what the project does today, step by step, on this machine.
#
# Today (issue 3): the node daemon's crash-safe socket startup. ringflyd is started,
# answers `ringfly health`, is killed with SIGKILL (its socket file stays behind, as after
# an OOM kill), is restarted at once on the same path, removes the stale socket, answers
# again, and finally shuts down cleanly on SIGTERM.
#
# To add a step: write a function step_<name> that starts with `step "title"` and append
# its name to STEPS at the bottom. Helpers: start_daemon, wait_health, run, note.
#
# Usage: scripts/demo.sh          Env: BUILD_JOBS (default nproc), DEMO_KEEP=1 keeps the temp dir
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=$root/build/release
RINGFLYD=$build/ringflyd
RINGFLY=$build/ringfly

HEALTH_DEADLINE_S=5

tmp=""
declare -a daemon_pids=()
step_number=0

if [[ -t 1 ]]; then
	bold=$'\033[1m' dim=$'\033[2m' plain=$'\033[0m'
else
	bold="" dim="" plain=""
fi

cleanup() {
	local pid
	for pid in "${daemon_pids[@]}"; do
		if kill -0 "$pid" 2>/dev/null; then
			kill -9 "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
	if [[ -n $tmp && -d $tmp ]]; then
		if [[ ${DEMO_KEEP:-0} == 1 ]]; then
			echo "demo: kept $tmp"
		else
			rm -rf "$tmp"
		fi
	fi
}
trap cleanup EXIT

step() {
	step_number=$((step_number + 1))
	printf '\n%s== step %d: %s ==%s\n' "$bold" "$step_number" "$*" "$plain"
}

note() { printf '   %s\n' "$*"; }

# run CMD...: show the command (temp dir abbreviated as $T), then run it.
run() {
	local shown="" arg
	for arg in "$@"; do
		[[ $arg == *[[:space:]]* ]] && arg="\"$arg\""
		shown+="${shown:+ }$arg"
	done
	shown=${shown//$root\//}
	printf '%s$ %s%s\n' "$dim" "${shown//$tmp/\$T}" "$plain"
	"$@"
}

fail() {
	echo "demo: FAILED: $*" >&2
	exit 1
}

# start_daemon VAR LOG ARGS...: start ringflyd in the background, stderr to LOG; store its
# pid in VAR.
start_daemon() {
	local -n pid_out=$1
	local log=$2
	shift 2
	printf '%s$ ringflyd %s 2>%s &%s\n' "$dim" "${*//$tmp/\$T}" "${log//$tmp/\$T}" "$plain"
	"$RINGFLYD" "$@" 2>"$log" &
	pid_out=$!
	daemon_pids+=("$pid_out")
	note "started ringflyd pid $pid_out"
}

# wait_health SOCKET PID LOG: poll `ringfly health` until the daemon with PID answers on
# SOCKET, or fail after HEALTH_DEADLINE_S. Prints the health answer and how long it took.
# (Right after a kill -9 the dying daemon's socket can still accept for a few ms, so an
# answer only counts when it names PID.)
wait_health() {
	local socket=$1 pid=$2 log=$3 answer="" start_ns elapsed_ms attempts=0
	start_ns=$(date +%s%N)
	local deadline_ns=$((start_ns + HEALTH_DEADLINE_S * 1000000000))
	while :; do
		attempts=$((attempts + 1))
		if answer=$("$RINGFLY" --socket "$socket" --timeout 500ms health 2>/dev/null) &&
			grep -qx "pid: $pid" <<<"$answer"; then
			break
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "demo: ringflyd pid $pid exited; its log:" >&2
			cat "$log" >&2
			fail "ringflyd did not start"
		fi
		if (($(date +%s%N) > deadline_ns)); then
			echo "demo: ringflyd's log so far:" >&2
			cat "$log" >&2
			fail "no health answer from pid $pid on $socket within ${HEALTH_DEADLINE_S}s"
		fi
		sleep 0.01
	done
	elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
	note "pid $pid answered health after ${elapsed_ms} ms ($attempts attempt(s)):"
	printf '%s$ ringfly --socket %s health%s\n' "$dim" "${socket//$tmp/\$T}" "$plain"
	local line
	while IFS= read -r line; do
		printf '    %s\n' "$line"
	done <<<"$answer"
}

step_build() {
	step "set up packages and build build/release"
	run ./scripts/setup.sh
	local log=$root/build/demo-build.log
	mkdir -p "$root/build"
	printf '%s$ cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release && cmake --build build/release%s\n' \
		"$dim" "$plain"
	if ! { cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release &&
		cmake --build build/release -j"${BUILD_JOBS:-$(nproc)}"; } >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		fail "build failed (full log: $log)"
	fi
	note "built $(basename "$RINGFLYD") and $(basename "$RINGFLY") ($("$RINGFLYD" --version 2>&1 | head -n 1))"
}

step_start() {
	step "start ringflyd on a socket whose directory does not exist yet"
	tmp=$(mktemp -d -t ringfly-demo.XXXXXX)
	SOCKET=$tmp/run/ringflyd.sock
	DATA=$tmp/data
	note "temp dir \$T = $tmp"
	start_daemon PID1 "$tmp/ringflyd-1.log" --socket "$SOCKET" --data-dir "$DATA"
	wait_health "$SOCKET" "$PID1" "$tmp/ringflyd-1.log"
}

step_kill9() {
	step "kill -9 the daemon: the socket file stays behind"
	run kill -9 "$PID1"
	wait "$PID1" 2>/dev/null || true
	note "pid $PID1 is gone; what it left in \$T/run:"
	run ls -l "$tmp/run"
	[[ -S $SOCKET ]] || fail "expected the stale socket $SOCKET to still exist"
	note "a naive daemon would now fail: bind(): Address already in use"
}

step_restart() {
	step "restart at once on the same socket: the stale node is validated and removed"
	start_daemon PID2 "$tmp/ringflyd-2.log" --socket "$SOCKET" --data-dir "$DATA"
	wait_health "$SOCKET" "$PID2" "$tmp/ringflyd-2.log"
	note "its log says why it removed the old socket:"
	run grep "removed stale socket" "$tmp/ringflyd-2.log" ||
		fail "no 'removed stale socket' line in the second daemon's log"
	note "old pid $PID1, new pid $PID2: same path, new daemon"
}

step_sigterm() {
	step "SIGTERM: clean shutdown removes the socket"
	run kill -TERM "$PID2"
	local rc=0
	wait "$PID2" || rc=$?
	note "ringflyd exit code: $rc"
	((rc == 0)) || fail "expected exit code 0 after SIGTERM, got $rc"
	run ls -l "$tmp/run"
	[[ ! -e $SOCKET ]] || fail "socket $SOCKET still exists after SIGTERM"
	note "socket removed; ringflyd.sock.lock stays by design (a flock is never stale)"
	run "$RINGFLY" --socket "$SOCKET" health || note "exit code $? (no daemon): as expected"
}

STEPS=(step_build step_start step_kill9 step_restart step_sigterm)

for s in "${STEPS[@]}"; do
	"$s"
done
printf '\n%sdemo: all %d steps passed%s\n' "$bold" "$step_number" "$plain"
