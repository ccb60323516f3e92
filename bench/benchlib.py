# memblock benchmarks: shared helpers (servers, CPU pinning, /proc readings,
# the control socket client, fio runs, the golden ext4 image).  Measures
# nothing itself; the *-bench.py scripts use it.

import json
import os
import resource
import shutil
import signal
import socket
import stat
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
        # With the pidfile written nbdkit is up and has no connection yet.
        self.idle_threads = proc_status(self.pid, "Threads")

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

    def idle_rss(self, timeout=30):
        """VmRSS with no connection open.  nbdkit keeps each worker
        thread's largest request buffer until the thread exits with its
        connection: wait until the server has no more threads than at
        start."""
        deadline = time.monotonic() + timeout
        while proc_status(self.pid, "Threads") > self.idle_threads:
            if time.monotonic() > deadline:
                raise RuntimeError("%s: still %d threads after %d s" %
                                   (self.label,
                                    proc_status(self.pid, "Threads"),
                                    timeout))
            time.sleep(0.005)
        return self.rss()

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


def proc_status(pid, field):
    """The number on the field line of /proc/PID/status (kB for Vm*)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s for pid %d" % (field, pid))


def proc_rss(pid):
    """Resident set size of process pid in bytes (VmRSS)."""
    return proc_status(pid, "VmRSS") * KiB


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


# ---------------------------------------------------------------- control

def connect_unix(path, timeout, what):
    """A stream socket connected to path, retried until timeout."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise RuntimeError("no %s at %s" % (what, path))
            time.sleep(0.01)


class Ctl:
    """A connection to memblock's control socket: JSON-RPC 2.0, one line
    each way.  call() returns (result, round trip in seconds)."""

    def __init__(self, path, timeout=60):
        self.path = path
        self.sock = connect_unix(path, timeout, "control socket")
        self.rfile = self.sock.makefile("rb")
        self.next_id = 1

    def call(self, method, params=None):
        """One request; raises on a JSON-RPC error or a closed socket."""
        rid = self.next_id
        self.next_id += 1
        req = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            req["params"] = params
        line = json.dumps(req, separators=(",", ":")).encode() + b"\n"
        t0 = time.perf_counter()
        self.sock.sendall(line)
        reply = self.rfile.readline()
        t = time.perf_counter() - t0
        if not reply:
            raise RuntimeError("control: no reply to " + method)
        msg = json.loads(reply)
        if "error" in msg:
            raise RuntimeError("control: %s %s: %s" %
                               (method, params, msg["error"]))
        return msg["result"], t

    def device(self, name):
        """device_list's entry for device (or snapshot) name."""
        for d in self.call("device_list")[0]:
            if d["name"] == name:
                return d
        raise RuntimeError("no device " + name)

    def close(self):
        """Close the connection."""
        self.rfile.close()
        self.sock.close()

    def idle_rss(self, server):
        """server's VmRSS with no connection open, the control one
        included (the server has a thread per control client): closes
        this connection, reads, connects again."""
        self.close()
        rss = server.idle_rss()
        self.__init__(self.path)
        return rss


# ---------------------------------------------------------------- fio

def fio_exec(args, opts, out, cpu=None, runtime=None, timeout=300):
    """Run fio once over NBD with job arguments args and options opts,
    JSON to out; returns [(bytes moved, MiB/s, IOPS)] per job reported,
    reads and writes together."""
    cmd = ["fio", "--ioengine=nbd", "--output-format=json", "--output=" + out]
    cmd += ["--%s=%s" % (k, v) for k, v in opts.items()]
    if runtime is not None:
        cmd += ["--time_based", "--runtime=%dms" % (runtime * 1000)]
    cmd += args
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    if os.path.exists(out):
        os.unlink(out)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=(runtime or 0) + timeout)
    if r.returncode != 0:
        raise RuntimeError("fio failed (%d): %s\n%s" %
                           (r.returncode, " ".join(cmd), r.stderr[-2000:]))
    with open(out) as f:
        data = json.load(f)
    res = []
    for job in data["jobs"]:
        if job.get("error"):
            raise RuntimeError("fio job error %s: %s" % (job["error"], cmd))
        moved, bw, iops = (sum(job[d][k] for d in ("read", "write"))
                           for k in ("io_bytes", "bw_bytes", "iops"))
        res.append((moved, bw / MiB, iops))
    return res


def fio_run(uri, opts, out, cpu=None, runtime=None):
    """Run fio once (one job per opts' numjobs, each its own NBD
    connection to uri); returns (bytes moved, MiB/s, IOPS)."""
    [(moved, bw, iops)] = fio_exec(["--name=bench", "--uri=" + uri,
                                    "--group_reporting"],
                                   opts, out, cpu, runtime)
    if moved == 0:
        raise RuntimeError("fio moved no data: %s %s" % (uri, opts))
    return moved, bw, iops


def child_cpu():
    """CPU seconds used by the finished children (fio and its jobs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def fio_measure(server, opts, out, cpu, runtime):
    """One sample of fio_run against server: fio's figures plus the
    server's CPU seconds per GiB and fio's CPU seconds."""
    if not server.alive():
        raise RuntimeError("%s died: %s" % (server.label, server.read_log()))
    c0 = server.cpu_seconds()
    f0 = child_cpu()
    t0 = time.monotonic()
    moved, mibs, iops = fio_run(server.uri, opts, out, cpu, runtime)
    t1 = time.monotonic()
    f1 = child_cpu()
    c1 = server.cpu_seconds()
    # Busy figures divide by the I/O time, not fio's start-up.
    return {"mibs": mibs, "iops": iops, "bytes": moved,
            "wall_s": min(t1 - t0, runtime or t1 - t0),
            "cpu_s": c1 - c0, "cpu_per_gib": (c1 - c0) / (moved / GiB),
            "fio_cpu_s": f1 - f0}


# ---------------------------------------------------------------- image
# The golden image of clone-bench.py and compress-bench.py: an ext4 file
# system (mkfs.ext4 -d) holding real files from /usr/share and /usr/bin,
# kept in IMAGE_DIR under the results directory between runs.

IMAGE_SOURCES = ("/usr/share", "/usr/bin")
IMAGE_SPLIT = 1000      # staged directories hold at most this many entries
IMAGE_VERSION = 1       # bump when the way the image is built changes
IMAGE_SIZE = "2G"       # the full run's image and the files put in it
IMAGE_DATA = "1.3G"
IMAGE_DIR = "clone"     # under the results directory


def image_dir(out):
    """The directory that keeps the image, beside the JSON file out."""
    return os.path.join(os.path.dirname(os.path.abspath(out)), IMAGE_DIR)



def stage(sources, dest, limit):
    """Hard-link (or copy) regular files, symlinks and directories of
    sources into dest until the files' allocated size reaches limit.
    Directories with more than IMAGE_SPLIT entries are spread over part-N
    subdirectories: mkfs.ext4 -d inserts into a directory in linear time,
    and /usr/share/man/man1 alone would cost it half a minute.
    Returns (files, apparent bytes, allocated bytes), each inode once.
    """
    seen = set()
    files = apparent = alloc = 0
    for src in sources:
        dmap = {src: os.path.join(dest, src.strip("/").replace("/", "_"))}
        os.makedirs(dmap[src])
        for root, dirs, names in os.walk(src):
            droot = dmap.get(root)
            if droot is None:   # under a directory we did not create
                dirs[:] = []
                continue
            entries = sorted(dirs + names)
            dirs[:] = []
            for i, name in enumerate(entries):
                if alloc >= limit:
                    return files, apparent, alloc
                sp = os.path.join(root, name)
                dd = droot
                if len(entries) > IMAGE_SPLIT:
                    dd = os.path.join(droot, "part-%d" % (i // IMAGE_SPLIT))
                    os.makedirs(dd, exist_ok=True)
                dp = os.path.join(dd, name)
                try:
                    st = os.lstat(sp)
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(sp), dp)
                elif stat.S_ISDIR(st.st_mode):
                    if st.st_dev != os.stat(src).st_dev:
                        continue
                    os.mkdir(dp)
                    dmap[sp] = dp
                    dirs.append(name)
                elif stat.S_ISREG(st.st_mode):
                    if not os.access(sp, os.R_OK):
                        continue
                    try:
                        os.link(sp, dp)
                    except OSError:
                        shutil.copy2(sp, dp)
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        files += 1
                        apparent += st.st_size
                        alloc += st.st_blocks * 512
    return files, apparent, alloc


def data_extents(path):
    """[(offset, length)] of the data (not hole) extents of a file."""
    ext = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ext.append((start, end - start))
            off = end
    finally:
        os.close(fd)
    return ext


def scan(path):
    """(data extents' bytes, bytes in non-zero 4 KiB pages) of a file;
    reading it also leaves it in the page cache."""
    zero = bytes(4096)
    data = nonzero = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, length in data_extents(path):
            data += length
            off = start
            while off < start + length:
                b = os.pread(fd, min(MiB, start + length - off), off)
                nonzero += 4096 * sum(1 for i in range(0, len(b), 4096)
                                      if b[i:i + 4096] != zero)
                off += len(b)
    finally:
        os.close(fd)
    return data, nonzero


def golden_image(work, size, limit):
    """Build (or reuse) the ext4 image; returns (path, description)."""
    img = os.path.join(work, "golden-%d.img" % size)
    stamp = img + ".json"
    want = {"version": IMAGE_VERSION, "size": size, "limit": limit,
            "sources": list(IMAGE_SOURCES)}
    old = None
    try:
        with open(stamp) as f:
            old = json.load(f)
    except (OSError, ValueError):
        pass
    if old and all(old.get(k) == v for k, v in want.items()) and \
            os.path.exists(img) and os.path.getsize(img) == size:
        log("image %s: reused (%d files, %.0f MiB allocated)" %
               (img, old["files"], old["files_alloc"] / MiB))
        desc = old
        desc["reused"] = True
    else:
        desc = make_image(img, stamp, want, size, limit)
        desc["reused"] = False
    # What SEEK_DATA reports changes after mkfs (ext4 turns its unwritten
    # extents into data as the file is written back): measure it now, as
    # the servers will see it; reading it also fills the page cache.
    t0 = time.monotonic()
    desc["data"], desc["nonzero"] = scan(img)
    desc["allocated"] = os.stat(img).st_blocks * 512
    log("image %s: %.0f MiB of data extents, %.0f MiB allocated, %.0f MiB "
           "in non-zero 4 KiB pages (scanned in %.1f s)" %
           (img, desc["data"] / MiB, desc["allocated"] / MiB,
            desc["nonzero"] / MiB, time.monotonic() - t0))
    return img, desc


def make_image(img, stamp, want, size, limit):
    """Stage the files, mkfs.ext4 -d the image, write its stamp."""
    work = os.path.dirname(img)
    staging = os.path.join(work, "staging")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for f in (img, stamp):
        if os.path.exists(f):
            os.unlink(f)
    tmp = img + ".tmp"
    try:
        t0 = time.monotonic()
        files, apparent, alloc = stage(IMAGE_SOURCES, staging, limit)
        t1 = time.monotonic()
        log("image: staged %d files, %.0f MiB (%.0f MiB allocated) in "
               "%.1f s" % (files, apparent / MiB, alloc / MiB, t1 - t0))
        with open(tmp, "w") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", staging,
                        tmp], check=True)
        t2 = time.monotonic()
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, img)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if os.path.exists(tmp):
            os.unlink(tmp)
    desc = dict(want, files=files, files_bytes=apparent, files_alloc=alloc,
                mkfs_s=t2 - t1)
    write_json(stamp, desc)
    log("image %s: mkfs.ext4 took %.1f s" % (img, t2 - t1))
    return desc


# ---------------------------------------------------------------- store-bench

def parse_store_bench(text):
    """store-bench's output: ({(op, bs, threads, variant): (GiB/s, CPUs,
    [GiB/s per run, with -p])}, {codec: (data bytes, held bytes)} with -c,
    the file the stores were filled with ("text" if none, None without
    -c)).  Raises ValueError on a malformed figure."""
    figures, held, data = {}, {}, None
    for line in text.splitlines():
        p = line.split()
        if len(p) in (6, 7) and p[2].isdigit():
            figures[(p[0], p[1], int(p[2]), p[3])] = (
                float(p[4]), float(p[5]),
                [float(x) for x in p[6].split(",")] if len(p) == 7 else [])
        elif len(p) == 4 and p[0] == "held":
            held[p[1]] = (int(p[2]), int(p[3]))
        elif p and p[0] == "data":
            data = line.split(None, 1)[1].strip()
    return figures, held, data


# ---------------------------------------------------------------- misc

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
