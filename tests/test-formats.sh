#!/bin/sh
# Images in qemu's formats (:format=) and from NBD servers (:nbd=).
#
# Proves, on an ext4 image built from ~20 MiB of real files (mkfs.ext4
# -d) converted with qemu-img to qcow2, compressed qcow2, a qcow2
# overlay (changed with qemu-io) on a raw backing file, and vmdk, and
# served as it is by nbdkit file and by qemu-nbd (for :nbd=):
#  1. each loads with name=X:ro:format=FMT:file=PATH (the compressed one
#     with :compress=zstd) or name=X:ro:nbd=URI and reads as the raw it
#     stands for (qemu-img compare; for the overlay, qemu-img convert -O
#     raw of it, which differs from the backing file);
#  2. nbdinfo --map of each shows data exactly at the non-zero 4 KiB
#     pages of that raw, and none in a 64 KiB block that is a hole in
#     it (SEEK_DATA/SEEK_HOLE) - the overlay's zeroed range over its
#     backing file's data among the holes;
#  3. memory: device_list's data is exactly the raw's non-zero pages,
#     allocated is no more (less with zstd), and the server's VmRSS
#     with no connection open is no more than an idle server's plus the
#     devices' allocated bytes plus a small slack (see below);
#  4. one guestfish launch mounts a writable clone (name=cX:from=X) of
#     each file-loaded device, checksums a staged file and /blob (changed in the overlay),
#     writes, unmounts and fscks each (0: clean); the sources stay as
#     they were;
#  5. at run time, device_create with format/file and with uri (through
#     memblock-ctl) loads while a clone is written and read without
#     pause; the load shows as a running "load" job, the device is not
#     listed until it is loaded, and the result reads as the image;
#  6. a server that dies mid-load (killed, or failing reads with EIO
#     through nbdkit's error filter) stops nbdkit memblock at start-up
#     with one error line naming the device, and through the control
#     socket fails device_create (-32000, data.errno) with device_list
#     unchanged and the load job shown failed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guestfs-env.sh"

for t in mkfs.ext4 e2fsck debugfs nbdinfo nbdsh qemu-img qemu-io qemu-nbd \
         sha256sum /usr/bin/python3; do
    command -v $t >/dev/null ||
        fail "$t is not installed (qemu-img, qemu-io, qemu-nbd: qemu-utils)"
done

M=1048576
img=$tmp/golden.raw
helper() { /usr/bin/python3 "$top/tests/formats-helper.py" "$@"; }
t0=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

# --- The golden image, from real files. ------------------------------------
# About 16 MiB of /usr/bin (files under 4 MiB) and 4 MiB of
# /usr/share/doc, in name order, plus /blob: 2 MiB of random data that
# the overlay changes.  A 48 MiB file system: the rest is holes.
mkdir "$tmp/root"
{ pick /usr/bin $((16 * M)); pick /usr/share/doc $((4 * M)); } >"$tmp/files"
tar -C / -cf - -T "$tmp/files" | tar -xf - -C "$tmp/root" ||
    fail "cannot copy the staged files"
head -c 2M /dev/urandom >"$tmp/root/blob"
staged=$(du -s -B1 --apparent-size "$tmp/root" | cut -f1)
[ "$staged" -ge $((16 * M)) ] || fail "staged only $staged bytes of files"
file1=$(grep -E '^usr/bin/[A-Za-z0-9._-]+$' "$tmp/files" | head -n 1)
[ -n "$file1" ] || fail "no plainly named file staged from /usr/bin"
file1_sum=$(sha256sum <"/$file1" | cut -d' ' -f1)
blob_sum=$(sha256sum <"$tmp/root/blob" | cut -d' ' -f1)

truncate -s 48M "$img"
mkfs.ext4 -q -F -b 4096 -d "$tmp/root" "$img" || fail "mkfs.ext4 -d failed"
e2fsck -f -n "$img" >"$tmp/e2fsck.out" 2>&1 ||
    { cat "$tmp/e2fsck.out"; fail "the new image is not clean"; }
debugfs -R "blocks /blob" "$img" >"$tmp/blob.blocks" 2>/dev/null ||
    fail "debugfs blocks /blob failed"
blob_first=$(tr ' ' '\n' <"$tmp/blob.blocks" | grep . | head -n 1)
blob_last=$(tr ' ' '\n' <"$tmp/blob.blocks" | grep . | tail -n 1)
[ $((blob_last - blob_first)) -eq 511 ] || fail "/blob is not 512 contiguous blocks"
blob_off=$((blob_first * 4096))
img_pages=$(helper pages "$img")
echo "staged $(wc -l <"$tmp/files") files + /blob, $staged bytes;" \
     "image $(stat -c %s "$img") bytes, $img_pages in non-zero pages"

# --- The same image in other formats. --------------------------------------
qemu-img convert -f raw -O qcow2 "$img" "$tmp/q.qcow2" || fail "convert qcow2"
qemu-img convert -c -f raw -O qcow2 "$img" "$tmp/qc.qcow2" ||
    fail "convert compressed qcow2"
qemu-img convert -f raw -O vmdk "$img" "$tmp/vm.vmdk" || fail "convert vmdk"
[ "$(stat -c %s "$tmp/qc.qcow2")" -lt "$(stat -c %s "$tmp/q.qcow2")" ] ||
    fail "the compressed qcow2 is not smaller than the plain one"
# The overlay: 64 KiB of 0x5a over /blob's start, and 128 KiB of zeroes
# (zero clusters: 64 KiB-aligned) further into /blob, over the backing
# file's data.
zoff=$(( (blob_off + 256 * 1024 + 65535) / 65536 * 65536 ))
qemu-img create -q -f qcow2 -b "$img" -F raw "$tmp/ov.qcow2" ||
    fail "qemu-img create the overlay"
qemu-io -f qcow2 -c "write -P 0x5a $blob_off 64k" -c "write -z $zoff 128k" \
    "$tmp/ov.qcow2" >"$tmp/qio.out" 2>&1 ||
    { cat "$tmp/qio.out"; fail "qemu-io writes into the overlay"; }
qemu-img convert -f qcow2 -O raw "$tmp/ov.qcow2" "$tmp/ov.raw" ||
    fail "convert the overlay to raw"
if cmp -s "$img" "$tmp/ov.raw"; then fail "the overlay reads as its backing file"; fi
# /blob as the overlay has it, made independently of qemu.
cp "$tmp/root/blob" "$tmp/blob2"
head -c 65536 /dev/zero | tr '\0' '\132' |
    dd of="$tmp/blob2" conv=notrunc status=none
dd if=/dev/zero of="$tmp/blob2" bs=4096 seek=$(( (zoff - blob_off) / 4096 )) \
    count=32 conv=notrunc status=none
blob2_sum=$(sha256sum <"$tmp/blob2" | cut -d' ' -f1)
dd if="$tmp/ov.raw" bs=4096 skip="$blob_first" count=512 status=none |
    cmp -s - "$tmp/blob2" || fail "the overlay's /blob is not as written"
ov_pages=$(helper pages "$tmp/ov.raw")
[ "$ov_pages" -lt "$img_pages" ] || fail "the overlay's zeroes did not drop pages"
elapsed "images made"

# --- NBD servers with the image: nbdkit file (raw), qemu-nbd (qcow2). ------
start_plugin nf file "$img"
nf_uri="nbd+unix:///?socket=$sock"
qemu-nbd --read-only --format=qcow2 --shared=8 --persistent \
    --socket="$tmp/qn.sock" "$tmp/q.qcow2" >"$tmp/qn.log" 2>&1 &
qn_pid=$!
_pids="$_pids $qn_pid"
i=0
while [ ! -S "$tmp/qn.sock" ]; do
    kill -0 $qn_pid 2>/dev/null || { cat "$tmp/qn.log"; fail "qemu-nbd died"; }
    [ $i -lt 100 ] || fail "qemu-nbd did not start"
    sleep 0.1; i=$((i + 1))
done
nq_uri="nbd+unix:///?socket=$tmp/qn.sock"

# --- 1-3. Load each at start-up. ---------------------------------------------
csock=$tmp/fmt.ctl
start_server fmt control="$csock" \
    "name=q:ro:format=qcow2:file=$tmp/q.qcow2" \
    "name=qc:ro:compress=zstd:format=qcow2:file=$tmp/qc.qcow2" \
    "name=ov:ro:format=qcow2:file=$tmp/ov.qcow2" \
    "name=vm:ro:format=vmdk:file=$tmp/vm.vmdk" \
    "name=nf:ro:nbd=$nf_uri" "name=nq:ro:nbd=$nq_uri" \
    name=cq:from=q name=cqc:from=qc name=cov:from=ov name=cvm:from=vm \
    name=busy:from=q
fmt_pid=$server_pid
fmt_sock=$sock
elapsed "server up"
# VmRSS before any connection (the loads' connections are closed): and
# that of an idle server, the same but with nothing loaded.
sleep 0.5
rss_fmt=$(helper rss $fmt_pid)
start_server idle control="$tmp/idle.ctl" name=x:size=48M
sleep 0.5
rss_idle=$(helper rss $server_pid)
stop_server
sock=$fmt_sock
[ -S "$csock" ] || fail "no control socket $csock"

# expected DEVICE: the raw image DEVICE must read as.
expected() {
    case $1 in ov|cov) echo "$tmp/ov.raw" ;; *) echo "$img" ;; esac
}

# check_loaded DEVICE: reads as its raw, maps as it, holds its pages.
total_alloc=0
check_loaded() {
    d=$1 raw=$(expected "$1")
    qemu-img compare -f raw -F raw "$raw" "$(uri "$d")" >"$tmp/cmp.out" 2>&1 ||
        { cat "$tmp/cmp.out"; fail "$d differs from $raw"; }
    expect_grep '^Images are identical\.$' "$tmp/cmp.out"
    nbdinfo --is read-only "$(uri "$d")" || fail "$d is not read-only"
    nbdinfo --map "$(uri "$d")" >"$tmp/$d.map" || fail "nbdinfo --map $d"
    helper mapcheck "$raw" "$tmp/$d.map" || fail "$d: map differs from $raw (above)"
    pages=$(helper pages "$raw")
    data=$(helper field "$csock" "$d" data)
    alloc=$(helper field "$csock" "$d" allocated)
    codec=$(helper field "$csock" "$d" compress)
    echo "$d: data $data, allocated $alloc ($codec); raw's non-zero pages $pages"
    [ "$data" -eq "$pages" ] ||
        fail "$d holds $data bytes of data, $raw has $pages in non-zero pages"
    if [ "$codec" = zstd ]; then
        [ "$alloc" -gt 0 ] && [ "$alloc" -lt "$data" ] ||
            fail "$d (zstd): $alloc bytes allocated for $data of data"
    else
        [ "$alloc" -le "$data" ] ||
            fail "$d: $alloc bytes allocated for $data bytes of data"
    fi
    total_alloc=$((total_alloc + alloc))
}
for d in q qc ov vm nf nq; do
    check_loaded $d
done
[ "$(helper field "$csock" qc compress)" = zstd ] || fail "qc is not zstd"
[ "$(helper field "$csock" q compress)" = none ] || fail "q is compressed"
# Nothing in the loaded devices' VmRSS but their allocated bytes, and a
# slack of 8 MiB + 2%: the stores' own metadata (chunk headers, bitmaps,
# directory: under 1% of the data at 4 KiB pages), and what the loading
# threads and libnbd handles freed that malloc keeps (a few MiB).
# Twelve loads of 4 MiB buffers held on to would blow it.
grew=$((rss_fmt - rss_idle))
slack=$((8 * M + total_alloc / 50))
echo "VmRSS: $rss_fmt loaded, $rss_idle idle: $grew more;" \
     "devices allocated $total_alloc (+ $slack slack)"
[ "$grew" -le $((total_alloc + slack)) ] ||
    fail "nbdkit grew by $grew bytes for $total_alloc allocated bytes"
[ "$grew" -ge $((total_alloc / 2)) ] ||
    fail "nbdkit grew by only $grew bytes: are the devices loaded?"
elapsed "loads checked"

# --- 4. guestfish: a writable clone of each, one launch. -------------------
{
    for c in cq cqc cov cvm; do
        echo "add-drive $c protocol:nbd server:unix:$sock format:raw"
    done
    echo run
    for x in a b c d; do
        cat <<EOF
mount /dev/sd$x /
checksum sha256 /$file1
checksum sha256 /blob
write /written "written in sd$x\n"
umount /
fsck ext4 /dev/sd$x
EOF
    done
} >"$tmp/gf.script"
guestfish_run gf --rw <"$tmp/gf.script"
want=
for c in cq cqc cov cvm; do
    b=$blob_sum
    [ $c != cov ] || b=$blob2_sum
    want="$want$file1_sum
$b
0
"
done
check_output gf "${want%
}"
for d in q qc ov vm; do
    qemu-img compare -f raw -F raw "$(expected $d)" "$(uri $d)" \
        >"$tmp/cmp.out" 2>&1 ||
        { cat "$tmp/cmp.out"; fail "$d changed under its clone's guest"; }
done
for c in cq cov; do
    m=$(helper field "$csock" $c allocated)
    [ "$m" -gt 0 ] || fail "clone $c holds nothing after the guest wrote to it"
done
elapsed "guestfish done"

# --- 5. device_create with format and uri while a clone is busy. -----------
ctl() { /usr/bin/python3 "$top/scripts/memblock-ctl" -s "$csock" "$@"; }
helper ioloop "$(uri busy)" "$tmp/stop" "$tmp/count" >"$tmp/ioloop.out" 2>&1 &
io_pid=$!
_pids="$_pids $io_pid"
i=0
while [ ! -s "$tmp/count" ]; do
    kill -0 $io_pid 2>/dev/null || { cat "$tmp/ioloop.out"; fail "ioloop died"; }
    [ $i -lt 100 ] || fail "ioloop did no I/O in 10 s"
    sleep 0.1; i=$((i + 1))
done

ctl create rq readonly=true format=qcow2 "file=$tmp/q.qcow2" >"$tmp/ctl.out" 2>&1 ||
    { cat "$tmp/ctl.out"; fail "memblock-ctl create rq format=qcow2"; }
expect_grep '^rq +48M +yes ' "$tmp/ctl.out"
helper job "$csock" rq >"$tmp/job.json" || fail "no load job for rq"
expect_grep '"kind": "load"' "$tmp/job.json"
expect_grep '"state": "done"' "$tmp/job.json"

# A slow server (each read 300 ms; a read per data extent, up to 1 MiB,
# up to 32 in flight):
# the load takes seconds.
start_plugin slow --filter=delay file "$img" delay-read=300ms
slow_uri="nbd+unix:///?socket=$sock"
sock=$fmt_sock
ctl create rn readonly=true "uri=$slow_uri" >"$tmp/ctl-rn.out" 2>&1 &
rn_pid=$!
seen=0 progressed=0 i=0
while kill -0 $rn_pid 2>/dev/null && [ $i -lt 300 ]; do
    if helper job "$csock" rn >"$tmp/job.json" 2>/dev/null &&
       grep -q '"state": "running"' "$tmp/job.json"; then
        expect_grep '"kind": "load"' "$tmp/job.json"
        seen=$((seen + 1))
        # The job ends before the device goes in: rn listed while its
        # job still runs (asked after the listing) is listed too early.
        if helper names "$csock" | grep -qx rn &&
           helper job "$csock" rn | grep -q '"state": "running"'; then
            fail "rn is listed while it loads"
        fi
        c1=$(cat "$tmp/count")
        sleep 0.4
        c2=$(cat "$tmp/count")
        grep -q '"state": "running"' "$tmp/job.json" &&
            [ "$c2" -gt "$c1" ] && progressed=$((progressed + 1))
    fi
    sleep 0.1; i=$((i + 1))
done
rc=0; wait $rn_pid || rc=$?
[ $rc -eq 0 ] || { cat "$tmp/ctl-rn.out"; fail "memblock-ctl create rn uri= (exit $rc)"; }
expect_grep '^rn +48M +yes ' "$tmp/ctl-rn.out"
[ $seen -ge 2 ] || fail "the load of rn was seen running only $seen times"
[ $progressed -ge 1 ] || fail "busy's I/O stalled while rn loaded"
helper job "$csock" rn >"$tmp/job.json" || fail "no load job for rn"
expect_grep '"state": "done"' "$tmp/job.json"
expect_grep '"kind": "load"' "$tmp/job.json"
touch "$tmp/stop"
rc=0; wait $io_pid || rc=$?
[ $rc -eq 0 ] || { cat "$tmp/ioloop.out"; fail "busy's I/O failed (exit $rc)"; }
echo "busy: $(cat "$tmp/count") verified writes meanwhile; load seen running $seen times"
total_alloc=0
check_loaded rq
check_loaded rn
elapsed "run-time creates checked"

# --- 6. A server that dies mid-load. -----------------------------------------
# The sources: slow (delay-read 300ms, a read per data extent), killed
# once the load is under way, or failing reads with EIO once the
# trigger file appears.
# startup_dies DEVICE URI ACTION: nbdkit memblock name=DEVICE:ro:nbd=URI
# fails once ACTION has run while it loads (its -v progress line seen),
# with one error line naming it.
startup_dies() {
    d=$1 u=$2 action=$3
    rm -f "$tmp/d.sock"
    nbdkit -v -U "$tmp/d.sock" "$MEMBLOCK_SO" "name=$d:ro:nbd=$u" --run true \
        >"$tmp/dies.out" 2>&1 &
    p=$!
    i=0
    until grep -q "name=$d: loading from nbd=" "$tmp/dies.out"; do
        kill -0 $p 2>/dev/null || { cat "$tmp/dies.out"; fail "$d: done before the source failed"; }
        [ $i -lt 300 ] || fail "$d: no progress line in 30 s"
        sleep 0.1; i=$((i + 1))
    done
    eval "$action"
    rc=0; wait $p || rc=$?
    [ $rc -ne 0 ] || { cat "$tmp/dies.out"; fail "$d: nbdkit memblock started"; }
    [ $rc -lt 128 ] || { cat "$tmp/dies.out"; fail "$d: nbdkit crashed (exit $rc)"; }
    grep '^nbdkit: .*error: ' "$tmp/dies.out" >"$tmp/errors" || :
    [ "$(wc -l <"$tmp/errors")" -eq 1 ] ||
        { cat "$tmp/dies.out"; fail "$d: expected one error line"; }
    expect_grep "name=$d: nbd=.*loading failed" "$tmp/errors"
    echo "ok (exit $rc): $(cat "$tmp/errors")"
}
# socket_dies DEVICE URI ACTION: device_create {uri} fails after ACTION
# (run once its load job has read something), device_list is unchanged,
# and the job shows failed.
socket_dies() {
    d=$1 u=$2 action=$3
    helper refused "$csock" "{\"name\": \"$d\", \"readonly\": true, \"uri\": \"$u\"}" \
        "$d" 'loading failed' >"$tmp/refused.out" 2>&1 &
    p=$!
    i=0
    until helper job "$csock" "$d" >"$tmp/job.json" 2>/dev/null &&
          grep -q '"state": "running"' "$tmp/job.json" &&
          ! grep -q '"done_bytes": 0,' "$tmp/job.json"; do
        kill -0 $p 2>/dev/null || { cat "$tmp/refused.out"; fail "$d: done before the source failed"; }
        [ $i -lt 300 ] || fail "$d: its load job was not seen running"
        sleep 0.1; i=$((i + 1))
    done
    eval "$action"
    rc=0; wait $p || rc=$?
    [ $rc -eq 0 ] || { cat "$tmp/refused.out"; fail "$d: device_create"; }
    cat "$tmp/refused.out"
    helper job "$csock" "$d" >"$tmp/job.json" || fail "no load job for $d"
    expect_grep '"kind": "load"' "$tmp/job.json"
    expect_grep '"state": "failed"' "$tmp/job.json"
    expect_grep '"error": "[^"]+' "$tmp/job.json"
    nbdinfo --size "$(uri "$d")" >/dev/null 2>&1 && fail "$d is served"
    :
}
start_plugin dying1 --filter=delay file "$img" delay-read=300ms
startup_dies dead1 "nbd+unix:///?socket=$sock" "kill -9 $server_pid"
start_plugin dying2 --filter=delay file "$img" delay-read=300ms
sock=$fmt_sock
socket_dies dead2 "nbd+unix:///?socket=$tmp/dying2.sock" "kill -9 $server_pid"
start_plugin eio --filter=error --filter=delay file "$img" error-pread=EIO \
    error-pread-rate=100% "error-pread-file=$tmp/trigger" delay-read=300ms
eio_uri="nbd+unix:///?socket=$sock"
sock=$fmt_sock
startup_dies dead3 "$eio_uri" "touch $tmp/trigger"
rm "$tmp/trigger"
socket_dies dead4 "$eio_uri" "touch $tmp/trigger"
kill -0 $fmt_pid || fail "nbdkit memblock died"
helper names "$csock" >"$tmp/names"
echo "devices:" $(cat "$tmp/names")
elapsed "formats: all checks passed"
