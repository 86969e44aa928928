"""The filter's per-request records and groups through a real Envoy (wasm/assembly/observe.ts),
read with the brain's own parsers (extproc/wasm/records.py): the two must agree field by field."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.observability.decision_log import DecisionLog, DecisionLogConfig
from extproc.wasm.records import RECORD_FIELDS, FilterRecord, ResponseGroup
from tests.helpers import wait_until
from tests.wasm.harness import StaticBrain, WasmEnvoy, snapshot_for, started

pytestmark = pytest.mark.envoy

CHAT = "/v1/chat/completions"
MAX_RECORDS = 2
SAMPLE_ALL = 1 << 32  # log_sample_below: every request is sampled for the decision log


@pytest.fixture(scope="module")
def wasm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WasmEnvoy, StaticBrain]]:
    # Batches every 2 s (20 ticks of 100 ms) of at most MAX_RECORDS records.
    yield from started(
        tmp_path_factory.mktemp("records"), endpoints=3, report_every_ticks=20, max_records=MAX_RECORDS
    )


def chat(model: str = "m", **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def records(brain: StaticBrain) -> list[FilterRecord]:
    parsed = [FilterRecord.parse(raw) for batch in brain.reports for raw in batch.get("records", [])]
    assert None not in parsed, [batch.get("records") for batch in brain.reports]
    return [record for record in parsed if record is not None]


def groups(brain: StaticBrain) -> list[ResponseGroup]:
    parsed = [ResponseGroup.parse(raw) for batch in brain.reports for raw in batch.get("groups", [])]
    assert None not in parsed, [batch.get("groups") for batch in brain.reports]
    return [group for group in parsed if group is not None]


def of(brain: StaticBrain, request_id: str) -> FilterRecord | None:
    return next((r for r in records(brain) if r.request_id == request_id), None)


def confirmed(brain: StaticBrain, envoy: WasmEnvoy, **overrides: Any) -> None:
    snapshot = snapshot_for(envoy.addresses, **overrides)
    brain.snapshot = {**snapshot, "version": f"v-{brain.polls}"}
    wait_until(lambda: brain.confirmed.get(brain.snapshot["version"], 0) >= 4)  # type: ignore[index]


def test_a_routed_request_is_recorded_with_its_decision_and_response(
    wasm: tuple[WasmEnvoy, StaticBrain],
) -> None:
    envoy, brain = wasm
    confirmed(brain, envoy, log_sample_below=SAMPLE_ALL)
    status, headers, _ = envoy.request(CHAT, chat(), {"x-request-id": "rec-routed-1"})
    assert status == 200
    wait_until(lambda: of(brain, "rec-routed-1") is not None, 10)
    record = of(brain, "rec-routed-1")
    assert record is not None
    assert (record.task, record.model_requested, record.model_served) == ("chat", "m", "m")
    listed = record.endpoints.split(",")
    assert sorted(listed) == sorted(envoy.addresses)
    assert record.served_by == headers["x-gateway-destination-endpoint-served"] == listed[0]
    # The pick's totals, per listed endpoint (the snapshot's scores: no load, nothing in flight),
    # in millionths; the decision log gets them in the ext_proc path's units.
    prepared = {a: 1_000_000 * (len(envoy.addresses) - i) for i, a in enumerate(envoy.addresses)}
    assert record.scores == ",".join(str(prepared[a]) for a in listed)
    assert record.route_record("", 0.0).scores == [prepared[a] / 1e6 for a in listed]
    assert (record.status, record.outcome, record.streamed, record.escalated) == (200, "routed", False, False)
    # The echo endpoint's usage object.
    assert (record.prompt_tokens, record.completion_tokens) == (3, 5)
    assert 0 <= record.ttft_us <= record.duration_us


def test_a_request_the_filter_refuses_is_recorded_with_its_error(wasm: tuple[WasmEnvoy, StaticBrain]) -> None:
    envoy, brain = wasm
    confirmed(brain, envoy, escalate_unknown_models=False)
    status, _, body = envoy.request(CHAT, chat("nope"), {"x-request-id": "rec-404"})
    assert status == 404
    wait_until(lambda: of(brain, "rec-404") is not None, 10)
    record = of(brain, "rec-404")
    assert record is not None
    assert (record.status, record.outcome, record.model_requested, record.served_by) == (
        404,
        "rejected",
        "nope",
        "",
    )
    assert json.loads(record.error) == json.loads(body)
    assert record.observation("") is None  # no response to feed histograms with
    assert record.route_record("", 0.0).error.startswith("model 'nope' does not exist")


def test_batches_hold_at_most_max_records_and_count_the_rest(wasm: tuple[WasmEnvoy, StaticBrain]) -> None:
    envoy, brain = wasm
    confirmed(brain, envoy, log_sample_below=SAMPLE_ALL)
    brain.reports.clear()
    sent = 7
    for i in range(sent):
        assert envoy.request(CHAT, chat(), {"x-request-id": f"rec-cap-{i}"})[0] == 200

    def counted() -> int:
        return sum(len(b["records"]) + b["records_dropped"] for b in brain.reports)

    wait_until(lambda: counted() >= sent, 10)
    assert counted() == sent
    assert all(len(batch["records"]) <= MAX_RECORDS for batch in brain.reports)
    assert sum(batch["records_dropped"] for batch in brain.reports) > 0


def test_requests_not_sampled_are_reported_as_numbers_in_their_group(
    wasm: tuple[WasmEnvoy, StaticBrain],
) -> None:
    envoy, brain = wasm
    confirmed(brain, envoy)  # no decision log: nothing is sampled
    brain.reports.clear()
    served = []
    for i in range(5):
        status, headers, _ = envoy.request(CHAT, chat(), {"x-request-id": f"rec-group-{i}"})
        assert status == 200
        served.append(headers["x-gateway-destination-endpoint-served"])
    wait_until(lambda: sum(len(g) for g in groups(brain)) >= 5, 10)
    assert not any(r.request_id.startswith("rec-group-") for r in records(brain))
    reported = groups(brain)
    assert sum(len(g) for g in reported) == 5
    by_endpoint = {g.endpoint: g for g in reported}
    assert {e: len(g) for e, g in by_endpoint.items()} == {e: served.count(e) for e in set(served)}
    for group in reported:
        assert (group.tenant, group.model, group.pool, group.answered, group.status, group.streamed) == (
            "",
            "m",
            "",
            True,
            200,
            False,
        )
        # Per request: duration, time to the response headers (µs), the echo endpoint's usage.
        for duration_us, ttft_us, prompt, completion in group.values.tolist():
            assert 0 <= ttft_us <= duration_us
            assert (prompt, completion) == (3, 5)
        (observation,) = list(group.observations("p"))[:1]
        assert (observation.endpoint, observation.pool, observation.status) == (group.endpoint, "p", 200)
        total = group.usage_total("p")
        assert total is not None and total.usage is not None
        assert (total.usage.prompt_tokens, total.usage.completion_tokens) == (3 * len(group), 5 * len(group))


def test_the_filter_samples_the_same_requests_as_the_decision_log(
    wasm: tuple[WasmEnvoy, StaticBrain],
) -> None:
    envoy, brain = wasm
    log = DecisionLog(DecisionLogConfig(path="-", sample_rate=0.5))
    try:
        confirmed(brain, envoy, log_sample_below=log.sample_below)
        brain.reports.clear()
        ids = [f"rec-sample-{i}" for i in range(12)]
        expected = {i for i in ids if log.sampled(i)}
        assert expected == {i for i in ids if zlib.crc32(i.encode()) < log.sample_below}
        assert 0 < len(expected) < len(ids)
        for request_id in ids:
            assert envoy.request(CHAT, chat(), {"x-request-id": request_id})[0] == 200

        def reported() -> int:
            grouped = sum(len(g) for g in groups(brain))
            return grouped + len(records(brain)) + sum(b["records_dropped"] for b in brain.reports)

        wait_until(lambda: reported() >= len(ids), 10)
        # The sampled requests as records (at most MAX_RECORDS per batch, the rest counted), the
        # others as numbers in their groups.
        assert {r.request_id for r in records(brain)} <= expected
        assert sum(len(g) for g in groups(brain)) == len(ids) - len(expected)
    finally:
        log.close()


def test_record_fields_are_the_filters_order() -> None:
    source = (Path(__file__).parents[2] / "wasm" / "assembly" / "observe.ts").read_text()
    start = source.index("  write(parts: Array<string>): void {")
    json_body = source[start : source.index("\n  }\n", start)]
    camel = ["".join(p.capitalize() if i else p for i, p in enumerate(f.split("_"))) for f in RECORD_FIELDS]
    renamed = {
        "modelRequested": "requested",
        "modelServed": "model",
        "ttftUs": "ttftNs",
        "durationUs": "durationNs",
    }
    positions = [json_body.index("this." + renamed.get(name, name)) for name in camel]
    assert positions == sorted(positions), list(zip(RECORD_FIELDS, positions, strict=True))
