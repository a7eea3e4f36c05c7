#!/usr/bin/env bash
# Benchmark of a local 3-node cluster (N=3 R=2 W=2, 100-byte values), the numbers the
# design's performance bar is stated in.
#
# It runs in passes. Each pass starts, for each fsync policy in turn, a fresh
# `dynamoctl cluster --wipe`, prefills the keys and runs `dynamoctl bench --json` once
# for write-only, read-only and 50/50 workloads at each concurrency (closed loop). The
# passes repeat, so the runs behind each median are spread over the whole benchmark and
# both policies sample the same stretch of time: on a shared VM whose speed drifts, that
# keeps one policy from getting the fast minutes. Then, in passes again, an open-loop run
# at the highest concurrency at half of that median peak rate (`--rate`), the load the
# latency bar is stated at. Each run also records the CPU seconds the nodes used (from
# /proc, prefill reads left out), reported per operation, and the machine's steal time
# and disk flushes over the run (its prefill reads included), reported per second. It
# records every node's peak resident memory (VmHWM) and prints markdown tables of the
# medians, and, measured first, how long a small synced append takes on the data
# directories' disk (fsync_probe.py).
# Every process it starts is stopped on exit, failure or Ctrl-C.
#
# Environment (all optional):
#   BENCH_DURATION=10s          measured time of one run
#   BENCH_REPS=3                repetitions of each (workload, concurrency)
#   BENCH_CONCURRENCY="1 16 64" client concurrencies
#   BENCH_POLICIES="periodic always"  fsync policies; append -tls to one (periodic-tls)
#                               to run it with TLS, e.g. "periodic periodic-tls" for A/B
#   BENCH_KEYS=10000            distinct keys;  BENCH_VALUE_SIZE=100  bytes per value
#   BENCH_BASE_PORT=7300        gRPC ports base+1..; HTTP ports BENCH_HTTP_BASE_PORT=7380
#   BENCH_OUT=target/bench      where results-<time>/ goes (raw JSON lines, logs, summary)
#   BENCH_NO_BUILD=1            skip the cargo build
#   BENCH_DISK_PROBE=10         seconds of the fsync probe of the data directory's disk
#   TMPDIR                      parent of the nodes' data directories (default /tmp)
#   BENCH_PROFILE=release       cargo profile of the binaries (`dev` only to try the script)
#   CARGO_TARGET_DIR            where the binaries are (default: target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/client/bench"
DURATION=${BENCH_DURATION:-10s}
REPS=${BENCH_REPS:-3}
CONCURRENCY=${BENCH_CONCURRENCY:-"1 16 64"}
POLICIES=${BENCH_POLICIES:-"periodic always"}
KEYS=${BENCH_KEYS:-10000}
VALUE_SIZE=${BENCH_VALUE_SIZE:-100}
BASE_PORT=${BENCH_BASE_PORT:-7300}
HTTP_BASE_PORT=${BENCH_HTTP_BASE_PORT:-7380}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILE=${BENCH_PROFILE:-release}
PROFILE_DIR=$PROFILE
[[ $PROFILE == dev ]] && PROFILE_DIR=debug
OUT="${BENCH_OUT:-$ROOT/target/bench}/results-$(date -u +%Y%m%dT%H%M%SZ)"
NODES=3

mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
MEMORY="$OUT/memory.jsonl"
: >"$RESULTS"
: >"$MEMORY"
DATA=$(mktemp -d "${TMPDIR:-/tmp}/dynamo-bench.XXXXXX")

CLUSTER_PID=""
NODE_PIDS=""

log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }

# Stops the cluster launcher (which SIGTERMs its nodes and SIGKILLs them after 10 s),
# then kills any node that is somehow still there.
stop_cluster() {
    if [[ -n "$CLUSTER_PID" ]] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
        kill -TERM "$CLUSTER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$CLUSTER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$CLUSTER_PID" 2>/dev/null || true
        wait "$CLUSTER_PID" 2>/dev/null || true
    fi
    for pid in $NODE_PIDS; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    CLUSTER_PID=""
    NODE_PIDS=""
}

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    stop_cluster
    rm -rf "$DATA"
    if [[ $code -ne 0 ]]; then
        log "failed (exit $code); logs and partial results in $OUT"
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    log "building $PROFILE binaries"
    (cd "$ROOT" && cargo build --profile "$PROFILE" -p dynamo-node -p dynamo-client)
fi
CTL="$TARGET/$PROFILE_DIR/dynamoctl"
NODE_BIN="$TARGET/$PROFILE_DIR/dynamo-node"
for bin in "$CTL" "$NODE_BIN"; do
    [[ -x "$bin" ]] || { log "missing $bin (set CARGO_TARGET_DIR?)"; exit 1; }
done

ADDRS=$(seq -s, -f "127.0.0.1:%g" $((BASE_PORT + 1)) $((BASE_PORT + NODES)))

start_cluster() {
    local policy=$1 log_file=$OUT/cluster-$policy-$2.log
    # A policy ending in -tls runs that fsync policy with TLS (a throwaway CA).
    local fsync=${policy%-tls} tls=()
    [[ $policy == *-tls ]] && tls=(--tls)
    log "starting a $NODES-node cluster, fsync=$fsync ${tls[*]}"
    "$CTL" cluster --nodes "$NODES" --n 3 --r 2 --w 2 --fsync "$fsync" "${tls[@]}" --wipe \
        --data-dir "$DATA/$policy" --base-port "$BASE_PORT" --http-base-port "$HTTP_BASE_PORT" \
        --node-bin "$NODE_BIN" --ready-timeout 120s >"$log_file" 2>&1 &
    CLUSTER_PID=$!
    for _ in $(seq 1 1300); do
        if ! kill -0 "$CLUSTER_PID" 2>/dev/null; then
            tail -n 30 "$log_file" >&2
            log "the cluster exited during start-up"
            exit 1
        fi
        if grep -q "is ready:" "$log_file"; then
            NODE_PIDS=$(pgrep -P "$CLUSTER_PID" | tr '\n' ' ')
            log "cluster ready, node pids: $NODE_PIDS"
            return
        fi
        sleep 0.1
    done
    log "the cluster was not ready in time"
    exit 1
}

record_memory() {
    local policy=$1 pid rss hwm name
    for pid in $NODE_PIDS; do
        [[ -r /proc/$pid/status ]] || continue
        hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
        name=$(tr '\0' ' ' <"/proc/$pid/cmdline" | sed -n 's/.*--node-id \([^ ]*\).*/\1/p')
        echo "{\"policy\":\"$policy\",\"node\":\"$name\",\"pid\":$pid,\"vm_hwm_kb\":${hwm:-0},\"vm_rss_kb\":${rss:-0}}" >>"$MEMORY"
    done
}

bench() {
    local tls=()
    [[ ${policy:-} == *-tls ]] && tls=(--ca "$DATA/$policy/tls/ca.pem")
    "$CTL" --addr "$ADDRS" "${tls[@]}" bench --quiet --keys "$KEYS" --value-size "$VALUE_SIZE" "$@"
}

# The --read-ratio of a workload.
read_ratio() {
    case $1 in
        write) echo 0 ;;
        read) echo 1 ;;
        mixed) echo 0.5 ;;
    esac
}

# CPU time (clock ticks, user + system) the nodes have used so far.
node_ticks() {
    local pid total=0
    for pid in $NODE_PIDS; do
        [[ -r /proc/$pid/stat ]] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
TICKS_PER_S=$(getconf CLK_TCK)

# Machine-wide counters read around each run: CPU time the hypervisor gave to others
# while this VM wanted it (steal, clock ticks, /proc/stat), and disk flushes completed
# (/sys/block/*/stat field 16; 0 where the kernel does not count them). On the
# development VM steal follows the flush rate of synced writes (docs/performance.md).
steal_ticks() { awk '/^cpu / {print $9; exit}' /proc/stat; }
disk_flushes() { cat /sys/block/*/stat 2>/dev/null | awk 'NF >= 17 {n += $16} END {print n + 0}'; }

# Runs one measured bench and appends its line (with the nodes' CPU seconds, less the
# untimed context-fetching reads of --prefill) to the results. Args: extra JSON fields,
# then bench flags.
measure() {
    local fields=$1 t0 t1 s0 s1 f0 f1 json cpu steal
    shift
    t0=$(node_ticks) s0=$(steal_ticks) f0=$(disk_flushes)
    json=$(bench --json --prefill "$@")
    t1=$(node_ticks) s1=$(steal_ticks) f1=$(disk_flushes)
    cpu=$(python3 -c "print(max(0, ($t1 - $t0 - $PREFILL_TICKS) / $TICKS_PER_S))")
    steal=$(python3 -c "print(($s1 - $s0) / $TICKS_PER_S)")
    echo "{\"policy\":\"$policy\",$fields,\"node_cpu_s\":$cpu,\"steal_s\":$steal,\"disk_flushes\":$((f1 - f0)),\"result\":$json}" >>"$RESULTS"
}

# Starts a fresh, prefilled cluster for $policy (run name $1), measuring what the
# untimed prefill pass of every measured run costs the nodes.
fresh_cluster() {
    start_cluster "$policy" "$1"
    log "prefilling $KEYS keys"
    bench --prefill --ops 0 --concurrency 64 >/dev/null
    # What a prefill pass costs the nodes on a filled cluster (one get a key): every
    # measured run starts with one, which node_cpu_s leaves out.
    local t0
    t0=$(node_ticks)
    bench --prefill --ops 0 --concurrency 64 >/dev/null 2>&1
    PREFILL_TICKS=$(($(node_ticks) - t0))
}

# Records memory and status, then stops the cluster.
finish_cluster() {
    record_memory "$policy"
    local tls=()
    [[ $policy == *-tls ]] && tls=(--ca "$DATA/$policy/tls/ca.pem")
    "$CTL" --addr "$ADDRS" "${tls[@]}" status >"$OUT/status-$policy.txt" 2>&1 || true
    log "stopping the cluster"
    stop_cluster
}

# What one small synced append costs on this disk, before anything else runs: the floor
# (and the stalls) of every synced write below.
log "probing the disk under $DATA (${BENCH_DISK_PROBE:-10} s)"
python3 "$HERE/fsync_probe.py" "$DATA" "${BENCH_DISK_PROBE:-10}" >"$OUT/disk.md"

for rep in $(seq 1 "$REPS"); do
    for policy in $POLICIES; do
        fresh_cluster "peak-$rep"
        for mix in write read mixed; do
            ratio=$(read_ratio "$mix")
            for c in $CONCURRENCY; do
                log "fsync=$policy $mix c=$c run $rep/$REPS ($DURATION)"
                # --prefill here only reads (the keys are filled) and hands out contexts.
                measure "\"mix\":\"$mix\",\"concurrency\":$c,\"rep\":$rep" \
                    --read-ratio "$ratio" --concurrency "$c" --duration "$DURATION" --seed "$rep"
            done
        done
        finish_cluster
    done
done

# Half of the peak: open loop at half the median closed-loop rate at the highest
# concurrency, latency counted from when each request was due.
top=$(echo $CONCURRENCY | tr ' ' '\n' | sort -n | tail -1)
for rep in $(seq 1 "$REPS"); do
    for policy in $POLICIES; do
        fresh_cluster "half-$rep"
        for mix in write read mixed; do
            ratio=$(read_ratio "$mix")
            half=$(python3 "$HERE/summarize.py" --half-peak "$RESULTS" "$policy" "$mix" "$top")
            log "fsync=$policy $mix c=$top at $half ops/s (half of peak) run $rep/$REPS ($DURATION)"
            measure "\"mix\":\"$mix\",\"concurrency\":$top,\"rate\":$half,\"rep\":$rep" \
                --read-ratio "$ratio" --concurrency "$top" --rate "$half" --duration "$DURATION" \
                --seed "$rep"
        done
        finish_cluster
    done
done

{
    echo "# Local cluster benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$NODES nodes N=3 R=2 W=2 on one machine ($(nproc) cores, Linux $(uname -r)), client on the" \
        "same machine; $KEYS keys, $VALUE_SIZE-byte values, $DURATION per run, median of $REPS runs."
    echo
    python3 "$HERE/summarize.py" "$RESULTS" "$MEMORY"
    echo
    cat "$OUT/disk.md"
} | tee "$OUT/summary.md"
log "raw results: $RESULTS"
