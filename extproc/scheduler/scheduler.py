"""The scheduler: filters remove candidates, scorers rate them, the picker orders them.

Plugins (``filters/``, ``scorers/``, built from ``registry.PLUGINS`` with their own parameters)
work on a :class:`PickView` holding numpy arrays over the candidate rows, so a pick among 1,000
endpoints is a handful of vectorised operations. Plugins return raw values ("higher is
better"); the scheduler, not the plugins, normalises each scorer to 0..1 and applies weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from extproc.errors import ErrorKind, RoutingError
from extproc.fleet.state import BoolArray, FleetSnapshot, FloatArray, IntArray
from extproc.scheduler.config import SchedulerConfig
from extproc.scheduler.framework import Filter, PickView, PluginContext, Scorer, Sparse, Traffic
from extproc.scheduler.outlier import OutlierDetector
from extproc.scheduler.picking import PickContext
from extproc.scheduler.registry import PLUGINS
from extproc.scheduler.scorers.load import LoadScorer
from extproc.scheduler.speed import SpeedEstimator

# Assumed when nothing is known about any endpoint (only ratios between endpoints matter).
DEFAULT_PREFILL_S_PER_TOKEN = 1e-4
DEFAULT_DECODE_S_PER_TOKEN = 0.02
# The traffic's shape assumed before any is seen.
DEFAULT_PROMPT_TOKENS = 1000.0
DEFAULT_OUTPUT_TOKENS = 200.0


@dataclass(frozen=True, slots=True)
class Speeds:
    """Per snapshot row: what the scheduler believes about each endpoint's speed.

    ``relative`` is 1 for the fleet's median endpoint and 2 for one that turns a request over
    twice as fast (prefill and decode weighted by the traffic's prompt:output mix).
    """

    prefill_s_per_token: FloatArray
    decode_s_per_token: FloatArray
    relative: FloatArray
    measured: BoolArray  # both rates from evidence
    from_prior: BoolArray  # at least one rate from the GPU-class prior
    traffic: Traffic

    def source(self, row: int) -> str:
        """ "measured", "prior" (GPU-class weight) or "assumed" (the fleet's median)."""
        return "measured" if self.measured[row] else "prior" if self.from_prior[row] else "assumed"


def _fill(measured: FloatArray, prior: FloatArray, default: float) -> tuple[FloatArray, BoolArray]:
    """Unmeasured rows from the prior (scaled to what was measured) or the measured median.

    With a prior, seconds x weight is what a correct prior makes equal across classes: its
    median over measured rows scales the prior to absolute seconds.
    """
    known = ~np.isnan(measured)
    has_prior = ~np.isnan(prior)
    filled = measured.copy()
    use_prior = ~known & has_prior
    if use_prior.any():
        anchored = known & has_prior
        reference = (
            float(np.median(measured[anchored] * prior[anchored]))
            if anchored.any()
            else default * float(np.median(prior[has_prior]))
        )
        filled[use_prior] = reference / prior[use_prior]
    rest = np.isnan(filled)
    if rest.any():
        filled[rest] = float(np.median(filled[~rest])) if (~rest).any() else default
    return filled, use_prior


def _normalise(raw: FloatArray) -> FloatArray:
    finite = np.isfinite(raw)
    if not finite.any():
        return np.ones_like(raw)
    low = float(raw[finite].min())
    high = float(raw[finite].max())
    if high <= low:
        return np.where(finite, 1.0, 0.0)
    return np.where(finite, (raw - low) / (high - low), 0.0)


MIN_SPAN = 1.0


def _dense(sparse: Sparse, size: int) -> FloatArray:
    dense = np.zeros(size)
    dense[sparse.positions] = sparse.values
    return dense


def _normalise_one(raw: FloatArray) -> FloatArray | None:
    """One request scorer's values to 0..1 (as _normalise_rows); None when all are equal."""
    low = float(raw.min())
    high = float(raw.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        row: FloatArray = _normalise_rows(raw[np.newaxis, :])[0]
        return None if bool((row == 1.0).all()) else row
    if high <= low:
        return None
    result: FloatArray = (raw - low) / max(high - low, MIN_SPAN)
    return result


def _normalise_rows(raws: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each scorer's values to 0..1 across the candidates, all scorers at once.

    The spread is at least MIN_SPAN (one request, one whole KV cache, one prefix): otherwise a
    difference of half a running request between two scrapes would swing a scorer's full
    weight, as plain min-max scaling does.
    """
    finite = np.isfinite(raws)
    if finite.all():  # the usual case: one pass each for min and max
        low = raws.min(axis=1, keepdims=True)
        high = raws.max(axis=1, keepdims=True)
        span = np.where(high - low > 0, np.maximum(high - low, MIN_SPAN), 0.0)
        flat = ~(span > 0)
        scaled: npt.NDArray[np.float64] = (raws - np.where(flat, 0.0, low)) / np.where(flat, 1.0, span)
        scaled[flat[:, 0]] = 1.0
        return scaled
    low = np.where(finite, raws, np.inf).min(axis=1, keepdims=True)
    high = np.where(finite, raws, -np.inf).max(axis=1, keepdims=True)
    span = np.where(high - low > 0, np.maximum(high - low, MIN_SPAN), 0.0)
    flat = ~(span > 0)  # equal values, or no finite value at all
    scaled = (raws - np.where(flat, 0.0, low)) / np.where(flat, 1.0, span)
    result: npt.NDArray[np.float64] = np.where(finite, np.where(flat, 1.0, scaled), 0.0)
    no_finite = ~finite.any(axis=1)
    if no_finite.any():
        result[no_finite] = 1.0
    return result


# How long a prepared candidate set (fleet-only filters and scorers) is reused. Snapshots are
# replaced every scrape (50-100 ms) anyway; this bounds how late a stale endpoint or an ended
# ejection is noticed when the scraper stalls.
PREPARED_TTL_S = 0.05


@dataclass(slots=True)
class _Prepared:
    """The part of a pick that depends only on the fleet, reused until the fleet changes.

    Valid for one snapshot, one candidate set and one outlier generation, for PREPARED_TTL_S.
    """

    snapshot: FleetSnapshot
    candidates: IntArray
    generation: int
    made_at: float
    base: PickView  # fleet-only filters applied; inflight and ctx are filled per pick
    fleet_total: FloatArray  # weighted, normalised fleet-only scores over base's rows
    slow_start: FloatArray | None  # None when nobody is ramping up
    kv_all_high: bool  # saturation needs every candidate's KV cache above the threshold
    jitter: FloatArray
    last_resort: list[int]  # rows only soft fleet filters removed, best first: fallbacks' fill


class Scheduler:
    """Implements the request path's EndpointPicker with registered filters and scorers.

    Filters and scorers that depend only on the fleet (``per_request = False``) run once per
    snapshot and candidate set; each pick adds only the request-dependent ones (in-flight
    load, prefix and session affinity, LoRA, locality). That split is what keeps a pick among
    1,000 endpoints in tens of microseconds.
    """

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        outliers: OutlierDetector | None = None,
        *,
        speeds: SpeedEstimator | None = None,
        prepared_ttl_s: float = PREPARED_TTL_S,
    ) -> None:
        self.config = config or SchedulerConfig()
        self.outliers = outliers or OutlierDetector()
        self.speeds = speeds or SpeedEstimator()
        context = PluginContext(self.outliers)
        filters: list[Filter] = [
            PLUGINS[f.type].build(f.params, context, f"scheduler.filters.{f.type}")  # type: ignore[misc]
            for f in self.config.filters
        ]
        # Fleet-only filters are applied up front only while no request filter precedes them.
        leading = 0
        while leading < len(filters) and not filters[leading].per_request:
            leading += 1
        self.fleet_filters, self.request_filters = filters[:leading], filters[leading:]
        self.scorers: list[tuple[Scorer, float]] = [
            (PLUGINS[s.type].build(s.params, context, f"scheduler.scorers.{s.type}"), s.weight)  # type: ignore[misc]
            for s in self.config.scorers
            if s.weight > 0
        ]
        self.fleet_scorers = [(s, w) for s, w in self.scorers if not s.per_request]
        self.request_scorers = [(s, w) for s, w in self.scorers if s.per_request]
        self._fleet_weights = np.array([w for _, w in self.fleet_scorers], dtype=np.float64)
        self._prior_cache: tuple[tuple[str, ...], FloatArray] | None = None
        self._speeds_cache: tuple[FleetSnapshot, Speeds] | None = None
        self._prepared: _Prepared | None = None
        self.prepared_ttl_s = prepared_ttl_s
        self.sheds = 0

    def _prior(self, snapshot: FleetSnapshot) -> FloatArray:
        """The configured GPU-class weight per row; nan for classes without one."""
        cached = self._prior_cache
        if cached is not None and cached[0] is snapshot.membership:
            return cached[1]
        weights = self.config.gpu_weights
        prior = np.array([weights.get(e.gpu_class, np.nan) for e in snapshot.endpoints], dtype=np.float64)
        self._prior_cache = (snapshot.membership, prior)
        return prior

    def endpoint_speeds(self, snapshot: FleetSnapshot) -> Speeds:
        """Measured speeds, gaps filled from the prior or the fleet's median; once per snapshot."""
        cached = self._speeds_cache
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        measured_prefill, measured_decode = self.speeds.evidence(snapshot)
        prior = self._prior(snapshot)
        prefill, prefill_prior = _fill(measured_prefill, prior, DEFAULT_PREFILL_S_PER_TOKEN)
        decode, decode_prior = _fill(measured_decode, prior, DEFAULT_DECODE_S_PER_TOKEN)
        prompt = self.speeds.mean_prompt_tokens()
        prompt = DEFAULT_PROMPT_TOKENS if math.isnan(prompt) else prompt
        output = self.speeds.mean_output_tokens()
        output = DEFAULT_OUTPUT_TOKENS if math.isnan(output) else output
        # Seconds a typical request holds an endpoint: its prefill plus its decode.
        turnover = prompt * prefill + output * decode
        relative = float(np.median(turnover)) / turnover if turnover.size else turnover
        typical_ttft = prompt * float(np.median(prefill)) + float(np.median(decode)) if prefill.size else 1.0
        measured = ~np.isnan(measured_prefill) & ~np.isnan(measured_decode)
        speeds = Speeds(
            prefill,
            decode,
            relative,
            measured,
            prefill_prior | decode_prior,
            Traffic(prompt, output, typical_ttft),
        )
        self._speeds_cache = (snapshot, speeds)
        return speeds

    def _speed(self, snapshot: FleetSnapshot) -> FloatArray:
        return self.endpoint_speeds(snapshot).relative

    def view(
        self, snapshot: FleetSnapshot, candidates: IntArray, inflight: npt.NDArray[np.int64], ctx: PickContext
    ) -> PickView:
        speeds = self.endpoint_speeds(snapshot)
        return PickView(
            snapshot,
            candidates,
            inflight[candidates].astype(np.float64),
            ctx,
            snapshot.age_s(ctx.now)[candidates],
            speeds.prefill_s_per_token[candidates],
            speeds.decode_s_per_token[candidates],
            speeds.traffic,
            snapshot.waiting[candidates],
            snapshot.running[candidates],
        )

    def _prepare(self, snapshot: FleetSnapshot, candidates: IntArray, ctx: PickContext) -> _Prepared:
        prepared = self._prepared
        if (
            prepared is not None
            and prepared.snapshot is snapshot
            and prepared.generation == self.outliers.generation
            and 0.0 <= ctx.now - prepared.made_at < self.prepared_ttl_s
            and (
                prepared.candidates is candidates
                or (
                    prepared.candidates.size == candidates.size
                    and np.array_equal(prepared.candidates, candidates)
                )
            )
        ):
            return prepared
        view = self.view(snapshot, candidates, _NO_INFLIGHT_FOR[snapshot.size], ctx)
        demoted: list[IntArray] = []
        for plugin in self.fleet_filters:
            if view.size == 0:
                break
            kept = plugin.keep(view)
            if plugin.soft and kept is not None and not kept.all():
                demoted.append(view.rows[~kept])
            view = view.take(kept)
        prepared = _Prepared(
            snapshot,
            candidates,
            self.outliers.generation,
            ctx.now,
            view,
            self._fleet_total(view),
            self._slow_start(view),
            bool((snapshot.kv_usage[view.rows] >= self.config.kv_threshold).all()),
            _RNG.random(view.size) * 1e-6,
            self._last_resort(snapshot, demoted, ctx) if demoted else [],
        )
        self._prepared = prepared
        return prepared

    def prepared_scores(
        self, snapshot: FleetSnapshot, candidates: IntArray, now: float
    ) -> tuple[list[int], list[float], list[int], bool]:
        """The fleet-only part of a pick, for deciders outside this process (the Wasm filter):
        rows the hard and soft fleet filters keep, their weighted fleet scores, the rows only
        soft filters removed (best first), and whether every kept row is saturated."""
        prepared = self._prepare(snapshot, candidates, PickContext(model="", now=now))
        rows = prepared.base.rows
        saturated = bool(rows.size) and (
            prepared.kv_all_high or bool((snapshot.waiting[rows] >= self.config.queue_threshold).all())
        )
        return rows.tolist(), prepared.fleet_total.tolist(), list(prepared.last_resort), saturated

    def load_terms(
        self, snapshot: FleetSnapshot, rows: list[int], now: float
    ) -> tuple[float, tuple[FloatArray, FloatArray, FloatArray]] | None:
        """The load scorer's weight and fleet-only terms (LoadScorer.fleet_terms) for rows, for
        deciders outside this process that add the request's part themselves; None when off."""
        for scorer, weight in self.request_scorers:
            if isinstance(scorer, LoadScorer):
                rows_array = np.asarray(rows, dtype=np.intp)
                ctx = PickContext(model="", now=now)
                view = self.view(snapshot, rows_array, _NO_INFLIGHT_FOR[snapshot.size], ctx)
                return weight, scorer.fleet_terms(view)
        return None

    def _last_resort(self, snapshot: FleetSnapshot, demoted: list[IntArray], ctx: PickContext) -> list[int]:
        """Rows soft fleet filters removed that every hard one keeps, best first."""
        view = self.view(snapshot, np.concatenate(demoted), _NO_INFLIGHT_FOR[snapshot.size], ctx)
        for plugin in self.fleet_filters:
            if not plugin.soft and view.size:
                view = view.take(plugin.keep(view))
        if view.size == 0:
            return []
        rows: list[int] = view.rows[np.argsort(-self._fleet_total(view), kind="stable")].tolist()
        return rows

    def _fleet_total(self, view: PickView) -> FloatArray:
        if not self.fleet_scorers or view.size == 0:
            return np.zeros(view.size)
        raws = np.empty((len(self.fleet_scorers), view.size))
        for i, (scorer, _) in enumerate(self.fleet_scorers):
            raw = scorer.score(view)
            raws[i] = 0.0 if raw is None else _dense(raw, view.size) if isinstance(raw, Sparse) else raw
        result: FloatArray = self._fleet_weights @ _normalise_rows(raws)
        return result

    def pick(
        self,
        snapshot: FleetSnapshot,
        candidates: IntArray,
        inflight: npt.NDArray[np.int64],
        ctx: PickContext,
        count: int,
    ) -> list[int]:
        prepared = self._prepare(snapshot, candidates, ctx)
        base = prepared.base
        if base.size == 0:
            return []
        view = base.with_request(inflight[base.rows].astype(np.float64), ctx)
        positions: IntArray | None = None  # base positions still in the view, once narrowed
        demoted: list[IntArray] = []  # base positions soft request filters removed
        for plugin in self.request_filters:
            kept = plugin.keep(view)
            if kept is not None and not kept.all():
                positions = np.arange(base.size) if positions is None else positions
                if plugin.soft:
                    demoted.append(positions[~kept])
                positions = positions[kept]
            view = view.take(kept)
            if view.size == 0:
                return []
        narrowed = view.rows is not base.rows
        if narrowed or prepared.kv_all_high:
            self._shed_if_saturated(view)
        if narrowed:  # a request filter (locality) changed the set: rescale over the new one
            total, slow_start, jitter = self._fleet_total(view), self._slow_start(view), None
        else:
            total, slow_start, jitter = prepared.fleet_total.copy(), prepared.slow_start, prepared.jitter
        flat = 0.0  # weight of scorers with no preference: equal for all, matters only scaled
        for scorer, weight in self.request_scorers:
            raw = scorer.score(view)
            if isinstance(raw, Sparse) and len(raw.positions) < view.size:
                # Others are 0 and values lie in 0..1, so normalising leaves them as they are.
                if raw.positions and max(raw.values) > 0.0:
                    for position, value in zip(raw.positions, raw.values, strict=True):
                        total[position] += weight * value
                else:
                    flat += weight
                continue
            if isinstance(raw, Sparse):
                raw = _dense(raw, view.size)
            scaled = None if raw is None else _normalise_one(raw)
            if scaled is None:
                flat += weight
            else:
                total += weight * scaled
        if slow_start is not None:
            total += flat
            total *= slow_start
        # A tiny jitter breaks ties so a burst between two scrapes spreads out.
        total += _RNG.random(view.size) * 1e-6 if jitter is None else jitter
        # Only the best few can be chosen: partial sort of those, not of the whole fleet.
        size = view.size
        keep = min(size, max(count * 4, 8))
        if keep < size:
            top = np.argpartition(total, size - keep)[size - keep :]
            order = top[np.argsort(-total[top], kind="stable")]
        else:
            order = np.argsort(-total, kind="stable")
        chosen = self._spread(view, order, count)
        preferred = len(chosen)
        if preferred < count and (demoted or prepared.last_resort):
            self._fill(chosen, count, base, prepared, demoted)
        if ctx.want_scores:
            where = {int(row): i for i, row in enumerate(view.rows)}
            offset = 0.0 if slow_start is not None else flat
            ctx.scores = [round(float(total[where[row]]) + offset, 4) for row in chosen[:preferred]]
            ctx.scores += [0.0] * (len(chosen) - preferred)  # fallbacks outside the preferred set
            speeds = self.endpoint_speeds(view.snapshot)
            ctx.speeds = [
                {
                    "prefill_tokens_per_s": round(1.0 / float(speeds.prefill_s_per_token[row]), 1),
                    "decode_tokens_per_s": round(1.0 / float(speeds.decode_s_per_token[row]), 2),
                    "source": speeds.source(row),
                }
                for row in chosen
            ]
        for scorer, _ in self.scorers:
            scorer.picked(view, chosen)
        return chosen

    @staticmethod
    def _fill(
        chosen: list[int], count: int, base: PickView, prepared: _Prepared, demoted: list[IntArray]
    ) -> None:
        """Lengthen a short list with what soft filters removed: this request's soft filters
        first (e.g. other zones, best by the fleet scores), then the fleet's (e.g. stale)."""
        extra: list[int] = []
        if demoted:
            positions = np.concatenate(demoted)
            ranked = positions[np.argsort(-prepared.fleet_total[positions], kind="stable")]
            extra = base.rows[ranked].tolist()
        for row in (*extra, *prepared.last_resort):
            if len(chosen) >= count:
                return
            if row not in chosen:
                chosen.append(row)

    def _slow_start(self, view: PickView) -> FloatArray | None:
        """Endpoints that joined after the rest ramp from 10 % to full weight over slow_start_s.

        Like Envoy's slow start, it protects a newcomer from a flood; when the whole fleet
        starts together there is nothing to protect it from, so nobody is held back.
        """
        if self.config.slow_start_s <= 0 or view.size == 0:
            return None
        ready_since = view.snapshot.ready_since[view.rows]
        joined_late = ready_since > float(np.nanmin(ready_since)) + 1.0
        if not joined_late.any():
            return None
        ramp = np.clip((view.ctx.now - ready_since) / self.config.slow_start_s, 0.0, 1.0)
        result: FloatArray = np.where(joined_late, 0.1 + 0.9 * ramp, 1.0)
        return result

    def _shed_if_saturated(self, view: PickView) -> None:
        config = self.config
        priority = view.ctx.priority
        if priority > 0 or (priority == 0 and not config.shed_standard):
            return  # only sheddable traffic, unless the policy sheds standard too; premium never
        queue = view.queued()
        kv = view.snapshot.kv_usage[view.rows]
        factor = 1.0 if priority < 0 else config.severe_factor
        saturated = (queue >= config.queue_threshold * factor) & (kv >= config.kv_threshold)
        if saturated.all():
            self.sheds += 1
            kind = "batch" if priority < 0 else "standard"
            raise RoutingError(
                ErrorKind.OVERLOADED,
                f"every endpoint for {view.ctx.model!r} is saturated; {kind} traffic is shed, retry later",
                "overloaded",
                retry_after_s=config.retry_after_s,
            )

    @staticmethod
    def _spread(view: PickView, order: IntArray, count: int) -> list[int]:
        """Best first; fallbacks prefer nodes (then zones) not already in the list."""
        endpoints = view.snapshot.endpoints
        rows: list[int] = view.rows[order].tolist()
        chosen = rows[:1]
        used_nodes = {endpoints[rows[0]].node or endpoints[rows[0]].address}
        used_zones = {endpoints[rows[0]].zone}
        rest = rows[1:]
        for prefer in ("node", "zone", "any"):
            for row in rest:
                if len(chosen) >= count:
                    return chosen
                if row in chosen:
                    continue
                endpoint = endpoints[row]
                node = endpoint.node or endpoint.address
                if prefer == "node" and (node in used_nodes or endpoint.zone in used_zones):
                    continue
                if prefer == "zone" and node in used_nodes:
                    continue
                chosen.append(row)
                used_nodes.add(node)
                used_zones.add(endpoint.zone)
        return chosen[:count]


_RNG = np.random.default_rng()


class _ZerosBySize(dict[int, npt.NDArray[np.int64]]):
    """Read-only zero in-flight arrays by fleet size: fleet-only plugins never look at them."""

    def __missing__(self, size: int) -> npt.NDArray[np.int64]:
        zeros = np.zeros(size, dtype=np.int64)
        zeros.setflags(write=False)
        if len(self) > 64:
            self.clear()
        self[size] = zeros
        return zeros


_NO_INFLIGHT_FOR = _ZerosBySize()
