"""Parsing requests into what routing needs, without touching the network.

Every API a vLLM server speaks is parsed here into one ParsedRequest: OpenAI chat, completions,
embeddings and Responses, Anthropic Messages, rerank/score, tokenize/detokenize (JSON bodies),
and audio transcription/translation (multipart/form-data; docs/apis.md says which vLLM version
each shape follows). Routing sees the same fields whatever the API: model, prompt text, stream,
output-token budget, user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import multipart

from extproc.errors import ErrorKind, RoutingError
from extproc.headers import REQUEST_ID_HEADER, is_routing_header


class Task(Enum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    MODELS = "models"
    RESPONSES = "responses"  # OpenAI Responses API
    MESSAGES = "messages"  # Anthropic Messages API
    COUNT_TOKENS = "count_tokens"  # Anthropic Messages token counting (coding agents call it often)
    RERANK = "rerank"
    SCORE = "score"
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"
    TRANSCRIPTION = "transcription"
    TRANSLATION = "translation"


# Paths we route (vLLM's own aliases included); a query string is ignored for matching.
TASK_BY_PATH: dict[str, Task] = {
    "/v1/chat/completions": Task.CHAT,
    "/v1/completions": Task.COMPLETION,
    "/v1/embeddings": Task.EMBEDDING,
    "/v1/models": Task.MODELS,
    "/v1/responses": Task.RESPONSES,
    "/v1/messages": Task.MESSAGES,
    "/v1/messages/count_tokens": Task.COUNT_TOKENS,
    "/v1/rerank": Task.RERANK,
    "/v2/rerank": Task.RERANK,
    "/rerank": Task.RERANK,
    "/v1/score": Task.SCORE,
    "/score": Task.SCORE,
    "/tokenize": Task.TOKENIZE,
    "/detokenize": Task.DETOKENIZE,
    "/v1/audio/transcriptions": Task.TRANSCRIPTION,
    "/v1/audio/translations": Task.TRANSLATION,
}
# Bodies are multipart/form-data (an audio file and form fields), not JSON. Envoy hands us only
# the head of such a body (BUFFERED_PARTIAL, extproc/deploy/envoy/local.yaml).
MULTIPART_TASKS = frozenset({Task.TRANSCRIPTION, Task.TRANSLATION})
# Anthropic's APIs: errors in Anthropic's shape.
ANTHROPIC_TASKS = frozenset({Task.MESSAGES, Task.COUNT_TOKENS})
# Whose streams carry usage only when asked to with stream_options.include_usage.
STREAM_OPTIONS_TASKS = frozenset({Task.CHAT, Task.COMPLETION})
# Answers that depend on server-side state (a stored response) or on an uploaded file: never
# answered from the response cache.
UNCACHEABLE_TASKS = frozenset({Task.RESPONSES, Task.TRANSCRIPTION, Task.TRANSLATION})
# Largest multipart form field (other than the file) we read: model, language, prompt...
MAX_FORM_FIELD_BYTES = 64 * 1024


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


@dataclass(frozen=True, slots=True)
class FormHead:
    """The head of a multipart body as Envoy handed it to us, and where the ``model`` field's
    value sits in it: enough to rename the model (aliases, fallbacks) without the file."""

    raw: bytes
    model_start: int
    model_end: int
    # The whole body, not just its head. Only a whole body is renamed: Envoy 1.40 drops bytes
    # that arrive while we decide when a BUFFERED_PARTIAL head is replaced (measured).
    complete: bool = True

    def with_model(self, model: str) -> bytes:
        return self.raw[: self.model_start] + model.encode() + self.raw[self.model_end :]


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
    # Responses API: the stored response this one continues; routed to the endpoint holding it.
    previous_response_id: str | None = None
    form: FormHead | None = None  # multipart uploads

    @property
    def cacheable(self) -> bool:
        return self.task not in UNCACHEABLE_TASKS

    @property
    def rewritable(self) -> bool:
        """The body is JSON we may re-serialise (model rewrite, stream_options)."""
        return self.task not in MULTIPART_TASKS

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
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
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


def _too_large(size: int, max_bytes: int) -> RoutingError:
    return RoutingError(
        ErrorKind.BODY_TOO_LARGE,
        f"request body is {size} bytes; the limit is {max_bytes} bytes",
        "body_too_large",
    )


@dataclass(slots=True)
class _Prompt:
    """What one API's body says about the prompt."""

    text: str
    turns: int = 0
    has_system: bool = False
    max_tokens: object = None  # validated by parse_body
    previous_response_id: str | None = None


def _chat_messages(messages: object, field_name: str = "messages") -> _Prompt:
    if not isinstance(messages, list) or not messages:
        raise _bad(f"'{field_name}' is required and must be a non-empty array", "missing_messages")
    prompt = _Prompt("")
    texts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"{field_name}[{i}] must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            prompt.has_system = True
        elif role == "user":
            prompt.turns += 1
        text = _content_text(message.get("content"))
        if text:
            texts.append(text)
    prompt.text = "\n".join(texts)
    return prompt


def _chat(body: dict[str, Any]) -> _Prompt:
    prompt = _chat_messages(body.get("messages"))
    prompt.max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    return prompt


def _completion(body: dict[str, Any]) -> _Prompt:
    if "prompt" not in body:
        raise _bad("'prompt' is required", "missing_prompt")
    return _Prompt(_prompt_text(body["prompt"]), turns=1, max_tokens=body.get("max_tokens"))


def _embedding(body: dict[str, Any]) -> _Prompt:
    if "input" not in body:
        raise _bad("'input' is required", "missing_input")
    return _Prompt(_prompt_text(body["input"]))


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise _bad(f"'{name}' must be a non-empty string")
    return value


def _responses(body: dict[str, Any]) -> _Prompt:
    """OpenAI Responses: ``input`` is a string or a list of items (messages, tool outputs...)."""
    if "input" not in body:
        raise _bad("'input' is required", "missing_input")
    instructions = _optional_string(body, "instructions")
    prompt = _Prompt(
        "",
        has_system=instructions is not None,
        max_tokens=body.get("max_output_tokens"),
        previous_response_id=_optional_string(body, "previous_response_id"),
    )
    texts = [instructions] if instructions else []
    items = body["input"]
    if isinstance(items, str):
        texts.append(items)
        prompt.turns = 1
    elif isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, str):
                texts.append(item)
                continue
            if not isinstance(item, dict):
                raise _bad(f"input[{i}] must be an object or a string")
            role = item.get("role")
            if role in ("system", "developer"):
                prompt.has_system = True
            elif role == "user":
                prompt.turns += 1
            text = _content_text(item.get("content", item.get("output")))
            if text:
                texts.append(text)
    else:
        raise _bad("'input' must be a string or an array of input items")
    prompt.text = "\n".join(texts)
    return prompt


def _count_tokens(body: dict[str, Any]) -> _Prompt:
    """Anthropic token counting: a Messages body without ``max_tokens``."""
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _bad("'system' must be a string or an array of text blocks")
    prompt = _chat_messages(body.get("messages"))
    system_text = _content_text(system)
    if system_text:
        prompt.text = system_text + "\n" + prompt.text if prompt.text else system_text
    prompt.has_system = prompt.has_system or bool(system)
    return prompt


def _messages(body: dict[str, Any]) -> _Prompt:
    """Anthropic Messages: ``system`` (string or text blocks) and ``messages`` with content blocks."""
    if "max_tokens" not in body:
        raise _bad("'max_tokens' is required", "missing_max_tokens")
    prompt = _count_tokens(body)
    prompt.max_tokens = body["max_tokens"]
    return prompt


def _texts(value: object, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        texts = []
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                texts.append(item["text"])
            else:
                raise _bad(f"'{name}' items must be strings or objects with a 'text' string")
        return texts
    raise _bad(f"'{name}' must be a string or an array of strings", f"missing_{name}")


def _rerank(body: dict[str, Any]) -> _Prompt:
    query = body.get("query")
    if not isinstance(query, str):
        raise _bad("'query' is required and must be a string", "missing_query")
    if "documents" not in body:
        raise _bad("'documents' is required", "missing_documents")
    return _Prompt("\n".join([query, *_texts(body["documents"], "documents")]))


def _score(body: dict[str, Any]) -> _Prompt:
    for name in ("text_1", "text_2"):
        if name not in body:
            raise _bad(f"'{name}' is required", f"missing_{name}")
    return _Prompt("\n".join([*_texts(body["text_1"], "text_1"), *_texts(body["text_2"], "text_2")]))


def _tokenize(body: dict[str, Any]) -> _Prompt:
    if "messages" in body:
        return _chat_messages(body["messages"])
    if "prompt" not in body:
        raise _bad("'prompt' or 'messages' is required", "missing_prompt")
    return _Prompt(_prompt_text(body["prompt"]))


def _detokenize(body: dict[str, Any]) -> _Prompt:
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise _bad("'tokens' is required and must be an array of integers", "missing_tokens")
    return _Prompt("")


_JSON_BODIES = {
    Task.CHAT: _chat,
    Task.COMPLETION: _completion,
    Task.EMBEDDING: _embedding,
    Task.RESPONSES: _responses,
    Task.MESSAGES: _messages,
    Task.COUNT_TOKENS: _count_tokens,
    Task.RERANK: _rerank,
    Task.SCORE: _score,
    Task.TOKENIZE: _tokenize,
    Task.DETOKENIZE: _detokenize,
}


def parse_body(
    task: Task, content_type: str, raw: bytes, max_bytes: int, complete: bool = True
) -> ParsedRequest:
    """Parse and check a request body. Raises RoutingError with the status the client should see.

    ``complete=False``: ``raw`` is only the head of a longer body (multipart uploads)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if task in MULTIPART_TASKS and not complete:
        # The head of an upload: read no more of it than the limit, whatever Envoy buffered.
        return _parse_form(task, content_type, media_type, raw[:max_bytes], complete, max_bytes)
    if len(raw) > max_bytes:
        raise _too_large(len(raw), max_bytes)
    if task in MULTIPART_TASKS:
        return _parse_form(task, content_type, media_type, raw, complete, max_bytes)
    if media_type != "application/json":
        raise RoutingError(
            ErrorKind.UNSUPPORTED_MEDIA_TYPE,
            f"content-type must be application/json, got {media_type or 'none'!r}",
            "unsupported_media_type",
        )
    if not complete:
        raise _too_large(len(raw), max_bytes)  # a JSON body is routed only whole
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
    user = body.get("user")
    if user is None and task in ANTHROPIC_TASKS:
        metadata = body.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string")
    parse = _JSON_BODIES.get(task)
    if parse is None:
        raise _bad(f"{task.value} requests have no body to route")
    prompt = parse(body)
    max_tokens = prompt.max_tokens
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0
    ):
        raise _bad("'max_tokens' must be a non-negative integer")
    return ParsedRequest(
        task=task,
        model=model,
        body=body,
        text=prompt.text,
        stream=stream,
        max_tokens=max_tokens,
        user=user,
        turns=prompt.turns,
        has_system_prompt=prompt.has_system,
        previous_response_id=prompt.previous_response_id,
    )


def _form_fields(boundary: str, raw: bytes, complete: bool) -> dict[str, str]:
    """The text fields of a multipart body (or of its head); the file's bytes are skipped."""
    fields: dict[str, str] = {}
    name: str | None = None
    value = bytearray()
    try:
        parser = multipart.PushMultipartParser(boundary, max_segment_count=1000)
        for event in parser.parse(raw):
            if isinstance(event, multipart.MultipartSegment):
                # A file part is skipped: only its name, never its bytes, matters here.
                name = event.name if event.filename is None else None
                value.clear()
            elif event is None:
                if name is not None:
                    fields.setdefault(name, value.decode("utf-8", "replace"))
                name = None
            elif name is not None:
                if len(value) + len(event) > MAX_FORM_FIELD_BYTES:
                    raise _bad(f"form field {name!r} is over {MAX_FORM_FIELD_BYTES} bytes")
                value += event
        if complete:
            for _ in parser.parse(b""):
                pass
            parser.close()
    except multipart.MultipartError as exc:
        raise _bad(f"multipart/form-data body is malformed: {exc}", "invalid_multipart") from None
    return fields


def _parse_form(
    task: Task, content_type: str, media_type: str, raw: bytes, complete: bool, max_bytes: int
) -> ParsedRequest:
    """Audio transcription/translation: multipart/form-data with ``file`` and ``model`` fields."""
    if media_type != "multipart/form-data":
        raise RoutingError(
            ErrorKind.UNSUPPORTED_MEDIA_TYPE,
            f"content-type must be multipart/form-data, got {media_type or 'none'!r}",
            "unsupported_media_type",
        )
    boundary = multipart.parse_options_header(content_type)[1].get("boundary", "")
    if not boundary:
        raise _bad("multipart/form-data needs a boundary parameter", "invalid_multipart")
    if not raw:
        raise _bad("request body is empty; expected multipart/form-data", "empty_body")
    fields = _form_fields(boundary, raw, complete)
    model = fields.get("model", "")
    if not model:
        if not complete:
            raise _bad(
                f"no 'model' form field in the first {max_bytes} bytes: send it before the file",
                "missing_model",
            )
        raise _bad("'model' form field is required", "missing_model")
    stream = fields.get("stream", "false").strip().lower()
    if stream not in ("true", "false", "1", "0"):
        raise _bad("'stream' must be true or false")
    return ParsedRequest(
        task=task,
        model=model,
        body={},
        text=fields.get("prompt", ""),
        stream=stream in ("true", "1"),
        form=_form_head(raw, boundary, model, complete),
    )


def _form_head(raw: bytes, boundary: str, model: str, complete: bool) -> FormHead | None:
    """Where the parsed ``model`` value sits in the raw head: after the headers of the part named
    model, up to the next boundary. None if it cannot be found exactly (then it is not renamed)."""
    value = model.encode()
    delimiter = b"\r\n--" + boundary.encode()
    at = 0
    while (at := raw.find(b'name="model"', at)) >= 0:
        line_start = raw.rfind(b"\n", 0, at) + 1
        if raw[line_start : line_start + 20].lower() == b"content-disposition:":
            start = raw.find(b"\r\n\r\n", at) + 4
            end = raw.find(delimiter, start)
            if start >= 4 and end >= 0 and raw[start:end] == value:
                return FormHead(raw, start, end, complete)
        at += 1
    return None
