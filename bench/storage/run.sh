#!/usr/bin/env bash
# Storage benchmark: 1 GiB over loopback TCP into ringfly's store vs the kernel's shortest path.
#
# Usage: bench/storage/run.sh [BUILD_DIR]   (default: build/release under the repo root)
# Env:   everything bench/ref/run.sh takes (RUNS=5, SIZE_MIB=1024, OUT_PARENT, SRC_PARENT,
#        CONTENDERS), and
#        PIECE_MIB              ringfly's piece length (default: the store's choice for
#                               SIZE_MIB, as the daemon's: 4 MiB for 1 GiB)
#        STORE_SYNC_EXTRA       extra ringfly contenders with other sync settings, as
#                               space-separated BATCH/DELAY_MS pairs, e.g. "1/1 64/20"
#                               (each adds ringfly-splice-bB-dD and ringfly-recv-bB-dD)
#        REF_SYNC=1             adds ref-splice-sync: the reference splice receiver with one
#                               fdatasync at the end (what durability costs the kernel path)
#
# One invocation of bench/ref/run.sh's harness (sourced, with the hooks it documents), so
# every contender runs in the same rounds, alternating, on the same source and the same
# filesystem, a new file each time, and the medians are comparable:
#   ref-splice       ringfly-ref-receiver: socket -> pipe (1 MiB) -> file, no fsync
#   ref-recv         ringfly-ref-receiver: recv 1 MiB + pwrite, no fsync
#   ringfly-splice   ringfly-bench-store-recv --mode splice: the store's default path
#   ringfly-recv     ringfly-bench-store-recv --mode recv
#   fio              1 MiB pwrite()s, no fsync
# The ringfly contenders go through storage/store.h as the node does: a fresh store and
# task (fallocated) per run, pieces received one after the other from the one socket,
# each written, crc32c-checked, fdatasync'd and recorded before the next starts (the
# store's defaults: sync after 16 pieces or 20 ms). Their figures therefore include
# durability, which the references and fio do not pay; REF_SYNC=1 shows its price.
#
# Builds nothing: needs BUILD_DIR/bench/ref/ringfly-ref-{sender,receiver} and
# BUILD_DIR/bench/storage/ringfly-bench-store-recv, e.g. from
#   cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release && cmake --build build/release
set -euo pipefail

store_recv=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/release}
store_recv=$store_recv/bench/storage/ringfly-bench-store-recv
if [[ ! -x $store_recv ]]; then
	echo "run.sh: $store_recv missing; build first (see the header of this script)" >&2
	exit 1
fi
piece_bytes=$((${PIECE_MIB:-0} * 1024 * 1024))

BENCH_TITLE=bench/storage # read by bench/ref/run.sh

bench_header() {
	local pieces="$((piece_bytes >> 20)) MiB pieces"
	((piece_bytes > 0)) || pieces="pieces of the store's length for $size_mib MiB (the daemon's)"
	echo "  ringfly: ringfly-bench-store-recv (storage/store.h), $pieces"
	echo "           one at a time, each fdatasync'd + recorded before the next"
}

store_contender() {
	local name=$1 mode=$2
	shift 2
	add_contender "$name" "$store_recv" --listen 127.0.0.1:0 --data-dir '{out}.store' \
		--out '{out}' --bytes "$bytes" --mode "$mode" --piece-length "$piece_bytes" "$@"
}

bench_contenders() {
	local pair b d
	if [[ ${REF_SYNC:-0} == 1 ]]; then
		add_contender ref-splice-sync "$receiver" --listen 127.0.0.1:0 --out '{out}' \
			--bytes "$bytes" --mode splice --pipe-size 1048576 --sync
	fi
	store_contender ringfly-splice splice
	store_contender ringfly-recv recv
	for pair in ${STORE_SYNC_EXTRA:-}; do
		b=${pair%/*}
		d=${pair#*/}
		store_contender "ringfly-splice-b$b-d$d" splice --sync-batch "$b" --sync-delay-ms "$d"
		store_contender "ringfly-recv-b$b-d$d" recv --sync-batch "$b" --sync-delay-ms "$d"
	done
}

# ratio_line LABEL NUM DEN: GB/s and CPU-s/GiB of NUM over DEN, all runs and warm only.
ratio_line() {
	local label=$1 num=$2 den=$3
	if [[ -z ${all_gbps[$num]:-} || -z ${all_gbps[$den]:-} ]]; then
		return
	fi
	printf '  %-36s %8s %10s   %14s %17s\n' "$label" \
		"$(ratio "${all_gbps[$num]}" "${all_gbps[$den]}")" \
		"$(ratio "${all_cpu[$num]}" "${all_cpu[$den]}")" \
		"$(ratio "${warm_gbps[$num]:-}" "${warm_gbps[$den]:-}")" \
		"$(ratio "${warm_cpu[$num]:-}" "${warm_cpu[$den]:-}")"
}

# ratio A B: median(A) / median(B), or "-".
ratio() {
	awk -v a="$(median "$1")" -v b="$(median "$2")" 'BEGIN {
		if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2fx\n", a / b }'
}

bench_summary() {
	local g c wg wc verdict
	echo
	echo "ratios of medians (ours / reference)"
	printf '  %-36s %8s %10s   %14s %17s\n' "" "GB/s" "CPU-s/GiB" "warm-only GB/s" \
		"warm-only CPU-s/GiB"
	ratio_line "ringfly-splice / ref-splice" ringfly-splice ref-splice
	ratio_line "ringfly-recv / ref-splice" ringfly-recv ref-splice
	ratio_line "ringfly-recv / ref-recv" ringfly-recv ref-recv
	ratio_line "ringfly-recv / ringfly-splice" ringfly-recv ringfly-splice
	ratio_line "ref-splice-sync / ref-splice" ref-splice-sync ref-splice
	ratio_line "ringfly-splice / ref-splice-sync" ringfly-splice ref-splice-sync
	echo
	echo "note: run 1 is cold (first-touch memory, PLATFORM.md); the warm-only columns leave it"
	echo "out. ringfly's runs end durable (fdatasync per piece, metadata recorded); ref and fio"
	echo "end in the page cache."
	if [[ -n ${all_rx[ringfly-splice]:-} && -n ${all_gbps[ref-splice]:-} ]]; then
		echo "ringfly-splice took the bytes off the socket at $(median "${all_rx[ringfly-splice]}")" \
			"GB/s (median, all runs) = $(ratio "${all_rx[ringfly-splice]}" "${all_gbps[ref-splice]}")" \
			"ref-splice; the rest of its time is the last piece's read-back, sync and record."
	fi
	if [[ -n ${all_gbps[ringfly-splice]:-} && -n ${all_gbps[ref-splice]:-} ]]; then
		g=$(ratio "${all_gbps[ringfly-splice]}" "${all_gbps[ref-splice]}")
		c=$(ratio "${all_cpu[ringfly-splice]}" "${all_cpu[ref-splice]}")
		wg=$(ratio "${warm_gbps[ringfly-splice]:-}" "${warm_gbps[ref-splice]:-}")
		wc=$(ratio "${warm_cpu[ringfly-splice]:-}" "${warm_cpu[ref-splice]:-}")
		verdict=$(awk -v g="${wg%x}" -v c="${wc%x}" 'BEGIN {
			if (g == "-" || c == "-") print "n/a"
			else print (g + 0 >= 0.9 && c + 0 <= 1.3) ? "MET" : "NOT MET" }')
		echo
		echo "target: default path >= 0.9x ref splice throughput at <= 1.3x its CPU/GiB"
		echo "  default path = ringfly-splice (storage.socket_path: splice, sync 16 pieces/20 ms)"
		echo "  all runs: $g throughput at $c CPU/GiB; warm only: $wg at $wc -> $verdict (warm)"
	fi
}

# shellcheck source-path=SCRIPTDIR source=../ref/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/../ref/run.sh" "$@"
