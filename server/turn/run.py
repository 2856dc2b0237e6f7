"""The tokens of one generation -> what to send: harmony's parse, stop strings, undeclared calls.

Run by the turn pipeline (pipeline.py) for every API, once per round of its tool loop (loop.py). It
yields `Event`s (reasoning, content, tool_call, tool_arguments, server_call, server_arguments)
as the tokens come (and, when the generation asked for logprobs, a `TokenLogprob` before the
events of each text token), then one `TurnEnd` with the finish reason and the token counts. Leaving
the iteration early (client gone, stop string found, answer complete) cancels the generation,
which frees its place in the batch at once.
"""

from dataclasses import dataclass

from server.engine.generation import Finished, Generation
from server.harmony.parse import Event, ReplyParser
from server.plumbing import metrics
from server.turn.logprobs import TokenLogprob


@dataclass
class TurnEnd:
    finish_reason: str  # "stop", "length", "tool_calls" or "error"
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int = 0
    error: str | None = None
    stop_string: str | None = None  # the stop string that ended the answer, if one did


class StopMatcher:
    """Cuts content at the first stop string, holding back text that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """(text safe to send, the stop string found or None)."""
        if not self.stops:
            return text, None
        self.pending += text
        hits = [(i, s) for i, s in ((self.pending.find(s), s) for s in self.stops) if i >= 0]
        if hits:
            at, hit = min(hits)
            out, self.pending = self.pending[:at], ""
            return out, hit
        keep = max(
            (k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])),
            default=0,
        )
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, None

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


async def run_turn(generation: Generation, encoding, stops: list[str], prefix: list[int] = (),
                   declared: set[str] | None = None, reply: list[int] | None = None, continued: bool = False):
    """`prefix`: tokens of a forced start of the reply, already at the end of the prompt.
    `declared`: model names of the tools the client declared; a call to any other function is not
    a tool call (no client can act on it): it is shown as text, `name(arguments)`, and the
    turn ends as "stop". None: every call counts. A call to a tool outside `functions` (a
    server_call) is the tool loop's (loop.py); the reply ends as "tool_calls" all the same.
    A call the model ends without writing arguments (a forced header, then `<|call|>` at once)
    gets `{}`: every API promises JSON arguments, and clients parse them.
    `reply`: gets the reply's token ids as they come (the tool loop's next prompt starts with them).
    `continued`: a later round of the turn (for the metrics: no time to first token).
    The caller also cancels `generation` when it stops listening: a closed async generator's
    cleanup may not get to run when its task is being cancelled."""
    parser = ReplyParser(encoding)
    watch = metrics.TurnWatch(len(generation.prompt), generation.engine.name, continued,
                              timed=not generation.background)
    completion_tokens, finish, error, called = 0, None, None, False
    stop = StopMatcher(stops)
    stop_string, undeclared = None, False
    no_arguments = False  # a call is open and has no arguments yet

    def shown(events):
        """The parser's events as the client sees them: calls to undeclared tools as text, a
        call without arguments with `{}`."""
        nonlocal called, undeclared, no_arguments
        for event in events:
            if no_arguments and event.kind != "tool_arguments":
                no_arguments = False
                yield Event("tool_arguments", "{}")
            if event.kind == "tool_call":
                undeclared = declared is not None and event.text not in declared
                if undeclared:
                    metrics.UNDECLARED_CALLS.inc()
                    yield Event("content", f"{event.text}(")
                    continue
                called = no_arguments = True
            elif event.kind == "server_call":
                called = True
            elif event.kind == "tool_arguments" and undeclared:
                yield Event("content", event.text)
                continue
            elif event.kind == "tool_arguments" and event.text.strip():
                no_arguments = False
            yield event

    for token in prefix:
        for event in shown(parser.feed(token)):
            yield event
    try:
        async for item in generation.events():
            if isinstance(item, Finished):
                events = parser.finish()
                finish = {"length": "length", "error": "error"}.get(item.reason, "stop")
                error = item.error
            else:
                completion_tokens += 1
                watch.token()
                if reply is not None:
                    reply.append(item)
                events = parser.feed(item)
                if generation.logprobs is not None and parser.last_kind:
                    scored = generation.scores[completion_tokens - 1]
                    yield TokenLogprob(parser.last_kind, scored.token, scored.logprob, scored.top)
            for event in shown(events):
                if event.kind == "content":
                    text, hit = stop.feed(event.text)
                    if text:
                        yield Event("content", text)
                    if hit is not None:
                        finish, stop_string = "stop", hit
                        break
                else:
                    yield event
            if finish is not None or parser.done:
                break
    finally:
        generation.cancel()
        watch.close(generation)
    if no_arguments and finish != "length":  # a call cut off by the token limit stays as it was
        yield Event("tool_arguments", "{}")
    rest = stop.flush()
    if undeclared and stop_string is None:
        rest += ")"
    if rest:
        yield Event("content", rest)
    if called and finish != "length":
        finish = "tool_calls"
    end = TurnEnd(finish or "stop", len(generation.prompt), completion_tokens, parser.reasoning_tokens,
                  cached_tokens=generation.cached_tokens, error=error, stop_string=stop_string)
    watch.end(end)
    yield end
