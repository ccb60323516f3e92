#!/bin/sh
# Snapshot, rollback and save of a real file system (ext4, guestfish).
#
# Proves, with two appliance launches on a 256 MiB device disk0
# (nbdkit memblock control=PATH):
#  1. launch 1, read-write: mkfs ext4 on disk0, files with known
#     checksums (random data, text, a directory), unmount and sync; then,
#     while the appliance keeps its connection open, the host takes the
#     snapshot disk0@a (memblock-ctl snapshot); the session mounts again
#     and changes the files: deletes a file and a directory, rewrites
#     one, appends to one, adds new ones, frees blocks with fstrim;
#     unmounts and syncs.  disk0 then differs from disk0@a;
#  2. with the appliance gone, memblock-ctl rollback disk0 disk0@a:
#     disk0 reads exactly as disk0@a, byte for byte;
#  3. launch 2: disk0 read-write and disk0@a read-only (readonly:true,
#     as --ro does) in one session: fsck ext4 of disk0 returns 0 and
#     e2fsck -fn finds both clean; both hold the files exactly as at the
#     snapshot (checksums, the deleted file and directory back, the new
#     files absent, the old text);
#  4. memblock-ctl save disk0@a writes an image that qemu-img compare
#     finds identical to disk0@a read over NBD, that e2fsck -fn on the
#     host finds clean, and that is sparse: wherever nbdinfo --map shows
#     disk0@a a hole, SEEK_DATA/SEEK_HOLE show the file a hole, the
#     file's data lies in the device's data, and its allocated blocks
#     are a small part of its 256 MiB.
# A launch that fails or takes over $GUESTFS_TIMEOUT s fails the test.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guestfs-env.sh"

for t in nbdinfo nbdcopy qemu-img sha256sum e2fsck; do
    command -v $t >/dev/null || fail "$t is not installed"
done
ctl() { "$top/scripts/memblock-ctl" -s "$csock" "$@"; }

csock=$tmp/g.ctl
start_server g control="$csock" name=disk0:size=256M
i=0
while [ ! -S "$csock" ]; do
    [ $i -lt 100 ] || { cat "$log"; fail "no control socket at $csock"; }
    sleep 0.1; i=$((i + 1))
done
u0=$(uri disk0)
ua=$(uri disk0@a)

# The files: as at the snapshot (f1, f2, d/one, d/two, hello) and the
# changes after it (f1b over f1, new1).
head -c 3M /dev/urandom >"$tmp/f1"
head -c 1M /dev/urandom >"$tmp/f2"
head -c 512K /dev/urandom >"$tmp/one"
head -c 2M /dev/urandom >"$tmp/two"
head -c 2M /dev/urandom >"$tmp/f1b"
head -c 4M /dev/urandom >"$tmp/new1"
for f in f1 f2 one two f1b new1; do
    eval "sum_$f=\$(sha256sum <\"\$tmp/\$f\" | cut -d' ' -f1)"
done

# dev_sum URI: SHA-256 of a whole device read over NBD.
dev_sum() {
    nbdcopy "$1" - | sha256sum | cut -d' ' -f1
}

# Launch 1.  "!" lines run on the host while the appliance holds its
# connection; their status goes to files checked afterwards.
guestfish_run rw <<EOF
add-drive disk0 protocol:nbd server:unix:$sock format:raw discard:enable
run
mkfs ext4 /dev/sda label:snaptest
mount /dev/sda /
upload $tmp/f1 /f1
upload $tmp/f2 /f2
write /hello "hello before the snapshot\n"
mkdir /d
upload $tmp/one /d/one
upload $tmp/two /d/two
umount-all
sync
!"$top/scripts/memblock-ctl" -s "$csock" snapshot disk0 disk0@a >$tmp/snap.out 2>&1; echo \$? >$tmp/snap.rc
mount /dev/sda /
rm /f2
rm-rf /d
upload $tmp/f1b /f1
write-append /hello "changed after the snapshot\n"
upload $tmp/new1 /new1
mkdir /newdir
write /newdir/x "new\n"
sync
fstrim /
umount-all
sync
echo --- changed
fsck ext4 /dev/sda
EOF
check_output rw "--- changed
0"
[ "$(cat "$tmp/snap.rc")" = 0 ] || { cat "$tmp/snap.out"; fail "snapshot refused"; }
cat "$tmp/snap.out"
expect_grep '^disk0@a +256M +yes +no +- +disk0 ' "$tmp/snap.out"

sum_dev=$(dev_sum "$u0")
sum_snap=$(dev_sum "$ua")
[ "$sum_dev" != "$sum_snap" ] || fail "disk0 did not change after the snapshot"

# 2. Rollback: disk0 is disk0@a again, bit for bit.
ctl rollback disk0 disk0@a >"$tmp/rb.out" 2>&1 ||
    { cat "$tmp/rb.out"; fail "rollback disk0 disk0@a"; }
[ "$(dev_sum "$u0")" = "$sum_snap" ] || fail "after the rollback disk0 is not disk0@a"
[ "$(dev_sum "$ua")" = "$sum_snap" ] || fail "the rollback changed disk0@a"

# 3. Launch 2: both disks, disk0@a read-only.
check_files() {
    cat <<EOF
ls /
ls /d
cat /hello
checksum sha256 /f1
checksum sha256 /f2
checksum sha256 /d/one
checksum sha256 /d/two
is-file /new1
is-dir /newdir
EOF
}
expect_files="d
f1
f2
hello
lost+found
one
two
hello before the snapshot

$sum_f1
$sum_f2
$sum_one
$sum_two
false
false"

{
    cat <<EOF
add-drive disk0 protocol:nbd server:unix:$sock format:raw
add-drive disk0@a protocol:nbd server:unix:$sock format:raw readonly:true
run
fsck ext4 /dev/sda
debug sh "e2fsck -fn /dev/sda >/tmp/fsck 2>&1 && echo sda clean || cat /tmp/fsck"
debug sh "e2fsck -fn /dev/sdb >/tmp/fsck 2>&1 && echo sdb clean || cat /tmp/fsck"
echo --- disk0 after the rollback
mount-ro /dev/sda /
EOF
    check_files
    echo "umount-all"
    echo "echo --- disk0@a"
    echo "mount-ro /dev/sdb /"
    check_files
    echo "umount-all"
} >"$tmp/verify.gf"
guestfish_run verify <"$tmp/verify.gf"
check_output verify "0
sda clean
sdb clean
--- disk0 after the rollback
$expect_files
--- disk0@a
$expect_files"

# 4. Save the snapshot; the image is disk0@a and sparse.
ctl save disk0@a "$tmp/a.raw" >"$tmp/save.out" 2>&1 ||
    { cat "$tmp/save.out"; fail "save disk0@a"; }
cat "$tmp/save.out"
[ ! -e "$tmp/a.raw.tmp" ] || fail "save left $tmp/a.raw.tmp"
[ "$(stat -c %s "$tmp/a.raw")" -eq $((256 * 1048576)) ] || fail "a.raw: wrong size"
qemu-img compare -f raw -F raw "$tmp/a.raw" "$ua" >"$tmp/cmp.out" 2>&1 ||
    { cat "$tmp/cmp.out"; fail "qemu-img compare: a.raw differs from disk0@a"; }
expect_grep '^Images are identical\.$' "$tmp/cmp.out"
e2fsck -fn "$tmp/a.raw" >"$tmp/e2fsck.out" 2>&1 ||
    { cat "$tmp/e2fsck.out"; fail "e2fsck -fn on the host: a.raw is not clean"; }

nbdinfo --map "$ua" >"$tmp/a.map" || fail "nbdinfo --map disk0@a"
python3 - "$tmp/a.map" "$tmp/a.raw" <<'PY' || fail "a.raw is not sparse where disk0@a has holes (above)"
import os, sys
mapfile, path = sys.argv[1], sys.argv[2]
ext = []
for line in open(mapfile):
    f = line.split()
    ext.append((int(f[0]), int(f[1]), int(f[2])))
holes = [(o, o + n) for o, n, t in ext if t & 1]
dev_data = [(o, o + n) for o, n, t in ext if not t & 1]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
data, off = [], 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    e = os.lseek(fd, d, os.SEEK_HOLE)
    data.append((d, e))
    off = e
blocks = os.fstat(fd).st_blocks
os.close(fd)
def overlap(a, b):
    i = j = 0
    out = []
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out
hole_bytes = sum(e - s for s, e in holes)
file_data = sum(e - s for s, e in data)
print("disk0@a: %d extents, %d bytes of holes; a.raw: %d bytes of data "
      "in %d ranges, %d KiB allocated" %
      (len(ext), hole_bytes, file_data, len(data), blocks // 2))
bad = overlap(holes, data)
if bad:
    sys.exit("a.raw holds data in device holes: %s" % bad[:5])
if hole_bytes < 128 << 20:
    sys.exit("disk0@a has only %d bytes of holes" % hole_bytes)
inside = sum(e - s for s, e in overlap(dev_data, data))
if inside != file_data:
    sys.exit("a.raw has %d bytes of data outside disk0@a's data" %
             (file_data - inside))
if blocks * 512 > 64 << 20:
    sys.exit("a.raw allocates %d bytes for a 256 MiB device with ~10 MiB "
             "of files" % (blocks * 512))
PY
du -k "$tmp/a.raw"
kill -0 "$server_pid" || fail "nbdkit died"
echo "snapshot-guestfish: all checks passed"
