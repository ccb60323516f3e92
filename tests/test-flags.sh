#!/bin/sh
# The NBD flags memblock advertises, seen by real clients (nbdsh, nbdinfo).
#
# Proves that:
#  - a writable export offers multi-conn, FUA, trim, zero, fast zero,
#    extents (base:allocation), cache and flush, with block sizes
#    1 / 4096 / 64 MiB, and each of those requests works (FUA write,
#    fast zero, trim, cache, flush, block status);
#  - multi-conn holds: data written and flushed on one connection is
#    read by another at once, and a trim on one is seen by the other;
#  - a read-only device (golden) and a read-only export (disk0:ro) are
#    read-only, still offer multi-conn, extents, cache and flush, offer
#    no write, trim or zero, and a write sent anyway (strict mode off)
#    is refused by the server with EPERM, changing nothing;
#  - nbdinfo --can agrees with nbdsh on every flag it knows.
. "$(dirname "$0")/lib.sh"

command -v nbdsh >/dev/null || fail "nbdsh is not installed"
command -v nbdinfo >/dev/null || fail "nbdinfo is not installed"

start_server flags name=disk0 name=golden:ro
export MB_SOCK="$sock"

# Writable export: flags, then each flagged request.
nbdsh --base-allocation -u "$(uri disk0)" -c - <<'EOF' || fail "disk0 flags"
assert not h.is_read_only()
assert h.can_multi_conn()
assert h.can_fua()
assert h.can_trim()
assert h.can_zero()
assert h.can_fast_zero()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert h.can_cache()
assert h.can_flush()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 64 * 2**20

h.pwrite(b"\xab" * 8192, 4096, nbd.CMD_FLAG_FUA)
assert h.pread(8192, 4096) == b"\xab" * 8192
h.zero(4096, 4096, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
assert h.pread(4096, 4096) == bytes(4096)
assert h.pread(4096, 8192) == b"\xab" * 4096
h.trim(4096, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 8192) == bytes(4096)
h.cache(65536, 0)
h.flush()

h.pwrite(b"\x01" * 4096, 1 << 20)
seen = []
def cb(metacontext, offset, entries, err):
    seen.extend(zip(entries[0::2], entries[1::2]))
h.block_status(3 << 20, 0, cb)
# hole+zero (3) up to 1 MiB, data (0) for 4 KiB, then hole+zero.
assert seen[:3] == [(1 << 20, 3), (4096, 0), ((2 << 20) - 4096, 3)], seen
EOF

# multi-conn: a flushed write on one connection is seen by the other.
nbdsh -n -c - <<'EOF' || fail "multi-conn consistency"
import os
uri = "nbd+unix:///disk0?socket=" + os.environ["MB_SOCK"]
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(uri)
b.connect_uri(uri)
for i in range(16):
    pattern = bytes([i + 1]) * 65536
    a.pwrite(pattern, (2 << 20) + i * 4096)
    a.flush()
    assert b.pread(65536, (2 << 20) + i * 4096) == pattern, i
b.trim(1 << 20, 2 << 20)
b.flush()
assert a.pread(1 << 20, 2 << 20) == bytes(1 << 20)
a.pwrite(b"keep" * 1024, 0)     # for the read-only checks below
a.flush()
EOF

# Read-only device and read-only export.
for e in golden disk0:ro; do
    MB_EXPORT=$e nbdsh --base-allocation -u "$(uri $e)" -c - <<'EOF' ||
import os
e = os.environ["MB_EXPORT"]
assert h.is_read_only(), e
assert h.can_multi_conn(), e
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), e
assert h.can_cache(), e
assert h.can_flush(), e
assert not h.can_trim(), e
assert not h.can_zero(), e
assert not h.can_fast_zero(), e
assert not h.can_fua(), e
before = h.pread(8192, 0)
assert before[:4096] == (b"keep" * 1024 if e == "disk0:ro" else bytes(4096))
h.set_strict_mode(0)            # send the write; let the server refuse
for op in (lambda: h.pwrite(b"\xee" * 4096, 0),
           lambda: h.trim(4096, 0),
           lambda: h.zero(4096, 0)):
    try:
        op()
    except nbd.Error as ex:
        assert ex.errno == "EPERM", (e, ex.errno, ex.string)
    else:
        raise AssertionError(e + ": a write-type request succeeded")
assert h.pread(8192, 0) == before, e
EOF
        fail "read-only flags of $e"
done

# nbdinfo --can agrees: 0 means yes, 2 no.
can() {
    rc=0
    nbdinfo --can "$1" "$(uri "$2")" || rc=$?
    [ $rc -eq "$3" ] || fail "nbdinfo --can $1 $2: exit $rc, expected $3"
}
for f in connect read write multi-conn fua trim zero fast-zero \
         structured-reply df cache flush; do
    can $f disk0 0
done
for e in golden disk0:ro; do
    for f in connect read multi-conn structured-reply df cache flush; do
        can $f $e 0
    done
    for f in write fua trim zero fast-zero; do
        can $f $e 2
    done
done
echo "flags: all checks passed"
