from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from extproc.stack import LocalStack, StackConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stack_config(**overrides: object) -> StackConfig:
    config = StackConfig(
        listen_port=free_port(),
        admin_port=free_port(),
        extproc_port=free_port(),
        metrics_port=free_port(),
        sim_endpoints=4,
        time_scale=0.05,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """A real Envoy + ext_proc + simulated fleet, shared by one test module."""
    local = LocalStack(stack_config())
    try:
        local.start()
    except Exception:
        print(local.logs())
        raise
    yield local
    local.stop()
