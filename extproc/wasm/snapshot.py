"""The routing snapshot the Wasm filter decides from (format 4; docs/wasm.md).

Built by the brain from the same objects the ext_proc path decides with: the compiled policy,
evaluated once per (task, stream, model, tenant) key where its verdict cannot depend on anything else,
and per (model, pool) target the candidates the scheduler's fleet-only filters keep, with their
prepared fleet scores and the load scorer's per-endpoint terms (the filter adds the request's
part: the prompt's size and its fresh in-flight counts). Anything the table cannot express is marked "escalate": the filter then
asks the brain, which answers with the ext_proc path's own code.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from extproc.errors import ErrorKind, RoutingError
from extproc.fleet.state import FleetSnapshot
from extproc.policy.compile import CompiledPolicy
from extproc.policy.schema import Action, Match
from extproc.policy.types import PolicyInput, Target
from extproc.router import Router
from extproc.scheduler.scheduler import Scheduler
from extproc.scheduler.scorers.prefix import Params as PrefixParams
from extproc.scheduler.scorers.prefix import PrefixScorer
from extproc.scheduler.scorers.session import Params as SessionParams

# 4: prefix affinity by the prefix scorer's chain of blocks (prefix_block_bytes,
# prefix_max_blocks) instead of one key of the first prefix_bytes.
SNAPSHOT_FORMAT = 4
# The most prompt bytes the filter hashes into prefix blocks: a profile whose prefix scorer
# covers more (block_chars x max_blocks) is the brain's (escalate_all).
MAX_PREFIX_BYTES = 64 * 1024
# The filter's weights when the router's picker is not the scheduler.
UNSCHEDULED_WEIGHTS = {"inflight": 1.0, "session": 1.0, "prefix": 2.0}
# Scores travel as integers (millionths): float parsing in the filter then cannot differ from
# Python's, so both sides order candidates identically.
SCORE_SCALE = 1_000_000
# The load scorer's terms (in typical TTFTs) travel in billionths: one prompt token's share of
# a typical TTFT can be a few millionths.
LOAD_SCALE = 1_000_000_000
TASK_PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "embedding": "/v1/embeddings"}
# A snapshot the filter has not been able to confirm with the brain for this long is not used:
# requests go to the brain's decide endpoint (and, with the brain down too, to Envoy's
# least_request fallback). Scrapes run every 50-100 ms; 2 s is many missed polls, not jitter.
DEFAULT_STALE_AFTER_MS = 2000
# Rows only soft filters removed fill a short list after every kept row.
LAST_RESORT_SCORE = -(10**12)


# What the table is keyed on (task, stream, model, tenant) and what follows from it. A field
# not listed here (including one added to the schema later) makes the policy the brain's.
_STATIC_MATCH_FIELDS = frozenset(
    {"path", "method", "tenant", "tier", "model", "model_regex", "stream", "task", "any_of"}
)
# Actions the table carries: targets, fallbacks, route headers, priority, rejection.
_STATIC_ACTION_FIELDS = frozenset(
    {"name", "match", "route", "fallback", "timeout_s", "retries", "priority", "reject"}
)


def _given(model: Match | Action) -> set[str]:
    return {name for name, value in model if value is not None}


def _match_is_static(match: Match) -> bool:
    if not _given(match) <= _STATIC_MATCH_FIELDS:
        return False
    return all(_match_is_static(inner) for inner in match.any_of or ())


def _action_is_static(action: Action) -> bool:
    return _given(action) <= _STATIC_ACTION_FIELDS


def table_can_decide(policy: CompiledPolicy) -> bool:
    """Whether the policy's verdict is a function of (task, stream, model, tenant) alone.

    JWT claims, header and complexity matches, splits, mirrors, caches and default limits all
    need more than the table holds: such policies send every request to the brain. (Tenants
    whose plan has limits or a complexity upgrade, and rows that may reach a hosted provider,
    are escalated one by one: _route_entry.)"""
    source = policy.policy
    tenants = source.tenants
    if tenants.claim or tenants.default_limits is not None:
        return False
    if not _action_is_static(source.default):
        return False
    return all(_match_is_static(rule.match) and _action_is_static(rule) for rule in source.rules)


def _match_tenants(match: Match) -> set[str]:
    named = set(match.tenant or ())
    for inner in match.any_of or ():
        named |= _match_tenants(inner)
    return named


def tenant_keys(policy: CompiledPolicy) -> list[str]:
    """Tenants the table has rows for; every other tenant (or none) shares the "*" rows."""
    source = policy.policy
    named = set(source.tenants.plans)
    for rule in source.rules:
        named |= _match_tenants(rule.match)
    return sorted(named)


def _tenant_escalates(policy: CompiledPolicy, tenant: str) -> bool:
    plan = policy.policy.tenants.plans.get(tenant)
    return plan is not None and (plan.allow_upgrade or plan.limits is not None)


def _route_entry(
    policy: CompiledPolicy, task: str, stream: bool, model: str, tenant: str, served: set[str]
) -> dict[str, Any]:
    if tenant != "*" and _tenant_escalates(policy, tenant):
        return {"escalate": True}
    headers = {} if tenant == "*" else {policy.policy.tenants.header.lower(): tenant}
    verdict = policy.evaluate(
        PolicyInput(
            path=TASK_PATHS[task], method="POST", headers=headers, model=model, stream=stream, task=task
        )
    )
    if verdict.limits is not None or verdict.cache is not None:
        return {"escalate": True}
    if verdict.reject is not None:
        status, message = verdict.reject
        error = RoutingError(
            ErrorKind.REJECTED_BY_POLICY, message, "rejected_by_policy", status_override=status
        )
        return {"reject": {"status": error.status, "body": error.body().decode()}}
    # Hosted providers: Router._decide hands a request to a provider only for a target in a
    # provider pool (when the provider is healthy, the tenant's hosted budget has room and the
    # task can go there) or by spill-over (when every fleet endpoint is predicted to miss the
    # TTFT objective): per-request state the table does not hold, so those are the brain's.
    # Anything else is decided as without providers: the fallback hop after a failed provider
    # attempt is ext_proc's (extproc.deploy.wasm_config), budgets only gate provider targets
    # and spill-over, and a fleet decision carries no provider header.
    if verdict.spill is not None:
        return {"escalate": True}
    # The chain up to its first provider target is the fleet's; the provider serves only when
    # none of those targets has an endpoint, so a walk that gets that far escalates.
    fleet_part = list(itertools.takewhile(lambda t: t.pool not in policy.providers, verdict.targets))
    if verdict.targets and not fleet_part:
        return {"escalate": True}
    if not verdict.targets and model not in served:
        return {"escalate": True}
    entry: dict[str, Any] = {
        "targets": [[t.model, t.pool] for t in fleet_part],
        "headers": [list(pair) for pair in verdict.headers],
    }
    if len(fleet_part) < len(verdict.targets):
        entry["then_escalate"] = True
    return entry


def _candidates(router: Router, fleet: FleetSnapshot, target: Target, now: float) -> dict[str, Any]:
    rows = router.candidates(fleet, target)
    if rows.size == 0:
        return {"endpoints": []}
    picker = router.picker
    if isinstance(picker, Scheduler):
        kept, scores, last_resort, saturated = picker.prepared_scores(fleet, rows, now)
        endpoints: list[list[Any]] = [
            [fleet.endpoints[row].address, round(score * SCORE_SCALE)]
            for row, score in zip(kept, scores, strict=True)
        ]
        load = picker.load_terms(fleet, kept, now) if kept else None
        if load is not None:
            # The load scorer's request part is the filter's (fresh in-flight, the prompt's size):
            # kept rows carry its fleet terms and the scrape's queue (reference.load_scores).
            columns = (*load[1], fleet.waiting[kept], fleet.running[kept])
            scales = (LOAD_SCALE, LOAD_SCALE, LOAD_SCALE, 1, 1)
            for entry, *values in zip(endpoints, *columns, strict=True):
                entry.extend(_integer(v, scale) for v, scale in zip(values, scales, strict=True))
        endpoints += [
            [fleet.endpoints[row].address, LAST_RESORT_SCORE - i] for i, row in enumerate(last_resort)
        ]
        return {"endpoints": endpoints, "saturated": saturated}
    # Any other picker: least loaded first, by the scrape (the filter adds its own in-flight).
    ready = [int(r) for r in rows if fleet.ready_since[r] == fleet.ready_since[r]]
    return {
        "endpoints": [
            [fleet.endpoints[r].address, -round((fleet.waiting[r] + fleet.running[r] * 1e-3) * SCORE_SCALE)]
            for r in ready
        ]
    }


def _integer(value: float, scale: int) -> int:
    return round(float(value) * scale) if math.isfinite(value) else 0


def _targets(routes: dict[str, dict[str, Any]]) -> Iterable[Target]:
    seen: dict[Target, None] = {}
    for entry in routes.values():
        for model, pool in entry.get("targets", ()):
            seen[Target(pool=pool, model=model)] = None
    return seen


def _prefix_params(scheduler: Scheduler | None) -> PrefixParams:
    """The profile's prefix scorer's block size and count (its defaults when there is none)."""
    scorers = scheduler.scorers if scheduler is not None else []
    for scorer, _weight in scorers:
        if isinstance(scorer, PrefixScorer):
            return PrefixParams(block_chars=scorer.block_chars, max_blocks=scorer.max_blocks)
    return PrefixParams()


def build_snapshot(
    router: Router,
    now: float,
    *,
    stale_after_ms: int = DEFAULT_STALE_AFTER_MS,
    log_sample_below: int = 0,
) -> dict[str, Any]:
    """The snapshot for the router's current fleet and policy; "version" names its content.
    ``log_sample_below``: the decision log's sampling threshold (DecisionLog.sample_below): the
    filter reports the requests it samples one by one."""
    config = router.config
    fleet = router.fleet.snapshot
    policy = router.policy()
    served_models: Sequence[str] = router.served_models()
    served = set(served_models)
    scheduler = router.picker if isinstance(router.picker, Scheduler) else None
    # A scorer the profile leaves out weighs nothing; without a scheduler, the defaults.
    weights = scheduler.config.weights if scheduler is not None else UNSCHEDULED_WEIGHTS
    prefix = _prefix_params(scheduler)
    # The complexity header needs the scorer; the brain omits it on the Wasm data path.
    escalate_all = (
        (router.complexity is not None and config.complexity_header)
        or (policy is not None and not table_can_decide(policy))
        or prefix.block_chars * prefix.max_blocks > MAX_PREFIX_BYTES
    )
    routes: dict[str, dict[str, Any]] = {}
    tenants = tenant_keys(policy) if policy is not None and not escalate_all else []
    if not escalate_all:
        models = list(dict.fromkeys([*served_models, *(policy.models if policy is not None else ())]))
        for task in TASK_PATHS:
            for stream in (False, True):
                for model in models:
                    for tenant in ("*", *tenants):
                        key = f"{task}|{int(stream)}|{model}|{tenant}"
                        if policy is None:
                            routes[key] = {"targets": [[model, ""]], "headers": []}
                        else:
                            routes[key] = _route_entry(policy, task, stream, model, tenant, served)
    candidates = {
        f"{target.model}|{target.pool}": _candidates(router, fleet, target, now)
        for target in _targets(routes)
    }
    snapshot: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "endpoints_per_request": config.endpoints_per_request,
        "max_body_bytes": config.max_body_bytes,
        "session_header": config.session_header.lower(),  # Envoy's header keys are lowercase
        "tenant_header": policy.policy.tenants.header.lower() if policy is not None else "",
        "tenants": tenants,
        "stale_after_ms": stale_after_ms,
        "log_sample_below": log_sample_below,
        "escalate_all": escalate_all,
        "escalate_unknown_models": policy is not None,
        "inject_stream_usage": config.inject_stream_usage,
        # The 404's list of models, already escaped for a JSON string.
        "available": json.dumps(", ".join(served_models), ensure_ascii=False)[1:-1],
        "inflight_weight": round(weights.get("inflight", 0.0) * SCORE_SCALE),
        "load_weight": round(weights.get("load", 0.0) * SCORE_SCALE),
        "session_weight": round(weights.get("session", 0.0) * SCORE_SCALE),
        "prefix_weight": round(weights.get("prefix", 0.0) * SCORE_SCALE),
        # The prefix scorer's blocks (its parameters as the profile sets them).
        "prefix_block_bytes": prefix.block_chars,
        "prefix_max_blocks": prefix.max_blocks,
        # The session scorer's bound on affinity (its default parameters).
        "affinity_load_factor_pct": round(SessionParams().load_factor * 100),
        "routes": routes,
        "candidates": candidates,
    }
    snapshot["version"] = hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:16]
    return snapshot
