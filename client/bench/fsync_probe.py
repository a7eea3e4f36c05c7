#!/usr/bin/env python3
"""How long this disk takes to make a small WAL append durable, with nothing else running.

Usage: fsync_probe.py DIR [SECONDS]

Appends 300 bytes to a scratch file in DIR and fdatasyncs it, over and over for SECONDS
(default 10), pausing 0.5 ms between rounds, then prints a markdown section: the latency
percentiles and every stall over 5 ms with the second it started at. Synced writes can be
no faster than this: with `fsync=always` a put waits for syncs on W replicas, and on one
machine all the nodes' data directories share this disk.
"""

import os
import sys
import time

STALL_S = 0.005


def probe(directory, seconds):
    path = os.path.join(directory, "fsync-probe.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    latencies, stalls = [], []
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            os.write(fd, b"x" * 300)
            t = time.monotonic()
            os.fdatasync(fd)
            took = time.monotonic() - t
            latencies.append(took)
            if took > STALL_S:
                stalls.append((t - start, took))
            time.sleep(0.0005)
    finally:
        os.close(fd)
        os.unlink(path)
    return latencies, stalls


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def report(latencies, stalls, seconds):
    ms = sorted(x * 1e3 for x in latencies)
    lines = [
        "## The disk under the data directories\n",
        f"fdatasync of a 300-byte append, alone on the machine for {seconds:g} s "
        f"({len(ms)} syncs):\n",
        "| p50 ms | p99 ms | p99.9 ms | max ms | stalls over 5 ms |",
        "|---:|---:|---:|---:|---:|",
        f"| {percentile(ms, 0.5):.2f} | {percentile(ms, 0.99):.2f} "
        f"| {percentile(ms, 0.999):.2f} | {ms[-1]:.1f} | {len(stalls)} |",
    ]
    if stalls:
        at = ", ".join(f"{took * 1e3:.0f} ms at {when:.1f} s" for when, took in stalls)
        lines.append(f"\nStalls: {at}.")
    return "\n".join(lines)


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    seconds = float(argv[2]) if len(argv) == 3 else 10.0
    latencies, stalls = probe(argv[1], seconds)
    print(report(latencies, stalls, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
