from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.policy.compile import PolicyError
from extproc.policy.reload import PolicyReloader
from extproc.policy.types import PolicyInput

GOOD_A = "rules:\n  - {name: a, match: {stream: true}, timeout_s: 1}\ndefault: {}\n"
GOOD_B = "rules:\n  - {name: b, match: {stream: true}, timeout_s: 2}\ndefault: {}\n"
BAD = "rules:\n  - {name: a, match: {stream: maybe}}\ndefault: {}\n"


def touch(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


async def test_good_bad_good_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    touch(path, GOOD_A, 0)
    reloader = PolicyReloader(tmp_path)
    seen = []
    reloader.on_change.append(lambda p: seen.append(p.version))
    first = reloader.current
    stream = PolicyInput("/v1/chat/completions", "POST", {}, "m", True, "chat")
    in_flight = first.evaluate(stream)
    assert not await reloader.check_once()  # nothing changed
    touch(path, BAD, 1)
    assert not await reloader.check_once()
    assert reloader.current is first and reloader.reloads_failed == 1
    assert reloader.last_error is not None and "rules[0].match.stream" in reloader.last_error
    touch(path, GOOD_B, 2)
    assert await reloader.check_once()
    assert reloader.current.evaluate(stream).rule == "b"
    assert reloader.reloads_ok == 1 and reloader.last_error is None and seen == [reloader.current.version]
    assert in_flight.rule == "a"  # a decision already made is untouched


def test_an_invalid_policy_at_start_up_is_fatal(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(BAD)
    with pytest.raises(PolicyError):
        PolicyReloader(tmp_path / "p.yaml")
