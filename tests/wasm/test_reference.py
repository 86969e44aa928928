"""The Python reference of the filter's pick (extproc.wasm.reference): hashing, bounded-load
affinity and ordering, which the parity harness holds the AssemblyScript code to."""

from __future__ import annotations

from typing import Any

from extproc.scheduler.scorers.prefix import block_hashes
from extproc.wasm.reference import (
    PREFIX_OWNERS_MAX,
    PrefixOwners,
    affinity_key,
    fnv1a,
    load_scores,
    order,
    preferred,
    prompt_blocks,
)


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
        "prefix_block_bytes": 4,
        "prefix_max_blocks": 3,
        "affinity_load_factor_pct": 125,
        **overrides,
    }


def test_order_is_score_minus_in_flight_plus_bonus_ties_in_snapshot_order() -> None:
    endpoints = [["a:1", 2_000_000], ["b:1", 2_000_000], ["c:1", 500_000]]
    assert order(snapshot(), endpoints, None, 0, lambda a: 0) == ["a:1", "b:1"]
    assert order(snapshot(), endpoints, None, 0, lambda a: 1 if a == "a:1" else 0) == ["b:1", "a:1"]
    totals: list[int] = []  # what the filter's records report as the decision log's scores
    order(snapshot(), endpoints, None, 0, lambda a: 1 if a == "a:1" else 0, 0, None, totals)
    assert totals == [2_000_000, 1_000_000]  # b; a minus one in flight
    key, bonus, is_prefix = affinity_key(snapshot(), None, "hello world")
    assert (key, bonus, is_prefix) == (b"hello world"[:12], 2_000_000, True)
    session, session_bonus, _ = affinity_key(snapshot(), "user-9", "hello")
    assert (session, session_bonus) == (b"user-9", 1_000_000)
    favourite = preferred(["a:1", "b:1", "c:1"], session, [0, 0, 0], 125)
    assert (
        order(snapshot(), endpoints, session, session_bonus, lambda a: 0)[0]
        == ["a:1", "b:1", "c:1"][favourite]
    )
    assert affinity_key(snapshot(), "user-9", "hello")[2] is False


def test_prompt_blocks_are_the_prefix_scorers() -> None:
    text = "naïve 漢字 " * 40
    key, _, _ = affinity_key(snapshot(prefix_block_bytes=64, prefix_max_blocks=5), None, text)
    assert key is not None and len(key) == 320
    hashes = prompt_blocks(snapshot(prefix_block_bytes=64, prefix_max_blocks=5), key)
    assert hashes == block_hashes(text, 64, 5) and len(hashes) == 5
    # A prompt shorter than one block has none (no prefix bonus, nothing learned).
    assert prompt_blocks(snapshot(), b"abc") == []


def test_prefix_bonus_is_each_endpoints_share_of_the_leading_blocks_it_holds() -> None:
    # c is the worst by score: it wins only by holding the prompt's blocks.
    endpoints = [["a:1", 2_000_000], ["b:1", 1_900_000], ["c:1", 100_000]]
    owners = PrefixOwners()
    first, bonus, _ = affinity_key(snapshot(), None, "aaaabbbbcccc")
    # Never seen: no bonus, the scores decide, and the first choice then holds every block.
    assert order(snapshot(), endpoints, first, bonus, lambda a: 0, 0, owners) == ["a:1", "b:1"]
    assert set(owners.recent.values()) == {"a:1"} and len(owners.recent) == 3
    # Two of three leading blocks shared: a gets 2/3 of the bonus, b none.
    second = affinity_key(snapshot(), None, "aaaabbbbdddd")[0]
    assert second is not None
    assert owners.bonuses(["a:1", "b:1", "c:1"], prompt_blocks(snapshot(), second), bonus) == [
        1_333_333,
        0,
        0,
    ]
    # A conversation c served holds all its blocks: its next turn goes back to c.
    owners.chose(prompt_blocks(snapshot(), second), "c:1")
    bonuses = owners.bonuses(["a:1", "b:1", "c:1"], prompt_blocks(snapshot(), second), bonus)
    assert bonuses == [0, 0, 2_000_000]
    assert order(snapshot(), endpoints, second, bonus, lambda a: 0, 0, owners)[0] == "c:1"
    # c now holds the first prompt's first two blocks too, but a still holds its third, whose
    # chained hash covers the first two: a has that whole prompt cached (the full bonus).
    assert owners.bonuses(["a:1", "b:1", "c:1"], prompt_blocks(snapshot(), first), bonus) == [
        2_000_000,
        0,
        1_333_333,
    ]
    # Busy endpoints lose it the scheduler's way: in-flight weight against the bonus.
    busy_c = {"c:1": 3}
    assert order(snapshot(), endpoints, second, bonus, lambda a: busy_c.get(a, 0), 0, owners)[0] == "a:1"


def test_prefix_owners_are_bounded_in_two_generations() -> None:
    owners = PrefixOwners()
    owners.chose(list(range(PREFIX_OWNERS_MAX)), "a:1")
    assert len(owners.recent) == PREFIX_OWNERS_MAX and not owners.older
    owners.chose([0], "a:1")  # unchanged: nothing moves
    owners.chose([0], "b:1")  # a known block's new owner, but the table is full: a new generation
    assert owners.recent == {0: "b:1"} and len(owners.older) == PREFIX_OWNERS_MAX
    assert owners.owner(1) == "a:1" and owners.owner(0) == "b:1"
    owners.chose(list(range(10**6, 10**6 + PREFIX_OWNERS_MAX)), "c:1")
    assert owners.owner(1) is None  # two generations on: forgotten


def loaded(address: str, score: int, waiting: int, running: int, per_token: int = 1_000_000) -> list[Any]:
    # One prompt token costs a thousandth of a typical TTFT, a step a tenth, a queued request one.
    return [address, score, per_token, 100_000_000, 1_000_000_000, waiting, running]


def test_load_score_prefers_the_shorter_predicted_wait_scaled_like_the_scheduler() -> None:
    endpoints = [loaded("a:1", 0, waiting=4, running=2), loaded("b:1", 0, waiting=0, running=2)]
    # a waits 4 typical TTFTs longer: scaled over the span, b gets the whole weight.
    assert load_scores(endpoints, 100, [0, 0], 3_000_000) == [0, 3_000_000]
    # Half a TTFT apart is less than the one-TTFT minimum span: half the weight.
    half = [loaded("a:1", 0, 0, 0, per_token=6_000_000), loaded("b:1", 0, 0, 0)]
    assert load_scores(half, 100, [0, 0], 3_000_000) == [0, 1_500_000]
    # No difference, no preference; no load terms (the last-resort fill), nothing.
    assert load_scores([loaded("a:1", 0, 1, 0), loaded("b:1", 0, 1, 0)], 5, [0, 0], 3_000_000) == [0, 0]
    assert load_scores([["a:1", 0], ["b:1", 0]], 5, [3, 0], 3_000_000) == [0, 0]


def test_fresh_in_flight_beyond_the_scraped_running_counts_as_queued() -> None:
    endpoints = [loaded("a:1", 0, waiting=0, running=2), loaded("b:1", 0, waiting=0, running=0)]
    # Two in flight at a are the two it runs: no queue; at b, two sent since the scrape queue.
    assert load_scores(endpoints, 10, [2, 2], 1_000_000) == [1_000_000, 0]
    idle = order(snapshot(load_weight=3_000_000, inflight_weight=0), endpoints, None, 0, lambda a: 0)
    assert idle == ["a:1", "b:1"]  # equal predictions: snapshot order
    busy_b = order(
        snapshot(load_weight=3_000_000, inflight_weight=0),
        [loaded("a:1", 0, 0, 0), loaded("b:1", 1_000_000, 0, 0)],
        None,
        0,
        lambda a: 3 if a == "b:1" else 0,
    )
    assert busy_b == ["a:1", "b:1"]  # b's better fleet score loses to its three queued requests


def test_a_long_prompt_goes_where_prefill_is_fastest() -> None:
    endpoints = [
        loaded("slow:1", 0, 0, 0, per_token=4_000_000),
        loaded("fast:1", 0, 1, 4, per_token=1_000_000),
    ]
    # Short prompt: fast's queued request (1 TTFT) outweighs slow's prefill (0.04 TTFT).
    assert (
        order(snapshot(load_weight=3_000_000), endpoints, None, 0, lambda a: 0, prompt_tokens=10)[0]
        == "slow:1"
    )
    # 2,000 tokens: 8 TTFTs of prefill on slow against 2 + 1 on fast.
    assert (
        order(snapshot(load_weight=3_000_000), endpoints, None, 0, lambda a: 0, prompt_tokens=2000)[0]
        == "fast:1"
    )
