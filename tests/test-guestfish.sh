#!/bin/sh
# guestfish (libguestfs) against memblock, the flagship flow.
#
# Proves, with two appliance launches:
#  1. one read-write session given two devices sees two disks of the
#     right sizes; it partitions the first, makes ext4 on both (each
#     with its own label and files), writes a known file and 4 MiB of
#     random data, and "fstrim /" after deleting a 16 MiB file frees that
#     memory in the plugin (discard reaches memblock: nbdinfo --map);
#  2. a new read-only session (guestfish --ro, -a twice: the disk0:ro and
#     disk1:ro exports) finds the file and the checksum intact, and each
#     disk independent, holding only its own files;
#  3. a write-mode launch on a read-only device (golden) or a read-only
#     export (disk0:ro) fails at once, cleanly, and changes nothing.
# A launch that fails or takes over $GUESTFS_TIMEOUT s fails the test.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guestfs-env.sh"

for t in nbdinfo nbdcopy sha256sum; do
    command -v $t >/dev/null || fail "$t is not installed"
done

start_server g name=disk0:size=256M name=disk1:size=64M name=golden:ro
u0ro="nbd:///disk0:ro?socket=$sock"
u1ro="nbd:///disk1:ro?socket=$sock"
map0="nbd+unix:///disk0?socket=$sock"

head -c 4M /dev/urandom >"$tmp/random"
head -c 16M /dev/urandom >"$tmp/junk"
sum=$(sha256sum <"$tmp/random" | cut -d' ' -f1)

# guestfish_run NAME ARGS...: run guestfish with the script on stdin,
# output in $tmp/NAME.out; fails the test on error or timeout.
guestfish_run() {
    gname=$1; shift
    start=$(date +%s)
    rc=0
    timeout "$GUESTFS_TIMEOUT" guestfish "$@" \
        >"$tmp/$gname.out" 2>"$tmp/$gname.err" || rc=$?
    echo "guestfish $gname: exit $rc after $(( $(date +%s) - start )) s"
    if [ $rc -ne 0 ]; then
        cat "$tmp/$gname.out" "$tmp/$gname.err"
        [ $rc -ne 124 ] || fail "guestfish $gname: over $GUESTFS_TIMEOUT s"
        fail "guestfish $gname failed (exit $rc)"
    fi
}

# check_output NAME EXPECTED: the guestfish output must be exactly that.
check_output() {
    printf '%s\n' "$2" >"$tmp/$1.want"
    diff -u "$tmp/$1.want" "$tmp/$1.out" ||
        fail "guestfish $1: output differs from the expected (above)"
}

# dev_sum URI FILE: SHA-256 of a whole device into FILE.
dev_sum() {
    nbdcopy "$1" "$tmp/dev.img" || fail "nbdcopy $1 failed"
    sha256sum <"$tmp/dev.img" >"$2"
    rm -f "$tmp/dev.img"
}

# Bytes of data (not hole) nbdinfo --map --totals reported, from FILE.
data_bytes() {
    [ -s "$1" ] || fail "no nbdinfo --map output in $1"
    awk '$3 == 0 { s += $1 } END { print s + 0 }' "$1"
}

# Launch 1: read-write, two devices.  add-drive rather than -a: only it
# can enable discard, which fstrim needs.  "!" lines run on the host
# while the appliance holds its connections.
guestfish_run rw <<EOF
add-drive disk0 protocol:nbd server:unix:$sock format:raw discard:enable
add-drive disk1 protocol:nbd server:unix:$sock format:raw discard:enable
run
list-devices
blockdev-getsize64 /dev/sda
blockdev-getsize64 /dev/sdb
part-disk /dev/sda mbr
mkfs ext4 /dev/sda1 label:memblock0
mkfs ext4 /dev/sdb label:memblock1
mount /dev/sda1 /
write /hello "hello from memblock\n"
upload $tmp/random /random
mkdir /second
mount /dev/sdb /second
write /second/other "second disk\n"
upload $tmp/junk /junk
sync
!nbdinfo --map --totals '$map0' >$tmp/alloc-before
rm /junk
sync
fstrim /
sync
!nbdinfo --map --totals '$map0' >$tmp/alloc-after
echo ---
cat /hello
checksum sha256 /random
ls /
ls /second
vfs-label /dev/sda1
vfs-label /dev/sdb
umount-all
EOF
check_output rw "/dev/sda
/dev/sdb
268435456
67108864
---
hello from memblock

$sum
hello
lost+found
random
second
lost+found
other
memblock0
memblock1"

before=$(data_bytes "$tmp/alloc-before")
after=$(data_bytes "$tmp/alloc-after")
echo "disk0 data before fstrim: $before bytes, after: $after bytes"
[ "$before" -ge $((20 * 1024 * 1024)) ] ||
    fail "disk0 holds only $before bytes of data after 20 MiB of files"
[ $((before - after)) -ge $((15 * 1024 * 1024)) ] ||
    fail "fstrim freed only $((before - after)) bytes of the 16 MiB deleted"

dev_sum "$map0" "$tmp/disk0.sum"

# Launch 2: a new, read-only session on the :ro exports.
guestfish_run ro --ro --format=raw -a "$u0ro" -a "$u1ro" <<EOF
run
list-devices
blockdev-getsize64 /dev/sda
blockdev-getsize64 /dev/sdb
vfs-type /dev/sda1
vfs-type /dev/sdb
mount-ro /dev/sda1 /
cat /hello
checksum sha256 /random
is-file /junk
umount /
mount-ro /dev/sdb /
cat /other
is-file /hello
is-file /random
EOF
check_output ro "/dev/sda
/dev/sdb
268435456
67108864
ext4
ext4
hello from memblock

$sum
false
second disk

false
false"

# 3: write-mode launches on read-only targets must fail, promptly.
# LIBGUESTFS_DEBUG=1 makes qemu's reason visible.
for target in "nbd:///golden?socket=$sock" "$u0ro"; do
    rc=0
    LIBGUESTFS_DEBUG=1 timeout "$GUESTFS_TIMEOUT" guestfish --format=raw \
        -a "$target" run >"$tmp/rwfail.out" 2>&1 || rc=$?
    [ $rc -ne 0 ] || fail "write-mode launch on $target succeeded"
    [ $rc -ne 124 ] || fail "write-mode launch on $target hung"
    expect_grep 'is read-only' "$tmp/rwfail.out"
    kill -0 "$server_pid" || fail "nbdkit died after a launch on $target"
done

dev_sum "$map0" "$tmp/disk0.sum2"
cmp -s "$tmp/disk0.sum" "$tmp/disk0.sum2" ||
    fail "disk0 changed after read-only sessions"
nbdinfo --map "nbd+unix:///golden?socket=$sock" >"$tmp/golden.map"
check_map="         0    16777216    3  hole,zero"
[ "$(cat "$tmp/golden.map")" = "$check_map" ] ||
    { cat "$tmp/golden.map"; fail "golden is no longer all holes"; }
echo "guestfish: all checks passed"
