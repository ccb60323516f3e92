#!/usr/bin/python3
# memblock benchmarks: compressed devices (compress=zstd|lz4) beside
# uncompressed memblock and nbdkit memory allocator=zstd (and the sparse
# allocator for reference), on the golden ext4 image of clone-bench.py
# (real files from /usr/share and /usr/bin; benchlib.golden_image builds
# it once and keeps it in the results directory's clone/).
#
# Measures, in one run:
#   load     per server kind, a fresh nbdkit with one empty device of the
#            image's size; nbdcopy IMAGE into it ("load"), then nbdcopy of
#            the device to null: ("read back"; nbdcopy skips the holes
#            that block status reports, so both move the image's data).
#            Memory held, as the kernel counts it: the server's VmRSS
#            after the load minus its VmRSS before it (the same process,
#            started empty and warmed up with 4 connections reading, so
#            that malloc arenas are in the baseline), each read with no
#            connection open (nbdkit keeps each worker thread's largest
#            request buffer until the connection closes); for memblock
#            also the store's own count, from the description nbdinfo
#            --list gives the device ("1.3 GiB of data in 470 MiB
#            (zstd)").  Also the server's CPU seconds during each copy.
#            Unpinned; rounds in rotating order.
#   fio      4 KiB random read and random write, 1 and 4 connections, on
#            the devices of the last load round (so still holding the
#            image: reads decompress real data), every server pinned to
#            one CPU and fio to the other, rounds in rotating order.
#            Writes use compressible buffers refilled for every write
#            (fio --buffer_compress_percentage=60 --refill_buffers: each
#            512-byte segment 60% zeroes and 40% random bytes).
# Writes the samples as JSON; report.py prints the tables and targets.

import argparse
import json
import os
import subprocess
import sys
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

# label -> nbdkit plugin arguments for a device of size bytes.  The
# memblock device is "d", the first declared, so also the default export.
SETUPS = (
    ("memblock", lambda size: [bl.MEMBLOCK_SO, "name=d:size=%d" % size]),
    ("memblock-zstd",
     lambda size: [bl.MEMBLOCK_SO, "name=d:size=%d:compress=zstd" % size]),
    ("memblock-lz4",
     lambda size: [bl.MEMBLOCK_SO, "name=d:size=%d:compress=lz4" % size]),
    ("memory-zstd",
     lambda size: ["memory", "size=%d" % size, "allocator=zstd"]),
    ("memory", lambda size: ["memory", "size=%d" % size]),
)
FIO_SERVERS = ("memblock", "memblock-zstd", "memblock-lz4", "memory-zstd")
WRITE_BUFFERS = dict(buffer_compress_percentage=60, refill_buffers=1)
WORKLOADS = [
    ("4k-randread-1c", dict(rw="randread", bs="4k", iodepth=16, numjobs=1)),
    ("4k-randwrite-1c", dict(rw="randwrite", bs="4k", iodepth=16, numjobs=1,
                             **WRITE_BUFFERS)),
    ("4k-randread-4c", dict(rw="randread", bs="4k", iodepth=16, numjobs=4)),
    ("4k-randwrite-4c", dict(rw="randwrite", bs="4k", iodepth=16, numjobs=4,
                             **WRITE_BUFFERS)),
]


def rotate(xs, n):
    n %= len(xs)
    return list(xs[n:]) + list(xs[:n])


def warm(uri, conns=4, reads=32, inflight=8, bs=256 * bl.KiB):
    """conns connections at once, each reading reads blocks of bs spread
    over the device with inflight requests in flight: the server's
    per-connection threads and their malloc arenas exist before a memory
    baseline is read (nbdcopy uses 4 connections, 256 KiB requests)."""
    hs = []
    for _ in range(conns):
        h = nbd.NBD()
        h.connect_uri(uri)
        hs.append(h)
    size = hs[0].get_size()
    todo = {i: list(range(reads)) for i in range(conns)}
    pending = {i: [] for i in range(conns)}
    bufs = [nbd.Buffer(bs) for _ in range(conns * inflight)]
    while any(todo.values()) or any(pending.values()):
        for i, h in enumerate(hs):
            while todo[i] and len(pending[i]) < inflight:
                k = todo[i].pop()
                off = (size - bs) // reads * k // 4096 * 4096
                pending[i].append(h.aio_pread(
                    bufs[i * inflight + len(pending[i])], off))
            if pending[i]:
                h.poll(-1)
                pending[i] = [c for c in pending[i]
                              if not h.aio_command_completed(c)]
    for h in hs:
        h.shutdown()


def nbdcopy(src, dst):
    """nbdcopy src dst; returns wall seconds."""
    t0 = time.monotonic()
    subprocess.run(["nbdcopy", src, dst], check=True, timeout=900)
    return time.monotonic() - t0


def description(server, export):
    """The description nbdinfo --list gives export, or None."""
    r = subprocess.run(["nbdinfo", "--list", "--json", server.uri],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("nbdinfo --list failed: " + r.stderr[-500:])
    for e in json.loads(r.stdout).get("exports", []):
        if e.get("export-name") == export:
            return e.get("description")
    return None


UNITS = {"bytes": 1, "KiB": bl.KiB, "MiB": bl.MiB, "GiB": bl.GiB,
         "TiB": bl.TiB, "PiB": bl.TiB << 10, "EiB": bl.TiB << 20}


def store_count(desc):
    """(bytes of data, bytes held) by memblock's count, from its export
    description: "..., 16.5 MiB in memory" (then data is what it holds)
    or "..., 16.5 MiB of data in 2.3 MiB (zstd)"; to 2 or 3 digits."""
    def amount(s):
        n, unit = s.split()
        return int(float(n) * UNITS[unit])
    last = desc.rsplit(", ", 1)[-1]
    if " of data in " in last:
        data, held = last.split(" of data in ")
        return amount(data), amount(held.split(" (")[0])
    held = amount(last[:-len(" in memory")])
    return held, held


def verify(server, img):
    """The device reads back as the image, byte for byte."""
    with subprocess.Popen(["nbdcopy", server.uri, "-"],
                          stdout=subprocess.PIPE) as p:
        r = subprocess.run(["cmp", "-s", img, "-"], stdin=p.stdout,
                           timeout=900)
        p.stdout.close()
    if r.returncode != 0 or p.returncode != 0:
        raise RuntimeError("%s does not read back as %s" % (server.label, img))


def load_round(servers, args, img, size, rnd, keep, result):
    """One round of load/read-back over every setup, in rotated order.
    Servers whose label is in keep are left running and returned."""
    kept = {}
    setups = dict(SETUPS)
    for label in rotate([s[0] for s in SETUPS], rnd):
        s = servers.start(label, setups[label](size))
        bl.wait_nbd(s.uri, s.proc)
        warm(s.uri)
        base = s.idle_rss()
        c0 = s.cpu_seconds()
        load_s = nbdcopy(img, s.uri)
        c1 = s.cpu_seconds()
        rss_load = s.idle_rss()
        desc = description(s, "d") if label.startswith("memblock") else None
        c2 = s.cpu_seconds()
        read_s = nbdcopy(s.uri, "null:")
        c3 = s.cpu_seconds()
        rss_read = s.idle_rss()
        if args.verify:
            verify(s, img)
        if not s.alive():
            raise RuntimeError("%s died: %s" % (label, s.read_log()))
        smp = {"round": rnd, "base_rss": base, "rss_load": rss_load,
               "mem": rss_load - base, "rss_read": rss_read,
               "load_s": load_s, "read_s": read_s, "description": desc,
               "load_cpu_s": c1 - c0, "read_cpu_s": c3 - c2}
        if desc:
            smp["store_data"], smp["store_held"] = store_count(desc)
        result["load"].setdefault(label, []).append(smp)
        bl.log("load round %d/%d %-14s load %6.2f s (server CPU %5.2f s), "
               "read back %6.2f s (%5.2f s), RSS growth %7.1f MiB (base "
               "%.1f, after read %.1f)%s" %
               (rnd + 1, args.rounds, label, load_s, c1 - c0, read_s, c3 - c2,
                smp["mem"] / bl.MiB, base / bl.MiB,
                (rss_read - base) / bl.MiB,
                "; nbdinfo: " + desc if desc else ""))
        if label in keep:
            kept[label] = s
        else:
            servers.stop(s)
    return kept


def fio_part(srv, args, work, result):
    """4 KiB random fio on the loaded devices, pinned, rotated rounds."""
    srv_cpu, cli_cpu = bl.cpus()
    fio_out = os.path.join(work, "compress-fio.json")
    fr = result["fio"]
    fr.update({"server_cpu": srv_cpu, "client_cpu": cli_cpu,
               "runtime": args.fio_runtime, "rounds": args.fio_rounds,
               "servers": list(FIO_SERVERS),
               "workloads": [w[0] for w in WORKLOADS],
               "write_buffers": WRITE_BUFFERS, "samples": {},
               "rss_before": {}, "rss_after": {}})
    for label in FIO_SERVERS:
        srv[label].set_cpus(str(srv_cpu))
        fr["rss_before"][label] = srv[label].idle_rss()
    for rnd in range(args.fio_rounds):
        order = rotate(FIO_SERVERS, rnd)
        bl.log("fio round %d/%d, order %s" %
               (rnd + 1, args.fio_rounds, " ".join(order)))
        for name, opts in WORKLOADS:
            for label in order:
                s = bl.fio_measure(srv[label], opts, fio_out, cli_cpu,
                                   args.fio_runtime)
                s["round"] = rnd
                fr["samples"].setdefault(name, {}).setdefault(
                    label, []).append(s)
                bl.log("  %-16s %-14s %8.1f MiB/s %8.0f IOPS %6.3f CPU s/GiB "
                       "busy: server %3.0f%% fio %3.0f%%" %
                       (name, label, s["mibs"], s["iops"], s["cpu_per_gib"],
                        100 * s["cpu_s"] / s["wall_s"],
                        100 * s["fio_cpu_s"] / s["wall_s"]))
        bl.write_json(args.out, result)
    for label in FIO_SERVERS:
        fr["rss_after"][label] = srv[label].idle_rss()
        fr.setdefault("description_after", {})[label] = \
            description(srv[label], "d") if label.startswith("memblock") \
            else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", default=bl.IMAGE_SIZE)
    ap.add_argument("--data", default=bl.IMAGE_DATA,
                    help="allocated size of the files to put in the image")
    ap.add_argument("--rounds", type=int, default=3, help="load rounds")
    ap.add_argument("--fio-rounds", type=int, default=3)
    ap.add_argument("--fio-runtime", type=float, default=2.0,
                    help="s per fio run")
    ap.add_argument("--verify", action="store_true",
                    help="compare every read-back with the image")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    bl.die_on_signals()
    if args.rounds < 1 or args.fio_rounds < 0:
        raise SystemExit("compress-bench: bad rounds")

    size = bl.parse_size(args.image_size)
    work = bl.image_dir(args.out)
    os.makedirs(work, exist_ok=True)
    img, desc = bl.golden_image(work, size, bl.parse_size(args.data))
    result = {"image": desc, "size": size, "rounds": args.rounds,
              "setups": [s[0] for s in SETUPS], "verified": args.verify,
              "load": {}, "fio": {}}
    t0 = time.monotonic()
    with bl.Servers(work) as servers:
        srv = {}
        for rnd in range(args.rounds):
            last = rnd == args.rounds - 1 and args.fio_rounds > 0
            srv = load_round(servers, args, img, size, rnd,
                             FIO_SERVERS if last else (), result)
            bl.write_json(args.out, result)
        result["load_part_s"] = time.monotonic() - t0
        if args.fio_rounds > 0:
            fio_part(srv, args, work, result)
    result["total_s"] = time.monotonic() - t0
    bl.write_json(args.out, result)


if __name__ == "__main__":
    main()
