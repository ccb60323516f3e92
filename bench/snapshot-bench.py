#!/usr/bin/python3
# memblock benchmarks: snapshots and the control socket (control=PATH),
# beside qemu-storage-daemon with qcow2 overlays on /dev/shm driven over
# QMP.  The image is clone-bench.py's golden ext4 image
# (benchlib.golden_image, kept between runs), loaded into a writable
# memblock device with name=disk0:file=IMG; qsd serves a copy of it on
# /dev/shm (raw, writable) and takes blockdev-snapshot-sync onto new
# qcow2 overlays there.  clone-bench.py's helpers are reused (warm-up,
# fio, /dev/shm directory, process handling).
#
# Measures, in one run:
#   calls    round trips of control calls on one connected socket, timed
#            by the client (from sending the line to reading the reply):
#            job_list with no jobs (the floor: socket, JSON, thread
#            wake-ups), snapshot of disk0, and rollback of disk0 to its
#            newest snapshot after 64 random 4 KiB writes; beside qsd's
#            query-version (its floor) and blockdev-snapshot-sync, each
#            call of the two servers alternating, order rotated each
#            round.  The server's own time is estimated as the median
#            round trip minus the floor's.  Then the same snapshots with
#            fio writing 4 KiB blocks into the device meanwhile.
#   memory   a fresh server, warmed up (reads over a connection), one
#            snapshot, then --write bytes of random 4 KiB writes (fio,
#            each block once): memblock, nbdkit's VmRSS growth (read with
#            no connection open) beside what device_list counts for disk0
#            (allocated, data), and the rollback of those writes (its
#            round trip, the VmRSS after it); qsd, its VmRSS growth plus
#            the growth of its files on /dev/shm.
#   layers   one server with two devices loaded from the image: "flat",
#            and "deep", snapshotted --layers times with
#            --layer-percent % of the device written (random 4 KiB
#            blocks, each once, over libnbd) after each snapshot; flat
#            gets the same writes (same offsets and data) into its one
#            layer.  Then fio 4 KiB random read, one
#            connection, iodepth 16, server on one CPU and fio on the
#            other, rounds in rotating order.
#   save     a snapshot of disk0 saved (save, then job_wait) to a file on
#            /var/tmp, beside nbdcopy --flush of the same snapshot over
#            NBD to a file there (both sparse, both synced); rounds
#            alternating, the files removed between runs; the first of
#            each compared with the image.  Then fio 4 KiB random writes
#            into disk0 (unpinned) while saves of the snapshot run back
#            to back, beside the same fio without saves, alternating.
#   control  fio 4 KiB random read and write over NBD, pinned, on two
#            servers loaded from the image, one with control= and one
#            without; rounds in rotating order.
# Writes the samples as JSON; report.py prints the table.

import argparse
import contextlib
import filecmp
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "clonebench", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "clone-bench.py"))
cb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cb)

SAVE_PREFIX = "memblock-snapshot-bench."
ROLLBACK_WRITES = 64            # 4 KiB writes before each timed rollback


# ---------------------------------------------------------------- clients

class Qmp:
    """A QMP connection to qemu-storage-daemon.  call() returns (return,
    round trip in seconds); events are skipped."""

    def __init__(self, path, timeout=60):
        self.sock = bl.connect_unix(path, timeout, "QMP socket")
        self.rfile = self.sock.makefile("rb")
        json.loads(self.rfile.readline())       # the greeting
        self.call("qmp_capabilities")

    def call(self, cmd, args=None):
        req = {"execute": cmd}
        if args is not None:
            req["arguments"] = args
        line = json.dumps(req).encode() + b"\n"
        t0 = time.perf_counter()
        self.sock.sendall(line)
        while True:
            reply = self.rfile.readline()
            if not reply:
                raise RuntimeError("QMP: no reply to " + cmd)
            msg = json.loads(reply)
            if "event" not in msg:
                break
        t = time.perf_counter() - t0
        if "error" in msg:
            raise RuntimeError("QMP %s %s: %s" % (cmd, args, msg["error"]))
        return msg["return"], t

    def close(self):
        self.rfile.close()
        self.sock.close()


# ---------------------------------------------------------------- servers

def start_memblock(servers, label, devices, extra=(), control=True):
    """nbdkit memblock with devices (name=... strings) and, with control,
    a control socket; returns (server, Ctl or None)."""
    args = [bl.MEMBLOCK_SO] + list(extra)
    ctl_path = os.path.join(servers.sockdir, label + ".ctl")
    if control:
        args.append("control=" + ctl_path)
    s = servers.start(label, args + list(devices))
    first = devices[0].split(":")[0].replace("name=", "")
    bl.wait_nbd(s.export_uri(first), s.proc)
    return s, (bl.Ctl(ctl_path) if control else None)


class Qsd:
    """qemu-storage-daemon serving shm/disk.raw (a copy of the image,
    writable) as export disk0, with a QMP monitor; snapshot() puts a new
    qcow2 overlay on /dev/shm on top."""

    def __init__(self, servers, label, raw, shm, logdir):
        self.shm = shm
        self.sock = os.path.join(servers.sockdir, label + ".sock")
        qmp = os.path.join(servers.sockdir, label + ".qmp")
        self.raw = raw
        self.files = [raw]
        self.top = "disk"
        self.n = 0
        self.label = label
        cmd = ["qemu-storage-daemon",
               "--blockdev", "driver=file,node-name=disk-file,filename=" + raw,
               "--blockdev", "driver=raw,node-name=disk,file=disk-file",
               "--nbd-server", "addr.type=unix,addr.path=" + self.sock,
               "--export", "type=nbd,id=disk0-export,node-name=disk,"
               "name=disk0,writable=on",
               "--chardev", "socket,id=qmp,path=%s,server=on,wait=off" % qmp,
               "--monitor", "chardev=qmp"]
        self.uri = "nbd+unix:///disk0?socket=" + self.sock
        self.logf = open(os.path.join(logdir, label + ".log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.logf,
                                     stderr=subprocess.STDOUT,
                                     preexec_fn=cb.pdeathsig)
        bl.wait_nbd(self.uri, self.proc)
        self.qmp = Qmp(qmp)

    def snapshot(self):
        """blockdev-snapshot-sync onto a new overlay; its round trip."""
        self.n += 1
        name = "%s-ov%d" % (self.label, self.n)
        path = os.path.join(self.shm, name + ".qcow2")
        _, t = self.qmp.call("blockdev-snapshot-sync",
                             {"node-name": self.top, "snapshot-file": path,
                              "snapshot-node-name": name, "format": "qcow2"})
        self.top = name
        self.files.append(path)
        return t

    def rss(self):
        return bl.proc_rss(self.proc.pid)

    def held(self):
        """VmRSS plus the allocated size of its files on /dev/shm."""
        return self.rss() + cb.allocated(self.files)

    def stop(self):
        with contextlib.suppress(OSError):
            self.qmp.close()
        cb.stop_proc(self.proc)
        self.logf.close()
        for f in self.files[1:]:
            with contextlib.suppress(OSError):
                os.unlink(f)


# ---------------------------------------------------------------- helpers

def randwrite(uri, nbytes, out, seed, cpu=None):
    """fio: nbytes of random 4 KiB writes into uri, each block once, with
    a given seed (the same offsets and data for the same seed)."""
    [(moved, _, _)] = bl.fio_exec(
        ["--name=w", "--uri=" + uri, "--randseed=%d" % seed],
        dict(rw="randwrite", bs="4k", iodepth=16, io_size=nbytes,
             end_fsync=1), out, cpu, None, timeout=600)
    if moved != nbytes:
        raise RuntimeError("fio wrote %d bytes into %s, not %d" %
                           (moved, uri, nbytes))


def nbd_randwrite(uri, nbytes, seed):
    """nbytes of random 4 KiB writes into uri, each block once, over one
    NBD connection with 32 in flight, then a flush: the offsets and the
    data (32 random blocks, taken in turn) are the same for the same
    seed.  Cheaper than starting fio, for the many write sets of
    bench_layers."""
    import random
    rnd = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    pages = h.get_size() // 4096
    bufs = [nbd.Buffer.from_bytearray(bytearray(rnd.randbytes(4096)))
            for _ in range(32)]
    pending = []
    for i, page in enumerate(rnd.sample(range(pages), nbytes // 4096)):
        while len(pending) >= 32:
            h.poll(-1)
            pending = [c for c in pending if not h.aio_command_completed(c)]
        pending.append(h.aio_pwrite(bufs[i % 32], page * 4096))
    while pending:
        h.poll(-1)
        pending = [c for c in pending if not h.aio_command_completed(c)]
    h.flush()
    h.shutdown()


def nbd_random_writes(h, n, size, rnd):
    buf = os.urandom(4096)
    for _ in range(n):
        h.pwrite(buf, rnd.randrange(size // 4096) * 4096)


def background_writes(uri, out):
    """fio writing random 4 KiB blocks into uri until stopped."""
    cmd = ["fio", "--ioengine=nbd", "--name=bg", "--uri=" + uri,
           "--rw=randwrite", "--bs=4k", "--iodepth=16", "--time_based",
           "--runtime=600", "--output-format=json", "--output=" + out]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    bl.wait_nbd(uri)
    time.sleep(0.3)             # fio is connected and writing
    return proc


def stop_fio(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def copy_raw(img, shm):
    raw = os.path.join(shm, "disk.raw")
    if os.path.exists(raw):
        os.unlink(raw)
    subprocess.run(["cp", "--sparse=always", img, raw], check=True)
    return raw


# ---------------------------------------------------------------- parts

def bench_calls(servers, args, img, shm, work, out, result):
    """Round trips of control calls beside qsd's QMP calls."""
    n = args.snapshots
    s, ctl = start_memblock(servers, "calls", ["name=disk0:file=" + img],
                            ["max-devices=%d" % (2 * n + 8)])
    qsd = Qsd(servers, "qsd-calls", copy_raw(img, shm), shm, work)
    res = result["calls"] = {k: [] for k in (
        "floor", "snapshot", "rollback", "qsd_floor", "qsd_snapshot",
        "snapshot_busy", "qsd_snapshot_busy")}
    try:
        def rotate(i, a, b):
            for f in ((a, b) if i % 2 == 0 else (b, a)):
                f()
        for i in range(n):
            rotate(i, lambda: res["floor"].append(ctl.call("job_list")[1]),
                   lambda: res["qsd_floor"].append(
                       qsd.qmp.call("query-version")[1]))
        for i in range(n):
            rotate(i, lambda: res["snapshot"].append(
                       ctl.call("snapshot", {"device": "disk0",
                                             "name": "s%d" % (i + 1)})[1]),
                   lambda: res["qsd_snapshot"].append(qsd.snapshot()))
        bl.log("calls: job_list %.3f ms, snapshot %.3f ms; qsd "
               "query-version %.3f ms, blockdev-snapshot-sync %.3f ms "
               "(medians of %d)" %
               (tuple(1000 * bl.median(res[k]) for k in
                      ("floor", "snapshot", "qsd_floor", "qsd_snapshot"))
                + (n,)))
        # Rollbacks to the newest snapshot, after a few writes each.
        import random
        rnd = random.Random(7)
        h = nbd.NBD()
        h.connect_uri(s.export_uri("disk0"))
        size = h.get_size()
        for i in range(n):
            nbd_random_writes(h, ROLLBACK_WRITES, size, rnd)
            h.flush()
            res["rollback"].append(ctl.call(
                "rollback", {"device": "disk0", "snapshot": "s%d" % n})[1])
        h.shutdown()
        del h
        bl.log("calls: rollback after %d writes %.3f ms" %
               (ROLLBACK_WRITES, 1000 * bl.median(res["rollback"])))
        # Snapshots while fio writes into each device.
        for key, uri, snap in (
                ("snapshot_busy", s.export_uri("disk0"),
                 lambda i: ctl.call("snapshot", {
                     "device": "disk0", "name": "b%d" % (i + 1)})[1]),
                ("qsd_snapshot_busy", qsd.uri, lambda i: qsd.snapshot())):
            fio = background_writes(uri, out)
            try:
                for i in range(n):
                    res[key].append(snap(i))
                    time.sleep(0.01)
            finally:
                stop_fio(fio)
        bl.log("calls: under fio writes, snapshot %.3f ms, qsd %.3f ms" %
               (1000 * bl.median(res["snapshot_busy"]),
                1000 * bl.median(res["qsd_snapshot_busy"])))
        if not s.alive() or qsd.proc.poll() is not None:
            raise RuntimeError("a server died")
    finally:
        ctl.close()
        servers.stop(s)
        qsd.stop()
    bl.write_json(args.out, result)


def bench_memory(servers, args, img, shm, work, out, result):
    """Memory growth after a snapshot and --write bytes of 4 KiB writes."""
    w = args.write
    mem = result["memory"] = {"written": w}
    s, ctl = start_memblock(servers, "memory", ["name=disk0:file=" + img])
    try:
        uri = s.export_uri("disk0")
        cb.warm([uri])
        ctl.call("snapshot", {"device": "disk0", "name": "before"})
        rss0 = ctl.idle_rss(s)
        d0 = ctl.device("disk0")
        t0 = time.monotonic()
        randwrite(uri, w, out, 1)
        wt = time.monotonic() - t0
        rss1 = ctl.idle_rss(s)
        d1 = ctl.device("disk0")
        snap = ctl.device("before")
        _, rb = ctl.call("rollback", {"device": "disk0",
                                      "snapshot": "before"})
        rss2 = ctl.idle_rss(s)
        mem["memblock"] = {
            "rss_before": rss0, "rss_after": rss1, "growth": rss1 - rss0,
            "write_s": wt,
            "allocated_before": d0["allocated"], "data_before": d0["data"],
            "allocated_after": d1["allocated"], "data_after": d1["data"],
            "snapshot_data": snap["data"], "rollback_s": rb,
            "rss_after_rollback": rss2}
        bl.log("memory: memblock RSS grew %.1f MiB for %.1f MiB written "
               "(%.3f); store: disk0 allocated %.1f MiB, data %.1f MiB; "
               "rollback %.3f ms, RSS then %.1f MiB over the start" %
               ((rss1 - rss0) / bl.MiB, w / bl.MiB, (rss1 - rss0) / w,
                d1["allocated"] / bl.MiB, d1["data"] / bl.MiB, 1000 * rb,
                (rss2 - rss0) / bl.MiB))
    finally:
        ctl.close()
        servers.stop(s)
    bl.write_json(args.out, result)

    qsd = Qsd(servers, "qsd-memory", copy_raw(img, shm), shm, work)
    try:
        cb.warm([qsd.uri])
        qsd.snapshot()
        rss0, files0 = qsd.rss(), cb.allocated(qsd.files)
        t0 = time.monotonic()
        randwrite(qsd.uri, w, out, 1)
        wt = time.monotonic() - t0
        rss1, files1 = qsd.rss(), cb.allocated(qsd.files)
        mem["qsd"] = {"rss_before": rss0, "rss_after": rss1,
                      "files_before": files0, "files_after": files1,
                      "overlay": cb.allocated(qsd.files[-1:]),
                      "growth": rss1 + files1 - rss0 - files0,
                      "write_s": wt}
        bl.log("memory: qsd grew %.1f MiB (RSS %.1f, /dev/shm %.1f) for "
               "%.1f MiB written (%.3f)" %
               (mem["qsd"]["growth"] / bl.MiB, (rss1 - rss0) / bl.MiB,
                (files1 - files0) / bl.MiB, w / bl.MiB,
                mem["qsd"]["growth"] / w))
        if qsd.proc.poll() is not None:
            raise RuntimeError("qemu-storage-daemon died")
    finally:
        qsd.stop()
    bl.write_json(args.out, result)


def bench_layers(servers, args, img, out, result):
    """fio 4 KiB random read through --layers snapshots and through none."""
    lay = result["layers"] = {"layers": args.layers,
                              "percent": args.layer_percent,
                              "runtime": args.runtime, "rounds": args.rounds,
                              "read": {}}
    s, ctl = start_memblock(servers, "layers",
                            ["name=flat:file=" + img,
                             "name=deep:file=" + img],
                            ["max-devices=%d" % (args.layers + 8)])
    try:
        flat, deep = s.export_uri("flat"), s.export_uri("deep")
        size = ctl.device("flat")["size"]
        nbytes = size * args.layer_percent // 100 // 4096 * 4096
        t0 = time.monotonic()
        for i in range(args.layers):
            ctl.call("snapshot", {"device": "deep", "name": "deep@%d" % i})
            nbd_randwrite(deep, nbytes, 100 + i)
            nbd_randwrite(flat, nbytes, 100 + i)
        lay["written_per_layer"] = nbytes
        lay["devices"] = {d["name"]: {"allocated": d["allocated"],
                                      "data": d["data"]}
                          for d in ctl.call("device_list")[0]}
        bl.log("layers: %d snapshots, %.1f MiB written after each, in %.1f s"
               % (args.layers, nbytes / bl.MiB, time.monotonic() - t0))
        srv_cpu, cli_cpu = bl.cpus()
        s.set_cpus(str(srv_cpu))
        lay["server_cpu"], lay["client_cpu"] = srv_cpu, cli_cpu
        targets = (("flat", flat), ("deep", deep))
        opts = dict(rw="randread", bs="4k", iodepth=16, numjobs=1)
        for rnd in range(args.rounds):
            for label, uri in targets[rnd % 2:] + targets[:rnd % 2]:
                [(_, mibs, iops)] = cb.fio([uri], opts, out, cli_cpu,
                                           args.runtime)
                lay["read"].setdefault(label, []).append(
                    {"mibs": mibs, "iops": iops, "round": rnd})
                bl.log("layers read round %d/%d %-5s %8.1f MiB/s" %
                       (rnd + 1, args.rounds, label, mibs))
        if not s.alive():
            raise RuntimeError("layers server died: " + s.read_log())
    finally:
        ctl.close()
        servers.stop(s)
    bl.write_json(args.out, result)


def bench_save(servers, args, img, out, result):
    """save of a snapshot beside nbdcopy of it; writes during saves."""
    sv = result["save"] = {"rounds": args.save_rounds, "save": [],
                           "nbdcopy": [], "busy_runtime": args.busy_runtime,
                           "busy": {"with": [], "without": []}}
    dest = os.path.join(args.save_dir, SAVE_PREFIX + str(os.getpid()))
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    s, ctl = start_memblock(servers, "save", ["name=disk0:file=" + img])
    try:
        ctl.call("snapshot", {"device": "disk0", "name": "snap"})
        snap_uri = s.export_uri("snap")
        saved = os.path.join(dest, "save.raw")
        copied = os.path.join(dest, "copy.raw")

        def do_save(path=saved):
            t0 = time.monotonic()
            job = ctl.call("save", {"device": "snap", "path": path,
                                    "overwrite": True})[0]["job"]
            j = ctl.call("job_wait", {"job": job})[0]
            if j["state"] != "done":
                raise RuntimeError("save: %s" % j)
            return time.monotonic() - t0

        def do_copy():
            t0 = time.monotonic()
            subprocess.run(["nbdcopy", "--flush", snap_uri, copied],
                           check=True, timeout=600)
            return time.monotonic() - t0
        for rnd in range(args.save_rounds):
            for kind in (("save", "nbdcopy") if rnd % 2 == 0
                         else ("nbdcopy", "save")):
                path = saved if kind == "save" else copied
                if os.path.exists(path):
                    os.unlink(path)
                t = do_save() if kind == "save" else do_copy()
                smp = {"s": t, "round": rnd, "allocated": cb.allocated([path])}
                if rnd == 0:
                    smp["same_as_image"] = filecmp.cmp(img, path,
                                                       shallow=False)
                    if not smp["same_as_image"]:
                        raise RuntimeError("%s differs from the image" % path)
                sv[kind].append(smp)
                bl.log("save round %d/%d %-7s %.3f s" %
                       (rnd + 1, args.save_rounds, kind, t))
        for f in (saved, copied):
            if os.path.exists(f):
                os.unlink(f)
        bl.write_json(args.out, result)

        # 4 KiB random writes into disk0 with saves running and without.
        uri = s.export_uri("disk0")
        opts = dict(rw="randwrite", bs="4k", iodepth=16, numjobs=1)
        for rnd in range(args.save_rounds):
            for kind in (("with", "without") if rnd % 2 == 0
                         else ("without", "with")):
                stop = threading.Event()
                saves, errors = [], []

                def saver():
                    try:
                        while not stop.is_set():
                            saves.append(do_save())
                    except Exception as e:      # reported below
                        errors.append(e)
                th = None
                if kind == "with":
                    th = threading.Thread(target=saver)
                    th.start()
                    time.sleep(0.05)
                try:
                    [(_, mibs, iops)] = cb.fio([uri], opts, out, None,
                                               args.busy_runtime)
                finally:
                    if th:
                        stop.set()
                        th.join()
                if errors:
                    raise errors[0]
                smp = {"mibs": mibs, "iops": iops, "round": rnd}
                if kind == "with":
                    smp["saves"] = len(saves)
                sv["busy"][kind].append(smp)
                bl.log("writes round %d/%d %-7s saves %8.1f MiB/s%s" %
                       (rnd + 1, args.save_rounds, kind, mibs,
                        " (%d saves)" % len(saves) if th else ""))
        if not s.alive():
            raise RuntimeError("save server died: " + s.read_log())
    finally:
        ctl.close()
        servers.stop(s)
        shutil.rmtree(dest, ignore_errors=True)
    bl.write_json(args.out, result)


CONTROL_WORKLOADS = (("4k-randread", dict(rw="randread", bs="4k",
                                          iodepth=16, numjobs=1)),
                     ("4k-randwrite", dict(rw="randwrite", bs="4k",
                                           iodepth=16, numjobs=1)))


def bench_control(servers, args, img, out, result):
    """fio over NBD with control= set and without."""
    ct = result["control"] = {"rounds": args.rounds, "runtime": args.runtime,
                              "workloads": [w for w, _ in CONTROL_WORKLOADS],
                              "samples": {}}
    srv_cpu, cli_cpu = bl.cpus()
    ct["server_cpu"], ct["client_cpu"] = srv_cpu, cli_cpu
    on, ctl = start_memblock(servers, "control-on",
                             ["name=disk0:file=" + img])
    off, _ = start_memblock(servers, "control-off",
                            ["name=disk0:file=" + img], control=False)
    try:
        for s in (on, off):
            s.set_cpus(str(srv_cpu))
        pair = (("on", on), ("off", off))
        for rnd in range(args.rounds):
            for w, opts in CONTROL_WORKLOADS:
                for label, s in pair[rnd % 2:] + pair[:rnd % 2]:
                    smp = bl.fio_measure(s, opts, out, cli_cpu, args.runtime)
                    smp["round"] = rnd
                    ct["samples"].setdefault(w, {}).setdefault(
                        label, []).append(smp)
                    bl.log("control round %d/%d %-12s %-3s %8.1f MiB/s" %
                           (rnd + 1, args.rounds, w, label, smp["mibs"]))
            bl.write_json(args.out, result)
    finally:
        ctl.close()
        servers.stop(on)
        servers.stop(off)


PARTS = ("calls", "memory", "layers", "save", "control")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", default=bl.IMAGE_SIZE)
    ap.add_argument("--data", default=bl.IMAGE_DATA,
                    help="allocated size of the files to put in the image")
    ap.add_argument("--snapshots", type=int, default=30,
                    help="timed calls of each kind")
    ap.add_argument("--write", default="256M",
                    help="bytes written after the snapshot (memory)")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--layer-percent", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5, help="fio rounds")
    ap.add_argument("--runtime", type=float, default=3.0,
                    help="seconds per fio run")
    ap.add_argument("--save-rounds", type=int, default=3)
    ap.add_argument("--busy-runtime", type=float, default=3.0,
                    help="seconds per fio run during saves")
    ap.add_argument("--save-dir", default="/var/tmp")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parts = args.parts.split(",")
    args.write = bl.parse_size(args.write)
    bl.die_on_signals()

    size = bl.parse_size(args.image_size)
    work = bl.image_dir(args.out)
    os.makedirs(work, exist_ok=True)
    fio_out = os.path.join(work, "snapshot-fio.json")
    img, desc = bl.golden_image(work, size, bl.parse_size(args.data))
    result = {"image": desc, "snapshots": args.snapshots,
              "save_dir": args.save_dir, "rollback_writes": ROLLBACK_WRITES}
    with contextlib.ExitStack() as stack:
        shm = stack.enter_context(cb.shm_dir())
        servers = stack.enter_context(bl.Servers(work))
        if "calls" in parts:
            bench_calls(servers, args, img, shm, work, fio_out, result)
        if "memory" in parts:
            bench_memory(servers, args, img, shm, work, fio_out, result)
        if "layers" in parts:
            bench_layers(servers, args, img, fio_out, result)
        if "save" in parts:
            bench_save(servers, args, img, fio_out, result)
        if "control" in parts:
            bench_control(servers, args, img, fio_out, result)
    bl.write_json(args.out, result)


if __name__ == "__main__":
    main()
