"""Structured output: JSON schemas -> llguidance grammars -> token masks.

`response_format` (chat completions), `text.format` (Responses) and `strict: true` function
tools give a JSON schema; llguidance compiles it into a grammar over the o200k_harmony
vocabulary, and a `GrammarGuide` turns the grammar's state into a mask on the logits, token
by token. The masking itself happens in the reply's logits processor (reasoning_control.py),
which knows where in the harmony reply the model is: only the final answer (or a strict tool
call's arguments) is constrained, the analysis channel stays free.

Why llguidance (measured on this project's vocabulary, 201,088 tokens; see docs/structured-output.md):
grammar compile in ~1-3 ms (more for big schemas; kept per schema, since an agent sends its strict
tools again every turn), ~0.1 ms per token mask on a CPU,
no runtime dependencies, one abi3 wheel per platform on PyPI (macOS arm64 and Linux), JSON
Schema keywords such as maxLength, minimum/maximum, enum, anyOf, pattern and format.

JSON is compact (no whitespace outside strings: `{"a":1}`), which is how GPT-OSS writes tool
arguments, and keeps a model from padding its answer with whitespace forever. A schema may
say otherwise through llguidance's own `x-guidance` keyword.

A model that wants to stop (a stop token, or `<|end|>`) gets that probability moved to the end
token once the JSON is complete, and before that to the token that closes what is innermost
open (`"` in a string, else `}` or `]`) when the grammar allows it there: the JSON is wrapped up
rather than continued at random (it would be, as the grammar spreads that probability over
every allowed token).

The llguidance tokenizer is built once per server from the model's tokenizer.json (~3 s), on
the first request that needs it, off the event loop.
"""

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from server.engine.errors import SchemaUnusable, StructuredOutputUnavailable

log = logging.getLogger("swallow.structured")

RETURN = 200002  # the end of a final answer; llguidance's EOS
CALL = 200012  # the end of a tool call
ENDINGS = (RETURN, CALL, 199999, 200007)  # <|return|>, <|call|>, <|endoftext|>, <|end|>
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_OBJECT = {"type": "object"}

_tokenizers: dict[str, object] = {}
_lock = threading.Lock()


def within_vocabulary(tokenizer_json: str, vocab_size: int) -> str:
    """The tokenizer.json without entries past the model's vocabulary (seen in the wild: added
    tokens with ids the embedding doesn't have). The model can never generate those, and the
    grammar engine refuses a tokenizer larger than the vocabulary it masks."""
    data = json.loads(tokenizer_json)
    added = data.get("added_tokens") or []
    vocab = (data.get("model") or {}).get("vocab")
    beyond = [t for t in added if t.get("id", 0) >= vocab_size]
    if isinstance(vocab, dict):
        beyond_vocab = {k for k, v in vocab.items() if v >= vocab_size}
    else:
        beyond_vocab = set()
    if not beyond and not beyond_vocab:
        return tokenizer_json
    log.warning("tokenizer.json has %d entries past the model's vocabulary of %d; the grammar engine "
                "leaves them out", len(beyond) + len(beyond_vocab), vocab_size)
    data["added_tokens"] = [t for t in added if t.get("id", 0) < vocab_size]
    if beyond_vocab:
        data["model"]["vocab"] = {k: v for k, v in vocab.items() if k not in beyond_vocab}
    return json.dumps(data, ensure_ascii=False)


def _build_tokenizer(tokenizer_json: Path, vocab_size: int):
    import llguidance

    with _lock:
        key = str(tokenizer_json)
        if key not in _tokenizers:
            log.info("building the grammar engine's tokenizer from %s", tokenizer_json)
            text = within_vocabulary(tokenizer_json.read_text(), vocab_size)
            try:
                _tokenizers[key] = llguidance.LLTokenizer(text, n_vocab=vocab_size, eos_token=RETURN)
            except ValueError as e:
                raise StructuredOutputUnavailable(
                    f"Structured output is not available for this model: its tokenizer.json does not fit its "
                    f"vocabulary ({e}).", param="response_format", code="structured_output_unavailable") from e
        return _tokenizers[key]


async def tokenizer_for(model_dir: Path, vocab_size: int = 201088):
    """llguidance's tokenizer for the served model, built on first use in a worker thread."""
    path = Path(model_dir) / "tokenizer.json"
    cached = _tokenizers.get(str(path))
    if cached is not None:
        return cached
    if not path.is_file():
        raise StructuredOutputUnavailable("Structured output needs the model's tokenizer.json, which this model "
                                          "directory lacks.", param="response_format",
                                          code="structured_output_unavailable")
    return await asyncio.to_thread(_build_tokenizer, path, vocab_size)


@dataclass
class Grammar:
    """A compiled grammar for one JSON schema. `end` is the token that closes the text it
    constrains: <|return|> for a final answer, <|call|> for a tool call's arguments."""

    name: str
    matcher: object  # llguidance's LLMatcher in its initial state, never advanced itself
    tokenizer: object
    end: int = RETURN

    def guide(self) -> "GrammarGuide":
        # A copy costs ~10 µs where building a matcher costs milliseconds: this runs on the
        # engine thread, between two steps of the whole batch.
        return GrammarGuide(self.matcher.deep_copy(), self.end, self.tokenizer)


_COMPILED: "OrderedDict[tuple, Grammar]" = OrderedDict()  # an agent's strict tools come back every turn
_COMPILED_LOCK = threading.Lock()
COMPILED_KEPT = 256


def compile_schema(schema, tokenizer, *, name: str, param: str, end: int = RETURN) -> Grammar:
    """The grammar of a JSON schema; SchemaUnusable naming `param` when the schema can't be used.
    Blocking (milliseconds, more for huge schemas): call it in a worker thread. Grammars are kept
    (a Grammar is never advanced itself: each use walks a copy), so a schema sent again, as an
    agent's strict tools are on every turn, is compiled once."""
    if not isinstance(schema, dict):
        raise SchemaUnusable(f"{param}: a JSON schema must be an object", param=param)
    try:
        key = (id(tokenizer), name, end, json.dumps(schema, sort_keys=True))
    except (TypeError, ValueError):
        key = None  # not JSON (the schema check below says why)
    with _COMPILED_LOCK:
        grammar = _COMPILED.get(key) if key is not None else None
        if grammar is not None:
            _COMPILED.move_to_end(key)
            return grammar
    grammar = _compile(schema, tokenizer, name=name, param=param, end=end)
    if key is not None:
        with _COMPILED_LOCK:
            _COMPILED[key] = grammar
            while len(_COMPILED) > COMPILED_KEPT:
                _COMPILED.popitem(last=False)
    return grammar


def _compile(schema: dict, tokenizer, *, name: str, param: str, end: int) -> Grammar:
    import llguidance

    try:
        source = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise SchemaUnusable(f"{param}: not a usable JSON schema ({e})", param=param,
                             code="unsupported_schema") from e
    matcher = llguidance.LLMatcher(tokenizer, source, log_level=0)
    if matcher.is_error():
        raise SchemaUnusable(f"{param}: this JSON schema is not supported for structured output: "
                             f"{_short(matcher.get_error())}", param=param, code="unsupported_schema")
    return Grammar(name, matcher, tokenizer, end)


def _short(message: str, limit: int = 300) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit] + "…"


class _Nesting:
    """What is open in a JSON text: a string, and the objects and arrays around it."""

    def __init__(self):
        self.stack: list[int] = []
        self.in_string = self.escaped = False

    def feed(self, data: bytes) -> None:
        for byte in data:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == 0x5C:  # backslash
                    self.escaped = True
                elif byte == 0x22:
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
            elif byte in (0x7B, 0x5B):
                self.stack.append(byte)
            elif byte in (0x7D, 0x5D) and self.stack:
                self.stack.pop()

    def closer(self) -> bytes | None:
        if self.in_string:
            return None if self.escaped else b'"'
        if self.stack:
            return b"}" if self.stack[-1] == 0x7B else b"]"
        return None


class GrammarGuide:
    """One generation's walk through a grammar: the mask for the next token, then the token."""

    def __init__(self, matcher, end: int, tokenizer=None):
        self.matcher = matcher
        self.end = end
        self.tokenizer = tokenizer
        self.failed: str | None = None
        self._bits = np.zeros((1, (201088 + 31) // 32), dtype=np.int32)
        self._nesting = _Nesting()

    def consume(self, token: int) -> None:
        if self.failed is None and not self.matcher.consume_token(token):
            self.failed = _short(self.matcher.get_error() or f"token {token} refused")
        if self.tokenizer is not None:
            self._nesting.feed(self.tokenizer.decode_bytes([token]))

    def _closing_token(self) -> int | None:
        closer = self._nesting.closer()
        if closer is None or self.tokenizer is None:
            return None
        return _single_tokens(self.tokenizer).get(closer)

    @property
    def accepting(self) -> bool:
        return self.failed is None and self.matcher.is_accepting()

    @property
    def complete(self) -> bool:
        """Nothing may follow but the end token."""
        return self.failed is None and self.matcher.is_stopped()

    def allowed(self, vocab_size: int) -> np.ndarray:
        """A bool per token: may it come next? The grammar's EOS is mapped to `end`."""
        from llguidance.numpy import fill_next_token_bitmask

        words = (vocab_size + 31) // 32
        if self._bits.shape[1] != words:
            self._bits = np.zeros((1, words), dtype=np.int32)
        fill_next_token_bitmask(self.matcher, self._bits)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[:vocab_size].astype(bool)
        if self.end != RETURN and allowed[RETURN]:
            allowed[RETURN] = False
            allowed[self.end] = True
        return allowed

    def apply(self, logits: mx.array) -> mx.array:
        size = logits.shape[-1]
        allowed = self.allowed(size)
        if not allowed.any():  # only after an error: end the text rather than sample nothing
            self.failed = self.failed or "the grammar allows no next token"
            allowed[self.end] = True
        shaped = mx.where(mx.array(allowed), logits, -mx.inf)
        # the probability of ending goes to the end token when allowed, else to the closer
        ending = mx.logsumexp(logits[..., [t for t in ENDINGS if t < size]], axis=-1, keepdims=True)
        if allowed[self.end]:
            return mx.where(mx.arange(size) == self.end, ending, shaped)
        closing = self._closing_token()
        if closing is None or not allowed[closing]:
            return shaped
        return mx.where(mx.arange(size) == closing, mx.logaddexp(shaped, ending), shaped)


_SINGLES: dict[int, dict[bytes, int]] = {}


def _single_tokens(tokenizer) -> dict[bytes, int]:
    """The token of each closing character alone."""
    key = id(tokenizer)
    if key not in _SINGLES:
        _SINGLES[key] = {c: tokenizer.tokenize_bytes(c)[0] for c in (b'"', b"}", b"]")}
    return _SINGLES[key]

