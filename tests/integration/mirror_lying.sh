#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# An upstream that lies (issue 8): tests/tools/lying-registry.py serves, for a
# digest D, bytes whose sha256 is not D.
# 1. GET of blob D through the mirror: the client never gets a complete body
#    (curl fails with a short transfer, or a 502 before any byte), the mirror
#    logs the digest mismatch, and its cache keeps nothing for D's task
#    (`ringfly stat TASK`: no such task, or nothing recorded).
# 2. A second GET fails the same way, fetched again from the liar (new GETs
#    in its log: nothing was cached); the daemon is healthy.
# 3. An honest blob from the same upstream comes through whole.
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

require_cmd python3
require_cmd curl
MiB=1048576
make_file "$T/bytes" $((5 * MiB + 3))
make_file "$T/honest" $((2 * MiB + 1))
LIE="sha256:$(printf 'not these bytes' | sha256sum | cut -d' ' -f1)"
TRUE="sha256:$(sha "$T/honest")"
start_lying_registry --blob "$LIE=$T/bytes" --blob "$TRUE=$T/honest"
start_mirror m1 --registry "$LYING_URL"
TASK=$(blob_task_id "$LIE")

gets=0
for attempt in 1 2; do
    mirror_curl m1 "$T/got$attempt" "/v2/x/y/blobs/$LIE"
    got=$(size_of "$T/got$attempt" 2>/dev/null || echo 0)
    if [[ $CURL_RC == 0 && $CURL_CODE == 200 ]]; then
        fail "attempt $attempt: the lying blob came through complete ($got bytes, 200)"
    fi
    [[ $CURL_CODE == 502 || $CURL_RC != 0 ]] || fail "attempt $attempt: status $CURL_CODE, curl exit $CURL_RC"
    ((got < $(size_of "$T/bytes"))) || fail "attempt $attempt: the client got all $got bytes"
    log "attempt $attempt: status $CURL_CODE, curl exit $CURL_RC ($(head -c 200 "$T/curl.err")), $got bytes"
    wait_log "${PEER_LOG[m1]}" "blob failed digest=$LIE .*digest mismatch" 10 "${PEER_PID[m1]}"
    now=$(lying_blob_gets "$LIE")
    ((now > gets)) || fail "attempt $attempt: the upstream saw no new GET of the lying blob ($now in all): served from a cache?"
    gets=$now
    # Nothing kept: no task, or one that claims nothing.
    RF_DEADLINE=5 peer_rf m1 stat "$TASK"
    if [[ $RF_RC == 0 ]]; then
        [[ $(stat_field state) != complete ]] || fail "the lying blob's task is complete in the cache"
        assert_eq 0 "$(stat_field bytes_done)" "bytes the cache keeps for the lying blob"
    else
        assert_contains "$T/rf.err" "no such task" "stat of the lying blob's task"
    fi
    must_health "${PEER_SOCK[m1]}" 5 "${PEER_PID[m1]}"
done

mirror_curl m1 "$T/honest.got" "/v2/x/y/blobs/$TRUE"
assert_eq 200 "$CURL_CODE" "status of the honest blob"
assert_eq "$(sha "$T/honest")" "$(sha "$T/honest.got")" "bytes of the honest blob"
p2p_pass
