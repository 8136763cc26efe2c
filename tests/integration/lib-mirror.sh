# shellcheck shell=bash
# Globals set here (M_PORT, MIRROR_PORT, ...) are read by the test scripts.
# shellcheck disable=SC2034
# ringflyd as a registry mirror (issue 8). Source it after lib.sh, lib-http.sh,
# lib-p2p.sh (and lib-netns.sh for start_scheduler) and lib-registry.sh.
#
# start_mirror NAME [ringflyd args...]
#     start_peer NAME --http 127.0.0.1:0 ARGS: its HTTP port is read from the
#     log line `listening http=127.0.0.1:0 port=N`. Sets MIRROR_PORT[NAME],
#     MIRROR_HOST[NAME] (127.0.0.1:PORT) and M_PORT, M_HOST.
# mirror_curl NAME OUT CURL-ARGS... URI
#     curl against mirror NAME's http://127.0.0.1:PORT + URI, body to OUT,
#     status in CURL_CODE, headers in $T/curl.h, curl's exit status in CURL_RC
#     (bounded by CURL_DEADLINE, default 60 s).
# blob_task_id DIGEST                 the task id of a registry blob:
#                                     sha256("ringfly-blob-v1\nsha256:HEX").

declare -A MIRROR_PORT=() MIRROR_HOST=()

start_mirror() {
    local name=$1 port
    shift
    start_peer "$name" --http 127.0.0.1:0 "$@"
    wait_log "$P_LOG" 'listening http=127\.0\.0\.1:0 port=[0-9]+' 10 "$P_PID"
    port=$(log_field "$LOG_LINE" port)
    [[ $port =~ ^[0-9]+$ && $port -gt 0 ]] || fail "mirror $name: bad http port in '$LOG_LINE'"
    MIRROR_PORT[$name]=$port
    MIRROR_HOST[$name]="127.0.0.1:$port"
    M_PORT=$port
    M_HOST="127.0.0.1:$port"
    log "mirror $name: http $M_HOST"
}

mirror_curl() {
    local name=$1 out=$2
    shift 2
    local uri=${*: -1}
    set -- "${@:1:$#-1}"
    CURL_CODE=$(timeout -k 2 "${CURL_DEADLINE:-60}" curl -sS -o "$out" -D "$T/curl.h" \
        -w '%{http_code}' "$@" "http://${MIRROR_HOST[$name]}$uri" 2>"$T/curl.err" 9>&-)
    CURL_RC=$?
    return 0
}

blob_task_id() {
    local h
    h=$(printf 'ringfly-blob-v1\nsha256:%s' "${1#sha256:}" | sha256sum)
    printf '%s\n' "${h%% *}"
}

# registry_blob_bytes_ok DIGEST [LOG]: body bytes the registry sent in 2xx
# answers to GETs of that blob (its 401/404 error bodies do not count).
registry_blob_bytes_ok() {
    registry_access "${2:-$REGISTRY_LOG}" | awk -v d="/blobs/$1" '
        $1 == "GET" && ($3 == 200 || $3 == 206) {
            u = $2; sub(/\?.*/, "", u); gsub(/%3[Aa]/, ":", u)
            if (substr(u, length(u) - length(d) + 1) == d) b += $4
        }
        END { printf "%.0f\n", b }'
}
