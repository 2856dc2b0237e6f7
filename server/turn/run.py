"""One assistant turn: submit the prompt to the engine, parse the tokens, yield what to send.

Shared by every API layer. It yields `Event`s (reasoning, content, tool_call, tool_arguments)
as the tokens come, then one `TurnEnd` with the finish reason and the token counts. Leaving
the iteration early (client gone, stop string found, answer complete) cancels the generation,
which frees its place in the batch at once.
"""

import asyncio
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from server.engine.engine import Finished, Generation
from server.harmony.parse import Event, ReplyParser
from server.plumbing import metrics
from server.plumbing.errors import APIError, error_body


@dataclass
class TurnEnd:
    finish_reason: str  # "stop", "length", "tool_calls" or "error"
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int = 0
    error: str | None = None


class StopMatcher:
    """Cuts content at the first stop string, holding back text that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = max(
            (k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])),
            default=0,
        )
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


async def run_turn(generation: Generation, encoding, stops: list[str], prefix: list[int] = ()):
    """`prefix`: tokens of a forced start of the reply, already at the end of the prompt.
    The caller also cancels `generation` when it stops listening: a closed async generator's
    cleanup may not get to run when its task is being cancelled."""
    parser = ReplyParser(encoding)
    watch = metrics.TurnWatch(len(generation.prompt))
    completion_tokens, finish, error, called = 0, None, None, False
    for token in prefix:
        for event in parser.feed(token):
            called = called or event.kind == "tool_call"
            yield event
    stop = StopMatcher(stops)
    try:
        async for item in generation.events():
            if isinstance(item, Finished):
                events = parser.finish()
                finish = {"length": "length", "error": "error"}.get(item.reason, "stop")
                error = item.error
            else:
                completion_tokens += 1
                watch.token()
                events = parser.feed(item)
            for event in events:
                if event.kind == "content":
                    text, hit = stop.feed(event.text)
                    if text:
                        yield Event("content", text)
                    if hit:
                        finish = "stop"
                        break
                else:
                    called = called or event.kind == "tool_call"
                    yield event
            if finish is not None or parser.done:
                break
    finally:
        generation.cancel()
        watch.close(generation)
    rest = stop.flush()
    if rest:
        yield Event("content", rest)
    if called and finish != "length":
        finish = "tool_calls"
    end = TurnEnd(finish or "stop", len(generation.prompt), completion_tokens, parser.reasoning_tokens,
                  cached_tokens=generation.cached_tokens, error=error)
    watch.end(end)
    yield end


async def collect_unless_gone(collecting, generation: Generation, request):
    """Awaits `collecting` (a coroutine that drains a turn) while watching the client. A client
    that hangs up stops its generation: returns a 499 response then, else what it collected."""
    task = asyncio.ensure_future(collecting)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done and await request.is_disconnected():
            generation.cancel()
            task.cancel()
            return JSONResponse(error_body("client disconnected", "invalid_request_error"), status_code=499)
    return task.result()


def raise_for_end(end: TurnEnd, plan, max_tokens: int) -> None:
    """A turn that failed, or whose answer can't be given (structured output cut short), is an
    error response rather than a reply."""
    if end.finish_reason == "error":
        raise APIError(500, f"The generation failed: {end.error}", type="server_error")
    problem = plan.problem(end, max_tokens)
    if problem is not None:
        raise problem
