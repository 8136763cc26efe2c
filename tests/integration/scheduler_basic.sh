#!/usr/bin/env bash
# ringfly-scheduler alone (docs/INTERFACE-issue7.md), driven by a raw client
# ($T/schedwire.py, python3, protobuf fields encoded by hand):
#  1. listens on 127.0.0.1:0 and logs the bound port; health: role scheduler,
#     version, pid, the bound address, open connections;
#  2. the first requester of an unknown task, no seed known: back_to_source;
#  3. a seed, a complete peer, a new peer of one task: the new one gets the
#     complete peer then the seed (ids, addresses, id and task echoed), the
#     announce (debug) and parents (info) lines are logged; a task nobody
#     holds now gets the seed (it fetches from the origin); TaskPeers lists
#     who holds a task (complete first), none for an unknown one;
#  4. PeerLeave of the complete peer: it is gone from the next answer;
#  5. a wrong AnnouncePeer gets INVALID and a Hello gets UNEXPECTED, the
#     connection kept; random bytes and a huge length get an Error, then
#     close; health answers afterwards;
#  6. preheat: with no seed connection open (seed-1 of 3. registered on a
#     connection since closed), NOT_FOUND "no seed peer known"; a seed that
#     registers (all-zero task, seed, peer id = its address) is named in the
#     PreheatResponse and receives a Preheat with the url, task id and
#     digest; of three seeds the two first by rendezvous hashing (computed
#     here with hashlib) are asked, the third is not; once their connections
#     close, NOT_FOUND again; a 5-byte task id, an empty url or a bad digest
#     get INVALID, the connection kept;
#  7. a second scheduler on the same address exits 1 naming it; an unknown
#     config key, a bad flag value, a bad or missing address exit 2;
#  8. SIGTERM with a client connected: the client sees EOF, exit 0;
#  9. --peer-ttl 1s (the config file says 1h): peers are dropped (`peer
#     expired`) after 1 to 3.5 s.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-p2p.sh
. "$(dirname "$0")/lib-p2p.sh"

: "${RINGFLY_SCHEDULER:?set RINGFLY_SCHEDULER to the ringfly-scheduler binary}"
require_cmd python3

# start_scheduler NAME [args...]: ringfly-scheduler on 127.0.0.1:0 (debug
# logs), its port read from `scheduler listening address=127.0.0.1:0 port=N`.
# Sets SCHED_PID, SCHED_LOG, SCHED_PORT.
start_scheduler() {
    local name=$1
    shift
    SCHED_LOG="$T/$name.log"
    env --default-signal=INT,QUIT "$RINGFLY_SCHEDULER" --listen 127.0.0.1:0 --log-level debug "$@" \
        >"$SCHED_LOG" 2>&1 9>&- &
    SCHED_PID=$!
    track "$SCHED_PID" "ringfly-scheduler $name"
    _LOGS+=("$SCHED_LOG")
    wait_log "$SCHED_LOG" 'scheduler listening address=127\.0\.0\.1:0 port=[0-9]+$' 10 "$SCHED_PID"
    SCHED_PORT=$(log_field "$LOG_LINE" port)
    [[ $SCHED_PORT =~ ^[0-9]+$ && $SCHED_PORT -gt 0 ]] || fail "bad port in '$LOG_LINE'"
    log "scheduler $name: pid $SCHED_PID port $SCHED_PORT log $SCHED_LOG"
}

cp "$(dirname "$0")/protowire.py" "$T/protowire.py"
cat >"$T/schedwire.py" <<'PY'
# schedwire PORT ACTION...: one connection to a scheduler; actions in order,
# each "VERB key=value ...":
#   announce id= task=HEX peer= [ip= port= seed= done= count= complete= want=
#            location= slots= uploads= using=ID,ID]   then reads one frame
#   leave id= task=HEX|- peer=                       nothing read
#   health id=                                       then reads one frame
#   hello id=                                        then reads one frame
#   preheat id= task=HEX url= [digest=]              then reads one frame
#   taskpeers id= task=HEX                           then reads one frame
#   drain id=      health, then reads frames up to and including its answer
#   waitfile path=                                   waits until path exists
#   send hex=HEX | random n=N | shut | read | eof (reads until close)
# Values are %-decoded (peer=bad%20id).
# Prints one line per frame: parents ... reason=TEXT | health ... |
# preheat ... | preheated ... | error id= code= message=TEXT |
# frame type= length=; "eof" at the end.
import os, random, socket, struct, sys, time, urllib.parse

from protowire import decode, first, frame, read_varint, varint
from protowire import field_text as fb, field_varint as fv

def text(f, num):
    return first(f, num, b"").decode("utf-8", "replace")

def die(msg):
    print("schedwire: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)

class Conn:
    def __init__(self, port, deadline):
        self.deadline = time.monotonic() + deadline
        self.s = socket.create_connection(("127.0.0.1", port), timeout=deadline)
        self.buf = bytearray()
        self.eof = False

    def need(self, n):
        while len(self.buf) < n and not self.eof:
            left = self.deadline - time.monotonic()
            if left <= 0:
                die("deadline passed")
            self.s.settimeout(left)
            try:
                data = self.s.recv(65536)
            except socket.timeout:
                die("deadline passed waiting for a frame")
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.buf += data
        return len(self.buf) >= n

    def read_frame(self):
        if not self.need(5):
            print("eof", flush=True)
            return False
        length, ftype = struct.unpack(">IB", bytes(self.buf[:5]))
        if length == 0 or length > (1 << 20) or not self.need(4 + length):
            die("bad or truncated frame: length %d type %d" % (length, ftype))
        msg = bytes(self.buf[5:4 + length])
        del self.buf[:4 + length]
        f = decode(msg)
        if ftype == 16:
            parents = [decode(p) for p in f.get(3, [])]
            print("parents id=%d task=%s back_to_source=%d addresses=%s peers=%s seeds=%s reason=%s"
                  % (first(f, 1), first(f, 2, b"").hex(), first(f, 4),
                     ",".join(text(p, 2) for p in parents),
                     ",".join(text(p, 1) for p in parents),
                     ",".join(str(first(p, 3)) for p in parents), text(f, 5)), flush=True)
        elif ftype == 4:
            print("health id=%d version=%s pid=%d uptime_ms=%d role=%s socket_path=%s open_connections=%d"
                  % (first(f, 1), text(f, 2), first(f, 3), first(f, 4), text(f, 5), text(f, 6),
                     first(f, 7)), flush=True)
        elif ftype == 18:
            print("preheat id=%d task=%s digest=%s url=%s"
                  % (first(f, 1), first(f, 3, b"").hex(), text(f, 4), text(f, 2)), flush=True)
        elif ftype == 19:
            print("preheated id=%d task=%s seeds=%s"
                  % (first(f, 1), text(f, 3),
                     ",".join(s.decode("utf-8", "replace") for s in f.get(2, []))), flush=True)
        elif ftype == 21:
            peers = [decode(p) for p in f.get(6, [])]
            print("taskpeers id=%d task=%s url=%s length=%d pieces=%d count=%d peers=%s"
                  % (first(f, 1), first(f, 2, b"").hex(), text(f, 3), first(f, 4), first(f, 5),
                     first(f, 7),
                     ",".join("%s/%s/seed=%d/complete=%d/done=%d"
                              % (text(p, 1), text(p, 2), first(p, 3), first(p, 5), first(p, 4))
                              for p in peers)), flush=True)
        elif ftype == 2:
            print("error id=%d code=%d message=%s" % (first(f, 1), first(f, 2), text(f, 3)),
                  flush=True)
        else:
            print("frame type=%d length=%d" % (ftype, length), flush=True)
        return ftype

def announce(a):
    host = (fb(1, a.get("ip", "127.0.0.1")) + fv(2, int(a.get("port", "0"))) +
            fv(3, int(a.get("seed", "0"))) + fb(4, a.get("location", "")) +
            fv(5, int(a.get("slots", "0"))) + fv(6, int(a.get("uploads", "0"))))
    msg = (fv(1, int(a["id"])) + fb(2, bytes.fromhex(a["task"])) + fb(3, "http://origin/x") +
           fb(4, a["peer"]) + fb(5, host) + fv(8, int(a.get("count", "4"))) +
           fv(9, int(a.get("done", "0"))) + fv(10, int(a.get("complete", "0"))) +
           fv(11, int(a.get("want", "0"))))
    for p in filter(None, a.get("using", "").split(",")):
        msg += fb(12, p)
    return frame(15, msg)

def main():
    port, actions = int(sys.argv[1]), sys.argv[2:]
    c = Conn(port, 10)
    for action in actions:
        verb, *pairs = action.split()
        a = {k: urllib.parse.unquote(v) for k, v in (p.split("=", 1) for p in pairs)}
        if verb == "announce":
            c.s.sendall(announce(a))
        elif verb == "leave":
            task = b"" if a["task"] == "-" else bytes.fromhex(a["task"])
            c.s.sendall(frame(17, fv(1, int(a["id"])) + fb(2, task) + fb(3, a["peer"])))
            continue
        elif verb == "health":
            c.s.sendall(frame(3, fv(1, int(a["id"]))))
        elif verb == "hello":
            c.s.sendall(frame(1, fv(1, int(a["id"])) + fb(6, "peer")))
        elif verb == "preheat":
            c.s.sendall(frame(18, fv(1, int(a["id"])) + fb(2, a["url"]) +
                              fb(3, bytes.fromhex(a["task"])) + fb(4, a.get("digest", ""))))
        elif verb == "taskpeers":
            c.s.sendall(frame(20, fv(1, int(a["id"])) + fb(2, bytes.fromhex(a["task"]))))
        elif verb == "drain":
            c.s.sendall(frame(3, fv(1, int(a["id"]))))
            while True:
                ftype = c.read_frame()
                if not ftype:
                    return
                if ftype == 4:
                    break
            continue
        elif verb == "waitfile":
            while not os.path.exists(a["path"]):
                if time.monotonic() > c.deadline:
                    die("deadline passed waiting for " + a["path"])
                time.sleep(0.01)
            continue
        elif verb == "send":
            c.s.sendall(bytes.fromhex(a["hex"]))
            continue
        elif verb == "random":
            c.s.sendall(random.Random(7).randbytes(int(a["n"])))
            continue
        elif verb == "shut":
            c.s.shutdown(socket.SHUT_WR)
            continue
        elif verb == "eof":
            while c.read_frame():
                pass
            return
        elif verb != "read":
            die("unknown action " + action)
        if not c.read_frame():
            return

main()
PY

# wire NAME PORT ACTION...: schedwire, output in $T/NAME.wire; W = its lines.
wire() {
    local name=$1 port=$2
    shift 2
    timeout -k 2 20 python3 "$T/schedwire.py" "$port" "$@" >"$T/$name.wire" 2>"$T/$name.wire.err" 9>&- ||
        fail "schedwire $name ($*): $(cat "$T/$name.wire.err"); got: $(cat "$T/$name.wire")"
    mapfile -t W <"$T/$name.wire"
}

# expect_line LINE PREFIX [what]: LINE starts with PREFIX.
expect_line() {
    [[ $1 == "$2"* ]] || fail "${3:-line}: expected '$2...', got '$1'"
}

hex_task() { printf '%064x\n' "$1"; }
T0=$(hex_task 100)
T1=$(hex_task 101)
T2=$(hex_task 102)
T3=$(hex_task 103)

# 1. listening, health.
start_scheduler s1
P1=$SCHED_PORT
PID1=$SCHED_PID
LOG1=$SCHED_LOG
wire health "$P1" "health id=7"
expect_line "${W[0]}" "health id=7 version=0.1.0 pid=$PID1 " "health"
assert_contains "${W[0]}" " role=scheduler socket_path=127.0.0.1:$P1 open_connections=1" "health"

# 2. an unknown task, no seed anywhere: back to source.
wire lonely "$P1" "announce id=2 task=$T0 peer=lonely port=7100 want=1"
assert_eq "parents id=2 task=$T0 back_to_source=1 addresses= peers= seeds= reason=no other peer has the task and no seed is known" "${W[0]}" "answer to the first requester"
assert_contains "$LOG1" "parents task=$T0 peer=lonely parents= back_to_source=1"

# 3. one seed (starting the task), one complete peer, one new peer.
wire swarm "$P1" \
    "announce id=10 task=$T1 peer=seed-1 port=7001 seed=1 done=0 slots=1024" \
    "announce id=11 task=$T1 peer=done-1 port=7002 done=4 complete=1 slots=8" \
    "announce id=12 task=$T1 peer=new-1 port=7003 done=0 want=1 slots=8"
assert_eq "parents id=10 task=$T1 back_to_source=0 addresses= peers= seeds= reason=" "${W[0]}" "answer to the seed (no parents wanted)"
assert_eq "parents id=11 task=$T1 back_to_source=0 addresses= peers= seeds= reason=" "${W[1]}" "answer to the complete peer"
assert_eq "parents id=12 task=$T1 back_to_source=0 addresses=127.0.0.1:7002,127.0.0.1:7001 peers=done-1,seed-1 seeds=0,1 reason=" "${W[2]}" "answer to the new peer"
assert_contains "$LOG1" "announce task=$T1 peer=seed-1 address=127.0.0.1:7001 seed=1 pieces=0/4 complete=0"
assert_contains "$LOG1" "announce task=$T1 peer=done-1 address=127.0.0.1:7002 seed=0 pieces=4/4 complete=1"
assert_contains "$LOG1" "parents task=$T1 peer=new-1 parents=127.0.0.1:7002,127.0.0.1:7001 back_to_source=0"
# Who holds T1 (`ringfly stat`): done-1 complete; the seed and new-1 have no
# pieces yet. An unknown task: no peers; a short task id: INVALID.
wire taskpeers "$P1" "taskpeers id=14 task=$T1" "taskpeers id=15 task=$T3" "taskpeers id=16 task=0102"
assert_eq "taskpeers id=14 task=$T1 url=http://origin/x length=0 pieces=4 count=3 peers=done-1/127.0.0.1:7002/seed=0/complete=1/done=4" "${W[0]}" "TaskPeersResponse"
assert_eq "taskpeers id=15 task=$T3 url= length=0 pieces=0 count=0 peers=" "${W[1]}" "TaskPeersResponse, unknown task"
assert_eq "error id=16 code=13 message=TaskPeers: task_id must be 32 bytes, got 2" "${W[2]}" "TaskPeers, short task id"
# A task nobody holds now: the seed is known, it fetches it.
wire seeded "$P1" "announce id=13 task=$T2 peer=new-1 port=7003 want=1"
assert_eq "parents id=13 task=$T2 back_to_source=0 addresses=127.0.0.1:7001 peers=seed-1 seeds=1 reason=" "${W[0]}" "answer for a task only the seed can fetch"

# 4. PeerLeave: the complete peer is gone from the next answer (same
# connection: frames are taken in order).
wire leave "$P1" "leave id=20 task=$T1 peer=done-1" \
    "announce id=21 task=$T1 peer=new-1 port=7003 want=1"
assert_eq "parents id=21 task=$T1 back_to_source=0 addresses=127.0.0.1:7001 peers=seed-1 seeds=1 reason=" "${W[0]}" "answer after PeerLeave"
wait_log "$LOG1" "peer left task=$T1 peer=done-1" 5 "$PID1"

# 5. wrong requests: an Error, the connection kept; broken frames: an Error,
# then close.
wire invalid "$P1" "announce id=30 task=abcdef peer=x port=1 want=1" \
    "announce id=31 task=$T1 peer=bad%20id port=1" "hello id=32" "health id=33"
expect_line "${W[0]}" "error id=30 code=13 message=AnnouncePeer: task_id must be 32 bytes, got 3" "short task id"
expect_line "${W[1]}" "error id=31 code=13 message=AnnouncePeer: peer_id must be" "peer id with a space"
expect_line "${W[2]}" "error id=32 code=4 message=ringfly-scheduler does not take Hello messages" "Hello"
expect_line "${W[3]}" "health id=33 " "health on the same connection"
wire random "$P1" "random n=4096" "shut" "eof"
expect_line "${W[0]}" "error id=0 code=" "random bytes"
assert_eq eof "${W[1]:-}" "connection after random bytes"
wire huge "$P1" "send hex=ffffffff0f" "eof"
expect_line "${W[0]}" "error id=0 code=1 message=frame of type AnnouncePeer (15) is larger than its limit" "huge length"
assert_eq eof "${W[1]:-}" "connection after a huge length"
wire undecodable "$P1" "send hex=000000030f08ff" "eof"
expect_line "${W[0]}" "error id=0 code=2 message=AnnouncePeer message of 2 bytes does not decode" "undecodable AnnouncePeer"
wire health2 "$P1" "health id=34"
expect_line "${W[0]}" "health id=34 version=0.1.0 pid=$PID1 " "health after the broken frames"
alive "$PID1" || fail "the scheduler died"

# 6. preheat.
# wait_connections N: health on P1 reports N open connections (its own
# included; closing ones count), so every other one is finished: its
# registration forgotten.
wait_connections() {
    local want=$1 t0 i=0
    now_ms; t0=$NOW_MS
    while :; do
        wire conns "$P1" "health id=$((900 + i))"
        [[ ${W[0]} == *" open_connections=$want" ]] && return 0
        now_ms; ((NOW_MS - t0 < 5000)) || fail "open connections: want $want, got '${W[0]}'"
        i=$((i + 1))
        nap 0.02
    done
}
# start_seed NAME ADDRESS ACTION...: a seed's connection (schedwire in the
# background, output in $T/NAME.wire): registers as seeds do (all-zero task,
# seed, peer id = ADDRESS), then the actions. Returns once the registration
# is answered; sets SEED_PID.
start_seed() {
    local name=$1 address=$2 t0
    shift 2
    python3 "$T/schedwire.py" "$P1" \
        "announce id=70 task=$(hex_task 0) peer=$address ip=${address%:*} port=${address##*:} seed=1 slots=1024" \
        "$@" >"$T/$name.wire" 2>"$T/$name.wire.err" 9>&- &
    SEED_PID=$!
    track "$SEED_PID" "seed $name"
    now_ms; t0=$NOW_MS
    until grep -qs '^parents id=70 ' "$T/$name.wire"; do
        alive "$SEED_PID" || grep -qs '^parents id=70 ' "$T/$name.wire" ||
            fail "seed $name exited: $(cat "$T/$name.wire" "$T/$name.wire.err")"
        now_ms; ((NOW_MS - t0 < 5000)) || fail "seed $name: no answer to its registration"
        nap
    done
}
TP=$(hex_task 104)
TQ=$(hex_task 105)
DIGEST=sha256:$(printf '%064x' 48879)
# seed-1 (3.) is a seed host, but its connection is closed: nobody to ask.
wait_connections 1
wire noseed "$P1" "preheat id=60 task=$TP url=http://origin/pre.bin"
assert_eq "error id=60 code=12 message=no seed peer known" "${W[0]}" "preheat, no seed connection open"
assert_contains "$LOG1" "preheat task=$TP url=http://origin/pre.bin seeds="
# One seed: named in the answer, asked on its registration connection.
start_seed seedA 127.0.0.1:7201 read
wire pre1 "$P1" "preheat id=61 task=$TP url=http://origin/pre.bin?v=1 digest=$DIGEST"
assert_eq "preheated id=61 task=$TP seeds=127.0.0.1:7201" "${W[0]}" "PreheatResponse"
wait_exit "$SEED_PID" 5
assert_eq 0 "$WAIT_RC" "seed A: $(cat "$T/seedA.wire.err")"
mapfile -t S <"$T/seedA.wire"
assert_eq "preheat id=0 task=$TP digest=$DIGEST url=http://origin/pre.bin?v=1" "${S[1]:-}" "Preheat received by the seed"
assert_contains "$LOG1" "preheat task=$TP url=http://origin/pre.bin?v=1 seeds=127.0.0.1:7201"
# Its connection closed: no seed to ask any more.
wait_connections 1
wire gone "$P1" "preheat id=62 task=$TP url=http://origin/pre.bin"
assert_eq "error id=62 code=12 message=no seed peer known" "${W[0]}" "preheat after the seed's connection closed"
# Three seeds: the first two by sha256(address | task id) are asked, only them.
SEEDS=(127.0.0.1:7211 127.0.0.1:7212 127.0.0.1:7213)
FIRST_TWO=$(python3 -c '
import hashlib, sys
task = bytes.fromhex(sys.argv[1])
weight = lambda address: hashlib.sha256(address.encode() + b"|" + task).digest()
print(",".join(sorted(sys.argv[2:], key=weight, reverse=True)[:2]))' "$TQ" "${SEEDS[@]}")
SEED_PIDS=()
for i in 0 1 2; do
    start_seed "seed$i" "${SEEDS[i]}" "waitfile path=$T/preheated" "drain id=$((80 + i))"
    SEED_PIDS[i]=$SEED_PID
done
wire pre3 "$P1" "preheat id=63 task=$TQ url=http://origin/three"
assert_eq "preheated id=63 task=$TQ seeds=$FIRST_TWO" "${W[0]}" "PreheatResponse, three seeds"
assert_contains "$LOG1" "preheat task=$TQ url=http://origin/three seeds=$FIRST_TWO"
: >"$T/preheated"
for i in 0 1 2; do
    wait_exit "${SEED_PIDS[i]}" 5
    assert_eq 0 "$WAIT_RC" "seed ${SEEDS[i]}: $(cat "$T/seed$i.wire.err")"
    mapfile -t S <"$T/seed$i.wire"
    if [[ ,$FIRST_TWO, == *",${SEEDS[i]},"* ]]; then
        assert_eq "preheat id=0 task=$TQ digest= url=http://origin/three" "${S[1]:-}" "Preheat received by ${SEEDS[i]}"
        expect_line "${S[2]:-}" "health id=$((80 + i)) " "${SEEDS[i]} after its Preheat"
    else
        expect_line "${S[1]:-}" "health id=$((80 + i)) " "${SEEDS[i]} (not asked): no Preheat"
    fi
done
wait_connections 1
wire gone3 "$P1" "preheat id=64 task=$TQ url=http://origin/three"
assert_eq "error id=64 code=12 message=no seed peer known" "${W[0]}" "preheat after the three seeds left"
# Wrong requests: INVALID, the connection kept.
wire preinvalid "$P1" "preheat id=65 task=0102030405 url=http://origin/x" \
    "preheat id=66 task=$TP url=" "preheat id=67 task=$TP url=http://origin/x digest=md5:00" \
    "health id=68"
assert_eq "error id=65 code=13 message=Preheat: task_id must be 32 bytes, got 5" "${W[0]}" "5-byte task id"
assert_eq "error id=66 code=13 message=Preheat: url is empty" "${W[1]}" "empty url"
expect_line "${W[2]}" "error id=67 code=13 message=Preheat: digest must be " "bad digest"
expect_line "${W[3]}" "health id=68 " "health after the wrong Preheats"

# 7. the same address again: exit 1 naming it. Config mistakes: exit 2.
assert_exit 1 "$RINGFLY_SCHEDULER" --listen "127.0.0.1:$P1"
assert_contains "$T/last.err" "ringfly-scheduler: listen 127.0.0.1:$P1: Address already in use"
printf 'listen: 127.0.0.1:0\nmax_peer: 3\n' >"$T/bad.yaml"
assert_exit 2 "$RINGFLY_SCHEDULER" --config "$T/bad.yaml"
assert_contains "$T/last.err" "ringfly-scheduler: $T/bad.yaml:2: unknown key 'max_peer'"
assert_exit 2 "$RINGFLY_SCHEDULER" --listen 127.0.0.1:0 --peer-ttl soon
assert_contains "$T/last.err" "ringfly-scheduler: --peer-ttl: peer_ttl: expects a duration"
assert_exit 2 "$RINGFLY_SCHEDULER" --listen nowhere
assert_contains "$T/last.err" "ringfly-scheduler: listen: 'nowhere': expected HOST:PORT"
assert_exit 2 "$RINGFLY_SCHEDULER" --max-tasks 100
assert_contains "$T/last.err" "ringfly-scheduler: no address to listen on"

# 8. SIGTERM with a client connected.
python3 "$T/schedwire.py" "$P1" "health id=40" "eof" >"$T/held.wire" 2>&1 9>&- &
HELD=$!
track "$HELD" schedwire
now_ms; t0=$NOW_MS
until grep -q '^health id=40 ' "$T/held.wire"; do
    alive "$HELD" || fail "the held client exited: $(cat "$T/held.wire")"
    now_ms; ((NOW_MS - t0 < 5000)) || fail "no health answer for the held client"
    nap
done
kill -TERM "$PID1"
wait_exit "$PID1" 5
[[ $WAIT_RC != timeout ]] || fail "SIGTERM: still running after 5 s"
assert_eq 0 "$WAIT_RC" "SIGTERM: exit status"
wait_exit "$HELD" 5
assert_eq 0 "$WAIT_RC" "held client exit status"
assert_eq eof "$(tail -n 1 "$T/held.wire")" "the held client saw the connection close"
assert_contains "$LOG1" "shutting down signal=SIGTERM connections=1"
assert_contains "$LOG1" "stopped cleanly"

# 9. expiry with --peer-ttl 1s (over the config file's 1h: flags win).
printf 'peer_ttl: 1h\nmax_tasks: 10\n' >"$T/s2.yaml"
start_scheduler s2 --config "$T/s2.yaml" --peer-ttl 1s
P2=$SCHED_PORT
LOG2=$SCHED_LOG
now_ms; t0=$NOW_MS
wire ttl "$P2" "announce id=50 task=$T3 peer=old-1 port=7101 done=2 want=1" \
    "announce id=51 task=$T3 peer=old-2 port=7102 want=1"
assert_eq "parents id=51 task=$T3 back_to_source=0 addresses=127.0.0.1:7101 peers=old-1 seeds=0 reason=" "${W[1]}" "answer before expiry"
wait_log "$LOG2" "peer expired task=$T3 peer=old-1" 5 "$SCHED_PID"
now_ms
((NOW_MS - t0 >= 1000)) || fail "old-1 expired after $((NOW_MS - t0)) ms, before the 1 s TTL"
((NOW_MS - t0 <= 3500)) || fail "old-1 expired after $((NOW_MS - t0)) ms (TTL 1 s, checked every second)"
wait_log "$LOG2" "peer expired task=$T3 peer=old-2" 5 "$SCHED_PID"
wire after "$P2" "announce id=52 task=$T3 peer=new-2 port=7103 want=1"
assert_eq "parents id=52 task=$T3 back_to_source=1 addresses= peers= seeds= reason=no other peer has the task and no seed is known" "${W[0]}" "answer after expiry"
kill_and_reap "$SCHED_PID" TERM
assert_eq 0 "$WAIT_RC" "SIGTERM of s2"

for f in "$LOG1" "$LOG2"; do
    if grep -qE 'ERROR: AddressSanitizer|runtime error:|LeakSanitizer' "$f"; then
        fail "sanitizer report in $f: $(grep -m 1 -A 12 -E 'ERROR: AddressSanitizer|runtime error:|LeakSanitizer' "$f")"
    fi
done
pass
