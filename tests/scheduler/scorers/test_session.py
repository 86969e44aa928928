from extproc.scheduler.scorers.session import SessionScorer
from tests.helpers import fleet_snapshot, pick_view


def test_same_key_same_replica_and_keys_spread() -> None:
    scorer = SessionScorer(load_factor=1.25)
    snap = fleet_snapshot(8)
    homes = {scorer.preferred(pick_view(snap, session=f"user-{i}"), f"user-{i}") for i in range(200)}
    assert len(homes) == 8  # keys spread over every replica
    assert len({scorer.preferred(pick_view(snap, session="u"), "u") for _ in range(5)}) == 1
    assert scorer.score(pick_view(snap)) is None  # no key: no opinion


def test_bounded_load_moves_a_hot_key_off_an_overloaded_replica() -> None:
    scorer = SessionScorer(load_factor=1.25)
    home = scorer.preferred(pick_view(fleet_snapshot(4), session="hot"), "hot")
    assert home is not None
    busy = [0.0] * 4
    busy[home] = 20.0
    moved = scorer.preferred(pick_view(fleet_snapshot(4, waiting=busy), session="hot"), "hot")
    assert moved is not None and moved != home


def test_remembered_ranking_gives_the_same_replica_as_ranking_everyone() -> None:
    import numpy as np

    rng = np.random.default_rng(7)
    scorer = SessionScorer(load_factor=1.25, remembered_keys=16)
    for trial in range(40):
        # Many overloaded replicas, so the walk often passes the remembered best few.
        waiting = [float(x) for x in rng.choice([0, 0, 50], size=30)]
        view = pick_view(fleet_snapshot(30, waiting=waiting), session="k")
        for key in (f"user-{trial % 20}", f"user-{trial % 7}"):
            load = view.waiting + view.running
            eligible = load <= 1.25 * load.mean() + 1.0
            expected = int(np.where(eligible, scorer._ranks(view, key), np.uint64(0)).argmax())
            assert scorer.preferred(view, key) == expected
            assert scorer.preferred(view, key) == expected  # and again, from what it remembered
    assert len(scorer._ranked) <= 16
