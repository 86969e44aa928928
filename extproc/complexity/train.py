"""Train and evaluate the complexity model on labelled prompts (needs scikit-learn).

    python -m extproc.complexity.train --data ../shared/data/routing/dev.jsonl \
        --out extproc/complexity/model.npz --report docs/bench/complexity_cv.json

Input: JSON lines with `prompt`, `weak_correct`, `strong_correct` (did the cheap and the
expensive model answer correctly). The target is the gain from the strong model,
strong_correct - weak_correct (every row kept, ties are 0), learned by ridge regression on
TF-IDF word 1-2grams. The tokenizer is `extproc.complexity.scorer.tokens`, the one used at run time,
and the exported model reproduces the scikit-learn predictions with numpy only.
Cross-validation splits by prompt hash; the vocabulary, idf and weights are fit on the training
folds only, and the calibration quantiles come from held-out scores only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from extproc.complexity.evaluate import apgr, read_labelled
from extproc.complexity.scorer import ComplexityModel, ngrams, prepare, tokens

FloatArray = npt.NDArray[np.float64]

ORDER = 2  # word 1-2grams (1-3grams: CV APGR +0.002, a model twice as large and slower)
MIN_DF = 2  # an n-gram must occur in at least 2 training prompts
ALPHA = 20.0  # ridge L2 penalty
LEVELS = 101  # calibration quantiles: 0 %, 1 %, ..., 100 %


def sklearn() -> tuple[Any, Any]:
    """scikit-learn's text and linear-model modules, or a clear error: only training needs them,
    never the server (imported by name: scikit-learn ships no type information)."""
    try:
        text = importlib.import_module("sklearn.feature_extraction.text")
        linear = importlib.import_module("sklearn.linear_model")
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "training the complexity model needs scikit-learn: pip install llm-extproc[train]"
        ) from error
    return text, linear


def documents(prompts: Sequence[str], order: int = ORDER) -> list[list[bytes]]:
    """Each prompt as its list of n-grams, exactly as the run time sees it."""
    return [ngrams(tokens(prepare(p)), order) for p in prompts]


def _identity(doc: list[bytes]) -> list[bytes]:
    return doc


@dataclass
class Fitted:
    """The scikit-learn pipeline: TfidfVectorizer over our n-grams, then Ridge."""

    vectorizer: Any
    ridge: Any
    order: int

    def predict_documents(self, docs: Sequence[list[bytes]]) -> FloatArray:
        result: FloatArray = self.ridge.predict(self.vectorizer.transform(docs))
        return result

    def predict(self, prompts: Sequence[str]) -> FloatArray:
        return self.predict_documents(documents(prompts, self.order))

    def export(self, quantiles: FloatArray) -> ComplexityModel:
        """The numpy run-time model: columns re-ordered by n-gram key, same idf and weights."""
        columns: dict[bytes, int] = self.vectorizer.vocabulary_
        vocab = sorted({t for gram in columns for t in gram.split(b" ")})
        model = ComplexityModel(
            vocab, np.zeros(0, np.int64), np.zeros(0), np.zeros(0), 0.0, self.order, quantiles
        )
        grams = list(columns)
        keys = np.array([model.key(g) for g in grams], dtype=np.int64)
        source = np.array([columns[g] for g in grams], dtype=np.intp)
        by_key = np.argsort(keys)
        source = source[by_key]
        return ComplexityModel(
            vocab,
            keys[by_key],
            np.asarray(self.vectorizer.idf_, dtype=np.float64)[source],
            np.asarray(self.ridge.coef_, dtype=np.float64)[source],
            float(self.ridge.intercept_),
            self.order,
            quantiles,
        )


def fit(
    docs: Sequence[list[bytes]],
    gain: FloatArray,
    *,
    order: int = ORDER,
    alpha: float = ALPHA,
    min_df: int = MIN_DF,
) -> Fitted:
    text, linear = sklearn()
    vectorizer = text.TfidfVectorizer(
        analyzer=_identity, min_df=min_df, sublinear_tf=True, norm="l2", dtype=np.float64
    )
    features = vectorizer.fit_transform(docs)
    ridge = linear.Ridge(alpha=alpha).fit(features, gain)
    return Fitted(vectorizer, ridge, order)


def gains(rows: Sequence[dict[str, Any]]) -> FloatArray:
    return np.array([float(r["strong_correct"]) - float(r["weak_correct"]) for r in rows])


def folds(rows: Sequence[dict[str, Any]], k: int) -> npt.NDArray[np.intp]:
    return np.array([zlib.crc32(r["prompt"].encode()) % k for r in rows], dtype=np.intp)


def cross_validate(
    rows: Sequence[dict[str, Any]], k: int = 5, **options: Any
) -> tuple[dict[str, float], FloatArray]:
    """Held-out ridge outputs for every row (each from the model that did not see its fold)."""
    order = options.get("order", ORDER)
    docs = documents([r["prompt"] for r in rows], order)
    gain = gains(rows)
    fold = folds(rows, k)
    held_out = np.zeros(len(rows))
    for f in range(k):
        train_rows = np.nonzero(fold != f)[0]
        test_rows = np.nonzero(fold == f)[0]
        model = fit([docs[i] for i in train_rows], gain[train_rows], **options)
        held_out[test_rows] = model.predict_documents([docs[i] for i in test_rows])
    return apgr(held_out, [r["weak_correct"] for r in rows], [r["strong_correct"] for r in rows]), held_out


def cross_validate_bow(rows: Sequence[dict[str, Any]], k: int = 5, c: float = 0.03) -> dict[str, float]:
    """Baseline: logistic regression on binary unigram counts, gain +1 against gain -1 (ties dropped)."""
    text, linear = sklearn()
    docs = documents([r["prompt"] for r in rows], 1)
    gain = gains(rows)
    fold = folds(rows, k)
    held_out = np.zeros(len(rows))
    for f in range(k):
        train_rows = np.nonzero((fold != f) & (gain != 0))[0]
        test_rows = np.nonzero(fold == f)[0]
        vectorizer = text.CountVectorizer(analyzer=_identity, min_df=3, binary=True)
        features = vectorizer.fit_transform([docs[i] for i in train_rows])
        logistic = linear.LogisticRegression(C=c, max_iter=2000).fit(features, gain[train_rows] > 0)
        held_out[test_rows] = logistic.decision_function(vectorizer.transform([docs[i] for i in test_rows]))
    return apgr(held_out, [r["weak_correct"] for r in rows], [r["strong_correct"] for r in rows])


def baselines(rows: Sequence[dict[str, Any]], k: int = 5) -> dict[str, dict[str, float]]:
    weak = [r["weak_correct"] for r in rows]
    strong = [r["strong_correct"] for r in rows]
    rng = np.random.default_rng(0)
    random_runs = [apgr(rng.random(len(rows)), weak, strong) for _ in range(20)]
    return {
        "random (mean of 20)": {key: float(np.mean([r[key] for r in random_runs])) for key in random_runs[0]},
        "prompt length": apgr([len(r["prompt"]) for r in rows], weak, strong),
        "bag of words (logistic on unigram presence)": cross_validate_bow(rows, k),
    }


def calibration_check(held_out: FloatArray, fold: npt.NDArray[np.intp]) -> dict[str, float]:
    """Share of prompts above each threshold when every fold is calibrated with the quantiles of the
    other folds' held-out scores: what a threshold means on prompts the calibration never saw."""
    levels = np.linspace(0.0, 1.0, LEVELS)
    scores = np.zeros(len(held_out))
    for f in np.unique(fold):
        quantiles = np.quantile(held_out[fold != f], levels)
        scores[fold == f] = np.interp(held_out[fold == f], quantiles, levels)
    return {f"{t:.1f}": float(np.mean(scores > t)) for t in np.linspace(0.1, 0.9, 9)}


DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/routing/dev.jsonl"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.complexity.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(Path(__file__).with_name("model.npz")))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--report", help="write the cross-validated results here (JSON)")
    args = parser.parse_args(argv)
    sklearn()  # fail early and clearly
    rows = read_labelled(Path(args.data))
    metrics, held_out = cross_validate(rows, args.folds)
    print(f"model: {json.dumps(metrics)}")
    report: dict[str, Any] = {
        "model": metrics,
        "settings": {
            "features": f"TF-IDF word 1-{ORDER}grams, min_df={MIN_DF}, sublinear tf, L2 norm",
            "ridge_alpha": ALPHA,
        },
        "baselines": baselines(rows, args.folds),
        "rows": len(rows),
    }
    for name, values in report["baselines"].items():
        print(f"{name}: {json.dumps(values)}")
    # Final model on everything; calibration from held-out scores so thresholds mean traffic shares.
    final = fit(documents([r["prompt"] for r in rows]), gains(rows))
    model = final.export(np.quantile(held_out, np.linspace(0.0, 1.0, LEVELS)))
    model.save(Path(args.out))
    in_sample = np.array([model.score(r["prompt"]) for r in rows])
    report["calibration"] = {
        "share_above_threshold_held_out": calibration_check(held_out, folds(rows, args.folds)),
        "share_above_threshold_in_sample": {
            f"{t:.1f}": float(np.mean(in_sample > t)) for t in np.linspace(0.1, 0.9, 9)
        },
    }
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size} bytes, {len(model.keys)} n-grams, {len(model.vocab)} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
