#!/usr/bin/python3
# memblock benchmarks: :volatile devices (a volatile write cache over the
# durable store) and power cuts through the control socket (control=PATH,
# power_cut), against a real nbdkit.  The in-process side (writes into a
# cache beside a plain store, the fold of a flush) is store-bench -V.
#
# Measures, in one run:
#   cuts     one server, name=disk0:size=--size:volatile, prefilled (1 MiB
#            writes over the whole device, then a flush: the durable store
#            holds every page).  Each round writes --write bytes of random
#            4 KiB blocks (each block once, random data, 32 in flight over
#            one libnbd connection, no flush), closes the connection, then
#            does one of: a flush (a new connection, nbd.flush() timed by
#            the client), power_cut keep=none, keep=all, keep=random (seed,
#            unit 4096), each timed on one connected control socket from
#            sending the call to reading its reply; the four in an order
#            rotated each round.  Also power_cut_status's round trip (the
#            floor: socket, JSON, wake-ups).  nbdkit's VmRSS is read with
#            no connection open (the control one closed too) before the
#            writes, after them, and after the flush or cut.
#   fio      one server pinned to one CPU with two devices of --size,
#            "volatile" (:volatile) and "plain", both prefilled and
#            flushed; fio (nbd engine, on the other CPU) 4 KiB random
#            writes, iodepth 16, with a flush every 64 writes (fio
#            --fsync=64) and without flushes, rounds in rotating order.
# Writes the samples as JSON; report.py prints the "Power cuts" table.

import argparse
import json
import os
import random
import sys
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

KEEPS = ("none", "all", "random")
OPS = ("flush",) + tuple("cut-" + k for k in KEEPS)
FIO_WORKLOADS = (
    ("4k-randwrite-fsync64", dict(rw="randwrite", bs="4k", iodepth=16,
                                  numjobs=1, fsync=64)),
    # The same in the first 64 MiB: a working set written again and
    # again, as a file system's journal or a database's files are.
    ("4k-randwrite-fsync64-hot", dict(rw="randwrite", bs="4k", iodepth=16,
                                      numjobs=1, fsync=64, size="64M")),
    ("4k-randwrite", dict(rw="randwrite", bs="4k", iodepth=16, numjobs=1)))
FIO_DEVICES = ("volatile", "plain")
IN_FLIGHT = 32


def start(servers, label, devices, extra=(), cpu=None):
    """nbdkit memblock with devices and a control socket; (server, Ctl)."""
    ctl_path = os.path.join(servers.sockdir, label + ".ctl")
    s = servers.start(label, [bl.MEMBLOCK_SO, "control=" + ctl_path] +
                      list(extra) + list(devices), cpu=cpu)
    first = devices[0].split(":")[0].replace("name=", "")
    bl.wait_nbd(s.export_uri(first), s.proc)
    return s, bl.Ctl(ctl_path)


def drain(h, pending, limit):
    while len(pending) > limit:
        h.poll(-1)
        pending[:] = [c for c in pending if not h.aio_command_completed(c)]


def prefill(uri):
    """1 MiB writes over the whole device, then a flush."""
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    bufs = [nbd.Buffer.from_bytearray(bytearray(os.urandom(bl.MiB)))
            for _ in range(4)]
    pending = []
    for i, off in enumerate(range(0, size, bl.MiB)):
        drain(h, pending, 7)
        pending.append(h.aio_pwrite(bufs[i % 4], off))
    drain(h, pending, 0)
    h.flush()
    h.shutdown()


def randwrite(uri, nbytes, seed):
    """nbytes of 4 KiB writes at random offsets, each block once, random
    data, IN_FLIGHT at a time over one connection, no flush."""
    rnd = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    pages = h.get_size() // 4096
    bufs = [nbd.Buffer.from_bytearray(bytearray(rnd.randbytes(4096)))
            for _ in range(256)]
    pending = []
    for i, page in enumerate(rnd.sample(range(pages), nbytes // 4096)):
        drain(h, pending, IN_FLIGHT - 1)
        pending.append(h.aio_pwrite(bufs[i % 256], page * 4096))
    drain(h, pending, 0)
    h.shutdown()


def bench_cuts(servers, args, result):
    """Flush and power cuts of --write bytes unflushed."""
    cuts = result["cuts"] = {"size": args.size, "written": args.write,
                             "rounds": args.rounds, "floor": [],
                             "samples": {op: [] for op in OPS}}
    s, ctl = start(servers, "cuts", ["name=disk0:size=%d:volatile" %
                                     args.size])
    try:
        uri = s.export_uri("disk0")
        t0 = time.monotonic()
        prefill(uri)
        cuts["prefill_s"] = time.monotonic() - t0
        bl.log("cuts: prefilled %d MiB in %.1f s" %
               (args.size // bl.MiB, cuts["prefill_s"]))
        for rnd in range(args.rounds):
            order = OPS[rnd % len(OPS):] + OPS[:rnd % len(OPS)]
            for i, op in enumerate(order):
                rss0 = ctl.idle_rss(s)
                t0 = time.monotonic()
                randwrite(uri, args.write, rnd * 16 + i)
                wt = time.monotonic() - t0
                rss1 = ctl.idle_rss(s)
                st, _ = ctl.call("power_cut_status", {"device": "disk0"})
                if st["unflushed_bytes"] != args.write:
                    raise RuntimeError("%d bytes unflushed, not %d: %s" %
                                       (st["unflushed_bytes"], args.write,
                                        st))
                for _ in range(3):
                    cuts["floor"].append(ctl.call(
                        "power_cut_status", {"device": "disk0"})[1])
                if op == "flush":
                    h = nbd.NBD()
                    h.connect_uri(uri)
                    t0 = time.perf_counter()
                    h.flush()
                    t = time.perf_counter() - t0
                    h.shutdown()
                    del h
                    reply = None
                else:
                    reply, t = ctl.call("power_cut", {
                        "device": "disk0", "keep": op[4:],
                        "seed": rnd + 1, "unit": 4096})
                rss2 = ctl.idle_rss(s)
                st, _ = ctl.call("power_cut_status", {"device": "disk0"})
                if st["unflushed_bytes"] != 0:
                    raise RuntimeError("after %s: %s" % (op, st))
                cuts["samples"][op].append({
                    "s": t, "round": rnd, "write_s": wt, "rss_before": rss0,
                    "rss_unflushed": rss1, "rss_after": rss2,
                    "reply": reply})
                bl.log("cuts round %d/%d %-10s %8.3f ms  (wrote %.0f MiB in "
                       "%.1f s; RSS MiB %.0f -> %.0f -> %.0f)%s" %
                       (rnd + 1, args.rounds, op, 1000 * t,
                        args.write / bl.MiB, wt, rss0 / bl.MiB,
                        rss1 / bl.MiB, rss2 / bl.MiB,
                        "" if reply is None else " " +
                        json.dumps(reply, sort_keys=True)))
            bl.write_json(args.out, result)
        if not s.alive():
            raise RuntimeError("cuts server died: " + s.read_log())
    finally:
        ctl.close()
        servers.stop(s)
    bl.write_json(args.out, result)


def bench_fio(servers, args, fio_out, result):
    """fio 4 KiB random writes on a volatile and a plain device."""
    srv_cpu, cli_cpu = bl.cpus()
    f = result["fio"] = {"size": args.size, "rounds": args.fio_rounds,
                         "runtime": args.runtime, "server_cpu": srv_cpu,
                         "client_cpu": cli_cpu,
                         "workloads": [w for w, _ in FIO_WORKLOADS],
                         "devices": list(FIO_DEVICES), "samples": {}}
    s, ctl = start(servers, "fio", ["name=volatile:size=%d:volatile" %
                                    args.size,
                                    "name=plain:size=%d" % args.size],
                   cpu=srv_cpu)
    try:
        for d in FIO_DEVICES:
            prefill(s.export_uri(d))
        for rnd in range(args.fio_rounds):
            order = FIO_DEVICES[rnd % 2:] + FIO_DEVICES[:rnd % 2]
            for w, opts in FIO_WORKLOADS:
                for d in order:
                    s.uri = s.export_uri(d)
                    smp = bl.fio_measure(s, opts, fio_out, cli_cpu,
                                         args.runtime)
                    smp["round"] = rnd
                    f["samples"].setdefault(w, {}).setdefault(
                        d, []).append(smp)
                    bl.log("fio round %d/%d %-24s %-9s %8.1f MiB/s %8.0f IOPS"
                           % (rnd + 1, args.fio_rounds, w, d, smp["mibs"],
                              smp["iops"]))
            bl.write_json(args.out, result)
        f["status"] = ctl.call("power_cut_status", {"device": "volatile"})[0]
    finally:
        ctl.close()
        servers.stop(s)
    bl.write_json(args.out, result)


PARTS = ("cuts", "fio")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G", help="device size")
    ap.add_argument("--write", default="256M",
                    help="bytes unflushed before each flush or cut")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of the flush and the three cuts")
    ap.add_argument("--fio-rounds", type=int, default=5)
    ap.add_argument("--runtime", type=float, default=3.0,
                    help="seconds per fio run")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    args.size = bl.parse_size(args.size)
    args.write = bl.parse_size(args.write)
    parts = args.parts.split(",")
    bl.die_on_signals()

    work = os.path.join(os.path.dirname(os.path.abspath(args.out)), "power")
    os.makedirs(work, exist_ok=True)
    fio_out = os.path.join(work, "fio.json")
    result = {"in_flight": IN_FLIGHT}
    with bl.Servers(work) as servers:
        if "cuts" in parts:
            bench_cuts(servers, args, result)
        if "fio" in parts:
            bench_fio(servers, args, fio_out, result)
    bl.write_json(args.out, result)


if __name__ == "__main__":
    main()
