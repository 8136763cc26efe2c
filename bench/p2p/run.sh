#!/usr/bin/env bash
# Peer-to-peer benchmark (issue 6): parent -> child vs the kernel's shortest path, nginx+curl
# and iperf3 (P1, P2); one daemon serving many clients vs nginx (P8).
#
# Usage: bench/p2p/run.sh [BUILD_DIR]   (or $BUILD_DIR; default: build/release under the repo root)
# Env:   RUNS (default 5)       rounds of each part; every round runs each contender once, in turn
#        PARTS ("p1 p8")        which parts to run: p1 = P1 and P2 (one set of rounds), p8
#        SIZE_MIB (1024)        P1/P2: the task's size, in MiB
#        CONTENDERS             P1/P2 contenders to run (default all):
#                               "ringfly ref ref-crc ref-sync curl iperf3"
#        P8_MIB (64)            P8: the served task's size, in MiB
#        P8_CONNS (200)         P8: concurrent client connections
#        P8_WINDOW (8)          P8: GetPiece in flight per peer connection
#        P8_DISCARD (trunc)     P8: how the client drops payload: trunc = recv(MSG_TRUNC), no copy
#                               (measures the servers); copy = recv() into a buffer
#        NGINX_WORKERS (1)      P8: nginx worker processes (1 = one process, like ringflyd's one
#                               event loop; >1 runs a master and N workers)
#        OUT_PARENT (/tmp)      the daemons' data dirs and the references' output files (the root
#                               disk on the project VM; one filesystem for all)
#        SRC_PARENT (/dev/shm)  nginx's docroot with the random files, and the ref sender's source
#        PREWARM_MIB (2*SIZE)   before every P1 run (untimed) write and remove this many MiB on
#                               SRC_PARENT, so the run's new page cache comes from memory touched a
#                               moment ago, whatever ran before it (bench/README.md, origin,
#                               "Memory"); 0 = off (then the order of the contenders matters)
#        CHILD_ARGS, PARENT_ARGS  extra ringflyd arguments for B / A, e.g.
#                               CHILD_ARGS="--storage-socket-path recv" or "--config FILE"
#        PARENT_RESTART (1)     1: restart A on its data dir after the origin fill (the parent
#                               under test serves a recovered cache; its RSS is the serving
#                               path's); 0: keep the daemon that did the fill
#        KEEP=1                 keep the temp dirs (daemon and nginx logs, iperf3's JSON)
#
# Builds nothing: it needs BUILD_DIR/{ringfly,ringflyd}, BUILD_DIR/bench/ref/ringfly-ref-{sender,
# receiver} and BUILD_DIR/bench/p2p/ringfly-bench-p8-client, e.g. from
#   cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release && cmake --build build/release
# and nginx, curl, iperf3 (scripts/setup.sh; without iperf3 that contender is skipped).
#
# Setup (untimed): random files on SRC_PARENT served by two nginx processes on loopback: the
# "origin" (the URL the tasks are named by) and the "reference" (same docroot, another port,
# for curl and P8). Parent A = `ringflyd --listen-peer 127.0.0.1:0` (port from its log line
# `listening peer=127.0.0.1:0 port=N`) gets both tasks once with `ringfly get URL -O /dev/null`
# (fills its cache only); then the origin nginx is stopped for good: every later ringfly
# transfer can only come from A (checked: the child's `download done ... origin_bytes=0`).
#
# P1/P2 contenders, one run each per round, in this order:
#   ringfly  a new child B (new data dir, no peer listener) started and healthy, then timed:
#            ringfly --socket B get URL -O /dev/null --no-progress --parent 127.0.0.1:PORT_A
#            (A's pieces land in B's cache: a new file, as the references write one); B is
#            stopped and its data dir removed after the run.
#   ref      bench/ref's pair: ringfly-ref-sender (sendfile from SRC_PARENT) -> loopback ->
#            ringfly-ref-receiver --mode splice --pipe-size 1 MiB into a new file.
#   ref-crc  the same with --crc: each batch read back from the file and crc32c'd (core/hash.c)
#            as soon as it is written, on the receiver's one thread: the check every byte
#            from a parent gets in ringfly's child (how much of the gap to ref it explains).
#   ref-sync the same with --sync: one fdatasync at the end, inside the receiver's clock.
#            ringfly's get returns once every piece is in B's cache and checked; B's
#            fdatasync of the whole file comes after it (storage.sync: task), out of the
#            get's time but inside its CPU (to `download done`) and its `daemon N ms`.
#   curl     the reference nginx (sendfile on) -> curl -s -o FILE (a new file).
#   iperf3   iperf3 -s -1 / iperf3 -c 127.0.0.1 -Z -n SIZE: one stream, sendfile, nothing
#            written (P2's reference: the loopback limit).
# Measured per run:
#   GB/s       SIZE / seconds (10^9 B/s). ringfly: the CLI's wall time (connect to the parent,
#              sync, all pieces into B's cache); ref: the receiver's clock (accept to last
#              write); curl: curl's wall time; iperf3: its receiver's bits_per_second.
#   CPU-s/GiB  both ends together, per GiB. ringfly: A's and B's utime+stime (/proc/PID/stat:
#              all their threads, io-wq workers included) from before the run to after B
#              logged `download done`, plus the CLI's; ref: receiver (its getrusage) + sender
#              (bash time); curl: curl (bash time) + nginx (/proc/PID/stat); iperf3: its
#              host_total and remote_total CPU percentages times the test's seconds.
#   RSS        ringfly only: VmHWM (peak RSS) of A (reset before each run through
#              /proc/PID/clear_refs) and of B, in MiB.
#   steal, idle  P1/P2, every contender: from /proc/stat around the timed command, the
#              ms (summed over the vCPUs) the hypervisor took (steal) and the vCPUs sat idle
#              or waited for I/O: a slow run with steal is the host's doing; idle is time
#              the contender's pipeline left a vCPU nothing to do.
# Checks (untimed): B's `download done` says source=peer origin_bytes=0 peer_bytes=SIZE and
# nothing listens on the origin's port; sizes every run; content (sha256, cmp) in round 1:
# B's cache is exported with `ringfly export` and compared with the source.
#
# P8: A serves the P8 task to P8_CONNS connections at once (the load client speaks the peer
# protocol: SyncPieces, then pipelined GetPiece), then the reference nginx serves the same file
# from SRC_PARENT to the same load (HTTP/1.1 GET, keep-alive); rounds alternate the two. GB/s
# = all bytes / time to the last byte (the client's clock); server CPU-s/GiB = A's or nginx's
# /proc/PID/stat delta over the run; client CPU-s/GiB = the client's getrusage (it shares the
# 2 vCPUs with the server). A's peak RSS during P8 is shown too.
#
# Cold and warm: the first run of each part is labelled cold (first-touch memory on this VM is
# slow, PLATFORM.md); the summary gives medians of all runs and of warm runs only, and the
# verdicts use the warm-only medians. Caches are never dropped: the sources are on tmpfs,
# A's cache was written during setup and stays in the page cache.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
. "$root/bench/common/lib.sh"
build=${1:-${BUILD_DIR:-$root/build/release}}
runs=${RUNS:-5}
size_mib=${SIZE_MIB:-1024}
bytes=$((size_mib * 1024 * 1024))
p8_mib=${P8_MIB:-64}
p8_bytes=$((p8_mib * 1024 * 1024))
p8_conns=${P8_CONNS:-200}
p8_window=${P8_WINDOW:-8}
p8_discard=${P8_DISCARD:-trunc}
nginx_workers=${NGINX_WORKERS:-1}
parts=${PARTS:-p1 p8}
prewarm_mib=${PREWARM_MIB:-$((size_mib * 2))}
ringfly=$build/ringfly
ringflyd=$build/ringflyd
sender=$build/bench/ref/ringfly-ref-sender
receiver=$build/bench/ref/ringfly-ref-receiver
p8_client=$build/bench/p2p/ringfly-bench-p8-client

part() { [[ " $parts " == *" $1 "* ]]; }

require_built "$root" "$build" "" "$ringfly" "$ringflyd" "$sender" "$receiver" "$p8_client"
[[ -x $nginx_bin ]] || { echo "run.sh: nginx not found (scripts/setup.sh)" >&2; exit 1; }
command -v curl >/dev/null || { echo "run.sh: curl not found (scripts/setup.sh)" >&2; exit 1; }
[[ $p8_discard == trunc || $p8_discard == copy ]] ||
	{ echo "run.sh: P8_DISCARD must be trunc or copy, not '$p8_discard'" >&2; exit 1; }

p1_names=()
if part p1; then
	for name in ringfly ref ref-crc ref-sync curl iperf3; do
		want "$name" || continue
		if [[ $name == iperf3 ]] && ! command -v iperf3 >/dev/null; then
			echo "run.sh: iperf3 not found (scripts/setup.sh); skipping P2's reference" >&2
			continue
		fi
		p1_names+=("$name")
	done
fi
p8_names=()
part p8 && p8_names=(ringfly nginx)
if ((${#p1_names[@]} + ${#p8_names[@]} == 0)); then
	echo "run.sh: nothing to run (PARTS=$parts CONTENDERS=${CONTENDERS:-})" >&2
	exit 1
fi

out_dir=$(mktemp -d "${OUT_PARENT:-/tmp}/ringfly-bench-p2p.XXXXXX")
chmod 755 "$out_dir"
src_dir=
declare -A ngx_pid=() ngx_port=()
a_pid=
b_pid=
bg_pid=
# nginx_pid (lib.sh): an nginx being started, not yet in ngx_pid.
cleanup() {
	bench_cleanup "$out_dir" "$src_dir" "$bg_pid" "$b_pid" "$a_pid" "${ngx_pid[@]}" "$nginx_pid"
}
trap cleanup EXIT

# Room: the sources on SRC_PARENT; on OUT_PARENT A's cache (both tasks), B's cache or one
# output, and B's export in round 1.
src_parent=${SRC_PARENT:-/dev/shm}
if (($(avail "$src_parent") < bytes + p8_bytes + (prewarm_mib << 20) + (256 << 20))); then
	echo "run.sh: $src_parent has no room for the sources; using $out_dir" >&2
	src_parent=$out_dir
fi
need=$((bytes * 3 + p8_bytes + (512 << 20)))
if (($(avail "$out_dir") < need)); then
	fail "$out_dir: need $((need >> 20)) MiB free (caches and outputs), have $(($(avail "$out_dir") >> 20))"
fi
src_dir=$(mktemp -d "$src_parent/ringfly-bench-p2p-src.XXXXXX")
chmod 755 "$src_dir"
mkdir -m 755 "$src_dir/www"
src=$src_dir/www/file
p8_src=$src_dir/www/p8
if part p1; then
	head -c "$bytes" /dev/urandom >"$src"
	chmod 644 "$src"
fi
if part p8; then
	head -c "$p8_bytes" /dev/urandom >"$p8_src"
	chmod 644 "$p8_src"
fi

# ---------------------------------------------------------------------------------------
# Processes: nginx, the parent A, a child B, CPU and memory readings.
# ---------------------------------------------------------------------------------------
# Random ports below the kernel's ephemeral range (32768 and up here), so that no client
# connection of an earlier run (P8 opens hundreds) holds one.
port_low=10000
port_count=22000

# start_ngx NAME: an nginx of its own (conf, pid, logs in out_dir/nginx-NAME) on a free
# loopback port serving src_dir/www; sets ngx_pid[NAME] and ngx_port[NAME].
start_ngx() {
	local name=$1 procs="daemon off; master_process off;"
	if [[ $name == reference && $nginx_workers -gt 1 ]]; then
		procs="daemon off; master_process on; worker_processes $nginx_workers;"
	fi
	start_nginx "nginx $name" "$out_dir/nginx-$name" "$src_dir/www" "$procs" 4096 backlog=4096 \
		"$port_low" "$port_count"
	ngx_pid[$name]=$nginx_pid
	ngx_port[$name]=$nginx_port
	nginx_pid=
}

# Arithmetic on decimal seconds: per_gib CPU_SECONDS BYTES, gbps_of SECONDS BYTES, add, minus.
per_gib() { awk -v c="$1" -v b="$2" 'BEGIN { printf "%.3f\n", c / (b / 2^30) }'; }
gbps_of() { awk -v s="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b / s / 1e9 }'; }
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a + b }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a - b }'; }

# Peak RSS (VmHWM) of a process in MiB; hwm_reset starts a new peak (root: clear_refs 5).
hwm_mib() { awk '/^VmHWM/ { printf "%.0f\n", $2 / 1024 }' "/proc/$1/status"; }
hwm_reset_ok=1
hwm_reset() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || hwm_reset_ok=0; }

# wait_line FILE ERE SECONDS: polls FILE for a line matching ERE; prints the first match.
wait_line() {
	local deadline=$((SECONDS + $3)) line
	until line=$(grep -m 1 -E -- "$2" "$1" 2>/dev/null); do
		((SECONDS < deadline)) || return 1
		sleep 0.01
	done
	printf '%s\n' "$line"
}

# field LINE KEY: the value of KEY=value in a log line.
field() {
	local w
	for w in $1; do
		if [[ $w == "$2="* ]]; then
			printf '%s\n' "${w#"$2="}"
			return 0
		fi
	done
	return 1
}

a_sock=$out_dir/a.sock
a_data=$out_dir/a.data
a_log=$out_dir/a.log
b_sock=$out_dir/b.sock
b_data=$out_dir/b.data
b_log=$out_dir/b.log

start_ngx origin
start_ngx reference
origin_base=http://127.0.0.1:${ngx_port[origin]}
ref_base=http://127.0.0.1:${ngx_port[reference]}
for name in origin reference; do
	for f in file p8; do
		[[ -e $src_dir/www/$f ]] || continue
		code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${ngx_port[$name]}/$f?check") ||
			fail "curl nginx $name failed" "$out_dir/nginx-$name/error.log"
		[[ $code == 200 ]] || fail "nginx $name answered $code for /$f" "$out_dir/nginx-$name/error.log"
	done
done

# start_parent: A with a peer listener on a free port, read from its log line.
start_parent() {
	local line
	: >"$a_log"
	# shellcheck disable=SC2086 # PARENT_ARGS: words on purpose
	"$ringflyd" --socket "$a_sock" --data-dir "$a_data" --listen-peer 127.0.0.1:0 \
		--log-level info ${PARENT_ARGS:-} 2>>"$a_log" &
	a_pid=$!
	wait_health "$ringfly" "$a_sock" "$a_pid" "$a_log"
	line=$(wait_line "$a_log" 'listening peer=127\.0\.0\.1:0 port=[0-9]+' 5) ||
		fail "no 'listening peer=... port=N' line from ringflyd" "$a_log"
	a_addr=127.0.0.1:$(field "$line" port)
}
start_parent

# fill URL: A downloads URL from the origin into its cache; prints the task id.
fill() {
	local out
	out=$("$ringfly" --socket "$a_sock" get "$1" -O /dev/null --no-progress 2>&1) ||
		fail "parent fill of $1 failed: $out" "$a_log"
	[[ $out =~ from\ origin,\ task\ ([0-9a-f]{64}) ]] || fail "parent fill of $1 said: $out"
	printf '%s\n' "${BASH_REMATCH[1]}"
}
fill_a_cpu0=$(proc_cpu "$a_pid")
url=$origin_base/file
p8_url=$origin_base/p8
task=
p8_task=
part p1 && task=$(fill "$url")
part p8 && p8_task=$(fill "$p8_url")
fill_a_hwm=$(hwm_mib "$a_pid")
fill_a_rss=$(awk '/^VmRSS/ { printf "%.0f\n", $2 / 1024 }' "/proc/$a_pid/status")
fill_a_cpu=$(minus "$(proc_cpu "$a_pid")" "$fill_a_cpu0")
# The origin goes away: from here on every ringfly byte comes from A.
origin_sent=$(awk '{ b += $10 } END { printf "%.0f\n", b }' "$out_dir/nginx-origin/access.log")
stop_pid "${ngx_pid[origin]}"
ngx_pid[origin]=
if port_listening "${ngx_port[origin]}"; then
	fail "port ${ngx_port[origin]} still answers after the origin nginx stopped"
fi
sync
# A restarts on its data dir: the parent under test is a seed that found both tasks complete
# in its cache, and its peak RSS is the serving path's, not the origin fill's (printed apart).
if [[ ${PARENT_RESTART:-1} == 1 ]]; then
	stop_pid "$a_pid"
	start_parent
fi

# ---------------------------------------------------------------------------------------
# Results: per part and contender, space-separated samples.
# ---------------------------------------------------------------------------------------
declare -A all_gbps all_cpu warm_gbps warm_cpu
a_hwm_max=0
b_hwm_max=0
p8_a_hwm_max=0
run_no=0

timefile=$out_dir/run.time
runlog=$out_dir/run.stderr

# --- P1/P2 contenders: each sets r_secs r_cpu r_note (r_gbps if not SIZE/r_secs).

run_ringfly() {
	local a0 a1 b0 b1 b_get wall user sys rc=0 done_line got out
	rm -rf "$b_data"
	: >"$b_log"
	# shellcheck disable=SC2086 # CHILD_ARGS: words on purpose
	"$ringflyd" --socket "$b_sock" --data-dir "$b_data" --log-level info ${CHILD_ARGS:-} \
		2>>"$b_log" &
	b_pid=$!
	wait_health "$ringfly" "$b_sock" "$b_pid" "$b_log"
	if port_listening "${ngx_port[origin]}"; then
		fail "something listens on the origin's port ${ngx_port[origin]}"
	fi
	sync
	prewarm "$src_dir" "$prewarm_mib"
	hwm_reset "$a_pid"
	a0=$(proc_cpu "$a_pid") || fail "parent ringflyd is gone" "$a_log"
	b0=$(proc_cpu "$b_pid") || fail "child ringflyd is gone" "$b_log"
	: >"$runlog"
	local TIMEFORMAT='%3R %3U %3S' h0
	h0=$(host_times)
	{ time "$ringfly" --socket "$b_sock" get "$url" -O /dev/null --no-progress \
		--parent "$a_addr" >/dev/null 2>>"$runlog"; } 2>"$timefile" || rc=$?
	r_host=$(host_note "$h0" "$(host_times)")
	b_get=$(proc_cpu "$b_pid") || b_get=
	((rc == 0)) || fail "ringfly get from the parent: exit status $rc" "$runlog"
	[[ -n $b_get ]] || fail "child ringflyd is gone" "$b_log"
	read -r wall user sys <"$timefile"
	done_line=$(wait_line "$b_log" 'download done' 10) || fail "child: no 'download done' line" "$b_log"
	a1=$(proc_cpu "$a_pid") || fail "parent ringflyd is gone" "$a_log"
	b1=$(proc_cpu "$b_pid") || fail "child ringflyd is gone" "$b_log"
	[[ $(field "$done_line" source) == peer && $(field "$done_line" origin_bytes) == 0 &&
		$(field "$done_line" peer_bytes) == "$bytes" ]] ||
		fail "child: not all from the parent: $done_line" "$b_log"
	grep -q "from peers" "$runlog" || fail "ringfly's summary does not say 'from peers'" "$runlog"
	r_a_hwm=$(hwm_mib "$a_pid")
	r_b_hwm=$(hwm_mib "$b_pid")
	((r_a_hwm > a_hwm_max)) && a_hwm_max=$r_a_hwm
	((r_b_hwm > b_hwm_max)) && b_hwm_max=$r_b_hwm
	if ((round == 1)); then
		out=$out_dir/b.export
		"$ringfly" --socket "$b_sock" export "$task" -O "$out" >/dev/null 2>>"$runlog" ||
			fail "ringfly export from the child failed" "$runlog"
		cmp -s "$src" "$out" || fail "the child's cache differs from the source"
		rm -f "$out"
	fi
	stop_pid "$b_pid"
	b_pid=
	got=$(field "$done_line" ms)
	rm -rf "$b_data"
	r_secs=$wall
	r_cpu=$(awk -v a="$(minus "$a1" "$a0")" -v b="$(minus "$b1" "$b0")" -v u="$user" -v s="$sys" \
		'BEGIN { printf "%.3f\n", a + b + u + s }')
	r_note="parent $(minus "$a1" "$a0") + child $(minus "$b1" "$b0") ($(minus "$b_get" "$b0") to the get's end) CPU-s; daemon ${got} ms; RSS A ${r_a_hwm} B ${r_b_hwm} MiB; $r_host"
}

# run_ref [--crc] [--sync]
ref_crc=
run_ref() {
	local out=$out_dir/ref.out fifo=$out_dir/ref.fifo fd line result wall user sys rc=0
	rm -f "$out" "$fifo"
	mkfifo "$fifo"
	sync
	prewarm "$src_dir" "$prewarm_mib"
	: >"$runlog"
	"$receiver" --listen 127.0.0.1:0 --out "$out" --bytes "$bytes" --mode splice \
		--pipe-size 1048576 "$@" >"$fifo" 2>>"$runlog" &
	bg_pid=$!
	exec {fd}<"$fifo"
	read -r -t 30 -u "$fd" line || fail "ref receiver: no ready line" "$runlog"
	[[ $line == ready\ * ]] || fail "ref receiver said: $line" "$runlog"
	local TIMEFORMAT='%3R %3U %3S' h0
	h0=$(host_times)
	{ time "$sender" --connect "${line#ready }" --file "$src" 2>>"$runlog"; } 2>"$timefile" || rc=$?
	r_host=$(host_note "$h0" "$(host_times)")
	((rc == 0)) || fail "ref sender: exit status $rc" "$runlog"
	read -r wall user sys <"$timefile"
	read -r -t 60 -u "$fd" result || fail "ref receiver: no result line" "$runlog"
	exec {fd}<&-
	wait "$bg_pid" || fail "ref receiver: exit status $?" "$runlog"
	bg_pid=
	rm -f "$fifo"
	(($(stat -c %s "$out") == bytes)) || fail "ref: output is $(stat -c %s "$out") bytes"
	if ((round == 1)); then
		cmp -s "$src" "$out" || fail "ref: output differs from the source"
	fi
	rm -f "$out"
	[[ $result =~ seconds=([0-9.]+) ]] || fail "ref receiver: no seconds= in: $result"
	r_secs=${BASH_REMATCH[1]}
	[[ $result =~ user_s=([0-9.]+)\ sys_s=([0-9.]+) ]] || fail "ref receiver: no cpu in: $result"
	r_cpu=$(awk -v a="${BASH_REMATCH[1]}" -v b="${BASH_REMATCH[2]}" -v u="$user" -v s="$sys" \
		'BEGIN { printf "%.3f\n", a + b + u + s }')
	r_note="receiver $(add "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}") + sender $(add "$user" "$sys") CPU-s; $r_host"
	if [[ " $* " == *" --crc "* ]]; then
		# The same source every run: one crc32c, or the receiver checked the wrong bytes.
		[[ $result =~ crc32c=([0-9a-f]{8}) ]] || fail "ref receiver: no crc32c= in: $result"
		[[ -z $ref_crc || $ref_crc == "${BASH_REMATCH[1]}" ]] ||
			fail "ref receiver: crc32c ${BASH_REMATCH[1]}, an earlier run's was $ref_crc"
		ref_crc=${BASH_REMATCH[1]}
		r_note+="; crc32c $ref_crc"
	fi
}

run_curl() {
	local out=$out_dir/curl.out n0 n1 wall user sys rc=0 pid=${ngx_pid[reference]}
	rm -f "$out"
	sync
	prewarm "$src_dir" "$prewarm_mib"
	n0=$(proc_cpu "$pid")
	: >"$runlog"
	local TIMEFORMAT='%3R %3U %3S' h0
	h0=$(host_times)
	{ time curl -s -o "$out" "$ref_base/file?run=$run_no" 2>>"$runlog"; } 2>"$timefile" || rc=$?
	r_host=$(host_note "$h0" "$(host_times)")
	((rc == 0)) || fail "curl: exit status $rc" "$runlog"
	read -r wall user sys <"$timefile"
	n1=$(proc_cpu "$pid")
	(($(stat -c %s "$out") == bytes)) || fail "curl: output is $(stat -c %s "$out") bytes"
	if ((round == 1)); then
		cmp -s "$src" "$out" || fail "curl: output differs from the source"
	fi
	rm -f "$out"
	r_secs=$wall
	r_cpu=$(awk -v a="$(minus "$n1" "$n0")" -v u="$user" -v s="$sys" 'BEGIN { printf "%.3f\n", a + u + s }')
	r_note="curl $(add "$user" "$sys") + nginx $(minus "$n1" "$n0") CPU-s; $r_host"
}

# json_get FILE SECTION KEY: a number from iperf3's pretty-printed JSON, in the "end" object.
json_get() {
	awk -v sec="\"$2\":" -v key="\"$3\":" '
		/"end":/ { in_end = 1 }
		in_end && index($0, sec) { in_sec = 1; next }
		in_sec && index($0, key) { v = $2; sub(/,$/, "", v); print v; exit }
		in_sec && /}/ { in_sec = 0 }' "$1"
}

run_iperf3() {
	local json=$out_dir/iperf3.json port bps sent_s recv_s host remote rc=0 deadline try
	sync
	prewarm "$src_dir" "$prewarm_mib"
	: >"$runlog"
	for try in 1 2 3 4 5 6 7 8; do
		port=$(random_port "$port_low" "$port_count")
		iperf3 -s -1 -p "$port" -B 127.0.0.1 >/dev/null 2>>"$runlog" &
		bg_pid=$!
		# Not a connect probe: the one-off server would take it for its one test.
		deadline=$((SECONDS + 5))
		until ss -Hltn "sport = :$port" | grep -q .; do
			kill -0 "$bg_pid" 2>/dev/null || break
			((SECONDS < deadline)) || fail "iperf3 server not listening after 5 s" "$runlog"
			sleep 0.01
		done
		kill -0 "$bg_pid" 2>/dev/null && break
		wait "$bg_pid" 2>/dev/null || true # port taken: try another
		bg_pid=
		((try < 8)) || fail "iperf3 server did not start" "$runlog"
	done
	local h0
	h0=$(host_times)
	iperf3 -c 127.0.0.1 -p "$port" -Z -n "$bytes" -J >"$json" 2>>"$runlog" || rc=$?
	r_host=$(host_note "$h0" "$(host_times)")
	((rc == 0)) || fail "iperf3 client: exit status $rc" "$json"
	wait "$bg_pid" || fail "iperf3 server: exit status $?" "$runlog"
	bg_pid=
	bps=$(json_get "$json" sum_received bits_per_second)
	recv_s=$(json_get "$json" sum_received seconds)
	sent_s=$(json_get "$json" sum_sent seconds)
	host=$(json_get "$json" cpu_utilization_percent host_total)
	remote=$(json_get "$json" cpu_utilization_percent remote_total)
	[[ -n $bps && -n $host && -n $remote ]] || fail "iperf3: cannot read its JSON" "$json"
	r_gbps=$(awk -v b="$bps" 'BEGIN { printf "%.3f\n", b / 8e9 }')
	r_secs=$recv_s
	r_cpu=$(awk -v h="$host" -v r="$remote" -v s="$sent_s" -v t="$recv_s" \
		'BEGIN { printf "%.3f\n", h / 100 * s + r / 100 * t }')
	r_note="client $(awk -v h="$host" -v s="$sent_s" 'BEGIN { printf "%.3f", h / 100 * s }') + server $(awk -v r="$remote" -v t="$recv_s" 'BEGIN { printf "%.3f", r / 100 * t }') CPU-s; $r_host"
}

# --- P8 contenders: each sets r_gbps r_secs r_cpu (server) r_ccpu (client) r_note.

run_p8() {
	local name=$1 pid c0 c1 result rc=0
	local -a cmd=("$p8_client" --conns "$p8_conns" --expect "$p8_bytes")
	[[ $p8_discard == copy ]] && cmd+=(--copy)
	if [[ $name == ringfly ]]; then
		pid=$a_pid
		cmd+=(--peer "$a_addr" --task "$p8_task" --window "$p8_window")
		hwm_reset "$a_pid"
	else
		pid=${ngx_pid[reference]}
		cmd+=(--http "127.0.0.1:${ngx_port[reference]}" --path /p8)
	fi
	: >"$runlog"
	c0=$(proc_cpu "$pid")
	result=$("${cmd[@]}" 2>>"$runlog") || rc=$?
	((rc == 0)) || fail "p8 client ($name): exit status $rc" "$runlog"
	c1=$(proc_cpu "$pid")
	[[ $result =~ seconds=([0-9.]+) ]] || fail "p8 client: no seconds= in: $result"
	r_secs=$(printf '%.3f' "${BASH_REMATCH[1]}")
	[[ $result =~ gb_per_s=([0-9.]+) ]] || fail "p8 client: no gb_per_s= in: $result"
	r_gbps=${BASH_REMATCH[1]}
	[[ $result =~ cpu_s_per_gib=([0-9.]+) ]] || fail "p8 client: no cpu in: $result"
	r_ccpu=${BASH_REMATCH[1]}
	r_cpu=$(per_gib "$(minus "$c1" "$c0")" "$((p8_bytes * p8_conns))")
	[[ $result =~ first_done_s=([0-9.]+)\ median_done_s=([0-9.]+) ]] ||
		fail "p8 client: no first_done_s= in: $result"
	r_note="conns done first ${BASH_REMATCH[1]} s, median ${BASH_REMATCH[2]} s"
	if [[ $name == ringfly ]]; then
		r_a_hwm=$(hwm_mib "$a_pid")
		((r_a_hwm > p8_a_hwm_max)) && p8_a_hwm_max=$r_a_hwm
		r_note+="; RSS A $r_a_hwm MiB"
	fi
}

# ---------------------------------------------------------------------------------------

echo "ringfly bench/p2p: $runs rounds; parts: $parts"
echo "  ringflyd: $("$ringflyd" --version 2>&1 | head -n 1); parent A at $a_addr, data dir $a_data"
echo "            ($(df --output=source,fstype "$out_dir" | tail -n 1 | tr -s ' ')); A's fill from the origin:"
echo "            $fill_a_cpu CPU-s, peak RSS $fill_a_hwm MiB (RSS $fill_a_rss MiB after it); origin sent $origin_sent bytes,"
echo "            then stopped$( [[ ${PARENT_RESTART:-1} == 1 ]] && echo "; A restarted on its data dir (PARENT_RESTART=1)")"
echo "  sources:  $src_dir/www ($(df --output=fstype "$src_dir" | tail -n 1), in memory);" \
	"reference nginx $("$nginx_bin" -v 2>&1 | sed 's/.*nginx\///') at $ref_base, sendfile on"
if ((prewarm_mib > 0)); then
	echo "  prewarm:  $prewarm_mib MiB written and removed on $src_parent before every P1 run"
fi
((hwm_reset_ok)) || echo "  note: cannot reset A's VmHWM (/proc/PID/clear_refs): A's RSS is its lifetime peak"
echo

if ((${#p1_names[@]})); then
	echo "P1/P2: $size_mib MiB parent -> child (ringfly: A -> new child B's cache, -O /dev/null)"
	echo "  ringfly: ringfly --socket B get URL -O /dev/null --no-progress --parent $a_addr"
	if [[ -n ${CHILD_ARGS:-}${PARENT_ARGS:-} ]]; then
		echo "           child B args: ${CHILD_ARGS:-none}; parent A args: ${PARENT_ARGS:-none}"
	fi
	echo "  ref:     ringfly-ref-sender (sendfile) -> ringfly-ref-receiver --mode splice (1 MiB pipe) -> new file"
	echo "  ref-crc: the same + every 1 MiB read back and crc32c'd (what ringfly's child checks)"
	echo "  ref-sync: the same + fdatasync at the end (ringfly's child syncs after its get returns)"
	echo "  curl:    nginx (sendfile) -> curl -s -o FILE (new file)"
	echo "  iperf3:  iperf3 -c 127.0.0.1 -Z -n $bytes (one stream, nothing written)"
	echo "  GB/s = 10^9 B/s; CPU-s/GiB = sender + receiver side together (ringfly: A + B + CLI)"
	echo
	printf "%4s %6s  %-8s %-5s %8s %10s %8s  %s\n" run round contender state GB/s CPU-s/GiB seconds ""
	run_no=0
	for ((round = 1; round <= runs; round++)); do
		for name in "${p1_names[@]}"; do
			r_gbps=
			case $name in
			ringfly) run_ringfly ;;
			ref) run_ref ;;
			ref-crc) run_ref --crc ;;
			ref-sync) run_ref --sync ;;
			curl) run_curl ;;
			iperf3) run_iperf3 ;;
			esac
			[[ -n $r_gbps ]] || r_gbps=$(gbps_of "$r_secs" "$bytes")
			run_no=$((run_no + 1))
			state=warm
			((run_no == 1)) && state=cold
			r_cpu=$(per_gib "$r_cpu" "$bytes")
			r_secs=$(printf '%.3f' "$r_secs")
			printf "%4d %6d  %-8s %-5s %8s %10s %8s  %s\n" "$run_no" "$round" "$name" "$state" \
				"$r_gbps" "$r_cpu" "$r_secs" "$r_note"
			record "p1 $name" "$state" "$r_gbps" "$r_cpu"
		done
	done
	echo
fi

if ((${#p8_names[@]})); then
	echo "P8: $p8_mib MiB task to $p8_conns concurrent connections ($(((p8_bytes * p8_conns) >> 20)) MiB per run)"
	echo "  ringfly: parent A, peer protocol (SyncPieces, GetPiece window $p8_window)"
	echo "  nginx:   $nginx_workers worker process(es), sendfile on, HTTP/1.1 GET keep-alive"
	echo "  client:  ringfly-bench-p8-client, one epoll loop, payload discarded by $p8_discard"
	echo "  GB/s = all bytes / time to the last byte; server and client CPU-s per GiB moved"
	echo
	printf "%4s %6s  %-8s %-5s %8s %10s %10s %8s  %s\n" run round server state GB/s \
		server-CPU client-CPU seconds ""
	run_no=0
	for ((round = 1; round <= runs; round++)); do
		for name in "${p8_names[@]}"; do
			run_p8 "$name"
			run_no=$((run_no + 1))
			state=warm
			((run_no == 1)) && state=cold
			printf "%4d %6d  %-8s %-5s %8s %10s %10s %8s  %s\n" "$run_no" "$round" "$name" \
				"$state" "$r_gbps" "$r_cpu" "$r_ccpu" "$r_secs" "$r_note"
			record "p8 $name" "$state" "$r_gbps" "$r_cpu"
			record "p8c $name" "$state" "$r_gbps" "$r_ccpu"
		done
	done
	echo
fi

# ---------------------------------------------------------------------------------------
# Summary.
# ---------------------------------------------------------------------------------------
echo "medians (run 1 of each part is labelled cold: first-touch memory, PLATFORM.md)"
printf "  %-22s %8s %10s   %14s %19s\n" "" GB/s CPU-s/GiB "warm-only GB/s" "warm-only CPU-s/GiB"
for key in "${p1_names[@]/#/p1 }" "${p8_names[@]/#/p8 }" "${p8_names[@]/#/p8c }"; do
	[[ -n ${all_gbps[$key]:-} ]] || continue
	case $key in
	"p1 ringfly") label="P1 ringfly A->B" ;;
	"p1 ref") label="P1 ref pair" ;;
	"p1 ref-crc") label="P1 ref pair + crc" ;;
	"p1 ref-sync") label="P1 ref pair + sync" ;;
	"p1 curl") label="P1 nginx+curl" ;;
	"p1 iperf3") label="P2 iperf3 -Z" ;;
	"p8 ringfly") label="P8 ringfly (server)" ;;
	"p8 nginx") label="P8 nginx (server)" ;;
	"p8c ringfly") label="P8 ringfly (client)" ;;
	"p8c nginx") label="P8 nginx (client)" ;;
	esac
	printf "  %-22s %8s %10s   %14s %19s\n" "$label" \
		"$(median "${all_gbps[$key]}")" "$(median "${all_cpu[$key]}")" \
		"$(median "${warm_gbps[$key]:-}")" "$(median "${warm_cpu[$key]:-}")"
done

# target LABEL WHAT NUM DEN OP TARGET: WHAT is gbps or cpu.
target() {
	local label=$1 what=$2 num=$3 den=$4 op=$5 t=$6 all warm basis
	[[ -n ${all_gbps[$num]:-} && -n ${all_gbps[$den]:-} ]] || return 0
	if [[ $what == gbps ]]; then
		all=$(ratio "${all_gbps[$num]}" "${all_gbps[$den]}")
		warm=$(ratio "${warm_gbps[$num]:-}" "${warm_gbps[$den]:-}")
	else
		all=$(ratio "${all_cpu[$num]}" "${all_cpu[$den]}")
		warm=$(ratio "${warm_cpu[$num]:-}" "${warm_cpu[$den]:-}")
	fi
	basis=$warm
	[[ $basis == - ]] && basis=$all
	if [[ $t == - ]]; then
		printf "  %-40s %8s %10s   %s\n" "$label" "${all}x" "${warm}x" "(no target)"
		return 0
	fi
	printf "  %-40s %8s %10s   %2s %-5s %s\n" "$label" "${all}x" "${warm}x" "$op" "${t}x" \
		"$(verdict "$basis" "$op" "$t")"
}

echo
echo "ratio = ours / reference (medians; verdict on warm-only)"
printf "  %-40s %8s %10s   %s\n" "" all warm-only target
target "P1 GB/s ringfly / ref pair" gbps "p1 ringfly" "p1 ref" ">=" 0.8
target "P1 GB/s ringfly / ref pair + crc32c" gbps "p1 ringfly" "p1 ref-crc" ">=" -
target "P1 GB/s ringfly / ref pair + fdatasync" gbps "p1 ringfly" "p1 ref-sync" ">=" -
target "P1 GB/s ringfly / nginx+curl" gbps "p1 ringfly" "p1 curl" ">=" 3
target "P1 CPU-s/GiB ringfly (A+B) / ref pair" cpu "p1 ringfly" "p1 ref" "<=" 1.5
target "P1 CPU-s/GiB ringfly (A+B) / nginx+curl" cpu "p1 ringfly" "p1 curl" "<=" -
target "P2 GB/s ringfly / iperf3 -Z" gbps "p1 ringfly" "p1 iperf3" ">=" 0.8
target "P2 CPU-s/GiB ringfly (A+B) / iperf3 -Z" cpu "p1 ringfly" "p1 iperf3" "<=" -
target "P8 GB/s ringfly / nginx" gbps "p8 ringfly" "p8 nginx" ">=" 1.0
target "P8 server CPU-s/GiB ringfly / nginx" cpu "p8 ringfly" "p8 nginx" "<=" -
target "P8 client CPU-s/GiB peer / http" cpu "p8c ringfly" "p8c nginx" "<=" -
if [[ -n ${all_gbps[p1 ringfly]:-} ]]; then
	printf "  %-40s %8s %10s   %2s %-5s %s\n" "P1 peak RSS parent A (max of runs)" "$a_hwm_max MiB" "" \
		"<=" "64MiB" "$( ((a_hwm_max <= 64)) && echo PASS || echo SHORT)"
	printf "  %-40s %8s %10s   %2s %-5s %s\n" "P1 peak RSS child B (max of runs)" "$b_hwm_max MiB" "" \
		"<=" "64MiB" "$( ((b_hwm_max <= 64)) && echo PASS || echo SHORT)"
fi
if [[ -n ${all_gbps[p8 ringfly]:-} ]]; then
	printf "  %-40s %8s %10s   %2s %-5s %s\n" "P8 peak RSS parent A (max of runs)" "$p8_a_hwm_max MiB" "" \
		"<=" "64MiB" "$( ((p8_a_hwm_max <= 64)) && echo PASS || echo SHORT)"
fi
echo
echo "note: caches warm (never dropped; sources on tmpfs, A's cache in the page cache); every"
echo "P1 run writes a new file (B's cache, ref's and curl's outputs), removed after the run."
