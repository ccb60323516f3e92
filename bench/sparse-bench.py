#!/usr/bin/python3
# memblock benchmarks: sparse work and memory, memblock beside nbdkit
# memory (sparse allocator).
#
# Measures:
#   rss      RSS amplification: server RSS growth / bytes written after
#            N random 4 KiB writes into a 4 GiB device, then the RSS
#            growth caused by reading N unwritten 4 KiB blocks.  The
#            baseline is taken after 256 reads have warmed nbdkit's threads.
#   extents  Extent precision: after N scattered 4 KiB writes into a
#            1 TiB device, the bytes of data extents `nbdinfo --map`
#            reports, divided by the bytes written.
#   walk     On a 1 TiB device holding N scattered 64 KiB writes: time of
#            a block-status walk of the whole device and of a
#            write-zeroes of the whole device, requests up to 2 GiB.
# Servers run pinned to one CPU and this client to the other.

import argparse
import os
import random
import subprocess
import sys
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

LABELS = ("memblock", "memory")
MAX_REQ = 2 * bl.GiB            # largest block-status / zero request


def connect(server):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(server.uri)
    return h


def block(rng, size):
    """size bytes of random data; never all zero."""
    return rng.randbytes(size - 1) + b"\x01"


def aio_run(h, ops, depth=16):
    """Issue the callables in ops (each starts one aio command, returns its
    cookie) with up to depth in flight, and wait for all of them.
    """
    pending = []
    for op in ops:
        while len(pending) >= depth:
            h.poll(-1)
            pending = [c for c in pending if not h.aio_command_completed(c)]
        pending.append(op())
    while pending:
        h.poll(-1)
        pending = [c for c in pending if not h.aio_command_completed(c)]


def write_blocks(h, offsets, data):
    """Write data (bytes) at each offset, 16 requests in flight."""
    buf = nbd.Buffer.from_bytearray(bytearray(data))
    aio_run(h, (lambda o=o: h.aio_pwrite(buf, o) for o in offsets))


def read_blocks(h, offsets, size):
    """Read size bytes at each offset (data discarded)."""
    bufs = [nbd.Buffer(size) for _ in range(16)]
    aio_run(h, (lambda i=i, o=o: h.aio_pread(bufs[i % 16], o)
                for i, o in enumerate(offsets)))


def walk(h, size):
    """Block-status walk of [0, size); returns (requests, extents, data bytes)."""
    st = {"ext": 0, "data": 0, "len": 0}

    def cb(metacontext, offset, entries, err):
        if metacontext != nbd.CONTEXT_BASE_ALLOCATION:
            return 0
        for i in range(0, len(entries), 2):
            st["ext"] += 1
            st["len"] += entries[i]
            if not entries[i + 1] & nbd.STATE_HOLE:
                st["data"] += entries[i]
        return 0

    off = reqs = 0
    while off < size:
        st["len"] = 0
        h.block_status(min(MAX_REQ, size - off), off, cb)
        reqs += 1
        if st["len"] == 0:
            raise RuntimeError("block status made no progress at %d" % off)
        off += st["len"]
    return reqs, st["ext"], st["data"]


def zero_all(h, size):
    reqs = 0
    for off in range(0, size, MAX_REQ):
        h.zero(min(MAX_REQ, size - off), off)
        reqs += 1
    return reqs


def scattered(rng, size, n, align):
    """n distinct random offsets, multiples of align, in [0, size)."""
    return sorted(x * align for x in rng.sample(range(size // align), n))


def bench_rss(servers, label, nwrites, seed, srv_cpu):
    size = 4 * bl.GiB
    rng = random.Random(seed)
    s = servers.start(label, bl.server_args(label, size), cpu=srv_cpu)
    h = connect(s)
    blocks = rng.sample(range(size // 4096), 2 * nwrites + 256)
    written = [b * 4096 for b in blocks[:nwrites]]
    unwritten = [b * 4096 for b in blocks[nwrites:2 * nwrites]]
    # Warm nbdkit's worker threads (stacks, malloc arenas) with reads of
    # other unwritten blocks, so the baseline holds its fixed costs.
    read_blocks(h, [b * 4096 for b in blocks[2 * nwrites:]], 4096)
    rss0 = s.rss()
    write_blocks(h, written, block(rng, 4096))
    h.flush()
    rss1 = s.rss()
    read_blocks(h, unwritten, 4096)
    rss2 = s.rss()
    h.shutdown()
    servers.stop(s)
    r = {"writes": nwrites, "bytes": nwrites * 4096, "rss_before": rss0,
         "rss_written": rss1, "rss_read": rss2,
         "growth": rss1 - rss0, "read_growth": rss2 - rss1,
         "amplification": (rss1 - rss0) / (nwrites * 4096)}
    bl.log("rss %-8s growth %.1f MiB for %.1f MiB written: %.3f; "
           "reading unwritten grew %d KiB" %
           (label, r["growth"] / bl.MiB, r["bytes"] / bl.MiB,
            r["amplification"], r["read_growth"] // bl.KiB))
    return r


def nbdinfo_map(uri):
    """Sum of data (non-hole) extents reported by `nbdinfo --map`."""
    out = subprocess.run(["nbdinfo", "--map", uri], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    data = lines = 0
    for line in out.splitlines():
        f = line.split()
        if len(f) < 3:
            continue
        lines += 1
        if not int(f[2]) & 1:   # bit 0: hole
            data += int(f[1])
    return data, lines


def bench_extents(servers, label, nwrites, seed, srv_cpu):
    size = bl.TiB
    rng = random.Random(seed)
    s = servers.start(label, bl.server_args(label, size), cpu=srv_cpu)
    h = connect(s)
    offs = scattered(rng, size, nwrites, 4096)
    write_blocks(h, offs, block(rng, 4096))
    h.flush()
    t0 = time.monotonic()
    data, lines = nbdinfo_map(s.uri)
    t = time.monotonic() - t0
    # Every written block must be inside a data extent.
    _, _, walked = walk(h, size)
    h.shutdown()
    servers.stop(s)
    r = {"writes": nwrites, "bytes": nwrites * 4096, "data": data,
         "extents": lines, "map_s": t, "walk_data": walked,
         "precision": data / (nwrites * 4096)}
    bl.log("extents %-8s %d data bytes for %d written: %.3fx (%d extents, "
           "%.2f s)" % (label, data, r["bytes"], r["precision"], lines, t))
    if data < r["bytes"]:
        raise RuntimeError("%s reports less data than written" % label)
    return r


def bench_walk(servers, label, nwrites, seed, srv_cpu):
    size = bl.TiB
    rng = random.Random(seed)
    s = servers.start(label, bl.server_args(label, size), cpu=srv_cpu)
    h = connect(s)
    offs = scattered(rng, size, nwrites, 64 * bl.KiB)
    write_blocks(h, offs, block(rng, 64 * bl.KiB))
    h.flush()
    t0 = time.monotonic()
    reqs, ext, data = walk(h, size)
    t1 = time.monotonic()
    zreqs = zero_all(h, size)
    t2 = time.monotonic()
    _, _, after = walk(h, size)
    h.shutdown()
    servers.stop(s)
    if data < nwrites * 64 * bl.KiB:
        raise RuntimeError("%s: walk found %d data bytes, %d written" %
                           (label, data, nwrites * 64 * bl.KiB))
    if after != 0:
        raise RuntimeError("%s: %d data bytes left after zeroing" %
                           (label, after))
    r = {"walk_s": t1 - t0, "walk_requests": reqs, "walk_extents": ext,
         "walk_data": data, "zero_s": t2 - t1, "zero_requests": zreqs}
    bl.log("walk %-8s walk %.3f s (%d requests, %d extents), zero %.3f s" %
           (label, r["walk_s"], reqs, ext, r["zero_s"]))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rss-writes", type=int, default=20000)
    ap.add_argument("--extent-writes", type=int, default=2000)
    ap.add_argument("--walk-writes", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3, help="walk/zero rounds")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    bl.die_on_signals()

    work = os.path.join(os.path.dirname(os.path.abspath(args.out)), "sparse")
    os.makedirs(work, exist_ok=True)
    srv_cpu, cli_cpu = bl.cpus()
    os.sched_setaffinity(0, {cli_cpu})
    result = {"rss": {}, "extents": {}, "walk": {}, "rounds": args.rounds,
              "walk_writes": args.walk_writes}
    with bl.Servers(work) as servers:
        for label in LABELS:
            result["rss"][label] = bench_rss(servers, label, args.rss_writes,
                                             1, srv_cpu)
            result["extents"][label] = bench_extents(
                servers, label, args.extent_writes, 2, srv_cpu)
        for r in range(args.rounds):
            order = LABELS[r % 2:] + LABELS[:r % 2]
            for label in order:
                result["walk"].setdefault(label, []).append(
                    bench_walk(servers, label, args.walk_writes, 3 + r,
                               srv_cpu))
    bl.write_json(args.out, result)


if __name__ == "__main__":
    main()
