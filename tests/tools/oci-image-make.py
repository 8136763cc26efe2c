#!/usr/bin/env python3
"""An OCI image layout for the registry-mirror tests, benchmark and demo.

Usage: oci-image-make.py DIR TAG NLAYERS LAYER_BYTES

Writes into DIR (adds TAG to an image layout already there): NLAYERS layers, each a
gzip'd tar of one file of LAYER_BYTES random bytes (stored deflate blocks: valid gzip,
made at disk speed, containerd unpacks it), a config with rootfs.diff_ids, an OCI
manifest, index.json naming it TAG. Prints "layer DIGEST SIZE DIFF_ID" per layer, then
"config DIGEST SIZE" and "manifest DIGEST SIZE". hashlib and zlib drop the GIL on big
buffers, so a thread per layer uses every CPU.
"""
import hashlib, json, os, platform, sys, tarfile, time, zlib
from concurrent.futures import ThreadPoolExecutor

CHUNK = 1 << 20
SHA = os.path.join("blobs", "sha256")


def put_blob(d, data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(d, SHA, h), "wb") as f:
        f.write(data)
    return "sha256:" + h, len(data)


def make_layer(d, tag, i, nbytes):
    # A tar of one file of random bytes, gzip'd with stored deflate blocks
    # (level 0): valid gzip, incompressible data anyway, no CPU spent.
    ti = tarfile.TarInfo("rfit-%s-layer%d.bin" % (tag, i))
    ti.size, ti.mode, ti.mtime = nbytes, 0o644, int(time.time())
    ti.uname = ti.gname = "root"
    tail = b"\0" * ((512 - nbytes % 512) % 512 + 1024)
    tar_sha, gz_sha = hashlib.sha256(), hashlib.sha256()
    comp = zlib.compressobj(0, zlib.DEFLATED, 31)
    tmp = os.path.join(d, SHA, ".rfit-layer%d-%d.tmp" % (i, os.getpid()))
    size = 0
    with open(tmp, "wb") as f:
        def put(raw, last=False):
            nonlocal size
            tar_sha.update(raw)
            z = comp.compress(raw)
            if last:
                z += comp.flush()
            if z:
                gz_sha.update(z)
                f.write(z)
                size += len(z)
        put(ti.tobuf(format=tarfile.USTAR_FORMAT))
        left = nbytes
        while left:
            n = min(CHUNK, left)
            put(os.urandom(n))
            left -= n
        put(tail, last=True)
    h = gz_sha.hexdigest()
    os.rename(tmp, os.path.join(d, SHA, h))
    return "sha256:" + h, size, "sha256:" + tar_sha.hexdigest()


def main():
    d, tag, nlayers, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(os.path.join(d, SHA), exist_ok=True)
    workers = max(1, min(nlayers, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as ex:
        layers = list(ex.map(lambda i: make_layer(d, tag, i, nbytes), range(nlayers)))
    m = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}.get(m, m)
    config = {
        "architecture": arch, "os": "linux", "config": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rootfs": {"type": "layers", "diff_ids": [l[2] for l in layers]},
    }
    cd, cs = put_blob(d, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l[0], "size": l[1]}
                   for l in layers],
    }
    md, ms = put_blob(d, json.dumps(manifest, sort_keys=True).encode())
    ipath = os.path.join(d, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(ipath):
        with open(ipath) as f:
            index = json.load(f)
    ref = "org.opencontainers.image.ref.name"
    index["manifests"] = [x for x in index.get("manifests", []) if x.get("annotations", {}).get(ref) != tag]
    index["manifests"].append({"mediaType": manifest["mediaType"], "digest": md, "size": ms,
                               "annotations": {ref: tag}})
    with open(ipath + ".tmp", "w") as f:
        json.dump(index, f)
    os.rename(ipath + ".tmp", ipath)
    with open(os.path.join(d, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    for l in layers:
        print("layer %s %d %s" % l)
    print("config %s %d" % (cd, cs))
    print("manifest %s %d" % (md, ms))


main()
