#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# ringfly get over HTTPS from nginx with a certificate for IP 127.0.0.1 signed
# by a test CA: with --ca-file the bytes arrive (multi-piece, ranges over TLS);
# without it, and with --ca-file of another CA, the get exits 5 naming the
# certificate problem, nothing at the final path, no temp file, no task
# claiming data; --insecure gets the bytes without a CA.
# Each case uses its own URL: a completed task would be served from the cache.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
PL=65536

for f in ca noca otherca insecure; do
    make_file "$WWW/$f" $((PL * 9 + 17))
done
start_nginx --tls
start_ringflyd

# tls_failure NAME URL [args]: the get fails with exit 5 and a certificate message.
tls_failure() {
    local name=$1 url=$2
    shift 2
    expect_get_fail "$name" "$url" "$OUT/$name" 5 "ringfly: get $url: " --piece-length $PL "$@"
    grep -qi 'certificate' "$T/$name.err" || fail "stderr of the failed TLS get does not mention the certificate: $(cat "$T/$name.err")"
    grep -qE 'TLS|SSL' "$T/$name.err" || fail "stderr of the failed TLS get does not mention TLS: $(cat "$T/$name.err")"
    assert_no_data_task "$url"
    log "$name: exit 5: $(head -n 1 "$T/$name.err")"
}

# 1. No CA: the server's certificate cannot be verified.
tls_failure noca "$NGINX_TLS_URL/noca"

# 2. Another CA (a self-signed one that did not sign the server's certificate).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ringfly-other-ca \
    -keyout "$T/other.key" -out "$T/other.pem" >"$T/openssl-other.log" 2>&1 9>&- ||
    fail "making the other CA failed: $(cat "$T/openssl-other.log")"
tls_failure otherca "$NGINX_TLS_URL/otherca" --ca-file "$T/other.pem"

# 3. The right CA.
url="$NGINX_TLS_URL/ca"
expect_get_ok ca "$url" "$OUT/ca" "$WWW/ca" --ca-file "$HTTP_CA_FILE" --piece-length $PL
assert_contains "$T/ca.err" "from origin" "summary line of the HTTPS get"
rf stat "$url"
[[ $RF_RC == 0 ]] || fail "stat $url exited $RF_RC: $(cat "$T/rf.err")"
assert_eq complete "$(stat_field state)" "state of the HTTPS task"
log "ca: $(tail -n 1 "$T/ca.err")"

# 4. --insecure, no CA.
url="$NGINX_TLS_URL/insecure"
expect_get_ok insecure "$url" "$OUT/insecure" "$WWW/insecure" --insecure --piece-length $PL
log "insecure: $(tail -n 1 "$T/insecure.err")"

# 5. A failed TLS get left nothing that a later get could be served from: the
# no-CA URL, now with the CA, comes from the origin with the right bytes.
url="$NGINX_TLS_URL/noca"
expect_get_ok noca-again "$url" "$OUT/noca" "$WWW/noca" --ca-file "$HTTP_CA_FILE" --piece-length $PL
assert_contains "$T/noca-again.err" "from origin" "summary line of the retried HTTPS get"

# Every successful file went over the wire once (ranges over TLS, no repeats).
nginx_wait_idle
for f in ca insecure noca; do
    sent=$(origin_bytes "$NGINX_ACCESS_LOG" "/$f")
    assert_eq "$(size_of "$WWW/$f")" "$sent" "body bytes nginx sent for /$f over HTTPS"
done
assert_eq 0 "$(origin_bytes "$NGINX_ACCESS_LOG" /otherca)" "body bytes nginx sent for /otherca (TLS refused)"

must_health "$SOCK" 5 "$DAEMON_PID"
pass
