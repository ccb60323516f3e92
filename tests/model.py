#!/usr/bin/python3
# memblock model test: hammer devices over many connections with random
# writes, write-zeroes and trims (plus reads, block status, cache, flush)
# (a trim gives back the whole pages of its range and leaves the partial
# ones at its ends as they are)
# while keeping an exact model of every byte, and check each byte read
# back against the model.
#
# Each device is cut into one region per worker; a worker owns its
# region, has its own connection (multi-conn) and keeps up to 4
# non-overlapping requests in flight at once, so the model stays exact
# while the server handles many requests in parallel.  Two or more
# devices are hammered at once: foreign data showing up in a device is a
# mismatch against its model.  At the end every byte of every device is
# read from a fresh connection and compared.
#
# Usage: model.py [--seconds S] [--workers N] [--seed N] URI...
# Exits 0 if every check passed; prints a summary line with the figures.

import argparse
import os
import random
import sys
import threading
import time

import nbd

MiB = 1 << 20
PAGE = 4096


def rand_len(rng):
    """Request length: mostly small, some large, up to 1 MiB."""
    r = rng.random()
    if r < 0.3:
        return rng.randint(1, 4 * PAGE)
    if r < 0.5:
        return rng.randint(1, 16) * PAGE
    if r < 0.8:
        return rng.randint(1, 256 * 1024)
    return rng.randint(256 * 1024, MiB)


def rand_data(rng, n):
    """Write payload: random, all zero, or random with zero pages in it."""
    kind = rng.random()
    if kind < 0.1:
        return bytes(n)
    return random_with_zeroes(rng, n, kind)


def random_with_zeroes(rng, n, kind):
    """Random bytes; for kind < 0.4 with zero runs punched in them."""
    buf = bytearray(rng.randbytes(n))
    if kind < 0.4:                       # punch zero runs in it
        for _ in range(rng.randint(1, 4)):
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 3 * PAGE))
            buf[a:b] = bytes(b - a)
    return bytes(buf)


def repeat_at(pattern, off, n):
    """n bytes of pattern repeated, in phase with device offset 0, so a
    device region holds the same bytes whichever request wrote them."""
    k = len(pattern)
    reps = pattern * ((n + off % k) // k + 1)
    return reps[off % k:off % k + n]


WORDS = (b"memblock ", b"nbd ", b"zstd ", b"lz4 ", b"sector ", b"page ",
         b"unit ", b"chunk ", b"the ", b"of ", b"\n")


def rand_compressible(rng, off, n):
    """Write payload for compressed stores (--compressible): a mix of
    every form a 16 KiB unit can take there.  Same-filled 8-byte words
    (a unit holding one word: the "same" form), short repeated patterns
    and text (zstd/lz4 pack them), random data (kept raw), zeroes, and
    random data with compressible or zero runs inside (units that
    compress in part or not enough)."""
    kind = rng.random()
    if kind < 0.08:
        return bytes(n)
    if kind < 0.25:                      # one 8-byte word, often 0xff..
        word = rng.choice([b"\xff" * 8, b"\x01" + bytes(7),
                           rng.randbytes(8)])
        return repeat_at(word, off, n)
    if kind < 0.40:                      # a short repeated pattern
        return repeat_at(rng.randbytes(rng.randint(1, 3000)), off, n)
    if kind < 0.55:                      # text-like
        out = b""
        while len(out) < n:
            out += b"".join(rng.choices(WORDS, k=n // 4 + 1))
        return out[:n]
    if kind < 0.75:                      # random with runs of a pattern
        buf = bytearray(rng.randbytes(n))
        for _ in range(rng.randint(1, 4)):
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 5 * PAGE))
            buf[a:b] = repeat_at(b"\xa5\x5a", a, b - a)
        return bytes(buf)
    return random_with_zeroes(rng, n, rng.random())


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = {}
        self.bytes_written = 0
        self.bytes_checked = 0
        self.failures = []

    def add(self, op, written=0, checked=0):
        with self.lock:
            self.ops[op] = self.ops.get(op, 0) + 1
            self.bytes_written += written
            self.bytes_checked += checked

    def fail(self, msg):
        with self.lock:
            self.failures.append(msg)
        print("FAIL:", msg, flush=True)


class Worker(threading.Thread):
    """Owns [lo, hi) of one device, with one connection of its own."""

    def __init__(self, name, uri, model, lo, hi, seed, deadline, stats,
                 compressible=False):
        super().__init__(name=name)
        self.uri, self.model, self.lo, self.hi = uri, model, lo, hi
        self.compressible = compressible
        self.rng = random.Random(seed)
        self.deadline, self.stats = deadline, stats

    def pick_ranges(self, k):
        """Up to k non-overlapping (offset, length) ranges in the region."""
        ranges = []
        for _ in range(k):
            n = min(rand_len(self.rng), self.hi - self.lo)
            off = self.rng.randrange(self.lo, self.hi - n + 1)
            if self.rng.random() < 0.4:        # page aligned
                off = max(self.lo, off - off % PAGE)
            elif self.rng.random() < 0.05:     # touch the region's end
                off = self.hi - n
            if all(off + n <= a or b <= off
                   for a, b in ((o, o + l) for o, l in ranges)):
                ranges.append((off, n))
        return ranges

    def check(self, what, off, got):
        want = self.model[off:off + len(got)]
        if got != want:
            i = next(i for i in range(len(got)) if got[i] != want[i])
            self.stats.fail("%s: %s at %d+%d: byte %d is %#x, model says %#x"
                            % (self.name, what, off, len(got), off + i,
                               got[i], want[i]))
            return False
        self.stats.add(what, checked=len(got))
        return True

    def check_extents(self, h, off, n):
        """Every extent reported as ZERO must read as zeroes in the model."""
        bad = []

        def cb(ctx, start, entries, err):
            if ctx != nbd.CONTEXT_BASE_ALLOCATION:
                return 0
            pos = start
            for i in range(0, len(entries), 2):
                length, flags = entries[i], entries[i + 1]
                if flags & nbd.STATE_ZERO:
                    a, b = max(pos, off), min(pos + length, off + n)
                    if a < b and any(self.model[a:b]):
                        bad.append((pos, length, flags))
                pos += length
            return 0

        h.block_status(n, off, cb)
        if bad:
            self.stats.fail("%s: extents %r claim zero over data" % (self.name, bad))
        else:
            self.stats.add("extents")

    def run(self):
        try:
            self.loop()
        except Exception as e:          # a request failed: report it
            self.stats.fail("%s: %s: %s" % (self.name, type(e).__name__, e))

    def loop(self):
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_uri(self.uri)
        rng = self.rng
        while time.monotonic() < self.deadline and not self.stats.failures:
            batch = []              # (cookie, op, off, n, data or buffer)
            for off, n in self.pick_ranges(rng.randint(1, 4)):
                r = rng.random()
                if r < 0.40:
                    if self.compressible:
                        data = rand_compressible(rng, off, n)
                    else:
                        data = rand_data(rng, n)
                    flags = nbd.CMD_FLAG_FUA if rng.random() < 0.2 else 0
                    c = h.aio_pwrite(data, off, flags=flags)
                    batch.append((c, "write", off, n, data))
                elif r < 0.55:
                    flags = rng.choice([0, nbd.CMD_FLAG_NO_HOLE,
                                        nbd.CMD_FLAG_FAST_ZERO, nbd.CMD_FLAG_FUA])
                    c = h.aio_zero(n, off, flags=flags)
                    batch.append((c, "zero", off, n, None))
                elif r < 0.70:
                    c = h.aio_trim(n, off)
                    batch.append((c, "trim", off, n, None))
                elif r < 0.72:
                    c = h.aio_cache(n, off)
                    batch.append((c, "cache", off, n, None))
                else:
                    buf = nbd.Buffer(n)
                    c = h.aio_pread(buf, off)
                    batch.append((c, "read", off, n, buf))
            while h.aio_in_flight() > 0:
                h.poll(-1)
            for c, op, off, n, data in batch:
                h.aio_command_completed(c)      # raises if it failed
            # Reads saw the model as it was: no batch range overlaps.
            for c, op, off, n, data in batch:
                if op == "read":
                    self.check("read", off, data.to_bytearray())
            for c, op, off, n, data in batch:
                if op == "write":
                    self.model[off:off + n] = data
                    self.stats.add("write", written=n)
                elif op == "zero":
                    self.model[off:off + n] = bytes(n)
                    self.stats.add(op)
                elif op == "trim":
                    # Advisory: whole pages go, the partial ones at its
                    # ends stay (the device's last partial page counts
                    # as whole).
                    a = -(-off // PAGE) * PAGE
                    b = off + n
                    if b != len(self.model):
                        b = b // PAGE * PAGE
                    if a < b:
                        self.model[a:b] = bytes(b - a)
                    self.stats.add(op)
                elif op == "cache":
                    self.stats.add(op)
            if rng.random() < 0.1:
                off, n = self.pick_ranges(1)[0]
                self.check_extents(h, off, n)
            if rng.random() < 0.02:
                h.flush()
        # Read the whole region back on this connection, too.
        for off in range(self.lo, self.hi, MiB):
            n = min(MiB, self.hi - off)
            self.check("final", off, h.pread(n, off))
        h.shutdown()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--workers", type=int, default=3, help="per device")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--compressible", action="store_true",
                    help="write data of every kind a compressed store "
                    "packs differently (same-filled, text, patterns)")
    ap.add_argument("uris", nargs="+")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print("model: seed %d (rerun with --seed %d)" % (seed, seed), flush=True)

    stats = Stats()
    models, workers = [], []
    deadline = time.monotonic() + args.seconds
    for d, uri in enumerate(args.uris):
        h = nbd.NBD()
        h.connect_uri(uri)
        size = h.get_size()
        if not h.can_multi_conn() or not h.can_trim() or not h.can_zero():
            sys.exit("FAIL: %s lacks multi-conn, trim or zero" % uri)
        # Start from the device's current contents.
        model = bytearray(size)
        for off in range(0, size, MiB):
            model[off:off + MiB] = h.pread(min(MiB, size - off), off)
        h.shutdown()
        models.append(model)
        step = size // args.workers
        for w in range(args.workers):
            lo = w * step
            hi = size if w == args.workers - 1 else lo + step
            workers.append(Worker("dev%d/w%d" % (d, w), uri, model, lo, hi,
                                  seed * 1000 + d * 100 + w, deadline, stats,
                                  args.compressible))
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    # Every byte of every device, from a fresh connection.
    for d, uri in enumerate(args.uris):
        h = nbd.NBD()
        h.connect_uri(uri)
        m = models[d]
        for off in range(0, len(m), MiB):
            got = h.pread(min(MiB, len(m) - off), off)
            if got != m[off:off + len(got)]:
                stats.fail("device %d: final read at %d differs from the model"
                           % (d, off))
                break
            stats.bytes_checked += len(got)
        h.shutdown()
    if len(models) > 1 and models[0] == models[1]:
        stats.fail("the two devices hold identical data: the model is idle")

    ops = sum(stats.ops.values())
    print("model: %d devices, %d connections, %d requests (%s), %d MiB written,"
          " %d MiB verified, %d failures"
          % (len(args.uris), len(workers), ops,
             ", ".join("%s %d" % kv for kv in sorted(stats.ops.items())),
             stats.bytes_written // MiB, stats.bytes_checked // MiB,
             len(stats.failures)))
    if stats.ops.get("write", 0) < 100 or stats.ops.get("read", 0) < 100:
        sys.exit("FAIL: too few requests ran to mean anything")
    sys.exit(1 if stats.failures else 0)


if __name__ == "__main__":
    main()
