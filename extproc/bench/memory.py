"""ext_proc memory per request under steady load: does RSS stay flat, and if not, which traffic grows it.

python -m extproc.bench.memory                       # every kind, writes docs/bench/memory.json
python -m extproc.bench.memory --kind error --no-observer --segment-seconds 20 --segments 6

The local stack (real Envoy, llm-extproc, simulated fleet) takes wrk load (c=8) of one kind of
request per run: `plain` (non-streaming chat), `stream` (SSE chat), `error` (a 400 we answer
ourselves). After each segment the ext_proc server's RSS is read from /proc; the slope from the
end of the first segment (warm-up: caches, pools, allocator arenas) to the end of the last one,
divided by the requests in between, is the number reported: ~0 B/request means flat.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from extproc.bench.machine import write_report
from extproc.devstack.stack import LocalStack, StackConfig

BODIES = {
    "plain": {"model": "llama-3-8b", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]},
    "stream": {
        "model": "llama-3-8b",
        "max_tokens": 4,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    },
    "error": {"model": "llama-3-8b", "messages": []},
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def run_kind(kind: str, observe: bool, segment_seconds: int, segments: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    script = work / "body.lua"
    body = json.dumps(BODIES[kind]).replace("'", "\\'")
    script.write_text(
        f"wrk.method = 'POST'\nwrk.headers['content-type'] = 'application/json'\nwrk.body = '{body}'\n"
    )
    config = StackConfig.on_free_ports(
        sim_endpoints=4,
        time_scale=0.01,
        observe=observe,
        log_dir=str(work),
    )
    stack = LocalStack(config)
    stack.start()
    try:
        pid = stack.child("extproc").proc.pid
        url = f"http://127.0.0.1:{config.listen_port}/v1/chat/completions"
        total, unexpected, trajectory = 0, 0, []
        for _ in range(segments):
            out = subprocess.run(
                ["wrk", "-t1", "-c8", f"-d{segment_seconds}s", "-s", str(script), url],
                capture_output=True,
                text=True,
                timeout=segment_seconds + 60,
                check=True,
            ).stdout
            done = re.search(r"(\d+) requests in", out)
            if done is None:
                raise RuntimeError(f"cannot parse wrk output:\n{out}")
            non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            count, errors = int(done.group(1)), int(non_2xx.group(1)) if non_2xx else 0
            unexpected += count - errors if kind == "error" else errors
            total += count
            trajectory.append((total, rss_kib(pid)))
    finally:
        stack.stop()
    (first_requests, first_rss), (last_requests, last_rss) = trajectory[0], trajectory[-1]
    measured = max(1, last_requests - first_requests)
    return {
        "kind": kind,
        "observer": observe,
        "requests": total,
        "unexpected_status": unexpected,
        "rss_start_kib": first_rss,
        "rss_end_kib": last_rss,
        "bytes_per_request": round((last_rss - first_rss) * 1024 / measured, 1),
        "rss_kib_by_requests": trajectory,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.bench.memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--kind", choices=[*BODIES, "all"], default="all")
    parser.add_argument("--no-observer", action="store_true", help="render Envoy without the observer filter")
    parser.add_argument("--segment-seconds", type=int, default=20)
    parser.add_argument("--segments", type=int, default=6)
    parser.add_argument("--json", default="docs/bench/memory.json")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    if args.segments < 2:
        parser.error("--segments must be at least 2 (the first one is warm-up)")
    kinds = list(BODIES) if args.kind == "all" else [args.kind]
    results = [run_kind(kind, not args.no_observer, args.segment_seconds, args.segments) for kind in kinds]
    print(f"{'kind':<8} {'observer':<9} {'requests':>9} {'RSS start':>10} {'RSS end':>10} {'B/request':>10}")
    for r in results:
        print(
            f"{r['kind']:<8} {r['observer']!s:<9} {r['requests']:>9} {r['rss_start_kib']:>8} K"
            f" {r['rss_end_kib']:>8} K {r['bytes_per_request']:>10}"
        )
    write_report(args.json, results)
    return 1 if any(r["unexpected_status"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
