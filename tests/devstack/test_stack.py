"""`llm-extproc up` starts Envoy, ext_proc and the fleet, serves, and leaves no orphans."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request

import pytest

from tests.conftest import launch_up

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


def test_up_serves_survives_an_ext_proc_crash_and_sigterm_stops_every_child() -> None:
    proc, port, lines = launch_up([sys.executable, "-m", "extproc.cli"], wait_s=60)
    try:
        assert proc.stdout is not None
        assert any(f"http://127.0.0.1:{port}/v1" in line for line in lines), "".join(lines)
        children = children_of(proc.pid)
        assert len(children) == 3  # simulator, ext_proc, envoy
        status, headers = chat(port)
        assert status == 200 and headers["x-gateway-destination-endpoint-served"]
        assert headers.get("x-sim-destination"), "ext_proc chose the endpoint list"
        # kill -9 the ext_proc: Envoy fails open, the supervisor restarts it, routing resumes.
        extproc = [pid for pid in children if " serve " in cmdline(pid)]
        assert len(extproc) == 1
        os.kill(extproc[0], signal.SIGKILL)
        statuses, routed_again = [], False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(statuses) < 2000:
            status, headers = chat(port)
            statuses.append(status)
            if headers.get("x-sim-destination") and len(statuses) > 1:
                routed_again = True
                break
            time.sleep(0.05)
        assert statuses and set(statuses) == {200}, statuses
        assert routed_again, f"ext_proc did not come back within 60 s ({len(statuses)} requests)"
        restarted = [pid for pid in children_of(proc.pid) if " serve " in cmdline(pid)]
        assert len(restarted) == 1 and restarted != extproc
        children = children_of(proc.pid)
        assert len(children) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not [pid for pid in children if alive(pid)]
        output = "".join(lines) + proc.stdout.read()
        assert "ext_proc exited with code -9" in output and "ext_proc restarted (restart 1)" in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
