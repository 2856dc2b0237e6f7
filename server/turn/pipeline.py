"""One assistant turn, the same under every API: a resolved turn in, the reply's events and its
end out.

Each API only translates: its wire request -> `TurnRequest` (what it said), resolved once into a
`ResolvedTurn` (resolve.py: every default applied); the turn's events and `TurnEnd` -> its wire
output. What happens in between is here, once:

    resolved = resolve(request, state.settings)
    turns = await open_turns(state, resolved)   # grammars, render, context check, submit (n choices)
    async for event in turns[0].events: ...     # Event(reasoning | content | tool_call | tool_arguments),
                                                # ServerEvents of the tools the server runs (loop.py),
                                                # then one TurnEnd
    events, end = await turn.collect(request)   # non-stream: all of it, watching the client
    turn.failure(end)                     # APIError | None: generation failed, or structured
                                          # output that can't be given

Errors of the turn (context overflow, an unusable schema, incomplete structured output) are
raised here (APIError, or the engine's own errors); each API shapes them in its own error format.
"""

import asyncio
import logging
from dataclasses import dataclass

from server.engine.errors import GaveWay
from server.harmony import render as harmony
from server.harmony.tools import forced_call_prefix
from server.plumbing.errors import APIError, invalid_request
from server.turn.loop import stop_call, tool_loop
from server.turn.plan import Grammars, Plan, compile_grammars
from server.turn.resolve import ANY_TOOL, ResolvedTurn
from server.turn.run import TurnEnd

log = logging.getLogger("swallow.turn")


@dataclass
class Rendered:
    tokens: list[int]  # the whole prompt, forced prefix included
    shared_head: int  # where the system and developer messages end (a prompt-cache boundary)
    prefix_tokens: list[int]  # the forced prefix's tokens, at the end of `tokens`


def render(state, resolved: ResolvedTurn) -> Rendered:
    """The prompt exactly as the turn would submit it (count_tokens and tokenize use this too)."""
    prefix = resolved.forced_prefix()
    tokens, shared_head = harmony.render_with_boundary(
        state.encoding, resolved.prompt, state.settings.model_identity, state.settings.knowledge_cutoff, prefix)
    prefix_tokens = state.encoding.encode(prefix, allowed_special="all") if prefix else []
    return Rendered(tokens, shared_head, prefix_tokens)


def check_context(state, prompt_tokens: int, wanted: int, param: str = "messages") -> int:
    """The number of tokens the reply may have; 400 when the prompt doesn't fit."""
    if prompt_tokens >= state.context_length:
        raise invalid_request(
            f"This model's maximum context length is {state.context_length} tokens. However, your "
            f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
            param=param,
            code="context_length_exceeded",
        )
    return min(wanted, state.context_length - prompt_tokens)


def _header_choices(state, resolved: ResolvedTurn, rendered: Rendered) -> list[list[int]]:
    """What may follow a forced prefix that stops before the tool's name: the rest of the
    header for each tool shown, so that a forced call always names a real one."""
    shown = resolved.tools.shown_names
    if not rendered.prefix_tokens or resolved.tools.forced != ANY_TOOL or len(shown) < 2:
        return []
    start = len(forced_call_prefix())
    return [state.encoding.encode(forced_call_prefix(name)[start:], allowed_special="all") for name in shown]


async def open_turns(state, resolved: ResolvedTurn) -> list["Turn"]:
    """The request's n turns (n choices of one prompt): rendered once; choice i > 0 starts when
    the first one's prompt was read, from the prompt cache, and samples with seed + i."""
    state.engine.check_running()
    grammars = await compile_grammars(resolved, state)
    rendered = render(state, resolved)
    limit = check_context(state, len(rendered.tokens), resolved.max_tokens, resolved.input_param)
    state.engine.check_fits(len(rendered.tokens) + limit)  # when its KV cache never could
    turns = []
    for i in range(resolved.n):
        turns.append(Turn(state, resolved.choice(i), grammars, rendered, limit,
                          follow=turns[0] if turns else None))
    return turns


class Turn:
    """One choice's reply: submitted to the engine, its events parsed and checked; the rounds of
    its tool loop (loop.py) after a call the server runs."""

    def __init__(self, state, resolved: ResolvedTurn, grammars: Grammars, rendered: Rendered, limit: int,
                 follow: "Turn | None" = None):
        self.state, self.resolved, self.limit = state, resolved, limit
        self.plan = Plan(resolved, grammars)
        self.prompt_tokens = len(rendered.tokens)  # the first round's
        self.collected: list = []  # collect()'s events so far
        self.cancelled = False
        self.running: asyncio.Future | None = None  # a tool call in flight (loop.py)
        self._shared_head = rendered.shared_head
        self.generation = self._submit(rendered.tokens, limit, rendered.prefix_tokens,
                                       _header_choices(state, resolved, rendered), follow)
        rounds = tool_loop(self, rendered.tokens, rendered.prefix_tokens)
        self.events = self._always_ending(self.plan.watch(rounds))

    def _submit(self, tokens: list[int], limit: int, prefix=(), header_choices=(), follow: "Turn | None" = None):
        control = self.plan.control(self.state.encoding, prefix, limit, header_choices=header_choices)
        return self.state.engine.submit(tokens, limit, self.resolved.sampling, [self._shared_head],
                                        processors=[control], logprobs=self.resolved.logprobs,
                                        follow=follow.generation if follow else None)

    def next_round(self, tokens: list[int], limit: int):
        """The generation of the loop's next round (the prompt grown by a reply and a tool's result)."""
        self.state.engine.check_fits(len(tokens) + limit)
        self.generation = self._submit(tokens, limit)
        return self.generation

    async def _always_ending(self, events):
        """The turn's events, closed by exactly one TurnEnd whatever happens: an exception in
        the turn becomes an "error" end, so a stream always ends in its API's own way."""
        ended = False
        try:
            async for event in events:
                ended = ended or isinstance(event, TurnEnd)
                yield event
            error = "the generation ended without a result"
        except GaveWay:  # a batch line's row made room for a live request: the line runs again
            raise
        except Exception as e:
            log.exception("the turn failed")
            error = str(e) or type(e).__name__
        if not ended:
            yield TurnEnd("error", self.prompt_tokens, 0, 0, error=error)

    def cancel(self) -> None:
        """Frees the generation's place in the batch and stops a tool call in flight (a client that
        left, a stream closed); no round follows."""
        self.cancelled = True
        self.generation.cancel()
        stop_call(self.running)

    async def collect(self, request) -> tuple[list, TurnEnd]:
        """Every event of the turn and its end, while watching the client: one that hangs up
        stops the generation (a 499 nobody reads), and so does cancelling the caller (a batch
        line stopped). The events received so far stay in `self.collected`: what was generated
        before a client left, for an API that keeps it."""
        events = self.collected = []

        async def drain():
            async for event in self.events:
                if isinstance(event, TurnEnd):
                    return events, event
                events.append(event)

        task = asyncio.ensure_future(drain())
        try:
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=0.5)
                if not done and await request.is_disconnected():
                    raise APIError(499, "client disconnected")
        except BaseException:  # the client left, or the caller was cancelled: free the row now
            self.cancel()
            task.cancel()
            raise
        return task.result()

    def failure(self, end: TurnEnd) -> APIError | None:
        """Why the turn can't be given as a reply: the generation failed, or its structured
        answer is incomplete or broken. None for a reply to send."""
        if end.finish_reason == "error":
            return APIError(500, f"The generation failed: {end.error}", type="server_error")
        return self.plan.problem(end, self.limit)

    def raise_for(self, end: TurnEnd) -> None:
        problem = self.failure(end)
        if problem is not None:
            raise problem

    def fields(self) -> dict:
        """Extra fields the APIs add to their reply (reasoning_stopped)."""
        return self.plan.fields()


async def merged(streams):
    """(index, item) from several async iterators as they come; each stream's order is kept."""
    streams = list(streams)
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    out: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i, stream):
        try:
            async for item in stream:
                await out.put((i, item))
        finally:
            await out.put((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, item = await out.get()
            if item is done:
                left -= 1
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()


async def with_heartbeat(events, seconds: float):
    """The events, with a None whenever `seconds` pass without one (a stream's keep-alive
    while a long prompt is read or a tool runs). The pending read is only waited on while the
    stream goes on; when the stream is closed (the client left), it is cancelled."""
    iterator = events.__aiter__()
    pending = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=seconds)
            if not done:
                yield None
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                pending = None
                return
            pending = None
            yield event
    finally:
        if pending is not None:
            pending.cancel()
