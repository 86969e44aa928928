from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from extproc.devstack.loadgen import (
    DEFAULT_TRACE,
    Conversations,
    TraceRequest,
    Workload,
    read_trace,
    run_load,
    synthesise,
)
from extproc.devstack.sim import EndpointSpec, estimate_tokens, start_fleet


def test_reads_the_real_trace_with_offsets() -> None:
    if not DEFAULT_TRACE.exists():
        pytest.skip(f"trace not present at {DEFAULT_TRACE}")
    rows = read_trace(DEFAULT_TRACE, limit=50)
    assert len(rows) == 50
    assert rows[0].at_s == 0.0 and rows[-1].at_s > 0
    assert rows[0].prompt_tokens == 374 and rows[0].output_tokens == 44
    # 7 fractional digits in the trace's timestamps: the second row is 4.3145790 s later.
    assert abs(rows[1].at_s - 4.314579) < 1e-6


def test_bad_csv_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("time,x\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_trace(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,5\n1,ten,5\n")
    with pytest.raises(ValueError, match=r"b.csv:3"):
        read_trace(tmp_path / "b.csv")


def test_synthetic_prompts_have_the_traced_length_and_share_prefixes() -> None:
    rng = random.Random(0)
    workload = Workload(shared_prefix_share=1.0, shared_prefixes=1, prefix_tokens=100, session_share=1.0)
    body_a, headers = synthesise(TraceRequest(0, 400, 10), workload, rng)
    body_b, _ = synthesise(TraceRequest(0, 300, 10), workload, rng)
    text_a = body_a["messages"][0]["content"]  # type: ignore[index]
    text_b = body_b["messages"][0]["content"]  # type: ignore[index]
    assert abs(estimate_tokens(text_a) - 400) <= 2
    assert text_a[:400] == text_b[:400]
    assert headers["x-user-id"].startswith("user-")
    assert body_a["max_tokens"] == 10


def test_a_chats_next_turn_extends_its_earlier_prompt_and_starts_over_past_the_limit() -> None:
    rng = random.Random(3)
    workload = Workload(
        conversation_share=1.0, conversations=1, shared_prefixes=2, prefix_tokens=50, max_prompt_tokens=400
    )
    chats = Conversations()
    turns = [synthesise(TraceRequest(0, 60, 40), workload, rng, chats)[0]["messages"] for _ in range(8)]
    first, second = turns[0], turns[1]
    assert isinstance(first, list) and isinstance(second, list)
    assert first[0]["role"] == "system" and first[0]["content"].startswith("[system prompt 0]")
    assert len(first[0]["content"]) == 200 and len(first[-1]["content"]) <= 60 * 4
    # The next turn: the same messages, the answer, a new question.
    assert second[: len(first)] == first and [m["role"] for m in second[len(first) :]] == [
        "assistant",
        "user",
    ]
    # Each turn adds ~100 tokens: past max_prompt_tokens the chat starts over.
    lengths = [sum(len(m["content"]) for m in t) // 4 for t in turns]  # type: ignore[union-attr]
    assert max(lengths) <= 400 and any(b < a for a, b in itertools.pairwise(lengths))
    # Without the conversations' state (or with a share of 0) nothing changes for other workloads.
    plain, _ = synthesise(TraceRequest(0, 60, 40), Workload(conversation_share=1.0), random.Random(3))
    assert len(plain["messages"]) == 1  # type: ignore[arg-type]


async def test_replays_a_small_trace_against_the_simulator(tmp_path: Path) -> None:
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        + "".join(
            f"2023-11-16 18:15:{10 + i // 10:02d}.{i % 10}000000,{50 + i},{3 + i % 4}\n" for i in range(30)
        )
    )
    trace = read_trace(csv_path)
    sim = await start_fleet([EndpointSpec(), EndpointSpec()], time_scale=0.02)
    try:
        base = f"http://{sim.endpoints[0].address}/v1"
        streamed = await run_load(
            base, trace, Workload(stream=True), speedup=20, max_requests=20, duration_s=10
        )
        plain = await run_load(base, trace, Workload(stream=False), speedup=20, max_requests=5, duration_s=10)
    finally:
        await sim.stop()
    assert len(streamed.results) == 20 and len(plain.results) == 5
    summary = streamed.summary()
    assert summary["errors"] == 0
    expected = sorted(row.output_tokens for row in trace[:20])
    assert sorted(r.output_tokens for r in streamed.results) == expected
    assert all(r.served_by == sim.endpoints[0].address for r in streamed.results)
    assert all(r.ttft_s <= r.e2e_s for r in streamed.results)


async def test_load_is_bounded_by_duration(tmp_path: Path) -> None:
    trace = [TraceRequest(float(i), 10, 1) for i in range(100)]
    sim = await start_fleet([EndpointSpec()], time_scale=0.02)
    try:
        result = await run_load(
            f"http://{sim.endpoints[0].address}/v1", trace, speedup=100, max_requests=1000, duration_s=0.2
        )
    finally:
        await sim.stop()
    # 100 trace-seconds at 100x is 1 s; only the first 0.2 s worth is sent.
    assert 15 <= len(result.results) <= 21
