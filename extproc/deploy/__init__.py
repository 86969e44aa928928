"""Deployment artefacts shipped in the wheel: Envoy config templates, the local-stack policy.

Everything here is package data read through :mod:`importlib.resources`, so ``llm-extproc up``,
``render istio`` and the benchmarks work from an installed wheel as well as from a checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped(*parts: str) -> Path:
    """A file or folder shipped in this package, as a filesystem path.

    Wheels install unzipped, so the resource is a real file; the policy loader and Envoy need a
    path they can stat and re-read, not a stream.
    """
    resource = resources.files(__name__).joinpath(*parts)
    path = Path(str(resource))
    if not path.exists():
        raise FileNotFoundError(f"llm-extproc package data is missing: {path} (a broken install?)")
    return path


LOCAL_STACK_POLICY = shipped("policies", "local-stack.yaml")
