"""`llm-extproc up` starts Envoy, ext_proc and the fleet, serves, and leaves no orphans."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.request

import pytest

from tests.conftest import counted, launch_up

pytestmark = pytest.mark.envoy


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def chat(port: int) -> tuple[int, dict[str, str]]:
    body = json.dumps(
        {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body.encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        reply.read()
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}


def option(lines: list[str], name: str) -> str:
    return next(line.split()[-1] for line in lines if line.split()[:1] == [name])


@pytest.mark.parametrize("data_path", ["wasm", "extproc"])
def test_up_serves_survives_a_crash_of_its_decider_and_sigterm_stops_every_child(data_path: str) -> None:
    """`up` (default: the Wasm data path) serves through Envoy; `kill -9` of the Python process
    (ext_proc, or the Wasm filter's brain) never fails a request, it is restarted, and the new
    process decides (ext_proc) or receives the filter's records (brain) again."""
    extra = [] if data_path == "wasm" else ["--data-path", "extproc"]
    proc, port, lines = launch_up([sys.executable, "-m", "extproc.cli"], wait_s=60, extra_args=extra)
    try:
        assert proc.stdout is not None
        assert any(f"http://127.0.0.1:{port}/v1" in line for line in lines), "".join(lines)
        assert any(line.split()[:2] == ["data_path", data_path] for line in lines), "".join(lines)
        metrics_port = int(option(lines, "metrics").split(":")[2].split("/")[0])
        children = children_of(proc.pid)
        assert len(children) == 3  # simulator, ext_proc or brain, envoy
        status, headers = chat(port)
        assert status == 200 and headers["x-gateway-destination-endpoint-served"]
        assert headers.get("x-sim-destination"), "the decider chose the endpoint list"
        if data_path == "wasm":
            admin = option(lines, "envoy_admin")
            with urllib.request.urlopen(f"{admin}/stats?filter=llm_wasm.routed", timeout=5) as reply:
                routed = reply.read().decode()
            assert int(routed.rsplit(":", 1)[1]) >= 1, f"the Wasm filter decided: {routed}"
        # kill -9 the decider: Envoy fails open, the supervisor restarts it, routing resumes.
        decider = [pid for pid in children if " serve " in cmdline(pid)]
        assert len(decider) == 1
        os.kill(decider[0], signal.SIGKILL)
        statuses: list[int] = []
        routed_again = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(statuses) < 2000:
            status, headers = chat(port)
            statuses.append(status)
            restarted = [pid for pid in children_of(proc.pid) if " serve " in cmdline(pid)]
            if headers.get("x-sim-destination") and restarted and restarted != decider:
                with contextlib.suppress(OSError):
                    # A fresh process counts from 0: a count proves it decided (ext_proc) or
                    # received this request's record from the filter (brain).
                    if counted(metrics_port, "llm_extproc_requests_total") > 0:
                        routed_again = True
                        break
            time.sleep(0.05)
        assert statuses and set(statuses) == {200}, statuses
        assert routed_again, (
            f"the {data_path} decider did not come back within 60 s ({len(statuses)} requests)"
        )
        restarted = [pid for pid in children_of(proc.pid) if " serve " in cmdline(pid)]
        assert len(restarted) == 1 and restarted != decider
        children = children_of(proc.pid)
        assert len(children) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not [pid for pid in children if alive(pid)]
        output = "".join(lines) + proc.stdout.read()
        role = "brain" if data_path == "wasm" else "ext_proc"
        assert f"{role} exited with code -9" in output and f"{role} restarted (restart 1)" in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
