#!/usr/bin/env bash
# Installs what building the project needs on a fresh Debian machine (idempotent):
# libclang for RocksDB's bindgen, and a C++ compiler for RocksDB itself.
# protoc is not needed: the build uses a vendored one.
set -euo pipefail

need_apt=()
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (Rust stable) is required: https://rustup.rs" >&2; exit 1; }
