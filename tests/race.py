#!/usr/bin/python3
# memblock race test: a big write into pages that already hold data,
# racing trims / write-zeroes of some of those pages from a second
# connection.  Run by tests/test-race.sh; see there for what it proves.
#
#   race.py stability URI [--rounds N] [--seconds S] [--seed N] ...
#   race.py memcap URI PID MAX_MEMORY SLACK [--seconds S] [--seed N] ...
#
# PID is the server's process id, MAX_MEMORY its max-memory and SLACK
# what it may hold beyond that (bytes); see --help for the rest.
#
# Exits 0 if every check passed; prints a summary line with the figures.

import argparse
import errno
import os
import random
import sys
import threading
import time

import nbd

KiB = 1 << 10
MiB = 1 << 20
PAGE = 4096
HEAD = 512                      # the small write into a checked page


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def pattern(rng, n):
    """n bytes of a random 4 KiB block repeated, no zero byte in it."""
    block = bytes(b % 255 + 1 for b in rng.randbytes(PAGE))
    return block * (n // PAGE)


def racing_write(a, data, off, sent):
    """Write data at off on connection a; set the event sent as soon as
    the request has left (the server is then about to copy it in)."""
    c = a.aio_pwrite(data, off)
    while not a.aio_is_ready():
        a.poll(-1)
    sent.set()
    while not a.aio_command_completed(c):
        a.poll(-1)


def stability(args):
    """(a) After a big write raced by trims/zeroes of some of its pages,
    each such page must read the same way before and after a 512-byte
    write into its first 512 bytes: its other 3.5 KiB are either the big
    write's data or zeroes, and stay what the first read said."""
    rng = random.Random(args.seed)
    a, b = connect(args.uri), connect(args.uri)
    size = a.get_size()
    span = args.write_mib * MiB
    if span > size:
        sys.exit("FAIL: device of %d bytes is smaller than the write" % size)
    # The range starts out holding data, so the big write copies whole
    # runs of set pages (the lock-free path the race is about).
    a.pwrite(pattern(rng, span), 0)
    deadline = time.monotonic() + args.seconds
    rounds = failed = bad_pages = torn = trims = zeroes = hits_data = 0
    changed = {"trim": 0, "zero": 0}        # pages that changed their mind
    failures = []
    while rounds < args.rounds and time.monotonic() < deadline:
        data = pattern(rng, span)
        pages = rng.sample(range(span // PAGE), args.pages)
        use_zero = rng.random() < 0.3
        # Mostly at once; in one round of 4 a little later, so that
        # some trims land late in the copy or after it.
        delay = 0
        if rng.random() < 0.25:
            delay = rng.random() * args.max_delay_ms / 1000
        sent = threading.Event()
        err = []

        def writer():
            try:
                racing_write(a, data, 0, sent)
            except nbd.Error as e:
                err.append(e)
                sent.set()

        # A sends the big write; once it has left, B trims (or zeroes)
        # each page once, one after the other, so that the trims land
        # while the server copies the write in.
        t = threading.Thread(target=writer)
        t.start()
        sent.wait()
        if delay:
            time.sleep(delay)
        for p in pages:
            if use_zero:
                b.zero(PAGE, p * PAGE)
            else:
                b.trim(PAGE, p * PAGE)
        t.join()
        if err:
            sys.exit("FAIL: round %d: the big write failed: %s" % (rounds, err[0]))
        if use_zero:
            zeroes += len(pages)
        else:
            trims += len(pages)
        rounds += 1
        head = bytes([0x5a ^ (rounds & 0x0f)]) * HEAD   # never in `data`
        bad = False
        for p in pages:
            bad_page = False
            off = p * PAGE
            want_data = data[off:off + PAGE]
            first = a.pread(PAGE, off)
            if first == want_data:
                hits_data += 1
            elif first != bytes(PAGE):
                torn += 1
                bad = bad_page = True
                failures.append("round %d page %d: first read is neither zeroes"
                                " nor the write's data" % (rounds, p))
            a.pwrite(head, off)
            second = a.pread(PAGE, off)
            if second[:HEAD] != head:
                bad = bad_page = True
                failures.append("round %d page %d: the 512-byte write did not"
                                " land" % (rounds, p))
            if second[HEAD:] != first[HEAD:]:
                bad = bad_page = True
                changed["zero" if use_zero else "trim"] += 1
                was = "zeroes" if first[HEAD:] == bytes(PAGE - HEAD) else "data"
                now = ("the big write's data"
                       if second[HEAD:] == want_data[HEAD:] else
                       "zeroes" if second[HEAD:] == bytes(PAGE - HEAD) else
                       "something else")
                failures.append("round %d page %d (%s): page changed its mind:"
                                " read as %s, after a 512-byte write into it"
                                " the other 3.5 KiB read as %s"
                                % (rounds, p, "zero" if use_zero else "trim",
                                   was, now))
            bad_pages += bad_page
        failed += bad
    for f in failures[:20]:
        print("FAIL:", f, flush=True)
    checked = rounds * args.pages
    print("stability: %d rounds of a %d MiB write against %d trims and %d"
          " write-zeroes of %d pages per round; %d pages checked (%d read as"
          " data, %d as zeroes, %d torn); %d changed their mind after a trim,"
          " %d after a write-zeroes; %d rounds failed"
          % (rounds, args.write_mib, trims, zeroes, args.pages, checked,
             hits_data, checked - hits_data - torn, torn, changed["trim"],
             changed["zero"], failed), flush=True)
    a.shutdown()
    b.shutdown()
    if rounds < 20:
        sys.exit("FAIL: only %d rounds ran: too few to mean anything" % rounds)
    if failed:
        sys.exit("FAIL: %d of %d rounds failed: %d of %d raced pages changed"
                 " their mind (%d after a trim, %d after a write-zeroes) or were"
                 " torn (%d)" % (failed, rounds, bad_pages, checked,
                                 changed["trim"], changed["zero"], torn))


def vmrss(pid):
    """The VmRSS of process pid in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise RuntimeError("no VmRSS for pid %d" % pid)


def memcap(args):
    """(b) Big writes raced by trims of the same ranges must never hold
    more than max-memory, and a trim of the whole device gives it all
    back."""
    rng = random.Random(args.seed)
    pid, cap, slack = args.pid, args.max_memory, args.slack
    start_rss = vmrss(pid)
    a, b = connect(args.uri), connect(args.uri)
    size = a.get_size()
    span = args.write_mib * MiB
    nranges = size // span
    peak = [start_rss]
    sampling = threading.Event()

    def sampler():
        while not sampling.is_set():
            peak[0] = max(peak[0], vmrss(pid))
            time.sleep(0.002)

    sam = threading.Thread(target=sampler)
    sam.start()
    counts = {"written": 0, "enospc": 0, "trims": 0}
    errors = []                 # failures other than ENOSPC

    def write(h, data, off, sent=None):
        try:
            if sent is None:
                h.pwrite(data, off)
            else:
                racing_write(h, data, off, sent)
            counts["written"] += 1
        except nbd.Error as e:
            if e.errnum != errno.ENOSPC:
                errors.append("write of %d bytes at %d: %s" % (len(data), off, e))
            else:
                counts["enospc"] += 1
        finally:
            if sent is not None:
                sent.set()

    def trim(h, n, off):
        h.trim(n, off)
        counts["trims"] += 1

    deadline = time.monotonic() + args.seconds
    rounds = 0
    try:
        while time.monotonic() < deadline:
            base = (rounds % nranges) * span
            rounds += 1
            # Fill the range, so that its pages are set and counted.
            write(a, pattern(rng, span), base)
            if errors:
                sys.exit("FAIL: " + errors[0])
            # Rewrite it; as soon as the rewrite has left, trim the
            # range from the other connection, or a piece of it, or a
            # few 256 KiB pieces, so the trims land during the copy.
            data = pattern(rng, span)
            sent = threading.Event()
            t = threading.Thread(target=write, args=(a, data, base, sent))
            t.start()
            if not args.no_race:
                sent.wait()
            else:
                t.join()
            r = rng.random()
            if r < 0.5:
                trim(b, span, base)
            elif r < 0.8:
                n = rng.randint(1, span // PAGE) * PAGE
                trim(b, n, base + rng.randrange(0, span - n + 1, PAGE))
            else:
                for _ in range(8):
                    trim(b, 256 * KiB, base + rng.randrange(0, span, 256 * KiB))
            t.join()
            if errors:
                sys.exit("FAIL: " + errors[0])
            # Then trim all of it: nothing the range held is counted now,
            # so nothing of it may stay in memory.
            trim(b, span, base)
        # Trim the whole device: nothing is held any more.
        for off in range(0, size, 64 * MiB):
            trim(b, min(64 * MiB, size - off), off)
        b.flush()
        trimmed_rss = vmrss(pid)
    finally:
        sampling.set()
        sam.join()
    # Each nbdkit worker thread keeps a buffer as big as the largest
    # request it served until its connection ends: close both so that
    # what is left is what the plugin holds.
    a.shutdown()
    b.shutdown()
    end_rss = vmrss(pid)
    for _ in range(40):
        if end_rss <= start_rss + slack:
            break
        time.sleep(0.05)
        end_rss = min(end_rss, vmrss(pid))
    print("memcap: max-memory %d MiB, %d rounds over %d ranges of %d MiB:"
          " %d writes done, %d refused with ENOSPC, %d trims; VmRSS (MiB) at"
          " start %.1f, peak %.1f (+%.1f), after trimming everything %.1f"
          " (+%.1f), after closing the connections %.1f (+%.1f); slack %d MiB"
          % (cap // MiB, rounds, nranges, args.write_mib, counts["written"],
             counts["enospc"], counts["trims"], start_rss / MiB, peak[0] / MiB,
             (peak[0] - start_rss) / MiB, trimmed_rss / MiB,
             (trimmed_rss - start_rss) / MiB, end_rss / MiB,
             (end_rss - start_rss) / MiB, slack // MiB), flush=True)
    bad = []
    if counts["written"] < 20:
        bad.append("only %d writes succeeded: too few to mean anything"
                   % counts["written"])
    if peak[0] > start_rss + cap + slack:
        bad.append("peak VmRSS during the race %.1f MiB is past start %.1f MiB"
                   " + max-memory %d MiB + slack %d MiB: max-memory was bypassed"
                   " by %.1f MiB" % (peak[0] / MiB, start_rss / MiB, cap // MiB,
                                     slack // MiB,
                                     (peak[0] - start_rss - cap - slack) / MiB))
    if end_rss > start_rss + slack:
        bad.append("VmRSS after trimming the whole device and closing the"
                   " connections is %.1f MiB, past start %.1f MiB + slack %d MiB:"
                   " the server holds %.1f MiB it no longer counts"
                   % (end_rss / MiB, start_rss / MiB, slack // MiB,
                      (end_rss - start_rss) / MiB))
    if bad:
        sys.exit("FAIL: " + "; ".join(bad))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("stability")
    s.add_argument("uri")
    s.add_argument("--rounds", type=int, default=300)
    s.add_argument("--seconds", type=float, default=40)
    s.add_argument("--write-mib", type=int, default=32)
    s.add_argument("--pages", type=int, default=4)
    s.add_argument("--max-delay-ms", type=float, default=4)
    m = sub.add_parser("memcap")
    m.add_argument("uri")
    m.add_argument("pid", type=int)
    m.add_argument("max_memory", type=int)
    m.add_argument("slack", type=int)
    m.add_argument("--seconds", type=float, default=10)
    m.add_argument("--write-mib", type=int, default=8)
    m.add_argument("--no-race", action="store_true",
                   help="trim after the rewrite, not during it (a control)")
    for p in (s, m):
        p.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little")
    print("race %s: seed %d (rerun with --seed %d)"
          % (args.mode, args.seed, args.seed), flush=True)
    {"stability": stability, "memcap": memcap}[args.mode](args)


if __name__ == "__main__":
    main()
