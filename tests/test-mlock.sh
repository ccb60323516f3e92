#!/bin/sh
# mlock=true: the pages a device holds are locked in RAM, and VmLck in
# /proc/PID/status follows them page by page (M1 in plugin/raw.c).
#
#  1. With CAP_IPC_LOCK (root), mlock=true max-memory=256M: 64 MiB of
#     random data raise VmLck by exactly 64 MiB (bound: +64 MiB, at most
#     +256 KiB more), far past RLIMIT_MEMLOCK, which the capability
#     overrides; a 1-byte write locks one page (+4 KiB exactly); writes
#     of zeroes into holes and write-zeroes over holes lock nothing
#     (VmLck unchanged); trim and write-zeroes over data unlock exactly
#     the pages they give back (-16 MiB each), and trimming the whole
#     device brings VmLck back to where it started.  The same holds with
#     the limit lowered to 1 MiB (ulimit -l 1024), and mlock=true without
#     max-memory starts.  An image loaded at start-up (:file=) is locked,
#     a clone's own pages are, and a temporary device's pages are
#     unlocked when it goes.
#  2. Without the capability (setpriv drops it from the bounding and
#     inheritable sets) RLIMIT_MEMLOCK applies: max-memory above it, or
#     no max-memory at all, stops nbdkit at start-up with exactly one
#     "nbdkit: ... error:" line naming RLIMIT_MEMLOCK (and its value),
#     max-memory and the value to raise the limit to (ulimit -l KiB);
#     max-memory equal to the limit starts.  Lowering the limit with
#     ulimit -l moves the boundary with it.
#  3. Without the capability, max-memory=4M (half the usual 8 MiB
#     limit) starts, VmLck follows writes and trims, and at the cap
#     writes stop with ENOSPC while VmLck stays equal to the pages held
#     (no page locked for a refused write, none the kernel refused).
#     With the limit lowered under the running server (prlimit), pages
#     past it are written but stay unlocked, and one line says so.
#  4. mlock=true with compress=zstd, or with a device's :compress=lz4, is
#     refused at start-up with one line; a dynamic device asked for with
#     :compress= under mlock=true is refused and the server lives on.
. "$(dirname "$0")/lib.sh"

# ASan's runtime replaces munlock() with a no-op ("AddressSanitizer
# ignores mlock/mlockall/munlock/munlockall"), so under make check-asan
# pages stay locked after a trim (and MADV_DONTNEED then refuses them):
# what this test measures is not there to measure.
if grep -aq __asan_init "$MEMBLOCK_SO"; then
    echo "$MEMBLOCK_SO is built with ASan, whose munlock() does nothing"
    exit 77
fi
for t in setpriv prlimit; do
    command -v $t >/dev/null ||
        fail "$t is not installed (util-linux; scripts/install-deps.sh installs it)"
done
for t in nbdsh nbdcopy nbdinfo; do
    command -v $t >/dev/null || fail "$t is not installed"
done

KiB=1024
MiB=$((1024 * 1024))

# has_cap PID BIT: whether capability BIT is in PID's effective set.
has_cap() {
    eff=$(awk '/^CapEff:/ { print $2 }' "/proc/$1/status")
    [ $(( (0x$eff >> $2) & 1 )) -eq 1 ]
}
CAP_IPC_LOCK=14
CAP_SETPCAP=8
has_cap $$ $CAP_IPC_LOCK && has_cap $$ $CAP_SETPCAP ||
    fail "test-mlock.sh needs CAP_IPC_LOCK and CAP_SETPCAP (run make check as root)"

# The soft RLIMIT_MEMLOCK the refusal checks run under, in KiB: the
# current one (8192 on Debian), or 8192 if it is unlimited.  It can only
# be lowered here, never raised.
lim=$(ulimit -l)
[ "$lim" != unlimited ] || lim=8192
[ "$lim" -ge 64 ] || fail "RLIMIT_MEMLOCK is only $lim KiB (ulimit -l): too low to test"

# nocap [LIMIT_KIB]: a wrapper that runs a command under RLIMIT_MEMLOCK
# of LIMIT_KIB (default $lim) without CAP_IPC_LOCK.
nocap() {
    cat >"$tmp/nocap" <<EOF
#!/bin/sh
ulimit -l ${1:-$lim} || exit 99
exec setpriv --bounding-set -ipc_lock --inh-caps -ipc_lock "\$@"
EOF
    chmod +x "$tmp/nocap"
    echo "$tmp/nocap"
}

# lowlimit LIMIT_KIB: a wrapper that only lowers RLIMIT_MEMLOCK.
lowlimit() {
    cat >"$tmp/lowlimit" <<EOF
#!/bin/sh
ulimit -l $1 || exit 99
exec "\$@"
EOF
    chmod +x "$tmp/lowlimit"
    echo "$tmp/lowlimit"
}

# human BYTES: a size as the plugin prints it ("8 MiB", "8196 KiB").
human() {
    awk -v n="$1" 'BEGIN {
        split("KiB MiB GiB TiB PiB EiB", unit, " "); u = 0
        while (u < 6 && n >= 1024 && n % 1024 == 0) { n /= 1024; u++ }
        if (u == 0) printf "%d bytes\n", n; else printf "%d %s\n", n, unit[u] }'
}

# amount BYTES: an amount of memory as the listing prints it.
amount() {
    awk -v n="$1" 'BEGIN {
        split("KiB MiB GiB TiB PiB EiB", unit, " "); u = 0; v = n
        while (u < 6 && v >= 1024) { v /= 1024; u++ }
        if (u == 0) printf "%d bytes\n", n
        else if (n % (1024 ^ u) == 0) printf "%.0f %s\n", v, unit[u]
        else printf "%.1f %s\n", v, unit[u] }'
}

# start WRAPPER NAME ARGS...: start_server under WRAPPER (may be empty);
# sets $pid to nbdkit's own pid (from its pid file) and $U to disk0.
start() {
    saved_wrapper=${NBDKIT_WRAPPER:-}
    NBDKIT_WRAPPER="$1 $saved_wrapper"
    shift
    start_server "$@"
    NBDKIT_WRAPPER=$saved_wrapper
    pid=$(cat "$tmp/$1.pid")
    U=$(uri disk0)
}

# vmlck: VmLck of the server, in KiB.
vmlck() {
    awk '/^VmLck:/ { print $2 }' "/proc/$pid/status"
}

# expect_lck WHAT MIN MAX: VmLck - base must be within [MIN, MAX] KiB.
expect_lck() {
    now=$(vmlck)
    d=$((now - base))
    echo "$1: VmLck $now KiB ($d KiB over the start)"
    [ "$d" -ge "$2" ] && [ "$d" -le "$3" ] ||
        fail "$1: VmLck grew by $d KiB, expected $2..$3 KiB"
}

# nbd PYTHON: run nbdsh commands against disk0 ($U).
nbd() {
    nbdsh -u "$U" -c "$1" || fail "nbdsh failed: $1"
}

# no_errors: the server must not have logged an error.
no_errors() {
    if grep -q 'error' "$log"; then
        cat "$log"; fail "the server logged errors"
    fi
}

head -c 64M /dev/urandom >"$tmp/random64"
head -c 8M /dev/urandom >"$tmp/random8"

# --- 1. With CAP_IPC_LOCK: VmLck follows the pages held. --------------------
start "" big mlock=true max-memory=256M size=512M
has_cap "$pid" $CAP_IPC_LOCK || fail "nbdkit runs without CAP_IPC_LOCK"
base=$(vmlck)
echo "start: VmLck $base KiB, RLIMIT_MEMLOCK $(ulimit -l) KiB"
nbdcopy "$tmp/random64" "$U" || fail "nbdcopy of 64 MiB failed"
expect_lck "64 MiB written" 65536 $((65536 + 256))
[ $(( $(vmlck) )) -gt "$lim" ] || fail "VmLck did not pass RLIMIT_MEMLOCK"
locked=$(vmlck)
base=$locked

# Zeroes into holes: no page is kept, none locked.
nbd "h.pwrite(bytes(8 << 20), 100 << 20)"
nbd "h.zero(8 << 20, 200 << 20)"
nbd "h.zero(8 << 20, 300 << 20, nbd.CMD_FLAG_NO_HOLE)"
expect_lck "8 MiB of zeroes written into holes, 16 MiB zeroed" 0 0

# One byte: one page.
nbd "h.pwrite(b'x', (400 << 20) + 5)"
expect_lck "1 byte written" 4 4
nbd "h.trim(4096, 400 << 20)"
expect_lck "its page trimmed" 0 0

# Trim and write-zeroes over data give pages back and unlock them.
nbd "h.trim(16 << 20, 16 << 20)"
expect_lck "16 MiB trimmed" -16384 -16384
nbd "h.zero(16 << 20, 32 << 20)"
expect_lck "16 MiB write-zeroed" -32768 -32768
# An unaligned trim keeps the partial pages at its ends (zeroed in place).
nbd "h.trim((8 << 20) + 100, 100)"
expect_lck "an unaligned trim of 8 MiB" -40960 -40952
nbd "h.trim(512 << 20, 0)"
expect_lck "the whole device trimmed" -$locked -$locked
nbdinfo --list "nbd+unix://?socket=$sock" | grep -q '0 bytes in memory' ||
    fail "the device still holds memory after the trim"
no_errors
stop_server

# The capability overrides a lowered limit too; no max-memory is fine.
start "$(lowlimit 1024)" low mlock=true max-memory=256M
base=$(vmlck)
nbdcopy "$tmp/random8" "$U" || fail "nbdcopy of 8 MiB failed"
expect_lck "8 MiB written under ulimit -l 1024" 8192 $((8192 + 256))
no_errors
stop_server
start "" nomax mlock=true
base=$(vmlck)
nbdcopy "$tmp/random8" "$U" || fail "nbdcopy of 8 MiB failed"
expect_lck "8 MiB written without max-memory" 8192 $((8192 + 256))
no_errors
stop_server

# An image loaded at start-up is locked; so are a clone's own pages, and
# a temporary device's go when it does.
head -c 3M /dev/urandom >"$tmp/image"
truncate -s 8M "$tmp/image"
start "" clones mlock=true max-memory=64M dynamic=true \
    "name=golden:ro:file=$tmp/image" name=disk0:from=golden
base=0
expect_lck "a 3 MiB image loaded" 3072 $((3072 + 64))
base=$(vmlck)
nbd "h.pwrite(b'c' * (1 << 20), 1 << 20); h.pwrite(b'c', 7 << 20)"
expect_lck "1 MiB and 1 byte written into the clone" 1028 1028
nbd "h.trim(8 << 20, 0)"
expect_lck "the clone trimmed" 0 0
U=$(uri "scratch:temp:size=8M")
nbd "h.pwrite(b't' * (2 << 20), 0)
lck = [int(l.split()[1]) for l in open('/proc/$pid/status')
       if l.startswith('VmLck:')][0]
print('a temporary device with 2 MiB: VmLck', lck, 'KiB')
assert lck - $base == 2048, 'VmLck grew by %d KiB, not 2048' % (lck - $base)"
i=0
while [ "$(vmlck)" -ne "$base" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
expect_lck "a temporary device with 2 MiB gone" 0 0
no_errors
stop_server

# --- 2. and 4. Refusals at start-up. ----------------------------------------
# run_nbdkit WRAPPER ARGS...: start nbdkit on a private socket; if it
# comes up it runs `true` and exits 0.  Output in $tmp/out, status $rc.
run_nbdkit() {
    wrapper=$1; shift
    rc=0
    rm -f "$tmp/run.sock"
    timeout 30 $wrapper ${NBDKIT_WRAPPER:-} nbdkit -U "$tmp/run.sock" \
        ${NBDKIT_EXTRA:-} "$MEMBLOCK_SO" "$@" --run true >"$tmp/out" 2>&1 ||
        rc=$?
}

# refused WRAPPER ARGS... -- PATTERN...: refused with exactly one
# "nbdkit: ... error:" line, which contains every PATTERN (grep -F).
refused() {
    wrapper=$1; shift
    args=""
    while [ "$1" != -- ]; do args="$args $1"; shift; done
    shift
    run_nbdkit "$wrapper" $args
    what="nbdkit memblock$args"
    [ $rc -ne 124 ] || fail "$what: nbdkit hung (killed after 30 s)"
    [ $rc -ne 99 ] || fail "$what: could not set ulimit -l"
    [ $rc -ne 0 ] || { cat "$tmp/out"; fail "$what: accepted"; }
    [ $rc -lt 128 ] || { cat "$tmp/out"; fail "$what: crashed (exit $rc)"; }
    lines=$(wc -l <"$tmp/out")
    errors=$(grep -c '^nbdkit: .*error: ' "$tmp/out" || :)
    if [ "$lines" -ne 1 ] || [ "$errors" -ne 1 ]; then
        cat "$tmp/out"; fail "$what: expected one nbdkit error line"
    fi
    for p in "$@"; do
        grep -F -q -- "$p" "$tmp/out" ||
            { cat "$tmp/out"; fail "$what: the line does not name '$p'"; }
    done
    echo "refused:$args: $(cat "$tmp/out")"
}

# started WRAPPER ARGS...: nbdkit must start (and exit 0 after --run).
started() {
    wrapper=$1; shift
    run_nbdkit "$wrapper" "$@"
    [ $rc -ne 99 ] || fail "nbdkit memblock $*: could not set ulimit -l"
    [ $rc -eq 0 ] || { cat "$tmp/out"; fail "nbdkit memblock $*: refused (exit $rc)"; }
    [ ! -s "$tmp/out" ] || { cat "$tmp/out"; fail "nbdkit memblock $*: printed something"; }
}

nc=$(nocap)
have=$(human $((lim * KiB)))
# max-memory above the limit: raise it to max-memory, in KiB.
big=$((256 * MiB))
[ $((lim * KiB)) -lt $big ] || big=$((lim * KiB * 2))
refused "$nc" mlock=true max-memory=$big -- \
    "RLIMIT_MEMLOCK ($have)" "max-memory=$(human $big)" \
    "at least $(human $big)" "ulimit -l $((big / KiB))"
refused "$nc" mlock=true max-memory=$((lim * KiB + 4096)) -- \
    "RLIMIT_MEMLOCK ($have)" "max-memory=$(human $((lim * KiB + 4096)))" \
    "ulimit -l $((lim + 4))"
# No max-memory: the data could pass any finite limit.
refused "$nc" mlock=true -- "RLIMIT_MEMLOCK ($have)" "max-memory" "ulimit -l"
refused "$nc" mlock=true size=1M name=a:size=4K -- "RLIMIT_MEMLOCK" "max-memory"
# max-memory up to the limit is fine; mlock=false never asks.
started "$nc" mlock=true max-memory=$((lim * KiB))
started "$nc" mlock=true max-memory=$((lim * KiB / 2))
started "$nc" mlock=false max-memory=$big
started "$nc" max-memory=$big
# A lowered limit moves the boundary.
nc2=$(nocap $((lim / 4)))
refused "$nc2" mlock=true max-memory=$((lim * KiB / 2)) -- \
    "RLIMIT_MEMLOCK ($(human $((lim * KiB / 4))))" \
    "max-memory=$(human $((lim * KiB / 2)))" "ulimit -l $((lim / 2))"
started "$nc2" mlock=true max-memory=$((lim * KiB / 4))
nc=$(nocap)

# Compression keeps data in the malloc heap: refused with or without
# the capability, before the limit is looked at.
refused "" mlock=true compress=zstd -- "mlock=true" "compress=zstd"
refused "" mlock=true max-memory=64M compress=lz4 -- "mlock=true" "compress=lz4"
refused "" mlock=true name=a:compress=lz4 -- "mlock=true" ":compress=lz4" "name=a"
refused "" compress=zstd name=a:compress=none name=b mlock=true -- "mlock=true" "compress=zstd"
refused "$nc" mlock=true max-memory=4M compress=zstd -- "mlock=true" "compress=zstd"
started "" mlock=true compress=none name=a:compress=none max-memory=4M
# Bad values: one line from the plugin, plus nbdkit_parse_bool's own.
run_nbdkit "" mlock=maybe
[ $rc -ne 0 ] && [ $rc -lt 124 ] || { cat "$tmp/out"; fail "mlock=maybe: exit $rc"; }
[ "$(grep -vc '^nbdkit: .*error: ' "$tmp/out")" -eq 0 ] &&
    grep -q '^nbdkit: .*error: mlock=maybe' "$tmp/out" ||
    { cat "$tmp/out"; fail "mlock=maybe: not refused with a line naming it"; }
refused "" mlock=1 mlock=0 -- "mlock"

# --- 3. Without the capability, under the limit: VmLck still follows. ----
# max-memory is half the limit (4 MiB under the usual 8 MiB).
cap=$((lim / 2))
[ "$cap" -ge 1024 ] || fail "RLIMIT_MEMLOCK $lim KiB: too low for part 3"
start "$nc" small mlock=true max-memory=${cap}K size=64M dynamic=true
has_cap "$pid" $CAP_IPC_LOCK && fail "setpriv left nbdkit with CAP_IPC_LOCK"
base=$(vmlck)
half=$((cap / 2))
nbd "import os; h.pwrite(os.urandom($half * 1024), 1 << 20)"
expect_lck "$half KiB written without CAP_IPC_LOCK" $half $half
nbd "h.trim($((half / 2 * 1024)), 1 << 20)"
expect_lck "half of it trimmed" $((half / 2)) $((half / 2))
# Fill to the cap: writes stop with ENOSPC; VmLck is the pages held.
# One request at a time on one connection, closed cleanly: nbdkit 1.32
# can abort ("raw_send_socket: Assertion `sock >= 0' failed") when a
# client such as nbdcopy drops its connections with requests in flight.
nbd "import errno, os
data = os.urandom(8 << 20)
off = 0
try:
    while off < len(data):
        h.pwrite(data[off:off + 65536], off)
        off += 65536
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
assert off < len(data), '8 MiB went into a device capped at $cap KiB'
print('ENOSPC after %d KiB written from offset 0' % (off >> 10))"
now=$(vmlck)
held=$(nbdinfo --list "nbd+unix://?socket=$sock" |
       sed -n 's/.*description: .*, \(.*\) in memory$/\1/p' | head -n 1)
echo "at the cap: VmLck $now KiB, device holds $held"
[ "$((now - base))" -le "$cap" ] || fail "VmLck passed max-memory: $now KiB"
[ "$((now - base))" -ge "$((cap - 1024))" ] ||
    fail "only $((now - base)) KiB locked at a cap of $cap KiB"
[ "$held" = "$(amount $(((now - base) * KiB)))" ] ||
    fail "VmLck ($((now - base)) KiB) is not what the device holds ($held)"
grep -q 'refused to lock' "$log" && { cat "$log"; fail "the kernel refused to lock pages"; }
grep -q 'No space left\|ENOSPC\|max-memory' "$log" ||
    { cat "$log"; fail "no ENOSPC was logged at the cap"; }
nbd "h.trim(64 << 20, 0)"
expect_lck "the device trimmed" 0 0
# A dynamic device asking for compression is refused; the server lives.
expect_fail "a compressed dynamic device under mlock=true" \
    nbdinfo "$(uri "x:compress=zstd")"
kill -0 "$server_pid" || fail "server died"
nbd "h.pwrite(b'y' * 4096, 0)"
expect_lck "one page written after that" 4 4

# The limit lowered under the running server (prlimit): pages the kernel
# will not lock are written all the same, stay unlocked, and one line
# says so, once.
prlimit --pid "$pid" --memlock=$((64 * KiB)):$((64 * KiB)) ||
    fail "prlimit could not lower the server's RLIMIT_MEMLOCK"
nbd "h.pwrite(b'z' * (1 << 20), 8 << 20); h.pwrite(b'w' * 4096, 16 << 20)"
expect_lck "1 MiB written over a 64 KiB limit" 4 64
nbd "assert h.pread(1 << 20, 8 << 20) == b'z' * (1 << 20)
assert h.pread(4096, 16 << 20) == b'w' * 4096
assert h.pread(4096, 0) == b'y' * 4096"
[ "$(grep -c 'refused to lock' "$log")" -eq 1 ] ||
    { cat "$log"; fail "expected one line about pages the kernel refused to lock"; }
nbd "h.trim(64 << 20, 0)"
expect_lck "the device trimmed" 0 0
kill -0 "$server_pid" || fail "server died"
stop_server
echo "mlock: all checks passed"
