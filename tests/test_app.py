"""The app wires a hot-reloaded policy's scheduler settings into the running scheduler."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.app import App
from extproc.collectors.collector import collector_from_fleet_file
from extproc.config import ServerConfig
from extproc.policy.reload import PolicyReloader
from tests.conftest import free_port
from tests.helpers import fleet_snapshot

POLICY = """
pools:
  - {{name: fast, models: [m], gpu_weights: {weights}}}
default: {{route: {{pool: fast, model: m}}}}
{scheduler}
"""


def write(path: Path, weights: str, scheduler: str = "", bump: int = 0) -> None:
    path.write_text(POLICY.format(weights=weights, scheduler=scheduler))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))  # a distinct mtime


def app_with(policy_file: Path, tmp_path: Path) -> App:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("endpoints: [{address: '127.0.0.1:1', models: [m]}]\n")
    reloader = PolicyReloader(policy_file)
    return App(
        ServerConfig(port=free_port(), metrics_port=0),
        lambda fleet: collector_from_fleet_file(fleet_file, fleet),
        policy=reloader,
    )


async def test_reloaded_gpu_weights_reach_the_scheduler_and_removed_ones_are_dropped(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    write(policy_file, "{a100: 3, b200: 8, t4: 1}")
    app = app_with(policy_file, tmp_path)
    snapshot = fleet_snapshot(3, gpu=["a100", "t4", "b200"])
    a100, t4, b200 = app.scheduler._speed(snapshot).tolist()
    assert (a100 / t4, b200 / t4) == pytest.approx((3.0, 8.0))
    assert app.router.picker is app.scheduler

    write(policy_file, "{a100: 10, t4: 1}", bump=1)
    assert app.policy is not None and await app.policy.check_once()
    # Same fleet membership as before: a cache keyed by it must not hand back the old speeds.
    a100, t4, b200 = app.scheduler._speed(snapshot).tolist()
    assert a100 / t4 == pytest.approx(10.0)
    assert b200 == 1.0  # b200 is gone from the prior: assumed the fleet's median
    assert app.scheduler.speeds is app.speeds  # learned speeds survive the reload
    assert app.router.picker is app.scheduler


async def test_a_policy_scheduler_section_configures_plugins_and_reloads(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    write(policy_file, "{}", "scheduler: {scorers: {prefix: {weight: 4, block_chars: 32}}}")
    app = app_with(policy_file, tmp_path)
    weights = {s.name: w for s, w in app.scheduler.scorers}
    assert weights["prefix"] == 4.0
    first = app.scheduler

    write(policy_file, "{}", "scheduler: {scorers: {prefix: 0}, filters: [ready]}", bump=1)
    assert app.policy is not None and await app.policy.check_once()
    assert app.scheduler is not first and app.router.picker is app.scheduler
    assert "prefix" not in {s.name for s, _ in app.scheduler.scorers}
    assert [f.name for f in app.scheduler.fleet_filters + app.scheduler.request_filters] == ["ready"]

    # A bad section is refused at load: the running scheduler stays.
    write(policy_file, "{}", "scheduler: {scorers: {prefix: {block_chars: 0}}}", bump=2)
    assert not await app.policy.check_once()
    assert "scheduler.scorers.prefix.block_chars" in (app.policy.last_error or "")
    assert app.router.picker is app.scheduler
    assert "prefix" not in {s.name for s, _ in app.scheduler.scorers}
