from extproc.scorer_session import SessionScorer
from tests.helpers import fleet_snapshot, pick_view


def test_same_key_same_replica_and_keys_spread() -> None:
    scorer = SessionScorer(load_factor=1.25)
    snap = fleet_snapshot(8)
    homes = {scorer.preferred(pick_view(snap, session=f"user-{i}"), f"user-{i}") for i in range(200)}
    assert len(homes) == 8  # keys spread over every replica
    assert len({scorer.preferred(pick_view(snap, session="u"), "u") for _ in range(5)}) == 1
    assert scorer.score(pick_view(snap)).sum() == 0.0  # no key: no opinion


def test_bounded_load_moves_a_hot_key_off_an_overloaded_replica() -> None:
    scorer = SessionScorer(load_factor=1.25)
    home = scorer.preferred(pick_view(fleet_snapshot(4), session="hot"), "hot")
    assert home is not None
    busy = [0.0] * 4
    busy[home] = 20.0
    moved = scorer.preferred(pick_view(fleet_snapshot(4, waiting=busy), session="hot"), "hot")
    assert moved is not None and moved != home
