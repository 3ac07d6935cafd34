#!/usr/bin/env bash
# The whole test suite: formatting, lints (host workspace and guests), unit
# tests and end-to-end tests against the real `skiff` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The package tests push to and pull from a real OCI registry (the CNCF
# distribution registry), which they start on loopback themselves.
if ! command -v docker-registry >/dev/null; then
  echo "== installing docker-registry"
  (apt-get update -qq && apt-get install -y -qq docker-registry) >/dev/null
fi
# The etcd client compiles etcd's protobufs at build time with protoc, and
# the store tests run real etcd members on loopback.
if ! command -v protoc >/dev/null || ! command -v etcd >/dev/null; then
  echo "== installing protobuf-compiler and etcd-server"
  (apt-get update -qq && apt-get install -y -qq protobuf-compiler etcd-server) >/dev/null
fi
# The observability tests scrape a test cluster with a real Prometheus,
# which they start on loopback themselves.
if ! command -v prometheus >/dev/null; then
  echo "== installing prometheus"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus) >/dev/null
fi
# The HTTPS tests order certificates from Let's Encrypt's test ACME
# server, pebble, which they start on loopback themselves.
if ! command -v pebble >/dev/null || ! command -v pebble-challtestsrv >/dev/null; then
  echo "== installing pebble"
  (apt-get update -qq && apt-get install -y -qq pebble) >/dev/null
fi
# The dashboard tests drive a real headless Chromium over WebDriver.
if ! command -v chromedriver >/dev/null; then
  echo "== installing chromium and chromium-driver"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver) >/dev/null
fi
# The JavaScript example builds with componentize-js from the npm registry.
if ! command -v npm >/dev/null; then
  echo "== installing nodejs and npm"
  (apt-get update -qq && apt-get install -y -qq nodejs npm) >/dev/null
fi

echo "== cargo fmt"
cargo fmt --all -- --check
(cd examples && cargo fmt --all -- --check)
(cd tests/guests/programs && cargo fmt --all -- --check)

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
(cd examples && cargo clippy --target wasm32-wasip2 --release --quiet -- -D warnings)

echo "== cargo test"
cargo test --workspace
