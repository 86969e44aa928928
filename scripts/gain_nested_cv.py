"""Repeated nested cross-validation of the strong_gain head: its lexical ridge alone (the head
before the trees) against candidates whose hyper-parameters are all chosen by inner cross-validation.

    python scripts/gain_nested_cv.py [--routing dev.jsonl] [--seeds 5] [--out result.json] \
        [--candidates tfidf,stacked] [--select]

Outer loop: 5 folds by prompt (crc32 of the prompt and the seed; seed 0 is the shipped
`extproc.complexity.train.folds`), repeated for several seeds. On each outer training part, every
configuration of the grid is scored by the APGR of its pooled inner 4-fold held-out predictions
(inner folds again by prompt); the best one is refitted on the whole outer training part and
predicts the outer test fold. Everything fitted (vocabulary, min_df, idf, the difficulty features'
standardisation, ridge) sees only the part it is trained on.

Reported per seed and as mean / min-max over seeds:
- ridge alone: the lexical ridge's fixed settings (TF-IDF word 1-2grams, min_df 2, sublinear tf,
  alpha 20), nothing tuned: the whole strong_gain head until the trees were added;
- ridge family, tuned: the same model, alpha / min_df / sublinear tf chosen by inner CV;
- + difficulty columns: as the tuned family plus the 61 difficulty features (standardised, times a
  scale chosen by inner CV, 0 included) as ridge columns next to the n-grams;
- ridge + trees (the shipped head's procedure): the fixed ridge plus shrink x boosted trees over
  the difficulty features and `numbers_before_choices`, fitted to the residual of the ridge's inner
  4-fold held-out output on the training part (so the trees never see the ridge's predictions on
  its own training rows); depth, tree count and shrink (0 included) chosen by inner CV, inside
  which the trees again learn from held-out ridge outputs of the inner training part only.
  `--select` runs the same choice on all rows: the settings train.py ships.

The TF-IDF matrices are computed from one count matrix of all prompts, restricted per training part
to the n-grams with df >= min_df there (the same numbers as scikit-learn's TfidfVectorizer fitted
on that part; checked at start against `extproc.complexity.train.fit`). Single-threaded BLAS is
advised (OMP_NUM_THREADS=1): the data are small.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from extproc import complexity
from extproc.bench.machine import machine
from extproc.complexity.evaluate import apgr, read_labelled
from extproc.complexity.features import Prompt, numbers_before_choices
from extproc.complexity.lexical import prepare
from extproc.complexity.train import (
    ALPHA,
    DEFAULT_ROUTING,
    GAIN_TREE_OPTIONS,
    MIN_DF,
    _identity,
    documents,
    fit,
    folds,
    gains,
    labelled_rows,
    sklearn,
)

FloatArray = npt.NDArray[np.float64]
# scikit-learn brings scipy; neither ships type information
sp: Any = importlib.import_module("scipy.sparse")
preprocessing: Any = importlib.import_module("sklearn.preprocessing")
Index = npt.NDArray[np.intp]

OUTER_FOLDS = 5
INNER_FOLDS = 4
ALPHAS = (5.0, 10.0, 20.0, 40.0)
MIN_DFS = (1, 2, 3)
SUBLINEAR = (True, False)
SCALES = (0.0, 0.005, 0.01, 0.02, 0.05)


@dataclass(frozen=True)
class Config:
    alpha: float
    min_df: int
    sublinear: bool
    scale: float  # of the standardised difficulty features (0: n-grams only)


SHIPPED = Config(ALPHA, MIN_DF, True, 0.0)  # the lexical ridge's settings
RIDGE = "ridge alone (the head before the trees)"
GRID = [Config(a, m, s, c) for m, s, c, a in itertools.product(MIN_DFS, SUBLINEAR, SCALES, ALPHAS)]

# The stacked candidate: the shipped ridge plus shrink x boosted trees fitted to its held-out residual.
TREE_DEPTHS = (2, 3)
TREE_COUNTS = (25, 50, 100)
SHRINKS = (0.0, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Stack:
    depth: int
    trees: int
    shrink: float  # 0: the ridge alone


STACKS = [Stack(d, n, s) for s, d, n in itertools.product(SHRINKS, TREE_DEPTHS, TREE_COUNTS)]


class Data:
    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        text, _ = sklearn()
        self.rows = rows
        self.prompts = [r["prompt"] for r in rows]
        self.docs = documents(self.prompts)
        self.counts = sp.csr_matrix(text.CountVectorizer(analyzer=_identity).fit_transform(self.docs))
        self.gain = gains(rows)
        self.weak = np.array([float(r["weak_correct"]) for r in rows])
        self.strong = np.array([float(r["strong_correct"]) for r in rows])
        extractor = complexity.model().extractor
        self.dense = np.array([extractor.vector(Prompt.from_text(p)) for p in self.prompts])
        # the gain trees' inputs: the difficulty features and the numbers in the question
        numbers = [float(numbers_before_choices(prepare(p))) for p in self.prompts]
        self.tree_inputs = np.column_stack([self.dense, numbers])

    def apgr(self, scores: FloatArray, part: Index) -> float:
        return apgr(scores, self.weak[part], self.strong[part])["apgr"]

    def split(self, part: Index, salt: str, k: int) -> Index:
        """Fold numbers of the rows `part`, by prompt."""
        return np.array([zlib.crc32((self.prompts[i] + salt).encode()) % k for i in part], dtype=np.intp)


def tfidf(counts: Any, train: Index, test: Index, min_df: int, sublinear: bool) -> tuple[Any, Any]:
    """TfidfVectorizer(min_df, sublinear_tf, norm l2, smooth idf) fitted on `train`, applied to both."""
    fitted = counts[train]
    df = np.bincount(fitted.indices, minlength=counts.shape[1])
    keep = np.nonzero(df >= min_df)[0]
    idf = np.log((1.0 + len(train)) / (1.0 + df[keep])) + 1.0
    out = []
    for part in (fitted, counts[test]):
        matrix = sp.csr_matrix(part[:, keep], dtype=np.float64)
        if sublinear:
            matrix.data = 1.0 + np.log(matrix.data)
        out.append(preprocessing.normalize(matrix @ sp.diags(idf), norm="l2"))
    return out[0], out[1]


def predictions(data: Data, train: Index, test: Index, configs: Sequence[Config]) -> dict[Config, FloatArray]:
    """Each configuration fitted on `train`, its predictions for `test`."""
    _, linear = sklearn()
    result: dict[Config, FloatArray] = {}
    mean = data.dense[train].mean(axis=0)
    std = data.dense[train].std(axis=0)
    std[std == 0] = 1.0
    z_train = (data.dense[train] - mean) / std
    z_test = (data.dense[test] - mean) / std
    for (min_df, sublinear), group in itertools.groupby(
        sorted(configs, key=lambda c: (c.min_df, c.sublinear, c.scale)), key=lambda c: (c.min_df, c.sublinear)
    ):
        x_train, x_test = tfidf(data.counts, train, test, min_df, sublinear)
        for scale, same in itertools.groupby(group, key=lambda c: c.scale):
            a, b = x_train, x_test
            if scale:
                a = sp.hstack([x_train, sp.csr_matrix(z_train * scale)]).tocsr()
                b = sp.hstack([x_test, sp.csr_matrix(z_test * scale)]).tocsr()
            for config in same:
                result[config] = linear.Ridge(alpha=config.alpha).fit(a, data.gain[train]).predict(b)
    return result


def inner_scores(data: Data, train: Index, seed: int) -> dict[Config, float]:
    """APGR of each configuration's pooled inner held-out predictions on the outer training part."""
    inner = data.split(train, f"|inner{seed}", INNER_FOLDS)
    held = {config: np.zeros(len(train)) for config in GRID}
    for j in range(INNER_FOLDS):
        fold = predictions(data, train[inner != j], train[inner == j], GRID)
        for config, values in fold.items():
            held[config][inner == j] = values
    return {config: data.apgr(values, train) for config, values in held.items()}


def best(scores: dict[Config, float], allowed: Sequence[Config]) -> Config:
    """Highest inner APGR; ties go to the earlier (smaller) configuration of the grid."""
    return max(allowed, key=lambda c: (scores[c], -GRID.index(c)))


def ridge_held_out(data: Data, part: Index, salt: str) -> FloatArray:
    """The shipped ridge's pooled held-out predictions on `part` (inner 4-fold by prompt)."""
    inner = data.split(part, salt, INNER_FOLDS)
    held = np.zeros(len(part))
    for j in range(INNER_FOLDS):
        held[inner == j] = predictions(data, part[inner != j], part[inner == j], [SHIPPED])[SHIPPED]
    return held


def staged_corrections(
    data: Data, train: Index, residual: FloatArray, test: Index, depths: Sequence[int]
) -> dict[tuple[int, int], FloatArray]:
    """Boosted trees fitted to `residual` on `train`: their predictions for `test` after each count
    of TREE_COUNTS, per depth (the first n trees of a boosted model are the model of n trees)."""
    ensemble = importlib.import_module("sklearn.ensemble")
    out: dict[tuple[int, int], FloatArray] = {}
    for depth in depths:
        boosted = ensemble.GradientBoostingRegressor(
            max_depth=depth, n_estimators=max(TREE_COUNTS), random_state=0, **GAIN_TREE_OPTIONS
        ).fit(data.tree_inputs[train], residual)
        for count, values in enumerate(boosted.staged_predict(data.tree_inputs[test]), start=1):
            if count in TREE_COUNTS:
                out[depth, count] = values
    return out


def stack_scores(data: Data, train: Index, seed: int) -> dict[Stack, float]:
    """APGR of each stacked setting's pooled inner held-out predictions on the outer training part
    (inside every inner training part, the trees learn the residual of that part's own held-out ridge)."""
    inner = data.split(train, f"|inner{seed}", INNER_FOLDS)
    held = {stack: np.zeros(len(train)) for stack in STACKS}
    for j in range(INNER_FOLDS):
        fit_part, test_part = train[inner != j], train[inner == j]
        ridge = predictions(data, fit_part, test_part, [SHIPPED])[SHIPPED]
        residual = data.gain[fit_part] - ridge_held_out(data, fit_part, f"|stack{seed}.{j}")
        corrections = staged_corrections(data, fit_part, residual, test_part, TREE_DEPTHS)
        for stack in STACKS:
            held[stack][inner == j] = ridge + stack.shrink * corrections[stack.depth, stack.trees]
    return {stack: data.apgr(values, train) for stack, values in held.items()}


def stacked(data: Data, train: Index, test: Index, stack: Stack, salt: str) -> FloatArray:
    """The stacked head fitted on `train` (trees on the residual of the ridge's held-out output)."""
    ridge = predictions(data, train, test, [SHIPPED])[SHIPPED]
    if not stack.shrink:
        return ridge
    residual = data.gain[train] - ridge_held_out(data, train, salt)
    correction = staged_corrections(data, train, residual, test, [stack.depth])[stack.depth, stack.trees]
    return ridge + stack.shrink * correction


def outer_folds(data: Data, seed: int) -> Index:
    if seed == 0:
        return folds(data.rows, OUTER_FOLDS)
    return data.split(np.arange(len(data.rows)), f"|outer{seed}", OUTER_FOLDS)


STACKED = "ridge + trees on its held-out residual, tuned (the shipped head's procedure)"
TFIDF_TUNED = ("ridge family, tuned", "ridge + difficulty columns, tuned")
CANDIDATES = {"tfidf": TFIDF_TUNED, "stacked": (STACKED,)}


def run_seed(data: Data, seed: int, groups: Sequence[str]) -> dict[str, Any]:
    """One fold seed: the ridge alone and the candidates of `groups` (keys of CANDIDATES)."""
    fold = outer_folds(data, seed)
    names = [RIDGE, *(name for group in groups for name in CANDIDATES[group])]
    allowed = {TFIDF_TUNED[0]: [c for c in GRID if c.scale == 0.0], TFIDF_TUNED[1]: GRID}
    held = {name: np.zeros(len(data.rows)) for name in names}
    chosen: dict[str, list[dict[str, Any]]] = {name: [] for name in names[1:]}
    for f in range(OUTER_FOLDS):
        train = np.nonzero(fold != f)[0]
        test = np.nonzero(fold == f)[0]
        picks = {RIDGE: SHIPPED}
        if "tfidf" in groups:
            scores = inner_scores(data, train, seed)
            for name, configs in allowed.items():
                picks[name] = best(scores, configs)
                chosen[name].append({**picks[name].__dict__, "inner_apgr": round(scores[picks[name]], 4)})
        fitted = predictions(data, train, test, list(dict.fromkeys(picks.values())))
        for name, pick in picks.items():
            held[name][test] = fitted[pick]
        if "stacked" in groups:
            stack_inner = stack_scores(data, train, seed)
            stack = max(STACKS, key=lambda s: (stack_inner[s], -STACKS.index(s)))
            held[STACKED][test] = stacked(data, train, test, stack, f"|stack{seed}")
            chosen[STACKED].append({**stack.__dict__, "inner_apgr": round(stack_inner[stack], 4)})
    everything = np.arange(len(data.rows))
    return {
        "seed": seed,
        "apgr": {name: data.apgr(values, everything) for name, values in held.items()},
        "chosen": chosen,
    }


def select_stack(data: Data) -> dict[str, Any]:
    """The stacked setting inner CV chooses on all the rows: what the shipped head uses."""
    scores = stack_scores(data, np.arange(len(data.rows)), 0)
    stack = max(STACKS, key=lambda s: (scores[s], -STACKS.index(s)))
    return {"chosen": stack.__dict__, "apgr": {str(tuple(s.__dict__.values())): v for s, v in scores.items()}}


def run_fixed(data: Data, seed: int, configs: Sequence[Config]) -> dict[str, Any]:
    """Plain outer CV of fixed configurations (no inner CV: not an honest estimate for a
    configuration that was picked by looking at outer-CV results; shows their spread over seeds)."""
    fold = outer_folds(data, seed)
    held = {config: np.zeros(len(data.rows)) for config in configs}
    for f in range(OUTER_FOLDS):
        train = np.nonzero(fold != f)[0]
        test = np.nonzero(fold == f)[0]
        for config, values in predictions(data, train, test, configs).items():
            held[config][test] = values
    everything = np.arange(len(data.rows))
    return {
        "seed": seed,
        "apgr": {label(c): data.apgr(values, everything) for c, values in held.items()},
    }


def label(config: Config) -> str:
    if config == SHIPPED:
        return RIDGE
    return f"fixed alpha={config.alpha:g} min_df={config.min_df} sublinear={config.sublinear} scale={config.scale:g}"


def parse_config(text: str) -> Config:
    alpha, min_df, sublinear, scale = text.split(",")
    return Config(float(alpha), int(min_df), sublinear.lower() in ("1", "true"), float(scale))


def check_tfidf(data: Data) -> float:
    """Largest difference between this script's shipped configuration and train.fit on fold 0."""
    fold = folds(data.rows, OUTER_FOLDS)
    train, test = np.nonzero(fold != 0)[0], np.nonzero(fold == 0)[0]
    ours = predictions(data, train, test, [SHIPPED])[SHIPPED]
    theirs = fit([data.docs[i] for i in train], data.gain[train]).predict_documents(
        [data.docs[i] for i in test]
    )
    return float(np.max(np.abs(ours - theirs)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--routing", default=str(DEFAULT_ROUTING))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", help="write the results here (JSON)")
    parser.add_argument(
        "--fixed",
        action="append",
        type=parse_config,
        help="instead of nested CV: plain outer CV of this configuration, ALPHA,MIN_DF,SUBLINEAR,SCALE "
        "(repeatable; the ridge alone is always included)",
    )
    parser.add_argument(
        "--candidates",
        default="tfidf,stacked",
        help="comma-separated: tfidf (the TF-IDF family and difficulty columns, tuned), stacked (ridge + "
        "trees on its residual, tuned)",
    )
    parser.add_argument(
        "--select", action="store_true", help="also choose the stacked setting by inner CV on all rows"
    )
    args = parser.parse_args(argv)
    groups = [g for g in args.candidates.split(",") if g]
    if unknown := set(groups) - set(CANDIDATES):
        parser.error(f"unknown candidates {sorted(unknown)}")
    start = time.time()
    data = Data(labelled_rows(read_labelled(Path(args.routing))))
    difference = check_tfidf(data)
    print(f"{len(data.rows)} rows; TF-IDF check against train.fit: max |diff| {difference:.2e}", flush=True)
    if difference > 1e-6:
        raise SystemExit("this script's TF-IDF does not reproduce train.fit")
    results = []
    for seed in range(args.seeds):
        if args.fixed:
            result = run_fixed(data, seed, list(dict.fromkeys([SHIPPED, *args.fixed])))
        else:
            result = run_seed(data, seed, groups)
        results.append(result)
        shown = ", ".join(f"{name} {value:.4f}" for name, value in result["apgr"].items())
        print(f"seed {seed}: {shown} ({time.time() - start:.0f} s)", flush=True)
    summary = {}
    for name in results[0]["apgr"]:
        values = [r["apgr"][name] for r in results]
        summary[name] = {"mean": float(np.mean(values)), "min": min(values), "max": max(values)}
        print(f"{name}: mean {np.mean(values):.4f}, min {min(values):.4f}, max {max(values):.4f}")
    ridge = np.array([r["apgr"][RIDGE] for r in results])
    for name in list(summary)[1:]:
        paired = np.array([r["apgr"][name] for r in results]) - ridge
        summary[name]["minus_ridge_alone"] = {
            "mean": float(paired.mean()),
            "min": paired.min(),
            "max": paired.max(),
        }
        print(
            f"{name} - ridge alone, per seed: mean {paired.mean():+.4f}, min {paired.min():+.4f}, max {paired.max():+.4f}"
        )
    selection = None
    if args.select:
        selection = select_stack(data)
        print(f"stacked setting chosen by inner CV on all rows: {selection['chosen']}", flush=True)
    if args.out:
        report = {
            "command": " ".join(["python", "scripts/gain_nested_cv.py", *sys.argv[1:]]),
            "machine": machine(),
            "seconds": round(time.time() - start),
            "fixed": [c.__dict__ for c in args.fixed or []],
            "grid": {"alpha": ALPHAS, "min_df": MIN_DFS, "sublinear_tf": SUBLINEAR, "scale": SCALES},
            "stacked_grid": {
                "depth": TREE_DEPTHS,
                "trees": TREE_COUNTS,
                "shrink": SHRINKS,
                "fixed": GAIN_TREE_OPTIONS,
            },
            "stacked_selected_on_all_rows": selection,
            "ridge_settings": SHIPPED.__dict__,
            "outer_folds": OUTER_FOLDS,
            "inner_folds": INNER_FOLDS,
            "summary": summary,
            "seeds": results,
        }
        Path(args.out).write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
