#!/bin/sh
# `make bench` keeps working: a one-minute smoke run of every part of
# the benchmark (fio over NBD against memblock, memory, malloc and null;
# the sparse and memory checks; golden images and clones; compression;
# snapshots and the control socket; the in-process store bench,
# compressed too, and the store of the baseline commit beside the
# current one; volatile devices and power cuts; loading images as they
# ship) must finish and print complete tables (none MISSING).  The
# baseline tables may say "skipped" only when git cannot find the
# baseline commit.  Targets are not judged here:
# timings in a test run mean nothing.
. "$(dirname "$0")/lib.sh"

sh "$top/bench/run.sh" --smoke >"$tmp/bench.out" 2>&1 ||
    { tail -n 40 "$tmp/bench.out"; fail "bench/run.sh --smoke failed"; }
for t in 'Pinned, median' 'RSS amplification' 'Extent precision' \
         'block-status walk' 'In-process store' 'Golden image and writable clones' \
         'Compression' 'In-process store, compressed' \
         'Snapshots and the control socket' 'Reads through 16 frozen layers' \
         'The request gate in process' \
         'The store at .* beside the current one:' \
         'The store at .* beside the current one, compressed:' \
         'Loading golden images as they ship' 'Targets'; do
    grep -q "$t" "$tmp/bench.out" || { cat "$tmp/bench.out"; fail "no '$t' table"; }
done
# The power cuts (:volatile devices): in process, over the control
# socket, and fio with flushes.
for t in 'Power cuts:' 'In process (store-bench -V)' 'Flush in process' \
         'power_cut keep=random' '4k-randwrite-fsync64 *volatile/plain'; do
    grep -q "$t" "$tmp/bench.out" || { cat "$tmp/bench.out"; fail "no '$t' row"; }
done
! grep -q 'MISSING' "$tmp/bench.out" ||
    { cat "$tmp/bench.out"; fail "a table is MISSING"; }
baseline=${BENCH_BASELINE:-5418575}
if grep -q 'beside the current one.*: skipped' "$tmp/bench.out" &&
        git -C "$top" cat-file -e "$baseline^{commit}" 2>/dev/null; then
    grep 'beside the current one' "$tmp/bench.out"
    fail "the baseline store comparison skipped, but git has $baseline"
fi
tail -n 3 "$tmp/bench.out"
