#!/bin/sh
# Builds hello-js.wasm from hello.js with componentize-js, only when
# hello.js, the WIT or the locked dependencies changed since the last
# build: componentize-js output differs from build to build, so an
# unneeded rebuild would make Skiff compile the component again.
set -e
cd "$(dirname "$0")"
# npm writes node_modules/.package-lock.json last: without it, or with an
# older one than package-lock.json, the install is incomplete or stale.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ -f hello-js.wasm ] && [ -z "$(find hello.js wit package-lock.json -newer hello-js.wasm | head -n 1)" ]; then
  echo "hello-js.wasm is up to date"
  exit 0
fi
npx --no-install componentize-js --wit wit --world-name hello -o hello-js.wasm hello.js
