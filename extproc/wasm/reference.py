"""The Wasm filter's pick, in Python: an EndpointPicker over a frozen routing snapshot.

wasm/assembly/decide.ts orders a candidate set by prepared score + the load scorer's request
part (the predicted wait from the prompt's size and fresh in-flight counts, scaled as the
scheduler scales it) - in-flight weight * in-flight + an affinity bonus (rendezvous hashing of
the session key; for a prompt, the endpoint last chosen for the same first bytes).
Plugged into the ext_proc path's Router, this picker makes that path decide exactly as the
filter does from the same snapshot: the parity harness (tests/wasm/test_parity.py) runs both
and requires identical endpoint lists, headers, bodies and statuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from extproc.fleet.state import FleetSnapshot, IntArray
from extproc.policy.types import Target
from extproc.scheduler.picking import PickContext

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619


def fnv1a(data: bytes, seed: int = FNV_OFFSET) -> int:
    hashed = seed
    for byte in data:
        hashed = ((hashed ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return hashed


AFFINITY_TRIES = 8  # as wasm/assembly/decide.ts
# The scheduler's MIN_SPAN (one typical TTFT) in the snapshot's load units (billionths).
LOAD_MIN_SPAN = 1_000_000_000
# Predictions are capped here (a million typical TTFTs) so the filter's i64 arithmetic cannot
# overflow; beyond it every endpoint is as bad as the next.
LOAD_CAP = 10**15


def load_scores(endpoints: list[list[Any]], prompt_tokens: int, busy: list[int], weight: int) -> list[int]:
    """The load scorer's weighted, normalised score per candidate, in millionths (0 for rows the
    snapshot gives no load terms: the last-resort fill).

    Predicted wait = prompt x per-token + one step + queued x per-queued, queued = max(scraped
    waiting, in flight - scraped running) (extproc.scheduler.scorers.load); then min-max scaled
    over the candidates with a span of at least one typical TTFT, times the weight."""
    prompt = max(1, prompt_tokens)
    predicted: dict[int, int] = {}
    for i, entry in enumerate(endpoints):
        if len(entry) < 7:
            continue
        per_token, step, per_queued, waiting, running = (int(v) for v in entry[2:7])
        queued = max(waiting, busy[i] - running)
        predicted[i] = min(prompt * per_token + step + queued * per_queued, LOAD_CAP)
    out = [0] * len(endpoints)
    if not predicted or weight == 0:
        return out
    best, worst = min(predicted.values()), max(predicted.values())
    span = worst - best
    if span == 0:
        return out  # no preference: the scheduler adds nothing either
    per_thousandth = max(span, LOAD_MIN_SPAN) // 1000  # i64-safe: predictions are at most 1e15
    for i, value in predicted.items():
        scaled = min((worst - value) * 1000 // per_thousandth, 1_000_000)  # the fastest: 1e6
        out[i] = scaled * weight // 1_000_000
    return out


def preferred(addresses: list[str], key: bytes, own: list[int], load_factor_pct: int) -> int:
    """Bounded-load rendezvous hashing over FNV-1a(key \\0 address): the highest-ranked of the
    first AFFINITY_TRIES candidates whose in-flight is at most factor x average + 1; -1 if none."""
    seed = fnv1a(key + b"\0")
    hashes = [fnv1a(address.encode(), seed) for address in addresses]
    ranked = sorted(range(len(addresses)), key=lambda i: (-hashes[i], i))
    total, n = sum(own), len(addresses)
    for index in ranked[:AFFINITY_TRIES]:
        if own[index] * 100 * n <= load_factor_pct * total + 100 * n:
            return index
    return -1


PREFIX_OWNERS_MAX = 4096  # as wasm/assembly/decide.ts


class PrefixOwners:
    """The filter's prefix ownership (decide.ts, prefixOwners): FNV-1a of a prompt's first
    prefix_bytes -> the endpoint last chosen for it, as the scheduler's prefix scorer learns it
    from its own picks; cleared when full. Only the owner gets the prefix bonus."""

    def __init__(self) -> None:
        self.owners: dict[int, str] = {}

    def favourite(self, addresses: list[str], key: bytes, own: list[int], load_factor_pct: int) -> int:
        """The owner's index if it is a candidate under the affinity load bound, else -1."""
        owner = self.owners.get(fnv1a(key))
        if owner is None or owner not in addresses:
            return -1
        index = addresses.index(owner)
        total, n = sum(own), len(addresses)
        return index if own[index] * 100 * n <= load_factor_pct * total + 100 * n else -1

    def chose(self, key: bytes, address: str) -> None:
        hashed = fnv1a(key)
        if len(self.owners) >= PREFIX_OWNERS_MAX and hashed not in self.owners:
            self.owners.clear()
        self.owners[hashed] = address


def affinity_key(
    snapshot: dict[str, Any], session_key: str | None, prompt_text: str
) -> tuple[bytes | None, int, bool]:
    """The key the affinity bonus hashes, the bonus, and whether the key is a prompt's prefix:
    the session's, else the prompt's."""
    if session_key:
        return session_key.encode("utf-8", "surrogatepass"), int(snapshot["session_weight"]), False
    prefix = prompt_text.encode("utf-8", "surrogatepass")[: int(snapshot["prefix_bytes"])]
    if prefix:
        return prefix, int(snapshot["prefix_weight"]), True
    return None, 0, False


def order(
    snapshot: dict[str, Any],
    endpoints: list[list[Any]],
    key: bytes | None,
    bonus: int,
    inflight: Callable[[str], int],
    prompt_tokens: int = 0,
    prefix_owners: PrefixOwners | None = None,
) -> list[str]:
    """Candidate addresses best first, at most endpoints_per_request (ties: snapshot order).
    With ``prefix_owners``, ``key`` is a prompt's prefix: the bonus goes to its owner, and the
    first choice becomes the owner; otherwise ``key`` is a session's (rendezvous hashing)."""
    addresses = [str(entry[0]) for entry in endpoints]
    own = [inflight(address) for address in addresses]
    factor = int(snapshot["affinity_load_factor_pct"])
    if key is None:
        favourite = -1
    elif prefix_owners is not None:
        favourite = prefix_owners.favourite(addresses, key, own, factor)
    else:
        favourite = preferred(addresses, key, own, factor)
    weight = int(snapshot["inflight_weight"])
    load = load_scores(endpoints, prompt_tokens, own, int(snapshot.get("load_weight", 0)))
    totals = [
        int(entry[1]) + load[i] - weight * own[i] + (bonus if i == favourite else 0)
        for i, entry in enumerate(endpoints)
    ]
    ranked = sorted(range(len(addresses)), key=lambda i: (-totals[i], i))
    chosen = [addresses[i] for i in ranked[: int(snapshot["endpoints_per_request"])]]
    if key is not None and prefix_owners is not None and chosen:
        prefix_owners.chose(key, chosen[0])
    return chosen


class SnapshotPicker:
    """EndpointPicker deciding from a frozen Wasm snapshot instead of live scheduler state."""

    def __init__(
        self,
        snapshot: dict[str, Any],
        fleet: FleetSnapshot,
        candidates: Callable[[FleetSnapshot, Target], IntArray],
        prefix_owners: PrefixOwners | None = None,
    ) -> None:
        """``prefix_owners``: the ownership the filter's VM has learned so far (it outlives
        snapshots); a fresh one by default."""
        self.snapshot = snapshot
        self.prefix_owners = prefix_owners if prefix_owners is not None else PrefixOwners()
        # The Router hands over rows (model and pool already resolved): index entries by them.
        self._entries: dict[tuple[str, tuple[int, ...]], list[list[Any]]] = {}
        for name, entry in snapshot["candidates"].items():
            model, _, pool = name.partition("|")
            rows = candidates(fleet, Target(pool=pool, model=model))
            self._entries[(model, tuple(sorted(int(r) for r in rows)))] = entry["endpoints"]

    def pick(
        self,
        snapshot: FleetSnapshot,
        candidates: IntArray,
        inflight: npt.NDArray[np.int64],
        ctx: PickContext,
        count: int,
    ) -> list[int]:
        endpoints = self._entries.get((ctx.model, tuple(sorted(int(r) for r in candidates))))
        if not endpoints:
            return []
        key, bonus, is_prefix = affinity_key(self.snapshot, ctx.session_key, ctx.prompt_text)

        def own(address: str) -> int:
            row = snapshot.index.get(address)
            return int(inflight[row]) if row is not None else 0

        owners = self.prefix_owners if is_prefix else None
        chosen = order(self.snapshot, endpoints, key, bonus, own, ctx.prompt_tokens, owners)[:count]
        if ctx.want_scores:
            scores = {str(entry[0]): float(entry[1]) for entry in endpoints}
            ctx.scores = [scores[a] / 1e6 for a in chosen]
        return [snapshot.index[address] for address in chosen]
