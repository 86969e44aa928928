from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from extproc.observability.decision_log import DecisionLog, DecisionLogConfig
from extproc.observability.metrics import Metrics
from extproc.observability.telemetry import RouteRecord, Telemetry
from extproc.observability.tracing import DecisionTracer
from extproc.observe import Observation, Usage

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
NOT_SAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-00"


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


def record(request_id: str, traceparent: str = "", **fields: object) -> RouteRecord:
    rec = RouteRecord(
        request_id, traceparent, task="chat", started=49.0, started_unix_ns=1_700_000_000 * 10**9
    )
    rec.model_requested, rec.model_served, rec.endpoints = (
        "gpt-4",
        "llama-3-70b",
        ["10.0.0.1:8000", "10.0.0.2:8000"],
    )
    rec.tenant, rec.tier, rec.rule, rec.status = "acme", "premium", "premium-tenants", 200
    for key, value in fields.items():
        setattr(rec, key, value)
    return rec


def observation(request_id: str) -> Observation:
    return Observation(
        endpoint="10.0.0.1:8000",
        model="llama-3-70b",
        request_id=request_id,
        status=200,
        streamed=True,
        ttft_s=0.2,
        time_per_output_token_s=0.02,
        duration_s=1.0,
        usage=Usage(11, 42, True),
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def telemetry(tmp_path: Path, rate: float = 1.0, **kwargs: object) -> Telemetry:
    log = DecisionLog(DecisionLogConfig(path=str(tmp_path / "d.log"), sample_rate=rate))
    kwargs.setdefault("clock", Clock())
    return Telemetry(log, **kwargs)  # type: ignore[arg-type]


def test_the_two_halves_join_in_either_order_into_one_line(tmp_path: Path) -> None:
    tel = telemetry(tmp_path)
    tel.observed(observation("a"), "")
    tel.routed(record("a"))
    tel.routed(record("b"))
    tel.observed(observation("b"), "")
    tel.log.close()
    written = lines(tmp_path / "d.log")
    assert [line["request_id"] for line in written] == ["a", "b"]
    for line in written:
        assert line["completion_tokens"] == 42 and line["prompt_tokens"] == 11 and line["ttft_ms"] == 200.0
        assert line["model_served"] == "llama-3-70b" and line["tenant"] == "acme"
        assert "prompt" not in line


def test_a_missing_observation_is_written_after_the_join_timeout(tmp_path: Path) -> None:
    clock = Clock()
    tel = telemetry(tmp_path, clock=clock, join_timeout_s=5.0)
    tel.observed(observation("seen"), "")  # an observer exists, so routing records wait for theirs
    tel.routed(record("seen"))
    tel.routed(record("lonely"))
    clock.now += 6.0
    tel.routed(record("later"))
    tel.log.close()
    written = lines(tmp_path / "d.log")
    assert [line["request_id"] for line in written] == ["seen", "lonely"]
    assert "ttft_ms" not in written[1]
    tel.flush()


def test_errors_are_logged_even_when_not_sampled_and_metrics_see_every_observation(tmp_path: Path) -> None:
    metrics = Metrics()
    tel = telemetry(tmp_path, rate=0.0, metrics=metrics)
    tel.observers_seen = True
    tel.routed(record("ok"))
    tel.routed(record("shed", status=429, outcome="shed", error="overloaded"))
    tel.observed(observation("ok"), "")
    tel.log.close()
    assert [line["request_id"] for line in lines(tmp_path / "d.log")] == ["shed"]
    page = metrics.exposition().decode()
    assert (
        'gen_ai_client_token_usage_sum{gen_ai_response_model="llama-3-70b",gen_ai_token_type="output",pool=""} 42.0'
        in page
    )
    assert (
        'gen_ai_server_time_to_first_token_seconds_count{gen_ai_response_model="llama-3-70b",pool=""} 1.0'
        in page
    )


def test_spans_join_the_callers_trace_only_when_it_is_sampled(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    tracer = DecisionTracer(exporter, batch=False)
    tel = telemetry(tmp_path, rate=0.0, tracer=tracer, expect_observer=False)
    assert tel.wants("x", SAMPLED) and not tel.wants("x", NOT_SAMPLED)
    tel.routed(record("x", SAMPLED, served_by="10.0.0.2:8000"))
    tel.routed(record("y", NOT_SAMPLED))
    tracer.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.name == "llm.route"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.attributes["llm.model"] == "llama-3-70b"
    assert span.attributes["llm.tier"] == "premium"
    assert span.attributes["llm.endpoint"] == "10.0.0.2:8000"
    assert span.attributes["llm.fallback"] is True
    assert span.end_time - span.start_time == 1_000_000_000


def test_the_decision_line_carries_the_chosen_endpoints_speeds_and_observations_feed_the_estimator(
    tmp_path: Path,
) -> None:
    seen: list[Observation] = []
    tel = telemetry(tmp_path, on_observation=seen.append)
    speeds = [{"prefill_tokens_per_s": 12000.0, "decode_tokens_per_s": 80.0, "source": "measured"}]
    tel.observed(observation("a"), "")
    tel.routed(record("a", speeds=speeds))
    tel.log.close()
    assert lines(tmp_path / "d.log")[0]["speeds"] == speeds
    assert [o.request_id for o in seen] == ["a"]
