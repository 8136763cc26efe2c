#!/usr/bin/env bash
# Back-to-source benchmark: a 1 GiB file from nginx on loopback into a new file,
# `ringfly get` against curl, aria2c -x8 and curl -o /dev/null.
#
# Usage: bench/origin/run.sh [BUILD_DIR]   (or $BUILD_DIR; default: build/release under the repo root)
# Env:   RUNS (default 5)       rounds; every round runs each contender once, in turn
#        SIZE_MIB (1024)        size of the served file, in MiB
#        PARALLEL               passed to `ringfly get --parallel N` (unset: ringfly's default)
#        DAEMON_ARGS            extra ringflyd arguments, split on spaces (e.g. "--config F")
#        CONTENDERS             space-separated names to run (default: all), out of
#                               "ringfly curl aria2c curl-null"
#        OUT_PARENT (/tmp)      where the output files and ringflyd's data dir go (the root
#                               disk on the project VM; one filesystem for all contenders)
#        SRC_PARENT (/dev/shm)  where nginx's docroot with the random file goes
#        DROP_CACHES=1          optional, root only: `sync; echo 1 > /proc/sys/vm/drop_caches`
#                               before every run (every run then counts as cold; the served
#                               file stays in memory, it is on tmpfs)
#        RINGFLY_CACHE (keep)   keep: one ringflyd for all runs, whose cache keeps every
#                               run's task (the page cache grows by SIZE per ringfly run);
#                               fresh: before each ringfly run, stop ringflyd, remove its data
#                               dir (as the other tools' outputs are removed) and start a new
#                               one, so ringfly writes into recycled memory like the others
#        PREWARM_MIB (0)        before every run (untimed) write this many MiB to a file on
#                               SRC_PARENT and remove it, so that the run's new page cache
#                               comes from memory touched a moment ago (see "Memory" below)
#        PREWARM_HOLD (0)       1: that file is kept through the timed run and shrunk as the
#                               run's page cache grows (bench/common/reservoir.py), so the
#                               run writes into memory freed a moment before to its end
#        KEEP=1                 keep the temp dirs (logs: nginx, ringflyd, each run's stderr)
#
# Builds nothing: it needs BUILD_DIR/ringfly and BUILD_DIR/ringflyd (only when the
# ringfly contender runs), e.g. from
#   cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release && cmake --build build/release
# and nginx, curl and aria2c (scripts/setup.sh installs nginx-light and curl; without
# aria2c its contender is skipped with a note).
#
# Contenders (each run a new output file in one temp dir under OUT_PARENT, removed after
# its run and followed by an untimed sync):
#   ringfly     ringfly get URL?run=N -O FILE --no-progress [--parallel P], against a
#               ringflyd this script starts (own socket and data dir in the temp dir). The
#               task id includes the query string, so every run is a new task: a real
#               origin download, never a cache hit (checked: the summary line must say
#               "from origin" and nginx's access log must show the bytes sent).
#   curl        curl -s -o FILE URL?run=N
#   aria2c      aria2c -q -x8 -s8 --file-allocation=falloc -d DIR -o NAME URL?run=N
#   curl-null   curl -s -o /dev/null URL?run=N: nginx -> loopback -> a client that writes
#               nothing, the network-only limit of this origin
# nginx (one process: daemon off, master_process off, sendfile on) serves the file from
# tmpfs, so it is in memory for sure and the origin reads no disk.
#
# Measured: wall time and CPU (user+sys) of the tool, through bash's `time` (getrusage of
# the children). For ringfly the CPU is the CLI's plus ringflyd's, the daemon's read from
# /proc/PID/stat (utime+stime, all its threads, io-wq workers included) before the run and
# after its output was verified (so work the daemon finishes after the CLI returned counts
# too). nginx's CPU per run is shown apart (origin CPU-s/GiB): it is nobody's cost but
# tells how hard each client makes the origin work.
# GB/s = 10^9 B / wall second; CPU-s/GiB = CPU seconds / (bytes / 2^30).
# Every output is checked untimed: size, and sha256 against the source's (curl-null: the
# byte count curl reports). A broken download fails the benchmark.
#
# Cold and warm: the very first run of the invocation is labelled cold (first-touch memory
# on this VM is slow, PLATFORM.md: the first GiB of new page cache can run at 0.3-0.5 GB/s
# for any tool); the summary gives medians of all runs and of warm runs only, and the
# verdicts use warm-only medians. With DROP_CACHES=1 all runs are cold.
# Memory: ringfly writes each piece twice, into its cache and into FILE. With
# RINGFLY_CACHE=keep its cache keeps every run's task while the other tools' files are
# removed after each run, so the page cache grows by SIZE per ringfly run and that SIZE is
# memory the VM has not handed out recently: on this VM such first-touch writes cost
# 1.3-2.5 s of sys CPU per GiB (dd into new files kept: 1.26, 2.22, 2.51, 2.55 s/GiB) against
# about 0.3 s/GiB into recycled memory (dd into a file removed after each run).
# RINGFLY_CACHE=fresh removes ringfly's cache too, like the other outputs. Memory freed is
# handed back to the host about 2 s later (virtio-balloon free page reporting), so even
# recycled memory is first-touch again if the run starts later than that: PREWARM_MIB=N
# writes and removes N MiB on tmpfs just before each run (dd into new kept files: 2.6 s/GiB
# after 3 s idle, 0.3-1.0 s/GiB right after a 3 GiB prewarm).
# Wall times on the shared 2-core VM vary 2-3x: compare medians from the same invocation.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
. "$root/bench/common/lib.sh"
build=${1:-${BUILD_DIR:-$root/build/release}}
runs=${RUNS:-5}
size_mib=${SIZE_MIB:-1024}
bytes=$((size_mib * 1024 * 1024))
parallel=${PARALLEL:-}
ringfly=$build/ringfly
ringflyd=$build/ringflyd

names=()
if want ringfly; then
	require_built "$root" "$build" '(or leave ringfly out: CONTENDERS="curl aria2c curl-null")' \
		"$ringfly" "$ringflyd"
	names+=(ringfly)
fi
if [[ ! -x $nginx_bin ]]; then
	echo "run.sh: nginx not found (scripts/setup.sh installs nginx-light)" >&2
	exit 1
fi
if want curl || want curl-null; then
	command -v curl >/dev/null || { echo "run.sh: curl not found (scripts/setup.sh)" >&2; exit 1; }
fi
want curl && names+=(curl)
if want aria2c; then
	if command -v aria2c >/dev/null; then
		names+=(aria2c)
	else
		echo "run.sh: aria2c not found (apt-get install aria2); skipping the aria2c contender" >&2
	fi
fi
want curl-null && names+=(curl-null)
if ((${#names[@]} == 0)); then
	echo "run.sh: no contender left to run (CONTENDERS=${CONTENDERS:-})" >&2
	exit 1
fi
if [[ ${DROP_CACHES:-0} == 1 && ! -w /proc/sys/vm/drop_caches ]]; then
	echo "run.sh: DROP_CACHES=1 needs root (/proc/sys/vm/drop_caches not writable)" >&2
	exit 1
fi

out_dir=$(mktemp -d "${OUT_PARENT:-/tmp}/ringfly-bench-origin.XXXXXX")
chmod 755 "$out_dir"
src_dir=
daemon_pid=
cleanup() { bench_cleanup "$out_dir" "$src_dir" "$daemon_pid" "$nginx_pid"; }
trap cleanup EXIT

# Room: the source on SRC_PARENT; on OUT_PARENT one output at a time plus ringfly's cache,
# which keeps every ringfly run's task.
src_parent=${SRC_PARENT:-/dev/shm}
if (($(avail "$src_parent") < bytes + (256 << 20))); then
	echo "run.sh: $src_parent has no room for the source; using $out_dir" >&2
	src_parent=$out_dir
fi
need=$((bytes * 2 + (512 << 20)))
if want ringfly && [[ ${RINGFLY_CACHE:-keep} == keep ]]; then
	need=$((need + bytes * runs))
fi
if (($(avail "$out_dir") < need)); then
	fail "$out_dir: need $((need >> 20)) MiB free (outputs + ringfly's cache), have $(($(avail "$out_dir") >> 20))"
fi

src_dir=$(mktemp -d "$src_parent/ringfly-bench-origin-src.XXXXXX")
chmod 755 "$src_dir"
mkdir -m 755 "$src_dir/www"
src=$src_dir/www/file
head -c "$bytes" /dev/urandom >"$src"
chmod 644 "$src"
src_sha=$(sha256sum "$src" | cut -d' ' -f1)

# ---------------------------------------------------------------------------------------
# nginx on a free loopback port, in out_dir/nginx (its conf, pid, logs, temp paths).
# ---------------------------------------------------------------------------------------
ngx=$out_dir/nginx
access_log=$ngx/access.log
start_nginx nginx "$ngx" "$src_dir/www" "daemon off; master_process off;" 1024 "" 20000 40000
base_url=http://127.0.0.1:$nginx_port/file
# One untimed GET checks that nginx serves the file (403 if a directory is not 755).
code=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$base_url?check") ||
	fail "curl $base_url failed" "$ngx/error.log"
[[ $code == "200 $bytes" ]] || fail "nginx answered '$code' for $base_url, not '200 $bytes'" "$ngx/error.log"

# ---------------------------------------------------------------------------------------
# ringflyd, own socket and data dir.
# ---------------------------------------------------------------------------------------
socket=$out_dir/ringflyd.sock
data_dir=$out_dir/data
daemon_log=$out_dir/ringflyd.log
peak_rss_kib=0
start_daemon() {
	# shellcheck disable=SC2086 # DAEMON_ARGS is a list of words
	"$ringflyd" --socket "$socket" --data-dir "$data_dir" --log-level info ${DAEMON_ARGS:-} \
		2>>"$daemon_log" &
	daemon_pid=$!
	wait_health "$ringfly" "$socket" "$daemon_pid" "$daemon_log"
}
# note_rss: keep the largest VmHWM (peak RSS) of the daemons seen so far.
note_rss() {
	local kib
	kib=$(awk '/^VmHWM/ { print $2 }' "/proc/$daemon_pid/status")
	((kib > peak_rss_kib)) && peak_rss_kib=$kib
	return 0
}
# RINGFLY_CACHE=fresh: before each ringfly run, stop the daemon, remove its data dir (the
# previous run's cached task, as the other tools' outputs are removed) and start a new one.
fresh_daemon() {
	note_rss
	kill -TERM "$daemon_pid"
	wait "$daemon_pid" 2>/dev/null || true
	rm -rf "$data_dir"
	sync
	start_daemon
}
prewarm_mib=${PREWARM_MIB:-0}
ringfly_cache=${RINGFLY_CACHE:-keep}
[[ $ringfly_cache == keep || $ringfly_cache == fresh ]] ||
	fail "RINGFLY_CACHE must be keep or fresh, not '$ringfly_cache'"
if want ringfly; then
	start_daemon
fi

# Bytes nginx logged as sent (10th field of the default log format) in lines after LINE.
origin_bytes_after() {
	awk -v from="$1" 'NR > from { b += $10 } END { printf "%.0f\n", b }' "$access_log"
}

# ---------------------------------------------------------------------------------------
# One run.
# ---------------------------------------------------------------------------------------
declare -A all_gbps all_cpu warm_gbps warm_cpu all_ocpu
name_w=10
run_no=0
runlog=$out_dir/run.stderr
timefile=$out_dir/run.time

run_one() {
	local name=$1 out=$out_dir/out.$1 url="$base_url?run=$((run_no + 1))&tool=$1"
	local -a cmd
	local wall user sys d0=0 d1=0 n0 n1 log_lines ob deadline size sum state gbps cpu_gib
	local ocpu_gib note="" got
	case $name in
	ringfly)
		cmd=("$ringfly" --socket "$socket" get "$url" -O "$out" --no-progress)
		[[ -n $parallel ]] && cmd+=(--parallel "$parallel")
		;;
	curl) cmd=(curl -s -o "$out" "$url") ;;
	aria2c)
		cmd=(aria2c -q -x8 -s8 --file-allocation=falloc --allow-overwrite=true
			--auto-file-renaming=false -d "$out_dir" -o "out.$name" "$url")
		;;
	curl-null) cmd=(curl -s -o /dev/null -w '%{size_download}\n' "$url") ;;
	esac
	rm -f "$out"
	if [[ $name == ringfly && $ringfly_cache == fresh && $run_no -gt 0 ]]; then
		fresh_daemon
	fi
	sync
	if [[ ${DROP_CACHES:-0} == 1 ]]; then
		echo 1 >/proc/sys/vm/drop_caches
	fi
	prewarm "$src_dir" "$prewarm_mib"
	log_lines=$(wc -l <"$access_log")
	if [[ $name == ringfly ]]; then
		d0=$(proc_cpu "$daemon_pid") || fail "ringflyd is gone" "$daemon_log"
	fi
	n0=$(proc_cpu "$nginx_pid")
	: >"$runlog"

	local TIMEFORMAT='%3R %3U %3S' rc=0
	{ time "${cmd[@]}" >"$out_dir/run.stdout" 2>>"$runlog"; } 2>"$timefile" || rc=$?
	prewarm_end
	((rc == 0)) || fail "$name: exit status $rc: ${cmd[*]}" "$runlog"
	read -r wall user sys <"$timefile"

	# Untimed checks: the whole file arrived, intact, and came from the origin.
	if [[ $name == curl-null ]]; then
		got=$(<"$out_dir/run.stdout")
		[[ $got == "$bytes" ]] || fail "$name: received $got bytes, not $bytes"
	else
		[[ -f $out ]] || fail "$name: no output file $out" "$runlog"
		size=$(stat -c %s "$out")
		((size == bytes)) || fail "$name: output is $size bytes, not $bytes" "$runlog"
		sum=$(sha256sum "$out" | cut -d' ' -f1)
		[[ $sum == "$src_sha" ]] || fail "$name: output's sha256 $sum differs from the source's $src_sha"
	fi
	if [[ $name == ringfly ]]; then
		grep -q "from origin" "$runlog" ||
			fail "$name: the summary line does not say 'from origin'" "$runlog"
	fi
	# nginx logs a request when it finalizes it, which can be a moment after the client
	# read the last byte.
	deadline=$((SECONDS + 3))
	while ob=$(origin_bytes_after "$log_lines"); ((ob < bytes)); do
		((SECONDS < deadline)) || fail "$name: nginx logged only $ob bytes sent for the run" "$access_log"
		sleep 0.02
	done
	if [[ $name == ringfly ]]; then
		d1=$(proc_cpu "$daemon_pid") || fail "ringflyd is gone" "$daemon_log"
		note=$(awk -v c="$user" -v s="$sys" -v a="$d0" -v b="$d1" \
			'BEGIN { printf "cli %.2f + daemon %.2f CPU-s", c + s, b - a }')
		# The rate ringfly's own summary line reports, for comparison with the wall time.
		if [[ $(<"$runlog") =~ \(([0-9.]+\ [GMk]?B/s)\)\ from\ origin ]]; then
			note+="; says ${BASH_REMATCH[1]}"
		fi
	fi
	n1=$(proc_cpu "$nginx_pid")
	if ((ob > bytes + (1 << 20))); then
		note+="${note:+; }origin sent $ob bytes"
	fi
	rm -f "$out"

	run_no=$((run_no + 1))
	state=warm
	if ((run_no == 1)) || [[ ${DROP_CACHES:-0} == 1 ]]; then
		state=cold
	fi
	read -r gbps cpu_gib ocpu_gib < <(awk -v w="$wall" -v u="$user" -v s="$sys" -v a="$d0" \
		-v b="$d1" -v n0="$n0" -v n1="$n1" -v B="$bytes" 'BEGIN {
		gib = B / 2^30
		printf "%.3f %.3f %.3f\n", B / w / 1e9, (u + s + b - a) / gib, (n1 - n0) / gib }')
	printf "%4d %6d  %-${name_w}s %-5s %8s %10s %8s %10s  %s\n" "$run_no" "$round" "$name" \
		"$state" "$gbps" "$cpu_gib" "$wall" "$ocpu_gib" "$note"
	record "$name" "$state" "$gbps" "$cpu_gib"
	all_ocpu[$name]+=" $ocpu_gib"
}

# ---------------------------------------------------------------------------------------

echo "ringfly bench/origin: $size_mib MiB from nginx on loopback into a new file, $runs rounds"
echo "  origin: nginx $("$nginx_bin" -v 2>&1 | sed 's/.*nginx\///') (1 process, sendfile on) at $base_url"
echo "          serving $src ($(df --output=fstype "$src_dir" | tail -n 1), in memory)"
echo "  output: $out_dir ($(df --output=source,fstype "$out_dir" | tail -n 1 | tr -s ' '))"
if want ringfly; then
	echo "  ringfly: $ringfly get URL -O FILE --no-progress${parallel:+ --parallel $parallel}"
	if [[ $ringfly_cache == keep ]]; then
		echo "           one ringflyd for all runs: its cache keeps every run's task (RINGFLY_CACHE=keep)"
	else
		echo "           a new ringflyd with an empty data dir before each run (RINGFLY_CACHE=fresh)"
	fi
	echo "           $("$ringflyd" --version 2>&1 | head -n 1), data dir $data_dir${DAEMON_ARGS:+, args $DAEMON_ARGS}"
fi
echo "  curl:   $(curl --version | head -n 1 | cut -d' ' -f1-2), -s -o FILE; curl-null: -s -o /dev/null"
if [[ " ${names[*]} " == *" aria2c "* ]]; then
	echo "  aria2c: $(aria2c --version | head -n 1 | cut -d' ' -f3), -q -x8 -s8 --file-allocation=falloc"
fi
echo "  every URL gets ?run=N&tool=NAME (a new ringfly task each run); caches: $(
	[[ ${DROP_CACHES:-0} == 1 ]] && echo "dropped before every run" || echo "warm (not dropped)")$(
	((prewarm_mib > 0)) && echo ", $prewarm_mib MiB prewarm before every run$(
		[[ ${PREWARM_HOLD:-0} == 1 ]] && echo ", held through it")")"
echo "  GB/s = 10^9 B per wall second; CPU-s/GiB = the tool's user+sys (ringfly: CLI + ringflyd);"
echo "  origin CPU = nginx's, per GiB; every output is sha256-checked (untimed)"
echo
printf "%4s %6s  %-${name_w}s %-5s %8s %10s %8s %10s  %s\n" run round contender state GB/s \
	CPU-s/GiB seconds origin-CPU ""
for ((round = 1; round <= runs; round++)); do
	for name in "${names[@]}"; do
		run_one "$name"
	done
done

echo
echo "medians; run 1 is labelled cold: the first in the process tree, where first-touch memory"
echo "is slow on this VM (PLATFORM.md) unless other processes used the memory moments before"
printf "  %-${name_w}s %10s %12s   %14s %19s %12s\n" contender GB/s CPU-s/GiB "warm-only GB/s" \
	"warm-only CPU-s/GiB" "origin CPU"
for name in "${names[@]}"; do
	printf "  %-${name_w}s %10s %12s   %14s %19s %12s\n" "$name" \
		"$(median "${all_gbps[$name]}")" "$(median "${all_cpu[$name]}")" \
		"$(median "${warm_gbps[$name]:-}")" "$(median "${warm_cpu[$name]:-}")" \
		"$(median "${all_ocpu[$name]}")"
done

# target_line LABEL NUM DEN TARGET: throughput ratio of medians with the target's verdict
# (warm-only medians when there are warm runs, else all runs), and the CPU/GiB ratio.
target_line() {
	local label=$1 num=$2 den=$3 target=$4 g c wg wc basis
	if [[ -z ${all_gbps[$num]:-} || -z ${all_gbps[$den]:-} ]]; then
		return
	fi
	g=$(ratio "${all_gbps[$num]}" "${all_gbps[$den]}" x)
	c=$(ratio "${all_cpu[$num]}" "${all_cpu[$den]}" x)
	wg=$(ratio "${warm_gbps[$num]:-}" "${warm_gbps[$den]:-}" x)
	wc=$(ratio "${warm_cpu[$num]:-}" "${warm_cpu[$den]:-}" x)
	basis=$wg
	[[ $basis == - ]] && basis=$g
	printf '  %-28s %8s %10s   %14s %19s   >= %sx  %s\n' "$label" "$g" "$c" "$wg" "$wc" \
		"$target" "$(verdict "${basis%x}" ">=" "$target")"
}

if [[ -n ${all_gbps[ringfly]:-} ]]; then
	echo
	echo "ratio = ours / reference (medians); target on throughput, judged on warm-only medians"
	printf '  %-28s %8s %10s   %14s %19s   %s\n' "" GB/s CPU-s/GiB "warm-only GB/s" \
		"warm-only CPU-s/GiB" target
	target_line "ringfly / curl -o FILE" ringfly curl 2.5
	target_line "ringfly / aria2c -x8" ringfly aria2c 2.5
	target_line "ringfly / curl -o /dev/null" ringfly curl-null 0.6
	echo
	note_rss
	if [[ $ringfly_cache == keep ]]; then
		echo "  ringflyd: peak RSS $((peak_rss_kib / 1024)) MiB, cache $(du -sh "$data_dir" | cut -f1) after $runs ringfly runs"
	else
		echo "  ringflyd (a new one per run, RINGFLY_CACHE=fresh): largest peak RSS $((peak_rss_kib / 1024)) MiB"
	fi
fi
if [[ ${DROP_CACHES:-0} != 1 ]]; then
	echo
	echo "note: caches warm (not dropped); run 1 is cold (first-touch memory, PLATFORM.md), the"
	echo "warm-only columns leave it out. DROP_CACHES=1 drops the page cache before every run."
fi
