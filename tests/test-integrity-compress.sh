#!/bin/sh
# Data integrity under load on compressed devices: test-integrity.sh's
# fio --verify=crc32c over 4 simultaneous connections (multi-conn,
# iodepth 8 each, each job in its own range), smaller, on two devices:
# "z" takes the server's compress=zstd, "l" its own :compress=lz4.
# Per device four rounds overwrite each other: random data (which the
# store keeps raw) at odd offsets, then fio's verify_pattern (crc32c
# headers in a pattern that holds each block's offset: units that
# zstd/lz4 really pack) at aligned offsets, random again, then the
# pattern at odd offsets, so 512 B writes land in packed units and
# raw ones alike and units change form.  Each round is verified from
# fresh connections: zero mismatches.  The listing must show the
# pattern packed (under half its size) and random data kept raw (its
# size, never grown).  Finally one flipped byte in each device must make
# its verify fail, so the check is known to bite, while the other
# device still verifies.
. "$(dirname "$0")/lib.sh"

command -v fio >/dev/null || fail "fio is not installed"

start_server fio compress=zstd chunk-size=64K \
    name=z:size=256M name=l:size=256M:compress=lz4
list="nbd+unix://?socket=$sock"

# fio_run DEV WHAT SEED OFFSET ALIGN BSSPLIT PATTERN: write (WHAT=write)
# or verify (WHAT=verify) 4 x 48 MiB of DEV; output in $tmp/WHAT.out.
# PATTERN is a verify_pattern, or "" for random data.
fio_run() {
    if [ "$2" = verify ]; then v=1; save=0; else v=0; save=1; fi
    cat >"$tmp/job.fio" <<JOB
[global]
ioengine=nbd
uri=$(uri "$1")
rw=randwrite
bssplit=$6
bs_unaligned=1
blockalign=$5
offset=$4
size=48M
offset_increment=64M
numjobs=4
iodepth=8
verify=crc32c
${7:+verify_pattern=$7}
do_verify=$v
verify_only=$v
verify_state_save=$save
verify_state_load=$v
randrepeat=1
randseed=$3
group_reporting=1
[integrity-$1]
JOB
    (cd "$tmp" && timeout 300 fio --eta=never job.fio) >"$tmp/$2.out" 2>&1
}

# round DEV SEED OFFSET ALIGN BSSPLIT PATTERN: write, then verify from
# new connections.
round() {
    what="$1 round $2"
    fio_run "$1" write "$2" "$3" "$4" "$5" "$6" ||
        { cat "$tmp/write.out"; fail "fio write pass, $what, failed"; }
    fio_run "$1" verify "$2" "$3" "$4" "$5" "$6" ||
        { cat "$tmp/verify.out"; fail "fio verify pass, $what, failed"; }
    # The verify pass must really have read back all 4 x 48 MiB.
    grep -Eq 'READ: .*io=192MiB' "$tmp/verify.out" ||
        { cat "$tmp/verify.out"; fail "verify pass, $what, did not read 192 MiB"; }
    grep -Eq 'WRITE: .*io=192MiB' "$tmp/write.out" ||
        { cat "$tmp/write.out"; fail "write pass, $what, did not write 192 MiB"; }
    ! grep -qi 'verify.*fail\|bad magic\|mismatch' "$tmp/verify.out" ||
        { cat "$tmp/verify.out"; fail "verify pass, $what, reported a mismatch"; }
    kill -0 "$server_pid" || fail "server died in $what"
}

# mib DEV WHICH: the "N of data in M" figure (WHICH=1: data, 2: held)
# of DEV in the listing, in MiB (integer).
mib() {
    nbdinfo --list "$list" >"$tmp/list" || fail "nbdinfo --list failed"
    line=$(grep -A1 "^export=\"$1\":" "$tmp/list" | grep description) ||
        { cat "$tmp/list"; fail "no description for $1"; }
    echo "$line" | sed -E 's/.*, ([0-9.]+ [A-Za-z]+) of data in ([0-9.]+ [A-Za-z]+) \(.*/\1 \2/' |
        awk -v w="$2" '{
            v = $(2 * w - 1); u = $(2 * w)
            m = u == "bytes" ? 1 / 1048576 : u == "KiB" ? 1 / 1024 :
                u == "MiB" ? 1 : u == "GiB" ? 1024 : -1
            if (m < 0) exit 1
            printf "%d\n", v * m }' ||
        { echo "$line"; fail "cannot read the figures of $1"; }
}

pattern=0x5aa5c33c%o
for dev_codec in z:zstd l:lz4; do
    dev=${dev_codec%:*} codec=${dev_codec#*:}
    start=$(date +%s)
    round "$dev" 1 4097 512 512/15:1536/15:4k/20:7680/10:66048/20:1m/20 ""
    round "$dev" 2 0 4096 4k/30:16k/20:64k/30:1m/20 "$pattern"
    data=$(mib "$dev" 1) held=$(mib "$dev" 2)
    echo "$dev: after the pattern: $data MiB of data in $held MiB ($codec)"
    grep -A1 "^export=\"$dev\":" "$tmp/list" | grep -q "($codec)\$" ||
        { cat "$tmp/list"; fail "$dev is not listed as compressed with $codec"; }
    # Rounds 1 and 2 wrote 4 x 48 MiB; the pattern covers most of it and
    # packs at least 8 to 1, random data not at all.
    [ "$data" -ge 150 ] && [ "$data" -le 192 ] ||
        { cat "$tmp/list"; fail "$dev holds $data MiB of data, not 150-192"; }
    [ "$held" -lt $((data / 2)) ] ||
        { cat "$tmp/list"; fail "$dev: $data MiB of data take $held MiB"; }
    round "$dev" 3 1025 512 512/30:5120/30:1m/40 ""
    data=$(mib "$dev" 1) held=$(mib "$dev" 2)
    echo "$dev: after random data: $data MiB of data in $held MiB ($codec)"
    # Random data does not pack: it is kept raw, never grown (a raw unit
    # costs 16 KiB and a few bytes).  Round 2's pattern survives only in
    # the gaps round 3 left.
    [ "$held" -ge $((data * 3 / 4)) ] && [ "$held" -le $((data + data / 50 + 1)) ] ||
        { cat "$tmp/list"; fail "$dev: $data MiB of random data take $held MiB"; }
    round "$dev" 4 3 512 512/30:3k/30:20k/20:1m/20 "$pattern"
    echo "$dev ($codec): 4 rounds x 4 connections x 48 MiB written and" \
         "verified in $(( $(date +%s) - start )) s"
done

# Flip one byte in the middle of job 1's range of each device (round 4's
# data): its verify must now fail.  The other device is apart: after z's
# byte is flipped, l still verifies.
for dev in z l; do
    /usr/bin/python3 - "$(uri "$dev")" <<'PY' || fail "could not flip a byte in $dev"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
off = 3 + (64 << 20) + (20 << 20) + 12345
b = h.pread(1, off)
h.pwrite(bytes([b[0] ^ 0x40]), off)
h.shutdown()
PY
    if fio_run "$dev" verify 4 3 512 512/30:3k/30:20k/20:1m/20 "$pattern"; then
        cat "$tmp/verify.out"; fail "$dev: verify passed over a corrupted byte"
    fi
    grep -Eq 'verify|crc32c' "$tmp/verify.out" ||
        { cat "$tmp/verify.out"; fail "$dev: verify failed, but not with a verify error"; }
    grep -E "verify|crc32c" "$tmp/verify.out" | head -n 2
    if [ "$dev" = z ]; then
        fio_run l verify 4 3 512 512/30:3k/30:20k/20:1m/20 "$pattern" ||
            { cat "$tmp/verify.out"; fail "l no longer verifies after a byte of z changed"; }
    fi
done
kill -0 "$server_pid" || fail "server died"
if grep -q 'error' "$log"; then
    cat "$log"; fail "the server logged errors"
fi
echo "integrity-compress: zstd and lz4, 4 rounds x 4 connections x 48 MiB each"
