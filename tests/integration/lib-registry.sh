# shellcheck shell=bash
# Globals set here (REGISTRY_URL, OCI_LAYERS, CONTAINERD_SOCK, ...) are read by the test scripts.
# shellcheck disable=SC2034
# Registries and registry clients for the registry-mirror tests and benchmarks:
# a real docker-registry (distribution 2.8) on loopback, OCI image layouts made
# here, skopeo and containerd's ctr as clients, and an upstream that lies
# (tests/tools/lying-registry.py). Source it after lib.sh:
#
#     . "$(dirname "$0")/lib.sh"
#     . "$(dirname "$0")/lib-registry.sh"
#
# Everything it starts is tracked (lib.sh's track) and SIGKILLed by the EXIT
# trap; every readiness wait polls with a deadline; every file is under $T.
#
# registry_start [--htpasswd USER:PASS] [--tls]
#     docker-registry on 127.0.0.1 (--tls: HTTPS with lib-http.sh's certificate
#     for 127.0.0.1, its CA in HTTP_CA_FILE; source lib-http.sh first), port picked by the kernel (addr :0, read back
#     from its log), filesystem storage in its own dir under $T, optional basic
#     auth (bcrypt htpasswd file). Waits until GET /v2/ answers 200 or 401. Sets
#     REGISTRY_PID REGISTRY_PORT REGISTRY_HOST (127.0.0.1:PORT) REGISTRY_URL
#     (http://127.0.0.1:PORT) REGISTRY_LOG REGISTRY_DIR REGISTRY_CREDS (USER:PASS
#     or empty). Not exported, on purpose: docker-registry reads any REGISTRY_*
#     environment variable as a config override (REGISTRY_LOG=/a/file breaks its
#     "log:" section), so they are also scrubbed from its environment. Several
#     registries: each call overwrites these; keep copies, and pass the log to
#     the counting helpers.
# registry_stop [PID]                 SIGKILL and reap (default REGISTRY_PID).
# registry_blob_gets DIGEST [LOG]     prints how many GETs of /v2/*/blobs/DIGEST
#                                     the registry answered 200.
# registry_blob_requests DIGEST [LOG] prints how many GETs of that blob it
#                                     logged, whatever the status (206s too).
# registry_blob_bytes DIGEST [LOG]    prints the body bytes sent for GETs of that
#                                     blob (any status: 200, 206, ...), summed.
# registry_bytes_total [LOG]          prints the body bytes of all responses
#                                     (readiness probes and HEADs excluded).
# registry_access [LOG]               prints one "METHOD URI STATUS BYTES" line per
#                                     request (probes excluded), in log order.
# registry_wait_blob_gets DIGEST N [DEADLINE_S] [LOG]
#                                     waits until registry_blob_gets >= N (a line
#                                     is logged when its response has been
#                                     written, just after the client may have
#                                     seen the last byte); fails at the deadline.
# oci_image_make DIR TAG NLAYERS LAYER_BYTES
#     an OCI image layout in DIR (added to DIR if it holds one already): NLAYERS
#     layers, each a gzip'd tar of one file of LAYER_BYTES random bytes (stored
#     deflate blocks: incompressible data, made at disk speed), a config with
#     rootfs.diff_ids, an OCI manifest, index.json naming it TAG. Sets arrays
#     OCI_LAYERS (sha256:HEX), OCI_LAYER_SIZES, OCI_DIFF_IDS, and OCI_CONFIG,
#     OCI_CONFIG_SIZE, OCI_MANIFEST, OCI_MANIFEST_SIZE, OCI_LIST (the file
#     $T/oci.TAG.N.list: "layer DIGEST SIZE DIFF_ID" lines, then "config DIGEST
#     SIZE", "manifest DIGEST SIZE").
# oci_blob_path DIR DIGEST            prints DIR/blobs/sha256/HEX.
# registry_push DIR TAG NAME          skopeo copy oci:DIR:TAG to
#                                     docker://REGISTRY_HOST/NAME:TAG (with
#                                     REGISTRY_CREDS); fails the test with
#                                     skopeo's stderr if it does not work.
# skopeo_pull HOSTPORT NAME TAG OUTDIR [CREDS]
#     skopeo copy docker://HOSTPORT/NAME:TAG dir:OUTDIR (a new directory: each
#     blob as OUTDIR/HEX, manifest.json, version) over plain HTTP (skopeo
#     checks every blob's digest); no CREDS: anonymous. Returns skopeo's status,
#     also in SKOPEO_RC; SKOPEO_MS the time it took; stderr kept in SKOPEO_ERR
#     ($T/skopeo.N.err; N.PID in a ( ... ) & subshell, so parallel pulls do
#     not share files), stdout in SKOPEO_OUT. Bounded by SKOPEO_DEADLINE
#     (default 120 s; then status 124 or 137).
# assert_pulled_layers OUTDIR [DIGEST...]
#                                     every DIGEST (default: each layer of the
#                                     last oci_image_make) is in OUTDIR (a dir:
#                                     pull), with its sha256.
# start_lying_registry --blob DIGEST=FILE ...
#     tests/tools/lying-registry.py on 127.0.0.1 (a kernel-picked port). Sets
#     LYING_PID LYING_PORT LYING_HOST LYING_URL LYING_LOG (its stderr: one
#     "METHOD URI STATUS BYTES" line per request).
# lying_blob_gets DIGEST [LOG]        prints the GETs of that blob it answered (200 or 206).
# containerd_can_run                  0, or 1 with the reason in CONTAINERD_SKIP
#                                     (not root, no containerd/ctr/unshare).
# containerd_start                    containerd with a private config, root,
#                                     state, socket and mount namespace under
#                                     $T/containerd.N; waits until ctr talks to
#                                     it. Returns 77 (reason in CONTAINERD_SKIP)
#                                     if it cannot run here: a test decides,
#                                         containerd_start || skip "$CONTAINERD_SKIP"
#                                     Sets CONTAINERD_PID CONTAINERD_SOCK
#                                     CONTAINERD_LOG CONTAINERD_DIR
#                                     CONTAINERD_SNAPSHOTTER (overlayfs or native).
# containerd_stop [PID]               SIGKILL and reap (mounts go with its namespace).
# ctr_pull_via_mirror REF [MIRROR_HOSTPORT]
#     writes HOSTS/<REF's registry host:port>/hosts.toml in a fresh hosts dir:
#         server = "http://REGISTRY"
#         [host."http://MIRROR"]
#           capabilities = ["pull", "resolve"]
#     (no MIRROR_HOSTPORT: the registry itself is the host: a direct pull), then
#     ctr images pull --plain-http --hosts-dir HOSTS --snapshotter S REF (and
#     unpacks it). Credentials: CTR_CREDS=USER:PASS. Returns ctr's status, also
#     in CTR_RC; CTR_MS; output in CTR_OUT (progress), CTR_ERR (containerd's
#     client log: "trying next host" lines). Bounded by CTR_DEADLINE (180 s).
#     NB: containerd sends ?ns=REGISTRY_HOST:PORT (":" as %3A) on every request
#     to a mirror, and falls back to the server, silently (exit 0), when the
#     mirror fails (refused, 5xx, 404): check the registry's log to know who
#     served. Wrong bytes from the mirror fail the pull (no fallback): "failed
#     to read expected number of bytes: unexpected EOF" for a short body, a
#     digest error for the same length. A pulled image's blobs are not fetched
#     again: ctr_image_rm first.
# ctr_cmd ARGS...                     ctr --address CONTAINERD_SOCK --namespace
#                                     rfit ARGS, bounded by CTR_CMD_DEADLINE (30 s).
# ctr_image_rm REF                    removes the image and, synchronously, the
#                                     content and snapshots only it used (the
#                                     next pull fetches everything again).

REGISTRY_BIN=${REGISTRY_BIN:-/usr/bin/docker-registry}
LYING_REGISTRY_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tools" && pwd)/lying-registry.py"
OCI_IMAGE_MAKE_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tools" && pwd)/oci-image-make.py"

_REG_COUNT=0
_SKOPEO_COUNT=0
_OCI_COUNT=0
_LYING_COUNT=0
_CTD_COUNT=0
_CTR_COUNT=0

# Every big temporary file of skopeo (and anything else honouring TMPDIR) in $T.
mkdir -p "$T/tmp"

require_registry() {
    [[ -x $REGISTRY_BIN ]] || skip "docker-registry not installed ($REGISTRY_BIN; package docker-registry)"
    require_cmd curl
}

require_skopeo() { require_cmd skopeo; }

# --------------------------------------------------------------- the registry

# registry_start [--htpasswd USER:PASS]: see the top of the file.
registry_start() {
    local creds='' dir t0 code port auth='' tls='' scheme=http
    while (($#)); do
        case $1 in
            --htpasswd) creds=$2; shift ;;
            --tls) scheme=https ;;
            *) fail "registry_start: unknown option $1" ;;
        esac
        shift
    done
    require_registry
    _REG_COUNT=$((_REG_COUNT + 1))
    dir="$T/registry.$_REG_COUNT"
    mkdir -p "$dir/storage"
    if [[ -n $creds ]]; then
        [[ $creds == *:* ]] || fail "registry_start --htpasswd wants USER:PASS, got '$creds'"
        require_cmd htpasswd
        htpasswd -Bbn "${creds%%:*}" "${creds#*:}" >"$dir/htpasswd" 2>"$dir/htpasswd.err" 9>&- ||
            fail "htpasswd -Bbn failed: $(cat "$dir/htpasswd.err")"
        auth="auth:
  htpasswd:
    realm: rfit-registry
    path: $dir/htpasswd"
    fi
    if [[ $scheme == https ]]; then
        # lib-http.sh's CA: a certificate for IP 127.0.0.1 (HTTP_CA_FILE).
        _make_ca
        tls="  tls:
    certificate: $_TLS_CERT
    key: $_TLS_KEY"
    fi
    # Text logs at info: one logrus "response completed" line and one combined
    # access line (stdout) per request, both written once the response is done.
    # addr :0: the kernel picks a free port, and the registry logs the address it
    # listens on ("listening on 127.0.0.1:PORT"): no port race.
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: rfit-$$-$_REG_COUNT-$RANDOM$RANDOM
$tls
$auth
EOF
    REGISTRY_LOG="$dir/registry.log"
    : >"$REGISTRY_LOG"
    # docker-registry takes every REGISTRY_* environment variable as a config
    # override (REGISTRY_LOG=/path breaks "log:"): start it without any.
    local -a unset_env=()
    local v
    for v in $(compgen -e); do
        [[ $v == REGISTRY_* ]] && unset_env+=(-u "$v")
    done
    env "${unset_env[@]}" "$REGISTRY_BIN" serve "$dir/config.yml" >"$REGISTRY_LOG" 2>&1 9>&- &
    REGISTRY_PID=$!
    track "$REGISTRY_PID" docker-registry
    _LOGS+=("$REGISTRY_LOG")
    now_ms; t0=$NOW_MS
    port=
    while :; do
        if [[ -z $port ]]; then
            port=$(sed -n 's/.*msg="listening on 127\.0\.0\.1:\([0-9][0-9]*\)[",].*/\1/p' "$REGISTRY_LOG" | head -n 1)
        fi
        if [[ -n $port ]]; then
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "${HTTP_CA_FILE:-/dev/null}" "$scheme://127.0.0.1:$port/v2/?rfit-ready" 2>/dev/null 9>&-)
            [[ $code == 200 || $code == 401 ]] && break
        fi
        if ! alive "$REGISTRY_PID"; then
            wait_exit "$REGISTRY_PID" 1
            fail "docker-registry exited ($WAIT_RC) before serving: $(tail -n 20 "$REGISTRY_LOG")"
        fi
        now_ms
        ((NOW_MS - t0 > 10000)) && fail "docker-registry (pid $REGISTRY_PID) not answering /v2/ within 10 s (port '${port}', last status '${code:-}')"
        nap
    done
    REGISTRY_PORT=$port
    REGISTRY_HOST="127.0.0.1:$port"
    REGISTRY_URL="$scheme://$REGISTRY_HOST"
    REGISTRY_DIR=$dir
    REGISTRY_CREDS=$creds
    log "docker-registry pid $REGISTRY_PID at $REGISTRY_URL${creds:+ (basic auth, user ${creds%%:*})}"
}

# registry_stop [PID]: SIGKILL and reap (default REGISTRY_PID).
registry_stop() {
    kill_and_reap "${1:-$REGISTRY_PID}" KILL
}

# _registry_awk PROGRAM LOG [awk -v args...]: runs PROGRAM over the combined
# access lines of LOG, one call per line with M (method), U (the URI's path,
# %3A decoded, query dropped), Q (the whole URI), S (status), B (bytes). Lines
# look like
#   127.0.0.1 - - [26/Nov/2026:04:03:05 +0000] "GET /v2/foo/bar/blobs/sha256:2cf2... HTTP/1.1" 200 5 "" "curl/7.88.1"
# (logrus lines, time="..." level=info msg="response completed" ..., are skipped).
_registry_awk() {
    local prog=$1 logf=$2
    shift 2
    [[ -f $logf ]] || fail "registry log $logf does not exist"
    awk -F'"' "$@" '
        index($0, "time=\"") == 1 { next }
        $1 !~ /^[^ ]+ [^ ]+ [^ ]+ \[[^]]*\] $/ { next }
        {
            if (split($2, r, " ") != 3 || r[3] !~ /^HTTP\//) next
            if (split($3, s, " ") < 2) next
            M = r[1]; Q = r[2]; S = s[1]; B = s[2]
            if (B == "-") B = 0
            U = Q; sub(/\?.*/, "", U)
            gsub(/%3[Aa]/, ":", U)
            if (U == "/v2/" && Q == "/v2/?rfit-ready") next
        }
        '"$prog" "$logf"
}

# _rfit_n COUNTER_VALUE: sets _N to N, or N.PID in a subshell: file names that
# parallel calls from ( ... ) & subshells (same counter value) do not share.
# (A variable, not output: $( ) would be a subshell itself.)
_rfit_n() {
    if [[ $BASHPID == "$$" ]]; then _N=$1; else _N=$1.$BASHPID; fi
}

# _digest D: sha256:HEX from sha256:HEX or HEX.
_digest() {
    if [[ $1 == *:* ]]; then printf '%s\n' "$1"; else printf 'sha256:%s\n' "$1"; fi
}

# registry_blob_gets DIGEST [LOG]
registry_blob_gets() {
    _registry_awk '
        M == "GET" && S == "200" {
            n = length(U) - length(suf)
            if (n > 4 && substr(U, 1, 4) == "/v2/" && substr(U, n + 1) == suf) c++
        }
        END { printf "%.0f\n", c }' "${2:-$REGISTRY_LOG}" -v suf="/blobs/$(_digest "$1")"
}

# registry_blob_requests DIGEST [LOG]
registry_blob_requests() {
    _registry_awk '
        M == "GET" {
            n = length(U) - length(suf)
            if (n > 4 && substr(U, 1, 4) == "/v2/" && substr(U, n + 1) == suf) c++
        }
        END { printf "%.0f\n", c }' "${2:-$REGISTRY_LOG}" -v suf="/blobs/$(_digest "$1")"
}

# registry_blob_bytes DIGEST [LOG]
registry_blob_bytes() {
    _registry_awk '
        M == "GET" {
            n = length(U) - length(suf)
            if (n > 4 && substr(U, 1, 4) == "/v2/" && substr(U, n + 1) == suf) c += B
        }
        END { printf "%.0f\n", c }' "${2:-$REGISTRY_LOG}" -v suf="/blobs/$(_digest "$1")"
}

# registry_bytes_total [LOG]: HEAD responses count 0 (the registry logs the
# size of the error body it wrote for a HEAD answered 401/404, never sent).
registry_bytes_total() {
    _registry_awk 'M != "HEAD" { c += B } END { printf "%.0f\n", c }' "${1:-$REGISTRY_LOG}"
}

# registry_access [LOG]
registry_access() {
    _registry_awk '{ print M, Q, S, B }' "${1:-$REGISTRY_LOG}"
}

# registry_wait_blob_gets DIGEST N [DEADLINE_S] [LOG]
registry_wait_blob_gets() {
    local t0 got
    _ms "${3:-10}"
    local limit=$_MS
    now_ms; t0=$NOW_MS
    while :; do
        got=$(registry_blob_gets "$1" "${4:-$REGISTRY_LOG}")
        ((got >= $2)) && return 0
        now_ms
        ((NOW_MS - t0 > limit)) && fail "registry served blob $1 $got time(s) within ${3:-10} s, expected at least $2; requests: $(registry_access "${4:-$REGISTRY_LOG}" | tail -n 20)"
        nap 0.02
    done
}

# ----------------------------------------------------------------- OCI images


# oci_image_make DIR TAG NLAYERS LAYER_BYTES: see the top of the file.
oci_image_make() {
    local dir=$1 tag=$2 n=$3 bytes=$4 kind d s x
    (($# == 4)) || fail "oci_image_make DIR TAG NLAYERS LAYER_BYTES, got: $*"
    [[ $n =~ ^[0-9]+$ && $bytes =~ ^[0-9]+$ ]] || fail "oci_image_make: NLAYERS and LAYER_BYTES must be numbers: $*"
    [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || fail "oci_image_make: bad tag '$tag'"
    require_cmd python3
    _OCI_COUNT=$((_OCI_COUNT + 1))
    _rfit_n "$_OCI_COUNT"
    OCI_LIST="$T/oci.$tag.$_N.list"
    python3 "$OCI_IMAGE_MAKE_PY" "$dir" "$tag" "$n" "$bytes" >"$OCI_LIST" 2>"$OCI_LIST.err" 9>&- ||
        fail "oci_image_make $*: $(tail -n 20 "$OCI_LIST.err")"
    OCI_LAYERS=(); OCI_LAYER_SIZES=(); OCI_DIFF_IDS=()
    OCI_CONFIG=; OCI_MANIFEST=
    while read -r kind d s x; do
        case $kind in
            layer) OCI_LAYERS+=("$d"); OCI_LAYER_SIZES+=("$s"); OCI_DIFF_IDS+=("$x") ;;
            config) OCI_CONFIG=$d; OCI_CONFIG_SIZE=$s ;;
            manifest) OCI_MANIFEST=$d; OCI_MANIFEST_SIZE=$s ;;
        esac
    done <"$OCI_LIST"
    [[ ${#OCI_LAYERS[@]} == "$n" && -n $OCI_CONFIG && -n $OCI_MANIFEST ]] ||
        fail "oci_image_make $*: unexpected output: $(cat "$OCI_LIST" "$OCI_LIST.err")"
}

# oci_blob_path DIR DIGEST
oci_blob_path() {
    local d
    d=$(_digest "$2")
    printf '%s/blobs/%s/%s\n' "$1" "${d%%:*}" "${d#*:}"
}

# ------------------------------------------------------------------- skopeo

# _skopeo NAME ARGS...: skopeo bounded by SKOPEO_DEADLINE, output in
# $T/NAME.out/.err; sets SKOPEO_RC, SKOPEO_MS, SKOPEO_OUT, SKOPEO_ERR.
# --insecure-policy: no /etc/containers/policy.json needed; TMPDIR: big
# temporary files under $T.
_skopeo() {
    local name=$1 t0
    shift
    require_skopeo
    SKOPEO_OUT="$T/$name.out"
    SKOPEO_ERR="$T/$name.err"
    now_ms; t0=$NOW_MS
    TMPDIR="$T/tmp" timeout -k 2 "${SKOPEO_DEADLINE:-120}" skopeo --insecure-policy "$@" \
        >"$SKOPEO_OUT" 2>"$SKOPEO_ERR" 9>&-
    SKOPEO_RC=$?
    now_ms; SKOPEO_MS=$((NOW_MS - t0))
    return "$SKOPEO_RC"
}

# registry_push DIR TAG NAME
registry_push() {
    local dir=$1 tag=$2 name=$3
    local -a creds=(--dest-no-creds)
    [[ -n ${REGISTRY_CREDS:-} ]] && creds=(--dest-creds "$REGISTRY_CREDS")
    _SKOPEO_COUNT=$((_SKOPEO_COUNT + 1))
    _rfit_n "$_SKOPEO_COUNT"
    _skopeo "skopeo-push.$_N" copy --quiet --dest-tls-verify=false "${creds[@]}" \
        "oci:$dir:$tag" "docker://$REGISTRY_HOST/$name:$tag" ||
        fail "skopeo copy oci:$dir:$tag docker://$REGISTRY_HOST/$name:$tag exited $SKOPEO_RC: $(head -c 3000 "$SKOPEO_ERR")"
}

# skopeo_pull HOSTPORT NAME TAG OUTDIR [CREDS]
skopeo_pull() {
    local hp=$1 name=$2 tag=$3 out=$4
    local -a creds=(--src-no-creds)
    [[ -n ${5:-} ]] && creds=(--src-creds "$5")
    _SKOPEO_COUNT=$((_SKOPEO_COUNT + 1))
    _rfit_n "$_SKOPEO_COUNT"
    _skopeo "skopeo.$_N" copy --quiet --src-tls-verify=false "${creds[@]}" \
        "docker://$hp/$name:$tag" "dir:$out"
}

# assert_pulled_layers OUTDIR [DIGEST...]: the DIGESTs (default: the layers of
# the last oci_image_make), each in OUTDIR/HEX (skopeo's dir: layout) with the
# right sha256.
assert_pulled_layers() {
    local out=$1 d f h
    shift
    (($#)) || set -- "${OCI_LAYERS[@]}"
    for d in "$@"; do
        d=$(_digest "$d")
        f="$out/${d#sha256:}"
        [[ -f $f ]] || fail "blob $d not in $out: $(find "$out" -maxdepth 1 2>&1 | head -n 20)"
        h=$(sha256sum <"$f") || fail "sha256sum $f failed"
        assert_eq "${d#sha256:}" "${h%% *}" "sha256 of pulled layer $f"
    done
}

# ---------------------------------------------------------- a lying upstream

# start_lying_registry --blob DIGEST=FILE ...: see the top of the file.
start_lying_registry() {
    local portf t0
    require_cmd python3
    _LYING_COUNT=$((_LYING_COUNT + 1))
    portf="$T/lying.$_LYING_COUNT.port"
    LYING_LOG="$T/lying.$_LYING_COUNT.log"
    rm -f "$portf"
    python3 "$LYING_REGISTRY_PY" --port-file "$portf" "$@" >"$LYING_LOG" 2>&1 9>&- &
    LYING_PID=$!
    track "$LYING_PID" lying-registry
    _LOGS+=("$LYING_LOG")
    now_ms; t0=$NOW_MS
    until [[ -s $portf ]] && LYING_PORT=$(head -n 1 "$portf") && [[ $LYING_PORT =~ ^[0-9]+$ ]]; do
        if ! alive "$LYING_PID"; then
            wait_exit "$LYING_PID" 1
            fail "lying-registry exited ($WAIT_RC) before listening: $(tail -n 20 "$LYING_LOG")"
        fi
        now_ms
        ((NOW_MS - t0 > 10000)) && fail "lying-registry did not report its port within 10 s: $(tail -n 20 "$LYING_LOG")"
        nap
    done
    LYING_HOST="127.0.0.1:$LYING_PORT"
    LYING_URL="http://$LYING_HOST"
    log "lying-registry pid $LYING_PID at $LYING_URL ($# args)"
}

# lying_blob_gets DIGEST [LOG]
lying_blob_gets() {
    awk -v suf="/blobs/$(_digest "$1")" '
        $1 == "GET" && ($3 == "200" || $3 == "206") {
            u = $2; sub(/\?.*/, "", u); gsub(/%3[Aa]/, ":", u)
            n = length(u) - length(suf)
            if (n > 4 && substr(u, n + 1) == suf) c++
        }
        END { printf "%.0f\n", c }' "${2:-$LYING_LOG}"
}

# --------------------------------------------------------------- containerd

# containerd_can_run: 0 if containerd can be started here, else 1 with the
# reason in CONTAINERD_SKIP.
containerd_can_run() {
    CONTAINERD_SKIP=
    local c
    for c in containerd ctr unshare; do
        if ! command -v "$c" >/dev/null 2>&1; then
            CONTAINERD_SKIP="$c not installed (package containerd / util-linux)"
            return 1
        fi
    done
    if ((EUID != 0)); then
        CONTAINERD_SKIP="containerd needs root (running as uid $EUID)"
        return 1
    fi
    if ! unshare --mount --propagation private true 2>/dev/null 9>&-; then
        CONTAINERD_SKIP="cannot make a mount namespace (unshare --mount failed)"
        return 1
    fi
    return 0
}

# ctr_cmd ARGS...: ctr against CONTAINERD_SOCK (namespace rfit), bounded (30 s).
ctr_cmd() {
    timeout -k 2 "${CTR_CMD_DEADLINE:-30}" ctr --address "$CONTAINERD_SOCK" --namespace rfit "$@" 9>&-
}

# containerd_start: see the top of the file.
containerd_start() {
    local dir t0
    containerd_can_run || return 77
    _CTD_COUNT=$((_CTD_COUNT + 1))
    dir="$T/containerd.$_CTD_COUNT"
    mkdir -p "$dir/root" "$dir/state" "$dir/tmp" "$dir/opt"
    cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
    CONTAINERD_DIR=$dir
    CONTAINERD_SOCK="$dir/containerd.sock"
    CONTAINERD_LOG="$dir/containerd.log"
    # Its own mount namespace: the temporary mounts of an unpack die with it,
    # even when it is SIGKILLed mid-unpack (nothing left mounted under $T).
    # TMPDIR/XDG_RUNTIME_DIR: where containerd makes those mount points.
    env -u CONTAINERD_SNAPSHOTTER TMPDIR="$dir/tmp" XDG_RUNTIME_DIR="$dir/tmp" \
        unshare --mount --propagation private containerd --config "$dir/config.toml" \
        >"$CONTAINERD_LOG" 2>&1 9>&- &
    CONTAINERD_PID=$!
    track "$CONTAINERD_PID" containerd
    _LOGS+=("$CONTAINERD_LOG")
    now_ms; t0=$NOW_MS
    until [[ -S $CONTAINERD_SOCK ]] && CTR_CMD_DEADLINE=5 ctr_cmd version >"$dir/version.out" 2>&1; do
        if ! alive "$CONTAINERD_PID"; then
            wait_exit "$CONTAINERD_PID" 1
            fail "containerd exited ($WAIT_RC) before serving: $(tail -n 20 "$CONTAINERD_LOG")"
        fi
        now_ms
        ((NOW_MS - t0 > 20000)) && fail "containerd (pid $CONTAINERD_PID) not answering at $CONTAINERD_SOCK within 20 s: $(tail -n 20 "$CONTAINERD_LOG")"
        nap 0.02
    done
    CONTAINERD_SNAPSHOTTER=native
    if ctr_cmd plugins ls 2>/dev/null | awk '$1 == "io.containerd.snapshotter.v1" && $2 == "overlayfs" && $NF == "ok" { f = 1 } END { exit !f }'; then
        CONTAINERD_SNAPSHOTTER=overlayfs
    fi
    log "containerd pid $CONTAINERD_PID at $CONTAINERD_SOCK (snapshotter $CONTAINERD_SNAPSHOTTER)"
}

# containerd_stop [PID]: SIGKILL and reap (default CONTAINERD_PID).
containerd_stop() {
    kill_and_reap "${1:-$CONTAINERD_PID}" KILL
}

# ctr_pull_via_mirror REF [MIRROR_HOSTPORT]: see the top of the file.
ctr_pull_via_mirror() {
    local ref=$1 mirror=${2:-} reghost hosts t0 n
    local -a user=()
    [[ -n ${CONTAINERD_SOCK:-} ]] || fail "ctr_pull_via_mirror: no containerd (containerd_start first)"
    reghost=${ref%%/*}
    [[ $reghost == *[.:]* && $ref == */* ]] || fail "ctr_pull_via_mirror: REF must be HOST:PORT/NAME:TAG, got '$ref'"
    _CTR_COUNT=$((_CTR_COUNT + 1))
    _rfit_n "$_CTR_COUNT"
    n=$_N
    hosts="$T/ctr-hosts.$n"
    mkdir -p "$hosts/$reghost"
    # Without a mirror, the registry itself is the one [host]: containerd 1.6
    # rejects a hosts.toml without a host table ("failed to decode hosts.toml:
    # invalid `host` tree") and silently falls back to its defaults.
    printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
        "$reghost" "${mirror:-$reghost}" >"$hosts/$reghost/hosts.toml"
    [[ -n ${CTR_CREDS:-} ]] && user=(--user "$CTR_CREDS")
    CTR_OUT="$T/ctr-pull.$n.out"
    CTR_ERR="$T/ctr-pull.$n.err"
    now_ms; t0=$NOW_MS
    CTR_CMD_DEADLINE=${CTR_DEADLINE:-180} ctr_cmd images pull --plain-http --hosts-dir "$hosts" \
        --snapshotter "$CONTAINERD_SNAPSHOTTER" "${user[@]}" "$ref" >"$CTR_OUT" 2>"$CTR_ERR"
    CTR_RC=$?
    now_ms; CTR_MS=$((NOW_MS - t0))
    return "$CTR_RC"
}

# ctr_image_rm REF
ctr_image_rm() {
    local out
    _rfit_n 0
    out="$T/ctr-rm.$_N.out"
    ctr_cmd images rm --sync "$1" >"$out" 2>&1 ||
        fail "ctr images rm --sync $1 failed: $(cat "$out")"
}
