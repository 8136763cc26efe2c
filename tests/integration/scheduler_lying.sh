#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# A scheduler that names parents by host name (a lying or broken one; the real
# one names peers by the IP literals they announced): the daemon ignores them
# with a warning naming the scheduler and the address (it once resolved each
# with a blocking getaddrinfo on its loop), takes the IP-literal parent of the
# same answer (a dead port here: it fails and the get goes to the origin), and
# the get completes, byte-identical, the daemon healthy throughout.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
make_file "$WWW/file" $((3 << 20))
start_nginx

# The fake scheduler: every AnnouncePeer (type 15) gets a ParentsResponse (16)
# with two host-name parents and one IP literal; nothing else is answered.
cp "$(dirname "$0")/protowire.py" "$T/protowire.py"
cat >"$T/fakesched.py" <<'PY'
import socket, struct, sys
sys.path.insert(0, sys.argv[2])
from protowire import decode, field_bytes, field_text, field_varint, first, frame

def parent(pid, address):
    return field_bytes(3, field_text(1, pid) + field_text(2, address))

s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    c, _ = s.accept()
    buf = b""
    while True:
        b = c.recv(65536)
        if not b:
            break
        buf += b
        while len(buf) >= 5:
            n = struct.unpack(">I", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            t, msg, buf = buf[4], buf[5:4 + n], buf[4 + n:]
            if t != 15:
                continue
            rid = first(decode(msg), 1)
            m = field_varint(1, rid) + parent("named-1", "never.invalid:65002") + \
                parent("named-2", "localhost:65002") + parent("dead", "127.0.0.1:1")
            c.sendall(frame(16, m))
    c.close()
PY
python3 "$T/fakesched.py" "$T/fakesched.port" "$T" 2>"$T/fakesched.err" 9>&- &
track $! "fake scheduler"
deadline=$((SECONDS + 10))
until [[ -s $T/fakesched.port ]]; do
    ((SECONDS < deadline)) || fail "the fake scheduler did not start: $(cat "$T/fakesched.err")"
    sleep 0.05
done
SCHED="127.0.0.1:$(cat "$T/fakesched.port")"
start_ringflyd --scheduler "$SCHED"

URL="$NGINX_URL/file"
expect_get_ok one "$URL" "$OUT/one" "$WWW/file"
grep -F "scheduler named parents that are not ip:port, ignored count=2 " "$DAEMON_LOG" |
    grep -F 'first="never.invalid:65002"' | grep -qF "scheduler=$SCHED" ||
    fail "no warning for the 2 host-name parents from scheduler $SCHED in the daemon log"
assert_not_contains "$DAEMON_LOG" "cannot resolve" "daemon log (a host name was resolved)"
must_health "$SOCK" 5 "$DAEMON_PID"
log "$(grep -F 'not ip:port' "$DAEMON_LOG" | head -n 1)"
pass
