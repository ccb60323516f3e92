#!/usr/bin/python3
"""Seed inputs for tests/fuzz/fuzz-store.c: each makes a device volatile
and then runs writes (some with FUA), zeroes, trims, flushes (which keep
a raw cache's pages as spares) and power cuts of every keep on it, over plain stores, clones and compressed ones,
with and without a cap, so the fuzzer starts from the volatile layer's
paths instead of having to find the byte sequences that reach them.

Usage: make-seeds.py DIR (writes DIR/vol-NN, the same files each time).
"""

import os
import random
import struct
import sys


def header(shift, codec, cap):
    """Chunk shift, sizes (a: up to 128 KiB, b: up to 64 KiB), codec, cap."""
    size_kind = {"none": 1, "zstd": 1 | 8, "lz4": 1 | 12}[codec]
    return bytes([shift, size_kind]) + (96 << 10).to_bytes(3, "big") + \
        (40 << 10).to_bytes(2, "big") + bytes([cap])


def op(kind, handle, aux):
    """The operation byte: type, handle index, two bits."""
    return bytes([kind | handle << 3 | aux << 6])


def rng_range(r):
    """A range: offset, length, mode (alignment and length kind)."""
    return r.randrange(1 << 24).to_bytes(3, "big") + \
        r.randrange(1 << 24).to_bytes(3, "big") + bytes([r.randrange(16)])


def write(r, handle, fua):
    """A write of random-ish data (kind, seed), maybe with FUA."""
    return op(r.choice((0, 1, 2)), handle, 1 if fua else 0) + rng_range(r) + \
        bytes([r.choice((1, 2, 3, 0))]) + struct.pack(">I", r.randrange(1 << 32))


def layer(sub, handle=0, mask=None):
    """A snapshot-family operation: sub picks (4 volatile, 5 flush, 6 cut)."""
    b = op(7, handle, 2) + bytes([sub])
    if sub % 8 == 6:
        b += struct.pack(">Q", mask)
    return b


def seed(r, codec, cap, clone):
    """One seed: attach, then rounds of requests, flushes and cuts."""
    b = header(r.choice((0, 1, 2)), codec, cap)
    h = 0
    if clone:
        b += op(7, 1, 1)                  # freeze handle 1, clone it
        h = 2
    b += layer(4, h)
    for _ in range(r.randrange(3, 7)):
        for _ in range(r.randrange(1, 6)):
            t = r.random()
            if t < 0.6:
                b += write(r, h, r.random() < 0.3)
            elif t < 0.8:
                b += op(3, h, r.randrange(2)) + rng_range(r)
            else:
                b += op(4, h, r.randrange(2)) + rng_range(r)
        if r.random() < 0.6:
            b += layer(5, h)
        else:
            keep = r.randrange(3)
            unit = 8 if r.random() < 0.5 else 0
            b += layer(6 | unit | keep << 4, h, r.randrange(1 << 64))
        b += op(5, h, 0) + rng_range(r)   # a read
    if clone and r.random() < 0.5:
        b += layer(3, 1)                  # delete the clone's source
    return b


def main():
    """Write the seeds into the directory given."""
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    r = random.Random(17)
    n = 0
    for codec in ("none", "zstd", "lz4"):
        for cap in (0x80, 5, 12, 40, 0x7f):
            for clone in (False, True):
                with open(os.path.join(out, "vol-%02d" % n), "wb") as f:
                    f.write(seed(r, codec, cap, clone))
                n += 1


if __name__ == "__main__":
    main()
