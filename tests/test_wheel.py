"""The built wheel works outside the checkout: what `pip install llm-extproc` or the image gives.

The wheel is installed into a fresh venv (without its dependencies, which come from the test
venv through a path entry, so no download is needed); commands run from a temporary directory,
so only package data can satisfy them.
"""

from __future__ import annotations

import json
import os
import signal
import site
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import launch_up

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.envoy


class Installed:
    def __init__(self, venv: Path, cwd: Path) -> None:
        self.venv = venv
        self.cwd = cwd
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        self.env.pop("PYTHONPATH", None)

    @property
    def cli(self) -> str:
        return str(self.venv / "bin" / "llm-extproc")

    def run(self, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=self.env,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    wheels = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("llm_extproc-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    fresh_python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(fresh_python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    fresh_site = subprocess.run(
        [str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Dependencies from the test venv; a plain path entry does not run its .pth files, so the
    # test venv's editable install of this checkout stays invisible.
    (Path(fresh_site) / "test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    cwd = base / "elsewhere"
    cwd.mkdir()
    yield Installed(venv, cwd)


def test_the_package_comes_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    where = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import extproc; print(extproc.__file__)"],
        capture_output=True,
        text=True,
        cwd=installed.cwd,
        env=installed.env,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(installed.venv)), where


def test_up_answers_models_and_a_chat_through_envoy_then_stops_cleanly(installed: Installed) -> None:
    proc, port, lines = launch_up([installed.cli], cwd=installed.cwd, env=installed.env)
    try:
        assert any("Ctrl-C stops everything" in line for line in lines), "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as reply:
            models = {m["id"] for m in json.loads(reply.read())["data"]}
        assert "llama-3-8b" in models
        body = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json", "x-tenant-id": "acme"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.loads(reply.read())
            # The packaged local-stack policy applies: tenant acme is premium → llama-3-70b.
            assert reply.headers["x-gateway-destination-endpoint-served"]
        assert answer["model"] == "llama-3-70b", answer
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_render_istio_validate_schema_and_complexity_work_from_the_wheel(installed: Installed) -> None:
    rendered = installed.run("render", "istio", "--namespace", "llm", "--service", "vllm", "--port", "8000")
    assert rendered.returncode == 0, rendered.stderr
    assert "kind: EnvoyFilter" in rendered.stdout and "llm-extproc-policies" in rendered.stdout
    for policy in sorted((ROOT / "policies").glob("*.yaml")):
        checked = installed.run("validate", str(policy))
        assert checked.returncode == 0, (policy.name, checked.stdout, checked.stderr)
    schema = installed.run("schema")
    assert schema.returncode == 0 and json.loads(schema.stdout)["title"]
    scored = installed.run(
        "complexity", stdin='{"prompt": "hi"}\n{"prompt": "Prove that there are infinitely many primes."}\n'
    )
    assert scored.returncode == 0, scored.stderr
    rows = [json.loads(line) for line in scored.stdout.splitlines()]
    assert len(rows) == 2 and all(0.0 <= row["complexity"] <= 1.0 for row in rows)


def test_a_benchmark_runs_from_the_wheel(installed: Installed) -> None:
    out = installed.cwd / "promparse.json"
    result = installed.run("bench", "promparse", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text())["results"]
