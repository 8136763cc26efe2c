#!/usr/bin/env bash
# shellcheck disable=SC2119 # lib helpers take optional arguments
# ringfly get from a real nginx on loopback, file sizes at the edges (64 KiB
# pieces): 0 B, 1 B, one piece - 1, one piece + 1, 3.5 pieces, and a 300 MiB
# file with the default piece length; each time the output has the bytes of
# the source (sha256), the summary line names the file, the byte count and
# "from origin", the daemon logs `download start` with the requester's pid and
# uid and `download done ... source=origin`, and nginx sent each file once.
# Also `-O -` (content on stdout, nothing else there), and a multi-piece file
# from a second nginx without range support (max_ranges 0: one sequential GET).
# The daemon runs with download.parallel 2 (the 300 MiB get logs parallel=2);
# the small gets pass --parallel 3, which wins (parallel=3).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"
PL=65536
RF_DEADLINE=120 # read by rf_get (lib-http.sh)
export RF_DEADLINE

make_file "$WWW/zero" 0
make_file "$WWW/one" 1
make_file "$WWW/pl-1" $((PL - 1))
make_file "$WWW/devnull" $((PL * 3 + 11))
make_file "$WWW/pl+1" $((PL + 1))
make_file "$WWW/3.5p" $((PL * 7 / 2))
make_file "$WWW/stdout" $((PL * 5 + 123))
make_file "$WWW/norange" $((PL * 16 + 7))
log "generating the 300 MiB file"
make_file "$WWW/big" 300M

start_nginx
MAIN_LOG=$NGINX_ACCESS_LOG
MAIN_URL=$NGINX_URL
# download.parallel from the config; a get's --parallel wins.
printf 'download:\n  parallel: 2\n' >"$T/ringflyd.yaml"
start_ringflyd --config "$T/ringflyd.yaml"

# get_one NAME [args]: gets /NAME into $OUT/NAME and checks it.
get_one() {
    local name=$1 url="$MAIN_URL/$1" id
    shift
    id=$(task_id_of "$url")
    expect_get_ok "get-$name" "$url" "$OUT/$name" "$WWW/$name" "$@"
    assert_contains "$T/get-$name.err" "from origin" "summary line of the get of $name"
    assert_contains "$T/get-$name.err" "task $id" "summary line of the get of $name (task id)"
    assert_no_temp "$OUT/$name"
    log "$name: $(size_of "$WWW/$name") bytes ok in $GET_MS ms: $(tail -n 1 "$T/get-$name.err")"
}

for name in zero one pl-1 pl+1 3.5p; do
    get_one "$name" --parallel 3 --piece-length $PL
done
id=$(task_id_of "$MAIN_URL/3.5p")
grep -F "fetching from the origin task=$id" "$DAEMON_LOG" | grep -qF "ranges=yes parallel=3" ||
    fail "--parallel 3 did not win over download.parallel: $(grep -F "fetching from the origin task=$id" "$DAEMON_LOG")"

# The requester's pid and uid in the daemon log: a get started directly (no
# timeout wrapper) so that its pid is known.
url="$MAIN_URL/big"
"$RINGFLY" --socket "$SOCK" get "$url" -O "$OUT/big" --no-progress >"$T/get-big.out" 2>"$T/get-big.err" 9>&- &
gpid=$!
track "$gpid" "ringfly get"
wait_exit "$gpid" 120
[[ $WAIT_RC == 0 ]] || fail "get $url (300 MiB) exited $WAIT_RC; stderr: $(cat "$T/get-big.err")"
assert_eq "$(sha "$WWW/big")" "$(sha "$OUT/big")" "sha256 of the 300 MiB output"
assert_contains "$T/get-big.err" "ringfly: $OUT/big: 314572800 bytes in" "summary line of the 300 MiB get"
assert_contains "$T/get-big.err" "from origin" "summary line of the 300 MiB get"
log "big: $(tail -n 1 "$T/get-big.err")"
id=$(task_id_of "$url")
grep -F "download start" "$DAEMON_LOG" | grep -F "task=$id" | grep -F "url=$url" | grep -F "pid=$gpid" |
    grep -qF "uid=$(id -u)" || fail "no 'download start task=$id url=$url pid=$gpid uid=$(id -u)' in the daemon log"
grep -F "download done" "$DAEMON_LOG" | grep -F "$id" | grep -F "source=origin" | grep -qF "origin_bytes=314572800" ||
    fail "no 'download done ... source=origin ... origin_bytes=314572800' for task $id in the daemon log"
grep -F "fetching from the origin task=$id" "$DAEMON_LOG" | grep -qF "ranges=yes parallel=2" ||
    fail "the 300 MiB get did not use download.parallel 2: $(grep -F "fetching from the origin task=$id" "$DAEMON_LOG")"

# -O -: the content on stdout, the summary on stderr.
url="$MAIN_URL/stdout"
rf_get get-stdout "$url" - --piece-length $PL
[[ $GET_RC == 0 ]] || fail "get $url -O - exited $GET_RC; stderr: $(cat "$T/get-stdout.err")"
assert_eq "$(sha "$WWW/stdout")" "$(sha "$T/get-stdout.out")" "sha256 of the stdout of get -O -"
assert_contains "$T/get-stdout.err" "$(size_of "$WWW/stdout") bytes in" "summary line of get -O -"
assert_contains "$T/get-stdout.err" "from origin" "summary line of get -O -"
[[ ! -e ./- ]] || fail "get -O - created a file named '-' in $PWD"
[[ ! -e $OUT/- ]] || fail "get -O - created a file named '-'"

# Outputs that are not regular files are never replaced (a rename over
# /dev/null once turned it into a regular file): -O /dev/null fills the cache
# only, a FIFO gets the bytes written into it, a directory is refused.
null_before=$(stat -c '%F %t:%T' /dev/null)
url="$MAIN_URL/devnull"
rf_get get-devnull "$url" /dev/null --piece-length $PL
[[ $GET_RC == 0 ]] || fail "get $url -O /dev/null exited $GET_RC; stderr: $(cat "$T/get-devnull.err")"
assert_eq "$null_before" "$(stat -c '%F %t:%T' /dev/null)" "/dev/null after get -O /dev/null"
assert_contains "$T/get-devnull.err" "ringfly: /dev/null: $(size_of "$WWW/devnull") bytes in" "summary line of get -O /dev/null"
find /dev -maxdepth 1 -name '.null.ringfly-*' | grep -q . && fail "get -O /dev/null left a temp file in /dev"
rf stat "$url"
assert_eq complete "$(stat_field state)" "state of the task fetched with -O /dev/null"
mkfifo "$T/fifo"
sha256sum <"$T/fifo" >"$T/fifo.sha" 9>&- &
reader=$!
track "$reader" fifo-reader
rf_get get-fifo "$url" "$T/fifo"
[[ $GET_RC == 0 ]] || fail "get $url -O FIFO exited $GET_RC; stderr: $(cat "$T/get-fifo.err")"
wait_exit "$reader" 10
assert_eq "$(sha "$WWW/devnull")" "$(cut -d' ' -f1 "$T/fifo.sha")" "sha256 of what the FIFO's reader got"
[[ -p $T/fifo ]] || fail "get -O FIFO replaced the FIFO: $(stat -c %F "$T/fifo")"
rf_get get-dir "$url" "$OUT"
assert_eq 1 "$GET_RC" "exit code of get -O DIRECTORY"
assert_contains "$T/get-dir.err" "is a directory" "stderr of get -O DIRECTORY"

# nginx sent every file exactly once (HEAD and ranges: no byte twice).
nginx_wait_idle
for name in zero one pl-1 pl+1 3.5p stdout big devnull; do
    sent=$(origin_bytes "$MAIN_LOG" "/$name")
    assert_eq "$(size_of "$WWW/$name")" "$sent" "body bytes nginx sent for /$name"
done

# A second nginx without range support (max_ranges 0: no Accept-Ranges, a
# range request answered 200 with the whole file): one sequential GET.
start_nginx --no-ranges
curl -sI "$NGINX_URL/norange" | grep -qi '^accept-ranges' && fail "the max_ranges 0 nginx announces Accept-Ranges"
: >"$NGINX_ACCESS_LOG"
url="$NGINX_URL/norange"
rf_get get-norange "$url" "$OUT/norange" --piece-length $PL
[[ $GET_RC == 0 ]] || fail "get $url (no ranges) exited $GET_RC; stderr: $(cat "$T/get-norange.err")"
assert_eq "$(sha "$WWW/norange")" "$(sha "$OUT/norange")" "sha256 of the output from the range-less origin"
assert_contains "$T/get-norange.err" "from origin" "summary line of the range-less get"
nginx_wait_idle
sent=$(origin_bytes "$NGINX_ACCESS_LOG" /norange)
assert_eq "$(size_of "$WWW/norange")" "$sent" "body bytes the range-less nginx sent (one GET)"
gets=$(grep -c '"GET /norange' "$NGINX_ACCESS_LOG")
assert_eq 1 "$gets" "GET requests to the range-less nginx"
log "norange: $(tail -n 1 "$T/get-norange.err")"

must_health "$SOCK" 5 "$DAEMON_PID"
pass
