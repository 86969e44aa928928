"""The scheduler's configuration: which plugins run, their weights and parameters.

Given as the ``scheduler:`` section of a policy file (validated with the rest of the policy and
hot-reloaded with it), e.g.::

    scheduler:
      filters: [ready, outlier, {type: stale, max_age_s: 2.0}, locality]
      scorers:
        load: 3.0                          # a weight
        prefix: {weight: 2.0, block_chars: 128}   # a weight and the plugin's own parameters
        lora: 0                            # 0 turns a default scorer off
      gpu_weights: {h100: 5, a100: 3}     # optional prior; measured speeds override it
      queue_threshold: 8
      shed_standard: false                 # default priority is never shed unless true

Scorers not named keep their default weight; ``filters`` replaces the default list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extproc.scheduler.framework import PluginError
from extproc.scheduler.registry import PLUGINS


@dataclass(frozen=True, slots=True)
class PluginConfig:
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)
    weight: float = 1.0  # scorers only


DEFAULT_FILTERS = ("ready", "outlier", "stale", "locality")
DEFAULT_WEIGHTS: dict[str, float] = {
    "load": 3.0,
    # Queue length and our in-flight count are inside the load scorer's prediction, weighed
    # by each endpoint's speed; scored again on their own, speed-blind, they pulled traffic
    # back onto slow GPUs (routing benchmark, unknown-ratio: P99 TTFT 6.2 s -> 0.26 s).
    "queue": 0.0,
    "kv_cache": 1.0,
    "inflight": 0.0,
    # Observed latency mixes endpoint speed with prompt and output length: a light signal.
    "latency": 0.5,
    "prefix": 2.0,
    "session": 1.0,
    "lora": 1.0,
}
# A ready-made prior for ``gpu_weights`` (relative speed per class). Not applied by default:
# endpoint speeds are learned from evidence (extproc.scheduler.speed); a prior only sets the
# starting point for endpoints not yet measured.
EXAMPLE_GPU_WEIGHTS: dict[str, float] = {"h100": 5.0, "a100": 3.0, "l4": 1.5, "t4": 1.0}


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    filters: tuple[PluginConfig, ...] = tuple(PluginConfig(name) for name in DEFAULT_FILTERS)
    scorers: tuple[PluginConfig, ...] = tuple(
        PluginConfig(name, weight=weight) for name, weight in DEFAULT_WEIGHTS.items()
    )
    # Optional prior: relative speed per GPU class (e.g. A100 : T4 = 3 : 1), used for endpoints
    # with no speed evidence yet; evidence overrides it. Empty: no prior, unmeasured
    # endpoints are assumed as fast as the fleet's median.
    gpu_weights: Mapping[str, float] = field(default_factory=dict)
    slow_start_s: float = 10.0
    # Saturation: every candidate above both thresholds. Sheddable (batch) traffic is shed;
    # default priority only when ``shed_standard`` is set, and then beyond the severe factor
    # (as in the Gateway API Inference Extension, only sheddable priorities are shed unless
    # a policy says otherwise); premium never.
    shed_standard: bool = False
    queue_threshold: float = 8.0
    kv_threshold: float = 0.9
    severe_factor: float = 3.0
    retry_after_s: float = 2.0

    @property
    def weights(self) -> dict[str, float]:
        return {s.type: s.weight for s in self.scorers}

    def with_gpu_weights(self, extra: Mapping[str, float]) -> SchedulerConfig:
        """A copy whose GPU weights are this config's overlaid with ``extra`` (e.g. pools')."""
        from dataclasses import replace

        return replace(self, gpu_weights={**self.gpu_weights, **extra})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "scheduler") -> SchedulerConfig:
        """Strict, in stages: known keys, known plugin types, then each plugin's own parameters
        (built once here, so a bad parameter fails when the file is loaded, not on a request)."""
        known = {"filters", "scorers", "gpu_weights", "shed_standard", *_NUMBERS}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise PluginError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
        settings: dict[str, Any] = {}
        if "filters" in raw:
            settings["filters"] = tuple(
                _filter(entry, f"{where}.filters[{i}]")
                for i, entry in enumerate(_list(raw["filters"], where))
            )
        if "scorers" in raw:
            given = raw["scorers"]
            if not isinstance(given, Mapping):
                raise PluginError(f"{where}.scorers: must be a mapping of scorer type to weight or settings")
            scorers = {s.type: s for s in cls().scorers}
            for name, entry in given.items():
                scorers[str(name)] = _scorer(str(name), entry, f"{where}.scorers.{name}")
            settings["scorers"] = tuple(scorers.values())
        if "gpu_weights" in raw:
            weights = raw["gpu_weights"]
            if not isinstance(weights, Mapping):
                raise PluginError(f"{where}.gpu_weights: must be a mapping of GPU class to weight")
            for name, value in weights.items():
                _number(value, f"{where}.gpu_weights.{name}", positive=True)
            settings["gpu_weights"] = {str(k): float(v) for k, v in weights.items()}
        if "shed_standard" in raw:
            if not isinstance(raw["shed_standard"], bool):
                raise PluginError(f"{where}.shed_standard: must be true or false")
            settings["shed_standard"] = raw["shed_standard"]
        for key in _NUMBERS:
            if key in raw:
                settings[key] = _number(raw[key], f"{where}.{key}")
        config = cls(**settings)
        config.validate(where)
        return config

    def validate(self, where: str = "scheduler") -> None:
        """Every plugin exists, is of the right kind, and accepts its parameters."""
        for i, plugin in enumerate(self.filters):
            _check(plugin, "filter", f"{where}.filters[{i}]")
        for plugin in self.scorers:
            _check(plugin, "scorer", f"{where}.scorers.{plugin.type}")


_NUMBERS = ("slow_start_s", "queue_threshold", "kv_threshold", "severe_factor", "retry_after_s")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PluginError(f"{where}.filters: must be a list")
    return value


def _number(value: Any, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PluginError(f"{where}: must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise PluginError(f"{where}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _filter(entry: Any, where: str) -> PluginConfig:
    if isinstance(entry, str):
        return PluginConfig(entry)
    if isinstance(entry, Mapping) and isinstance(entry.get("type"), str):
        return PluginConfig(entry["type"], {k: v for k, v in entry.items() if k != "type"})
    raise PluginError(f"{where}: a filter is a type name or a mapping with 'type' and its parameters")


def _scorer(name: str, entry: Any, where: str) -> PluginConfig:
    if isinstance(entry, Mapping):
        params = {k: v for k, v in entry.items() if k != "weight"}
        return PluginConfig(name, params, _number(entry.get("weight", 1.0), f"{where}.weight"))
    return PluginConfig(name, weight=_number(entry, where))


def _check(plugin: PluginConfig, kind: str, where: str) -> None:
    from extproc.scheduler.framework import PluginContext
    from extproc.scheduler.outlier import OutlierDetector

    entry = PLUGINS.get(plugin.type)
    if entry is None or entry.kind != kind:
        known = sorted(name for name, p in PLUGINS.items() if p.kind == kind)
        raise PluginError(f"{where}: unknown {kind} {plugin.type!r}; known: {known}")
    entry.build(plugin.params, PluginContext(OutlierDetector()), where)
