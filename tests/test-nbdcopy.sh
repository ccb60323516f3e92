#!/bin/sh
# nbdcopy against memblock.
#
# Proves that:
#  - nbdcopy copies a sparse image file (random data among holes) into a
#    device, the device into another device (filled with 0xff before, so
#    the holes must really be zeroed) and that device out to a file, all
#    byte-identical to the image; the copy keeps the source's holes;
#  - nbdcopy --connections=4 (multi-conn, really 4 connections, as
#    nbdcopy -v reports) moves 1 GiB of random data in and out of a
#    device with the same SHA-256.
. "$(dirname "$0")/lib.sh"

for t in nbdcopy nbdinfo nbdsh sha256sum cmp; do
    command -v $t >/dev/null || fail "$t is not installed"
done

start_server copy name=src:size=64M name=dst:size=64M name=big:size=1G

# A sparse 64 MiB image: 1 MiB at 0, 3 MiB at 30 MiB + 4 KiB, the last
# 1 MiB random; the rest holes.
img=$tmp/src.img
truncate -s 64M "$img"
head -c 1M /dev/urandom | dd of="$img" conv=notrunc status=none
head -c 3M /dev/urandom |
    dd of="$img" bs=4096 seek=$((30 * 256 + 1)) conv=notrunc status=none
head -c 1M /dev/urandom | dd of="$img" bs=1M seek=63 conv=notrunc status=none

nbdsh -u "$(uri dst)" \
    -c 'for i in range(8): h.pwrite(b"\xff" * 2**23, i * 2**23)' ||
    fail "cannot fill dst"

nbdcopy "$img" "$(uri src)" || fail "nbdcopy file -> src failed"
nbdcopy "$(uri src)" "$(uri dst)" || fail "nbdcopy src -> dst failed"
nbdcopy "$(uri dst)" "$tmp/out.img" || fail "nbdcopy dst -> file failed"
cmp "$img" "$tmp/out.img" || fail "dst copied out differs from the image"
nbdcopy "$(uri src)" - | cmp "$img" - || fail "src differs from the image"

# Same holes on both devices: exactly the data written, 4 KiB pages.
want="         0     1048576    0  data
   1048576    30412800    3  hole,zero
  31461376     3145728    0  data
  34607104    31453184    3  hole,zero
  66060288     1048576    0  data"
for d in src dst; do
    nbdinfo --map "$(uri $d)" >"$tmp/$d.map" || fail "nbdinfo --map $d"
    [ "$(cat "$tmp/$d.map")" = "$want" ] ||
        { cat "$tmp/$d.map"; fail "$d: holes not where the image has them"; }
done

# 1 GiB of random data through 4 connections each way.
rand=$tmp/rand
head -c 1G /dev/urandom >"$rand"
sum_in=$(sha256sum <"$rand")
nbdcopy -v --connections=4 --threads=4 "$rand" "$(uri big)" \
    2>"$tmp/v.log" || { tail -n 20 "$tmp/v.log"; fail "nbdcopy 1 GiB in failed"; }
grep -q '^nbdcopy: connections=4 ' "$tmp/v.log" ||
    { grep '^nbdcopy:' "$tmp/v.log"; fail "nbdcopy did not use 4 connections"; }
rm -f "$rand" "$tmp/v.log"
nbdcopy -v --connections=4 --threads=4 "$(uri big)" "$rand" \
    2>"$tmp/v.log" || { tail -n 20 "$tmp/v.log"; fail "nbdcopy 1 GiB out failed"; }
grep -q '^nbdcopy: connections=4 ' "$tmp/v.log" ||
    { grep '^nbdcopy:' "$tmp/v.log"; fail "nbdcopy did not use 4 connections"; }
rm -f "$tmp/v.log"
sum_out=$(sha256sum <"$rand")
rm -f "$rand"
echo "1 GiB: in $sum_in, out $sum_out"
[ "$sum_in" = "$sum_out" ] || fail "1 GiB copied through big changed"
echo "nbdcopy: all checks passed"
