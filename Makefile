# One task runner for the project. `make cluster` starts a local cluster; `make test` runs
# every test. Both install what they need first (scripts/setup.sh).

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
NODES ?= 3

.PHONY: setup build cluster test test-rust test-chart test-k8s lint generate bench sim

setup:
	@scripts/setup.sh

build: setup
	cargo build --release -p dynamo-node -p dynamo-client

## Start a local cluster of $(NODES) real node processes on loopback (Ctrl-C stops it).
cluster: build
	$(CARGO_TARGET_DIR)/release/dynamoctl cluster --nodes $(NODES)

## Every test: Rust unit, property and process tests, the Helm chart checks, then the
## operator and chart against a real Kubernetes control plane (built once from source into
## $${DYNAMO_K8S_CACHE:-/var/tmp/dynamo-k8s}, reused after).
test: setup test-rust test-chart test-k8s

# Always the whole workspace: a different package selection can unify features differently
# and rebuild RocksDB from scratch.
test-rust:
	cargo test --workspace

test-chart:
	scripts/test-chart.sh

test-k8s:
	scripts/test-k8s.sh

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## Regenerate the CRD (crds/ and the chart's copy) from the Rust types.
generate:
	cargo run -p dynamo-operator --bin crdgen

## Throughput and latency of a local 3-node cluster (see client/bench/run.sh).
bench: setup
	client/bench/run.sh

## Soak the deterministic simulation: $(SEEDS) seeds from $(FROM) on every core (see sim/).
SEEDS ?= 1000
FROM ?= 1
sim:
	cargo run --release -p dynamo-sim -- --seeds $(SEEDS) --from $(FROM)
