"""Discrete-event simulation of a large GPU fleet routed by the production scheduler.

python -m extproc.bench.scale [--sizes 10,100,1000] [--load 0.85] [--json docs/bench/scale.json]

No sockets and no sleeping: a heap of events in simulated time. Each endpoint runs continuous
batching (up to ``MAX_RUNNING`` requests, FIFO queue beyond), prefill at a per-GPU-class token
rate, and decode whose per-token time grows with the batch. Half the fleet is A100-class (3x
faster), half T4-class. Every 100 ms of simulated time a "scrape" publishes a FleetSnapshot
(queue, running, KV use), exactly what the collectors hand the request path; between scrapes
the router sees only its own in-flight counts, as in production. Arrivals and token counts come
from the arrival trace, sped up to ``--load`` of the fleet's nominal capacity.

Routers: llm-extproc's Scheduler (the production code and default plugins), round-robin,
random, and least-request (power of two choices on in-flight counts, Envoy's default).
"""

from __future__ import annotations

import argparse
import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extproc.bench.machine import write_report
from extproc.devstack.loadgen import DEFAULT_TRACE, read_trace
from extproc.fleet.state import Endpoint, EndpointMetrics, FleetSnapshot, InFlight, build_snapshot
from extproc.scheduler.config import SchedulerConfig
from extproc.scheduler.picking import PickContext
from extproc.scheduler.scheduler import Scheduler

MAX_RUNNING = 16
MAX_OUTPUT_TOKENS = 256
KV_CAPACITY_TOKENS = 200_000
SCRAPE_INTERVAL_S = 0.1
PREFILL_TOKENS_PER_S = {"a100": 12_000.0, "t4": 4_000.0}
BASE_TPOT_S = {"a100": 0.012, "t4": 0.036}
TTFT_SLO_S = 2.0


@dataclass(slots=True)
class Gpu:
    address: str
    gpu_class: str
    running: int = 0
    kv_tokens: int = 0
    queue: deque[int] = field(default_factory=deque)

    def tpot(self) -> float:
        return BASE_TPOT_S[self.gpu_class] * (1.0 + self.running / MAX_RUNNING)


@dataclass(slots=True)
class Request:
    arrival: float
    prompt: int
    output: int
    endpoint: int = -1
    first_token: float = float("nan")
    finished: float = float("nan")


def nominal_capacity_rps(gpus: list[Gpu], prompt_mean: float, output_mean: float) -> float:
    """Requests/s the fleet sustains at full batches (service time at a full batch's speed)."""
    total = 0.0
    for gpu in gpus:
        service = (
            prompt_mean / PREFILL_TOKENS_PER_S[gpu.gpu_class] + output_mean * BASE_TPOT_S[gpu.gpu_class] * 2
        )
        total += MAX_RUNNING / service
    return total


class Simulation:
    def __init__(self, size: int, requests: list[Request], router: str, seed: int = 1) -> None:
        self.gpus = [
            Gpu(f"10.{i // 250}.{i % 250}.1:8000", "a100" if i % 2 == 0 else "t4") for i in range(size)
        ]
        self.endpoints = [
            Endpoint(
                g.address, pool="p", models=("m",), gpu_class=g.gpu_class, zone=f"z{i % 3}", node=f"n{i}"
            )
            for i, g in enumerate(self.gpus)
        ]
        self.requests = requests
        self.router = router
        self.rng = np.random.default_rng(seed)
        self.inflight = InFlight()
        self.scheduler = Scheduler(SchedulerConfig().with_gpu_weights({"a100": 3.0, "t4": 1.0}))
        self.rows = np.arange(size, dtype=np.int64)
        self.next_rr = 0
        self.pick_cpu_ns: list[int] = []
        self.snapshot = self._scrape(0.0, None)

    def _scrape(self, now: float, previous: FleetSnapshot | None) -> FleetSnapshot:
        metrics = {
            g.address: EndpointMetrics(
                waiting=float(len(g.queue)),
                running=float(g.running),
                kv_usage=min(1.0, g.kv_tokens / KV_CAPACITY_TOKENS),
                scraped_at=now,
            )
            for g in self.gpus
        }
        return build_snapshot(self.endpoints, metrics, version=int(now * 1000), previous=previous, now=now)

    def _pick(self, now: float) -> int:
        size = len(self.gpus)
        if self.router == "round_robin":
            self.next_rr = (self.next_rr + 1) % size
            return self.next_rr
        if self.router == "random":
            return int(self.rng.integers(size))
        counts = self.inflight.counts_for(self.snapshot)
        if self.router == "least_request":
            a, b = self.rng.integers(size, size=2)
            return int(a if counts[a] <= counts[b] else b)
        started = time.process_time_ns()
        ctx = PickContext(model="m", now=now)
        rows = self.scheduler.pick(self.snapshot, self.rows, counts, ctx, 1)
        self.pick_cpu_ns.append(time.process_time_ns() - started)
        return rows[0]

    def _start(self, index: int, gpu_row: int, now: float, events: list[tuple[float, int, int]]) -> None:
        gpu, request = self.gpus[gpu_row], self.requests[index]
        gpu.running += 1
        gpu.kv_tokens += request.prompt + request.output
        request.first_token = now + request.prompt / PREFILL_TOKENS_PER_S[gpu.gpu_class]
        request.finished = request.first_token + request.output * gpu.tpot()
        heapq.heappush(events, (request.finished, 1, index))

    def run(self) -> list[Request]:
        events: list[tuple[float, int, int]] = [(r.arrival, 0, i) for i, r in enumerate(self.requests)]
        heapq.heapify(events)
        next_scrape = SCRAPE_INTERVAL_S
        while events:
            now, kind, index = heapq.heappop(events)
            while now >= next_scrape:
                self.snapshot = self._scrape(next_scrape, self.snapshot)
                next_scrape += SCRAPE_INTERVAL_S
            request = self.requests[index]
            if kind == 0:  # arrival
                row = self._pick(now)
                request.endpoint = row
                self.inflight.add(self.snapshot, self.gpus[row].address, +1)
                gpu = self.gpus[row]
                if gpu.running < MAX_RUNNING:
                    self._start(index, row, now, events)
                else:
                    gpu.queue.append(index)
            else:  # finished
                gpu = self.gpus[request.endpoint]
                gpu.running -= 1
                gpu.kv_tokens -= request.prompt + request.output
                self.inflight.add(self.snapshot, gpu.address, -1)
                if gpu.queue:
                    self._start(gpu.queue.popleft(), request.endpoint, now, events)
        return self.requests


def workload(size: int, load: float, count: int) -> list[Request]:
    """``count`` requests: the trace's arrivals and token counts, repeated end to end as needed."""
    trace = read_trace(Path(DEFAULT_TRACE))
    span = max(1e-9, trace[-1].at_s - trace[0].at_s)
    rows = [trace[i % len(trace)] for i in range(count)]
    offsets = [(i // len(trace)) * span for i in range(count)]
    prompts = np.minimum([t.prompt_tokens for t in rows], 4096)
    outputs = np.clip([t.output_tokens for t in rows], 1, MAX_OUTPUT_TOKENS)
    gpus = [Gpu("", "a100" if i % 2 == 0 else "t4") for i in range(size)]
    capacity = nominal_capacity_rps(gpus, float(np.mean(prompts)), float(np.mean(outputs)))
    speedup = (capacity * load) / (len(trace) / span)
    return [
        Request(arrival=(t.at_s + offset) / speedup, prompt=int(p), output=int(o))
        for t, offset, p, o in zip(rows, offsets, prompts, outputs, strict=True)
    ]


def summarise(router: str, size: int, load: float, done: list[Request], pick_ns: list[int]) -> dict[str, Any]:
    ttft = np.array([r.first_token - r.arrival for r in done])
    e2e = np.array([r.finished - r.arrival for r in done])
    return {
        "router": router,
        "endpoints": size,
        "load": load,
        "requests": len(done),
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 4),
        "ttft_p99_s": round(float(np.percentile(ttft, 99)), 4),
        "e2e_p99_s": round(float(np.percentile(e2e, 99)), 3),
        "goodput_share": round(float(np.mean(ttft <= TTFT_SLO_S)), 4),
        "pick_cpu_us_p50": round(float(np.median(pick_ns)) / 1000, 1) if pick_ns else None,
    }


ROUTERS = ("llm-extproc", "least_request", "round_robin", "random")


def run(
    sizes: list[int], loads: list[float], per_endpoint: int, cap: int, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    results = []
    for size, load in [(s, x) for s in sizes for x in loads]:
        requests = workload(size, load, min(cap, per_endpoint * size))
        for router in ROUTERS:
            fresh = [Request(r.arrival, r.prompt, r.output) for r in requests]
            sim = Simulation(size, fresh, router)
            row = summarise(router, size, load, sim.run(), sim.pick_cpu_ns)
            results.append(row)
            progress(
                f"{size:>6} {load:>5} {router:<14} {row['requests']:>6} {row['ttft_p50_s']:>8.3f} {row['ttft_p99_s']:>8.3f} "
                f"{row['e2e_p99_s']:>8.2f} {row['goodput_share']:>8.3f} {row['pick_cpu_us_p50'] or '':>8}"
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.bench.scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--load", default="0.85,1.0", help="share(s) of nominal capacity, comma-separated")
    parser.add_argument("--per-endpoint", type=int, default=150, help="requests per endpoint in the replay")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--json", default="docs/bench/scale.json")
    args = parser.parse_args(argv)
    print(
        f"{'GPUs':>6} {'load':>5} {'router':<14} {'reqs':>6} {'ttft p50':>8} {'ttft p99':>8} {'e2e p99':>8} {'goodput':>8} {'pick µs':>8}"
    )
    sizes = [int(s) for s in args.sizes.split(",")]
    loads = [float(x) for x in args.load.split(",")]
    results = run(sizes, loads, args.per_endpoint, args.max_requests, print)
    if args.json:
        write_report(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
