"""The decision / audit log: one JSON line per request (sampled), always for errors and sheds.

Sampling is a pure function of the request id, so the two ext_proc streams of one request
(routing and response observation) agree on it without talking to each other. Prompt text is
never written unless ``include_prompt`` is set. Lines go to a rotating file or to stdout through
the logging module's handlers, which write from the caller's thread: the log is sampled so that
this stays a small cost (see docs/observability.md).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_LOGGER_NAME = "llm_extproc.decisions"
_SAMPLE_SPACE = 1 << 32


@dataclass(slots=True)
class DecisionLogConfig:
    # "" disables the log, "-" is stdout, anything else a file rotated at max_bytes.
    path: str = ""
    sample_rate: float = 0.01
    include_prompt: bool = False
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 5


class DecisionLog:
    def __init__(self, config: DecisionLogConfig) -> None:
        self.config = config
        self.enabled = bool(config.path)
        self.lines_written = 0
        self._threshold = int(max(0.0, min(1.0, config.sample_rate)) * _SAMPLE_SPACE)
        self._logger = logging.getLogger(f"{_LOGGER_NAME}.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handler: logging.Handler | None = None
        if self.enabled:
            handler: logging.Handler
            if config.path == "-":
                handler = logging.StreamHandler(sys.stdout)
            else:
                handler = logging.handlers.RotatingFileHandler(
                    config.path, maxBytes=config.max_bytes, backupCount=config.backups, encoding="utf-8"
                )
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)
            self._handler = handler

    @property
    def sample_below(self) -> int:
        """sampled(id) is crc32(id) < this (0: nothing is sampled); the Wasm filter gets it in
        its snapshot and samples alike."""
        return self._threshold if self.enabled else 0

    def sampled(self, request_id: str) -> bool:
        """Deterministic per request id: the same answer on every stream and replica."""
        if not self.enabled or self._threshold == 0:
            return False
        return zlib.crc32(request_id.encode()) < self._threshold

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._logger.info(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str))
        self.lines_written += 1

    def close(self) -> None:
        if self._handler is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        self.enabled = False
