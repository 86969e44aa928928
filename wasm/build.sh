#!/usr/bin/env bash
# Build the proxy-wasm filter: pinned AssemblyScript from package-lock.json, release settings
# from asconfig.json. Writes extproc/deploy/wasm/llm_extproc.wasm (package data), or $1.
# Keep asconfig.json's shrinkLevel at 0: above it AssemblyScript's Array<string>#join falls back
# to concatenating one part at a time, and the report the filter builds each second (thousands of
# parts at a few thousand requests per second) then exhausts the VM's memory and traps (seen in
# wasm/bench/host.mjs; a smaller module measured no faster in Envoy either).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error >/dev/null
out="${1:-../extproc/deploy/wasm/llm_extproc.wasm}"
npx --no-install asc assembly/index.ts --config asconfig.json --target release --outFile "$out"
