#!/usr/bin/python3
# memblock power-cut checks over NBD, for tests/test-powercut.sh (see
# there for what each proves).
#
#   powercut.py semantics SOCK CTL DEVICE [--no-fill] [--memory]
#   powercut.py digest SOCK CTL DEVICE --seed N --unit U
#   powercut.py race SOCK CTL [--rounds N] [--seed N]
#   powercut.py race-armed SOCK CTL [--rounds N] [--seed N]
#
# SOCK is the NBD socket, CTL the control socket.  Exits 0 if every
# check passed, printing what it checked; 1 with "FAIL: ..." lines.

import argparse
import hashlib
import itertools
import json
import random
import socket
import struct
import sys
import threading
import time

import nbd

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096
SECTOR = 512

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL: " + msg, flush=True)
    return cond


def finish(summary):
    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print(summary)
    sys.exit(0)


class RpcError(Exception):
    def __init__(self, err):
        self.code = err.get("code")
        self.message = err.get("message")
        data = err.get("data")
        self.errno = data.get("errno") if isinstance(data, dict) else None
        super().__init__("%s (%s, %s)" % (self.message, self.code, self.errno))


class Ctl:
    """A JSON-RPC 2.0 client of the control socket (one line each way)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.rfile = self.sock.makefile("rb")
        self.next_id = 1
        self.lock = threading.Lock()

    def call(self, method, **params):
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            req = {"jsonrpc": "2.0", "id": rid, "method": method,
                   "params": params}
            self.sock.sendall(json.dumps(req).encode() + b"\n")
            msg = json.loads(self.rfile.readline())
        if msg.get("id") != rid:
            raise RuntimeError("reply %r to request %d" % (msg, rid))
        if "error" in msg:
            raise RpcError(msg["error"])
        return msg["result"]

    def status(self, dev):
        return self.call("power_cut_status", device=dev)

    def info(self, dev):
        for d in self.call("device_list"):
            if d["name"] == dev:
                return d
        raise RuntimeError("no device %s" % dev)


def connect(sock, export):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri("nbd+unix:///%s?socket=%s" % (export, sock))
    return h


def read_all(h):
    size = h.get_size()
    out = bytearray()
    off = 0
    while off < size:
        n = min(8 * MiB, size - off)
        out += h.pread(n, off)
        off += n
    return out


def rand_data(rng, n):
    return rng.randbytes(n)


def pages_of(off, n):
    return set(range(off // PAGE, (off + n + PAGE - 1) // PAGE))


def trim_pages(off, n):
    a = (off + PAGE - 1) // PAGE
    b = (off + n) // PAGE
    return set(range(a, b))


def expect_eio(fn, what):
    try:
        fn()
    except nbd.Error as e:
        return check(e.errno == "EIO",
                     "%s failed with %s, expected EIO" % (what, e))
    return check(False, "%s succeeded after the power cut, expected EIO"
                 % what)


# ---------------------------------------------------------------------
# semantics: exact expectations on one device, cut after cut.

class Sem:
    def __init__(self, args):
        self.a = args
        self.ctl = Ctl(args.ctl)
        self.dev = args.device
        self.rng = random.Random(args.seed)
        self.notes = []

    def conn(self):
        return connect(self.a.sock, self.dev)

    def fresh(self):
        """A new connection, flushed: (handle, durable contents)."""
        h = self.conn()
        h.flush()
        st = self.ctl.status(self.dev)
        check(st["unflushed_writes"] == 0 and st["unflushed_bytes"] == 0,
              "%s: unflushed counts %d/%d after a flush"
              % (self.dev, st["unflushed_writes"], st["unflushed_bytes"]))
        return h, read_all(h)

    def cut(self, **kw):
        return self.ctl.call("power_cut", device=self.dev, **kw)

    def after_cut(self, old, want, what):
        """Old connections get EIO; a new one reads want."""
        for h in old:
            expect_eio(lambda: h.pread(PAGE, 0), what + ": read on an old "
                       "connection")
        h = self.conn()
        got = read_all(h)
        if want is not None:
            check(got == want, "%s: the device after the cut is not what "
                  "was expected (%s)" % (what, first_diff(got, want)))
        return h, got

    def ops(self, h, model, durable, n, fua_every=0, region=None,
            allow=("write", "zero", "trim")):
        """n random write-type ops on h: apply them to model (the view
        through the cache) and FUA ones to durable too.  Returns the
        list of (kind, off, len, fua) and the cache pages they own."""
        size = len(model)
        lo, hi = region or (0, size)
        done, pages = [], set()
        for i in range(n):
            kind = self.rng.choice(allow)
            fua = fua_every and i % fua_every == fua_every - 1
            if kind == "trim":
                # Whole pages, so that every unit it covers changes.
                length = self.rng.randrange(1, 9) * PAGE
                off = self.rng.randrange(lo // PAGE,
                                         (hi - length) // PAGE + 1) * PAGE
            else:
                length = self.rng.randrange(1, 65) * SECTOR
                off = self.rng.randrange(lo // SECTOR,
                                         (hi - length) // SECTOR + 1) * SECTOR
            flags = nbd.CMD_FLAG_FUA if fua else 0
            if kind == "write":
                data = rand_data(self.rng, length)
                h.pwrite(data, off, flags)
                model[off:off + length] = data
                if fua:
                    durable[off:off + length] = data
                pages |= pages_of(off, length)
            elif kind == "zero":
                h.zero(length, off, flags)
                model[off:off + length] = bytes(length)
                if fua:
                    durable[off:off + length] = bytes(length)
                pages |= pages_of(off, length)
            else:
                h.trim(length, off, flags)
                model[off:off + length] = bytes(length)
                if fua:
                    durable[off:off + length] = bytes(length)
                pages |= trim_pages(off, length)
            done.append((kind, off, length, bool(fua)))
        return done, pages

    def run(self):
        h = self.conn()
        size = h.get_size()
        info = self.ctl.info(self.dev)
        check(info["volatile"] is not None,
              "%s: device_list says it is not volatile" % self.dev)
        if self.a.fill:
            # Durable data everywhere: every unit an op touches changes.
            h.pwrite(rand_data(self.rng, size), 0)
        h.flush()
        h.shutdown()

        self.keep_none()
        self.keep_all()
        for unit in (512, 4096):
            self.keep_random(unit)
        self.fua_over_unflushed()
        self.armed("none")
        self.armed("all")
        self.old_connections()
        if self.a.memory:
            self.memory()
        st = self.ctl.status(self.dev)
        finish("%s: semantics checked over %d cuts: %s"
               % (self.dev, st["cuts"], "; ".join(self.notes)))

    def keep_none(self):
        h, durable = self.fresh()
        size = len(durable)
        st0 = self.ctl.status(self.dev)
        model = bytearray(durable)
        # Flushed writes, then a flush; then unflushed ones, FUA mixed in.
        flushed, _ = self.ops(h, model, durable, 6)
        h.flush()
        durable[:] = model
        done, pages = self.ops(h, model, durable, 24, fua_every=4)
        check(read_all(h) == model, "keep=none: the device does not read "
              "back what was written before the cut")
        unfl = [o for o in done if not o[3]]
        st = self.ctl.status(self.dev)
        check(st["unflushed_writes"] == len(unfl),
              "keep=none: unflushed_writes %d, expected %d"
              % (st["unflushed_writes"], len(unfl)))
        check(st["unflushed_bytes"] == sum(o[2] for o in unfl),
              "keep=none: unflushed_bytes %d, expected %d"
              % (st["unflushed_bytes"], sum(o[2] for o in unfl)))
        check(st["writes"] - st0["writes"] == len(flushed) + len(done),
              "keep=none: writes went up by %d, expected %d"
              % (st["writes"] - st0["writes"], len(flushed) + len(done)))
        check(st["flushes"] - st0["flushes"] == 1,
              "keep=none: flushes went up by %d, expected 1"
              % (st["flushes"] - st0["flushes"]))
        check(st["cuts"] == st0["cuts"], "keep=none: cuts changed by itself")
        check(model != durable, "keep=none: nothing unflushed to lose")
        r = self.cut(keep="none")
        want = {"writes_kept": 0, "writes_partial": 0,
                "writes_lost": len(unfl), "writes_untracked": 0,
                "bytes_kept": 0, "bytes_lost": len(pages) * PAGE}
        check(r == want, "keep=none: power_cut returned %r, expected %r"
              % (r, want))
        st = self.ctl.status(self.dev)
        check(st["cuts"] == st0["cuts"] + 1 and st["last_cut"] == want and
              st["unflushed_writes"] == 0 and st["unflushed_bytes"] == 0,
              "keep=none: power_cut_status after the cut: %r" % st)
        h2, _ = self.after_cut([h], bytes(durable), "keep=none")
        h2.shutdown()
        h.shutdown()
        self.notes.append("keep=none lost %d unflushed writes, kept %d "
                          "flushed and %d FUA" % (len(unfl), len(flushed),
                                                  len(done) - len(unfl)))

    def keep_all(self):
        h, durable = self.fresh()
        model = bytearray(durable)
        done, pages = self.ops(h, model, durable, 24, fua_every=5)
        unfl = [o for o in done if not o[3]]
        r = self.cut(keep="all")
        want = {"writes_kept": len(unfl), "writes_partial": 0,
                "writes_lost": 0, "writes_untracked": 0,
                "bytes_kept": len(pages) * PAGE, "bytes_lost": 0}
        check(r == want, "keep=all: power_cut returned %r, expected %r"
              % (r, want))
        h2, _ = self.after_cut([h], bytes(model), "keep=all")
        # Still volatile: a write now is unflushed again and a cut loses it.
        h2.pwrite(b"\x5a" * PAGE, 0)
        st = self.ctl.status(self.dev)
        check(st["unflushed_writes"] == 1,
              "after keep=all: a new write is not unflushed (%r)" % st)
        r = self.cut(keep="none")
        check(r["writes_lost"] == 1 and r["bytes_lost"] == PAGE,
              "after keep=all: a second cut returned %r" % r)
        h3, _ = self.after_cut([h2], bytes(model), "second cut")
        h3.shutdown()
        h.shutdown()
        self.notes.append("keep=all kept %d" % len(unfl))

    def keep_random(self, unit):
        h, durable = self.fresh()
        size = len(durable)
        # Durable data everywhere (no zeroes left by the cuts before), so
        # that every unit an op touches reads unlike its durable value.
        durable = bytearray(rand_data(self.rng, size))
        h.pwrite(bytes(durable), 0)
        h.flush()
        model = bytearray(durable)
        # Unflushed writes, zeroes and trims in the lower 3/4; FUA writes
        # (their own pages) only in the top quarter, so that every unit of
        # an unflushed op has a durable value unlike the cache's.
        q = size * 3 // 4
        done, pages = self.ops(h, model, durable, 60, region=(0, q))
        fdone, fpages = self.ops(h, model, durable, 8, fua_every=1,
                                 region=(q, size), allow=("write",))
        seed = self.rng.randrange(1, 1 << 62)
        r = self.cut(keep="random", seed=seed, unit=unit)
        h2, got = self.after_cut([h], None, "keep=random")
        kept = lost = 0
        decided = {}
        bad = 0
        for u in range(size // unit):
            a, b = u * unit, (u + 1) * unit
            g = got[a:b]
            if model[a:b] == durable[a:b]:
                bad += not check(g == model[a:b] or bad >= 5,
                                 "keep=random unit=%d: unit %d holds neither "
                                 "its durable nor its cached value" % (unit, u))
                continue
            if g == model[a:b]:
                decided[u] = True
                kept += 1
            elif g == durable[a:b]:
                decided[u] = False
                lost += 1
            else:
                bad += 1
                check(bad > 5, "keep=random unit=%d: unit %d (offset %d) is "
                      "neither its durable value nor what the cache held (%s)"
                      % (unit, u, a, first_diff(g, model[a:b])))
        check(kept > 0 and lost > 0, "keep=random unit=%d: %d units kept, %d "
              "lost: expected some of each" % (unit, kept, lost))
        if unit == 512:
            per = PAGE // unit
            mixed = sum(1 for p in range(size // PAGE)
                        if len({decided.get(p * per + i)
                                for i in range(per)} - {None}) == 2)
            check(mixed > 0, "keep=random unit=512: no page kept in part")
        # The classification of the logged (unflushed) ops.
        cls = {"writes_kept": 0, "writes_partial": 0, "writes_lost": 0}
        for kind, off, length, fua in done:
            us = range(off // unit, (off + length + unit - 1) // unit)
            ks = {decided.get(u) for u in us}
            if None in ks:
                check(False, "keep=random: op %s at %d+%d has a unit whose "
                      "fate is unknown" % (kind, off, length))
            elif ks == {True}:
                cls["writes_kept"] += 1
            elif ks == {False}:
                cls["writes_lost"] += 1
            else:
                cls["writes_partial"] += 1
        for k, v in cls.items():
            check(r[k] == v, "keep=random unit=%d: power_cut says %s %d, the "
                  "device shows %d" % (unit, k, r[k], v))
        total = len(pages | fpages) * PAGE
        check(r["bytes_kept"] + r["bytes_lost"] == total,
              "keep=random: bytes kept %d + lost %d, expected %d in all"
              % (r["bytes_kept"], r["bytes_lost"], total))
        check(r["bytes_kept"] >= kept * unit and
              r["bytes_lost"] >= lost * unit,
              "keep=random: bytes kept/lost %d/%d below the %d/%d units seen"
              % (r["bytes_kept"], r["bytes_lost"], kept, lost))
        h2.shutdown()
        h.shutdown()
        self.notes.append("keep=random unit=%d: %d units kept, %d lost, "
                          "writes %d/%d/%d kept/partial/lost"
                          % (unit, kept, lost, cls["writes_kept"],
                             cls["writes_partial"], cls["writes_lost"]))

    def fua_over_unflushed(self):
        """FUA data inside unflushed data survives any cut; around it the
        unflushed data goes with keep=none."""
        for keep in ("none", "random"):
            h, durable = self.fresh()
            model = bytearray(durable)
            off = 16 * PAGE
            big = rand_data(self.rng, 64 * KiB)
            h.pwrite(big, off)
            model[off:off + len(big)] = big
            fua = []
            # 512 bytes inside a page, a page, and 3 pages unaligned.
            for fo, fl in ((off + 1536, 512), (off + 5 * PAGE, PAGE),
                           (off + 9 * PAGE + 512, 3 * PAGE)):
                d = rand_data(self.rng, fl)
                h.pwrite(d, fo, nbd.CMD_FLAG_FUA)
                model[fo:fo + fl] = d
                durable[fo:fo + fl] = d
                fua.append((fo, fl))
            h.zero(PAGE, off + 20 * PAGE, nbd.CMD_FLAG_FUA)
            model[off + 20 * PAGE:off + 21 * PAGE] = bytes(PAGE)
            durable[off + 20 * PAGE:off + 21 * PAGE] = bytes(PAGE)
            fua.append((off + 20 * PAGE, PAGE))
            kw = {"keep": keep}
            if keep == "random":
                kw.update(seed=self.rng.randrange(1 << 62), unit=512)
            self.cut(**kw)
            if keep == "none":
                h2, _ = self.after_cut([h], bytes(durable), "FUA, keep=none")
            else:
                h2 = self.conn()
                got = read_all(h2)
                for fo, fl in fua:
                    check(got[fo:fo + fl] == durable[fo:fo + fl],
                          "FUA, keep=random: the FUA write at %d+%d is lost"
                          % (fo, fl))
                for u in range(len(got) // SECTOR):
                    a, b = u * SECTOR, (u + 1) * SECTOR
                    if got[a:b] not in (durable[a:b], model[a:b]):
                        check(False, "FUA, keep=random: unit %d is neither "
                              "durable nor cached" % u)
                        break
            h2.shutdown()
            h.shutdown()
        self.notes.append("FUA inside unflushed data survives")

    def armed(self, keep):
        h, durable = self.fresh()
        st0 = self.ctl.status(self.dev)
        model = bytearray(durable)
        r = self.cut(keep=keep, after_writes=5)
        check(r == {"armed": True, "after_writes": 5},
              "after_writes=5: power_cut returned %r" % r)
        st = self.ctl.status(self.dev)
        check(st["armed"] is True and st["armed_after_writes"] == 5 and
              st["armed_keep"] == keep,
              "after_writes=5 keep=%s: status %r" % (keep, st))
        d1 = rand_data(self.rng, 3 * PAGE)
        d2 = rand_data(self.rng, PAGE + 512)
        h.pwrite(d1, 0)
        model[0:3 * PAGE] = d1
        h.pwrite(d2, 10 * PAGE + 512)
        model[10 * PAGE + 512:11 * PAGE + 1024] = d2
        st = self.ctl.status(self.dev)
        check(st["armed"] is True and st["armed_after_writes"] == 3,
              "after 2 writes of 5: status %r" % st)
        if keep == "none":
            h.flush()               # a flush is not a write
            durable[:] = model
        d3 = rand_data(self.rng, PAGE)
        h.pwrite(d3, 20 * PAGE, nbd.CMD_FLAG_FUA)
        model[20 * PAGE:21 * PAGE] = d3
        durable[20 * PAGE:21 * PAGE] = d3
        h.zero(2 * PAGE, 30 * PAGE)
        model[30 * PAGE:32 * PAGE] = bytes(2 * PAGE)
        check(self.ctl.status(self.dev)["cuts"] == st0["cuts"],
              "after_writes=5: cut before the 5th write")
        d5 = rand_data(self.rng, 2 * PAGE)
        try:
            h.pwrite(d5, 40 * PAGE)     # the 5th: completes, then the cut
            model[40 * PAGE:42 * PAGE] = d5
        except nbd.Error as e:
            check(False, "after_writes=5: the 5th write failed: %s" % e)
        st = self.ctl.status(self.dev)
        check(st["cuts"] == st0["cuts"] + 1 and st["armed"] is False,
              "after_writes=5: no cut after the 5th write (%r)" % st)
        expect_eio(lambda: h.pwrite(b"x" * 512, 50 * PAGE),
                   "after_writes=5: the 6th write")
        want = durable if keep == "none" else model
        h2, _ = self.after_cut([h], bytes(want), "after_writes=5 keep=%s"
                               % keep)
        h2.shutdown()
        h.shutdown()
        self.notes.append("after_writes=5 keep=%s" % keep)

    def old_connections(self):
        h, durable = self.fresh()
        idle = self.conn()
        h.pwrite(b"\x11" * PAGE, 0)
        self.cut(keep="none")
        for c, name in ((h, "busy"), (idle, "idle")):
            w = "an old %s connection's" % name
            expect_eio(lambda: c.pread(PAGE, 0), w + " read")
            expect_eio(lambda: c.pwrite(b"y" * PAGE, PAGE), w + " write")
            expect_eio(lambda: c.pwrite(b"y" * PAGE, PAGE, nbd.CMD_FLAG_FUA),
                       w + " FUA write")
            expect_eio(lambda: c.zero(PAGE, 0), w + " write zeroes")
            expect_eio(lambda: c.trim(PAGE, 0), w + " trim")
            expect_eio(lambda: c.flush(), w + " flush")
            expect_eio(lambda: c.block_status(PAGE, 0,
                                              lambda *a: 0), w +
                       " block status")
            expect_eio(lambda: c.cache(PAGE, 0), w + " cache")
        h2 = self.conn()
        check(read_all(h2) == durable, "after a cut: the new connection does "
              "not read the durable state")
        h2.pwrite(b"\x22" * PAGE, 0)
        check(h2.pread(PAGE, 0) == b"\x22" * PAGE,
              "after a cut: a new connection cannot write")
        check(self.ctl.status(self.dev)["unflushed_writes"] == 1,
              "after a cut: the device is no longer volatile")
        seen = []
        h2.block_status(PAGE, 0, lambda meta, off, ents, err:
                        seen.append(ents))
        check(seen != [], "after a cut: no block status on a new connection")
        h2.flush()
        for c in (h, idle, h2):
            c.shutdown()
        self.notes.append("old connections get EIO for every request")

    def memory(self):
        """Spare pages (a 2 MiB raw device keeps 512 KiB unused at most):
        a flush keeps what the cache held, a write over it takes nothing
        more, unused ones stay within the budget, a flush past it empties
        the cache whole, a cut lets all go; allocated is always the data
        plus the spares."""
        w = 256 * KiB
        h = self.conn()
        self.cut(keep="all")        # no spares left from earlier checks
        h.shutdown()
        h, durable = self.fresh()

        def info(what, spare):
            i = self.ctl.info(self.dev)
            got = i["volatile"]["spare_bytes"]
            check(got == spare, "memory: %s: %d spare bytes, expected %d"
                  % (what, got, spare))
            check(i["allocated"] == i["data"] + spare,
                  "memory: %s: %d bytes allocated for %d of data and %d "
                  "spare" % (what, i["allocated"], i["data"], spare))
            return i
        info("a new connection after a cut", 0)
        h.pwrite(rand_data(self.rng, w), 0)
        h.flush()
        one = info("after a flush", w)
        h.pwrite(rand_data(self.rng, w), 0)
        two = info("rewritten, unflushed", 0)
        check(two["allocated"] == one["allocated"],
              "memory: rewriting spare pages took %d bytes more"
              % (two["allocated"] - one["allocated"]))
        h.flush()
        info("flushed again", w)
        h.flush()
        info("a flush with nothing written (within the budget)", w)
        h.pwrite(rand_data(self.rng, 2 * w), 2 * w)  # unflushed: a copy
        five = info("new pages, unflushed", w)
        check(five["allocated"] >= one["allocated"] + 2 * w,
              "memory: an unflushed 512 KiB over flushed data takes %d "
              "bytes" % (five["allocated"] - one["allocated"]))
        h.flush()                   # 768 KiB would pass the budget
        info("a flush past the budget (the cache emptied whole)", 0)
        self.cut(keep="none")
        six = info("after a cut", 0)
        h.shutdown()
        self.notes.append("memory: a flush keeps the cache's pages as "
                          "spares, a write over them takes nothing more, "
                          "unused ones stay within the budget, a flush past "
                          "it and a cut let all go (%d bytes left)"
                          % six["allocated"])


def first_diff(a, b):
    if a is None or b is None:
        return "nothing to compare"
    if len(a) != len(b):
        return "sizes %d and %d" % (len(a), len(b))
    for i in range(0, len(a), SECTOR):
        if a[i:i + SECTOR] != b[i:i + SECTOR]:
            n = sum(1 for j in range(0, len(a), SECTOR)
                    if a[j:j + SECTOR] != b[j:j + SECTOR])
            return "first differing sector at %d, %d sectors differ" % (i, n)
    return "same"


# ---------------------------------------------------------------------
# digest: a fixed workload and a keep=random cut; print the state's hash.

def digest(args):
    ctl = Ctl(args.ctl)
    rng = random.Random(12345)          # the workload: always the same
    h = connect(args.sock, args.device)
    size = h.get_size()
    h.pwrite(rand_data(rng, size), 0)
    h.flush()
    for i in range(200):
        n = rng.randrange(1, 129) * SECTOR
        off = rng.randrange(0, (size - n) // SECTOR + 1) * SECTOR
        if i % 10 == 9:
            h.zero(n, off)
        elif i % 10 == 4:
            h.trim(n, off)
        else:
            h.pwrite(rand_data(rng, n), off)
        if i == 100:
            h.flush()
    r = ctl.call("power_cut", device=args.device, keep="random",
                 seed=args.seed, unit=args.unit)
    h.shutdown()
    h = connect(args.sock, args.device)
    data = read_all(h)
    print("%s %s kept=%d partial=%d lost=%d"
          % (hashlib.sha256(data).hexdigest(), args.device, r["writes_kept"],
             r["writes_partial"], r["writes_lost"]))


# ---------------------------------------------------------------------
# race: two connections write tagged requests, flush and FUA, while the
# control socket cuts the power at a random moment.

MAGIC = 0x5043555400000000        # "PCUT"


def tag_block(wid):
    return struct.pack("<QQ", MAGIC | wid, ~wid & ((1 << 64) - 1)) * 32


def parse_unit(b):
    """The write id a 512-byte unit is tagged with, 0 for zeroes, -1 for
    anything else."""
    if b == bytes(SECTOR):
        return 0
    m, inv = struct.unpack_from("<QQ", b)
    wid = m & 0xffffffff
    if m & ~0xffffffff != MAGIC or inv != ~wid & ((1 << 64) - 1) or \
       b != tag_block(wid)[:SECTOR]:
        return -1
    return wid


class Req:
    __slots__ = ("wid", "kind", "off", "len", "fua", "issue", "done", "ok",
                 "err", "buf")


def race_round(args, ctl, rnd, dev, armed):
    size = 16 * MiB
    ctl.call("device_create", name=dev, size=size, volatile=True)
    clock = itertools.count(1)
    ids = itertools.count(1)
    lock = threading.Lock()
    reqs = []
    stop = threading.Event()
    cut_done = [None]
    errors = []
    depth = 4

    def worker(h, seed):
        rng = random.Random(seed)
        inflight = {}
        slot_rng = rng
        try:
            while True:
                while not stop.is_set() and len(inflight) < depth:
                    r = Req()
                    r.ok = None
                    r.err = None
                    if not armed and rng.random() < 0.12:
                        r.kind = "flush"
                        r.wid = 0
                        r.issue = next(clock)
                        c = h.aio_flush()
                    else:
                        r.kind = "write"
                        with lock:
                            r.wid = next(ids)
                        if armed:
                            # Each write its own 64 KiB slot: no overlap.
                            r.len = rng.randrange(1, 129) * SECTOR
                            r.off = (r.wid - 1) * 64 * KiB
                            if r.off + r.len > size:
                                stop.set()
                                break
                        else:
                            r.len = min(size, int(4 * KiB * 2 ** (
                                rng.random() * 8)) // SECTOR * SECTOR)
                            r.off = rng.randrange(
                                0, (size - r.len) // SECTOR + 1) * SECTOR
                        r.fua = not armed and rng.random() < 0.15
                        data = tag_block(r.wid) * (r.len // SECTOR)
                        r.buf = nbd.Buffer.from_bytearray(bytearray(data))
                        r.issue = next(clock)
                        c = h.aio_pwrite(r.buf, r.off,
                                         flags=nbd.CMD_FLAG_FUA if r.fua
                                         else 0)
                    with lock:
                        reqs.append(r)
                    inflight[c] = r
                if not inflight:
                    return
                h.poll(-1)
                for c in list(inflight):
                    r = inflight[c]
                    try:
                        fin = h.aio_command_completed(c)
                    except nbd.Error as e:
                        r.done = next(clock)
                        r.ok = False
                        r.err = e.errno
                        r.buf = None
                        del inflight[c]
                        continue
                    if fin:
                        r.done = next(clock)
                        r.ok = True
                        r.buf = None
                        del inflight[c]
        except Exception as e:          # noqa: reported below
            errors.append(repr(e))
            stop.set()

    a = connect(args.sock, dev)
    b = connect(args.sock, dev)
    rng = random.Random("%d-%d-%s" % (args.seed, rnd, armed))
    cut_seed = rng.randrange(1, 1 << 62)
    unit = rng.choice((512, 4096))
    after = rng.randrange(20, 120) if armed else 0
    if armed:
        r = ctl.call("power_cut", device=dev, keep="all", after_writes=after)
        check(r.get("armed") is True, "armed: power_cut returned %r" % r)
    threads = [threading.Thread(target=worker, args=(h, rng.random()))
               for h in (a, b)]
    for t in threads:
        t.start()
    if armed:
        deadline = time.monotonic() + 20
        while ctl.status(dev)["cuts"] == 0 and time.monotonic() < deadline \
                and not stop.is_set():
            time.sleep(0.002)
        cut_done[0] = next(clock)
        result = ctl.status(dev)["last_cut"]
    else:
        time.sleep(rng.uniform(0.05, 0.6))
        cut_issue = next(clock)
        result = ctl.call("power_cut", device=dev, keep="random",
                          seed=cut_seed, unit=unit)
        cut_done[0] = next(clock)
    time.sleep(0.1)                     # requests after the cut: EIO
    stop.set()
    for t in threads:
        t.join(60)
    check(not errors, "race round %d: a worker failed: %s" % (rnd, errors))
    for h in (a, b):
        h.shutdown()
    h = connect(args.sock, dev)
    got = read_all(h)
    h.shutdown()
    # The server notices the disconnections a moment later.
    for i in range(100):
        try:
            ctl.call("device_delete", name=dev)
            break
        except RpcError as e:
            if e.errno != "EBUSY" or i == 99:
                raise
            time.sleep(0.05)

    writes = {r.wid: r for r in reqs if r.kind == "write"}
    flushes = [r for r in reqs if r.kind == "flush"]
    bad = 0
    for r in reqs:
        if r.ok is None:
            bad += 1
            check(bad > 3, "round %d: a request never completed" % rnd)
        elif not r.ok:
            bad += not check(r.err == "EIO" or bad >= 3,
                             "round %d: a %s failed with errno %s, not EIO"
                             % (rnd, r.kind, r.err))
        if r.issue > cut_done[0] and r.ok:
            bad += not check(bad >= 3, "round %d: a %s issued after the cut "
                             "succeeded" % (rnd, r.kind))
    okw = [w for w in writes.values() if w.ok]
    failed = [w for w in writes.values() if w.ok is False]
    check(okw and failed, "round %d: %d writes succeeded and %d failed: the "
          "cut did not land mid-workload" % (rnd, len(okw), len(failed)))
    last_flush = max([f.issue for f in flushes if f.ok], default=0)

    def durable(w):
        return w.ok and (w.fua or w.done < last_flush)

    stats = dict(units=0, durable_units=0, kept_unflushed=0, lost=0)
    if armed:
        # keep=all: every write that succeeded is there, whole; every one
        # that failed left nothing.
        n_ok = len(okw)
        check(after <= n_ok <= after + 2 * depth - 1,
              "armed round %d: after_writes=%d but %d writes succeeded (at "
              "most %d in flight)" % (rnd, after, n_ok, 2 * depth))
        for w in writes.values():
            seg = got[w.off:w.off + w.len]
            if w.ok:
                if not check(seg == tag_block(w.wid) * (w.len // SECTOR),
                             "armed round %d: write %d (succeeded) is not "
                             "all there after a keep=all cut" % (rnd, w.wid)):
                    break
            elif not check(seg == bytes(w.len), "armed round %d: write %d "
                           "failed with EIO but left data" % (rnd, w.wid)):
                break
        stats["units"] = len(writes)
        print("armed round %d: after_writes=%d, %d writes succeeded, %d got "
              "EIO; cut kept %d writes" % (rnd, after, n_ok, len(failed),
                                          result["writes_kept"]), flush=True)
        return stats

    cover = [[] for _ in range(size // SECTOR)]
    for w in writes.values():
        for u in range(w.off // SECTOR, (w.off + w.len) // SECTOR):
            cover[u].append(w)
    bad = 0
    for u in range(size // SECTOR):
        v = parse_unit(bytes(got[u * SECTOR:(u + 1) * SECTOR]))
        ds = [d for d in cover[u] if durable(d)]
        stats["units"] += 1
        if ds:
            stats["durable_units"] += 1
        ok_here = [w for w in cover[u] if w.ok]
        latest = max(ok_here, key=lambda w: w.done) if ok_here else None
        if v == -1:
            msg = "holds something no write wrote"
        elif v == 0:
            msg = ("reads zeroes though write %d (durable) covers it"
                   % ds[0].wid) if ds else None
        elif v not in writes:
            msg = "holds the tag of write %d, which never started" % v
        else:
            w = writes[v]
            if not (w.off <= u * SECTOR < w.off + w.len):
                msg = "holds the tag of write %d, which does not cover it" % v
            elif not w.ok:
                msg = "holds write %d, which failed with EIO" % v
            else:
                over = [d for d in ds if w.done < d.issue]
                msg = ("holds write %d, though durable write %d (%s) was "
                       "issued after it completed"
                       % (v, over[0].wid, "FUA" if over[0].fua else
                          "flushed")) if over else None
                if msg is None and not durable(w):
                    stats["kept_unflushed"] += 1
        if msg is None and latest is not None and v != latest.wid:
            stats["lost"] += 1
        if msg is not None:
            bad += 1
            check(bad > 5, "race round %d: sector %d %s" % (rnd, u, msg))
    print("race round %d: cut keep=random unit=%d seed=%d: %d writes ok "
          "(%d FUA), %d EIO, %d flushes ok; %d sectors under a durable write,"
          " %d hold unflushed data kept, %d lost their latest write; cut "
          "kept %d writes (%d in part), lost %d"
          % (rnd, unit, cut_seed, len(okw), sum(w.fua for w in okw),
             len(failed), sum(1 for f in flushes if f.ok),
             stats["durable_units"], stats["kept_unflushed"], stats["lost"],
             result["writes_kept"], result["writes_partial"],
             result["writes_lost"]), flush=True)
    stats["cut_kept"] = result["writes_kept"] + result["writes_partial"]
    stats["cut_lost"] = result["writes_partial"] + result["writes_lost"]
    return stats


def race(args, armed):
    ctl = Ctl(args.ctl)
    total = {}
    for rnd in range(1, args.rounds + 1):
        s = race_round(args, ctl, rnd, "race%d%s" % (rnd, "a" * armed), armed)
        for k, v in s.items():
            total[k] = total.get(k, 0) + v
    if not armed:
        # The cuts must have caught writes in flight: some durable data,
        # some unflushed writes kept and some lost (the server's counts).
        check(total["durable_units"] > 0 and total["cut_kept"] > 0 and
              total["cut_lost"] > 0,
              "race: the cuts never caught durable, kept and lost data "
              "together (%r)" % total)
    finish("%s: %d rounds, seed %d: %r" % ("race-armed" if armed else "race",
                                          args.rounds, args.seed, total))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("semantics", "digest", "race",
                                    "race-armed"))
    p.add_argument("sock")
    p.add_argument("ctl")
    p.add_argument("device", nargs="?")
    p.add_argument("--no-fill", dest="fill", action="store_false")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--unit", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    if args.mode == "semantics":
        print("%s: seed %d" % (args.device, args.seed), flush=True)
        Sem(args).run()
    elif args.mode == "digest":
        digest(args)
    else:
        race(args, args.mode == "race-armed")


if __name__ == "__main__":
    main()
