"""The Wasm data path end to end: `llm-extproc up --data-path wasm` (real Envoy, real brain,
simulated fleet), with the default local-stack policy."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from extproc.deploy import LOCAL_STACK_POLICY
from extproc.devstack.stack import LocalStack
from tests.conftest import counted, envoy_stats, sim_records, started_stack
from tests.helpers import wait_until

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def wasm_stack() -> Iterator[LocalStack]:
    local = started_stack(data_path="wasm", policy=str(LOCAL_STACK_POLICY))
    yield local
    local.stop()


def healthz(stack: LocalStack) -> dict[str, Any]:
    url = f"http://127.0.0.1:{stack.config.metrics_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as reply:
        answer: dict[str, Any] = json.loads(reply.read())
    return answer


def chat(stack: LocalStack, model: str, tenant: str | None = None) -> Any:
    client = openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=30)
    headers = {"x-tenant-id": tenant} if tenant else {}
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, extra_headers=headers
    )


def test_the_filter_routes_table_decidable_requests_itself(wasm_stack: LocalStack) -> None:
    wait_until(lambda: healthz(wasm_stack)["wasm"]["snapshot_version"] is not None, 10)
    before = envoy_stats(wasm_stack)
    raw = chat(wasm_stack, "llama-3-8b")
    assert raw.parse().choices[0].message.content
    served = raw.headers["x-gateway-destination-endpoint-served"]
    assert served in {e["address"] for e in wasm_stack.fleet}
    after = envoy_stats(wasm_stack)
    assert after["routed"] == before["routed"] + 1
    assert after["escalated"] == before["escalated"]


def test_premium_tenant_is_routed_to_the_large_model_by_the_table(wasm_stack: LocalStack) -> None:
    before = envoy_stats(wasm_stack)
    counted = routed_count(wasm_stack, "llama-3-70b", "routed")
    raw = chat(wasm_stack, "llama-3-8b", tenant="acme")
    assert raw.parse().model == "llama-3-70b"  # the policy's premium rule, and the body rewrite
    assert envoy_stats(wasm_stack)["escalated"] == before["escalated"]
    # Counted under the served model, as the ext_proc path labels llm_extproc_requests.
    wait_until(lambda: routed_count(wasm_stack, "llama-3-70b", "routed") >= counted + 1, 10)


def test_tenant_with_complexity_upgrade_is_decided_by_the_brain(wasm_stack: LocalStack) -> None:
    decided = healthz(wasm_stack)["wasm"]["decided"]
    raw = chat(wasm_stack, "llama-3-8b", tenant="startup")
    assert raw.parse().choices
    assert healthz(wasm_stack)["wasm"]["decided"] == decided + 1


def test_unknown_model_gets_the_brains_404_with_a_policy(wasm_stack: LocalStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(wasm_stack, "no-such-model")
    assert caught.value.body is not None
    assert caught.value.response.json()["error"]["code"] == "model_not_found"


def test_observations_reach_the_brain(wasm_stack: LocalStack) -> None:
    for _ in range(3):
        chat(wasm_stack, "llama-3-8b")
    wait_until(lambda: healthz(wasm_stack)["wasm"]["completion_tokens"] >= 12, 10)
    assert healthz(wasm_stack)["wasm"]["responses"] >= 3


def test_streamed_responses_report_time_to_first_token_and_usage(wasm_stack: LocalStack) -> None:
    before = healthz(wasm_stack)["wasm"]
    histogram_before = ttft_histogram(wasm_stack)[0]
    client = openai.OpenAI(base_url=wasm_stack.base_url, api_key="unused", max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="llama-3-8b",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6

    def reported() -> bool:
        now = healthz(wasm_stack)["wasm"]
        return (
            now["first_byte_timings"] > before["first_byte_timings"]
            and now["completion_tokens"] >= before["completion_tokens"] + 6
            # the request's record: the histogram ext_proc's observer feeds
            and ttft_histogram(wasm_stack)[0] > histogram_before
        )

    wait_until(reported, 10)


def ttft_histogram(stack: LocalStack) -> tuple[float, float]:
    """(count, sum) of the time-to-first-token histogram, over its labels."""
    url = f"http://127.0.0.1:{stack.config.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("gen_ai_server_time_to_first_token_seconds_count{"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("gen_ai_server_time_to_first_token_seconds_sum{"):
            total += float(line.rsplit(" ", 1)[1])
    return count, total


def test_time_to_first_token_is_the_first_text_not_the_role_chunk(wasm_stack: LocalStack) -> None:
    """The simulator, like vLLM, opens a chat stream with a role-only chunk before it prefills
    the prompt. The filter's TTFT must be the first chunk with text: it starts before the
    simulator sees the request and ends after its first token, so it cannot be shorter than the
    simulator's own TTFT (a first-chunk TTFT is, by the whole prefill of this long prompt)."""
    count_before, sum_before = ttft_histogram(wasm_stack)
    client = openai.OpenAI(base_url=wasm_stack.base_url, api_key="unused", max_retries=0, timeout=60)
    prompt = " ".join(f"word{i}" for i in range(6000))  # a long prefill on any simulated GPU
    stream = client.chat.completions.create(
        model="llama-3-8b",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices and chunks[0].choices[0].delta.content == ""  # the role-only chunk
    wait_until(lambda: ttft_histogram(wasm_stack)[0] >= count_before + 1, 10)
    count_after, sum_after = ttft_histogram(wasm_stack)
    assert count_after == count_before + 1
    (served,) = [r for r in sim_records(wasm_stack) if r["request_id"] == chunks[0].id]
    simulated_ttft_s = float(served["ttft_s"]) * wasm_stack.config.time_scale  # simulated → real seconds
    assert sum_after - sum_before >= simulated_ttft_s > 0


def routed_count(stack: LocalStack, model: str, outcome: str) -> float:
    """llm_extproc_requests_total summed over the labels not given."""
    return counted(
        stack.config.metrics_port, "llm_extproc_requests_total", f'model="{model}"', f'outcome="{outcome}"'
    )


def test_requests_the_filter_decided_are_counted_by_the_brain(wasm_stack: LocalStack) -> None:
    before = routed_count(wasm_stack, "llama-3-8b", "routed")
    for _ in range(4):
        chat(wasm_stack, "llama-3-8b")
    wait_until(lambda: routed_count(wasm_stack, "llama-3-8b", "routed") >= before + 4, 10)


def post_chat(stack: LocalStack, body: bytes, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.listen_port}/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


def test_mangled_bodies_get_client_errors_never_5xx(wasm_stack: LocalStack) -> None:
    rng = random.Random(7)
    valid = json.dumps({"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi ✓"}]}).encode()
    statuses = set()
    for _ in range(150):
        body = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            roll = rng.random()
            at = rng.randrange(len(body))
            if roll < 0.4:
                body[at] = rng.randrange(256)
            elif roll < 0.7:
                del body[at : at + rng.randint(1, 5)]
            else:
                body[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
        statuses.add(post_chat(wasm_stack, bytes(body)))
    assert statuses <= {200, 400, 404}, statuses
    assert 400 in statuses
