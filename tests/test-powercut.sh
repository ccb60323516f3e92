#!/bin/sh
# Power cuts of :volatile devices over NBD (tests/powercut.py does the
# NBD side).
#
# Proves, on a plain, a compressed (:compress=zstd) and a clone
# (:from=golden, golden:ro loaded with data) volatile device alike:
#  1. keep=none: flushed and FUA writes survive, unflushed writes,
#     zeroes and trims are lost; power_cut returns exactly how many
#     writes it lost and the bytes of the cache's pages; keep=all keeps
#     all of them; keep=random (unit 512 and 4096): every unit holds its
#     durable value or what the cache held, some of each, a 512 unit
#     splits pages, and the writes it reports kept, in part and lost are
#     what the device shows; FUA data inside unflushed data survives any
#     cut; power_cut_status counts writes, flushes, unflushed writes and
#     bytes, and cuts;
#  2. after_writes=5 arms a cut (status: armed, writes to go, keep) that
#     happens as the 5th write (flushes do not count) completes: the 6th
#     gets EIO, and the state is durable (keep=none) or everything
#     (keep=all);
#  3. after a cut, a busy and an idle connection opened before it get
#     EIO for every request (read, write, FUA write, zero, trim, flush,
#     block status, cache); a new connection reads the state after the
#     cut, writes, and the device is still volatile;
#  4. memory (plain device): a flush keeps the cache's pages as spares
#     (spare_bytes), a write over them takes no more memory, unused ones
#     stay within the budget (a quarter of the device), a flush past it
#     and a cut let all go, and "allocated" is the data plus the spares;
#  5. keep=random is deterministic: the same workload and seed on a
#     fresh server give byte-identical devices, another seed differs;
#  6. refusals: power_cut of a device that is not volatile (EINVAL), bad
#     keep or unit (-32602), snapshot, rollback and save of a volatile
#     device (EINVAL), and ":volatile:ro" at start-up (nbdkit fails with
#     one line);
#  7. races: two connections with 4 requests each in flight write
#     tagged requests of 4 KiB..1 MiB, with flushes and FUA, while the
#     control socket cuts (keep=random) at a random moment: afterwards
#     every 512-byte sector holds zeroes only if no durable write (FUA,
#     or completed before a flush that succeeded) covers it, or the tag
#     of a write that started, succeeded, covers it and was not
#     overwritten by a durable write issued after it completed; every
#     request issued after the cut returned got EIO; and with an armed
#     cut (after_writes=N, keep=all, writes that do not overlap), at
#     least N and at most N + 7 (the others in flight) writes succeed,
#     every one that succeeded is there whole and every one that failed
#     left nothing.
. "$(dirname "$0")/lib.sh"

py=$top/tests/powercut.py
ctl_bin=$top/scripts/memblock-ctl
seed=${POWERCUT_SEED:-$(od -An -tu4 -N4 /dev/urandom | tr -d ' ')}
echo "seed $seed (POWERCUT_SEED=$seed repeats the choices)"

head -c 2M /dev/urandom >"$tmp/golden.img"
start_server a control="$tmp/a.ctl" name=v:size=2M:volatile \
    name=vz:size=2M:volatile:compress=zstd \
    name=golden:ro:file="$tmp/golden.img" name=vc:from=golden:volatile \
    name=plain:size=1M name=d1:size=2M:volatile name=d2:size=2M:volatile
sock_a=$sock pid_a=$server_pid
ctl() {
    "$ctl_bin" -s "$tmp/a.ctl" "$@"
}

# 1-4 on each kind of device.
status=0
python3 "$py" semantics "$sock_a" "$tmp/a.ctl" v --memory --seed "$seed" ||
    status=1
python3 "$py" semantics "$sock_a" "$tmp/a.ctl" vz --seed "$seed" || status=1
python3 "$py" semantics "$sock_a" "$tmp/a.ctl" vc --no-fill --seed "$seed" ||
    status=1

# 5. The same workload and seed, a fresh server: the same bytes.
python3 "$py" digest "$sock_a" "$tmp/a.ctl" d1 --seed 77 --unit 512 \
    >"$tmp/dig1" || fail "digest on the first server failed"
start_server b control="$tmp/b.ctl" name=d1:size=2M:volatile \
    name=d2:size=2M:volatile
python3 "$py" digest "$sock" "$tmp/b.ctl" d1 --seed 77 --unit 512 \
    >"$tmp/dig2" || fail "digest on the second server failed"
python3 "$py" digest "$sock" "$tmp/b.ctl" d2 --seed 78 --unit 512 \
    >"$tmp/dig3" || fail "digest with another seed failed"
python3 "$py" digest "$sock_a" "$tmp/a.ctl" d2 --seed 77 --unit 4096 \
    >"$tmp/dig4" || fail "digest with unit 4096 failed"
cat "$tmp/dig1" "$tmp/dig2" "$tmp/dig3" "$tmp/dig4"
h1=$(cut -d' ' -f1 "$tmp/dig1"); h2=$(cut -d' ' -f1 "$tmp/dig2")
h3=$(cut -d' ' -f1 "$tmp/dig3"); h4=$(cut -d' ' -f1 "$tmp/dig4")
[ "$h1" = "$h2" ] ||
    fail "keep=random seed=77: a fresh server gave different bytes"
[ "$(cut -d' ' -f3- "$tmp/dig1")" = "$(cut -d' ' -f3- "$tmp/dig2")" ] ||
    fail "keep=random seed=77: a fresh server reported other counts"
[ "$h1" != "$h3" ] || fail "keep=random: seeds 77 and 78 gave the same bytes"
[ "$h1" != "$h4" ] || fail "keep=random: units 512 and 4096 gave the same bytes"
echo "keep=random: same seed, same bytes on a fresh server; other seed or" \
     "unit, other bytes"

# 6. Refusals.
# refused EXPECT ARGS...: memblock-ctl ARGS must exit 1 saying EXPECT.
refused() {
    want=$1; shift
    rc=0
    ctl "$@" >"$tmp/ref.out" 2>&1 || rc=$?
    [ $rc -eq 1 ] || { cat "$tmp/ref.out"; fail "memblock-ctl $*: exit $rc"; }
    expect_grep "$want" "$tmp/ref.out"
}
refused '\(EINVAL\)' power-cut plain
refused 'not volatile' power-cut plain keep=all
refused '\(EINVAL\)' power-status plain
refused '\(error -32602\)' call power_cut '{"device": "v", "keep": "some"}'
refused '\(error -32602\)' call power_cut '{"device": "v", "unit": 1024}'
refused '\(error -32602\)' call power_cut '{"device": "v", "unit": 0}'
refused '\(EINVAL\)' call snapshot '{"device": "v", "name": "v@s"}'
refused 'volatile' call snapshot '{"device": "v", "name": "v@s"}'
ctl call snapshot '{"device": "plain", "name": "plain@s"}' >/dev/null ||
    fail "snapshot of a plain device failed"
refused '\(EINVAL\)' call rollback '{"device": "v", "snapshot": "plain@s"}'
refused '\(EINVAL\)' call save "{\"device\": \"v\", \"path\": \"$tmp/v.img\"}"
[ ! -e "$tmp/v.img" ] || fail "save of a volatile device wrote a file"
ctl --json power-status v >"$tmp/st.json" || fail "power-status v failed"
expect_grep '"cuts": [1-9]' "$tmp/st.json"
ctl --json list >"$tmp/list.json" || fail "list failed"
python3 - "$tmp/list.json" <<'EOF' || fail "device_list: volatile members wrong"
import json, sys
devs = {d["name"]: d for d in json.load(open(sys.argv[1]))}
assert devs["plain"]["volatile"] is None, devs["plain"]
assert devs["golden"]["volatile"] is None, devs["golden"]
for n in ("v", "vz", "vc"):
    assert devs[n]["volatile"]["cuts"] > 0, devs[n]
EOF
# power-cut by memblock-ctl, and an armed one disarmed by a cut now.
ctl power-cut vz after-writes=3 >"$tmp/arm.out" || fail "arming failed"
expect_grep 'armed: after 3 more writes' "$tmp/arm.out"
ctl power-status vz >"$tmp/st.out" || fail "power-status vz failed"
expect_grep '^armed: after 3 more writes \(keep=none\)' "$tmp/st.out"
ctl power-cut vz keep=all >"$tmp/cut.out" || fail "power-cut vz failed"
expect_grep 'power cut: kept 0 writes' "$tmp/cut.out"
ctl power-status vz >"$tmp/st.out" || fail "power-status vz failed"
expect_grep '^armed: no$' "$tmp/st.out"

# :volatile:ro at start-up: nbdkit fails, with one line.
rc=0
${NBDKIT_WRAPPER:-} nbdkit -f -U "$tmp/ro.sock" "$MEMBLOCK_SO" name=bad:size=1M:volatile:ro \
    >"$tmp/ro.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "nbdkit started with name=bad:size=1M:volatile:ro"
[ "$(wc -l <"$tmp/ro.out")" -eq 1 ] ||
    { cat "$tmp/ro.out"; fail ":volatile:ro: expected one line of error"; }
expect_grep "volatile.*ro|ro.*volatile" "$tmp/ro.out"
echo "refusals: $(cat "$tmp/ro.out")"

# 7. Races.
python3 "$py" race "$sock_a" "$tmp/a.ctl" --rounds 6 --seed "$seed" ||
    status=1
python3 "$py" race-armed "$sock_a" "$tmp/a.ctl" --rounds 6 --seed "$seed" ||
    status=1

kill -0 "$pid_a" || fail "the server died"
[ $status -eq 0 ] || fail "powercut.py found problems (above)"
echo "powercut: all checks passed"
