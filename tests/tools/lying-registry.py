#!/usr/bin/env python3
"""An upstream registry that lies: a minimal OCI-distribution stand-in (stdlib only).

    lying-registry.py --port-file F --blob DIGEST=FILE [--blob DIGEST=FILE ...]

Serves, on 127.0.0.1 (port 0: the kernel picks one, written to F once listening):

  GET/HEAD /v2/                      200 "{}", Docker-Distribution-Api-Version
  GET/HEAD /v2/<name>/blobs/<DIGEST> the bytes of FILE, whatever their real digest
                                     (that is the lie), with Content-Length,
                                     Docker-Content-Digest: DIGEST, Accept-Ranges,
                                     and one "Range: bytes=A-B" (or A-, or -N) gives
                                     206 with Content-Range (416 if unsatisfiable;
                                     other Range forms are ignored: 200)
  anything else                      404 with an OCI error body (BLOB_UNKNOWN,
                                     MANIFEST_UNKNOWN, NAME_UNKNOWN)

The query string is ignored (containerd may add ?ns=HOST). FILE is read when the
request comes, so a test may rewrite it between requests. Every request is logged
to stderr as one line, "METHOD PATH STATUS BYTES", BYTES being the body bytes
sent, and flushed: a test can count requests and bytes as with a real registry.
HTTP/1.1 with keep-alive, one thread per connection.
"""

import argparse
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOB_RE = re.compile(r"^/v2/(.+)/blobs/([A-Za-z0-9_+.-]+:[A-Za-z0-9=_-]+)$")
MANIFEST_RE = re.compile(r"^/v2/(.+)/manifests/([^/]+)$")
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 20

_log_lock = threading.Lock()


def log(line):
    with _log_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lying-registry/1"
    blobs = {}

    def log_message(self, fmt, *args):  # the one line per request is ours
        pass

    def _path(self):
        path = self.path.split("?", 1)[0]
        return path.replace("%3A", ":").replace("%3a", ":")

    def _reply(self, status, body=b"", headers=(), sent=None):
        self.send_response(status)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for k, v in headers:
            self.send_header(k, v)
        if not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        n = 0
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            n = len(body)
        log("%s %s %d %d" % (self.command, self.path, status, n if sent is None else sent))

    def _error(self, status, code, message):
        body = ('{"errors":[{"code":"%s","message":"%s"}]}\n' % (code, message)).encode()
        self._reply(status, body, [("Content-Type", "application/json")])

    def _serve(self):
        path = self._path()
        if path in ("/v2", "/v2/"):
            self._reply(200, b"{}", [("Content-Type", "application/json")])
            return
        m = BLOB_RE.match(path)
        if m and m.group(2) in self.blobs:
            self._blob(m.group(2), self.blobs[m.group(2)])
            return
        if m:
            self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        elif MANIFEST_RE.match(path):
            self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        else:
            self._error(404, "NAME_UNKNOWN", "repository name not known to registry")

    def _blob(self, digest, fname):
        try:
            f = open(fname, "rb")
        except OSError as e:
            self._error(500, "UNKNOWN", "cannot open %s: %s" % (fname, e.strerror))
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            start, end, status = 0, size - 1, 200
            # One range "bytes=A-B", "bytes=A-" or "bytes=-N"; anything else
            # (several ranges, other units) is ignored: the whole blob, 200.
            m = RANGE_RE.match((self.headers.get("Range") or "").strip())
            if m and (m.group(1) or m.group(2)):
                a, b = m.group(1), m.group(2)
                if a != "":
                    start = int(a)
                    end = min(int(b), size - 1) if b != "" else size - 1
                else:  # suffix range: the last B bytes
                    start = max(size - int(b), 0)
                if start >= size or start > end or (a == "" and int(b) == 0):
                    self._reply(416, b"", [("Content-Range", "bytes */%d" % size)])
                    return
                status = 206
            length = end - start + 1 if size else 0
            headers = [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(length)),
                ("Docker-Content-Digest", digest),
                ("Accept-Ranges", "bytes"),
                ("Etag", '"%s"' % digest),
            ]
            if status == 206:
                headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, size)))
            self.send_response(status)
            self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            sent = 0
            try:
                if self.command == "GET" and length:
                    f.seek(start)
                    left = length
                    while left > 0:
                        buf = f.read(min(CHUNK, left))
                        if not buf:  # the file shrank under us: cut the connection
                            self.close_connection = True
                            break
                        self.wfile.write(buf)
                        sent += len(buf)
                        left -= len(buf)
            finally:
                log("%s %s %d %d" % (self.command, self.path, status, sent))

    def do_GET(self):
        self._serve()

    def do_HEAD(self):
        self._serve()

    def _not_allowed(self):
        self._error(405, "UNSUPPORTED", "the operation is unsupported")

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        e = sys.exc_info()[1]
        if isinstance(e, (BrokenPipeError, ConnectionResetError)):
            return
        log("error serving %s: %r" % (client_address[0], e))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port-file", required=True, help="write the port here once listening")
    ap.add_argument("--blob", action="append", default=[], metavar="DIGEST=FILE",
                    help="serve FILE's bytes as blob DIGEST (repeatable)")
    ap.add_argument("--port", type=int, default=0, help="port (default 0: any free one)")
    args = ap.parse_args()
    blobs = {}
    for spec in args.blob:
        digest, sep, fname = spec.partition("=")
        if not sep or ":" not in digest or not fname:
            ap.error("--blob wants DIGEST=FILE (DIGEST like sha256:HEX), got %r" % spec)
        if not os.path.isfile(fname):
            ap.error("--blob %s: no such file %s" % (digest, fname))
        blobs[digest] = os.path.abspath(fname)
    Handler.blobs = blobs
    srv = Server(("127.0.0.1", args.port), Handler)
    port = srv.server_address[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, args.port_file)  # the file appears complete or not at all
    log("lying-registry listening on 127.0.0.1:%d, %d blob(s)" % (port, len(blobs)))
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
