from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from extproc.devstack.stack import LocalStack, StackConfig, free_port

__all__ = ["free_port"]  # tests import it from here


_stack_logs: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def _stack_logs_under_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stacks' logs go under pytest's temp dir (the last 3 sessions kept), not one /tmp dir each."""
    global _stack_logs
    _stack_logs = tmp_path_factory.mktemp("stacks")


@pytest.fixture(autouse=True)
def _close_sdk_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """OpenAI and Anthropic SDK clients a test makes are closed when it ends. Left open, their
    pooled sockets are closed by the garbage collector whenever it runs, as a ResourceWarning:
    an error under filterwarnings = error, even after the last test."""
    made: list[openai.OpenAI | anthropic.Anthropic] = []
    for sdk in (openai.OpenAI, anthropic.Anthropic):
        monkeypatch.setattr(sdk, "__init__", _tracking(sdk.__init__, made))
    yield
    for client in made:
        client.close()


def _tracking(init: Callable[..., None], made: list[Any]) -> Callable[..., None]:
    def tracked(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    return tracked


def stack_config(**overrides: object) -> StackConfig:
    log_dir = tempfile.mkdtemp(prefix="stack-", dir=_stack_logs) if _stack_logs else None
    return StackConfig.on_free_ports(
        **{"sim_endpoints": 4, "time_scale": 0.05, "log_dir": log_dir, **overrides}
    )


def started_stack(**overrides: object) -> LocalStack:
    """A started LocalStack; on a failed start its children's logs go to the test output."""
    local = LocalStack(stack_config(**overrides))
    try:
        local.start()
    except Exception:
        print(local.logs())
        raise
    return local


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """A real Envoy + ext_proc + simulated fleet, shared by one test module."""
    local = started_stack()
    yield local
    local.stop()


def _redis_server_binary() -> str | None:
    """redis-server from PATH, else installed from Debian's package (as the issue asks)."""
    import shutil
    import subprocess

    found = shutil.which("redis-server")
    if found is None and shutil.which("apt-get") is not None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-server"],
            capture_output=True,
            timeout=300,
            env=env,
            check=False,
        )
        found = shutil.which("redis-server")
    return found


class RedisServer:
    def __init__(self, binary: str) -> None:
        import subprocess

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self._subprocess = subprocess
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import time

        self.proc = self._subprocess.Popen(
            self._argv, stdout=self._subprocess.DEVNULL, stderr=self._subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = _redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed and could not be installed with apt-get here")
    return binary


@pytest.fixture
def redis_server(redis_binary: str) -> Iterator[RedisServer]:
    """A real, empty redis-server on a free loopback port, for one test."""
    server = RedisServer(redis_binary)
    server.start()
    yield server
    server.stop()


def sim_records(local: LocalStack) -> list[dict[str, object]]:
    """Every simulated endpoint's record of the requests it served (simulated seconds)."""
    records: list[dict[str, object]] = []
    for endpoint in local.fleet:
        with urllib.request.urlopen(f"http://{endpoint['address']}/sim/stats", timeout=5) as reply:
            records += json.loads(reply.read())["records"]
    return records


def ext_proc_counter(local: LocalStack, name: str) -> float:
    """One unlabelled sample from ext_proc's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{local.config.metrics_port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def envoy_stats(stack: LocalStack) -> dict[str, int]:
    """The Wasm filter's counters from the stack's Envoy admin, by their last dotted part
    (routed, escalated, fail_open, ...)."""
    with urllib.request.urlopen(
        f"http://127.0.0.1:{stack.admin_port}/stats?filter=llm_wasm", timeout=5
    ) as reply:
        text = reply.read().decode()
    return {
        line.split(": ")[0].rsplit(".", 1)[-1]: int(line.split(": ")[1])
        for line in text.splitlines()
        if line.split(": ")[-1].strip().isdigit()
    }


def counted(metrics_port: int, name: str, *label_parts: str) -> float:
    """A labelled counter from a /metrics page, summed over the series whose labels contain
    every one of ``label_parts`` (e.g. 'outcome="routed"')."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        page = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith(name + "{") and all(part in line for part in label_parts)
    )


def launch_up(
    command: list[str], wait_s: float = 90.0, extra_args: Sequence[str] = (), **popen: object
) -> tuple[subprocess.Popen[str], int, list[str]]:
    """Start `llm-extproc up` (``command`` is how to run the CLI; ``extra_args`` follow `up`'s
    own) on free ports and read its output until it says the stack is up. Returns the process,
    the listener port and the lines."""
    port = free_port()
    argv = [*command, "up", "--port", str(port), "--admin-port", str(free_port())]
    argv += ["--extproc-port", str(free_port()), "--metrics-port", str(free_port()), "--time-scale", "0.05"]
    argv += ["--brain-port", str(free_port()), *extra_args]
    proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Ctrl-C stops everything" in line or not line:
            break
    return proc, port, lines
