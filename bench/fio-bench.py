#!/usr/bin/python3
# memblock benchmarks: fio over NBD against memblock, nbdkit memory
# (sparse), nbdkit memory allocator=malloc and nbdkit null, side by side.
#
# Measures, per workload and server: MiB/s, IOPS and server CPU seconds
# per GiB moved (utime+stime from /proc/PID/stat around each fio run).
# Pinned rounds put every server on one CPU and fio on the other, rotate
# the servers' order each round and keep every sample; one unpinned
# round follows for reference.  Writes the samples as JSON.

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

# name, fio options.  Every workload runs with the nbd engine.
WORKLOADS = [
    ("4k-randread-1c", dict(rw="randread", bs="4k", iodepth=16, numjobs=1)),
    ("4k-randwrite-1c", dict(rw="randwrite", bs="4k", iodepth=16, numjobs=1)),
    ("4k-randread-4c", dict(rw="randread", bs="4k", iodepth=16, numjobs=4)),
    ("4k-randwrite-4c", dict(rw="randwrite", bs="4k", iodepth=16, numjobs=4)),
    ("1m-seqread", dict(rw="read", bs="1m", iodepth=8, numjobs=1)),
    ("1m-seqwrite", dict(rw="write", bs="1m", iodepth=8, numjobs=1)),
    ("64k-randrw70-2c", dict(rw="randrw", rwmixread=70, bs="64k",
                             iodepth=16, numjobs=2)),
]


def pick(workloads, names):
    """The workloads named in the comma list names (all if empty)."""
    if not names:
        return workloads
    want = names.split(",")
    bad = set(want) - set(w[0] for w in workloads)
    if bad:
        raise SystemExit("unknown workloads: " + ", ".join(sorted(bad)))
    return [w for w in workloads if w[0] in want]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G", help="device size")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runtime", type=float, default=3.0, help="s per run")
    ap.add_argument("--unpinned-rounds", type=int, default=1)
    ap.add_argument("--workloads", default="", help="comma list (default all)")
    ap.add_argument("--unpinned-workloads", default="",
                    help="comma list for the unpinned round (default all)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    bl.die_on_signals()

    size = bl.parse_size(args.size)
    work = os.path.join(os.path.dirname(os.path.abspath(args.out)), "fio")
    os.makedirs(work, exist_ok=True)
    fio_out = os.path.join(work, "fio.json")
    srv_cpu, cli_cpu = bl.cpus()
    workloads = pick(WORKLOADS, args.workloads)
    unpinned = pick(workloads, args.unpinned_workloads)
    result = {"size": size, "runtime": args.runtime, "rounds": args.rounds,
              "server_cpu": srv_cpu, "client_cpu": cli_cpu,
              "servers": list(bl.SERVERS),
              "workloads": [w[0] for w in workloads],
              "unpinned_workloads": [w[0] for w in unpinned],
              "unpinned_rounds": args.unpinned_rounds,
              "pinned": {}, "unpinned": {}}

    with bl.Servers(work) as servers:
        srv = {}
        for label in bl.SERVERS:
            srv[label] = servers.start(label, bl.server_args(label, size),
                                       cpu=srv_cpu)
        for label in bl.SERVERS:
            result.setdefault("rss_at_start", {})[label] = srv[label].rss()
        # Prefill every device with non-zero data (fio's random buffers).
        for label in bl.SERVERS:
            bl.log("prefill %s (%d MiB)" % (label, size // bl.MiB))
            bl.fio_run(srv[label].uri, dict(rw="write", bs="1m", iodepth=8),
                       fio_out)
            result.setdefault("rss_after_prefill", {})[label] = \
                srv[label].rss()

        def run(mode, rounds, cli, workloads):
            table = result[mode]
            for r in range(rounds):
                order = bl.SERVERS[r % len(bl.SERVERS):] + \
                    bl.SERVERS[:r % len(bl.SERVERS)]
                bl.log("%s round %d/%d, order %s" %
                       (mode, r + 1, rounds, " ".join(order)))
                for name, opts in workloads:
                    for label in order:
                        s = bl.fio_measure(srv[label], opts, fio_out, cli,
                                       args.runtime)
                        s["round"] = r
                        table.setdefault(name, {}).setdefault(
                            label, []).append(s)
                        bl.log("  %-16s %-8s %9.1f MiB/s %9.0f IOPS "
                               "%6.3f CPU s/GiB  busy: server %3.0f%% "
                               "fio %3.0f%%" %
                               (name, label, s["mibs"], s["iops"],
                                s["cpu_per_gib"],
                                100 * s["cpu_s"] / s["wall_s"],
                                100 * s["fio_cpu_s"] / s["wall_s"]))
                bl.write_json(args.out, result)

        run("pinned", args.rounds, cli_cpu, workloads)
        # Unpinned: every server thread may run anywhere, and so may fio.
        for label in bl.SERVERS:
            srv[label].set_cpus(bl.all_cpus())
        run("unpinned", args.unpinned_rounds, None, unpinned)
    bl.write_json(args.out, result)


if __name__ == "__main__":
    main()
