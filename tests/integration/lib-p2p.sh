# shellcheck shell=bash
# Globals set here (P_PORT, BAD_PORT, ...) are read by the test scripts.
# shellcheck disable=SC2034
# Peers for the peer data plane tests (issue 6, docs/INTERFACE-issue6.md).
# Source it after lib.sh and lib-http.sh:
#
#     . "$(dirname "$0")/lib.sh"
#     . "$(dirname "$0")/lib-http.sh"
#     . "$(dirname "$0")/lib-p2p.sh"
#
# - start_peer NAME [ringflyd args]: a ringflyd of its own (socket $T/NAME.sock,
#   data dir $T/NAME.data, --listen-peer 127.0.0.1:0), healthy, its peer port
#   read from its log line `listening peer=127.0.0.1:0 port=N`.
# - peer_get / peer_get_bg / peer_get_wait: `ringfly get` against one peer's
#   socket, in the foreground or the background.
# - start_badpeer MODE URL FILE PIECE_LENGTH: rf-badpeer (tests/tools/badpeer.c,
#   RF_BADPEER) serving FILE as URL's task; stop_badpeer reads its counts.
# - peerwire ARGS: a raw peer-protocol client (python3) for the wire tests.
# Everything started is tracked (lib.sh's track) and SIGKILLed by the EXIT trap;
# every wait polls with a deadline.

: "${RF_BADPEER:=}"

declare -A PEER_SOCK=() PEER_PID=() PEER_LOG=() PEER_PORT=() PEER_DATA=()

# wait_log FILE ERE DEADLINE_S [PID]: polls FILE until a line matches ERE;
# sets LOG_LINE to the first match. Fails at the deadline, or at once if PID
# (when given) has exited.
wait_log() {
    local file=$1 re=$2 pid=${4:-} t0
    _ms "${3:-10}"
    local limit=$_MS
    now_ms; t0=$NOW_MS
    while :; do
        if LOG_LINE=$(grep -m 1 -E -- "$re" "$file" 2>/dev/null); then
            return 0
        fi
        if [[ -n $pid ]] && ! alive "$pid"; then
            fail "pid $pid exited before '$re' appeared in $file"
        fi
        now_ms
        ((NOW_MS - t0 > limit)) && fail "no line matching '$re' in $file within ${3:-10} s"
        nap 0.02
    done
}

# log_has FILE ERE: a line of FILE matches ERE.
log_has() { grep -qE -- "$2" "$1" 2>/dev/null; }

# log_field LINE KEY: the value of KEY=value in a log line (unquoted values).
log_field() {
    local w
    for w in $1; do
        if [[ $w == "$2="* ]]; then
            printf '%s\n' "${w#"$2="}"
            return 0
        fi
    done
    return 1
}

# start_peer NAME [ringflyd args...]: see above. Sets PEER_SOCK/PID/LOG/PORT/DATA
# [NAME] and P_SOCK, P_PID, P_LOG, P_PORT for the peer just started. A restart
# under the same NAME keeps the data dir.
start_peer() {
    local name=$1 port
    shift
    PEER_DATA[$name]="$T/$name.data"
    mkdir -p "${PEER_DATA[$name]}"
    start_daemon "$T/$name.sock" --data-dir "${PEER_DATA[$name]}" --listen-peer 127.0.0.1:0 "$@"
    must_health "$T/$name.sock" 10 "$DAEMON_PID"
    wait_log "$DAEMON_LOG" 'listening peer=127\.0\.0\.1:0 port=[0-9]+' 10 "$DAEMON_PID"
    port=$(log_field "$LOG_LINE" port)
    [[ $port =~ ^[0-9]+$ && $port -gt 0 ]] || fail "peer $name: bad port in '$LOG_LINE'"
    PEER_SOCK[$name]="$T/$name.sock"
    PEER_PID[$name]=$DAEMON_PID
    PEER_LOG[$name]=$DAEMON_LOG
    PEER_PORT[$name]=$port
    P_SOCK="$T/$name.sock"; P_PID=$DAEMON_PID; P_LOG=$DAEMON_LOG; P_PORT=$port
    log "peer $name: pid $DAEMON_PID, socket $P_SOCK, peer port $port, log $DAEMON_LOG"
}

# paddr NAME: "127.0.0.1:PORT", peer NAME's address for --parent.
paddr() { printf '127.0.0.1:%s\n' "${PEER_PORT[$1]}"; }

# peer_rf NAME CMD ARGS...: ringfly against peer NAME's socket (RF_DEADLINE,
# default 60 s); stdout -> $T/rf.out, stderr -> $T/rf.err; sets RF_RC.
peer_rf() {
    local name=$1
    shift
    timeout -k 2 "${RF_DEADLINE:-60}" "$RINGFLY" --socket "${PEER_SOCK[$name]}" "$@" \
        >"$T/rf.out" 2>"$T/rf.err" 9>&-
    RF_RC=$?
    return 0
}

# peer_stat NAME URL: `ringfly stat URL` at peer NAME; sets STAT_STATE and
# STAT_BYTES ("" when there is no such task yet).
peer_stat() {
    STAT_STATE=''; STAT_BYTES=''
    RF_DEADLINE=5 peer_rf "$1" stat "$2"
    if [[ $RF_RC == 0 ]]; then
        STAT_STATE=$(stat_field state)
        STAT_BYTES=$(stat_field bytes_done)
    fi
    return 0
}

# peer_get NAME PEER URL OUT [args...]: `ringfly get URL -O OUT --no-progress
# args` at peer PEER in the foreground (RF_DEADLINE, default 60 s);
# stdout/stderr -> $T/NAME.out/.err; sets GET_RC and GET_MS.
peer_get() {
    local name=$1 peer=$2 url=$3 out=$4 t0
    shift 4
    now_ms; t0=$NOW_MS
    timeout -k 2 "${RF_DEADLINE:-60}" "$RINGFLY" --socket "${PEER_SOCK[$peer]}" get "$url" \
        -O "$out" --no-progress "$@" >"$T/$name.out" 2>"$T/$name.err" 9>&-
    GET_RC=$?
    now_ms; GET_MS=$((NOW_MS - t0))
    return 0
}

# peer_get_bg NAME PEER URL OUT [args...]: the same in the background (tracked);
# sets BG_PID and remembers the start time for peer_get_wait.
declare -A _BG_PID=() _BG_T0=()
peer_get_bg() {
    local name=$1 peer=$2 url=$3 out=$4
    shift 4
    now_ms; _BG_T0[$name]=$NOW_MS
    # No timeout(1) in between: the pid tracked is ringfly's own, so that the
    # EXIT trap's SIGKILL reaches it; peer_get_wait bounds the wait.
    "$RINGFLY" --socket "${PEER_SOCK[$peer]}" get "$url" \
        -O "$out" --no-progress "$@" >"$T/$name.out" 2>"$T/$name.err" 9>&- &
    BG_PID=$!
    _BG_PID[$name]=$BG_PID
    track "$BG_PID" "ringfly get $name"
}

# peer_get_wait NAME DEADLINE_S: waits for the background get NAME; sets
# GET_RC and GET_MS (from its start). Fails at the deadline.
peer_get_wait() {
    local name=$1
    wait_exit "${_BG_PID[$name]}" "${2:-60}"
    [[ $WAIT_RC != timeout ]] || fail "get $name still running after ${2:-60} s; stderr: $(head -c 2000 "$T/$name.err")"
    GET_RC=$WAIT_RC
    now_ms; GET_MS=$((NOW_MS - _BG_T0[$name]))
}

# check_get_ok NAME OUT SRC: the get NAME (already waited for) exited 0, OUT
# has SRC's bytes, its summary names OUT and the byte count.
check_get_ok() {
    local name=$1 out=$2 src=$3
    [[ $GET_RC == 0 ]] || fail "get $name: exit $GET_RC, expected 0; stderr: $(head -c 2000 "$T/$name.err")"
    [[ -f $out ]] || fail "get $name exited 0 but $out does not exist"
    assert_eq "$(size_of "$src")" "$(size_of "$out")" "size of $out (get $name)"
    assert_eq "$(sha "$src")" "$(sha "$out")" "sha256 of $out (get $name)"
    assert_contains "$T/$name.err" "ringfly: $out: $(size_of "$src") bytes in" "summary line of get $name"
}

# expect_peer_get_ok NAME PEER URL OUT SRC [args...]: peer_get + check_get_ok.
expect_peer_get_ok() {
    local name=$1 peer=$2 url=$3 out=$4 src=$5
    shift 5
    peer_get "$name" "$peer" "$url" "$out" "$@"
    check_get_ok "$name" "$out" "$src"
}

# assert_source NAME WHAT: the summary line of get NAME ends in "from WHAT, task".
assert_source() {
    assert_contains "$T/$1.err" "from $2, task " "summary line of get $1"
}

# done_line PEER TASK: the `download done task=TASK` line of PEER's log, waited
# for (10 s): a get ends once its output is whole, the task is done (and
# logged) when the cache is durable too, a moment later. Sets DONE_LINE.
done_line() {
    wait_log "${PEER_LOG[$1]}" "download done task=$2" 10 "${PEER_PID[$1]}"
    DONE_LINE=$LOG_LINE
}

# assert_done PEER TASK SOURCE BYTES ORIGIN_BYTES PEER_BYTES: PEER's `download
# done task=TASK` line has these fields; "-" skips one, ">0" wants it positive.
# Unless the source is the cache, every byte came from somewhere:
# origin_bytes + peer_bytes >= bytes.
assert_done() {
    local peer=$1 task=$2 key want got i total from_origin from_peers
    local keys=(source bytes origin_bytes peer_bytes) wants=("$3" "$4" "$5" "$6")
    done_line "$peer" "$task"
    if [[ $(log_field "$DONE_LINE" source) != cache ]]; then
        total=$(log_field "$DONE_LINE" bytes) || fail "no bytes= in $peer's line: $DONE_LINE"
        from_origin=$(log_field "$DONE_LINE" origin_bytes) || fail "no origin_bytes= in $peer's line: $DONE_LINE"
        from_peers=$(log_field "$DONE_LINE" peer_bytes) || fail "no peer_bytes= in $peer's line: $DONE_LINE"
        ((from_origin + from_peers >= total)) ||
            fail "$peer's download done accounts for $((from_origin + from_peers)) of $total bytes (origin_bytes + peer_bytes): $DONE_LINE"
    fi
    for i in 0 1 2 3; do
        key=${keys[$i]} want=${wants[$i]}
        [[ $want == - ]] && continue
        got=$(log_field "$DONE_LINE" "$key") || fail "no $key= in $peer's line: $DONE_LINE"
        if [[ $want == '>0' ]]; then
            if ! [[ $got =~ ^[0-9]+$ ]] || ((got == 0)); then
                fail "$key of $peer's download done: '$got', expected > 0: $DONE_LINE"
            fi
        else
            [[ $got == "$want" ]] || fail "$key of $peer's download done: '$got', expected '$want': $DONE_LINE"
        fi
    done
}

# check_cache PEER TASK SRC: PEER is still alive and healthy, its task TASK is
# done, and `ringfly export TASK` gives SRC's bytes: what the cache keeps (and
# serves to the next child or a cache hit) is right, not only the output.
_EXPORTS=0
check_cache() {
    local peer=$1 task=$2 src=$3 out
    must_health "${PEER_SOCK[$peer]}" 5 "${PEER_PID[$peer]}"
    done_line "$peer" "$task"
    _EXPORTS=$((_EXPORTS + 1))
    out="$T/export.$_EXPORTS"
    peer_rf "$peer" export "$task" -O "$out"
    [[ $RF_RC == 0 ]] || fail "export $task at peer $peer: exit $RF_RC: $(cat "$T/rf.err")"
    if ! cmp -s "$src" "$out"; then
        fail "the cache of peer $peer holds other bytes than $src for task $task: $(cmp -l "$src" "$out" 2>&1 | wc -l) bytes differ, first: $(cmp -l "$src" "$out" 2>&1 | head -n 3 | tr '\n' ' ')(offset+1, octal: right, cached)"
    fi
    rm -f "$out"
}

# p2p_pass: every peer not stopped on purpose is still alive and its log has
# no sanitizer report; then pass.
p2p_pass() {
    local name pid
    for name in "${!PEER_PID[@]}"; do
        pid=${PEER_PID[$name]}
        if grep -qE 'ERROR: AddressSanitizer|runtime error:' "${PEER_LOG[$name]}" 2>/dev/null; then
            fail "sanitizer report in the log of peer $name: $(grep -m 1 -A 12 -E 'ERROR: AddressSanitizer|runtime error:' "${PEER_LOG[$name]}")"
        fi
        [[ -n ${_PIDS[$pid]:-} ]] || continue # stopped by the test
        alive "$pid" || fail "peer $name (pid $pid) died during the test: $(tail -n 5 "${PEER_LOG[$name]}")"
    done
    pass
}

# ------------------------------------------------------------------ rf-badpeer

require_badpeer() {
    [[ -n $RF_BADPEER && -x $RF_BADPEER ]] || fail "RF_BADPEER (rf-badpeer binary) not set or not executable"
}

# start_badpeer MODE URL FILE PIECE_LENGTH: rf-badpeer on 127.0.0.1:0; waits for
# its "port=N". Sets BAD_PID, BAD_PORT, BAD_ERR (its stderr).
_BADCOUNT=0
start_badpeer() {
    local mode=$1 url=$2 file=$3 pl=$4 out t0
    shift 4
    require_badpeer
    _BADCOUNT=$((_BADCOUNT + 1))
    out="$T/badpeer.$_BADCOUNT.out"
    BAD_ERR="$T/badpeer.$_BADCOUNT.err"
    : >"$out"
    "$RF_BADPEER" --listen 127.0.0.1:0 --url "$url" --file "$file" --piece-length "$pl" \
        --mode "$mode" "$@" >"$out" 2>"$BAD_ERR" 9>&- &
    BAD_PID=$!
    track "$BAD_PID" rf-badpeer
    _LOGS+=("$BAD_ERR")
    now_ms; t0=$NOW_MS
    until BAD_PORT=$(sed -n 's/^port=\([0-9][0-9]*\)$/\1/p' "$out") && [[ -n $BAD_PORT ]]; do
        if ! alive "$BAD_PID"; then
            wait_exit "$BAD_PID" 1
            fail "rf-badpeer --mode $mode exited $WAIT_RC before listening: $(cat "$BAD_ERR")"
        fi
        now_ms
        ((NOW_MS - t0 > 10000)) && fail "rf-badpeer did not print its port within 10 s: $(cat "$BAD_ERR")"
        nap
    done
    log "rf-badpeer pid $BAD_PID mode $mode port $BAD_PORT serving $file as $url"
}

# stop_badpeer [PID [ERR]]: SIGTERM, exit 0 within 5 s; sets BAD_SERVED and
# BAD_CORRUPT from its last line.
stop_badpeer() {
    local pid=${1:-$BAD_PID} err=${2:-$BAD_ERR} line
    kill -TERM "$pid" 2>/dev/null
    wait_exit "$pid" 5
    [[ $WAIT_RC == 0 ]] || fail "rf-badpeer (pid $pid) exited '$WAIT_RC' after SIGTERM, expected 0: $(tail -n 5 "$err")"
    line=$(grep -E '^served=[0-9]+ corrupt=[0-9]+$' "$err" | tail -n 1) ||
        fail "rf-badpeer printed no 'served=N corrupt=M': $(tail -n 5 "$err")"
    BAD_SERVED=$(log_field "$line" served)
    BAD_CORRUPT=$(log_field "$line" corrupt)
}

# -------------------------------------------------------------------- peerwire

# peerwire ARGS...: a raw client of the peer protocol ($T/peerwire.py, python3).
#   peerwire talk PORT [--deadline S] ACTION...   one connection; actions in order:
#     sync:TASKHEX:ID       SyncPieces, then read until PieceAvailability done/failed or Error
#     get:TASKHEX:ID:NUMBER GetPiece, then read its PieceHeader + payload, or an Error
#     sendget:TASKHEX:ID:NUMBER  GetPiece, nothing read
#     sendgets:TASKHEX:ID:NUMBER:COUNT  COUNT GetPiece of piece NUMBER, ids ID, ID+1, ...,
#                           in one write, nothing read
#     syncurl:TASKHEX:ID:URL  SyncPieces naming the task's URL (a seed lacking the
#                           task fetches it), then read as for sync
#     send:HEX              raw bytes, nothing read
#     shut                  shutdown(SHUT_WR)
#     sleep:SECONDS         nothing read meanwhile (a payload stays in flight)
#     read                  read one frame (and its payload)
#     eof                   read until the peer closes (frames printed)
#   Prints one line per frame received:
#     error id=N code=N message=TEXT
#     avail id=N content_length=N piece_length=N pieces=COUNT first=N last=N done=0|1 failed=0|1
#     header id=N number=N offset=N length=N crc32c=N payload_crc32c=N payload_sha256=HEX
#     frame type=N length=N            (anything else)
#   and "eof" when the peer closed. Exit 0; 1 with "peerwire: ..." on stderr
#   on a deadline (default 10 s) or a connection error.
#   peerwire hold PORT N [--expect-open K]   opens N connections, prints
#     "held N", then with --expect-open waits (10 s) until exactly K are still
#     open and prints "open K" (else exits 1 naming the count); then holds them
#     until stdin ends or SIGTERM.
require_peerwire() {
    require_cmd python3
    [[ -f $T/peerwire.py ]] || _write_peerwire
}

peerwire() {
    require_peerwire
    timeout -k 2 "${PEERWIRE_DEADLINE:-30}" python3 "$T/peerwire.py" "$@" 9>&-
}

_write_peerwire() {
    cp "$(dirname "${BASH_SOURCE[0]}")/protowire.py" "$T/protowire.py"
    cat >"$T/peerwire.py" <<'PY'
import hashlib, os, selectors, socket, struct, sys, time

def crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t

TABLE = crc32c_table()

def crc32c(data):
    c = 0xFFFFFFFF
    t = TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF

from protowire import decode, field_bytes, field_text, field_varint, first, frame, read_varint, varint

class Conn:
    def __init__(self, port, deadline):
        self.deadline = time.monotonic() + deadline
        self.s = socket.create_connection(("127.0.0.1", port), timeout=deadline)
        self.buf = bytearray()
        self.eof = False

    def fill(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            die("deadline passed")
        self.s.settimeout(left)
        try:
            data = self.s.recv(1 << 20)
        except socket.timeout:
            die("deadline passed waiting for data (have %d bytes)" % len(self.buf))
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    def need(self, n):
        while len(self.buf) < n and not self.eof:
            self.fill()
        return len(self.buf) >= n

    def take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_frame(self):
        """One frame as a dict with 'kind', or None at EOF."""
        if not self.need(5):
            return None
        length, ftype = struct.unpack(">IB", bytes(self.buf[:5]))
        if length == 0 or length > (16 << 20):
            die("bad frame header from the peer: length %d type %d" % (length, ftype))
        if not self.need(4 + length):
            return None
        self.take(5)
        msg = self.take(length - 1)
        f = decode(msg)
        if ftype == 2:
            print("error id=%d code=%d message=%s" % (first(f, 1), first(f, 2),
                  first(f, 3, b"").decode("utf-8", "replace")), flush=True)
            return {"kind": "error"}
        if ftype == 12:
            nums = []
            for packed in f.get(4, []):
                if isinstance(packed, int):
                    nums.append(packed)
                    continue
                j = 0
                while j < len(packed):
                    v, j = read_varint(packed, j)
                    nums.append(v)
            done, failed = first(f, 5), first(f, 6)
            print("avail id=%d content_length=%d piece_length=%d pieces=%d first=%s last=%s done=%d failed=%d"
                  % (first(f, 1), first(f, 2), first(f, 3), len(nums),
                     nums[0] if nums else "-", nums[-1] if nums else "-", done, failed), flush=True)
            return {"kind": "avail", "end": bool(done or failed)}
        if ftype == 14:
            length = first(f, 4)
            if not self.need(length):
                print("header id=%d number=%d offset=%d length=%d crc32c=%d truncated=%d"
                      % (first(f, 1), first(f, 2), first(f, 3), length, first(f, 5),
                         len(self.buf)), flush=True)
                return None
            payload = self.take(length)
            print("header id=%d number=%d offset=%d length=%d crc32c=%d payload_crc32c=%d payload_sha256=%s"
                  % (first(f, 1), first(f, 2), first(f, 3), length, first(f, 5),
                     crc32c(payload), hashlib.sha256(payload).hexdigest()), flush=True)
            return {"kind": "header"}
        print("frame type=%d length=%d" % (ftype, length), flush=True)
        return {"kind": "other"}

def die(msg):
    print("peerwire: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)

def talk(port, actions, deadline):
    c = Conn(port, deadline)
    for a in actions:
        parts = a.split(":")
        if parts[0] in ("sync", "syncurl"):
            task, rid = bytes.fromhex(parts[1]), int(parts[2])
            url = a.split(":", 3)[3] if parts[0] == "syncurl" else ""
            c.s.sendall(frame(11, field_varint(1, rid) + field_bytes(2, task) +
                              (field_text(3, url) if url else b"")))
            while True:
                fr = c.read_frame()
                if fr is None:
                    print("eof", flush=True)
                    return
                if fr["kind"] == "error" or (fr["kind"] == "avail" and fr["end"]):
                    break
        elif parts[0] == "get":
            task, rid, num = bytes.fromhex(parts[1]), int(parts[2]), int(parts[3])
            c.s.sendall(frame(13, field_varint(1, rid) + field_bytes(2, task) + field_varint(3, num)))
            while True:
                fr = c.read_frame()
                if fr is None:
                    print("eof", flush=True)
                    return
                if fr["kind"] in ("error", "header"):
                    break
        elif parts[0] == "sendget":
            task, rid, num = bytes.fromhex(parts[1]), int(parts[2]), int(parts[3])
            c.s.sendall(frame(13, field_varint(1, rid) + field_bytes(2, task) + field_varint(3, num)))
        elif parts[0] == "sendgets":
            task, rid, num, count = (bytes.fromhex(parts[1]), int(parts[2]), int(parts[3]),
                                     int(parts[4]))
            c.s.sendall(b"".join(frame(13, field_varint(1, rid + i) + field_bytes(2, task) +
                                       field_varint(3, num)) for i in range(count)))
        elif parts[0] == "send":
            c.s.sendall(bytes.fromhex(parts[1]))
        elif parts[0] == "shut":
            c.s.shutdown(socket.SHUT_WR)
        elif parts[0] == "sleep":
            time.sleep(float(parts[1]))
        elif parts[0] == "read":
            if c.read_frame() is None:
                print("eof", flush=True)
                return
        elif parts[0] == "eof":
            while c.read_frame() is not None:
                pass
            print("eof", flush=True)
            return
        else:
            die("unknown action " + a)

def hold(port, n, expect_open):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    socks = []
    for i in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError as e:
            die("connection %d of %d: %s" % (i + 1, n, e))
    print("held %d" % n, flush=True)
    if expect_open is not None:
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        open_ = set(socks)
        end = time.monotonic() + 10
        while len(open_) > expect_open and time.monotonic() < end:
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    while True:
                        d = s.recv(65536)
                        if not d:
                            raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    sel.unregister(s)
                    open_.discard(s)
        if len(open_) != expect_open:
            die("%d of %d connections still open after 10 s, expected %d" % (len(open_), n, expect_open))
        print("open %d" % len(open_), flush=True)
    sys.stdin.read()

def main():
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "talk":
        port = int(args[1])
        rest = args[2:]
        deadline = 10.0
        if len(rest) >= 2 and rest[0] == "--deadline":
            deadline = float(rest[1])
            rest = rest[2:]
        try:
            talk(port, rest, deadline)
        except ConnectionRefusedError:
            die("connect 127.0.0.1:%d: connection refused" % port)
        except BrokenPipeError:
            print("eof", flush=True)
        return
    if len(args) >= 3 and args[0] == "hold":
        expect = None
        if len(args) == 5 and args[3] == "--expect-open":
            expect = int(args[4])
        hold(int(args[1]), int(args[2]), expect)
        return
    die("usage: peerwire talk PORT [--deadline S] ACTION... | hold PORT N [--expect-open K]")

main()
PY
}
