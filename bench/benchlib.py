# memblock benchmarks: shared helpers (servers, CPU pinning, /proc readings).
# Measures nothing itself; fio-bench.py, sparse-bench.py and clone-bench.py
# use it.

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMBLOCK_SO = os.environ.get("MEMBLOCK_SO", os.path.join(TOP, "memblock.so"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# The servers compared, in their starting order: label -> nbdkit arguments
# after the size is filled in.
SERVERS = ("memblock", "memory", "malloc", "null")


def server_args(label, size):
    """nbdkit plugin arguments for one of SERVERS with a device of size bytes."""
    if label == "memblock":
        return [MEMBLOCK_SO, "size=%d" % size]
    if label == "memory":
        return ["memory", "size=%d" % size]
    if label == "malloc":
        return ["memory", "size=%d" % size, "allocator=malloc"]
    if label == "null":
        return ["null", "size=%d" % size]
    raise ValueError(label)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def cpus():
    """(server CPU, client CPU): the first two CPUs we may use, or one twice."""
    allowed = sorted(os.sched_getaffinity(0))
    srv = int(os.environ.get("BENCH_SERVER_CPU", allowed[0]))
    cli = int(os.environ.get("BENCH_CLIENT_CPU", allowed[1 % len(allowed)]))
    return srv, cli


def all_cpus():
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


class Server:
    """One nbdkit process on its own Unix socket, optionally pinned."""

    def __init__(self, label, plugin_args, workdir, sockdir, cpu=None):
        self.label = label
        self.sock = os.path.join(sockdir, label + ".sock")
        self.pidfile = os.path.join(workdir, label + ".pid")
        self.logfile = os.path.join(workdir, label + ".log")
        self.uri = self.export_uri("")
        for f in (self.sock, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)
        cmd = ["nbdkit", "-f", "--exit-with-parent", "-U", self.sock,
               "-P", self.pidfile] + plugin_args
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        self.cmd = cmd
        # When nbdkit was started (for start-up times, see wait_nbd).
        self.started = time.monotonic()
        with open(self.logfile, "w") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (os.path.exists(self.pidfile) and
                   os.path.getsize(self.pidfile) > 0):
            if self.proc.poll() is not None:
                raise RuntimeError("%s did not start: %s" %
                                   (" ".join(cmd), self.read_log()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("%s: no pidfile after 30 s" % " ".join(cmd))
            time.sleep(0.02)
        # taskset execs nbdkit, so the child's pid is nbdkit's.
        self.pid = self.proc.pid

    def export_uri(self, export):
        """The URI of one export (device) of this server."""
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)

    def read_log(self):
        try:
            with open(self.logfile) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def cpu_seconds(self):
        """User + system CPU seconds of the whole process (all threads)."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state); utime and stime are fields 14, 15.
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss(self):
        """Resident set size in bytes (VmRSS)."""
        return proc_rss(self.pid)

    def set_cpus(self, cpulist):
        """Move every thread of the server to cpulist (new threads follow)."""
        subprocess.run(["taskset", "-a", "-p", "-c", cpulist, str(self.pid)],
                       check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.sock, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)


class Servers:
    """Context manager that stops every server started through it."""

    def __init__(self, workdir):
        self.workdir = workdir
        # Sockets go in a short /tmp path: sun_path holds 108 bytes.
        self.sockdir = tempfile.mkdtemp(prefix="mbbench.")
        self.list = []

    def start(self, label, plugin_args, cpu=None):
        s = Server(label, plugin_args, self.workdir, self.sockdir, cpu)
        self.list.append(s)
        return s

    def stop(self, s):
        s.stop()
        self.list.remove(s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for s in self.list:
            s.stop()
        self.list = []
        shutil.rmtree(self.sockdir, ignore_errors=True)


def proc_rss(pid):
    """Resident set size of process pid in bytes (VmRSS)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise RuntimeError("no VmRSS for pid %d" % pid)


def wait_nbd(uri, proc=None, timeout=120):
    """Wait until an NBD handshake with uri succeeds (the server accepts
    connections and serves that export); returns time.monotonic() then.
    Raises if proc (a Popen) exits first or after timeout seconds.
    """
    import nbd
    deadline = time.monotonic() + timeout
    while True:
        h = nbd.NBD()
        try:
            h.connect_uri(uri)
            t = time.monotonic()
            h.shutdown()
            return t
        except nbd.Error as e:
            err = e
        del h
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited (%s) before %s answered: %s" %
                               (proc.returncode, uri, err))
        if time.monotonic() > deadline:
            raise RuntimeError("%s: no NBD handshake after %d s: %s" %
                               (uri, timeout, err))
        time.sleep(0.005)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return float("nan")
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def parse_size(s):
    """A size such as 64M, 4G, 1T or a plain number of bytes."""
    units = {"K": KiB, "M": MiB, "G": GiB, "T": TiB}
    s = s.strip().upper().rstrip("B").rstrip("I")
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s)


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def die_on_signals():
    """Turn SIGTERM/SIGINT into SystemExit so servers get stopped."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
