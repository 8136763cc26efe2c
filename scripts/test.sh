#!/usr/bin/env bash
# Build ringfly twice and run the whole test suite in both trees:
#   build/release   Release build, the shipped binaries
#   build/sanitize  RelWithDebInfo with ASan+UBSan (RINGFLY_SANITIZE=ON), assertions on
# Exits non-zero if any configure, build or test step fails; prints one summary line
# per tree at the end. Works from a clean clone as root (CI runs it via .ci/run).
#
# Env: BUILD_JOBS=N           parallel compile jobs (default: nproc)
#      CTEST_PARALLEL_LEVEL=N parallel tests (ctest's own variable; default: serial)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

jobs=${BUILD_JOBS:-$(nproc)}

./scripts/setup.sh

declare -A summary=()
failed=0

# build_tree NAME CMAKE_ARGS...: configure and build build/NAME. Returns non-zero on failure.
build_tree() {
	local name=$1
	shift
	echo "==> configure build/$name"
	cmake -S . -B "build/$name" "$@" || return 1
	echo "==> build build/$name (jobs $jobs)"
	cmake --build "build/$name" -j"$jobs" || return 1
}

# test_tree NAME: run ctest in build/NAME, keep the closing line for the summary.
test_tree() {
	local name=$1 log rc=0 closing
	log="build/$name/ctest.log"
	echo "==> ctest build/$name"
	# -V keeps every test's output (in $full): a Criterion test reports its
	# result before its process exits, so a sanitizer report printed at exit
	# (LeakSanitizer) would not fail it; the output is searched for one below.
	local full="build/$name/ctest-full.log"
	ctest --test-dir "build/$name" -V --no-tests=error >"$full" 2>&1 || rc=$?
	grep -E '^ *[0-9]+/[0-9]+ Test +#' "$full" | tee "$log"
	sed -n '/tests passed/,$p' "$full" | tee -a "$log"
	if ((rc != 0)); then
		# Once more, to tell a flaky test from a broken one; then what each
		# failed test printed the first time (-V prefixes its lines with
		# "N: "), last, where a CI excerpt of the tail shows it.
		echo "==> build/$name: the failed tests once more"
		ctest --test-dir "build/$name" --rerun-failed 2>&1 | grep -E 'Test +#|tests passed' || true
		local n
		for n in $(sed -nE 's/^ *[0-9]+\/[0-9]+ Test +#([0-9]+): .*\*\*\*(Failed|Timeout|Exception).*/\1/p' "$log"); do
			echo "==> build/$name: test #$n, the last 60 lines it printed when it failed:"
			grep -E "^$n: " "$full" | tail -n 60
		done
	fi
	if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$full"; then
		echo "==> build/$name: sanitizer reports in tests that passed:"
		grep -E -B2 -A12 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$full" | head -n 80
		summary[$name]+=" sanitizer=FAILED"
		rc=1
	fi
	# A skipped test (exit 77: not root, no tmpfs mount, no network
	# namespaces, a tool missing) passes ctest: say which, loudly.
	local skipped
	skipped=$(grep -E '\*\*\*Skipped' "$log" | sed -E 's/.*Test +#[0-9]+: ([^ ]+).*/\1/' | tr '\n' ' ') || true
	if [[ -n $skipped ]]; then
		echo "==> build/$name: SKIPPED (they did not run): $skipped"
		grep -hE '^SKIP ' "$full" | sort -u | sed 's/^/    /' || true
		summary[$name]+=" skipped=[${skipped% }]"
	fi
	closing=$(grep -E 'tests passed|No tests were found' "$log" | tail -n 1) || true
	if ((rc == 0)); then
		summary[$name]+=" ctest=ok"
	else
		summary[$name]+=" ctest=FAILED"
	fi
	summary[$name]+=" (${closing:-no ctest summary})"
	return "$rc"
}

trees=(release sanitize)
if build_tree release -DCMAKE_BUILD_TYPE=Release; then
	summary[release]="build=ok"
else
	summary[release]="build=FAILED"
	failed=1
fi
if build_tree sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGFLY_SANITIZE=ON; then
	summary[sanitize]="build=ok"
else
	summary[sanitize]="build=FAILED"
	failed=1
fi

if [[ ${summary[release]} == build=ok ]]; then
	test_tree release || failed=1
fi
if [[ ${summary[sanitize]} == build=ok ]]; then
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	test_tree sanitize || failed=1
fi

echo
for name in "${trees[@]}"; do
	echo "test.sh: build/$name: ${summary[$name]}"
done
if ((failed)); then
	echo "test.sh: FAILED"
	exit 1
fi
echo "test.sh: all passed"
