"""Prompt complexity: how hard a request is, scored on the request path without I/O.

``score(text)`` is the public entry point; the model is loaded once, lazily.
"""

from extproc.complexity.scorer import MODEL_PATH, ComplexityModel, explain, model, score

__all__ = ["MODEL_PATH", "ComplexityModel", "explain", "model", "score"]
