#!/bin/sh
# memblock benchmarks: the entry point of `make bench`.
#
# Measures memblock beside nbdkit memory (sparse), nbdkit memory
# allocator=malloc and nbdkit null, in one run:
#   fio       fio over NBD, pinned (server on one CPU, fio on the other,
#             rounds with rotating order, medians) and unpinned  (fio-bench.py)
#   sparse    RSS amplification, extent precision, 1 TiB block-status
#             walk and whole-device zero                     (sparse-bench.py)
#   clone     a golden ext4 image and 8 writable clones: memblock clones
#             beside memblock full copies and qemu-storage-daemon with
#             qcow2 overlays on /dev/shm; set-up time, memory, memory per
#             byte written, clone/golden reads, :file= load beside
#             nbdcopy                                         (clone-bench.py)
#   compress  the golden image loaded with nbdcopy into memblock,
#             memblock compress=zstd and lz4, nbdkit memory allocator=zstd
#             and sparse, and read back: memory held (RSS growth, read
#             with no connection open, beside the store's own count),
#             load and read-back times; then fio 4 KiB random read/write
#             on the loaded devices                        (compress-bench.py)
#   store     in-process store GiB/s beside memcpy and a global mutex;
#             the store compressed (none/zstd/lz4) with the image's data;
#             the store of a baseline commit (BENCH_BASELINE, default
#             5418575: its sources taken with git into $out/store-base/,
#             their list asked of its Makefile, built with this
#             store-bench.c) beside the current one, alternating rounds,
#             uncompressed and compressed  (store-bench.c, store-compare.py)
#   snapshot  the golden image in a writable device with control=:
#             snapshot and rollback round trips beside qemu-storage-
#             daemon's blockdev-snapshot-sync over QMP, memory growth of
#             writes after a snapshot, 4 KiB random read through 16
#             snapshots (fio) and through 16 frozen layers in process
#             (store-bench -l), save of a snapshot beside nbdcopy and
#             writes during saves, the request gate in process
#             (store-bench -g) and fio with control= and without
#                                     (snapshot-bench.py, store-bench.c)
#   power     :volatile devices: in-process writes into a volatile cache
#             beside a plain store through the gate, and the fold of a
#             flush (store-bench -V); over NBD and the control socket, a
#             flush and power cuts (keep none, all, random) of 256 MiB
#             unflushed, and fio 4 KiB random writes with a flush every 64
#             on a volatile device beside a plain one
#                                        (store-bench.c, power-bench.py)
# then prints the tables, ratios and target verdicts (report.py) and
# saves them to build/bench/results.txt (build/bench/smoke/ for --smoke).
#
# Usage: sh bench/run.sh [--smoke] [--strict]     (from any directory)
#   --smoke    tiny rounds (about a minute) that check every part runs
#   --strict   also exit 1 when a target is missed
# Exits 1 if any part fails or leaves its table incomplete.
# A full run takes about 20 minutes on a busy 2-core machine (the clone
# part about 2, plus 20 s the first time to make its image, kept in
# $BENCH_OUT/clone/; compress and store-codec together about 3.5; the
# baseline store comparisons about 1.5; snapshot about 5; power about 6).  As root
# it runs at nice -10 so that other work on the machine disturbs it less
# (BENCH_NICE=0 turns it off).
# Environment: BENCH_ROUNDS, BENCH_RUNTIME (seconds per fio run),
# BENCH_SIZE (fio device size), BENCH_SERVER_CPU, BENCH_CLIENT_CPU,
# BENCH_NICE, CC, MEMBLOCK_SO (the plugin to measure; default
# ./memblock.so), BENCH_OUT (results directory; default build/bench),
# BENCH_BASELINE (the commit whose store the current one is compared with;
# its plugin/store.h must be this one's API).

# The *_args, *_srcs and codec_libs variables and CC are split into words
# on purpose.
# shellcheck disable=SC2086
set -u

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
# Debian's python3 has the nbd module; nbdsh and nbdinfo live there too.
PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
export PATH
PY=/usr/bin/python3

smoke=false strict=""
for a in "$@"; do
    case "$a" in
        --smoke) smoke=true ;;
        --strict) strict=--strict ;;
        *) echo "usage: sh bench/run.sh [--smoke] [--strict]" >&2; exit 2 ;;
    esac
done

out=${BENCH_OUT:-build/bench}
$smoke && out=$out/smoke
mkdir -p "$out"
rm -f "$out"/fio.json "$out"/sparse.json "$out"/clone.json "$out"/store-*.txt \
      "$out"/compress.json "$out"/store-compare*.json "$out"/results.txt \
      "$out"/snapshot.json \
      "$out"/power.json \
      "$out"/store-bench "$out"/store-bench-base "$out"/*.log

if $smoke; then
    fio_args="--size 64M --rounds 1 --runtime 0.2 --unpinned-workloads 4k-randread-1c"
    sparse_args="--rss-writes 2000 --extent-writes 200 --walk-writes 200 --rounds 1"
    image_bytes=33554432                # 32 MiB
    image_args="--image-size $image_bytes --data 14M"
    clone_args="--write 1M --read-runtime 0.2 --rounds 1 --load-rounds 1"
    compress_args="--rounds 1 --fio-rounds 1 --fio-runtime 0.2 --verify"
    store_args="-t 0.04 -r 1"
    store_ram=16
    codec_args="-t 0.04 -r 1 -m 4"
    cmp_args="-t 0.04 -m 4" cmp_rounds=2
    cmp_codec_args="-t 0.04 -m 4" cmp_codec_rounds=2
    snapshot_args="--snapshots 3 --write 4M --rounds 1 --runtime 0.2 --save-rounds 1 --busy-runtime 0.3"
    layers_args="-t 0.04 -r 1"
    volatile_args="-t 0.04 -r 1 -m 4"
    power_args="--size 64M --write 4M --rounds 1 --fio-rounds 1 --runtime 0.2"
else
    fio_args="--size ${BENCH_SIZE:-1G} --rounds ${BENCH_ROUNDS:-7} --runtime ${BENCH_RUNTIME:-3}"
    sparse_args="--rounds 3"
    image_bytes=2147483648              # 2 GiB
    image_args="--image-size $image_bytes --data 1.3G"
    clone_args="--rounds 5 --read-runtime 6 --load-rounds 5"
    compress_args="--rounds 3 --fio-rounds 3 --fio-runtime 2"
    store_args="-t 0.25 -r 5"
    store_ram=256
    codec_args="-t 0.25 -r 3 -m 64"
    cmp_args="-t 0.25 -m 4" cmp_rounds=7
    cmp_codec_args="-t 0.25 -m 64" cmp_codec_rounds=5
    snapshot_args="--snapshots 30 --write 256M --rounds 5 --runtime 3 --save-rounds 3 --busy-runtime 3"
    layers_args="-t 0.2 -r 9"
    volatile_args="-t 0.25 -r 5 -m 256"
    power_args="--size 1G --write 256M --rounds 5 --fio-rounds 5 --runtime 3"
fi
# The golden image clone-bench.py and compress-bench.py build and keep
# (benchlib.golden_image); store-bench -c reads its data from it.
image=$out/clone/golden-$image_bytes.img

# Smoke runs may share the machine with test suites: no priority there.
nice_n=0
if ! $smoke && [ "$(id -u)" = 0 ]; then
    nice_n=${BENCH_NICE:--10}
fi

failed=""
# part NAME STDOUT COMMAND...: run one part, its stdout to STDOUT and its
# stderr (progress) to NAME.log.
part() {
    name=$1 stdout=$2; shift 2
    echo "bench: $name ... (progress in $out/$name.log)" >&2
    start=$(date +%s)
    if nice -n "$nice_n" "$@" >"$stdout" 2>"$out/$name.log"; then
        echo "bench: $name done in $(( $(date +%s) - start )) s" >&2
    else
        echo "bench: $name FAILED (exit $?); last lines of $out/$name.log:" >&2
        tail -n 20 "$out/$name.log" | sed 's/^/    /' >&2
        failed="$failed $name"
    fi
}

# Prerequisites.
missing=""
for cmd in nbdkit fio taskset nbdinfo nbdcopy qemu-img qemu-storage-daemon \
           mkfs.ext4 ${CC:-gcc}; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
$PY -c 'import nbd' 2>/dev/null || missing="$missing python3-libnbd"
MEMBLOCK_SO=${MEMBLOCK_SO:-$top/memblock.so}
export MEMBLOCK_SO
[ -f "$MEMBLOCK_SO" ] || missing="$missing $MEMBLOCK_SO(run make)"
if [ -n "$missing" ]; then
    echo "bench: missing:$missing" >&2
    exit 1
fi

began=$(date +%s)
load=$(cut -d' ' -f1-3 /proc/loadavg)
# store-bench, built against the current store: the Makefile's
# STORE_SRCS, and the codecs' libraries.
cc_store="${CC:-gcc} -std=gnu11 -Wall -Wextra -Werror -O2 -g -pthread"
codec_libs=$(pkg-config --libs libzstd liblz4)
store_srcs=$(make -s --no-print-directory print-store-srcs)
part build-store-bench /dev/null $cc_store -Iplugin \
    -o "$out/store-bench" bench/store-bench.c $store_srcs $codec_libs
part store-ram "$out/store-ram.txt" \
    "$out/store-bench" $store_args -m "$store_ram"
part store-cache "$out/store-cache.txt" "$out/store-bench" $store_args -m 4
# Snapshots in process: reads through 16 frozen layers beside one store,
# and the request gate beside the bare store.
part store-layers "$out/store-layers.txt" \
    "$out/store-bench" $layers_args -m "$store_ram" -l 16 -p
part store-gate "$out/store-gate.txt" \
    "$out/store-bench" $layers_args -m "$store_ram" -g -p
# A volatile device's write cache beside a plain store, and its flush.
part store-volatile "$out/store-volatile.txt" \
    "$out/store-bench" $volatile_args -V -p

# The store of the baseline commit, when git has it: its tree into
# $base, the list of its store sources from its own Makefile.
baseline=${BENCH_BASELINE:-5418575}
base=$out/store-base
base_skip=""
if ! command -v git >/dev/null 2>&1; then
    base_skip="git is not installed"
elif ! git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
    base_skip="$top is not a git checkout"
elif ! git -C "$top" cat-file -e "$baseline^{commit}" 2>/dev/null; then
    base_skip="commit $baseline is not in this repository"
else
    baseline=$(git -C "$top" rev-parse --short "$baseline^{commit}")
fi
if [ -z "$base_skip" ]; then
    base_srcs=""
    rm -rf "$base"
    mkdir -p "$base"
    if git -C "$top" archive "$baseline" | tar -x -C "$base" \
            2>"$out/store-base.log"; then
        srcs=$(make -s --no-print-directory -C "$base" -f Makefile \
               -f - bench-store-srcs 2>>"$out/store-base.log" <<'EOF'
bench-store-srcs: ; @echo $(STORE_SRCS)
EOF
)
        for f in $srcs; do
            base_srcs="$base_srcs $base/$f"
        done
    fi
    if [ -z "$base_srcs" ]; then
        echo "bench: store-base FAILED: no STORE_SRCS from $baseline's" \
             "Makefile; see $out/store-base.log" >&2
        failed="$failed store-base"
    fi
    part build-store-bench-base /dev/null $cc_store -I"$base/plugin" \
        -o "$out/store-bench-base" bench/store-bench.c $base_srcs $codec_libs
    part store-compare /dev/null $PY bench/store-compare.py \
        --baseline "$baseline" --before "$out/store-bench-base" \
        --after "$out/store-bench" --rounds "$cmp_rounds" \
        --out "$out/store-compare.json" -- -s $cmp_args
else
    echo "bench: store-compare skipped: $base_skip" >&2
    for f in store-compare store-compare-codec; do
        $PY bench/store-compare.py --baseline "$baseline" \
            --skip "$base_skip" --out "$out/$f.json"
    done
fi
part sparse /dev/null \
    $PY bench/sparse-bench.py $sparse_args --out "$out/sparse.json"
part fio /dev/null $PY bench/fio-bench.py $fio_args --out "$out/fio.json"
part clone /dev/null \
    $PY bench/clone-bench.py $image_args $clone_args --out "$out/clone.json"
part compress /dev/null \
    $PY bench/compress-bench.py $image_args $compress_args \
    --out "$out/compress.json"
part snapshot /dev/null \
    $PY bench/snapshot-bench.py $image_args $snapshot_args \
    --out "$out/snapshot.json"
part power /dev/null \
    $PY bench/power-bench.py $power_args --out "$out/power.json"
# The compressed store, filled with the image's data (text if the image
# could not be made).
codec_data=""
[ -f "$image" ] && codec_data="-d $image"
part store-codec "$out/store-codec.txt" \
    "$out/store-bench" $codec_args -p -c none,zstd,lz4 $codec_data
if [ -z "$base_skip" ]; then
    part store-compare-codec /dev/null $PY bench/store-compare.py \
        --baseline "$baseline" --before "$out/store-bench-base" \
        --after "$out/store-bench" --rounds "$cmp_codec_rounds" \
        --out "$out/store-compare-codec.json" -- \
        -c zstd,lz4 $codec_data $cmp_codec_args
fi

# ---- Loading golden images as they ship (issue 16): load-bench.py.
# The golden image as qcow2 and as compressed qcow2 (made once, kept
# beside the image in $out/clone/) loaded with :format=qcow2, beside
# qemu-img convert to /dev/shm + file=, qemu-img convert -n and nbdcopy
# from qemu-nbd into a running memblock; time, every process's VmHWM,
# /dev/shm and the memory held.  About 20 minutes on a busy 2-core
# machine (3 rounds; once 1 more to make the compressed qcow2); --smoke:
# about 30 s.
if $smoke; then
    load_args="--rounds 1 --verify"
else
    load_args="--rounds ${BENCH_LOAD_ROUNDS:-3}"
fi
rm -f "$out/load.json"
part load /dev/null \
    $PY bench/load-bench.py $image_args $load_args --out "$out/load.json"
# ---- end of the load part.

rev=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD -- plugin 2>/dev/null || rev="$rev with local changes"
mode=full
$smoke && mode="smoke (tiny rounds: checks that the bench runs; figures mean little)"
header="memblock bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $mode
$(uname -r), $(nproc) CPUs, load before the run $load, nice $nice_n
$(nbdkit --version 2>/dev/null | head -n 1), $(fio --version), plugin sources at $rev
plugin: $MEMBLOCK_SO"
$PY bench/report.py --dir "$out" --header "$header" $strict \
    >"$out/results.txt"
rc=$?
cat "$out/results.txt"
echo
echo "bench: took $(( $(date +%s) - began )) s; saved to $out/results.txt"
if [ -n "$failed" ]; then
    echo "bench: FAILED parts:$failed" >&2
    exit 1
fi
[ $rc -eq 0 ] || { echo "bench: report incomplete or a target missed" >&2; exit 1; }
exit 0
