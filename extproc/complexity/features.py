"""Difficulty features that work in any script: structure, size, math, code and multilingual cues.

A request is a `Prompt`: the final user message (what is being asked now), the earlier turns, the
system prompt, and the number of user turns, built from a chat request the way the request path
builds its `text` (extproc.request). Features are computed on the final message; the earlier turns
and the system prompt count by size only. Every feature has a name, so a score can be explained
("proof cue +0.20", "length +0.15").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from extproc.complexity.cues import CUES
from extproc.complexity.lexical import encode, prepare, tokens
from extproc.complexity.token_ids import TokenIds
from extproc.request import ParsedRequest, Task
from extproc.request import _content_text as content_text  # the request path's own rule

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# A cue term is matched by its first MAX_CUE_TOKENS tokens (a stem for words split per character).
MAX_CUE_TOKENS = 4
# The "ask": the first and last tokens of the final message, where the instruction usually is.
ASK_HEAD_TOKENS = 64
ASK_TAIL_TOKENS = 32

_NUMBERED_ITEM = re.compile(r"\n[ \t]*(?:\d{1,2}|[a-z])[.)\u3001\uff09]")
# A line that starts a lettered choice ("A. 12", "b) yes") in the lower-cased prepared text.
_CHOICE_LINE = re.compile(r"\n[ \t]*[a-z][.)]")
_NUMBER = re.compile(r"[0-9]+")
_SIZE_UNITS = "words?|字|文字|단어|palabras|wörter|mots|слов|pages?|页|ページ|페이지|lines?"
_REQUESTED_SIZE = re.compile(rf"(\d[\d,.]*)\s*(?:-|\s)?\s*(?:{_SIZE_UNITS})")
_SIZE_UNIT = re.compile(_SIZE_UNITS)
# how each unit starts (its optional last letter dropped): what the C scanner searches for
SIZE_UNIT_STARTS = tuple(re.sub(r".\?$", "", unit) for unit in _SIZE_UNITS.split("|"))
# Character classes, counted by deleting them from the UTF-8 bytes (a C loop, no Python per char).
_CODE_BYTES = b"{};=<>[]()_#"
_DIGIT_BYTES = b"0123456789"
_NON_ASCII_BYTES = bytes(range(0x80, 0x100))
# np.log1p(count) for the usual cue counts (numpy's log1p, not math's: they differ in the last bit)
LOG1P_TABLE: list[float] = np.log1p(np.arange(1024, dtype=np.float64)).tolist()
MATH_SYMBOLS = "≤≥≠≈∞∑∏∫√∂∈∉∀∃⊂⊆∪∩→⇒⇔πθλμσφωαβγδεℝℕℤℚ²³₁₂ⁿ±×÷·"  # noqa: RUF001
_MATH_SYMBOLS = re.compile(f"[{MATH_SYMBOLS}]")

# What the structure features count in a prompt's prepared text, in `text_counts`' order (the C
# scanner of extproc.complexity.native counts the same in one pass over the bytes).
TextCounts = tuple[int, int, int, int, int, int, int, int, int, int, int, int, int, int]
TEXT_COUNTS = (
    "bytes of the ask (before the first blank line)",
    "non-ASCII ask (0 or 1)",
    "non-ASCII text after the ask (0 or 1)",
    "non-ASCII bytes",
    "code-like characters",
    "carets",
    "math symbols",
    "digits",
    "line breaks",
    "list marks (-, *, • at a line start)",
    "code fences",
    "backslashes",
    "question marks",
    "spaces",
)


def may_request_size(text: str) -> bool:
    """False only where `_REQUESTED_SIZE` finds nothing (the same answer, cheaper than its search
    where units are few): a match ends with a unit after spaces, a hyphen and a number's last
    character ([\\d,.]); units hold none of these, so no match starts inside another unit."""
    for unit in _SIZE_UNIT.finditer(text):
        i = unit.start() - 1
        while i >= 0 and (text[i] == "-" or text[i].isspace()):
            i -= 1
        if i >= 0 and (text[i] in ",." or text[i].isdecimal()):
            return True
    return False


def requested_size(text: str) -> float:
    """The largest output size the text asks for ("a 2,000-word essay": 2000.0), 0.0 if none."""
    size = 0.0
    if may_request_size(text):
        for number in _REQUESTED_SIZE.findall(text):
            try:
                size = max(size, float(number.replace(",", "")))
            except ValueError:
                continue
    return size


def numbered_items(text: str) -> int:
    """Lines that start a numbered or lettered item ("1.", "b)", "3、")."""
    return len(_NUMBERED_ITEM.findall(text))


def numbers_before_choices(text: str) -> int:
    """Runs of ASCII digits in the prepared text before its first lettered choice line (all of it
    when there is none): numbers in the question, not in the answer options. A strong_gain input
    (the strong model gains most on questions that compute with several numbers)."""
    choice = _CHOICE_LINE.search(text)
    return len(_NUMBER.findall(text if choice is None else text[: choice.start()]))


def log1p_of_counts(counts: list[int]) -> list[float]:
    """np.log1p of the cue counts (as features are computed when a count is past `LOG1P_TABLE`)."""
    return np.log1p(counts).tolist()  # type: ignore[no-any-return]


def text_counts(text: str, raw: bytes) -> TextCounts:
    """The counts the structure features are made of (`raw`: the text's UTF-8 bytes)."""
    paragraph = text.find("\n\n")
    ask = text if paragraph < 0 else text[:paragraph]
    return (
        len(encode(ask)),
        int(not ask.isascii()),
        int(not text[len(ask) :].isascii()),
        len(raw) - len(raw.translate(None, _NON_ASCII_BYTES)),
        len(raw) - len(raw.translate(None, _CODE_BYTES)),
        text.count("^"),
        len(_MATH_SYMBOLS.findall(text)),
        len(raw) - len(raw.translate(None, _DIGIT_BYTES)),
        text.count("\n"),
        text.count("\n- ") + text.count("\n* ") + text.count("\n•"),
        text.count("```"),
        text.count("\\"),
        text.count("?") + text.count("\uff1f"),
        text.count(" "),
    )


@dataclass(frozen=True, slots=True)
class Prompt:
    """A request as the difficulty features see it. The earlier turns and the system prompt
    count by size only, so only their token estimates are kept (no copy of a long conversation)."""

    final: str  # the last user message (or the whole text when there is no structure)
    context_tokens: float = 0.0  # token estimate of the earlier user and assistant turns
    system_tokens: float = 0.0  # token estimate of the system / developer prompts
    turns: int = 1  # user messages, the final one included
    text: str | None = None  # all message texts joined as the request path does; None = final

    @property
    def full_text(self) -> str:
        return self.final if self.text is None else self.text

    @classmethod
    def from_text(cls, text: str) -> Prompt:
        return cls(final=text)

    @classmethod
    def from_messages(cls, messages: Sequence[Any], text: str | None = None) -> Prompt:
        """From OpenAI chat messages; `full_text` equals extproc.request's `text` for them
        (pass that `text` when it is already built, to not build it again)."""
        texts: list[str] = []
        system: list[str] = []
        earlier: list[str] = []
        final = ""
        turns = 0
        last_user = max(
            (i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"),
            default=-1,
        )
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping):
                continue
            role = message.get("role")
            content = content_text(message.get("content", message.get("output")))
            if role == "user":
                turns += 1
            if content:
                texts.append(content)
            if i == last_user:
                final = content
            elif role in ("system", "developer"):
                if content:
                    system.append(content)
            elif content:
                earlier.append(content)
        if last_user < 0 and earlier:  # no user message: the last message is the ask
            final = earlier.pop()
        if text is None:
            text = "\n".join(texts)
        return cls(
            final=final,
            context_tokens=joined_tokens(earlier),
            system_tokens=joined_tokens(system),
            turns=max(turns, 1),
            text=None if text == final else text,
        )

    @classmethod
    def from_request(cls, request: ParsedRequest) -> Prompt:
        """A parsed request: conversations keep their structure (OpenAI chat, Anthropic Messages
        with its top-level system prompt, OpenAI Responses with its instructions and input
        items); `full_text` is always `request.text`."""
        body = request.body
        messages: list[Any] | None = None
        if request.task is Task.CHAT:
            messages = body.get("messages")
        elif request.task in (Task.MESSAGES, Task.COUNT_TOKENS):
            system = content_text(body.get("system"))
            messages = [{"role": "system", "content": system}, *body.get("messages", [])]
        elif request.task is Task.RESPONSES:
            items = body.get("input")
            instructions = body.get("instructions")
            messages = [{"role": "system", "content": instructions}] if instructions else []
            if isinstance(items, str):
                messages.append({"role": "user", "content": items})
            elif isinstance(items, list):
                messages += [{"role": "user", "content": i} if isinstance(i, str) else i for i in items]
        if isinstance(messages, list) and messages:
            return cls.from_messages(messages, request.text)
        return cls.from_text(request.text)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Prompt:
        """A data row: `messages` (chat) or `prompt` (plain text)."""
        messages = row.get("messages")
        if isinstance(messages, list) and messages:
            return cls.from_messages(messages)
        prompt = row.get("prompt", "")
        return cls.from_text(prompt if isinstance(prompt, str) else "")


def estimate_tokens(text: str) -> float:
    """Tokens a typical BPE tokenizer would use: ~4 bytes per English token, ~1 per CJK character."""
    if text.isascii():
        return len(text) / 4.0
    return len(encode(text)) / 3.0


def joined_tokens(texts: Sequence[str]) -> float:
    """`estimate_tokens("\\n".join(texts))` without building the joined text."""
    if not texts:
        return 0.0
    separators = len(texts) - 1
    if all(t.isascii() for t in texts):
        return (sum(map(len, texts)) + separators) / 4.0
    return (sum(len(encode(t)) for t in texts) + separators) / 3.0


def cue_terms(terms: Iterable[str]) -> list[tuple[bytes, ...]]:
    """Each term as the token tuple it is matched by (English words with their inflections)."""
    out: set[tuple[bytes, ...]] = set()
    for term in terms:
        toks = tuple(tokens(prepare(term))[:MAX_CUE_TOKENS])
        if not toks:
            continue
        out.add(toks)
        if len(toks) == 1 and term.isascii() and term.isalpha() and len(term) > 2:
            stem = term[:-1] if term.endswith("e") else term
            out.update((encode(form),) for form in (term + "s", term + "es", term + "ed", stem + "ing"))
            if term.endswith("e"):
                out.add((encode(term + "d"),))
    return sorted(out)


STRUCTURE = [
    "length",
    "length²",
    "lines",
    "ask length",
    "pasted text",
    "code blocks",
    "code-like characters",
    "math notation",
    "LaTeX",
    "digit density",
    "questions",
    "list items",
    "requested output size",
    "non-ASCII share",
    "earlier turns",
    "conversation length",
    "system prompt length",
]


_TOKEN_SIZES = {"length", "ask length", "pasted text", "conversation length", "system prompt length"}
# percent of the characters per unit of the feature
_SHARES = {
    "code-like characters": 10.0,
    "math notation": 10.0,
    "digit density": 10.0,
    "non-ASCII share": 100.0,
}
_COUNTED = {"lines", "LaTeX", "questions", "list items", "earlier turns"}


def phrase(name: str, value: float) -> str:
    """A feature and its value in words: "length 1,900 tokens", "proof cue x2", "no code blocks"."""
    if name == "length²":
        return f"length² {math.expm1(math.sqrt(max(value, 0.0))):,.0f} tokens"
    if name in _TOKEN_SIZES:
        return f"{name} {math.expm1(value):,.0f} tokens"
    if name in _SHARES:
        return f"{name} {value * _SHARES[name]:.0f} %"
    if name == "code blocks":
        return f"code blocks {value:g}" if value else "no code blocks"
    if name == "requested output size":
        return f"requested output size {math.expm1(value):,.0f}" if value else "no requested output size"
    count = round(math.expm1(value))
    if name in _COUNTED:
        return f"{name} {count}" if count else f"no {name}"
    # cue counts
    return f"{name} x{count}" if count > 1 else (name if count else f"no {name}")


class TokenIndex(dict[bytes, int]):
    """token → id; an unknown token is 0 (`index[token]` in C, cheaper per token than `.get`)."""

    def __missing__(self, token: bytes) -> int:
        return 0


class FeatureExtractor:
    """Maps a prompt's tokens to named features. Immutable after construction."""

    def __init__(self, token_index: dict[bytes, int] | None = None) -> None:
        """``token_index``: a token → id map (ids from 1) to extend and share with the lexical head."""
        self.groups = list(CUES)
        self.size_unit = self.groups.index("size_unit")
        self.token_index: dict[bytes, int] = TokenIndex(token_index or {})
        terms = {g: cue_terms(CUES[g]) for g in self.groups}
        for group_terms in terms.values():
            for term in group_terms:
                for tok in term:
                    if tok not in self.token_index:
                        self.token_index[tok] = len(self.token_index) + 1
        self.base = max(self.token_index.values(), default=0) + 1
        self.packed_ids = TokenIds(self.token_index)
        if MAX_CUE_TOKENS * self.base**MAX_CUE_TOKENS >= 2**63:
            raise ValueError("token index too large for 64-bit cue keys")
        # unigram cues: a group per token id (-1: none); longer cues: sorted packed keys. A term
        # listed in two groups counts for one of them: the last for single tokens, the first
        # for longer terms (the shipped model was trained so).
        if len(self.groups) > 127:
            raise ValueError("too many cue groups for an int8 table")
        self.unigram_group = np.full(self.base, -1, dtype=np.int8)  # read at random: small
        keys: dict[int, int] = {}
        for g, name in enumerate(self.groups):
            for term in terms[name]:
                ids = [self.token_index[t] for t in term]
                if len(ids) == 1:
                    self.unigram_group[ids[0]] = g
                else:
                    keys.setdefault(self._pack(ids), g)
        ordered = sorted(keys)
        # a last key no window packs to, so a search never runs past the end
        self.ngram_keys = np.array([*ordered, np.iinfo(np.int64).max], dtype=np.int64)
        self.ngram_group = np.array([keys[k] for k in ordered] + [-1], dtype=np.int64)
        self._offsets = [(n - 1) * int(self.base**MAX_CUE_TOKENS) for n in range(2, MAX_CUE_TOKENS + 1)]
        # tokens that start a cue of 2+ tokens; past the end of a text, n-grams read token 0 (unknown)
        self.starts_ngram = np.zeros(self.base, dtype=bool)
        for group_terms in terms.values():
            for term in group_terms:
                if len(term) > 1:
                    self.starts_ngram[self.token_index[term[0]]] = True
        # tokens that are the second of a cue of 2+ tokens: a start followed by none matches nothing
        self.continues_ngram = np.zeros(self.base, dtype=bool)
        for group_terms in terms.values():
            for term in group_terms:
                if len(term) > 1:
                    self.continues_ngram[self.token_index[term[1]]] = True
        self._padding = np.zeros(MAX_CUE_TOKENS - 1, dtype=np.int64)
        self._window = np.arange(MAX_CUE_TOKENS)[None, :]
        # column L-2 packs the first L tokens of a window: Σ id_i · base^(L-1-i)
        self._powers = np.zeros((MAX_CUE_TOKENS, MAX_CUE_TOKENS - 1), dtype=np.int64)
        for length in range(2, MAX_CUE_TOKENS + 1):
            for i in range(length):
                self._powers[i, length - 2] = self.base ** (length - 1 - i)
        self._offset_row = np.array(self._offsets, dtype=np.int64)[None, :]
        self.names = (
            STRUCTURE + [f"{g} cue" for g in self.groups] + [f"{g} cue in the ask" for g in self.groups]
        )

    def _pack(self, ids: Sequence[int]) -> int:
        value = 0
        for i in ids:
            value = value * self.base + i
        return value + (len(ids) - 1) * int(self.base**MAX_CUE_TOKENS)

    def text_ids(self, prepared: str, raw: bytes) -> IntArray:
        """`ids(tokens(prepared))`, given the prepared text's UTF-8 bytes `raw`."""
        if len(raw) >= 2 * len(prepared):  # mostly multi-byte characters, i.e. one-character tokens
            return self.packed_ids(raw)
        return self.ids(tokens(prepared))

    def ids(self, toks: list[bytes]) -> IntArray:
        return np.fromiter(map(self.token_index.__getitem__, toks), dtype=np.int64, count=len(toks))

    def cue_counts(self, ids: IntArray) -> list[int]:
        """Per cue group, the matches in the whole message, then per group the matches in its ask
        (the first and last tokens): twice as many counts as groups."""
        n = len(ids)
        groups = len(self.groups)
        if n == 0:
            return [0] * (2 * groups)
        unigram = self.unigram_group.take(ids)
        # ndarray methods, not the np.* functions: those add Python wrapper calls on every use
        positions = (unigram >= 0).nonzero()[0]
        found = unigram[positions]
        # longer cues: only where a token that starts one stands before one that continues one (few
        # places in most texts); the
        # keys of the 2-, 3- and 4-grams there, at once, as windows of ids times powers of the base
        starts = (self.starts_ngram.take(ids[:-1]) & self.continues_ngram.take(ids[1:])).nonzero()[0]
        if starts.size:
            windows = np.concatenate((ids, self._padding))[starts[:, None] + self._window]
            every = (windows @ self._powers + self._offset_row).ravel()
            where = self.ngram_keys.searchsorted(every)
            hit = (self.ngram_keys[where] == every).nonzero()[0]
            if hit.size:
                positions = np.concatenate((positions, starts[hit // (MAX_CUE_TOKENS - 1)]))
                found = np.concatenate((found, self.ngram_group[where[hit]]))
        # matches are few (tens in a 2 KB prompt): tallied in Python, cheaper than the numpy calls
        counts = [0] * (2 * groups)
        tail = n - ASK_TAIL_TOKENS
        for position, group in zip(positions.tolist(), found.tolist(), strict=True):
            counts[group] += 1
            if position < ASK_HEAD_TOKENS or position >= tail:
                counts[groups + group] += 1
        return counts

    def structure(
        self,
        prompt: Prompt,
        prepared: str,
        size_units: float,
        raw: bytes | None = None,
        counts: TextCounts | None = None,
    ) -> list[float]:
        """The structure features; `raw`: the prepared text's UTF-8 bytes, and `counts` its
        `text_counts`, if already known."""
        text = prepared
        if raw is None:
            raw = encode(text)
        if counts is None:
            counts = text_counts(text, raw)
        (
            ask_bytes,
            ask_non_ascii,
            pasted_non_ascii,
            non_ascii_bytes,
            code_chars,
            carets,
            math_symbols,
            digits,
            newlines,
            list_marks,
            fences,
            backslashes,
            questions,
            spaces,
        ) = counts
        size_bytes = len(raw)
        chars = max(len(text), 1)
        ascii_text = not non_ascii_bytes
        length = math.log1p(size_bytes / 4.0 if ascii_text else size_bytes / 3.0)
        # `estimate_tokens` of the ask and of the pasted text after it
        ask_tokens = ask_bytes / 3.0 if ask_non_ascii else ask_bytes / 4.0
        pasted_bytes = size_bytes - ask_bytes
        pasted_tokens = pasted_bytes / 3.0 if pasted_non_ascii else pasted_bytes / 4.0
        math_chars = carets + math_symbols
        size = requested_size(text) if digits and size_units else 0.0
        list_items = 0  # every kind of item starts a line: none without a line break
        if newlines:
            list_items = numbered_items(text) + list_marks
        # every non-ASCII character is a token of its own
        non_ascii = 0 if ascii_text else len(text) - (size_bytes - non_ascii_bytes)
        return [
            length,
            length * length,
            math.log1p(newlines),
            math.log1p(ask_tokens),
            math.log1p(pasted_tokens),
            min(fences / 2.0, 4.0),
            10.0 * code_chars / chars,
            10.0 * math_chars / chars if math_chars else 0.0,
            math.log1p(backslashes),
            10.0 * digits / chars,
            math.log1p(questions),
            math.log1p(list_items),
            math.log1p(min(size, 100_000.0)),
            non_ascii / (non_ascii + spaces + 1) if non_ascii else 0.0,
            math.log1p(max(prompt.turns - 1, 0)),
            math.log1p(prompt.context_tokens),
            math.log1p(prompt.system_tokens),
        ]

    def vector(self, prompt: Prompt) -> FloatArray:
        prepared = prepare(prompt.final)
        toks = tokens(prepared)
        return self.vector_from(prompt, prepared, self.ids(toks))

    def vector_from(
        self, prompt: Prompt, prepared: str, ids: IntArray, raw: bytes | None = None
    ) -> FloatArray:
        return np.array(self.features_of_counts(prompt, prepared, self.cue_counts(ids), raw))

    def features_of_counts(
        self,
        prompt: Prompt,
        prepared: str,
        cues: list[int],
        raw: bytes | None = None,
        counts: TextCounts | None = None,
    ) -> list[float]:
        """The feature vector as a list, given the `cue_counts` of the prepared text (and its
        `text_counts`, if known)."""
        structure = self.structure(prompt, prepared, float(cues[self.size_unit]), raw, counts)
        # np.log1p of the counts, by table: the same values, without an array per count vector
        table = LOG1P_TABLE
        logs = [table[c] for c in cues] if max(cues) < len(table) else log1p_of_counts(cues)
        return structure + logs
