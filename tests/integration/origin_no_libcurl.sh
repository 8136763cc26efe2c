#!/usr/bin/env bash
# libcurl is loaded by the first request to an origin, never linked
# (net/curl-load.h): a restart after kill -9 does not pay its ~30 libraries.
#   1. ringflyd, ringfly and ringfly-scheduler have no libcurl (nor GnuTLS,
#      Kerberos, LDAP) among their NEEDED libraries;
#   2. a daemon whose libcurl cannot be loaded (RINGFLY_LIBCURL=a missing file)
#      starts and is healthy; a get from an origin fails with the library's
#      path and dlopen's reason (exit 1: the node's fault, not the origin's),
#      twice, leaving nothing at the output; the daemon logs `libcurl
#      unavailable` once, at error level, and stays healthy;
#   3. a daemon with the library fetches from the origin (nginx) as before.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/lib-http.sh
. "$(dirname "$0")/lib-http.sh"

require_cmd readelf
SOCK="$T/ringflyd.sock"
OUT="$T/out"
mkdir -p "$OUT"

for bin in "$RINGFLYD" "$RINGFLY" "${RINGFLY_SCHEDULER:?}"; do
    readelf -d "$bin" >"$T/needed" || fail "readelf -d $bin failed"
    grep -q NEEDED "$T/needed" || fail "readelf -d $bin lists no NEEDED library: $(cat "$T/needed")"
    assert_not_contains "$T/needed" "libcurl" "NEEDED libraries of $bin"
    assert_not_contains "$T/needed" "libgnutls" "NEEDED libraries of $bin"
    assert_not_contains "$T/needed" "libldap" "NEEDED libraries of $bin"
done
log "no libcurl linked into ringflyd, ringfly, ringfly-scheduler"

make_file "$WWW/data" $((3 << 20))
start_nginx

missing="$T/no-such-dir/libcurl.so.4"
RINGFLY_LIBCURL=$missing start_ringflyd
url="$NGINX_URL/data"
for i in 1 2; do
    expect_get_fail "nolib$i" "$url" "$OUT/nolib$i" 1 "cannot start a request: cannot load $missing: $missing: cannot open shared object file: No such file or directory"
done
must_health "$SOCK" 5 "$DAEMON_PID"
n=$(grep -c 'libcurl unavailable: no request to an origin can be made' "$DAEMON_LOG")
assert_eq 1 "$n" "'libcurl unavailable' lines in the daemon log"
assert_contains "$DAEMON_LOG" "error origin: libcurl unavailable: no request to an origin can be made library=$missing" "daemon log"
kill_and_reap "$DAEMON_PID"
log "without the library: the daemon runs, gets fail naming $missing"

start_ringflyd
expect_get_ok withlib "$url" "$OUT/withlib" "$WWW/data"
log "with the library: the get completes"
pass
