#!/usr/bin/python3
# memblock benchmarks: the cost of the write/trim race fix (page locks,
# commit c2018fa), in process: store-bench built against the store of
# commit 2a0de16 (before the fix; run.sh extracts and builds it) and
# against the working tree's store (after), run in alternating rounds with
# the same arguments (-s: the store variant alone), one store-bench run of
# -r 1 per round and build, the first build alternating too.
#
# Usage: store-fix.py --before BIN --after BIN --rounds N --out JSON
#                     [-- STORE-BENCH ARGS]
#        store-fix.py --skip REASON --out JSON
# Writes {"rounds", "args", "figures": {"op bs threads": {"before":
# [GiB/s per round], "after": [...], "cpus_before": [...], ...}}} or
# {"skipped": REASON}.

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def run(binary, args):
    """{"op bs threads": (GiB/s, CPUs)} of one store-bench run."""
    r = subprocess.run([binary] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" %
                           (binary, r.returncode, r.stderr[-1000:]))
    res = {}
    for line in r.stdout.splitlines():
        p = line.split()
        if len(p) >= 6 and p[3] == "store":
            res["%s %s %s" % (p[0], p[1], p[2])] = (float(p[4]), float(p[5]))
    if len(res) != 8:
        raise RuntimeError("%s: %d figures, not 8:\n%s" %
                           (binary, len(res), r.stdout))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before")
    ap.add_argument("--after")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip", help="write only this reason for skipping")
    ap.add_argument("--out", required=True)
    ap.add_argument("args", nargs="*", help="store-bench arguments")
    a = ap.parse_args()
    if a.skip:
        bl.write_json(a.out, {"skipped": a.skip})
        return
    if not a.before or not a.after or a.rounds < 1:
        raise SystemExit("store-fix: need --before, --after, --rounds >= 1")
    args = ["-s", "-r", "1"] + a.args
    result = {"rounds": a.rounds, "args": args, "figures": {}}
    builds = (("before", a.before), ("after", a.after))
    for rnd in range(a.rounds):
        for label, binary in builds[rnd % 2:] + builds[:rnd % 2]:
            res = run(binary, args)
            for key, (gibps, cpus) in res.items():
                f = result["figures"].setdefault(key, {})
                f.setdefault(label, []).append(gibps)
                f.setdefault("cpus_" + label, []).append(cpus)
            bl.log("round %d/%d %-6s %s" %
                   (rnd + 1, a.rounds, label,
                    "  ".join("%s %.2f" % (k, v[0])
                              for k, v in sorted(res.items()))))
        bl.write_json(a.out, result)


if __name__ == "__main__":
    main()
