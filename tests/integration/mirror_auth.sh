#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# The registry mirror in front of a registry with htpasswd auth (issue 8):
# 1. skopeo without credentials through the mirror fails, and the registry's
#    401 reached it; GET /v2/ and GET of a blob without credentials: 401 with
#    the registry's WWW-Authenticate challenge, passed through.
# 2. skopeo with the credentials through the mirror: success, layers checked.
# 3. The blobs are now in the mirror's cache, fetched with credentials. A GET
#    without credentials, or with wrong ones, still gets the registry's 401
#    (the mirror asks the registry before it serves); with them: 200, the
#    right bytes, and the registry sent that blob's bytes once in all.
# 4. Registry stopped: a blob fetched with credentials is not served (502),
#    even to a client that sends them: nobody can vouch for it now.
# 5. An HTTPS registry (with auth): a mirror given its CA (mirror.ca_file)
#    pulls through; one without it answers 502 naming the certificate.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"
# shellcheck source=tests/integration/lib-registry.sh
. "$(dirname "$0")/lib-registry.sh"
# shellcheck source=tests/integration/lib-mirror.sh
. "$(dirname "$0")/lib-mirror.sh"

require_registry
require_skopeo
MiB=1048576
USER_PASS='alice:s3cret-pw'

oci_image_make "$T/img" v1 2 $((2 * MiB + 7))
registry_start --htpasswd "$USER_PASS"
registry_push "$T/img" v1 private/app
start_mirror m1 --registry "$REGISTRY_URL"
L0=${OCI_LAYERS[0]}
L0_FILE=$(oci_blob_path "$T/img" "$L0")

# --- 1. no credentials.
if skopeo_pull "${MIRROR_HOST[m1]}" private/app v1 "$T/anon"; then
    fail "skopeo pull without credentials through the mirror succeeded"
fi
grep -qiE 'unauthorized|401|authentication required' "$SKOPEO_ERR" ||
    fail "skopeo's error does not show the registry's 401: $(head -c 2000 "$SKOPEO_ERR")"
mirror_curl m1 "$T/ping" "/v2/"
assert_eq 401 "$CURL_CODE" "GET /v2/ without credentials"
assert_contains "$T/curl.h" 'Www-Authenticate: Basic realm=' "challenge of GET /v2/"
mirror_curl m1 "$T/anon-blob" "/v2/private/app/blobs/$L0"
assert_eq 401 "$CURL_CODE" "GET blob without credentials"
assert_contains "$T/curl.h" 'Www-Authenticate: Basic realm=' "challenge of GET blob"
assert_eq 0 "$(registry_blob_bytes_ok "$L0")" "bytes of $L0 the registry sent so far"

# --- 2. with credentials.
skopeo_pull "${MIRROR_HOST[m1]}" private/app v1 "$T/pull" "$USER_PASS" ||
    fail "skopeo pull with credentials through the mirror exited $SKOPEO_RC: $(head -c 3000 "$SKOPEO_ERR")"
assert_pulled_layers "$T/pull"
wait_log "${PEER_LOG[m1]}" "blob served digest=$L0 " 10 "${PEER_PID[m1]}"

# --- 3. cached, fetched with credentials: the registry still decides.
mirror_curl m1 "$T/anon2" "/v2/private/app/blobs/$L0"
assert_eq 401 "$CURL_CODE" "GET of a cached private blob without credentials"
assert_contains "$T/curl.h" 'Www-Authenticate: Basic realm=' "challenge for the cached blob"
mirror_curl m1 "$T/wrong" -u 'alice:wrong' "/v2/private/app/blobs/$L0"
assert_eq 401 "$CURL_CODE" "GET of a cached private blob with wrong credentials"
[[ $(size_of "$T/wrong") -lt 4096 ]] || fail "the 401 carried $(size_of "$T/wrong") bytes: blob bytes leaked?"
mirror_curl m1 "$T/right" -u "$USER_PASS" "/v2/private/app/blobs/$L0"
assert_eq 200 "$CURL_CODE" "GET of a cached private blob with credentials"
assert_eq "$(sha "$L0_FILE")" "$(sha "$T/right")" "bytes of the private blob"
assert_eq "$(size_of "$L0_FILE")" "$(registry_blob_bytes_ok "$L0")" "bytes of $L0 the registry sent (once)"

# --- 4. nobody can vouch for it with the registry gone.
registry_stop
mirror_curl m1 "$T/down" -u "$USER_PASS" "/v2/private/app/blobs/$L0"
assert_eq 502 "$CURL_CODE" "GET of a private blob, registry down"
assert_contains "$T/down" "never served here without credentials" "body of the refusal"
alive "${PEER_PID[m1]}" || fail "the mirror died: $(tail -n 20 "${PEER_LOG[m1]}")"

# --- 5. an HTTPS registry (certificate for 127.0.0.1 from a CA made here).
oci_image_make "$T/img2" v2 2 $((1 * MiB + 3))
registry_start --htpasswd "$USER_PASS" --tls
registry_push "$T/img2" v2 private/tls
printf 'mirror:\n  ca_file: "%s"\n' "$HTTP_CA_FILE" >"$T/ca.yaml"
start_mirror m2 --config "$T/ca.yaml" --registry "$REGISTRY_URL"
skopeo_pull "${MIRROR_HOST[m2]}" private/tls v2 "$T/pull-tls" "$USER_PASS" ||
    fail "skopeo pull through a mirror of an HTTPS registry exited $SKOPEO_RC: $(head -c 3000 "$SKOPEO_ERR")"
assert_pulled_layers "$T/pull-tls"
start_mirror m3 --registry "$REGISTRY_URL"
mirror_curl m3 "$T/noca" -u "$USER_PASS" "/v2/"
assert_eq 502 "$CURL_CODE" "GET /v2/ through a mirror that does not trust the registry's CA"
assert_contains "$T/noca" "certificate" "body of the 502 (TLS verification)"
p2p_pass
