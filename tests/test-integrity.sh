#!/bin/sh
# Data integrity under load: fio writes with --verify=crc32c over 4
# simultaneous connections (multi-conn, iodepth 8 each) to one device,
# each job in its own range, mixed sizes from 512 B to 1 MiB at
# unaligned (odd) offsets and at aligned ones, in three rounds that
# overwrite each other; after each round a separate fio run from fresh
# connections verifies every block: zero mismatches.  Small chunks make
# most large writes cross chunk boundaries.  Finally one flipped byte
# must make the verify fail, so the check is known to bite.
. "$(dirname "$0")/lib.sh"

command -v fio >/dev/null || fail "fio is not installed"

start_server fio size=512M chunk-size=256K
URI=$(uri disk0)
export URI

# Job file: fio expands ${VAR} from the environment.
cat >"$tmp/job.fio" <<'EOF'
[global]
ioengine=nbd
uri=${URI}
rw=randwrite
bssplit=${BSSPLIT}
bs_unaligned=1
blockalign=${ALIGN}
offset=${OFFSET}
size=120M
offset_increment=128M
numjobs=4
iodepth=8
verify=crc32c
do_verify=${VERIFY}
verify_only=${VERIFY}
verify_state_save=${SAVE}
verify_state_load=${VERIFY}
randrepeat=1
randseed=${SEED}
group_reporting=1
[integrity]
EOF

# fio_run WHAT: run the job (write or verify pass); output in $tmp/WHAT.out.
fio_run() {
    (cd "$tmp" && timeout 300 fio --eta=never job.fio) >"$tmp/$1.out" 2>&1
}

# round SEED OFFSET ALIGN BSSPLIT: write, then verify from new connections.
round() {
    SEED=$1 OFFSET=$2 ALIGN=$3 BSSPLIT=$4
    export SEED OFFSET ALIGN BSSPLIT
    VERIFY=0 SAVE=1; export VERIFY SAVE
    fio_run write || { cat "$tmp/write.out"; fail "fio write pass $SEED failed"; }
    VERIFY=1 SAVE=0; export VERIFY SAVE
    fio_run verify || { cat "$tmp/verify.out"; fail "fio verify pass $SEED failed"; }
    # The verify pass must really have read back all 4 x 120 MiB.
    grep -Eq 'READ: .*io=480MiB' "$tmp/verify.out" ||
        { cat "$tmp/verify.out"; fail "verify pass $SEED did not read 480 MiB"; }
    grep -Eq 'WRITE: .*io=480MiB' "$tmp/write.out" ||
        { cat "$tmp/write.out"; fail "write pass $SEED did not write 480 MiB"; }
    ! grep -qi 'verify.*fail\|bad magic\|mismatch' "$tmp/verify.out" ||
        { cat "$tmp/verify.out"; fail "verify pass $SEED reported a mismatch"; }
    kill -0 "$server_pid" || fail "server died in round $SEED"
}

round 1 4097 512 512/15:1536/15:4k/20:7680/10:66048/20:1m/20
round 2 0 4096 4k/30:64k/30:256k/20:1m/20
round 3 1025 512 512/30:5120/30:1m/40

# Flip one byte in the middle of job 1's range: verify must now fail.
/usr/bin/python3 - "$URI" <<'EOF' || fail "could not flip a byte"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
off = 1025 + (128 << 20) + (60 << 20) + 12345
b = h.pread(1, off)
h.pwrite(bytes([b[0] ^ 0x40]), off)
h.shutdown()
EOF
if fio_run verify; then
    cat "$tmp/verify.out"; fail "verify passed over a corrupted byte"
fi
grep -Eq 'verify|crc32c' "$tmp/verify.out" ||
    { cat "$tmp/verify.out"; fail "verify failed, but not with a verify error"; }
kill -0 "$server_pid" || fail "server died"
grep -E "verify|crc32c" "$tmp/verify.out" | head -n 4
echo "integrity: 3 rounds x 4 connections x 120 MiB written and verified"
