#!/bin/sh
# qemu-img against memblock.
#
# Proves that:
#  - qemu-img info reports each device's exact size (64 MiB, 5 GiB);
#  - qemu-img convert -n -f raw copies a real image (4 MiB of random data
#    among large holes) into a device filled beforehand with 0xff, and
#    qemu-img compare finds them identical, holes included; the source's
#    holes end up as holes in the device;
#  - qemu-img convert -O qcow2 copies the device back out, identical, and
#    only the data is allocated in the qcow2 (block status reaches qemu);
#  - qemu-img compare does notice a one-byte change in the device;
#  - qemu-img map --output=json of a device with scattered writes (one of
#    them across a chunk boundary, one of 1 byte) reports exactly the
#    written pages as data and everything else as zero, unallocated.
. "$(dirname "$0")/lib.sh"

for t in qemu-img qemu-io /usr/bin/python3; do
    command -v $t >/dev/null || fail "$t is not installed"
done

M=1048576
start_server qi chunk-size=1M name=disk0:size=64M name=big:size=5G \
    name=scattered:size=64M
u=$(uri disk0)

# qio ARGS...: qemu-io on raw; any error or failed pattern fails the test.
qio() {
    qemu-io -f raw "$@" >"$tmp/qio.out" 2>&1 ||
        { cat "$tmp/qio.out"; fail "qemu-io $* failed"; }
    if grep -Eiq 'fail|error|denied|invalid|not supported' "$tmp/qio.out"; then
        cat "$tmp/qio.out"; fail "qemu-io $* reported an error"
    fi
}

# Merged [start, length, data, zero] runs of qemu-img map of $1.
map_runs() {
    qemu-img map -f raw --output=json "$1" >"$tmp/map.json" ||
        fail "qemu-img map $1 failed"
    /usr/bin/python3 - "$tmp/map.json" <<'EOF'
import json, sys
runs = []
for e in json.load(open(sys.argv[1])):
    if runs and runs[-1][2:] == [e["data"], e["zero"]] and \
       runs[-1][0] + runs[-1][1] == e["start"]:
        runs[-1][1] += e["length"]
    else:
        runs.append([e["start"], e["length"], e["data"], e["zero"]])
for r in runs:
    print(r[0], r[1], "data" if r[2] else "-", "zero" if r[3] else "-")
EOF
}

# check_runs NAME URI EXPECTED: map_runs must print exactly EXPECTED.
check_runs() {
    map_runs "$2" >"$tmp/$1.got"
    printf '%s\n' "$3" >"$tmp/$1.want"
    diff -u "$tmp/$1.want" "$tmp/$1.got" || fail "$1: unexpected map (above)"
}

# info: exact sizes, text and JSON.
qemu-img info "$u" >"$tmp/info.txt" || fail "qemu-img info $u failed"
expect_grep '^virtual size: 64 MiB \(67108864 bytes\)$' "$tmp/info.txt"
qemu-img info --output=json "$(uri big)" >"$tmp/info.json" ||
    fail "qemu-img info big failed"
expect_grep '"virtual-size": 5368709120,' "$tmp/info.json"

# A 64 MiB raw image: random data at 0 (1 MiB), across the chunk
# boundaries at 21 and 22 MiB (2 MiB at 20 MiB + 12 KiB), at the end
# (1 MiB); the rest is holes.
img=$tmp/src.img
truncate -s 64M "$img"
head -c 1M /dev/urandom | dd of="$img" conv=notrunc status=none
head -c 2M /dev/urandom |
    dd of="$img" bs=4096 seek=$((20 * 256 + 3)) conv=notrunc status=none
head -c 1M /dev/urandom | dd of="$img" bs=1M seek=63 conv=notrunc status=none

# Fill the device first so that the holes must really be written.
qio -c "write -P 0xff 0 64M" "$u"
qemu-img convert -n -f raw -O raw "$img" "$u" || fail "convert into $u failed"
qemu-img compare -f raw -F raw "$img" "$u" >"$tmp/cmp.out" ||
    { cat "$tmp/cmp.out"; fail "compare image vs device: not identical"; }
expect_grep '^Images are identical\.$' "$tmp/cmp.out"
check_runs converted "$u" "0 $M data -
$M $((19 * M + 12288)) - zero
$((20 * M + 12288)) $((2 * M)) data -
$((22 * M + 12288)) $((41 * M - 12288)) - zero
$((63 * M)) $M data -"

# Back out to qcow2: identical, and only the data allocated: 4 MiB, plus
# 64 KiB as the run at 20 MiB + 12 KiB covers one more 64 KiB cluster.
qemu-img convert -f raw -O qcow2 "$u" "$tmp/out.qcow2" ||
    fail "convert $u to qcow2 failed"
qemu-img compare -f raw -F qcow2 "$img" "$tmp/out.qcow2" >"$tmp/cmp.out" ||
    { cat "$tmp/cmp.out"; fail "compare image vs qcow2: not identical"; }
qemu-img compare -f raw -F qcow2 "$u" "$tmp/out.qcow2" >"$tmp/cmp.out" ||
    { cat "$tmp/cmp.out"; fail "compare device vs qcow2: not identical"; }
qemu-img check "$tmp/out.qcow2" >/dev/null || fail "qemu-img check qcow2"
qemu-img map -f qcow2 --output=json "$tmp/out.qcow2" >"$tmp/qmap.json"
alloc=$(/usr/bin/python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(open(sys.argv[1])) if e["data"]))
' "$tmp/qmap.json")
[ "$alloc" -eq $((4 * M + 65536)) ] ||
    { cat "$tmp/qmap.json"; fail "qcow2 holds $alloc bytes of data, not 4 MiB + 64 KiB"; }

# compare must see a one-byte difference (proves the checks can fail).
qio -c "write -P 0x01 $((40 * M + 7)) 1" "$u"
rc=0
qemu-img compare -f raw -F raw "$img" "$u" >"$tmp/cmp.out" 2>&1 || rc=$?
[ $rc -eq 1 ] || { cat "$tmp/cmp.out"; fail "compare after a change: exit $rc, not 1"; }
# (qemu-img compare names the 512-byte sector.)
expect_grep "Content mismatch at offset $((40 * M))!" "$tmp/cmp.out"

# Scattered writes on a fresh device: 4 KiB at 0, 1 byte at 5 MiB + 100,
# 64 KiB across the chunk boundary at 17 MiB, the last 4 KiB; then 64 KiB
# written and zeroed again at 30 MiB.
s=$(uri scattered)
qio -c "write -P 1 0 4k" -c "write -P 2 $((5 * M + 100)) 1" \
    -c "write -P 3 $((17 * M - 32768)) 64k" -c "write -P 4 $((64 * M - 4096)) 4k" \
    -c "write -P 5 $((30 * M)) 64k" -c "write -z $((30 * M)) 64k" "$s"
check_runs scattered "$s" "0 4096 data -
4096 $((5 * M - 4096)) - zero
$((5 * M)) 4096 data -
$((5 * M + 4096)) $((12 * M - 36864)) - zero
$((17 * M - 32768)) 65536 data -
$((17 * M + 32768)) $((47 * M - 36864)) - zero
$((64 * M - 4096)) 4096 data -"
echo "qemu-img: all checks passed"
