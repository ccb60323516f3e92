#!/bin/sh
# Memory bounds seen from outside, with the server's RSS read from
# /proc/PID/status once no connection is open (nbdkit keeps each worker
# thread's request buffer until its connection closes).
#
# Proves that:
#  1. an image of 128 MiB holding 32 MiB of data, 2 MiB at the start of
#     every 8 MiB and zeroes (not holes) between, loads under
#     max-memory=33M every time (10 starts), and reads back;
#  2. at a full max-memory, trims that start and end inside pages work
#     on a compressed device and on a clone: the whole pages they cover
#     read as zeroes, the partial pages at their ends keep their data;
#  3. under max-memory=1M, a client writing a byte into every chunk of
#     a 256 GiB device (raw, then compressed) and zeroing the page
#     again is refused with ENOSPC before it has touched them all, and
#     the server's RSS grows by at most 3 MiB; the same with
#     chunk-size=4K on a 256 MiB device;
#  4. a compressed device of 128 MiB (zstd, lz4) written with random
#     data, overwritten with text, then trimmed in part: the server's
#     RSS growth stays within an eighth over what the device says it
#     holds, plus 4 MiB, and once it is trimmed to nothing RSS is back
#     within 4 MiB of where it started; the same once a compressed
#     :temp device goes with its last connection.
. "$(dirname "$0")/lib.sh"

# glibc raises its mmap threshold when a mapped block is freed, so that
# after the first connection nbdkit's 1 MiB request buffers land in the
# worker threads' malloc arenas and stay there, about 1 MiB for each of
# up to 16 arenas, after the threads exit: memory that is not the
# store's, and differs from run to run.  A fixed threshold keeps them
# mapped on their own and given back when freed.
MALLOC_MMAP_THRESHOLD_=131072
export MALLOC_MMAP_THRESHOLD_

command -v /usr/bin/python3 >/dev/null || fail "python3 is not installed"
/usr/bin/python3 -c 'import nbd' || fail "python3-libnbd is not installed"

cat >"$tmp/mem.py" <<'EOF'
import errno, os, random, re, sys, time
import nbd

M = 1 << 20
PAGE = 4096

def status(pid, key):
    for line in open("/proc/%d/status" % pid):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError("no %s" % key)

def idle_rss(pid, threads):
    """VmRSS in bytes once the server is back to its idle thread count."""
    deadline = time.monotonic() + 10
    while status(pid, "Threads") > threads:
        if time.monotonic() > deadline:
            sys.exit("FAIL: the server's connection threads did not exit")
        time.sleep(0.05)
    return status(pid, "VmRSS") * 1024

def settled_threads(pid):
    """The server's thread count once it stops changing."""
    last, same = -1, 0
    while same < 4:
        n = status(pid, "Threads")
        same = same + 1 if n == last else 0
        last = n
        time.sleep(0.05)
    return last

def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h

def held(sock, name):
    """The bytes the export's description says it holds."""
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, sock))
    h.set_export_name(name)
    h.set_full_info(True)
    h.opt_info()
    d = h.get_export_description()
    h.opt_abort()
    m = re.search(r"in ([0-9.]+) (bytes|KiB|MiB|GiB)", d)
    if not m:
        sys.exit("FAIL: no amount held in %r" % d)
    unit = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    return float(m.group(1)) * unit[m.group(2)], d

_words = [b"memblock ", b"chunk ", b"page ", b"unit ", b"trim "]
_r = random.Random(1)
_text = b"".join(_r.choice(_words) for _ in range(600000))

def text(n, seed):
    """n bytes of text that compresses (n <= 2 MiB)."""
    at = seed % (len(_text) - n)
    return _text[at:at + n]
EOF

# --- 1. an image that fits under the cap loads every time.
img=$tmp/img.raw
/usr/bin/python3 - "$img" <<'EOF'
import random, sys
M = 1 << 20
with open(sys.argv[1], "wb") as f:
    for i in range(16):
        f.write(random.Random(i).randbytes(2 * M) + bytes(6 * M))
EOF
for i in 1 2 3 4 5 6 7 8 9 10; do
    start_server load$i max-memory=33M "name=g:ro:file=$img"
    /usr/bin/python3 - "$(uri g)" <<'EOF' || fail "the loaded image reads wrong"
import random, sys, nbd
M = 1 << 20
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for i in (0, 7, 15):
    if h.pread(2 * M, i * 8 * M) != random.Random(i).randbytes(2 * M):
        sys.exit("FAIL: piece %d of the image reads wrong" % i)
    if h.pread(6 * M, i * 8 * M + 2 * M) != bytes(6 * M):
        sys.exit("FAIL: zeroes after piece %d read wrong" % i)
EOF
    stop_server
done
echo "load: 10 of 10 starts loaded 32 MiB of data under max-memory=33M"

# --- 2. unaligned trims at a full cap.
truncate -s 4M "$tmp/src.raw"
head -c 1M /dev/urandom | dd of="$tmp/src.raw" conv=notrunc status=none
for dev in z:size=4M:compress=zstd c:from=src; do
start_server "trim-${dev%%:*}" max-memory=2M "name=src:ro:file=$tmp/src.raw" "name=$dev"
/usr/bin/python3 - "$sock" "${dev%%:*}" <<'EOF' || fail "trims at the cap failed"
import errno, os, sys
exec(open(os.path.join(os.path.dirname(sys.argv[1]), "mem.py")).read())
sock = sys.argv[1]
for name in sys.argv[2:]:
    h = connect("nbd+unix:///%s?socket=%s" % (name, sock))
    data = os.urandom(4 * M)
    off = 0
    try:
        while off < 4 * M:
            h.pwrite(data[off:off + 64 * 1024], off)
            off += 64 * 1024
        sys.exit("FAIL: %s: no ENOSPC in 4 MiB under max-memory=2M" % name)
    except nbd.Error as e:
        if e.errnum != errno.ENOSPC:
            sys.exit("FAIL: %s: %s" % (name, e))
    # [300, 21480): pages 1 to 4 whole, parts of pages 0 and 5.
    h.trim(5 * PAGE + 700, 300)
    if h.pread(4 * PAGE, PAGE) != bytes(4 * PAGE):
        sys.exit("FAIL: %s: trimmed pages do not read as zeroes" % name)
    if (h.pread(PAGE, 0) != data[:PAGE] or
            h.pread(PAGE, 5 * PAGE) != data[5 * PAGE:6 * PAGE]):
        sys.exit("FAIL: %s: the trim changed its partial pages" % name)
    h.trim(100, 9 * PAGE + 1)               # inside one page: nothing
    if h.pread(PAGE, 9 * PAGE) != data[9 * PAGE:10 * PAGE]:
        sys.exit("FAIL: %s: a trim inside a page changed it" % name)
    h.shutdown()
    print("trim: unaligned trims at the cap work on %s" % name)
EOF
stop_server
done

# --- 3. chunk headers stay under the cap.
headers() {
    # headers NAME SHIFT ARGS...: touch every chunk of device d.
    hname=$1 shift_=$2; shift 2
    start_server "$hname" max-memory=1M "$@"
    /usr/bin/python3 - "$sock" "$server_pid" "$shift_" "$hname" <<'EOF' ||
import errno, os, sys
exec(open(os.path.join(os.path.dirname(sys.argv[1]), "mem.py")).read())
sock, pid, shift, what = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
threads = status(pid, "Threads")
base = idle_rss(pid, threads)
h = connect("nbd+unix:///d?socket=%s" % sock)
chunks = h.get_size() >> shift
n = 0
try:
    while n < chunks:
        h.pwrite(b"x", n << shift)
        h.zero(PAGE, n << shift)
        n += 1
except nbd.Error as e:
    if e.errnum != errno.ENOSPC:
        sys.exit("FAIL: %s: %s" % (what, e))
h.shutdown()
grown = idle_rss(pid, threads) - base
print("headers %s: %d of %d chunks touched before ENOSPC, RSS +%.2f MiB"
      % (what, n, chunks, grown / M))
if n >= chunks:
    sys.exit("FAIL: %s: every chunk was touched under max-memory=1M" % what)
# 1 MiB of headers, and 2 MiB for the worker threads' malloc arenas and
# codec contexts.
if grown > 3 * M:
    sys.exit("FAIL: %s: RSS grew %.2f MiB under max-memory=1M" % (what, grown / M))
EOF
    fail "chunk headers passed the cap ($hname)"
    stop_server
}
headers raw 24 name=d:size=256G
headers zstd 24 name=d:size=256G:compress=zstd
headers small 12 chunk-size=4K name=d:size=256M

# --- 4. a compressed device's memory follows what it holds, and comes back.
start_server churn dynamic=true name=kz:size=128M:compress=zstd \
    name=kl:size=128M:compress=lz4
/usr/bin/python3 - "$sock" "$server_pid" <<'EOF' || fail "compressed memory checks failed"
import os, random, sys
exec(open(os.path.join(os.path.dirname(sys.argv[1]), "mem.py")).read())
sock, pid = sys.argv[1], int(sys.argv[2])
SIZE = 128 * M
r = random.Random(5)
threads = status(pid, "Threads")
base = idle_rss(pid, threads)

def churn(name):
    """Random data, text over it, partial trims; the connection closed."""
    h = connect("nbd+unix:///%s?socket=%s" % (name, sock))
    for off in range(0, SIZE, M):
        h.pwrite(r.randbytes(M), off)
    for off in range(0, SIZE, M):
        h.pwrite(text(M, off), off)
    for _ in range(512):
        h.trim(r.randrange(1, 64 * 1024), r.randrange(SIZE - 64 * 1024))
    h.shutdown()

def back(what):
    after = idle_rss(pid, threads) - base
    print("%s: RSS +%.1f MiB" % (what, after / M))
    if after > 4 * M:
        sys.exit("FAIL: %s: RSS stays %.1f MiB over the start" % (what, after / M))

for name in ("kz", "kl"):
    churn(name)
    grown = idle_rss(pid, threads) - base
    amount, desc = held(sock, name)
    bound = amount * 9 / 8 + 4 * M
    print("%s after churn: RSS +%.1f MiB for %s (bound %.1f MiB)"
          % (name, grown / M, desc, bound / M))
    if grown > bound:
        sys.exit("FAIL: %s: RSS grew %.1f MiB, over %.1f MiB"
                 % (name, grown / M, bound / M))
    h = connect("nbd+unix:///%s?socket=%s" % (name, sock))
    h.trim(SIZE, 0)
    h.shutdown()
    back("%s trimmed to nothing" % name)
churn("tmp:size=128M:compress=zstd:temp")
back("a temp device freed with its last connection")
EOF
stop_server
echo "PASS"
