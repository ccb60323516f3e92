#!/usr/bin/python3
# memblock benchmarks: loading golden images as they ship (qcow2, and
# qcow2 compressed with qemu-img convert -c) into memblock, beside the
# routes a user has without :format=.
#
# The image: the golden ext4 image of clone-bench.py (benchlib.golden_image,
# kept in the results directory's clone/), converted once to qcow2 and to
# compressed qcow2 (zlib, qemu's default), kept beside it.  All three
# files are read once before the rounds so that every route reads them
# from the page cache.
#
# Routes, per source format (qcow2, qcow2 -c), rounds in rotated order:
#   memblock  nbdkit -U S -P P memblock name=g:ro:format=qcow2:file=SRC:
#             from nbdkit's start until its pidfile appears (the device is
#             loaded and served).  The plugin's own "loaded ... in N s"
#             (nbdkit -v) is kept too.
#   shm       (a) qemu-img convert -f qcow2 -O raw SRC /dev/shm/.../x.raw,
#             then nbdkit memblock name=g:ro:file=x.raw until its pidfile;
#             the raw file is removed after that (as a user would).
#   convert   (b) nbdkit memblock name=g:size=S (writable, the image's
#             size) until its pidfile, then qemu-img convert -n -f qcow2
#             -O raw SRC nbd+unix:///g?socket=S until it exits.
#   nbdcopy   (c) the same device, then nbdcopy -- [ qemu-nbd -r -f qcow2
#             SRC ] nbd+unix:///g?socket=S until it exits.
#   null      nbdcopy -- [ qemu-nbd -r -f qcow2 SRC ] null: : the floor of
#             decoding plus the socket, nothing stored.
# and once per round, where the time goes:
#   raw-null  nbdcopy -- [ qemu-nbd -r -f raw IMG ] null: : qemu-nbd and
#             the socket without decoding.
#   raw-file  nbdkit memblock name=g:ro:file=IMG until its pidfile: the
#             store filled with preads from the page cache, no socket.
#   check     qemu-img info --backing-chain and qemu-img check of each
#             source, what :format= runs before its first qemu-nbd.
#   empty     nbdkit memblock name=g:ro:size=S until its pidfile: start-up
#             cost and the VmRSS an empty start holds.
# Memory, as the kernel counts it: a sampler thread reads /proc/PID/status
# of every process of the route and their descendants (nbdkit, its
# qemu-nbd children, qemu-img, nbdcopy and its qemu-nbd) every few ms, and
# the allocated size of the /dev/shm file: per process name the largest
# VmHWM seen (summed over processes of that name), and the peak of the
# sum of VmRSS (less RssShmem, so that a /dev/shm page is counted once)
# over all processes plus the /dev/shm file, at one moment.  Memory held
# at the end: nbdkit's VmRSS once the route is over (no connection open,
# the /dev/shm file removed).  CPU: user + system seconds of all the
# route's processes (RUSAGE_CHILDREN; libnbd reaps the qemu-nbd it
# starts, so those count).
# Writes the samples as JSON; report.py prints the table and targets.

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

FORMATS = ("qcow2", "qcow2c")           # qcow2c: qemu-img convert -c
ROUTES = ("memblock", "shm", "convert", "nbdcopy", "null")
EXTRA = ("raw-null", "raw-file", "check", "empty")
SHM_PREFIX = "memblock-load-bench."
SAMPLE_S = 0.01


def rotate(xs, n):
    n %= len(xs)
    return list(xs[n:]) + list(xs[:n])


def cpu_children():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------- memory

def status(pid):
    """{field: kB} and the name from /proc/PID/status, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            text = f.read()
    except OSError:
        return None
    d = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k == "Name":
            d["Name"] = v.strip()
        elif k in ("VmRSS", "VmHWM", "RssShmem", "PPid"):
            d[k] = int(v.split()[0])
    return d if "VmRSS" in d else None


def descendants(pid):
    out = [pid]
    i = 0
    while i < len(out):
        p = out[i]
        i += 1
        try:
            for t in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


class Sampler:
    """Samples the memory of the processes under roots (pids added as
    they start) and of the files in shm_files, in a thread."""

    def __init__(self):
        self.roots = []
        self.shm_files = []
        self.hwm = {}           # pid -> (name, largest VmHWM kB)
        self.peak = 0           # bytes: sum of RSS - RssShmem + shm files
        self.peak_parts = {}
        self.shm_peak = 0
        self.samples = 0
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def add(self, pid):
        with self.lock:
            self.roots.append(pid)

    def add_shm(self, path):
        with self.lock:
            self.shm_files.append(path)

    def sample(self):
        with self.lock:
            roots, files = list(self.roots), list(self.shm_files)
        total, parts = 0, {}
        for root in roots:
            for pid in descendants(root):
                st = status(pid)
                if st is None:
                    continue
                name = st["Name"]
                old = self.hwm.get(pid, (name, 0))[1]
                self.hwm[pid] = (name, max(old, st.get("VmHWM", 0)))
                b = (st["VmRSS"] - st.get("RssShmem", 0)) * bl.KiB
                total += b
                parts[name] = parts.get(name, 0) + b
        shm = 0
        for f in files:
            try:
                shm += os.stat(f).st_blocks * 512
            except OSError:
                pass
        self.shm_peak = max(self.shm_peak, shm)
        total += shm
        if shm:
            parts["/dev/shm"] = shm
        if total > self.peak:
            self.peak, self.peak_parts = total, parts
        self.samples += 1

    def run(self):
        while not self.stop_ev.wait(SAMPLE_S):
            self.sample()

    def finish(self):
        self.sample()
        self.stop_ev.set()
        self.thread.join()
        names = {}
        for name, kb in self.hwm.values():
            n = names.setdefault(name, [0, 0])
            n[0] += kb * bl.KiB
            n[1] += 1
        return {"hwm": {k: v[0] for k, v in names.items()},
                "procs": {k: v[1] for k, v in names.items()},
                "peak": self.peak, "peak_parts": self.peak_parts,
                "shm_peak": self.shm_peak, "samples": self.samples}


# ---------------------------------------------------------------- nbdkit

class Nbdkit:
    """nbdkit -f memblock ARGS on a socket of its own; started() waits
    for its pidfile."""

    def __init__(self, sockdir, workdir, args, verbose=False):
        self.sock = os.path.join(sockdir, "g.sock")
        self.pidfile = os.path.join(sockdir, "g.pid")
        self.logfile = os.path.join(workdir, "load-nbdkit.log")
        for f in (self.sock, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)
        self.cmd = ["nbdkit", "-f", "--exit-with-parent"] + \
            (["-v"] if verbose else []) + \
            ["-U", self.sock, "-P", self.pidfile, bl.MEMBLOCK_SO] + args
        self.uri = "nbd+unix:///g?socket=" + self.sock
        self.t0 = time.monotonic()
        with open(self.logfile, "w") as lf:
            self.proc = subprocess.Popen(self.cmd, stdout=lf,
                                         stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait(self, timeout):
        """Seconds from the start until the pidfile appears."""
        deadline = self.t0 + timeout
        while not (os.path.exists(self.pidfile) and
                   os.path.getsize(self.pidfile) > 0):
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited %d: %s" %
                                   (" ".join(self.cmd), self.proc.returncode,
                                    self.log()[-1500:]))
            if time.monotonic() > deadline:
                raise RuntimeError("%s: no pidfile after %d s" %
                                   (" ".join(self.cmd), timeout))
            time.sleep(0.002)
        return time.monotonic() - self.t0

    def log(self):
        try:
            with open(self.logfile) as f:
                return f.read()
        except OSError:
            return ""

    def loaded_s(self):
        """The plugin's "loaded ... in N s", if nbdkit -v said it."""
        m = re.search(r"loaded .* in ([0-9.]+) s", self.log())
        return float(m.group(1)) if m else None

    def children(self):
        return [p for p in descendants(self.pid) if p != self.pid]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.sock, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)


def run(cmd, sampler, timeout):
    """Run cmd with its pid sampled; raises on failure."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    sampler.add(p.pid)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise RuntimeError("%s: timed out" % " ".join(cmd))
    if p.returncode != 0:
        raise RuntimeError("%s exited %d: %s" % (" ".join(cmd), p.returncode,
                                                 err[-1500:]))


def verify(uri, img):
    """The device's bytes are the image's (nbdcopy compares nothing: cmp)."""
    r = subprocess.run("nbdcopy '%s' - | cmp - '%s'" % (uri, img), shell=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("%s differs from %s: %s" % (uri, img, r.stdout))


# ---------------------------------------------------------------- routes

def route(kind, fmt, ctx):
    """Run one route once; returns its sample."""
    src = ctx["sources"].get(fmt)
    size, sockdir, work = ctx["size"], ctx["sockdir"], ctx["work"]
    timeout = ctx["timeout"]
    qfmt = "raw" if kind == "raw-null" else "qcow2"
    sampler = Sampler()
    c0 = cpu_children()
    t0 = time.monotonic()
    srv = None
    smp = {}
    shm_file = None
    try:
        if kind in ("memblock", "raw-file", "empty"):
            arg = {"memblock": "name=g:ro:format=qcow2:file=%s" % src,
                   "raw-file": "name=g:ro:file=%s" % ctx["img"],
                   "empty": "name=g:ro:size=%d" % size}[kind]
            srv = Nbdkit(sockdir, work, [arg], verbose=kind == "memblock")
            sampler.add(srv.pid)
            smp["s"] = srv.wait(timeout)
            if kind == "memblock":
                smp["loaded_s"] = srv.loaded_s()
        elif kind == "shm":
            shm_file = os.path.join(ctx["shm"], "x.raw")
            sampler.add_shm(shm_file)
            run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", src,
                 shm_file], sampler, timeout)
            smp["convert_s"] = time.monotonic() - t0
            srv = Nbdkit(sockdir, work, ["name=g:ro:file=" + shm_file])
            sampler.add(srv.pid)
            srv.wait(timeout)
            smp["s"] = time.monotonic() - t0
            smp["shm_at_ready"] = os.stat(shm_file).st_blocks * 512
        elif kind in ("convert", "nbdcopy"):
            srv = Nbdkit(sockdir, work, ["name=g:size=%d" % size])
            sampler.add(srv.pid)
            srv.wait(timeout)
            t1 = time.monotonic()
            if kind == "convert":
                cmd = ["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw",
                       src, srv.uri]
            else:
                cmd = ["nbdcopy", "--", "[", "qemu-nbd", "-r", "-f", "qcow2",
                       src, "]", srv.uri]
            run(cmd, sampler, timeout)
            smp["s"] = time.monotonic() - t0
            smp["copy_s"] = time.monotonic() - t1
        elif kind in ("null", "raw-null"):
            f = ctx["img"] if kind == "raw-null" else src
            run(["nbdcopy", "--", "[", "qemu-nbd", "-r", "-f", qfmt, f, "]",
                 "null:"], sampler, timeout)
            smp["s"] = time.monotonic() - t0
        elif kind == "check":
            run(["qemu-img", "info", "--output=json", "--backing-chain", "-f",
                 "qcow2", src], sampler, timeout)
            run(["qemu-img", "check", "-f", "qcow2", src], sampler, timeout)
            smp["s"] = time.monotonic() - t0
        else:
            raise ValueError(kind)
        if srv is not None:
            if shm_file:
                os.unlink(shm_file)
            # Leftover children (a qemu-nbd that did not exit) hold memory.
            time.sleep(0.05)
            left = srv.children()
            smp["leftover_children"] = len(left)
            smp["held"] = bl.proc_rss(srv.pid)
            smp["nbdkit_hwm"] = bl.proc_status(srv.pid, "VmHWM") * bl.KiB
            if ctx["verify"] and kind != "empty":
                verify(srv.uri, ctx["img"])
    finally:
        mem = sampler.finish()
        if srv is not None:
            srv.stop()
        if shm_file and os.path.exists(shm_file):
            os.unlink(shm_file)
    smp["cpu_s"] = cpu_children() - c0
    smp.update(mem)
    return smp


# ---------------------------------------------------------------- sources

def make_sources(img):
    """The image as qcow2 and as compressed qcow2 beside it, made again
    when the image is newer.  Returns ({fmt: path}, {fmt: description})."""
    st = os.stat(img)
    paths, descs = {}, {}
    for fmt, opts in (("qcow2", []), ("qcow2c", ["-c", "-W"])):
        path = "%s.%s" % (os.path.splitext(img)[0], fmt)
        stamp = path + ".json"
        want = {"image_mtime": st.st_mtime, "image_size": st.st_size,
                "opts": opts}
        desc = None
        try:
            with open(stamp) as f:
                desc = json.load(f)
        except (OSError, ValueError):
            pass
        if not (desc and all(desc.get(k) == v for k, v in want.items()) and
                os.path.exists(path)):
            t0 = time.monotonic()
            tmp = path + ".tmp"
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
                           + opts + [img, tmp], check=True)
            os.replace(tmp, path)
            desc = dict(want, make_s=time.monotonic() - t0, reused=False)
            bl.write_json(stamp, desc)
            bl.log("%s: made in %.1f s" % (path, desc["make_s"]))
        else:
            desc["reused"] = True
        desc["file_size"] = os.stat(path).st_size
        desc["allocated"] = os.stat(path).st_blocks * 512
        paths[fmt], descs[fmt] = path, desc
    return paths, descs


def warm_cache(paths):
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 * bl.MiB):
                pass


def shm_dir():
    for name in os.listdir("/dev/shm"):
        if name.startswith(SHM_PREFIX):
            try:
                os.kill(int(name[len(SHM_PREFIX):]), 0)
            except (ValueError, ProcessLookupError):
                shutil.rmtree(os.path.join("/dev/shm", name),
                              ignore_errors=True)
            except PermissionError:
                pass
    d = os.path.join("/dev/shm", SHM_PREFIX + str(os.getpid()))
    shutil.rmtree(d, ignore_errors=True)
    os.mkdir(d)
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", default=bl.IMAGE_SIZE)
    ap.add_argument("--data", default=bl.IMAGE_DATA,
                    help="allocated size of the files to put in the image")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=600,
                    help="seconds any one step may take")
    ap.add_argument("--verify", action="store_true",
                    help="compare every loaded device with the image")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    bl.die_on_signals()

    size = bl.parse_size(args.image_size)
    work = bl.image_dir(args.out)
    os.makedirs(work, exist_ok=True)
    img, desc = bl.golden_image(work, size, bl.parse_size(args.data))
    sources, sdesc = make_sources(img)
    warm_cache([img] + list(sources.values()))
    for fmt, d in sdesc.items():
        bl.log("%s: %s, %.0f MiB" % (fmt, sources[fmt],
                                     d["allocated"] / bl.MiB))
    result = {"image": desc, "sources": sdesc, "rounds": args.rounds,
              "cpus": os.cpu_count(), "verified": args.verify,
              "loadavg_before": open("/proc/loadavg").read().split()[:3],
              "samples": {}}
    items = [(k, f) for f in FORMATS for k in ROUTES] + \
        [(k, "qcow2c" if k == "check" else None) for k in EXTRA]
    ctx = {"sources": sources, "img": img, "size": size, "work": work,
           "timeout": args.timeout, "verify": args.verify}
    ctx["sockdir"] = tempfile.mkdtemp(prefix="mbload.")
    ctx["shm"] = shm_dir()
    try:
        for rnd in range(args.rounds):
            for kind, fmt in rotate(items, rnd * max(1, len(items) // args.rounds)):
                smp = route(kind, fmt, ctx)
                smp["round"] = rnd
                key = kind if fmt is None else "%s/%s" % (kind, fmt)
                result["samples"].setdefault(key, []).append(smp)
                bl.log("round %d/%d %-16s %7.2f s  cpu %6.2f s  peak %6.0f "
                       "MiB%s" % (rnd + 1, args.rounds, key, smp["s"],
                                  smp["cpu_s"], smp["peak"] / bl.MiB,
                                  "  held %.0f MiB" % (smp["held"] / bl.MiB)
                                  if "held" in smp else ""))
            bl.write_json(args.out, result)
        # The "check" of the plain qcow2 too, once.
        result["check_qcow2"] = route("check", "qcow2", ctx)
    finally:
        shutil.rmtree(ctx["sockdir"], ignore_errors=True)
        shutil.rmtree(ctx["shm"], ignore_errors=True)
    result["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    bl.write_json(args.out, result)
    # The table, for a run of this part alone.
    import report
    r = report.Report()
    report.load_section(r, result)
    r.judge()
    bl.log("\n".join(r.lines))


if __name__ == "__main__":
    main()
