"""Prompt complexity, scored on the request path without I/O.

``score(text)`` is the predicted difficulty (``complexity``, calibrated to the rubric's levels);
``scores(prompt)`` gives it together with ``strong_gain``. The model is loaded once, lazily.
"""

from __future__ import annotations

from extproc.complexity.features import Prompt
from extproc.complexity.scorer import MODEL_PATH, ComplexityModel, Explanation, Scores, describe

__all__ = [
    "MODEL_PATH",
    "ComplexityModel",
    "Explanation",
    "Prompt",
    "Scores",
    "describe",
    "explain",
    "model",
    "score",
    "scores",
]

_MODEL: ComplexityModel | None = None


def model() -> ComplexityModel:
    global _MODEL
    if _MODEL is None:
        _MODEL = ComplexityModel.load()
    return _MODEL


def score(text: str) -> float:
    """``complexity`` in [0, 1]: the predicted difficulty level of the prompt, calibrated."""
    return model().score(text)


def scores(prompt: Prompt | str) -> Scores:
    return model().scores(Prompt.from_text(prompt) if isinstance(prompt, str) else prompt)


def explain(prompt: Prompt | str, top: int = 6) -> Explanation:
    return model().explain(Prompt.from_text(prompt) if isinstance(prompt, str) else prompt, top)
