#!/bin/sh
# Hostile export names from clients.  An export name is untrusted network
# input (up to 4096 bytes): each one below must be refused at connect
# time or served exactly as documented; the server must never crash,
# never let a bad name create or corrupt a device, never copy raw
# control bytes into its log, and keep serving the data it holds.
# With dynamic=true, a bare unknown name creates nothing (only a name
# with an option does), creating devices past max-devices is refused
# cleanly, sizes past max-memory are refused, and clients racing to
# create one name all get the same device.  Every refusal leaves the
# table as it was: under nbdkit -r a :rw connect creates nothing, and
# neither does one refused for its size, codec, source or max-devices;
# afterwards every max-devices slot can still be filled.
. "$(dirname "$0")/lib.sh"

# tests/nbdraw.py, imported without leaving __pycache__ in the tree.
PYTHONPATH=$top/tests
PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH PYTHONDONTWRITEBYTECODE

# check_log: no raw control bytes (ESC, CR, BEL, DEL) and no sanitizer
# report in $log; every line is an nbdkit line.
check_log() {
    if LC_ALL=C grep -q "$(printf '[\033\r\007\177]')" "$log"; then
        fail "raw control bytes reached the log $log"
    fi
    # U+2028, U+2029 (line breaks) and U+202E (bidi override), raw.
    if LC_ALL=C grep -q "$(printf '\342\200[\250\251\256]')" "$log"; then
        fail "raw line separator or bidi override reached the log $log"
    fi
    if grep -Eq 'Sanitizer|runtime error|Segmentation' "$log"; then
        cat "$log"; fail "sanitizer report or crash in $log"
    fi
    if grep -Ev '^nbdkit: ' "$log" | grep -q .; then
        cat "$log"; fail "$log has lines not from nbdkit (a forged line?)"
    fi
}

# --- Static devices: disk0 (default export) and golden (read-only) ----
start_server static name=disk0 name=golden:ro
/usr/bin/python3 - "$sock" <<'EOF' || fail "static-device checks failed"
import sys, nbdraw
from nbdraw import Client
sock = sys.argv[1]
bad = 0

def go(name):
    c = Client(sock)
    r = c.go(name)
    return c, r

def refuse(name, why):
    """name must be refused, and the same connection must still work."""
    global bad
    c, r = go(name)
    if r[0] == "ok":
        print("FAIL: %r (%s) was served: %r" % (name[:60], why, r)); bad += 1
        c.close(); return
    # The option phase goes on: the next go on this connection works.
    r2 = c.go(b"disk0")
    if r2[0] != "ok":
        print("FAIL: connection unusable after refusing %r: %r" % (name[:60], r2)); bad += 1
    c.disconnect()

# A known pattern on disk0, to check nothing disturbs it.
c, r = go(b"disk0")
assert r[0] == "ok" and r[1] == 16 << 20, r
pattern = bytes((i * 7 + 3) & 0xff for i in range(65536))
assert c.request(nbdraw.CMD_WRITE, 12345, len(pattern), pattern)[0] == 0
c.disconnect()

cases = [
    (b"a" * 4096, "4096 bytes"),
    (b"a" * 4097, "over the NBD limit"),
    (b"a" * 257, "257 bytes"),
    (b"\xff\xfe", "not UTF-8"),
    (b"\xc0\xaf", "overlong UTF-8"),
    (b"\xed\xa0\x80", "UTF-16 surrogate"),
    (b"\xc2\x85", "C1 control"),
    (b"\xe2\x82", "truncated UTF-8"),
    (b"%n%s%x%p", "format string"),
    (b"%s" * 200, "format string, long"),
    (b"../x", "path"),
    (b"/", "slash"),
    (b"disk0/../golden", "path"),
    (b"a:ro:rw", ":ro:rw"),
    (b"disk0:ro:rw", ":ro:rw"),
    (b"disk0:ro:ro", ":ro twice"),
    (b"a:size=1G", "size without dynamic"),
    (b"disk0:size=16M", "size without dynamic"),
    (b"disk0:", "stray colon"),
    (b":", "colon"),
    (b":ro", "no name"),
    (b"disk0::ro", "empty option"),
    (b"disk0:xyz", "unknown option"),
    (b"disk0:size=" + b"9" * 100, "long size"),
    (b"disk0:" + b"x" * 4000, "long option"),
    (b"golden:rw", ":rw on a read-only device"),
    (b"a\x00b", "NUL byte"),
    (b"a\x1b[31mred\x1b[0m", "terminal escape"),
    (b"a\nnbdkit: memblock: forged line", "newline (log forging)"),
    (b"a\rb", "carriage return"),
    (b"a\x07b\x7f", "BEL and DEL"),
    (b"Disk0", "no such device (case)"),
    (b"disk0 ", "no such device (space)"),
    (b"nosuch", "no such device"),
    (b"x\xe2\x80\xa8fake\xe2\x80\xae", "line separator, bidi override"),
]
for name, why in cases:
    refuse(name, why)

# Served as documented.
c, r = go(b"")
if r[:2] != ("ok", 16 << 20) or r[2] & nbdraw.FLAG_READ_ONLY:
    print("FAIL: '' should be disk0, writable: %r" % (r,)); bad += 1
elif c.pread(12345, len(pattern)) != pattern:
    print("FAIL: '' does not show disk0's data"); bad += 1
c.disconnect()
c, r = go(b"disk0:ro")
if r[0] != "ok" or not r[2] & nbdraw.FLAG_READ_ONLY:
    print("FAIL: disk0:ro should be served read-only: %r" % (r,)); bad += 1
c.disconnect()
for name in (b"golden", b"golden:ro"):
    c, r = go(name)
    if r[0] != "ok" or not r[2] & nbdraw.FLAG_READ_ONLY:
        print("FAIL: %r should be served read-only: %r" % (name, r)); bad += 1
    c.disconnect()

# Many refusals on one connection (nbdkit allows 32 options), then a
# good one.
c = Client(sock)
for name, why in cases[:30]:
    if c.go(name)[0] == "ok":
        print("FAIL: %r served on retry" % name[:60]); bad += 1
if c.go(b"disk0")[0] != "ok" or c.pread(12345, len(pattern)) != pattern:
    print("FAIL: disk0 after 30 refusals on one connection"); bad += 1
c.disconnect()

# The registry is unchanged.
c = Client(sock)
names = c.list()
c.abort()
if names != [b"disk0", b"golden"]:
    print("FAIL: exports are now %r" % names); bad += 1
print("static: %d hostile names refused" % len(cases))
sys.exit(1 if bad else 0)
EOF
kill -0 "$server_pid" || fail "server died"
expect_grep "export 'a\\\\x1b\\[31mred" "$log"         # escaped, not raw
expect_grep "export 'a\\\\x0anbdkit" "$log"
expect_grep "export '%n%s%x%p': no such device" "$log"
expect_grep "a client may choose a size only with dynamic=true" "$log"
check_log
stop_server

# --- dynamic=true with a memory cap and a device cap -------------------
start_server dyn dynamic=true max-memory=64M max-devices=4 name=disk0
/usr/bin/python3 - "$sock" <<'EOF' || fail "dynamic checks failed"
import sys, threading, nbdraw
from nbdraw import Client
sock = sys.argv[1]
bad = 0

def go(name):
    c = Client(sock)
    return c, c.go(name)

def expect(name, want_size):
    """name must be served with want_size, or refused if want_size is None."""
    global bad
    c, r = go(name)
    if want_size is None and r[0] == "ok":
        print("FAIL: %r was served: %r" % (name[:60], r)); bad += 1
    elif want_size is not None and r[:2] != ("ok", want_size):
        print("FAIL: %r: expected size %d, got %r" % (name[:60], want_size, r)); bad += 1
    if r[0] == "ok":
        c.disconnect()
    else:
        c.close()

# Bad names stay bad with dynamic=true: they create nothing.
for name in (b"a" * 4096, b"a" * 257, b"\xff", b"../x", b"a:ro:rw",
             b"a\x1bx", b"x:size=-1", b"x:size=junk", b"x:size=8E",
             b"x:size=65M", b"x:size=1G", b"x:size=9223372036854775807",
             b"x:bogus", b"x:size=1M:size=1M"):
    expect(name, None)
expect(b"%n%s", None)                   # a bare unknown name: no device
expect(b"%n%s:rw", 16 << 20)            # a legal name with :rw: created, 16M
expect(b"%n%s", 16 << 20)               # and now found by its bare name
expect(b"sized:size=64M", 64 << 20)      # exactly max-memory: allowed
expect(b"sized", 64 << 20)               # same device again
expect(b"sized:size=32M", None)          # exists with another size
expect(b"disk0:size=16M", 16 << 20)      # matches the declared size

# Eight clients race to create one name: one device, shared by all.
results = []
def racer(i):
    c = Client(sock)
    r = c.go(b"race:rw")
    if r[0] == "ok":
        err, _ = c.request(nbdraw.CMD_WRITE, i * 4096, 4096, bytes([i + 1]) * 4096)
        results.append((i, err))
        c.disconnect()
    else:
        results.append((i, r))
threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
if sorted(results) != [(i, 0) for i in range(8)]:
    print("FAIL: racing creators: %r" % sorted(results)); bad += 1
c, r = go(b"race")
data = c.pread(0, 8 * 4096) if r[0] == "ok" else b""
if data != b"".join(bytes([i + 1]) * 4096 for i in range(8)):
    print("FAIL: the racing clients did not all get the same device"); bad += 1
c.disconnect()

# disk0, %n%s, sized, race: max-devices=4 is reached.
for name in (b"fifth:rw", b"sixth:temp", b"fifth:size=1M", b"fifth"):
    expect(name, None)
expect(b"sized", 64 << 20)               # existing devices still open
expect(b"race", 16 << 20)

c = Client(sock)
names = c.list()
c.abort()
if names != [b"disk0", b"%n%s", b"sized", b"race"]:
    print("FAIL: exports are now %r" % names); bad += 1
sys.exit(1 if bad else 0)
EOF
kill -0 "$server_pid" || fail "server died"
expect_grep "cannot create device 'fifth': max-devices=4 reached" "$log"
expect_grep "size=68157440 is larger than max-memory=67108864" "$log"
expect_grep "exists with size 67108864, not 33554432" "$log"
check_log
stop_server
expect_grep "export '%n%s': no such device \(with dynamic=true, ask for a new device with an option: '%n%s:rw'" "$log"

# --- Refusals leave the table as it was --------------------------------
# refusals PYTHON: run PYTHON with refused(name), served(name, size, ro)
# and exports(names) against the server on $sock.
refusals() {
    /usr/bin/python3 - "$sock" "$1" <<'EOF'
import sys, nbdraw
from nbdraw import Client
sock = sys.argv[1]
bad = 0

def refused(name):
    global bad
    c = Client(sock)
    r = c.go(name)
    c.close()
    if r[0] == "ok":
        print("FAIL: %r was served: %r" % (name, r)); bad += 1

def served(name, size, ro):
    global bad
    c = Client(sock)
    r = c.go(name)
    if r[0] != "ok" or r[1] != size or bool(r[2] & nbdraw.FLAG_READ_ONLY) != ro:
        print("FAIL: %r: want size %d, %s; got %r"
              % (name, size, "read-only" if ro else "read-write", r)); bad += 1
    if r[0] == "ok":
        c.disconnect()
    else:
        c.close()

def exports(want):
    global bad
    c = Client(sock)
    names = c.list()
    c.abort()
    if names != want:
        print("FAIL: exports are %r, not %r" % (names, want)); bad += 1

exec(sys.argv[2])
sys.exit(1 if bad else 0)
EOF
}

# nbdkit -r, dynamic=true, max-devices=4 with two declared: :rw is
# refused for new names and old ones alike, and takes no slot.
saved_extra=${NBDKIT_EXTRA:-}
NBDKIT_EXTRA="$saved_extra -r"
start_server ro dynamic=true max-devices=4 name=g:ro:size=1M name=w:size=1M
NBDKIT_EXTRA=$saved_extra
refusals '
for name in (b"n1:rw", b"n2:rw:temp", b"n3:rw:from=g", b"n4:size=1M:rw",
             b"n5:from=g:temp:rw", b"n6:rw:compress=lz4", b"w:rw", b"g:rw"):
    for _ in range(3):
        refused(name)
exports([b"g", b"w"])
served(b"s1:size=2M", 2 << 20, True)        # the two free slots: still free
served(b"s2:from=g", 1 << 20, True)
refused(b"s3:size=1M")                      # max-devices=4: full now
exports([b"g", b"w", b"s1", b"s2"])
' || fail "-r: a refused :rw connect changed the table"
kill -0 "$server_pid" || fail "server died"
expect_grep "export 'n1:rw': the server \(-r\) is read-only" "$log"
expect_grep "export 'w:rw': the server \(-r\) is read-only" "$log"
check_log
stop_server

# Every other refusal of a new name: size, codec, source, max-devices.
start_server full dynamic=true max-devices=4 max-memory=8M chunk-size=4K \
    name=g:ro:size=1M name=w:size=1M
refusals '
for name in (b"x:size=9M", b"x:size=9M:temp", b"x:compress=zstd",
             b"x:from=g:compress=lz4", b"x:from=nosuch", b"x:from=w",
             b"x:from=x", b"x:from=g:size=1M", b"g:rw", b"g:size=2M",
             b"w:from=g", b"w:compress=lz4", b"x", b"x:ro"):
    refused(name)
exports([b"g", b"w"])
served(b"a1:rw", 16 << 20, False)
served(b"a2:from=g", 1 << 20, False)
refused(b"a3:rw")                           # max-devices=4: full now
refused(b"a3:from=g:temp")
exports([b"g", b"w", b"a1", b"a2"])
' || fail "a refused connect changed the table"
kill -0 "$server_pid" || fail "server died"
expect_grep "cannot create device 'a3': max-devices=4 reached" "$log"
check_log
stop_server
echo "export-names: all hostile names refused or served as documented"
