#!/usr/bin/env bash
# Builds Skiff and the hello example, then serves it on http://127.0.0.1:3000
# (extra arguments go to `skiff run`, e.g. --listen 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
exec cargo run --quiet -p skiff-orchestrator --bin skiff -- run examples/hello --build "$@"
