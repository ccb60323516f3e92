#!/usr/bin/python3
# memblock benchmarks: the result tables, ratios and target verdicts.
#
# Reads what fio-bench.py, sparse-bench.py, clone-bench.py,
# compress-bench.py, snapshot-bench.py, store-bench, store-compare.py,
# power-bench.py and load-bench.py wrote into the results directory and
# prints medians of every figure, the ratios of memblock to nbdkit
# memory (sparse), memory allocator=malloc and null, memblock clones
# beside full copies and qemu-storage-daemon, snapshots beside
# qemu-storage-daemon's qcow2 overlays, compressed memblock beside
# memory allocator=zstd, the store of a baseline commit beside the
# current one, volatile devices beside plain ones and power cuts, image
# loads beside the routes users have, and a met/MISSED line per
# target.  Each
# section declares its targets as data (Target: name, figure, comparison,
# threshold); Report.judge prints and judges them all.  Exits 1 if a
# part's results are missing or incomplete; with --strict, also if a
# target is missed.

import argparse
import collections
import json
import math
import operator
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

STORE_SETS = (("ram", "256 MiB per thread (DRAM)"),
              ("cache", "4 MiB per thread (fits the L3 cache)"))
MUTEX_AHEAD = 1.2               # "clearly ahead" of the global mutex
# store-bench's figures: (op, bs, threads), in its order; (op, bs).
STORE_OPS = tuple((op, bs) for op in ("read", "write") for bs in ("4k", "1m"))
STORE_FIGURES = tuple((op, bs, t) for op, bs in STORE_OPS for t in (1, 2))

# A target: figure (None or NaN if it could not be computed) compared
# ("<=" or ">=") with threshold; printed as "NAME CMP THRESHOLD".
Target = collections.namedtuple("Target", "name figure cmp threshold fmt",
                                defaults=("%.2f",))
MEETS = {">=": operator.ge, "<=": operator.le}


class Report:
    def __init__(self):
        self.lines = []
        self.targets = []       # Target
        self.incomplete = []

    def out(self, s=""):
        self.lines.append(s)

    def missing(self, title, what):
        """A section without results."""
        self.out(title + ": MISSING")
        self.incomplete.append(what)
        self.out()

    def judge(self):
        """Print every target with its figure and verdict; returns how
        many were missed."""
        rows = []
        for t in self.targets:
            what = "%s %s %s" % (t.name, t.cmp, t.threshold)
            if t.figure is None or math.isnan(t.figure):
                rows.append((what, "n/a", False))
                self.incomplete.append(what)
            else:
                rows.append((what, t.fmt % t.figure,
                             MEETS[t.cmp](t.figure, t.threshold)))
        self.out("Targets")
        width = max((len(w) for w, _, _ in rows), default=10)
        for what, value, met in rows:
            self.out("%-*s %8s  %s" % (width, what, value,
                                       "met" if met else "MISSED"))
        missed = sum(1 for _, _, met in rows if not met)
        self.out()
        self.out("%d of %d targets met, %d missed" %
                 (len(rows) - missed, len(rows), missed))
        return missed


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ratio(a, b):
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return float("nan")
    return a / b


def spread(xs):
    """(max - min) / median of xs, in per cent."""
    med = bl.median(xs)
    return 100 * (max(xs) - min(xs)) / med if med else 0


def rounds(n):
    return "%d round%s" % (n, "s" if n > 1 else "")


def per_round(xs, fmt="%.2f"):
    return " ".join(fmt % x for x in xs)


def fio_workloads(d, mode):
    if mode == "unpinned":
        return d.get("unpinned_workloads", d["workloads"])
    return d["workloads"]


def fio_medians(d, mode):
    """{workload: {server: (MiB/s, IOPS, CPU s/GiB, spread %, n,
    server busy %, fio busy %)}}."""
    m = {}
    for w in fio_workloads(d, mode):
        for s in d["servers"]:
            xs = d[mode].get(w, {}).get(s, [])
            if not xs:
                continue

            def med(f):
                return bl.median([f(x) for x in xs])
            m.setdefault(w, {})[s] = (
                med(lambda x: x["mibs"]), med(lambda x: x["iops"]),
                med(lambda x: x["cpu_per_gib"]),
                spread([x["mibs"] for x in xs]), len(xs),
                100 * med(lambda x: x["cpu_s"] / x["wall_s"]),
                100 * med(lambda x: x["fio_cpu_s"] / x["wall_s"]))
    return m


def fio_table(r, d, mode, title, want_rounds):
    """The table of one mode and its ratios: {workload: (MiB/s /memory,
    /malloc, /null, CPU s/GiB /memory)}."""
    m = fio_medians(d, mode)
    r.out(title)
    r.out("%-16s %-9s %10s %10s %10s %7s %5s %5s" %
          ("workload", "server", "MiB/s", "IOPS", "CPU s/GiB", "spread",
           "srv", "fio"))
    for w in fio_workloads(d, mode):
        for i, s in enumerate(d["servers"]):
            v = m.get(w, {}).get(s)
            if v is None or v[4] < want_rounds:
                r.incomplete.append("fio %s %s %s" % (mode, w, s))
            if v is None:
                r.out("%-16s %-9s %10s" % (w if i == 0 else "", s, "missing"))
                continue
            r.out("%-16s %-9s %10.1f %10.0f %10.3f %6.0f%% %4.0f%% %4.0f%%" %
                  (w if i == 0 else "", s, v[0], v[1], v[2], v[3], v[5],
                   v[6]))
    r.out()
    r.out("Ratios, memblock / other (%s medians; MiB/s, and CPU s/GiB)" % mode)
    r.out("%-16s %10s %10s %10s %14s" %
          ("workload", "/memory", "/malloc", "/null", "CPU/memory"))
    ratios = {}
    for w in fio_workloads(d, mode):
        v = m.get(w, {})

        def rat(s, k):
            return ratio(v["memblock"][k] if "memblock" in v else None,
                         v[s][k] if s in v else None)
        ratios[w] = (rat("memory", 0), rat("malloc", 0), rat("null", 0),
                     rat("memory", 2))
        r.out("%-16s %10.2f %10.2f %10.2f %14.2f" % ((w,) + ratios[w]))
    r.out()
    return ratios


# Per pinned workload: (index in fio_table's ratios, what, comparison,
# threshold, only for workloads starting with).
FIO_TARGETS = ((0, "MiB/s memblock/memory", ">=", 1.05, ""),
               (1, "MiB/s memblock/malloc", ">=", 1.0, ""),
               (2, "MiB/s memblock/null", ">=", 0.9, "4k"),
               (3, "CPU s/GiB memblock/memory", "<=", 0.95, ""))


def fio_section(r, d):
    if d is None:
        r.missing("fio", "fio")
        return
    r.out("fio over NBD: %d MiB devices prefilled with data, %.1f s per "
          "run, server CPU %d, fio CPU %d" %
          (d["size"] // bl.MiB, d["runtime"], d["server_cpu"],
           d["client_cpu"]))
    r.out("(spread: (max-min)/median of the MiB/s samples; srv, fio: "
          "CPU time / wall time of the server, of fio)")
    r.out()
    ratios = fio_table(r, d, "pinned", "Pinned, median of %d rounds, order "
                       "rotated each round" % d["rounds"], d["rounds"])
    n = d.get("unpinned_rounds", 1)
    fio_table(r, d, "unpinned", "Unpinned, for reference, median of " +
              rounds(n), n)
    if "rss_after_prefill" in d:
        r.out("Server RSS, MiB: at start / after prefilling the %d MiB "
              "device" % (d["size"] // bl.MiB))
        r.out("  " + ", ".join("%s %.0f / %.0f" %
                               (s, d["rss_at_start"][s] / bl.MiB,
                                d["rss_after_prefill"][s] / bl.MiB)
                               for s in d["servers"]))
        r.out()
    for w, rw in ratios.items():
        r.targets += [Target("pinned %s %s" % (w, what), rw[i], cmp, limit)
                      for i, what, cmp, limit, only in FIO_TARGETS
                      if w.startswith(only)]


def sparse_section(r, d):
    if d is None:
        r.missing("Sparse work and memory", "sparse")
        return
    r.out("RSS amplification: %d random 4 KiB writes into a 4 GiB device" %
          d["rss"]["memblock"]["writes"])
    r.out("%-9s %12s %14s %14s %22s" % ("server", "written MiB",
                                        "RSS growth MiB", "amplification",
                                        "RSS growth on reads KiB"))
    for s, v in d["rss"].items():
        r.out("%-9s %12.1f %14.1f %14.3f %22d" %
              (s, v["bytes"] / bl.MiB, v["growth"] / bl.MiB,
               v["amplification"], v["read_growth"] // bl.KiB))
    r.out("(the last column: reading as many unwritten 4 KiB blocks again)")
    r.out()
    r.out("Extent precision: %d scattered 4 KiB writes into a 1 TiB device, "
          "nbdinfo --map" % d["extents"]["memblock"]["writes"])
    r.out("%-9s %12s %16s %10s %10s %10s" %
          ("server", "written KiB", "data extents KiB", "ratio", "lines",
           "map s"))
    for s, v in d["extents"].items():
        r.out("%-9s %12d %16d %10.3f %10d %10.2f" %
              (s, v["bytes"] // bl.KiB, v["data"] // bl.KiB, v["precision"],
               v["extents"], v["map_s"]))
    r.out()
    walk = {}
    r.out("1 TiB device, %d scattered 64 KiB writes: block-status walk "
          "and write-zeroes" % d.get("walk_writes", 0))
    r.out("of the whole device in requests of up to 2 GiB (median of %d)" %
          d["rounds"])
    r.out("%-9s %10s %10s %10s %10s" %
          ("server", "walk s", "requests", "extents", "zero s"))
    for s, xs in d["walk"].items():
        walk[s] = (bl.median([x["walk_s"] for x in xs]),
                   bl.median([x["zero_s"] for x in xs]))
        r.out("%-9s %10.3f %10d %10d %10.3f" %
              (s, walk[s][0], xs[0]["walk_requests"], xs[0]["walk_extents"],
               walk[s][1]))
    walk_ratio, zero_ratio = (ratio(walk["memblock"][i], walk["memory"][i])
                              for i in (0, 1))
    r.out("%-9s %10.2f %21s %10.2f" % ("ratio", walk_ratio, "", zero_ratio))
    r.out()

    mb = d["rss"]["memblock"]
    r.targets += [
        Target("RSS amplification", mb["amplification"], "<=", 1.1, "%.3f"),
        Target("RSS growth reading unwritten blocks, % of them",
               100 * ratio(mb["read_growth"], mb["bytes"]), "<=", 1.0,
               "%.3f"),
        Target("extent precision", d["extents"]["memblock"]["precision"],
               "<=", 1.1, "%.3f"),
        Target("1 TiB block-status walk memblock/memory", walk_ratio, "<=",
               0.5),
        Target("1 TiB write-zeroes memblock/memory", zero_ratio, "<=", 0.5)]


def clone_section(r, d):
    """Golden image and clones: clone-bench.py's results."""
    title = "Golden image and writable clones"
    if d is None:
        r.missing(title, "clone")
        return
    img, n, w = d["image"], d["clones"], d["write"]
    # The image's data: its allocated size (du -B1).  What SEEK_DATA
    # reports of it can change after mkfs (ext4 turns unwritten extents
    # into written ones on writeback); the allocated size does not.
    data = img["allocated"]
    r.out("%s: %d of a %d MiB ext4 image (mkfs.ext4 -d, %s)" %
          (title, n, img["size"] // bl.MiB,
           "kept from an earlier run" if img.get("reused") else
           "made in %.1f s" % img["mkfs_s"]))
    r.out("of %d files from %s: %.0f MiB, %.0f MiB allocated.  Image:" %
          (img["files"], " ".join(img["sources"]), img["files_bytes"] / bl.MiB,
           img["files_alloc"] / bl.MiB))
    r.out("%.0f MiB allocated (du -B1: \"data\" below), %.0f MiB in SEEK_DATA "
          "extents, %.0f MiB" % (data / bl.MiB, img["data"] / bl.MiB,
                                  img["nonzero"] / bl.MiB))
    r.out("in non-zero 4 KiB pages.")
    r.out("Then %d x %.0f MiB of random 4 KiB writes (fio, one job per copy, "
          "all at once).  Unpinned." % (n, w / bl.MiB))
    r.out("Set-up: first command until an NBD handshake with the last export "
          "works, copies included.")
    r.out("Memory: memblock, nbdkit's VmRSS minus an empty start's with %d "
          "devices (%.1f MiB);" % (n + 1, d["empty_rss"] / bl.MiB))
    r.out("qsd, its VmRSS plus the allocated size of its /dev/shm files.")
    rows = (("clones", "memblock clones"),
            ("copies", "memblock full copies"),
            ("qsd", "qsd, qcow2 on /dev/shm"))
    r.out("%-23s %9s %11s %7s %8s %11s %10s" %
          ("set-up", "set-up s", "memory MiB", "/ data", "write s",
           "growth MiB", "/ written"))
    st = d["setups"]
    for key, label in rows:
        v = st.get(key)
        if v is None or "growth" not in v:
            r.out("%-23s %9s" % (label, "missing"))
            r.incomplete.append("clone " + key)
            continue
        r.out("%-23s %9.2f %11.1f %7.2f %8.2f %11.1f %10.3f" %
              (label, v["setup_s"], v["mem_setup"] / bl.MiB,
               ratio(v["mem_setup"], data), v["write_s"],
               v["growth"] / bl.MiB, ratio(v["growth"], v["written"])))

    def get(key, field):
        return st.get(key, {}).get(field)
    # clones / other, per field
    vs = {other: {k: ratio(get("clones", k), get(other, k))
                  for k in ("setup_s", "mem_setup", "write_s", "growth")}
          for other in ("copies", "qsd")}
    for other, label in (("copies", "clones / full copies"),
                         ("qsd", "clones / qsd")):
        v = vs[other]
        r.out("%-23s %9.2f %11.2f %7s %8.2f %11.2f" %
              (label, v["setup_s"], v["mem_setup"], "", v["write_s"],
               v["growth"]))
    r.out("memblock clones' memory / the image's non-zero 4 KiB pages: %.3f" %
          ratio(get("clones", "mem_setup"), img["nonzero"]))
    r.out("(full copies grow less than they write: they already hold the "
          "pages that writes")
    r.out("into the image's data replace; qcow2 allocates 64 KiB clusters.)")
    r.out()

    rd = d["read"]
    r.out("4 KiB random read, 1 connection, iodepth 16, %.1f s per run, "
          "server CPU %d, fio CPU %d," % (d["read_runtime"], d["server_cpu"],
                                          d["client_cpu"]))
    r.out("on the clones' server after the writes: median of %d rounds, "
          "order rotated each round" % d["rounds"])
    r.out("%-23s %9s %11s %7s" % ("device", "MiB/s", "IOPS", "spread"))
    med = {}
    for key, label in (("golden", "golden"),
                       ("clone", "clone c1 (written)")):
        xs = rd.get(key, [])
        if len(xs) < d["rounds"]:
            r.incomplete.append("clone read " + key)
        if not xs:
            r.out("%-23s %9s" % (label, "missing"))
            med[key] = float("nan")
            continue
        mibs = [x["mibs"] for x in xs]
        med[key] = bl.median(mibs)
        r.out("%-23s %9.1f %11.0f %6.0f%%" %
              (label, med[key], bl.median([x["iops"] for x in xs]),
               spread(mibs)))
    read_ratio = ratio(med["clone"], med["golden"])
    pairs = [ratio(c["mibs"], g["mibs"]) for g, c in
             zip(rd.get("golden", []), rd.get("clone", []))]
    r.out("%-23s %9.2f   (each round's own: %s)" %
          ("clone / golden", read_ratio,
           " ".join("%.2f" % x for x in pairs)))
    r.out()

    ld = d["load"]
    lm = {}
    for key in ("empty", "file", "copy"):
        xs = ld.get(key, [])
        if len(xs) < d["load_rounds"]:
            r.incomplete.append("clone load " + key)
        lm[key] = bl.median([x["s"] for x in xs])
    load = lm["file"] - lm["empty"]
    file_rss = bl.median([x["rss"] for x in ld.get("file", [])])
    r.out("Loading the image: median of %d rounds, order rotated, unpinned "
          "(MiB/s: SEEK_DATA bytes / s)" % d["load_rounds"])
    r.out("  nbdkit start, name=g:ro:size=<image size>, until it answers  "
          "%8.3f s" % lm["empty"])
    r.out("  nbdkit start, name=g:ro:file=<image>, until it answers       "
          "%8.3f s  (RSS %.0f MiB)" % (lm["file"], file_rss / bl.MiB))
    r.out("  load: the :file= start minus the empty start                 "
          "%8.3f s  %7.0f MiB/s" %
          (load, ratio(img["data"] / bl.MiB, load) if load > 0
           else float("nan")))
    r.out("  nbdcopy <image> into a running memblock name=d:size=<size>   "
          "%8.3f s  %7.0f MiB/s" %
          (lm["copy"], ratio(img["data"] / bl.MiB, lm["copy"])))
    r.out("  load / nbdcopy %.2f (the whole :file= start / nbdcopy: %.2f)" %
          (ratio(load, lm["copy"]), ratio(lm["file"], lm["copy"])))
    r.out()

    r.targets += [
        Target("clones: set-up time clones/full copies",
               vs["copies"]["setup_s"], "<=", 0.25, "%.3f"),
        Target("clones: memory after cloning / image data (du)",
               ratio(get("clones", "mem_setup"), data), "<=", 1.05, "%.3f"),
        Target("clones: memory growth / bytes written",
               ratio(get("clones", "growth"), get("clones", "written")),
               "<=", 1.15, "%.3f"),
        Target("clones: 4 KiB random read clone/golden", read_ratio, ">=",
               0.95),
        Target("clones: :file= load / nbdcopy of the image",
               ratio(load, lm["copy"]), "<=", 0.5)]


def load_store(path):
    """benchlib.parse_store_bench of a store-bench output file, or None."""
    try:
        with open(path) as f:
            return bl.parse_store_bench(f.read())
    except (OSError, ValueError):
        return None


def store_section(r, resdir):
    variants = ("memcpy", "store", "mutex")
    for key, title in STORE_SETS:
        got = load_store(os.path.join(resdir, "store-%s.txt" % key))
        if got is None or len(got[0]) != 27:
            r.missing("In-process store, " + title, "store " + key)
            continue
        d = {k: v[0] for k, v in got[0].items()}
        cpus = {k: v[1] for k, v in got[0].items()}
        r.out("In-process store, GiB/s, %s; 4 KiB random, 1 MiB sequential"
              % title)
        r.out("%-6s %-3s %3s %8s %8s %8s %13s %12s" %
              (("op", "bs", "thr") + variants + ("store/memcpy",
                                                 "store/mutex")))
        for op, bs, t in STORE_FIGURES:
            m, s, x = (d[(op, bs, t, v)] for v in variants)
            r.out("%-6s %-3s %3d %8.2f %8.2f %8.2f %13.2f %12.2f" %
                  (op, bs, t, m, s, x, ratio(s, m), ratio(s, x)))
        r.out("1 MiB writes of zeroes (kept as holes), 1 thread, GiB/s: "
              "memcpy of them %.2f;" % d[("zwrite", "1m", 1, "memcpy")])
        r.out("  store into chunks never created %.2f, into unwritten pages "
              "of existing chunks %.2f" %
              (d[("zwrite", "1m", 1, "store")],
               d[("zwrite-chunk", "1m", 1, "store")]))
        r.out("Scaling, 2 threads / 1 thread (CPUs: what the 2-thread runs "
              "got, CPU time / wall time):")
        r.out("%-6s %-3s %8s %8s %8s %16s" % (("op", "bs") + variants +
                                               ("CPUs memcpy/store",)))
        scale = {(op, bs, v): ratio(d[(op, bs, 2, v)], d[(op, bs, 1, v)])
                 for op, bs in STORE_OPS for v in variants}
        for op, bs in STORE_OPS:
            r.out("%-6s %-3s %8.2f %8.2f %8.2f %10.2f/%.2f" %
                  ((op, bs) + tuple(scale[(op, bs, v)] for v in variants) +
                   (cpus[(op, bs, 2, "memcpy")], cpus[(op, bs, 2, "store")])))
        r.out()
        r.targets.append(Target("store %s: 1 MiB writes store/memcpy" % key,
                                ratio(d[("write", "1m", 1, "store")],
                                      d[("write", "1m", 1, "memcpy")]),
                                ">=", 0.8))
        r.targets += [Target("store %s: %s %s 2 threads/1 (memcpy %.2f, "
                             "%.2f CPUs)" % (key, op, bs,
                                             scale[(op, bs, "memcpy")],
                                             cpus[(op, bs, 2, "store")]),
                             scale[(op, bs, "store")], ">=", 1.7)
                      for op, bs in STORE_OPS]
        r.targets += [Target("store %s: %s %s 2 threads store/mutex" %
                             (key, op, bs),
                             ratio(d[(op, bs, 2, "store")],
                                   d[(op, bs, 2, "mutex")]),
                             ">=", MUTEX_AHEAD)
                      for op, bs in STORE_OPS]


COMPRESS_LABELS = (("memblock", "memblock (none)"),
                   ("memblock-zstd", "memblock zstd"),
                   ("memblock-lz4", "memblock lz4"),
                   ("memory-zstd", "memory zstd"),
                   ("memory", "memory sparse"))
# The load figures: (key, what the targets call it).
COMPRESS_FIGURES = (("mem", "memory"), ("load_s", "load time"),
                    ("read_s", "read-back time"))
# Per codec: (server, the server it is held against, that one's name in
# the targets, thresholds of memory, load and read-back time ratios).
COMPRESS_TARGETS = (("zstd", "memblock-zstd", "memory-zstd",
                     "memory allocator=zstd's", (1.1, 0.5, 0.5)),
                    ("lz4", "memblock-lz4", "memblock",
                     "uncompressed memblock's", (0.5, 1.25, 1.25)))


def compress_section(r, d):
    """Compressed devices: compress-bench.py's results."""
    title = "Compression"
    if d is None:
        r.missing(title, "compress")
        return
    img, n = d["image"], d["rounds"]
    keys = [k for k, _ in COMPRESS_FIGURES]
    r.out("%s: the golden image (%d MiB ext4, %.0f MiB allocated, %.0f MiB "
          "in non-zero 4 KiB pages)" %
          (title, img["size"] // bl.MiB, img["allocated"] / bl.MiB,
           img["nonzero"] / bl.MiB))
    r.out("loaded with nbdcopy into an empty device of its size, then read "
          "back with nbdcopy to null:")
    r.out("(both skip holes).  RSS: the server's VmRSS after the load minus "
          "its VmRSS just before it")
    r.out("(empty, after 4 connections read from it), each read with no "
          "connection open; store: what")
    r.out("memblock counts it holds (nbdinfo --list, to 2-3 digits).  "
          "Unpinned; median of %s," % rounds(n))
    r.out("order rotated each round%s." %
          ("; every read-back compared with the image" if d.get("verified")
           else ""))
    r.out("%-16s %8s %9s %9s %7s %7s %7s %9s %9s %11s" %
          ("server", "RSS MiB", "store MiB", "RSS/store", "/ data", "load s",
           "read s", "load MB/s", "read MB/s", "srv CPUs"))
    med = {}
    ld = d["load"]
    for key, label in COMPRESS_LABELS:
        xs = ld.get(key, [])
        med[key] = {k: bl.median([x[k] for x in xs]) for k in keys}
        if len(xs) < n:
            r.incomplete.append("compress load " + key)
        if not xs:
            r.out("%-16s %8s" % (label, "missing"))
            continue
        m = med[key]
        held = bl.median([x["store_held"] for x in xs if "store_held" in x])
        cpus = [bl.median([x[k + "_cpu_s"] / x[k + "_s"] for x in xs])
                for k in ("load", "read")]
        r.out("%-16s %8.1f %9s %9s %7.3f %7.2f %7.2f %9.0f %9.0f %5.2f/%.2f" %
              (label, m["mem"] / bl.MiB,
               "-" if math.isnan(held) else "%.1f" % (held / bl.MiB),
               "-" if math.isnan(held) else "%.3f" % ratio(m["mem"], held),
               ratio(m["mem"], img["nonzero"]), m["load_s"], m["read_s"],
               ratio(img["nonzero"] / 1e6, m["load_s"]),
               ratio(img["nonzero"] / 1e6, m["read_s"]), cpus[0], cpus[1]))
    r.out("(/ data: RSS / the image's non-zero 4 KiB pages; MB/s: those "
          "pages' bytes / s;")
    r.out("srv CPUs: the server's CPU time / wall time during the load / the "
          "read-back)")
    r.out("Per round (in run order of rounds):")
    for key, label in COMPRESS_LABELS:
        xs = ld.get(key, [])
        if xs:
            r.out("  %-16s RSS MiB %s; load s %s; read s %s" %
                  (label, per_round([x["mem"] / bl.MiB for x in xs], "%.0f"),
                   per_round([x["load_s"] for x in xs]),
                   per_round([x["read_s"] for x in xs])))
    r.out("What nbdinfo --list says of the memblock device after the load "
          "(last round):")
    for key, label in COMPRESS_LABELS[:3]:
        xs = ld.get(key, [])
        if xs:
            r.out("  %-16s %s" % (label, xs[-1].get("description")))
    r.out()

    def rat(a, b, k):
        return ratio(med[a][k], med[b][k])

    def rounds_rat(a, b, k):
        xs = {x["round"]: x[k] for x in ld.get(b, [])}
        return per_round([ratio(y[k], xs.get(y["round"]))
                          for y in ld.get(a, [])])
    r.out("Ratios of medians (and each round's own):     RSS   load   read")
    for a, b, label in (("memblock-zstd", "memory-zstd",
                         "memblock zstd / memory zstd"),
                        ("memblock-lz4", "memblock",
                         "memblock lz4 / memblock"),
                        ("memblock-zstd", "memblock",
                         "memblock zstd / memblock"),
                        ("memory-zstd", "memory",
                         "memory zstd / memory sparse")):
        r.out("  %-40s %6.2f %6.2f %6.2f" %
              ((label,) + tuple(rat(a, b, k) for k in keys)))
        r.out("  %-40s %s" % ("", " | ".join(rounds_rat(a, b, k)
                                             for k in keys)))
    r.out()
    compress_fio(r, d)

    for codec, a, b, other, limits in COMPRESS_TARGETS:
        r.targets += [Target("compress=%s: %s / %s" % (codec, what, other),
                             rat(a, b, k), "<=", limit)
                      for (k, what), limit in zip(COMPRESS_FIGURES, limits)]


def compress_fio(r, d):
    """fio on the compressed devices: compress-bench.py's "fio"."""
    f = d.get("fio") or {}
    if not f.get("rounds"):
        r.missing("fio on compressed devices", "compress fio")
        return
    n, label = f["rounds"], dict(COMPRESS_LABELS)
    r.out("fio 4 KiB random, iodepth 16 per connection, on the devices of "
          "the last round above")
    r.out("(holding the image: %.0f%% of the device is data), server CPU "
          "%d, fio CPU %d, %.1f s per run," %
          (100 * d["image"]["nonzero"] / d["image"]["size"], f["server_cpu"],
           f["client_cpu"], f["runtime"]))
    pct = f["write_buffers"]["buffer_compress_percentage"]
    r.out("median of %s, order rotated each round; writes: fio "
          "--buffer_compress_percentage=%d" % (rounds(n), pct))
    r.out("--refill_buffers (each 512-byte piece %d%% zeroes, %d%% random; "
          "fresh data per write)." % (pct, 100 - pct))
    r.out("Devices change as fio writes: the faster servers take more "
          "writes (see nbdinfo after).")
    r.out("%-16s %-16s %9s %9s %10s %7s  %s" %
          ("workload", "server", "MiB/s", "IOPS", "CPU s/GiB", "srv",
           "MiB/s per round"))
    fm = {}
    for w in f["workloads"]:
        for i, key in enumerate(f["servers"]):
            xs = f["samples"].get(w, {}).get(key, [])
            if len(xs) < n:
                r.incomplete.append("compress fio %s %s" % (w, key))
            if not xs:
                r.out("%-16s %-16s %9s" % (w if i == 0 else "", label[key],
                                           "missing"))
                continue
            mibs = [x["mibs"] for x in xs]
            fm[(w, key)] = bl.median(mibs)
            r.out("%-16s %-16s %9.1f %9.0f %10.3f %6.0f%%  %s" %
                  (w if i == 0 else "", label[key], fm[(w, key)],
                   bl.median([x["iops"] for x in xs]),
                   bl.median([x["cpu_per_gib"] for x in xs]),
                   100 * bl.median([x["cpu_s"] / x["wall_s"] for x in xs]),
                   per_round(mibs, "%.0f")))
    r.out("Ratios of MiB/s medians:")
    pairs = (("memblock-zstd", "memory-zstd"), ("memblock-lz4", "memory-zstd"),
             ("memblock-zstd", "memblock"), ("memblock-lz4", "memblock"))
    r.out("%-16s %14s %14s %14s %14s" %
          ("workload", "zstd/mem-zstd", "lz4/mem-zstd", "zstd/none",
           "lz4/none"))
    for w in f["workloads"]:
        r.out("%-16s %14.2f %14.2f %14.2f %14.2f" %
              ((w,) + tuple(ratio(fm.get((w, a)), fm.get((w, b)))
                            for a, b in pairs)))
    r.out("Server RSS MiB before / after the fio runs: " +
          ", ".join("%s %.0f / %.0f" %
                    (k, f["rss_before"][k] / bl.MiB,
                     f["rss_after"].get(k, 0) / bl.MiB)
                    for k in f["servers"]))
    after = f.get("description_after", {})
    for k in f["servers"]:
        if after.get(k):
            r.out("  %-16s nbdinfo after: %s" % (label[k], after[k]))
    r.out()


def store_codec_section(r, resdir):
    got = load_store(os.path.join(resdir, "store-codec.txt"))
    codecs = ("none", "zstd", "lz4")
    title = "In-process store, compressed"
    if got is None or len(got[0]) != 24 or len(got[1]) != 3:
        r.missing(title, "store codec")
        return
    d, held, data = got
    src = ("text-like generated data" if data in (None, "text") else
           "the non-zero 4 KiB pages of 1 MiB pieces spread over %s" %
           os.path.basename(data))
    r.out("%s (store_set_codec), GiB/s of data; one store per codec, "
          "each filled with" % title)
    r.out("%s; writes of" % src)
    r.out("the same data.  4 KiB random, 1 MiB sequential; medians, runs "
          "of the codecs interleaved.")
    r.out("Held / data after the fill: " +
          ", ".join("%s %.0f / %.0f MiB = %.3f" %
                    (c, held[c][1] / bl.MiB, held[c][0] / bl.MiB,
                     ratio(held[c][1], held[c][0])) for c in codecs))
    r.out("%-6s %-3s %3s %8s %8s %8s %10s %9s  %s" %
          ("op", "bs", "thr", "none", "zstd", "lz4", "zstd/none", "lz4/none",
           "per run: none | zstd | lz4"))
    for op, bs, t in STORE_FIGURES:
        v = [d[(op, bs, t, c)] for c in codecs]
        r.out("%-6s %-3s %3d %8.3f %8.3f %8.3f %10.3f %9.3f  %s" %
              (op, bs, t, v[0][0], v[1][0], v[2][0],
               ratio(v[1][0], v[0][0]), ratio(v[2][0], v[0][0]),
               " | ".join(per_round(x[2], "%.3f") for x in v)))
    r.out()


SNAPSHOT_LAYERS = 16           # store-bench -l and snapshot-bench --layers


def paired(xs, ys):
    """Median of the per-run ratios y/x of two lists of runs (runs of
    the same index were taken side by side)."""
    return bl.median([ratio(y, x) for x, y in zip(xs, ys)])


def snapshot_section(r, d, resdir):
    """Snapshots and the control socket: snapshot-bench.py's results and
    store-bench -l and -g."""
    title = "Snapshots and the control socket"
    if d is None:
        r.missing(title, "snapshot")
        return
    img = d["image"]
    r.out("%s: the golden image (%d MiB ext4, %.0f MiB in non-zero 4 KiB "
          "pages)" % (title, img["size"] // bl.MiB, img["nonzero"] / bl.MiB))
    r.out("in a writable device (name=disk0:file=IMG, control=PATH), beside "
          "qemu-storage-daemon serving")
    r.out("a raw copy on /dev/shm, blockdev-snapshot-sync onto new qcow2 "
          "overlays there (QMP).")
    ms = 1000.0

    # Calls.
    c = d.get("calls")
    snap_rtt = qsd_rtt = float("nan")
    if not c or not c.get("snapshot") or not c.get("qsd_snapshot"):
        r.missing("Control calls", "snapshot calls")
    else:
        n = len(c["snapshot"])
        med = {k: bl.median(v) * ms for k, v in c.items() if v}
        snap_rtt, qsd_rtt = med["snapshot"], med["qsd_snapshot"]
        r.out("Round trips, ms, on one connected socket, timed by the client "
              "(send to reply), median of %d" % n)
        r.out("(and the 10th-90th percentiles); calls of the two servers "
              "alternating.  Server time: the median")
        r.out("minus the no-op call's (an estimate: what the call adds to "
              "the socket, JSON and wake-ups).")

        def pct(xs, q):
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(q * len(xs)))] * ms
        r.out("%-44s %9s %17s %11s" % ("call", "median", "p10-p90",
                                        "server est"))
        rows = (("floor", "memblock job_list (no-op)", None),
                ("snapshot", "memblock snapshot", "floor"),
                ("snapshot_busy", "  the same, fio writing meanwhile",
                 "floor"),
                ("rollback", "memblock rollback (after %d 4 KiB writes)" %
                 d.get("rollback_writes", 64), "floor"),
                ("qsd_floor", "qsd query-version (no-op)", None),
                ("qsd_snapshot", "qsd blockdev-snapshot-sync", "qsd_floor"),
                ("qsd_snapshot_busy", "  the same, fio writing meanwhile",
                 "qsd_floor"))
        est = {}
        for key, label, floor in rows:
            xs = c.get(key, [])
            if not xs:
                r.out("%-44s %9s" % (label, "missing"))
                r.incomplete.append("snapshot calls " + key)
                continue
            est[key] = med[key] - med[floor] if floor else float("nan")
            r.out("%-44s %9.3f %8.3f-%-8.3f %11s" %
                  (label, med[key], pct(xs, 0.1), pct(xs, 0.9),
                   "%.3f" % est[key] if floor else "-"))
        r.out("memblock / qsd, snapshot: round trip %.3f, server estimate "
              "%.3f; under writes: %.3f" %
              (ratio(snap_rtt, qsd_rtt),
               ratio(est.get("snapshot"), est.get("qsd_snapshot")),
               ratio(med.get("snapshot_busy"), med.get("qsd_snapshot_busy"))))
        r.out()
        r.targets += [
            Target("snapshot: control round trip, ms", snap_rtt, "<=", 1.0,
                   "%.3f"),
            Target("snapshot: round trip memblock/qsd", ratio(snap_rtt,
                                                               qsd_rtt),
                   "<=", 0.5, "%.3f")]

    # Memory.
    m = d.get("memory")
    if not m or "memblock" not in m or "qsd" not in m:
        r.missing("Memory after a snapshot", "snapshot memory")
    else:
        w, mb, q = m["written"], m["memblock"], m["qsd"]
        r.out("Memory after a snapshot, then %.0f MiB of random 4 KiB "
              "writes (fio, each block once), fresh servers:" % (w / bl.MiB))
        r.out("memblock: nbdkit's VmRSS growth, read with no connection "
              "open; store: disk0's own layer as")
        r.out("device_list counts it (allocated / data).  qsd: VmRSS growth "
              "plus its /dev/shm files' growth.")
        r.out("%-30s %11s %10s %12s %12s %8s" %
              ("server", "growth MiB", "/ written", "RSS MiB", "files MiB",
               "write s"))
        r.out("%-30s %11.1f %10.3f %12.1f %12s %8.2f" %
              ("memblock", mb["growth"] / bl.MiB, ratio(mb["growth"], w),
               (mb["rss_after"] - mb["rss_before"]) / bl.MiB, "-",
               mb["write_s"]))
        r.out("%-30s %11.1f %10.3f %12.1f %12.1f %8.2f" %
              ("qsd, qcow2 overlay on /dev/shm", q["growth"] / bl.MiB,
               ratio(q["growth"], w),
               (q["rss_after"] - q["rss_before"]) / bl.MiB,
               (q["files_after"] - q["files_before"]) / bl.MiB, q["write_s"]))
        r.out("memblock / qsd growth %.3f.  memblock's store: disk0 "
              "allocated %.1f MiB, data %.1f MiB" %
              (ratio(mb["growth"], q["growth"]),
               mb["allocated_after"] / bl.MiB, mb["data_after"] / bl.MiB))
        r.out("(%.1f / %.1f before the writes; the snapshot holds %.1f MiB); "
              "RSS growth / store's growth %.3f." %
              (mb["allocated_before"] / bl.MiB, mb["data_before"] / bl.MiB,
               mb["snapshot_data"] / bl.MiB,
               ratio(mb["growth"],
                     mb["allocated_after"] - mb["allocated_before"])))
        r.out("Rollback of those writes: %.3f ms round trip; VmRSS after it "
              "%+.1f MiB from before the writes." %
              (mb["rollback_s"] * ms,
               (mb["rss_after_rollback"] - mb["rss_before"]) / bl.MiB))
        r.out()
        r.targets.append(Target("snapshot: memory growth / bytes written",
                                ratio(mb["growth"], w), "<=", 1.05, "%.3f"))

    # Reads through layers: in process, then over NBD.
    got = load_store(os.path.join(resdir, "store-layers.txt"))
    lay_ratio = float("nan")
    if got is None or len(got[0]) != 8:
        r.missing("Reads through %d frozen layers, in process" %
                  SNAPSHOT_LAYERS, "store layers")
    else:
        f = got[0]
        r.out("Reads through %d frozen layers, in process (store-bench -l "
              "%d): GiB/s; \"layers\" is the" %
              (SNAPSHOT_LAYERS, SNAPSHOT_LAYERS))
        r.out("top of a chain of store_create_like layers, each with 3% of "
              "the pages written; \"flat\" one")
        r.out("store with the same writes.  4 KiB random, 1 MiB sequential; "
              "medians of %d runs, order" % len(f[("read", "4k", 1,
                                                    "flat")][2]))
        r.out("rotated; layers/flat: median of the runs' own ratios.")
        r.out("%-6s %-3s %3s %8s %8s %13s  %s" %
              ("op", "bs", "thr", "flat", "layers", "layers/flat",
               "per run: flat | layers"))
        for bs in ("4k", "1m"):
            for t in (1, 2):
                a, b = f[("read", bs, t, "flat")], f[("read", bs, t,
                                                      "layers")]
                rt = paired(a[2], b[2])
                if (bs, t) == ("4k", 1):
                    lay_ratio = rt
                r.out("%-6s %-3s %3d %8.2f %8.2f %13.2f  %s | %s" %
                      ("read", bs, t, a[0], b[0], rt, per_round(a[2]),
                       per_round(b[2])))
        r.out()
    r.targets.append(Target("snapshot: in-process 4 KiB random read, "
                            "%d layers/flat" % SNAPSHOT_LAYERS, lay_ratio,
                            ">=", 0.8))

    ly = d.get("layers")
    nbd_ratio = float("nan")
    if not ly or not ly.get("read", {}).get("deep"):
        r.missing("Reads through snapshots over NBD", "snapshot layers")
    else:
        rd, n = ly["read"], ly["rounds"]
        r.out("fio 4 KiB random read, 1 connection, iodepth 16, %.1f s per "
              "run, server CPU %d, fio CPU %d," %
              (ly["runtime"], ly["server_cpu"], ly["client_cpu"]))
        r.out("median of %s, order rotated: \"deep\" snapshotted %d times, "
              "%d%% of it (%.1f MiB) written" %
              (rounds(n), ly["layers"], ly["percent"],
               ly["written_per_layer"] / bl.MiB))
        r.out("after each; \"flat\" loaded from the same image, the same "
              "writes, no snapshot.")
        r.out("%-23s %9s %11s %7s  %s" % ("device", "MiB/s", "IOPS", "spread",
                                          "MiB/s per round"))
        medr = {}
        for key in ("flat", "deep"):
            xs = rd.get(key, [])
            if len(xs) < n:
                r.incomplete.append("snapshot layers read " + key)
            mibs = [x["mibs"] for x in xs]
            medr[key] = bl.median(mibs)
            r.out("%-23s %9.1f %11.0f %6.0f%%  %s" %
                  (key, medr[key], bl.median([x["iops"] for x in xs]),
                   spread(mibs), per_round(mibs, "%.1f")))
        nbd_ratio = ratio(medr["deep"], medr["flat"])
        r.out("%-23s %9.2f   (each round's own: %s)" %
              ("deep / flat", nbd_ratio,
               per_round([ratio(b["mibs"], a["mibs"])
                          for a, b in zip(rd["flat"], rd["deep"])])))
        r.out()
    r.targets.append(Target("snapshot: 4 KiB random read over NBD, "
                            "%d snapshots/none" % SNAPSHOT_LAYERS, nbd_ratio,
                            ">=", 0.95))

    # Save.
    sv = d.get("save")
    save_ratio = float("nan")
    if not sv or not sv.get("save") or not sv.get("nbdcopy"):
        r.missing("Save of a snapshot", "snapshot save")
    else:
        st = {k: bl.median([x["s"] for x in sv[k]])
              for k in ("save", "nbdcopy")}
        save_ratio = ratio(st["save"], st["nbdcopy"])
        r.out("Save of a snapshot of disk0 to a file in %s (save, then "
              "job_wait) beside nbdcopy --flush" % d.get("save_dir"))
        r.out("of the snapshot over NBD to a file there; both sparse and "
              "synced, the file removed before")
        r.out("each run; median of %s, order alternating; %s." %
              (rounds(sv["rounds"]),
               "both files equal to the image" if all(
                   x.get("same_as_image", True) for k in ("save", "nbdcopy")
                   for x in sv[k]) else "NOT EQUAL to the image"))
        for k, label in (("save", "control save"), ("nbdcopy", "nbdcopy")):
            r.out("  %-14s %8.3f s  %7.0f MB/s of non-zero pages  file %.0f "
                  "MiB allocated   per round: %s" %
                  (label, st[k], ratio(img["nonzero"] / 1e6, st[k]),
                   sv[k][-1]["allocated"] / bl.MiB,
                   per_round([x["s"] for x in sv[k]], "%.3f")))
        r.out("  save / nbdcopy %.3f" % save_ratio)
        b = sv["busy"]
        if b.get("with") and b.get("without"):
            iw = bl.median([x["iops"] for x in b["with"]])
            io = bl.median([x["iops"] for x in b["without"]])
            r.out("fio 4 KiB random writes into disk0, iodepth 16, %.1f s, "
                  "unpinned, while saves of the" % sv["busy_runtime"])
            r.out("snapshot run back to back (%s saves per run), beside the "
                  "same without: IOPS %.0f / %.0f = %.2f" %
                  (per_round([x["saves"] for x in b["with"]], "%d"), iw, io,
                   ratio(iw, io)))
            r.out("  (each round's own: %s)" %
                  per_round([ratio(x["iops"], y["iops"])
                             for x, y in zip(b["with"], b["without"])]))
        else:
            r.incomplete.append("snapshot save busy")
        r.out()
    r.targets.append(Target("snapshot: save / nbdcopy of a snapshot, time",
                            save_ratio, "<=", 0.5, "%.3f"))

    # The data path: gate in process, control= over NBD.
    got = load_store(os.path.join(resdir, "store-gate.txt"))
    gate = {}
    if got is None or len(got[0]) != 16:
        r.missing("The request gate, in process", "store gate")
    else:
        f = got[0]
        r.out("The request gate in process (store-bench -g): GiB/s of the "
              "bare store and of the same")
        r.out("store with gate_enter/gate_leave around each call as "
              "plugin/memblock.c does; medians of")
        r.out("%d runs, order rotated; gate/store: median of the runs' own "
              "ratios." % len(f[("write", "4k", 1, "store")][2]))
        r.out("%-6s %-3s %3s %8s %8s %11s  %s" %
              ("op", "bs", "thr", "store", "gate", "gate/store",
               "per run: store | gate"))
        for op, bs, t in STORE_FIGURES:
            a, b = f[(op, bs, t, "store")], f[(op, bs, t, "gate")]
            gate[(op, bs, t)] = paired(a[2], b[2])
            r.out("%-6s %-3s %3d %8.2f %8.2f %11.2f  %s | %s" %
                  (op, bs, t, a[0], b[0], gate[(op, bs, t)], per_round(a[2]),
                   per_round(b[2])))
        r.out()
    r.targets += [Target("snapshot: in-process %s write with the gate/bare "
                         "store" % label, gate.get(("write", bs, 1)), ">=",
                         limit)
                  for bs, label, limit in (("4k", "4 KiB", 0.9),
                                           ("1m", "1 MiB", 0.97))]

    ct = d.get("control")
    if not ct or not ct.get("samples"):
        r.missing("fio with control= and without", "snapshot control")
    else:
        n = ct["rounds"]
        r.out("fio over NBD, iodepth 16, 1 connection, %.1f s per run, "
              "server CPU %d, fio CPU %d, median" %
              (ct["runtime"], ct["server_cpu"], ct["client_cpu"]))
        r.out("of %s, order rotated: servers loaded from the image, with "
              "control= and without" % rounds(n))
        r.out("%-14s %10s %10s %8s  %s" % ("workload", "on MiB/s",
                                           "off MiB/s", "on/off",
                                           "per round on | off"))
        for w in ct["workloads"]:
            sm = ct["samples"].get(w, {})
            on = [x["mibs"] for x in sm.get("on", [])]
            off = [x["mibs"] for x in sm.get("off", [])]
            if len(on) < n or len(off) < n:
                r.incomplete.append("snapshot control " + w)
            if not on or not off:
                r.out("%-14s %10s" % (w, "missing"))
                continue
            r.out("%-14s %10.1f %10.1f %8.2f  %s | %s" %
                  (w, bl.median(on), bl.median(off),
                   ratio(bl.median(on), bl.median(off)),
                   per_round(on, "%.0f"), per_round(off, "%.0f")))
        r.out("(reported: the gate is on the data path with control= or "
              "without; control= adds a thread)")
        r.out()


BASELINE_AHEAD = 0.97          # after/before: no slower than the baseline


def store_compare_section(r, d, compressed):
    """The store of a baseline commit beside the current one:
    store-compare.py's results with store-bench -s (a target per figure)
    or -c (compressed: reported)."""
    baseline = (d or {}).get("baseline", "the baseline")
    title = "The store at %s beside the current one%s" % (
        baseline, ", compressed" if compressed else "")
    if d is None:
        r.missing(title, "store-compare" + (" codec" if compressed else ""))
        return
    if "skipped" in d:
        r.out(title + ": skipped (%s)" % d["skipped"])
        r.out()
        return
    figs, n = d["figures"], d["rounds"]
    variants = d["variants"] if compressed else ["store"]
    r.out(title + ": in-process GiB/s")
    r.out("before: the store at %s, after: the working tree's; one run per "
          "round and build of" % baseline)
    r.out("  store-bench " + " ".join(os.path.basename(a) for a in d["args"]))
    r.out("builds alternating (and which goes first), median of %d rounds; "
          "after/before: median" % n)
    r.out("of the rounds' own ratios.  CPUs: CPU time / wall time the "
          "2-thread runs got.")
    if compressed:
        held = d.get("held", {})
        r.out("after/before reported: no targets.  Held / data after the "
              "fill, before | after:")
        for v in variants:
            r.out("  %-6s %s" % (v, " | ".join(
                "%.1f / %.1f MiB = %.3f" % (h[1] / bl.MiB, h[0] / bl.MiB,
                                            ratio(h[1], h[0]))
                for h in (held.get(b, {}).get(v, (0, 0))
                          for b in ("before", "after")))))
    name = ("%-6s" % "codec") if compressed else ""
    r.out("%-6s %-3s %3s %s%8s %8s %12s %11s  %s" %
          ("op", "bs", "thr", name, "before", "after", "after/before",
           "CPUs b/a", "per round: before | after"))
    fmt = "%.3f" if compressed else "%.2f"
    for op, bs, t in STORE_FIGURES:
        for v in variants:
            f = figs.get("%s %s %d %s" % (op, bs, t, v), {})
            b, a = f.get("before", []), f.get("after", [])
            label = "%-6s %-3s %3d %s" % (op, bs, t,
                                          ("%-6s" % v) if compressed else "")
            after_before = float("nan")
            if len(b) < n or len(a) < n:
                r.incomplete.append("store-compare %s %s %d %s" %
                                    (op, bs, t, v))
                r.out("%s%8s" % (label, "missing"))
            else:
                after_before = bl.median([ratio(y, x) for x, y in zip(b, a)])
                r.out("%s%8s %8s %12.2f %5.2f/%.2f  %s | %s" %
                      (label, fmt % bl.median(b), fmt % bl.median(a),
                       after_before, bl.median(f["cpus_before"]),
                       bl.median(f["cpus_after"]), per_round(b, fmt),
                       per_round(a, fmt)))
            if not compressed:
                r.targets.append(Target(
                    "store at %s: %s %s %d thread%s after/before" %
                    (baseline, op, bs, t, "s" if t > 1 else ""),
                    after_before, ">=", BASELINE_AHEAD))
    r.out()


# Power cuts: store-bench -V's variants, and its lines.
POWER_VARIANTS = ("plain", "volatile", "vol-warm", "cold")
POWER_CUT_MS = 10.0             # a cut of 256 MiB unflushed, round trip
POWER_WRITE_RATIO = 0.85        # in-process writes, volatile / plain


def power_paired(a, b):
    """The median of the runs' own ratios b/a (runs in the same order)."""
    return bl.median([ratio(y, x) for x, y in zip(a, b)])


def power_section(r, d, resdir):
    """Power cuts: store-bench -V and power-bench.py's results."""
    title = "Power cuts"
    got = load_store(os.path.join(resdir, "store-volatile.txt"))
    ms = 1000.0
    flushmib = None
    try:
        with open(os.path.join(resdir, "store-volatile.txt")) as f:
            for line in f:
                if line.startswith("flushmib "):
                    flushmib = int(line.split()[1])
    except OSError:
        pass
    r.out("%s: :volatile devices (a write cache over the durable store; "
          "a flush folds it in," % title)
    r.out("a power cut folds what it keeps and drops the rest)")
    r.out()
    want = [(op, bs, t, v) for op in ("read", "write") for bs in ("4k", "1m")
            for t in (1, 2) for v in POWER_VARIANTS]
    want += [("flush", bs, 1, "volatile") for bs in ("4k", "1m")]
    wr = {}
    if got is None or any(k not in got[0] for k in want) or not flushmib:
        r.missing("Volatile writes in process", "power store")
    else:
        f = got[0]
        r.out("In process (store-bench -V), GiB/s, every request through "
              "its device's gate: plain, a store;")
        r.out("volatile, a cache (store_create_like) over a store holding "
              "the prefill, emptied before each")
        r.out("run as a flush leaves it, each write also doing vol_wrote's "
              "bookkeeping (the device's")
        r.out("mutex, a log append, the counts); vol-warm, the same with "
              "the cache holding every page")
        r.out("already (never flushed); cold, a plain store trimmed whole "
              "before each run, so that its")
        r.out("writes too land in pages it does not hold (the kernel faults "
              "each in; its reads read holes).")
        r.out("4 KiB random, 1 MiB sequential; medians of %s, order "
              "rotated;" % rounds(len(f[want[0]][2])).replace("round", "run"))
        r.out("ratios: median of the runs' own.")
        r.out("%-6s %-3s %3s %8s %8s %8s %8s %9s %9s %9s  %s" %
              ("op", "bs", "thr", "plain", "volatile", "vol-warm", "cold",
               "vol/plain", "warm/pl.", "vol/cold", "per run: plain | "
               "volatile | vol-warm | cold"))
        for op in ("write", "read"):
            for bs in ("4k", "1m"):
                for t in (1, 2):
                    v = [f[(op, bs, t, x)] for x in POWER_VARIANTS]
                    rv = power_paired(v[0][2], v[1][2])
                    rw = power_paired(v[0][2], v[2][2])
                    rc = power_paired(v[3][2], v[1][2])
                    wr[(op, bs, t)] = (rv, rw)
                    r.out("%-6s %-3s %3d %8.3f %8.3f %8.3f %8.3f %9.3f %9.3f "
                          "%9s  %s" %
                          (op, bs, t, v[0][0], v[1][0], v[2][0], v[3][0], rv,
                           rw, "%.3f" % rc if op == "write" else "-",
                           " | ".join(per_round(x[2], "%.3f") for x in v)))
        r.out("Flush in process (gate_close, store_fold, store_forget, the "
              "log emptied, gate_open) of")
        r.out("%d MiB unflushed, median of %d:" %
              (flushmib, len(f[("flush", "4k", 1, "volatile")][2])))
        for bs, what in (("4k", "4 KiB writes at random offsets"),
                         ("1m", "1 MiB sequential writes")):
            g = f[("flush", bs, 1, "volatile")][0]
            secs = ratio(flushmib / 1024.0, g)
            r.out("  %-32s %8.1f ms, %6.3f ms per MiB  (runs, GiB/s: %s)" %
                  (what, secs * ms, secs * ms / flushmib,
                   per_round(f[("flush", bs, 1, "volatile")][2], "%.2f")))
        r.out()
    for bs in ("4k", "1m"):
        rv, rw = wr.get(("write", bs, 1), (float("nan"),) * 2)
        r.targets += [
            Target("power: in-process %s write, 1 thread, volatile after a "
                   "flush/plain" % bs, rv, ">=", POWER_WRITE_RATIO, "%.3f"),
            Target("power: in-process %s write, 1 thread, volatile warm "
                   "cache/plain" % bs, rw, ">=", POWER_WRITE_RATIO, "%.3f")]

    c = (d or {}).get("cuts")
    cut_none = float("nan")
    if not c or any(len(c["samples"].get(op, [])) < c["rounds"]
                    for op in ("flush", "cut-none", "cut-all",
                               "cut-random")):
        r.missing("Power cuts over the control socket", "power cuts")
    else:
        w = c["written"]
        r.out("Over NBD and the control socket (power-bench.py): nbdkit "
              "name=disk0:size=%s:volatile," %
              ("%dG" % (c["size"] // bl.GiB) if c["size"] % bl.GiB == 0
               else "%dM" % (c["size"] // bl.MiB)))
        r.out("prefilled and flushed; each round %.0f MiB of random 4 KiB "
              "writes (each block once, %d in" %
              (w / bl.MiB, d.get("in_flight", 32)))
        r.out("flight, no flush, connection closed), then one of: "
              "nbd.flush() on a new connection, or")
        r.out("power_cut (keep none, all, random with unit 4096), timed by "
              "the client from the call to")
        r.out("its reply; order rotated each round, median of %d (and "
              "10th-90th percentiles)." % c["rounds"])
        r.out("RSS: nbdkit's VmRSS with no connection open, before the "
              "writes / unflushed / after.")

        def pct(xs, q):
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(q * len(xs)))] * ms
        r.out("%-26s %9s %17s %8s %22s" %
              ("after %.0f MiB unflushed" % (w / bl.MiB), "ms", "p10-p90",
               "ms/MiB", "RSS MiB"))
        rows = (("flush", "flush (nbd.flush)"),
                ("cut-none", "power_cut keep=none"),
                ("cut-all", "power_cut keep=all"),
                ("cut-random", "power_cut keep=random"))
        for op, label in rows:
            xs = c["samples"][op]
            t = bl.median([x["s"] for x in xs])
            if op == "cut-none":
                cut_none = t * ms
            r.out("%-26s %9.3f %8.3f-%-8.3f %8.4f %8.0f /%5.0f /%5.0f" %
                  (label, t * ms, pct([x["s"] for x in xs], 0.1),
                   pct([x["s"] for x in xs], 0.9), t * ms / (w / bl.MiB),
                   bl.median([x["rss_before"] for x in xs]) / bl.MiB,
                   bl.median([x["rss_unflushed"] for x in xs]) / bl.MiB,
                   bl.median([x["rss_after"] for x in xs]) / bl.MiB))
        fl = c.get("floor", [])
        if fl:
            r.out("%-26s %9.3f %8.3f-%-8.3f   (the floor: socket, JSON, "
                  "wake-ups)" % ("power_cut_status", bl.median(fl) * ms,
                                 pct(fl, 0.1), pct(fl, 0.9)))
        last = c["samples"]["cut-random"][-1].get("reply") or {}
        r.out("keep=random, last round's reply: %d writes kept, %d in part, "
              "%d lost; %.1f MiB kept, %.1f lost" %
              (last.get("writes_kept", 0), last.get("writes_partial", 0),
               last.get("writes_lost", 0),
               last.get("bytes_kept", 0) / bl.MiB,
               last.get("bytes_lost", 0) / bl.MiB))
        r.out("Writing %.0f MiB took %.2f s (median): the client's side, "
              "for scale." % (w / bl.MiB, bl.median(
                  [x["write_s"] for op in c["samples"]
                   for x in c["samples"][op]])))
        r.out()
    r.targets.append(Target("power: power_cut keep=none of %.0f MiB "
                            "unflushed, round trip ms" %
                            ((c or {}).get("written", 0) / bl.MiB),
                            cut_none, "<=", POWER_CUT_MS, "%.3f"))

    fo = (d or {}).get("fio")
    if not fo or not fo.get("samples"):
        r.missing("fio on a volatile device", "power fio")
        return
    n = fo["rounds"]
    r.out("fio over NBD, 4 KiB random writes, iodepth 16, one connection, "
          "%.1f s per run, server CPU %d," % (fo["runtime"],
                                              fo["server_cpu"]))
    r.out("fio CPU %d; two %d MiB devices on one server, prefilled and "
          "flushed: \"volatile\" (:volatile)" % (fo["client_cpu"],
                                                 fo["size"] // bl.MiB))
    r.out("and \"plain\"; median of %s, order rotated each round.  "
          "fsync64: fio --fsync=64 (an NBD" % rounds(n))
    r.out("flush after every 64 writes); -hot: the same in the first 64 "
          "MiB only, a working set that")
    r.out("a flush's spare pages cover.")
    r.out("%-24s %-9s %9s %9s %10s %6s  %s" %
          ("workload", "device", "MiB/s", "IOPS", "CPU s/GiB", "srv",
           "MiB/s per round"))
    med = {}
    for wl in fo["workloads"]:
        for i, dev in enumerate(fo["devices"]):
            xs = fo["samples"].get(wl, {}).get(dev, [])
            if len(xs) < n:
                r.incomplete.append("power fio %s %s" % (wl, dev))
            if not xs:
                r.out("%-24s %-9s %9s" % (wl if i == 0 else "", dev,
                                          "missing"))
                continue
            mibs = [x["mibs"] for x in xs]
            med[(wl, dev)] = mibs
            r.out("%-24s %-9s %9.1f %9.0f %10.3f %5.0f%%  %s" %
                  (wl if i == 0 else "", dev, bl.median(mibs),
                   bl.median([x["iops"] for x in xs]),
                   bl.median([x["cpu_per_gib"] for x in xs]),
                   100 * bl.median([x["cpu_s"] / x["wall_s"] for x in xs]),
                   per_round(mibs, "%.0f")))
    for wl in fo["workloads"]:
        a, b = med.get((wl, "plain"), []), med.get((wl, "volatile"), [])
        r.out("%-24s volatile/plain, MiB/s: %.3f (medians), %.3f (median "
              "of the rounds' own)" %
              (wl, ratio(bl.median(b), bl.median(a)), power_paired(a, b)))
    st = fo.get("status")
    if st:
        r.out("The volatile device after the runs: %d writes, %d flushes "
              "(power_cut_status)" % (st.get("writes", 0),
                                      st.get("flushes", 0)))
    r.out()


# ---------------------------------------------------------------- load
# Loading golden images as they ship: load-bench.py's results (issue 16).
# A separate section: its own names, one call in main().

LOAD_FORMATS = (("qcow2", "qcow2"), ("qcow2c", "qcow2 -c (zlib)"))
LOAD_ROUTES = (("memblock", "memblock :format=qcow2"),
               ("shm", "(a) -O raw to /dev/shm + file="),
               ("convert", "(b) qemu-img convert -n to NBD"),
               ("nbdcopy", "(c) nbdcopy [qemu-nbd] to NBD"),
               ("null", "floor: nbdcopy [qemu-nbd] null:"))
LOAD_OTHERS = ("shm", "convert", "nbdcopy")     # the routes users have
LOAD_PROCS = (("nbdkit", "nbdkit"), ("qemu-nbd", "qemu-nbd"),
              ("qemu-img", "qemu-img"), ("nbdcopy", "nbdcopy"))
LOAD_TIME_TARGET = 0.6          # memblock / the fastest other route
LOAD_HELD_TARGET = 1.0          # memory held / non-zero pages
LOAD_PEAK_TARGET = 1.1          # peak of all / non-zero pages: no 2nd copy


def load_section(r, d):
    title = "Loading golden images as they ship"
    if d is None:
        r.missing(title, "load")
        return
    img, n, src = d["image"], d["rounds"], d["sources"]
    nz = img["nonzero"]
    smp = d["samples"]

    def med(key, field):
        xs = [x[field] for x in smp.get(key, []) if x.get(field) is not None]
        return bl.median(xs) if xs else float("nan")
    empty = med("empty", "held")
    r.out("%s: the golden image (%d MiB ext4, %.0f MiB in non-zero 4 KiB "
          "pages, \"data\" below)" % (title, img["size"] // bl.MiB, nz / bl.MiB))
    r.out("as qcow2 (%.0f MiB) and as qcow2 -c (qemu-img convert -c, zlib: "
          "%.0f MiB), from the page cache," % (src["qcow2"]["allocated"] / bl.MiB,
                                               src["qcow2c"]["allocated"] / bl.MiB))
    r.out("into memblock with :format=qcow2 and by the routes users have "
          "today.  Time: memblock, nbdkit start")
    r.out("until its pidfile; (a) the convert and nbdkit's start until its "
          "pidfile; (b), (c) nbdkit's start")
    r.out("(a writable device of the image's size) until the copy exits.  "
          "Unpinned, %d CPUs; median of %s," % (d["cpus"], rounds(n)))
    r.out("order rotated each round%s; load average %s before, %s after." %
          ("; every device compared with the image" if d.get("verified")
           else "", "/".join(d["loadavg_before"]),
           "/".join(d.get("loadavg_after", ["?"]))))
    r.out("Memory (MiB): per process name the largest VmHWM seen (summed over "
          "its processes: x2 = two);")
    r.out("shm: the /dev/shm file; peak: VmRSS (less RssShmem) of all of them "
          "plus shm at one moment,")
    r.out("sampled every 10 ms; held: nbdkit's VmRSS at the end (no "
          "connection open, /dev/shm file removed);")
    r.out("net: held less an empty start's VmRSS (%.1f MiB).  /best: time / "
          "the fastest of (a), (b), (c)." % (empty / bl.MiB))
    r.out("%-33s %7s %5s %6s %8s %8s %8s %8s %6s %6s %5s %6s %5s" %
          ("route", "time s", "/best", "CPU s", "nbdkit", "qemu-nbd",
           "qemu-img", "nbdcopy", "shm", "peak", "/data", "held", "net/d"))
    ratios = {}
    for fmt, flabel in LOAD_FORMATS:
        r.out(flabel + ":")
        best = min((med("%s/%s" % (k, fmt), "s") for k in LOAD_OTHERS),
                   key=lambda x: x if not math.isnan(x) else float("inf"))
        best_name = [k for k in LOAD_OTHERS
                     if med("%s/%s" % (k, fmt), "s") == best]
        for key, label in LOAD_ROUTES:
            xs = smp.get("%s/%s" % (key, fmt), [])
            if len(xs) < n:
                r.incomplete.append("load %s %s" % (key, fmt))
            if not xs:
                r.out("  %-31s %7s" % (label, "missing"))
                continue
            k = "%s/%s" % (key, fmt)
            procs = []
            for p, _ in LOAD_PROCS:
                hw = [x["hwm"].get(p) for x in xs if p in x["hwm"]]
                cnt = max((x["procs"].get(p, 0) for x in xs), default=0)
                procs.append("%8s" % ("-" if not hw else
                                      ("%.0f" % (bl.median(hw) / bl.MiB)) +
                                      ("x%d" % cnt if cnt > 1 else "")))
            held = med(k, "held")
            r.out("  %-31s %7.2f %5.2f %6.2f %s %6.0f %6.0f %5.2f %6s %5s" %
                  (label, med(k, "s"), ratio(med(k, "s"), best),
                   med(k, "cpu_s"), " ".join(procs),
                   med(k, "shm_peak") / bl.MiB, med(k, "peak") / bl.MiB,
                   ratio(med(k, "peak"), nz),
                   "-" if math.isnan(held) else "%.0f" % (held / bl.MiB),
                   "-" if math.isnan(held) else
                   "%.3f" % ratio(held - empty, nz)))
        m = "memblock/" + fmt
        ratios[fmt] = (ratio(med(m, "s"), best),
                       best_name[0] if best_name else "?",
                       ratio(med(m, "held") - empty, nz),
                       ratio(med(m, "peak"), nz), ratio(med(m, "held"), nz))
    r.out("Per round (run order), time s:")
    for fmt, flabel in LOAD_FORMATS:
        for key, label in LOAD_ROUTES:
            xs = smp.get("%s/%s" % (key, fmt), [])
            if xs:
                r.out("  %-8s %-9s %s" % (fmt, key,
                                          per_round([x["s"] for x in xs])))
    r.out()

    # Where the time goes.
    r.out("Where the time goes (medians, s; CPU s: all the processes of the "
          "step; CPUs: CPU s / time):")
    rows = [("memblock qcow2 -c: nbdkit start to pidfile", "memblock/qcow2c"),
            ("  its \"loaded in\" (nbdkit -v)", ("memblock/qcow2c",
                                                  "loaded_s")),
            ("memblock qcow2: nbdkit start to pidfile", "memblock/qcow2"),
            ("  its \"loaded in\" (nbdkit -v)", ("memblock/qcow2",
                                                  "loaded_s")),
            ("qemu-img info + check of qcow2 -c (before load)", "check/qcow2c"),
            ("empty start (name=g:ro:size=S) to pidfile", "empty"),
            ("decode+socket floor, qcow2 -c: nbdcopy [qemu-nbd] null:",
             "null/qcow2c"),
            ("decode+socket floor, qcow2: nbdcopy [qemu-nbd] null:",
             "null/qcow2"),
            ("socket floor, raw: nbdcopy [qemu-nbd -f raw] null:",
             "raw-null"),
            ("the store alone: file=IMG (raw, page cache, no socket)",
             "raw-file")]
    for label, key in rows:
        if isinstance(key, tuple):
            v = med(*key)
            r.out("  %-60s %7.2f" % (label, v))
            continue
        t, c = med(key, "s"), med(key, "cpu_s")
        r.out("  %-60s %7.2f  CPU %6.2f  CPUs %.2f" % (label, t, c,
                                                       ratio(c, t)))
    qc = d.get("check_qcow2")
    if qc:
        r.out("  %-60s %7.2f  (one run)" % ("qemu-img info + check of qcow2",
                                            qc["s"]))
    dec = (med("null/qcow2c", "cpu_s") - med("raw-null", "cpu_s"))
    r.out("zlib decode: %.2f CPU s more than the raw floor for %.0f MiB of "
          "data, %.0f MiB/s per CPU;" % (dec, nz / bl.MiB,
                                         ratio(nz / bl.MiB, dec)))
    r.out("with %d CPUs the compressed load cannot take less than %.2f s "
          "of decoding alone." % (d["cpus"], ratio(dec, d["cpus"])))
    left = sum(x.get("leftover_children", 0) for xs in smp.values()
               for x in xs)
    if left:
        r.out("WARNING: %d child processes of nbdkit still there after a "
              "load" % left)
    r.out()

    for fmt, flabel in LOAD_FORMATS:
        t, best, held, peak, _ = ratios[fmt]
        r.targets += [
            Target("load %s: memblock time / fastest other route (%s)" %
                   (flabel, best), t, "<=", LOAD_TIME_TARGET),
            Target("load %s: memblock held (net) / non-zero pages" % flabel,
                   held, "<=", LOAD_HELD_TARGET, "%.4f"),
            Target("load %s: peak of all processes / non-zero pages" %
                   flabel, peak, "<=", LOAD_PEAK_TARGET, "%.3f")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="results directory")
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--header", default="")
    args = ap.parse_args()
    r = Report()
    if args.header:
        r.out(args.header)
        r.out()

    def results(name):
        return load_json(os.path.join(args.dir, name))
    fio_section(r, results("fio.json"))
    sparse_section(r, results("sparse.json"))
    clone_section(r, results("clone.json"))
    compress_section(r, results("compress.json"))
    snapshot_section(r, results("snapshot.json"), args.dir)
    store_section(r, args.dir)
    store_codec_section(r, args.dir)
    store_compare_section(r, results("store-compare.json"), False)
    store_compare_section(r, results("store-compare-codec.json"), True)
    power_section(r, results("power.json"), args.dir)
    # Loading golden images as they ship (load-bench.py).
    load_section(r, results("load.json"))
    missed = r.judge()
    if r.incomplete:
        r.out("INCOMPLETE: " + ", ".join(r.incomplete))
    print("\n".join(r.lines))
    if r.incomplete:
        return 1
    if args.strict and missed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
