#!/usr/bin/python3
# memblock benchmarks: a golden image and writable clones of it, memblock
# clones beside memblock full copies and qemu-storage-daemon with qcow2
# overlays.
#
# The image: an ext4 file system (mkfs.ext4 -d) holding real files from
# /usr/share and /usr/bin (up to --data bytes of them), kept in the work
# directory between runs (benchlib.golden_image; compress-bench.py uses
# the same image).
#
# Measures, in one run:
#   set-ups  three ways of serving N writable copies of the image, one at
#            a time:
#              clones  nbdkit memblock name=golden:ro:file=IMG
#                      name=c1:from=golden ... name=cN:from=golden
#              copies  nbdkit memblock name=c1:size=S ... name=cN:size=S,
#                      then nbdcopy IMG into each, one after the other
#              qsd     the image copied to /dev/shm (cp --sparse=always),
#                      N qcow2 overlays there backed by it, one
#                      qemu-storage-daemon exporting them over NBD
#            Set-up time runs from the first command until an NBD handshake
#            with the last export succeeds (copies included).  Memory after
#            the set-up, then fio writes --write bytes of random 4 KiB blocks
#            into every copy and the memory growth is measured.  Memory:
#            memblock, nbdkit's VmRSS minus the VmRSS of an empty start
#            with the same number of devices; qsd, its VmRSS plus the
#            allocated size of its /dev/shm files.  Each memory reading
#            follows a warm-up (reads over one connection per export) so
#            that per-connection costs are in the baseline.
#   read     fio 4 KiB random read, one connection, of a written clone and
#            of the golden on the clones' server, server pinned to one CPU
#            and fio to the other, rounds in rotating order.
#   load     nbdkit start with name=g:ro:file=IMG until it answers, an empty
#            start with a device of the same size, and nbdcopy of the image
#            into a running memblock device; rounds in rotating order,
#            unpinned.
# Writes the samples as JSON; report.py prints the table.

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


SHM_PREFIX = "memblock-clone-bench."


# ---------------------------------------------------------------- helpers

def warm(uris):
    """One connection per export, 64 reads of 4 KiB spread over it with 16
    in flight: the server's per-connection threads and allocator arenas
    exist before a memory baseline is read."""
    for uri in uris:
        h = nbd.NBD()
        h.connect_uri(uri)
        size = h.get_size()
        bufs = [nbd.Buffer(4096) for _ in range(16)]
        pending = []
        for i in range(64):
            while len(pending) >= 16:
                h.poll(-1)
                pending = [c for c in pending
                           if not h.aio_command_completed(c)]
            off = (size // 4096 * i // 64) * 4096
            pending.append(h.aio_pread(bufs[i % 16], off))
        while pending:
            h.poll(-1)
            pending = [c for c in pending if not h.aio_command_completed(c)]
        h.shutdown()
        del h


def nbdcopy(src, uri):
    subprocess.run(["nbdcopy", src, uri], check=True, timeout=600)


def allocated(paths):
    return sum(os.stat(p).st_blocks * 512 for p in paths)


def fio(uris, opts, out, cpu=None, runtime=None):
    """Run fio once with one job (one NBD connection) per URI, all at the
    same time; returns [(bytes moved, MiB/s, IOPS)] per job.  fio's
    buffers hold random data (not refilled), so nothing compresses."""
    args = []
    for i, uri in enumerate(uris):
        args += ["--name=j%d" % i, "--uri=" + uri, "--randseed=%d" % (1000 + i)]
    res = bl.fio_exec(args, opts, out, cpu, runtime, timeout=600)
    if len(res) != len(uris):
        raise RuntimeError("fio reported %d jobs, not %d" %
                           (len(res), len(uris)))
    return res


def write_all(uris, nbytes, out):
    """fio: nbytes of random 4 KiB writes into every export, all exports at
    once (16 in flight each, a flush at the end).  Returns wall s."""
    t0 = time.monotonic()
    res = fio(uris, dict(rw="randwrite", bs="4k", iodepth=16, io_size=nbytes,
                         end_fsync=1), out)
    t = time.monotonic() - t0
    for uri, (moved, _, _) in zip(uris, res):
        if moved != nbytes:
            raise RuntimeError("fio wrote %d bytes into %s, not %d" %
                               (moved, uri, nbytes))
    return t


def pdeathsig():
    """preexec_fn: the child gets SIGTERM when this process dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_proc(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def shm_dir():
    """A directory on /dev/shm, removed on the way out.  Leftovers of
    earlier runs that died are removed first."""
    for name in os.listdir("/dev/shm"):
        if name.startswith(SHM_PREFIX):
            try:
                pid = int(name[len(SHM_PREFIX):])
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                shutil.rmtree(os.path.join("/dev/shm", name),
                              ignore_errors=True)
            except PermissionError:
                pass
    d = os.path.join("/dev/shm", SHM_PREFIX + str(os.getpid()))
    shutil.rmtree(d, ignore_errors=True)
    os.mkdir(d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def memblock_setup(servers, label, args, names, base_rss, copy_from=None):
    """Start nbdkit memblock with args; with copy_from, nbdcopy that file
    into each of names.  Returns (server, export URIs, result dict)."""
    s = servers.start(label, [bl.MEMBLOCK_SO] + args)
    uris = [s.export_uri(n) for n in names]
    bl.wait_nbd(uris[-1], s.proc)
    if copy_from:
        for uri in uris:
            nbdcopy(copy_from, uri)
    t = time.monotonic() - s.started
    warm(uris)
    rss = s.rss()
    r = {"setup_s": t, "rss_setup": rss, "files_setup": 0,
         "mem_setup": rss - base_rss}
    bl.log("%s: set-up %.2f s, RSS %.1f MiB (%.1f MiB over an empty start)" %
           (label, t, rss / bl.MiB, r["mem_setup"] / bl.MiB))
    return s, uris, r


def after_writes(label, r, uris, nbytes, out, rss_fn, files_fn, base):
    r["write_s"] = write_all(uris, nbytes, out)
    r["written"] = nbytes * len(uris)
    r["rss_written"] = rss_fn()
    r["files_written"] = files_fn()
    r["mem_written"] = r["rss_written"] + r["files_written"] - base
    r["growth"] = r["mem_written"] - r["mem_setup"]
    bl.log("%s: %d x %.0f MiB written in %.2f s; memory grew %.1f MiB "
           "(%.3f x written)" %
           (label, len(uris), nbytes / bl.MiB, r["write_s"],
            r["growth"] / bl.MiB, r["growth"] / r["written"]))


# ---------------------------------------------------------------- parts

def empty_baseline(servers, n, size):
    """VmRSS of nbdkit memblock with n+1 empty devices, after a warm-up."""
    names = ["golden"] + ["c%d" % i for i in range(1, n + 1)]
    s = servers.start("empty", [bl.MEMBLOCK_SO,
                                "name=golden:ro:size=%d" % size] +
                      ["name=%s:size=%d" % (x, size) for x in names[1:]])
    uris = [s.export_uri(x) for x in names]
    bl.wait_nbd(uris[-1], s.proc)
    warm(uris)
    rss = s.rss()
    servers.stop(s)
    bl.log("empty start with %d devices: RSS %.1f MiB" % (n + 1, rss / bl.MiB))
    return rss


def bench_clones(servers, args, img, base, out, result):
    names = ["c%d" % i for i in range(1, args.clones + 1)]
    s, uris, r = memblock_setup(
        servers, "clones", ["name=golden:ro:file=" + img] +
        ["name=%s:from=golden" % x for x in names], names, base)
    after_writes("clones", r, uris, args.write, out, s.rss, lambda: 0, base)
    result["setups"]["clones"] = r
    bl.write_json(args.out, result)

    # Random reads: a written clone beside the golden, same server.
    srv_cpu, cli_cpu = bl.cpus()
    s.set_cpus(str(srv_cpu))
    targets = (("golden", s.export_uri("golden")), ("clone", uris[0]))
    opts = dict(rw="randread", bs="4k", iodepth=16, numjobs=1)
    for rnd in range(args.rounds):
        order = targets[rnd % 2:] + targets[:rnd % 2]
        for label, uri in order:
            c0 = s.cpu_seconds()
            [(_, mibs, iops)] = fio([uri], opts, out, cli_cpu,
                                    args.read_runtime)
            smp = {"mibs": mibs, "iops": iops, "round": rnd,
                   "cpu_s": s.cpu_seconds() - c0}
            result["read"].setdefault(label, []).append(smp)
            bl.log("read round %d/%d %-6s %8.1f MiB/s %9.0f IOPS" %
                   (rnd + 1, args.rounds, label, mibs, iops))
        bl.write_json(args.out, result)
    if not s.alive():
        raise RuntimeError("clones server died: " + s.read_log())
    result["clones_log"] = s.read_log()[-1000:]
    servers.stop(s)


def bench_copies(servers, args, img, size, base, out, result):
    names = ["c%d" % i for i in range(1, args.clones + 1)]
    s, uris, r = memblock_setup(
        servers, "copies", ["name=%s:size=%d" % (x, size) for x in names],
        names, base, copy_from=img)
    after_writes("copies", r, uris, args.write, out, s.rss, lambda: 0, base)
    result["setups"]["copies"] = r
    bl.write_json(args.out, result)
    servers.stop(s)


def bench_qsd(servers, args, img, shm, out, result):
    names = ["c%d" % i for i in range(1, args.clones + 1)]
    sock = os.path.join(servers.sockdir, "qsd.sock")
    golden = os.path.join(shm, "golden.raw")
    overlays = [os.path.join(shm, x + ".qcow2") for x in names]
    cmd = ["qemu-storage-daemon",
           "--blockdev", "driver=file,node-name=golden-file,filename=%s,"
           "read-only=on" % golden,
           "--blockdev", "driver=raw,node-name=golden,file=golden-file,"
           "read-only=on",
           "--nbd-server", "addr.type=unix,addr.path=" + sock]
    for x, ov in zip(names, overlays):
        cmd += ["--blockdev", "driver=file,node-name=%s-file,filename=%s" %
                (x, ov),
                "--blockdev", "driver=qcow2,node-name=%s,file=%s-file,"
                "backing=golden" % (x, x),
                "--export", "type=nbd,id=%s-export,node-name=%s,name=%s,"
                "writable=on" % (x, x, x)]
    uris = ["nbd+unix:///%s?socket=%s" % (x, sock) for x in names]
    logf = os.path.join(os.path.dirname(os.path.abspath(args.out)), "clone",
                        "qsd.log")

    t0 = time.monotonic()
    subprocess.run(["cp", "--sparse=always", img, golden], check=True)
    for ov in overlays:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                        golden, "-F", "raw", ov], check=True)
    with open(logf, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT,
                                preexec_fn=pdeathsig)
    try:
        bl.wait_nbd(uris[-1], proc)
        t = time.monotonic() - t0
        warm(uris)
        files = [golden] + overlays
        rss = bl.proc_rss(proc.pid)
        r = {"setup_s": t, "rss_setup": rss, "files_setup": allocated(files),
             "mem_setup": rss + allocated(files)}
        bl.log("qsd: set-up %.2f s, RSS %.1f MiB + /dev/shm %.1f MiB" %
               (t, rss / bl.MiB, r["files_setup"] / bl.MiB))
        after_writes("qsd", r, uris, args.write, out,
                     lambda: bl.proc_rss(proc.pid), lambda: allocated(files),
                     0)
        if proc.poll() is not None:
            raise RuntimeError("qemu-storage-daemon died")
        result["setups"]["qsd"] = r
        bl.write_json(args.out, result)
    finally:
        stop_proc(proc)
        for f in [golden] + overlays:
            if os.path.exists(f):
                os.unlink(f)


def bench_load(servers, args, img, size, result):
    kinds = ("empty", "file", "copy")
    for rnd in range(args.load_rounds):
        for kind in kinds[rnd % 3:] + kinds[:rnd % 3]:
            if kind == "empty":
                s = servers.start("load-empty", [bl.MEMBLOCK_SO,
                                                 "name=g:ro:size=%d" % size])
                t = bl.wait_nbd(s.export_uri("g"), s.proc) - s.started
                smp = {"s": t}
            elif kind == "file":
                s = servers.start("load-file", [bl.MEMBLOCK_SO,
                                                "name=g:ro:file=" + img])
                t = bl.wait_nbd(s.export_uri("g"), s.proc) - s.started
                smp = {"s": t, "rss": s.rss()}
            else:
                s = servers.start("load-copy", [bl.MEMBLOCK_SO,
                                                "name=d:size=%d" % size])
                uri = s.export_uri("d")
                bl.wait_nbd(uri, s.proc)
                t0 = time.monotonic()
                nbdcopy(img, uri)
                t = time.monotonic() - t0
                smp = {"s": t, "rss": s.rss()}
            servers.stop(s)
            smp["round"] = rnd
            result["load"].setdefault(kind, []).append(smp)
            bl.log("load round %d/%d %-5s %.3f s" %
                   (rnd + 1, args.load_rounds, kind, t))
        bl.write_json(args.out, result)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", default=bl.IMAGE_SIZE)
    ap.add_argument("--data", default=bl.IMAGE_DATA,
                    help="allocated size of the files to put in the image")
    ap.add_argument("--clones", type=int, default=8)
    ap.add_argument("--write", default="32M", help="bytes written per clone")
    ap.add_argument("--read-runtime", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3, help="read rounds")
    ap.add_argument("--load-rounds", type=int, default=3)
    ap.add_argument("--parts", default="clones,copies,qsd,load",
                    help="comma list of the parts to run (default all)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parts = args.parts.split(",")
    args.write = bl.parse_size(args.write)
    bl.die_on_signals()

    size = bl.parse_size(args.image_size)
    work = bl.image_dir(args.out)
    os.makedirs(work, exist_ok=True)
    fio_out = os.path.join(work, "fio.json")
    img, desc = bl.golden_image(work, size, bl.parse_size(args.data))
    srv_cpu, cli_cpu = bl.cpus()
    result = {"image": desc, "clones": args.clones, "write": args.write,
              "read_runtime": args.read_runtime, "rounds": args.rounds,
              "load_rounds": args.load_rounds, "server_cpu": srv_cpu,
              "client_cpu": cli_cpu, "setups": {}, "read": {}, "load": {}}
    with contextlib.ExitStack() as stack:
        shm = stack.enter_context(shm_dir())
        servers = stack.enter_context(bl.Servers(work))
        base = empty_baseline(servers, args.clones, size)
        result["empty_rss"] = base
        if "clones" in parts:
            bench_clones(servers, args, img, base, fio_out, result)
        if "copies" in parts:
            bench_copies(servers, args, img, size, base, fio_out, result)
        if "qsd" in parts:
            bench_qsd(servers, args, img, shm, fio_out, result)
        if "load" in parts:
            bench_load(servers, args, img, size, result)
    bl.write_json(args.out, result)


if __name__ == "__main__":
    main()
