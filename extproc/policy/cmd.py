"""`llm-extproc validate | explain | schema`: the policy engine from the command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from extproc.errors import RoutingError
from extproc.policy.compile import CompiledPolicy, PolicyError, load_policy
from extproc.policy.schema import Policy
from extproc.policy.types import PolicyDecision, PolicyInput
from extproc.request import MULTIPART_TASKS, TASK_BY_PATH, ParsedRequest, Task, parse_body

_FORM_BOUNDARY = "llm-extproc-explain"


def _as_form(fields: object) -> bytes:
    """A JSON object's fields as the multipart/form-data body an audio upload would send."""
    parts = []
    for name, value in fields.items() if isinstance(fields, dict) else ():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f'--{_FORM_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n')
    return ("".join(parts) + f"--{_FORM_BOUNDARY}--\r\n").encode()


def validate_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="llm-extproc validate", description="check policy files")
    parser.add_argument("paths", nargs="+", help="policy files or directories")
    args = parser.parse_args(argv)
    failed = False
    for path in args.paths:
        try:
            policy = load_policy(path)
        except PolicyError as error:
            failed = True
            for issue in error.issues:
                print(issue, file=sys.stderr)
            continue
        print(f"OK {path} ({len(policy.policy.rules)} rules, version {policy.version})")
    return 1 if failed else 0


def schema_main(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(prog="llm-extproc schema", description="print the policy JSON Schema").parse_args(
        argv
    )
    print(json.dumps(Policy.model_json_schema(), indent=2))
    return 0


def _scores(request: ParsedRequest) -> tuple[float, float, list[str]]:
    """complexity, strong_gain and the top complexity features in words (imported by name: the
    policy engine does not depend on the complexity model)."""
    import importlib

    try:
        module = importlib.import_module("extproc.complexity")
    except ImportError:
        return 0.0, 0.0, []
    explanation = module.model().explain(module.Prompt.from_request(request), 4, with_gain=False)
    return (
        float(explanation.complexity),
        float(explanation.strong_gain),
        list(module.describe(explanation, 4)),
    )


def _provider_lines(policy: CompiledPolicy, decision: PolicyDecision, requested: str) -> list[str]:
    """When and why the request would go to a hosted provider. Names where a key comes from,
    never a key: llm-extproc does not read keys (Envoy does)."""
    lines = []
    for index, target in enumerate(decision.targets):
        route = policy.providers.get(target.pool)
        if route is None:
            continue
        price = route.prices.get(target.model)
        cost = (
            f"${price.input_per_1m:g}/${price.output_per_1m:g} per 1M tokens in/out" if price else "unpriced"
        )
        when = "first choice" if index == 0 else f"when {decision.targets[index - 1].model} cannot serve"
        after = decision.targets[index + 1 :]
        fallback = (
            f"; a 429/5xx/timeout falls back to {after[0].model}@{after[0].pool or 'any pool'}"
            if after
            else ""
        )
        lines.append(
            f"provider   {target.model}@{route.name} ({route.api} API, as {route.provider_model(target.model)!r},"
            f" {cost}): {when}{fallback}"
        )
    spill = decision.spill
    if spill is not None:
        budget = decision.hosted_budget_usd_per_hour
        lines.append(
            f"spill-over {spill.target.model}@{spill.target.pool} when every self-hosted endpoint of "
            f"{decision.targets[0].model if decision.targets else requested} is predicted to miss "
            f"TTFT {spill.ttft_objective_s:g} s"
            + (f" (tenant budget ${budget:g}/h)" if budget is not None else "")
        )
    elif (
        policy.policy.spillover is not None
        and decision.targets
        and decision.targets[0].model in policy.policy.spillover.targets
    ):
        lines.append("spill-over none: the tenant's plan does not allow it (hosted.spillover)")
    return lines


def explain_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="llm-extproc explain", description="show how a policy routes a request"
    )
    parser.add_argument("--policy", required=True)
    parser.add_argument("--header", action="append", default=[], metavar="K:V")
    parser.add_argument(
        "--body",
        default='{"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}',
        help="request JSON, or @file; for audio paths, the form fields as a JSON object",
    )
    parser.add_argument(
        "--path",
        default="/v1/chat/completions",
        help=f"the request path; routed APIs: {', '.join(sorted(TASK_BY_PATH))}",
    )
    parser.add_argument("--method", default="POST")
    parser.add_argument("--complexity", type=float, help="override the computed complexity score")
    parser.add_argument("--strong-gain", type=float, help="override the computed strong_gain score")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--speeds",
        metavar="URL|FILE",
        help="a running ext_proc's /metrics (URL or saved page): also show the learned speed of "
        "each endpoint of the chosen pool",
    )
    args = parser.parse_args(argv)
    try:
        policy = load_policy(args.policy)
    except PolicyError as error:
        print(error, file=sys.stderr)
        return 1
    raw = Path(args.body[1:]).read_bytes() if args.body.startswith("@") else args.body.encode()
    task = TASK_BY_PATH.get(args.path.split("?", 1)[0], Task.CHAT)
    content_type = "application/json"
    try:
        if task in MULTIPART_TASKS:
            raw = _as_form(json.loads(raw))
            content_type = f"multipart/form-data; boundary={_FORM_BOUNDARY}"
        request = parse_body(task, content_type, raw, 64 * 1024 * 1024)
    except ValueError as error:
        print(f"request: --body is not JSON: {error}", file=sys.stderr)
        return 1
    except RoutingError as error:
        print(f"request: {error.message}", file=sys.stderr)
        return 1
    headers = {}
    for item in args.header:
        key, sep, value = item.partition(":")
        if not sep:
            parser.error(f"--header takes K:V, got {item!r}")
        headers[key.strip().lower()] = value.strip()
    complexity, strong_gain, features = _scores(request)
    if args.complexity is not None:
        complexity, features = args.complexity, ["(given with --complexity)"]
    if args.strong_gain is not None:
        strong_gain = args.strong_gain
    explanation = policy.explain(
        PolicyInput(
            path=args.path,
            method=args.method,
            headers=headers,
            model=request.model,
            stream=request.stream,
            task=task.value,
            complexity=complexity,
            strong_gain=strong_gain,
            prompt_tokens=request.estimated_prompt_tokens,
            max_tokens=request.max_tokens,
        )
    )
    decision = explanation.decision
    pools = {t.pool for t in decision.targets[:1]}
    speeds = _speeds(args.speeds, pools) if args.speeds else []
    if args.json:
        out = {
            "policy_version": policy.version,
            "complexity": complexity,
            "complexity_features": features,
            "strong_gain": strong_gain,
            "decision": asdict(decision),
            "providers": _provider_lines(policy, decision, request.model),
            "skipped": [{"rule": r, "why": w} for r, w in explanation.skipped],
        }
        if args.speeds:
            out["speeds"] = speeds
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"policy     {args.policy} (version {policy.version})")
    print(f"complexity {complexity:.3f}   ({', '.join(features) or 'no model'})")
    print(f"strong_gain {strong_gain:.3f}")
    for rule, why in explanation.skipped:
        print(f"skipped    {rule}: {why}")
    print(f"matched    {decision.rule}")
    print(f"tenant     {decision.tenant or '-'}   tier {decision.tier}   priority {decision.priority}")
    if decision.reject:
        print(f"reject     {decision.reject[0]} {decision.reject[1]}")
        return 0
    chain = " -> ".join(f"{t.model}@{t.pool or 'any pool'}" for t in decision.targets) or "(none: 404)"
    print(f"targets    {chain}")
    for line in _provider_lines(policy, decision, request.model):
        print(line)
    if decision.targets and decision.targets[0].model != request.model:
        print(f"rewrite    body model {request.model!r} -> {decision.targets[0].model!r}")
    if decision.mirror:
        print(f"mirror     {decision.mirror.pool}")
    for key, value in decision.headers:
        print(f"header     {key}: {value}")
    for speed in speeds:
        print(
            f"speed      {speed['endpoint']} ({speed['pool']}, {speed['gpu_class']}): "
            f"prefill {speed['prefill_tokens_per_s']:.0f} tok/s, decode {speed['decode_tokens_per_s']:.1f} tok/s"
        )
    return 0


SPEED_METRICS = {
    "llm_extproc_endpoint_prefill_tokens_per_second": "prefill_tokens_per_s",
    "llm_extproc_endpoint_decode_tokens_per_second": "decode_tokens_per_s",
}


def _speeds(source: str, pools: set[str]) -> list[dict[str, Any]]:
    """Per endpoint of ``pools`` (all when the target names none): the scheduler's current
    speed estimates, read from the ext_proc's own metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=5) as reply:
            text = reply.read().decode()
    else:
        text = Path(source).read_text()
    rows: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = SPEED_METRICS.get(sample.name)
            if field is None or (pools - {""} and sample.labels.get("pool") not in pools):
                continue
            endpoint = sample.labels.get("endpoint", "")
            row = rows.setdefault(
                endpoint,
                {
                    "endpoint": endpoint,
                    "pool": sample.labels.get("pool", ""),
                    "gpu_class": sample.labels.get("gpu_class", ""),
                    "prefill_tokens_per_s": math.nan,
                    "decode_tokens_per_s": math.nan,
                },
            )
            row[field] = sample.value
    return sorted(rows.values(), key=lambda r: r["endpoint"])
