"""What a benchmark ran on: cores, CPU model, versions, date and the exact command."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import grpc
    import numpy

    envoy = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        envoy = (
            subprocess.run(
                [os.path.join(os.path.dirname(sys.executable), "envoy"), "--version"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            .stdout.strip()
            .split("version: ")[-1]
        )
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "grpcio": grpc.__version__,
        "envoy": envoy,
        "date": datetime.date.today().isoformat(),
        # Benchmarks here often share the machine: the 1/5/15-minute load when the run ended.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def write_report(path: str | Path, results: Any, **extra: Any) -> None:
    """A benchmark's JSON: the command that produced it, the machine, anything ``extra``, results."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": command(), "machine": machine(), **extra, "results": results}
    out.write_text(json.dumps(report, indent=1) + "\n")


def command() -> str:
    """The command line as a reader would type it from the repository root."""
    if not sys.argv:
        return ""
    script = sys.argv[0]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if script.endswith(".py") and os.path.abspath(script).startswith(root + os.sep):
        module = os.path.relpath(os.path.abspath(script), root)[: -len(".py")].replace(os.sep, ".")
        return " ".join(["python", "-m", module, *sys.argv[1:]])
    return " ".join(["python", *sys.argv])
