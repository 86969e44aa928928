"""The two complexity outputs, computed together on the request path (numpy only, no I/O).

- ``complexity``: predicted difficulty on the 1-5 rubric of docs/complexity.md, calibrated to
  [0, 1] so that level L sits at (L - 1) / 4: level 1 → 0, 2 → 0.25, 3 → 0.5, 4 → 0.75, 5 → 1;
  the band of level L is ±0.125 around it (so `complexity > 0.625` ≈ "level 4 and up").
  The average of a ridge regression and boosted regression trees over the named features of
  `extproc.complexity.features`, trained on the graded prompt set.
- ``strong_gain``: how much the strong model is likely to beat the weak one, the lexical head
  (`extproc.complexity.lexical`) plus a small correction by boosted trees over the difficulty
  features and the numbers in the question (`GainTrees`), trained on labelled routing data and
  calibrated to its percentile.

Both live in one model file and share one tokenization of the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from extproc.complexity.features import FeatureExtractor, Prompt, numbers_before_choices, phrase
from extproc.complexity.lexical import Ints, LexicalModel, encode, interpolate, prepare
from extproc.complexity.native import Difficulty, Scanner, available, scanner
from extproc.request import ParsedRequest

MODEL_PATH = Path(__file__).with_name("model.npz")
# Inside [EDGE, 1 - EDGE] the calibrated score is linear in the predicted level; beyond, it
# approaches 0 or 1 smoothly (never clipped flat, so the order of very easy or very hard prompts survives).
EDGE = 0.04

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def level_to_score(level: float) -> float:
    """The calibrated score of a (fractional) predicted level."""
    x = (level - 1.0) / 4.0
    if x < EDGE:
        return EDGE * math.exp((x - EDGE) / EDGE)
    if x > 1.0 - EDGE:
        return 1.0 - EDGE * math.exp((1.0 - EDGE - x) / EDGE)
    return x


def score_to_level(score: float) -> int:
    """The rubric level whose band holds the score."""
    return min(5, max(1, math.floor(score * 4.0 + 0.5) + 1))


@dataclass(frozen=True, slots=True)
class Trees:
    """Gradient-boosted regression trees, each padded to a complete binary tree of `depth` in heap
    order (node i has children 2i+1 and 2i+2; a split goes right when feature > threshold)."""

    feature: IntArray  # (trees, internal nodes)
    threshold: FloatArray  # (trees, internal nodes); +inf pads a leaf that ended early
    value: FloatArray  # (trees, all nodes): the mean residual of each node (leaves: the prediction)
    init: float
    rate: float
    # derived once, for the request path
    _depth: int = field(init=False)
    _shape: tuple[int, int] = field(init=False)
    _bits: npt.NDArray[np.uint8] | IntArray = field(init=False)
    _code_base: IntArray = field(init=False)
    _flat_feature: IntArray = field(init=False)
    _flat_threshold: FloatArray = field(init=False)
    _leaf_table: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        trees, internal = self.feature.shape
        depth = int(internal + 1).bit_length() - 1
        # For every pattern of split decisions (bit i: node i goes right), the leaf reached.
        codes = np.arange(2**internal)
        node = np.zeros(len(codes), dtype=np.int64)
        for _ in range(depth):
            node = 2 * node + 1 + ((codes >> node) & 1)
        derived = {
            "_depth": depth,
            "_shape": (trees, internal),
            # a tree's decisions as the bits of one byte when they fit (a uint8 product is the cheapest)
            "_bits": (1 << np.arange(internal)).astype(np.uint8 if internal <= 8 else np.int64),
            "_code_base": np.arange(trees, dtype=np.int64) * len(codes),
            "_flat_feature": np.ascontiguousarray(self.feature).ravel(),
            "_flat_threshold": np.ascontiguousarray(self.threshold).ravel(),
            "_leaf_table": np.ascontiguousarray(self.value[:, node]).ravel(),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def depth(self) -> int:
        return self._depth

    def _leaves(self, features: FloatArray) -> tuple[IntArray, IntArray]:
        """Per tree, the heap index of the leaf reached, and of the nodes on the way (trees by depth)."""
        # the trees were fitted on float32 features: compare exactly as scikit-learn does
        x = features.astype(np.float32)
        trees, internal = self.feature.shape
        base = np.arange(trees) * internal
        node = np.zeros(trees, dtype=np.int64)
        path = np.empty((trees, self.depth), dtype=np.int64)
        flat_feature = self.feature.ravel()
        flat_threshold = self.threshold.ravel()
        for level in range(self.depth):
            path[:, level] = node
            at = base + node
            node = 2 * node + 1 + (x[flat_feature[at]] > flat_threshold[at])
        return node, path

    def predict(self, features: FloatArray) -> float:
        """`contributions` summed, without the path bookkeeping (the request path): every split
        of every tree is decided at once, and each tree's decisions, as the bits of a number,
        index a table of the leaf values they lead to."""
        decisions = features.astype(np.float32).take(self._flat_feature) > self._flat_threshold
        codes = decisions.reshape(self._shape).view(np.uint8) @ self._bits
        return self.init + self.rate * float(self._leaf_table.take(self._code_base + codes).sum())

    def contributions(self, features: FloatArray) -> tuple[FloatArray, float]:
        """Each feature's share of the prediction (the value change at the splits on it, summed
        over trees) and the baseline (the roots); they add up to `predict`."""
        leaves, path = self._leaves(features)
        rows = np.arange(len(leaves))[:, None]
        children = np.concatenate([path[:, 1:], leaves[:, None]], axis=1)
        deltas = self.value[rows, children] - self.value[rows, path]
        split = self.feature[rows, path]
        per_feature = np.bincount(split.ravel(), weights=deltas.ravel(), minlength=len(features)).astype(
            np.float64
        )
        baseline = self.init + self.rate * float(self.value[:, 0].sum())
        return self.rate * per_feature, baseline

    def compiled(self, weights: FloatArray, intercept: float, blend: float, a: float, b: float) -> Difficulty:
        """a · (blend · ridge + (1 - blend) · these trees) + b in C, ridge = weights · x + intercept
        (`native.available()` must hold)."""
        return Difficulty(
            weights=np.ascontiguousarray(weights, dtype=np.float64),
            intercept=intercept,
            blend=blend,
            a=a,
            b=b,
            feature=np.ascontiguousarray(self.feature, dtype=np.int64),
            threshold=np.ascontiguousarray(self.threshold, dtype=np.float64),
            value=np.ascontiguousarray(self.value, dtype=np.float64),
            trees=self.feature.shape[0],
            init=self.init,
            rate=self.rate,
        )

    def arrays(self, prefix: str) -> dict[str, Any]:
        return {
            prefix + "feature": self.feature,
            prefix + "threshold": self.threshold,
            prefix + "value": self.value,
            prefix + "init": np.array(self.init),
            prefix + "rate": np.array(self.rate),
        }

    @classmethod
    def from_arrays(cls, data: Any, prefix: str) -> Trees:
        return cls(
            data[prefix + "feature"].astype(np.int64),
            data[prefix + "threshold"].astype(np.float64),
            data[prefix + "value"].astype(np.float64),
            float(data[prefix + "init"]),
            float(data[prefix + "rate"]),
        )


@dataclass(frozen=True, slots=True)
class DifficultyHead:
    """raw = blend · ridge + (1 - blend) · trees, both predicting the level from the same named
    features; the calibrated level is a·raw + b (fitted on held-out predictions)."""

    names: tuple[str, ...]
    weights: FloatArray  # ridge, in raw feature units
    intercept: float
    mean: FloatArray  # the training features' mean: ridge contributions are measured from it
    trees: Trees
    blend: float
    calibration: tuple[float, float]  # (a, b)

    def raw(self, features: FloatArray) -> float:
        ridge = float(features @ self.weights) + self.intercept
        return self.blend * ridge + (1.0 - self.blend) * self.trees.predict(features)

    def level(self, raw: float) -> float:
        a, b = self.calibration
        return a * raw + b

    def compiled(self) -> Difficulty:
        """`level(raw(features))` in C, on a list of floats (`native.available()` must hold)."""
        a, b = self.calibration
        return self.trees.compiled(self.weights, self.intercept, self.blend, a, b)

    def contributions(self, features: FloatArray) -> tuple[FloatArray, float]:
        """Per feature, its part of the calibrated level; and the level of "no contribution"."""
        ridge = self.weights * (features - self.mean)
        tree, tree_base = self.trees.contributions(features)
        a, b = self.calibration
        ridge_base = self.intercept + float(self.mean @ self.weights)
        parts = a * (self.blend * ridge + (1.0 - self.blend) * tree)
        return parts, a * (self.blend * ridge_base + (1.0 - self.blend) * tree_base) + b

    def arrays(self, prefix: str) -> dict[str, Any]:
        return {
            prefix + "names": np.frombuffer("\n".join(self.names).encode(), dtype=np.uint8),
            prefix + "weights": self.weights,
            prefix + "intercept": np.array(self.intercept),
            prefix + "mean": self.mean,
            prefix + "blend": np.array(self.blend),
            prefix + "calibration": np.array(self.calibration),
            **self.trees.arrays(prefix + "trees."),
        }

    @classmethod
    def from_arrays(cls, data: Any, prefix: str) -> DifficultyHead:
        a, b = (float(v) for v in data[prefix + "calibration"])
        return cls(
            tuple(bytes(data[prefix + "names"]).decode().split("\n")),
            data[prefix + "weights"].astype(np.float64),
            float(data[prefix + "intercept"]),
            data[prefix + "mean"].astype(np.float64),
            Trees.from_arrays(data, prefix + "trees."),
            float(data[prefix + "blend"]),
            (a, b),
        )


@dataclass(frozen=True, slots=True)
class GainTrees:
    """The strong_gain head's second part: `shrink` x boosted trees over the difficulty features
    and `numbers_before_choices` of the final message, fitted to what the lexical head's held-out
    output left unexplained. The lexical output plus this correction is calibrated to its
    percentile by `quantiles` (the held-out sums of the training rows)."""

    trees: Trees
    shrink: float
    quantiles: FloatArray
    _quantile_list: list[float] = field(init=False)
    _level_list: list[float] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_quantile_list", self.quantiles.tolist())
        object.__setattr__(self, "_level_list", np.linspace(0.0, 1.0, len(self.quantiles)).tolist())

    def correction(self, features: FloatArray, numbers: int) -> float:
        return self.shrink * self.trees.predict(np.append(features, float(numbers)))

    def calibrate(self, raw: float) -> float:
        """The percentile of the lexical raw output plus `correction`."""
        return interpolate(raw, self._quantile_list, self._level_list)

    def compiled(self, inputs: int) -> Difficulty:
        """`correction` in C, on `inputs` values: a Difficulty of shrink x trees (no ridge part)."""
        return self.trees.compiled(np.zeros(inputs), 0.0, 0.0, self.shrink, 0.0)

    def arrays(self, prefix: str) -> dict[str, Any]:
        return {
            prefix + "shrink": np.array(self.shrink),
            prefix + "quantiles": self.quantiles,
            **self.trees.arrays(prefix + "trees."),
        }

    @classmethod
    def from_arrays(cls, data: Any, prefix: str) -> GainTrees | None:
        """None for a model file without them (the lexical head alone)."""
        if prefix + "shrink" not in data:
            return None
        return cls(
            Trees.from_arrays(data, prefix + "trees."),
            float(data[prefix + "shrink"]),
            data[prefix + "quantiles"].astype(np.float64),
        )


@dataclass(frozen=True, slots=True)
class Scores:
    complexity: float
    strong_gain: float


@dataclass(frozen=True, slots=True)
class Explanation:
    complexity: float
    strong_gain: float
    level: float  # the predicted rubric level (before calibration to [0, 1])
    # (feature name, its contribution to `complexity`), largest magnitude first; the contributions
    # and `baseline` add up to the linear score (before the smooth squashing near 0 and 1).
    features: list[tuple[str, float]]
    baseline: float
    phrases: list[str]  # each of `features` with its value in words ("length 1,900 tokens")
    # The strong_gain head's strongest parts, (n-gram, "bias" or the trees, contribution to its raw score).
    gain_features: list[tuple[str, float]]


class ComplexityModel:
    def __init__(
        self,
        difficulty: DifficultyHead,
        gain: LexicalModel,
        gain_trees: GainTrees | None = None,
        native: bool = True,
    ) -> None:
        """``gain_trees``: the strong_gain head's correction (None: the lexical head alone).
        ``native``: score with the C loops of `extproc.complexity.native` when they were built
        (False: the numpy reference, which gives the same scores)."""
        self.difficulty = difficulty
        self.gain = gain
        self.gain_trees = gain_trees
        self.extractor = FeatureExtractor(gain.token_ids)
        # the extractor's ids, as the lexical head knows them: its own tokens keep their ids, the
        # tokens only the cue words add are unknown (0) to it
        self._gain_id: Ints = np.arange(
            self.extractor.base, dtype=np.int32 if self.extractor.base < 2**31 else np.int64
        )
        self._gain_id[len(gain.vocab) + 1 :] = 0
        if tuple(self.extractor.names) != difficulty.names:
            raise ValueError("the model file was trained with other difficulty features; retrain it")
        # the request path's loops in C (extproc.complexity.native), when built
        self.scanner: Scanner | None = None
        self.compiled_difficulty: Difficulty | None = None
        if native and available(gain):
            self.compiled_difficulty = difficulty.compiled()
            compiled_trees = None if gain_trees is None else gain_trees.compiled(len(difficulty.names) + 1)
            self.scanner = scanner(self.extractor, gain, self.compiled_difficulty, compiled_trees)

    @classmethod
    def load(cls, path: Path = MODEL_PATH, native: bool = True) -> ComplexityModel:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                DifficultyHead.from_arrays(data, "difficulty."),
                LexicalModel.from_arrays(data, "gain."),
                GainTrees.from_arrays(data, "gain_trees."),
                native,
            )

    def save(self, path: Path) -> None:
        trees = {} if self.gain_trees is None else self.gain_trees.arrays("gain_trees.")
        np.savez_compressed(
            path, **self.difficulty.arrays("difficulty."), **self.gain.arrays("gain."), **trees
        )

    # -- the request path -------------------------------------------------------------------

    def _features(self, prompt: Prompt) -> tuple[FloatArray, float]:
        """The difficulty features and the strong_gain head's raw output (lexical plus the trees'
        correction), from one tokenization (of the final message; the lexical head reads the whole
        text when there is more)."""
        extractor = self.extractor
        prepared = prepare(prompt.final)
        raw = encode(prepared)
        ids = extractor.text_ids(prepared, raw)
        if prompt.text is None:
            gain_ids = ids
        else:
            whole = prepare(prompt.text)
            gain_ids = extractor.text_ids(whole, encode(whole))
        gain_raw = self.gain.raw_of_known_ids(self._gain_id.take(gain_ids))
        features = extractor.vector_from(prompt, prepared, ids, raw)
        if self.gain_trees is not None:
            gain_raw += self.gain_trees.correction(features, numbers_before_choices(prepared))
        return features, gain_raw

    def calibrate_gain(self, raw: float) -> float:
        """`strong_gain` of the head's raw output."""
        trees = self.gain_trees
        return self.gain.calibrate(raw) if trees is None else trees.calibrate(raw)

    def scores(self, prompt: Prompt) -> Scores:
        scan = self.scanner
        if scan is None:
            features, gain_raw = self._features(prompt)
            head = self.difficulty
            return Scores(level_to_score(head.level(head.raw(features))), self.calibrate_gain(gain_raw))
        # `_features` and the two heads in C (the same numbers)
        prepared = prepare(prompt.final)
        whole = prompt.text
        level, gain_raw, correction = scan.score(
            prepared,
            encode(prepared),
            prompt.turns,
            prompt.context_tokens,
            prompt.system_tokens,
            whole is None,
        )
        if whole is not None:
            gain_raw = scan.gain(encode(prepare(whole)))
        return Scores(level_to_score(level), self.calibrate_gain(gain_raw + correction))

    def score_request(self, request: ParsedRequest) -> Scores:
        """Both scores of a parsed request (the request path's entry point)."""
        return self.scores(Prompt.from_request(request))

    def top_features(self, request: ParsedRequest, top: int = 3) -> list[str]:
        """The strongest contributions to a request's complexity in words, for the decision log."""
        return describe(self.explain(Prompt.from_request(request), top, with_gain=False), top)

    def score(self, text: str) -> float:
        """``complexity`` of a plain-text prompt."""
        return self.scores(Prompt.from_text(text)).complexity

    def strong_gain(self, text: str) -> float:
        return self.scores(Prompt.from_text(text)).strong_gain

    def explain(self, prompt: Prompt, top: int = 6, with_gain: bool = True) -> Explanation:
        features, gain_raw = self._features(prompt)
        head = self.difficulty
        # Contributions in score units (a level is 0.25), from the average training prompt.
        levels, base_level = head.contributions(features)
        parts = levels / 4.0
        level = head.level(head.raw(features))
        baseline = (base_level - 1.0) / 4.0
        order = np.argsort(-np.abs(parts), kind="stable")[:top]
        shown = [int(i) for i in order if parts[i] != 0.0]
        gain_features = self.gain.explain(prompt.full_text, top).features if with_gain else []
        if with_gain and self.gain_trees is not None:
            numbers = numbers_before_choices(prepare(prompt.final))
            correction = self.gain_trees.correction(features, numbers)
            part = (f"trees on the difficulty features and {numbers} numbers in the question", correction)
            gain_features = sorted([*gain_features, part], key=lambda item: -abs(item[1]))[:top]
        return Explanation(
            complexity=level_to_score(level),
            strong_gain=self.calibrate_gain(gain_raw),
            level=level,
            features=[(head.names[i], float(parts[i])) for i in shown],
            baseline=baseline,
            phrases=[phrase(head.names[i], float(features[i])) for i in shown],
            gain_features=gain_features,
        )


def describe(explanation: Explanation, top: int = 3) -> list[str]:
    """The strongest contributions in words, e.g. ["proof cue +0.20", "length 1,900 tokens +0.15"]."""
    return [
        f"{words} {value:+.2f}"
        for words, (_, value) in zip(explanation.phrases[:top], explanation.features[:top], strict=True)
    ]
