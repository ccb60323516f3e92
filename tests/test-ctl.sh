#!/bin/sh
# memblock-ctl, the client of the control socket.
#
# Part 1, against a fake JSON-RPC server (python3, below) that answers
# each method with canned results and records every request it gets:
#  1. each command sends exactly the request it should: method, params,
#     and their JSON types (numbers vs strings, booleans), paths made
#     absolute; "jsonrpc": "2.0" and an integer id;
#  2. list prints a table with the names and human sizes (8.0G, 512M);
#     --json prints exactly the server's result, before or after the
#     command;
#  3. save follows its job through job_list until it is done (~1 s),
#     prints it, and draws a progress bar on a tty; a failed job exits
#     1 with its error; --no-wait and wait JOB;
#  4. a refusal exits 1 with "memblock-ctl: MESSAGE (EEXIST)" on
#     stderr; usage errors exit 2; MEMBLOCK_CONTROL works and -s wins
#     over it; a missing or refusing socket fails with a message naming
#     its path; a server that closes or stalls is reported.
# Part 2, against the real server (nbdkit memblock control=PATH):
#  create, list, snapshot, rollback, delete, save to a file.
. "$(dirname "$0")/lib.sh"

ctl_bin=$top/scripts/memblock-ctl
[ -x "$ctl_bin" ] || fail "$ctl_bin is not executable"
unset MEMBLOCK_CONTROL

# run STATUS ARGS...: run memblock-ctl, stdout to $out, stderr to $err;
# it must exit with STATUS.
out=$tmp/out err=$tmp/err
run() {
    want=$1; shift
    set +e
    "$ctl_bin" "$@" >"$out" 2>"$err"
    got=$?
    set -e
    if [ "$got" != "$want" ]; then
        echo "--- stdout:"; cat "$out"; echo "--- stderr:"; cat "$err"
        fail "memblock-ctl $*: exit $got, expected $want"
    fi
}

# ---------------------------------------------------------------------
# The fake server.
cat >"$tmp/fake.py" <<'EOF'
import json, os, socket, socketserver, sys, threading, time

path, log, canned = sys.argv[1], sys.argv[2], sys.argv[3]
G, M = 1 << 30, 1 << 20

def device(name, size=16 * M, readonly=False, temp=False, source=None,
           snapshot_of=None, compress="none", data=0, allocated=0, conn=0):
    return {"name": name, "size": size, "readonly": readonly, "temp": temp,
            "source": source, "snapshot_of": snapshot_of,
            "compress": compress, "allocated": allocated, "data": data,
            "connections": conn,
            "stats": {"reads": 10, "writes": 5, "zeroes": 0, "trims": 1,
                      "flushes": 2, "bytes_read": 40960,
                      "bytes_written": 20480}}

DEVICES = [
    device("disk0", 8 * G, data=1288490189, allocated=1288490189, conn=1),
    device("disk0@clean", 8 * G, readonly=True, snapshot_of="disk0",
           data=1181116006, allocated=1181116006),
    device("golden", 2 * G, readonly=True, data=700 * M, allocated=700 * M),
    device("scratch", 512 * M, temp=True, source="golden", compress="zstd",
           data=100 * M, allocated=30 * M, conn=2),
]
with open(canned, "w") as f:
    json.dump(DEVICES, f)

def size_of(v):
    if isinstance(v, int):
        return v
    units = {"K": 1 << 10, "M": M, "G": G, "T": 1 << 40}
    return int(v[:-1]) * units[v[-1]]

class Refuse(Exception):
    def __init__(self, errno, message, code=-32000):
        self.errno, self.message, self.code = errno, message, code

jobs, jobs_lock, next_job = {}, threading.Lock(), [7]
TOTAL = 8 * M

def job_view(j):
    t = time.monotonic() - j["start"]
    v = {k: j[k] for k in ("id", "kind", "device", "path")}
    v["total_bytes"] = TOTAL
    if j["fails"]:
        v["state"] = "failed" if t >= 0.5 else "running"
        v["done_bytes"] = min(TOTAL, int(TOTAL * t))
        if t >= 0.5:
            v["error"] = "writing %s.tmp: No space left on device" % j["path"]
    else:
        v["state"] = "done" if t >= 1.0 else "running"
        v["done_bytes"] = min(TOTAL, int(TOTAL * t))
    return v

def handle(method, p):
    if method == "device_list":
        return DEVICES
    if method == "device_create":
        if p["name"] == "dup":
            raise Refuse("EEXIST", "device 'dup': a device of that name exists")
        return device(p["name"], size_of(p.get("size", 16 * M)),
                      readonly=p.get("readonly", False),
                      temp=p.get("temp", False), source=p.get("from"),
                      compress=p.get("compress", "none"))
    if method == "device_delete":
        if p["name"] == "busy":
            raise Refuse("EBUSY", "device 'busy': 1 connection is open on it")
        return True
    if method == "snapshot":
        if "devices" in p:
            return [device(n, 8 * G, readonly=True, snapshot_of=d)
                    for d, n in p["devices"].items()]
        if p["device"] == "nosuch":
            raise Refuse("ENOENT", "device 'nosuch': no such device")
        return device(p["name"], 8 * G, readonly=True,
                      snapshot_of=p["device"])
    if method == "rollback":
        return device(p["device"], 8 * G)
    if method == "save":
        if p["device"] == "nosuch":
            raise Refuse("ENOENT", "device 'nosuch': no such device")
        with jobs_lock:
            jid = next_job[0]
            next_job[0] += 1
            jobs[jid] = {"id": jid, "kind": "save", "device": p["device"],
                         "path": p.get("path", "/var/lib/memblock/%s.raw"
                                       % p["device"]),
                         "start": time.monotonic(),
                         "fails": p["device"] == "full"}
        return {"job": jid}
    if method == "job_list":
        with jobs_lock:
            return [job_view(j) for j in jobs.values()]
    if method == "job_wait":
        with jobs_lock:
            j = jobs.get(p["job"])
        if j is None:
            raise Refuse("ENOENT", "job %s: no such job" % p["job"])
        while job_view(j)["state"] == "running":
            time.sleep(0.05)
        return job_view(j)
    if method == "slow":
        time.sleep(3)
        return True
    raise Refuse(None, "Method not found", -32601)

conns = [0]

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        with jobs_lock:
            conns[0] += 1
            conn = conns[0]
        for line in self.rfile:
            with open(log, "ab") as f:
                f.write(b"%d\t" % conn + line)
            try:
                req = json.loads(line)
            except ValueError:
                self.send({"jsonrpc": "2.0", "id": None, "error":
                           {"code": -32700, "message": "Parse error"}})
                continue
            if req.get("method") == "close_me":
                return
            if req.get("method") == "garbage":
                self.wfile.write(b"this is not json\n")
                continue
            try:
                reply = {"result": handle(req["method"],
                                          req.get("params", {}))}
            except Refuse as e:
                error = {"code": e.code, "message": e.message}
                if e.errno:
                    error["data"] = {"errno": e.errno}
                reply = {"error": error}
            reply.update(jsonrpc="2.0", id=req["id"])
            self.send(reply)

    def send(self, obj):
        self.wfile.write(json.dumps(obj).encode() + b"\n")

class Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

srv = Server(path, Handler)
srv.serve_forever()
EOF

# check_requests FILE: the requests in $log must be those in FILE, one
# JSON object {"method":..., "params":...} a line; a line "..." matches
# any further requests of the method of the line before it.  Types
# count: 1 is not true, "4096" is not 4096.  The fake server logs each
# request after its connection's number and a tab; ids must not repeat
# on a connection.
cat >"$tmp/check.py" <<'EOF'
import json, sys
def canon(v):
    return json.dumps(v, sort_keys=True)
lines = [l.split(b"\t", 1) for l in open(sys.argv[1], "rb") if l.strip()]
got = [json.loads(l[1]) for l in lines]
want = [l.strip() for l in open(sys.argv[2]) if l.strip()]
ids = set()
for (conn, _), r in zip(lines, got):
    assert r.get("jsonrpc") == "2.0", "no jsonrpc 2.0 in %r" % r
    assert type(r.get("id")) is int, "id is not an integer in %r" % r
    assert (conn, r["id"]) not in ids, "id %d used twice" % r["id"]
    ids.add((conn, r["id"]))
    assert set(r) <= {"jsonrpc", "id", "method", "params"}, r
i = 0
for k, w in enumerate(want):
    if w == "...":
        method = json.loads(want[k - 1])["method"]
        while i < len(got) and got[i]["method"] == method:
            i += 1
        continue
    w = json.loads(w)
    assert i < len(got), "missing request %s" % canon(w)
    g = {"method": got[i]["method"], "params": got[i].get("params")}
    assert canon(g) == canon(w), "sent %s, expected %s" % (canon(g), canon(w))
    i += 1
assert i == len(got), "unexpected requests: %s" % [canon(r) for r in got[i:]]
EOF

log_file=$tmp/requests.log
fsock=$tmp/ctl.sock
python3 "$tmp/fake.py" "$fsock" "$log_file" "$tmp/canned.json" \
    >"$tmp/fake.log" 2>&1 &
_pids="$_pids $!"
i=0
while [ ! -S "$fsock" ]; do
    [ $i -lt 100 ] || { cat "$tmp/fake.log"; fail "the fake server did not start"; }
    sleep 0.1; i=$((i + 1))
done

# expect_requests: the requests since the last call must be those on
# stdin (see check.py); the log is emptied for the next command.
expect_requests() {
    cat >"$tmp/want"
    python3 "$tmp/check.py" "$log_file" "$tmp/want" >"$tmp/check.out" 2>&1 || {
        cat "$tmp/check.out"; fail "requests differ (last command: $*)"; }
    : >"$log_file"
}
: >"$log_file"

# ---------------------------------------------------------------------
# Usage, version, help.
run 0 --version
expect_grep '^memblock-ctl [0-9]' "$out"
run 0 --help
for c in list create delete snapshot rollback save jobs wait call; do
    expect_grep "$c" "$out"
done
for c in list create delete snapshot rollback save jobs wait call; do
    run 0 "$c" --help
    expect_grep "usage: memblock-ctl $c" "$out"
done
run 2
run 2 frobnicate
run 2 list                                   # no socket anywhere
expect_grep 'MEMBLOCK_CONTROL' "$err"
MEMBLOCK_CONTROL= run 2 list
expect_grep 'MEMBLOCK_CONTROL' "$err"
run 2 -s "$fsock" create                     # no NAME
run 2 -s "$fsock" create x size              # not KEY=VALUE
run 2 -s "$fsock" create x colour=red        # unknown key
expect_grep "unknown key 'colour'" "$err"
run 2 -s "$fsock" create x readonly=maybe    # not a boolean
expect_grep 'readonly=maybe' "$err"
run 2 -s "$fsock" create x size=1G size=2G   # twice
run 2 -s "$fsock" create size=4G             # NAME first
run 2 -s "$fsock" delete
run 2 -s "$fsock" delete a b
run 2 -s "$fsock" snapshot disk0             # no name
run 2 -s "$fsock" snapshot disk0=a disk0=b   # a device twice
run 2 -s "$fsock" snapshot a b c
run 2 -s "$fsock" snapshot =x
run 2 -s "$fsock" rollback disk0
run 2 -s "$fsock" save
run 2 -s "$fsock" save disk0 a.raw b.raw
run 2 -s "$fsock" save disk0 overwrite=perhaps
run 2 -s "$fsock" wait
run 2 -s "$fsock" wait seven
run 2 -s "$fsock" call
run 2 -s "$fsock" call device_list '{not json'
run 2 -s "$fsock" --timeout 0 list
expect_requests "usage errors" </dev/null    # none reached the server

# ---------------------------------------------------------------------
# list: table and --json.
run 0 -s "$fsock" list
expect_requests list <<'EOF'
{"method": "device_list", "params": {}}
EOF
expect_grep '^NAME +SIZE +RO +TEMP +SOURCE +SNAPSHOT-OF +COMPRESS +DATA +MEMORY +CONN$' "$out"
expect_grep '^disk0 +8\.0G +no +no +- +- +none +1\.2G +1\.2G +1$' "$out"
expect_grep '^disk0@clean +8\.0G +yes +no +- +disk0 +none +1\.1G +1\.1G +0$' "$out"
expect_grep '^golden +2\.0G +yes +no +- +- +none +700M +700M +0$' "$out"
expect_grep '^scratch +512M +no +yes +golden +- +zstd +100M +30M +2$' "$out"
[ "$(wc -l <"$out")" -eq 5 ] || { cat "$out"; fail "list: 5 lines expected"; }

same_json() {   # same_json FILE1 FILE2: the same JSON value
    python3 -c 'import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
sys.exit(0 if a == b and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) else 1)' "$1" "$2" ||
        { cat "$1"; fail "$1 is not the JSON in $2"; }
}
run 0 -s "$fsock" list --json
same_json "$out" "$tmp/canned.json"
[ ! -s "$err" ] || { cat "$err"; fail "list --json wrote to stderr"; }
run 0 --json -s "$fsock" list
same_json "$out" "$tmp/canned.json"
run 0 list -s "$fsock" --json
same_json "$out" "$tmp/canned.json"
expect_requests "list --json" <<'EOF'
{"method": "device_list", "params": {}}
{"method": "device_list", "params": {}}
{"method": "device_list", "params": {}}
EOF

# The environment variable, and -s over it.
MEMBLOCK_CONTROL=$fsock run 0 list
expect_grep '^scratch ' "$out"
MEMBLOCK_CONTROL=$tmp/nothing.sock run 0 -s "$fsock" list
expect_grep '^scratch ' "$out"
expect_requests "MEMBLOCK_CONTROL" <<'EOF'
{"method": "device_list", "params": {}}
{"method": "device_list", "params": {}}
EOF
export MEMBLOCK_CONTROL="$fsock"

# ---------------------------------------------------------------------
# create: sizes as numbers or strings, booleans, paths made absolute.
mkdir "$tmp/images"
(cd "$tmp" && "$ctl_bin" create golden2 file=images/d13.raw readonly=true) \
    >"$out" 2>"$err" || { cat "$err"; fail "create golden2"; }
expect_grep '^golden2 +16M +yes +no ' "$out"
run 0 create s1 size=4G
expect_grep '^s1 +4\.0G +no ' "$out"
run 0 create s2 size=1048576 temp=yes compress=zstd
expect_grep '^s2 +1\.0M +no +yes +- +- +zstd ' "$out"
run 0 create s3 from=golden readonly=0 temp=FALSE compress=none
run 0 create s4 readonly=no temp=1 size=512M
expect_requests create <<EOF
{"method": "device_create", "params": {"name": "golden2", "file": "$tmp/images/d13.raw", "readonly": true}}
{"method": "device_create", "params": {"name": "s1", "size": "4G"}}
{"method": "device_create", "params": {"name": "s2", "size": 1048576, "temp": true, "compress": "zstd"}}
{"method": "device_create", "params": {"name": "s3", "from": "golden", "readonly": false, "temp": false, "compress": "none"}}
{"method": "device_create", "params": {"name": "s4", "readonly": false, "temp": true, "size": "512M"}}
EOF
run 0 create s5 size=8G --json
python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
assert d["name"] == "s5" and d["size"] == 8 << 30 and d["readonly"] is False, d' "$out" ||
    fail "create --json"
expect_requests "create --json" <<'EOF'
{"method": "device_create", "params": {"name": "s5", "size": "8G"}}
EOF

# A refusal: exit 1, the server's message and errno on stderr.
run 1 create dup size=1G
[ "$(cat "$err")" = "memblock-ctl: device 'dup': a device of that name exists (EEXIST)" ] ||
    { cat "$err"; fail "create dup: wrong message"; }
[ ! -s "$out" ] || { cat "$out"; fail "create dup: output on stdout"; }
run 1 --json create dup
expect_grep '\(EEXIST\)$' "$err"
[ ! -s "$out" ] || { cat "$out"; fail "create dup --json: output on stdout"; }
expect_requests "create dup" <<'EOF'
{"method": "device_create", "params": {"name": "dup", "size": "1G"}}
{"method": "device_create", "params": {"name": "dup"}}
EOF

# ---------------------------------------------------------------------
# delete.
run 0 delete s1
[ ! -s "$out" ] || { cat "$out"; fail "delete printed something"; }
run 0 delete s2 --json
[ "$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])))' "$out")" = True ] ||
    { cat "$out"; fail "delete --json: not true"; }
run 1 delete busy
expect_grep "^memblock-ctl: device 'busy': 1 connection is open on it \(EBUSY\)$" "$err"
expect_requests delete <<'EOF'
{"method": "device_delete", "params": {"name": "s1"}}
{"method": "device_delete", "params": {"name": "s2"}}
{"method": "device_delete", "params": {"name": "busy"}}
EOF

# ---------------------------------------------------------------------
# snapshot, both forms; rollback.
run 0 snapshot disk0=disk0@clean disk1=disk1@clean
expect_grep '^disk0@clean +8\.0G +yes +no +- +disk0 ' "$out"
expect_grep '^disk1@clean +8\.0G +yes +no +- +disk1 ' "$out"
run 0 snapshot disk0 disk0@t1
expect_grep '^disk0@t1 +8\.0G +yes +no +- +disk0 ' "$out"
run 0 snapshot disk0=a=b --json
python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
assert isinstance(d, list) and d[0]["name"] == "a=b" and d[0]["snapshot_of"] == "disk0", d' "$out" ||
    fail "snapshot --json"
run 1 snapshot nosuch s
expect_grep "^memblock-ctl: device 'nosuch': no such device \(ENOENT\)$" "$err"
run 0 rollback disk0 disk0@clean
expect_grep '^disk0 +8\.0G +no ' "$out"
expect_requests "snapshot, rollback" <<'EOF'
{"method": "snapshot", "params": {"devices": {"disk0": "disk0@clean", "disk1": "disk1@clean"}}}
{"method": "snapshot", "params": {"device": "disk0", "name": "disk0@t1"}}
{"method": "snapshot", "params": {"devices": {"disk0": "a=b"}}}
{"method": "snapshot", "params": {"device": "nosuch", "name": "s"}}
{"method": "rollback", "params": {"device": "disk0", "snapshot": "disk0@clean"}}
EOF

# ---------------------------------------------------------------------
# save: the job followed to its end through job_list.
start=$(date +%s%N)
(cd "$tmp" && "$ctl_bin" save disk0@clean out.raw overwrite=true) \
    >"$out" 2>"$err" || { cat "$err"; fail "save"; }
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$ms" -ge 900 ] || fail "save returned after $ms ms, before its job ended"
expect_grep "^ *[0-9]+ +save +disk0@clean +done +100% 8\.0M/8\.0M +$tmp/out\.raw" "$out"
expect_grep "^memblock-ctl: saved disk0@clean to $tmp/out\.raw: 8\.0M in " "$err"
[ "$(wc -l <"$err")" -eq 1 ] || { cat "$err"; fail "save: more than one line on stderr off a tty"; }
expect_requests save <<EOF
{"method": "save", "params": {"device": "disk0@clean", "path": "$tmp/out.raw", "overwrite": true}}
{"method": "job_list", "params": {}}
{"method": "job_list", "params": {}}
{"method": "job_list", "params": {}}
...
EOF

run 0 save disk0 --json
python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
assert j["state"] == "done" and j["done_bytes"] == j["total_bytes"] == 8 << 20, j
assert j["path"] == "/var/lib/memblock/disk0.raw" and j["device"] == "disk0", j' "$out" ||
    { cat "$out"; fail "save --json"; }
expect_requests "save without a path" <<'EOF'
{"method": "save", "params": {"device": "disk0"}}
{"method": "job_list", "params": {}}
...
EOF

run 0 save disk1 /abs/d1.raw overwrite=no --no-wait --json
job=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["job"])' "$out")
run 0 wait "$job"
expect_grep "^ *$job +save +disk1 +done " "$out"
run 0 wait "$job" --json
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["state"] == "done"' "$out" ||
    fail "wait --json"
run 0 save disk1 /abs/d2.raw --no-wait
expect_grep "^job [0-9]+ started" "$out"
run 1 wait 999
expect_grep '^memblock-ctl: job 999: no such job \(ENOENT\)$' "$err"
expect_requests "save --no-wait, wait" <<EOF
{"method": "save", "params": {"device": "disk1", "path": "/abs/d1.raw", "overwrite": false}}
{"method": "job_wait", "params": {"job": $job}}
{"method": "job_wait", "params": {"job": $job}}
{"method": "save", "params": {"device": "disk1", "path": "/abs/d2.raw"}}
{"method": "job_wait", "params": {"job": 999}}
EOF

# A job that fails: exit 1 with its error.
run 1 save full /abs/full.raw
expect_grep '^memblock-ctl: job [0-9]+ \(save full to /abs/full\.raw\) failed: writing /abs/full\.raw\.tmp: No space left on device$' "$err"
run 1 save full /abs/full.raw --json
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["state"] == "failed"' "$out" ||
    fail "failed save --json"
run 1 save nosuch /abs/x.raw
expect_grep "^memblock-ctl: device 'nosuch': no such device \(ENOENT\)$" "$err"
: >"$log_file"

# On a terminal: a progress bar.
if command -v script >/dev/null 2>&1; then
    script -qec "'$ctl_bin' save disk0 /abs/tty.raw" /dev/null \
        >"$tmp/tty.out" 2>&1 || { cat "$tmp/tty.out"; fail "save on a tty"; }
    expect_grep 'save disk0 \[#+-+\] +[0-9]+%  [0-9.]+[KM]?/8\.0M  ([0-9.]+[KMG]?/s|-)' "$tmp/tty.out"
    expect_grep '\[#{10,}\] 100%  8\.0M/8\.0M' "$tmp/tty.out"
    expect_grep 'done +100% 8\.0M/8\.0M +/abs/tty\.raw' "$tmp/tty.out"
    : >"$log_file"
else
    echo "no script(1): the progress bar on a tty is not checked"
fi

# jobs.
run 0 jobs
expect_grep '^ *ID +KIND +DEVICE +STATE +PROGRESS +PATH +ERROR$' "$out"
expect_grep "^ *$job +save +disk1 +done +100% 8\.0M/8\.0M +/abs/d1\.raw +-$" "$out"
expect_grep 'failed .*No space left on device$' "$out"
run 0 jobs --json
python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
assert isinstance(j, list) and len(j) >= 6 and all("state" in x for x in j), j' "$out" ||
    fail "jobs --json"
expect_requests jobs <<'EOF'
{"method": "job_list", "params": {}}
{"method": "job_list", "params": {}}
EOF

# ---------------------------------------------------------------------
# call.
run 0 call device_list
same_json "$out" "$tmp/canned.json"
run 0 call snapshot '{"device": "disk0", "name": "s9"}'
echo '{"name": "s10", "size": 4096}' | "$ctl_bin" call device_create - >"$out" ||
    fail "call with params from stdin"
run 1 call no_such_method
expect_grep '^memblock-ctl: Method not found \(error -32601\)$' "$err"
expect_requests call <<'EOF'
{"method": "device_list", "params": {}}
{"method": "snapshot", "params": {"device": "disk0", "name": "s9"}}
{"method": "device_create", "params": {"name": "s10", "size": 4096}}
{"method": "no_such_method", "params": {}}
EOF

# A server that closes, says nonsense, or takes too long.
run 1 call close_me
expect_grep "^memblock-ctl: $fsock: the server closed the connection" "$err"
run 1 call garbage
expect_grep "^memblock-ctl: $fsock: the server sent a line that is not JSON" "$err"
run 1 --timeout 0.5 call slow
expect_grep "^memblock-ctl: $fsock: no reply to slow within 0\.5 s$" "$err"

# No socket there, or nobody listening on it: exit 1 naming the path.
run 1 -s "$tmp/nothing.sock" list
expect_grep "^memblock-ctl: cannot connect to the control socket $tmp/nothing\.sock: no such file" "$err"
python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()' "$tmp/stale.sock"
run 1 -s "$tmp/stale.sock" list
expect_grep "^memblock-ctl: cannot connect to the control socket $tmp/stale\.sock: connection refused" "$err"
: >"$tmp/plain-file"
run 1 -s "$tmp/plain-file" delete x
expect_grep "^memblock-ctl: cannot connect to the control socket $tmp/plain-file" "$err"
unset MEMBLOCK_CONTROL

echo "part 1 (fake server): ok"

# ---------------------------------------------------------------------
# Part 2: the real server.
csock=$tmp/real.ctl
start_server real control="$csock" name=disk0:size=64M name=disk1:size=32M
i=0
while [ ! -S "$csock" ]; do
    [ $i -lt 100 ] || { cat "$log"; fail "no control socket at $csock"; }
    sleep 0.1; i=$((i + 1))
done
export MEMBLOCK_CONTROL="$csock"

run 0 list
expect_grep '^disk0 +64M +no +no +- +- ' "$out"
expect_grep '^disk1 +32M +no +no ' "$out"
nbdsh -u "$(uri disk0)" -c 'h.pwrite(b"A" * 1048576, 0)' || fail "write A"
run 0 snapshot disk0=disk0@clean disk1=disk1@clean
expect_grep '^disk0@clean +64M +yes +no +- +disk0 ' "$out"
expect_grep '^disk1@clean +32M +yes ' "$out"
nbdsh -u "$(uri disk0)" -c 'h.pwrite(b"B" * 1048576, 0)' || fail "write B"
run 0 rollback disk0 disk0@clean
expect_grep '^disk0 +64M +no ' "$out"
nbdsh -u "$(uri disk0)" -c 'assert h.pread(1048576, 0) == b"A" * 1048576' ||
    fail "disk0 is not as at the snapshot after rollback"

run 0 create golden size=1M readonly=true
expect_grep '^golden +1\.0M +yes +no ' "$out"
run 1 create golden
expect_grep '\(EEXIST\)$' "$err"
run 0 create vm1 from=golden temp=false
expect_grep '^vm1 +1\.0M +no +no +golden ' "$out"
run 0 list --json
python3 -c 'import json, sys
d = {x["name"]: x for x in json.load(open(sys.argv[1]))}
assert set(d) >= {"disk0", "disk1", "disk0@clean", "disk1@clean", "golden", "vm1"}, d
assert d["disk0"]["size"] == 64 << 20 and d["disk0@clean"]["readonly"] is True, d
assert d["disk0@clean"]["snapshot_of"] == "disk0" and d["vm1"]["source"] == "golden", d' "$out" ||
    { cat "$out"; fail "real list --json"; }

run 0 save disk0@clean "$tmp/clean.raw"
expect_grep ' done ' "$out"
python3 -c 'import sys
with open(sys.argv[1], "rb") as f:
    assert f.read(1 << 20) == b"A" * (1 << 20) and f.read(1 << 20) == bytes(1 << 20)' \
    "$tmp/clean.raw" || fail "saved image: wrong data"
[ "$(stat -c %s "$tmp/clean.raw")" -eq $((64 << 20)) ] || fail "saved image: wrong size"
run 1 save disk0@clean "$tmp/clean.raw"
expect_grep '\(EEXIST\)$' "$err"
run 0 save disk0@clean "$tmp/clean.raw" overwrite=true --json
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["state"] == "done"' "$out" ||
    fail "real save overwrite --json"

run 0 delete vm1
run 1 delete vm1
expect_grep '\(ENOENT\)$' "$err"
run 0 delete disk1@clean
run 0 list
if grep -Eq '^(vm1|disk1@clean) ' "$out"; then cat "$out"; fail "deleted devices listed"; fi
echo "part 2 (real server): ok"
