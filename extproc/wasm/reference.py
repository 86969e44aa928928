"""The Wasm filter's pick, in Python: an EndpointPicker over a frozen routing snapshot.

wasm/assembly/decide.ts orders a candidate set by prepared score + the load scorer's request
part (the predicted wait from the prompt's size and fresh in-flight counts, scaled as the
scheduler scales it) - in-flight weight * in-flight + an affinity bonus (rendezvous hashing of
the session key; for a prompt, the prefix scorer's: each endpoint's share of the prompt's
leading blocks it was last chosen for).
Plugged into the ext_proc path's Router, this picker makes that path decide exactly as the
filter does from the same snapshot: the parity harness (tests/wasm/test_parity.py) runs both
and requires identical endpoint lists, headers, bodies and statuses.
"""

from __future__ import annotations

import zlib
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


# Block hashes remembered per generation (wasm/assembly/decide.ts): two generations, so a
# VM's memory stays bounded without an LRU's per-request bookkeeping.
PREFIX_OWNERS_MAX = 32768


class PrefixOwners:
    """The filter's prefix ownership (decide.ts), as the scheduler's prefix scorer keeps it
    (extproc/scheduler/scorers/prefix.py): chained CRC-32 of each leading block of the prompt
    -> the endpoint last chosen for a prompt with that block, learned from the filter's own
    picks. Bounded in two generations: when the recent one is full it becomes the older one
    (the one before is dropped), and a lookup tries the recent one first."""

    def __init__(self) -> None:
        self.recent: dict[int, str] = {}
        self.older: dict[int, str] = {}

    def owner(self, block: int) -> str | None:
        found = self.recent.get(block)
        return found if found is not None else self.older.get(block)

    def bonuses(self, addresses: list[str], blocks: list[int], weight: int) -> list[int]:
        """Each candidate's bonus: weight x (leading blocks it holds) / blocks, in millionths
        (the prefix scorer's value, which normalising leaves as it is), 0 for the others."""
        depth: dict[str, int] = {}
        for at, block in enumerate(blocks, start=1):
            owner = self.owner(block)
            if owner is None:
                break
            depth[owner] = at
        return [weight * depth.get(address, 0) // len(blocks) if blocks else 0 for address in addresses]

    def chose(self, blocks: list[int], address: str) -> None:
        for block in blocks:
            if self.recent.get(block) == address:
                continue
            if len(self.recent) >= PREFIX_OWNERS_MAX:
                self.older, self.recent = self.recent, {}
            self.recent[block] = address


def prefix_limit(snapshot: dict[str, Any]) -> int:
    """The prompt's leading bytes the prefix blocks cover."""
    return int(snapshot["prefix_block_bytes"]) * int(snapshot["prefix_max_blocks"])


def prompt_blocks(snapshot: dict[str, Any], prefix: bytes) -> list[int]:
    """The prefix scorer's block hashes of a prompt's leading bytes."""
    block = int(snapshot["prefix_block_bytes"])
    hashes: list[int] = []
    running = 0
    for start in range(0, len(prefix) - block + 1, block):
        running = zlib.crc32(prefix[start : start + block], running)
        hashes.append(running)
    return hashes


def affinity_key(
    snapshot: dict[str, Any], session_key: str | None, prompt_text: str
) -> tuple[bytes | None, int, bool]:
    """The key the affinity bonus hashes, the bonus, and whether the key is a prompt's prefix:
    the session's, else the prompt's leading bytes (as many as its blocks cover)."""
    if session_key:
        return session_key.encode("utf-8", "surrogatepass"), int(snapshot["session_weight"]), False
    prefix = prompt_text.encode("utf-8", "surrogatepass")[: prefix_limit(snapshot)]
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
    totals_out: list[int] | None = None,
) -> list[str]:
    """Candidate addresses best first, at most endpoints_per_request (ties: snapshot order);
    ``totals_out`` gets the chosen ones' totals (millionths), as the filter's records carry them.
    With ``prefix_owners``, ``key`` is a prompt's leading bytes: each candidate gets its share
    of the bonus for the leading blocks it holds, and the first choice then holds them all;
    otherwise ``key`` is a session's (rendezvous hashing, the whole bonus to one endpoint)."""
    addresses = [str(entry[0]) for entry in endpoints]
    own = [inflight(address) for address in addresses]
    factor = int(snapshot["affinity_load_factor_pct"])
    bonuses = [0] * len(addresses)
    blocks: list[int] = []
    if key is not None and prefix_owners is not None:
        blocks = prompt_blocks(snapshot, key)
        bonuses = prefix_owners.bonuses(addresses, blocks, bonus)
    elif key is not None:
        favourite = preferred(addresses, key, own, factor)
        if favourite >= 0:
            bonuses[favourite] = bonus
    weight = int(snapshot["inflight_weight"])
    load = load_scores(endpoints, prompt_tokens, own, int(snapshot.get("load_weight", 0)))
    totals = [int(entry[1]) + load[i] - weight * own[i] + bonuses[i] for i, entry in enumerate(endpoints)]
    ranked = sorted(range(len(addresses)), key=lambda i: (-totals[i], i))
    chosen = [addresses[i] for i in ranked[: int(snapshot["endpoints_per_request"])]]
    if totals_out is not None:
        totals_out.extend(totals[i] for i in ranked[: len(chosen)])
    if blocks and prefix_owners is not None and chosen:
        prefix_owners.chose(blocks, chosen[0])
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
        totals: list[int] = []
        chosen = order(self.snapshot, endpoints, key, bonus, own, ctx.prompt_tokens, owners, totals)[:count]
        if ctx.want_scores:
            # The decision log's scores as the filter reports them (extproc/wasm/records.py).
            ctx.scores = [round(total / 1e6, 4) for total in totals[: len(chosen)]]
        return [snapshot.index[address] for address in chosen]
