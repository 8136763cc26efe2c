#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# rf-badpeer, the faulty parent of the other p2p tests, does what they rely on
# (checked with a raw client, no daemon): SyncPieces of its task lists every
# piece with done, of another task Error NOT_FOUND and the connection stays
# open; GetPiece answers header + payload whose crc32c (the same function as
# the daemon's) matches the true bytes, the short last piece too; a number out
# of range is Error INVALID. corrupt: the header's crc32c is the true one, the
# payload is not. stall: GetPiece never answered, a later SyncPieces on the
# same connection is. close-after:2: two pieces, then the third's header and
# half its bytes, EOF, and later connections closed at once. SIGTERM prints
# served=N corrupt=M.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

require_peerwire
PL=65536
SIZE=$((PL * 5 + 1234))
COUNT=6
make_file "$T/file" $SIZE
URL="http://127.0.0.1:1/file"
ID=$(task_id_of "$URL")
OTHER=$(task_id_of "http://127.0.0.1:1/other")

# piece_sha N: sha256 of piece N of $T/file.
piece_sha() {
    local len=$PL h
    (($1 == COUNT - 1)) && len=$((SIZE - PL * (COUNT - 1)))
    h=$(tail -c +$(($1 * PL + 1)) "$T/file" | head -c "$len" | sha256sum)
    printf '%s\n' "${h%% *}"
}

# header_ok LINE N: a header line for piece N with the true bytes and crc.
header_ok() {
    local line=$1 n=$2 len=$PL
    ((n == COUNT - 1)) && len=$((SIZE - PL * (COUNT - 1)))
    assert_contains "$line" "number=$n offset=$((n * PL)) length=$len " "header of piece $n"
    assert_eq "$(log_field "$line" crc32c)" "$(log_field "$line" payload_crc32c)" "crc32c of piece $n ($line)"
    assert_eq "$(piece_sha "$n")" "$(log_field "$line" payload_sha256)" "payload of piece $n"
}

# 1. good
start_badpeer good "$URL" "$T/file" $PL
peerwire talk "$BAD_PORT" "sync:$OTHER:7" "sync:$ID:8" "get:$ID:9:0" "get:$ID:10:$((COUNT - 1))" \
    "get:$ID:11:$COUNT" "get:$OTHER:12:0" >"$T/good.out" 2>"$T/good.err" ||
    fail "peerwire against the good badpeer: $(cat "$T/good.err")"
mapfile -t L <"$T/good.out"
assert_eq 6 "${#L[@]}" "frames answered by the good badpeer ($(cat "$T/good.out"))"
assert_contains "${L[0]}" "error id=7 code=12 message=no such task" "answer to SyncPieces of another task"
assert_eq "avail id=8 content_length=$SIZE piece_length=$PL pieces=$COUNT first=0 last=$((COUNT - 1)) done=1 failed=0" "${L[1]}" "answer to SyncPieces"
assert_contains "${L[2]}" "header id=9 " "answer to GetPiece 0"
header_ok "${L[2]}" 0
assert_contains "${L[3]}" "header id=10 " "answer to GetPiece $((COUNT - 1))"
header_ok "${L[3]}" $((COUNT - 1))
assert_contains "${L[4]}" "error id=11 code=13 " "answer to GetPiece $COUNT (out of range)"
assert_contains "${L[5]}" "error id=12 code=12 " "answer to GetPiece of another task"
stop_badpeer
assert_eq "2 0" "$BAD_SERVED $BAD_CORRUPT" "served and corrupt counts of the good badpeer"

# 2. corrupt
start_badpeer corrupt "$URL" "$T/file" $PL
peerwire talk "$BAD_PORT" "get:$ID:1:2" >"$T/corrupt.out" 2>"$T/corrupt.err" ||
    fail "peerwire against the corrupt badpeer: $(cat "$T/corrupt.err")"
line=$(head -n 1 "$T/corrupt.out")
assert_contains "$line" "header id=1 number=2 offset=$((2 * PL)) length=$PL " "corrupt header"
good_crc=$(peerwire talk "$BAD_PORT" "get:$ID:2:2" | head -n 1)
[[ $(log_field "$line" crc32c) != "$(log_field "$line" payload_crc32c)" ]] || fail "the corrupt badpeer sent a payload that matches its crc32c: $line"
[[ $(log_field "$line" payload_sha256) != "$(piece_sha 2)" ]] || fail "the corrupt badpeer sent the true bytes"
# The advertised crc32c is that of the true bytes: compare with rf-badpeer good.
stop_badpeer
assert_eq "2 2" "$BAD_SERVED $BAD_CORRUPT" "served and corrupt counts of the corrupt badpeer"
start_badpeer good "$URL" "$T/file" $PL
good=$(peerwire talk "$BAD_PORT" "get:$ID:1:2" | head -n 1)
assert_eq "$(log_field "$good" crc32c)" "$(log_field "$line" crc32c)" "crc32c advertised by corrupt vs good"
assert_eq "$(log_field "$good_crc" crc32c)" "$(log_field "$line" crc32c)" "crc32c of the second corrupt answer"
stop_badpeer

# 3. stall: the GetPiece is dropped, the SyncPieces after it answered.
start_badpeer stall "$URL" "$T/file" $PL
peerwire talk "$BAD_PORT" "sendget:$ID:1:0" "sync:$ID:2" >"$T/stall.out" 2>"$T/stall.err" ||
    fail "peerwire against the stalling badpeer: $(cat "$T/stall.err")"
assert_eq "avail id=2 content_length=$SIZE piece_length=$PL pieces=$COUNT first=0 last=$((COUNT - 1)) done=1 failed=0" \
    "$(cat "$T/stall.out")" "answers of the stalling badpeer"
stop_badpeer
assert_eq "0 0" "$BAD_SERVED $BAD_CORRUPT" "served and corrupt counts of the stalling badpeer"

# 4. close-after:2
start_badpeer close-after:2 "$URL" "$T/file" $PL
peerwire talk "$BAD_PORT" "sync:$ID:1" "get:$ID:2:0" "get:$ID:3:1" "get:$ID:4:2" "eof" \
    >"$T/close.out" 2>"$T/close.err" || fail "peerwire against close-after:2: $(cat "$T/close.err")"
mapfile -t L <"$T/close.out"
assert_eq 5 "${#L[@]}" "lines from close-after:2 ($(cat "$T/close.out"))"
header_ok "${L[1]}" 0
header_ok "${L[2]}" 1
assert_contains "${L[3]}" "header id=4 number=2 offset=$((2 * PL)) length=$PL " "third answer of close-after:2"
assert_contains "${L[3]}" "truncated=$((PL / 2))" "third answer of close-after:2"
assert_eq eof "${L[4]}" "end of the connection to close-after:2"
peerwire talk "$BAD_PORT" "sync:$ID:1" >"$T/close2.out" 2>"$T/close2.err" || fail "second connection: $(cat "$T/close2.err")"
assert_eq eof "$(cat "$T/close2.out")" "a connection after the trip"
stop_badpeer
assert_eq "2 0" "$BAD_SERVED $BAD_CORRUPT" "served and corrupt counts of close-after:2"

pass
