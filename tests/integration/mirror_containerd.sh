#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# containerd through the mirror (issue 8): containerd runs as root with a
# private root, state and socket under the test's dir (lib-registry.sh;
# skipped, exit 77, where it cannot run: not root, no containerd).
# The mirror has two upstreams: an unreachable one first, the test's registry
# second; containerd's ?ns=127.0.0.1%3APORT must pick the second.
# 1. `ctr images pull --hosts-dir` (hosts.toml: server = the registry,
#    [host."http://MIRROR"] pull, resolve) exits 0 and unpacks the image.
#    containerd would quietly fall back to the registry if the mirror failed:
#    the mirror's log must show every layer served by it, and the registry
#    must have sent each layer's bytes once (to the mirror).
# 2. The image is removed from containerd and pulled again: the mirror serves
#    the layers from its cache (source=cache) and the registry sends no layer
#    bytes.
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
containerd_start || skip "$CONTAINERD_SKIP"
MiB=1048576

oci_image_make "$T/img" v1 3 $((2 * MiB + 99))
registry_start
registry_push "$T/img" v1 rf/ctr
REF="$REGISTRY_HOST/rf/ctr:v1"
start_mirror m1 --registry http://127.0.0.1:1 --registry "$REGISTRY_URL"

# --- 1. the first pull.
ctr_pull_via_mirror "$REF" "${MIRROR_HOST[m1]}" ||
    fail "ctr pull through the mirror exited $CTR_RC: $(head -c 3000 "$CTR_ERR")"
log "ctr pull through the mirror: $CTR_MS ms"
for i in "${!OCI_LAYERS[@]}"; do
    d=${OCI_LAYERS[$i]}
    wait_log "${PEER_LOG[m1]}" "blob served digest=$d .*source=origin" 10 "${PEER_PID[m1]}"
    assert_eq "${OCI_LAYER_SIZES[$i]}" "$(registry_blob_bytes_ok "$d")" "bytes of layer $d the registry sent"
done
log_has "${PEER_LOG[m1]}" 'forward failed url=http://127\.0\.0\.1:1/' &&
    fail "the mirror asked the unreachable first upstream: ns= was not honoured: $(grep -m 1 'forward failed' "${PEER_LOG[m1]}")"

# --- 2. again, from the mirror's cache.
ctr_image_rm "$REF"
ctr_pull_via_mirror "$REF" "${MIRROR_HOST[m1]}" ||
    fail "second ctr pull through the mirror exited $CTR_RC: $(head -c 3000 "$CTR_ERR")"
for i in "${!OCI_LAYERS[@]}"; do
    d=${OCI_LAYERS[$i]}
    wait_log "${PEER_LOG[m1]}" "blob served digest=$d .*source=cache" 10 "${PEER_PID[m1]}"
    assert_eq "${OCI_LAYER_SIZES[$i]}" "$(registry_blob_bytes_ok "$d")" "bytes of layer $d the registry sent, after the second pull"
done
p2p_pass
