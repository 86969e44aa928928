"""Replay an LLM arrival trace against an OpenAI-compatible URL, bounded in count and time.

The trace is any CSV with columns ``TIMESTAMP,ContextTokens,GeneratedTokens`` (the Azure LLM
inference trace format). Prompts are synthesised with the traced token counts; a share of
them start with one of a few shared prefixes (system prompts, few-shot examples), a share
belong to sessions that send ``x-user-id``, and a share are the next turn of one of a few
multi-turn chats (each prompt the chat's earlier turns plus a new question), so prefix and
session affinity have something to find. Never imported by the request path.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import random
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import numpy as np
import numpy.typing as npt

# A copy of ../shared/data/traces/azure_llm_2023_conv.csv (Azure LLM inference trace 2023, CC-BY 4.0;
# Patel et al., "Splitwise", ISCA 2024), shipped so that the installed package replays it too.
DEFAULT_TRACE = Path(__file__).with_name("data") / "azure_llm_2023_conv.csv"
SERVED_HEADERS = ("x-gateway-destination-endpoint-served", "x-sim-endpoint")
_CONTENT = re.compile(rb'"(?:content|text)":\s*"[^"]')  # a chunk that carries a token
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    at_s: float  # seconds after the trace's first request
    prompt_tokens: int
    output_tokens: int


def _parse_time(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    # Python's fromisoformat takes at most 6 fractional digits; the Azure trace has 7.
    head, _, fraction = text.partition(".")
    stamp = datetime.fromisoformat(head)
    return stamp.timestamp() + (float("0." + fraction) if fraction else 0.0)


def read_trace(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """Rows as offsets from the first arrival. Raises ValueError naming the bad row."""
    rows: list[TraceRequest] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        start: float | None = None
        for line, row in enumerate(reader, start=2):
            try:
                at = _parse_time(row["TIMESTAMP"])
                prompt, output = int(row["ContextTokens"]), int(row["GeneratedTokens"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            start = at if start is None else start
            rows.append(TraceRequest(at - start, max(1, prompt), max(1, output)))
            if limit is not None and len(rows) >= limit:
                break
    rows.sort(key=lambda r: r.at_s)
    return rows


@dataclass
class Workload:
    model: str = "llama-3-8b"
    stream: bool = True
    shared_prefix_share: float = 0.3  # requests that start with one of a few shared prefixes
    shared_prefixes: int = 4
    prefix_tokens: int = 512
    session_share: float = 0.3  # requests that belong to a session (x-user-id)
    sessions: int = 16
    max_prompt_tokens: int = 4096
    min_prompt_tokens: int = 1  # e.g. RAG: every prompt at least its shared prefix long
    max_output_tokens: int = 512
    seed: int = 1
    # Requests that are the next turn of one of `conversations` chats: the chat's system prompt
    # (one of `shared_prefixes`, `prefix_tokens` long), its earlier questions and answers, then
    # a new question of at most `turn_tokens`; a chat that would pass max_prompt_tokens starts
    # over. The answer it appends is synthetic, as long as the traced output.
    conversation_share: float = 0.0
    conversations: int = 32
    turn_tokens: int = 128


class Conversations:
    """The chats' histories across one replay (synthesise appends a turn per request)."""

    def __init__(self) -> None:
        self.histories: dict[int, list[dict[str, str]]] = {}

    def next_turn(
        self, request: TraceRequest, workload: Workload, rng: random.Random
    ) -> list[dict[str, str]]:
        chat = rng.randrange(workload.conversations)
        history = self.histories.get(chat)
        question = _words(rng, max(1, min(request.prompt_tokens, workload.turn_tokens)))
        answer = _words(rng, max(1, min(request.output_tokens, workload.max_output_tokens)))
        tokens = sum(len(m["content"]) for m in history or []) // 4
        if history is None or tokens + (len(question) + len(answer)) // 4 > workload.max_prompt_tokens:
            prompt = _system_prompt(chat % max(1, workload.shared_prefixes), workload.prefix_tokens)
            history = [{"role": "system", "content": prompt}]
        messages = [*history, {"role": "user", "content": question}]
        self.histories[chat] = [*messages, {"role": "assistant", "content": answer}]
        return messages


def _system_prompt(which: int, tokens: int) -> str:
    """Shared prefix number ``which``, ``tokens`` long (4 characters each)."""
    return (f"[system prompt {which}] " + "policy text " * tokens)[: tokens * 4]


def _words(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(tokens))[: tokens * 4]


def synthesise(
    request: TraceRequest,
    workload: Workload,
    rng: random.Random,
    conversations: Conversations | None = None,
) -> tuple[dict[str, object], dict[str, str]]:
    """An OpenAI chat body with ~prompt_tokens tokens (4 characters each) and its headers; with
    ``conversations``, a share of them the next turn of a chat instead."""
    if conversations is not None and rng.random() < workload.conversation_share:
        return _body(workload, request, conversations.next_turn(request, workload, rng)), {}
    tokens = max(workload.min_prompt_tokens, min(request.prompt_tokens, workload.max_prompt_tokens))
    parts = []
    if rng.random() < workload.shared_prefix_share:
        which = rng.randrange(workload.shared_prefixes)
        prefix_len = min(tokens, workload.prefix_tokens)
        parts.append(_system_prompt(which, prefix_len))
        tokens -= prefix_len
    if tokens > 0:
        parts.append(_words(rng, tokens))
    headers = {}
    if rng.random() < workload.session_share:
        headers["x-user-id"] = f"user-{rng.randrange(workload.sessions)}"
    return _body(workload, request, [{"role": "user", "content": "".join(parts)}]), headers


def _body(workload: Workload, request: TraceRequest, messages: list[dict[str, str]]) -> dict[str, object]:
    body: dict[str, object] = {
        "model": workload.model,
        "messages": messages,
        "max_tokens": min(request.output_tokens, workload.max_output_tokens),
        "stream": workload.stream,
    }
    if workload.stream:
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass
class Result:
    status: int
    ttft_s: float
    e2e_s: float
    output_tokens: int
    served_by: str
    error: str = ""
    sent_at_s: float = 0.0  # when it was due, seconds after the replay started


@dataclass
class LoadResult:
    results: list[Result] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self, ttft_slo_s: float = 2.0, tpot_slo_s: float = 0.2) -> dict[str, float]:
        """Latency percentiles over every request: a failed one counts as an infinite TTFT
        and e2e (shedding or dropping must not make the tail look better) and never meets
        the objective."""
        ok = [r for r in self.results if r.status == 200 and not r.error]
        failed = len(self.results) - len(ok)
        ttft = np.array([r.ttft_s for r in ok] + [math.inf] * failed) if self.results else np.zeros(1)
        e2e = np.array([r.e2e_s for r in ok] + [math.inf] * failed) if self.results else np.zeros(1)
        tokens = sum(r.output_tokens for r in ok)

        def meets_slo(r: Result) -> bool:
            tpot = (r.e2e_s - r.ttft_s) / max(1, r.output_tokens - 1)
            return r.ttft_s <= ttft_slo_s and tpot <= tpot_slo_s

        wall = max(self.wall_s, 1e-9)
        return {
            "requests": len(self.results),
            "errors": len(self.results) - len(ok),
            "ttft_p50_s": _percentile(ttft, 50),
            "ttft_p99_s": _percentile(ttft, 99),
            "e2e_p99_s": _percentile(e2e, 99),
            "output_tokens_per_s": tokens / wall,
            "goodput_rps": sum(1 for r in ok if meets_slo(r)) / wall,
        }


def _percentile(values: npt.NDArray[np.float64], q: float) -> float:
    """As numpy's "lower" method, which keeps an infinite sample infinite (interpolating
    between a finite and an infinite one would give nan)."""
    return float(np.percentile(values, q, method="lower"))


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, object],
    headers: dict[str, str],
    timeout_s: float,
    started: float,
) -> Result:
    """``started``: when the request was due, so waiting for a client connection slot counts."""
    ttft, tokens = 0.0, 0
    try:
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as reply:
            served = next((reply.headers[h] for h in SERVED_HEADERS if h in reply.headers), "")
            if reply.status != 200:
                await reply.read()
                return Result(
                    reply.status, 0.0, time.monotonic() - started, 0, served, f"HTTP {reply.status}"
                )
            if not body.get("stream"):
                payload = await reply.json()
                ttft = time.monotonic() - started
                tokens = int(payload.get("usage", {}).get("completion_tokens", 0))
            else:
                async for line in reply.content:
                    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                        continue
                    if _CONTENT.search(line):
                        if not ttft:
                            ttft = time.monotonic() - started
                        tokens += 1
            return Result(200, ttft, time.monotonic() - started, tokens, served)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(0, 0.0, time.monotonic() - started, tokens, "", f"{type(exc).__name__}: {exc}")


async def run_load(
    base_url: str,
    requests: Iterable[TraceRequest],
    workload: Workload | None = None,
    *,
    speedup: float = 1.0,
    max_requests: int = 1000,
    duration_s: float = 60.0,
    concurrency: int = 256,
    timeout_s: float = 120.0,
) -> LoadResult:
    """Send each request at its trace time / speedup; stop at max_requests or duration_s."""
    workload = workload or Workload()
    rng = random.Random(workload.seed)
    conversations = Conversations() if workload.conversation_share > 0 else None
    url = base_url.rstrip("/") + "/chat/completions"
    limit = asyncio.Semaphore(concurrency)
    outcome = LoadResult()
    started = time.monotonic()

    async def send(body: dict[str, object], headers: dict[str, str], due: float) -> None:
        async with limit:
            result = await _one(session, url, body, headers, timeout_s, due)
        result.sent_at_s = due - started
        outcome.results.append(result)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        for i, request in enumerate(requests):
            if i >= max_requests:
                break
            due = started + request.at_s / speedup
            if due - started > duration_s:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body, headers = synthesise(request, workload, rng, conversations)
            tasks.append(asyncio.create_task(send(body, headers, due)))
        await asyncio.gather(*tasks)
    outcome.wall_s = time.monotonic() - started
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-extproc loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:10000/v1")
    parser.add_argument(
        "--trace", default=str(DEFAULT_TRACE), help="CSV: TIMESTAMP,ContextTokens,GeneratedTokens"
    )
    parser.add_argument(
        "--speedup", type=float, default=1.0, help="replay this many times faster than the trace"
    )
    parser.add_argument("--max-requests", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0, help="stop sending after this many seconds")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--shared-prefix-share", type=float, default=0.3)
    parser.add_argument("--session-share", type=float, default=0.3)
    parser.add_argument("--json", help="write the summary and per-request results here")
    args = parser.parse_args(argv)
    trace = read_trace(Path(args.trace), limit=args.max_requests)
    workload = Workload(
        model=args.model,
        stream=not args.no_stream,
        shared_prefix_share=args.shared_prefix_share,
        session_share=args.session_share,
    )
    result = asyncio.run(
        run_load(
            args.base_url,
            trace,
            workload,
            speedup=args.speedup,
            max_requests=args.max_requests,
            duration_s=args.duration,
            concurrency=args.concurrency,
        )
    )
    summary = result.summary()
    for key, value in summary.items():
        print(f"{key:22} {value:.4g}")
    served: dict[str, int] = {}
    for r in result.results:
        served[r.served_by or "-"] = served.get(r.served_by or "-", 0) + 1
    print("served by:", ", ".join(f"{k} {v}" for k, v in sorted(served.items())))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"summary": summary, "results": [asdict(r) for r in result.results]}, indent=1)
        )
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
