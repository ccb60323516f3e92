#!/bin/sh
# `make bench` keeps working: a 30-second smoke run of every part of the
# benchmark (fio over NBD against memblock, memory, malloc and null; the
# sparse and memory checks; the in-process store bench) must finish and
# print complete tables.  Targets are not judged here: timings in a test
# run mean nothing.
. "$(dirname "$0")/lib.sh"

sh "$top/bench/run.sh" --smoke >"$tmp/bench.out" 2>&1 ||
    { tail -n 40 "$tmp/bench.out"; fail "bench/run.sh --smoke failed"; }
for t in 'Pinned, median' 'RSS amplification' 'Extent precision' \
         'block-status walk' 'In-process store' 'Targets'; do
    grep -q "$t" "$tmp/bench.out" || { cat "$tmp/bench.out"; fail "no '$t' table"; }
done
tail -n 3 "$tmp/bench.out"
