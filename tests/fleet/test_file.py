from __future__ import annotations

from pathlib import Path

import pytest

from extproc.fleet.file import FleetFileError, load_fleet_file, parse_fleet


def test_yaml_and_json_fleet_files(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(
        "endpoints:\n- {address: '127.0.0.1:8001', models: [m], pool: fast, gpu_class: a100, zone: z1}\n"
        "- {address: '127.0.0.1:8002', models: m}\n"
    )
    a, b = load_fleet_file(tmp_path / "f.yaml")
    assert (a.pool, a.gpu_class, a.zone, a.models) == ("fast", "a100", "z1", ("m",))
    assert (b.pool, b.models) == ("default", ("m",))
    (tmp_path / "f.json").write_text('{"endpoints": [{"address": "[::1]:9000", "models": ["m"]}]}')
    assert load_fleet_file(tmp_path / "f.json")[0].address == "[::1]:9000"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a mapping with an 'endpoints' list"),
        ({"endpoints": ["x"]}, "endpoints[0]: expected a mapping"),
        ({"endpoints": [{"address": "nohost"}]}, "endpoints[0].address: expected 'host:port'"),
        ({"endpoints": [{"address": "h:99999"}]}, "port 1-65535"),
        ({"endpoints": [{"address": "h:1", "models": [1]}]}, "endpoints[0].models"),
        ({"endpoints": [{"address": "h:1"}, {"address": "h:1"}]}, "listed twice"),
    ],
)
def test_errors_name_the_field(data: object, message: str) -> None:
    with pytest.raises(FleetFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_fleet(data, "fleet.yaml")
