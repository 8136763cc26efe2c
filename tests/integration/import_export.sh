#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# Large imports and exports do not hold the daemon: they run a slice per loop
# turn, so a request sent right behind one on the same connection is answered
# first (an import or export done at once answered in order). A client that
# goes away mid-import leaves no temp file and no task; the daemon stays up.
# SIGTERM during a 768 MiB import: the drain lets it finish (exit 0, its id)
# before the daemon stops (exit 0).
# Exit codes, ids (sha256 of the content) and bytes are checked.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
MIB=$((1024 * 1024))
cp "$(dirname "$0")/protowire.py" "$T/protowire.py"

make_file "$T/big" $((48 * MIB))
big_sha=$(sha "$T/big")
start_ringflyd

# raw NAME ARGS...: runs the python client below, output -> $T/NAME.out.
raw() {
    local name=$1
    shift
    python3 - "$SOCK" "$T" "$@" >"$T/$name.out" 2>"$T/$name.err" <<'PY' ||
import os, socket, struct, sys
sys.path.insert(0, sys.argv[2])
from protowire import decode, field_text, field_varint, first, frame
path, mode = sys.argv[1], sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(path)

def answers(n):
    buf = b""
    for _ in range(n):
        while len(buf) < 5 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("closed before an answer")
            buf += chunk
        size = struct.unpack(">I", buf[:4])[0]
        f = decode(buf[5:4 + size])
        # TaskInfo: task_id (2), state (4); Error: message (3).
        text = first(f, 2 if buf[4] == 8 else 3, b"").decode()
        state = first(f, 4, b"").decode() if buf[4] == 8 else ""
        print("type=%d id=%d %s %s" % (buf[4], first(f, 1), text, state))
        buf = buf[4 + size:]

if mode == "import":        # ImportFile(1) of FILE, StatTask(2) of ID behind it
    fd = os.open(sys.argv[4], os.O_RDONLY)
    s.sendmsg([frame(9, field_varint(1, 1) + field_text(2, "big")) +
               frame(7, field_varint(1, 2) + field_text(3, sys.argv[5]))],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    answers(2)
elif mode == "export":      # ExportTask(3) of ID into FILE, StatTask(4) behind it
    fd = os.open(sys.argv[5], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    s.sendmsg([frame(10, field_varint(1, 3) + field_text(2, sys.argv[4])) +
               frame(7, field_varint(1, 4) + field_text(3, sys.argv[4]))],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    answers(2)
elif mode == "abandon":     # ImportFile(5) of FILE, then gone
    fd = os.open(sys.argv[4], os.O_RDONLY)
    s.sendmsg([frame(9, field_varint(1, 5) + field_text(2, "abandoned"))],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    s.close()
PY
        fail "raw $name: $(cat "$T/$name.err")"
}

# 1. Import of 48 MiB with a stat (of a small task imported before) behind
#    it: the stat's answer comes first, then the import's TaskInfo (complete,
#    id = sha256 of the content). An error answer would end the connection.
make_file "$T/small" 1000
small_sha=$(sha "$T/small")
assert_exit 0 "$RINGFLY" --socket "$SOCK" import "$T/small"
assert_eq "$small_sha" "$(tr -d '\n' <"$T/last.out")" "ringfly import of a small file"
raw import import "$T/big" "$small_sha"
log "import then stat: $(tr '\n' '|' <"$T/import.out")"
assert_eq 2 "$(wc -l <"$T/import.out")" "answers to import + stat"
assert_eq "type=8 id=2 $small_sha complete" "$(sed -n 1p "$T/import.out")" \
    "first answer (the stat behind a 48 MiB import)"
assert_eq "type=8 id=1 $big_sha complete" "$(sed -n 2p "$T/import.out")" "answer to the import"
assert_gone "$T/data/content/tmp/"*
rf stat "$big_sha"
[[ $RF_RC == 0 ]] || fail "stat $big_sha exited $RF_RC: $(cat "$T/rf.err")"
assert_eq complete "$(stat_field state)" "state of the imported task"
assert_eq $((48 * MIB)) "$(stat_field bytes_done)" "bytes_done of the imported task"

# 2. Export of it with a stat behind it: the stat first, then the export;
#    the file has the content's bytes.
raw export export "$big_sha" "$T/exported"
log "export then stat: $(tr '\n' '|' <"$T/export.out")"
assert_eq "type=8 id=4 $big_sha complete" "$(sed -n 1p "$T/export.out")" \
    "first answer (the stat behind a 48 MiB export)"
assert_eq "type=8 id=3 $big_sha complete" "$(sed -n 2p "$T/export.out")" "answer to the export"
assert_eq "$big_sha" "$(sha "$T/exported")" "sha256 of the exported file"
grep -F "exported task=$big_sha bytes=$((48 * MIB))" "$DAEMON_LOG" >/dev/null ||
    fail "no 'exported task=$big_sha bytes=$((48 * MIB))' in the daemon log"

# 3. The CLI: export of the URL-less task and import of the same file again.
assert_exit 0 "$RINGFLY" --socket "$SOCK" export "$big_sha" -O "$T/cli-exported"
assert_eq "$big_sha" "$(sha "$T/cli-exported")" "sha256 of ringfly export"
assert_exit 0 "$RINGFLY" --socket "$SOCK" import "$T/big"
assert_eq "$big_sha" "$(tr -d '\n' <"$T/last.out")" "ringfly import of the same file"

# 4. A client gone right after sending an import of 256 MiB: the daemon stops
#    it, removes its temp file, records no task and answers health.
truncate -s $((256 * MIB)) "$T/zeros"
zeros_sha=$(sha "$T/zeros")
raw abandon abandon "$T/zeros"
deadline=$((SECONDS + 20))
until grep -F "import abandoned, its client is gone name=abandoned" "$DAEMON_LOG" >/dev/null; do
    grep -F "imported path=abandoned" "$DAEMON_LOG" >/dev/null &&
        fail "the abandoned import finished before the daemon saw its client go"
    ((SECONDS < deadline)) || fail "no 'import abandoned' in the daemon log within 20 s"
    nap 0.02
done
must_health "$SOCK" 5 "$DAEMON_PID"
assert_gone "$T/data/content/tmp/"*
rf stat "$zeros_sha"
assert_eq 1 "$RF_RC" "exit status of stat of the abandoned import's content"
assert_contains "$T/rf.err" "no such task" "stat of the abandoned import's content"

# 5. SIGTERM during an import: the drain lets it finish (exit 0, the id),
#    then the daemon stops cleanly.
truncate -s $((768 * MIB)) "$T/zeros2"
printf 'x' | dd of="$T/zeros2" bs=1 seek=$((768 * MIB - 1)) conv=notrunc 2>/dev/null
zeros2_sha=$(sha "$T/zeros2")
"$RINGFLY" --socket "$SOCK" import "$T/zeros2" >"$T/drain.out" 2>"$T/drain.err" 9>&- &
IMPORT_PID=$!
track "$IMPORT_PID" "ringfly import"
wait_log_line() {
    local re=$1 t0
    now_ms; t0=$NOW_MS
    until grep -qE -- "$re" "$DAEMON_LOG"; do
        now_ms
        ((NOW_MS - t0 < 10000)) || fail "no line matching '$re' in the daemon log within 10 s"
        nap 0.01
    done
}
wait_log_line "service: import name=$T/zeros2 "
kill -TERM "$DAEMON_PID"
wait_exit "$IMPORT_PID" 30
untrack "$IMPORT_PID"
assert_eq 0 "$WAIT_RC" "exit of ringfly import when the daemon was sent SIGTERM during it ($(cat "$T/drain.err"))"
assert_eq "$zeros2_sha" "$(tr -d '\n' <"$T/drain.out")" "id printed by the import the drain let finish"
wait_exit "$DAEMON_PID" 30
assert_eq 0 "$WAIT_RC" "exit of ringflyd after the drain ($(tail -n 3 "$DAEMON_LOG"))"
term_line=$(grep -n "shutting down signal=SIGTERM" "$DAEMON_LOG" | cut -d: -f1)
done_line=$(grep -n "imported path=$T/zeros2 " "$DAEMON_LOG" | cut -d: -f1)
[[ -n $term_line && -n $done_line ]] && ((term_line < done_line)) ||
    fail "the import was not under way at SIGTERM (shutting down at line ${term_line:-none}, imported at ${done_line:-none})"
pass
