#!/usr/bin/env bash
# Install every Debian 12 package that ringfly's build, tests, demo and benchmarks need.
#
# Idempotent: asks dpkg-query which packages are missing and only then runs
# `apt-get update` once and one `apt-get install`. Quiet: apt's output goes to a log
# file; the terminal gets one summary line (and the log's tail on failure).
#
# Usage: scripts/setup.sh            (as root, or with nothing missing)
# Env:   RINGFLY_SETUP_LOG=FILE      where apt's output goes (default: a temp file)
set -euo pipefail

packages=(
	# build
	build-essential cmake pkg-config
	liburing-dev libprotobuf-c-dev protobuf-c-compiler libmimalloc-dev
	libcurl4-openssl-dev liblmdb-dev libyaml-dev libhttp-parser-dev libisal-dev libssl-dev
	# unit tests
	libcriterion-dev
	# integration tests, demo: socket tools, systemd-socket-activate, ps/pgrep, ip/ss
	socat systemd procps iproute2 python3 openssl
	# origin servers and reference tools for tests and benchmarks
	nginx-light curl iperf3 hyperfine fio aria2
	# registry mirror tests and benchmarks: a registry, its clients, htpasswd -B
	docker-registry skopeo containerd apache2-utils
)

missing=()
for pkg in "${packages[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
	if [[ "$status" != "install ok installed" ]]; then
		missing+=("$pkg")
	fi
done

if ((${#missing[@]} == 0)); then
	echo "setup: all ${#packages[@]} packages present"
	exit 0
fi

if ((EUID != 0)); then
	echo "setup: missing packages (run as root, or install them): ${missing[*]}" >&2
	echo "setup:   apt-get install -y --no-install-recommends ${missing[*]}" >&2
	exit 1
fi

log=${RINGFLY_SETUP_LOG:-$(mktemp -t ringfly-setup.XXXXXX.log)}
export DEBIAN_FRONTEND=noninteractive

# Tests and benchmarks run their own nginx from a temp dir; keep the packages'
# maintainer scripts from starting system services (nginx on port 80) on a machine
# without a policy of its own, the way container images do it.
policy=/usr/sbin/policy-rc.d
if [[ ! -e "$policy" ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	trap 'rm -f "$policy"' EXIT
fi

if ! { apt-get update && apt-get install -y --no-install-recommends \
		-o DPkg::Lock::Timeout=300 "${missing[@]}"; } \
	>"$log" 2>&1; then
	echo "setup: apt-get failed installing: ${missing[*]} (log: $log); last lines:" >&2
	tail -n 20 "$log" >&2
	exit 1
fi
echo "setup: installed ${#missing[@]} package(s): ${missing[*]} (log: $log)"
