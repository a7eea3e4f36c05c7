#!/usr/bin/env bash
# Chart and manifest tests, with real tools (installed by scripts/install-chart-tools.sh):
#   1. helm lint the chart with default and every ci/*-values.yaml file;
#   2. helm template with the same values; every rendered object is validated against
#      the Kubernetes OpenAPI schemas (kubernetes-validate, strict, Kubernetes 1.33 and 1.37);
#   3. every example under examples/ and every operator snapshot
#      (operator/tests/snapshots/, the objects the operator applies) is validated too:
#      DynamoCluster objects against the generated CRD's openAPIV3Schema (jsonschema,
#      structural checks; the CEL rules are evaluated by `cargo test -p dynamo-operator`);
#   4. negative checks: unknown values keys and an invalid DynamoCluster must be rejected.
# Prints "N passed, M failed" last; exits non-zero on any failure.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/install-chart-tools.sh >/dev/null || { echo "install-chart-tools.sh failed"; echo "0 passed, 1 failed"; exit 1; }
HELM="$ROOT/.tools/bin/helm"
PY="$ROOT/.tools/venv/bin/python"
CHART="charts/dynamo-operator"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
passed=0
failed=0

check() { # check NAME CMD...: runs CMD, counts and reports the outcome
  local name="$1"; shift
  if "$@" >"$OUT/log" 2>&1; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/     /' "$OUT/log" | tail -20
  fi
}

check_fails() { # check_fails NAME CMD...: CMD must fail
  local name="$1"; shift
  if "$@" >"$OUT/log" 2>&1; then
    failed=$((failed + 1)); echo "FAIL $name (was accepted)"
  else
    passed=$((passed + 1)); echo "ok   $name (rejected as expected)"
  fi
}

values_sets=("default")
for f in "$CHART"/ci/*-values.yaml; do values_sets+=("$f"); done

render() { # render OUTFILE HELM-ARGS...
  local out="$1"; shift
  "$HELM" template demo "$CHART" --namespace dynamo-system "$@" > "$out"
}

i=0
for v in "${values_sets[@]}"; do
  args=(); [ "$v" != default ] && args=(-f "$v")
  tag="$(basename "$v" .yaml)"
  check "helm lint --strict ($tag)" "$HELM" lint --strict "$CHART" "${args[@]}"
  check "helm template ($tag)" render "$OUT/rendered-$i.yaml" "${args[@]}"
  i=$((i + 1))
done

# The NetworkPolicy keeping clients off the nodes' peer port: one per namespace given.
peer_port_policies() { # peer_port_policies FILE COUNT
  [ "$(grep -c '^kind: NetworkPolicy' "$1")" -eq "$2" ] && grep -q 'port: peer' "$1"
}
check "the default render keeps clients off the peer port" peer_port_policies "$OUT/rendered-0.yaml" 1
check "one peer-port NetworkPolicy per listed namespace" peer_port_policies \
  "$(ls "$OUT"/rendered-*.yaml | sed -n 2p)" 2
check_fails "values.schema.json rejects unknown keys" "$HELM" template demo "$CHART" --set notAKey=1
check_fails "values.schema.json rejects a bad pullPolicy" "$HELM" template demo "$CHART" --set image.pullPolicy=Sometimes

cat > "$OUT/bad-cluster.yaml" <<'YAML'
apiVersion: dynamokv.io/v1alpha1
kind: DynamoCluster
metadata: {name: bad}
spec:
  replicas: three
  storage: {onScaleIn: Shred}
YAML

cat > "$OUT/validate.py" <<'PY'
"""Validates every object of the given YAML files; prints one line per object."""
import sys, yaml, jsonschema, kubernetes_validate

CRD = yaml.safe_load(open("crds/dynamoclusters.dynamokv.io.yaml"))
CRD_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
GROUP = CRD["spec"]["group"]
VERSIONS = ["1.33.0", "1.37.0"]

def to_jsonschema(s):
    """OpenAPI v3 (structural, with nullable) -> JSON Schema."""
    if isinstance(s, list):
        return [to_jsonschema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: to_jsonschema(v) for k, v in s.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if s.get("nullable") and "type" in s:
        out["type"] = [s["type"], "null"]
    if s.get("type") == "object" and "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False  # the API server prunes unknown fields: flag them
    return out

CR_SCHEMA = to_jsonschema(CRD_SCHEMA)
failures = 0
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            if doc.get("apiVersion", "").startswith(GROUP + "/"):
                jsonschema.validate(doc.get("spec", {}), CR_SCHEMA["properties"]["spec"])
            else:
                for v in VERSIONS:
                    kubernetes_validate.validate(doc, v, strict=True)
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - report any validation failure
            failures += 1
            msg = str(e).splitlines()[0]
            print(f"FAIL {name}: {msg}")
sys.exit(1 if failures else 0)
PY

validate_file() { # validate_file FILE: one check per object in FILE
  local f="$1"
  local result
  result="$("$PY" "$OUT/validate.py" "$f" 2>&1)"
  while IFS= read -r line; do
    case "$line" in
      "ok   "*) passed=$((passed + 1)); echo "$line" ;;
      "FAIL "*) failed=$((failed + 1)); echo "$line" ;;
      *) [ -n "$line" ] && { failed=$((failed + 1)); echo "FAIL $f: $line"; } ;;
    esac
  done <<< "$result"
}

for f in "$OUT"/rendered-*.yaml examples/*.yaml operator/tests/snapshots/*.yaml; do
  validate_file "$f"
done
check_fails "an invalid DynamoCluster is rejected by the CRD schema" "$PY" "$OUT/validate.py" "$OUT/bad-cluster.yaml"

# kubectl and Helm read YAML 1.1, where a bare y/n/yes/no/on/off is a boolean: a key
# `n:` (replication.n) arrives as "false". Every manifest must quote such words. (The
# operator snapshots are not read by kubectl: the operator sends JSON.)
bare_yaml11_booleans() {
  ! grep -nEH '^[[:space:]-]*(y|Y|n|N|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)(:([[:space:]]|$)|[[:space:]]*$)' \
    examples/*.yaml crds/*.yaml "$CHART"/templates/*.yaml
}
check "no bare YAML 1.1 boolean word as a key or item in examples, CRD and chart" bare_yaml11_booleans

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
