#!/usr/bin/env bash
# Long coverage-guided fuzzing of tests/fuzz's targets with libFuzzer (tests/fuzz/README.md).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 300 s for each of every target)
# Env:   BUILD_DIR (build/fuzz)   the clang build with -DRINGFLY_FUZZ=ON
#        JOBS (nproc)             compile jobs
# Installs clang and libFuzzer (Debian's clang, libclang-rt-14-dev) if missing, as root.
# Exits 0 when every target ran its time without a finding, 1 on a finding (the input
# is in BUILD_DIR/crash-*), 2 on usage.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-300}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
shift || true
targets=("$@")
((${#targets[@]})) || targets=(fuzz_frame fuzz_config fuzz_peer)
build=${BUILD_DIR:-$root/build/fuzz}

if ! command -v clang >/dev/null || ! compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" >/dev/null; then
	if ((EUID != 0)); then
		echo "fuzz: clang and libFuzzer are missing: apt-get install clang libclang-rt-14-dev" >&2
		exit 1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clang libclang-rt-14-dev >/dev/null
fi
"$root/scripts/setup.sh"

CC=clang cmake -S "$root" -B "$build" -DRINGFLY_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target "${targets[@]}" >/dev/null

cd "$build"
for t in "${targets[@]}"; do
	corpus=$build/corpus/$t
	mkdir -p "$corpus"
	FUZZ_WRITE_SEEDS=$corpus "$build/tests/fuzz/$t" -runs=0 "$corpus" >/dev/null 2>&1
	echo "fuzz: $t for $seconds s (corpus $corpus + $root/tests/fuzz/corpus/$t)"
	if ! "$build/tests/fuzz/$t" -max_total_time="$seconds" -max_len=8192 -timeout=30 \
		-print_final_stats=1 "$corpus" "$root/tests/fuzz/corpus/$t" >"$build/$t.log" 2>&1; then
		tail -40 "$build/$t.log" >&2
		# shellcheck disable=SC2012 # our own file names: the newest one is wanted
		echo "fuzz: $t: a finding; its input: $(ls -t "$build"/crash-* "$build"/timeout-* 2>/dev/null | head -1)" >&2
		exit 1
	fi
	grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$build/$t.log" | sed "s/^/fuzz: $t: /"
done
echo "fuzz: no finding"
