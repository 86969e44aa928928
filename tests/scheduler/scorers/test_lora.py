from extproc.scheduler.scorers.lora import LoraScorer
from tests.helpers import fleet_snapshot, pick_view


def test_endpoint_with_the_adapter_loaded_scores_higher() -> None:
    snap = fleet_snapshot(3, loras=[(), ("sql-lora",), ("chat-lora",)])
    assert LoraScorer().score(pick_view(snap, lora="sql-lora")).tolist() == [0.0, 1.0, 0.0]
    assert LoraScorer().score(pick_view(snap)) is None  # no adapter asked: no preference
