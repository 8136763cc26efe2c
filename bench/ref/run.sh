#!/usr/bin/env bash
# Storage reference benchmark: 1 GiB over loopback TCP into a new file (splice, recv+pwrite) vs fio.
#
# Usage: bench/ref/run.sh [BUILD_DIR]     (default: build/release under the repo root)
# Env:   RUNS (default 5)       rounds; every round runs each contender once, in turn
#        SIZE_MIB (1024)        bytes per run, in MiB
#        OUT_PARENT (/tmp)      where the output files go (the root disk on the project VM)
#        SRC_PARENT (/dev/shm)  where the random source file goes
#        CONTENDERS             space-separated names to run (default: all)
#
# Builds nothing: it needs BUILD_DIR/bench/ref/ringfly-ref-{sender,receiver}, e.g. from
#   cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release && cmake --build build/release
# and fio (scripts/setup.sh installs it; without it the fio contender is skipped).
#
# The source file is made once per invocation, in SRC_PARENT: /dev/shm is tmpfs, so the
# file is in memory for sure (sendfile() reads it from the page cache and the sender is
# not the bottleneck), and it makes no dirty pages on the disk under test, whose writeback
# would land in the middle of the measured runs. If /dev/shm lacks room it falls back to
# OUT_PARENT and reads the file once to keep it cached.
#
# Every output is a new file in one temp dir under OUT_PARENT (same filesystem for all),
# removed after its run, followed by an untimed sync, so each run starts from the same
# state. The rounds alternate the contenders (A B C, A B C, ...) so that all of them see
# the same noise from the shared VM. The very first run of the process tree is cold: on
# this VM first-touch memory is slow (PLATFORM.md) and the first 1 GiB of new page cache
# pays for it; it is marked "cold" and the summary gives medians with and without it.
# (Right after another memory-hungry run, e.g. a previous invocation, it can be fast.)
# Later runs still vary 2-3x on the shared VM (the loopback receivers most: they need both
# vCPUs); pinning sender and receiver, or pre-touching memory before each run, did not
# make them steadier. Compare contenders by medians from the same invocation only.
#
# Adding a contender: one add_contender line below (see run_contender for what the command
# must do), or, from another script, source this one after defining the hooks:
#   bench_header            prints extra header lines
#   bench_contenders        add_contender calls, run after the two reference receivers and
#                           before fio
#   bench_summary           runs after the medians (all_gbps, warm_gbps, ... and median()
#                           are there to use)
# BENCH_TITLE names the benchmark in the header. bench/storage/run.sh does this.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build/release}
runs=${RUNS:-5}
size_mib=${SIZE_MIB:-1024}
bytes=$((size_mib * 1024 * 1024))
sender=$build/bench/ref/ringfly-ref-sender
receiver=$build/bench/ref/ringfly-ref-receiver

for bin in "$sender" "$receiver"; do
	if [[ ! -x $bin ]]; then
		echo "run.sh: $bin missing; build first:" >&2
		echo "  cmake -S $root -B $build -DCMAKE_BUILD_TYPE=Release && cmake --build $build" >&2
		exit 1
	fi
done

out_dir=$(mktemp -d "${OUT_PARENT:-/tmp}/ringfly-bench-ref.XXXXXX")
src_dir=
rx_pid=
cleanup() {
	if [[ -n $rx_pid ]]; then
		kill "$rx_pid" 2>/dev/null || true
	fi
	rm -rf "$out_dir"
	if [[ -n $src_dir ]]; then
		rm -rf "$src_dir"
	fi
}
trap cleanup EXIT

src_parent=${SRC_PARENT:-/dev/shm}
shm_free=$(df --output=avail -B1 "$src_parent" 2>/dev/null | tail -n 1 || echo 0)
if ((shm_free < bytes + (256 << 20))); then
	echo "run.sh: $src_parent has no room for the source; using $out_dir" >&2
	src_parent=$out_dir
fi
src_dir=$(mktemp -d "$src_parent/ringfly-bench-src.XXXXXX")
src=$src_dir/source
head -c "$bytes" /dev/urandom >"$src"
if [[ $src_parent == "$out_dir" ]]; then
	sync
	cat "$src" >/dev/null
fi
log=$out_dir/stderr.log
: >"$log"
fifo=$out_dir/stdout.fifo
mkfifo "$fifo"

# ---------------------------------------------------------------------------------------
# Contenders.
#
# run_contender NAME CMD... runs one measurement. In CMD, "{out}" is replaced by the new
# output file's path. CMD is either
#   - a receiver: it prints "ready HOST:PORT" on stdout (flushed) once it listens; the
#     harness then runs the reference sender (sendfile() of the source) to HOST:PORT;
#     the receiver takes exactly SIZE bytes into {out}, then prints its result line; or
#   - a self-contained writer (fio): it prints only the result line.
# The result line is key=value pairs including gb_per_s= and cpu_s_per_gib= (seconds=
# optional); any other keys are ignored. stderr goes to the log, shown on failure.
# ---------------------------------------------------------------------------------------

# fio writing SIZE into a new file with 1 MiB pwrite()s, no fallocate (the receivers do
# not preallocate either), no fsync; its terse v3 line turned into the result line.
# Fields: 47 write KiB, 50 write runtime ms, 88 usr_cpu %, 89 sys_cpu %.
fio_write() {
	fio --name=w --rw=write --bs=1M --size="$bytes" --ioengine=psync --filename="$1" \
		--fallocate=none --end_fsync=0 --output-format=terse --terse-version=3 |
	awk -F';' '$1 == 3 {
		b = $47 * 1024; s = $50 / 1000; cpu = ($88 + $89) / 100 * s;
		printf "bytes=%d seconds=%.3f gb_per_s=%.3f cpu_s=%.3f cpu_s_per_gib=%.3f\n",
			b, s, b / s / 1e9, cpu, cpu / (b / 2^30) }'
}

names=()
cmds=()
# add_contender NAME CMD...: run CMD as NAME once in every round, in the order added.
add_contender() {
	local name=$1
	shift
	if [[ -n ${CONTENDERS:-} && " $CONTENDERS " != *" $name "* ]]; then
		return
	fi
	names+=("$name")
	cmds+=("$(printf '%q ' "$@")")
}

add_contender ref-splice "$receiver" --listen 127.0.0.1:0 --out '{out}' --bytes "$bytes" \
	--mode splice --pipe-size 1048576
add_contender ref-recv "$receiver" --listen 127.0.0.1:0 --out '{out}' --bytes "$bytes" \
	--mode recv --chunk 1048576
if declare -F bench_contenders >/dev/null; then
	bench_contenders
fi
if command -v fio >/dev/null; then
	add_contender fio fio_write '{out}'
else
	echo "run.sh: fio not found (scripts/setup.sh installs it); skipping the fio contender" >&2
fi

# Width of the contender column: the longest name.
name_w=16
for name in "${names[@]}"; do
	if ((${#name} > name_w)); then
		name_w=${#name}
	fi
done
declare -A all_gbps all_cpu warm_gbps warm_cpu all_rx
run_no=0

fail() {
	echo "run.sh: $1; stderr of the run:" >&2
	tail -n 20 "$log" >&2
	exit 1
}

run_contender() {
	local name=$1 out=$out_dir/$1.out arg line result state gbps cpu secs rx_fd rx note
	local -a cmd=()
	shift
	for arg in "$@"; do
		cmd+=("${arg//\{out\}/$out}")
	done
	rm -f "$out"
	sync

	# stdout through a FIFO: read blocks until "ready" (no polling), and what the command
	# wrote stays readable after it exits.
	: >"$log"
	"${cmd[@]}" >"$fifo" 2>>"$log" &
	rx_pid=$!
	exec {rx_fd}<"$fifo"
	if ! read -r -t 60 -u "$rx_fd" line; then
		fail "$name: no output within 60 s"
	fi
	if [[ $line == ready\ * ]]; then
		"$sender" --connect "${line#ready }" --file "$src" 2>>"$log" || fail "$name: sender failed"
		read -r -t 120 -u "$rx_fd" result || fail "$name: no result line"
	else
		result=$line
	fi
	exec {rx_fd}<&-
	wait "$rx_pid" || fail "$name: exit status $?"
	rx_pid=

	[[ $result =~ gb_per_s=([0-9.]+) ]] || fail "$name: no gb_per_s= in: $result"
	gbps=${BASH_REMATCH[1]}
	[[ $result =~ cpu_s_per_gib=([0-9.]+) ]] || fail "$name: no cpu_s_per_gib= in: $result"
	cpu=${BASH_REMATCH[1]}
	secs=-
	if [[ $result =~ seconds=([0-9.]+) ]]; then
		secs=${BASH_REMATCH[1]}
	fi
	# received_s= (ringfly's store): when the last byte was off the socket, before the
	# last piece's read-back, fdatasync and record. Its GB/s goes in the notes column.
	note=
	if [[ $result =~ received_s=([0-9.]+) ]]; then
		rx=$(awk -v b="$bytes" -v s="${BASH_REMATCH[1]}" 'BEGIN { printf "%.3f", b / s / 1e9 }')
		all_rx[$name]+=" $rx"
		note="  off the socket at $rx GB/s"
	fi
	[[ -f $out ]] || fail "$name: no output file"
	(($(stat -c %s "$out") == bytes)) || fail "$name: output is $(stat -c %s "$out") bytes, not $bytes"
	# Content check once per contender that received the source (first round; untimed).
	if [[ $line == ready\ * && $round == 1 ]]; then
		cmp -s "$src" "$out" || fail "$name: output differs from the source"
	fi
	rm -f "$out"

	run_no=$((run_no + 1))
	state=warm
	if ((run_no == 1)); then
		state=cold
	fi
	printf "%4d %6d  %-${name_w}s %-5s %8s %10s %9s%s\n" "$run_no" "$round" "$name" "$state" \
		"$gbps" "$cpu" "$secs" "$note"
	all_gbps[$name]+=" $gbps"
	all_cpu[$name]+=" $cpu"
	if [[ $state == warm ]]; then
		warm_gbps[$name]+=" $gbps"
		warm_cpu[$name]+=" $cpu"
	fi
}

median() {
	if [[ -z ${1// /} ]]; then
		echo -
		return
	fi
	# shellcheck disable=SC2086 # word splitting intended: one value per word
	printf '%s\n' $1 | sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) { print "-"; exit }
		if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]
		else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------------------------------

echo "ringfly ${BENCH_TITLE:-bench/ref}: $size_mib MiB over loopback TCP into a new file, $runs rounds"
echo "  source: $src ($(df --output=fstype "$src_dir" | tail -n 1), in memory)"
echo "  output: $out_dir ($(df --output=source,fstype "$out_dir" | tail -n 1 | tr -s ' '))"
echo "  sender: ringfly-ref-sender (sendfile); receivers: ringfly-ref-receiver, 1 MiB pipe/chunk"
if declare -F bench_header >/dev/null; then
	bench_header
fi
echo "  fio:    --rw=write --bs=1M --ioengine=psync --fallocate=none --end_fsync=0"
echo "  GB/s = 10^9 B/s of the receiving/writing process; CPU-s/GiB = its user+sys (getrusage;"
echo "  fio's own usr/sys); no fsync in the references (unless named -sync) or fio: page-cache"
echo "  writes, as PLATFORM.md measures them"
echo
printf "%4s %6s  %-${name_w}s %-5s %8s %10s %9s\n" run round contender state GB/s CPU-s/GiB seconds
for ((round = 1; round <= runs; round++)); do
	for i in "${!names[@]}"; do
		eval "run_contender ${names[i]} ${cmds[i]}"
	done
done

echo
echo "medians; run 1 is labelled cold: the first in the process tree, where first-touch memory"
echo "is slow on this VM (PLATFORM.md) unless other processes used the memory moments before"
printf "  %-${name_w}s %10s %12s   %14s %17s\n" contender "GB/s" "CPU-s/GiB" "warm-only GB/s" "warm-only CPU-s/GiB"
for name in "${names[@]}"; do
	printf "  %-${name_w}s %10s %12s   %14s %17s\n" "$name" \
		"$(median "${all_gbps[$name]}")" "$(median "${all_cpu[$name]}")" \
		"$(median "${warm_gbps[$name]:-}")" "$(median "${warm_cpu[$name]:-}")"
done
if declare -F bench_summary >/dev/null; then
	bench_summary
fi
