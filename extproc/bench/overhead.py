"""Overhead of llm-extproc: the same canned endpoint behind plain Envoy and behind Envoy + ext_proc.

python -m extproc.bench.overhead [--seconds 5] [--rounds 2] [--json docs/bench/overhead.json]

Load generator: wrk (Debian package), POSTing an OpenAI chat body through a Lua script. Setups
are measured interleaved, round by round, so machine noise hits them alike. Reference rows:
`envoy+python-floor` (the cheapest possible Python ext_proc, e2e/floor_extproc.py) and vLLM's
own router (`pip install vllm-router`), when its binary is on PATH. `envoy+wasm`: the decision
inside Envoy (docs/wasm.md); `envoy+wasm-escalated`: the same filter handing every request to
the brain's decide endpoint; `envoy+wasm-minimal` (from a checkout, with npm): a
module that reads what a decider must and writes a fixed decision (wasm/bench/minimal.ts), the
floor of any Wasm decider with this filter chain; `envoy+retries`: plain Envoy with our retry
policy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from string import Template
from typing import Any

import grpc
import yaml

from extproc.bench.machine import write_report
from extproc.deploy.envoy_config import ENVOY_DIR, EnvoyPorts, connection_manager, lb_endpoints, render
from extproc.deploy.wasm_config import WASM_FILTER, render_wasm
from extproc.devstack.stack import envoy_binary, free_port, grpc_serving

LUA = """wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"' .. string.rep("a", %d) .. '"}]}'
"""


def wait_http(url: str, timeout_s: float = 20, any_status: bool = False) -> None:
    """Until ``url`` answers 2xx, or with ``any_status`` anything (a front is up: a Wasm front
    whose brain is up answers an unknown path with the ext_proc path's 404, one whose brain is
    not yet fails open to the backend's 200)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=0.5):
                return
        except urllib.error.HTTPError:
            if any_status:
                return
            time.sleep(0.05)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if not (p50 and p99 and rps and total):
        raise RuntimeError(f"cannot parse wrk output:\n{text}")
    return {
        "p50_ms": ms(*p50.groups()),
        "p99_ms": ms(*p99.groups()),
        "rps": float(rps.group(1)),
        "requests": float(total.group(1)),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}

    def spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        self.pids[name] = self.procs[-1].pid

    def envoy(self, name: str, config: str) -> None:
        path = self.work / f"{name}.yaml"
        path.write_text(config)
        self.spawn(
            name,
            [envoy_binary(), "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "-l", "error"],
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def with_retries(plain: str, wasm: str) -> str:
    """The plain config with the retry policy of the Wasm path's fleet route."""
    config = yaml.safe_load(plain)
    source = yaml.safe_load(wasm)

    def fleet_route(c: dict[str, Any]) -> dict[str, Any]:
        route: dict[str, Any] = connection_manager(c)["route_config"]["virtual_hosts"][0]["routes"][-1][
            "route"
        ]
        return route

    fleet_route(config)["retry_policy"] = fleet_route(source)["retry_policy"]
    return yaml.safe_dump(config, sort_keys=False)


WASM_SOURCES = Path(__file__).parents[2] / "wasm"


def minimal_decider(work: Path) -> Path | None:
    """wasm/bench/minimal.ts built with the pinned toolchain (installed as wasm/build.sh does),
    or None outside a checkout or without npm (the module is a measurement tool, not package
    data)."""
    if not (WASM_SOURCES / "package-lock.json").exists() or shutil.which("npm") is None:
        print("envoy+wasm-minimal skipped: it needs a checkout's wasm/ and npm", file=sys.stderr)
        return None
    if not (WASM_SOURCES / "node_modules" / ".bin" / "asc").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=WASM_SOURCES,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    out = work / "minimal.wasm"
    subprocess.run(
        [
            "npx",
            "--no-install",
            "asc",
            "bench/minimal.ts",
            "--config",
            "asconfig.json",
            "--target",
            "release",
            "--outFile",
            str(out),
        ],
        cwd=WASM_SOURCES,
        check=True,
    )
    return out


def with_fixed_decision(wasm: str, endpoint: str) -> str:
    """The Wasm config with the minimal module's configuration: the endpoint it always names."""
    config = yaml.safe_load(wasm)
    (plugin,) = [f for f in connection_manager(config)["http_filters"] if f["name"] == WASM_FILTER]
    plugin["typed_config"]["config"]["configuration"]["value"] = endpoint
    return yaml.safe_dump(config, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.bench.overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default="docs/bench/overhead.json")
    parser.add_argument("--extproc-workers", type=int, default=1, help="serve --workers for llm-extproc")
    parser.add_argument("--setups", nargs="*", help="measure only these setups (default: all)")
    parser.add_argument("--prompt-bytes", type=int, nargs="*", default=[200, 200 * 1024])
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32])
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    bench = Bench(work)
    # Each Envoy's listener and admin port; then the Python servers' ports.
    envoys = (
        "backend",
        "plain",
        "plain_retries",
        "front",
        "observed",
        "floor_front",
        "wasm_front",
        "escalating_front",
        "minimal_front",
    )
    servers = (
        "extproc",
        "vllm_router",
        "floor",
        "brain",
        "brain_grpc",
        "escalating_brain",
        "escalating_brain_grpc",
    )
    ports = {name: free_port() for name in (*envoys, *servers)}
    admin = {name: free_port() for name in envoys}
    backend = f"127.0.0.1:{ports['backend']}"
    try:
        bench.envoy(
            "backend",
            Template((ENVOY_DIR / "bench-backend.yaml").read_text()).substitute(
                admin_port=admin["backend"], listen_port=ports["backend"]
            ),
        )
        bench.envoy(
            "plain",
            Template((ENVOY_DIR / "bench-plain.yaml").read_text()).substitute(
                admin_port=admin["plain"],
                listen_port=ports["plain"],
                lb_policy="LEAST_REQUEST",
                lb_endpoints=lb_endpoints([backend]),
            ),
        )
        # envoy+retries: plain Envoy with the retry policy our configs carry (Envoy's fallback):
        # a retry replays the request, so Envoy's router keeps a copy of every body. Shown
        # beside plain Envoy to separate the fallback's cost from the decision's; the targets
        # stay against plain Envoy.
        bench.envoy(
            "plain_retries",
            with_retries(
                Template((ENVOY_DIR / "bench-plain.yaml").read_text()).substitute(
                    admin_port=admin["plain_retries"],
                    listen_port=ports["plain_retries"],
                    lb_policy="LEAST_REQUEST",
                    lb_endpoints=lb_endpoints([backend]),
                ),
                render_wasm([backend], listen_port=0, admin_port=0, brain_port=0),
            ),
        )
        fleet = work / "fleet.json"
        fleet.write_text(json.dumps({"endpoints": [{"address": backend, "models": ["m"]}]}))
        bench.spawn(
            "extproc",
            [
                sys.executable,
                "-m",
                "extproc.cli",
                "serve",
                "--port",
                str(ports["extproc"]),
                "--fleet",
                str(fleet),
                "--metrics-port",
                "0",
                "--workers",
                str(args.extproc_workers),
            ],
        )
        # envoy+extproc: the routing decision alone; +observer: also token/latency observation
        # (a second, observability-mode ext_proc stream per request).
        for name, observe in (("front", False), ("observed", True)):
            bench.envoy(
                name,
                render(
                    [backend],
                    EnvoyPorts(
                        listen_port=ports[name], admin_port=admin[name], extproc_port=ports["extproc"]
                    ),
                    observe=observe,
                ),
            )
        # The floor: the cheapest Python ext_proc (e2e/floor_extproc.py) behind the same Envoy
        # config, i.e. what gRPC in Python costs before any routing work.
        bench.spawn(
            "floor", [sys.executable, "-m", "extproc.bench.floor_extproc", str(ports["floor"]), backend]
        )
        bench.envoy(
            "floor_front",
            render(
                [backend],
                EnvoyPorts(
                    listen_port=ports["floor_front"],
                    admin_port=admin["floor_front"],
                    extproc_port=ports["floor"],
                ),
                observe=False,
            ),
        )
        # envoy+wasm: the Wasm filter decides inside Envoy (docs/wasm.md), with response
        # observation; llm-extproc is its brain (snapshot polling, batched reports).
        # envoy+wasm-escalated: a policy the decision table cannot express (a header match), so
        # the filter hands every request to the brain's decide endpoint: the escalation's cost.
        escalating = work / "escalating-policy.yaml"
        escalating.write_text(
            "rules:\n  - {name: debug, match: {headers: {x-debug: {present: true}}}, priority: batch}\ndefault: {}\n"
        )
        for name, extra in (("brain", []), ("escalating_brain", ["--policy", str(escalating)])):
            bench.spawn(
                name,
                [
                    sys.executable,
                    "-m",
                    "extproc.cli",
                    "serve",
                    "--data-path",
                    "wasm",
                    "--brain-port",
                    str(ports[name]),
                    "--port",
                    str(ports[f"{name}_grpc"]),
                    "--fleet",
                    str(fleet),
                    "--metrics-port",
                    "0",
                    *extra,
                ],
            )
        for front, brain in (("wasm_front", "brain"), ("escalating_front", "escalating_brain")):
            bench.envoy(
                front,
                render_wasm(
                    [backend], listen_port=ports[front], admin_port=admin[front], brain_port=ports[brain]
                ),
            )
        minimal = minimal_decider(work)
        if minimal is not None:
            bench.envoy(
                "minimal_front",
                with_fixed_decision(
                    render_wasm(
                        [backend],
                        listen_port=ports["minimal_front"],
                        admin_port=admin["minimal_front"],
                        brain_port=ports["brain"],
                        module=minimal,
                    ),
                    backend,
                ),
            )
        setups = {
            "envoy": ports["plain"],
            "envoy+retries": ports["plain_retries"],
            "envoy+wasm": ports["wasm_front"],
            "envoy+wasm-escalated": ports["escalating_front"],
            "envoy+extproc": ports["front"],
            "envoy+extproc+observer": ports["observed"],
            "envoy+python-floor": ports["floor_front"],
        }
        if minimal is not None:
            setups["envoy+wasm-minimal"] = ports["minimal_front"]
        router = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
        if Path(router).exists():
            bench.spawn(
                "vllm-router",
                [
                    router,
                    "--port",
                    str(ports["vllm_router"]),
                    "--worker-urls",
                    f"http://{backend}",
                    "--policy",
                    "round_robin",
                    "--log-level",
                    "error",
                ],
            )
            setups["vllm-router"] = ports["vllm_router"]
        # CPU per request of each setup's own processes (the shared canned backend and wrk
        # excluded): on a shared machine it moves far less than latency and req/s do.
        own = {
            "envoy": ["plain"],
            "envoy+retries": ["plain_retries"],
            "envoy+wasm": ["wasm_front", "brain"],
            "envoy+wasm-escalated": ["escalating_front", "escalating_brain"],
            "envoy+wasm-minimal": ["minimal_front"],
            "envoy+extproc": ["front", "extproc"],
            "envoy+extproc+observer": ["observed", "extproc"],
            "envoy+python-floor": ["floor_front", "floor"],
            "vllm-router": ["vllm-router"],
        }
        for name, port in setups.items():
            wait_http(
                f"http://127.0.0.1:{port}/health"
                if name == "vllm-router"
                else f"http://127.0.0.1:{port}/metrics",
                any_status=name != "vllm-router",
            )
        for brain in ("brain", "escalating_brain"):
            wait_http(f"http://127.0.0.1:{ports[brain]}/v1/llm-extproc/snapshot")
        for server in ("extproc", "floor"):
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(grpc.RpcError):
                    if grpc_serving(f"127.0.0.1:{ports[server]}"):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server} never reported SERVING")
                time.sleep(0.1)

        if args.setups:
            setups = {name: port for name, port in setups.items() if name in args.setups}
        results: dict[tuple[str, int, int], list[dict[str, float]]] = {}
        for prompt_bytes in args.prompt_bytes:
            lua = work / f"post-{prompt_bytes}.lua"
            lua.write_text(LUA % max(1, prompt_bytes - 60))
            for _ in range(args.rounds):
                for concurrency in args.concurrency:
                    for name, port in setups.items():
                        pids = [bench.pids[process] for process in own[name]]
                        cpu_before = [cpu_seconds(pid) for pid in pids]
                        out = subprocess.run(
                            [
                                "wrk",
                                "-t1",
                                f"-c{concurrency}",
                                f"-d{args.seconds}s",
                                "--latency",
                                "-s",
                                str(lua),
                                f"http://127.0.0.1:{port}/v1/chat/completions",
                            ],
                            capture_output=True,
                            text=True,
                            timeout=args.seconds + 30,
                            check=True,
                        ).stdout
                        run = parse_wrk(out)
                        # Per process too: the front Envoy and the brain / ext_proc server.
                        per_request = [
                            (cpu_seconds(pid) - before) / max(run["requests"], 1.0) * 1e6
                            for pid, before in zip(pids, cpu_before, strict=True)
                        ]
                        run["cpu_us_per_request"] = sum(per_request)
                        for process, cpu in zip(own[name], per_request, strict=True):
                            run[f"cpu_us_per_request_{process}"] = cpu
                        results.setdefault((name, concurrency, prompt_bytes), []).append(run)
        rows: list[dict[str, Any]] = []
        print(
            f"{'setup':<23} {'conc':>4} {'prompt':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'non-2xx':>8}"
            f" {'cpu us/req':>10}"
        )
        for (name, concurrency, prompt_bytes), runs in results.items():
            best = sorted(runs, key=lambda r: r["p50_ms"])[len(runs) // 2]  # the median run
            row = {"setup": name, "concurrency": concurrency, "prompt_bytes": prompt_bytes, **best}
            # The spread over rounds: on a shared machine one round can be far off the others.
            row["rps_min"] = min(r["rps"] for r in runs)
            row["rps_max"] = max(r["rps"] for r in runs)
            row["p50_ms_min"] = min(r["p50_ms"] for r in runs)
            row["p50_ms_max"] = max(r["p50_ms"] for r in runs)
            row["cpu_us_per_request_min"] = min(r["cpu_us_per_request"] for r in runs)
            row["cpu_us_per_request_max"] = max(r["cpu_us_per_request"] for r in runs)
            rows.append(row)
            print(
                f"{name:<23} {concurrency:>4} {prompt_bytes:>7} {best['p50_ms']:>8.3f} {best['p99_ms']:>8.3f} "
                f"{best['rps']:>9.0f} {best['errors']:>8.0f} {best['cpu_us_per_request']:>10.0f}"
            )
        write_report(args.json, rows, load_generator="wrk")
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
