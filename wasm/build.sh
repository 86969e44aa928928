#!/usr/bin/env bash
# Build the proxy-wasm filter: pinned AssemblyScript from package-lock.json, release settings
# from asconfig.json. Writes extproc/deploy/wasm/llm_extproc.wasm (package data), or $1.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error >/dev/null
out="${1:-../extproc/deploy/wasm/llm_extproc.wasm}"
npx --no-install asc assembly/index.ts --config asconfig.json --target release --outFile "$out"
