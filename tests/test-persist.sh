#!/bin/sh
# :persist=PATH: a device loaded at start-up and saved at clean shutdown.
#
# Proves that:
#  - a device with :persist= and no file starts empty at :size=; data
#    written at several offsets with big zero gaps (pages of written
#    zeroes too) is saved at SIGTERM, and at SIGINT, as a sparse raw
#    image: the size is the device's, every all-zero 4 KiB page is a
#    hole (SEEK_DATA/SEEK_HOLE), `du` is a small part of the size,
#    `qemu-img compare` matches what was written, and no PATH.tmp is
#    left behind;
#  - a restart loads the file (size from the file), reads back the same
#    data; changes, trims and zeroes are saved over the old image, whose
#    permissions are kept; a restart with no writes saves an identical
#    file (a round trip is exact); a :size= larger than the file grows
#    the device and the saved image;
#  - bad uses stop nbdkit at start-up with exactly one error line naming
#    the device and the reason: with :from=, with :file= (either order),
#    on :ro, with :temp, an empty path, a missing directory, a directory
#    as the path, a file larger than :size=; a client's export name with
#    :persist= (dynamic=true) is refused with a log line, creates
#    nothing, and the server keeps serving;
#  - a save at shutdown into a directory removed meanwhile, or onto a
#    full filesystem (a 1 MiB tmpfs, when mount works), logs one error
#    line naming the device, the path and the cause, leaves nothing
#    behind (the old image, if any, untouched), and the server exits.
. "$(dirname "$0")/lib.sh"

command -v qemu-img >/dev/null || fail "qemu-img is not installed"
command -v nbdsh >/dev/null || fail "nbdsh is not installed"
M=1048576

# --- Helpers. ---------------------------------------------------------------
# io.py SOCK EXPORT REF OPS...: apply OPS to the device and to the flat
# reference file REF alike.  An op is w:OFFSET:LEN:SEED (pseudo-random
# bytes), z:OFFSET:LEN (write zero bytes as data), t:OFFSET:LEN (trim),
# Z:OFFSET:LEN (write-zeroes).
cat >"$tmp/io.py" <<'EOF'
import random
import sys
import nbd
sock, export, ref = sys.argv[1:4]
h = nbd.NBD()
h.set_export_name(export)
h.connect_unix(sock)
with open(ref, "r+b") as f:
    for op in sys.argv[4:]:
        kind, *args = op.split(":")
        off, n = int(args[0]), int(args[1])
        if kind == "w":
            data = random.Random(int(args[2])).randbytes(n)
            h.pwrite(data, off)
        elif kind == "z":
            data = bytes(n)
            h.pwrite(data, off)
        elif kind == "t":
            h.trim(n, off)
            data = bytes(n)
        elif kind == "Z":
            h.zero(n, off)
            data = bytes(n)
        else:
            raise SystemExit("bad op " + op)
        f.seek(off)
        f.write(data)
h.flush()
h.shutdown()
EOF

# holes.py FILE REF: FILE's data extents cover every non-zero 4 KiB page
# of REF and, on a filesystem of 4 KiB blocks, nothing else (every
# all-zero page is a hole).  Prints the bytes of data.
cat >"$tmp/holes.py" <<'EOF'
import os
import sys
path, ref = sys.argv[1:3]
P = 4096
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
exact = os.statvfs(path).f_bsize == P
data = []
pos = 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    e = os.lseek(fd, d, os.SEEK_HOLE)
    data.append((d, e))
    pos = e
def in_data(off):
    return any(d <= off < e for d, e in data)
with open(ref, "rb") as r:
    page = 0
    while True:
        buf = r.read(P)
        if not buf:
            break
        nz = buf.count(0) != len(buf)
        if nz and not in_data(page):
            raise SystemExit("page at %d has data but is a hole" % page)
        if exact and not nz and in_data(page):
            raise SystemExit("page at %d is all zero but not a hole" % page)
        page += P
print(sum(e - d for d, e in data))
EOF

# check_image FILE REF: FILE is a sparse image equal to REF.
check_image() {
    [ -f "$1" ] || fail "$1 was not saved"
    [ ! -e "$1.tmp" ] || fail "$1.tmp was left behind"
    [ "$(stat -c %s "$1")" -eq "$(stat -c %s "$2")" ] ||
        fail "$1 is $(stat -c %s "$1") bytes, not $(stat -c %s "$2")"
    qemu-img compare -q -f raw -F raw "$1" "$2" ||
        fail "$1 differs from what was written"
    data=$(/usr/bin/python3 "$tmp/holes.py" "$1" "$2") ||
        fail "$1 is not sparse where it should be"
    used=$(( $(du -k "$1" | cut -f1) * 1024 ))
    [ $used -lt $(( $(stat -c %s "$1") / 8 )) ] ||
        fail "$1 uses $used bytes on disk (du), not much less than its size"
    echo "ok: $1: $(stat -c %s "$1") bytes, $data of data, du $used"
}

# io EXPORT OPS...: io.py on the current server and $ref.
io() {
    export_=$1; shift
    /usr/bin/python3 "$tmp/io.py" "$sock" "$export_" "$ref" "$@" ||
        fail "I/O on $export_ failed"
}

# stop_with SIGNAL: stop the last server with SIGNAL, waiting at most
# 60 s for it to exit.
stop_with() {
    kill -s "$1" "$server_pid"
    i=0
    while kill -0 "$server_pid" 2>/dev/null; do
        [ $i -lt 600 ] || fail "nbdkit did not exit within 60 s of SIG$1"
        sleep 0.1; i=$((i + 1))
    done
    wait "$server_pid" || :
}

# --- Saved at SIGTERM as a sparse image. ------------------------------------
img=$tmp/cache.raw
ref=$tmp/ref.raw
truncate -s 64M "$ref"
start_server p1 name=cache:size=64M:persist=$img name=other:size=1M
[ ! -e "$img" ] || fail "the image was made at start-up"
io cache w:0:4096:1 w:$((3 * M)):$M:2 w:$((20 * M + 123)):1000:3 \
    z:$((30 * M)):$((256 * 1024)) \
    w:$((40 * M)):4096:4 z:$((40 * M + 4096)):4096 w:$((40 * M + 8192)):4096:5 \
    w:$((64 * M - 4096)):4096:6
stop_server
check_image "$img" "$ref"
[ "$(grep -c 'error' "$log")" -eq 0 ] || { cat "$log"; fail "errors logged"; }

# --- Restart: loaded from the file, changes saved over it at SIGINT. -------
chmod 600 "$img"
start_server p2 name=cache:persist=$img
nbdsh -u "$(uri cache)" -c 'assert h.get_size() == 64 * 1024 * 1024' ||
    fail "the device is not the file's size"
qemu-img compare -q -f raw -F raw "$ref" "$(uri cache)" ||
    fail "the restarted device does not read back what was saved"
io cache w:$((3 * M + 8192)):8192:7 t:$((3 * M + 65536)):65536 \
    Z:$((3 * M + 131072)):4096 w:$((50 * M)):4096:8
stop_with INT
check_image "$img" "$ref"
[ "$(stat -c %a "$img")" = 600 ] || fail "the image's mode was not kept"

# --- A round trip without writes is exact. ----------------------------------
cp --sparse=always "$img" "$tmp/before.raw"
start_server p3 name=cache:persist=$img
stop_server
cmp "$img" "$tmp/before.raw" || fail "a restart without writes changed the image"
check_image "$img" "$ref"

# --- A larger :size= grows the device and the saved image. ------------------
start_server p4 name=cache:size=96M:persist=$img
nbdsh -u "$(uri cache)" -c 'assert h.get_size() == 96 * 1024 * 1024' ||
    fail ":size=96M did not give a 96 MiB device"
truncate -s 96M "$ref"
io cache w:$((90 * M)):4096:9
stop_server
check_image "$img" "$ref"

# --- Bad uses stop nbdkit at start-up with one line. ------------------------
# bad PARAM WHY ARGS...: as in test-clone-errors.sh.
bad() {
    param=$1 why=$2; shift 2
    rc=0
    rm -f "$tmp/run.sock"
    timeout -k 5 30 ${NBDKIT_WRAPPER:-} nbdkit -U "$tmp/run.sock" ${NBDKIT_EXTRA:-} \
        "$MEMBLOCK_SO" "$@" --run true >"$tmp/out" 2>&1 || rc=$?
    what="nbdkit memblock $*"
    [ $rc -ne 0 ] || { cat "$tmp/out"; fail "$what: accepted"; }
    [ $rc -lt 124 ] || { cat "$tmp/out"; fail "$what: hung or crashed ($rc)"; }
    grep '^nbdkit: .*error: ' "$tmp/out" >"$tmp/errors" || :
    [ "$(wc -l <"$tmp/errors")" -eq 1 ] ||
        { cat "$tmp/out"; fail "$what: expected exactly one error line"; }
    grep -qF -- "$param" "$tmp/errors" ||
        { cat "$tmp/out"; fail "$what: the error does not name '$param'"; }
    grep -Eq -- "$why" "$tmp/errors" ||
        { cat "$tmp/out"; fail "$what: the error does not say '$why'"; }
    echo "ok (exit $rc): $(cat "$tmp/errors")"
}
p=$tmp/bad.raw
bad name=c "from=" name=g:ro "name=c:from=g:persist=$p"
bad name=c "file=" "name=c:file=$img:persist=$p"
bad name=c "file=" "name=c:persist=$p:file=$img"
bad name=c "writable|:ro" "name=c:ro:persist=$p"
bad name=c "temp" "name=c:temp:persist=$p"
bad name=c "needs a path" "name=c:persist="
bad name=c "$tmp/nodir.*No such file" "name=c:persist=$tmp/nodir/x.raw"
bad name=c "directory" "name=c:persist=$tmp"
bad name=c "larger than :size=" "name=c:size=1M:persist=$img"
[ ! -e "$p" ] || fail "a refused start-up made $p"

# A client may never name a path.
start_server p5 dynamic=true name=disk0:size=1M
expect_fail "export with :persist=" \
    nbdsh -u "$(uri "d:persist=$tmp/client.raw")" -c 'pass'
expect_grep "persist=.*command line only" "$log"
expect_fail "export with :persist= on a new name" \
    nbdsh -u "$(uri "d:size=1M:persist=$tmp/client.raw")" -c 'pass'
nbdinfo --list "$(uri disk0)" >"$tmp/list" || fail "nbdinfo --list failed"
grep -q "export=\"d\"\|^export=d\b" "$tmp/list" &&
    fail "a refused export made a device"
nbdsh -u "$(uri disk0)" -c 'h.pwrite(b"x" * 512, 0)' ||
    fail "the server stopped serving"
stop_server
[ ! -e "$tmp/client.raw" ] || fail "a client's export name wrote a file"

# --- Shutdown saves that fail: the server still exits. ----------------------
# The directory goes while the server runs.
mkdir "$tmp/gone"
ref=$tmp/ref-gone.raw
truncate -s 8M "$ref"
start_server p6 name=d:size=8M:persist=$tmp/gone/d.raw
io d w:0:65536:10
rm -rf "$tmp/gone"
stop_server
grep '^nbdkit: .*error: ' "$log" >"$tmp/errors" || :
[ "$(wc -l <"$tmp/errors")" -eq 1 ] ||
    { cat "$log"; fail "a save into a removed directory: not one error line"; }
expect_grep "device 'd'.*$tmp/gone/d.raw.*No such file or directory" \
    "$tmp/errors"
[ ! -e "$tmp/gone" ] || fail "the save made $tmp/gone"
echo "ok: $(cat "$tmp/errors")"

# A full filesystem: nothing left, the old image untouched.
mkdir "$tmp/full"
if mount -t tmpfs -o size=1M tmpfs "$tmp/full" 2>/dev/null; then
    head -c 65536 /dev/urandom >"$tmp/full/d.raw"
    cp "$tmp/full/d.raw" "$tmp/old.raw"
    start_server p7 name=d:size=8M:persist=$tmp/full/d.raw
    ref=$tmp/ref-full.raw
    truncate -s 8M "$ref"
    io d w:0:$((4 * M)):11
    stop_server
    left=$(ls -A "$tmp/full")
    same=yes
    cmp -s "$tmp/full/d.raw" "$tmp/old.raw" || same=no
    umount "$tmp/full"
    grep '^nbdkit: .*error: ' "$log" >"$tmp/errors" || :
    [ "$(wc -l <"$tmp/errors")" -eq 1 ] ||
        { cat "$log"; fail "a save onto a full filesystem: not one error line"; }
    expect_grep "device 'd'.*$tmp/full/d.raw.*No space left on device" \
        "$tmp/errors"
    [ "$left" = d.raw ] || fail "a failed save left '$left' behind"
    [ $same = yes ] || fail "a failed save changed the old image"
    echo "ok: $(cat "$tmp/errors")"
else
    echo "note: cannot mount a tmpfs here; the full-disk case is not run"
fi

echo "PASS: test-persist"
