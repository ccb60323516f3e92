#!/bin/sh
# save (control socket): what a saved image holds, and when a save is
# refused or fails.  No guestfish.
#
# Proves, against one server (nbdkit memblock control=PATH):
#  1. the image is the device as it was when the save was asked for: a
#     64 MiB device gets a known sparse pattern P1 (runs of random data,
#     zeroes written as data, small unaligned writes, trims and
#     write-zeroes, holes elsewhere); one process sends "save" and, the
#     moment the reply comes, overwrites the whole device with P2 from
#     the top down, while the job is still reading (done_bytes shows
#     it); the image holds P1 exactly and the device P2.  Two rounds,
#     at least one of them raced for real;
#  2. the image is sparse: SEEK_DATA/SEEK_HOLE find data exactly in the
#     4 KiB blocks that hold a non-zero byte, so the zeroes written as
#     data, trimmed and never-written pages are holes; its blocks
#     allocated are its data, not its size;
#  3. an existing PATH without overwrite is refused with EEXIST and the
#     old file is untouched (content, inode, mtime); overwrite=true
#     replaces it (new inode, new content);
#  4. a PATH whose directory does not exist, or is on a read-only file
#     system, fails the job with a message naming the cause, leaving no
#     PATH and no PATH.tmp; a full file system (a 1 MiB tmpfs, 8 MiB of
#     data) fails the job with ENOSPC's message and leaves the tmpfs
#     empty; the server goes on serving;
#  5. save without a path on a device with no :persist= is refused with
#     EINVAL; on a device with :persist= it writes the persist path;
#  6. job_list shows done_bytes == total_bytes == the size for every
#     done job, and failed jobs as failed with their error;
#  7. a compressed device (:compress=zstd) and a clone (:from=) save as
#     exactly what they read, sparse where they read zeroes.
. "$(dirname "$0")/lib.sh"

for t in nbdsh nbdcopy nbdinfo cmp; do
    command -v $t >/dev/null || fail "$t is not installed"
done
M=1048576

cat >"$tmp/sv.py" <<'EOF'
import json, os, random, socket, sys, time
import nbd

M = 1 << 20
PAGE = 4096

def rpc(ctl, method, params):
    """One JSON-RPC call on a new connection; (result, error)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(ctl)
    s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                           "params": params}) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        b = s.recv(65536)
        if not b:
            sys.exit("control socket closed mid-reply")
        buf += b
    s.close()
    r = json.loads(buf)
    return r.get("result"), r.get("error")

def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h

def nonzero(rng, n):
    """n random bytes with no zero byte."""
    return bytes(b % 255 + 1 for b in rng.randbytes(n)) if n < 4096 else \
        rng.randbytes(n).replace(b"\0", b"\x01")

def fill_p1(h, size, seed, model, runs=60):
    """Write the sparse pattern P1 through h and into model; return what
    the device reads, which must be the model but where trims were."""
    trims = []
    rng = random.Random(seed)
    pages = size // PAGE
    h.zero(size, 0)             # start from zeroes (earlier rounds)
    def w(data, off):
        h.pwrite(data, off)
        model[off:off + len(data)] = data
    # Runs of random data, up to 1 MiB each: about 40 MiB in all.
    for _ in range(runs):
        n = rng.randrange(1, 257) * PAGE
        off = rng.randrange(0, pages) * PAGE
        n = min(n, size - off)
        w(rng.randbytes(n).replace(b"\0", b"\x01"), off)
    # Zeroes written as data, some over data, some over holes.
    for _ in range(25):
        n = rng.randrange(1, 65) * PAGE
        off = rng.randrange(0, pages) * PAGE
        n = min(n, size - off)
        w(bytes(n), off)
    # Small unaligned writes: partial pages, some in holes.
    for _ in range(40):
        n = rng.randrange(1, 3000)
        off = rng.randrange(0, size - n)
        w(nonzero(rng, n), off)
    # Trims and write-zeroes, aligned or not.
    for i in range(20):
        n = rng.randrange(1, 300000)
        off = rng.randrange(0, size - n)
        if i % 2:
            h.zero(n, off)
            model[off:off + n] = bytes(n)
        else:
            # A trim is advisory: what it leaves is re-read below.
            h.trim(n, off)
            trims.append((off, off + n))
    got = bytearray()
    for off in range(0, size, 4 * M):
        got += h.pread(min(4 * M, size - off), off)
    # Outside the trimmed ranges the device reads as written; inside, a
    # byte reads as written or as zero.
    alt = bytearray(model)
    for s, e in trims:
        alt[s:e] = bytes(e - s)
    for off in range(0, size, PAGE):
        a, b, c = (x[off:off + PAGE] for x in (got, model, alt))
        if a == b or a == c:
            continue
        for i in range(PAGE):
            if a[i] != b[i] and a[i] != c[i]:
                sys.exit("P1: byte %d reads %d, written %d" %
                         (off + i, a[i], b[i]))
    return got

def cmd_race(uri, ctl, dev, path, seed, expect_out):
    """Fill P1, save, overwrite with P2 at once; write P1 to expect_out.
    Prints the job id and whether the overwrite raced the save."""
    seed = int(seed)
    h = connect(uri)
    size = h.get_size()
    model = bytearray(size)
    p1 = fill_p1(h, size, seed, model)
    with open(expect_out, "wb") as f:
        f.write(p1)
    p2 = b"P2" * (M // 2)
    res, err = rpc(ctl, "save", {"device": dev, "path": path})
    if err:
        sys.exit("save refused: %r" % err)
    job = res["job"]
    # Top down, against the save's reading order.
    first = None
    for i in reversed(range(size // M)):
        h.pwrite(p2, i * M)
        if first is None:
            jl, _ = rpc(ctl, "job_list", {})
            first = [j for j in jl if j["id"] == job][0]
    raced = first["state"] == "running" and first["done_bytes"] < size - M
    info, err = rpc(ctl, "job_wait", {"job": job})
    if err or info["state"] != "done":
        sys.exit("save job failed: %r %r" % (err, info))
    for i in range(size // M):
        if h.pread(M, i * M) != p2:
            sys.exit("device does not read P2 at MiB %d after the overwrite" % i)
    h.shutdown()
    print("job %d raced=%s done_bytes at the first overwrite: %d of %d" %
          (job, raced, first["done_bytes"], size))

def data_ranges(path):
    fd = os.open(path, os.O_RDONLY)
    out, off = [], 0
    try:
        while True:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            e = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, e))
            off = e
    finally:
        os.close(fd)
    return out

def cmd_sparse(path):
    """SEEK_DATA/SEEK_HOLE of path: data exactly in the blocks that hold
    a non-zero byte; prints the figures."""
    g = os.statvfs(path).f_bsize
    data = open(path, "rb").read()
    size = len(data)
    nblocks = (size + g - 1) // g
    seek = bytearray(nblocks)
    for d, e in data_ranges(path):
        for b in range(d // g, (e + g - 1) // g):
            seek[b] = 1
    zero = bytes(g)
    bad_hole = bad_data = nz = 0
    first = None
    for b in range(nblocks):
        blk = data[b * g:(b + 1) * g]
        isnz = blk != zero[:len(blk)]
        nz += isnz
        if isnz and not seek[b]:
            bad_hole += 1
            first = first or "block %d holds data but SEEK says hole" % b
        if not isnz and seek[b]:
            bad_data += 1
            first = first or "block %d is all zero but SEEK says data" % b
    st = os.stat(path)
    print("%s: %d blocks of %d, %d non-zero, %d KiB allocated" %
          (os.path.basename(path), nblocks, g, nz, st.st_blocks // 2))
    if bad_hole or bad_data:
        sys.exit("%s: %d data blocks shown as holes, %d zero blocks "
                 "allocated; first: %s" % (path, bad_hole, bad_data, first))
    # Allocated: the data, give or take metadata blocks.
    if st.st_blocks * 512 > nz * g + 64 * 1024:
        sys.exit("%s: %d bytes allocated for %d bytes of data" %
                 (path, st.st_blocks * 512, nz * g))

def cmd_rpc(ctl, method, params):
    """Print the result as JSON (exit 0) or the error (exit 1)."""
    res, err = rpc(ctl, method, json.loads(params))
    if err:
        print(json.dumps(err))
        sys.exit(1)
    print(json.dumps(res))

def cmd_fill(uri, seed, out):
    """Fill P1 (with a seed, fewer runs of data) and write what the
    device reads to out."""
    h = connect(uri)
    size = h.get_size()
    p1 = fill_p1(h, size, int(seed), bytearray(size), 12)
    with open(out, "wb") as f:
        f.write(p1)
    h.shutdown()

getattr(sys.modules[__name__], "cmd_" + sys.argv[1])(*sys.argv[2:])
EOF
sv() { python3 "$tmp/sv.py" "$@"; }

# job_of JSON: the job id in a save's result.
job_of() {
    python3 -c 'import json, sys; print(json.loads(sys.argv[1])["job"])' "$1"
}
# job_field ID FIELD: a field of job ID in job_list.
job_field() {
    sv rpc "$csock" job_list '{}' >"$tmp/jl" || fail "job_list refused"
    python3 -c 'import json, sys
j = [j for j in json.load(open(sys.argv[1])) if j["id"] == int(sys.argv[2])]
assert len(j) == 1, "job %s not listed" % sys.argv[2]
v = j[0][sys.argv[3]]
print("" if v is None else v)' "$tmp/jl" "$1" "$2"
}
# wait_job ID: job_wait; prints the job's JSON into $tmp/job.json.
wait_job() {
    sv rpc "$csock" job_wait "{\"job\": $1}" >"$tmp/job.json" ||
        { cat "$tmp/job.json"; fail "job_wait $1 refused"; }
}
# nothing_left PATH: neither PATH nor PATH.tmp exists.
nothing_left() {
    [ ! -e "$1" ] || fail "$1 was left behind"
    [ ! -e "$1.tmp" ] || fail "$1.tmp was left behind"
}

# A small golden image for the clone.
python3 -c 'import random, sys
r = random.Random(7)
with open(sys.argv[1], "wb") as f:
    f.truncate(16 << 20)
    for i in range(12):
        f.seek(r.randrange(0, 4000) * 4096)
        f.write(r.randbytes(r.randrange(1, 64) * 4096))' "$tmp/golden.img"

csock=$tmp/sv.ctl
start_server sv control="$csock" name=dev:size=64M name=big:size=16M \
    name=z:size=32M:compress=zstd "name=golden:ro:file=$tmp/golden.img" \
    name=vm:from=golden "name=p:size=8M:persist=$tmp/p.raw"
i=0
while [ ! -S "$csock" ]; do
    [ $i -lt 100 ] || { cat "$log"; fail "no control socket at $csock"; }
    sleep 0.1; i=$((i + 1))
done

# --- 1, 2. The image is the device at the save's start, and sparse. ----
raced=0
for round in 1 2; do
    out=$tmp/r$round.raw
    sv race "$(uri dev)" "$csock" dev "$out" $round "$tmp/expect$round" \
        >"$tmp/race.out" || { cat "$tmp/race.out"; fail "round $round"; }
    cat "$tmp/race.out"
    grep -q 'raced=True' "$tmp/race.out" && raced=$((raced + 1))
    [ "$(stat -c %s "$out")" -eq $((64 * M)) ] || fail "round $round: image size"
    cmp "$tmp/expect$round" "$out" ||
        fail "round $round: the image is not the device as at the save (P1)"
    sv sparse "$out" || fail "round $round: image not sparse as it should be"
    nothing_left "$out.tmp"
    rm -f "$tmp/expect$round"
done
[ $raced -ge 1 ] ||
    fail "no round overwrote the device while the save was reading it"
echo "save vs overwrite: $raced of 2 rounds raced, images hold P1"

# --- 3. EEXIST and overwrite. --------------------------------------------
old=$tmp/r1.raw
sum_old=$(sha256sum <"$old")
ino_old=$(stat -c '%i %Y' "$old")
sleep 1.1       # an mtime that a rewrite would change
if sv rpc "$csock" save "{\"device\": \"big\", \"path\": \"$old\"}" >"$tmp/e.out"; then
    cat "$tmp/e.out"; fail "save over an existing file was not refused"
fi
expect_grep '"errno": "EEXIST"' "$tmp/e.out"
[ "$(sha256sum <"$old")" = "$sum_old" ] || fail "EEXIST: the old file changed"
[ "$(stat -c '%i %Y' "$old")" = "$ino_old" ] || fail "EEXIST: the old file was touched"
nothing_left "$old.tmp"

sv fill "$(uri big)" 99 "$tmp/big.expect" || fail "fill big"
res=$(sv rpc "$csock" save "{\"device\": \"big\", \"path\": \"$old\", \"overwrite\": true}") ||
    fail "save overwrite=true refused: $res"
j=$(job_of "$res"); wait_job "$j"
expect_grep '"state": "done"' "$tmp/job.json"
cmp "$tmp/big.expect" "$old" || fail "overwrite=true: the file is not the new image"
[ "$(stat -c %i "$old")" != "${ino_old% *}" ] ||
    fail "overwrite=true: same inode, the file was rewritten in place"
sv sparse "$old" || fail "overwritten image not sparse"
nothing_left "$old.tmp"
echo "EEXIST and overwrite: ok"

# --- 4. Unwritable directory, read-only file system, full disk. ----------
bad=$tmp/no/such/dir/x.raw
res=$(sv rpc "$csock" save "{\"device\": \"big\", \"path\": \"$bad\"}") || res=
if [ -n "$res" ]; then
    j=$(job_of "$res"); wait_job "$j"
    expect_grep '"state": "failed"' "$tmp/job.json"
    expect_grep 'No such file or directory' "$tmp/job.json"
else
    fail "save to a missing directory: refused at once, not a failed job"
fi
nothing_left "$bad"
[ ! -e "$tmp/no" ] || fail "the save made directories"

mounted=""
umount_all() {
    for m in $mounted; do umount "$m" 2>/dev/null || :; done
}
if [ "$(id -u)" -eq 0 ]; then
    trap 'umount_all; _cleanup' EXIT
    mkdir "$tmp/ro" "$tmp/full"
    mount -t tmpfs -o ro,size=1M tmpfs "$tmp/ro" || fail "mount ro tmpfs"
    mounted="$tmp/ro"
    mount -t tmpfs -o size=1M tmpfs "$tmp/full" || fail "mount small tmpfs"
    mounted="$mounted $tmp/full"

    res=$(sv rpc "$csock" save "{\"device\": \"big\", \"path\": \"$tmp/ro/x.raw\"}") ||
        fail "save to a read-only fs refused at once: $res"
    j=$(job_of "$res"); wait_job "$j"
    expect_grep '"state": "failed"' "$tmp/job.json"
    expect_grep 'Read-only file system' "$tmp/job.json"
    nothing_left "$tmp/ro/x.raw"

    # 8 MiB of data in big (fill wrote more; make sure of 8 MiB).
    nbdsh -u "$(uri big)" -c "h.pwrite(b'\\x5a' * (8 << 20), 0)" || fail "write big"
    res=$(sv rpc "$csock" save "{\"device\": \"big\", \"path\": \"$tmp/full/x.raw\"}") ||
        fail "save to a small tmpfs refused at once: $res"
    j=$(job_of "$res"); wait_job "$j"
    cat "$tmp/job.json"
    expect_grep '"state": "failed"' "$tmp/job.json"
    expect_grep 'No space left on device' "$tmp/job.json"
    [ -z "$(ls -A "$tmp/full")" ] ||
        { ls -la "$tmp/full"; fail "the failed save left files in the tmpfs"; }
    used=$(df -k --output=used "$tmp/full" | tail -n 1 | tr -d ' ')
    [ "$used" -eq 0 ] || fail "the tmpfs still holds $used KiB"
    echo "read-only and full file systems: jobs failed, nothing left"
else
    echo "not root: the tmpfs checks (read-only, full disk) are not run"
fi
kill -0 "$server_pid" || fail "nbdkit died"
nbdsh -u "$(uri big)" -c "assert h.pread(4096, 0) == b'\\x5a' * 4096" ||
    fail "big no longer reads after the failed saves"

# --- 5. No path: EINVAL without :persist=, the persist path with it. -----
if sv rpc "$csock" save '{"device": "dev"}' >"$tmp/e.out"; then
    cat "$tmp/e.out"; fail "save without a path on dev was not refused"
fi
expect_grep '"errno": "EINVAL"' "$tmp/e.out"
expect_grep 'persist' "$tmp/e.out"
nbdsh -u "$(uri p)" -c "h.pwrite(b'persist!' * 512, 5 << 20)" || fail "write p"
res=$(sv rpc "$csock" save '{"device": "p"}') || fail "save p refused: $res"
j=$(job_of "$res"); wait_job "$j"
expect_grep '"state": "done"' "$tmp/job.json"
nbdcopy "$(uri p)" "$tmp/p.expect" || fail "nbdcopy p"
cmp "$tmp/p.expect" "$tmp/p.raw" || fail "save without a path: $tmp/p.raw is not p"

# --- 7. A compressed device and a clone save as what they read. ----------
sv fill "$(uri z)" 5 "$tmp/z.fill" || fail "fill z"
head -c 3M /dev/zero | tr '\0' 'q' | nbdsh -u "$(uri z)" \
    -c "import sys; h.pwrite(sys.stdin.buffer.read(), 20 << 20)" || fail "write z"
nbdsh -u "$(uri vm)" -c "h.pwrite(b'\\xc3' * 100000, 123456)" \
    -c "h.zero(2 << 20, 8 << 20)" -c "h.trim(1 << 20, 1 << 20)" || fail "write vm"
for d in z vm; do
    res=$(sv rpc "$csock" save "{\"device\": \"$d\", \"path\": \"$tmp/$d.raw\"}") ||
        fail "save $d refused: $res"
    j=$(job_of "$res"); wait_job "$j"
    expect_grep '"state": "done"' "$tmp/job.json"
    nbdcopy "$(uri $d)" "$tmp/$d.expect" || fail "nbdcopy $d"
    cmp "$tmp/$d.expect" "$tmp/$d.raw" || fail "$d: the image is not what $d reads"
    sv sparse "$tmp/$d.raw" || fail "$d: image not sparse as it should be"
done
echo "compressed device and clone: images equal their reads"

# --- 6. job_list: done jobs are whole, failed ones say why. --------------
sv rpc "$csock" job_list '{}' >"$tmp/jl" || fail "job_list refused"
nfailed=1; [ -z "$mounted" ] || nfailed=3
python3 - "$tmp/jl" $nfailed <<'EOF' || fail "job_list is not consistent (above)"
import json, sys
jobs = json.load(open(sys.argv[1]))
sizes = {"dev": 64 << 20, "big": 16 << 20, "z": 32 << 20, "vm": 16 << 20,
         "p": 8 << 20}
done = failed = 0
for j in jobs:
    assert j["kind"] == "save", j
    assert j["total_bytes"] == sizes[j["device"]], j
    if j["state"] == "done":
        assert j["done_bytes"] == j["total_bytes"], j
        assert not j.get("error"), j
        done += 1
    elif j["state"] == "failed":
        assert j.get("error"), j
        failed += 1
    else:
        raise AssertionError("job still running: %r" % j)
print("job_list: %d done (done_bytes == total_bytes), %d failed" % (done, failed))
assert done == 6, done
assert failed == int(sys.argv[2]), failed
EOF
kill -0 "$server_pid" || fail "nbdkit died"
echo "save: all checks passed"
