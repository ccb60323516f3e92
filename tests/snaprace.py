#!/usr/bin/python3
# memblock: snapshots and rollbacks raced by writes from two NBD
# connections.  Run by tests/test-snapshot-race.sh; see there for what
# it proves.
#
#   snaprace.py SOCKET CONTROL DEVICE [--seconds S] [--keep N]
#               [--rounds R] [--seed N]
#
# Two writer processes, each with its own connection (nbd.NBD handle)
# to DEVICE, write continuously: each write is 4 KiB to 1 MiB at a
# random 512-byte aligned offset, and fills its whole range with one
# 8-byte tag, (writer id << 40) | sequence number, repeated; so every
# 512-byte sector of the device holds one tag (or zeroes, never
# written), and the tag says which request wrote it.  Each writer logs
# every write: sequence, offset, length, and CLOCK_MONOTONIC (shared by
# all processes) before the request is sent and after its reply.
#
# Phase A: meanwhile this process takes snapshots over the control
# socket (raw JSON-RPC on one AF_UNIX connection), a few milliseconds
# apart, noting the time before each request is sent and after its
# reply.  It keeps --keep of them and deletes the others as it goes
# (device_delete), some at once (the device's new layer folds into the
# snapshot's while the writers write), some after the next snapshot (a
# layer between two others folds).  Then the writers stop, and each
# kept snapshot is read over NBD and checked, then deleted.
#
# The check of an image (a snapshot, or the device once the writers
# have stopped) with request times (sent, reply), a base (what the
# device held before these writers started) and the write logs:
#  - each sector holds one tag throughout (no sector mixes requests);
#  - each tag found is a logged write that started before the reply,
#    and lies inside that write's range; a sector with no tag found
#    holds the base;
#  - a write is "in" the image if its tag is found anywhere, or if it
#    completed before the request was sent, or before a write that is
#    in started (a snapshot is a cut: what happened before something
#    in it is in it);
#  - every sector of a write that is in holds that write's tag or the
#    tag of a write that may have been ordered after it (one that had
#    not completed when it started): never the base, never an older
#    write's.  This says no request is torn by the cut (a request is in
#    entirely or not at all), no completed write is lost, and nothing
#    older comes back.  Where one write covers a sector last for sure,
#    the image must hold exactly it: the model, where it is determinable.
#
# Phase B, --rounds times: the writers run again; a snapshot is taken,
# then (writes still in flight) the device is rolled back to it, the
# writers go on a while and stop.  The snapshot is checked as above
# (against the device as it was before the round), and the device
# after the round against the snapshot's content and the writes after
# the rollback: a write that started after the rollback's reply, or
# after a write found in the device ended, is in, and must show as
# above; every other sector holds exactly what the snapshot holds.
# Writes that completed before the rollback was sent must be gone
# unless the snapshot holds them.
#
# Exits 0 if every check passed, printing the figures; 1 with the first
# failures otherwise.

import argparse
import itertools
import json
import multiprocessing
import os
import random
import socket
import sys
import time
from bisect import bisect_right

import nbd

KiB = 1 << 10
MiB = 1 << 20
SECTOR = 512
WPS = SECTOR // 8               # 8-byte words per sector
now = time.monotonic
T0 = now()


def say(fmt, *a):
    print(("[%5.1f s] " % (now() - T0)) + fmt % a, flush=True)


class Fail(Exception):
    pass


# --- control socket ------------------------------------------------------

class Control:
    """One connection to the control socket; call() sends one request
    and returns (result, t_sent, t_reply)."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.buf = b""
        self.id = 0

    def call(self, method, params):
        self.id += 1
        msg = (json.dumps({"jsonrpc": "2.0", "id": self.id, "method": method,
                           "params": params}) + "\n").encode()
        t0 = now()
        self.s.sendall(msg)
        while b"\n" not in self.buf:
            b = self.s.recv(65536)
            if not b:
                raise Fail("control socket closed during %s" % method)
            self.buf += b
        t1 = now()
        line, self.buf = self.buf.split(b"\n", 1)
        r = json.loads(line)
        if r.get("id") != self.id:
            raise Fail("%s: reply to id %r, not %d" % (method, r.get("id"),
                                                       self.id))
        if "error" in r:
            raise Fail("%s %s refused: %s" % (method, json.dumps(params),
                                              json.dumps(r["error"])))
        return r["result"], t0, t1


# --- writers -------------------------------------------------------------

def connect(sock, export):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h


def writer(sock, export, wid, seed, stop, started, out):
    """Write until stop is set; the log goes to the file out."""
    rng = random.Random(seed)
    h = connect(sock, export)
    size = h.get_size()
    log = []
    nsec = size // SECTOR
    seq = 0
    try:
        while not stop.is_set():
            seq += 1
            n = rng.randrange(4 * KiB // SECTOR, MiB // SECTOR + 1)
            off = rng.randrange(0, nsec - n + 1)
            tag = (wid << 40) | seq
            data = tag.to_bytes(8, "little") * (n * WPS)
            t0 = now()
            h.pwrite(data, off * SECTOR)
            t1 = now()
            log.append((seq, off, n, t0, t1))
            if seq == 20:
                started.set()
        h.shutdown()
    finally:
        with open(out, "w") as f:
            json.dump(log, f)


class Write:
    __slots__ = ("tag", "a", "b", "start", "end")

    def __init__(self, tag, a, b, start, end):
        self.tag, self.a, self.b, self.start, self.end = tag, a, b, start, end

    def __repr__(self):
        return ("write %d.%d [sectors %d, %d) sent %.6f done %.6f" %
                (self.tag >> 40, self.tag & ((1 << 40) - 1), self.a, self.b,
                 self.start, self.end))


class Writers:
    """Two writer processes with ids wid0, wid0+1."""

    def __init__(self, args, wid0, tmpdir):
        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self.started = [ctx.Event(), ctx.Event()]
        self.files = [os.path.join(tmpdir, "w%d.log" % (wid0 + i))
                      for i in range(2)]
        self.wids = [wid0, wid0 + 1]
        self.procs = [ctx.Process(target=writer,
                                  args=(args.socket, args.device, wid0 + i,
                                        args.seed * 1000 + wid0 + i,
                                        self.stop, self.started[i],
                                        self.files[i]))
                      for i in range(2)]
        for p in self.procs:
            p.daemon = True     # never outlive this process
            p.start()
        for e, p in zip(self.started, self.procs):
            while not e.wait(0.1):
                if not p.is_alive():
                    raise Fail("a writer died before it started")

    def finish(self):
        """Stop the writers; return their writes by tag."""
        self.stop.set()
        writes = {}
        for p, f, wid in zip(self.procs, self.files, self.wids):
            p.join()
            if p.exitcode != 0:
                raise Fail("writer %d exited with %s" % (wid, p.exitcode))
            for seq, a, n, t0, t1 in json.load(open(f)):
                tag = (wid << 40) | seq
                writes[tag] = Write(tag, a, a + n, t0, t1)
            os.unlink(f)
        return writes


# --- images and checks ---------------------------------------------------

def read_image(sock, export, buf):
    """Read the whole export into the bytearray buf (of its size), with
    a few requests in flight; returns buf."""
    h = connect(sock, export)
    size = h.get_size()
    if size != len(buf):
        raise Fail("%s is %d bytes, not %d" % (export, size, len(buf)))
    step = 8 * MiB
    mv = memoryview(buf)
    cmds = [h.aio_pread(mv[o:o + min(step, size - o)], o)
            for o in range(0, size, step)]
    for c in cmds:
        while not h.aio_command_completed(c):
            h.poll(-1)
    h.shutdown()
    return buf


def same(a, b, s, e):
    """Whether sectors [s, e) of images a and b are equal."""
    return memoryview(a)[s * SECTOR:e * SECTOR] == \
        memoryview(b)[s * SECTOR:e * SECTOR]


def runs_of(data, what):
    """[(first sector, sectors, tag)] of an image; every sector must be
    one 8-byte word repeated."""
    firsts = memoryview(data).cast("Q")[::WPS].tolist()
    runs, s = [], 0
    for v, g in itertools.groupby(firsts):
        n = sum(1 for _ in g)
        runs.append((s, n, v))
        s += n
    for s, n, v in runs:
        # n * WPS non-overlapping copies of the word in n sectors: they
        # tile the run exactly, so every word of it is v.
        if data.count(v.to_bytes(8, "little"), s * SECTOR,
                      (s + n) * SECTOR) != n * WPS:
            for t in range(s, s + n):
                sec = memoryview(data)[t * SECTOR:(t + 1) * SECTOR]
                words = sorted(set(sec.cast("Q").tolist()))
                if len(words) > 1:
                    raise Fail("%s: sector %d mixes words %s: a request "
                               "torn inside a sector" %
                               (what, t, [hex(w) for w in words]))
            raise Fail("%s: run [%d, %d) is not uniform" % (what, s, s + n))
    return runs


class Cover:
    """max over writes covering each sector of their send time, -1 where
    none does; writes added in send order for add_sorted()."""

    def __init__(self, nsec):
        self.m = [-1.0] * nsec

    def add_sorted(self, w):
        self.m[w.a:w.b] = [w.start] * (w.b - w.a)

    def add(self, w):
        self.m[w.a:w.b] = [max(x, w.start) for x in self.m[w.a:w.b]]

    def copy(self):
        c = Cover(0)
        c.m = self.m[:]
        return c


def check_image(what, data, base, writes, by_start, t_sent, t_reply,
                cover_base=None, base_cut=0):
    """Check an image against writes (by tag) as a cut made between
    t_sent and t_reply over base (bytes of the image before the writes,
    or None for zeroes).  by_start: writes sorted by send time.
    cover_base: a Cover of by_start[:base_cut], all of which completed
    before t_sent (made incrementally by the caller), or None.
    Returns (in, found) counts."""
    nsec = len(data) // SECTOR
    runs = runs_of(data, what)
    found = {}
    for s, n, v in runs:
        if v == 0 and base is None:
            continue
        w = writes.get(v)
        if w is None:
            if base is not None and same(data, base, s, s + n):
                continue
            raise Fail("%s: sectors [%d, %d) hold %#x, which no write of "
                       "this round wrote, and not the base" %
                       (what, s, s + n, v))
        if w.start >= t_reply:
            raise Fail("%s: sectors [%d, %d) hold %r, sent after the "
                       "reply (%.6f)" % (what, s, s + n, w, t_reply))
        if s < w.a or s + n > w.b:
            raise Fail("%s: sectors [%d, %d) hold the tag of %r, outside "
                       "its range" % (what, s, s + n, w))
        found[v] = w
    t_in = max([t_sent] + [w.start for w in found.values()])
    # Writes in: completed before t_in, or found.  Those not in the
    # caller's cover_base are few: the ones around the cut.
    cover = cover_base.copy() if cover_base else Cover(nsec)
    extra = 0
    for w in itertools.islice(by_start, base_cut, None):
        if w.start > t_in:
            break
        if w.end < t_in or w.tag in found:
            cover.add_sorted(w)         # in send order: keeps the max
            extra += 1
    starts = {}
    m = cover.m
    for s, n, v in runs:
        mx = max(m[s:s + n])
        w = found.get(v)
        if mx < 0:
            continue            # no write is surely here: base or found
        if w is not None and w.end >= mx:
            continue
        if not starts:
            starts = {w.start: w for w in writes.values()}
        must = starts[mx]
        if w is None:
            raise Fail("%s: sectors [%d, %d) hold %s, but %r is in the "
                       "image (sent %.6f, the cut between %.6f and %.6f) "
                       "and covers them: a lost or torn write" %
                       (what, s, s + n, "zeroes" if v == 0 else
                        "the base's data %#x" % v, must, t_sent, t_sent,
                        t_reply))
        raise Fail("%s: sectors [%d, %d) hold %r, which completed before "
                   "%r started, and that one is in the image (the cut "
                   "between %.6f and %.6f): a lost or torn write" %
                   (what, s, s + n, w, must, t_sent, t_reply))
    nin = sum(1 for w in writes.values() if w.end < t_in) + \
        sum(1 for w in found.values() if w.end >= t_in)
    return nin, len(found), extra


def check_rollback(what, data, snap, writes, t_sent, t_reply):
    """The device after a rollback to the snapshot whose content is snap
    (sent at t_sent, replied at t_reply) and the round's writes."""
    nsec = len(data) // SECTOR
    runs = runs_of(data, what)
    post = {}                   # writes found that may be after the cut
    for s, n, v in runs:
        w = writes.get(v)
        if w is None or w.end < t_sent:
            continue            # must be the snapshot's: checked below
        if s < w.a or s + n > w.b:
            raise Fail("%s: sectors [%d, %d) hold the tag of %r, outside "
                       "its range" % (what, s, s + n, w))
        post[v] = w
    t_post = min([t_reply] + [w.end for w in post.values()])
    cover = Cover(nsec)
    nin = 0
    for w in sorted(writes.values(), key=lambda w: w.start):
        if w.start > t_post or w.tag in post:
            cover.add_sorted(w)
            nin += 1
    m = cover.m
    starts = {w.start: w for w in writes.values()}
    for s, n, v in runs:
        mx = max(m[s:s + n])
        w = post.get(v)
        if w is not None:
            if w.end >= mx:
                continue
            raise Fail("%s: sectors [%d, %d) hold %r, which completed "
                       "before %r started, which is after the rollback "
                       "(sent %.6f, reply %.6f)" %
                       (what, s, s + n, w, starts[mx], t_sent, t_reply))
        if mx >= 0:
            raise Fail("%s: sectors [%d, %d) hold %#x (%s), but %r is after "
                       "the rollback (sent %.6f, reply %.6f) and covers "
                       "them: lost, or torn by the rollback" %
                       (what, s, s + n, v,
                        "written before the rollback was sent"
                        if v in writes else "the snapshot's",
                        starts[mx], t_sent, t_reply))
        if not same(data, snap, s, s + n):
            raise Fail("%s: sectors [%d, %d) hold %#x, which is neither the "
                       "snapshot's data nor a write after the rollback "
                       "(sent %.6f, reply %.6f)" %
                       (what, s, s + n, v, t_sent, t_reply))
    return nin, len(post)


# --- the phases ----------------------------------------------------------

def phase_a(args, ctl, tmpdir, bufs):
    dev = args.device
    writers = Writers(args, 1, tmpdir)
    rng = random.Random(args.seed)
    kept = []                   # (name, t_sent, t_reply)
    pending = None              # to delete after the next snapshot
    taken = deleted = 0
    t_begin = now()
    t_end = t_begin + args.seconds
    i = 0
    try:
        while len(kept) < args.keep or now() < t_end:
            i += 1
            name = "%s@a%d" % (dev, i)
            _, t0, t1 = ctl.call("snapshot", {"device": dev, "name": name})
            taken += 1
            if pending:
                ctl.call("device_delete", {"name": pending})
                deleted += 1
                pending = None
            # Keep keep snapshots spread over the run.
            if len(kept) < args.keep * min(1, (now() - t_begin) /
                                           args.seconds):
                kept.append((name, t0, t1))
            elif rng.random() < 0.5:
                ctl.call("device_delete", {"name": name})
                deleted += 1
            else:
                pending = name
            time.sleep(rng.uniform(0.001, 0.004))
        if pending:
            ctl.call("device_delete", {"name": pending})
            deleted += 1
    finally:
        writes = writers.finish()
    t_stop = now()
    say("phase A: %d writes (%d MiB) by 2 connections, %d snapshots taken, "
        "%d deleted as they went, %d kept", len(writes),
        sum(w.b - w.a for w in writes.values()) * SECTOR // MiB, taken,
        deleted, len(kept))

    by_start = sorted(writes.values(), key=lambda w: w.start)
    cover = Cover(args.size // SECTOR)
    starts = [w.start for w in by_start]
    cut = 0
    nin = nfound = nextra = raced = 0
    for name, t0, t1 in kept:
        # The cover of the send-ordered prefix that completed before t0.
        while cut < len(by_start) and by_start[cut].end < t0:
            cover.add_sorted(by_start[cut])
            cut += 1
        data = read_image(args.socket, name, bufs[0])
        a, b, c = check_image("snapshot " + name, data, None, writes,
                              by_start, t0, t1, cover, cut)
        nin += a; nfound += b; nextra += c
        # Writes in flight while the snapshot was asked for.
        j = bisect_right(starts, t1)
        if any(w.end > t0 for w in by_start[max(j - 8, 0):j]):
            raced += 1
        ctl.call("device_delete", {"name": name})
    say("phase A: %d snapshots checked, %d with writes in flight: on "
        "average %d writes in each, tags of %d found, %d writes near the "
        "cut", len(kept), raced, nin // max(len(kept), 1),
        nfound // max(len(kept), 1), nextra // max(len(kept), 1))
    if raced < len(kept) // 4:
        raise Fail("only %d of %d snapshots were taken with writes in "
                   "flight: too few to prove anything" % (raced, len(kept)))
    data = read_image(args.socket, dev, bufs[1])
    check_image("device after phase A", data, None, writes, by_start,
                t_stop, now())
    say("phase A: the device matches the writes")
    return 1


def phase_b(args, ctl, tmpdir, bufs, ibase):
    dev = args.device
    rng = random.Random(args.seed + 1)
    inflight_total = 0
    for r in range(args.rounds):
        writers = Writers(args, 10 + 2 * r, tmpdir)
        try:
            time.sleep(rng.uniform(0.05, 0.2))
            name = "%s@b%d" % (dev, r)
            _, s0, s1 = ctl.call("snapshot", {"device": dev, "name": name})
            time.sleep(rng.uniform(0.1, 0.3))
            _, r0, r1 = ctl.call("rollback", {"device": dev,
                                               "snapshot": name})
            time.sleep(rng.uniform(0.1, 0.3))
        finally:
            writes = writers.finish()
        by_start = sorted(writes.values(), key=lambda w: w.start)
        base = bufs[ibase]
        isnap, idata = [i for i in range(3) if i != ibase]
        snap = read_image(args.socket, name, bufs[isnap])
        check_image("round %d: snapshot %s" % (r, name), snap, base, writes,
                    by_start, s0, s1)
        pre = [w for w in writes.values() if w.start < s1]
        if any(w.end >= r0 for w in pre):
            raise Fail("round %d: a write from before the snapshot was "
                       "still in flight at the rollback" % r)
        inflight = sum(1 for w in writes.values()
                       if w.start < r1 and w.end > r0)
        data = read_image(args.socket, dev, bufs[idata])
        nin, npost = check_rollback("round %d: device after the rollback to "
                                    "%s" % (r, name), data, snap, writes,
                                    r0, r1)
        ctl.call("device_delete", {"name": name})
        say("round %d: %d writes, %d in flight during the rollback, "
            "%d after it, %d of them found; snapshot and device check out",
            r, len(writes), inflight, nin, npost)
        ibase = idata
        inflight_total += inflight
    if args.rounds and not inflight_total:
        raise Fail("no rollback had writes in flight")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("socket")
    p.add_argument("control")
    p.add_argument("device")
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--keep", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    print("seed %d" % args.seed, flush=True)
    tmpdir = os.path.dirname(os.path.abspath(args.socket))
    h = connect(args.socket, args.device)
    args.size = h.get_size()
    if not h.can_multi_conn():
        print("note: the server does not advertise multi-conn")
    h.shutdown()
    ctl = Control(args.control)
    try:
        bufs = [bytearray(args.size) for _ in range(3)]
        ibase = phase_a(args, ctl, tmpdir, bufs)
        phase_b(args, ctl, tmpdir, bufs, ibase)
    except Fail as e:
        print("FAIL: %s (seed %d)" % (e, args.seed), flush=True)
        sys.exit(1)
    say("snaprace: all checks passed")


if __name__ == "__main__":
    main()
