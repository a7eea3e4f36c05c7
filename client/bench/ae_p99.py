#!/usr/bin/env python3
"""Foreground p99 with anti-entropy repairing a wiped replica, against without it.

Starts three release `dynamo-node` processes (N=3, R=2, W=2, background anti-entropy
every second), prefills KEYS keys of 100 bytes, measures the peak of a 50/50 closed
loop at 64 clients, then runs RUNS passes of: an open loop at half the peak for DURATION
(baseline), then node 3 is stopped, its data directory deleted and the node started
again, and the same open loop runs at once while anti-entropy refills node 3 (then the
script waits for the refill to end). Prints each run's p99 and the medians, how many
keys the refill moved and how long it took, and the ratio.

    CARGO_TARGET_DIR=... client/bench/ae_p99.py [KEYS] [RUNS] [DURATION_S]

NODE_ARGS adds flags to every node (e.g. --background-p99-target-ms 5); RESTART_ONLY=1
restarts node 3 without wiping it, the control for what the restart alone costs.

Build first: cargo build --release -p dynamo-node -p dynamo-client
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TARGET = os.environ.get("CARGO_TARGET_DIR", "target")
NODE = os.path.join(TARGET, "release", "dynamo-node")
CTL = os.path.join(TARGET, "release", "dynamoctl")
KEYS = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
DURATION = int(sys.argv[3]) if len(sys.argv) > 3 else 15
BASE = 7400
ADDRS = ",".join(f"127.0.0.1:{BASE + i}" for i in (1, 2, 3))
# RESTART_ONLY=1: the control, node 3 restarted without losing its data (no refill).
RESTART_ONLY = bool(os.environ.get("RESTART_ONLY"))
MEMBERS = ",".join(f"node-{i}=127.0.0.1:{BASE + i}" for i in (1, 2, 3))


def log(msg):
    print(f"[ae_p99 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Cluster:
    def __init__(self, root):
        self.root = root
        self.procs = {}
        self.secret = os.path.join(root, "secret")
        with open(self.secret, "w") as f:
            f.write("ae-p99-bench-secret-0123456789")

    def start(self, i):
        data = os.path.join(self.root, f"n{i}")
        log_file = open(os.path.join(self.root, f"n{i}.log"), "a")
        self.procs[i] = subprocess.Popen(
            [NODE, "--node-id", f"node-{i}", "--listen", f"127.0.0.1:{BASE + i}",
             "--http-listen", f"127.0.0.1:{BASE + 80 + i}", "--data-dir", data,
             "--cluster-id", "bench", "--cluster-secret-file", self.secret,
             "--members", MEMBERS, "--n", "3", "--r", "2", "--w", "2",
             "--runtime-threads", "1", "--anti-entropy-interval-ms", "1000",
             *os.environ.get("NODE_ARGS", "").split()],
            stdout=log_file, stderr=log_file)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{BASE + 80 + i}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node-{i} not ready")

    def stop(self, i):
        p = self.procs.pop(i)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def wipe(self, i):
        shutil.rmtree(os.path.join(self.root, f"n{i}"), ignore_errors=True)

    def stop_all(self):
        for i in list(self.procs):
            self.stop(i)


def bench(*args):
    out = subprocess.run([CTL, "--addr", ADDRS, "bench", "--keys", str(KEYS), "--json", "-q", *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ae_keys(i):
    with urllib.request.urlopen(f"http://127.0.0.1:{BASE + 80 + i}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("dynamo_anti_entropy_keys_total"):
                return int(float(line.split()[-1]))
    return 0


def main():
    root = tempfile.mkdtemp(prefix="ae-p99-")
    c = Cluster(root)
    try:
        for i in (1, 2, 3):
            c.start(i)
        log(f"prefilling {KEYS} keys")
        bench("--prefill", "--concurrency", "64", "--ops", "1")
        peak = bench("--concurrency", "64", "--duration", "10s")["ops_per_sec"]
        rate = peak / 2
        log(f"peak {peak:.0f} ops/s; open loop at {rate:.0f}")
        base, during, moved, repair_s = [], [], [], []
        for run in range(RUNS):
            r = bench("--concurrency", "64", "--rate", str(rate), "--duration", f"{DURATION}s")
            base.append(r["latency_us"]["p99"] / 1000)
            c.stop(3)
            if not RESTART_ONLY:
                c.wipe(3)
            c.start(3)
            r = bench("--concurrency", "64", "--rate", str(rate), "--duration", f"{DURATION}s")
            during.append(r["latency_us"]["p99"] / 1000)
            # A sweep's keys are counted when it ends: the first count is the refill.
            in_window = ae_keys(3)
            waited = DURATION
            while not RESTART_ONLY and ae_keys(3) == 0 and waited < 600:
                time.sleep(1)
                waited += 1
            moved.append(ae_keys(3))
            repair_s.append(waited)
            log(f"run {run + 1}: p99 {base[-1]:.2f} ms without, {during[-1]:.2f} ms while node 3 "
                f"was refilled; the refill sweep {'ended within' if in_window else 'outlasted'} "
                f"the window and moved {moved[-1]} keys; done ~{waited} s after the restart")
        b, d = statistics.median(base), statistics.median(during)
        print(json.dumps({"keys": KEYS, "peak_ops_per_sec": peak, "rate": rate,
                          "p99_ms_without": base, "p99_ms_during_repair": during,
                          "keys_moved": moved, "repair_seconds": repair_s, "median_without": b, "median_during": d,
                          "ratio": d / b}))
    finally:
        c.stop_all()
        if not os.environ.get("KEEP"):
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")


if __name__ == "__main__":
    main()
