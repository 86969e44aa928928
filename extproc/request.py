"""Parsing OpenAI-style requests into what routing needs, without touching the network."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from extproc.errors import ErrorKind, RoutingError
from extproc.headers import REQUEST_ID_HEADER, is_routing_header


class Task(Enum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    MODELS = "models"


# Paths we route; a query string is ignored for matching.
TASK_BY_PATH: dict[str, Task] = {
    "/v1/chat/completions": Task.CHAT,
    "/v1/completions": Task.COMPLETION,
    "/v1/embeddings": Task.EMBEDDING,
    "/v1/models": Task.MODELS,
}


@dataclass(slots=True)
class RequestHeaders:
    """The request's headers, lower-cased, with client-sent routing headers split off."""

    path: str = ""
    method: str = ""
    content_type: str = ""
    request_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # Dynamic metadata Envoy forwarded (e.g. verified JWT claims); never client-controlled.
    metadata: dict[str, object] = field(default_factory=dict)
    spoofed: list[str] = field(default_factory=list)  # routing headers the client sent; removed

    @property
    def task(self) -> Task | None:
        return TASK_BY_PATH.get(self.path.split("?", 1)[0])


def parse_headers(pairs: list[tuple[str, str]]) -> RequestHeaders:
    parsed = RequestHeaders()
    headers = parsed.headers
    for name, value in pairs:
        if is_routing_header(name):
            parsed.spoofed.append(name)
            continue
        if name in headers:
            headers[name] = headers[name] + "," + value
        else:
            headers[name] = value
    parsed.path = headers.get(":path", "")
    parsed.method = headers.get(":method", "")
    parsed.content_type = headers.get("content-type", "")
    parsed.request_id = headers.get(REQUEST_ID_HEADER, "")
    return parsed


@dataclass(slots=True)
class ParsedRequest:
    """What routing needs from an OpenAI-style request body."""

    task: Task
    model: str
    body: dict[str, Any]
    text: str  # prompt text, text parts only, for complexity and prefix affinity
    stream: bool = False
    max_tokens: int | None = None
    user: str | None = None
    turns: int = 0  # user messages, for multi-turn depth
    has_system_prompt: bool = False

    @property
    def estimated_prompt_tokens(self) -> int:
        return estimate_tokens(self.text)


def estimate_tokens(text: str) -> int:
    """Rough token count (≈4 bytes of UTF-8 per token for English, ≈1 token per CJK char)."""
    if text.isascii():
        return (len(text) + 3) // 4
    return (len(text.encode()) + 2) // 3


def _content_text(content: object) -> str:
    """Text of a message's content: a string, or the text parts of a multimodal array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _prompt_text(prompt: object) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return ""  # token-id prompts carry no text we can read


def _bad(message: str, code: str = "invalid_request") -> RoutingError:
    return RoutingError(ErrorKind.INVALID_REQUEST, message, code)


def parse_body(task: Task, content_type: str, raw: bytes, max_bytes: int) -> ParsedRequest:
    """Parse and check a request body. Raises RoutingError with the status the client should see."""
    if len(raw) > max_bytes:
        raise RoutingError(
            ErrorKind.BODY_TOO_LARGE,
            f"request body is {len(raw)} bytes; the limit is {max_bytes} bytes",
            "body_too_large",
        )
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise RoutingError(
            ErrorKind.UNSUPPORTED_MEDIA_TYPE,
            f"content-type must be application/json, got {media_type or 'none'!r}",
            "unsupported_media_type",
        )
    if not raw:
        raise _bad("request body is empty; expected a JSON object", "empty_body")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:
        raise _bad("request body is nested too deeply", "invalid_json") from None
    if not isinstance(body, dict):
        raise _bad(f"request body must be a JSON object, got {type(body).__name__}", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a non-empty string", "missing_model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0
    ):
        raise _bad("'max_tokens' must be a non-negative integer")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string")

    turns = 0
    has_system = False
    if task is Task.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' is required and must be a non-empty array", "missing_messages")
        texts = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise _bad(f"messages[{i}] must be an object")
            role = message.get("role")
            if role in ("system", "developer"):
                has_system = True
            elif role == "user":
                turns += 1
            text = _content_text(message.get("content"))
            if text:
                texts.append(text)
        text = "\n".join(texts)
    elif task is Task.COMPLETION:
        if "prompt" not in body:
            raise _bad("'prompt' is required", "missing_prompt")
        text = _prompt_text(body["prompt"])
        turns = 1
    else:
        if "input" not in body:
            raise _bad("'input' is required", "missing_input")
        text = _prompt_text(body["input"])
    return ParsedRequest(
        task=task,
        model=model,
        body=body,
        text=text,
        stream=stream,
        max_tokens=max_tokens,
        user=user,
        turns=turns,
        has_system_prompt=has_system,
    )
