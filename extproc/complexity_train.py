"""Train and evaluate the complexity model on labelled prompts (numpy only).

    python -m extproc.complexity_train --data ../shared/data/routing/dev.jsonl --out extproc/complexity_model.npz

Input: JSON lines with `prompt`, `weak_correct`, `strong_correct` (did the cheap and the
expensive model answer correctly). The target is the gain from the strong model,
strong_correct - weak_correct, learned as a two-sided logistic problem. Cross-validation
splits by prompt hash, and the calibration quantiles come from held-out scores only.
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from extproc.complexity import SIGNAL_NAMES, prepare, signals, tokens

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


@dataclass
class Features:
    token_sets: list[list[str]]
    signals: FloatArray


def featurise(prompts: Sequence[str]) -> Features:
    prepared = [prepare(p) for p in prompts]
    return Features([sorted(set(tokens(p))) for p in prepared], np.array([signals(p) for p in prepared]))


def _sparse(
    token_sets: list[list[str]], vocab: dict[str, int]
) -> tuple[npt.NDArray[np.intp], FloatArray, npt.NDArray[np.intp]]:
    indices, values, owners = [], [], []
    for row, words in enumerate(token_sets):
        ids = [vocab[w] for w in words if w in vocab]
        scale = 1.0 / math.sqrt(len(ids) + 1)
        indices += ids
        values += [scale] * len(ids)
        owners += [row] * len(ids)
    return np.array(indices, dtype=np.intp), np.array(values), np.array(owners, dtype=np.intp)


@dataclass
class Trained:
    vocab: list[str]
    token_weights: FloatArray
    signal_weights: FloatArray
    signal_mean: FloatArray
    signal_scale: FloatArray

    def raw(self, features: Features) -> FloatArray:
        vocab = {w: i for i, w in enumerate(self.vocab)}
        idx, val, own = _sparse(features.token_sets, vocab)
        z = (features.signals - self.signal_mean) / self.signal_scale
        out = z @ self.signal_weights
        np.add.at(out, own, self.token_weights[idx] * val)
        result: FloatArray = out
        return result


# Cross-validated on the dev data, only the length signal helped beside the words (APGR 0.595
# with it, 0.563 with every signal); the others stay computed and can be switched on.
SIGNAL_SETS = {"length": ("bias", "log_chars"), "all": SIGNAL_NAMES, "none": ("bias",)}


def train(
    features: Features,
    gain: FloatArray,
    *,
    min_count: int = 3,
    l2: float = 1e-3,
    epochs: int = 600,
    lr: float = 0.5,
    use_tokens: bool = True,
    use_signals: bool = True,
    signal_set: str = "length",
) -> Trained:
    """Logistic regression on the gain: P(strong right and weak wrong) vs P(weak right and strong wrong),
    prompts where both agree weigh nothing (their gain is 0)."""
    counts = Counter(w for words in features.token_sets for w in words)
    vocab = sorted(w for w, c in counts.items() if c >= min_count) if use_tokens else []
    index = {w: i for i, w in enumerate(vocab)}
    idx, val, own = _sparse(features.token_sets, index)
    mean = features.signals.mean(axis=0)
    scale = features.signals.std(axis=0) + 1e-6
    mean[0], scale[0] = 0.0, 1.0  # the bias column stays 1
    z = (features.signals - mean) / scale
    keep = np.array([name in SIGNAL_SETS[signal_set if use_signals else "none"] for name in SIGNAL_NAMES])
    z = z * keep  # unused signals: a zero column, zero weight
    n = len(gain)
    # Two-sided logistic: label 1 where the strong model gains, 0 where it loses; ties ignored.
    informative = gain != 0
    label = (gain > 0).astype(np.float64)
    weight = informative.astype(np.float64)
    tw = np.zeros(len(vocab))
    sw = np.zeros(z.shape[1])
    for _ in range(epochs):
        logits = z @ sw
        np.add.at(logits, own, tw[idx] * val)
        p = 1.0 / (1.0 + np.exp(-logits))
        residual = (p - label) * weight / max(1.0, weight.sum())
        grad_s = z.T @ residual + l2 * sw
        grad_t = np.bincount(idx, weights=residual[own] * val, minlength=len(vocab)) + l2 * tw
        sw -= lr * grad_s
        tw -= lr * 20 * grad_t  # sparse features see few rows each: a larger step
    del n
    return Trained(vocab, tw, sw, mean, scale)


def folds(rows: list[dict[str, Any]], k: int) -> npt.NDArray[np.intp]:
    return np.array([zlib.crc32(r["prompt"].encode()) % k for r in rows], dtype=np.intp)


def cross_validate(
    rows: list[dict[str, Any]], k: int = 5, **options: Any
) -> tuple[dict[str, float], FloatArray]:
    features = featurise([r["prompt"] for r in rows])
    gain = np.array([float(r["strong_correct"]) - float(r["weak_correct"]) for r in rows])
    fold = folds(rows, k)
    held_out = np.zeros(len(rows))
    for f in range(k):
        train_rows = np.nonzero(fold != f)[0]
        test_rows = np.nonzero(fold == f)[0]
        sub = Features([features.token_sets[i] for i in train_rows], features.signals[train_rows])
        model = train(sub, gain[train_rows], **options)
        test = Features([features.token_sets[i] for i in test_rows], features.signals[test_rows])
        held_out[test_rows] = model.raw(test)
    weak = [r["weak_correct"] for r in rows]
    strong = [r["strong_correct"] for r in rows]
    return apgr(held_out, weak, strong), held_out


def baselines(rows: list[dict[str, Any]], k: int = 5) -> dict[str, dict[str, float]]:
    weak = [r["weak_correct"] for r in rows]
    strong = [r["strong_correct"] for r in rows]
    rng = np.random.default_rng(0)
    random_runs = [apgr(rng.random(len(rows)), weak, strong)["apgr"] for _ in range(20)]
    return {
        "random (mean of 20)": {"apgr": float(np.mean(random_runs))},
        "prompt length": apgr([len(r["prompt"]) for r in rows], weak, strong),
        "bag of words (linear, no signals)": cross_validate(rows, k, use_signals=False)[0],
        "signals only (all)": cross_validate(rows, k, use_tokens=False, signal_set="all")[0],
        "words + all signals": cross_validate(rows, k, signal_set="all")[0],
    }


DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/routing/dev.jsonl"


def main(argv: Sequence[str] | None = None) -> int:
    default_data = DEFAULT_DATA
    parser = argparse.ArgumentParser(
        prog="python -m extproc.complexity_train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data", default=str(default_data))
    parser.add_argument("--out", default=str(Path(__file__).with_name("complexity_model.npz")))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--report", help="write the cross-validated results here (JSON)")
    args = parser.parse_args(argv)
    rows = read_labelled(Path(args.data))
    metrics, held_out = cross_validate(rows, args.folds)
    print(f"model: {json.dumps(metrics)}")
    report: dict[str, Any] = {"model": metrics, "baselines": baselines(rows, args.folds), "rows": len(rows)}
    for name, values in report["baselines"].items():
        print(f"{name}: {json.dumps(values)}")
    # Final model on everything; calibration from held-out scores so thresholds mean traffic shares.
    features = featurise([r["prompt"] for r in rows])
    gain = np.array([float(r["strong_correct"]) - float(r["weak_correct"]) for r in rows])
    final = train(features, gain)
    quantiles = np.quantile(held_out, np.linspace(0.0, 1.0, 101))
    np.savez_compressed(
        args.out,
        vocab=np.array(final.vocab),
        token_weights=final.token_weights.astype(np.float32),
        signal_weights=final.signal_weights,
        signal_mean=final.signal_mean,
        signal_scale=final.signal_scale,
        quantiles=quantiles,
    )
    report["calibration"] = {f"{t:.1f}": float(1 - t) for t in np.linspace(0.1, 0.9, 9)}
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes, {len(final.vocab)} words)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
