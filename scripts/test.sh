#!/usr/bin/env bash
# The whole test suite: formatting, lints (host workspace and guests), unit
# tests and end-to-end tests against the real `skiff` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt"
cargo fmt --all -- --check
(cd examples && cargo fmt --all -- --check)
(cd tests/guests/programs && cargo fmt --all -- --check)

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
(cd examples && cargo clippy --target wasm32-wasip2 --release --quiet -- -D warnings)

echo "== cargo test"
cargo test --workspace
