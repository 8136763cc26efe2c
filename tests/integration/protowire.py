"""Hand-written protobuf and ringfly frame encoding for the tests' raw clients
(peerwire in lib-p2p.sh, schedwire in scheduler_basic.sh): no protobuf module
needed. A frame is u32 big-endian length (of type + message) | u8 type | message."""
import struct


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    """A varint field; 0 is the default and is left out, as protobuf does."""
    return varint(num << 3) + varint(v) if v else b""


def field_bytes(num, v):
    """A length-delimited field (bytes or str), always written."""
    if isinstance(v, str):
        v = v.encode()
    return varint((num << 3) | 2) + varint(len(v)) + v


def field_text(num, v):
    """Same, left out when empty (the proto3 default)."""
    return field_bytes(num, v) if v else b""


def frame(ftype, msg):
    return struct.pack(">IB", 1 + len(msg), ftype) + msg


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def decode(msg):
    """field number -> list of values (ints or bytes); packed varints stay bytes."""
    fields = {}
    i = 0
    while i < len(msg):
        key, i = read_varint(msg, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(msg, i)
        elif wt == 2:
            n, i = read_varint(msg, i)
            v = bytes(msg[i:i + n])
            i += n
        elif wt == 1:
            v = msg[i:i + 8]
            i += 8
        elif wt == 5:
            v = msg[i:i + 4]
            i += 4
        else:
            raise ValueError("wire type %d" % wt)
        fields.setdefault(num, []).append(v)
    return fields


def first(f, num, default=0):
    return f.get(num, [default])[0]
