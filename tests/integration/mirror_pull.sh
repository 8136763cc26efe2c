#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# The registry mirror (issue 8, docs/INTERFACE-issue8.md): a real
# docker-registry on loopback, an image of three layers made and pushed here,
# a ringfly-scheduler and three ringflyd mirrors (--http, --registry,
# --scheduler), skopeo as the client.
# 1. skopeo pulls the image through mirror m1 (skopeo checks every digest; the
#    layer files are checked again here), then through m2 and m3 at once.
# 2. The registry sent each blob (layers and config) exactly once: its access
#    log's bytes for the blob are the blob's size: m2 and m3 took the blobs from the swarm, as their logs say
#    (`download done task=BLOBTASK ... peer_bytes` > 0, origin_bytes=0).
# 3. Range: bytes 1000-1999 of a layer through m2 -> 206, Content-Range, the
#    very bytes; a suffix range; past the end -> 416. HEAD of a blob is
#    forwarded: 200 with the registry's Content-Length and
#    Docker-Content-Digest, no body.
# 4. The registry is stopped: every layer still comes whole through m3 (a
#    daemon that has them; 200, right sha256); a fresh mirror m4 that never
#    saw the registry hand them out without credentials refuses (502 naming
#    the reason) rather than serve what it cannot authorize; a manifest gets
#    502 "registry unreachable". Every daemon stays alive.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"
# shellcheck source=tests/integration/lib-netns.sh
. "$(dirname "$0")/lib-netns.sh"
# shellcheck source=tests/integration/lib-registry.sh
. "$(dirname "$0")/lib-registry.sh"
# shellcheck source=tests/integration/lib-mirror.sh
. "$(dirname "$0")/lib-mirror.sh"

require_registry
require_skopeo
require_scheduler
MiB=1048576

oci_image_make "$T/img" v1 3 $((3 * MiB + 12345))
registry_start
registry_push "$T/img" v1 rf/app
log "image pushed: layers ${OCI_LAYERS[*]}, config $OCI_CONFIG"
BLOBS=("${OCI_LAYERS[@]}" "$OCI_CONFIG")
BLOB_SIZES=("${OCI_LAYER_SIZES[@]}" "$OCI_CONFIG_SIZE")

start_scheduler 127.0.0.1:0
for m in m1 m2 m3; do
    start_mirror "$m" --scheduler "$SCHED_ADDR" --registry "$REGISTRY_URL"
done

# --- 1. pulls.
skopeo_pull "${MIRROR_HOST[m1]}" rf/app v1 "$T/pull1" ||
    fail "skopeo pull through m1 exited $SKOPEO_RC: $(head -c 3000 "$SKOPEO_ERR")"
assert_pulled_layers "$T/pull1"
log "pull through m1: ${SKOPEO_MS} ms"
for d in "${BLOBS[@]}"; do
    wait_log "${PEER_LOG[m1]}" "blob served digest=$d " 10 "${PEER_PID[m1]}"
done

pids=()
for m in m2 m3; do
    (skopeo_pull "${MIRROR_HOST[$m]}" rf/app v1 "$T/pull-$m") &
    pids+=($!)
done
for i in 0 1; do
    wait "${pids[$i]}" || fail "skopeo pull through m$((i + 2)) failed: $(cat "$T"/skopeo.*.err | head -c 3000)"
done
assert_pulled_layers "$T/pull-m2"
assert_pulled_layers "$T/pull-m3"

# --- 2. the registry served each blob once; m2, m3 took them from peers.
for i in "${!BLOBS[@]}"; do
    assert_eq "${BLOB_SIZES[$i]}" "$(registry_blob_bytes_ok "${BLOBS[$i]}")" \
        "bytes the registry sent of blob ${BLOBS[$i]} (its size: served once)"
done
for m in m2 m3; do
    for d in "${OCI_LAYERS[@]}"; do
        assert_done "$m" "$(blob_task_id "$d")" - - 0 '>0'
    done
done
log "registry egress: $(registry_bytes_total) bytes for $((${#BLOBS[@]})) blobs pulled 3 times"

# --- 3. ranges and HEAD.
L0=${OCI_LAYERS[0]}
L0_FILE=$(oci_blob_path "$T/img" "$L0")
L0_SIZE=$(size_of "$L0_FILE")
mirror_curl m2 "$T/range" -r 1000-1999 "/v2/rf/app/blobs/$L0"
assert_eq 206 "$CURL_CODE" "status of a Range request"
assert_contains "$T/curl.h" "Content-Range: bytes 1000-1999/$L0_SIZE" "Content-Range"
dd if="$L0_FILE" of="$T/range.want" bs=1000 skip=1 count=1 status=none
assert_eq "$(sha "$T/range.want")" "$(sha "$T/range")" "bytes 1000-1999 of $L0"
mirror_curl m2 "$T/suffix" -H 'Range: bytes=-77' "/v2/rf/app/blobs/$L0"
assert_eq 206 "$CURL_CODE" "status of a suffix range"
tail -c 77 "$L0_FILE" >"$T/suffix.want"
assert_eq "$(sha "$T/suffix.want")" "$(sha "$T/suffix")" "the last 77 bytes of $L0"
mirror_curl m2 "$T/past" -H "Range: bytes=$L0_SIZE-" "/v2/rf/app/blobs/$L0"
assert_eq 416 "$CURL_CODE" "status of a range past the end"
assert_contains "$T/curl.h" "Content-Range: bytes */$L0_SIZE" "Content-Range of a 416"

mirror_curl m1 "$T/head" -I "/v2/rf/app/blobs/$L0"
assert_eq 200 "$CURL_CODE" "status of HEAD blob"
assert_contains "$T/curl.h" "Content-Length: $L0_SIZE" "Content-Length of HEAD blob"
assert_contains "$T/curl.h" "Docker-Content-Digest: $L0" "Docker-Content-Digest of HEAD blob"
# curl -I writes the head to -o as well: nothing but the head came.
cmp -s "$T/head" "$T/curl.h" || fail "a HEAD's output is more than its head: $(head -c 600 "$T/head" | od -c | head)"
mirror_curl m1 "$T/whole" "/v2/rf/app/blobs/$L0"
assert_eq 200 "$CURL_CODE" "status of GET blob"
assert_contains "$T/curl.h" "Docker-Content-Digest: $L0" "Docker-Content-Digest of GET blob"
assert_eq "$(sha "$L0_FILE")" "$(sha "$T/whole")" "GET blob body"
assert_eq "$L0_SIZE" "$(registry_blob_bytes_ok "$L0")" "bytes of $L0 the registry sent, after the range requests"

# --- 4. the registry is gone.
registry_stop
start_mirror m4 --scheduler "$SCHED_ADDR" --registry "$REGISTRY_URL"
for d in "${OCI_LAYERS[@]}"; do
    f=$(oci_blob_path "$T/img" "$d")
    mirror_curl m3 "$T/down" "/v2/rf/app/blobs/$d"
    assert_eq 200 "$CURL_CODE" "status of $d through m3, registry down ($(cat "$T/curl.err"))"
    assert_eq "$(sha "$f")" "$(sha "$T/down")" "sha256 of $d through m3, registry down"
    mirror_curl m4 "$T/down4" "/v2/rf/app/blobs/$d"
    assert_eq 502 "$CURL_CODE" "status of $d through a fresh mirror, registry down"
    assert_contains "$T/down4" "never served here without credentials" "body of the refusal"
done
mirror_curl m3 "$T/manifest" -H 'Accept: application/vnd.oci.image.manifest.v1+json' "/v2/rf/app/manifests/v1"
assert_eq 502 "$CURL_CODE" "status of a manifest, registry down"
assert_contains "$T/manifest" "registry unreachable" "body of the manifest's 502"

for m in m1 m2 m3 m4; do
    alive "${PEER_PID[$m]}" || fail "mirror $m died: $(tail -n 20 "${PEER_LOG[$m]}")"
done
p2p_pass
