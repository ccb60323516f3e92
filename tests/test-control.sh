#!/bin/sh
# The control socket (control=PATH) as an attack surface, and its life.
#
# Proves that:
#  - the socket is made mode 0600 and removed at SIGTERM (even with a
#    control client connected); a regular file or a directory at PATH
#    stops nbdkit at start-up with one error line naming control= and is
#    left as it was; a stale socket (a process bound it and died, or a
#    server was killed with SIGKILL) is replaced; a second server on the
#    same PATH fails to start and the first goes on serving;
#  - protocol errors get their codes: not JSON -32700 (the connection
#    goes on); a batch, no or wrong jsonrpc, a bad method, id or params
#    -32600; an unknown method -32601; an unknown member, a member of a
#    wrong type or a missing one -32602 with the member named;
#    notifications get no reply (but are run); ids are echoed with their
#    type; replies come in order for pipelined and byte-by-byte input;
#  - a line of exactly 1 MiB is served, one byte more gets -32600 and the
#    connection is closed; a client that leaves mid-line gets nothing; a
#    NUL byte, invalid UTF-8, 10000-deep nesting get errors; a client
#    that sends 2000 requests and goes without reading does no harm;
#  - refusals are -32000 with data.errno and a message naming the cause
#    (EEXIST, ENOENT, EBUSY with an NBD connection open, EROFS, EINVAL,
#    and a device name with '/' or bad UTF-8), and after each one
#    device_list is byte-identical to before;
#  - uid nobody cannot connect through the 0600 mode (EACCES), and with
#    the mode opened to 0666 the server itself refuses it with an EACCES
#    error line and runs none of its requests;
#  - 16 clients are served at once, a 17th gets an EBUSY error line, and
#    new clients are served once others leave;
#  - none of this writes to nbdkit's log, and data written to disk0 at
#    the start reads back at the end.
. "$(dirname "$0")/lib.sh"

command -v setpriv >/dev/null || fail "setpriv (util-linux) is not installed"
command -v nbdsh >/dev/null || fail "nbdsh is not installed"
/usr/bin/python3 -c 'import nbd' || fail "python3-libnbd is not installed"
[ "$(id -u)" -eq 0 ] || fail "this test runs as root (it switches to uid nobody)"
id nobody >/dev/null 2>&1 || fail "no user nobody"
nogroup=$(id -gn nobody)

cat >"$tmp/ctl.py" <<'EOF'
import json, os, socket, sys, threading, time

path, mode = sys.argv[1:3]
TIMEOUT = 20

def connect():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(TIMEOUT)
    s.connect(path)
    return s

def read_all(s):
    # Every byte until the server closes.
    out = b""
    while True:
        try:
            d = s.recv(1 << 16)
        except ConnectionResetError:
            break
        except socket.timeout:
            raise AssertionError("no EOF from the server within %d s" % TIMEOUT)
        if not d:
            break
        out += d
    return out

def replies(data):
    assert data == b"" or data.endswith(b"\n"), "a partial reply: %r" % data[-200:]
    return [json.loads(l) for l in data.split(b"\n") if l]

def exchange(data):
    # Send data on a new connection, half-close, return the replies.
    s = connect()
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = replies(read_all(s))
    s.close()
    return r

def req(method, params=None, id=1, **extra):
    r = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        r["params"] = params
    r.update(extra)
    return json.dumps(r).encode() + b"\n"

def same(a, b):
    return type(a) is type(b) and a == b

def check_error(r, code, id=None, errno=None, names=None, what=""):
    assert r.get("jsonrpc") == "2.0" and "result" not in r, (what, r)
    assert same(r.get("id", "missing"), id), "%s: id %r, not %r: %s" % (what, r.get("id"), id, r)
    e = r["error"]
    assert e["code"] == code, "%s: code %s, not %s: %s" % (what, e["code"], code, r)
    assert isinstance(e["message"], str) and e["message"] and "\n" not in e["message"], \
        "%s: no one-line message: %s" % (what, r)
    if errno is None:
        assert "data" not in e, "%s: %s" % (what, r)
    else:
        assert e.get("data", {}).get("errno") == errno, \
            "%s: errno %s, not %s: %s" % (what, e.get("data"), errno, r)
    if names is not None:
        assert names in e["message"], "%s: message does not name %r: %s" % (what, names, r)

def expect(data, code, **kw):
    r = exchange(data)
    assert len(r) == 1, "%r: %d replies: %s" % (data[:100], len(r), r)
    check_error(r[0], code, what=repr(data[:100]), **kw)

def call(method, params=None):
    r = exchange(req(method, params))
    assert len(r) == 1 and "result" in r[0], "%s: %s" % (method, r)
    return r[0]["result"]

def listing():
    # device_list's reply line, byte for byte.
    s = connect()
    s.sendall(req("device_list", id="list"))
    s.shutdown(socket.SHUT_WR)
    data = read_all(s)
    s.close()
    assert data.count(b"\n") == 1 and b'"result"' in data, data
    return data

def names():
    return [d["name"] for d in call("device_list")]

if mode == "alive":
    assert "disk0" in names(), names()

elif mode == "names":
    print(" ".join(names()))

elif mode == "proto":
    before = listing()
    L = b'{"jsonrpc":"2.0","id":1,"method":"device_list"}\n'
    # Not JSON, then a good request on the same connection.
    for bad in (b"not json", b"{", b'{"jsonrpc":"2.0","id":1,"method":"device_list"} {}',
                b"'single'", b"{\"jsonrpc\":\"2.0\",\"id\":1,}"):
        r = exchange(bad + b"\n" + L)
        assert len(r) == 2, r
        check_error(r[0], -32700, what=repr(bad))
        assert same(r[1]["id"], 1) and isinstance(r[1]["result"], list), r
    # Invalid requests.
    for bad, id in ((b'[]', None), (b'[' + L.strip() + b']', None), (b'5', None),
                    (b'"device_list"', None),
                    (b'{"id":1,"method":"device_list"}', 1),
                    (b'{"jsonrpc":"1.0","id":1,"method":"device_list"}', 1),
                    (b'{"jsonrpc":2.0,"id":1,"method":"device_list"}', 1),
                    (b'{"jsonrpc":"2.0","id":1}', 1),
                    (b'{"jsonrpc":"2.0","id":1,"method":5}', 1),
                    (b'{"jsonrpc":"2.0","id":1,"method":null}', 1),
                    (b'{"jsonrpc":"2.0","id":1,"method":["device_list"]}', 1),
                    (b'{"jsonrpc":"2.0","id":1,"method":"device_list","params":[]}', 1),
                    (b'{"jsonrpc":"2.0","id":1,"method":"device_list","params":"x"}', 1),
                    (b'{"jsonrpc":"2.0","id":1,"method":"device_list","params":null}', 1),
                    (b'{"jsonrpc":"2.0","id":{"a":1},"method":"device_list"}', None),
                    (b'{"jsonrpc":"2.0","id":[1],"method":"device_list"}', None),
                    (b'{"jsonrpc":"2.0","id":true,"method":"device_list"}', None)):
        expect(bad + b"\n", -32600, id=id)
    expect(req("no_such_method", id=3), -32601, id=3, names="no_such_method")
    expect(req("device_list ", id=3), -32601, id=3)
    expect(req("DEVICE_LIST", id=3), -32601, id=3)
    # Bad params: the member named.
    for method, params, member in (
            ("device_list", {"x": 1}, "x"),
            ("job_list", {"all": True}, "all"),
            ("device_create", {"name": "n", "colour": "red"}, "colour"),
            ("device_create", {"name": "n", "size": True}, "size"),
            ("device_create", {"name": "n", "size": -1}, "size"),
            ("device_create", {"name": "n", "size": 1.5}, "size"),
            ("device_create", {"name": "n", "size": 2 ** 64}, "size"),
            ("device_create", {"name": "n", "size": "12Q"}, "size"),
            ("device_create", {"name": "n", "size": "4 G"}, "size"),
            ("device_create", {"name": "n", "size": ""}, "size"),
            ("device_create", {"name": 5}, "name"),
            ("device_create", {"name": "n", "readonly": "yes"}, "readonly"),
            ("device_create", {"name": "n", "temp": 1}, "temp"),
            ("device_create", {"name": "n", "compress": "gzip"}, "compress"),
            ("device_create", {"size": "1M"}, "name"),
            ("device_delete", {}, "name"),
            ("device_delete", {"name": None}, "name"),
            ("device_delete", {"name": "a\u0000b"}, "name"),
            ("snapshot", {"device": "disk0"}, "name"),
            ("snapshot", {"devices": {"disk0": 5}}, "devices"),
            ("snapshot", {"devices": []}, "devices"),
            ("rollback", {"device": "disk0"}, "snapshot"),
            ("rollback", {"device": ["disk0"], "snapshot": "s"}, "device"),
            ("save", {"device": "disk0", "overwrite": 1}, "overwrite"),
            ("save", {"path": "/tmp/x"}, "device"),
            ("job_wait", {"job": -1}, "job"),
            ("job_wait", {"job": 1.5}, "job"),
            ("job_wait", {"job": "1"}, "job"),
            ("job_wait", {}, "job")):
        expect(req(method, params, id="p"), -32602, id="p", names="'%s'" % member)
    # Notifications: no reply, whatever their outcome; a valid one runs.
    for note in (b'{"jsonrpc":"2.0","method":"device_list"}',
                 b'{"jsonrpc":"2.0","method":"no_such_method"}',
                 b'{"jsonrpc":"2.0","method":"device_delete","params":{}}',
                 b'{"jsonrpc":"2.0","method":"device_delete","params":{"name":"nosuch"}}'):
        r = exchange(note + b"\n" + req("device_list", id=42))
        assert len(r) == 1 and same(r[0]["id"], 42) and "result" in r[0], \
            "%r: %s" % (note, r)
    r = exchange(req("device_create", {"name": "quiet", "size": 4096}, id=None)
                 .replace(b'"id": null, ', b'') + req("device_list", id=43))
    assert len(r) == 1 and same(r[0]["id"], 43), r
    assert "quiet" in [d["name"] for d in r[0]["result"]], "a notification did not run"
    assert call("device_delete", {"name": "quiet"}) is True
    # Ids echoed, with their type.
    for id in ("abc", "", "\u00e9\u2603", 0, 7, -3, 2 ** 53 + 1, 2 ** 63 - 1, 1.5, None):
        r = exchange(req("device_list", id=id))
        assert len(r) == 1 and same(r[0]["id"], id) and "result" in r[0], \
            "id %r: %s" % (id, r)
        expect(req("no_such_method", id=id), -32601, id=id)
    # Pipelined: in order.
    r = exchange(b"".join(req("job_list", id=i) for i in range(100)))
    assert [x["id"] for x in r] == list(range(100)), [x.get("id") for x in r]
    # One byte at a time.
    s = connect()
    for b in req("device_list", id="slow"):
        s.send(bytes([b]))
        time.sleep(0.001)
    s.shutdown(socket.SHUT_WR)
    r = replies(read_all(s))
    assert len(r) == 1 and r[0]["id"] == "slow" and "result" in r[0], r
    # CRLF; a blank line may get a parse error, but nothing else.
    r = exchange(b"\n" + req("device_list", id=5).rstrip(b"\n") + b"\r\n")
    ids = [x["id"] for x in r if x.get("id") is not None]
    assert ids == [5], r
    assert listing() == before, "a bad request changed the devices"
    print("ok: protocol errors")

elif mode == "limits":
    M = 1 << 20
    head = b'{"jsonrpc":"2.0","id":"big","method":"device_list","params":{}}'
    # Exactly 1 MiB: served, and the connection goes on.
    r = exchange(head + b" " * (M - len(head)) + b"\n" + req("device_list", id=2))
    assert [x["id"] for x in r] == ["big", 2] and all("result" in x for x in r), r
    # One byte more: -32600, and the server closes the connection (we
    # do not half-close here).
    for extra, chunk in ((1, None), (2 * M, None), (1, 4096)):
        s = connect()
        data = head + b" " * (M + extra - len(head))
        def send():
            try:
                if chunk:
                    for i in range(0, len(data), chunk):
                        s.send(data[i:i + chunk])
                else:
                    s.sendall(data)
                s.sendall(b"\n" + req("device_list", id=9))
            except (BrokenPipeError, ConnectionResetError):
                pass
        t = threading.Thread(target=send)
        t.start()
        r = replies(read_all(s))
        t.join()
        s.close()
        assert len(r) == 1, "line of %d bytes: %s" % (len(data), r)
        check_error(r[0], -32600, what="a line of %d bytes" % len(data))
    # A client that leaves mid-line: no reply, nothing done.
    for part in (b'{"jsonrpc":"2.0","id":1,"meth',
                 req("device_create", {"name": "half", "size": 4096}).rstrip(b"\n"),
                 head + b" " * (M - len(head))):
        assert exchange(part) == [], "a reply to a partial line"
        s = connect()
        s.sendall(part)
        s.close()
    assert "half" not in names(), "a request without its newline was run"
    # NUL bytes, invalid UTF-8, deep nesting, trailing bytes.
    for bad in (b'{"jsonrpc":"2.0","id":1,"method":"device_list"}\x00',
                b'\x00{"jsonrpc":"2.0","id":1,"method":"device_list"}',
                b'{"jsonrpc":"2.0","id":1,"method":"device_li\x00st"}',
                b'{"jsonrpc":"2.0","id":1,"method":"device_delete","params":{"name":"\xff\xfe"}}',
                b'{"jsonrpc":"2.0","id":"\x80","method":"device_list"}',
                b'\xef\xbb\xbf\xff{"jsonrpc":"2.0","id":1,"method":"device_list"}',
                b"[" * 10000 + b"]" * 10000,
                b"[" * 10000,
                b'{"a":' * 10000 + b"1" + b"}" * 10000,
                b'{"jsonrpc":"2.0","id":1,"method":"device_list","params":{"x":'
                + b"[" * 10000 + b"]" * 10000 + b"}}"):
        r = exchange(bad + b"\n" + req("device_list", id="after"))
        assert len(r) == 2, "%r: %s" % (bad[:60], r)
        check_error(r[0], -32700, what=repr(bad[:60]))
        assert r[1]["id"] == "after" and "result" in r[1], r
    # 2000 requests and gone without reading a reply.
    for _ in range(3):
        s = connect()
        try:
            s.sendall(b"".join(req("device_list", id=i) for i in range(2000)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.close()
    assert "disk0" in names()
    print("ok: limits")

elif mode == "refuse":
    import nbd
    nbd_sock, tmp = sys.argv[3:5]
    for p in ({"name": "d1", "size": "1M"}, {"name": "d2", "size": 1 << 20},
              {"name": "ro1", "size": "1M", "readonly": True}):
        call("device_create", p)
    call("snapshot", {"device": "disk0", "name": "disk0@s"})
    call("snapshot", {"device": "ro1", "name": "ro1@s"})
    exists = os.path.join(tmp, "exists.raw")
    with open(exists, "wb") as f:
        f.write(b"keep me")

    def refused(method, params, errno, names=None, code=-32000):
        before = listing()
        expect(req(method, params, id=method), code, id=method,
               errno=errno if code == -32000 else None, names=names)
        after = listing()
        assert after == before, "%s %s changed the devices:\n%s\n%s" \
            % (method, params, before, after)

    refused("device_create", {"name": "disk0", "size": "1M"}, "EEXIST", "disk0")
    refused("device_create", {"name": "disk0@s"}, "EEXIST", "disk0@s")
    refused("device_create", {"name": "n", "from": "nosuch"}, "ENOENT", "nosuch")
    refused("device_create", {"name": "n", "from": "disk0"}, "EINVAL", "disk0")
    refused("device_create", {"name": "n", "from": "ro1", "size": "2M"}, "EINVAL")
    refused("device_create", {"name": "n", "file": tmp + "/nothing.raw"}, "ENOENT",
            "nothing.raw")
    refused("device_create", {"name": "n:rw"}, "EINVAL", "n:rw")
    refused("device_create", {"name": ""}, "EINVAL")
    refused("device_create", {"name": "n", "size": "12Q"}, None, "size", code=-32602)
    refused("device_delete", {"name": "nosuch"}, "ENOENT", "nosuch")
    refused("device_delete", {"name": "disk0:ro"}, "ENOENT")
    refused("snapshot", {"device": "disk0", "name": "d2"}, "EEXIST", "d2")
    refused("snapshot", {"device": "nosuch", "name": "x"}, "ENOENT", "nosuch")
    refused("snapshot", {"devices": {"disk0": "new1", "nosuch": "new2"}}, "ENOENT")
    refused("snapshot", {"devices": {"disk0": "new1", "d1": "d2"}}, "EEXIST", "d2")
    refused("snapshot", {"devices": {"disk0": "same", "d1": "same"}}, "EEXIST")
    refused("rollback", {"device": "ro1", "snapshot": "ro1@s"}, "EROFS", "ro1")
    refused("rollback", {"device": "d2", "snapshot": "disk0@s"}, "EINVAL", "disk0@s")
    refused("rollback", {"device": "disk0", "snapshot": "ro1@s"}, "EINVAL")
    refused("rollback", {"device": "disk0", "snapshot": "d2"}, "EINVAL")
    refused("rollback", {"device": "disk0", "snapshot": "nosuch"}, "ENOENT")
    refused("save", {"device": "disk0", "path": "rel.raw"}, "EINVAL")
    refused("save", {"device": "disk0", "path": exists}, "EEXIST")
    refused("save", {"device": "disk0", "path": exists, "overwrite": False}, "EEXIST")
    refused("save", {"device": "disk0"}, "EINVAL")
    refused("save", {"device": "nosuch", "path": tmp + "/n.raw"}, "ENOENT", "nosuch")
    refused("job_wait", {"job": 999}, "ENOENT", "999")
    refused("job_wait", {"job": 2 ** 64 - 1}, "ENOENT")
    # Names the connect-string parser refuses: the client gets the
    # reason (the log gets nothing: checked at the end).
    for raw, shown in ((b'"a/b"', "a/b"), (b'"a\\u0001b"', None),
                       (b'"a\xc0\xafb"', None), (b'"a\xed\xa0\x80b"', None)):
        before = listing()
        r = exchange(b'{"jsonrpc":"2.0","id":"u","method":"device_create",'
                     b'"params":{"name":' + raw + b'}}\n')
        assert len(r) == 1, r
        if r[0].get("error", {}).get("code") != -32700:   # not bad UTF-8 to json-c
            check_error(r[0], -32000, id="u", errno="EINVAL", names=shown,
                        what="device_create name %r" % raw)
        assert listing() == before, "device_create %r changed the devices" % raw
    refused("snapshot", {"device": "disk0", "name": "s/x"}, "EINVAL", "s/x")
    with open(exists, "rb") as f:
        assert f.read() == b"keep me", "a refused save touched the file"

    # EBUSY while an NBD connection is open on the device.
    h = nbd.NBD()
    h.set_export_name("d1")
    h.connect_unix(nbd_sock)
    h.pwrite(b"x" * 4096, 0)
    assert [d for d in call("device_list") if d["name"] == "d1"][0]["connections"] == 1
    refused("device_delete", {"name": "d1"}, "EBUSY", "d1")
    h.shutdown()
    del h
    end = time.monotonic() + 10
    while [d for d in call("device_list") if d["name"] == "d1"][0]["connections"]:
        assert time.monotonic() < end, "d1: the NBD connection stays counted"
        time.sleep(0.05)
    for n in ("d1", "d2", "disk0@s", "ro1@s", "ro1"):
        assert call("device_delete", {"name": n}) is True
    assert names() == ["disk0"], names()
    print("ok: refusals")

elif mode == "clients":
    def served(s, id):
        s.sendall(req("device_list", id=id))
        buf = b""
        while not buf.endswith(b"\n"):
            d = s.recv(1 << 16)
            assert d, "client %s: closed without a reply" % id
            buf += d
        r = replies(buf)
        assert len(r) == 1, r
        return r[0]

    def sixteen():
        # Clients of the parts before may not have been reaped yet: a
        # slot frees once the server has seen its client go, so a
        # refusal (EBUSY) is retried for a while.
        socks = []
        end = time.monotonic() + 10
        while len(socks) < 16:
            i = len(socks)
            s = connect()
            try:
                r = served(s, i)
            except (BrokenPipeError, ConnectionResetError, AssertionError):
                r = None
            if r is not None and "result" in r:
                assert r["id"] == i, "client %d: %s" % (i, r)
                socks.append(s)
                continue
            s.close()
            assert time.monotonic() < end, "client %d not served: %s" % (i, r)
            time.sleep(0.05)
        return socks

    socks = sixteen()
    s = connect()
    try:
        s.sendall(req("device_create", {"name": "extra"}))
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = replies(read_all(s))
    s.close()
    assert len(r) == 1, r
    check_error(r[0], -32000, errno="EBUSY", what="a 17th client")
    for s in socks:                 # still served
        assert "result" in served(s, "again")
    socks.pop().close()
    end = time.monotonic() + 10
    while True:
        s = connect()
        try:
            r = served(s, "new")
        except (BrokenPipeError, ConnectionResetError):
            # Refused before the request went out: the refusal, if the
            # reset did not discard it, is all there is to read.
            r = replies(read_all(s))
            r = r[0] if r else None
        if r is not None and "result" in r:
            break
        if r is not None:
            check_error(r, -32000, errno="EBUSY",
                        what="a client after one left")
        assert time.monotonic() < end, "a slot is not freed when a client leaves"
        s.close()
        time.sleep(0.05)
    socks.append(s)
    for s in socks:
        s.close()
    end = time.monotonic() + 10
    while True:
        try:
            socks = sixteen()
            break
        except AssertionError:
            assert time.monotonic() < end, "16 new clients are not served"
            time.sleep(0.1)
    for s in socks:
        s.close()
    assert "extra" not in names(), "the 17th client's request was run"
    print("ok: 16 clients")

elif mode == "nobody-denied":
    assert os.getuid() != 0
    try:
        connect()
    except PermissionError:
        print("ok: uid %d cannot connect (EACCES)" % os.getuid())
    else:
        raise AssertionError("uid %d connected to a 0600 socket" % os.getuid())

elif mode == "nobody-refused":
    assert os.getuid() != 0
    s = connect()
    try:
        s.sendall(req("device_create", {"name": "evil", "size": 4096}))
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = replies(read_all(s))
    assert len(r) == 1, r
    check_error(r[0], -32000, errno="EACCES", what="uid %d" % os.getuid())
    print("ok: the server refuses uid %d" % os.getuid())

elif mode == "hold":
    # Connect, say so, and read until the server closes.
    s = connect()
    s.sendall(req("device_list"))
    r = replies(s.recv(1 << 20))
    assert "result" in r[0], r
    print("connected", flush=True)
    s.settimeout(None)
    while s.recv(1 << 16):
        pass
    print("closed")

else:
    raise SystemExit("bad mode " + mode)
EOF
chmod 644 "$tmp/ctl.py"

ctl=$tmp/c.ctl
py() {
    /usr/bin/python3 "$tmp/ctl.py" "$ctl" "$@"
}

# try_nbdkit ARGS...: start a second nbdkit that must fail at start-up;
# its output in $tmp/out.
try_nbdkit() {
    rc=0
    timeout -k 5 30 ${NBDKIT_WRAPPER:-} nbdkit -f -U "$tmp/other.sock" "$MEMBLOCK_SO" "$@" \
        >"$tmp/out" 2>&1 || rc=$?
    [ $rc -ne 0 ] || fail "nbdkit $*: started"
    [ $rc -lt 124 ] || { cat "$tmp/out"; fail "nbdkit $*: hung or crashed (exit $rc)"; }
    [ "$(wc -l <"$tmp/out")" -eq 1 ] ||
        { cat "$tmp/out"; fail "nbdkit $*: not one line of output"; }
    expect_grep "^nbdkit: .*error: control=$ctl" "$tmp/out"
}

# --- Start-up: what is at PATH. ---------------------------------------------
echo "not a socket" >"$ctl"
try_nbdkit control="$ctl" name=disk0:size=8M
[ -f "$ctl" ] && [ "$(cat "$ctl")" = "not a socket" ] || fail "the file at control= was changed"
rm "$ctl"
mkdir "$ctl"
try_nbdkit control="$ctl" name=disk0:size=8M
[ -d "$ctl" ] || fail "the directory at control= was removed"
rmdir "$ctl"

/usr/bin/python3 -c 'import socket, sys
socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$ctl"
[ -S "$ctl" ] || fail "no stale socket made"
start_plugin ctl "$MEMBLOCK_SO" control="$ctl" name=disk0:size=8M
main_pid=$server_pid
main_sock=$sock
main_log=$log
[ -S "$ctl" ] || fail "no control socket at $ctl"
[ "$(stat -c %a "$ctl")" = 600 ] || fail "the control socket is mode $(stat -c %a "$ctl")"
[ "$(stat -c %u "$ctl")" = 0 ] || fail "the control socket is not root's"
py alive || fail "the server does not answer on a socket that replaced a stale one"
ino=$(stat -c %i "$ctl")

try_nbdkit control="$ctl" name=disk0:size=8M
[ -S "$ctl" ] && [ "$(stat -c %i "$ctl")" = "$ino" ] ||
    fail "a second server's failed start removed or replaced the socket"
py alive || fail "the first server stopped answering after a second one tried"
echo "ok: start-up"

# --- Data on disk0, checked at the end. --------------------------------------
nbdsh -u "$(uri disk0 "$main_sock")" -c '
import random
h.pwrite(random.Random(7).randbytes(1 << 20), 3 << 20)
h.pwrite(random.Random(8).randbytes(4096), (8 << 20) - 4096)
h.flush()' || fail "cannot write to disk0"

# --- The protocol. ----------------------------------------------------------
py proto || fail "protocol errors"
py limits || fail "limits"
py refuse "$main_sock" "$tmp" || fail "refusals"

# --- Another user. -----------------------------------------------------------
nobody() {
    setpriv --reuid=nobody --regid="$nogroup" --clear-groups \
        /usr/bin/python3 "$tmp/ctl.py" "$ctl" "$@"
}
chmod 711 "$tmp"
nobody nobody-denied || fail "uid nobody and the 0600 socket"
chmod 666 "$ctl"
nobody nobody-refused || { chmod 600 "$ctl"; fail "uid nobody and a 0666 socket"; }
chmod 600 "$ctl"
chmod 700 "$tmp"
[ "$(py names)" = disk0 ] || fail "devices after uid nobody: $(py names)"

# --- 16 clients. -------------------------------------------------------------
py clients || fail "16 clients"

# --- Everything still there. -------------------------------------------------
kill -0 "$main_pid" || fail "the server died"
[ "$(py names)" = disk0 ] || fail "devices at the end: $(py names)"
nbdsh -u "$(uri disk0 "$main_sock")" -c '
import random
assert h.pread(1 << 20, 3 << 20) == random.Random(7).randbytes(1 << 20)
assert h.pread(4096, (8 << 20) - 4096) == random.Random(8).randbytes(4096)
assert h.pread(3 << 20, 0) == bytes(3 << 20)' || fail "disk0 lost its data"
[ ! -s "$main_log" ] || { cat "$main_log"; fail "control requests wrote to the log"; }
echo "ok: the server and its data survived"

# --- SIGTERM with a control client connected removes the socket. -------------
py hold >"$tmp/hold.out" 2>&1 &
hold_pid=$!
i=0
until grep -q connected "$tmp/hold.out"; do
    kill -0 $hold_pid 2>/dev/null || { cat "$tmp/hold.out"; fail "hold client failed"; }
    [ $i -lt 100 ] || fail "hold client did not connect"
    sleep 0.1; i=$((i + 1))
done
kill -TERM "$main_pid"
i=0
while kill -0 "$main_pid" 2>/dev/null; do
    [ $i -lt 200 ] || fail "nbdkit did not exit within 20 s of SIGTERM with a control client"
    sleep 0.1; i=$((i + 1))
done
wait "$main_pid" || fail "nbdkit exited $? at SIGTERM"
[ ! -e "$ctl" ] || fail "the control socket is left after SIGTERM"
wait $hold_pid || { cat "$tmp/hold.out"; fail "hold client"; }
grep -q closed "$tmp/hold.out" || fail "the control client was not closed"

# --- A server killed with SIGKILL leaves a socket the next one replaces. -----
start_plugin k1 "$MEMBLOCK_SO" control="$ctl" name=disk0:size=1M
py alive || fail "k1 does not answer"
kill -KILL "$server_pid"
wait "$server_pid" 2>/dev/null || :
[ -S "$ctl" ] || fail "no socket left by a killed server"
start_plugin k2 "$MEMBLOCK_SO" control="$ctl" name=disk0:size=1M
py alive || fail "the server after a killed one does not answer"
[ "$(stat -c %a "$ctl")" = 600 ] || fail "the replaced socket is mode $(stat -c %a "$ctl")"
stop_server
[ ! -e "$ctl" ] || fail "the control socket is left after SIGTERM"
echo "control: ok"
