"""The two complexity outputs, computed together on the request path (numpy only, no I/O).

- ``complexity``: predicted difficulty on the 1-5 rubric of docs/complexity.md, calibrated to
  [0, 1] so that level L sits at (L - 1) / 4: level 1 → 0, 2 → 0.25, 3 → 0.5, 4 → 0.75, 5 → 1;
  the band of level L is ±0.125 around it (so `complexity > 0.625` ≈ "level 4 and up").
  A ridge regression over the named features of `extproc.complexity.features`, trained on the
  graded prompt set.
- ``strong_gain``: how much the strong model is likely to beat the weak one, the lexical head
  (`extproc.complexity.lexical`) trained on labelled routing data, calibrated to its percentile.

Both live in one model file and share one tokenization of the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from extproc.complexity.features import FeatureExtractor, Prompt
from extproc.complexity.lexical import LexicalModel, prepare, tokens

MODEL_PATH = Path(__file__).with_name("model.npz")
LEVELS = (1, 2, 3, 4, 5)
# Inside [EDGE, 1 - EDGE] the calibrated score is linear in the predicted level; beyond, it
# approaches 0 or 1 smoothly (never clipped flat, so the order of very easy or very hard prompts survives).
EDGE = 0.04

FloatArray = npt.NDArray[np.float64]


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
class DifficultyHead:
    """level = intercept + weights · features; calibrated with the held-out fit level ≈ a·raw + b."""

    names: tuple[str, ...]
    weights: FloatArray
    intercept: float
    mean: FloatArray  # the training features' mean: contributions are measured from it
    calibration: tuple[float, float]  # (a, b)

    def level(self, raw: float) -> float:
        a, b = self.calibration
        return a * raw + b

    def arrays(self, prefix: str) -> dict[str, Any]:
        return {
            prefix + "names": np.frombuffer("\n".join(self.names).encode(), dtype=np.uint8),
            prefix + "weights": self.weights,
            prefix + "intercept": np.array(self.intercept),
            prefix + "mean": self.mean,
            prefix + "calibration": np.array(self.calibration),
        }

    @classmethod
    def from_arrays(cls, data: Any, prefix: str) -> DifficultyHead:
        a, b = (float(v) for v in data[prefix + "calibration"])
        return cls(
            tuple(bytes(data[prefix + "names"]).decode().split("\n")),
            data[prefix + "weights"].astype(np.float64),
            float(data[prefix + "intercept"]),
            data[prefix + "mean"].astype(np.float64),
            (a, b),
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
    # The lexical head's strongest n-grams, (n-gram or "bias", contribution to its raw score).
    gain_features: list[tuple[str, float]]


class ComplexityModel:
    def __init__(self, difficulty: DifficultyHead, gain: LexicalModel) -> None:
        self.difficulty = difficulty
        self.gain = gain
        self.extractor = FeatureExtractor(gain.token_ids)
        if tuple(self.extractor.names) != difficulty.names:
            raise ValueError("the model file was trained with other difficulty features; retrain it")

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> ComplexityModel:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                DifficultyHead.from_arrays(data, "difficulty."), LexicalModel.from_arrays(data, "gain.")
            )

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **self.difficulty.arrays("difficulty."), **self.gain.arrays("gain."))

    # -- the request path -------------------------------------------------------------------

    def _features(self, prompt: Prompt) -> tuple[FloatArray, float]:
        """The difficulty features and the lexical head's raw output, from one tokenization."""
        prepared = prepare(prompt.final)
        toks = tokens(prepared)
        ids = self.extractor.ids(toks)
        if prompt.text is None:
            gain_raw = self.gain.raw_of_ids(ids)
        else:
            gain_raw = self.gain.raw_of_ids(self.extractor.ids(tokens(prepare(prompt.text))))
        return self.extractor.vector_from(prompt, prepared, toks, ids, gain_raw), gain_raw

    def scores(self, prompt: Prompt) -> Scores:
        features, gain_raw = self._features(prompt)
        head = self.difficulty
        raw = float(features @ head.weights) + head.intercept
        return Scores(level_to_score(head.level(raw)), self.gain.calibrate(gain_raw))

    def score(self, text: str) -> float:
        """``complexity`` of a plain-text prompt."""
        return self.scores(Prompt.from_text(text)).complexity

    def strong_gain(self, text: str) -> float:
        return self.gain.score(text)

    def explain(self, prompt: Prompt, top: int = 6) -> Explanation:
        features, gain_raw = self._features(prompt)
        head = self.difficulty
        a = head.calibration[0]
        # Contributions in score units (level / 4), measured from the average training prompt.
        parts = a * head.weights * (features - head.mean) / 4.0
        level = head.level(float(features @ head.weights) + head.intercept)
        baseline = (level - 1.0) / 4.0 - float(parts.sum())
        order = np.argsort(-np.abs(parts), kind="stable")[:top]
        gain = self.gain.explain(prompt.full_text, top)
        return Explanation(
            complexity=level_to_score(level),
            strong_gain=self.gain.calibrate(gain_raw),
            level=level,
            features=[(head.names[i], float(parts[i])) for i in order if parts[i] != 0.0],
            baseline=baseline,
            gain_features=gain.features,
        )


def describe(explanation: Explanation, top: int = 3) -> list[str]:
    """The strongest contributions in words, e.g. ["proof cue +0.20", "length -0.05"]."""
    return [f"{name} {value:+.2f}" for name, value in explanation.features[:top]]
