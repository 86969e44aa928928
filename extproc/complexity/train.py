"""Fit both complexity heads and write the model file (needs scikit-learn for the lexical head).

    python -m extproc.complexity.train [--graded graded.jsonl] [--routing routing.jsonl] \
        [--out extproc/complexity/model.npz] [--report report.json]

- The difficulty head (``complexity``) learns the rubric level (1-5) of graded prompts: JSON lines
  with `level` and either `messages` (OpenAI chat messages, the last one the user's request) or
  `prompt` (plain text); `lang` is optional (per-language figures). Default: the graded train set
  shipped in the package. Ridge regression over the named features of
  `extproc.complexity.features`, averaged with boosted regression trees over the same features;
  the calibration to levels comes from cross-validated (held-out) predictions.
- The gain head (``strong_gain``) learns strong_correct - weak_correct from labelled routing data:
  JSON lines with `prompt`, `weak_correct`, `strong_correct` (did the cheap and the expensive model
  answer correctly). Ridge regression on TF-IDF word 1-2grams; the tokenizer is
  `extproc.complexity.lexical.tokens`, the one used at run time, and the exported model reproduces
  the scikit-learn predictions with numpy only. Then boosted trees over the difficulty features and
  the numbers in the question learn what the ridge's held-out output leaves unexplained, and a
  share of their output is added to the ridge's (stacking: the trees never see the ridge's
  predictions on its own training rows).
Either file may be 'none': that head is then copied from the current model file.
Cross-validation splits by prompt hash, so a rerun on the same files writes the same model.
"""

from __future__ import annotations

import argparse
import importlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from extproc.complexity.evaluate import apgr, graded_report, read_labelled
from extproc.complexity.features import FeatureExtractor, Prompt, numbers_before_choices
from extproc.complexity.lexical import LexicalModel, ngrams, prepare, tokens
from extproc.complexity.scorer import (
    MODEL_PATH,
    ComplexityModel,
    DifficultyHead,
    GainTrees,
    Trees,
    level_to_score,
)

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

    def export(self, quantiles: FloatArray) -> LexicalModel:
        """The numpy run-time model: columns re-ordered by n-gram key, same idf and weights."""
        columns: dict[bytes, int] = self.vectorizer.vocabulary_
        vocab = sorted({t for gram in columns for t in gram.split(b" ")})
        model = LexicalModel(
            vocab, np.zeros(0, np.int64), np.zeros(0), np.zeros(0), 0.0, self.order, quantiles
        )
        grams = list(columns)
        keys = np.array([model.key(g) for g in grams], dtype=np.int64)
        source = np.array([columns[g] for g in grams], dtype=np.intp)
        by_key = np.argsort(keys)
        source = source[by_key]
        return LexicalModel(
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


def ridge_held_out(
    docs: list[list[bytes]], gain: FloatArray, fold: npt.NDArray[np.intp], **options: Any
) -> FloatArray:
    """Each row's ridge output from the model fitted on the other folds."""
    held_out = np.zeros(len(docs))
    for f in np.unique(fold):
        train_rows = np.nonzero(fold != f)[0]
        test_rows = np.nonzero(fold == f)[0]
        model = fit([docs[i] for i in train_rows], gain[train_rows], **options)
        held_out[test_rows] = model.predict_documents([docs[i] for i in test_rows])
    return held_out


def cross_validate(
    rows: Sequence[dict[str, Any]], k: int = 5, **options: Any
) -> tuple[dict[str, float], FloatArray]:
    """Held-out ridge outputs for every row (each from the model that did not see its fold)."""
    order = options.get("order", ORDER)
    docs = documents([r["prompt"] for r in rows], order)
    held_out = ridge_held_out(docs, gains(rows), folds(rows, k), **options)
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


DATA = resources.files("extproc.complexity") / "data"
GRADED_TRAIN = DATA / "graded_train.jsonl"
GRADED_TEST = DATA / "graded_test.jsonl"
DEFAULT_ROUTING = Path(__file__).resolve().parents[3] / "shared/data/routing/dev.jsonl"
# The difficulty head's settings, chosen by 5-fold CV Spearman on the graded train set alone
# (random and contiguous-block folds agreed): ridge penalty on standardised features, and boosted
# trees of depth 3 (depth 2: -0.01, depth 4: +0.002 at twice the size).
DIFFICULTY_ALPHA = 30.0
TREES = {"max_depth": 3, "n_estimators": 200, "learning_rate": 0.05, "subsample": 0.8, "min_samples_leaf": 3}
BLEND = 0.5  # ridge and trees averaged: CV 0.922 (trees alone 0.923, ridge 0.906); a hedge against either's failure mode
DIFFICULTY_FOLDS = 5
# strong_gain: boosted trees over the difficulty features and `numbers_before_choices`, fitted to
# what the lexical head's held-out output leaves unexplained (gain - held-out ridge) and added to
# it times GAIN_TREES_SHRINK. Depth, count and shrink as chosen by 4-fold CV on all the routing rows
# (scripts/gain_nested_cv.py --select; the repeated nested CV there measures that procedure).
GAIN_TREE_OPTIONS = {"learning_rate": 0.05, "subsample": 0.8, "min_samples_leaf": 30}
GAIN_TREES = {"max_depth": 3, "n_estimators": 25, **GAIN_TREE_OPTIONS}
GAIN_TREES_SHRINK = 0.5
GAIN_INNER_FOLDS = 4
GAIN_INNER_SALT = "|stack0"  # the inner folds' prompt-hash salt (scripts/gain_nested_cv.py, seed 0)


def read_rows(source: Path | Traversable) -> list[dict[str, Any]]:
    with source.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def graded_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if isinstance(r.get("level"), int) and 1 <= r["level"] <= 5]


def labelled_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r for r in rows if "weak_correct" in r and "strong_correct" in r and isinstance(r.get("prompt"), str)
    ]


def unseen_rows(rows: Sequence[dict[str, Any]], seen: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose final request is not also a final request in `seen` (the few greetings the
    two independently written sets share would measure memory, not generalisation)."""
    finals = {Prompt.from_row(r).final.strip() for r in seen}
    return [r for r in rows if Prompt.from_row(r).final.strip() not in finals]


def row_key(row: dict[str, Any]) -> bytes:
    """What a row's fold is derived from: its id, else its text."""
    key = row.get("id")
    if key is None:
        key = json.dumps(row.get("messages") or row.get("prompt"), ensure_ascii=False, sort_keys=True)
    return str(key).encode()


def difficulty_matrix(rows: Sequence[dict[str, Any]]) -> tuple[FloatArray, list[str]]:
    """Each graded row's difficulty features, as the run-time model computes them."""
    extractor = FeatureExtractor()
    features = [extractor.vector(Prompt.from_row(row)) for row in rows]
    return np.array(features).reshape(len(rows), len(extractor.names)), list(extractor.names)


def fit_ridge(features: FloatArray, target: FloatArray, alpha: float) -> tuple[FloatArray, float]:
    """Ridge on standardised features (constant features get no weight), in raw feature units."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-12, scale, np.inf)
    z = (features - mean) / scale
    centre = float(target.mean())
    coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (target - centre))
    weights = coef / scale
    return weights, centre - float(mean @ weights)


def export_trees(boosted: Any) -> Trees:
    """scikit-learn's GradientBoostingRegressor as complete trees of its max_depth, in heap order."""
    depth = int(boosted.max_depth)
    internal, total = 2**depth - 1, 2 ** (depth + 1) - 1
    count = len(boosted.estimators_)
    feature = np.zeros((count, internal), dtype=np.int64)
    threshold = np.full((count, internal), np.inf)
    value = np.zeros((count, total))
    for t, estimator in enumerate(boosted.estimators_[:, 0]):
        tree = estimator.tree_

        def fill(heap: int, node: int, level: int, t: int = t, tree: Any = tree) -> None:
            value[t, heap] = tree.value[node][0][0]
            if level == depth:
                return
            left, right = tree.children_left[node], tree.children_right[node]
            if left == -1:  # a leaf above the full depth: both children repeat it
                fill(2 * heap + 1, node, level + 1)
                fill(2 * heap + 2, node, level + 1)
                return
            feature[t, heap] = tree.feature[node]
            threshold[t, heap] = tree.threshold[node]
            fill(2 * heap + 1, left, level + 1)
            fill(2 * heap + 2, right, level + 1)

        fill(0, 0, 0)
    init = float(np.asarray(boosted.init_.constant_).ravel()[0])
    return Trees(feature, threshold, value, init, float(boosted.learning_rate))


def fit_trees(features: FloatArray, target: FloatArray) -> Trees:
    ensemble = importlib.import_module("sklearn.ensemble")
    boosted = ensemble.GradientBoostingRegressor(random_state=0, **TREES).fit(features, target)
    return export_trees(boosted)


def fit_blend(features: FloatArray, levels: FloatArray) -> tuple[FloatArray, float, Trees]:
    weights, intercept = fit_ridge(features, levels, DIFFICULTY_ALPHA)
    return weights, intercept, fit_trees(features, levels)


def blend_predict(weights: FloatArray, intercept: float, trees: Trees, features: FloatArray) -> FloatArray:
    ridge = features @ weights + intercept
    boosted = np.array([trees.predict(row) for row in features])
    result: FloatArray = BLEND * ridge + (1.0 - BLEND) * boosted
    return result


def difficulty_cv(features: FloatArray, levels: FloatArray, fold: npt.NDArray[np.intp]) -> FloatArray:
    """Held-out raw predictions for every row, each from the model that did not see its fold."""
    held_out = np.zeros(len(levels))
    for f in np.unique(fold):
        train = fold != f
        held_out[~train] = blend_predict(*fit_blend(features[train], levels[train]), features[~train])
    return held_out


def fit_difficulty(
    rows: Sequence[dict[str, Any]], k: int = DIFFICULTY_FOLDS
) -> tuple[DifficultyHead, dict[str, Any]]:
    features, names = difficulty_matrix(rows)
    levels = np.array([float(r["level"]) for r in rows])
    fold = np.array([zlib.crc32(row_key(r)) % k for r in rows], dtype=np.intp)
    held_out = difficulty_cv(features, levels, fold)
    # Undo the shrinkage towards the mean: the held-out predictions, fitted back onto the levels.
    a, b = np.polyfit(held_out, levels, 1)
    weights, intercept, trees = fit_blend(features, levels)
    head = DifficultyHead(
        tuple(names), weights, intercept, features.mean(axis=0), trees, BLEND, (float(a), float(b))
    )
    calibrated = [level_to_score(head.level(raw)) for raw in held_out]
    report = {
        "rows": len(rows),
        "settings": {"ridge_alpha": DIFFICULTY_ALPHA, "trees": TREES, "blend": BLEND, "folds": k},
        "cross_validated": graded_report(
            calibrated, [int(r["level"]) for r in rows], [r.get("lang", "") for r in rows]
        ),
    }
    return head, report


def gain_tree_inputs(prompts: Sequence[str]) -> FloatArray:
    """The gain trees' inputs of plain-text prompts: the difficulty features, then the numbers
    before the choices (as the scorer computes them)."""
    extractor = FeatureExtractor()
    return np.array(
        [[*extractor.vector(Prompt.from_text(p)), float(numbers_before_choices(prepare(p)))] for p in prompts]
    ).reshape(len(prompts), len(extractor.names) + 1)


def inner_folds(prompts: Sequence[str]) -> npt.NDArray[np.intp]:
    return np.array(
        [zlib.crc32((p + GAIN_INNER_SALT).encode()) % GAIN_INNER_FOLDS for p in prompts], dtype=np.intp
    )


def fit_gain_trees(inputs: FloatArray, residual: FloatArray) -> Trees:
    ensemble = importlib.import_module("sklearn.ensemble")
    boosted = ensemble.GradientBoostingRegressor(random_state=0, **GAIN_TREES).fit(inputs, residual)
    return export_trees(boosted)


def stacked_cross_validate(
    prompts: list[str],
    docs: list[list[bytes]],
    gain: FloatArray,
    inputs: FloatArray,
    fold: npt.NDArray[np.intp],
) -> FloatArray:
    """Held-out outputs of the whole strong_gain head (ridge + shrink x trees) for every row: on
    each training part the trees learn the residual of that part's own inner held-out ridge."""
    held_out = np.zeros(len(docs))
    for f in np.unique(fold):
        train_rows = np.nonzero(fold != f)[0]
        test_rows = np.nonzero(fold == f)[0]
        train_docs = [docs[i] for i in train_rows]
        ridge = fit(train_docs, gain[train_rows]).predict_documents([docs[i] for i in test_rows])
        inner = inner_folds([prompts[i] for i in train_rows])
        residual = gain[train_rows] - ridge_held_out(train_docs, gain[train_rows], inner)
        trees = fit_gain_trees(inputs[train_rows], residual)
        held_out[test_rows] = ridge + GAIN_TREES_SHRINK * np.array(
            [trees.predict(row) for row in inputs[test_rows]]
        )
    return held_out


def gain_cross_validate(rows: Sequence[dict[str, Any]], k: int = 5) -> tuple[dict[str, float], FloatArray]:
    """Held-out outputs of the whole strong_gain head for every row (folds by prompt), and their APGR."""
    prompts = [r["prompt"] for r in rows]
    held_out = stacked_cross_validate(
        prompts, documents(prompts), gains(rows), gain_tree_inputs(prompts), folds(rows, k)
    )
    return apgr(held_out, [r["weak_correct"] for r in rows], [r["strong_correct"] for r in rows]), held_out


def fit_gain(rows: Sequence[dict[str, Any]], k: int = 5) -> tuple[LexicalModel, GainTrees, dict[str, Any]]:
    lexical_metrics, lexical_held_out = cross_validate(rows, k)
    metrics, held_out = gain_cross_validate(rows, k)
    prompts = [r["prompt"] for r in rows]
    docs = documents(prompts)
    gain = gains(rows)
    report: dict[str, Any] = {
        "model": metrics,
        "settings": {
            "features": f"TF-IDF word 1-{ORDER}grams, min_df={MIN_DF}, sublinear tf, L2 norm",
            "ridge_alpha": ALPHA,
            "trees": {
                "inputs": "the difficulty features and the numbers before the choices",
                "target": f"gain - the ridge's {GAIN_INNER_FOLDS}-fold held-out output",
                "shrink": GAIN_TREES_SHRINK,
                **GAIN_TREES,
            },
        },
        "lexical_head_alone": lexical_metrics,
        "baselines": baselines(rows, k),
        "rows": len(rows),
    }
    # Final model on everything; calibration from held-out scores so thresholds mean traffic shares.
    levels = np.linspace(0.0, 1.0, LEVELS)
    model = fit(docs, gain).export(np.quantile(lexical_held_out, levels))
    residual = gain - ridge_held_out(docs, gain, inner_folds(prompts))
    trees = fit_gain_trees(gain_tree_inputs(prompts), residual)
    head = GainTrees(trees, GAIN_TREES_SHRINK, np.quantile(held_out, levels))
    report["calibration"] = {"share_above_threshold_held_out": calibration_check(held_out, folds(rows, k))}
    return model, head, report


def train(
    graded: Sequence[dict[str, Any]] | None,
    routing: Sequence[dict[str, Any]] | None,
    base: Path | None = None,
    k: int = 5,
) -> tuple[ComplexityModel, dict[str, Any]]:
    """Both heads: difficulty from `graded`, gain from `routing`; a head without data comes from
    the model file `base`. BLAS runs on one thread: with several, its sums are split differently
    and the ridge moves by ~1e-14, enough for the gain trees to split elsewhere, so a retrain
    would not reproduce the shipped model on another machine."""
    with importlib.import_module("threadpoolctl").threadpool_limits(limits=1):
        return _train(graded, routing, base, k)


def _train(
    graded: Sequence[dict[str, Any]] | None,
    routing: Sequence[dict[str, Any]] | None,
    base: Path | None,
    k: int,
) -> tuple[ComplexityModel, dict[str, Any]]:
    report: dict[str, Any] = {}
    gain_trees: GainTrees | None
    if routing:
        gain, gain_trees, report["strong_gain"] = fit_gain(routing, k)
    elif base is not None:
        with np.load(base, allow_pickle=False) as data:
            gain = LexicalModel.from_arrays(data, "gain.")
            gain_trees = GainTrees.from_arrays(data, "gain_trees.")
    else:
        raise ValueError("no labelled routing rows and no model to take the strong_gain head from")
    if graded:
        difficulty, report["complexity"] = fit_difficulty(graded, k)
    elif base is not None:
        with np.load(base, allow_pickle=False) as data:
            difficulty = DifficultyHead.from_arrays(data, "difficulty.")
    else:
        raise ValueError("no graded rows and no model to take the complexity head from")
    return ComplexityModel(difficulty, gain, gain_trees), report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llm-extproc complexity-train",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[4:]) if __doc__ else None,
    )
    parser.add_argument(
        "--graded",
        help="graded prompts (level 1-5); default: the shipped graded train set; 'none' keeps the "
        "current complexity head",
    )
    parser.add_argument(
        "--routing",
        help=f"labelled routing prompts (weak_correct/strong_correct); default {DEFAULT_ROUTING} if present, "
        "'none' keeps the current strong_gain head",
    )
    parser.add_argument("--out", default=str(MODEL_PATH))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--report", help="write the cross-validated results here (JSON)")
    args = parser.parse_args(argv)
    graded = None
    if args.graded != "none":
        graded = graded_rows(read_rows(Path(args.graded) if args.graded else GRADED_TRAIN))
        if not graded:
            parser.error("no graded rows (JSON lines with 'level' 1-5 and 'messages' or 'prompt')")
    routing_path = args.routing or (str(DEFAULT_ROUTING) if DEFAULT_ROUTING.exists() else "none")
    routing = None
    if routing_path != "none":
        sklearn()  # fail early and clearly
        routing = labelled_rows(read_labelled(Path(routing_path)))
    model, report = train(graded, routing, MODEL_PATH, args.folds)
    report["inputs"] = {"graded": args.graded or "package:graded_train.jsonl", "routing": routing_path}
    model.save(Path(args.out))
    if "complexity" in report:
        cv = report["complexity"]["cross_validated"]
        print(f"complexity: {cv['rows']} graded rows, 5-fold CV Spearman {cv['spearman']:.3f}")
        for lang, values in cv["spearman_by_language"].items():
            print(f"  {lang}: {values['rows']} rows, Spearman {values['spearman']:.3f}")
    if "strong_gain" in report:
        print(f"strong_gain: {json.dumps(report['strong_gain']['model'])}")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
