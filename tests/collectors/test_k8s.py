"""Kubernetes EndpointSlice discovery on recorded list/watch JSON (no cluster here).

The recorded events go through the official client's real ``kubernetes.watch.Watch.stream``
(410 handling, bookmark and event decoding included): only ``list_namespaced_endpoint_slice``
is replaced, by an object that answers with the recorded bytes the API server would send.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.collectors.discovery import EndpointTemplate, build_discovery
from extproc.collectors.k8s import EndpointSliceDiscovery, EndpointSliceState, KubernetesApi
from extproc.fleet.state import Endpoint

DATA = Path(__file__).parents[1] / "data"
LIST = json.loads((DATA / "k8s_endpointslice_list.json").read_text())
RELIST = json.loads((DATA / "k8s_endpointslice_relist.json").read_text())
EVENTS = [
    json.loads(line) for line in (DATA / "k8s_endpointslice_events.jsonl").read_text().splitlines() if line
]
SERVICE = "vllm-llama-8b"


class _Response:
    """The slice of urllib3.HTTPResponse that the client's list and Watch.stream use."""

    status = 200

    def __init__(
        self, body: bytes = b"", lines: list[str] | None = None, idle: threading.Event | None = None
    ):
        self.data = body
        self._lines = lines or []
        self._idle = idle

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        for line in self._lines:
            yield line.encode() + b"\n"
        if not self._lines and self._idle is not None:
            self._idle.wait(0.05)  # an idle watch: nothing happens for a while, then it ends

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class RecordedDiscoveryApi:
    """Stands in for ``kubernetes.client.DiscoveryV1Api``: replays the recorded JSON."""

    def __init__(self, lists: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        self.lists = lists
        self.events = events
        self.cursor = 0
        self.list_calls = 0
        self.watch_calls: list[dict[str, Any]] = []
        self.idle = threading.Event()

    def list_namespaced_endpoint_slice(self, namespace: str, **kwargs: Any) -> _Response:
        assert namespace == "llm"
        if kwargs.get("watch"):
            self.watch_calls.append(kwargs)
            batch: list[str] = []
            # One watch connection delivers events until the server ends it with an ERROR.
            while self.cursor < len(self.events):
                event = self.events[self.cursor]
                self.cursor += 1
                batch.append(json.dumps(event))
                if event["type"] == "ERROR":
                    break
            return _Response(lines=batch, idle=self.idle)
        body = self.lists[min(self.list_calls, len(self.lists) - 1)]
        self.list_calls += 1
        return _Response(body=json.dumps(body).encode())


def addresses(endpoints: tuple[Endpoint, ...]) -> dict[str, bool]:
    return {e.address: e.discovered_ready for e in endpoints}


def test_state_machine_step_by_step() -> None:
    state = EndpointSliceState({SERVICE: EndpointTemplate(models=("llama",))}, port_name="http")
    state.reset(LIST["items"])
    # Only ready endpoints of our service; the not-ready pod and the other service are left out.
    assert addresses(state.endpoints()) == {
        "10.0.1.1:8000": True,
        "10.0.1.3:8000": True,
        "10.0.2.1:8000": True,
    }
    first = state.endpoints()[0]
    assert first == Endpoint("10.0.1.1:8000", models=("llama",), zone="us-east-1a", node="gpu-node-1")
    expected = [
        # MODIFIED: 10.0.1.2 became ready
        {"10.0.1.1:8000": True, "10.0.1.2:8000": True, "10.0.1.3:8000": True, "10.0.2.1:8000": True},
        # MODIFIED: 10.0.1.1 terminating (still serving): kept, but no new traffic
        {"10.0.1.1:8000": False, "10.0.1.2:8000": True, "10.0.1.3:8000": True, "10.0.2.1:8000": True},
        # ADDED: an IPv6 slice
        {
            "10.0.1.1:8000": False,
            "10.0.1.2:8000": True,
            "10.0.1.3:8000": True,
            "10.0.2.1:8000": True,
            "[fd00::5]:8000": True,
        },
    ]
    for event, want in zip(EVENTS[:3], expected, strict=True):
        state.apply(event["type"], event["object"])
        assert addresses(state.endpoints()) == want
    state.apply(EVENTS[3]["type"], EVENTS[3]["object"])  # BOOKMARK: no change
    assert addresses(state.endpoints()) == expected[-1]
    state.apply(EVENTS[4]["type"], EVENTS[4]["object"])  # DELETED the second slice
    assert "10.0.2.1:8000" not in addresses(state.endpoints())


def test_state_ports_duplicates_and_relabel() -> None:
    slice_ = json.loads(json.dumps(LIST["items"][1]))  # one ready endpoint, 10.0.2.1
    by_number = EndpointSliceState({SERVICE: EndpointTemplate()}, port=7000)
    by_number.reset([slice_])
    assert addresses(by_number.endpoints()) == {"10.0.2.1:7000": True}
    first_port = EndpointSliceState({SERVICE: EndpointTemplate()})
    first_port.reset([slice_])
    assert addresses(first_port.endpoints()) == {"10.0.2.1:9090": True}
    missing = EndpointSliceState({SERVICE: EndpointTemplate()}, port_name="grpc")
    missing.reset([slice_])
    assert missing.endpoints() == ()
    # The same address in two slices (during a slice split): a ready copy wins.
    copy = json.loads(json.dumps(slice_))
    copy["metadata"]["name"] = "aaa-first"
    copy["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
    state = EndpointSliceState({SERVICE: EndpointTemplate()}, port_name="http")
    state.reset([copy, slice_])
    assert addresses(state.endpoints()) == {"10.0.2.1:8000": True}
    # ready: nil means "unknown", which the API says to treat as ready.
    del slice_["endpoints"][0]["conditions"]["ready"]
    state.reset([slice_])
    assert addresses(state.endpoints()) == {"10.0.2.1:8000": True}
    # A slice relabelled to another service drops out.
    slice_["metadata"]["labels"]["kubernetes.io/service-name"] = "someone-else"
    state.apply("MODIFIED", slice_)
    assert state.endpoints() == ()


async def test_watch_through_the_real_client_with_410_resync() -> None:
    api = RecordedDiscoveryApi([LIST, RELIST], EVENTS)
    source = build_discovery(
        {
            "type": "k8s",
            "namespace": "llm",
            "services": [{"name": SERVICE, "pool": "llama-a100", "models": ["llama-3-8b"]}],
            "port_name": "http",
            "retry_s": 0.01,
        }
    )
    assert isinstance(source, EndpointSliceDiscovery)
    source.api = KubernetesApi(api)
    changes: list[tuple[Endpoint, ...]] = []
    task = asyncio.create_task(source.run(changes.append))
    try:
        want = {"10.0.1.2:8000": True, "10.0.1.3:8000": True, "[fd00::5]:8000": True}
        for _ in range(500):
            if (
                changes
                and addresses(changes[-1]) == want
                and api.cursor == len(EVENTS)
                and api.list_calls >= 2
            ):
                break
            await asyncio.sleep(0.01)
        # After the 410: relisted (10.0.1.1 gone, 10.0.4.1 appeared), then the resumed watch
        # marked 10.0.4.1 not ready.
        assert addresses(changes[-1]) == want, changes[-1]
        assert api.list_calls == 2 and source.gone == 1 and source.errors == 0
        # The relist's version was used to resume, and the selector names our service.
        resumed = [call for call in api.watch_calls if call.get("resource_version") == "2001"]
        assert resumed and resumed[0]["label_selector"] == "kubernetes.io/service-name in (vllm-llama-8b)"
        assert all(e.pool == "llama-a100" and e.models == ("llama-3-8b",) for e in changes[-1])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        api.idle.set()


async def test_api_errors_keep_last_set_and_retry() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        def list(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("apiserver unreachable")
            return LIST["items"], "1005"

        def watch(
            self, namespace: str, label_selector: str, resource_version: str, timeout_s: int
        ) -> Iterator[Any]:
            if self.calls == 1:
                raise RuntimeError("watch broke")
            stop.wait(0.05)
            return iter(())

        def stop(self) -> None:
            stop.set()

    stop = threading.Event()
    flaky = Flaky()
    source = EndpointSliceDiscovery("llm", [SERVICE], port_name="http", api=flaky, retry_s=0.01)
    changes: list[tuple[Endpoint, ...]] = []
    task = asyncio.create_task(source.run(changes.append))
    try:
        for _ in range(500):
            if flaky.calls >= 3:
                break
            await asyncio.sleep(0.01)
        assert flaky.calls >= 3 and source.errors == 2
        # The first list's set was reported once; failures never emptied it.
        assert len(changes) == 1 and len(changes[0]) == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert stop.is_set()


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="at least one service"):
        build_discovery({"type": "k8s", "namespace": "x"})
    source = build_discovery({"type": "kubernetes", "service": "svc", "port": 8000, "models": ["m"]})
    assert isinstance(source, EndpointSliceDiscovery)
    assert source.state.services == {"svc": EndpointTemplate(models=("m",))}


def test_k8s_discovery_imports_without_the_dns_extra() -> None:
    """`pip install llm-extproc[k8s]` alone: nothing on the k8s path may import dnspython."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['dns'] = None\n"  # as if dnspython were not installed
        "import extproc.collectors.k8s\n"
        "from extproc.collectors.discovery import build_discovery\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
