#!/usr/bin/env bash
# The operator and the chart against a real Kubernetes control plane (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler built from source by
# scripts/k8s/build-control-plane.sh, cached in ${DYNAMO_K8S_CACHE:-/var/tmp/dynamo-k8s};
# kwok for a fake Node), all on 127.0.0.1:
#   - `helm install` of charts/dynamo-operator with two replicas; the operator processes
#     are the Deployment's pods, run by tests' `kwok-kubelet` with a token of the chart's
#     ServiceAccount (not admin): missing RBAC fails the suite;
#   - one leader through the real Lease, and a takeover when its pod is deleted;
#   - `kubectl apply -f examples/dynamocluster.yaml`: the real StatefulSet controller makes
#     the pods, kwok-kubelet runs a real `dynamo-node` for each (addresses mapped to
#     loopback ports) and reports its /readyz as the pod's readiness;
#   - printer columns, CEL refusals with the documented messages (create, /scale, update);
#   - `kubectl scale --replicas=5` then 3 through /scale, under a writer: partitions move
#     between real nodes, claims of departed nodes are deleted, every acknowledged write
#     reads back;
#   - `helm upgrade` (the Deployment rolls, a new leader runs), deleting the cluster (the
#     finalizer), `helm uninstall` (the CRD is kept).
# Every wait is bounded; every process started is stopped on exit (trap). Prints
# "N passed, M failed" last. KEEP_K8S_STATE=1 keeps the state directory (logs) on success.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
suite_start=$SECONDS

bash scripts/install-chart-tools.sh >/dev/null
export PATH="$ROOT/.tools/bin:$PATH"
CP_BIN="$(scripts/k8s/build-control-plane.sh | tail -1)"
cargo build --workspace --quiet
BIN="$CARGO_TARGET_DIR/debug"

STATE="$(mktemp -d /tmp/dynamo-k8s-suite.XXXXXX)"
API_PORT="${DYNAMO_K8S_API_PORT:-26443}"
NODE_GRPC=7300 NODE_PEER=7340 NODE_HTTP=7380
passed=0
failed=0
kubelet_pid=""
writer_pid=""

cleanup() {
  local rc=$?
  set +e
  [ -n "$writer_pid" ] && kill "$writer_pid" 2>/dev/null && wait "$writer_pid" 2>/dev/null
  if [ -n "$kubelet_pid" ]; then
    kill -TERM "$kubelet_pid" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$kubelet_pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$kubelet_pid" 2>/dev/null
  fi
  scripts/k8s/control-plane.sh stop "$STATE"
  if [ "$failed" -gt 0 ] || [ "$rc" -ne 0 ]; then
    echo "state, logs and kubeconfig kept in $STATE"
  elif [ -z "${KEEP_K8S_STATE:-}" ]; then
    rm -rf "$STATE"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() {
  failed=$((failed + 1)); echo "FAIL $1"
  [ -n "${2:-}" ] && sed 's/^/     /' <<<"$2" | tail -30
  return 0
}
finish() {
  echo "k8s suite: $((SECONDS - suite_start))s"
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
}
# check NAME CMD...: one assertion.
check() {
  local name="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then ok "$name"; else bad "$name" "$out"; fi
}
# must NAME CMD...: an assertion the later ones build on: the suite stops if it fails.
must() {
  check "$@"
  [ "$failed" -eq 0 ] || finish
}
# wait_until SECONDS CMD...: retries CMD until it succeeds; prints its last output if not.
wait_until() {
  local secs="$1"; shift
  local deadline=$((SECONDS + secs)) out
  while true; do
    if out="$("$@" 2>&1)"; then return 0; fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "not within ${secs}s: $*"; echo "$out"; return 1
    fi
    sleep 1
  done
}
# Fails with a diagnosis when $1 (text) does not contain $2.
contains() { grep -qF -- "$2" <<<"$1" || { echo "expected \"$2\" in:"; echo "$1"; return 1; }; }

k() { kubectl "$@"; }
jp() { kubectl get "$1" -o "jsonpath=$2" "${@:3}"; }

scripts/k8s/control-plane.sh start "$STATE" "$CP_BIN"
export KUBECONFIG="$STATE/admin.kubeconfig"
echo "control plane up after $((SECONDS - suite_start))s"

mkdir -p "$STATE/kubelet"
"$BIN/kwok-kubelet" --bin-dir "$BIN" --work-dir "$STATE/kubelet" \
  --api-server "https://127.0.0.1:$API_PORT" --ca-file "$STATE/ca.crt" \
  --node-grpc-base "$NODE_GRPC" --node-peer-base "$NODE_PEER" --node-http-base "$NODE_HTTP" \
  >"$STATE/logs/kwok-kubelet.log" 2>&1 &
kubelet_pid=$!

# --- the chart ---------------------------------------------------------------------------
must "helm install (2 replicas) succeeds and the Deployment becomes available" \
  helm install dynamo-operator charts/dynamo-operator --namespace dynamo-system \
  --create-namespace --set replicaCount=2 --wait --timeout 120s

operator_pods() { jp pods '{range .items[*]}{.metadata.name}{"\n"}{end}' -n dynamo-system -l app.kubernetes.io/name=dynamo-operator; }
lease_holder() { jp lease/dynamo-operator-leader '{.spec.holderIdentity}' -n dynamo-system; }
leader_is_an_operator_pod() {
  local h; h="$(lease_holder)"
  [ -n "$h" ] && operator_pods | grep -qx "$h" || { echo "holder '$h' is not one of: $(operator_pods)"; return 1; }
}
check "one leader through the Lease, one of the two operator pods" \
  wait_until 60 leader_is_an_operator_pod
one_leading() {
  local n; n="$(grep -l '"leading"\|leading$' "$STATE"/kubelet/logs/dynamo-system_dynamo-operator-*.log 2>/dev/null | wc -l)"
  [ "$n" -eq 1 ] || { echo "$n operator processes say they lead"; return 1; }
}
check "exactly one operator process leads" one_leading

# --- a cluster ---------------------------------------------------------------------------
must "kubectl apply -f examples/dynamocluster.yaml" k apply -f examples/dynamocluster.yaml
pods_running() { # count
  local n
  n="$(jp pods '{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}' -l app.kubernetes.io/instance=demo | grep -c . || true)"
  [ "$n" -eq "$1" ] || { echo "$n pods running, want $1"; k get pods -o wide; return 1; }
}
check "the StatefulSet controller makes 3 pods and they run" wait_until 120 pods_running 3
dc_is() { # phase replicas ready epoch
  local got; got="$(jp dyn/demo '{.status.phase} {.spec.replicas} {.status.readyReplicas} {.status.mapEpoch}')"
  [ "$got" = "$1 $2 $3 $4" ] || { echo "demo: $got, want $1 $2 $3 $4"; k get dyn demo -o yaml | sed -n '/^status:/,$p'; return 1; }
}
must "the cluster becomes Available with a first map (epoch 1) on 3 ready real nodes" \
  wait_until 180 dc_is Available 3 3 1

printer_columns() {
  local out; out="$(k get dynamoclusters)"
  [ "$(head -1 <<<"$out" | tr -s ' ')" = "NAME REPLICAS READY EPOCH PHASE AGE" ] &&
    grep -qE '^demo +3 +3 +1 +Available ' <<<"$out" || { echo "$out"; return 1; }
}
check "kubectl get dynamoclusters shows the printer columns" printer_columns

# --- TLS (on by default) -------------------------------------------------------------------
secret_keys() { k get secret "$1" -o json | python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["data"])))'; }
pods_have_certificates() { # the pods whose certificates the node Secret must hold, exactly
  local want="ca.crt" o; for o in "$@"; do want="$want demo-$o.crt demo-$o.key"; done
  local got; got="$(secret_keys demo-tls)"
  [ "$got" = "$(tr ' ' '\n' <<<"$want" | LC_ALL=C sort | tr '\n' ' ' | sed 's/ $//')" ] ||
    { echo "demo-tls holds: $got"; echo "want: $want"; return 1; }
}
ca_and_certificates() { [ "$(secret_keys demo-ca)" = "ca.crt ca.key" ] && pods_have_certificates 0 1 2; }
check "TLS: the operator made the cluster CA (demo-ca) and a certificate for each pod (demo-tls)" \
  ca_and_certificates
k get secret demo-tls -o 'jsonpath={.data.ca\.crt}' | base64 -d >"$STATE/demo-ca.crt"
plaintext_refused() {
  local out
  if out="$(env -u DYNAMO_CA "$BIN/dynamoctl" --addr "127.0.0.1:$NODE_GRPC" --timeout 3s get tls-probe 2>&1)"; then
    echo "a plaintext get was answered: $out"; return 1
  fi
}
check "TLS: a node refuses a plaintext client" plaintext_refused
verified_put_get() {
  DYNAMO_CA="$STATE/demo-ca.crt" "$BIN/dynamoctl" --addr "127.0.0.1:$NODE_GRPC" --timeout 5s put tls-probe yes >/dev/null &&
    DYNAMO_CA="$STATE/demo-ca.crt" "$BIN/dynamoctl" --addr "127.0.0.1:$((NODE_GRPC + 2))" --timeout 5s get tls-probe | grep -q yes
}
check "TLS: dynamoctl with the cluster CA puts and gets (the node verified by its certificate)" \
  wait_until 30 verified_put_get
export DYNAMO_CA="$STATE/demo-ca.crt"

# --- CEL ---------------------------------------------------------------------------------
refused() { # message, then the command that must fail with it
  local msg="$1" out; shift
  if out="$("$@" 2>&1)"; then echo "accepted: $*"; echo "$out"; return 1; fi
  contains "$out" "$msg"
}
bad_spec() {
  k apply -f - <<'YAML'
apiVersion: dynamokv.io/v1alpha1
kind: DynamoCluster
metadata: {name: bad, namespace: default}
spec: {replicas: 3, replication: {"n": 3, r: 4, w: 2}}
YAML
}
check "CEL: r > n is refused at creation with the documented message" \
  refused "replication.r must be at most replication.n" bad_spec
check "CEL: kubectl scale below replication.n is refused through /scale" \
  refused "spec.replicas must be at least spec.replication.n" k scale dynamocluster/demo --replicas=2
check "CEL: spec.tls.enabled is fixed at creation" \
  refused "spec.tls.enabled is fixed when the cluster is created" k patch dyn demo --type merge -p '{"spec":{"tls":{"enabled":false}}}'
check "CEL: spec.partitions is immutable" \
  refused "spec.partitions is immutable" k patch dyn demo --type merge -p '{"spec":{"partitions":512}}'

# --- scale 3 -> 5 -> 3 under a writer -----------------------------------------------------
export DYNAMO_ADDR="127.0.0.1:$NODE_GRPC,127.0.0.1:$((NODE_GRPC + 1)),127.0.0.1:$((NODE_GRPC + 2))"
scripts/k8s/writer.sh "$BIN/dynamoctl" "$STATE/acked" "$STATE/stop-writer" &
writer_pid=$!
sleep 3

must "kubectl scale dynamocluster/demo --replicas=5 goes through /scale" \
  k scale dynamocluster/demo --replicas=5
replicas_are() { [ "$(jp dyn/demo '{.spec.replicas}')" = "$1" ]; }
check "the scale set spec.replicas" wait_until 10 replicas_are 5
partitions_of() { jp dyn/demo "{.status.partitionsPerNode.$1}"; }
moved_to_new_nodes() {
  local p3 p4; p3="$(partitions_of demo-3)" p4="$(partitions_of demo-4)"
  [ "${p3:-0}" -gt 0 ] && [ "${p4:-0}" -gt 0 ] || { echo "demo-3: '$p3' demo-4: '$p4' partitions"; return 1; }
}
must "scale-out: Available with 5 ready nodes and a new map (epoch 2)" \
  wait_until 300 dc_is Available 5 5 2
check "scale-out: partitions moved to the new nodes" moved_to_new_nodes
received_partitions() { # real transfers into the new nodes' stores
  local n; n="$(cat "$STATE"/kubelet/logs/default_demo-[34].log | grep -c 'partition received' || true)"
  [ "$n" -gt 0 ] || { echo "no partition transfer logged by demo-3 or demo-4"; return 1; }
  echo "$n partitions received"
}
check "scale-out: the new nodes received their partitions from the old ones" received_partitions
check "scale-out: the new pods got certificates" pods_have_certificates 0 1 2 3 4

must "kubectl scale dynamocluster/demo --replicas=3" k scale dynamocluster/demo --replicas=3
must "scale-in: Available with 3 ready nodes and a new map (epoch 3)" \
  wait_until 300 dc_is Available 3 3 3
no_departed_claims() {
  local c; c="$(jp pvc '{range .items[*]}{.metadata.name}{"\n"}{end}' | sort | tr '\n' ' ')"
  [ "$c" = "data-demo-0 data-demo-1 data-demo-2 " ] || { echo "claims: $c"; return 1; }
}
check "scale-in: the departed nodes' claims are deleted (onScaleIn: Delete)" \
  wait_until 60 no_departed_claims
check "scale-in: the StatefulSet is back at 3 pods" wait_until 60 pods_running 3
only_remaining_nodes_in_map() {
  local m; m="$(jp dyn/demo '{.status.partitionsPerNode}')"
  contains "$m" '"demo-0"' && contains "$m" '"demo-2"' && ! grep -q 'demo-[34]' <<<"$m" ||
    { echo "partitionsPerNode: $m"; return 1; }
}
check "scale-in: the map holds only demo-0..2" only_remaining_nodes_in_map
check "scale-in: the departed pods' certificates are dropped" wait_until 30 pods_have_certificates 0 1 2

touch "$STATE/stop-writer"
wait "$writer_pid" || true
writer_pid=""
all_acked_read_back() {
  local n=0 missing=0 key
  while read -r key; do
    n=$((n + 1))
    "$BIN/dynamoctl" --timeout 5s get "$key" 2>/dev/null | grep -q "v-${key#w-}" || {
      missing=$((missing + 1)); echo "missing: $key"; }
  done < "$STATE/acked"
  echo "$n acknowledged writes, $missing missing"
  [ "$n" -ge 50 ] && [ "$missing" -eq 0 ]
}
check "every write acknowledged during 3 -> 5 -> 3 reads back" all_acked_read_back

# --- leader failover ---------------------------------------------------------------------
old_leader="$(lease_holder)"
must "deleting the leader's pod" k delete pod -n dynamo-system "$old_leader" --wait=false
new_leader() {
  local h; h="$(lease_holder)"
  [ -n "$h" ] && [ "$h" != "$old_leader" ] && operator_pods | grep -qx "$h" ||
    { echo "holder '$h' (old $old_leader)"; return 1; }
}
check "another operator pod takes the Lease" wait_until 90 new_leader

# --- helm upgrade ------------------------------------------------------------------------
must "helm upgrade (log level debug) rolls the Deployment" \
  helm upgrade dynamo-operator charts/dynamo-operator --namespace dynamo-system \
  --reuse-values --set logLevel=debug --wait --timeout 180s
upgraded_leader() {
  local h; h="$(lease_holder)"
  leader_is_an_operator_pod &&
    [ "$(jp pod/"$h" '{.spec.containers[0].env[?(@.name=="DYNAMO_OPERATOR_LOG")].value}' -n dynamo-system)" = debug ] ||
    { echo "leader $h does not run the upgraded template"; return 1; }
}
check "helm upgrade: a pod of the new template leads" wait_until 90 upgraded_leader
check "helm upgrade: the CRD is still served" k get crd dynamoclusters.dynamokv.io

# --- delete the cluster: the finalizer ---------------------------------------------------
must "kubectl delete dynamocluster demo (the finalizer runs)" \
  k delete dynamocluster demo --timeout 120s
check "deleting the cluster removes its StatefulSet, Services and Secret" \
  wait_until 60 bash -c "! kubectl get statefulset/demo service/demo service/demo-peers secret/demo-secret configmap/demo-config 2>/dev/null | grep -q ."
check "deleting the cluster keeps the data claims" no_departed_claims
deleted_event() {
  contains "$(k get events --field-selector reason=Deleted -o jsonpath='{.items[*].message}')" \
    "its data volumes (data-demo-N) are kept"
}
check "the finalizer's Event says the claims are kept" wait_until 30 deleted_event

# Checked before the uninstall: helm deletes the RBAC and the Deployment together, and an
# operator still running in that moment is rightly refused (a CI run saw exactly that).
forbidden() {
  if grep -il "forbidden" "$STATE"/kubelet/logs/dynamo-system_*.log; then return 1; fi
}
check "the operator was never refused by RBAC (no 'forbidden' in its logs)" forbidden

# --- helm uninstall ----------------------------------------------------------------------
must "helm uninstall" helm uninstall dynamo-operator --namespace dynamo-system --wait --timeout 60s
check "helm uninstall: the Deployment and RBAC are gone" \
  bash -c "! kubectl get -n dynamo-system deployment/dynamo-operator 2>/dev/null | grep -q . && ! kubectl get clusterrole dynamo-operator 2>/dev/null | grep -q ."
check "helm uninstall: the CRD is kept (crds.keep)" k get crd dynamoclusters.dynamokv.io
operator_processes_stopped() { # every operator process kwok-kubelet started has exited
  local log="$STATE/logs/kwok-kubelet.log" pod left=0
  for pod in $(sed -nE 's#^kwok-kubelet: started dynamo-system/([^ ]+) .*#\1#p' "$log"); do
    grep -q "^kwok-kubelet: dynamo-system/$pod exited" "$log" || { echo "$pod still runs"; left=1; }
  done
  [ "$left" -eq 0 ]
}
check "helm uninstall: every operator process stopped with its pod" \
  wait_until 30 operator_processes_stopped

finish
