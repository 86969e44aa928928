"""The policy file schema (pydantic v2). `llm-extproc schema` prints it as JSON Schema.

A policy says which pools exist, which model names clients may ask for (aliases), how tenants
map to tiers, and an ordered list of rules (first match wins) ending in an explicit default.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

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
    usd_per_hour: float | None = Field(
        default=None, gt=0, description="spend on every priced pool (token usage x prices), per hour"
    )
    per_model: bool = False
    over_limit: Literal["reject", "downgrade"] = "reject"
    downgrade_to: str | None = Field(
        default=None, description="model (alias or served) when over_limit: downgrade"
    )

    @model_validator(mode="after")
    def _coherent(self) -> Limits:
        if all(
            v is None
            for v in (self.requests_per_minute, self.tokens_per_minute, self.concurrency, self.usd_per_hour)
        ):
            raise ValueError(
                "give at least one of requests_per_minute, tokens_per_minute, concurrency, usd_per_hour"
            )
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


class Price(Strict):
    """US dollars per 1M tokens."""

    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)


class Credential(Strict):
    """Where Envoy reads a provider's API key: a file (e.g. a mounted Kubernetes Secret, re-read
    when it changes) or an environment variable of the Envoy process. Never the key itself."""

    file: str | None = None
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one(self) -> Credential:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of file, env")
        return self


class Provider(Strict):
    """A hosted API (OpenAI, Azure OpenAI or any OpenAI-compatible one) as a pool."""

    base_url: str = Field(description="https://host[:port][/path], e.g. https://api.openai.com/v1")
    api: Literal["openai", "azure-openai"] = "openai"
    api_version: str | None = Field(default=None, description="azure-openai: the api-version query")
    model_names: dict[str, str] = Field(
        default_factory=dict, description="our model name -> the provider's (azure-openai: deployment)"
    )
    credential: Credential
    ca_file: str | None = Field(default=None, description="CA bundle to verify it; default: the system's")
    http2: bool = True
    connect_timeout_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=300.0, gt=0)
    max_connections: int = Field(default=1024, gt=0)
    max_pending_requests: int = Field(default=1024, gt=0)
    max_requests: int = Field(default=1024, gt=0)
    cooldown_s: float = Field(
        default=5.0, gt=0, description="left alone this long after a failure without retry-after"
    )

    @field_validator("base_url")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"base_url must be https://host[:port][/path], got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("base_url takes no query or fragment")
        return value

    @model_validator(mode="after")
    def _azure(self) -> Provider:
        if self.api == "azure-openai" and not self.api_version:
            raise ValueError("api: azure-openai needs api_version (e.g. 2024-10-21)")
        return self


class Pool(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["self-hosted", "provider"] = "self-hosted"
    endpoint_pool: str | None = Field(default=None, description="discovered pool name; default: name")
    models: list[str] = Field(min_length=1)
    gpu_weights: dict[str, float] | None = None
    envoy_cluster: str | None = Field(default=None, description="Envoy cluster, for mirroring to this pool")
    provider: Provider | None = Field(default=None, description="kind: provider only")
    prices: dict[str, Price] | None = Field(
        default=None, description="per model; provider pools must price every model"
    )

    @model_validator(mode="after")
    def _kind(self) -> Pool:
        if self.kind == "provider":
            if self.provider is None:
                raise ValueError("kind: provider needs a provider: section (base_url, credential, ...)")
            extra = [k for k in ("endpoint_pool", "gpu_weights", "envoy_cluster") if getattr(self, k)]
            if extra:
                raise ValueError(f"a provider pool has no discovered endpoints: drop {', '.join(extra)}")
            unpriced = [m for m in self.models if m not in (self.prices or {})]
            if unpriced:
                raise ValueError(f"a provider pool must price every model; no prices for {unpriced}")
            unknown = sorted(set(self.provider.model_names) - set(self.models))
            if unknown:
                raise ValueError(f"provider.model_names names models the pool does not list: {unknown}")
        elif self.provider is not None:
            raise ValueError("a provider: section needs kind: provider")
        unknown_prices = sorted(set(self.prices or {}) - set(self.models))
        if unknown_prices:
            raise ValueError(f"prices for models the pool does not list: {unknown_prices}")
        return self


class Alias(Strict):
    model: str
    pool: str | None = None


class Hosted(Strict):
    """A tenant's use of hosted providers."""

    spillover: bool = Field(default=False, description="may overflow to a provider when the fleet is full")
    budget_usd_per_hour: float | None = Field(
        default=None, gt=0, description="spend on providers, refilled continuously; over it: self-hosted only"
    )


class Plan(Strict):
    tier: Priority = "standard"
    allow_upgrade: bool = False
    limits: Limits | None = None
    hosted: Hosted = Field(default_factory=Hosted)


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
    default_hosted: Hosted = Field(default_factory=Hosted, description="hosted use of tenants without a plan")


class Spillover(Strict):
    """Send a request to a provider when every self-hosted endpoint of its model is predicted to
    miss the TTFT objective (docs/providers.md)."""

    ttft_objective_s: float = Field(gt=0)
    queue_s_per_request: float = Field(
        default=0.05, gt=0, description="wait per request queued ahead: mean duration / batch size"
    )
    targets: dict[str, RouteTo] = Field(
        min_length=1, description="self-hosted model -> where it overflows (a provider pool's model)"
    )


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
    spillover: Spillover | None = None
