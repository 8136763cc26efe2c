#!/usr/bin/env bash
# Swarm benchmark (issue 7, P4): N peers in network namespaces behind 1 Gbit/s links
# fetch one file at once through a scheduler and a seed, vs one peer alone.
#
# Usage: bench/swarm/p4.sh [BUILD_DIR]     as root
#        BUILD_DIR: or $BUILD_DIR; default build/release under the repo root. Needs
#        BUILD_DIR/{ringflyd,ringfly,ringfly-scheduler}, nginx, curl, ip, tc, nsenter.
# Env:   RUNS (3)          rounds; each round runs every contender once, alternating
#        SIZE_MIB (1024)   the file's size
#        PEERS ("8 16")    the swarm sizes N (at most 16)
#        RATE (1gbit)      tc tbf rate of the origin's egress and of every peer link
#        SEED_RATE (1gbit) the seed's link both ways, "none" for an unshaped seed
#        DATA_PARENT (/dev/shm)  where the daemons' data dirs go (fresh each run,
#                          removed after it); tmpfs: the peers' disks are not what is
#                          measured, and 17 daemons on one virtual disk would be
#        PEER_ARGS, SEED_ARGS  extra ringflyd flags for the peers / the seed
#        PREWARM_MIB (0)   before every timed run (untimed), write this many MiB to a
#                          file in DATA_PARENT and remove it: the new page cache of the
#                          run comes from memory touched a moment ago ("warm"), not
#                          from memory this VM gave back to its host ("cold", the
#                          default; bench/README.md "Memory"). A swarm of N writes
#                          (N + 1) x the file: e.g. 9216 for N=8 and 1 GiB
#        PREWARM_HOLD (1)  1: that file is not removed but shrunk as the run's page
#                          cache grows, so the run is warm to its end (a plain
#                          prewarm stays warm for a second or two here); 0: removed
#        KEEP_TMP=1        keeps the temp dir (logs, nginx access log)
#
# Namespaces on one bridge (tests/integration/lib-netns.sh), 198.18.4.0/24:
#   origin .1        nginx serving the random file from its page cache, egress RATE
#   sched  .2        ringfly-scheduler --listen 198.18.4.2:65003
#   seed   .3        ringflyd --role seed --scheduler ... (link SEED_RATE both ways)
#   p1..p16 .11-.26  ringflyd --scheduler ... (links RATE both ways)
# Each round: (1) the references, from p1 alone: `curl -o /dev/null URL` and
# `ringfly get URL -O /dev/null` through a ringflyd without a scheduler (fresh data dir);
# (2) for each N, a swarm run: a fresh scheduler, seed and N peers (fresh data dirs, all
# healthy and the seed registered with the scheduler, untimed; a peer connects to the
# scheduler at its first get, within the timed part), then all N `ringfly get URL -O
# /dev/null` started at once; the time is until the last one exited 0. Every run has its
# own URL (a query string: a new task, a real origin fetch). Measured: seconds, origin
# egress (nginx's body bytes for that URL) / size, and CPU-seconds of all daemons
# (ringflyd's, the scheduler's; /proc/PID/stat before and after) per GiB delivered.
# Prints every run, medians, ratio = ours / reference and the verdicts (issue 7: swarm
# time <= 1.3x one peer alone, origin egress <= 1.05x the file). Everything is torn down
# at the end, even on failure (lib-netns.sh's EXIT trap).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
. "$root/bench/common/lib.sh"
build=${BUILD_DIR:-$root/build/release}
if [[ $# -gt 0 ]]; then
	build=$1
fi
require_built "$root" "$build" "" "$build/ringflyd" "$build/ringfly" "$build/ringfly-scheduler"
export RINGFLYD=$build/ringflyd RINGFLY=$build/ringfly RINGFLY_SCHEDULER=$build/ringfly-scheduler
# The integration tests' helpers (their fail, log and wait_health replace bench/common's).
# shellcheck source-path=SCRIPTDIR source=../../tests/integration/lib.sh
. "$root/tests/integration/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../../tests/integration/lib-http.sh
. "$root/tests/integration/lib-http.sh"
# shellcheck source-path=SCRIPTDIR source=../../tests/integration/lib-p2p.sh
. "$root/tests/integration/lib-p2p.sh"
# shellcheck source-path=SCRIPTDIR source=../../tests/integration/lib-netns.sh
. "$root/tests/integration/lib-netns.sh"

runs=${RUNS:-3}
size_mib=${SIZE_MIB:-1024}
peer_counts=${PEERS:-8 16}
rate=${RATE:-1gbit}
seed_rate=${SEED_RATE:-1gbit}
data_parent=${DATA_PARENT:-/dev/shm}
[[ $runs =~ ^[1-9][0-9]*$ ]] || fail "RUNS=$runs: expected a whole number >= 1"
[[ $size_mib =~ ^[1-9][0-9]*$ ]] || fail "SIZE_MIB=$size_mib: expected a whole number >= 1"
npeers_max=0
for n in $peer_counts; do
	{ [[ $n =~ ^[1-9][0-9]*$ ]] && ((n <= 16)); } || fail "PEERS='$peer_counts': expected numbers from 1 to 16"
	((n > npeers_max)) && npeers_max=$n
done
size=$((size_mib << 20))
prewarm_mib=${PREWARM_MIB:-0}
[[ $prewarm_mib =~ ^[0-9]+$ ]] || fail "PREWARM_MIB=$prewarm_mib: expected a whole number of MiB"
# The prewarm is held through each run (bench/common/lib.sh): a run here lasts 9-30 s, and
# memory freed by a plain prewarm is cold again after a second or two.
PREWARM_HOLD=${PREWARM_HOLD:-1}
target_time=1.3
target_egress=1.05
peer_port=65002
sched_port=65003
get_deadline_s=$((30 + size_mib / 4)) # 4 MiB/s at least: far below any sane swarm

require_nginx
netns_setup 4
data_root=$(mktemp -d "$data_parent/ringfly-p4.XXXXXX") || fail "mktemp -d in $data_parent failed"
# The data dirs live outside $T: removed first, then lib-netns.sh's teardown.
p4_exit() {
	local rc=$?
	prewarm_end
	rm -rf "$data_root"
	_netns_rc "$rc"
	_netns_exit
}
trap p4_exit EXIT
# One swarm run holds the file N + 1 times (the seed's and the peers' caches).
need=$(((npeers_max + 1) * size + (256 << 20)))
# (the prewarm file is removed before the run writes anything)
((need < (prewarm_mib << 20) + (256 << 20))) && need=$(((prewarm_mib << 20) + (256 << 20)))
(($(avail "$data_parent") >= need)) ||
	fail "$data_parent has $(($(avail "$data_parent") >> 20)) MiB free, a swarm of $npeers_max needs $((need >> 20)) MiB: set DATA_PARENT, SIZE_MIB, PEERS or PREWARM_MIB"
# What a held prewarm may keep while a run writes COPIES x the file: the reservoir and the
# run's data share the machine's memory and DATA_PARENT's filesystem, both as they are now.
room_mib=$(($(avail "$data_parent") >> 20))
mem_mib=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
((mem_mib < room_mib)) && room_mib=$mem_mib
# hold_mib COPIES: prints the MiB of the prewarm to hold (0: none fits).
hold_mib() {
	local h=$((room_mib - $1 * (size >> 20) - 1024))
	((h > prewarm_mib)) && h=$prewarm_mib
	echo $((h < 0 ? 0 : h))
}

netns_add origin 1
netns_add sched 2
netns_add seed 3
for ((i = 1; i <= npeers_max; i++)); do
	netns_add "p$i" $((10 + i))
done
netns_shape origin "$rate" out
[[ $seed_rate == none ]] || netns_shape seed "$seed_rate" both
for ((i = 1; i <= npeers_max; i++)); do
	netns_shape "p$i" "$rate" both
done
sched_at="${NS_IP[sched]}:$sched_port"

make_file "$WWW/big" "$size"
src_sha=$(sha "$WWW/big")
netns_start_nginx origin 8080
# One untimed read so the file is in the page cache before the first timed run.
netns_exec origin curl -sf -o /dev/null "$NGINX_URL/big?p4=warm" 9>&- || fail "warming the origin failed"

gib=$(awk -v s="$size" 'BEGIN { printf "%.6f", s / 1073741824 }')
warmth="cold: no prewarm"
if ((prewarm_mib > 0)); then
	warmth="warm: $prewarm_mib MiB prewarm before every run"
	if [[ $PREWARM_HOLD == 1 ]]; then
		warmth+=", held through it as far as memory allows (PREWARM_HOLD=1:"
		for n in $peer_counts; do
			warmth+=" $(hold_mib $((n + 1))) MiB at N=$n"
		done
		warmth+=")"
	fi
fi
ncpu=$(nproc)
echo "bench/swarm/p4: $size_mib MiB file, RUNS=$runs, N = $peer_counts; origin egress and peer" \
	"links $rate (tc tbf), seed link ${seed_rate}; data dirs on $data_parent ($(stat -f -c %T "$data_parent")); $ncpu CPUs;" \
	"$warmth"
echo "wire time of the file at 1 Gbit/s: $(awk -v s="$size" 'BEGIN { printf "%.2f", s * 8 / 1e9 }') s"

# elapsed T0: seconds since T0 (an EPOCHREALTIME), "%.3f".
elapsed() {
	awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'
}

# cpu_sum PID...: CPU seconds of the PIDs together (proc_cpu, bench/common/lib.sh) in
# CPU_SUM; fails, naming the process, if one is gone (a daemon or the scheduler died
# during the run: its figures would be wrong).
cpu_sum() {
	local pid c what
	CPU_SUM=0
	for pid in "$@"; do
		if ! c=$(proc_cpu "$pid"); then
			what=${_PIDS[$pid]:-process}
			fail "$what (pid $pid) is gone: it exited during the run"
		fi
		CPU_SUM=$(awk -v a="$CPU_SUM" -v b="$c" 'BEGIN { printf "%.3f", a + b }')
	done
}

# egress URL_QUERY: nginx's body bytes for the requests whose URI contains URL_QUERY
# / the file size in EGRESS, once nginx is idle (it logs a request when it ends).
egress() {
	netns_nginx_wait_idle 30
	EGRESS=$(awk -v b="$(origin_bytes "$NGINX_ACCESS_LOG" "$1")" -v s="$size" 'BEGIN { printf "%.3f", b / s }')
}

# start_node NAME NODE [ringflyd args...]: ringflyd in NODE's namespace, socket
# $T/NAME.sock, data dir $data_root/NAME (new); not waited for (see node_ready).
# Fills PEER_* (lib-p2p.sh's associative arrays).
# shellcheck disable=SC2004 # keys, not arithmetic: the arrays are declared -A there
start_node() {
	local name=$1 node=$2 data=$data_root/$1 logf
	shift 2
	_DCOUNT=$((_DCOUNT + 1))
	logf="$T/ringflyd.$_DCOUNT.$name.log"
	mkdir -p "$data"
	netns_bg "$node" "$logf" "$RINGFLYD" --socket "$T/$name.sock" --data-dir "$data" "$@"
	_LOGS+=("$logf")
	PEER_SOCK[$name]="$T/$name.sock"
	PEER_PID[$name]=$NS_BG_PID
	PEER_LOG[$name]=$logf
	PEER_DATA[$name]=$data
}

# node_ready NAME: healthy and its peer listener bound. (A peer connects to the
# scheduler at its first get, a seed at once: run_swarm waits for its registration.)
node_ready() {
	local name=$1 ip=${NS_IP[$1]}
	must_health "${PEER_SOCK[$name]}" 10 "${PEER_PID[$name]}"
	wait_log "${PEER_LOG[$name]}" "listening peer=${ip//./\\.}:$peer_port " 10 "${PEER_PID[$name]}"
}

# stop_node NAME: SIGTERM (PeerLeave), reaped within 10 s; its data dir removed.
stop_node() {
	kill_and_reap "${PEER_PID[$1]}" TERM
	rm -rf "${PEER_DATA[$1]}"
	unset "PEER_PID[$1]"
}

# check_get NAME RC: a get exited 0 and its summary names SIZE bytes.
check_get() {
	[[ $2 == 0 ]] || fail "get $1: exit $2, expected 0; stderr: $(head -c 2000 "$T/$1.err")"
	grep -q "$size bytes in" "$T/$1.err" || fail "get $1: no '$size bytes in' summary: $(head -c 2000 "$T/$1.err")"
}

TIMEFORMAT='%R %U %S'
declare -A all_s=() all_egress=() all_cpu=()

# row RUN CONTENDER SECONDS EGRESS CPU NOTES
row() { printf '%4s  %-14s %8s %8s %10s  %s\n' "$@"; }

# run_curl ROUND: curl -o /dev/null from p1, alone.
run_curl() {
	local r=$1 q="p4=curl-r$1" t0 s tf="$T/curl.time" rc=0 e cpu
	prewarm "$data_parent" "$prewarm_mib" "$(hold_mib 0)"
	t0=$EPOCHREALTIME
	{ time netns_exec p1 curl -sf -o /dev/null -w '%{size_download}\n' "$NGINX_URL/big?$q" \
		>"$T/curl.out" 2>"$T/curl.err" 9>&-; } 2>"$tf" || rc=$?
	s=$(elapsed "$t0")
	prewarm_end
	[[ $rc == 0 ]] || fail "curl in p1: exit $rc: $(cat "$T/curl.err")"
	[[ $(cat "$T/curl.out") == "$size" ]] || fail "curl in p1 got $(cat "$T/curl.out") bytes, expected $size"
	egress "$q"
	e=$EGRESS
	cpu=$(awk -v t="$(tail -n 1 "$tf")" -v g="$gib" 'BEGIN { split(t, a, " "); printf "%.3f", (a[2] + a[3]) / g }')
	all_s[curl]+=" $s"
	all_egress[curl]+=" $e"
	all_cpu[curl]+=" $cpu"
	row "$r" "curl alone" "$s" "$e" "$cpu" "curl's own CPU"
}

# run_single ROUND: ringfly get from p1 through a ringflyd without a scheduler.
run_single() {
	local r=$1 q="p4=single-r$1" c0 c1 t0 s rc=0 e cpu done_ms
	start_node ref p1
	must_health "${PEER_SOCK[ref]}" 10 "${PEER_PID[ref]}"
	prewarm "$data_parent" "$prewarm_mib" "$(hold_mib 1)"
	cpu_sum "${PEER_PID[ref]}"
	c0=$CPU_SUM
	t0=$EPOCHREALTIME
	"$RINGFLY" --socket "${PEER_SOCK[ref]}" get "$NGINX_URL/big?$q" -O /dev/null --no-progress \
		>"$T/single.out" 2>"$T/single.err" 9>&- || rc=$?
	s=$(elapsed "$t0")
	prewarm_end
	check_get single "$rc"
	grep -q 'from origin' "$T/single.err" || fail "single get not from the origin: $(cat "$T/single.err")"
	cpu_sum "${PEER_PID[ref]}"
	c1=$CPU_SUM
	egress "$q"
	e=$EGRESS
	cpu=$(awk -v a="$c0" -v b="$c1" -v g="$gib" 'BEGIN { printf "%.3f", (b - a) / g }')
	done_line ref "$(task_id_of "$NGINX_URL/big?$q")"
	done_ms=$(log_field "$DONE_LINE" ms)
	stop_node ref
	all_s[single]+=" $s"
	all_egress[single]+=" $e"
	all_cpu[single]+=" $cpu"
	row "$r" "ringfly alone" "$s" "$e" "$cpu" "daemon's CPU; download done ms=$done_ms"
}

# run_swarm ROUND N: a fresh scheduler, seed and N peers; N gets at once.
run_swarm() {
	local r=$1 n=$2 q="p4=swarm$2-r$1" url id i rc t0 s e cpu c0 c1 name
	local -a pids=() daemons=()
	local from_peers=0 peer_origin=0 ms_min='' ms_max=0 ms seed_ms='-' exp
	url="$NGINX_URL/big?$q"
	id=$(task_id_of "$url")
	start_scheduler --netns sched "$sched_at" --log-level debug >/dev/null
	# shellcheck disable=SC2086 # SEED_ARGS: extra ringflyd flags for the seed
	start_node seed seed --role seed --listen-peer "${NS_IP[seed]}:$peer_port" \
		--scheduler "$sched_at" --advertise-ip "${NS_IP[seed]}" ${SEED_ARGS:-}
	for ((i = 1; i <= n; i++)); do
		# shellcheck disable=SC2086 # PEER_ARGS: extra ringflyd flags, split on spaces
		start_node "p$i" "p$i" --listen-peer "${NS_IP[p$i]}:$peer_port" \
			--scheduler "$sched_at" --advertise-ip "${NS_IP[p$i]}" ${PEER_ARGS:-}
	done
	node_ready seed
	wait_log "$SCHED_LOG" "announce task=0{64} peer=${NS_IP[seed]//./\\.}:$peer_port .*seed=1" 10 "$SCHED_PID"
	daemons=("$SCHED_PID" "${PEER_PID[seed]}")
	for ((i = 1; i <= n; i++)); do
		node_ready "p$i"
		daemons+=("${PEER_PID[p$i]}")
	done
	prewarm "$data_parent" "$prewarm_mib" "$(hold_mib $((n + 1)))"
	cpu_sum "${daemons[@]}"
	c0=$CPU_SUM
	t0=$EPOCHREALTIME
	for ((i = 1; i <= n; i++)); do
		"$RINGFLY" --socket "${PEER_SOCK[p$i]}" get "$url" -O /dev/null --no-progress \
			>"$T/g$i.out" 2>"$T/g$i.err" 9>&- &
		pids+=($!)
		track "$!" "ringfly get g$i"
	done
	for ((i = 1; i <= n; i++)); do
		wait_exit "${pids[i - 1]}" "$get_deadline_s"
		rc=$WAIT_RC
		[[ $rc == timeout ]] && fail "get g$i at p$i not done within $get_deadline_s s: $(tail -n 5 "${PEER_LOG[p$i]}")"
		pids[i - 1]=$rc
	done
	s=$(elapsed "$t0")
	prewarm_end
	cpu_sum "${daemons[@]}"
	c1=$CPU_SUM
	for ((i = 1; i <= n; i++)); do
		check_get "g$i" "${pids[i - 1]}"
		done_line "p$i" "$id"
		[[ $(log_field "$DONE_LINE" source) == peer ]] && from_peers=$((from_peers + 1))
		peer_origin=$((peer_origin + $(log_field "$DONE_LINE" origin_bytes)))
		ms=$(log_field "$DONE_LINE" ms)
		[[ -z $ms_min || $ms -lt $ms_min ]] && ms_min=$ms
		((ms > ms_max)) && ms_max=$ms
	done
	if log_has "${PEER_LOG[seed]}" "download done task=$id"; then
		done_line seed "$id"
		seed_ms=$(log_field "$DONE_LINE" ms)
	fi
	egress "$q"
	e=$EGRESS
	cpu=$(awk -v a="$c0" -v b="$c1" -v g="$gib" -v n="$n" 'BEGIN { printf "%.3f", (b - a) / (g * n) }')
	if ((r == 1)); then
		# Content, once per N (untimed): p1's cache against the source.
		"$RINGFLY" --socket "${PEER_SOCK[p1]}" export "$id" -O "$T/export" >/dev/null 2>"$T/export.err" 9>&- ||
			fail "ringfly export $id at p1: $(cat "$T/export.err")"
		[[ $(sha "$T/export") == "$src_sha" ]] || fail "p1's copy of $url differs from the source"
		rm -f "$T/export"
	fi
	exp=$(grep -c "peer expired task=$id" "$SCHED_LOG")
	for name in seed $(seq -f 'p%g' 1 "$n"); do
		stop_node "$name"
	done
	stop_scheduler TERM
	all_s[n$n]+=" $s"
	all_egress[n$n]+=" $e"
	all_cpu[n$n]+=" $cpu"
	row "$r" "swarm N=$n" "$s" "$e" "$cpu" "from peers $from_peers/$n, peers' origin bytes $peer_origin; done ms $ms_min..$ms_max, seed $seed_ms$( ((exp == 0)) || echo "; $exp peer expired")"
}

echo
row run contender seconds egress "CPU-s/GiB" notes
row "" "" "" "x file" delivered ""
for ((round = 1; round <= runs; round++)); do
	run_curl "$round"
	run_single "$round"
	for n in $peer_counts; do
		run_swarm "$round" "$n"
	done
done

med() { median "${all_s[$1]}"; }
echo
echo "medians of $runs runs        seconds   egress x file   CPU-s/GiB delivered"
printf '  %-24s %8s %15s %11s\n' "curl -o /dev/null alone" "$(med curl)" \
	"$(median "${all_egress[curl]}")" "$(median "${all_cpu[curl]}")"
printf '  %-24s %8s %15s %11s\n' "ringfly get alone" "$(med single)" \
	"$(median "${all_egress[single]}")" "$(median "${all_cpu[single]}")"
for n in $peer_counts; do
	printf '  %-24s %8s %15s %11s\n' "swarm N=$n" "$(med "n$n")" \
		"$(median "${all_egress[n$n]}")" "$(median "${all_cpu[n$n]}")"
done
echo "CPU: curl's own; ringfly alone: its daemon; swarm: every ringflyd (seed, N peers) and the"
echo "scheduler, per GiB delivered (N x the file); the CLIs and nginx are not counted"
echo
echo "ratio = ours / reference (medians)"
for n in $peer_counts; do
	r1=$(ratio "${all_s[n$n]}" "${all_s[single]}")
	r2=$(ratio "${all_s[n$n]}" "${all_s[curl]}")
	eg=$(median "${all_egress[n$n]}")
	echo "  N=$n: time all done / ringfly alone ${r1}x (target <= ${target_time}x: $(verdict "$r1" "<=" "$target_time"))," \
		"/ curl alone ${r2}x ($(verdict "$r2" "<=" "$target_time"))"
	echo "  N=$n: origin egress / file size ${eg}x (target <= ${target_egress}x: $(verdict "$eg" "<=" "$target_egress"))," \
		"CPU-s/GiB / ringfly alone $(ratio "${all_cpu[n$n]}" "${all_cpu[single]}")x"
done
