#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# The daemon's HTTP server under bad input (issue 8), with http.header_timeout
# 1s and http.max_connections 64 from a config file, and an upstream registry
# that does not exist:
# 1. 20 KiB of headers -> 431 and close; a bad request line -> 400 and close;
#    HTTP/2.0 -> 400; a request with a body -> 413 and close; DELETE of a
#    manifest -> 405 (pull-only); an unknown path -> 404; a path with a "..",
#    plain or percent-encoded -> 400 (never forwarded); ?ns= naming no
#    configured registry -> 404 (containerd then asks the registry itself).
# 2. Slowloris: half a request head, then nothing -> 408 and close within
#    header_timeout (+ slack), not before.
# 3. Two pipelined GET /healthz in one write -> two 200s, in order, on one
#    connection; keep-alive: a third request on it is answered too.
# 4. 64 connections held open -> the 65th gets 503; once they close,
#    /healthz answers again.
# 5. GET /v2/ with the registry unreachable -> 502, a JSON error naming the
#    reason; the daemon answers `ringfly health` throughout and stays alive.
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
cat >"$T/m.yaml" <<'YAML'
http:
  header_timeout: 1s
  max_connections: 64
YAML
start_mirror m1 --config "$T/m.yaml" --registry http://127.0.0.1:1

# raw NAME SCRIPT: runs a python3 raw-socket client against the mirror; its
# stdout in $T/NAME.out; fails the test if the script fails.
raw() {
    local name=$1
    timeout -k 2 30 python3 - "$M_PORT" >"$T/$name.out" 2>"$T/$name.err" 9>&- <<<"$2" ||
        fail "raw client $name failed: $(cat "$T/$name.err" "$T/$name.out" | head -c 3000)"
}

PY_LIB='
import socket, sys, time
port = int(sys.argv[1])
def conn():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s
def read_all(s, deadline=10):
    s.settimeout(deadline)
    data = b""
    while True:
        try:
            b = s.recv(65536)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not b:
            return data, True
        data += b
def status_of(data):
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return line
def expect(data, closed, code, what):
    line = status_of(data)
    if not line.startswith("HTTP/1.1 %d " % code):
        sys.exit("%s: status line %r, expected %d" % (what, line, code))
    if not closed:
        sys.exit("%s: the connection stayed open" % what)
    print("%s: %s, closed" % (what, line))
'

# --- 1. malformed requests.
raw malformed "$PY_LIB"'
def ask(raw, code, what):
    s = conn(); s.sendall(raw)
    d, c = read_all(s); expect(d, c, code, what)
    return d
CLOSE = b"Host: x\r\nConnection: close\r\n\r\n"
ask(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20480 + b"\r\n\r\n", 431, "20 KiB of headers")
ask(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n", 400, "bad request line")
ask(b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 400, "HTTP/2.0")
ask(b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413, "a request body")
ask(b"DELETE /v2/x/manifests/v1 HTTP/1.1\r\n" + CLOSE, 405, "DELETE")
ask(b"GET /nope HTTP/1.1\r\n" + CLOSE, 404, "unknown path")
ask(b"GET /v2/x/../../admin HTTP/1.1\r\n" + CLOSE, 400, "a .. segment")
ask(b"GET /v2/x/%2E%2e/y/manifests/v1 HTTP/1.1\r\n" + CLOSE, 400, "an encoded .. segment")
d = ask(b"GET /v2/x/manifests/v1?ns=other.example HTTP/1.1\r\n" + CLOSE, 404, "ns= naming no upstream")
if b"no upstream registry for ns=other.example" not in d: sys.exit("404 for ns= does not say why: %r" % d[-300:])'
cat "$T/malformed.out"
must_health "${PEER_SOCK[m1]}" 5 "${PEER_PID[m1]}"

# --- 2. slowloris.
raw slow "$PY_LIB"'
s = conn(); t0 = time.monotonic()
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
d, c = read_all(s, 10); dt = time.monotonic() - t0
expect(d, c, 408, "half a request head")
if dt < 0.9 or dt > 4:
    sys.exit("408 after %.2f s, expected about 1 s (header_timeout)" % dt)
print("408 after %.2f s" % dt)
'
cat "$T/slow.out"

# --- 3. pipelining and keep-alive.
raw pipeline "$PY_LIB"'
s = conn()
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
s.settimeout(10); data = b""
while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"\n"):
    b = s.recv(65536)
    if not b: sys.exit("closed after %r" % data)
    data += b
first = data.index(b"HTTP/1.1 200"); second = data.index(b"HTTP/1.1 404")
if not first < second: sys.exit("responses out of order: %r" % data)
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
d, c = read_all(s); expect(d, c, 200, "third request on the connection")
print("pipelined: 200 then 404, then 200 on the same connection")
'
cat "$T/pipeline.out"

# --- 4. the connection limit.
raw limit "$PY_LIB"'
held = []
for i in range(64):
    s = conn(); s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(10); d = s.recv(65536)
    if not d.startswith(b"HTTP/1.1 200"): sys.exit("connection %d: %r" % (i, d[:80]))
    held.append(s)
s = conn(); d, c = read_all(s)
expect(d, c, 503, "connection 65")
for s in held: s.close()
deadline = time.monotonic() + 10
while True:
    s = conn(); s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    d, c = read_all(s)
    if d.startswith(b"HTTP/1.1 200"): break
    if time.monotonic() > deadline: sys.exit("no 200 after the held connections closed: %r" % d[:80])
    time.sleep(0.02)
print("healthz answers again")
'
cat "$T/limit.out"

# --- 5. an unreachable registry.
mirror_curl m1 "$T/ping" "/v2/"
assert_eq 502 "$CURL_CODE" "GET /v2/ with the registry unreachable"
assert_contains "$T/ping" '"errors":[{"code":"UNKNOWN","message":"ringfly mirror: registry unreachable' "body of the 502"
assert_contains "$T/curl.h" "Content-Type: application/json" "Content-Type of the 502"
must_health "${PEER_SOCK[m1]}" 5 "${PEER_PID[m1]}"
alive "${PEER_PID[m1]}" || fail "the daemon died"
p2p_pass
