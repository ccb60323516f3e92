#!/bin/sh
# Faults.  Clients are killed (SIGKILL) in the middle of large writes
# (nbdsh, qemu-io, a raw client that sends half a request, a burst of
# ten at once) and others send truncated, oversized or malformed
# traffic; meanwhile an observer connection keeps writing and checking
# its own device.  The server must survive, the observer must see no
# error and no bad byte, data outside the killed writers' range must be
# unchanged, and new connections must work afterwards.
# Read-only: every write-type request (write, write-zeroes, trim) on a
# ":ro" connection or a read-only device fails with EPERM (or EROFS)
# when it reaches the server (libnbd's strict mode off, and a raw
# client), libnbd's own refusals fail too, and nothing changes.
. "$(dirname "$0")/lib.sh"

command -v qemu-io >/dev/null || fail "qemu-io is not installed"
# tests/nbdraw.py, imported without leaving __pycache__ in the tree.
PYTHONPATH=$top/tests
PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH PYTHONDONTWRITEBYTECODE

start_server faults name=disk0:size=256M name=golden:ro:size=16M \
    name=other:size=64M
U=$(uri disk0)
MARK=$tmp/writing
export MARK

# A known pattern in disk0 [0, 32M); killed writers use [64M, 192M).
/usr/bin/python3 - "$U" <<'EOF' || fail "seeding disk0 failed"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
pat = bytes((i * 131 + 7) & 0xff for i in range(1 << 20))
for i in range(32):
    h.pwrite(pat, i << 20)
h.shutdown()
EOF

# The observer: connected before any fault, writes and checks "other"
# until $tmp/stop exists; its verdict goes to $tmp/observer.out.
/usr/bin/python3 - "$(uri other)" "$tmp/stop" >"$tmp/observer.out" 2>&1 <<'EOF' &
import os, random, sys, nbd
uri, stop = sys.argv[1:3]
h = nbd.NBD()
h.connect_uri(uri)
rng = random.Random(1)
model = bytearray(64 << 20)
loops = checked = 0
tmpdir = os.path.dirname(stop)
while (not os.path.exists(stop) or loops < 50) and os.path.isdir(tmpdir):
    off = rng.randrange(0, (64 << 20) - (1 << 20))
    n = rng.randint(1, 1 << 20)
    data = rng.randbytes(n)
    h.pwrite(data, off)
    model[off:off + n] = data
    a = rng.randrange(0, (64 << 20) - (2 << 20))
    got = h.pread(2 << 20, a)
    if got != model[a:a + (2 << 20)]:
        sys.exit("FAIL: observer read bad data at %d" % a)
    loops += 1
    checked += len(got)
print("observer ok: %d loops, %d MiB checked" % (loops, checked >> 20))
EOF
observer=$!

# kill_after SECONDS CMD...: start CMD, SIGKILL it after SECONDS.
kill_after() {
    secs=$1; shift
    "$@" >>"$tmp/killed.out" 2>&1 &
    victim=$!
    sleep "$secs"
    kill -9 "$victim" 2>/dev/null || :
    wait "$victim" 2>/dev/null || :
}

# nbdsh in a loop of 32 MiB writes, killed at various points once it
# has written (so the kill lands while it is writing).
for t in 0 0.05 0.1 0.2; do
    rm -f "$tmp/writing"
    nbdsh -u "$U" -c '
import os
buf = os.urandom(32 << 20)
h.pwrite(buf, 64 << 20)
open(os.environ["MARK"], "w").close()
while True:
    for off in range(64 << 20, 192 << 20, 32 << 20):
        h.pwrite(buf, off)' >>"$tmp/killed.out" 2>&1 &
    victim=$!
    i=0
    while [ ! -e "$tmp/writing" ] && [ $i -lt 300 ]; do
        sleep 0.05; i=$((i + 1))
    done
    [ -e "$tmp/writing" ] || { cat "$tmp/killed.out"; fail "nbdsh never wrote"; }
    sleep $t
    kill -9 "$victim"
    wait "$victim" 2>/dev/null || :
done

# qemu-io writing 128 MiB, killed while it is at it.
for t in 0.15 0.3 0.6; do
    kill_after $t qemu-io -f raw "$U" -c 'write -P 0xab 64M 128M' \
        -c 'write -P 0xcd 64M 128M' -c 'write -P 0xef 64M 128M'
done

# Raw clients: half a 64 MiB write, then SIGKILL; ten at once; a
# read whose reply is never collected; truncated and malformed traffic.
/usr/bin/python3 - "$sock" <<'EOF' || fail "raw fault clients failed"
import os, signal, socket, struct, sys, nbdraw
from nbdraw import Client
sock = sys.argv[1]

def half_write_then_die(off):
    pid = os.fork()
    if pid == 0:
        c = Client(sock)
        c.go(b"disk0")
        c.send_request(nbdraw.CMD_WRITE, off, 64 << 20, os.urandom(5 << 20))
        os.kill(os.getpid(), signal.SIGKILL)
    return pid

pids = [half_write_then_die((64 << 20) + i * (4 << 20)) for i in range(10)]
for p in pids:
    os.waitpid(p, 0)

c = Client(sock)                       # read reply never collected
c.go(b"disk0")
c.send_request(nbdraw.CMD_READ, 0, 32 << 20)
c.close()

c = Client(sock)                       # half a request header
c.go(b"disk0")
c.s.sendall(struct.pack(">IHH", nbdraw.REQUEST_MAGIC, 0, nbdraw.CMD_WRITE))
c.close()

c = Client(sock)                       # bad request magic: dropped
c.go(b"disk0")
c.s.sendall(b"\xde\xad\xbe\xef" + bytes(24))
try:
    c.read_reply()
    sys.exit("FAIL: server answered a request with a bad magic")
except (nbdraw.ProtocolError, ConnectionError):
    pass
c.close()

c = Client(sock)                       # out of range, then still usable
c.go(b"disk0")
err, _ = c.request(nbdraw.CMD_READ, 256 << 20, 4096)
if err != nbdraw.EINVAL:
    sys.exit("FAIL: read past the end gave error %d, not EINVAL" % err)
err, _ = c.request(nbdraw.CMD_WRITE, (256 << 20) - 10, 20, b"x" * 20)
if err == 0:
    sys.exit("FAIL: a write past the end succeeded")
if c.pread(0, 16) != bytes((i * 131 + 7) & 0xff for i in range(16)):
    sys.exit("FAIL: connection unusable after out-of-range requests")
c.disconnect()

c = Client(sock)                       # oversized write, then gone
c.go(b"disk0")
c.send_request(nbdraw.CMD_WRITE, 0, 128 << 20, bytes(1 << 20))
c.close()

for n in (3, 17):                      # handshake cut short
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.recv(n)
    s.close()

c = Client(sock)                       # option phase cut short
c.s.sendall(struct.pack(">QII", nbdraw.IHAVEOPT, nbdraw.OPT_GO, 100) + b"disk")
c.close()
print("raw fault clients done")
EOF

touch "$tmp/stop"
wait "$observer" || { cat "$tmp/observer.out"; fail "the observer saw an error"; }
cat "$tmp/observer.out"
kill -0 "$server_pid" || fail "the server died"

# Outside the killed writers' range nothing changed, and new
# connections read and write normally.
/usr/bin/python3 - "$U" <<'EOF' || fail "data check after the faults failed"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
pat = bytes((i * 131 + 7) & 0xff for i in range(1 << 20))
for i in range(32):
    if h.pread(1 << 20, i << 20) != pat:
        sys.exit("FAIL: disk0 MiB %d changed" % i)
if any(h.pread(64 << 20, 192 << 20)):
    sys.exit("FAIL: data appeared beyond the writers' range")
h.pwrite(b"after" * 1000, 40 << 20)
if h.pread(5000, 40 << 20) != b"after" * 1000:
    sys.exit("FAIL: a write after the faults did not read back")
h.shutdown()
EOF

# --- Read-only -------------------------------------------------------
/usr/bin/python3 - "$sock" <<'EOF' || fail "read-only checks failed"
import errno, hashlib, sys, nbd, nbdraw
sock = sys.argv[1]
uri = lambda e: "nbd+unix:///%s?socket=%s" % (e, sock)
bad = 0

def digest(export, size):
    h = nbd.NBD()
    h.connect_uri(uri(export))
    d = hashlib.sha256()
    for off in range(0, size, 1 << 20):
        d.update(h.pread(1 << 20, off))
    h.shutdown()
    return d.hexdigest()

before = (digest("disk0", 64 << 20), digest("golden", 16 << 20))
requests = [
    ("write", lambda h: h.pwrite(b"\xff" * 4096, 0)),
    ("write fua", lambda h: h.pwrite(b"\xff" * 10, 5, nbd.CMD_FLAG_FUA)),
    ("zero", lambda h: h.zero(1 << 20, 0)),
    ("fast zero", lambda h: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)),
    ("trim", lambda h: h.trim(1 << 20, 0)),
]
for export in ("disk0:ro", "golden", "golden:ro"):
    for strict in (True, False):
        h = nbd.NBD()
        if not strict:
            h.set_strict_mode(0)          # let the server see it
        h.connect_uri(uri(export))
        if not h.is_read_only():
            print("FAIL: %s is not read-only" % export); bad += 1
        for what, req in requests:
            try:
                req(h)
                print("FAIL: %s on %s succeeded" % (what, export)); bad += 1
            except nbd.Error as e:
                # Strict libnbd refuses trim and zero itself with EINVAL
                # (not advertised on a read-only export); sent to the
                # server, every one must fail with EPERM or EROFS.
                ok = (errno.EPERM, errno.EROFS) + ((errno.EINVAL,) if strict else ())
                if e.errnum not in ok:
                    print("FAIL: %s on %s: %s" % (what, export, e)); bad += 1
        h.pread(4096, 0)                  # the connection still works
        h.shutdown()

# A raw client ignores the read-only flag altogether.
for export in (b"disk0:ro", b"golden"):
    c = nbdraw.Client(sock)
    if c.go(export)[0] != "ok":
        print("FAIL: cannot open %r" % export); bad += 1; continue
    for cmd, data in ((nbdraw.CMD_WRITE, b"\xff" * 4096),
                      (nbdraw.CMD_WRITE_ZEROES, b""), (nbdraw.CMD_TRIM, b"")):
        err, _ = c.request(cmd, 0, 4096, data)
        if err not in (nbdraw.EPERM,):
            print("FAIL: raw command %d on %r: error %d" % (cmd, export, err)); bad += 1
    c.pread(0, 4096)
    c.disconnect()

# ":rw" on a read-only device is refused at connect time.
h = nbd.NBD()
try:
    h.connect_uri(uri("golden:rw"))
    print("FAIL: golden:rw was accepted"); bad += 1
except nbd.Error:
    pass
if (digest("disk0", 64 << 20), digest("golden", 16 << 20)) != before:
    print("FAIL: read-only requests changed data"); bad += 1
sys.exit(1 if bad else 0)
EOF

# qemu-io's writes on a read-only export fail too.
if qemu-io -f raw "$(uri disk0:ro)" -c 'write -P 0x55 0 64K' >"$tmp/qro.out" 2>&1 &&
   ! grep -qi 'error\|denied\|not permitted\|read-only' "$tmp/qro.out"; then
    cat "$tmp/qro.out"; fail "qemu-io wrote to disk0:ro"
fi
/usr/bin/python3 - "$U" <<'EOF' || fail "qemu-io changed disk0 through :ro"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
if h.pread(16, 0) != bytes((i * 131 + 7) & 0xff for i in range(16)):
    sys.exit("FAIL: disk0 changed")
EOF
kill -0 "$server_pid" || fail "the server died"
if grep -Eq 'Sanitizer|runtime error|Segmentation|assert' "$log"; then
    cat "$log"; fail "crash report in the server log"
fi
# The ten raw half-writes at least were cut off while sending data.
n=$(grep -c 'read data: NBD_CMD_WRITE' "$log" || :)
[ "$n" -ge 10 ] || { cat "$log"; fail "only $n writes were cut off mid-data"; }
echo "faults: $n writes cut off mid-data, 17 clients killed, server fine"
