# shellcheck shell=bash
# Helpers shared by the bench/origin and bench/p2p scripts: processes, nginx, medians.
#
# Source it right after the script has found the repo root:
#
#     # shellcheck source-path=SCRIPTDIR source=../common/lib.sh
#     . "$root/bench/common/lib.sh"
#
# It sets nginx_bin and clk_tck, and nginx_pid and nginx_port (the outputs of
# start_nginx, empty until then). Errors go through fail, which prefixes "run.sh:" and
# exits 1; the caller's EXIT trap (bench_cleanup) then stops what was started.

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
clk_tck=$(getconf CLK_TCK)
nginx_pid=
nginx_port=

# want NAME: true if NAME is in $CONTENDERS, or CONTENDERS is unset or empty.
want() { [[ -z ${CONTENDERS:-} || " $CONTENDERS " == *" $1 "* ]]; }

# fail MESSAGE [LOG]: prints MESSAGE and the last 20 lines of LOG (if not empty), exits 1.
fail() {
	echo "run.sh: $1" >&2
	if [[ -n ${2:-} && -s $2 ]]; then
		echo "run.sh: last lines of $2:" >&2
		tail -n 20 "$2" >&2
	fi
	exit 1
}

# require_built ROOT BUILD HINT BIN...: exits 1 with the cmake line to run if a BIN is not
# executable; HINT, if not empty, is one more line of advice.
require_built() {
	local root=$1 build=$2 hint=$3 bin
	shift 3
	for bin in "$@"; do
		if [[ ! -x $bin ]]; then
			echo "run.sh: $bin missing; build first:" >&2
			echo "  cmake -S $root -B $build -DCMAKE_BUILD_TYPE=Release && cmake --build $build" >&2
			if [[ -n $hint ]]; then
				echo "  $hint" >&2
			fi
			exit 1
		fi
	done
}

# stop_pid PID: SIGTERM to PID and reap it; no error if it is already gone.
stop_pid() {
	kill -TERM "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# bench_cleanup OUT_DIR SRC_DIR PID...: stops a held prewarm (prewarm_end) and the PIDs
# still running (empty ones are skipped), then removes OUT_DIR and SRC_DIR (may be empty),
# or with KEEP=1 names them.
bench_cleanup() {
	local out=$1 src=$2 pid
	shift 2
	prewarm_end
	for pid in "$@"; do
		if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
			stop_pid "$pid"
		fi
	done
	if [[ ${KEEP:-0} == 1 ]]; then
		echo "run.sh: kept $out${src:+ and $src}" >&2
		return
	fi
	rm -rf "$out"
	if [[ -n $src ]]; then
		rm -rf "$src"
	fi
}

# avail DIR: bytes free on DIR's filesystem (0 if df cannot tell).
avail() { df --output=avail -B1 "$1" 2>/dev/null | tail -n 1 || echo 0; }

# prewarm DIR MIB [HOLD_MIB]: writes MIB MiB of zeros to DIR/prewarm and removes it (MIB 0:
# nothing), so that the next run's new page cache comes from memory touched a moment ago.
# With PREWARM_HOLD=1, HOLD_MIB of it (default all; the caller leaves room for what the
# run writes: the reservoir and the run's data share memory and DIR's filesystem) stays
# as a reservoir that reservoir.py shrinks as the run grows, so that this holds for the
# whole run, not only for its first second or two (bench/README.md "Memory"); prewarm_end,
# right after the timed part, stops it and removes the rest. RESERVOIR_PID is its pid
# meanwhile.
RESERVOIR_PID=''
RESERVOIR_FILE=''
prewarm() {
	local deadline hold=${3:-$2}
	prewarm_end
	(($2 > 0)) || return 0
	head -c "$(($2 << 20))" /dev/zero >"$1/prewarm"
	if [[ ${PREWARM_HOLD:-0} != 1 ]] || ((hold <= 0)); then
		rm -f "$1/prewarm"
		return 0
	fi
	((hold >= $2)) || truncate -s "$((hold << 20))" "$1/prewarm"
	RESERVOIR_FILE=$1/prewarm
	python3 "$(dirname "${BASH_SOURCE[0]}")/reservoir.py" "$RESERVOIR_FILE" >"$1/prewarm.ready" 9>&- &
	RESERVOIR_PID=$!
	deadline=$((SECONDS + 10))
	until [[ -s $1/prewarm.ready ]]; do
		if ! kill -0 "$RESERVOIR_PID" 2>/dev/null || ((SECONDS >= deadline)); then
			echo "prewarm: reservoir.py $RESERVOIR_FILE did not start" >&2
			return 1
		fi
		sleep 0.01
	done
	rm -f "$1/prewarm.ready"
}

# prewarm_end: stops prewarm's reservoir (PREWARM_HOLD=1) and removes what is left of it.
prewarm_end() {
	if [[ -n $RESERVOIR_PID ]]; then
		kill "$RESERVOIR_PID" 2>/dev/null || true
		wait "$RESERVOIR_PID" 2>/dev/null || true
	fi
	[[ -z $RESERVOIR_FILE ]] || rm -f "$RESERVOIR_FILE"
	RESERVOIR_PID=''
	RESERVOIR_FILE=''
}

# port_listening PORT: true if something accepts connections on 127.0.0.1:PORT.
port_listening() { (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

# random_port LOW COUNT: a pseudo-random port number from LOW to LOW + COUNT - 1.
random_port() { echo $(($1 + (RANDOM * 32768 + RANDOM) % $2)); }

# start_nginx LABEL DIR DOCROOT PROCS CONNECTIONS LISTEN_OPTS PORT_LOW PORT_COUNT:
# starts nginx in the background serving DOCROOT on a free loopback port, tried up to 8
# times at random_port PORT_LOW PORT_COUNT. DIR (created here, must not exist) holds its
# conf, pid, logs (access.log, error.log, stderr.log) and temp paths. PROCS is its -g
# directives ("daemon off; ..."), CONNECTIONS its worker_connections, LISTEN_OPTS extra
# listen parameters ("" or e.g. "backlog=4096"); LABEL names it in errors ("nginx
# origin"). Sets nginx_pid as soon as one runs (for the EXIT trap) and nginx_port once it
# listens.
start_nginx() {
	local label=$1 dir=$2 docroot=$3 procs=$4 connections=$5 listen_opts=$6 port_low=$7
	local port_count=$8 port deadline
	mkdir -m 755 "$dir"
	for _ in 1 2 3 4 5 6 7 8; do
		port=$(random_port "$port_low" "$port_count")
		if port_listening "$port"; then
			continue
		fi
		cat >"$dir/nginx.conf" <<-EOF
			error_log $dir/error.log;
			pid $dir/nginx.pid;
			events { worker_connections $connections; }
			http {
			 access_log $dir/access.log;
			 client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
			 fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
			 default_type application/octet-stream;
			 sendfile on;
			 keepalive_requests 100000;
			 server {
			  listen 127.0.0.1:$port${listen_opts:+ $listen_opts};
			  root $docroot;
			 }
			}
		EOF
		"$nginx_bin" -p "$dir" -c "$dir/nginx.conf" -g "$procs" 2>>"$dir/stderr.log" &
		nginx_pid=$!
		deadline=$((SECONDS + 5))
		while ! port_listening "$port"; do
			if ! kill -0 "$nginx_pid" 2>/dev/null; then
				wait "$nginx_pid" 2>/dev/null || true
				nginx_pid=
				break # port taken meanwhile, or a config error: see the next try
			fi
			((SECONDS < deadline)) || fail "$label not listening on $port after 5 s" "$dir/error.log"
			sleep 0.01
		done
		if [[ -n $nginx_pid ]]; then
			# shellcheck disable=SC2034 # read by the sourcing script
			nginx_port=$port
			return
		fi
	done
	fail "$label did not start" "$dir/error.log"
}

# wait_health RINGFLY SOCKET PID LOG: polls `RINGFLY --socket SOCKET health` for up to 5 s;
# fails (with LOG) if the daemon PID exits or does not answer by then.
wait_health() {
	local deadline=$((SECONDS + 5))
	until "$1" --socket "$2" --timeout 500ms health >/dev/null 2>&1; do
		kill -0 "$3" 2>/dev/null || fail "ringflyd exited" "$4"
		((SECONDS < deadline)) || fail "ringflyd does not answer health after 5 s" "$4"
		sleep 0.01
	done
}

# proc_cpu PID: CPU seconds (user+sys, all threads, exited ones included) of a live
# process and of its child processes (nginx's workers), from /proc/PID/stat; fails if gone.
proc_cpu() {
	local pid ticks=0 stat rest kids
	local -a pids=("$1")
	kids=$(cat /proc/"$1"/task/*/children 2>/dev/null || true)
	# shellcheck disable=SC2206 # one pid per word
	pids+=($kids)
	for pid in "${pids[@]}"; do
		stat=$(<"/proc/$pid/stat") || return 1
		rest=${stat##*) }
		# shellcheck disable=SC2086 # fields: state is 1, utime 12, stime 13 after "pid (comm) "
		set -- $rest
		ticks=$((ticks + ${12} + ${13}))
	done
	awk -v t="$ticks" -v hz="$clk_tck" 'BEGIN { printf "%.3f\n", t / hz }'
}

# host_times: "STEAL IDLE" in clock ticks of all CPUs since boot, from /proc/stat: what
# the hypervisor took from this VM's vCPUs (steal), and what they spent idle or waiting
# for I/O. Read before and after a timed run, host_note says what happened in between.
host_times() {
	local idle iowait steal
	# cpu user nice system idle iowait irq softirq steal ...
	read -r _ _ _ _ idle iowait _ _ steal _ </proc/stat
	echo "$steal $((idle + iowait))"
}

# host_note BEFORE AFTER: "host steal S ms, idle I ms" between two host_times (summed over
# the CPUs: on 2 vCPUs a run of W ms has 2W ms to share out).
host_note() {
	local s0 i0 s1 i1
	read -r s0 i0 <<<"$1"
	read -r s1 i1 <<<"$2"
	echo "steal $(((s1 - s0) * 1000 / clk_tck)) ms, idle $(((i1 - i0) * 1000 / clk_tck)) ms"
}

# record KEY STATE GBPS CPU: appends one run's samples to the caller's associative arrays
# all_gbps[KEY] and all_cpu[KEY], and to warm_gbps[KEY] and warm_cpu[KEY] if STATE is warm.
record() {
	all_gbps[$1]+=" $3"
	all_cpu[$1]+=" $4"
	if [[ $2 == warm ]]; then
		warm_gbps[$1]+=" $3"
		warm_cpu[$1]+=" $4"
	fi
}

# median SAMPLES: the median of space-separated numbers, "%.3f", or "-" if there are none.
median() {
	if [[ -z ${1// /} ]]; then
		echo -
		return
	fi
	# shellcheck disable=SC2086 # word splitting intended: one value per word
	printf '%s\n' $1 | sort -g | awk '{ v[NR] = $1 } END {
		if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]
		else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B [SUFFIX]: median(A) / median(B) as "%.2f" followed by SUFFIX, or "-".
ratio() {
	awk -v a="$(median "$1")" -v b="$(median "$2")" -v x="${3:-}" 'BEGIN {
		if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f%s\n", a / b, x }'
}

# verdict RATIO OP TARGET: PASS or SHORT as RATIO OP (">=" or "<=") TARGET holds, n/a for "-".
verdict() {
	awk -v r="$1" -v op="$2" -v t="$3" 'BEGIN {
		if (r == "-") print "n/a"
		else if (op == ">=") print (r + 0 >= t) ? "PASS" : "SHORT"
		else print (r + 0 <= t) ? "PASS" : "SHORT" }'
}
