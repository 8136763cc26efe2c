# shellcheck shell=bash
# Globals set here (NGINX_URL, HTTP_CA_FILE, ...) are read by the test scripts.
# shellcheck disable=SC2034
# Origins for the back-to-source tests (issue 5): a real nginx on loopback, a
# server that accepts and never answers, a closed port. Source it after lib.sh:
#
#     . "$(dirname "$0")/lib.sh"
#     . "$(dirname "$0")/lib-http.sh"
#
# Everything it starts is tracked (lib.sh's track) and SIGKILLed by the EXIT
# trap; every readiness wait polls with a deadline.
#
# One nginx instance (start_nginx) serves one docroot with these locations:
#   /NAME            the file WWW/NAME, byte ranges on (off with --no-ranges)
#   /noranges/NAME   the same file, max_ranges 0 (no Accept-Ranges, 200 for a range)
#   /slow/NAME       the same file, throttled: limit_rate RATE per request
#                    (--rate, default none; a request gets one second's worth at
#                    once, so this paces long requests only), and with
#                    --req-rate N a limit_req of N requests a second over all
#                    connections (queued, not refused), which paces range
#                    requests: N x the piece length bytes a second
#   /auth/NAME       the same file, 403 unless the request has "X-Rfit-Token: s3cret"
#   /forbidden       403
#   /error500        500
# and with --tls the same locations over HTTPS on a second port, with a
# certificate for IP 127.0.0.1 signed by a CA made here (HTTP_CA_FILE).

NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
WWW="$T/www"              # default docroot
mkdir -p "$WWW"
# nginx reads the docroot through $T (mktemp makes it 0700): let any user
# traverse it, whatever user nginx ends up serving as.
chmod 755 "$T" "$WWW"

_NGX_COUNT=0

require_nginx() {
    [[ -x $NGINX_BIN ]] || skip "nginx not installed ($NGINX_BIN; package nginx-light)"
    require_cmd curl
}

# make_file PATH SIZE: SIZE bytes of random data at PATH (mode 0644).
# SIZE accepts head -c suffixes (K, M: powers of 1024).
make_file() {
    head -c "$2" /dev/urandom >"$1" || fail "cannot write $2 bytes to $1"
    chmod 644 "$1"
}

# sha FILE: the sha256 hex of FILE.
sha() {
    local h
    h=$(sha256sum <"$1") || fail "sha256sum $1 failed"
    printf '%s\n' "${h%% *}"
}

# size_of FILE
size_of() { stat -c %s -- "$1"; }

# rand_port: a port in 20000..59999 (bind failures are retried by the caller).
rand_port() { echo $((20000 + (RANDOM * 32768 + RANDOM) % 40000)); }

# port_listening PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# _make_ca: a CA and a certificate for IP 127.0.0.1 signed by it (openssl CLI),
# once per test, in $T/tls. Sets HTTP_CA_FILE, _TLS_CERT, _TLS_KEY.
_make_ca() {
    local d="$T/tls"
    [[ -f $d/server.pem ]] && return 0
    require_cmd openssl
    mkdir -p "$d"
    chmod 755 "$d"
    (
        cd "$d" &&
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ringfly-test-ca \
            -keyout ca.key -out ca.pem &&
        openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
            -keyout server.key -out server.csr &&
        printf 'subjectAltName=IP:127.0.0.1\n' >ext.cnf &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -days 2 -extfile ext.cnf -out server.pem &&
        chmod 644 ./*.key ./*.pem
    ) >"$T/openssl.log" 2>&1 9>&- || fail "making the test CA failed: $(cat "$T/openssl.log")"
    HTTP_CA_FILE="$d/ca.pem"
    _TLS_CERT="$d/server.pem"
    _TLS_KEY="$d/server.key"
}

# _nginx_locations ROOT RANGES_OFF RATE REQRATE: the locations of one server block.
_nginx_locations() {
    local root=$1 noranges=$2 rate=$3 reqrate=$4
    printf '  root %s;\n' "$root"
    [[ $noranges == 1 ]] && printf '  max_ranges 0;\n'
    printf '  location = /forbidden { return 403; }\n'
    printf '  location = /.rfit-status { stub_status; access_log off; }\n'
    printf '  location = /error500 { return 500; }\n'
    printf '  location /noranges/ { alias %s/; max_ranges 0; }\n' "$root"
    printf '  location /slow/ { alias %s/;' "$root"
    [[ -n $rate ]] && printf ' limit_rate %s;' "$rate"
    [[ -n $reqrate ]] && printf ' limit_req zone=slow burst=1000000;'
    printf ' }\n'
    # shellcheck disable=SC2016 # an nginx variable, not a shell one
    printf '  location /auth/ { alias %s/; if ($http_x_rfit_token != "s3cret") { return 403; } }\n' "$root"
}

# start_nginx [--no-ranges] [--tls] [--rate RATE] [--req-rate N] [--root DIR]: starts nginx in
# the foreground (daemon off; master_process off) from $T/nginx.N on a free
# port of 127.0.0.1 (a bind failure is retried on another port), and waits
# until it serves a token file of its own. Sets:
#   NGINX_PID, NGINX_PORT, NGINX_URL (http://127.0.0.1:PORT), NGINX_DIR,
#   NGINX_ACCESS_LOG, NGINX_ROOT, and with --tls NGINX_TLS_PORT, NGINX_TLS_URL,
#   HTTP_CA_FILE.
start_nginx() {
    local noranges=0 tls=0 rate='' reqrate='' root=$WWW dir conf port tls_port attempt t0 token listen_tls
    while (($#)); do
        case $1 in
            --no-ranges) noranges=1 ;;
            --tls) tls=1 ;;
            --rate) rate=$2; shift ;;
            --req-rate) reqrate=$2; shift ;;
            --root) root=$2; shift ;;
            *) fail "start_nginx: unknown option $1" ;;
        esac
        shift
    done
    require_nginx
    ((tls)) && _make_ca
    _NGX_COUNT=$((_NGX_COUNT + 1))
    dir="$T/nginx.$_NGX_COUNT"
    mkdir -p "$dir"
    chmod 755 "$dir" "$root"
    token="rfit-$$-$_NGX_COUNT-$RANDOM$RANDOM"
    printf '%s\n' "$token" >"$root/.rfit-ready.$_NGX_COUNT"
    chmod 644 "$root/.rfit-ready.$_NGX_COUNT"

    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$(rand_port)
        tls_port=$(rand_port)
        [[ $tls_port == "$port" ]] && tls_port=$((port + 1))
        listen_tls=
        if ((tls)); then
            listen_tls=$(
                printf ' server {\n  listen 127.0.0.1:%d ssl;\n' "$tls_port"
                printf '  ssl_certificate %s; ssl_certificate_key %s;\n' "$_TLS_CERT" "$_TLS_KEY"
                _nginx_locations "$root" "$noranges" "$rate" "$reqrate"
                printf ' }\n'
            )
        fi
        conf="$dir/nginx.conf"
        cat >"$conf" <<EOF
worker_processes 1;
error_log $dir/error.log info;
pid $dir/nginx.pid;
events { worker_connections 1024; }
http {
 access_log $dir/access.log;
 client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
 fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
 default_type application/octet-stream;
 sendfile on;
 keepalive_requests 100000;
 limit_req_zone \$server_port zone=slow:1m rate=${reqrate:-1}r/s;
 limit_req_status 503;
 server {
  listen 127.0.0.1:$port;
$(_nginx_locations "$root" "$noranges" "$rate" "$reqrate")
 }
$listen_tls
}
EOF
        : >"$dir/access.log"
        "$NGINX_BIN" -p "$dir" -c "$conf" -g 'daemon off; master_process off;' \
            >"$dir/stdout.log" 2>"$dir/stderr.log" 9>&- &
        NGINX_PID=$!
        track "$NGINX_PID" nginx
        now_ms; t0=$NOW_MS
        while :; do
            if curl -sf --max-time 2 -o "$dir/ready.out" "http://127.0.0.1:$port/.rfit-ready.$_NGX_COUNT" 2>/dev/null 9>&- &&
                [[ $(cat "$dir/ready.out") == "$token" ]]; then
                if ((tls)); then
                    curl -sf --max-time 2 --cacert "$HTTP_CA_FILE" -o "$dir/ready.out" \
                        "https://127.0.0.1:$tls_port/.rfit-ready.$_NGX_COUNT" 2>/dev/null 9>&- &&
                        [[ $(cat "$dir/ready.out") == "$token" ]] && break 2
                else
                    break 2
                fi
            fi
            if ! alive "$NGINX_PID"; then
                wait_exit "$NGINX_PID" 1
                grep -q 'Address already in use' "$dir/stderr.log" "$dir/error.log" 2>/dev/null && continue 2
                fail "nginx exited ($WAIT_RC) before serving: $(cat "$dir/stderr.log" "$dir/error.log" 2>/dev/null | tail -n 20)"
            fi
            now_ms
            if ((NOW_MS - t0 > 10000)); then
                fail "nginx (pid $NGINX_PID) not serving on 127.0.0.1:$port within 10 s: $(tail -n 20 "$dir/error.log" 2>/dev/null)"
            fi
            nap
        done
    done
    alive "$NGINX_PID" || fail "nginx: no free port found in 10 attempts"
    NGINX_PORT=$port
    NGINX_URL="http://127.0.0.1:$port"
    NGINX_DIR=$dir
    NGINX_ROOT=$root
    NGINX_ACCESS_LOG="$dir/access.log"
    NGINX_TLS_PORT=
    NGINX_TLS_URL=
    if ((tls)); then
        NGINX_TLS_PORT=$tls_port
        NGINX_TLS_URL="https://127.0.0.1:$tls_port"
    fi
    log "nginx pid $NGINX_PID serving $root at $NGINX_URL${NGINX_TLS_URL:+ and $NGINX_TLS_URL} (/slow/: rate ${rate:-none}, ${reqrate:-unlimited} req/s; ranges $((noranges ? 0 : 1)))"
}

# stop_nginx [PID]: SIGKILL and reap (default NGINX_PID).
stop_nginx() {
    kill_and_reap "${1:-$NGINX_PID}" KILL
}

# origin_bytes [ACCESS_LOG] [PATH_SUBSTRING]: the body bytes nginx sent, summed
# over the access log (10th field of the combined format), excluding the
# readiness probes; with PATH_SUBSTRING only the requests whose path contains it.
origin_bytes() {
    awk -v sub_="${2:-}" '
        $7 ~ /^\/\.rfit-ready/ { next }
        sub_ != "" && index($7, sub_) == 0 { next }
        { s += $10 }
        END { printf "%.0f\n", s }' "${1:-$NGINX_ACCESS_LOG}"
}

# origin_requests [ACCESS_LOG] [PATH_SUBSTRING]: the number of logged requests
# (readiness probes excluded).
origin_requests() {
    awk -v sub_="${2:-}" '
        $7 ~ /^\/\.rfit-ready/ { next }
        sub_ != "" && index($7, sub_) == 0 { next }
        { n++ }
        END { printf "%.0f\n", n }' "${1:-$NGINX_ACCESS_LOG}"
}

# nginx_wait_idle [DEADLINE_S] [URL]: waits until the nginx at URL (default
# NGINX_URL) has no request in progress (stub_status: reading + writing is only
# the status request itself), so that every request has been logged: nginx
# logs a request when it ends, an aborted one too. Idle keep-alive connections
# do not count. With NGINX_STATUS_VIA set (e.g. "netns_exec NODE"), the status
# is asked through that command (lib-netns.sh: from inside a namespace).
nginx_wait_idle() {
    local url=${2:-$NGINX_URL} t0 st reading writing
    local -a via=()
    [[ -n ${NGINX_STATUS_VIA:-} ]] && read -r -a via <<<"$NGINX_STATUS_VIA"
    _ms "${1:-10}"
    local limit=$_MS
    now_ms; t0=$NOW_MS
    while :; do
        st=$("${via[@]}" curl -sf --max-time 2 "$url/.rfit-status" 9>&-) || fail "nginx status at $url/.rfit-status: no answer"
        reading=$(sed -n 's/.*Reading: \([0-9]*\).*/\1/p' <<<"$st")
        writing=$(sed -n 's/.*Writing: \([0-9]*\).*/\1/p' <<<"$st")
        ((reading + writing <= 1)) && return 0
        now_ms
        ((NOW_MS - t0 > limit)) && fail "nginx at $url still busy after ${1:-10} s: $st"
        nap 0.05
    done
}

# start_stall_server: something listening on 127.0.0.1 that accepts connections
# (the kernel completes them into the backlog) and never answers a byte.
# Sets STALL_PID, STALL_PORT, STALL_URL.
start_stall_server() {
    local t0 out="$T/stall.port"
    : >"$out"
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import socket' 2>/dev/null 9>&-; then
        # Listens and never accepts: every connect completes (backlog 128) and
        # nothing is ever sent.
        python3 -c '
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
print(s.getsockname()[1], flush=True)
sys.stdout.close()
time.sleep(86400)
' >"$out" 2>"$T/stall.err" 9>&- &
        STALL_PID=$!
        track "$STALL_PID" stall-server
        now_ms; t0=$NOW_MS
        until [[ -s $out ]] && STALL_PORT=$(head -n 1 "$out") && [[ -n $STALL_PORT ]]; do
            alive "$STALL_PID" || fail "stall server died: $(cat "$T/stall.err")"
            now_ms
            ((NOW_MS - t0 > 10000)) && fail "stall server did not report its port within 10 s"
            nap
        done
    else
        require_cmd socat
        # One connection accepted and read into /dev/null, never answered; later
        # connects wait in the backlog of the listener (no fork: nothing outlives it).
        local attempt
        for attempt in 1 2 3 4 5 6 7 8 9 10; do
            STALL_PORT=$(rand_port)
            socat -u "TCP-LISTEN:$STALL_PORT,bind=127.0.0.1,reuseaddr,backlog=128" OPEN:/dev/null \
                >"$T/stall.err" 2>&1 9>&- &
            STALL_PID=$!
            track "$STALL_PID" stall-server
            now_ms; t0=$NOW_MS
            # Readiness without connecting (a connect would use up the accept):
            # the listening socket shows in ss.
            until ss -Hltn "( sport = :$STALL_PORT )" 2>/dev/null | grep -q .; do
                if ! alive "$STALL_PID"; then
                    wait_exit "$STALL_PID" 1
                    continue 2
                fi
                now_ms
                ((NOW_MS - t0 > 5000)) && fail "socat stall server not listening within 5 s"
                nap
            done
            break
        done
        alive "$STALL_PID" || fail "stall server: no free port in 10 attempts: $(cat "$T/stall.err")"
    fi
    STALL_URL="http://127.0.0.1:$STALL_PORT"
    log "stall server pid $STALL_PID at $STALL_URL"
}

# closed_port: a loopback port that refuses connections (port 1 if nothing
# listens there, else a port just bound and released). Sets CLOSED_PORT.
closed_port() {
    local p
    for p in 1 $(rand_port) $(rand_port) $(rand_port); do
        if ! port_listening "$p"; then
            CLOSED_PORT=$p
            return 0
        fi
    done
    fail "no closed loopback port found"
}

# ------------------------------------------------------------------ ringfly

# rf CMD ARGS...: ringfly against $SOCK, bounded (RF_DEADLINE, default 60 s);
# stdout -> $T/rf.out, stderr -> $T/rf.err; sets RF_RC.
rf() {
    timeout -k 2 "${RF_DEADLINE:-60}" "$RINGFLY" --socket "$SOCK" "$@" >"$T/rf.out" 2>"$T/rf.err" 9>&-
    RF_RC=$?
    return 0
}

# rf_get NAME URL OUT [args...]: `ringfly get URL -O OUT --no-progress args`
# (without --no-progress if RF_PROGRESS=1), bounded by RF_DEADLINE (default
# 60 s); stdout/stderr -> $T/NAME.out/.err; sets GET_RC and GET_MS.
rf_get() {
    local name=$1 url=$2 out=$3 t0 np=(--no-progress)
    shift 3
    [[ ${RF_PROGRESS:-0} == 1 ]] && np=()
    now_ms; t0=$NOW_MS
    timeout -k 2 "${RF_DEADLINE:-60}" "$RINGFLY" --socket "$SOCK" get "$url" -O "$out" "${np[@]}" "$@" \
        >"$T/$name.out" 2>"$T/$name.err" 9>&-
    GET_RC=$?
    now_ms; GET_MS=$((NOW_MS - t0))
    return 0
}

# expect_get_ok NAME URL OUT SRC [args...]: the get exits 0, OUT has the bytes
# of SRC, and the summary line on stderr names OUT, the byte count and
# "bytes in".
expect_get_ok() {
    local name=$1 url=$2 out=$3 src=$4
    shift 4
    rf_get "$name" "$url" "$out" "$@"
    [[ $GET_RC == 0 ]] || fail "get $url -O $out $*: exit $GET_RC, expected 0; stderr: $(head -c 2000 "$T/$name.err")"
    [[ -f $out ]] || fail "get $url exited 0 but $out does not exist"
    assert_eq "$(size_of "$src")" "$(size_of "$out")" "size of $out"
    assert_eq "$(sha "$src")" "$(sha "$out")" "sha256 of $out (from $url)"
    assert_contains "$T/$name.err" "ringfly: $out: $(size_of "$src") bytes in" "summary line of get $url"
}

# expect_get_fail NAME URL OUT CODE TEXT [args...]: the get exits CODE with
# TEXT on stderr (one line starting "ringfly: "), nothing at OUT, no temp file
# (.NAME.ringfly-*) left in OUT's directory.
expect_get_fail() {
    local name=$1 url=$2 out=$3 code=$4 text=$5
    shift 5
    rf_get "$name" "$url" "$out" "$@"
    [[ $GET_RC == "$code" ]] || fail "get $url -O $out $*: exit $GET_RC, expected $code; stderr: $(head -c 2000 "$T/$name.err")"
    assert_contains "$T/$name.err" "$text" "stderr of get $url"
    assert_contains "$T/$name.err" "ringfly: get $url" "stderr of get $url"
    assert_gone "$out" "after the failed get of $url"
    assert_no_temp "$out"
}

# assert_no_temp OUT: no .BASENAME.ringfly-* temp file in OUT's directory.
assert_no_temp() {
    local d b left
    d=$(dirname -- "$1")
    b=$(basename -- "$1")
    left=$(find "$d" -maxdepth 1 -name ".$b.ringfly-*" 2>/dev/null)
    [[ -z $left ]] || fail "temp file(s) left behind for $1: $left"
}

# assert_in_progress OUT: while a get runs, nothing is at OUT yet and its temp
# file .BASENAME.ringfly-XXXXXX is in OUT's directory.
assert_in_progress() {
    local d b tmp
    d=$(dirname -- "$1")
    b=$(basename -- "$1")
    [[ ! -e $1 ]] || fail "$1 exists while its get is still running"
    tmp=$(find "$d" -maxdepth 1 -name ".$b.ringfly-??????" 2>/dev/null)
    [[ -n $tmp ]] || fail "no temp file .$b.ringfly-XXXXXX in $d while the get of $1 runs: $(ls -la "$d")"
}

# stat_field KEY [FILE]: the value of "KEY: value" in a stat output ($T/rf.out).
stat_field() {
    local line
    while IFS= read -r line; do
        if [[ $line == "$1: "* ]]; then
            printf '%s\n' "${line#"$1: "}"
            return 0
        elif [[ $line == "$1:" ]]; then
            printf '\n'
            return 0
        fi
    done <"${2:-$T/rf.out}"
    return 1
}

# task_id_of URL: sha256("ringfly-task-v1\n" + URL) (fragment dropped).
task_id_of() {
    local h
    h=$(printf 'ringfly-task-v1\n%s' "${1%%#*}" | sha256sum)
    printf '%s\n' "${h%% *}"
}

# assert_no_data_task URL: `ringfly stat URL` finds no task, or one that does
# not claim data (not complete, no recorded bytes).
assert_no_data_task() {
    local url=$1 state done_
    rf stat "$url"
    if [[ $RF_RC == 1 ]]; then
        assert_contains "$T/rf.err" "no such task" "stderr of stat $url after a failed get"
        return 0
    fi
    [[ $RF_RC == 0 ]] || fail "stat $url exited $RF_RC; stderr: $(cat "$T/rf.err")"
    state=$(stat_field state) || fail "stat $url has no state line: $(cat "$T/rf.out")"
    done_=$(stat_field bytes_done) || fail "stat $url has no bytes_done line: $(cat "$T/rf.out")"
    [[ $state != complete ]] || fail "stat $url after a failed get says complete: $(cat "$T/rf.out")"
    [[ $done_ == 0 ]] || fail "a failed get left a task claiming $done_ bytes: $(cat "$T/rf.out")"
}

# wait_bytes_done URL MIN DEADLINE_S: polls `ringfly stat URL` until bytes_done
# >= MIN (and the task not complete); sets BYTES_DONE. Fails at the deadline or
# if GET_PID (when set) exits first.
wait_bytes_done() {
    local url=$1 min=$2 t0 state
    _ms "$3"
    local limit=$_MS
    now_ms; t0=$NOW_MS
    while :; do
        RF_DEADLINE=5 rf stat "$url"
        if [[ $RF_RC == 0 ]]; then
            BYTES_DONE=$(stat_field bytes_done)
            state=$(stat_field state)
            if [[ -n $BYTES_DONE ]] && ((BYTES_DONE >= min)); then
                [[ $state == complete ]] && fail "the task of $url completed before the test could act ($BYTES_DONE bytes); make the transfer slower"
                return 0
            fi
        fi
        if [[ -n ${GET_PID:-} ]] && ! alive "$GET_PID"; then
            fail "the get of $url ended before $min bytes were seen in stat; last stat: $(cat "$T/rf.out" "$T/rf.err")"
        fi
        now_ms
        ((NOW_MS - t0 > limit)) && fail "stat $url: bytes_done < $min after $3 s; last: $(cat "$T/rf.out" "$T/rf.err")"
        nap 0.05
    done
}

# start_ringflyd: a daemon on $SOCK with data dir $T/data, healthy.
start_ringflyd() {
    start_daemon "$SOCK" "$@"
    must_health "$SOCK" 10 "$DAEMON_PID"
}
