from extproc.scheduler.scorers.prefix import PrefixScorer, block_hashes
from tests.helpers import fleet_snapshot, pick_view


def test_repeated_prefix_prefers_the_endpoint_that_served_it() -> None:
    scorer = PrefixScorer(block_chars=64, max_blocks=64, capacity=1000)
    snap = fleet_snapshot(3)
    system = "You are a helpful assistant. " * 20
    first = pick_view(snap, prompt=system + "question one")
    assert scorer.score(first) is None  # nothing served yet: no preference
    scorer.picked(first, [2])
    scores = scorer.score(pick_view(snap, prompt=system + "a different question"))
    assert scores is not None and scores.positions == [2] and 0.5 < scores.values[0] <= 1.0
    unrelated = scorer.score(pick_view(snap, prompt="unrelated " * 50))
    assert unrelated is not None and unrelated.positions == []


def test_block_hashes_are_chained_and_bounded_and_lru_is_capped() -> None:
    assert block_hashes("ab" * 64, 64, 10)[0] != block_hashes("ba" * 64, 64, 10)[0]
    assert len(block_hashes("x" * 100_000, 64, 8)) == 8
    scorer = PrefixScorer(block_chars=8, max_blocks=100, capacity=5)
    view = pick_view(fleet_snapshot(1), prompt="y" * 800)
    scorer.score(view)
    scorer.picked(view, [0])
    assert len(scorer.owner) == 5
