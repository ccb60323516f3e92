#!/bin/sh
# A short libFuzzer run of tests/fuzz/fuzz-store.c: random write, zero,
# trim, read, extents and out-of-range requests on two stores and
# copy-on-write clones of them (chains too) sharing a memory cap, with
# snapshots, rollbacks, folds, and volatile devices' flushes, FUA and
# power cuts, every result checked against flat reference buffers,
# under ASan and UBSan.
# FUZZ_SMOKE_SECONDS (default 30) sets the run time; `make fuzz` runs it
# for longer.  A crash leaves its input in build/fuzz/ for
# `build/fuzz/fuzz-store FILE` to replay.
. "$(dirname "$0")/lib.sh"

command -v clang >/dev/null || fail "clang is not installed (needed for libFuzzer)"
secs=${FUZZ_SMOKE_SECONDS:-30}

make -s -C "$top" build/fuzz/fuzz-store build/fuzz/seeds/.made \
    >"$tmp/build.out" 2>&1 ||
    { cat "$tmp/build.out"; fail "could not build the fuzz target"; }
fuzzer=$top/build/fuzz/fuzz-store

# Seeds: those reaching the volatile layer (make-seeds.py), and the
# long-run corpus, if `make fuzz` has made one; new inputs go to a
# temporary directory.  Each seed must pass first, on its own.
mkdir "$tmp/corpus"
for f in "$top"/build/fuzz/seeds/vol-*; do
    "$fuzzer" "$f" >"$tmp/seed.out" 2>&1 ||
        { tail -n 20 "$tmp/seed.out"; fail "seed $(basename "$f") fails"; }
done
seeds=$top/build/fuzz/seeds
[ -d "$top/build/fuzz/corpus" ] && seeds="$seeds $top/build/fuzz/corpus"
rc=0
timeout $((secs + 120)) "$fuzzer" -max_total_time="$secs" -timeout=30 \
    -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$top/build/fuzz/" "$tmp/corpus" $seeds \
    >"$tmp/fuzz.out" 2>&1 || rc=$?
if [ $rc -ne 0 ]; then
    tail -n 40 "$tmp/fuzz.out"
    echo "--- summary:"
    grep -E 'check failed|ERROR|SUMMARY|Test unit written' "$tmp/fuzz.out" |
        head -n 10
    fail "the fuzzer found a problem (exit $rc)"
fi
runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$tmp/fuzz.out")
cov=$(grep -Eo 'cov: [0-9]+' "$tmp/fuzz.out" | tail -n 1)
[ -n "$runs" ] && [ "$runs" -gt 1000 ] ||
    { tail -n 20 "$tmp/fuzz.out"; fail "the fuzzer ran only '$runs' inputs"; }
echo "fuzz smoke: $runs inputs in $secs s, $cov, no failure"
