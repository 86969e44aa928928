"""Load, check and compile policy files into an immutable object the request path evaluates.

Loading happens in stages, each with precise errors naming file, line and field:
YAML syntax → schema (pydantic) → semantics (unknown pools and models, duplicates,
unreachable rules, fallback cycles). The compiled policy holds prebuilt matcher closures, so
evaluating a request is a walk over small tuples with no allocation of big objects.
"""

from __future__ import annotations

import hashlib
import random
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from extproc.headers import (
    ENVOY_MAX_RETRIES_HEADER,
    ENVOY_PER_TRY_TIMEOUT_MS_HEADER,
    ENVOY_RETRY_ON_HEADER,
    ENVOY_TIMEOUT_MS_HEADER,
    MIRROR_CLUSTER_HEADER,
    PRIORITY_HEADER,
    RULE_HEADER,
    TIER_HEADER,
)
from extproc.policy.schema import Action, Cache, Hosted, Limits, Match, Policy, Pool, Range, StringMatch
from extproc.policy.types import PolicyDecision, PolicyInput, Spill, Target
from extproc.providers.pricing import Price
from extproc.providers.route import ProviderRoute
from extproc.providers.upstream import ProviderUpstream
from extproc.scheduler.config import SchedulerConfig
from extproc.scheduler.framework import PluginError

PRIORITY_VALUE = {"premium": 1, "standard": 0, "batch": -1}
STREAM_DEFAULTS = (300.0, 0, None, None)  # timeout s, retries, per-try s, retry_on
UNARY_DEFAULTS = (120.0, 2, 60.0, "gateway-error,connect-failure,retriable-4xx")


# -- inputs and outputs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: PolicyDecision
    skipped: tuple[tuple[str, str], ...]  # (rule, why it did not match)


# -- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyError(ValueError):
    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in issues))


# -- YAML with line numbers ---------------------------------------------------------------------


def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value
            out[(*path, name)] = key.start_mark.line + 1
            _lines(value, (*path, name), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


def _field_path(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_for(loc: Sequence[Any], lines: Mapping[tuple[Any, ...], int]) -> int:
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return 0


@dataclass
class _Origins:
    """Where each part of the merged policy came from: file, and that file's line numbers."""

    files: dict[str, dict[tuple[Any, ...], int]] = field(default_factory=dict)
    items: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)  # merged -> (file, local)
    keys: dict[tuple[str, ...], str] = field(default_factory=dict)  # top-level or map key -> file

    def where(self, loc: Sequence[Any]) -> tuple[str, int]:
        if len(loc) >= 2 and loc[0] in ("pools", "rules") and isinstance(loc[1], int):
            file, local = self.items.get((loc[0], loc[1]), ("", 0))
            return file, _line_for((loc[0], local, *loc[2:]), self.files.get(file, {}))
        file = self.keys.get(tuple(loc[:2])) or self.keys.get(tuple(loc[:1])) or next(iter(self.files), "")
        return file, _line_for(loc, self.files.get(file, {}))


def _load_documents(paths: Sequence[Path]) -> tuple[dict[str, Any], _Origins, list[PolicyIssue]]:
    """Merge files (in sorted order) into one raw policy, remembering where everything came from."""
    merged: dict[str, Any] = {"pools": [], "rules": [], "models": {}, "fallbacks": {}}
    origins = _Origins()
    issues: list[PolicyIssue] = []
    for path in paths:
        name = str(path)
        try:
            text = path.read_text()
            node = yaml.compose(text)
            data = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(PolicyIssue(name, 0, "", f"cannot read: {exc}"))
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            issues.append(PolicyIssue(name, mark.line + 1 if mark else 0, "", f"invalid YAML: {exc}"))
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            issues.append(
                PolicyIssue(name, 1, "", f"expected a mapping at the top, got {type(data).__name__}")
            )
            continue
        lines: dict[tuple[Any, ...], int] = {}
        if node is not None:
            _lines(node, (), lines)
        origins.files[name] = lines
        for key, value in data.items():
            if key in ("pools", "rules") and isinstance(value, list):
                for local, item in enumerate(value):
                    origins.items[(key, len(merged[key]))] = (name, local)
                    merged[key].append(item)
            elif key in ("models", "fallbacks") and isinstance(value, dict):
                for sub, item in value.items():
                    if sub in merged[key]:
                        issues.append(
                            PolicyIssue(name, lines.get((key, sub), 0), f"{key}.{sub}", "defined twice")
                        )
                    origins.keys[(key, sub)] = name
                    merged[key][sub] = item
            else:
                if (key,) in origins.keys:
                    issues.append(
                        PolicyIssue(name, lines.get((key,), 0), key, "defined in more than one file")
                    )
                origins.keys[(key,)] = name
                merged[key] = value
    return merged, origins, issues


# -- compile -----------------------------------------------------------------------------------

Predicate = Callable[["_Context"], bool]


@dataclass(slots=True)
class _Context:
    inp: PolicyInput
    tenant: str | None
    tier: str


def _string_predicate(spec: StringMatch, get: Callable[[_Context], str | None]) -> Predicate:
    if spec.present is not None:
        want = spec.present
        return lambda c: (get(c) is not None) == want
    if spec.exact is not None:
        exact = spec.exact
        return lambda c: get(c) == exact
    if spec.prefix is not None:
        prefix = spec.prefix
        return lambda c: (v := get(c)) is not None and v.startswith(prefix)
    pattern = re.compile(spec.regex or "")
    return lambda c: (v := get(c)) is not None and pattern.search(v) is not None


def _header_predicate(name: str, spec: StringMatch) -> Predicate:
    return _string_predicate(spec, lambda c: c.inp.headers.get(name))


def _range_predicate(spec: Range, get: Callable[[_Context], float | None]) -> Predicate:
    def check(c: _Context) -> bool:
        value = get(c)
        if value is None:
            return False
        return (
            (spec.gt is None or value > spec.gt)
            and (spec.gte is None or value >= spec.gte)
            and (spec.lt is None or value < spec.lt)
            and (spec.lte is None or value <= spec.lte)
        )

    return check


def _compile_match(match: Match) -> tuple[tuple[str, Predicate], ...]:
    """(description, predicate) pairs; the description says what failed when explaining."""
    checks: list[tuple[str, Predicate]] = []
    if match.path is not None:
        checks.append(
            (
                f"path {match.path.model_dump(exclude_none=True)}",
                _string_predicate(match.path, lambda c: c.inp.path),
            )
        )
    if match.method is not None:
        methods = frozenset(m.upper() for m in match.method)
        checks.append((f"method in {sorted(methods)}", lambda c: c.inp.method.upper() in methods))
    for header, spec in (match.headers or {}).items():
        checks.append(
            (f"header {header} {spec.model_dump(exclude_none=True)}", _header_predicate(header, spec))
        )
    if match.tenant is not None:
        tenants = frozenset(match.tenant)
        checks.append((f"tenant in {sorted(tenants)}", lambda c: c.tenant in tenants))
    if match.tier is not None:
        tiers = frozenset(match.tier)
        checks.append((f"tier in {sorted(tiers)}", lambda c: c.tier in tiers))
    if match.model is not None:
        models = frozenset(match.model)
        checks.append((f"model in {sorted(models)}", lambda c: c.inp.model in models))
    if match.model_regex is not None:
        pattern = re.compile(match.model_regex)
        checks.append(
            (f"model matches {match.model_regex!r}", lambda c: pattern.search(c.inp.model) is not None)
        )
    if match.stream is not None:
        stream = match.stream
        checks.append((f"stream is {stream}", lambda c: c.inp.stream is stream))
    if match.task is not None:
        tasks = frozenset(match.task)
        checks.append((f"task in {sorted(tasks)}", lambda c: c.inp.task in tasks))
    ranges: tuple[tuple[str, Range | None, Callable[[_Context], float | None]], ...] = (
        ("complexity", match.complexity, lambda c: c.inp.complexity),
        ("strong_gain", match.strong_gain, lambda c: c.inp.strong_gain),
        ("prompt_tokens", match.prompt_tokens, lambda c: float(c.inp.prompt_tokens)),
        (
            "max_tokens",
            match.max_tokens,
            lambda c: None if c.inp.max_tokens is None else float(c.inp.max_tokens),
        ),
    )
    for label, bounds, getter in ranges:
        if bounds is not None:
            checks.append(
                (f"{label} {bounds.model_dump(exclude_none=True)}", _range_predicate(bounds, getter))
            )
    if match.any_of is not None:
        options = [_compile_match(m) for m in match.any_of]
        checks.append(
            (
                "any_of: none matched",
                lambda c: any(all(p(c) for _, p in option) for option in options),
            )
        )
    return tuple(checks)


@dataclass(frozen=True, slots=True)
class _CompiledAction:
    name: str
    checks: tuple[tuple[str, Predicate], ...]
    route: Target | None  # None: the requested model
    route_ref: str  # the model name the rule gave (alias or served), for the fallbacks map
    route_pool: str | None  # `route: {pool: P}` without a model: the requested model, on pool P
    split: tuple[tuple[int, Target, str], ...]  # cumulative weight (1..100) -> target, its name
    split_key: str | None
    mirror: tuple[float, Target, str] | None  # percent, target, envoy cluster
    fallback: tuple[Target, ...] | None
    timeout_s: float | None
    retries: tuple[int, float | None, str] | None
    priority: str | None
    reject: tuple[int, str] | None
    cache: Cache | None


class CompiledPolicy:
    """Immutable. Built once per (re)load; evaluate() is what the request path calls."""

    def __init__(self, policy: Policy, version: str, source: str = "") -> None:
        self.policy = policy
        self.version = version
        self.source = source
        self._pool_target = {p.name: p.endpoint_pool or p.name for p in policy.pools}
        # The scheduler this policy asks for: its `scheduler:` section, with the pools' GPU-class
        # weights laid over it. Built whole on every load, so a reload drops what it no longer says.
        pool_gpu_weights = {k: v for p in policy.pools for k, v in (p.gpu_weights or {}).items()}
        self.scheduler = SchedulerConfig.from_dict(policy.scheduler or {}).with_gpu_weights(pool_gpu_weights)
        self._clusters = {p.endpoint_pool or p.name: p.envoy_cluster or "" for p in policy.pools}
        self.providers: dict[str, ProviderRoute] = {
            p.name: provider_route(p) for p in policy.pools if p.kind == "provider"
        }
        # Per pool (discovered pool name for self-hosted ones) and model: for the cost metric.
        self.prices: dict[tuple[str, str], Price] = {
            (p.endpoint_pool or p.name, model): Price(price.input_per_1m, price.output_per_1m)
            for p in policy.pools
            for model, price in (p.prices or {}).items()
        }
        served: dict[str, str] = {}
        for pool in policy.pools:
            if pool.kind == "self-hosted":
                for model in pool.models:
                    # A model several pools serve may go to any of them; the scheduler decides.
                    target = pool.endpoint_pool or pool.name
                    served[model] = target if served.get(model, target) == target else ""
        # A model the fleet also serves goes to the fleet unless a rule, alias or spill-over names
        # the provider; one only providers serve goes to the first provider pool listing it.
        for pool in policy.pools:
            if pool.kind == "provider":
                for model in pool.models:
                    served.setdefault(model, pool.name)
        self._served = served
        self.models: tuple[str, ...] = tuple(dict.fromkeys([*policy.models, *served]))
        self._fallbacks = {k: tuple(self.resolve(m) for m in v) for k, v in policy.fallbacks.items()}
        self._rules = tuple(self._compile_action(r.name, r.match, r) for r in policy.rules)
        self._plan = _plan(policy.rules)
        self._default = self._compile_action("default", Match(), policy.default)
        self._tenants = policy.tenants
        spillover = policy.spillover
        self._spill: dict[str, Spill] = {}
        if spillover is not None:
            for model, to in spillover.targets.items():
                self._spill[model] = Spill(
                    self.resolve(to.model or model, to.pool),
                    spillover.ttft_objective_s,
                    spillover.queue_s_per_request,
                )
        # Cached answers are marked in a response header, which needs the routing stream's
        # response phase (extproc.server keeps it for such policies).
        self.caches_responses = any(
            action.cache is not None and action.cache.enabled for action in (*self._rules, self._default)
        )

    # resolution: a model reference (alias or served model) to a target
    def resolve(self, ref: str, pool: str | None = None) -> Target:
        alias = self.policy.models.get(ref)
        if alias is not None:
            ref, pool = alias.model, pool or alias.pool
        if pool is not None:
            return Target(self._pool_target[pool], ref)
        return Target(self._served.get(ref, ""), ref)

    def _compile_action(self, name: str, match: Match, action: Action) -> _CompiledAction:
        route = None
        route_ref = ""
        if action.route is not None and action.route.model is not None:
            route = self.resolve(action.route.model, action.route.pool)
            route_ref = action.route.model
        split: list[tuple[int, Target, str]] = []
        cumulative = 0
        for arm in action.split.targets if action.split else ():
            cumulative += arm.weight
            split.append((cumulative, self.resolve(arm.model, arm.pool), arm.model))
        mirror = None
        if action.mirror is not None:
            target = Target(self._pool_target[action.mirror.pool], "")
            mirror = (
                action.mirror.percent,
                target,
                self._clusters.get(target.pool, "") or action.mirror.pool,
            )
        retries = None
        if action.retries is not None:
            retries = (action.retries.count, action.retries.per_try_timeout_s, action.retries.retry_on)
        return _CompiledAction(
            name=name,
            checks=_compile_match(match),
            route=route,
            route_ref=route_ref,
            route_pool=action.route.pool if action.route is not None and route is None else None,
            split=tuple(split),
            split_key=action.split.key.lower() if action.split and action.split.key else None,
            mirror=mirror,
            fallback=tuple(self.resolve(m) for m in action.fallback) if action.fallback is not None else None,
            timeout_s=action.timeout_s,
            retries=retries,
            priority=action.priority,
            reject=(action.reject.status, action.reject.message) if action.reject else None,
            cache=action.cache,
        )

    # -- evaluation ---------------------------------------------------------------------------
    def _tenant(self, inp: PolicyInput) -> str | None:
        tenants = self._tenants
        if tenants.claim:
            for claims in inp.metadata.values():
                if isinstance(claims, Mapping):
                    for payload in (claims, *[v for v in claims.values() if isinstance(v, Mapping)]):
                        value = payload.get(tenants.claim)
                        if isinstance(value, str):
                            return value
        return inp.headers.get(tenants.header)

    def _tier(self, tenant: str | None, inp: PolicyInput) -> str:
        tenants = self._tenants
        signal = inp.strong_gain if tenants.upgrade_signal == "strong_gain" else inp.complexity
        plan = tenants.plans.get(tenant) if tenant is not None else None
        tier = plan.tier if plan else tenants.default_tier
        if (
            tier == "standard"
            and plan is not None
            and plan.allow_upgrade
            and signal > tenants.upgrade_threshold
        ):
            return "premium"
        return tier

    def evaluate(self, inp: PolicyInput) -> PolicyDecision:
        return self._evaluate(inp, None)

    def explain(self, inp: PolicyInput) -> Explanation:
        skipped: list[tuple[str, str]] = []
        return Explanation(self._evaluate(inp, skipped), tuple(skipped))

    def _evaluate(self, inp: PolicyInput, skipped: list[tuple[str, str]] | None) -> PolicyDecision:
        tenant = self._tenant(inp)
        tier = self._tier(tenant, inp)
        context = _Context(inp, tenant, tier)
        if skipped is None:
            return self._decide(self._first_match(context), context)
        chosen = self._default
        for rule in self._rules:
            failed = next((what for what, check in rule.checks if not check(context)), None)
            if failed is None:
                chosen = rule
                break
            if skipped is not None:
                skipped.append((rule.name, f"{failed} did not hold"))
        return self._decide(chosen, context)

    def _first_match(self, context: _Context) -> _CompiledAction:
        """First matching rule, jumping over runs of rules keyed on one header's exact value."""
        rules = self._rules
        headers = context.inp.headers
        for step in self._plan:
            if isinstance(step, int):
                rule = rules[step]
                if all(check(context) for _, check in rule.checks):
                    return rule
                continue
            name, table = step
            for index in table.get(headers.get(name), ()):
                rule = rules[index]
                if all(check(context) for _, check in rule.checks):
                    return rule
        return self._default

    def _decide(self, action: _CompiledAction, context: _Context) -> PolicyDecision:
        inp = context.inp
        priority_name = action.priority or self._default.priority or context.tier
        priority = PRIORITY_VALUE.get(priority_name, 0)
        headers = [
            (TIER_HEADER, context.tier),
            (PRIORITY_HEADER, priority_name),
            (RULE_HEADER, action.name),
        ]
        if action.reject is not None:
            return PolicyDecision(
                action.name, context.tenant, context.tier, priority, (), tuple(headers), action.reject
            )
        if action.split:
            key = inp.headers.get(action.split_key) if action.split_key else None
            # Stable per key and rule, so a user never flips between arms; random without a key.
            bucket = (
                (zlib.crc32(f"{action.name}:{key}".encode()) % 100) + 1 if key else random.randint(1, 100)
            )
            primary, ref = next((t, r) for limit, t, r in action.split if bucket <= limit)
        elif action.route is not None:
            primary, ref = action.route, action.route_ref
        elif action.route_pool is not None:
            primary, ref = self.resolve(inp.model, action.route_pool), inp.model
        elif inp.model in self.policy.models or inp.model in self._served or not self._served:
            primary, ref = self.resolve(inp.model), inp.model
        else:
            primary, ref = None, inp.model
        targets: list[Target] = [primary] if primary is not None else []
        fallback = action.fallback
        if fallback is None:
            fallback = (
                self._fallbacks.get(ref)
                or self._fallbacks.get(inp.model)
                or (self._fallbacks.get(primary.model, ()) if primary is not None else ())
            )
        for target in fallback:
            if target not in targets:
                targets.append(target)
        timeout, retries, per_try, retry_on = STREAM_DEFAULTS if inp.stream else UNARY_DEFAULTS
        timeout = self._default.timeout_s if action.timeout_s is None and self._default.timeout_s else timeout
        timeout = action.timeout_s or timeout
        chosen_retries = action.retries or (None if inp.stream else self._default.retries)
        if chosen_retries is not None:
            retries, per_try, retry_on = chosen_retries[0], chosen_retries[1] or per_try, chosen_retries[2]
        headers.append((ENVOY_TIMEOUT_MS_HEADER, str(int(timeout * 1000))))
        headers.append((ENVOY_MAX_RETRIES_HEADER, str(retries)))
        if retries and retry_on:
            headers.append((ENVOY_RETRY_ON_HEADER, retry_on))
        if retries and per_try:
            headers.append((ENVOY_PER_TRY_TIMEOUT_MS_HEADER, str(int(per_try * 1000))))
        mirror = None
        if action.mirror is not None:
            percent, target, cluster = action.mirror
            if random.random() * 100 < percent:
                mirror = target
                headers.append((MIRROR_CLUSTER_HEADER, cluster))
        limits = self._limits(context.tenant)
        hosted = self.hosted(context.tenant)
        spill = None
        if hosted.spillover and self._spill and targets:
            spill = self._spill.get(targets[0].model)
        cache = action.cache if action.cache is not None else self._default.cache
        return PolicyDecision(
            action.name,
            context.tenant,
            context.tier,
            priority,
            tuple(targets),
            tuple(headers),
            None,
            mirror,
            cache if cache is not None and cache.enabled else None,
            limits,
            self.resolve(limits.downgrade_to) if limits is not None and limits.downgrade_to else None,
            spill,
            hosted.budget_usd_per_hour,
        )

    def limits_for(self, tenant: str | None) -> Limits | None:
        return self._limits(tenant)

    def hosted(self, tenant: str | None) -> Hosted:
        tenants = self._tenants
        plan = tenants.plans.get(tenant) if tenant is not None else None
        return plan.hosted if plan is not None else tenants.default_hosted

    def provider_upstreams(self) -> list[ProviderUpstream]:
        """What Envoy needs for each provider pool (extproc.deploy renders it)."""
        return [provider_upstream(p) for p in self.policy.pools if p.kind == "provider"]

    def _limits(self, tenant: str | None) -> Limits | None:
        tenants = self._tenants
        plan = tenants.plans.get(tenant) if tenant is not None else None
        if plan is not None and plan.limits is not None:
            return plan.limits
        return tenants.default_limits


def provider_route(pool: Pool) -> ProviderRoute:
    provider = pool.provider
    assert provider is not None
    upstream = provider_upstream(pool)
    return ProviderRoute(
        name=pool.name,
        api=provider.api,
        base_path=upstream.base_path,
        api_version=provider.api_version or "",
        model_names=dict(provider.model_names),
        prices={m: Price(p.input_per_1m, p.output_per_1m) for m, p in (pool.prices or {}).items()},
        cooldown_s=provider.cooldown_s,
    )


def provider_upstream(pool: Pool) -> ProviderUpstream:
    provider = pool.provider
    assert provider is not None
    return ProviderUpstream(
        name=pool.name,
        api=provider.api,
        base_url=provider.base_url,
        key_file=provider.credential.file or "",
        key_env=provider.credential.env or "",
        ca_file=provider.ca_file or "",
        http2=provider.http2,
        connect_timeout_s=provider.connect_timeout_s,
        timeout_s=provider.timeout_s,
        max_connections=provider.max_connections,
        max_pending_requests=provider.max_pending_requests,
        max_requests=provider.max_requests,
    )


_Step = int | tuple[str, dict[str | None, tuple[int, ...]]]


def _exact_header(match: Match) -> tuple[str, str] | None:
    for name, spec in (match.headers or {}).items():
        if spec.exact is not None:
            return name, spec.exact
    return None


def _plan(rules: Sequence[Any], min_run: int = 4) -> tuple[_Step, ...]:
    """Evaluation order. A run of consecutive rules that each require an exact value of the same
    header becomes one dict lookup: only rules keyed on the request's value are checked (rules
    in the run keyed on other values cannot match), so 200 per-team rules cost one lookup."""
    steps: list[_Step] = []
    i = 0
    while i < len(rules):
        key = _exact_header(rules[i].match)
        j = i
        while (
            key is not None
            and j < len(rules)
            and (k := _exact_header(rules[j].match)) is not None
            and k[0] == key[0]
        ):
            j += 1
        if key is not None and j - i >= min_run:
            table: dict[str | None, list[int]] = {}
            for index in range(i, j):
                value = _exact_header(rules[index].match)
                assert value is not None
                table.setdefault(value[1], []).append(index)
            steps.append((key[0], {v: tuple(ix) for v, ix in table.items()}))
            i = j
        else:
            steps.append(i)
            i += 1
    return tuple(steps)


# -- loading ------------------------------------------------------------------------------------


def policy_files(path: Path) -> list[Path]:
    if path.is_dir():
        # ConfigMap mounts keep real files under ..data/; the visible names are symlinks.
        return sorted(
            p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
        )
    return [path]


def _semantic_issues(policy: Policy, where: Callable[[Sequence[Any]], tuple[str, int]]) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []

    def add(loc: Sequence[Any], message: str) -> None:
        file, line = where(loc)
        issues.append(PolicyIssue(file, line, _field_path(loc), message))

    pools = {p.name for p in policy.pools}
    served = {m for p in policy.pools for m in p.models}
    provider_pools = {p.name: p for p in policy.pools if p.kind == "provider"}
    seen: set[str] = set()
    for i, pool in enumerate(policy.pools):
        if pool.name in seen:
            add(("pools", i, "name"), f"pool {pool.name!r} is defined twice")
        seen.add(pool.name)
        if pool.kind == "self-hosted" and (pool.endpoint_pool or pool.name) in provider_pools:
            add(
                ("pools", i, "endpoint_pool"),
                f"discovered pool {pool.endpoint_pool or pool.name!r} has a provider pool's name",
            )

    def check_model(loc: Sequence[Any], ref: str, pool: str | None = None) -> None:
        if pool is not None and pool not in pools:
            add(loc, f"unknown pool {pool!r}; pools: {sorted(pools)}")
        elif policy.pools and ref not in policy.models and ref not in served:
            add(loc, f"unknown model {ref!r}; aliases: {sorted(policy.models)}, served: {sorted(served)}")

    for name, alias in policy.models.items():
        if alias.pool is not None and alias.pool not in pools:
            add(("models", name, "pool"), f"unknown pool {alias.pool!r}; pools: {sorted(pools)}")
        elif alias.pool is not None and alias.model not in next(
            p.models for p in policy.pools if p.name == alias.pool
        ):
            add(("models", name, "model"), f"pool {alias.pool!r} does not serve {alias.model!r}")
        elif alias.pool is None and policy.pools and alias.model not in served:
            add(("models", name, "model"), f"no pool serves {alias.model!r}")
    for name, chain in policy.fallbacks.items():
        for j, ref in enumerate(chain):
            check_model(("fallbacks", name, j), ref)
    # Fallback cycles: a -> b -> a through the fallbacks map.
    for start in policy.fallbacks:
        stack, visited = [start], set()
        while stack:
            node = stack.pop()
            for nxt in policy.fallbacks.get(node, []):
                if nxt == start:
                    add(("fallbacks", start), f"fallback cycle: {start} -> ... -> {node} -> {start}")
                    stack.clear()
                    break
                if nxt not in visited:
                    visited.add(nxt)
                    stack.append(nxt)

    def check_action(loc: tuple[Any, ...], action: Action) -> None:
        if action.route is not None and action.route.model is not None:
            check_model((*loc, "route"), action.route.model, action.route.pool)
        elif action.route is not None and action.route.pool is not None and action.route.pool not in pools:
            add((*loc, "route", "pool"), f"unknown pool {action.route.pool!r}; pools: {sorted(pools)}")
        for j, arm in enumerate(action.split.targets if action.split else []):
            check_model((*loc, "split", "targets", j), arm.model, arm.pool)
        if action.mirror is not None and action.mirror.pool not in pools:
            add((*loc, "mirror", "pool"), f"unknown pool {action.mirror.pool!r}; pools: {sorted(pools)}")
        elif action.mirror is not None and action.mirror.pool in provider_pools:
            add((*loc, "mirror", "pool"), "mirroring to a hosted provider is not supported (it is paid)")
        for j, ref in enumerate(action.fallback or []):
            check_model((*loc, "fallback", j), ref)

    for name, plan in policy.tenants.plans.items():
        if plan.limits is not None and plan.limits.downgrade_to:
            check_model(("tenants", "plans", name, "limits", "downgrade_to"), plan.limits.downgrade_to)
    default_limits = policy.tenants.default_limits
    if default_limits is not None and default_limits.downgrade_to:
        check_model(("tenants", "default_limits", "downgrade_to"), default_limits.downgrade_to)

    if policy.spillover is not None:
        self_hosted = {m for p in policy.pools if p.kind == "self-hosted" for m in p.models}
        for model, to in policy.spillover.targets.items():
            where_spill: tuple[Any, ...] = ("spillover", "targets", model)
            if model not in self_hosted:
                add(where_spill, f"no self-hosted pool serves {model!r}; self-hosted: {sorted(self_hosted)}")
            if to.pool is None or to.pool not in provider_pools:
                add(
                    (*where_spill, "pool"),
                    f"spill-over goes to a provider pool; providers: {sorted(provider_pools)}",
                )
            elif (to.model or model) not in provider_pools[to.pool].models:
                add(
                    (*where_spill, "model"), f"provider pool {to.pool!r} does not serve {to.model or model!r}"
                )

    names: set[str] = set()
    catch_all: str | None = None
    previous: dict[str, str] = {}
    for i, rule in enumerate(policy.rules):
        if rule.name in names:
            add(("rules", i, "name"), f"rule {rule.name!r} is defined twice")
        names.add(rule.name)
        if catch_all is not None:
            add(("rules", i), f"unreachable: rule {catch_all!r} before it matches every request")
        key = rule.match.model_dump_json(exclude_none=True)
        if key in previous and catch_all is None:
            add(("rules", i, "match"), f"unreachable: rule {previous[key]!r} has the same match")
        previous.setdefault(key, rule.name)
        if rule.match.is_empty():
            catch_all = catch_all or rule.name
        check_action(("rules", i), rule)
    check_action(("default",), policy.default)
    if policy.scheduler is not None:
        try:
            SchedulerConfig.from_dict(policy.scheduler)
        except PluginError as error:
            # The message starts with the dotted field path; the line comes from its first key.
            path, _, message = str(error).partition(": ")
            loc = tuple(int(k) if k.isdigit() else k for k in re.split(r"[.\[\]]+", path) if k)
            add(loc, message)
    return issues


def load_policy(path: str | Path) -> CompiledPolicy:
    """Load a file or a directory of files. Raises PolicyError listing every problem found."""
    root = Path(path)
    if not root.exists():
        raise PolicyError([PolicyIssue(str(root), 0, "", "no such file or directory")])
    files = policy_files(root)
    if not files:
        raise PolicyError([PolicyIssue(str(root), 0, "", "no .yaml policy files in this directory")])
    raw, origins, issues = _load_documents(files)
    if issues:
        raise PolicyError(issues)
    for key in ("pools", "rules", "models", "fallbacks"):
        if not raw[key]:
            raw.pop(key)
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as error:
        found = []
        for item in error.errors():
            loc = [
                p for p in item["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-")))
            ]
            file, line = origins.where(loc)
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "missing":
                message = "required field is missing"
            elif item["type"] == "extra_forbidden":
                message = "unknown field"
            found.append(PolicyIssue(file or str(files[0]), line, _field_path(loc), message))
        raise PolicyError(found) from None
    semantic = _semantic_issues(policy, origins.where)
    if semantic:
        raise PolicyError(semantic)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:12]
    return CompiledPolicy(policy, digest, str(root))
