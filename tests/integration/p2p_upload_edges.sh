#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# A parent's upload limits at their edges, against raw peer-protocol clients
# (peerwire):
#  1. upload.max_requests 128 (more than a connection's 64 queued payloads):
#     100 GetPiece in one write are all answered, in order, right bytes (the
#     65th once closed the connection and lost every queued piece).
#  2. upload.max_requests 2: 3 GetPiece in one write: two pieces, then Error
#     BUSY for the third; the connection stays and serves the next GetPiece.
#  3. upload.rate_limit 3 (bytes/s, below the bucket's old 4-byte floor): a
#     piece is still served (it never was, with a 1 ms timer spinning).
#  4. upload.rate_limit 128KiB, two 4 MiB pieces asked; the limit removed by
#     SIGHUP a moment later: both arrive within seconds of the SIGHUP (they
#     waited out the old limit's timer, about 32 s). Then SIGTERM with a
#     connection waiting for tokens: ringflyd exits 0 (it leaked that
#     connection: LeakSanitizer, exit 1).
#  5. A seed asked (SyncPieces with a URL) for 70 tasks it lacks, from an
#     origin that never answers: it starts 64 fetches and answers BUSY
#     "fetching 64 tasks already" to the rest, health meanwhile. A link-local
#     URL (169.254.169.254) is refused (INVALID); with seed.fetch_from a host
#     not in the list is refused, one in it fetched.
#  6. A piece A does not hold yet (its get from a slow origin under way):
#     Error NOT_FOUND "piece N of task T is not here: not recorded (yet)", and
#     the same connection then gets a recorded piece.
#  7. A normal peer whose own get of a task is still probing (its origin never
#     answers: no length yet) answers SyncPieces for that task NOT_FOUND "here
#     yet: fetching it now" (a child in a chain waits for it), and plain "no
#     such task ... here" for a task it is not fetching.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

require_peerwire
BUSY=5
OUT="$T/out"
mkdir -p "$OUT"

# config NAME YAML: $T/NAME.yaml.
config() { printf '%s\n' "$2" >"$T/$1.yaml"; }

# import_into NAME FILE: sets TASK (the imported task's id).
import_into() {
    peer_rf "$1" import "$2"
    assert_eq 0 "$RF_RC" "import into $1 ($(cat "$T/rf.err"))"
    TASK=$(tr -d '\n' <"$T/rf.out")
}

# wire NAME PORT ACTION...: peerwire talk, output in $T/NAME.wire.
wire() {
    local name=$1 port=$2
    shift 2
    peerwire talk "$port" --deadline 30 "$@" >"$T/$name.wire" 2>"$T/$name.wire.err" ||
        fail "peerwire $name: $(cat "$T/$name.wire.err"); got: $(tail -n 3 "$T/$name.wire")"
}

make_file "$T/small" 1000000
small_sha=$(sha "$T/small")

# 1. 100 pipelined GetPiece under max_requests 128.
config A $'upload:\n  max_requests: 128'
start_peer A --config "$T/A.yaml"
import_into A "$T/small"
reads=()
for ((i = 0; i < 100; i++)); do reads+=(read); done
wire many "${PEER_PORT[A]}" "sendgets:$TASK:1:0:100" "${reads[@]}"
assert_eq 100 "$(grep -c '^header ' "$T/many.wire")" "pieces answered of 100 pipelined GetPiece"
assert_not_contains "$T/many.wire" "eof" "answers to 100 pipelined GetPiece"
[[ $(sed -n 100p "$T/many.wire") == "header id=100 number=0 offset=0 length=1000000 "*"payload_sha256=$small_sha" ]] ||
    fail "the 100th answer: $(sed -n 100p "$T/many.wire")"
assert_not_contains "${PEER_LOG[A]}" "cannot queue a piece" "A's log"

# 2. max_requests 2: the third of three is BUSY, the connection stays.
config C $'upload:\n  max_requests: 2'
start_peer C --config "$T/C.yaml"
import_into C "$T/small"
wire busy "${PEER_PORT[C]}" "sendgets:$TASK:1:0:3" read read read "get:$TASK:4:0"
mapfile -t W <"$T/busy.wire"
[[ ${W[0]} == "header id=1 "* && ${W[1]} == "header id=2 "* ]] ||
    fail "the first two of three GetPiece under max_requests 2: ${W[*]}"
[[ ${W[2]} == "error id=3 code=$BUSY message=too many piece requests in flight (limit 2)"* ]] ||
    fail "the third GetPiece under max_requests 2: '${W[2]}'"
[[ ${W[3]} == "header id=4 number=0 "*"payload_sha256=$small_sha" ]] ||
    fail "a GetPiece after the BUSY on the same connection: '${W[3]:-nothing}'"

# 3. rate_limit 3 bytes/s: a piece is still served.
config D $'upload:\n  rate_limit: 3'
start_peer D --config "$T/D.yaml"
import_into D "$T/small"
wire tiny "${PEER_PORT[D]}" "get:$TASK:1:0"
[[ $(head -n 1 "$T/tiny.wire") == "header id=1 number=0 "*"payload_sha256=$small_sha" ]] ||
    fail "a piece under rate_limit 3: $(cat "$T/tiny.wire")"

# 4. SIGHUP removing a rate limit wakes the waiting connection; SIGTERM with
#    one waiting exits cleanly.
make_file "$T/eight" $((8 << 20))

# rate_limited NAME RATE WIRE: a daemon with upload.rate_limit RATE holding
# $T/eight (two 4 MiB pieces), a raw client asking for both (output in
# $T/WIRE.wire, pid in WIRE_PID); returns once piece 0 went out on the burst:
# piece 1 then waits for tokens.
rate_limited() {
    config "$1" "upload:
  rate_limit: $2"
    start_peer "$1" --config "$T/$1.yaml" --log-level debug
    import_into "$1" "$T/eight"
    peerwire talk "${PEER_PORT[$1]}" --deadline 60 "get:$TASK:1:0" "get:$TASK:2:1" \
        >"$T/$3.wire" 2>"$T/$3.wire.err" 9>&- &
    WIRE_PID=$!
    track "$WIRE_PID" peerwire
    wait_log "${PEER_LOG[$1]}" "upload piece task=$TASK piece=0" 10 "${PEER_PID[$1]}"
}

rate_limited E 128KiB hup
HUP_PID=$WIRE_PID
config E $'upload:\n  rate_limit: 0'
now_ms
hup_ms=$NOW_MS
kill -HUP "${PEER_PID[E]}"
wait_exit "$HUP_PID" 20
now_ms
untrack "$HUP_PID"
[[ $WAIT_RC == 0 ]] || fail "peerwire after the SIGHUP: exit $WAIT_RC: $(cat "$T/hup.wire.err")"
log "both pieces $((NOW_MS - hup_ms)) ms after the SIGHUP"
assert_eq 2 "$(grep -c '^header ' "$T/hup.wire")" "pieces after the rate limit went"
((NOW_MS - hup_ms < 10000)) ||
    fail "the pieces came $((NOW_MS - hup_ms)) ms after the rate limit was removed"
rate_limited E2 64KiB term
TERM_PID=$WIRE_PID
kill -TERM "${PEER_PID[E2]}"
wait_exit "${PEER_PID[E2]}" 15
assert_eq 0 "$WAIT_RC" "exit of ringflyd stopped with a connection waiting for the rate limit ($(tail -n 5 "${PEER_LOG[E2]}"))"
kill "$TERM_PID" 2>/dev/null
wait_exit "$TERM_PID" 5 || true

# 5. A seed named 70 unknown tasks by URL, from an origin that never answers.
start_stall_server
start_peer S --role seed
actions=()
for ((i = 0; i < 70; i++)); do
    u="http://127.0.0.1:$STALL_PORT/never/$i"
    actions+=("syncurl:$(task_id_of "$u"):$((i + 1)):$u")
done
wire flood "${PEER_PORT[S]}" "${actions[@]}"
assert_eq 64 "$(grep -c 'fetching it now' "$T/flood.wire")" "fetches the seed started for 70 URLs"
assert_eq 6 "$(grep -c "^error id=[0-9]* code=$BUSY message=no such task .* this seed is fetching 64 tasks already (limit 64)" "$T/flood.wire")" \
    "BUSY answers past 64 fetches: $(grep -v 'fetching it now' "$T/flood.wire" | head -n 3)"
must_health "${PEER_SOCK[S]}" 5 "${PEER_PID[S]}"
# A link-local origin (a cloud metadata service) is never fetched for a peer.
u="http://169.254.169.254/latest/meta-data/"
wire metadata "${PEER_PORT[S]}" "syncurl:$(task_id_of "$u"):1:$u"
[[ $(head -n 1 "$T/metadata.wire") == "error id=1 code=13 message=no such task "*", and this seed does not fetch it for peers: 169.254.169.254 is a link-local address" ]] ||
    fail "a seed asked for a link-local URL: $(cat "$T/metadata.wire")"
# seed.fetch_from: a host not in it is refused, one in it is fetched.
printf 'seed:\n  fetch_from: "registry.example, 127.0.0.1:%s"\n' "$STALL_PORT" >"$T/S2.yaml"
start_peer S2 --role seed --config "$T/S2.yaml"
u="http://127.0.0.1:$STALL_PORT/allowed"
v="http://localhost:$STALL_PORT/not-allowed"
wire allow "${PEER_PORT[S2]}" "syncurl:$(task_id_of "$u"):1:$u" "syncurl:$(task_id_of "$v"):2:$v"
mapfile -t W <"$T/allow.wire"
[[ ${W[0]} == "error id=1 code=12 message="*"fetching it now" ]] ||
    fail "a seed asked for a URL of seed.fetch_from: '${W[0]}'"
[[ ${W[1]} == "error id=2 code=13 message="*"localhost:$STALL_PORT is not in seed.fetch_from" ]] ||
    fail "a seed asked for a URL not in seed.fetch_from: '${W[1]:-nothing}'"
grep -F "seed fetch refused" "${PEER_LOG[S2]}" | grep -qF "url=$v" ||
    fail "no 'seed fetch refused ... url=$v' in S2's log"

# 6. A piece not recorded yet, then one that is, on one connection.
make_file "$WWW/slow" $((8 << 20))
start_nginx --req-rate 2
SOCK=${PEER_SOCK[A]}
url="$NGINX_URL/slow/slow"
ID=$(task_id_of "$url")
peer_get_bg slow A "$url" "$OUT/slow" --piece-length 1048576 --parallel 1
GET_PID=$BG_PID
wait_bytes_done "$url" 1048576 30
wire notyet "${PEER_PORT[A]}" "get:$ID:1:7" "get:$ID:2:0"
mapfile -t W <"$T/notyet.wire"
[[ ${W[0]} == "error id=1 code=12 message=piece 7 of task $ID is not here: not recorded (yet)" ]] ||
    fail "GetPiece of a piece not recorded yet: '${W[0]}'"
[[ ${W[1]} == "header id=2 number=0 offset=0 length=1048576 "* ]] ||
    fail "GetPiece of a recorded piece after that, same connection: '${W[1]:-nothing}'"
peer_get_wait slow 60
check_get_ok slow "$OUT/slow" "$WWW/slow"

# 7. A peer still probing its own download of the task (origin stalled).
start_peer P --log-level debug
u="http://127.0.0.1:$STALL_PORT/probing"
ID=$(task_id_of "$u")
peer_get_bg probing P "$u" "$OUT/probing" --timeout 60
wait_log "${PEER_LOG[P]}" "download start task=$ID" 10 "${PEER_PID[P]}"
other=$(task_id_of "http://127.0.0.1:$STALL_PORT/nobody")
wire probing "${PEER_PORT[P]}" "sync:$ID:1" "sync:$other:2"
mapfile -t W <"$T/probing.wire"
[[ ${W[0]} == "error id=1 code=12 message=no such task $ID here yet: fetching it now" ]] ||
    fail "SyncPieces to a peer probing its own get of the task: '${W[0]}'"
[[ ${W[1]} == "error id=2 code=12 message=no such task $other here" ]] ||
    fail "SyncPieces to that peer for a task it is not fetching: '${W[1]:-nothing}'"
kill "${_BG_PID[probing]}" 2>/dev/null
peer_get_wait probing 10
[[ ! -e $OUT/probing ]] || fail "the killed get left $OUT/probing"
must_health "${PEER_SOCK[P]}" 5 "${PEER_PID[P]}"
pass
