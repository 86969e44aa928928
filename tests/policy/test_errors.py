"""Every kind of policy error names the file, the line and the field, and says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.policy.compile import PolicyError, load_policy

DATA = Path(__file__).parents[1] / "data" / "policies"


def issues(name: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(DATA / name)
    return [str(i).replace(str(DATA) + "/", "") for i in info.value.issues]


def test_split_weights() -> None:
    assert issues("bad_split.yaml") == ["bad_split.yaml:7 rules[0].split: weights must sum to 100, got 90"]


def test_semantic_errors() -> None:
    found = issues("bad_refs.yaml")
    assert "bad_refs.yaml:4 models.big.model: pool 'a' does not serve 'm9'" in found
    assert "bad_refs.yaml:5 models.other.pool: unknown pool 'nowhere'; pools: ['a']" in found
    assert "bad_refs.yaml:7 fallbacks.x: fallback cycle: x -> ... -> y -> x" in found
    assert (
        "bad_refs.yaml:11 rules[0].route: unknown model 'unknown-model'; aliases: ['big', 'other'], served: ['m1']"
        in found
    )
    assert "bad_refs.yaml:12 rules[1].name: rule 'r1' is defined twice" in found
    assert "bad_refs.yaml:12 rules[1]: unreachable: rule 'r1' before it matches every request" in found
    assert "bad_refs.yaml:14 rules[1].mirror.pool: unknown pool 'ghost'; pools: ['a']" in found


def test_schema_errors() -> None:
    found = issues("bad_schema.yaml")
    assert "bad_schema.yaml:2 pools[0].colour: unknown field" in found
    assert any(
        f.startswith("bad_schema.yaml:6 rules[0].retries.retry_on: retry_on must not contain 5xx")
        for f in found
    )
    assert (
        "bad_schema.yaml:5 rules[0].match.headers.x-a: give exactly one of exact, prefix, regex, present; "
        "got ['exact', 'prefix']" in found
    )
    assert "bad_schema.yaml:5 rules[0].match.complexity: give at least one of gt, gte, lt, lte" in found
    assert "bad_schema.yaml:1 default: required field is missing" in found


def test_yaml_syntax_error_has_a_line() -> None:
    (found,) = issues("bad_yaml.yaml")
    assert found.startswith("bad_yaml.yaml:3: invalid YAML")


def test_unreachable_after_a_catch_all() -> None:
    assert issues("unreachable.yaml") == [
        "unreachable.yaml:4 rules[1]: unreachable: rule 'everything' before it matches every request"
    ]


def test_duplicate_rule_match_and_bad_regex_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "rules:\n"
        "  - {name: a, match: {stream: true}}\n"
        "  - {name: b, match: {stream: true}}\n"
        "  - {name: c, match: {model_regex: '('}}\n"
        "default: {}\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "p.yaml")
    text = str(info.value)
    assert "p.yaml:4 rules[2].match.model_regex: regex '(' does not compile" in text
    (tmp_path / "q.yaml").write_text(
        "rules:\n  - {name: a, match: {stream: true}}\n  - {name: b, match: {stream: true}}\ndefault: {}\n"
    )
    with pytest.raises(
        PolicyError, match=r"q.yaml:3 rules\[1\].match: unreachable: rule 'a' has the same match"
    ):
        load_policy(tmp_path / "q.yaml")
    with pytest.raises(PolicyError, match="no such file"):
        load_policy(tmp_path / "missing.yaml")


def test_directory_merge_reports_duplicates_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "pools:\n  - {name: p, models: [m]}\nmodels:\n  big: {model: m}\ndefault: {}\n"
    )
    (tmp_path / "b.yaml").write_text(
        "models:\n  big: {model: m}\nrules:\n  - {name: r, match: {stream: true}}\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert [str(i).replace(str(tmp_path) + "/", "") for i in info.value.issues] == [
        "b.yaml:2 models.big: defined twice"
    ]
    (tmp_path / "b.yaml").write_text("rules:\n  - {name: r, match: {stream: true}, route: {model: nope}}\n")
    with pytest.raises(PolicyError, match=r"b.yaml:2 rules\[0\].route: unknown model 'nope'"):
        load_policy(tmp_path)
