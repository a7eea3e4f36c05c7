#!/usr/bin/env bash
# End-to-end test of the operator on a kind cluster, for people who have Docker, kind,
# kubectl and helm. NOT run on the project's development machines or in CI: they have no
# Docker engine and cannot run a Kubernetes API server.
#
# It builds both images, loads them into a fresh kind cluster, installs the chart, creates
# a 3-node DynamoCluster, scales it to 5 and waits for Available, then scales it in to 4
# and checks that the StatefulSet shrank and the departed claim is gone. It needs node
# images whose Admin API implements the map changes (see "What the operator needs from the
# nodes" in docs/kubernetes.md).
#
# Usage: operator/e2e/kind.sh [--keep]   (--keep leaves the kind cluster running)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CLUSTER="dynamo-e2e"
NS="dynamo-e2e"
KEEP="${1:-}"
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is required"; exit 2; }
done

cleanup() { [ "$KEEP" = "--keep" ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds
  local what="$1" secs="$2"; shift 2
  for _ in $(seq "$secs"); do
    if "$@" >/dev/null 2>&1; then echo "e2e: $what"; return 0; fi
    sleep 1
  done
  echo "e2e: timed out waiting for: $what"; kubectl -n "$NS" get dyn,sts,pods,pvc -o wide || true
  kubectl -n "$NS" describe dyn demo || true
  return 1
}

phase() { kubectl -n "$NS" get dyn demo -o jsonpath='{.status.phase}'; }
ready() { kubectl -n "$NS" get dyn demo -o jsonpath='{.status.readyReplicas}'; }
available_with() { [ "$(phase)" = Available ] && [ "$(ready)" = "$1" ]; }

docker build -f "$ROOT/docker/node.Dockerfile" -t dynamo-node:e2e "$ROOT"
docker build -f "$ROOT/docker/operator.Dockerfile" -t dynamo-operator:e2e "$ROOT"
kind create cluster --name "$CLUSTER" --wait 120s
kind load docker-image --name "$CLUSTER" dynamo-node:e2e dynamo-operator:e2e

helm install dynamo-operator "$ROOT/charts/dynamo-operator" --namespace dynamo-system --create-namespace \
  --set image.repository=dynamo-operator --set image.tag=e2e --set image.pullPolicy=Never --wait
helm test dynamo-operator -n dynamo-system

kubectl create namespace "$NS"
sed -e "s/namespace: default/namespace: $NS/" -e "s#image: dynamo-node:0.1.0#image: dynamo-node:e2e#" \
  "$ROOT/examples/dynamocluster.yaml" | kubectl apply -f -
wait_for "3 nodes Available" 300 available_with 3
kubectl -n "$NS" get dyn demo

# CEL: below n is rejected at admission.
if kubectl -n "$NS" patch dyn demo --type=merge -p '{"spec":{"replicas":2}}' 2>/dev/null; then
  echo "e2e: replicas below n was accepted"; exit 1
fi

kubectl -n "$NS" scale dynamocluster/demo --replicas=5
wait_for "5 nodes Available" 300 available_with 5
kubectl -n "$NS" get dyn demo

# Scale-in: the departing node's partitions move to the others before its pod goes; its
# claim is deleted afterwards (spec.storage.onScaleIn defaults to Delete).
kubectl -n "$NS" scale dynamocluster/demo --replicas=4
wait_for "scale-in to 4 nodes Available" 300 available_with 4
[ "$(kubectl -n "$NS" get sts demo -o jsonpath='{.spec.replicas}')" = 4 ] || { echo "e2e: StatefulSet not shrunk"; exit 1; }
[ "$(kubectl -n "$NS" get pvc -o name | wc -l)" = 4 ] || { echo "e2e: the departed claim was not deleted"; exit 1; }

kubectl -n "$NS" delete dyn demo --wait
[ "$(kubectl -n "$NS" get pvc -o name | wc -l)" = 4 ] || { echo "e2e: volumes were not kept"; exit 1; }
echo "e2e: passed"
