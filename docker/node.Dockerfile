# syntax=docker/dockerfile:1
# The storage node image. Build from the repository root:
#   docker build -f docker/node.Dockerfile -t dynamo-node:0.1.0 .
# (No image can be built or pulled on the project's development machines; see docs/kubernetes.md.)

# --- build: RocksDB is compiled from source by librocksdb-sys, which needs clang for bindgen.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dynamo-node \
 && install -D -m 0755 target/release/dynamo-node /out/dynamo-node

# --- runtime: glibc + libstdc++ (RocksDB is C++), no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/dynamo-node /usr/local/bin/dynamo-node
# The StatefulSet runs the node as 10001 with fsGroup 10001 on its data volume.
USER 10001:10001
EXPOSE 7100 7180
VOLUME ["/var/lib/dynamo"]
ENTRYPOINT ["/usr/local/bin/dynamo-node"]
