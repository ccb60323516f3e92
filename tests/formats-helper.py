# memblock: helpers for tests/test-formats.sh and test-formats-errors.sh.
#
#   rpc SOCK METHOD [PARAMS]      one JSON-RPC call on the control socket:
#                                 prints the reply; exit 0 for a result, 3
#                                 for an error reply, 1 if no reply
#   names SOCK                    the device names of device_list, sorted
#   field SOCK DEVICE KEY         one member of a device in device_list
#   refused SOCK PARAMS WHO WHY   device_create PARAMS must be refused
#                                 (-32000, data.errno set, the message
#                                 names WHO and matches regexp WHY), with
#                                 device_list's names unchanged
#   job SOCK DEVICE               the newest job of DEVICE (job_list), JSON
#   pages RAW                     bytes in the non-zero 4 KiB pages of RAW
#   mapcheck RAW MAPFILE          nbdinfo --map output in MAPFILE has data
#                                 exactly at RAW's non-zero 4 KiB pages, and
#                                 no data in a 64 KiB block where RAW has a
#                                 hole (SEEK_DATA/SEEK_HOLE)
#   rss PID                       VmRSS of PID in bytes
#   ioloop URI STOP COUNT         write and read back pages of a device
#                                 until file STOP exists; the number of
#                                 verified round trips goes to file COUNT
import json, os, random, re, socket, sys, time

PAGE = 4096
BLOCK = 65536


def rpc(sock, method, params=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    req = {"jsonrpc": "2.0", "id": 1, "method": method,
           "params": params if params is not None else {}}
    s.sendall(json.dumps(req).encode() + b"\n")
    f = s.makefile("rb")
    while True:
        line = f.readline()
        if not line:
            sys.exit("%s: no reply to %s" % (sock, method))
        msg = json.loads(line)
        if msg.get("id") == 1:
            break
    s.close()
    return msg


def devices(sock):
    msg = rpc(sock, "device_list")
    if "result" not in msg:
        sys.exit("device_list failed: %r" % msg)
    return {d["name"]: d for d in msg["result"]}


def cmd_rpc(sock, method, params="{}"):
    msg = rpc(sock, method, json.loads(params))
    print(json.dumps(msg))
    sys.exit(0 if "result" in msg else 3)


def cmd_names(sock):
    print("\n".join(sorted(devices(sock))))


def cmd_field(sock, name, key):
    d = devices(sock)
    if name not in d:
        sys.exit("no device %s in device_list" % name)
    print(d[name][key])


def cmd_refused(sock, params, who, why):
    before = sorted(devices(sock))
    msg = rpc(sock, "device_create", json.loads(params))
    after = sorted(devices(sock))
    if "error" not in msg:
        sys.exit("device_create %s was accepted: %r" % (params, msg))
    e = msg["error"]
    m = e.get("message", "")
    errno = (e.get("data") or {}).get("errno")
    problems = []
    if e.get("code") != -32000:
        problems.append("code %r, not -32000" % e.get("code"))
    if not (isinstance(errno, str) and re.match(r"^E[A-Z0-9]+$", errno)):
        problems.append("no data.errno")
    if "\n" in m or not m:
        problems.append("not one line")
    if who not in m:
        problems.append("does not name %r" % who)
    if not re.search(why, m):
        problems.append("does not say %r" % why)
    if before != after:
        problems.append("device_list changed: %r -> %r" % (before, after))
    if problems:
        sys.exit("device_create %s: %s; error %r" %
                 (params, "; ".join(problems), e))
    print("refused (%s): %s" % (errno, m))


def cmd_job(sock, device):
    msg = rpc(sock, "job_list")
    jobs = [j for j in msg["result"] if j["device"] == device]
    if not jobs:
        sys.exit("no job for %s in job_list: %r" % (device, msg))
    print(json.dumps(max(jobs, key=lambda j: j["id"])))


def nonzero_pages(path):
    """The indexes of path's non-zero 4 KiB pages (kept in PATH.nz, as
    the images do not change once made)."""
    cache = path + ".nz"
    if os.path.exists(cache) and \
            os.stat(cache).st_mtime >= os.stat(path).st_mtime:
        return set(json.load(open(cache)))
    out = set()
    with open(path, "rb") as f:
        i = 0
        zero = bytes(PAGE)
        while True:
            b = f.read(PAGE * 256)
            if not b:
                break
            for k in range(0, len(b), PAGE):
                if b[k:k + PAGE] != zero[:len(b) - k]:
                    out.add(i + k // PAGE)
            i += len(b) // PAGE
    with open(cache + ".tmp", "w") as f:
        json.dump(sorted(out), f)
    os.rename(cache + ".tmp", cache)
    return out


def cmd_pages(path):
    print(len(nonzero_pages(path)) * PAGE)


def read_map(mapfile):
    """Pages that the map calls data (not a hole) and its end."""
    data, end = set(), 0
    for line in open(mapfile):
        f = line.split()
        off, n, t = int(f[0]), int(f[1]), int(f[2])
        if off != end:
            sys.exit("map %s: extent at %d, expected %d" % (mapfile, off, end))
        end = off + n
        if t & 1:
            continue
        if off % PAGE or n % PAGE:
            sys.exit("map %s: data extent %d+%d not page-aligned" %
                     (mapfile, off, n))
        data.update(range(off // PAGE, (off + n) // PAGE))
    return data, end


def raw_data_blocks(path):
    """64 KiB blocks in which path has data, by SEEK_DATA/SEEK_HOLE."""
    blocks = set()
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    off = 0
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        blocks.update(range(d // BLOCK, (h + BLOCK - 1) // BLOCK))
        off = h
    os.close(fd)
    return blocks, size


def cmd_mapcheck(path, mapfile):
    want = nonzero_pages(path)
    got, end = read_map(mapfile)
    size = os.stat(path).st_size
    if end != size:
        sys.exit("map %s covers %d bytes, %s has %d" % (mapfile, end, path, size))
    extra, missing = sorted(got - want), sorted(want - got)
    if extra or missing:
        sys.exit("map %s: %d pages of data that are zero in %s (first at %s), "
                 "%d non-zero pages shown as holes (first at %s)" %
                 (mapfile, len(extra), path,
                  extra[0] * PAGE if extra else "-", len(missing),
                  missing[0] * PAGE if missing else "-"))
    raw_blocks, _ = raw_data_blocks(path)
    map_blocks = {p * PAGE // BLOCK for p in got}
    bad = sorted(map_blocks - raw_blocks)
    if bad:
        sys.exit("map %s: data in %d 64 KiB blocks where %s has a hole "
                 "(first at %d)" % (mapfile, len(bad), path, bad[0] * BLOCK))
    nblocks = (size + BLOCK - 1) // BLOCK
    print("map %s: %d data pages as in %s; 64 KiB blocks: %d data, "
          "%d hole (raw: %d data, %d hole)" %
          (os.path.basename(mapfile), len(got), os.path.basename(path),
           len(map_blocks), nblocks - len(map_blocks), len(raw_blocks),
           nblocks - len(raw_blocks)))


def cmd_rss(pid):
    for line in open("/proc/%s/status" % pid):
        if line.startswith("VmRSS:"):
            print(int(line.split()[1]) * 1024)
            return
    sys.exit("no VmRSS for %s" % pid)


def cmd_ioloop(uri, stop, countfile):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    rnd = random.Random(os.getpid())
    n = 0
    while not os.path.exists(stop):
        off = rnd.randrange(size // PAGE) * PAGE
        buf = bytes([rnd.randrange(1, 256)]) * PAGE
        h.pwrite(buf, off)
        if h.pread(PAGE, off) != buf:
            sys.exit("ioloop: page at %d does not read back" % off)
        n += 1
        with open(countfile + ".tmp", "w") as f:
            f.write("%d\n" % n)
        os.rename(countfile + ".tmp", countfile)
    h.shutdown()


getattr(sys.modules[__name__], "cmd_" + sys.argv[1])(*sys.argv[2:])
