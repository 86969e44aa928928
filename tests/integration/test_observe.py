"""Through a real Envoy: token usage, TTFT and the decision log read from responses as they pass."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from extproc.devstack.stack import LocalStack
from tests.conftest import sim_records, stack_config

pytestmark = pytest.mark.envoy

TIME_SCALE = 0.5
SECRET = "zebra-quartz-unique-prompt-marker"


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Path]]:
    log = tmp_path_factory.mktemp("observe") / "decisions.log"
    local = LocalStack(
        stack_config(
            time_scale=TIME_SCALE,
            extproc_args=["--decision-log", str(log), "--decision-log-sample-rate", "1"],
        )
    )
    try:
        local.start()
    except Exception:
        print(local.logs())
        raise
    yield local, log
    local.stop()


def metric_sum(local: LocalStack, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{local.config.metrics_port}/metrics", timeout=5) as reply:
        page = reply.read().decode()
    total = 0.0
    for line in page.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)


def test_streamed_tokens_ttft_and_decision_log_match_what_the_server_did(
    observed: tuple[LocalStack, Path],
) -> None:
    local, log = observed
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{local.listen_port}/v1", api_key="unused", max_retries=0
    )
    messages = [{"role": "user", "content": f"{SECRET} tell me a story"}]
    texts = []
    arrivals: list[float] = []
    # One stream that asks for usage, one that does not (we count its tokens), one non-streamed.
    with client.chat.completions.create(
        model="llama-3-8b",
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    with client.chat.completions.create(
        model="llama-3-8b", messages=messages, max_tokens=20, stream=True
    ) as stream:
        for chunk in stream:
            arrivals.append(time.monotonic())
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
    assert all(chunk.usage is None for chunk in chunks[:-1])
    plain = client.chat.completions.create(model="llama-3-8b", messages=messages, max_tokens=5)
    assert plain.usage is not None
    # The client got every token, one event at a time (the first long before the last).
    assert texts == [f"tok{i} " for i in range(20)]
    assert arrivals[1] < arrivals[-2]

    wait_for(lambda: metric_sum(local, "gen_ai_server_request_duration_seconds_count") >= 3)
    records = sim_records(local)
    assert sorted(r["completion_tokens"] for r in records) == [5, 12, 20]
    assert metric_sum(local, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 37
    by_tokens = {r["completion_tokens"]: r for r in records}
    # Input tokens are known only where the server reported usage (not the stream without it).
    assert metric_sum(local, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == (
        by_tokens[12]["prompt_tokens"] + by_tokens[5]["prompt_tokens"]
    )
    assert metric_sum(local, "gen_ai_server_time_to_first_token_seconds_count") == 2

    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3)
    text = log.read_text()
    assert SECRET not in text  # prompt text is never logged by default
    lines = [json.loads(line) for line in text.splitlines()]
    by_completion = {line["completion_tokens"]: line for line in lines}
    assert set(by_completion) == {5, 12, 20}
    for tokens, line in by_completion.items():
        sim = by_tokens[tokens]
        assert re.fullmatch(r"[0-9a-f-]{36}", line["request_id"])
        assert line["status"] == 200 and line["outcome"] == "routed"
        assert line["served_by"] in {e["address"] for e in local.fleet}
        assert line["scores"] and len(line["scores"]) == len(line["endpoints"])
        if line["streamed"]:
            # Our TTFT (decision to first token, through Envoy) brackets the server's own.
            server_ttft_ms = float(sim["ttft_s"]) * TIME_SCALE * 1000  # type: ignore[arg-type]
            assert server_ttft_ms * 0.8 - 5 <= line["ttft_ms"] <= server_ttft_ms + 500
    assert by_completion[12]["prompt_tokens"] == by_tokens[12]["prompt_tokens"]
    assert by_completion[20]["prompt_tokens"] is None


def test_shed_and_rejected_requests_are_logged_with_their_error(observed: tuple[LocalStack, Path]) -> None:
    local, log = observed
    before = len(log.read_text().splitlines()) if log.exists() else 0
    request = urllib.request.Request(
        f"http://127.0.0.1:{local.listen_port}/v1/chat/completions",
        data=b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}',
        headers={"content-type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    raised.value.close()
    assert raised.value.code == 404
    wait_for(lambda: len(log.read_text().splitlines()) > before)
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["status"] == 404 and line["outcome"] == "rejected" and "no-such-model" in line["error"]
