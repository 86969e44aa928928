"""The Python reference of the filter's pick (extproc.wasm.reference): hashing, bounded-load
affinity and ordering, which the parity harness holds the AssemblyScript code to."""

from __future__ import annotations

from typing import Any

from extproc.wasm.reference import affinity_key, fnv1a, order, preferred


def test_fnv1a_matches_the_published_test_vectors() -> None:
    assert fnv1a(b"") == 0x811C9DC5
    assert fnv1a(b"a") == 0xE40C292C
    assert fnv1a(b"foobar") == 0xBF9CF968


def test_affinity_leaves_an_endpoint_over_the_load_bound() -> None:
    addresses = [f"10.0.0.{i}:8000" for i in range(4)]
    home = preferred(addresses, b"user-1", [0, 0, 0, 0], 125)
    assert home >= 0
    assert preferred(addresses, b"user-1", [0, 0, 0, 0], 125) == home  # stable
    loaded = [0, 0, 0, 0]
    loaded[home] = 5  # bound: 1.25 x 5/4 + 1 = 2.56
    moved = preferred(addresses, b"user-1", loaded, 125)
    assert moved not in (home, -1)


def snapshot(**overrides: Any) -> dict[str, Any]:
    return {
        "endpoints_per_request": 2,
        "inflight_weight": 1_000_000,
        "session_weight": 1_000_000,
        "prefix_weight": 2_000_000,
        "prefix_bytes": 4,
        "affinity_load_factor_pct": 125,
        **overrides,
    }


def test_order_is_score_minus_in_flight_plus_bonus_ties_in_snapshot_order() -> None:
    endpoints = [["a:1", 2_000_000], ["b:1", 2_000_000], ["c:1", 500_000]]
    assert order(snapshot(), endpoints, None, 0, lambda a: 0) == ["a:1", "b:1"]
    assert order(snapshot(), endpoints, None, 0, lambda a: 1 if a == "a:1" else 0) == ["b:1", "a:1"]
    key, bonus = affinity_key(snapshot(), None, "hello world")
    assert (key, bonus) == (b"hell", 2_000_000)
    favourite = preferred(["a:1", "b:1", "c:1"], b"hell", [0, 0, 0], 125)
    assert order(snapshot(), endpoints, key, bonus, lambda a: 0)[0] == ["a:1", "b:1", "c:1"][favourite]
    assert affinity_key(snapshot(), "user-9", "hello") == (b"user-9", 1_000_000)
