#!/bin/sh
# The v1 behaviour end to end through nbdkit, nbdsh, nbdinfo and qemu-io:
# default export, devices isolated from each other, data surviving
# reconnects, read-only exports and devices, unknown exports refused,
# dynamic=true creation, and the export list.
. "$(dirname "$0")/lib.sh"

for t in nbdsh nbdinfo qemu-io; do
    command -v $t >/dev/null || fail "$t is not installed (make check installs it)"
done

# nbdsh_run EXPORT PYTHON: run PYTHON with h connected to EXPORT.
nbdsh_run() {
    nbdsh -u "$(uri "$1")" -c "$2"
}

start_server main name=disk0 name=scratch:size=4G name=golden:ro \
    name=small:rw:size=1000

# The default export ("") is the first declared device, 16 MiB.
nbdsh -u "nbd+unix://?socket=$sock" -c '
assert h.get_size() == 16 * 1024 * 1024, h.get_size()
assert not h.is_read_only()
h.pwrite(b"default-export", 4096)
' || fail "default export"
nbdsh_run disk0 'assert h.pread(14, 4096) == b"default-export"' ||
    fail "the default export is not disk0"
nbdinfo "nbd+unix://?socket=$sock" >"$tmp/info"
expect_grep '^export="disk0":' "$tmp/info"

# Two devices are isolated: the same offsets hold different data.
nbdsh_run scratch '
assert h.get_size() == 4 * 1024**3
assert h.pread(14, 4096) == bytes(14), "scratch sees disk0 data"
h.pwrite(b"scratch-data", 4096)
h.pwrite(b"far", 4 * 1024**3 - 3)
' || fail "scratch device"
nbdsh_run disk0 'assert h.pread(14, 4096) == b"default-export"' ||
    fail "scratch write reached disk0"

# Data survives reconnecting, also with qemu-io.
nbdsh_run scratch '
assert h.pread(12, 4096) == b"scratch-data"
assert h.pread(3, 4 * 1024**3 - 3) == b"far"
' || fail "data lost on reconnect"
qemu-io -f raw -c 'write -P 0x5a 1M 64k' "$(uri scratch)" >"$tmp/qio" 2>&1 ||
    { cat "$tmp/qio"; fail "qemu-io write"; }
qemu-io -f raw -c 'read -P 0x5a 1M 64k' "$(uri scratch)" >"$tmp/qio" 2>&1 ||
    { cat "$tmp/qio"; fail "qemu-io read"; }
grep -q "Pattern verification failed" "$tmp/qio" && fail "qemu-io pattern"

# A device of a size that is not a multiple of 512 works to its last byte.
nbdsh_run small '
assert h.get_size() == 1000
h.pwrite(b"end", 997)
assert h.pread(3, 997) == b"end"
' || fail "1000-byte device"

# :ro export of a writable device: reads work, writes refused, no change.
nbdsh_run disk0:ro '
import errno
assert h.is_read_only()
h.set_strict_mode(0)    # send the requests: let the server refuse them
assert h.pread(14, 4096) == b"default-export"
for op in (lambda: h.pwrite(b"x", 4096), lambda: h.zero(4096, 4096),
           lambda: h.trim(4096, 4096)):
    try:
        op()
        raise AssertionError("write-type request succeeded on :ro")
    except nbd.Error as e:
        assert e.errnum in (errno.EPERM, errno.EROFS), e
' || fail ":ro export"
nbdsh_run disk0 'assert h.pread(14, 4096) == b"default-export"' ||
    fail ":ro export changed data"
qemu-io -f raw -r -c 'read -P 0 0 4k' "$(uri disk0:ro)" >"$tmp/qio" 2>&1 ||
    { cat "$tmp/qio"; fail "qemu-io -r on :ro"; }
expect_fail "qemu-io write on :ro" qemu-io -f raw -c 'write 0 4k' "$(uri disk0:ro)"

# A read-only device refuses writes, even asked for with :rw.
nbdsh_run golden '
assert h.is_read_only()
assert h.pread(4096, 0) == bytes(4096)
try:
    h.pwrite(b"x", 0)
    raise AssertionError("write succeeded on a read-only device")
except nbd.Error:
    pass
' || fail "read-only device"
expect_fail "golden:rw" nbdsh_run golden:rw 'pass'
expect_grep "export 'golden:rw': the device is read-only" "$log"

# Unknown exports are refused and named in the log.
expect_fail "unknown export" nbdsh_run nosuchdisk 'pass'
expect_grep "export 'nosuchdisk': no such device" "$log"
expect_fail "size from a client without dynamic" nbdsh_run disk0:size=1G 'pass'
expect_grep "may choose a size only with dynamic=true" "$log"

# nbdinfo --list shows every device with size and ro/rw.
nbdinfo --list "nbd+unix://?socket=$sock" >"$tmp/list"
for e in 'export="disk0"' 'description: 16 MiB, read-write' \
         'export="scratch"' 'description: 4 GiB, read-write' \
         'export="golden"' 'description: 16 MiB, read-only' \
         'export="small"' 'description: 1000 bytes, read-write'; do
    grep -qF "$e" "$tmp/list" || { cat "$tmp/list"; fail "--list lacks $e"; }
done
stop_server

# dynamic=true: a new name with an option (here :rw) creates a device on
# connect; it persists and is found again by its bare name, a client may
# pick its size, and max-devices bounds the count.  A bare unknown name
# creates nothing and the log says how to ask for a new device.
start_server dyn size=8M dynamic=true max-devices=3
expect_fail "a bare unknown name with dynamic=true" nbdsh_run fresh 'pass'
expect_grep "export 'fresh': no such device \(with dynamic=true, ask for a new device with an option: 'fresh:rw'" "$log"
nbdsh_run fresh:rw '
assert h.get_size() == 8 * 1024 * 1024
assert h.pread(8, 0) == bytes(8)
h.pwrite(b"fresh!", 0)
' || fail "dynamic creation"
nbdsh_run fresh 'assert h.pread(6, 0) == b"fresh!"' || fail "dynamic device lost data"
nbdsh_run big:size=1G 'assert h.get_size() == 1024**3' || fail "dynamic size"
expect_fail "dynamic over max-devices" nbdsh_run third:rw 'pass'
expect_grep "max-devices=3 reached" "$log"
nbdinfo --list "nbd+unix://?socket=$sock" >"$tmp/list"
for e in disk0 fresh big; do
    grep -qF "export=\"$e\"" "$tmp/list" || { cat "$tmp/list"; fail "--list lacks $e"; }
done
nbdsh_run fresh 'assert h.pread(6, 0) == b"fresh!"' || fail "registry damaged"
stop_server

# nbdkit -r: every device is listed and served read-only, and :rw is
# refused.
saved_extra=${NBDKIT_EXTRA:-}
NBDKIT_EXTRA="$saved_extra -r"
start_server ro name=disk0 name=golden:ro
NBDKIT_EXTRA=$saved_extra
nbdinfo --list "nbd+unix://?socket=$sock" >"$tmp/list"
[ "$(grep -c 'description: 16 MiB, read-only' "$tmp/list")" -eq 2 ] ||
    { cat "$tmp/list"; fail "-r: devices not listed read-only"; }
nbdsh_run disk0 'assert h.is_read_only()' || fail "-r: disk0 writable"
expect_fail "disk0:rw under -r" nbdsh_run disk0:rw 'pass'
expect_grep "export 'disk0:rw': the server \(-r\) is read-only" "$log"
stop_server

# The magic key: a bare device name works too.
start_server bare golden2:size=2M
nbdinfo "nbd+unix://?socket=$sock" >"$tmp/info"
expect_grep '^export="golden2":' "$tmp/info"
expect_grep 'export-size: 2097152 ' "$tmp/info"
echo "basics: all checks passed"
