#!/usr/bin/env bash
# Swarm benchmark (issue 7, P7): the scheduler's parent decisions per second, in process.
#
# Usage: bench/swarm/run.sh [BUILD_DIR] [ringfly-bench-swarm FLAGS...]
#        BUILD_DIR: or $BUILD_DIR; default build/release under the repo root. FLAGS go to
#        every run unchanged (--peers, --tasks, --zipf, --decisions, ...; see swarm.c).
# Env:   RUNS (5)     runs of the program, each a new process on the same data (--rng-seed)
#        CPU          the CPU every run is pinned to with taskset (default: the last one);
#                     without taskset the runs are not pinned (said in the header)
#        KEEP=1       keeps each run's key=value line and summary in the temp dir
#
# Each run of ringfly-bench-swarm builds the simulated swarm, warms the scheduler's state up,
# measures ours (sched_announce with want_parents) and then the reference (a plain full
# qsort of the same candidates by the same keys, on the benchmark's own arrays) on the same
# sequence of decisions, in one process on one core. This script prints every run, the
# medians, ratio = ours / reference for decisions per second, and the target verdict
# (>= 50000 decisions per second on one core). A failed check (an empty answer without
# back_to_source, the asking peer among its parents, ...) stops it with the program's output.
#
# Builds nothing: needs BUILD_DIR/bench/swarm/ringfly-bench-swarm, e.g. from
#   cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release && cmake --build build/release
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
. "$root/bench/common/lib.sh"

build=${BUILD_DIR:-$root/build/release}
if [[ $# -gt 0 && $1 != -* ]]; then
	build=$1
	shift
fi
swarm=$build/bench/swarm/ringfly-bench-swarm
require_built "$root" "$build" "" "$swarm"
runs=${RUNS:-5}
[[ $runs =~ ^[1-9][0-9]*$ ]] || fail "RUNS=$runs: expected a whole number >= 1"
target_per_s=50000

pin=()
pinned="not pinned (no taskset)"
if command -v taskset >/dev/null 2>&1; then
	cpu=${CPU:-$(($(nproc) - 1))}
	pin=(taskset -c "$cpu")
	pinned="pinned to CPU $cpu (taskset)"
fi

out=$(mktemp -d "${TMPDIR:-/tmp}/ringfly-swarm.XXXXXX")
trap 'bench_cleanup "$out" ""' EXIT

declare -A all=() first=()

# field NAME FILE: the value of NAME= in FILE's key=value line.
field() { tr ' ' '\n' <"$2" | sed -n "s/^$1=//p"; }

# med FORMAT KEY [DIVISOR]: the median of all[KEY] / DIVISOR printed with FORMAT.
med() {
	awk -v m="$(median "${all[$2]}")" -v f="$1" -v d="${3:-1}" 'BEGIN {
		if (m == "-") print "-"; else printf f "\n", m / d }'
}

echo "bench/swarm: scheduler parent decisions in process (scheduler/state.h), RUNS=$runs, $pinned"
# row COLUMN...: one line of the per-run table.
row() { printf '%4s %9s %9s %7s %7s %9s %9s %7s %7s %6s %6s %6s %9s\n' "$@"; }

row run "ours/s" "ours/cpu" "p50" "p99" "ref/s" "ref/cpu" "p50" "p99" ratio \
	"B/peer" "maxRSS" identical
row "" "" "" "us" "us" "" "" "us" "us" "" "" "MiB" "%"
for ((run = 1; run <= runs; run++)); do
	kv=$out/run$run.kv
	rc=0
	"${pin[@]}" "$swarm" "$@" >"$kv" 2>"$out/run$run.log" || rc=$?
	if ((rc != 0)); then
		cat "$out/run$run.log" >&2
		fail "run $run: ringfly-bench-swarm exited $rc"
	fi
	for key in ours_per_s ours_cpu_per_s ours_loop_per_s ours_p50_us ours_p99_us ref_per_s \
		ref_cpu_per_s ref_p50_us ref_p99_us ratio cpu_ratio bytes_per_peer max_rss_kib \
		identical_pct warmup_s; do
		all[$key]+=" $(field "$key" "$kv")"
	done
	if ((run == 1)); then
		for key in peers seeds complete downloading tasks zipf largest_task locations \
			parents_in_use decisions ref_decisions mean_candidates; do
			first[$key]=$(field "$key" "$kv")
		done
	fi
	row "$run" "$(field ours_per_s "$kv")" "$(field ours_cpu_per_s "$kv")" \
		"$(field ours_p50_us "$kv")" "$(field ours_p99_us "$kv")" \
		"$(field ref_per_s "$kv")" "$(field ref_cpu_per_s "$kv")" \
		"$(field ref_p50_us "$kv")" "$(field ref_p99_us "$kv")" "$(field ratio "$kv")" \
		"$(field bytes_per_peer "$kv")" \
		"$(awk -v k="$(field max_rss_kib "$kv")" 'BEGIN { printf "%.1f", k / 1024 }')" \
		"$(field identical_pct "$kv")"
done
echo
echo "swarm: ${first[peers]} peers (${first[seeds]} seeds, ${first[complete]} complete," \
	"${first[downloading]} downloading) over ${first[tasks]} tasks, popularity zipf" \
	"s=${first[zipf]} (0 = uniform; largest task ${first[largest_task]} peers)," \
	"${first[locations]} location labels"
echo "decisions per run: ours ${first[decisions]}, reference ${first[ref_decisions]} (the same" \
	"sequence); ${first[mean_candidates]} candidates per decision on average;" \
	"parents_in_use = the previous answer's first ${first[parents_in_use]}"
echo "ours: sched_announce(want_parents) of a random downloader; decisions/s = calls / time" \
	"inside the calls (clock_gettime around each); /cpu = per CPU-second of the whole loop"
echo "reference: the same decisions by a full qsort of the task's other peers and the seed" \
	"hosts, same keys, flat arrays, no cycle check"
echo
echo "medians of $runs runs                         ours   reference"
printf '  %-34s %10s %11s\n' "decisions/s" "$(med %.0f ours_per_s)" "$(med %.0f ref_per_s)"
printf '  %-34s %10s %11s\n' "decisions per CPU-second" "$(med %.0f ours_cpu_per_s)" \
	"$(med %.0f ref_cpu_per_s)"
printf '  %-34s %10s\n' "decisions/s, whole loop" "$(med %.0f ours_loop_per_s)"
printf '  %-34s %10s %11s\n' "p50 latency, us" "$(med %.2f ours_p50_us)" "$(med %.2f ref_p50_us)"
printf '  %-34s %10s %11s\n' "p99 latency, us" "$(med %.2f ours_p99_us)" "$(med %.2f ref_p99_us)"
printf '  %-34s %10s\n' "memory per peer, bytes (RSS delta)" "$(med %.0f bytes_per_peer)"
printf '  %-34s %10s\n' "max RSS (VmHWM), MiB" "$(med %.1f max_rss_kib 1024)"
printf '  %-34s %10s\n' "warm-up (every peer once), s" "$(med %.3f warmup_s)"
printf '  %-34s %10s   (the rest: parents ours left out to avoid a cycle)\n' \
	"answers identical to the reference, %" "$(med %.2f identical_pct)"
echo
r=$(ratio "${all[ours_per_s]}" "${all[ref_per_s]}")
echo "ratio = ours / reference (decisions per second, medians): ${r}x" \
	"(median of the per-run ratios $(med %.2f ratio)x; per CPU-second" \
	"$(ratio "${all[ours_cpu_per_s]}" "${all[ref_cpu_per_s]}")x)"
echo "target: ours >= $target_per_s decisions/s on one core: $(med %.0f ours_per_s)" \
	"$(verdict "$(median "${all[ours_per_s]}")" ">=" "$target_per_s")" \
	"(per CPU-second: $(med %.0f ours_cpu_per_s)" \
	"$(verdict "$(median "${all[ours_cpu_per_s]}")" ">=" "$target_per_s"))"
