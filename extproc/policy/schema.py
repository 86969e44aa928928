"""The policy file schema (pydantic v2). `llm-extproc schema` prints it as JSON Schema.

A policy says which pools exist, which model names clients may ask for (aliases), how tenants
map to tiers, and an ordered list of rules (first match wins) ending in an explicit default.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from extproc.headers import DEFAULT_SESSION_HEADER, DEFAULT_TENANT_HEADER

Priority = Literal["premium", "standard", "batch"]
# The API a request speaks: extproc.request.Task's values (tests/policy checks they agree).
Task = Literal[
    "chat",
    "completion",
    "embedding",
    "responses",
    "messages",
    "count_tokens",
    "rerank",
    "score",
    "tokenize",
    "detokenize",
    "transcription",
    "translation",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StringMatch(Strict):
    """Exactly one of exact / prefix / regex / present."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> StringMatch:
        given = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of exact, prefix, regex, present; got {given or 'none'}")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        return self


class Range(Strict):
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _some(self) -> Range:
        if all(v is None for v in (self.gt, self.gte, self.lt, self.lte)):
            raise ValueError("give at least one of gt, gte, lt, lte")
        return self


class Match(Strict):
    """All given conditions must hold (AND); any_of holds if one of its matches does (OR)."""

    path: StringMatch | None = None
    method: list[str] | None = None
    headers: dict[str, StringMatch] | None = None
    tenant: list[str] | None = None
    tier: list[str] | None = None
    model: list[str] | None = None
    model_regex: str | None = None
    stream: bool | None = None
    task: list[Task] | None = None
    complexity: Range | None = None
    strong_gain: Range | None = None
    prompt_tokens: Range | None = None
    max_tokens: Range | None = None
    any_of: list[Match] | None = None

    @field_validator("headers")
    @classmethod
    def _lower(cls, value: dict[str, StringMatch] | None) -> dict[str, StringMatch] | None:
        return None if value is None else {k.lower(): v for k, v in value.items()}

    @field_validator("model_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex {value!r} does not compile: {exc}") from None
        return value

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)


class RouteTo(Strict):
    """A model name (alias or served model) and optionally a pool; omitted model = as requested."""

    model: str | None = None
    pool: str | None = None


class SplitArm(Strict):
    model: str
    pool: str | None = None
    weight: int = Field(ge=0, le=100)


class Split(Strict):
    key: str | None = Field(
        default=DEFAULT_SESSION_HEADER, description="header whose value keeps a user on one arm"
    )
    targets: list[SplitArm] = Field(min_length=2)

    @model_validator(mode="after")
    def _sum(self) -> Split:
        total = sum(arm.weight for arm in self.targets)
        if total != 100:
            raise ValueError(f"weights must sum to 100, got {total}")
        return self


class Mirror(Strict):
    pool: str
    percent: float = Field(gt=0, le=100)


class Retries(Strict):
    count: int = Field(ge=0, le=10)
    per_try_timeout_s: float | None = Field(default=None, gt=0)
    retry_on: str = "gateway-error,connect-failure,retriable-4xx"

    @field_validator("retry_on")
    @classmethod
    def _no_plain_5xx(cls, value: str) -> str:
        conditions = [c.strip() for c in value.split(",") if c.strip()]
        if "5xx" in conditions:
            raise ValueError(
                "retry_on must not contain 5xx: a model that failed after it started generating "
                "would be asked again; use gateway-error,connect-failure,retriable-4xx"
            )
        return ",".join(conditions)


class Reject(Strict):
    status: int = Field(ge=400, le=599)
    message: str


class Cache(Strict):
    """Answer repeated identical requests from the response cache (per tenant, never across)."""

    enabled: bool = True
    ttl_s: float = Field(default=300.0, gt=0)
    max_entry_bytes: int = Field(default=256 * 1024, gt=0)
    # By default only deterministic-enough requests are cached: temperature 0 or a seed.
    cache_nondeterministic: bool = False
    # When every model of the fallback chain is down or shedding, serve a cached answer even
    # past its TTL (up to stale_ttl_s) instead of an error.
    serve_stale_on_failure: bool = True
    stale_ttl_s: float = Field(default=3600.0, ge=0)


class Limits(Strict):
    """Per tenant (or tenant + model) budgets; over a limit: 429 + retry-after, or downgrade."""

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    per_model: bool = False
    over_limit: Literal["reject", "downgrade"] = "reject"
    downgrade_to: str | None = Field(
        default=None, description="model (alias or served) when over_limit: downgrade"
    )

    @model_validator(mode="after")
    def _coherent(self) -> Limits:
        if self.requests_per_minute is None and self.tokens_per_minute is None and self.concurrency is None:
            raise ValueError("give at least one of requests_per_minute, tokens_per_minute, concurrency")
        if self.over_limit == "downgrade" and not self.downgrade_to:
            raise ValueError("over_limit: downgrade needs downgrade_to (a cheaper model)")
        return self


class Action(Strict):
    route: RouteTo | None = None
    split: Split | None = None
    mirror: Mirror | None = None
    fallback: list[str] | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    retries: Retries | None = None
    priority: Priority | None = None
    reject: Reject | None = None
    cache: Cache | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Action:
        if self.route is not None and self.split is not None:
            raise ValueError("give route or split, not both")
        return self


class Rule(Action):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    match: Match = Field(default_factory=Match)


class Pool(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    endpoint_pool: str | None = Field(default=None, description="discovered pool name; default: name")
    models: list[str] = Field(min_length=1)
    gpu_weights: dict[str, float] | None = None
    envoy_cluster: str | None = Field(default=None, description="Envoy cluster, for mirroring to this pool")


class Alias(Strict):
    model: str
    pool: str | None = None


class Plan(Strict):
    tier: Priority = "standard"
    allow_upgrade: bool = False
    limits: Limits | None = None


class Tenants(Strict):
    header: str = DEFAULT_TENANT_HEADER
    claim: str | None = Field(
        default=None, description="JWT claim in jwt_authn metadata, preferred over header"
    )
    default_tier: Priority = "standard"
    upgrade_threshold: float = Field(default=0.7, ge=0, le=1)
    upgrade_signal: Literal["complexity", "strong_gain"] = Field(
        default="complexity", description="the score compared with upgrade_threshold"
    )
    plans: dict[str, Plan] = Field(default_factory=dict)
    default_limits: Limits | None = Field(default=None, description="limits of tenants without a plan")


class Policy(Strict):
    version: int = 1
    tenants: Tenants = Field(default_factory=Tenants)
    pools: list[Pool] = Field(default_factory=list)
    models: dict[str, Alias] = Field(default_factory=dict, description="aliases clients may request")
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    default: Action
    scheduler: dict[str, Any] | None = Field(
        default=None, description="scheduler plugins, weights and parameters (docs/scheduler.md)"
    )
