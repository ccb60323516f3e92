#!/bin/sh
# guestfish (libguestfs) against memblock, the flagship flow.
#
# Proves, with two appliance launches:
#  1. one read-write session given three devices sees three disks of the
#     right sizes; it partitions the first, makes ext4 on the first two
#     (each with its own label and files), writes a known file and 4 MiB
#     of random data, and "fstrim /" after deleting a 16 MiB file frees
#     that memory in the plugin (discard reaches memblock: nbdinfo --map);
#     then on the third, disk2, a compressed device (:compress=zstd), it
#     partitions, makes ext4, writes a file, 4 MiB of random data and
#     4 MiB of text that packs well, frees a deleted 8 MiB file with
#     fstrim, unmounts, drops the guest's caches, runs e2fsck -fn (no
#     problem found) and reads every file back; on the host, the listing
#     shows disk2 compressed, holding less than its data, and e2fsck -fn
#     on a copy of its partition finds it clean;
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

command -v e2fsck >/dev/null || fail "e2fsck is not installed (e2fsprogs)"

start_server g name=disk0:size=256M name=disk1:size=64M name=golden:ro \
    name=disk2:size=128M:compress=zstd
u0ro="nbd:///disk0:ro?socket=$sock"
u1ro="nbd:///disk1:ro?socket=$sock"
map0="nbd+unix:///disk0?socket=$sock"
map2="nbd+unix:///disk2?socket=$sock"

head -c 4M /dev/urandom >"$tmp/random"
head -c 16M /dev/urandom >"$tmp/junk"
head -c 8M "$tmp/junk" >"$tmp/junk2"
seq -f 'line %.0f of a file memblock keeps compressed' 1 200000 |
    head -c 4M >"$tmp/text"
sum=$(sha256sum <"$tmp/random" | cut -d' ' -f1)
tsum=$(sha256sum <"$tmp/text" | cut -d' ' -f1)

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

# Launch 1: read-write, three devices.  add-drive rather than -a: only
# it can enable discard, which fstrim needs.  "!" lines run on the host
# while the appliance holds its connections.  drop-caches makes e2fsck
# and the reads after it fetch disk2 from memblock, not from the guest's
# page cache.
guestfish_run rw <<EOF
add-drive disk0 protocol:nbd server:unix:$sock format:raw discard:enable
add-drive disk1 protocol:nbd server:unix:$sock format:raw discard:enable
add-drive disk2 protocol:nbd server:unix:$sock format:raw discard:enable
run
list-devices
blockdev-getsize64 /dev/sda
blockdev-getsize64 /dev/sdb
blockdev-getsize64 /dev/sdc
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
echo --- compressed
part-disk /dev/sdc mbr
mkfs ext4 /dev/sdc1 label:memblockz
mount /dev/sdc1 /
write /hello "hello from zstd\n"
upload $tmp/random /random
upload $tmp/text /text
upload $tmp/junk2 /junk
sync
!nbdinfo --map --totals '$map2' >$tmp/alloc2-before
rm /junk
sync
fstrim /
sync
!nbdinfo --map --totals '$map2' >$tmp/alloc2-after
umount-all
drop-caches 3
debug sh "e2fsck -fn /dev/sdc1 >/tmp/fsck 2>&1 && echo e2fsck sdc1 clean || cat /tmp/fsck"
mount-ro /dev/sdc1 /
cat /hello
checksum sha256 /random
checksum sha256 /text
is-file /junk
ls /
vfs-label /dev/sdc1
umount-all
EOF
check_output rw "/dev/sda
/dev/sdb
/dev/sdc
268435456
67108864
134217728
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
memblock1
--- compressed
e2fsck sdc1 clean
hello from zstd

$sum
$tsum
false
hello
lost+found
random
text
memblockz"

before=$(data_bytes "$tmp/alloc-before")
after=$(data_bytes "$tmp/alloc-after")
echo "disk0 data before fstrim: $before bytes, after: $after bytes"
[ "$before" -ge $((20 * 1024 * 1024)) ] ||
    fail "disk0 holds only $before bytes of data after 20 MiB of files"
[ $((before - after)) -ge $((15 * 1024 * 1024)) ] ||
    fail "fstrim freed only $((before - after)) bytes of the 16 MiB deleted"

before=$(data_bytes "$tmp/alloc2-before")
after=$(data_bytes "$tmp/alloc2-after")
echo "disk2 (zstd) data before fstrim: $before bytes, after: $after bytes"
[ $((before - after)) -ge $((7 * 1024 * 1024)) ] ||
    fail "fstrim freed only $((before - after)) bytes of disk2's 8 MiB deleted"

# disk2 holds less memory than its data (the text packs) and says with
# which codec: "128 MiB, read-write, N MiB of data in M MiB (zstd)".
nbdinfo --list "nbd+unix://?socket=$sock" >"$tmp/list" ||
    fail "nbdinfo --list failed"
line=$(grep -A1 '^export="disk2":' "$tmp/list" | grep description) ||
    { cat "$tmp/list"; fail "no description for disk2"; }
echo "$line"
figs=$(echo "$line" |
    sed -nE 's/.*, ([0-9.]+) ([A-Za-z]+) of data in ([0-9.]+) ([A-Za-z]+) \(zstd\)$/\1 \2 \3 \4/p' |
    awk 'function b(v, u) {
             return v * (u == "KiB" ? 1024 : u == "MiB" ? 1048576 :
                         u == "GiB" ? 1073741824 : 1) }
         { printf "%.0f %.0f\n", b($1, $2), b($3, $4); n++ }
         END { exit n != 1 }') ||
    { cat "$tmp/list"; fail "disk2 is not listed as compressed with zstd"; }
set -- $figs
# 8 MiB of files: 4 MiB of text, which packs, and 4 MiB random, which
# does not.
[ "$1" -ge $((8 * 1024 * 1024)) ] ||
    { cat "$tmp/list"; fail "disk2 holds only $1 bytes of data"; }
[ "$2" -lt $(($1 - 2 * 1024 * 1024)) ] ||
    { cat "$tmp/list"; fail "disk2: $1 bytes of data take $2 bytes"; }

# e2fsck on the host, on what memblock holds: disk2's partition, where
# its MBR says it starts.
nbdcopy "$map2" "$tmp/disk2.img" || fail "nbdcopy $map2 failed"
lba=$(od -An -tu4 -j454 -N4 "$tmp/disk2.img" | tr -d ' ')
[ "$lba" -gt 0 ] || fail "no partition in disk2's MBR"
tail -c +$((lba * 512 + 1)) "$tmp/disk2.img" >"$tmp/disk2p1.img"
rm -f "$tmp/disk2.img"
e2fsck -fn "$tmp/disk2p1.img" >"$tmp/e2fsck.out" 2>&1 ||
    { cat "$tmp/e2fsck.out"; fail "e2fsck -fn on the host found problems in disk2"; }
echo "host e2fsck -fn disk2p1: $(tail -n 1 "$tmp/e2fsck.out")"
rm -f "$tmp/disk2p1.img"

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
