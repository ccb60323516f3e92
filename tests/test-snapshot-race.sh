#!/bin/sh
# Snapshots and rollbacks raced by writes from two NBD connections
# (tests/snaprace.py does the work; see there for the rules checked).
#
# Proves, on a 64 MiB device (nbdkit memblock control=PATH):
#  1. phase A: two connections write continuously (4 KiB to 1 MiB at
#     random offsets, each request filling its range with its own tag)
#     while snapshots are taken through the control socket a few ms
#     apart, raw JSON-RPC, most deleted as they go so that layers fold
#     while the writes go on; at least 100 are kept and each is read
#     over NBD: it is a cut of the writes, with no request torn (each is
#     in whole or not at all), every write that completed before the
#     snapshot was asked for in it, none that started after its reply,
#     nothing lost or older resurfacing; the device, once the writers
#     stop, reads as the writes determine;
#  2. phase B, 3 rounds: a snapshot, then a rollback to it while both
#     writers have requests in flight; afterwards the device holds the
#     snapshot's data except where writes after the rollback landed,
#     each of which is whole, and no write from before the rollback
#     survives it (unless the snapshot holds it);
#  3. the server survives; once every snapshot is deleted the device is
#     one layer again: only disk0 is listed and it holds at most its
#     size in memory (the folds gave back the pages both layers held).
# SNAPRACE_SECONDS (default 6) bounds phase A, SNAPRACE_SEED replays a
# run.
. "$(dirname "$0")/lib.sh"

csock=$tmp/sr.ctl
# Snapshots are devices: kept ones plus one pending count against
# max-devices (default 64).
start_server sr control="$csock" max-devices=200 name=disk0:size=64M
i=0
while [ ! -S "$csock" ]; do
    [ $i -lt 100 ] || { cat "$log"; fail "no control socket at $csock"; }
    sleep 0.1; i=$((i + 1))
done

/usr/bin/python3 "$top/tests/snaprace.py" "$sock" "$csock" disk0 \
    --seconds "${SNAPRACE_SECONDS:-6}" --keep 100 --rounds 3 \
    ${SNAPRACE_SEED:+--seed "$SNAPRACE_SEED"} ||
    fail "snaprace failed (above)"
kill -0 "$server_pid" || { cat "$log"; fail "nbdkit died"; }

"$top/scripts/memblock-ctl" -s "$csock" --json list >"$tmp/list" ||
    fail "memblock-ctl list failed"
python3 - "$tmp/list" <<'PY' || fail "device list after the race (above)"
import json, sys
devs = json.load(open(sys.argv[1]))
names = [d["name"] for d in devs]
print("devices after the race:", names)
assert names == ["disk0"], "snapshots left behind: %s" % names
d = devs[0]
print("disk0: data %d, allocated %d bytes" % (d["data"], d["allocated"]))
assert d["data"] <= 64 << 20, d
assert d["allocated"] <= (64 << 20) + (1 << 20), \
    "disk0 holds %d bytes for a 64 MiB device: layers not folded" % d["allocated"]
PY
echo "snapshot race: all checks passed"
