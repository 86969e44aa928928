"""The Wasm data path's brain side: the routing snapshot the proxy-wasm filter polls, the decide
endpoint for what the snapshot cannot decide, and the filter's batched observations.

The filter itself is AssemblyScript in wasm/ at the repository root; its build ships as package
data (extproc/deploy/wasm/llm_extproc.wasm). docs/wasm.md describes the split.
"""
