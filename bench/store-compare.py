#!/usr/bin/python3
# memblock benchmarks: the store of a baseline commit beside the current
# one, in process: store-bench built against the baseline's store (run.sh
# takes its sources from git and builds them with this tree's
# bench/store-bench.c) and against the working tree's, run in alternating
# rounds with the same arguments (-s: the store variant alone; or -c: the
# compressed stores), one store-bench run of -r 1 per round and build,
# the first build alternating too.
#
# Usage: store-compare.py --baseline COMMIT --before BIN --after BIN
#                         --rounds N --out JSON [-- STORE-BENCH ARGS]
#        store-compare.py --baseline COMMIT --skip REASON --out JSON
# Writes {"baseline", "rounds", "args", "variants": [in store-bench's
# order], "figures": {"op bs threads variant": {"before": [GiB/s per
# round], "after": [...], "cpus_before": [...], "cpus_after": [...]}},
# "held": {"before": {codec: [data, held]}, "after": ...} (with -c)} or
# {"baseline", "skipped": REASON}.

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def run(binary, args):
    """benchlib.parse_store_bench of one store-bench run."""
    r = subprocess.run([binary] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" %
                           (binary, r.returncode, r.stderr[-1000:]))
    got = bl.parse_store_bench(r.stdout)
    if not got[0]:
        raise RuntimeError("%s: no figures:\n%s" % (binary, r.stdout))
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True, help="the baseline commit")
    ap.add_argument("--before", help="store-bench built on the baseline")
    ap.add_argument("--after", help="store-bench built on the working tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip", help="write only this reason for skipping")
    ap.add_argument("--out", required=True)
    ap.add_argument("args", nargs="*", help="store-bench arguments")
    a = ap.parse_args()
    if a.skip:
        bl.write_json(a.out, {"baseline": a.baseline, "skipped": a.skip})
        return
    if not a.before or not a.after or a.rounds < 1:
        raise SystemExit("store-compare: need --before, --after, "
                         "--rounds >= 1")
    args = ["-r", "1"] + a.args
    result = {"baseline": a.baseline, "rounds": a.rounds, "args": args,
              "variants": [], "figures": {}, "held": {}}
    builds = (("before", a.before), ("after", a.after))
    for rnd in range(a.rounds):
        for label, binary in builds[rnd % 2:] + builds[:rnd % 2]:
            figures, held, _ = run(binary, args)
            for (op, bs, t, v), (gibps, cpus, _) in figures.items():
                if v not in result["variants"]:
                    result["variants"].append(v)
                f = result["figures"].setdefault("%s %s %d %s" %
                                                 (op, bs, t, v), {})
                f.setdefault(label, []).append(gibps)
                f.setdefault("cpus_" + label, []).append(cpus)
            if held:
                result["held"][label] = held
            bl.log("round %d/%d %-6s %s" %
                   (rnd + 1, a.rounds, label,
                    "  ".join("%s %.2f" % (" ".join(map(str, k)), v[0])
                              for k, v in sorted(figures.items()))))
        bl.write_json(a.out, result)


if __name__ == "__main__":
    main()
