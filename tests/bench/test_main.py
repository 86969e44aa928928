from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

from extproc import cli
from extproc.bench import main as bench


def test_every_listed_benchmark_module_has_a_main() -> None:
    for name, (module, _) in bench.BENCHMARKS.items():
        if name == "scale" and importlib.util.find_spec(module) is None:
            continue
        assert callable(importlib.import_module(module).main), name


def test_unknown_name_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'nope'" in err and "routing" in err
    assert bench.main([]) == 2


def test_the_cli_runs_a_benchmark_and_it_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "promparse.json"
    assert cli.main(["bench", "promparse", "--json", str(out), "--budget", "0.02"]) == 0
    written = json.loads(out.read_text())
    assert written["command"] and written["machine"]["cores"] and written["results"]
