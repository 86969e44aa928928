"""The targeted parser against prometheus-client's parser (the reference) on recorded pages."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extproc.collectors.promparse import (
    PRESETS,
    MetricMapping,
    PageValues,
    TargetedParser,
    mapping_for,
    parse_labels,
    parse_page,
)

DATA = Path(__file__).parents[1] / "data"
# Recorded model-server pages, shipped for the parser benchmark.
SAMPLES = Path(__file__).parents[2] / "extproc" / "bench" / "data"


def reference(text: str, mapping: MetricMapping) -> PageValues:
    """The same reduction as TargetedParser, computed from prometheus-client's full parse."""
    names = mapping.sample_fields()
    sums: dict[str, float] = {}
    lora: tuple[float, dict[str, str]] | None = None
    found = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == mapping.lora_info:
                found += 1
                if lora is None or sample.value >= lora[0]:
                    lora = (sample.value, dict(sample.labels))
                continue
            field = names.get(sample.name)
            if field is None:
                continue
            found += 1
            value = float(sample.value)
            if field not in sums:
                sums[field] = value
            elif field == "kv_usage" and mapping.kv_usage_aggregation == "max":
                if math.isnan(sums[field]) or value > sums[field]:
                    sums[field] = value
            else:
                sums[field] += value
    running = waiting = None
    max_lora = None
    if lora is not None:
        labels = lora[1]
        # Adapter lists are comma-separated; blanks around names are not part of a name.
        running = tuple(a.strip() for a in labels.get(mapping.lora_running_label, "").split(",") if a.strip())
        waiting = tuple(a.strip() for a in labels.get(mapping.lora_waiting_label, "").split(",") if a.strip())
        max_lora = int(float(labels[mapping.lora_max_label])) if mapping.lora_max_label in labels else None
    return PageValues(
        waiting=sums.get("waiting"),
        running=sums.get("running"),
        kv_usage=sums.get("kv_usage"),
        prefix_cache_queries=sums.get("prefix_cache_queries"),
        prefix_cache_hits=sums.get("prefix_cache_hits"),
        ttft_sum=sums.get("ttft_sum"),
        ttft_count=sums.get("ttft_count"),
        prompt_tokens=sums.get("prompt_tokens"),
        prefill_sum=sums.get("prefill_sum"),
        queue_sum=sums.get("queue_sum"),
        decode_sum=sums.get("decode_sum", sums.get("legacy_decode_sum")),
        decode_count=sums.get("decode_count", sums.get("legacy_decode_count")),
        running_lora_adapters=running,
        waiting_lora_adapters=waiting,
        max_lora=max_lora,
        series_found=found,
    )


def same(a: PageValues, b: PageValues) -> bool:
    for name in PageValues.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True


@pytest.mark.parametrize(
    ("page", "preset"),
    [
        ("vllm_metrics_two_engines.txt", "vllm"),
        ("vllm_metrics_edge.txt", "vllm"),
        ("sglang_metrics.txt", "sglang"),
        ("tgi_metrics.txt", "tgi"),
    ],
)
def test_agrees_with_prometheus_client(page: str, preset: str) -> None:
    text = (SAMPLES / page).read_text()
    mine = TargetedParser(PRESETS[preset]).parse(text)
    ref = reference(text, PRESETS[preset])
    assert same(mine, ref), (mine, ref)
    assert mine.series_found > 0


def test_recorded_vllm_page_values() -> None:
    text = (SAMPLES / "vllm_metrics_two_engines.txt").read_text()
    assert len(text.splitlines()) > 400
    values = parse_page(text, "vllm")
    assert values.waiting == 3.0  # 3 + 0 across engines
    assert values.running == 12.0  # 7 + 5
    assert values.kv_usage == 0.4125  # max over engines, not the sum
    assert values.prefix_cache_queries == 123456 + 65432
    assert values.prefix_cache_hits == 23456 + 5432
    assert values.ttft_count == 800.0
    assert values.ttft_mean_s == pytest.approx(values.ttft_sum / 800.0)  # type: ignore[operator]
    # The LoRA series with the newest timestamp wins.
    assert values.running_lora_adapters == ("sql-lora", "chat-lora")
    assert values.waiting_lora_adapters == ("sql-lora",)
    assert values.max_lora == 4
    metrics = values.to_endpoint_metrics(scraped_at=12.0)
    assert metrics.running == 12.0 and metrics.max_lora == 4 and metrics.scraped_at == 12.0
    # Speed evidence: this (older) vLLM has no prefill histogram nor inter-token latency, so
    # prefill is TTFT minus queue time and decode comes from time_per_output_token.
    assert metrics.prompt_tokens_total == 1.5e6 + 910000
    assert values.queue_sum == pytest.approx(1126.7281392519553 + 1008.9414601803093)
    # This recorded page's queue time exceeds its TTFT (impossible): no prefill evidence.
    assert math.isnan(metrics.prefill_seconds_total)
    assert PageValues(ttft_sum=5.0, queue_sum=2.0).prefill_seconds == 3.0
    assert metrics.decode_seconds_total == pytest.approx(83.07767578038545 + 72.49493939460821)
    assert metrics.decode_tokens_total > 0


def test_edge_page() -> None:
    values = parse_page((SAMPLES / "vllm_metrics_edge.txt").read_text())
    assert values.waiting == 1500 + 2e-05 + 4
    assert values.running == math.inf
    assert values.kv_usage == 0.75  # NaN from one engine is ignored by max
    assert values.prefix_cache_queries == 1e10
    assert values.prefix_cache_hits is None  # missing series
    assert values.ttft_mean_s == 1.25 / 4
    assert values.running_lora_adapters == ("a\\b", 'c"d')
    assert values.max_lora == 8


def test_garbage_lines_are_skipped() -> None:
    values = parse_page((DATA / "vllm_metrics_garbage.txt").read_text())
    # Only the well-formed lines count: waiting engine 2, running "2", kv 0.25, ttft sum.
    assert values.waiting == 5.0
    assert values.running == 2.0
    assert values.kv_usage == 0.25
    assert values.ttft_sum == 2.0 and values.ttft_count is None and math.isnan(values.ttft_mean_s)
    assert values.series_found == 4


def test_missing_everything() -> None:
    values = parse_page("# nothing here\nother_metric 1\n")
    assert values == PageValues()
    metrics = values.to_endpoint_metrics(scraped_at=1.0)
    assert metrics.waiting == 0.0 and math.isnan(metrics.ttft_mean_s) and metrics.running_lora_adapters == ()


def test_first_line_and_crlf_and_timestamps() -> None:
    text = 'vllm:num_requests_waiting 2 1764000000000\r\nvllm:num_requests_running{a="b"} 3\r\n'
    values = parse_page(text)
    assert values.waiting == 2.0 and values.running == 3.0


def test_prefix_names_do_not_collide() -> None:
    mapping = MetricMapping(waiting="q", running="q_total")
    values = TargetedParser(mapping).parse('q_total 5\nq 2\nq_bucket{le="1"} 9\n')
    assert values.waiting == 2.0 and values.running == 5.0


def test_mapping_overrides_and_unknown_preset() -> None:
    mapping = mapping_for("vllm", waiting="custom_waiting")
    assert mapping.waiting == "custom_waiting" and mapping.running == "vllm:num_requests_running"
    with pytest.raises(ValueError, match="unknown metrics preset"):
        mapping_for("nope")


def test_parse_labels_unescapes() -> None:
    assert parse_labels(r'a="x\"y",b="back\\slash",c="new\nline",d=""') == {
        "a": 'x"y',
        "b": "back\\slash",
        "c": "new\nline",
        "d": "",
    }


# -- property test: random expositions from prometheus-client's own generate_latest -------

_label_text = st.text(alphabet=st.sampled_from('ab,{}="\\\n x'), max_size=8)
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**6), max_value=10**12).map(float),
    st.sampled_from([1e-05, 1.5e3, 0.0, -0.0, 5e-324, 1.7976931348623157e308]),
)
_PROPERTY_MAPPING = MetricMapping(
    waiting="t:waiting",
    running="t:running",
    kv_usage="t:kv",
    prefix_cache_queries="t:queries",
    prefix_cache_hits="t:hits",
    ttft_histogram="t:ttft_seconds",
    lora_info="t:lora_info",
)


@st.composite
def expositions(draw: st.DrawFn) -> str:
    registry = CollectorRegistry()
    for name in ("t:waiting", "t:running", "t:kv"):
        if draw(st.booleans()):
            gauge = Gauge(name, "doc", ["model_name"], registry=registry)
            for label in draw(st.lists(_label_text, max_size=4, unique=True)):
                gauge.labels(label).set(draw(_values))
    for name in ("t:queries", "t:hits"):
        if draw(st.booleans()):
            counter = Counter(name, "doc", ["model_name"], registry=registry)
            for label in draw(st.lists(_label_text, max_size=3, unique=True)):
                counter.labels(label).inc(draw(st.floats(min_value=0, max_value=1e15)))
    if draw(st.booleans()):
        hist = Histogram(
            "t:ttft_seconds", "doc", ["model_name"], registry=registry, buckets=[0.01, 0.1, 1, 10]
        )
        for label in draw(st.lists(_label_text, max_size=3, unique=True)):
            for obs in draw(st.lists(st.floats(min_value=0, max_value=1e4), max_size=5)):
                hist.labels(label).observe(obs)
    if draw(st.booleans()):
        lora = Gauge(
            "t:lora_info",
            "doc",
            ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
            registry=registry,
        )
        for running in draw(st.lists(_label_text, max_size=3, unique=True)):
            lora.labels(str(draw(st.integers(0, 64))), draw(_label_text), running).set(
                draw(st.floats(min_value=0, max_value=2e9))
            )
    # Unrelated noise with similar names.
    noise = Gauge("t:waiting_other", "doc", registry=registry)
    noise.set(draw(_values))
    return generate_latest(registry).decode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expositions())
def test_property_matches_reference(text: str) -> None:
    mine = TargetedParser(_PROPERTY_MAPPING).parse(text)
    ref = reference(text, _PROPERTY_MAPPING)
    assert same(mine, ref), (text, mine, ref)
