#!/usr/bin/env bash
# ringfly demo: what the project does today, step by step, on this machine.
#
# Today (issue 3): the node daemon's crash-safe socket startup. ringflyd is started,
# answers `ringfly health`, is killed with SIGKILL (its socket file stays behind, as after
# an OOM kill), is restarted at once on the same path, removes the stale socket, answers
# again, and finally shuts down cleanly on SIGTERM.
#
# Issue 5: back to source. nginx on loopback serves a random file; `ringfly get URL -O FILE`
# downloads it through the daemon (progress bar on a terminal), the copy's sha256 matches;
# with nginx stopped, a second get of the URL is served from the daemon's cache, and
# `ringfly stat URL` shows the task.
#
# Issue 6: peer to peer. The daemon that fetched the file (the seed) also listens for
# peers on loopback TCP; with the origin stopped, three more daemons fetch it from it and
# from each other (`ringfly get --parent`): a chain that streams piece by piece. The
# summary compares the bytes the origin sent with the bytes delivered.
#
# Issue 7: the swarm. nginx comes back with a second file; ringfly-scheduler, a seed
# (`--role seed`) and four peers start on loopback, all with `--scheduler`; the four get
# the file at once with no --parent: the scheduler sends the first to the seed (which
# fetches from the origin) and the others to the seed and to each other. A table shows
# each peer's time and where its bytes came from, and the origin's bytes vs delivered;
# `ringfly stat` shows the peers that hold the file, as the scheduler knows them.
#
# Issue 8: the registry mirror. docker-registry on loopback gets an image of three layers
# (made here, pushed with skopeo); three more daemons with --http and --registry (and the
# scheduler) are registry mirrors, and skopeo pulls the image through each of them: the
# registry sends each layer about once, the daemons share the rest.
#
# To add a step: write a function step_<name> that starts with `step "title"` and append
# its name to STEPS at the bottom. Helpers: start_daemon, wait_health, start_nginx, run, note.
#
# Usage: scripts/demo.sh
# Env:   BUILD_JOBS (default nproc)   parallel build jobs
#        BUILD_DIR (default build/release)  the CMake tree to build and take the binaries from
#        SKIP_BUILD=1                 do not configure/build: use the binaries already in
#                                     BUILD_DIR (scripts/setup.sh still runs)
#        DEMO_SIZE_MIB (default 256)  size of the file nginx serves
#        DEMO_KEEP=1                  keep the temp dir (logs, the downloaded files)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build/release}
[[ $build == /* ]] || build=$root/$build
build_shown=${build#"$root"/}
RINGFLYD=$build/ringflyd
RINGFLY=$build/ringfly
RINGFLY_SCHEDULER=$build/ringfly-scheduler

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

# show CMD...: print the command as run() does, without running it (for pipelines and
# redirections, which the caller then runs itself).
show() {
	local shown="" arg
	for arg in "$@"; do
		[[ $arg == *[[:space:]]* ]] && arg="\"$arg\""
		shown+="${shown:+ }$arg"
	done
	shown=${shown//$root\//}
	printf '%s$ %s%s\n' "$dim" "${shown//$tmp/\$T}" "$plain"
}

# run CMD...: show the command (temp dir abbreviated as $T), then run it.
run() {
	show "$@"
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
	if [[ ${SKIP_BUILD:-0} == 1 ]]; then
		step "set up packages; use the binaries in $build_shown (SKIP_BUILD=1)"
		run ./scripts/setup.sh
		[[ -x $RINGFLYD && -x $RINGFLY ]] || fail "SKIP_BUILD=1 but $RINGFLYD or $RINGFLY is missing"
		note "found $(basename "$RINGFLYD") and $(basename "$RINGFLY") ($("$RINGFLYD" --version 2>&1 | head -n 1))"
		return
	fi
	step "set up packages and build $build_shown"
	run ./scripts/setup.sh
	local log
	log=$(dirname "$build")/demo-build.log
	mkdir -p "$build"
	printf '%s$ cmake -S . -B %s -DCMAKE_BUILD_TYPE=Release && cmake --build %s%s\n' \
		"$dim" "$build_shown" "$build_shown" "$plain"
	if ! { cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release &&
		cmake --build "$build" -j"${BUILD_JOBS:-$(nproc)}"; } >"$log" 2>&1; then
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

# start_nginx DOCROOT: nginx on a free loopback port in $tmp/nginx (its own conf, pid, logs
# and temp paths; `daemon off; master_process off;`, so one process and no orphan worker),
# serving DOCROOT. Sets NGINX_PID and NGINX_PORT.
port_listening() { (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

start_nginx() {
	local docroot=$1 dir=$tmp/nginx port deadline
	mkdir -m 755 "$dir"
	for _ in 1 2 3 4 5 6 7 8; do
		port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		port_listening "$port" && continue
		cat >"$dir/nginx.conf" <<-EOF
			error_log $dir/error.log;
			pid $dir/nginx.pid;
			events { worker_connections 256; }
			http {
			 access_log $dir/access.log;
			 client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
			 fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
			 default_type application/octet-stream;
			 sendfile on;
			 server { listen 127.0.0.1:$port; root $docroot; }
			}
		EOF
		show nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off; master_process off;" "&"
		nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off; master_process off;" 2>>"$dir/stderr.log" &
		NGINX_PID=$!
		daemon_pids+=("$NGINX_PID")
		deadline=$(($(date +%s) + 5))
		while ! port_listening "$port"; do
			if ! kill -0 "$NGINX_PID" 2>/dev/null; then
				NGINX_PID=
				break # the port was taken meanwhile: try another
			fi
			if (($(date +%s) > deadline)); then
				cat "$dir/error.log" >&2
				fail "nginx not listening on port $port after 5 s"
			fi
			sleep 0.01
		done
		if [[ -n $NGINX_PID ]]; then
			NGINX_PORT=$port
			note "nginx pid $NGINX_PID listening on 127.0.0.1:$port"
			return
		fi
	done
	cat "$dir/error.log" >&2
	fail "nginx did not start"
}

# sha_of FILE: the file's sha256 in hex.
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

step_origin() {
	step "an origin: nginx on loopback serving a ${DEMO_SIZE_MIB:-256} MiB random file"
	# nginx serves as www-data: every directory on the way must be world-readable.
	chmod 755 "$tmp"
	mkdir -m 755 "$tmp/www" "$tmp/out"
	show head -c "$((${DEMO_SIZE_MIB:-256} << 20))" /dev/urandom ">$tmp/www/file.bin"
	head -c "$((${DEMO_SIZE_MIB:-256} << 20))" /dev/urandom >"$tmp/www/file.bin"
	chmod 644 "$tmp/www/file.bin"
	SOURCE_SHA=$(sha_of "$tmp/www/file.bin")
	note "sha256 of the source: $SOURCE_SHA"
	start_nginx "$tmp/www"
	URL=http://127.0.0.1:$NGINX_PORT/file.bin
	note "what ringflyd will see first (HEAD $URL):"
	show curl -sI "$URL"
	curl -sI "$URL" | tr -d '\r' |
		grep -iE '^(HTTP|content-length|accept-ranges|etag|last-modified)' | sed 's/^/    /'
}

step_get() {
	step "ringfly get: the daemon downloads it from the origin (HTTP range requests)"
	start_daemon PID3 "$tmp/ringflyd-3.log" --socket "$SOCKET" --data-dir "$DATA" \
		--listen-peer 127.0.0.1:0
	wait_health "$SOCKET" "$PID3" "$tmp/ringflyd-3.log"
	note "progress goes to stderr: a bar on a terminal, a line every ~2 s otherwise; then a summary"
	run "$RINGFLY" --socket "$SOCKET" get "$URL" -O "$tmp/out/first.bin" ||
		fail "ringfly get exited with $?"
	show sha256sum "$tmp/www/file.bin" "$tmp/out/first.bin"
	sha256sum "$tmp/www/file.bin" "$tmp/out/first.bin" | sed "s|$tmp|\$T|; s/^/    /"
	[[ $(sha_of "$tmp/out/first.bin") == "$SOURCE_SHA" ]] || fail "the download's sha256 differs"
	note "sha256 matches the source"
	note "the daemon's log (requester's pid/uid come from SO_PEERCRED):"
	show grep -E "download (start|done)" "$tmp/ringflyd-3.log"
	grep -E "download (start|done)" "$tmp/ringflyd-3.log" | sed 's/^/    /' ||
		fail "no 'download start/done' lines in ringflyd's log"
	grep -q "download done.*source=origin" "$tmp/ringflyd-3.log" ||
		fail "ringflyd's log has no 'download done ... source=origin'"
}

step_cache() {
	step "stop nginx: the same URL now comes from the daemon's cache"
	run kill -TERM "$NGINX_PID"
	wait "$NGINX_PID" 2>/dev/null || true
	run curl -sS -o /dev/null "$URL" || note "exit code $? (the origin is gone): as expected"
	show "$RINGFLY" --socket "$SOCKET" get "$URL" -O "$tmp/out/second.bin"
	local rc=0
	"$RINGFLY" --socket "$SOCKET" get "$URL" -O "$tmp/out/second.bin" 2>"$tmp/get-2.err" || rc=$?
	sed 's/^/    /' "$tmp/get-2.err"
	((rc == 0)) || fail "ringfly get from the cache exited with $rc"
	grep -q "from cache" "$tmp/get-2.err" || fail "the summary does not say 'from cache'"
	[[ $(sha_of "$tmp/out/second.bin") == "$SOURCE_SHA" ]] || fail "the cached copy's sha256 differs"
	note "sha256 matches the source again, with no origin running"
	show grep "download cache hit" "$tmp/ringflyd-3.log"
	grep "download cache hit" "$tmp/ringflyd-3.log" | sed 's/^/    /' ||
		fail "no 'download cache hit' line in ringflyd's log"
	note "what the daemon knows about the task:"
	show "$RINGFLY" --socket "$SOCKET" stat "$URL"
	local stat line
	stat=$("$RINGFLY" --socket "$SOCKET" stat "$URL") || fail "ringfly stat exited with $?"
	while IFS= read -r line; do
		printf '    %s\n' "$line"
	done <<<"$stat"
	grep -qx "state: complete" <<<"$stat" || fail "ringfly stat does not say 'state: complete'"
	grep -qx "bytes_done: $((${DEMO_SIZE_MIB:-256} << 20))" <<<"$stat" ||
		fail "ringfly stat does not say 'bytes_done: $((${DEMO_SIZE_MIB:-256} << 20))'"
}

# peer_port LOG PID: the TCP port the daemon logged (`listening peer=... port=N`).
peer_port() {
	local log=$1 pid=$2 deadline=$(($(date +%s) + HEALTH_DEADLINE_S)) port
	while :; do
		port=$(sed -n 's/.*listening peer=.* port=\([0-9]*\).*/\1/p' "$log" | tail -n 1)
		[[ -n $port ]] && break
		kill -0 "$pid" 2>/dev/null || fail "ringflyd pid $pid died: $(tail -n 3 "$log")"
		(($(date +%s) <= deadline)) || fail "no 'listening peer=' line in $log"
		sleep 0.01
	done
	printf '%s\n' "$port"
}

# field_of LOG KEY: the KEY=N value of the `download done` line in LOG.
field_of() { sed -n "s/.*download done.* $2=\([0-9]*\).*/\1/p" "$1" | tail -n 1; }

step_swarm() {
	step "peer to peer: three more daemons fetch it from the seed and from each other"
	local seed_port p names=(peer-a peer-b peer-c) pids=() ports=() t0 t1 rc size
	size=$((${DEMO_SIZE_MIB:-256} << 20))
	seed_port=$(peer_port "$tmp/ringflyd-3.log" "$PID3")
	note "the daemon above (the seed) serves pieces on 127.0.0.1:$seed_port; nginx is stopped"
	for p in 0 1 2; do
		start_daemon "pids[$p]" "$tmp/${names[p]}.log" --socket "$tmp/${names[p]}.sock" \
			--data-dir "$tmp/${names[p]}.data" --listen-peer 127.0.0.1:0
		wait_health "$tmp/${names[p]}.sock" "${pids[p]}" "$tmp/${names[p]}.log"
		ports[p]=$(peer_port "$tmp/${names[p]}.log" "${pids[p]}")
	done
	note "peer-a from the seed (with its progress bar); at the same time peer-b from the seed"
	note "and peer-a, and peer-c from peer-a and peer-b: pieces stream down the chain"
	t0=$(date +%s%N)
	show "$RINGFLY" --socket "\$T/peer-b.sock" get "$URL" -O "\$T/out/peer-b.bin" --no-progress \
		--parent "127.0.0.1:$seed_port" --parent "127.0.0.1:${ports[0]}" "&"
	"$RINGFLY" --socket "$tmp/peer-b.sock" get "$URL" -O "$tmp/out/peer-b.bin" --no-progress \
		--parent "127.0.0.1:$seed_port" --parent "127.0.0.1:${ports[0]}" 2>"$tmp/get-b.err" &
	local get_b=$!
	show "$RINGFLY" --socket "\$T/peer-c.sock" get "$URL" -O "\$T/out/peer-c.bin" --no-progress \
		--parent "127.0.0.1:${ports[0]}" --parent "127.0.0.1:${ports[1]}" "&"
	"$RINGFLY" --socket "$tmp/peer-c.sock" get "$URL" -O "$tmp/out/peer-c.bin" --no-progress \
		--parent "127.0.0.1:${ports[0]}" --parent "127.0.0.1:${ports[1]}" 2>"$tmp/get-c.err" &
	local get_c=$!
	run "$RINGFLY" --socket "$tmp/peer-a.sock" get "$URL" -O "$tmp/out/peer-a.bin" \
		--parent "127.0.0.1:$seed_port" || fail "peer-a's get exited with $?"
	rc=0
	wait "$get_b" || rc=$?
	sed 's/^/    /' "$tmp/get-b.err"
	((rc == 0)) || fail "peer-b's get exited with $rc"
	rc=0
	wait "$get_c" || rc=$?
	sed 's/^/    /' "$tmp/get-c.err"
	((rc == 0)) || fail "peer-c's get exited with $rc"
	t1=$(date +%s%N)
	for p in 0 1 2; do
		[[ $(sha_of "$tmp/out/${names[p]}.bin") == "$SOURCE_SHA" ]] ||
			fail "${names[p]}'s copy has another sha256"
	done
	note "sha256 of all three copies matches the source"
	local origin_bytes=0 peer_bytes=0 delivered=0 n log deadline
	origin_bytes=$(awk '{ if ($9 ~ /^2/) sum += $10 } END { printf "%.0f\n", sum }' "$tmp/nginx/access.log")
	for log in "$tmp/peer-a.log" "$tmp/peer-b.log" "$tmp/peer-c.log"; do
		# The get ends when the output is whole; the line follows once the cache is durable.
		deadline=$(($(date +%s) + 10))
		until grep -q "download done" "$log"; do
			(($(date +%s) <= deadline)) || fail "no 'download done' in $log"
			sleep 0.01
		done
		n=$(field_of "$log" peer_bytes)
		peer_bytes=$((peer_bytes + n))
		[[ $(field_of "$log" origin_bytes) == 0 ]] || fail "$log: bytes came from the origin"
	done
	delivered=$((5 * size)) # first get, cache hit, three peers
	note "the daemons' logs (source=peer: every byte from other peers):"
	grep -h "download done" "$tmp/peer-a.log" "$tmp/peer-b.log" "$tmp/peer-c.log" |
		sed 's/^/    /'
	printf '\n   %ssummary%s\n' "$bold" "$plain"
	awk -v o="$origin_bytes" -v p="$peer_bytes" -v d="$delivered" -v s="$size" \
		-v ns="$((t1 - t0))" 'BEGIN {
		printf "   bytes from the origin      %12d  (%.2f x the file)\n", o, o / s
		printf "   bytes between peers        %12d\n", p
		printf "   bytes delivered to files   %12d  (5 gets: origin, cache hit, 3 peers)\n", d
		printf "   three peer gets            %12.2f s, %.2f GB/s together\n", ns / 1e9, 3 * s / ns
	}'
	((origin_bytes <= size + size / 10)) ||
		fail "the origin sent $origin_bytes bytes for a $size-byte file"
	PEER_PIDS=("${pids[@]}")
}

step_scheduled() {
	step "the swarm: a scheduler, a seed and four peers; all four want a new file at once"
	local size=$((${DEMO_SIZE_MIB:-256} << 20)) sport seed_pid p n pids=() gets=() t0 rc
	local url2 sha2 log stat
	show head -c "$size" /dev/urandom ">$tmp/www/swarm.bin"
	head -c "$size" /dev/urandom >"$tmp/www/swarm.bin"
	chmod 644 "$tmp/www/swarm.bin"
	sha2=$(sha_of "$tmp/www/swarm.bin")
	rm -rf "$tmp/nginx"
	start_nginx "$tmp/www"
	url2=http://127.0.0.1:$NGINX_PORT/swarm.bin
	show "$RINGFLY_SCHEDULER" --listen 127.0.0.1:0 "2>\$T/scheduler.log &"
	"$RINGFLY_SCHEDULER" --listen 127.0.0.1:0 2>"$tmp/scheduler.log" &
	SCHED_PID=$!
	daemon_pids+=("$SCHED_PID")
	local deadline=$(($(date +%s) + HEALTH_DEADLINE_S))
	until sport=$(sed -n 's/.*scheduler listening .* port=\([0-9]*\).*/\1/p' "$tmp/scheduler.log") &&
		[[ -n $sport ]]; do
		kill -0 "$SCHED_PID" 2>/dev/null || fail "ringfly-scheduler died: $(cat "$tmp/scheduler.log")"
		(($(date +%s) <= deadline)) || fail "ringfly-scheduler did not report its port"
		sleep 0.01
	done
	note "ringfly-scheduler pid $SCHED_PID on 127.0.0.1:$sport"
	SCHED_PORT=$sport
	start_daemon seed_pid "$tmp/seed.log" --socket "$tmp/seed.sock" --data-dir "$tmp/seed.data" \
		--listen-peer 127.0.0.1:0 --role seed --scheduler "127.0.0.1:$sport"
	wait_health "$tmp/seed.sock" "$seed_pid" "$tmp/seed.log" >/dev/null
	peer_port "$tmp/seed.log" "$seed_pid" >/dev/null
	for n in 1 2 3 4; do
		start_daemon "pids[$n]" "$tmp/node-$n.log" --socket "$tmp/node-$n.sock" \
			--data-dir "$tmp/node-$n.data" --listen-peer 127.0.0.1:0 \
			--scheduler "127.0.0.1:$sport"
		wait_health "$tmp/node-$n.sock" "${pids[n]}" "$tmp/node-$n.log" >/dev/null
		peer_port "$tmp/node-$n.log" "${pids[n]}" >/dev/null
	done
	note "node-1 with its progress bar; node-2..4 at the same time, in the background"
	t0=$(date +%s%N)
	for n in 2 3 4; do
		"$RINGFLY" --socket "$tmp/node-$n.sock" get "$url2" -O "$tmp/out/node-$n.bin" \
			--no-progress 2>"$tmp/node-$n.err" &
		gets[n]=$!
	done
	run "$RINGFLY" --socket "$tmp/node-1.sock" get "$url2" -O "$tmp/out/node-1.bin" ||
		fail "node-1's get exited with $?"
	for n in 2 3 4; do
		rc=0
		wait "${gets[n]}" || rc=$?
		((rc == 0)) || fail "node-$n's get exited with $rc: $(cat "$tmp/node-$n.err")"
		sed 's/^/    /' "$tmp/node-$n.err"
	done
	for n in 1 2 3 4; do
		[[ $(sha_of "$tmp/out/node-$n.bin") == "$sha2" ]] || fail "node-$n's copy has another sha256"
	done
	note "sha256 of all four copies matches the source"
	for log in "$tmp/seed.log" "$tmp/node-1.log" "$tmp/node-2.log" "$tmp/node-3.log" "$tmp/node-4.log"; do
		deadline=$(($(date +%s) + 10))
		until grep -q "download done" "$log"; do
			(($(date +%s) <= deadline)) || fail "no 'download done' in $log"
			sleep 0.01
		done
	done
	note "what the scheduler answered:"
	grep -h "parents task=" "$tmp/scheduler.log" | sed 's/^.*parents task=[0-9a-f]*/    parents for/' | head -n 6
	local origin_bytes total=0
	origin_bytes=$(awk '$7 == "/swarm.bin" && $9 ~ /^2/ { sum += $10 } END { printf "%.0f\n", sum }' \
		"$tmp/nginx/access.log")
	printf '\n   %s%-8s %9s %16s %16s%s\n' "$bold" node "time ms" "from origin" "from peers" "$plain"
	for n in seed 1 2 3 4; do
		log=$tmp/node-$n.log
		[[ $n == seed ]] && log=$tmp/seed.log
		printf '   %-8s %9s %16s %16s\n' "${n/#[0-9]/node-$n}" "$(field_of "$log" ms)" \
			"$(field_of "$log" origin_bytes)" "$(field_of "$log" peer_bytes)"
		[[ $n == seed ]] || total=$((total + size))
	done
	awk -v o="$origin_bytes" -v d="$total" -v s="$size" -v ns="$(($(date +%s%N) - t0))" 'BEGIN {
		printf "\n   the origin sent %d bytes (%.2f x the file); %d bytes delivered to 4 nodes\n",
			o, o / s, d
		printf "   from the first get to the last byte recorded: %.2f s\n", ns / 1e9
	}'
	((origin_bytes <= size + size / 20)) ||
		fail "the origin sent $origin_bytes bytes for a $size-byte file"
	note "where the file is now: node-1's cache, and the peers its scheduler knows"
	show "$RINGFLY" --socket "$tmp/node-1.sock" stat "$url2"
	stat=$("$RINGFLY" --socket "$tmp/node-1.sock" stat "$url2") ||
		fail "ringfly stat on node-1 exited with $?"
	sed 's/^/    /' <<<"$stat"
	grep -q '^swarm: ' <<<"$stat" || fail "ringfly stat on node-1 shows no swarm"
	PEER_PIDS+=("$seed_pid" "${pids[@]}")
}

# log_port LOG PID WHAT SED: the port a process logged (SED extracts it), waited for.
log_port() {
	local log=$1 pid=$2 what=$3 re=$4 deadline=$(($(date +%s) + HEALTH_DEADLINE_S)) port
	until port=$(sed -n "$re" "$log" | head -n 1) && [[ -n $port ]]; do
		kill -0 "$pid" 2>/dev/null || fail "$what (pid $pid) died: $(tail -n 5 "$log")"
		(($(date +%s) <= deadline)) || fail "$what logged no port in $log"
		sleep 0.01
	done
	printf '%s
' "$port"
}

step_mirror() {
	step "the registry mirror: skopeo pulls an image through three daemons"
	local rdir=$tmp/registry rport reg n pids=() ports=() pulls=() t0 rc image=0 sent
	local layers=3 layer_mib=$(((${DEMO_SIZE_MIB:-256} + 7) / 8)) kind d sz _
	command -v docker-registry >/dev/null && command -v skopeo >/dev/null ||
		fail "docker-registry and skopeo are needed (scripts/setup.sh installs them)"
	mkdir -p "$rdir/storage"
	cat >"$rdir/config.yml" <<-EOF
		version: 0.1
		log: { level: info, formatter: text, accesslog: { disabled: false } }
		storage: { filesystem: { rootdirectory: $rdir/storage } }
		http: { addr: "127.0.0.1:0", secret: demo-$$-$RANDOM }
	EOF
	show docker-registry serve "$rdir/config.yml" "&"
	# docker-registry reads REGISTRY_* variables as config: none are passed on.
	env -u REGISTRY_URL docker-registry serve "$rdir/config.yml" >"$rdir/registry.log" 2>&1 &
	REGISTRY_PID=$!
	daemon_pids+=("$REGISTRY_PID")
	rport=$(log_port "$rdir/registry.log" "$REGISTRY_PID" docker-registry \
		's/.*msg="listening on 127\.0\.0\.1:\([0-9][0-9]*\)".*/\1/p')
	reg=127.0.0.1:$rport
	until curl -fs -o /dev/null "http://$reg/v2/"; do
		kill -0 "$REGISTRY_PID" 2>/dev/null || fail "docker-registry died: $(tail -n 5 "$rdir/registry.log")"
		sleep 0.01
	done
	note "docker-registry pid $REGISTRY_PID on $reg"
	show python3 tests/tools/oci-image-make.py "$tmp/image" v1 "$layers" $((layer_mib << 20)) ">\$T/image.list"
	python3 tests/tools/oci-image-make.py "$tmp/image" v1 "$layers" $((layer_mib << 20)) >"$tmp/image.list" ||
		fail "making the image failed"
	while read -r kind d sz _; do
		[[ $kind == manifest ]] || image=$((image + sz))
		[[ $kind == manifest ]] || note "$kind $d ($sz bytes)"
	done <"$tmp/image.list"
	run skopeo copy --quiet --dest-tls-verify=false "oci:$tmp/image:v1" "docker://$reg/demo/app:v1" ||
		fail "skopeo could not push the image"
	for n in 1 2 3; do
		start_daemon "pids[$n]" "$tmp/mirror-$n.log" --socket "$tmp/mirror-$n.sock" \
			--data-dir "$tmp/mirror-$n.data" --listen-peer 127.0.0.1:0 \
			--scheduler "127.0.0.1:$SCHED_PORT" --http 127.0.0.1:0 --registry "http://$reg"
		wait_health "$tmp/mirror-$n.sock" "${pids[n]}" "$tmp/mirror-$n.log" >/dev/null
		ports[n]=$(log_port "$tmp/mirror-$n.log" "${pids[n]}" ringflyd \
			's/.*listening http=.* port=\([0-9]*\).*/\1/p')
		note "mirror-$n: registry mirror on 127.0.0.1:${ports[n]}"
	done
	sent=$(awk '$1 == "127.0.0.1" && $6 == "\"GET" && $7 ~ /\/blobs\// && $9 ~ /^2/ { s += $10 } END { printf "%.0f\n", s }' "$rdir/registry.log")
	t0=$(date +%s%N)
	run skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:${ports[1]}/demo/app:v1" \
		"dir:$tmp/out/pull-1" || fail "skopeo could not pull through mirror-1"
	note "mirror-2 and mirror-3 at the same time:"
	for n in 2 3; do
		show skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:${ports[n]}/demo/app:v1" \
			"dir:$tmp/out/pull-$n" "&"
		skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:${ports[n]}/demo/app:v1" \
			"dir:$tmp/out/pull-$n" 2>"$tmp/pull-$n.err" &
		pulls[n]=$!
	done
	for n in 2 3; do
		rc=0
		wait "${pulls[n]}" || rc=$?
		((rc == 0)) || fail "skopeo through mirror-$n exited with $rc: $(cat "$tmp/pull-$n.err")"
	done
	while read -r kind d sz _; do
		[[ $kind == layer ]] || continue
		for n in 1 2 3; do
			[[ $(sha_of "$tmp/out/pull-$n/${d#sha256:}") == "${d#sha256:}" ]] ||
				fail "mirror-$n: layer $d has another sha256"
		done
	done <"$tmp/image.list"
	note "every layer pulled three times, each copy's sha256 is its digest (skopeo checked too)"
	printf '\n   %s%-9s %-10s %12s %7s%s\n' "$bold" node layer bytes from "$plain"
	for n in 1 2 3; do
		sed -n 's/.*blob served digest=sha256:\([0-9a-f]\{10\}\)[0-9a-f]* bytes=\([0-9]*\) source=\([a-z]*\).*/\1 \2 \3/p' \
			"$tmp/mirror-$n.log" | while read -r d sz src; do
			printf '   %-9s %-10s %12s %7s\n' "mirror-$n" "$d" "$sz" "$src"
		done
	done
	note "(a first requester is sent to the swarm's seed, which fetched each blob from the"
	note " registry once: so even mirror-1's bytes came from a peer)"
	sent=$(($(awk '$1 == "127.0.0.1" && $6 == "\"GET" && $7 ~ /\/blobs\// && $9 ~ /^2/ { s += $10 } END { printf "%.0f\n", s }' "$rdir/registry.log") - sent))
	awk -v o="$sent" -v i="$image" -v ns="$(($(date +%s%N) - t0))" 'BEGIN {
		printf "\n   the registry sent %d blob bytes (%.2f x the image); %d delivered to 3 clients\n",
			o, o / i, 3 * i
		printf "   three pulls in %.2f s\n", ns / 1e9
	}'
	((sent <= image + image / 20)) || fail "the registry sent $sent bytes for a $image-byte image"
	PEER_PIDS+=("${pids[@]}")
	kill -TERM "$REGISTRY_PID"
	wait "$REGISTRY_PID" 2>/dev/null || true
}

step_stop() {
	step "SIGTERM: the daemons and the scheduler stop cleanly"
	local pid rc
	for pid in "$PID3" "${PEER_PIDS[@]}" "$SCHED_PID"; do
		run kill -TERM "$pid"
		rc=0
		wait "$pid" || rc=$?
		((rc == 0)) || fail "expected exit code 0 after SIGTERM, got $rc"
	done
	note "ringflyd exit codes: 0"
}

STEPS=(step_build step_start step_kill9 step_restart step_sigterm
	step_origin step_get step_cache step_swarm step_scheduled step_mirror step_stop)

for s in "${STEPS[@]}"; do
	"$s"
done
printf '\n%sdemo: all %d steps passed%s\n' "$bold" "$step_number" "$plain"
