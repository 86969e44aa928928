"""The one error type of the request path, and the one place it becomes an HTTP answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

from extproc.headers import RETRY_AFTER_HEADER


class ErrorKind(Enum):
    """What went wrong, from the client's point of view. Each kind has exactly one status."""

    INVALID_REQUEST = (400, "invalid_request_error")
    UNSUPPORTED_MEDIA_TYPE = (415, "invalid_request_error")
    NOT_FOUND = (404, "not_found_error")
    MODEL_NOT_FOUND = (404, "model_not_found")
    METHOD_NOT_ALLOWED = (405, "invalid_request_error")
    BODY_TOO_LARGE = (413, "request_too_large")
    FORBIDDEN = (403, "permission_error")
    RATE_LIMITED = (429, "rate_limit_exceeded")
    OVERLOADED = (429, "server_overloaded")
    NO_CAPACITY = (503, "service_unavailable")
    REJECTED_BY_POLICY = (0, "policy_rejection")  # status comes from the policy rule

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def type(self) -> str:
        return self.value[1]


class ErrorShape(Enum):
    """Whose error format the caller's API speaks."""

    OPENAI = "openai"  # {"error": {"message", "type", "code"}}
    ANTHROPIC = "anthropic"  # {"type": "error", "error": {"type", "message"}}


# Anthropic's error types (docs.anthropic.com/en/api/errors), by our kind.
_ANTHROPIC_TYPE = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: "invalid_request_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.MODEL_NOT_FOUND: "not_found_error",
    ErrorKind.METHOD_NOT_ALLOWED: "invalid_request_error",
    ErrorKind.BODY_TOO_LARGE: "request_too_large",
    ErrorKind.FORBIDDEN: "permission_error",
    ErrorKind.RATE_LIMITED: "rate_limit_error",
    ErrorKind.OVERLOADED: "overloaded_error",
    ErrorKind.NO_CAPACITY: "overloaded_error",
    ErrorKind.REJECTED_BY_POLICY: "permission_error",
}


@dataclass(slots=True)
class RoutingError(Exception):
    """Raised anywhere on the request path; the server turns it into an immediate response."""

    kind: ErrorKind
    message: str
    code: str | None = None
    status_override: int | None = None
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return self.message

    @property
    def status(self) -> int:
        return self.status_override or self.kind.status

    def body(self, shape: ErrorShape = ErrorShape.OPENAI) -> bytes:
        """The error body in the caller's API's own format."""
        if shape is ErrorShape.ANTHROPIC:
            error = {"type": "error", "error": {"type": _ANTHROPIC_TYPE[self.kind], "message": self.message}}
        else:
            error = {
                "error": {
                    "message": self.message,
                    "type": self.kind.type,
                    "code": self.code or self.kind.name.lower(),
                }
            }
        return json.dumps(error, ensure_ascii=False).encode()

    def headers(self) -> list[tuple[str, str]]:
        headers = [("content-type", "application/json")]
        if self.retry_after_s is not None:
            headers.append((RETRY_AFTER_HEADER, str(max(1, round(self.retry_after_s)))))
        return headers
