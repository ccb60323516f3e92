#!/bin/sh
# temp-grace=SECONDS: a temporary device whose last connection closed is
# kept that long, then freed unless someone connected meanwhile.
#
# Proves that, with temp-grace=2 dynamic=true:
#  - a client's NAME:temp:size=1M makes a temp device; after it writes
#    and disconnects, a reconnect with the same export name 1 s later
#    finds its data; while that connection stays open past the grace
#    the device stays;
#  - once the last connection closes, the device is listed (device_list
#    on the control socket) for at least 2 s and gone within 2 + 2.5 s
#    (the reaper runs once a second); nbdinfo --list no longer shows it;
#    a reconnect gets a fresh, empty device;
#  - a temp device declared with name=...:temp goes the same way after
#    its first client, and its bare name is then refused;
#  - with temp-grace=0 (the default) a temp device goes at its last
#    close, and a reconnect gets an empty device;
#  - temp-grace=-1, 86401, abc stop nbdkit at start-up with one error
#    line naming temp-grace; 0 and 86400 are accepted.
# Each close is timed just after the moment of a CLOCK_MONOTONIC second
# at which the reaper was last seen to run, so a grace counted in whole
# seconds of the clock (up to 1 s short) is caught.
. "$(dirname "$0")/lib.sh"

command -v nbdinfo >/dev/null || fail "nbdinfo is not installed"
/usr/bin/python3 -c 'import nbd' || fail "python3-libnbd is not installed"

cat >"$tmp/tg.py" <<'EOF'
import json, random, socket, sys, time
import nbd

ctl, sock, mode = sys.argv[1:4]
M = 1 << 20

def call(method, params=None):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(ctl)
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    s.sendall(json.dumps(req).encode() + b"\n")
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    r = json.loads(data)
    assert "result" in r, "%s: %s" % (method, r)
    return r["result"]

def devices():
    return {d["name"]: d for d in call("device_list")}

def connect(export):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h

def pattern(seed, n):
    return random.Random(seed).randbytes(n)

# The phase (fraction of a monotonic second) at which the reaper was
# last seen to run; a close just after that phase is one it would reap
# early if it counted whole seconds of the clock.
tick = [0.8]

def close_timed(h):
    # Close at the phase just after tick; returns a time no later than
    # the server's close.
    p = min(tick[0] + 0.08, 0.95)
    while not p <= time.monotonic() % 1 < p + 0.03:
        time.sleep(0.002)
    t = time.monotonic()
    h.shutdown()
    return t

def wait_gone(name, since, grace):
    # Poll until name is gone; check it lived at least grace seconds
    # after since and went within grace + 2.5 s.
    while name in devices():
        assert time.monotonic() - since < grace + 2.5, \
            "%s still there %.2f s after its last close (temp-grace=%d)" \
            % (name, time.monotonic() - since, grace)
        time.sleep(0.01)
    now = time.monotonic()
    tick[0] = now % 1
    gone = now - since
    assert gone >= grace, "%s freed %.2f s after its last close, before " \
        "temp-grace=%d ran out" % (name, gone, grace)
    print("ok: %s freed %.2f s after its last close" % (name, gone))

def check_empty(h, what):
    assert h.pread(M, 0) == bytes(M), what + ": not empty"

if mode == "grace":
    G = 2
    # A first device, to see when the reaper runs.
    h = connect("probe:temp:size=1M")
    h.pwrite(pattern(0, 4096), 0)
    t = close_timed(h)
    del h
    wait_gone("probe", t, G)

    export = "t1:temp:size=1M"
    h = connect(export)
    d = devices()["t1"]
    assert d["temp"] is True and d["size"] == M and d["connections"] == 1, d
    h.pwrite(pattern(1, 4096), 0)
    h.pwrite(pattern(2, 8192), 512 << 10)
    t0 = close_timed(h)
    del h

    # Within the grace: the data is there.
    time.sleep(max(0, t0 + 1.0 - time.monotonic()))
    assert "t1" in devices(), "t1 freed 1 s after its close (temp-grace=2)"
    h = connect(export)
    assert h.pread(4096, 0) == pattern(1, 4096), "t1: data lost"
    assert h.pread(8192, 512 << 10) == pattern(2, 8192), "t1: data lost"
    print("ok: reconnect within the grace finds the data")
    # Open past the first close's grace: kept.
    time.sleep(max(0, t0 + G + 1.5 - time.monotonic()))
    d = devices().get("t1")
    assert d is not None and d["connections"] == 1, \
        "t1 freed while a connection is open: %s" % d
    t1 = close_timed(h)
    del h
    wait_gone("t1", t1, G)

    # A reconnect now makes a new, empty device.
    h = connect(export)
    check_empty(h, "t1 after the grace")
    d = devices()["t1"]
    assert d["data"] == 0 and d["stats"]["bytes_written"] == 0, d
    print("ok: a reconnect after the grace gets a fresh device")
    t2 = close_timed(h)
    del h
    wait_gone("t1", t2, G)

    # A declared temp device: freed after the grace of its first client.
    assert devices()["decl"]["temp"] is True
    h = connect("decl")
    h.pwrite(pattern(3, 4096), 0)
    t3 = close_timed(h)
    del h
    wait_gone("decl", t3, G)
    try:
        connect("decl")
    except nbd.Error:
        print("ok: decl's bare name is refused once it is freed")
    else:
        raise AssertionError("decl: a bare name connected after it was freed")

elif mode == "zero":
    export = "z1:temp:size=1M"
    h = connect(export)
    h.pwrite(pattern(4, 4096), 0)
    assert devices()["z1"]["temp"] is True
    h.shutdown()
    del h
    end = time.monotonic() + 1
    while "z1" in devices():
        assert time.monotonic() < end, "z1 kept after its close (temp-grace=0)"
        time.sleep(0.02)
    h = connect(export)
    check_empty(h, "z1 after its close")
    h.shutdown()
    print("ok: temp-grace=0 frees at the last close")
else:
    raise SystemExit("bad mode " + mode)
EOF

# --- temp-grace=2. ----------------------------------------------------------
start_server grace control="$tmp/g.ctl" temp-grace=2 dynamic=true \
    name=disk0:size=1M name=decl:temp:size=1M
[ -S "$tmp/g.ctl" ] || fail "no control socket"
/usr/bin/python3 "$tmp/tg.py" "$tmp/g.ctl" "$sock" grace ||
    { cat "$log"; fail "temp-grace=2"; }
nbdinfo --list --json "nbd+unix:///?socket=$sock" >"$tmp/list.json" ||
    fail "nbdinfo --list"
/usr/bin/python3 -c '
import json, sys
names = [e["export-name"] for e in json.load(open(sys.argv[1]))["exports"]]
assert names == ["disk0"], names' "$tmp/list.json" ||
    { cat "$tmp/list.json"; fail "nbdinfo --list shows freed temp devices"; }
kill -0 "$server_pid" || fail "the server died"
stop_server

# --- temp-grace=0, the default. ---------------------------------------------
start_server zero control="$tmp/z.ctl" dynamic=true name=disk0:size=1M
/usr/bin/python3 "$tmp/tg.py" "$tmp/z.ctl" "$sock" zero ||
    { cat "$log"; fail "temp-grace=0"; }
stop_server

# --- Bad values stop nbdkit at start-up with one line. ----------------------
run_nbdkit() {
    rc=0
    rm -f "$tmp/run.sock"
    timeout -k 5 30 nbdkit -U "$tmp/run.sock" "$MEMBLOCK_SO" "$@" \
        --run true >"$tmp/out" 2>&1 || rc=$?
}
for v in -1 86401 abc; do
    run_nbdkit temp-grace=$v
    [ $rc -ne 0 ] || fail "temp-grace=$v: accepted"
    [ $rc -lt 124 ] || { cat "$tmp/out"; fail "temp-grace=$v: hung or crashed (exit $rc)"; }
    [ "$(wc -l <"$tmp/out")" -eq 1 ] ||
        { cat "$tmp/out"; fail "temp-grace=$v: not exactly one line of output"; }
    expect_grep '^nbdkit: .*error: .*temp-grace' "$tmp/out"
done
for v in 0 86400; do
    run_nbdkit temp-grace=$v
    [ $rc -eq 0 ] || { cat "$tmp/out"; fail "temp-grace=$v: refused (exit $rc)"; }
done
echo "temp-grace: ok"
