#!/usr/bin/env bash
# Builds a Kubernetes control plane from its Go modules (no release binaries can be
# downloaded on these machines) into a cache outside the clone, reused by later runs:
#   etcd                     go.etcd.io/etcd/server/v3
#   kube-apiserver,
#   kube-controller-manager,
#   kube-scheduler           k8s.io/kubernetes (a scratch module that requires it and
#                            replaces each staging module, v0.0.0 in its go.mod, with the
#                            matching published v0.x version)
#   kwok                     sigs.k8s.io/kwok (a fake Node; moves pods to Running/Ready)
# into $DYNAMO_K8S_CACHE/bin/<stamp>/ (default cache /var/tmp/dynamo-k8s, which also holds
# GOMODCACHE and GOCACHE). Prints the directory holding the binaries on its last line.
# A build already in the cache is reused as is; a cold build is timed and reported.
# Installs what it needs on a fresh Debian machine (as root): openssl, git, and Go: the
# system Go if it is 1.26 or newer, else Go 1.27.3 from the module proxy (also forced by
# DYNAMO_K8S_FETCH_GO=1).
set -euo pipefail

K8S_VERSION=1.35.4       # kube-apiserver, -controller-manager, -scheduler (staging v0.35.4)
ETCD_VERSION=3.6.17
KWOK_VERSION=0.8.0
STAMP="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"

CACHE="${DYNAMO_K8S_CACHE:-/var/tmp/dynamo-k8s}"
OUT="$CACHE/bin/$STAMP"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

have_all() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || return 1; done
  [ -d "$OUT/kwok-stages" ]
}
if have_all; then
  echo "build-control-plane: cached in $OUT" >&2
  echo "$OUT"
  exit 0
fi

log() { echo "build-control-plane: $*" >&2; }

# --- tools -------------------------------------------------------------------------------
export PATH="/usr/local/go/bin:$PATH"
need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v go >/dev/null || need_apt+=(golang-go)
command -v git >/dev/null || need_apt+=(git)
command -v curl >/dev/null || need_apt+=(curl)   # control-plane.sh polls health with it
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need_apt[@]}" >&2
fi
# The modules need Go >= 1.26. An older go command (Debian's is 1.19, too old even to
# switch toolchains itself) fetches Go 1.27.3 as the module golang.org/toolchain from the
# module proxy, the one way to get a newer Go on these machines.
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if [ "$go_minor" -lt 26 ] || [ -n "${DYNAMO_K8S_FETCH_GO:-}" ]; then
  log "system Go is $(go env GOVERSION); fetching go1.27.3 from the module proxy"
  toolchain="$(GOMODCACHE="$CACHE/gomod" GOFLAGS= GOTOOLCHAIN=local \
    go mod download -json golang.org/toolchain@v0.0.1-go1.27.3.linux-amd64 |
    sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p')"
  # The module's files come without exec bits (the go command sets them when it switches).
  chmod -R u+w "$toolchain"
  find "$toolchain/bin" "$toolchain/pkg/tool" -type f -exec chmod +x {} +
  export PATH="$toolchain/bin:$PATH" GOTOOLCHAIN=local
  log "using $(go env GOVERSION)"
fi

export GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gocache" GOFLAGS=-mod=mod CGO_ENABLED=0
# Builds run beside other work on 2 cores: one package at a time keeps memory in check.
export GOMAXPROCS="${GOMAXPROCS:-2}"
mkdir -p "$CACHE/bin" "$GOMODCACHE" "$GOCACHE"

start=$(date +%s)
work="$CACHE/work-$STAMP"
rm -rf "$work"
mkdir -p "$work"
# Binaries of an earlier, interrupted build are kept.
if [ -d "$OUT" ]; then mv "$OUT" "$OUT.partial"; else mkdir -p "$OUT.partial"; fi
trap 'rm -rf "$work"' EXIT

# --- etcd --------------------------------------------------------------------------------
built() { [ -x "$OUT.partial/$1" ]; }

if ! built etcd; then
log "etcd v$ETCD_VERSION"
mkdir -p "$work/etcd"
(
  cd "$work/etcd"
  go mod init dynamo.local/etcd >/dev/null 2>&1
  go mod edit -require="go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
  go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
  go build -trimpath -o "$OUT.partial/etcd" go.etcd.io/etcd/server/v3
)
fi

# --- kube-apiserver, kube-controller-manager, kube-scheduler -------------------------
if ! built kube-apiserver || ! built kube-controller-manager || ! built kube-scheduler; then
log "kubernetes v$K8S_VERSION"
mkdir -p "$work/k8s"
(
  cd "$work/k8s"
  go mod init dynamo.local/k8s >/dev/null 2>&1
  go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" >/dev/null
  kmod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -nE 's/^\s*"GoMod": "(.*)",?$/\1/p')"
  # Every staging module the kubernetes go.mod requires at v0.0.0 (and replaces with
  # ./staging/...) is published as v0.<minor>.<patch>.
  staging_version="v0.${K8S_VERSION#*.}"
  go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
  for m in $(sed -nE 's#^\s*(k8s\.io/[a-z0-9-]+) => \./staging/.*#\1#p' "$kmod" | sort -u); do
    go mod edit -replace="$m=$m@$staging_version"
  done
  # The same go version and pins as kubernetes' own module.
  go mod edit -go="$(sed -nE 's/^go (.*)$/\1/p' "$kmod")"
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  go mod tidy >&2
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
  minor="${K8S_VERSION#*.}"
  ldflags="$ldflags -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
  ldflags="$ldflags -X $pkg.buildDate=1970-01-01T00:00:00Z"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    log "building $cmd"
    go build -trimpath -ldflags "$ldflags" -o "$OUT.partial/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
)
fi

# --- kwok --------------------------------------------------------------------------------
log "kwok v$KWOK_VERSION"
mkdir -p "$work/kwok"
(
  cd "$work/kwok"
  go mod init dynamo.local/kwok >/dev/null 2>&1
  go get "sigs.k8s.io/kwok@v$KWOK_VERSION" >&2
  built kwok ||
    go build -trimpath -ldflags "-s -w" -o "$OUT.partial/kwok" sigs.k8s.io/kwok/cmd/kwok
  # kwok runs no stage unless given some: keep the module's own (fast node, pod and
  # volume stages) beside the binary; control-plane.sh picks from them.
  src="$(go list -m -f '{{.Dir}}' "sigs.k8s.io/kwok")/kustomize/stage"
  rm -rf "$OUT.partial/kwok-stages"
  mkdir -p "$OUT.partial/kwok-stages"
  cp "$src"/node/fast/node-initialize.yaml \
    "$src"/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    "$src"/pod/fast/pod-*.yaml "$src"/volume/fast/{storage-class,pv-*,pvc-*}.yaml \
    "$OUT.partial/kwok-stages/"
)

mv "$OUT.partial" "$OUT"
# The compiled packages are not needed to run: drop them (GBs); the module cache stays.
rm -rf "$GOCACHE"
secs=$(( $(date +%s) - start ))
log "build of the control plane took ${secs}s ($((secs / 60))m$((secs % 60))s) into $OUT"
echo "$OUT"
