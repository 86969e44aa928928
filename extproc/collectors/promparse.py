"""A targeted Prometheus text-format parser: pulls only the series the scheduler reads.

``prometheus_client.parser.text_string_to_metric_families`` builds every family, sample and
label dict on a page (about 5 ms for a 450-line vLLM page). The scraper runs that for every
endpoint 10-20 times a second, so instead we run one compiled regex over the page that can
only match lines starting with the handful of sample names in a :class:`MetricMapping`, and
parse labels only for the one series that needs them (LoRA info).

Aggregation when a series appears with several label sets (several ``model_name`` or
``engine`` labels on one server): counts and counters are summed; KV usage takes the max
(it is a fraction per engine, so a sum could exceed 1 and a mean hides the full engine);
histogram means are ``sum(_sum) / sum(_count)``; the LoRA info series is the one with the
largest value, because vLLM sets it to the current time whenever it changes, so older label
sets linger with older timestamps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal

from extproc.fleet.state import EndpointMetrics

Aggregation = Literal["sum", "max"]


@dataclass(frozen=True, slots=True)
class MetricMapping:
    """Logical series -> metric names on the page. ``None`` means the server has no such series."""

    waiting: str | None = None
    running: str | None = None
    kv_usage: str | None = None
    prefix_cache_queries: str | None = None
    prefix_cache_hits: str | None = None
    # Histogram base name: ``<name>_sum`` and ``<name>_count`` give the mean TTFT.
    ttft_histogram: str | None = None
    # Evidence of the endpoint's own speed (see extproc.scheduler.speed): prompt tokens done,
    # seconds spent in prefill (a histogram's ``_sum``; else TTFT minus queue time when the
    # server has a queue-time histogram), and decode: a per-token latency histogram whose
    # ``_sum`` is seconds and ``_count`` tokens (vLLM's inter-token latency).
    prompt_tokens_counter: str | None = None
    prefill_histogram: str | None = None
    queue_histogram: str | None = None
    decode_token_histogram: str | None = None
    # Read only when the page lacks ``decode_token_histogram`` (an older server's name).
    legacy_decode_token_histogram: str | None = None
    # Gauge whose labels carry the LoRA adapter state (vLLM's ``vllm:lora_requests_info``).
    lora_info: str | None = None
    lora_running_label: str = "running_lora_adapters"
    lora_waiting_label: str = "waiting_lora_adapters"
    lora_max_label: str = "max_lora"
    kv_usage_aggregation: Aggregation = "max"
    # Servers that report KV usage in percent (0-100) rather than a fraction set 0.01 here.
    kv_usage_scale: float = 1.0

    def sample_fields(self) -> dict[str, str]:
        """Sample name on the page -> the PageValues field it feeds (LoRA info aside)."""
        names: dict[str, str] = {}
        for field in ("waiting", "running", "kv_usage", "prefix_cache_queries", "prefix_cache_hits"):
            metric = getattr(self, field)
            if metric:
                names[metric] = field
        if self.ttft_histogram:
            names[self.ttft_histogram + "_sum"] = "ttft_sum"
            names[self.ttft_histogram + "_count"] = "ttft_count"
        if self.prompt_tokens_counter:
            names[self.prompt_tokens_counter] = "prompt_tokens"
        for histogram, field in (
            (self.prefill_histogram, "prefill_sum"),
            (self.queue_histogram, "queue_sum"),
            (self.decode_token_histogram, "decode_sum"),
        ):
            if histogram:
                names[histogram + "_sum"] = field
        if self.decode_token_histogram:
            names[self.decode_token_histogram + "_count"] = "decode_count"
        if self.legacy_decode_token_histogram:
            names[self.legacy_decode_token_histogram + "_sum"] = "legacy_decode_sum"
            names[self.legacy_decode_token_histogram + "_count"] = "legacy_decode_count"
        return names


# Names verified against the servers' sources: vLLM ``vllm/v1/metrics/loggers.py``
# (prometheus_client appends ``_total`` to counters), SGLang ``srt/metrics/collector.py``,
# TGI's metrics reference (commits in docs/simulator.md). SGLang exposes its prefix cache only as a hit-rate gauge and TGI
# has neither KV usage nor TTFT, so those stay unmapped.
PRESETS: dict[str, MetricMapping] = {
    "vllm": MetricMapping(
        waiting="vllm:num_requests_waiting",
        running="vllm:num_requests_running",
        kv_usage="vllm:kv_cache_usage_perc",
        prefix_cache_queries="vllm:prefix_cache_queries_total",
        prefix_cache_hits="vllm:prefix_cache_hits_total",
        ttft_histogram="vllm:time_to_first_token_seconds",
        lora_info="vllm:lora_requests_info",
        prompt_tokens_counter="vllm:prompt_tokens_total",
        prefill_histogram="vllm:request_prefill_time_seconds",
        queue_histogram="vllm:request_queue_time_seconds",
        decode_token_histogram="vllm:inter_token_latency_seconds",
        legacy_decode_token_histogram="vllm:time_per_output_token_seconds",
    ),
    "sglang": MetricMapping(
        waiting="sglang:num_queue_reqs",
        running="sglang:num_running_reqs",
        kv_usage="sglang:token_usage",
        ttft_histogram="sglang:time_to_first_token_seconds",
        prompt_tokens_counter="sglang:prompt_tokens_total",
        queue_histogram="sglang:queue_time_seconds",
        decode_token_histogram="sglang:inter_token_latency_seconds",
    ),
    "tgi": MetricMapping(
        waiting="tgi_queue_size",
        running="tgi_batch_current_size",
        # One observation per request of its mean time per token: a mean of means, near
        # enough per-token decode time for ranking endpoints. TGI has no TTFT histogram.
        decode_token_histogram="tgi_request_mean_time_per_token_duration",
    ),
}


def mapping_for(preset: str, **overrides: object) -> MetricMapping:
    """A preset with some fields replaced (``mapping_for("vllm", waiting="my_waiting")``)."""
    try:
        base = PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown metrics preset {preset!r}; known: {sorted(PRESETS)}") from None
    return replace(base, **overrides) if overrides else base  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PageValues:
    """What one page said. ``None``: the series was absent (or unparsable) on the page."""

    waiting: float | None = None
    running: float | None = None
    kv_usage: float | None = None
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None
    ttft_sum: float | None = None
    ttft_count: float | None = None
    prompt_tokens: float | None = None
    prefill_sum: float | None = None
    queue_sum: float | None = None
    decode_sum: float | None = None
    decode_count: float | None = None
    running_lora_adapters: tuple[str, ...] | None = None
    waiting_lora_adapters: tuple[str, ...] | None = None
    max_lora: int | None = None
    series_found: int = 0  # how many mapped samples matched; 0 means "not the page we expected"

    @property
    def ttft_mean_s(self) -> float:
        if self.ttft_sum is None or not self.ttft_count:
            return math.nan
        return self.ttft_sum / self.ttft_count

    @property
    def prefill_seconds(self) -> float:
        """Seconds spent in prefill so far: the prefill histogram's sum, else TTFT - queue."""
        if self.prefill_sum is not None:
            return self.prefill_sum
        if self.ttft_sum is not None and self.queue_sum is not None and self.ttft_sum >= self.queue_sum:
            return self.ttft_sum - self.queue_sum
        return math.nan  # absent, or inconsistent (queue time is part of TTFT)

    def to_endpoint_metrics(self, *, scraped_at: float, healthy: bool = True) -> EndpointMetrics:
        return EndpointMetrics(
            waiting=_or(self.waiting, 0.0),
            running=_or(self.running, 0.0),
            kv_usage=_or(self.kv_usage, 0.0),
            prefix_cache_queries=_or(self.prefix_cache_queries, 0.0),
            prefix_cache_hits=_or(self.prefix_cache_hits, 0.0),
            ttft_mean_s=self.ttft_mean_s,
            prompt_tokens_total=_or(self.prompt_tokens, math.nan),
            prefill_seconds_total=self.prefill_seconds,
            decode_tokens_total=_or(self.decode_count, math.nan),
            decode_seconds_total=_or(self.decode_sum, math.nan),
            requests_total=_or(self.ttft_count, math.nan),
            running_lora_adapters=self.running_lora_adapters or (),
            max_lora=self.max_lora or 0,
            healthy=healthy,
            scraped_at=scraped_at,
        )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


# Label block: anything but quotes/braces, or a quoted string with backslash escapes.
_LABELS = r'(?:\{((?:[^"{}\n]|"(?:[^"\\\n]|\\.)*")*)\})?'
# A sample value and optional integer timestamp; the value is validated by float() later.
_TAIL = r"[ \t]+([^ \t\n]+)(?:[ \t]+-?[0-9]+)?[ \t]*\r?$"
_LABEL_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}


def parse_float(text: str) -> float | None:
    """A Prometheus sample value: Go float syntax, ``NaN``, ``+Inf``/``-Inf``."""
    try:
        return float(text)
    except ValueError:
        return None


def unescape_label_value(raw: str) -> str:
    if "\\" not in raw:
        return raw
    return _UNESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), raw)


def parse_labels(block: str) -> dict[str, str]:
    return {m.group(1): unescape_label_value(m.group(2)) for m in _LABEL_PAIR.finditer(block)}


class TargetedParser:
    """Compiled once per mapping; :meth:`parse` is what the scraper calls per page."""

    __slots__ = ("_mapping", "_needles", "_regex")

    def __init__(self, mapping: MetricMapping) -> None:
        self._mapping = mapping
        names = mapping.sample_fields()
        if mapping.lora_info:
            names[mapping.lora_info] = "lora"
        # (needle, field) pairs: a sample line is "\n" + exact name; HELP/TYPE lines start with
        # "#" so they never match. str.find is a fast substring search, and the regex then runs
        # only at the few hits instead of at every line start (2x faster than one big
        # MULTILINE alternation regex on a 530-line page).
        self._needles = tuple(("\n" + name, field) for name, field in names.items())
        self._regex = re.compile(rf"[ \t]*{_LABELS}{_TAIL}", re.MULTILINE)

    @property
    def mapping(self) -> MetricMapping:
        return self._mapping

    def parse(self, text: str) -> PageValues:
        sums: dict[str, float] = {}
        kv_max = self._mapping.kv_usage_aggregation == "max"
        lora_value = -math.inf
        lora_labels: str | None = None
        found = 0
        match_at = self._regex.match
        # A leading newline lets the first line match like every other (cheap: one copy).
        text = "\n" + text
        for needle, field in self._needles:
            step = len(needle)
            pos = text.find(needle)
            while pos >= 0:
                match = match_at(text, pos + step)
                pos = text.find(needle, pos + step)
                if match is None:
                    continue  # a longer name sharing this prefix (``_bucket``), or garbage
                labels, raw_value = match.groups()
                value = parse_float(raw_value)
                if value is None:
                    continue
                found += 1
                if field == "lora":
                    # Latest label set wins (see module docstring); ties keep the later line.
                    if lora_labels is None or value >= lora_value:
                        lora_value = value
                        lora_labels = labels or ""
                    continue
                if field in sums:
                    if field == "kv_usage" and kv_max:
                        previous = sums[field]
                        sums[field] = value if value > previous or math.isnan(previous) else previous
                    else:
                        sums[field] += value
                else:
                    sums[field] = value
        kv = sums.get("kv_usage")
        if kv is not None and self._mapping.kv_usage_scale != 1.0:
            kv *= self._mapping.kv_usage_scale
        running_lora: tuple[str, ...] | None = None
        waiting_lora: tuple[str, ...] | None = None
        max_lora: int | None = None
        if lora_labels is not None:
            labels_dict = parse_labels(lora_labels)
            m = self._mapping
            running_lora = _split_adapters(labels_dict.get(m.lora_running_label, ""))
            waiting_lora = _split_adapters(labels_dict.get(m.lora_waiting_label, ""))
            max_value = parse_float(labels_dict.get(m.lora_max_label, ""))
            max_lora = int(max_value) if max_value is not None and math.isfinite(max_value) else None
        return PageValues(
            waiting=sums.get("waiting"),
            running=sums.get("running"),
            kv_usage=kv,
            prefix_cache_queries=sums.get("prefix_cache_queries"),
            prefix_cache_hits=sums.get("prefix_cache_hits"),
            ttft_sum=sums.get("ttft_sum"),
            ttft_count=sums.get("ttft_count"),
            prompt_tokens=sums.get("prompt_tokens"),
            prefill_sum=sums.get("prefill_sum"),
            queue_sum=sums.get("queue_sum"),
            decode_sum=sums.get("decode_sum", sums.get("legacy_decode_sum")),
            decode_count=sums.get("decode_count", sums.get("legacy_decode_count")),
            running_lora_adapters=running_lora,
            waiting_lora_adapters=waiting_lora,
            max_lora=max_lora,
            series_found=found,
        )


def _split_adapters(value: str) -> tuple[str, ...]:
    return tuple(part for part in (p.strip() for p in value.split(",")) if part)


def parse_page(text: str, mapping: MetricMapping | str = "vllm") -> PageValues:
    """One-off convenience; hot paths keep a :class:`TargetedParser`."""
    return TargetedParser(PRESETS[mapping] if isinstance(mapping, str) else mapping).parse(text)
