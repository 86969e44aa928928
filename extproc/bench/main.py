"""One entry point for every benchmark: `llm-extproc bench NAME [ARGS]` or `python -m extproc.bench.main NAME`.

Each benchmark prints a table and, with --json PATH (each has a default under docs/bench/),
writes {"command", "machine", "results"}. docs/benchmarks.md compares the numbers with targets.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "overhead": (
        "extproc.bench.overhead",
        "added latency and req/s: Envoy vs Envoy + llm-extproc vs vllm-router",
    ),
    "routing": (
        "extproc.bench.routing",
        "trace-driven routing quality on simulated fleets (scenarios) against fair baselines",
    ),
    "pick": ("extproc.bench.pick", "scheduler and policy decision CPU time vs fleet size"),
    "scale": (
        "extproc.bench.scale",
        "discrete-event simulation of a large fleet with the production scheduler",
    ),
    "classifier": ("extproc.bench.complexity", "complexity scorer µs per prompt"),
    "promparse": ("extproc.bench.promparse", "targeted /metrics parser vs prometheus-client's"),
    "scrape": ("extproc.bench.scrape", "scraping cost for a large fleet"),
    "cache": ("extproc.bench.cache", "response cache hit latency and upstream load saved"),
    "providers": (
        "extproc.bench.providers",
        "hosted providers through Envoy: spill-over at 120 % of the fleet, fallback during 429s",
    ),
    "wasm-limits": (
        "extproc.bench.wasm_limits",
        "Wasm data path: a tenant the filter decides vs escalated limited tenants (rate, concurrency)",
    ),
    "memory": (
        "extproc.bench.memory",
        "ext_proc RSS growth per request under steady load, by kind of request",
    ),
}


def usage() -> str:
    lines = ["usage: llm-extproc bench NAME [ARGS...]", "", "benchmarks:"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[name][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
