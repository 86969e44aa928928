"""The scheduler's plugin interfaces: what a filter and a scorer are, and how one is built.

Filters remove candidates, scorers rate them; both work on a :class:`PickView` of numpy arrays
over the candidate rows. Each plugin is one module under ``filters/`` or ``scorers/`` with its
own ``Params`` dataclass and a ``make(params, context)`` factory; ``registry.py`` maps type
names to them. Plugins import this module, never the scheduler, so there is no import cycle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from extproc.fleet.state import BoolArray, FleetSnapshot, FloatArray, IntArray
from extproc.scheduler.outlier import OutlierDetector
from extproc.scheduler.picking import PickContext


@dataclass(frozen=True, slots=True)
class Traffic:
    """Recent traffic's shape (fleet-wide), from the same evidence as the speeds."""

    prompt_tokens: float  # per request
    output_tokens: float  # per request
    typical_ttft_s: float  # a typical prompt's prefill plus a step, on the median endpoint


@dataclass(slots=True)
class PickView:
    """One pick's inputs, restricted to the candidate rows (all arrays are per candidate)."""

    snapshot: FleetSnapshot
    rows: IntArray
    inflight: npt.NDArray[np.float64]
    ctx: PickContext
    age_s: FloatArray
    prefill_s: FloatArray  # estimated seconds per uncached prompt token, per candidate
    decode_s: FloatArray  # estimated seconds per output token of one stream, per candidate
    traffic: Traffic
    waiting: FloatArray  # the snapshot's rows gathered once per candidate set, not per plugin
    running: FloatArray

    @property
    def size(self) -> int:
        return int(self.rows.size)

    def queued(self) -> FloatArray:
        """Requests waiting at each candidate: the scrape's count, or more if we sent more since.

        Our in-flight count includes requests the server is already running, so it is compared
        with waiting + running, never added to them.
        """
        result: FloatArray = np.maximum(self.waiting, self.inflight - self.running)
        return result

    def take(self, keep: BoolArray | None) -> PickView:
        if keep is None or keep.all():  # the usual case: a filter that removes nothing copies nothing
            return self
        return PickView(
            self.snapshot,
            self.rows[keep],
            self.inflight[keep],
            self.ctx,
            self.age_s[keep],
            self.prefill_s[keep],
            self.decode_s[keep],
            self.traffic,
            self.waiting[keep],
            self.running[keep],
        )

    def with_request(self, inflight: npt.NDArray[np.float64], ctx: PickContext) -> PickView:
        return PickView(
            self.snapshot,
            self.rows,
            inflight,
            ctx,
            self.age_s,
            self.prefill_s,
            self.decode_s,
            self.traffic,
            self.waiting,
            self.running,
        )


@dataclass(frozen=True, slots=True)
class Sparse:
    """Scores for a few candidates (view positions), values in 0..1; every other candidate 0.

    Affinity scorers prefer one or a handful of endpoints: this saves building, scanning and
    rescaling a fleet-sized array that is almost all zeros.
    """

    positions: list[int]
    values: list[float]


class Filter(Protocol):
    name: ClassVar[str]
    # False when the result depends only on the fleet (snapshot, passive health, time), not on
    # the request or our in-flight counts: the framework then reuses it across picks.
    per_request: ClassVar[bool]
    # True for a preference (fresh metrics, the caller's zone), False for a rule (ready, not
    # ejected). What a soft filter removes can still fill the fallback list when the preferred
    # candidates are fewer than the list's length: a short list leaves Envoy's retries to its
    # fallback LB policy, which may pick the very endpoint that just failed.
    soft: ClassVar[bool]

    def keep(self, view: PickView) -> BoolArray | None:
        """Mask over the view's candidates: True keeps the candidate; None keeps them all."""
        ...


class Scorer(Protocol):
    name: ClassVar[str]
    per_request: ClassVar[bool]  # as for Filter

    def score(self, view: PickView) -> FloatArray | Sparse | None:
        """Raw per-candidate values, higher is better; the framework normalises them.

        None means "no preference" (every candidate equal), e.g. no session key; Sparse names
        the few preferred candidates.
        """
        ...

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        """Called after a pick, for scorers that learn from it (prefix affinity)."""
        ...


@dataclass(frozen=True, slots=True)
class PluginContext:
    """Shared state a factory may hand its plugin, besides the plugin's own parameters."""

    outliers: OutlierDetector


class PluginError(ValueError):
    """A plugin's configuration is wrong; the message names the plugin and the field."""


@dataclass(frozen=True, slots=True)
class NoParams:
    """For plugins without parameters: any key given is an error."""


P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class PluginType:
    """A registry entry: type name → parameter class and factory."""

    name: str
    kind: str  # "filter" or "scorer"
    params: type[Any]
    make: Callable[[Any, PluginContext], Any]

    def build(self, raw: Mapping[str, Any], context: PluginContext, where: str) -> Filter | Scorer:
        plugin: Filter | Scorer = self.make(parse_params(self.params, raw, where), context)
        return plugin


def parse_params(cls: type[P], raw: Mapping[str, Any], where: str) -> P:
    """Strict: unknown keys, wrong types, negative or non-finite numbers are errors saying which."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise PluginError(f"{where}: unknown parameter(s) {unknown}; known: {sorted(fields) or 'none'}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        expected = fields[key].type
        if expected in ("int", int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise PluginError(
                f"{where}.{key}: must be {'an integer' if expected in ('int', int) else 'a number'}, got {value!r}"
            )
        if not math.isfinite(value) or value < 0:
            raise PluginError(f"{where}.{key}: must be a finite number >= 0, got {value!r}")
        if expected in ("int", int) and value < 1:
            raise PluginError(f"{where}.{key}: must be at least 1, got {value!r}")
        values[key] = value
    return cls(**values)
