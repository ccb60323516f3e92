#!/bin/sh
# `make bench` keeps working: a one-minute smoke run of every part of
# the benchmark (fio over NBD against memblock, memory, malloc and null;
# the sparse and memory checks; golden images and clones; compression;
# the in-process store bench, compressed too, and the cost of the
# write/trim race fix) must finish and print complete tables (none
# MISSING).  Targets are not judged here: timings in a test
# run mean nothing.
. "$(dirname "$0")/lib.sh"

sh "$top/bench/run.sh" --smoke >"$tmp/bench.out" 2>&1 ||
    { tail -n 40 "$tmp/bench.out"; fail "bench/run.sh --smoke failed"; }
for t in 'Pinned, median' 'RSS amplification' 'Extent precision' \
         'block-status walk' 'In-process store' 'Golden image and writable clones' \
         'Compression' 'In-process store, compressed' \
         'Cost of the write/trim race fix' 'Targets'; do
    grep -q "$t" "$tmp/bench.out" || { cat "$tmp/bench.out"; fail "no '$t' table"; }
done
! grep -q 'MISSING' "$tmp/bench.out" ||
    { cat "$tmp/bench.out"; fail "a table is MISSING"; }
tail -n 3 "$tmp/bench.out"
