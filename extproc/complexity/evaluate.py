"""Evaluating a router's scores against labelled prompts (numpy only: usable at run time).

APGR is RouteLLM's "average performance gap recovered": send the highest-scoring prompts to the
strong model and sweep the share sent from 0 to 1.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def apgr(
    scores: Sequence[float] | FloatArray,
    weak: Sequence[bool] | FloatArray,
    strong: Sequence[bool] | FloatArray,
) -> dict[str, float]:
    """RouteLLM's metrics: route the highest scores to the strong model, sweep the share 0..1."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    weak_c = np.asarray(weak, dtype=np.float64)[order]
    strong_c = np.asarray(strong, dtype=np.float64)[order]
    n = len(order)
    # accuracy with the top k prompts on the strong model, k = 0..n
    gained = np.concatenate([[0.0], np.cumsum(strong_c - weak_c)])
    accuracy = (weak_c.sum() + gained) / n
    weak_acc, strong_acc = weak_c.mean(), strong_c.mean()
    pgr = (accuracy - weak_acc) / (strong_acc - weak_acc)
    shares = np.arange(n + 1) / n
    area = float(np.sum((pgr[1:] + pgr[:-1]) / 2) / n)

    def share_for(target: float) -> float:
        hit = np.nonzero(pgr >= target)[0]
        return float(shares[hit[0]]) if hit.size else 1.0

    quality_95 = np.nonzero(accuracy >= 0.95 * strong_acc)[0]
    return {
        "apgr": area,
        "strong_share_for_50pct_gap": share_for(0.5),
        "strong_share_for_80pct_gap": share_for(0.8),
        "cost_saved_at_95pct_strong_quality": 1.0
        - (float(shares[quality_95[0]]) if quality_95.size else 1.0),
        "weak_accuracy": float(weak_acc),
        "strong_accuracy": float(strong_acc),
    }


def read_labelled(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open() as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def ranks(values: Sequence[float] | FloatArray) -> FloatArray:
    """Ranks from 1, ties sharing their average rank."""
    data = np.asarray(values, dtype=np.float64)
    order = np.argsort(data, kind="stable")
    ordered = data[order]
    # the start and end index of each run of equal values
    starts = np.concatenate([[0], np.nonzero(np.diff(ordered))[0] + 1])
    ends = np.concatenate([starts[1:], [len(data)]])
    average = (starts + ends + 1) / 2.0
    result = np.empty(len(data))
    result[order] = np.repeat(average, ends - starts)
    return result


def spearman(a: Sequence[float] | FloatArray, b: Sequence[float] | FloatArray) -> float:
    """Spearman's rank correlation (nan when either side is constant or has under 2 values)."""
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def graded_report(
    scores: Sequence[float] | FloatArray, levels: Sequence[int], languages: Sequence[str]
) -> dict[str, Any]:
    """Spearman overall and per language, and the median score of each level (should rise)."""
    score = np.asarray(scores, dtype=np.float64)
    level = np.asarray(levels)
    lang = np.asarray(languages)
    medians = {int(v): float(np.median(score[level == v])) for v in sorted(set(level.tolist()))}
    band = np.clip(np.floor(score * 4 + 0.5) + 1, 1, 5)
    values = list(medians.values())
    return {
        "rows": len(score),
        "spearman": spearman(score, level),
        "spearman_by_language": {
            str(g): {"rows": int(np.sum(lang == g)), "spearman": spearman(score[lang == g], level[lang == g])}
            for g in sorted(set(lang.tolist()))
        },
        "median_by_level": medians,
        "medians_monotone": all(b >= a for a, b in itertools.pairwise(values)),
        # the share of rows whose score lies in their level's band, and within one band of it
        "level_band_accuracy": float(np.mean(band == level)),
        "within_one_level": float(np.mean(np.abs(band - level) <= 1)),
    }
