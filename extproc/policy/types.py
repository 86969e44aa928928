"""The policy's inputs and outputs: what the request path hands a policy and gets back.

Shared by the compiler, the router and the CLI, so none of them needs the other's internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extproc.policy.schema import Cache, Limits


@dataclass(frozen=True, slots=True)
class PolicyInput:
    path: str
    method: str
    headers: Mapping[str, str]
    model: str
    stream: bool
    task: str
    complexity: float = 0.0
    strong_gain: float = 0.0
    prompt_tokens: int = 0
    max_tokens: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    pool: str  # discovered pool name ("" = any pool serving the model)
    model: str  # served model name


@dataclass(frozen=True, slots=True)
class Spill:
    """Where the request overflows when every self-hosted endpoint would miss its TTFT objective."""

    target: Target  # a provider pool's model
    ttft_objective_s: float
    queue_s_per_request: float


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    rule: str
    tenant: str | None
    tier: str
    priority: int
    targets: tuple[Target, ...]
    headers: tuple[tuple[str, str], ...]
    reject: tuple[int, str] | None = None
    mirror: Target | None = None
    cache: Cache | None = None  # the matched rule's response-cache settings (else the default's)
    limits: Limits | None = None  # the tenant's plan limits (else tenants.default_limits)
    downgrade: Target | None = None  # limits.downgrade_to, resolved
    spill: Spill | None = None  # only when the tenant's plan allows spill-over
    hosted_budget_usd_per_hour: float | None = None  # the tenant's spend limit on providers
