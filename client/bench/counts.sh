#!/usr/bin/env bash
# Exact per-operation counts of a local 3-node cluster under load: mallocs (a uprobe on
# libc's malloc), context switches and the system calls that matter (futex, fdatasync,
# epoll_wait, writev, sendto, recvfrom), for the nodes together and for the load
# generator. On shared virtual machines whose speed drifts minute to minute, these counts
# are the measure that compares two builds reliably; times are not.
#
# Needs root and `perf` (apt-get install -y linux-perf). Uses release binaries already
# built (`make build`); nothing is built here.
#
# Usage: client/bench/counts.sh [policy] [read-ratio] [concurrency]
#   defaults: always 0 64
# Environment: COUNTS_OPS=30000 operations; CARGO_TARGET_DIR as for the build;
#   COUNTS_BASE_PORT=7400 (gRPC ports base+1..3), COUNTS_HTTP_BASE_PORT=7480.
# The uprobe slows every malloc, so throughput under this script is not a benchmark.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
POLICY=${1:-always}
RATIO=${2:-0}
CONCURRENCY=${3:-64}
OPS=${COUNTS_OPS:-30000}
BASE_PORT=${COUNTS_BASE_PORT:-7400}
HTTP_BASE_PORT=${COUNTS_HTTP_BASE_PORT:-7480}
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
LIBC=$(ldconfig -p | awk '/libc\.so\.6 .*x86-64/ {print $NF; exit}')

command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
for bin in "$BIN/dynamoctl" "$BIN/dynamo-node"; do
    [[ -x "$bin" ]] || { echo "missing $bin (make build; set CARGO_TARGET_DIR?)" >&2; exit 1; }
done

DATA=$(mktemp -d "${TMPDIR:-/tmp}/dynamo-counts.XXXXXX")
CLUSTER_PID=""
cleanup() {
    if [[ -n "$CLUSTER_PID" ]]; then
        kill -TERM "$CLUSTER_PID" 2>/dev/null || true
        wait "$CLUSTER_PID" 2>/dev/null || true
    fi
    perf probe -q -d probe_libc:malloc 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

perf probe -q -x "$LIBC" malloc 2>/dev/null || true
"$BIN/dynamoctl" cluster --nodes 3 --n 3 --r 2 --w 2 --fsync "$POLICY" --wipe \
    --data-dir "$DATA/cluster" --base-port "$BASE_PORT" --http-base-port "$HTTP_BASE_PORT" \
    --node-bin "$BIN/dynamo-node" >"$DATA/cluster.log" 2>&1 &
CLUSTER_PID=$!
for _ in $(seq 1 600); do
    grep -q "is ready:" "$DATA/cluster.log" && break
    kill -0 "$CLUSTER_PID" 2>/dev/null || { cat "$DATA/cluster.log" >&2; exit 1; }
    sleep 0.1
done
NODE_PIDS=$(pgrep -P "$CLUSTER_PID" | paste -sd,)
ADDRS=$(seq -s, -f "127.0.0.1:%g" $((BASE_PORT + 1)) $((BASE_PORT + 3)))
bench() {
    "$BIN/dynamoctl" --addr "$ADDRS" bench --quiet --keys 10000 --value-size 100 "$@"
}
bench --prefill --ops 0 --concurrency 64 >/dev/null 2>&1

EVENTS=probe_libc:malloc,context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_fdatasync
EVENTS=$EVENTS,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_writev,syscalls:sys_enter_sendto
EVENTS=$EVENTS,syscalls:sys_enter_recvfrom
perf stat -e "$EVENTS" -p "$NODE_PIDS" -o "$DATA/nodes.txt" -- \
    perf stat -e "$EVENTS" -o "$DATA/client.txt" -- \
    "$BIN/dynamoctl" --addr "$ADDRS" bench --quiet --keys 10000 --value-size 100 \
    --read-ratio "$RATIO" --concurrency "$CONCURRENCY" --ops "$OPS" --json >"$DATA/out.json"

python3 - "$DATA/out.json" "$DATA/client.txt" "$DATA/nodes.txt" "$POLICY" "$RATIO" "$CONCURRENCY" <<'PY'
import json, re, sys
out, client, nodes, policy, ratio, conc = sys.argv[1:]
ops = json.load(open(out))["ops"]
print(f"fsync={policy} read-ratio={ratio} clients={conc}: {ops} operations; counts per operation")
print(f"{'event':<16} {'nodes':>8} {'client':>8}")
def counts(path):
    got = {}
    for line in open(path):
        m = re.match(r"\s*([\d,]+)\s+(\S+)", line)
        if m:
            name = m.group(2).split(":")[-1].replace("sys_enter_", "")
            got[name] = int(m.group(1).replace(",", "")) / ops
    return got
n, c = counts(nodes), counts(client)
for name in n:
    print(f"{name:<16} {n[name]:>8.2f} {c.get(name, 0):>8.2f}")
PY
