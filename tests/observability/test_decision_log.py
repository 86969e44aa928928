from __future__ import annotations

import json
from pathlib import Path

from extproc.observability.decision_log import DecisionLog, DecisionLogConfig


def test_sampling_is_deterministic_per_request_id_and_close_to_the_rate(tmp_path: Path) -> None:
    log = DecisionLog(DecisionLogConfig(path=str(tmp_path / "d.log"), sample_rate=0.1))
    ids = [f"req-{i}" for i in range(20_000)]
    first = [log.sampled(i) for i in ids]
    assert first == [log.sampled(i) for i in ids]  # the observation stream agrees
    assert 1_700 < sum(first) < 2_300
    log.close()
    assert not DecisionLog(DecisionLogConfig(path="", sample_rate=1.0)).sampled("x")
    assert not DecisionLog(DecisionLogConfig(path="-", sample_rate=0.0)).sampled("x")


def test_lines_are_json_and_rotate(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    log = DecisionLog(DecisionLogConfig(path=str(path), sample_rate=1.0, max_bytes=2_000, backups=2))
    for i in range(100):
        log.write({"request_id": f"r{i}", "text": "é" * 10})
    log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and all(json.loads(line)["text"] == "é" * 10 for line in lines)
    assert (tmp_path / "decisions.log.1").exists() and not (tmp_path / "decisions.log.3").exists()
    assert log.lines_written == 100
