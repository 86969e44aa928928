"""Prompt complexity: how much a prompt needs the strong model, as a score in [0, 1].

A small logistic model over a learned unigram vocabulary (ASCII words, and single characters of
non-ASCII scripts such as Chinese, where words are not space-separated) plus cheap signals
(length, digits, math and code markers, multiple-choice shape, reasoning cues). The raw logit
is calibrated to the held-out percentile on the training data, so a policy's
`complexity > 0.7` means "harder than 70 % of the calibration prompts". No I/O after the model
file is loaded once; numpy only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

MODEL_PATH = Path(__file__).with_name("complexity_model.npz")
# Bounded work for huge prompts: the start (instructions, question) and the end (the ask).
HEAD_CHARS = 4096
TAIL_CHARS = 1024

_TOKEN = re.compile(r"[a-z0-9]+|[^\x00-\x7f]")
_DIGIT = re.compile(r"\d")
_MATH = re.compile(r"[=+*/^<>%$]|\\frac|\\sqrt|\d\s*[x\u00d7]\s*\d")
_CHOICES = re.compile(r"(?m)^\s*[a-d][.)]\s")  # text is lower-cased first
_CUES = re.compile(
    r"\b(step|steps|explain|prove|derive|calculate|compute|how many|how much|total|solve|why|"
    r"compare|analy[sz]e|implement|algorithm|optimi[sz]e|debug)\b"
)

SIGNAL_NAMES = (
    "bias",
    "log_chars",
    "digit_ratio",
    "math_marks",
    "code_block",
    "choices",
    "reasoning_cues",
    "non_ascii_ratio",
    "question_marks",
    "lines",
)


def prepare(text: str) -> str:
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]
    return text.lower()


def signals(text: str) -> npt.NDArray[np.float64]:
    """The cheap, explainable features, in SIGNAL_NAMES order (text already prepared)."""
    n = max(1, len(text))
    # Extra UTF-8 bytes approximate the non-ASCII share without a Python loop over characters.
    non_ascii = 0 if text.isascii() else (len(text.encode("utf-8", "surrogatepass")) - len(text)) / 2
    return np.array(
        [
            1.0,
            math.log1p(len(text)),
            len(_DIGIT.findall(text)) / n * 10,
            min(20, len(_MATH.findall(text))) / 5,
            1.0 if "```" in text or "def " in text or "{" in text else 0.0,
            1.0 if len(_CHOICES.findall(text)) >= 3 else 0.0,
            min(10, len(_CUES.findall(text))) / 3,
            non_ascii / n,
            min(5, text.count("?")) / 2,
            math.log1p(text.count("\n")),
        ]
    )


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class ComplexityExplanation:
    score: float
    raw: float
    features: list[tuple[str, float]]  # (feature, contribution to the raw logit), largest first


class ComplexityModel:
    def __init__(
        self,
        vocab: dict[str, int],
        token_weights: npt.NDArray[np.float64],
        signal_weights: npt.NDArray[np.float64],
        signal_mean: npt.NDArray[np.float64],
        signal_scale: npt.NDArray[np.float64],
        quantiles: npt.NDArray[np.float64],
    ) -> None:
        self.vocab = vocab
        self.token_weights = token_weights
        self.signal_weights = signal_weights
        self.signal_mean = signal_mean
        self.signal_scale = signal_scale
        self.quantiles = quantiles
        self._levels = np.linspace(0.0, 1.0, len(quantiles))
        # Signals with zero weight are skipped on the hot path (each is a regex pass over the text).
        self._length_only = not np.any(signal_weights[2:])

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> ComplexityModel:
        with np.load(path, allow_pickle=False) as data:
            words = [str(w) for w in data["vocab"]]
            return cls(
                {w: i for i, w in enumerate(words)},
                data["token_weights"].astype(np.float64),
                data["signal_weights"].astype(np.float64),
                data["signal_mean"].astype(np.float64),
                data["signal_scale"].astype(np.float64),
                data["quantiles"].astype(np.float64),
            )

    def _token_rows(self, text: str) -> list[int]:
        vocab = self.vocab
        # Each distinct token counts once: presence, not frequency, generalised better.
        return [i for i in {vocab.get(t, -1) for t in tokens(text)} if i >= 0]

    def raw(self, text: str) -> float:
        prepared = prepare(text)
        rows = self._token_rows(prepared)
        token_part = float(self.token_weights[rows].sum()) / math.sqrt(len(rows) + 1) if rows else 0.0
        if self._length_only:
            length = (math.log1p(len(prepared)) - self.signal_mean[1]) / self.signal_scale[1]
            return float(self.signal_weights[0] + length * self.signal_weights[1]) + token_part
        z = (signals(prepared) - self.signal_mean) / self.signal_scale
        return float(z @ self.signal_weights) + token_part

    def calibrate(self, raw: float) -> float:
        return float(np.interp(raw, self.quantiles, self._levels))

    def score(self, text: str) -> float:
        return self.calibrate(self.raw(text))

    def explain(self, text: str, top: int = 8) -> ComplexityExplanation:
        prepared = prepare(text)
        rows = self._token_rows(prepared)
        z = (signals(prepared) - self.signal_mean) / self.signal_scale
        contributions = [
            (f"signal:{name}", float(v))
            for name, v in zip(SIGNAL_NAMES, z * self.signal_weights, strict=True)
        ]
        words = {i: w for w, i in self.vocab.items() if i in set(rows)}
        norm = math.sqrt(len(rows) + 1)
        contributions += [(f"word:{words[i]}", float(self.token_weights[i]) / norm) for i in rows]
        raw = sum(v for _, v in contributions)
        contributions.sort(key=lambda item: -abs(item[1]))
        return ComplexityExplanation(self.calibrate(raw), raw, contributions[:top])


_MODEL: ComplexityModel | None = None


def model() -> ComplexityModel:
    global _MODEL
    if _MODEL is None:
        _MODEL = ComplexityModel.load()
    return _MODEL


def score(text: str) -> float:
    """Complexity in [0, 1]: higher means the prompt more likely needs the strong model."""
    return model().score(text)


def explain(text: str, top: int = 8) -> ComplexityExplanation:
    return model().explain(text, top)
