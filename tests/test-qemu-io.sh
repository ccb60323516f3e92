#!/bin/sh
# qemu-io against memblock (chunk-size=1M, so chunk boundaries are near).
#
# Proves, with data checked by qemu-io read -P after every change:
#  - write -P / read -P, at aligned and unaligned offsets and lengths,
#    without disturbing the bytes around an unaligned write;
#  - write -z (aligned and unaligned) and discard read back as zeros;
#  - writes and reads spanning one and several chunk boundaries, and
#    reads across never-written chunks;
#  - qemu-io -r on the disk0:ro export reads the same data, and a write
#    through it, or opening it read-write, fails without changing data;
#  - the largest disk qemu allows (2^63 - 2^30 bytes): its size, and
#    writes and reads at its very end; reading past the end fails;
#  - a failed pattern check is caught (qemu-io's exit status alone is
#    not trusted: its output is searched too).
. "$(dirname "$0")/lib.sh"

command -v qemu-io >/dev/null || fail "qemu-io is not installed"
command -v qemu-img >/dev/null || fail "qemu-img is not installed"

K=1024
M=1048576
BIG=9223372035781033984          # 2^63 - 2^30, qemu's BDRV_MAX_LENGTH
start_server io chunk-size=1M name=disk0:size=8M name=big:size=$BIG
u=$(uri disk0)

# qio_run URI ARGS...: run qemu-io; 0 only if it exited 0, printed no
# error and reported one success line per -c command.
qio_run() {
    quri=$1; shift
    n=0
    for a in "$@"; do [ "$a" != -c ] || n=$((n + 1)); done
    qemu-io -f raw "$@" "$quri" >"$tmp/qio.out" 2>&1 || return 1
    if grep -Eiq 'fail|error|denied|invalid|not supported|read-only' \
            "$tmp/qio.out"; then
        return 1
    fi
    ok=$(grep -Ec '^(wrote|read|discard) [0-9]+/[0-9]+ bytes at offset' \
         "$tmp/qio.out" || :)
    [ "$ok" -eq "$n" ]
}

# qio URI ARGS...: qemu-io must succeed.
qio() {
    qio_run "$@" || { cat "$tmp/qio.out"; fail "qemu-io $* failed"; }
}

# qio_fails DESC URI ARGS...: qemu-io must fail or report an error.
qio_fails() {
    what=$1; shift
    if qio_run "$@"; then
        cat "$tmp/qio.out"; fail "$what: qemu-io succeeded"
    fi
}

# Aligned, then unaligned, write -P / read -P.
qio "$u" -c "write -P 0xa5 0 64k" -c "read -P 0xa5 0 64k" \
    -c "write -P 0x3c 1000 5000" -c "read -P 0xa5 0 1000" \
    -c "read -P 0x3c 1000 5000" -c "read -P 0xa5 6000 $((64 * K - 6000))"

# The checker catches a wrong pattern (qemu-io may exit 0 on one).
qio_fails "read -P with the wrong pattern" "$u" -c "read -P 0x3d 1000 5000"
expect_grep 'Pattern verification failed' "$tmp/qio.out"
qio_fails "read -P of one wrong byte" "$u" -c "read -P 0xa5 0 1001"

# write -z, unaligned then aligned, reads back as zeros.
qio "$u" -c "write -z 1500 1000" -c "read -P 0x3c 1000 500" \
    -c "read -P 0 1500 1000" -c "read -P 0x3c 2500 3500" \
    -c "write -z 32k 32k" -c "read -P 0 32k 32k" -c "read -P 0xa5 6000 26768"

# Across chunk boundaries: 6000 bytes over 1 MiB; 2 MiB + 1 KiB over
# 2, 3 and 4 MiB; never-written chunks 5-7 MiB read as zeros.
qio "$u" -c "write -P 0x11 $((M - 3000)) 6000" \
    -c "read -P 0x11 $((M - 3000)) 6000" \
    -c "read -P 0 $((M - 3100)) 100" -c "read -P 0 $((M + 3000)) 100" \
    -c "write -P 0x22 $((2 * M - 512)) $((2 * M + 1024))" \
    -c "read -P 0x22 $((2 * M - 512)) $((2 * M + 1024))" \
    -c "read -P 0 $((5 * M - 4096)) $((3 * M))" \
    -c "read -P 0 $((8 * M - 1)) 1"

# discard reads back as zeros (memblock trims by zeroing), also across
# a chunk boundary; the neighbours keep their data.
qio "$u" -c "discard 0 64k" -c "read -P 0 0 64k" \
    -c "discard $((2 * M)) $((2 * M))" -c "read -P 0 $((2 * M)) $((2 * M))" \
    -c "read -P 0x22 $((2 * M - 512)) 512" -c "read -P 0x22 $((4 * M)) 512" \
    -c "read -P 0x11 $((M - 3000)) 6000"

# -r on the :ro export sees the same data; writes through it fail.
ro=$(uri disk0:ro)
qio "$ro" -r -c "read -P 0x11 $((M - 3000)) 6000" \
    -c "read -P 0x22 $((4 * M)) 512" -c "read -P 0 0 64k"
qio_fails "write via qemu-io -r on disk0:ro" "$ro" -r -c "write -P 0x99 $M 512"
qio_fails "qemu-io read-write open of disk0:ro" "$ro" -c "write -P 0x99 $M 512"
qio "$u" -c "read -P 0x11 $((M - 3000)) 6000"

# The largest disk qemu allows: size, and the last bytes.
qemu-img info --output=json "$(uri big)" >"$tmp/big.json" ||
    fail "qemu-img info big failed"
expect_grep "\"virtual-size\": $BIG," "$tmp/big.json"
b=$(uri big)
qio "$b" -c "write -P 0x5a $((BIG - 8192)) 8192" \
    -c "write -P 0x77 $((BIG - 1000)) 1000" \
    -c "write -P 0x66 $((BIG / 2 - 100)) 200" \
    -c "read -P 0x5a $((BIG - 8192)) $((8192 - 1000))" \
    -c "read -P 0x77 $((BIG - 1000)) 1000" \
    -c "read -P 0x66 $((BIG / 2 - 100)) 200" \
    -c "read -P 0 $((BIG - 12288)) 4096" -c "read -P 0 0 4096"
qio_fails "read past the end of big" "$b" -c "read $((BIG - 512)) 1024"
qio "$b" -c "read -P 0x77 $((BIG - 1000)) 1000"
echo "qemu-io: all checks passed"
