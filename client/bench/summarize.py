#!/usr/bin/env python3
"""Markdown tables of the medians of client/bench/run.sh's results.

Usage: summarize.py RESULTS.jsonl [MEMORY.jsonl]
       summarize.py --half-peak RESULTS.jsonl POLICY MIX CONCURRENCY
           (prints half of the median closed-loop ops/s of that group, for --rate)

RESULTS lines: {"policy", "mix", "concurrency", "rep", "result": <dynamoctl bench --json>},
plus "rate" (ops/s) for open-loop runs, "node_cpu_s" (CPU seconds all nodes used in
the run, prefill reads excluded), "steal_s" (CPU seconds the hypervisor took from the
machine) and "disk_flushes" (flushes the machine's disks completed), both over the run
and its prefill.
MEMORY lines: {"policy", "node", "pid", "vm_hwm_kb", "vm_rss_kb"}, one per node per cluster
started; the table shows the highest of each node's.
"""

import json
import statistics
import sys
from collections import defaultdict

MIX_ORDER = {"write": 0, "read": 1, "mixed": 2}
MIX_NAME = {"write": "write-only", "read": "read-only", "mixed": "50/50"}


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ms(us):
    return us / 1000.0


def half_peak(rows, policy, mix, concurrency):
    peak = [
        r["result"]["ops_per_sec"]
        for r in rows
        if r["policy"] == policy
        and r["mix"] == mix
        and r["concurrency"] == concurrency
        and r.get("rate") is None
    ]
    if not peak:
        raise SystemExit(f"no closed-loop runs for {policy} {mix} c={concurrency}")
    return max(1, round(statistics.median(peak) / 2))


def cpu_per_op(runs):
    """Median over runs of the nodes' CPU microseconds per operation ("-" if unknown)."""
    per_op = [
        r["node_cpu_s"] * 1e6 / r["ops"] for r in runs if r.get("node_cpu_s") is not None and r["ops"]
    ]
    return "{:.0f}".format(statistics.median(per_op)) if per_op else "-"


def spread(runs):
    """Lowest to highest p99.9 over the runs: how much one median can be trusted."""
    p999 = [r["latency_us"]["p999"] / 1000 for r in runs]
    return "{:.1f}–{:.1f}".format(min(p999), max(p999))


def generator_lag(runs):
    """Open loop only: median p99.9 of how late the load generator itself woke for a
    request (its timer and scheduling delay, included in the latencies); "-" otherwise."""
    lags = [r["wake_lag_us"]["p999"] for r in runs if r.get("wake_lag_us")]
    return "{:.1f}".format(statistics.median(lags) / 1000) if lags else "-"


def machine_rates(runs):
    """Medians over runs of the machine's steal (% of one CPU) and disk flushes per
    second, each over the run and its untimed prefill ("-" when not recorded)."""
    steal, flushes = [], []
    for r in runs:
        seconds = r["seconds"] + (r.get("prefill_seconds") or 0)
        if r.get("steal_s") is None or seconds <= 0:
            continue
        steal.append(100 * r["steal_s"] / seconds)
        flushes.append(r["disk_flushes"] / seconds)
    if not steal:
        return "-", "-"
    return "{:.1f}".format(statistics.median(steal)), "{:.0f}".format(statistics.median(flushes))


def results_table(rows):
    groups = defaultdict(list)
    for row in rows:
        key = (row["policy"], row["mix"], row["concurrency"], row.get("rate") or 0)
        result = dict(row["result"])
        for field in ("node_cpu_s", "steal_s", "disk_flushes"):
            result[field] = row.get(field)
        groups[key].append(result)
    out = [
        "| fsync | workload | clients | load | runs | ops/s | p50 ms | p99 ms | p99.9 ms | p99.9 range ms "
        "| generator lag p99.9 ms | errors | node CPU µs/op | steal % of a CPU | disk flushes/s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = sorted(groups, key=lambda k: (k[0], MIX_ORDER.get(k[1], 9), k[3] > 0, k[2]))
    for key in order:
        runs = groups[key]
        med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
        steal, flushes = machine_rates(runs)
        load_ = "half of peak ({} ops/s, open loop)".format(key[3]) if key[3] else "peak (closed loop)"
        out.append(
            "| {} | {} | {} | {} | {} | {:.0f} | {:.3f} | {:.3f} | {:.3f} | {} | {} | {} | {} | {} | {} |".format(
                key[0],
                MIX_NAME.get(key[1], key[1]),
                key[2],
                load_,
                len(runs),
                med(lambda r: r["ops_per_sec"]),
                ms(med(lambda r: r["latency_us"]["p50"])),
                ms(med(lambda r: r["latency_us"]["p99"])),
                ms(med(lambda r: r["latency_us"]["p999"])),
                spread(runs),
                generator_lag(runs),
                sum(r["errors"] for r in runs),
                cpu_per_op(runs),
                steal,
                flushes,
            )
        )
    return "\n".join(out)


def memory_table(rows):
    """One row per (policy, node): the highest peak and end RSS over its clusters."""
    worst = {}
    for row in rows:
        key = (row["policy"], row["node"])
        hwm, rss = worst.get(key, (0, 0))
        worst[key] = (max(hwm, row["vm_hwm_kb"]), max(rss, row["vm_rss_kb"]))
    out = [
        "| fsync | node | peak RSS (VmHWM) MiB | RSS at end MiB |",
        "|---|---|---:|---:|",
    ]
    for (policy, node), (hwm, rss) in sorted(worst.items()):
        out.append("| {} | {} | {:.1f} | {:.1f} |".format(policy, node, hwm / 1024, rss / 1024))
    return "\n".join(out)


def main(argv):
    if len(argv) == 6 and argv[1] == "--half-peak":
        print(half_peak(load(argv[2]), argv[3], argv[4], int(argv[5])))
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    print("## Throughput and latency (medians)\n")
    print(results_table(load(argv[1])))
    if len(argv) > 2:
        memory = load(argv[2])
        if memory:
            print("\n## Node memory\n")
            print(memory_table(memory))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
