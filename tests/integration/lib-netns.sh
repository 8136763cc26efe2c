# shellcheck shell=bash
# Globals set here (NS_IP, SCHED_PID, ...) are read by the test scripts.
# shellcheck disable=SC2034,SC2153
# Swarms (issue 7): network namespaces on one bridge, and the scheduler.
# Source it after lib.sh (and lib-http.sh / lib-p2p.sh when used):
#
#     . "$(dirname "$0")/lib.sh"
#     . "$(dirname "$0")/lib-netns.sh"
#
# Namespaces (root only; netns_setup skips the test, exit 77, when not root or
# when `ip netns add` / veth / bridge / tc do not work, e.g. in an unprivileged
# container):
# - netns_setup ID: a namespace rfsw-PID-br holding a bridge br0; the nodes'
#   subnet is 198.18.ID.0/24 (198.18.0.0/15 only: the benchmarking range, never
#   routed anywhere). Installs the EXIT trap that tears everything down.
# - netns_add NODE HOST: a namespace rfsw-PID-NODE with lo up and eth0 =
#   198.18.ID.HOST/24, the other end of its veth pair (vHOST) in the bridge.
#   Nothing is ever created in the root namespace: the pair is made inside the
#   bridge's namespace with its peer end put straight into the node's, so no
#   interface name can clash with the host's or another test's.
# - netns_shape NODE RATE [out|in|both]: a tbf qdisc of RATE (tc units: 1gbit)
#   on the node's egress (eth0: what it sends), its ingress (the bridge's vHOST:
#   what it receives), or both (default out).
# - netns_exec NODE CMD...: CMD in NODE's network namespace (nsenter --net: the
#   mount namespace stays the host's, so Unix sockets and files under $T are
#   shared), in the foreground; stdin/fds as the caller's.
# - netns_bg NODE LOG CMD...: the same in the background, stdout+stderr -> LOG,
#   tracked (lib.sh's track: SIGKILLed on exit) with default SIGINT/SIGQUIT;
#   sets NS_BG_PID.
# - netns_teardown: SIGKILLs what runs in this test's namespaces, deletes them
#   (the veth pairs and the bridge go with them) and checks none is left. The
#   EXIT trap calls it, whatever made the test end. netns_setup also sweeps the
#   namespaces a previous run left behind (rfsw-PID-* whose PID is gone: a run
#   killed with SIGKILL, e.g. at the ctest timeout, has no EXIT trap).
#
# nginx in a namespace (needs lib-http.sh): netns_start_nginx NODE [PORT] and
# netns_nginx_wait_idle.
#
# The scheduler (any user; used by the loopback swarm test too):
# - start_scheduler [--netns NODE] ADDRESS [args...]: ringfly-scheduler
#   --listen ADDRESS (HOST:0 works), waits for `scheduler listening ...
#   port=N`; sets SCHED_PID, SCHED_LOG, SCHED_PORT, SCHED_ADDR (HOST:PORT).
# - stop_scheduler [SIGNAL]: TERM (default: must exit 0 within 5 s) or KILL.

: "${RINGFLY_SCHEDULER:=}"

NETNS_PREFIX=rfsw
NETNS_TAG="$NETNS_PREFIX-$$"    # every namespace of this run: rfsw-PID-*
NETNS_BR="$NETNS_TAG-br"
NETNS_ID=
NETNS_NODES=()                  # node names, in creation order
declare -A NS_NAME=() NS_IP=() NS_HOST=()
_NETNS_MADE=()                  # namespaces created (bridge first)
_NETNS_TRAP=0

# _netns_run CMD...: runs CMD, its stderr kept in $T/netns.err.
_netns_run() {
    "$@" 2>"$T/netns.err" 9>&-
}

# _netns_sweep: deletes rfsw-PID-* namespaces whose PID no longer exists.
_netns_sweep() {
    local ns pid p swept=0
    while read -r ns _; do
        [[ $ns =~ ^$NETNS_PREFIX-([0-9]+)- ]] || continue
        pid=${BASH_REMATCH[1]}
        [[ $pid == "$$" || -e /proc/$pid ]] && continue
        # What that run started in it runs on (unreachable, holding memory
        # and files) until killed: the namespace outlives its mount point.
        for p in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$p" 2>/dev/null
        done
        if ip netns del "$ns" 2>/dev/null; then
            swept=$((swept + 1))
        fi
    done < <(ip netns list 2>/dev/null)
    ((swept == 0)) || log "swept $swept namespace(s) left by an earlier run (rfsw-PID-* of dead PIDs)"
}

# netns_require: root, ip, tc and nsenter, else skip.
netns_require() {
    [[ $EUID == 0 ]] || skip "network namespaces need root (EUID $EUID)"
    require_cmd ip
    require_cmd tc
    require_cmd nsenter
}

# _netns_exit: the EXIT trap once namespaces exist: what ran is killed first
# (a namespace lives on while a process is in it), then the namespaces go,
# then lib.sh's own cleanup with the same exit status.
_netns_exit() {
    local rc=$?
    trap - EXIT
    _kill_tracked
    netns_teardown
    _netns_rc "$rc"
    _cleanup
}
_netns_rc() { return "$1"; }

# netns_setup ID: see above.
netns_setup() {
    local id=$1
    netns_require
    if ! [[ $id =~ ^[0-9]+$ ]] || ((id > 255)); then
        fail "netns_setup: bad subnet id '$id'"
    fi
    NETNS_ID=$id
    _netns_sweep
    if ((!_NETNS_TRAP)); then
        trap _netns_exit EXIT
        _NETNS_TRAP=1
    fi
    _netns_run ip netns add "$NETNS_BR" || skip "ip netns add failed (no permission to make network namespaces?): $(cat "$T/netns.err")"
    _NETNS_MADE+=("$NETNS_BR")
    _netns_run ip -n "$NETNS_BR" link set lo up || fail "lo up in $NETNS_BR: $(cat "$T/netns.err")"
    _netns_run ip -n "$NETNS_BR" link add br0 type bridge ||
        skip "cannot make a bridge in a namespace: $(cat "$T/netns.err")"
    _netns_run ip -n "$NETNS_BR" link set br0 up || fail "br0 up in $NETNS_BR: $(cat "$T/netns.err")"
    log "bridge br0 in namespace $NETNS_BR for 198.18.$id.0/24"
}

# netns_add NODE HOST: see above. Sets NS_NAME[NODE], NS_IP[NODE], NS_HOST[NODE].
netns_add() {
    local node=$1 host=$2 ns ip
    [[ -n $NETNS_ID ]] || fail "netns_add before netns_setup"
    if ! [[ $host =~ ^[0-9]+$ ]] || ((host < 1 || host > 254)); then
        fail "netns_add $node: bad host number '$host'"
    fi
    [[ -z ${NS_NAME[$node]:-} ]] || fail "netns_add: node $node exists already"
    ns="$NETNS_TAG-$node"
    ip="198.18.$NETNS_ID.$host"
    _netns_run ip netns add "$ns" || fail "ip netns add $ns: $(cat "$T/netns.err")"
    _NETNS_MADE+=("$ns")
    _netns_run ip -n "$NETNS_BR" link add "v$host" type veth peer name eth0 netns "$ns" ||
        skip "cannot make a veth pair between namespaces: $(cat "$T/netns.err")"
    if ! { _netns_run ip -n "$NETNS_BR" link set "v$host" master br0 up &&
        _netns_run ip -n "$ns" link set lo up &&
        _netns_run ip -n "$ns" addr add "$ip/24" dev eth0 &&
        _netns_run ip -n "$ns" link set eth0 up; }; then
        fail "setting up $ns ($ip): $(cat "$T/netns.err")"
    fi
    NS_NAME[$node]=$ns
    NS_IP[$node]=$ip
    NS_HOST[$node]=$host
    NETNS_NODES+=("$node")
}

# netns_shape NODE RATE [out|in|both]: see above.
netns_shape() {
    local node=$1 rate=$2 dir=${3:-out} ns=${NS_NAME[$1]:-}
    [[ -n $ns ]] || fail "netns_shape: no node $node"
    # burst: enough for a 1 ms tick at RATE and a few GSO packets;
    # latency bounds the queue.
    if [[ $dir == out || $dir == both ]]; then
        _netns_run tc -n "$ns" qdisc add dev eth0 root tbf rate "$rate" burst 1mb latency 20ms ||
            skip "tc tbf on $ns eth0 failed (sch_tbf missing?): $(cat "$T/netns.err")"
    fi
    if [[ $dir == in || $dir == both ]]; then
        _netns_run tc -n "$NETNS_BR" qdisc add dev "v${NS_HOST[$node]}" root tbf rate "$rate" burst 1mb latency 20ms ||
            skip "tc tbf on $NETNS_BR v${NS_HOST[$node]} failed: $(cat "$T/netns.err")"
    fi
}

# netns_exec NODE CMD...: see above.
netns_exec() {
    local ns=${NS_NAME[$1]:-}
    [[ -n $ns ]] || fail "netns_exec: no node $1"
    shift
    nsenter --net="/run/netns/$ns" -- "$@"
}

# netns_bg NODE LOG CMD...: see above.
netns_bg() {
    local node=$1 logf=$2 ns=${NS_NAME[$1]:-}
    [[ -n $ns ]] || fail "netns_bg: no node $node"
    shift 2
    # nsenter and env exec: the pid tracked is the command's own.
    nsenter --net="/run/netns/$ns" -- env --default-signal=INT,QUIT "$@" >"$logf" 2>&1 9>&- &
    NS_BG_PID=$!
    track "$NS_BG_PID" "$1 in $node"
}

# netns_teardown: see above. Idempotent.
netns_teardown() {
    local ns pid i left
    ((${#_NETNS_MADE[@]})) || return 0
    # Anything still running in our namespaces (it was started by this test).
    for ns in "${_NETNS_MADE[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
    done
    # Nodes first, the bridge last (its veth ends go with either side).
    for ((i = ${#_NETNS_MADE[@]} - 1; i >= 0; i--)); do
        ip netns del "${_NETNS_MADE[$i]}" 2>/dev/null
    done
    _NETNS_MADE=()
    left=$(ip netns list 2>/dev/null | grep -c "^$NETNS_TAG-")
    ((left == 0)) || echo "[$TEST_NAME] WARNING: $left namespace(s) $NETNS_TAG-* left after teardown" >&2
}

# --------------------------------------------------------- nginx in a namespace

# netns_start_nginx NODE [PORT]: nginx with lib-http.sh's locations (/NAME,
# /slow/NAME, /.rfit-status, ...) for the docroot $WWW in NODE's namespace on
# NS_IP[NODE]:PORT (default 8080), run as lib-http.sh runs it (daemon off,
# master_process off, its own logs under $T); waits (10 s) until it serves a
# token file, fetched from inside the namespace. Sets NGINX_PID, NGINX_PORT,
# NGINX_URL, NGINX_DIR, NGINX_ACCESS_LOG, NGINX_ROOT, NGINX_NODE (lib-http.sh's
# origin_bytes / origin_requests read the access log). Needs lib-http.sh.
netns_start_nginx() {
    local node=$1 port=${2:-8080} root=$WWW dir conf token t0 ip=${NS_IP[$1]:-}
    [[ -n $ip ]] || fail "netns_start_nginx: no node $node"
    require_nginx
    _NGX_COUNT=$((_NGX_COUNT + 1))
    dir="$T/nginx.$_NGX_COUNT"
    mkdir -p "$dir"
    chmod 755 "$dir" "$root"
    token="rfit-$$-$_NGX_COUNT-$RANDOM$RANDOM"
    printf '%s\n' "$token" >"$root/.rfit-ready.$_NGX_COUNT"
    chmod 644 "$root/.rfit-ready.$_NGX_COUNT"
    conf="$dir/nginx.conf"
    {
        printf 'worker_processes 1;\nerror_log %s/error.log info;\npid %s/nginx.pid;\n' "$dir" "$dir"
        printf 'events { worker_connections 1024; }\nhttp {\n access_log %s/access.log;\n' "$dir"
        printf ' client_body_temp_path %s/body; proxy_temp_path %s/proxy;\n' "$dir" "$dir"
        printf ' fastcgi_temp_path %s/fastcgi; uwsgi_temp_path %s/uwsgi; scgi_temp_path %s/scgi;\n' "$dir" "$dir" "$dir"
        printf ' default_type application/octet-stream;\n sendfile on;\n keepalive_requests 100000;\n'
        # shellcheck disable=SC2016 # an nginx variable
        printf ' limit_req_zone $server_port zone=slow:1m rate=1r/s;\n'
        printf ' server {\n  listen %s:%s;\n' "$ip" "$port"
        _nginx_locations "$root" 0 '' ''
        printf ' }\n}\n'
    } >"$conf"
    : >"$dir/access.log"
    netns_bg "$node" "$dir/stderr.log" "$NGINX_BIN" -p "$dir" -c "$conf" -g 'daemon off; master_process off;'
    NGINX_PID=$NS_BG_PID
    _LOGS+=("$dir/error.log")
    now_ms; t0=$NOW_MS
    until netns_exec "$node" curl -sf --max-time 2 -o "$dir/ready.out" "http://$ip:$port/.rfit-ready.$_NGX_COUNT" 2>/dev/null 9>&- &&
        [[ $(cat "$dir/ready.out") == "$token" ]]; do
        if ! alive "$NGINX_PID"; then
            wait_exit "$NGINX_PID" 1
            fail "nginx in $node exited ($WAIT_RC) before serving: $(cat "$dir/stderr.log" "$dir/error.log" 2>/dev/null | tail -n 20)"
        fi
        now_ms
        ((NOW_MS - t0 > 10000)) && fail "nginx (pid $NGINX_PID) not serving on $ip:$port within 10 s: $(tail -n 20 "$dir/error.log" 2>/dev/null)"
        nap
    done
    NGINX_PORT=$port
    NGINX_URL="http://$ip:$port"
    NGINX_DIR=$dir
    NGINX_ROOT=$root
    NGINX_NODE=$node
    NGINX_ACCESS_LOG="$dir/access.log"
    log "nginx pid $NGINX_PID serving $root at $NGINX_URL (namespace of $node)"
}

# netns_nginx_wait_idle [DEADLINE_S]: lib-http.sh's nginx_wait_idle for the
# nginx of netns_start_nginx (its status asked from inside its namespace).
netns_nginx_wait_idle() {
    NGINX_STATUS_VIA="netns_exec $NGINX_NODE" nginx_wait_idle "${1:-10}" "$NGINX_URL"
}

# ------------------------------------------------------------------ scheduler

require_scheduler() {
    [[ -n $RINGFLY_SCHEDULER && -x $RINGFLY_SCHEDULER ]] ||
        fail "RINGFLY_SCHEDULER (ringfly-scheduler binary) not set or not executable: '$RINGFLY_SCHEDULER'"
}

# start_scheduler [--netns NODE] ADDRESS [args...]: see above. Bind failures
# (address in use) are retried for up to 3 s: a scheduler killed a moment ago
# may still hold the port (the kernel tears an io_uring down asynchronously).
_SCHEDCOUNT=0
SCHED_ARGS=()
start_scheduler() {
    local node='' addr t0 t_start port host rc
    if [[ $1 == --netns ]]; then
        node=$2
        shift 2
    fi
    addr=$1
    shift
    SCHED_ARGS=("$@")
    require_scheduler
    now_ms; t_start=$NOW_MS
    while :; do
        _SCHEDCOUNT=$((_SCHEDCOUNT + 1))
        SCHED_LOG="$T/scheduler.$_SCHEDCOUNT.log"
        if [[ -n $node ]]; then
            netns_bg "$node" "$SCHED_LOG" "$RINGFLY_SCHEDULER" --listen "$addr" "$@"
            SCHED_PID=$NS_BG_PID
        else
            env --default-signal=INT,QUIT "$RINGFLY_SCHEDULER" --listen "$addr" "$@" \
                >"$SCHED_LOG" 2>&1 9>&- &
            SCHED_PID=$!
            track "$SCHED_PID" ringfly-scheduler
        fi
        _LOGS+=("$SCHED_LOG")
        now_ms; t0=$NOW_MS
        while ! LOG_LINE=$(grep -m 1 -E 'scheduler listening address=[^ ]+ port=[0-9]+' "$SCHED_LOG" 2>/dev/null); do
            if ! alive "$SCHED_PID"; then
                wait_exit "$SCHED_PID" 1
                rc=$WAIT_RC
                now_ms
                if grep -qi 'in use' "$SCHED_LOG" && ((NOW_MS - t_start < 3000)); then
                    log "scheduler: $addr still in use, again ($(tail -n 1 "$SCHED_LOG"))"
                    nap 0.05
                    continue 2
                fi
                fail "ringfly-scheduler --listen $addr exited $rc before listening: $(tail -n 20 "$SCHED_LOG")"
            fi
            now_ms
            ((NOW_MS - t0 > 10000)) && fail "ringfly-scheduler --listen $addr: no 'scheduler listening' line within 10 s: $(tail -n 20 "$SCHED_LOG")"
            nap
        done
        break
    done
    port=${LOG_LINE##*port=}
    port=${port%% *}
    [[ $port =~ ^[0-9]+$ && $port -gt 0 ]] || fail "scheduler: bad port in '$LOG_LINE'"
    host=${addr%:*}
    SCHED_PORT=$port
    SCHED_ADDR="$host:$port"
    log "scheduler pid $SCHED_PID at $SCHED_ADDR${node:+ (namespace of $node)}, log $SCHED_LOG"
}

# stop_scheduler [TERM|KILL]: TERM must exit 0 within 5 s (contract); KILL is
# reaped. Unsets SCHED_PID.
stop_scheduler() {
    local sig=${1:-TERM}
    if [[ $sig == TERM ]]; then
        kill -TERM "$SCHED_PID" 2>/dev/null
        wait_exit "$SCHED_PID" 5
        [[ $WAIT_RC == 0 ]] || fail "ringfly-scheduler (pid $SCHED_PID) exited '$WAIT_RC' after SIGTERM, expected 0: $(tail -n 5 "$SCHED_LOG")"
    else
        kill_and_reap "$SCHED_PID" "$sig"
    fi
    SCHED_PID=
}

# sched_sanitizer_check [LOG...]: no sanitizer report in the scheduler logs
# (default: every scheduler log of the test).
sched_sanitizer_check() {
    local f
    (($#)) || set -- "$T"/scheduler.*.log
    for f in "$@"; do
        [[ -f $f ]] || continue
        if grep -qE 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$f"; then
            fail "sanitizer report in $f: $(grep -m 1 -A 12 -E 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$f")"
        fi
    done
}
