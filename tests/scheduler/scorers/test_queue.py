from extproc.scheduler.scorers.queue import QueueScorer
from tests.helpers import fleet_snapshot, pick_view


def test_shorter_queue_scores_higher() -> None:
    scores = QueueScorer().score(pick_view(fleet_snapshot(3, waiting=[5, 0, 2])))
    assert scores.argmax() == 1 and scores.argmin() == 0
