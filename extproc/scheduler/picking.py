"""The scheduler's interfaces: pick an ordered list of endpoints for one request.

The full scheduler (filters, scorers, a weighted picker) plugs in behind :class:`EndpointPicker`;
the request path depends only on this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from extproc.fleet.state import FleetSnapshot, IntArray


@dataclass(slots=True)
class PickContext:
    """What the scheduler may know about the request (no body, no I/O)."""

    model: str
    prompt_text: str = ""
    prompt_tokens: int = 0  # the request's estimate; 0: unknown (len(prompt_text) / 4 is used)
    session_key: str | None = None
    priority: int = 0  # <0 sheddable (batch), 0 standard, >0 premium
    lora_adapter: str | None = None
    zone: str | None = None
    now: float = 0.0
    # Set by the caller when the decision log wants the chosen endpoints' scores; the picker
    # then fills ``scores`` (one per chosen endpoint, in order).
    want_scores: bool = False
    scores: list[float] | None = None
    # With want_scores: each chosen endpoint's estimated speed (prefill and decode tokens/s,
    # and where the estimate came from: measured, prior or assumed).
    speeds: list[dict[str, float | str]] | None = None


class EndpointPicker(Protocol):
    def pick(
        self,
        snapshot: FleetSnapshot,
        candidates: IntArray,
        inflight: npt.NDArray[np.int64],
        ctx: PickContext,
        count: int,
    ) -> list[int]:
        """Rows of ``snapshot``, best first, distinct, at most ``count``; [] when none can serve."""
        ...
