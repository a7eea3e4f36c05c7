#!/usr/bin/env bash
# Rebalance benchmark: what a change of members costs on a loaded local cluster.
#
# A 3-node cluster (N=3 R=2 W=2, Q=256, fsync periodic, one runtime thread per node, as
# `dynamoctl cluster` starts them; the added node gets the same flags) is filled with REB_KEYS keys of
# 100 bytes, the compactions the fill owes are waited for (dynamo_compaction_debt_bytes
# back to 0 on every node, at most 10 minutes), and its peak measured (closed loop, 64
# workers, 50/50 gets and puts). Then,
# REB_REPS times:
#   1. baseline: an open-loop run at half of that peak (REB_LOAD_FRACTION), nothing
#      moving, measured as the changes are (250 ms timeline, CPU sampler);
#   2. 3 → 4: a fresh node started from a seed, `dynamoctl change apply --add` (plan,
#      commit, move, finalize) while the same open-loop load runs;
#   3. 4 → 3: that node removed the same way under the same load, then stopped.
# For each change it records the partition replicas moved against the Strategy 3
# minimum (from the plan), the bytes the new replicas received (the nodes'
# dynamo_transfer_bytes counters), the time from commit to finalize (polled every
# 0.5 s), the time the clean-up took after it (dynamo_partitions_to_drop back to 0 on the
# three cluster nodes; the next run starts only then), and the load's p99/p99.9 while
# it ran. The load starts REB_COMMIT_AFTER seconds before the change is applied and
# is measured for REB_LOAD after that; a change that finishes earlier is reported as
# such (its window also holds quiet time). The summary also gives the worst p99 of a 250 ms
# slice in the first second after the commit, and the same second of the baseline. Prints a markdown table of medians; raw lines go to the output dir.
# Every process it starts is stopped on exit, failure or Ctrl-C.
#
# Environment (all optional):
#   REB_KEYS=1000000   keys;   REB_REPS=3   repetitions;   REB_LOAD=40s   load per run
#   REB_LOAD_FRACTION=0.5   the load as a fraction of the measured peak
#   REB_COMMIT_AFTER=2   seconds of load before the change is applied, not counted
#      in the latencies (`bench --skip`), the baseline's as the changes': the first
#      half second of a load after an idle spell is slow on its own (p99 35-170 ms in
#      baselines and changes alike), and the commit must not be confused with it
#   REB_BASE_PORT=7400 gRPC ports base+1..; HTTP ports REB_HTTP_BASE_PORT=7480
#   BENCH_NO_BUILD=1   skip the cargo build;  BENCH_OUT=target/bench  results parent
#   TMPDIR             parent of the data directories;  CARGO_TARGET_DIR  binaries
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KEYS=${REB_KEYS:-1000000}
REPS=${REB_REPS:-3}
LOAD=${REB_LOAD:-40s}
FRACTION=${REB_LOAD_FRACTION:-0.5}
COMMIT_AFTER=${REB_COMMIT_AFTER:-2}
[[ $LOAD =~ ^[0-9]+s$ && $COMMIT_AFTER =~ ^[0-9]+$ ]] ||
    { echo "REB_LOAD must be whole seconds (40s), REB_COMMIT_AFTER a whole number" >&2; exit 2; }
BASE_PORT=${REB_BASE_PORT:-7400}
HTTP_BASE_PORT=${REB_HTTP_BASE_PORT:-7480}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT="${BENCH_OUT:-$ROOT/target/bench}/rebalance-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
DATA=$(mktemp -d "${TMPDIR:-/tmp}/dynamo-rebalance.XXXXXX")
CLUSTER_PID=""
EXTRA_PID=""

log() { echo "[rebalance $(date -u +%H:%M:%S)] $*" >&2; }

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    # Background jobs of this script (a load, a CPU sampler) go first.
    kill $(jobs -p) 2>/dev/null || true
    [[ -n "$EXTRA_PID" ]] && kill -KILL "$EXTRA_PID" 2>/dev/null || true
    if [[ -n "$CLUSTER_PID" ]] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
        kill -TERM "$CLUSTER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$CLUSTER_PID" 2>/dev/null || break
            sleep 0.1
        done
        pkill -KILL -P "$CLUSTER_PID" 2>/dev/null || true
        kill -KILL "$CLUSTER_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
    [[ $code -ne 0 ]] && log "failed (exit $code); logs in $OUT"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p dynamo-node -p dynamo-client)
fi
CTL="$TARGET/release/dynamoctl"
NODE_BIN="$TARGET/release/dynamo-node"
ADDRS=$(seq -s, -f "127.0.0.1:%g" $((BASE_PORT + 1)) $((BASE_PORT + 3)))
ctl() { "$CTL" --addr "$ADDRS" "$@"; }

log "starting a 3-node cluster in $DATA"
"$CTL" cluster --nodes 3 --wipe --data-dir "$DATA" --base-port "$BASE_PORT" \
    --http-base-port "$HTTP_BASE_PORT" --node-bin "$NODE_BIN" --ready-timeout 120s \
    >"$OUT/cluster.log" 2>&1 &
CLUSTER_PID=$!
for _ in $(seq 1 1200); do
    grep -q "is ready:" "$OUT/cluster.log" && break
    kill -0 "$CLUSTER_PID" 2>/dev/null || { tail -n 20 "$OUT/cluster.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "is ready:" "$OUT/cluster.log" || { log "cluster not ready"; exit 1; }
SECRET=$(ls "$DATA"/*secret* | head -n 1)

bench() { ctl bench --quiet --keys "$KEYS" --value-size 100 --concurrency 64 "$@"; }

log "filling $KEYS keys"
t0=$(date +%s)
bench --prefill --ops 0 >/dev/null
log "filled in $(($(date +%s) - t0)) s"
# The prefill leaves compactions owed (they run at the lowest priority); measured before
# they are paid, the peak is one the cluster cannot keep, and half of it overloads it.
debt() {
    local port
    for port in $((HTTP_BASE_PORT + 1)) $((HTTP_BASE_PORT + 2)) $((HTTP_BASE_PORT + 3)); do
        curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null || true
    done | awk '/^dynamo_compaction_debt_bytes / {d += $2} END {printf "%d\n", d}'
}
t0=$(date +%s)
for _ in $(seq 1 1200); do
    [[ $(debt) -eq 0 ]] && break
    sleep 0.5
done
log "compactions owed by the prefill paid in $(($(date +%s) - t0)) s (still owed: $(debt) bytes)"
PEAK=$(bench --json --read-ratio 0.5 --duration 10s | python3 -c 'import json,sys; print(json.load(sys.stdin)["ops_per_sec"])')
RATE=$(python3 -c "print(int($PEAK * $FRACTION))")
log "peak $PEAK ops/s; load at $RATE ops/s ($FRACTION of it)"

# Sum of the nodes' transfer_bytes counters (HTTP ports of node-1..3 and the extra node).
transferred() {
    local total=0 port v
    for port in $((HTTP_BASE_PORT + 1)) $((HTTP_BASE_PORT + 2)) $((HTTP_BASE_PORT + 3)) $((HTTP_BASE_PORT + 4)); do
        v=$(curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null \
            | awk '/^dynamo_transfer_bytes_total / {print $2}') || true
        total=$(python3 -c "print(int($total + ${v:-0}))")
    done
    echo "$total"
}

# Read repairs done, skipped over the budget, and reads for repair that found a new
# replica still receiving its partition, summed over every node: "done skipped arriving".
repairs() {
    local port
    for port in $((HTTP_BASE_PORT + 1)) $((HTTP_BASE_PORT + 2)) $((HTTP_BASE_PORT + 3)) $((HTTP_BASE_PORT + 4)); do
        curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null || true
    done | awk '/^dynamo_read_repairs_total / {d += $2} /^dynamo_read_repairs_skipped_total / {s += $2}
        /^dynamo_read_repairs_arriving_total / {a += $2}
        END {printf "%d %d %d\n", d, s, a}'
}

# Partitions the three cluster nodes hold but no longer replicate (their clean-up left).
to_drop() {
    local total=0 port v
    for port in $((HTTP_BASE_PORT + 1)) $((HTTP_BASE_PORT + 2)) $((HTTP_BASE_PORT + 3)); do
        v=$(curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null \
            | awk '/^dynamo_partitions_to_drop / {print $2}') || true
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Samples every node's CPU time (clock ticks, user + system) and bytes written to disk,
# and the machine's busy/idle/iowait/steal ticks, every 250 ms into $1 until killed: a
# line per sample, "time machine=busy/idle/iowait/steal node-id=ticks/bytes ...". One
# process reading /proc: a shell loop forking pgrep, awk and cut for every node four
# times a second cost a few % of the machine itself.
sample_cpu() {
    exec python3 -c '
import os, sys, time
node_bin = sys.argv[1]
def nodes():
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if os.path.basename(args[0]) == os.path.basename(node_bin) and "--node-id" in args:
            yield pid, args[args.index("--node-id") + 1]
while True:
    cpu = open("/proc/stat").readline().split()[1:]
    busy = sum(int(cpu[i]) for i in (0, 1, 2, 5, 6))
    now = time.time()
    line = [time.strftime("%H:%M:%S", time.gmtime(now)) + ".%03d" % (int(now * 1000) % 1000),
            f"machine={busy}/{cpu[3]}/{cpu[4]}/{cpu[7]}"]
    for pid, name in nodes():
        try:
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            io = dict(l.split(": ") for l in open(f"/proc/{pid}/io").read().splitlines())
        except OSError:
            continue
        wrote = int(io.get("write_bytes", 0))
        line.append(f"{name}={int(stat[11]) + int(stat[12])}/{wrote}")
    print(" ".join(line), flush=True)
    time.sleep(0.25)
' "$NODE_BIN" >"$1"
}

# One change under load: $1 = name, then `change apply` arguments. Appends a line.
change_under_load() {
    local name=$1 rep=$2 b0 b1 rr0 rs0 ra0 rr1 rs1 ra1
    shift 2
    b0=$(transferred)
    read -r rr0 rs0 ra0 <<<"$(repairs)"
    echo "$(date -u +%T.%3N) load starts" >"$OUT/change-$name-$rep.log"
    bench --json --read-ratio 0.5 --rate "$RATE" --skip "${COMMIT_AFTER}s" --duration "$LOAD" --timeline 250ms \
        >"$OUT/load-$name-$rep.json" &
    local load_pid=$!
    sample_cpu "$OUT/cpu-$name-$rep.txt" &
    local cpu_pid=$!
    sleep "$COMMIT_AFTER"
    echo "$(date -u +%T.%3N) applying the change" >>"$OUT/change-$name-$rep.log"
    # Each line of the change's output stamped with the time it came (UTC, as the nodes log).
    # (Stamped with shell builtins: a `date` per line forked ~200 processes in the half
    # second the plan prints, and that burst alone put 100-400 ms into the load's p99.)
    ctl change apply "$@" 2>&1 | while IFS= read -r line; do
        local now=$EPOCHREALTIME frac
        frac=${now#*.}
        TZ=UTC printf '%(%T)T.%s %s\n' "${now%.*}" "${frac:0:3}" "$line"
    done >>"$OUT/change-$name-$rep.log"
    local t_final=$SECONDS
    # The change's clean-up (partitions dropped where no longer replicated) is part of
    # its cost, and must not spill into the next run: wait for it.
    sleep 1
    for _ in $(seq 1 600); do
        [[ $(to_drop) -eq 0 ]] && break
        sleep 0.2
    done
    echo "clean-up done $((SECONDS - t_final)) s after the change was in force" \
        >>"$OUT/change-$name-$rep.log"
    wait "$load_pid"
    read -r rr1 rs1 ra1 <<<"$(repairs)"
    echo "read repairs during the run: $((rr1 - rr0)) done, $((rs1 - rs0)) skipped over the budget, $((ra1 - ra0)) reads found a new replica still receiving" \
        >>"$OUT/change-$name-$rep.log"
    kill "$cpu_pid" 2>/dev/null || true
    b1=$(transferred)
    python3 - "$name" "$rep" "$OUT/change-$name-$rep.log" "$OUT/load-$name-$rep.json" \
        "$((b1 - b0))" "$LOAD" >>"$RESULTS" <<'EOF'
import json, re, sys
name, rep, log, load, moved_bytes, window = sys.argv[1:]
text = open(log).read()
m = re.search(r"(\d+) partition replicas move \(fewest possible: (\d+)\)", text)
def at(pattern):
    h, mi, sec = re.search(r"^(\d+):(\d+):([\d.]+) " + pattern, text, re.M).groups()
    return (int(h) * 60 + int(mi)) * 60 + float(sec)
# When the change was committed, in seconds after the load was started.
committed = (at("committed epoch") - at("load starts")) % 86400
t = re.search(r"is in force after ([\d.]+) s", text)
c = re.search(r"clean-up done (\d+) s after", text)
print(json.dumps({"run": name, "rep": int(rep), "moves": int(m.group(1)),
                  "minimum": int(m.group(2)), "seconds": float(t.group(1)),
                  "committed_after_s": round(committed, 3),
                  "bytes": int(moved_bytes), "window_s": float(window.rstrip("s")),
                  "cleanup_s": int(c.group(1)) if c else None,
                  "load": json.load(open(load))}))
EOF
}

for rep in $(seq 1 "$REPS"); do
    log "rep $rep: baseline load"
    # Measured as the changes are (250 ms timeline, the CPU sampler alongside), so that
    # the ratios compare like with like: the sampler alone costs a few % of the machine.
    sample_cpu "$OUT/cpu-baseline-$rep.txt" &
    cpu_pid=$!
    bench --json --read-ratio 0.5 --rate "$RATE" --skip "${COMMIT_AFTER}s" --duration "$LOAD" --timeline 250ms \
        >"$OUT/load-baseline-$rep.json"
    kill "$cpu_pid" 2>/dev/null || true
    python3 -c "import json,sys; print(json.dumps({'run':'baseline','rep':$rep,'load':json.load(open('$OUT/load-baseline-$rep.json'))}))" >>"$RESULTS"

    id="node-x$rep"
    log "rep $rep: 3 -> 4 (adding $id)"
    "$NODE_BIN" --node-id "$id" --listen "127.0.0.1:$((BASE_PORT + 4))" \
        --http-listen "127.0.0.1:$((HTTP_BASE_PORT + 4))" --data-dir "$DATA/$id" \
        --cluster-id local --cluster-secret-file "$SECRET" --partitions 256 \
        --n 3 --r 2 --w 2 --fsync periodic --runtime-threads 1 \
        --seeds "127.0.0.1:$((BASE_PORT + 1))" >"$OUT/$id.log" 2>&1 &
    EXTRA_PID=$!
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$((HTTP_BASE_PORT + 4))/readyz" >/dev/null && break
        sleep 0.1
    done
    change_under_load scale-out "$rep" --add "$id=127.0.0.1:$((BASE_PORT + 4))"
    log "rep $rep: 4 -> 3 (removing $id)"
    change_under_load scale-in "$rep" --remove "$id"
    kill -TERM "$EXTRA_PID"
    wait "$EXTRA_PID" 2>/dev/null || true
    EXTRA_PID=""
    rm -rf "${DATA:?}/$id"
done

python3 - "$RESULTS" "$PEAK" "$KEYS" "$FRACTION" "$COMMIT_AFTER" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else float("nan")
def lat(run, p):
    return med([r["load"]["latency_us"][p] / 1000 for r in rows if r["run"] == run])
def first_second(r):
    # The worst p99 of the 250 ms slices in the second after the commit (the baseline:
    # after the time its changes are applied); slices are timed from the load's start.
    at = r.get("committed_after_s", float(sys.argv[5])) * 1000
    return max(s["p99_ms"] for s in r["load"]["timeline"] if at - 250 <= s["start_ms"] < at + 1000)
def first(run):
    return med([first_second(r) for r in rows if r["run"] == run])
print(f"{sys.argv[3]} keys of 100 bytes, peak {float(sys.argv[2]):.0f} ops/s, load at {float(sys.argv[4]):g} of it; medians of {len([r for r in rows if r['run']=='baseline'])} runs\n")
print("| run | replicas moved (minimum) | bytes moved | time s | clean-up s | MB/s | ops/s | errors | p99 ms | p99.9 ms | p99 vs baseline | first second's p99 ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
base99 = lat("baseline", "p99")
for run in ["baseline", "scale-out", "scale-in"]:
    rs = [r for r in rows if r["run"] == run]
    if not rs:
        continue
    ops = med([r["load"]["ops_per_sec"] for r in rs])
    errs = med([r["load"]["errors"] for r in rs])
    p99, p999 = lat(run, "p99"), lat(run, "p999")
    if run == "baseline":
        print(f"| {run} | - | - | - | - | - | {ops:.0f} | {errs:.0f} | {p99:.1f} | {p999:.1f} | 1.00x | {first(run):.1f} |")
        continue
    moves, minimum = med([r["moves"] for r in rs]), med([r["minimum"] for r in rs])
    secs, by = med([r["seconds"] for r in rs]), med([r["bytes"] for r in rs])
    mbs = med([r["bytes"] / 1e6 / r["seconds"] for r in rs])
    clean = med([r["cleanup_s"] for r in rs if r.get("cleanup_s") is not None])
    print(f"| {run} | {moves:.0f} ({minimum:.0f}) | {by/1e6:.1f} MB | {secs:.1f} | {clean:.0f} | {mbs:.1f} | {ops:.0f} | {errs:.0f} | {p99:.1f} | {p999:.1f} | {p99/base99:.2f}x | {first(run):.1f} |")
done = lambda r: r["seconds"] + (r.get("cleanup_s") or 0)
short = [r for r in rows if "seconds" in r and done(r) < r["window_s"]]
if short:
    print(f"\n{len(short)} change(s) and clean-up(s) finished inside the load window: their latency window also holds quiet time.")
long = [r for r in rows if "seconds" in r and done(r) > r["window_s"]]
if long:
    print(f"\n{len(long)} change(s) and clean-up(s) outlasted the load window (REB_LOAD): their tail is not measured.")
EOF
log "results in $OUT"
