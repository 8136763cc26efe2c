#!/usr/bin/env bash
# Restart benchmark: ringflyd vs a minimal reference listener, kill -9 and immediate restart.
#
# Usage: bench/restart.sh [--cycles N (default 1000)] [--dir DIR] [--block N] [--keep]
#   (arguments go to ringfly-bench-restart; see bench/README.md)
# Env:   BUILD_DIR (default build/release), BUILD_JOBS (default nproc)
#
# Uses the binaries in BUILD_DIR; configures and builds them with CMake only if missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build/release}
daemon=$build/ringflyd
bench=$build/bench/ringfly-bench-restart
reference=$build/bench/ringfly-bench-ref-listener

if [[ ! -x $daemon || ! -x $bench || ! -x $reference ]]; then
	echo "restart.sh: building $build (binaries missing)" >&2
	cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build "$build" -j"${BUILD_JOBS:-$(nproc)}" \
		--target ringflyd ringfly-bench-restart ringfly-bench-ref-listener >/dev/null
fi

exec "$bench" --ringflyd "$daemon" --ref-listener "$reference" "$@"
