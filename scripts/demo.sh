#!/usr/bin/env bash
# Builds Skiff and the hello example, then `skiff up` serves it on
# http://127.0.0.1:3000: a one-machine cluster (control plane, node and
# ingress in one process). Extra arguments go to `skiff up`, e.g.
# --listen 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
# The etcd client (for `skiff server --store etcd://`) compiles etcd's
# protobufs at build time with protoc.
if ! command -v protoc >/dev/null; then
  echo "== installing protobuf-compiler" >&2
  (apt-get update -qq && apt-get install -y -qq protobuf-compiler) >/dev/null
fi
echo "== building skiff (the first build compiles wasmtime: several minutes)" >&2
cargo build -p skiff-orchestrator --bin skiff
echo "== starting: target/debug/skiff up examples/hello --build $*" >&2
exec target/debug/skiff up examples/hello --build "$@"
