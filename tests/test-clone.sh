#!/bin/sh
# Golden images and copy-on-write clones with real clients.
#
# Proves, on an ext4 image built from ~50 MiB of real files (mkfs.ext4
# -d), loaded with name=golden:ro:file=... and cloned with :from=golden:
#  1. the load is logged (with -v); golden has the file's size and bytes (nbdcopy,
#     sha256), and costs memory only for its data (holes and zero pages
#     are free); nbdinfo --list describes golden and each clone
#     ("clone of golden", "... in memory");
#  2. a fresh clone reads as the file (qemu-img compare) and has the
#     golden's map (nbdinfo --map), at almost no memory;
#  3. one guestfish launch mounts three clones read-write, writes a
#     different file into each, deletes a 4 MiB file in one and fstrims
#     it, unmounts and fscks each (0: clean); afterwards golden is still
#     bit-identical to the file; each clone, read back over NBD, is
#     clean for e2fsck -f -n on the host and holds (debugfs) its own
#     files and none of the others'; the trimmed file's blocks are holes
#     in that clone only; and each clone paid only for what changed;
#  4. a chain (base2:ro:from=golden, vm4:from=base2) reads as the file,
#     and writes to vm4 reach neither base2 nor golden;
#  5. qemu-io writes into a clone (aligned, unaligned across a page
#     boundary, the last byte) read back, leave every other byte of the
#     clone equal to the file, and leave golden unchanged;
#  6. trim and write-zeroes in a clone (page-aligned over data, and
#     unaligned) read as zeroes, a later small write into a trimmed page
#     leaves the rest of that page zero, every other byte of the clone
#     is the file's, golden is unchanged, and nbdinfo --map shows the
#     trimmed range as a hole.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guestfs-env.sh"

for t in mkfs.ext4 e2fsck debugfs nbdinfo nbdcopy nbdsh qemu-img qemu-io \
         sha256sum /usr/bin/python3; do
    command -v $t >/dev/null ||
        fail "$t is not installed (mkfs.ext4, e2fsck, debugfs: e2fsprogs)"
done

M=1048576
img=$tmp/golden.raw

# --- Build the golden image from real files. ------------------------------
# About 36 MiB of /usr/bin (files under 4 MiB) and 12 MiB of
# /usr/share/doc, in name order, plus /blob: 4 MiB of random data that a
# clone deletes and fstrims later.
mkdir "$tmp/root"
{ pick /usr/bin $((36 * M)); pick /usr/share/doc $((12 * M)); } >"$tmp/files"
tar -C / -cf - -T "$tmp/files" | tar -xf - -C "$tmp/root" ||
    fail "cannot copy the staged files"
head -c 4M /dev/urandom >"$tmp/root/blob"
staged=$(du -s -B1 --apparent-size "$tmp/root" | cut -f1)
echo "staged $(wc -l <"$tmp/files") files + /blob, $staged bytes"
[ "$staged" -ge $((40 * M)) ] || fail "staged only $staged bytes of files"
blob_sum=$(sha256sum <"$tmp/root/blob" | cut -d' ' -f1)
# A staged file with a plain name, to checksum inside the guest.
file1=$(grep -E '^usr/bin/[A-Za-z0-9._-]+$' "$tmp/files" | head -n 1)
[ -n "$file1" ] || fail "no plainly named file staged from /usr/bin"
file1_sum=$(sha256sum <"/$file1" | cut -d' ' -f1)

truncate -s 128M "$img"
mkfs.ext4 -q -F -b 4096 -d "$tmp/root" "$img" || fail "mkfs.ext4 -d failed"
e2fsck -f -n "$img" >"$tmp/e2fsck.out" 2>&1 ||
    { cat "$tmp/e2fsck.out"; fail "the new image is not clean"; }
img_size=$(stat -c %s "$img")
img_alloc=$(du -B1 "$img" | cut -f1)
img_sum=$(sha256sum <"$img" | cut -d' ' -f1)
# The 4 KiB blocks of /blob: first block and count (one extent).
debugfs -R "blocks /blob" "$img" >"$tmp/blob.blocks" 2>/dev/null ||
    fail "debugfs blocks /blob failed"
blob_first=$(tr ' ' '\n' <"$tmp/blob.blocks" | grep . | head -n 1)
blob_count=$(tr ' ' '\n' <"$tmp/blob.blocks" | grep -c .)
blob_last=$(tr ' ' '\n' <"$tmp/blob.blocks" | grep . | tail -n 1)
[ "$blob_count" -eq 1024 ] && [ $((blob_last - blob_first)) -eq 1023 ] ||
    fail "/blob is not 1024 contiguous blocks"
blob_off=$((blob_first * 4096))
echo "image: $img_size bytes, $img_alloc allocated, /blob at $blob_off"

# --- Python helpers. -------------------------------------------------------
cat >"$tmp/mb.py" <<'EOF'
import json, re, subprocess, sys
import nbd

UNITS = {"bytes": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20,
         "GiB": 1 << 30, "TiB": 1 << 40}

def exports(sock):
    out = subprocess.run(["nbdinfo", "--list", "--json",
                          "nbd+unix:///?socket=" + sock],
                         check=True, capture_output=True, text=True).stdout
    return {e["export-name"]: e for e in json.loads(out)["exports"]}

def memory(desc):
    m = re.search(r"([0-9]+(?:\.[0-9]+)?) (bytes|B|KiB|MiB|GiB|TiB) in memory$",
                  desc)
    if not m:
        sys.exit("no 'N UNIT in memory' at the end of description %r" % desc)
    return float(m.group(1)) * UNITS[m.group(2)]

def cmd_memory(sock, name):
    """Print the bytes in memory of export name, from nbdinfo --list."""
    e = exports(sock)
    if name not in e:
        sys.exit("export %s not listed" % name)
    print(int(memory(e[name]["description"])))

def cmd_verify(path, uri, *changes):
    """The device at uri must equal the file at path except in the
    ranges OFF:LEN:zero (zeroes) or OFF:LEN:0xNN (that byte)."""
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    want = bytearray(open(path, "rb").read())
    if len(want) != size:
        sys.exit("device is %d bytes, file %d" % (size, len(want)))
    for c in changes:
        off, n, kind = c.split(":")
        off, n = int(off), int(n)
        want[off:off + n] = bytes(n) if kind == "zero" else \
            bytes([int(kind, 16)]) * n
    step = 4 << 20
    for off in range(0, size, step):
        n = min(step, size - off)
        got = h.pread(n, off)
        if got != want[off:off + n]:
            i = next(i for i in range(n) if got[i] != want[off + i])
            sys.exit("%s: byte %d is %d, want %d" %
                     (uri, off + i, got[i], want[off + i]))
    h.shutdown()

def cmd_hole(mapfile, off, n):
    """nbdinfo --map output in mapfile: [off, off+n) lies in extents of
    type 3 (hole,zero); exit 3 if it does not."""
    off, n = int(off), int(n)
    end = off + n
    for line in open(mapfile):
        f = line.split()
        s, l, t = int(f[0]), int(f[1]), int(f[2])
        if s + l <= off or s >= end:
            continue
        if t != 3:
            print("extent %s overlaps [%d, %d) and is not a hole" %
                  (line.strip(), off, end))
            sys.exit(3)
    print("[%d, %d) is a hole" % (off, end))

getattr(sys.modules[__name__], "cmd_" + sys.argv[1])(*sys.argv[2:])
EOF
mb() { /usr/bin/python3 "$tmp/mb.py" "$@"; }

# dev_sum EXPORT: SHA-256 of a whole device read over NBD.
dev_sum() {
    nbdcopy "$(uri "$1")" - >"$tmp/sum.img" ||
        { echo "FAIL: nbdcopy $1 failed" >&2; exit 1; }
    sha256sum <"$tmp/sum.img" | cut -d' ' -f1
    rm -f "$tmp/sum.img"
}

# golden_intact WHEN: golden read over NBD is the file, bit for bit.
golden_intact() {
    [ "$(dev_sum golden)" = "$img_sum" ] ||
        fail "golden differs from $img ($1)"
}

# memory_of EXPORT: bytes in memory in its nbdinfo --list description.
memory_of() {
    mb memory "$sock" "$1" ||
        { echo "FAIL: no memory figure for $1" >&2; exit 1; }
}

# data_bytes MAPFILE: bytes of data (type 0) in nbdinfo --map output.
data_bytes() {
    awk '$3 == 0 { s += $2 } END { print s + 0 }' "$1"
}

# --- 1. Load, list, size, memory. ------------------------------------------
start_server clone "name=golden:ro:file=$img" name=vm1:from=golden \
    name=vm2:from=golden name=vm3:from=golden name=base2:ro:from=golden \
    name=vm4:from=base2 name=vm5:from=golden name=vm6:from=golden

[ "$(nbdinfo --size "$(uri golden)")" = "$img_size" ] ||
    fail "golden's size is not the file's ($img_size)"
nbdinfo --is read-only "$(uri golden)" || fail "golden is not read-only"
rc=0; nbdinfo --is read-only "$(uri vm1)" || rc=$?
[ $rc -eq 2 ] || fail "vm1: --is read-only gave $rc, not 2 (no)"
golden_intact "just loaded"

nbdinfo --list "$(uri '')" >"$tmp/list0" || fail "nbdinfo --list failed"
grep -E '^export=|description:' "$tmp/list0"
for e in golden vm1 vm2 vm3 vm5 vm6; do
    grep -qF "export=\"$e\"" "$tmp/list0" || fail "--list lacks $e"
done
size_h="128 MiB"
mem_re='[0-9]+(\.[0-9]+)? (bytes|B|KiB|MiB|GiB) in memory$'
expect_grep "description: $size_h, read-only, $mem_re" "$tmp/list0"
[ "$(grep -Ec "description: $size_h, read-write, clone of golden, $mem_re" \
     "$tmp/list0")" -eq 5 ] ||
    fail "--list: not 5 read-write clones of golden (vm1-3, vm5, vm6)"
expect_grep "description: $size_h, read-only, clone of golden, $mem_re" "$tmp/list0"
expect_grep "description: $size_h, read-write, clone of base2, $mem_re" "$tmp/list0"

gmem=$(memory_of golden)
echo "golden: $gmem bytes in memory; file: $img_alloc bytes allocated"
[ "$gmem" -ge $((40 * M)) ] || fail "golden holds only $gmem bytes"
# Holes and zero pages cost nothing: at most the file's allocated
# blocks (2% for a rounded figure).
[ "$gmem" -le $((img_alloc + img_alloc / 50)) ] ||
    fail "golden holds $gmem bytes, more than the file's $img_alloc allocated"
for e in vm1 vm2 vm3 vm4 vm5 vm6 base2; do
    m=$(memory_of $e)
    [ "$m" -lt $M ] || fail "fresh clone $e already holds $m bytes"
done

# --- 2. A fresh clone reads as the file and has golden's map. -------------
qemu-img compare -f raw -F raw "$img" "$(uri vm1)" >"$tmp/cmp.out" 2>&1 ||
    { cat "$tmp/cmp.out"; fail "fresh vm1 differs from the file"; }
expect_grep '^Images are identical\.$' "$tmp/cmp.out"
nbdinfo --map "$(uri golden)" >"$tmp/golden.map" || fail "map of golden"
nbdinfo --map "$(uri vm1)" >"$tmp/vm1.map" || fail "map of vm1"
diff -u "$tmp/golden.map" "$tmp/vm1.map" || fail "fresh vm1's map is not golden's"
gdata=$(data_bytes "$tmp/golden.map")
echo "golden map: $(wc -l <"$tmp/golden.map") extents, $gdata bytes of data"
[ "$gdata" -ge $((40 * M)) ] || fail "golden's map shows only $gdata bytes of data"
# Memory is paid for data pages only (2% for a rounded figure).
[ "$gmem" -le $((gdata + gdata / 50)) ] ||
    fail "golden holds $gmem bytes for $gdata bytes of data pages"
# not_hole MAPFILE OFF LEN WHAT: that range is not all hole in the map.
not_hole() {
    rc=0
    mb hole "$1" "$2" "$3" >"$tmp/hole.out" 2>&1 || rc=$?
    [ $rc -eq 3 ] || { cat "$tmp/hole.out"; fail "$4"; }
}
not_hole "$tmp/golden.map" "$blob_off" $((4 * M)) "golden's map shows /blob as a hole"

# --- 3. guestfish: three clones read-write in one launch. -----------------
for n in 1 2 3; do
    head -c 1M /dev/urandom >"$tmp/rand$n"
done

guestfish_run rw <<EOF
add-drive vm1 protocol:nbd server:unix:$sock format:raw discard:enable
add-drive vm2 protocol:nbd server:unix:$sock format:raw discard:enable
add-drive vm3 protocol:nbd server:unix:$sock format:raw discard:enable
run
mount /dev/sda /
checksum sha256 /blob
checksum sha256 /$file1
write /vm1-only "only in vm1\n"
upload $tmp/rand1 /vm1-data
umount /
mount /dev/sdb /
write /vm2-only "only in vm2\n"
upload $tmp/rand2 /vm2-data
umount /
mount /dev/sdc /
write /vm3-only "only in vm3\n"
upload $tmp/rand3 /vm3-data
rm /blob
sync
fstrim /
sync
umount /
fsck ext4 /dev/sda
fsck ext4 /dev/sdb
fsck ext4 /dev/sdc
EOF
check_output rw "$blob_sum
$file1_sum
0
0
0"

golden_intact "after the guestfish session on its clones"
nbdinfo --list "$(uri '')" >"$tmp/list1" || fail "nbdinfo --list failed"
grep -E '^export=|description:' "$tmp/list1"
# The clones paid for what changed: 1 MiB of file each, metadata and
# the journal; under 16 MiB each and, together, under golden's memory.
total=0
for e in vm1 vm2 vm3; do
    m=$(memory_of $e)
    echo "$e: $m bytes in memory"
    [ "$m" -ge $M ] || fail "$e holds $m bytes after 1 MiB was written to it"
    [ "$m" -le $((16 * M)) ] || fail "$e holds $m bytes: more than what changed"
    total=$((total + m))
done
[ "$total" -lt "$gmem" ] || fail "the clones hold $total bytes, golden $gmem"

# The fstrimmed /blob is a hole in vm3 only.
nbdinfo --map "$(uri vm3)" >"$tmp/vm3.map" || fail "map of vm3"
mb hole "$tmp/vm3.map" "$blob_off" $((4 * M)) ||
    { cat "$tmp/vm3.map"; fail "/blob's blocks are not a hole in vm3"; }
v3data=$(data_bytes "$tmp/vm3.map")
echo "vm3 map: $v3data bytes of data, golden's $gdata"
# (4 MiB trimmed; 1 MiB of new file, metadata and journal written.)
[ "$v3data" -le $((gdata - 2 * M)) ] ||
    fail "vm3 maps $v3data bytes of data after /blob (4 MiB) was trimmed"
nbdinfo --map "$(uri vm1)" >"$tmp/vm1.map" || fail "map of vm1"
not_hole "$tmp/vm1.map" "$blob_off" $((4 * M)) "/blob's blocks became a hole in vm1"

# Read each clone back over a new connection (nbdcopy), then on the
# host: e2fsck -f -n finds it clean, and debugfs finds its own files
# with the right contents and none of the other clones'.
for n in 1 2 3; do
    e=vm$n
    nbdcopy "$(uri $e)" "$tmp/$e.img" || fail "nbdcopy $e"
    e2fsck -f -n "$tmp/$e.img" >"$tmp/e2fsck.out" 2>&1 ||
        { cat "$tmp/e2fsck.out"; fail "e2fsck -f -n: $e is not clean"; }
    debugfs -R "ls -p /" "$tmp/$e.img" 2>/dev/null |
        awk -F/ 'NF > 6 { print $6 }' | grep -E '^(vm[0-9]-.*|blob)$' |
        LC_ALL=C sort >"$tmp/$e.ls"
    want="vm$n-data
vm$n-only"
    [ $n -eq 3 ] || want="blob
$want"
    printf '%s\n' "$want" | diff -u - "$tmp/$e.ls" ||
        fail "$e: wrong files in / (above)"
    [ "$(debugfs -R "cat /$e-only" "$tmp/$e.img" 2>/dev/null)" = "only in $e" ] ||
        fail "$e: /$e-only does not hold 'only in $e'"
    debugfs -R "dump /$e-data $tmp/$e.data" "$tmp/$e.img" 2>/dev/null
    cmp -s "$tmp/rand$n" "$tmp/$e.data" || fail "$e: /$e-data differs"
    if [ $n -ne 3 ]; then
        debugfs -R "dump /blob $tmp/$e.blob" "$tmp/$e.img" 2>/dev/null
        cmp -s "$tmp/root/blob" "$tmp/$e.blob" || fail "$e: /blob differs"
    fi
    rm -f "$tmp/$e.img" "$tmp/$e.data" "$tmp/$e.blob"
done
golden_intact "after reading the clones back"

# --- 4. A chain: vm4 is a clone of base2, a read-only clone of golden. ----
for e in base2 vm4; do
    qemu-img compare -f raw -F raw "$img" "$(uri $e)" >"$tmp/cmp.out" 2>&1 ||
        { cat "$tmp/cmp.out"; fail "$e differs from the file"; }
done
nbdinfo --is read-only "$(uri base2)" || fail "base2 is not read-only"
qemu-io -f raw -c "write -P 0x77 $blob_off 64k" "$(uri vm4)" >"$tmp/qio" 2>&1 ||
    { cat "$tmp/qio"; fail "qemu-io write to vm4"; }
mb verify "$img" "$(uri vm4)" "$blob_off:65536:0x77" ||
    fail "vm4 after a write"
qemu-img compare -f raw -F raw "$img" "$(uri base2)" >"$tmp/cmp.out" 2>&1 ||
    { cat "$tmp/cmp.out"; fail "a write to vm4 changed base2"; }
golden_intact "after a write to vm4"

# --- 5. Writes in a clone stay in the clone. -------------------------------
u5=$(uri vm5)
last=$((img_size - 1))
qemu-io -f raw -c "write -P 0xa5 0 4k" -c "write -P 0x5a $((blob_off + 8192)) 12k" \
    -c "write -P 0x3c $((M + 4000)) 200" -c "write -P 0xc3 $last 1" \
    "$u5" >"$tmp/qio" 2>&1 || { cat "$tmp/qio"; fail "qemu-io writes to vm5"; }
qemu-io -f raw -c "read -P 0xa5 0 4k" -c "read -P 0x5a $((blob_off + 8192)) 12k" \
    -c "read -P 0x3c $((M + 4000)) 200" -c "read -P 0xc3 $last 1" \
    "$u5" >"$tmp/qio" 2>&1 || { cat "$tmp/qio"; fail "qemu-io reads of vm5"; }
grep -q "Pattern verification failed" "$tmp/qio" && { cat "$tmp/qio"; fail "vm5 pattern"; }
mb verify "$img" "$u5" 0:4096:0xa5 "$((blob_off + 8192)):12288:0x5a" \
    "$((M + 4000)):200:0x3c" "$last:1:0xc3" || fail "vm5 after writes"
golden_intact "after writes to vm5"
rc=0
qemu-img compare -f raw -F raw "$img" "$u5" >"$tmp/cmp.out" 2>&1 || rc=$?
[ $rc -eq 1 ] || { cat "$tmp/cmp.out"; fail "compare after writes: exit $rc, not 1"; }
m=$(memory_of vm5)
echo "vm5: $m bytes in memory after writes into 7 pages"
[ "$m" -le $((256 * 1024)) ] || fail "vm5 holds $m bytes after writes into 7 pages"

# --- 6. Trim and write-zeroes in a clone. -----------------------------------
# Trim 1 MiB of /blob (page-aligned, all data in golden), then write 100
# bytes into the middle of one trimmed page (the rest of that page must
# stay zero, not come back from golden); write-zeroes 10000 bytes at an
# odd offset inside /blob (partial pages at both ends: the rest of those
# pages must stay golden's), and trim 1000 bytes inside one page (a trim
# is advisory and leaves partial pages as they are: golden's).
t_off=$((blob_off + 4096)); t_len=$M
w_off=$((t_off + 8192 + 2000))
z_off=$((blob_off + 2 * M + 100)); z_len=10000
u_off=$((blob_off + 3 * M + 100)); u_len=1000
nbdsh -u "$(uri vm6)" -c "h.trim($t_len, $t_off)" \
    -c "h.pwrite(b'\xee' * 100, $w_off)" \
    -c "h.zero($z_len, $z_off)" -c "h.trim($u_len, $u_off)" \
    -c "assert h.pread(2000, $w_off - 2000) == bytes(2000)" \
    -c "assert h.pread($z_len, $z_off) == bytes($z_len)" \
    -c "f = open('$img', 'rb'); f.seek($u_off)" \
    -c "assert h.pread($u_len, $u_off) == f.read($u_len)" ||
    fail "trim/zero in vm6 do not read as zeroes, or golden's"
mb verify "$img" "$(uri vm6)" "$t_off:$t_len:zero" "$w_off:100:0xee" \
    "$z_off:$z_len:zero" || fail "vm6 after trim and zero"
golden_intact "after trim and zero in vm6"
nbdinfo --map "$(uri vm6)" >"$tmp/vm6.map" || fail "map of vm6"
# The trimmed MiB is a hole but for the one page written since.
mb hole "$tmp/vm6.map" "$t_off" 8192 &&
    mb hole "$tmp/vm6.map" $((t_off + 12288)) $((t_len - 12288)) ||
    { cat "$tmp/vm6.map"; fail "vm6's map does not show the trimmed hole"; }
not_hole "$tmp/vm6.map" $((t_off + 8192)) 4096 \
    "vm6's map shows the page written after the trim as a hole"
nbdinfo --map "$(uri golden)" >"$tmp/golden.map2" || fail "map of golden"
diff -u "$tmp/golden.map" "$tmp/golden.map2" || fail "golden's map changed"

kill -0 "$server_pid" || fail "nbdkit died"

# The load is logged (nbdkit -v: a debug line) with what it loaded, the
# memory that took, and the time.
nbdkit -v -U "$tmp/load.sock" "$MEMBLOCK_SO" "name=golden:ro:file=$img" \
    --run true >"$tmp/load.log" 2>&1 || { cat "$tmp/load.log"; fail "nbdkit -v with the image"; }
grep -E 'name=golden: loaded [0-9]+ bytes of data .* into [0-9]+ bytes of memory in [0-9.]+ s' \
    "$tmp/load.log" >"$tmp/loadline" ||
    { cat "$tmp/load.log"; fail "no debug line about loading golden"; }
cat "$tmp/loadline"
echo "clone: all checks passed"
