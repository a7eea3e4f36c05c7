# syntax=docker/dockerfile:1
# The operator image. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t dynamo-operator:0.1.0 .
# (No image can be built or pulled on the project's development machines; see docs/kubernetes.md.)

# --- build: the operator does not link RocksDB, so no C++ toolchain is needed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dynamo-operator --bin dynamo-operator \
 && install -D -m 0755 target/release/dynamo-operator /out/dynamo-operator

# --- runtime: TLS is rustls, so only glibc is needed; non-root (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/dynamo-operator /usr/local/bin/dynamo-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dynamo-operator"]
