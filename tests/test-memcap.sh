#!/bin/sh
# max-memory: a client writing past the cap gets ENOSPC; the server logs
# one clear line (not one per refusal), stays up, keeps every byte that
# was written before the cap, and a refused write changes nothing.
# Overwriting held data and writing zeroes still work at the cap; the
# cap is shared by all devices; after a trim frees pages, writes succeed
# again (and a new refusal is logged once more).  Then four connections
# race to the cap at once: exactly the cap's worth of writes succeed and
# all of them read back.
. "$(dirname "$0")/lib.sh"

# count_enospc: lines in $log reporting a write refused at the cap.
count_enospc() {
    grep -c 'refused with ENOSPC: max-memory (64 MiB) is all in use' "$log" || :
}

start_server cap max-memory=64M size=256M name=disk0 name=other
/usr/bin/python3 - "$(uri disk0)" "$(uri other)" "$log" <<'EOF' || fail "single-client checks failed"
import errno, random, sys, nbd

uri, other_uri, log = sys.argv[1:4]
MiB = 1 << 20
BASE = 123                          # unaligned: blocks share edge pages

def block(i):
    return random.Random(i).randbytes(MiB)

def enospc_lines():
    return sum("refused with ENOSPC" in l for l in open(log))

def write_fails_enospc(h, buf, off, what):
    try:
        h.pwrite(buf, off)
    except nbd.Error as e:
        if e.errnum != errno.ENOSPC:
            sys.exit("FAIL: %s: expected ENOSPC, got %s" % (what, e))
        return
    sys.exit("FAIL: %s: succeeded past max-memory" % what)

h = nbd.NBD()
h.connect_uri(uri)
# Block i covers [BASE + i MiB, BASE + (i+1) MiB): k blocks hold
# 256k + 1 pages, so 63 fit under 64 MiB (16384 pages) and the 64th
# does not.
def fill_to_cap(first, what):
    """Write blocks first, first+1, ... until ENOSPC; the first refused."""
    i = first
    while True:
        try:
            h.pwrite(block(i), BASE + i * MiB)
        except nbd.Error as e:
            if e.errnum != errno.ENOSPC:
                sys.exit("FAIL: write %d %s: expected ENOSPC, got %s" %
                         (i, what, e))
            return i
        i += 1
        if i > 300:
            sys.exit("FAIL: no ENOSPC after 300 MiB %s" % what)

n = fill_to_cap(0, "with max-memory=64M")
if n != 63:
    sys.exit("FAIL: %d 1 MiB writes fit under the cap, expected 63" % n)

# More refusals, on this device and on another: still one log line.
for i in range(5):
    write_fails_enospc(h, block(n), BASE + n * MiB, "retry %d" % i)
h2 = nbd.NBD()
h2.connect_uri(other_uri)
write_fails_enospc(h2, b"x" * MiB, 0, "other device")  # 255 pages free
h.flush()
if enospc_lines() != 1:
    sys.exit("FAIL: %d ENOSPC log lines, expected exactly 1" % enospc_lines())

# At the cap: rewriting held pages and writing zeroes need no memory.
h.pwrite(block(5), BASE + 5 * MiB)
h.pwrite(bytes(MiB), BASE + 100 * MiB)
h.zero(MiB, BASE + 101 * MiB)
h2.pwrite(bytes(4096), 0)

# Everything written before the cap is intact, the refused write left
# nothing behind (its range reads as zeroes), from a fresh connection.
h3 = nbd.NBD()
h3.connect_uri(uri)
for i in range(n):
    if h3.pread(MiB, BASE + i * MiB) != block(i):
        sys.exit("FAIL: block %d written before the cap is damaged" % i)
if h3.pread(MiB, BASE + n * MiB) != bytes(MiB):
    sys.exit("FAIL: the refused write changed the device")
if h3.pread(BASE, 0) != bytes(BASE):
    sys.exit("FAIL: data before the first block")

# A trim of 8 MiB frees its whole pages: writes succeed again.  A trim
# is advisory: the partial pages at its ends keep their data.
h.trim(8 * MiB, BASE + 10 * MiB)
lo, hi = BASE + 10 * MiB, BASE + 18 * MiB
a, b = (lo + 4095) // 4096 * 4096, hi // 4096 * 4096
if h3.pread(b - a, a) != bytes(b - a):
    sys.exit("FAIL: the trimmed range's whole pages do not read as zeroes")
if (h3.pread(a - lo, lo) != block(10)[:a - lo] or
        h3.pread(hi - b, b) != block(17)[MiB - (hi - b):]):
    sys.exit("FAIL: the trim changed the partial pages at its ends")
m = fill_to_cap(n, "after the trim")
if m - n != 8:          # 255 + 2047 pages free, 256 per new block
    sys.exit("FAIL: %d writes fit after the trim, expected 8" % (m - n))
h.flush()
if enospc_lines() != 2:
    sys.exit("FAIL: %d ENOSPC log lines after trim and refill, expected 2"
             % enospc_lines())
for i in list(range(10)) + list(range(18, m)):
    if h3.pread(MiB, BASE + i * MiB) != block(i):
        sys.exit("FAIL: block %d damaged after trim and refill" % i)
print("single client: %d MiB written and verified, %d after trim" % (n, m - n))
for x in (h, h2, h3):
    x.shutdown()
EOF
kill -0 "$server_pid" || fail "server died at the memory cap"
[ "$(count_enospc)" -eq 2 ] || { cat "$log"; fail "expected 2 ENOSPC lines"; }
expect_grep "^nbdkit: memblock[^ ]*: error: disk0: write of 1048576 bytes at [0-9]+ refused with ENOSPC" "$log"
stop_server

# Four connections race to the cap with 256 KiB aligned writes (64
# pages each): 256 of them would fill 64 MiB, but the headers of the
# chunks they create (about 1 KiB per 16 MiB chunk) count too, so
# exactly 255 fit.
start_server race max-memory=64M size=256M
/usr/bin/python3 - "$(uri disk0)" <<'EOF' || fail "racing checks failed"
import errno, sys, threading, nbd

uri = sys.argv[1]
BS = 256 << 10
REGION = 64 << 20
done = {}

def data(t, i):
    return (bytes([t + 1, i & 0xff, i >> 8]) * (BS // 3 + 1))[:BS]

def writer(t):
    h = nbd.NBD()
    h.connect_uri(uri)
    i = 0
    try:
        while True:
            h.pwrite(data(t, i), t * REGION + i * BS)
            i += 1
    except nbd.Error as e:
        done[t] = (i, e.errnum)
    h.shutdown()

threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
if any(err != errno.ENOSPC for _, err in done.values()):
    sys.exit("FAIL: writers stopped with %r" % done)
total = sum(n for n, _ in done.values())
if total != 255:
    sys.exit("FAIL: %d writes of 256 KiB succeeded, expected exactly 255 (%r)"
             % (total, done))
h = nbd.NBD()
h.connect_uri(uri)
for t, (n, _) in done.items():
    for i in range(n):
        if h.pread(BS, t * REGION + i * BS) != data(t, i):
            sys.exit("FAIL: writer %d block %d damaged" % (t, i))
    if h.pread(BS, t * REGION + n * BS) != bytes(BS):
        sys.exit("FAIL: writer %d's refused write left data" % t)
print("race: 4 connections, %d x 256 KiB verified (%r)" % (total, done))
EOF
kill -0 "$server_pid" || fail "server died at the memory cap"
[ "$(count_enospc)" -eq 1 ] || { cat "$log"; fail "expected 1 ENOSPC line"; }
stop_server
