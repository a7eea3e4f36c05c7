#!/usr/bin/env bash
# Starts or stops a local Kubernetes control plane built by build-control-plane.sh:
# etcd, kube-apiserver (RBAC, service-account tokens), kube-controller-manager,
# kube-scheduler and kwok (one fake Node, `kwok-node-0`, whose pods it moves to Running;
# the default StorageClass `kwok-volume`, whose claims it provisions),
# all on 127.0.0.1 only, with certificates generated into the state directory.
#
#   control-plane.sh start STATE_DIR BIN_DIR   # returns once the API server is ready
#   control-plane.sh stop STATE_DIR            # stops every process `start` started
#
# STATE_DIR gets: admin.kubeconfig (cluster-admin, client certificate), ca.crt, pids,
# logs/*.log, and the etcd data. Ports: DYNAMO_K8S_API_PORT (default 26443) and the next
# few ports above it (etcd client/peer, controller-manager, scheduler and kwok endpoints).
set -euo pipefail

cmd="${1:?usage: control-plane.sh start STATE_DIR BIN_DIR | stop STATE_DIR}"
STATE="${2:?state directory}"

stop() {
  local pidfile="$STATE/pids"
  [ -f "$pidfile" ] || return 0
  # Reverse start order: kwok and the controllers first, etcd last.
  local pids
  pids="$(tac "$pidfile")"
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$pidfile"
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
[ "$cmd" = start ] || { echo "unknown command $cmd" >&2; exit 2; }
BIN="${3:?directory of the control-plane binaries}"

API_PORT="${DYNAMO_K8S_API_PORT:-26443}"
ETCD_PORT=$((API_PORT + 1))
ETCD_PEER_PORT=$((API_PORT + 2))
KCM_PORT=$((API_PORT + 3))
SCHED_PORT=$((API_PORT + 4))
KWOK_PORT=$((API_PORT + 5))
for p in "$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KCM_PORT" "$SCHED_PORT" "$KWOK_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "control-plane: port $p on 127.0.0.1 is in use (set DYNAMO_K8S_API_PORT)" >&2
    exit 1
  fi
done

mkdir -p "$STATE/logs" "$STATE/pki"
PKI="$STATE/pki"
: > "$STATE/pids"

# --- certificates ------------------------------------------------------------------------
ssl() { openssl "$@" >/dev/null 2>&1; }
ssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dynamo-test-ca" \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt"
client_cert() { # name subject
  ssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr"
  ssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -out "$PKI/$1.crt" -extfile <(printf 'extendedKeyUsage=clientAuth\n')
}
ssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr"
ssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 2 -out "$PKI/apiserver.crt" -extfile <(printf '%s\n' \
  'extendedKeyUsage=serverAuth' \
  'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1')
client_cert admin "/O=system:masters/CN=kubernetes-admin"
client_cert kcm "/CN=system:kube-controller-manager"
client_cert scheduler "/CN=system:kube-scheduler"
ssl genrsa -out "$PKI/sa.key" 2048
ssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
cp "$PKI/ca.crt" "$STATE/ca.crt"

kubeconfig() { # file user
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: local
  context: {cluster: local, user: $2}
current-context: local
KC
}
kubeconfig "$STATE/admin.kubeconfig" admin
kubeconfig "$STATE/kcm.kubeconfig" kcm
kubeconfig "$STATE/scheduler.kubeconfig" scheduler

launch() { # name args...
  local name="$1"; shift
  "$@" >"$STATE/logs/$name.log" 2>&1 &
  echo "$!" >> "$STATE/pids"
}

wait_for() { # what seconds command...
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "control-plane: $what not up within ${secs}s; see $STATE/logs" >&2
      for f in "$STATE"/logs/*.log; do echo "== $f" >&2; tail -n 20 "$f" >&2; done
      return 1
    fi
    sleep 0.3
  done
}

# --- etcd --------------------------------------------------------------------------------
launch etcd "$BIN/etcd" --name default --data-dir "$STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
  --listen-metrics-urls "" --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

# --- kube-apiserver ----------------------------------------------------------------------
launch kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --allow-privileged=true \
  --endpoint-reconciler-type none \
  --v 1
wait_for kube-apiserver 90 curl -sf --cacert "$PKI/ca.crt" \
  --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://127.0.0.1:$API_PORT/readyz"

# --- controllers, scheduler, kwok ---------------------------------------------------------
launch kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$STATE/kcm.kubeconfig" \
  --authentication-kubeconfig "$STATE/kcm.kubeconfig" \
  --authorization-kubeconfig "$STATE/kcm.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --use-service-account-credentials=true --leader-elect=false \
  --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller' \
  --v 1
launch kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig "$STATE/scheduler.kubeconfig" \
  --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
  --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false --v 1
# kwok's own fast stages (copied from its module by build-control-plane.sh), except that
# pods start not ready (kwok-pod-ready.yaml); its StorageClass is applied below.
HERE="$(cd "$(dirname "$0")" && pwd)"
for f in "$BIN"/kwok-stages/*.yaml; do
  case "$(basename "$f")" in
    pod-ready.yaml) cat "$HERE/kwok-pod-ready.yaml" ;;
    storage-class.yaml) continue ;;
    *) cat "$f" ;;
  esac
  echo "---"
done > "$STATE/kwok.yaml"
launch kwok "$BIN/kwok" --kubeconfig "$STATE/admin.kubeconfig" --config "$STATE/kwok.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --server-address "127.0.0.1:$KWOK_PORT"

export KUBECONFIG="$STATE/admin.kubeconfig"
KUBECTL="${KUBECTL:-kubectl}"
wait_for "the default ServiceAccount" 60 "$KUBECTL" get serviceaccount default -n default
"$KUBECTL" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    type: kwok
    topology.kubernetes.io/zone: zone-a
spec: {}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
YAML
# kwok provisions the claims of this default StorageClass (its volume stages).
"$KUBECTL" apply -f "$BIN/kwok-stages/storage-class.yaml" >/dev/null
wait_for "node kwok-node-0 Ready" 60 "$KUBECTL" wait --for=condition=Ready node/kwok-node-0 --timeout=1s
echo "control-plane: up at https://127.0.0.1:$API_PORT (KUBECONFIG=$STATE/admin.kubeconfig)" >&2
