"""Scorer: send a prompt where its prefix was recently computed, so the prefix cache hits.

The prompt is cut into fixed-size character blocks with chained CRC32 hashes (a block's hash
covers everything before it), matching how vLLM's prefix cache reuses whole leading blocks.
A bounded LRU maps block hash -> the endpoint that last served it; a candidate's score is the
share of the prompt's leading blocks it holds.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from extproc.scheduler.framework import PickView, PluginContext, PluginType, Sparse


def block_hashes(text: str, block_chars: int, max_blocks: int) -> list[int]:
    hashes: list[int] = []
    running = 0
    data = text.encode("utf-8", "surrogatepass")
    for start in range(0, min(len(data), block_chars * max_blocks) - block_chars + 1, block_chars):
        running = zlib.crc32(data[start : start + block_chars], running)
        hashes.append(running)
    return hashes


class PrefixScorer:
    name: ClassVar[str] = "prefix"
    per_request: ClassVar[bool] = True

    def __init__(self, block_chars: int, max_blocks: int, capacity: int) -> None:
        self.block_chars = block_chars
        self.max_blocks = max_blocks
        self.capacity = capacity
        self.owner: OrderedDict[int, str] = OrderedDict()
        self._last: list[int] = []

    def score(self, view: PickView) -> Sparse | None:
        self._last = hashes = block_hashes(view.ctx.prompt_text, self.block_chars, self.max_blocks)
        if not hashes or not self.owner:
            return None
        scores = Sparse([], [])
        # Walk the leading blocks; the run of blocks an endpoint holds is its cached prefix.
        matched: dict[str, int] = {}
        for depth, block in enumerate(hashes, start=1):
            address = self.owner.get(block)
            if address is None:
                break
            matched[address] = depth
        index = view.snapshot.index
        for address, depth in matched.items():
            row = index.get(address)
            if row is not None:
                # view.rows is sorted ascending (candidates come from sorted row arrays).
                where = int(np.searchsorted(view.rows, row))
                if where < view.size and view.rows[where] == row:
                    scores.positions.append(where)
                    scores.values.append(depth / len(hashes))
        return scores

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        if not chosen_rows or not self._last:
            return
        address = view.snapshot.endpoints[chosen_rows[0]].address
        owner = self.owner
        for block in self._last:
            owner[block] = address
            owner.move_to_end(block)
        while len(owner) > self.capacity:
            owner.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Params:
    block_chars: int = 64  # Characters per hashed prompt block.
    max_blocks: int = 64  # Leading blocks considered per prompt.
    capacity_blocks: int = 200_000  # Block hashes remembered (LRU) across the fleet.


def make(params: Params, context: PluginContext) -> PrefixScorer:
    return PrefixScorer(params.block_chars, params.max_blocks, params.capacity_blocks)


PLUGIN = PluginType(PrefixScorer.name, "scorer", Params, make)
