#!/bin/sh
# :temp devices: freed, with all their memory, when their last connection
# closes.
#
# Proves that:
#  1. with dynamic=true and max-memory=96M, 64 MiB written into
#     scratch:size=64M:temp grows the server's RSS by at least 56 MiB;
#     after the connection closes RSS falls back to within 16 MiB of
#     what it was before, scratch leaves nbdinfo --list, a reconnect
#     gets an all-zero device, and 64 MiB can be written again (the cap
#     was given back: 2 x 64 MiB would not fit in 96M);
#  2. a temporary clone of a loaded golden (job1:from=g:temp) comes back
#     fresh (the golden's data, not the writes) after its last close, and
#     golden is unchanged; a client's g:temp does not make the
#     permanent g temporary;
#  3. of two connections to one temp device, closing the first keeps the
#     data (for the other and for a third); closing the last frees it;
#  4. without dynamic=true a temp device declared on the command line is
#     freed after its last connection and a later connect is refused,
#     with a log line naming it; a permanent device beside it is not,
#     even after a client connected to it as keep:temp;
#  5. a temp golden is not freed while it has a clone (command line
#     clone; a client's temp clone), and is freed once that clone is
#     freed and no connection holds it;
#  6. 30 temp goldens, each closing its last connection while a client
#     makes a temp clone of it: the clone is refused (the golden is
#     gone) or reads as the file and keeps the golden alive while
#     connected; every device goes in the end; no crash;
#  7. a race, 1000 rounds (at most 30 s) over a temp device and a temp
#     clone: one connection closes while another connects; every connect
#     gets either the old device (the data is there) or a fresh one (all
#     zero, or the golden's data), never a refusal or a mix, and the
#     server survives with no crash or assertion in its log;
#  8. a :temp device a client's connect created goes with its last
#     connection even if no request came: after qemu-img info on
#     job1:from=g:temp, and after bare handshakes, nothing is left, and
#     three times max-devices such connects in a row are all served;
#     a :temp device declared on the command line stays through
#     listings and handshakes that send no request;
#  9. nbdinfo --list, looping while a client connects to and closes a
#     temp clone (at most 20 s, 1000 rounds), never brings the clone's
#     name back as a permanent device: job:from=g:temp keeps working
#     and at the end only g is listed.
. "$(dirname "$0")/lib.sh"

for t in nbdinfo nbdsh qemu-img /usr/bin/python3; do
    command -v $t >/dev/null || fail "$t is not installed"
done
M=1048576

# An 8 MiB golden image: 1 MiB of random data (no zero page), the rest
# a hole.
small=$tmp/small.raw
truncate -s 8M "$small"
head -c 1M /dev/urandom | dd of="$small" conv=notrunc status=none

cat >"$tmp/temp.py" <<'EOF'
import json, os, subprocess, sys, threading, time
import nbd

M = 1 << 20
sock = sys.argv[2]

def connect(name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(sock)
    return h

def close(h):
    h.shutdown()

def listed():
    """The export names.  nbdinfo --list fails if an export it was told
    of has gone (a temp device closing) by the time it opens it: then
    ask again, a few times."""
    for attempt in range(5):
        p = subprocess.run(["nbdinfo", "--list", "--json",
                            "nbd+unix:///?socket=" + sock],
                           capture_output=True, text=True)
        if p.returncode == 0:
            return [e["export-name"] for e in json.loads(p.stdout)["exports"]]
        time.sleep(0.1)
    sys.exit("nbdinfo --list failed 5 times: " + p.stderr.strip())

def wait_gone(name, secs=10):
    """Poll nbdinfo --list until name is not in it; fail after secs."""
    end = time.time() + secs
    while name in listed():
        if time.time() > end:
            sys.exit("%s still listed %d s after its last close" % (name, secs))
        time.sleep(0.1)

def rss(pid):
    for line in open("/proc/%s/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")

def pattern(n):
    """n random bytes: no page repeats another or compresses."""
    return os.urandom(n)

def write_all(h, total, buf):
    step = 256 * 1024          # keeps nbdkit's per-thread buffers small
    for off in range(0, total, step):
        h.pwrite(buf[off % len(buf):off % len(buf) + step], off)

def all_zero(h, total):
    step = 4 * M
    z = bytes(step)
    return all(h.pread(min(step, total - o), o) == z[:min(step, total - o)]
               for o in range(0, total, step))

def cmd_memory(pid):
    """1: RSS grows with a temp device and falls back when it is freed."""
    name = "scratch:size=64M:temp"
    buf = pattern(64 * M)
    w = connect("warm:size=1M:temp")            # warm up worker threads
    write_all(w, M, buf); close(w); del w
    wait_gone("warm")
    time.sleep(0.5)
    base = rss(pid)
    h = connect(name)
    write_all(h, 64 * M, buf)
    full = rss(pid)
    print("RSS before %.1f MiB, with 64 MiB written %.1f MiB" %
          (base / M, full / M))
    if full - base < 56 * M:
        sys.exit("RSS grew by only %.1f MiB" % ((full - base) / M))
    if "scratch" not in listed():
        sys.exit("scratch is not listed while connected")
    close(h); del h
    end = time.time() + 10
    while rss(pid) > base + 16 * M:
        if time.time() > end:
            sys.exit("RSS is %.1f MiB 10 s after the last close (before: %.1f)"
                     % (rss(pid) / M, base / M))
        time.sleep(0.1)
    print("RSS after the last close: %.1f MiB" % (rss(pid) / M))
    wait_gone("scratch")
    h = connect(name)
    if h.get_size() != 64 * M:
        sys.exit("fresh scratch is %d bytes" % h.get_size())
    if not all_zero(h, 64 * M):
        sys.exit("a reconnect to scratch after it was freed sees old data")
    write_all(h, 64 * M, pattern(64 * M))  # fits only if the cap was given back
    close(h); del h
    wait_gone("scratch")

def cmd_clone(image):
    """2: a temp clone of golden g comes back fresh."""
    gold = open(image, "rb").read(M)
    h = connect("job1:from=g:temp")
    if h.pread(M, 0) != gold:
        sys.exit("job1 does not read as g")
    h.pwrite(b"J" * 8192, 4096)
    if h.pread(8192, 4096) != b"J" * 8192:
        sys.exit("job1 lost a write")
    close(h); del h
    wait_gone("job1")
    h = connect("job1:from=g:temp")
    if h.pread(M, 0) != gold:
        sys.exit("job1 after its last close is not a fresh clone of g")
    close(h); del h
    g = connect("g")
    if g.pread(M, 0) != gold:
        sys.exit("golden g changed")
    close(g); del g
    # A client's :temp does not make a permanent device temporary.
    g = connect("g:temp")
    close(g); del g
    time.sleep(1)
    if "g" not in listed():
        sys.exit("g:temp from a client freed the permanent golden g")
    g = connect("g")
    if g.pread(M, 0) != gold:
        sys.exit("golden g changed after a g:temp connection")
    close(g)

def cmd_pair():
    """3: two connections to one temp device."""
    name = "pair:size=1M:temp"
    h1 = connect(name)
    h1.pwrite(b"P" * 4096, 8192)
    h2 = connect("pair")
    if h2.pread(4096, 8192) != b"P" * 4096:
        sys.exit("the second connection does not see the first's data")
    close(h1); del h1
    time.sleep(1)
    if h2.pread(4096, 8192) != b"P" * 4096:
        sys.exit("closing the first connection lost the data")
    h3 = connect("pair")
    if h3.pread(4096, 8192) != b"P" * 4096:
        sys.exit("a third connection, after the first closed, lost the data")
    if "pair" not in listed():
        sys.exit("pair is not listed with two connections open")
    close(h2); del h2
    time.sleep(1)
    if h3.pread(4096, 8192) != b"P" * 4096:
        sys.exit("closing the second of three connections lost the data")
    close(h3); del h3
    wait_gone("pair")
    h = connect(name)
    if h.pread(M, 0) != bytes(M):
        sys.exit("pair after its last close is not fresh")
    close(h)

def cmd_tempgold(image):
    """5 (dynamic): temp golden tg with a client's temp clone tj."""
    gold = open(image, "rb").read()
    j = connect("tj:from=tg:temp")
    g = connect("tg")
    if g.pread(len(gold), 0) != gold:
        sys.exit("tg does not read as the file")
    close(g); del g
    time.sleep(1)
    if "tg" not in listed():
        sys.exit("tg was freed while its clone tj exists")
    g = connect("tg")
    if g.get_size() != len(gold) or g.pread(len(gold), 0) != gold:
        sys.exit("tg, with a clone alive, is not the loaded golden any more")
    close(g); del g
    if j.pread(len(gold), 0) != gold:
        sys.exit("clone tj does not read as the file")
    j.pwrite(b"j" * 4096, 0)
    close(j); del j
    # Neither a connection nor a clone holds tg now: it goes with tj.
    wait_gone("tj")
    wait_gone("tg")

def cmd_race(image, rounds, secs):
    """7: close one connection while another connects."""
    rounds, secs = int(rounds), float(secs)
    gold = open(image, "rb").read(M)
    FAR = 512 * 1024 + 4092            # 8 bytes across a page boundary
    devs = {
        "r:size=1M:temp": (bytes(8), bytes(8)),
        "rj:from=rg:temp": (gold[:8], gold[FAR:FAR + 8]),
    }
    last = {d: None for d in devs}
    old = fresh = 0
    end = time.time() + secs
    r = 0
    while r < rounds and time.time() < end:
        name = list(devs)[r % 2]
        fresh_v = devs[name]
        marker = b"R%07d" % r
        a = connect(name)
        seen = (a.pread(8, 0), a.pread(8, FAR))
        ok = [fresh_v]
        if last[name] is not None:
            ok.append((last[name], last[name]))
        if seen not in ok:
            sys.exit("round %d: %s: first connect sees %r, want one of %r"
                     % (r, name, seen, ok))
        a.pwrite(marker, 0)
        a.pwrite(marker, FAR)
        bar = threading.Barrier(2)
        def closer():
            bar.wait()
            a.shutdown()
        t = threading.Thread(target=closer)
        t.start()
        bar.wait()
        try:
            b = connect(name)
        except nbd.Error as e:
            sys.exit("round %d: connect to %s refused while the other "
                     "closed: %s" % (r, name, e))
        t.join()
        del a
        seen = (b.pread(8, 0), b.pread(8, FAR))
        if seen == (marker, marker):
            old += 1
            last[name] = marker
        elif seen == fresh_v:
            fresh += 1
            last[name] = None
        else:
            sys.exit("round %d: %s: second connect sees %r: neither the old "
                     "device %r nor a fresh one %r" % (r, name, seen,
                                                       marker, fresh_v))
        b.shutdown()
        del b
        r += 1
    print("race: %d rounds, %d old, %d fresh" % (r, old, fresh))
    if r < 50:
        sys.exit("only %d rounds in %g s" % (r, secs))

def cmd_clonerace(image, n):
    """6: a clone of temp golden tgN made while tgN's last connection
    closes: refused (tgN is gone) or a clone that reads as the file and
    keeps tgN alive until it closes; tgN goes in the end.  Every tgN is
    held by a connection from the start, whose close races the clone's
    connect."""
    gold = open(image, "rb").read()
    n = int(n)
    held = [connect("tg%d" % i) for i in range(n)]
    got = {"clone": 0, "refused": 0}
    for i in range(n):
        src = "tg%d" % i
        a = held[i]
        held[i] = None
        bar = threading.Barrier(2)
        def closer():
            bar.wait()
            a.shutdown()
        t = threading.Thread(target=closer)
        t.start()
        bar.wait()
        try:
            c = connect("cl%d:from=%s:temp" % (i, src))
        except nbd.Error:
            got["refused"] += 1
            c = None
        t.join()
        del a
        if c is not None:
            got["clone"] += 1
            time.sleep(0.05)
            if c.pread(len(gold), 0) != gold:
                sys.exit("cl%d, made as %s closed, does not read as the file"
                         % (i, src))
            if src not in listed():
                sys.exit("%s is gone while its clone cl%d is connected"
                         % (src, i))
            c.shutdown()
            del c
        wait_gone(src)
    print("clone race: %(clone)d clones made, %(refused)d refused" % got)

def cmd_idle(max_devices):
    """8: temp devices made by a client's connect, no request sent."""
    max_devices = int(max_devices)
    for name in ("job1", "h1", "j2"):
        wait_gone(name, 5)
    # Bare handshakes: connect, then close at once.
    for name in ("h1:size=1M:temp", "j2:from=g:temp"):
        close(connect(name))
        wait_gone(name.split(":")[0], 5)
    # More connects than max-devices: each one's slot must come back.
    for i in range(3 * max_devices):
        try:
            h = connect("idle%d:from=g:temp" % i if i % 2
                        else "idle%d:size=1M:temp" % i)
        except nbd.Error as e:
            sys.exit("connect %d of %d refused: %s" % (i + 1, 3 * max_devices, e))
        close(h); del h
    left = [n for n in listed() if n not in ("g", "keepme")]
    if left:
        sys.exit("devices left after their last close: %r" % left)
    # A declared temp device outlives handshakes and listings.
    close(connect("keepme"))
    for _ in range(3):
        if "keepme" not in listed():
            sys.exit("declared temp keepme freed by a listing or handshake")

def cmd_listrace(secs, rounds):
    """9: nbdinfo --list racing the last close of a temp clone."""
    secs, rounds = float(secs), int(rounds)
    stop = threading.Event()
    lists = [0]
    def lister():
        while not stop.is_set():
            # A listed export may go before nbdinfo asks about it: a
            # failed listing is fine, a device that stays is not.
            subprocess.run(["nbdinfo", "--list", "nbd+unix:///?socket=" + sock],
                           capture_output=True)
            lists[0] += 1
    threads = [threading.Thread(target=lister) for _ in range(2)]
    for t in threads:
        t.start()
    end = time.time() + secs
    r = 0
    try:
        while r < rounds and time.time() < end:
            try:
                h = connect("job:from=g:temp")
            except nbd.Error as e:
                sys.exit("round %d: job:from=g:temp refused: %s" % (r, e))
            if r % 2:
                h.pread(4096, 0)
            close(h); del h
            r += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    print("list race: %d rounds, %d listings" % (r, lists[0]))
    if r < 20:
        sys.exit("only %d rounds in %g s" % (r, secs))
    wait_gone("job", 5)
    if listed() != ["g"]:
        sys.exit("after the race the exports are %r, not just g" % listed())
    h = connect("job:from=g:temp")
    close(h)

getattr(sys.modules[__name__], "cmd_" + sys.argv[1])(*sys.argv[3:])
EOF
# tp CMD ARGS...: run one part of temp.py against the server on $sock.
tp() {
    cmd=$1; shift
    /usr/bin/python3 "$tmp/temp.py" "$cmd" "$sock" "$@"
}

# no_crash: the server is alive and its log shows no crash.
no_crash() {
    kill -0 "$server_pid" 2>/dev/null || { cat "$log"; fail "nbdkit died"; }
    if grep -Eiq 'assert|segmentation|sigsegv|sigabrt|double free|corrupt|sanitizer|core dumped|abort' "$log"; then
        cat "$log"; fail "the server log shows a crash or assertion"
    fi
}

# --- 1-3: dynamic=true. ------------------------------------------------------
start_server dyn dynamic=true max-memory=96M "name=g:ro:file=$small"
tp memory "$server_pid" || fail "part 1: RSS and fresh device"
tp clone "$small" || fail "part 2: temporary clone"
tp pair || fail "part 3: two connections"
no_crash
stop_server

# --- 4: no dynamic; a temp device declared on the command line. ------------
start_server static name=keep name=once:size=1M:temp
nbdsh -u "$(uri once)" -c 'h.pwrite(b"once" * 1024, 0)' ||
    fail "cannot write to once"
nbdsh -u "$(uri keep)" -c 'h.pwrite(b"keep" * 1024, 0)' ||
    fail "cannot write to keep"
# Connect until refused: a connect that still finds it closes it again.
i=0
while nbdinfo --size "$(uri once)" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || fail "once is still served 10 s after its last close"
    sleep 0.1
done
before=$(grep -c "once" "$log" || :)
expect_fail "connect to a freed temp device" nbdsh -u "$(uri once)" -c 'pass'
after=$(grep -c "once" "$log" || :)
[ "$after" -gt "$before" ] || { cat "$log"; fail "no log line for the refused connect to once"; }
grep "once" "$log" | tail -n 1
grep "once" "$log" | tail -n 1 | grep -q 'error' ||
    { cat "$log"; fail "the refusal of once is not logged as an error"; }
nbdinfo --list "$(uri '')" >"$tmp/list" || fail "nbdinfo --list"
grep -qF 'export="once"' "$tmp/list" && { cat "$tmp/list"; fail "once is still listed"; }
# A client's :temp does not make the permanent keep temporary.
nbdsh -u "$(uri keep:temp)" -c 'assert h.pread(4096, 0) == b"keep" * 1024' ||
    fail "keep:temp does not give keep"
sleep 1
nbdsh -u "$(uri keep)" -c 'assert h.pread(4096, 0) == b"keep" * 1024' ||
    fail "keep lost its data (after a keep:temp connection?)"
no_crash
stop_server

# --- 5: a temp golden with clones. -------------------------------------------
start_server tgs "name=tg:ro:temp:file=$small" name=tc:from=tg
for i in 1 2; do
    nbdsh -u "$(uri tg)" -c "assert h.pread($M, 0) == open('$small', 'rb').read($M)" ||
        fail "tg, connection $i: not the file's data (freed with a clone alive?)"
    sleep 1
done
nbdsh -u "$(uri tc)" -c "assert h.pread($M, 0) == open('$small', 'rb').read($M)" ||
    fail "tc does not read as the file"
no_crash
stop_server
start_server tgd dynamic=true "name=tg:ro:temp:file=$small"
tp tempgold "$small" || fail "part 5: temp golden with a temp clone"
no_crash
stop_server

# --- 6: clones made while their temp golden goes. --------------------------------
goldens=""
for i in $(seq 0 29); do
    goldens="$goldens name=tg$i:ro:temp:file=$small"
done
saved_extra=${NBDKIT_EXTRA:-}
NBDKIT_EXTRA="$saved_extra --threads=2"     # 30 connections held at once
start_server crace dynamic=true $goldens
NBDKIT_EXTRA=$saved_extra
tp clonerace "$small" 30 || fail "part 6: clone made while its golden goes"
nbdinfo --list "$(uri '')" >"$tmp/list" || fail "nbdinfo --list after part 6"
grep -q '^export=' "$tmp/list" && { cat "$tmp/list"; fail "devices left after part 6"; }
no_crash
stop_server

# --- 7: the race. --------------------------------------------------------------
start_server race dynamic=true "name=rg:ro:file=$small"
start=$(date +%s)
tp race "$small" 1000 30 || fail "part 7: race"
echo "race took $(( $(date +%s) - start )) s"
nbdinfo --list "$(uri '')" >/dev/null || fail "nbdinfo --list after the race"
no_crash
# --- 8: a client's temp device with no request. -------------------------------
start_server idle dynamic=true max-devices=4 "name=g:ro:file=$small" \
    name=keepme:size=1M:temp
qemu-img info -f raw "$(uri job1:from=g:temp)" >"$tmp/qi.out" 2>&1 ||
    { cat "$tmp/qi.out"; fail "qemu-img info on job1:from=g:temp"; }
tp idle 4 || fail "part 8: temp devices that saw no request"
no_crash
stop_server

# --- 9: listings racing the last close of a temp clone. ------------------------
start_server lrace dynamic=true "name=g:ro:file=$small"
tp listrace 20 1000 || fail "part 9: nbdinfo --list against a temp clone's close"
grep -q 'exists and is not a clone' "$log" &&
    { grep 'exists and is not a clone' "$log" | head -n 3; fail "part 9: job was refused as not a clone"; }
no_crash
stop_server
echo "temp: all checks passed"
