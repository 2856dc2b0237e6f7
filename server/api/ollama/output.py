"""A turn's events -> Ollama's replies: NDJSON chunks (/api/chat's `message`, /api/generate's
`response`), or one object when `stream` is false.

One builder serves both endpoints and both modes: `Pieces.feed` turns each event into the pieces
of text a chunk carries (`content`, `thinking`, or a finished tool call with its arguments as an
object), with the logprobs of their tokens when asked; the endpoint puts them in its shape. A tool
call is sent whole, once its arguments are complete, as Ollama sends them. The last chunk says
`done: true` with Ollama's counts and durations (nanoseconds), measured by `Clock`.
"""

import datetime
import time
import uuid

from server.harmony.tools import ToolNames, call_arguments
from server.plumbing import metrics
from server.turn.logprobs import entry
from server.turn.run import TurnEnd


DONE_REASONS = {"length": "length"}  # the rest ("stop", "tool_calls") is Ollama's "stop"


def created_at() -> str:
    """Now, as Ollama writes it (RFC 3339, UTC)."""
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def done_reason(end: TurnEnd) -> str:
    return DONE_REASONS.get(end.finish_reason, "stop")



class Pieces:
    """The pieces of a reply, event by event: {"content": text}, {"thinking": text} or
    {"tool_calls": [call]}, each with "logprobs" (its tokens') when they were asked for."""

    def __init__(self, names: ToolNames, encoding=None, top_logprobs: int | None = None):
        self.names, self.encoding, self.top_n = names, encoding, top_logprobs
        self._call: dict | None = None  # the call being generated: its name and argument text
        self._calls = 0
        self._logprobs: list[dict] = []  # of the tokens not sent with a piece yet

    def feed(self, event) -> list[dict]:
        if event.kind == "logprob":
            self._logprobs.append(self._logprob(event))
            return []
        if event.kind == "tool_arguments" and self._call is not None:
            self._call["arguments"] += event.text
            return []
        pieces = self._close_call()
        if event.kind == "tool_call":
            self._call = {"name": event.text, "arguments": ""}
        elif event.kind in ("content", "reasoning") and event.text:
            pieces.append(self._with_logprobs({"content" if event.kind == "content" else "thinking": event.text}))
        return pieces

    def finish(self) -> list[dict]:
        """What is still held: a call whose arguments ended with the reply, logprobs of markup."""
        pieces = self._close_call()
        if self._logprobs:
            pieces.append(self._with_logprobs({}))
        return pieces

    def _close_call(self) -> list[dict]:
        if self._call is None:
            return []
        call, self._call = self._call, None
        index, self._calls = self._calls, self._calls + 1
        return [self._with_logprobs({"tool_calls": [{
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "function": {"index": index, "name": self.names.client_name(call["name"]),
                         "arguments": call_arguments(call["arguments"])}}]})]

    def _logprob(self, item) -> dict:
        return {**entry(self.encoding, item.token, item.logprob),
                "top_logprobs": [entry(self.encoding, t, lp) for t, lp in item.top[:self.top_n or 0]]}

    def _with_logprobs(self, piece: dict) -> dict:
        if self.top_n is not None:
            piece["logprobs"], self._logprobs = self._logprobs, []
        return piece


def merged(pieces: list[dict]) -> dict:
    """A whole reply (stream: false) from its pieces."""
    content, thinking, calls, logprobs = [], [], [], []
    for piece in pieces:
        content.append(piece.get("content", ""))
        thinking.append(piece.get("thinking", ""))
        calls += piece.get("tool_calls", [])
        logprobs += piece.get("logprobs", [])
    whole = {"content": "".join(content)}
    if any(thinking):
        whole["thinking"] = "".join(thinking)
    if calls:
        whole["tool_calls"] = calls
    if any("logprobs" in piece for piece in pieces):
        whole["logprobs"] = logprobs
    return whole


class Clock:
    """When this request's phases began and ended (time.perf_counter()), for Ollama's durations:
    total (since the request arrived), load (waiting for its model to load), prompt eval (from
    submission to the first generated token) and eval (from there to the end)."""

    def __init__(self):
        self.start = metrics.REQUEST_START.get() or time.perf_counter()
        self.load_started = self.loaded = time.perf_counter()

    def model_loaded(self) -> None:
        self.loaded = time.perf_counter()

    def stats(self, end: TurnEnd, generation) -> dict:
        now = time.perf_counter()
        submitted = generation.submitted_at
        first = generation.first_token_at or now
        return {"total_duration": _ns(now - self.start), "load_duration": _ns(self.loaded - self.load_started),
                "prompt_eval_count": end.prompt_tokens, "prompt_eval_duration": _ns(first - submitted),
                "eval_count": end.completion_tokens, "eval_duration": _ns(now - first)}


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def chat_chunk(meta: dict, piece: dict) -> dict:
    """One /api/chat chunk carrying a piece."""
    message = {"role": "assistant", "content": piece.get("content", "")}
    for field in ("thinking", "tool_calls"):
        if field in piece:
            message[field] = piece[field]
    chunk = {**meta, "created_at": created_at(), "message": message, "done": False}
    if "logprobs" in piece:
        chunk["logprobs"] = piece["logprobs"]
    return chunk


def generate_chunk(meta: dict, piece: dict) -> dict:
    """One /api/generate chunk carrying a piece (it has no tools to call)."""
    chunk = {**meta, "created_at": created_at(), "response": piece.get("content", ""), "done": False}
    for field in ("thinking", "logprobs"):
        if field in piece:
            chunk[field] = piece[field]
    return chunk
