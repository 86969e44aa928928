"""The routing decision: parsed request + policy + fleet snapshot → ordered endpoints and headers.

Pure computation on the request path: no I/O, no locks, no imports of collectors or the CLI.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from extproc.complexity.scorer import Scores
from extproc.config import ServerConfig
from extproc.errors import ErrorKind, RoutingError
from extproc.fleet.state import FleetSnapshot, FleetState, InFlight, IntArray
from extproc.headers import (
    COMPLEXITY_HEADER,
    DESTINATION_HEADER,
    ENVOY_MAX_RETRIES_HEADER,
    ENVOY_RETRY_ON_HEADER,
    FALLBACK_OF_HEADER,
    MODEL_HEADER,
    ORIGINAL_PATH_HEADER,
    POOL_HEADER,
    PROVIDER_HEADER,
    REQUESTED_MODEL_HEADER,
    STREAM_HEADER,
    STRONG_GAIN_HEADER,
    TENANT_HEADER,
)
from extproc.observability.metrics import Metrics
from extproc.observe import Observation
from extproc.policy.compile import CompiledPolicy
from extproc.policy.schema import Cache, Limits
from extproc.policy.types import PolicyDecision, PolicyInput, Spill, Target
from extproc.providers.health import ProviderHealth
from extproc.providers.route import ProviderRoute
from extproc.providers.spend import SpendTracker
from extproc.providers.spill import SpillPredictor
from extproc.request import STREAM_OPTIONS_TASKS, ParsedRequest, RequestHeaders, Task
from extproc.scheduler.picking import EndpointPicker, PickContext

OTHER_TENANT = "other"
# What hosted providers are asked for: the OpenAI shapes both API flavours speak.
PROVIDER_TASKS = frozenset({Task.CHAT, Task.COMPLETION, Task.EMBEDDING})

PRIORITY_NAMES = {1: "premium", 0: "standard", -1: "batch"}
NO_SCORES = Scores(0.0, 0.0)


class ComplexityScorer(Protocol):
    """extproc.complexity.ComplexityModel, as the router uses it."""

    def score_request(self, request: ParsedRequest) -> Scores: ...

    def top_features(self, request: ParsedRequest, top: int = 3) -> list[str]: ...


@dataclass(slots=True)
class Decision:
    endpoints: list[str]
    model: str  # the served model
    requested_model: str = ""
    rule: str = ""
    tier: str = ""
    tenant: str | None = None
    priority: int = 0
    pool: str = ""
    complexity: float = 0.0
    strong_gain: float = 0.0
    complexity_features: list[str] | None = None  # the top contributions, when asked for
    model_fallback: bool = False  # served by a later target of the policy's fallback chain
    scores: list[float] | None = None  # the chosen endpoints' scores, when asked for
    speeds: list[dict[str, float | str]] | None = None  # their estimated speeds, likewise
    decision_s: float = 0.0
    # From the policy: response-cache settings, the tenant's limits and its downgrade target.
    cache: Cache | None = None
    limits: Limits | None = None
    downgrade: Target | None = None
    set_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None  # replacement request body, when the served model differs
    provider: str = ""  # the provider pool serving it ("" = self-hosted endpoints)
    spilled: bool = False  # sent to the provider because the fleet would miss the TTFT objective


class ResponseHomes:
    """Which endpoint stored each Responses-API response, so a follow-up that names it with
    ``previous_response_id`` goes where that state lives (vLLM keeps it in the server's memory).

    Learned from the observed responses (extproc.observe reads their ids); bounded, oldest
    forgotten first. Per process: with ``serve --workers N`` a follow-up may reach a worker
    that did not observe the first response, and is then routed like any other request."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._homes: OrderedDict[str, str] = OrderedDict()
        self.learned = 0  # ids remembered, ever
        self.pinned = 0  # follow-ups sent to their previous response's endpoint

    def remember(self, response_id: str, endpoint: str) -> None:
        if not endpoint:
            return
        self.learned += 1
        self._homes[response_id] = endpoint
        self._homes.move_to_end(response_id)
        if len(self._homes) > self.capacity:
            self._homes.popitem(last=False)

    def home_of(self, response_id: str) -> str | None:
        return self._homes.get(response_id)

    def __len__(self) -> int:
        return len(self._homes)


class Router:
    def __init__(
        self,
        config: ServerConfig,
        fleet: FleetState,
        picker: EndpointPicker,
        inflight: InFlight,
        clock: Callable[[], float] = time.monotonic,
        policy: Callable[[], CompiledPolicy | None] = lambda: None,
        complexity: ComplexityScorer | None = None,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.picker = picker
        self.inflight = inflight
        self.clock = clock
        self.policy = policy
        self.complexity = complexity
        self.responses_observed = 0
        self.response_homes = ResponseHomes()
        self.retried_away = 0  # responses served by a fallback because the primary's try failed
        self.metrics: Metrics | None = None
        # Passive health / latency feedback (the scheduler's health tracker), if any.
        self.on_response: Callable[[str, int, float], None] | None = None
        # Providers to avoid until their retry-after has passed, and tenants' hosted spend.
        self.provider_health = ProviderHealth(clock)
        self.spend = SpendTracker(clock)  # hosted providers (plans' hosted.budget_usd_per_hour)
        self.spend_limits = SpendTracker(clock)  # every priced pool (limits.usd_per_hour)
        self.spill_predictor = SpillPredictor()

    def served_models(self) -> tuple[str, ...]:
        models = dict.fromkeys(self.config.models or self.fleet.snapshot.models)
        policy = self.policy()
        if policy is not None:
            models.update(dict.fromkeys(policy.models))
        return tuple(models)

    def models_body(self) -> bytes:
        """The /v1/models answer, in OpenAI's list format."""
        data = [{"id": m, "object": "model", "owned_by": "llm-extproc"} for m in self.served_models()]
        return json.dumps({"object": "list", "data": data}).encode()

    def candidates(self, snapshot: FleetSnapshot, target: Target) -> IntArray:
        rows = snapshot.rows_serving(target.model)
        if target.pool and rows.size:
            pool_rows = snapshot.rows_by_pool.get(target.pool)
            if pool_rows is None:
                return rows[:0]
            rows = np.intersect1d(rows, pool_rows, assume_unique=True)
        return rows

    def _evaluate_policy(
        self, policy: CompiledPolicy, headers: RequestHeaders, request: ParsedRequest, scores: Scores
    ) -> PolicyDecision:
        return policy.evaluate(
            PolicyInput(
                path=headers.path.split("?", 1)[0],
                method=headers.method,
                headers=headers.headers,
                model=request.model,
                stream=request.stream,
                task=request.task.value,
                complexity=scores.complexity,
                strong_gain=scores.strong_gain,
                prompt_tokens=request.estimated_prompt_tokens,
                max_tokens=request.max_tokens,
                metadata=headers.metadata,
            )
        )

    def decide(
        self,
        headers: RequestHeaders,
        request: ParsedRequest,
        detail: bool = False,
        force_target: Target | None = None,
        fallback_of: str = "",
    ) -> Decision:
        """``detail``: also report the chosen endpoints' scores (for the decision log);
        ``force_target``: serve with this policy target instead (a tenant's downgrade);
        ``fallback_of``: the provider whose attempt failed (the fallback hop): self-hosted only."""
        started = time.perf_counter()
        try:
            decision = self._decide(headers, request, detail, force_target, fallback_of)
        except RoutingError as error:
            self.record_error(request.task.value, request.model, error)
            raise
        decision.decision_s = time.perf_counter() - started
        metrics = self.metrics
        if metrics is not None:
            metrics.pick_duration.observe(decision.decision_s)
            outcome = "fallback_model" if decision.model_fallback else "routed"
            metrics.request(request.task.value, decision.pool, decision.model, decision.tier, outcome)
            if decision.model_fallback:
                metrics.fallbacks.labels("model", "no_capacity").inc()
            if decision.spilled:
                metrics.spills.labels(decision.provider, decision.model).inc()
            if self.complexity is not None:
                metrics.complexity.observe(decision.complexity)
                metrics.strong_gain.observe(decision.strong_gain)
        return decision

    def record_error(self, task: str, model: str, error: RoutingError) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        if error.kind is ErrorKind.OVERLOADED:
            metrics.request(task, "", model, "", "shed")
        elif error.status >= 500:
            metrics.request(task, "", model, "", "unavailable")
        else:
            metrics.request(task, "", model, "", "rejected")

    def policy_verdict(self, headers: RequestHeaders, request: ParsedRequest) -> PolicyDecision | None:
        """The policy's verdict alone (no pick), e.g. for degraded-mode cache lookups."""
        policy = self.policy()
        if policy is None:
            return None
        scores = self.complexity.score_request(request) if self.complexity is not None else NO_SCORES
        return self._evaluate_policy(policy, headers, request, scores)

    def _decide(
        self,
        headers: RequestHeaders,
        request: ParsedRequest,
        detail: bool,
        force_target: Target | None = None,
        fallback_of: str = "",
    ) -> Decision:
        snapshot = self.fleet.snapshot
        scores = self.complexity.score_request(request) if self.complexity is not None else NO_SCORES
        policy = self.policy()
        decision = Decision(
            endpoints=[],
            model=request.model,
            requested_model=request.model,
            complexity=scores.complexity,
            strong_gain=scores.strong_gain,
        )
        if detail and self.complexity is not None:
            decision.complexity_features = self.complexity.top_features(request)
        targets: tuple[Target, ...]
        extra_headers: tuple[tuple[str, str], ...] = ()
        providers: dict[str, ProviderRoute] = {}
        spill: Spill | None = None
        budget: float | None = None
        if policy is None:
            targets = (Target("", request.model),)  # the requested model, wherever it is served
        else:
            verdict = self._evaluate_policy(policy, headers, request, scores)
            decision.rule, decision.tier, decision.tenant = verdict.rule, verdict.tier, verdict.tenant
            decision.priority = verdict.priority
            if verdict.reject is not None:
                status, message = verdict.reject
                raise RoutingError(
                    ErrorKind.REJECTED_BY_POLICY, message, "rejected_by_policy", status_override=status
                )
            targets = (force_target,) if force_target is not None else verdict.targets
            if force_target is None and not fallback_of:
                targets = self._within_usd_limit(verdict, targets)
            extra_headers = verdict.headers
            providers, spill, budget = policy.providers, verdict.spill, verdict.hosted_budget_usd_per_hour
            decision.cache, decision.limits, decision.downgrade = (
                verdict.cache if request.cacheable else None,
                verdict.limits,
                verdict.downgrade,
            )
        if request.model not in self.served_models() and not (policy is not None and targets):
            raise RoutingError(
                ErrorKind.MODEL_NOT_FOUND,
                f"model {request.model!r} does not exist; available: {', '.join(self.served_models())}",
                "model_not_found",
            )
        ctx = PickContext(
            model=request.model,
            prompt_text=request.text,
            prompt_tokens=request.estimated_prompt_tokens,
            session_key=headers.headers.get(self.config.session_header) or request.user,
            priority=decision.priority,
            zone=self.config.zone or None,
            now=self.clock(),
            want_scores=detail,
        )
        inflight = self.inflight.counts_for(snapshot)
        shed: RoutingError | None = None
        rows: list[int] = []
        hosted: tuple[ProviderRoute, Target] | None = None
        for index, target in enumerate(targets):
            route = providers.get(target.pool) if providers else None
            if route is not None:
                if (
                    not fallback_of
                    and request.task in PROVIDER_TASKS
                    and request.rewritable
                    and self._provider_usable(route, decision.tenant, budget, ctx.now)
                ):
                    hosted = (route, target)
                    decision.model_fallback = index > 0
                    break
                continue
            candidates = self.candidates(snapshot, target)
            if candidates.size == 0:
                continue
            ctx.model = target.model
            spill_to = (
                self._spill_route(request, spill, providers, decision.tenant, budget, ctx.now, fallback_of)
                if index == 0
                else None
            )
            try:
                rows = self.picker.pick(
                    snapshot, candidates, inflight, ctx, self.config.endpoints_per_request
                )
            except RoutingError as error:
                if error.kind is not ErrorKind.OVERLOADED:
                    raise
                if spill_to is not None:  # saturated: certainly missing the objective
                    hosted, decision.spilled = (spill_to[0], spill_to[1].target), True
                    break
                shed = shed or error  # try the next model before shedding
                continue
            if (
                rows
                and spill_to is not None
                # The pick meeting the objective settles it (the usual case, a few scalar reads);
                # only a pick that misses needs every candidate checked.
                and self.spill_predictor.misses(
                    snapshot, rows[0], inflight, spill_to[1].ttft_objective_s, spill_to[1].queue_s_per_request
                )
                and self.spill_predictor.every_endpoint_misses(
                    snapshot,
                    candidates,
                    inflight,
                    spill_to[1].ttft_objective_s,
                    spill_to[1].queue_s_per_request,
                )
            ):
                hosted, decision.spilled = (spill_to[0], spill_to[1].target), True
                rows = []
                break
            if rows:
                decision.model, decision.pool = target.model, target.pool
                decision.model_fallback = index > 0
                if request.previous_response_id is not None:
                    rows = self._home_first(snapshot, candidates, rows, request.previous_response_id)
                break
        if hosted is not None:
            self._to_provider(decision, hosted[0], hosted[1], headers, request, extra_headers)
            return decision
        if not rows:
            if shed is not None:
                if self.metrics is not None:
                    self.metrics.sheds.labels(PRIORITY_NAMES.get(ctx.priority, "standard")).inc()
                raise shed
            raise RoutingError(
                ErrorKind.NO_CAPACITY,
                f"no healthy endpoint for model {request.model!r}; retry later",
                "no_healthy_endpoint",
                retry_after_s=1.0,
            )
        form = request.form
        if form is not None and not form.complete and decision.model != request.model:
            raise RoutingError(
                ErrorKind.INVALID_REQUEST,
                f"this upload is larger than {self.config.max_body_bytes} bytes, so it streams past "
                f"us and its model cannot be renamed from {request.model!r} to {decision.model!r} "
                f"(a policy alias or fallback): send the served model name {decision.model!r}",
                "model_rename_needs_small_upload",
            )
        decision.scores = ctx.scores
        decision.speeds = ctx.speeds
        decision.endpoints = endpoints = [snapshot.endpoints[r].address for r in rows]
        self.inflight.add(snapshot, endpoints[0], +1)
        if not decision.pool:
            decision.pool = snapshot.endpoints[rows[0]].pool
        set_headers = decision.set_headers
        set_headers.append((DESTINATION_HEADER, ",".join(endpoints)))
        set_headers.append((MODEL_HEADER, decision.model))
        set_headers.append((POOL_HEADER, decision.pool))
        if decision.tenant is not None:
            set_headers.append((TENANT_HEADER, decision.tenant))
        if fallback_of:
            # The fallback hop got the provider's path and body: back to ours. The header tells
            # the client (and the provider cluster's observer) that self-hosted answered.
            set_headers.append((":path", headers.path))
            set_headers.append((FALLBACK_OF_HEADER, fallback_of))
        if request.stream:
            # Lets a route (e.g. Istio's streaming VirtualService route) match on the body's flag.
            set_headers.append((STREAM_HEADER, "true"))
        if self.complexity is not None and self.config.complexity_header:
            set_headers.append((COMPLEXITY_HEADER, f"{scores.complexity:.3f}"))
            set_headers.append((STRONG_GAIN_HEADER, f"{scores.strong_gain:.3f}"))
        set_headers.extend(extra_headers)
        rewrite: dict[str, Any] = {}
        if decision.model != request.body.get("model"):
            rewrite["model"] = decision.model
        if request.stream and self.config.inject_stream_usage and request.task in STREAM_OPTIONS_TASKS:
            options = request.body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                rewrite["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
        if rewrite and request.rewritable:
            decision.body = json.dumps({**request.body, **rewrite}, ensure_ascii=False).encode()
            set_headers.append(("content-length", str(len(decision.body))))
        elif form is not None and decision.model != request.model:
            # A whole (small) upload: rename the model field in place.
            decision.body = form.with_model(decision.model)
            set_headers.append(("content-length", str(len(decision.body))))
        return decision

    def _home_first(
        self, snapshot: FleetSnapshot, candidates: IntArray, rows: list[int], response_id: str
    ) -> list[int]:
        """The endpoint holding ``response_id`` first, whatever its load: no other has the state.
        The picked list stays behind it for Envoy's retries should that endpoint be gone."""
        home = self.response_homes.home_of(response_id)
        row = snapshot.index.get(home) if home is not None else None
        if row is None or row not in candidates:
            return rows
        self.response_homes.pinned += 1
        return [row, *(r for r in rows if r != row)][: max(len(rows), 1)]

    def _within_usd_limit(self, verdict: PolicyDecision, targets: tuple[Target, ...]) -> tuple[Target, ...]:
        """A tenant over its limits.usd_per_hour: its downgrade target, or 429 + retry-after."""
        limits = verdict.limits
        if limits is None or limits.usd_per_hour is None or verdict.tenant is None:
            return targets
        wait = self.spend_limits.seconds_until_allowed(verdict.tenant, limits.usd_per_hour, self.clock())
        if wait <= 0:
            return targets
        if limits.over_limit == "downgrade" and verdict.downgrade is not None:
            if self.metrics is not None:
                self.metrics.limited.labels("usd_per_hour", "downgrade").inc()
            return (verdict.downgrade,)
        if self.metrics is not None:
            self.metrics.limited.labels("usd_per_hour", "reject").inc()
        raise RoutingError(
            ErrorKind.RATE_LIMITED,
            f"tenant {verdict.tenant!r} is over its usd per hour limit; retry after {max(1, round(wait))} s",
            "rate_limit_exceeded",
            retry_after_s=wait,
        )

    def _provider_usable(
        self, route: ProviderRoute, tenant: str | None, budget: float | None, now: float
    ) -> bool:
        return self.provider_health.available(route.name, now) and self.spend.allows(tenant, budget, now)

    def _spill_route(
        self,
        request: ParsedRequest,
        spill: Spill | None,
        providers: dict[str, ProviderRoute],
        tenant: str | None,
        budget: float | None,
        now: float,
        fallback_of: str,
    ) -> tuple[ProviderRoute, Spill] | None:
        if spill is None or fallback_of or request.task not in PROVIDER_TASKS or not request.rewritable:
            return None
        route = providers.get(spill.target.pool)
        if route is None or not self._provider_usable(route, tenant, budget, now):
            return None
        return route, spill

    def _to_provider(
        self,
        decision: Decision,
        route: ProviderRoute,
        target: Target,
        headers: RequestHeaders,
        request: ParsedRequest,
        policy_headers: tuple[tuple[str, str], ...],
    ) -> None:
        """Hand the request to a provider: Envoy's route for it (selected by PROVIDER_HEADER)
        removes the client's credential, and the provider's cluster adds the provider key."""
        decision.provider = decision.pool = route.name
        decision.model = target.model
        path = headers.path
        set_headers = decision.set_headers
        set_headers.append((PROVIDER_HEADER, route.name))
        set_headers.append((MODEL_HEADER, target.model))
        set_headers.append((POOL_HEADER, route.name))
        if decision.tenant is not None:
            set_headers.append((TENANT_HEADER, decision.tenant))
        set_headers.append((REQUESTED_MODEL_HEADER, request.model))
        set_headers.append((ORIGINAL_PATH_HEADER, path))
        set_headers.append((":path", route.path_for(path, target.model)))
        if request.stream:
            set_headers.append((STREAM_HEADER, "true"))
        for name, value in policy_headers:
            # One retry, and that is the fallback hop (the route's retry policy says on what).
            if name == ENVOY_MAX_RETRIES_HEADER:
                value = "1"
            elif name == ENVOY_RETRY_ON_HEADER:
                continue
            set_headers.append((name, value))
        rewrite: dict[str, Any] = {"model": route.provider_model(target.model)}
        if request.stream:
            # Hosted APIs report a stream's usage only when asked; the cost metric needs it.
            options = request.body.get("stream_options")
            rewrite["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        decision.body = json.dumps({**request.body, **rewrite}, ensure_ascii=False).encode()
        set_headers.append(("content-length", str(len(decision.body))))

    def provider_failed(self, name: str, retry_after_s: float | None, status: str = "") -> None:
        """A provider attempt failed (429, 5xx, timeout): leave it alone for retry-after seconds."""
        policy = self.policy()
        route = policy.providers.get(name) if policy is not None else None
        if route is None:
            return
        self.provider_health.failed(name, retry_after_s, route.cooldown_s)
        if status and self.metrics is not None:
            self.metrics.provider_failures.labels(name, status).inc()

    def account(self, observation: Observation, tenant: str) -> float:
        """Dollars one observed response cost, by the policy's prices; counted per tenant."""
        policy = self.policy()
        usage = observation.usage
        if policy is None or usage is None or not policy.prices:
            return 0.0
        price = policy.prices.get((observation.pool, observation.model))
        if price is None:
            return 0.0
        dollars = price.cost(usage.prompt_tokens or 0, usage.completion_tokens or 0)
        if dollars <= 0:
            return 0.0
        known = tenant if tenant and tenant in policy.policy.tenants.plans else OTHER_TENANT
        if self.metrics is not None:
            self.metrics.cost.labels(known, observation.model, observation.pool).inc(dollars)
        if tenant and observation.pool in policy.providers:
            budget = policy.hosted(tenant).budget_usd_per_hour
            if budget is not None:
                self.spend.charge(tenant, budget, dollars)
        limits = policy.limits_for(tenant) if tenant else None
        if tenant and limits is not None and limits.usd_per_hour is not None:
            self.spend_limits.charge(tenant, limits.usd_per_hour, dollars)
        return dollars

    def observe_response(
        self, endpoint: str, status: int, started: float, timed: bool = True, primary: str = ""
    ) -> None:
        """Response headers arrived from ``endpoint``: feed passive health and latency scoring
        (``timed=False``: the status counts, the time to headers does not).

        ``primary`` is the endpoint we put first in the list. Envoy's first attempt always goes
        there, so an answer from another endpoint means the primary failed (refused, reset,
        503 or a per-try timeout) and a retry served the request: that counts as the primary's
        failure, and the time to headers (which includes the failed try) is nobody's latency.
        Without it a crashed endpoint stays "healthy" until the next scrape, because the
        client-visible answer is a retry's 200.
        """
        self.responses_observed += 1
        if self.on_response is None:
            return
        retried_away = bool(primary) and bool(endpoint) and endpoint != primary
        if retried_away:
            self.retried_away += 1
            self.on_response(primary, 0, math.nan)
        elapsed = self.clock() - started if timed and not retried_away else math.nan
        self.on_response(endpoint, status, elapsed)

    def finished(self, endpoint: str) -> None:
        self.inflight.add(self.fleet.snapshot, endpoint, -1)
