"""One assistant turn, the same under every API: a harmony conversation and the turn's options
in, the reply's events and its end out.

Each API only translates: its wire request -> `TurnSpec`; the turn's events and `TurnEnd` -> its
wire output. What happens in between is here, once:

    spec = TurnSpec(prompt, sampling, max_tokens=..., asked=..., forced_tool=..., stop=[...])
    turn = await Turn.open(state, spec)   # grammars, render, context check, submit
    async for event in turn.events: ...   # Event(reasoning | content | tool_call | tool_arguments),
                                          # then one TurnEnd
    events, end = await turn.collect(request)   # non-stream: all of it, watching the client
    turn.failure(end)                     # APIError | None: generation failed, or structured
                                          # output that can't be given

Errors of the turn (context overflow, an unusable schema, incomplete structured output) are
APIErrors raised here; each API shapes them in its own error format.
"""

import asyncio
import logging
from dataclasses import dataclass, field, replace

from server.engine.sampling import SamplingParams
from server.harmony import render as harmony
from server.harmony.tools import forced_call_prefix
from server.plumbing.errors import APIError, invalid_request
from server.turn import plan as reply_plan
from server.turn.run import TurnEnd, run_turn

log = logging.getLogger("swallow.turn")
ANY_TOOL = "any"  # forced_tool: the reply must call one of the declared tools


@dataclass
class TurnSpec:
    prompt: harmony.Prompt  # instructions, tools shown to the model (model names), conversation
    sampling: SamplingParams
    max_tokens: int | None = None  # None: the configured default; clamped to the context left
    asked: reply_plan.Asked = field(default_factory=reply_plan.Asked)  # reasoning controls, format
    forced_tool: str | None = None  # None, ANY_TOOL, or the model name of the one tool to call
    stop: list[str] = field(default_factory=list)
    input_param: str = "messages"  # the request field named by a context-overflow error
    logprobs: int | None = None  # top-N logprobs per generated token (0: the token's own); None: none

    @property
    def declared(self) -> list[str]:
        """Model names of the tools the client declared (and the model was shown)."""
        return [tool.name for tool in self.prompt.tools]

    def forced_prefix(self) -> str:
        """The start of the reply the server writes itself, for a forced tool call. With one
        tool declared, 'any' tool is that one."""
        if self.forced_tool is None:
            return ""
        if self.forced_tool == ANY_TOOL and len(self.declared) != 1:
            return forced_call_prefix()
        return forced_call_prefix(self.declared[0] if self.forced_tool == ANY_TOOL else self.forced_tool)


@dataclass
class Rendered:
    tokens: list[int]  # the whole prompt, forced prefix included
    shared_head: int  # where the system and developer messages end (a prompt-cache boundary)
    prefix_tokens: list[int]  # the forced prefix's tokens, at the end of `tokens`


def render(state, spec: TurnSpec) -> Rendered:
    """The prompt exactly as the turn would submit it (count_tokens and tokenize use this too)."""
    prompt = replace(spec.prompt)  # the response format goes into a copy: rendering twice is the same
    reply_plan.add_format(prompt, spec.asked)
    prefix = spec.forced_prefix()
    tokens, shared_head = harmony.render_with_boundary(
        state.encoding, prompt, state.settings.model_identity, state.settings.knowledge_cutoff, prefix)
    prefix_tokens = state.encoding.encode(prefix, allowed_special="all") if prefix else []
    return Rendered(tokens, shared_head, prefix_tokens)


def check_context(state, prompt_tokens: int, requested_max: int | None, param: str = "messages") -> int:
    """The number of tokens the reply may have; 400 when the prompt doesn't fit."""
    if prompt_tokens >= state.context_length:
        raise invalid_request(
            f"This model's maximum context length is {state.context_length} tokens. However, your "
            f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
            param=param,
            code="context_length_exceeded",
        )
    wanted = requested_max or state.settings.max_tokens
    return min(wanted, state.context_length - prompt_tokens)


def seeded(sampling: SamplingParams, index: int) -> SamplingParams:
    """Choice `index`'s sampling: seed + index when a seed is given (else its own random one)."""
    return replace(sampling, seed=None if sampling.seed is None else sampling.seed + index)


def _header_choices(state, spec: TurnSpec, rendered: Rendered) -> list[list[int]]:
    """What may follow a forced prefix that stops before the tool's name: the rest of the
    header for each declared tool, so that a forced call always names a real one."""
    if not rendered.prefix_tokens or spec.forced_tool != ANY_TOOL or len(spec.declared) < 2:
        return []
    whole = forced_call_prefix
    start = len(forced_call_prefix())
    return [state.encoding.encode(whole(name)[start:], allowed_special="all") for name in spec.declared]


class Turn:
    def __init__(self, state, spec: TurnSpec, plan: reply_plan.Plan, rendered: Rendered, max_tokens: int,
                 follow: "Turn | None" = None):
        self.spec, self.plan, self.max_tokens = spec, plan, max_tokens
        self.prompt_tokens = len(rendered.tokens)
        self.collected: list = []  # collect()'s events so far
        control = plan.control(state.encoding, rendered.prefix_tokens, max_tokens,
                               header_choices=_header_choices(state, spec, rendered))
        self.generation = state.engine.submit(rendered.tokens, max_tokens, spec.sampling,
                                              [rendered.shared_head], processors=[control],
                                              logprobs=spec.logprobs,
                                              follow=follow.generation if follow else None)
        parsed = run_turn(self.generation, state.encoding, spec.stop, rendered.prefix_tokens,
                          declared=set(spec.declared))
        self.events = self._always_ending(plan.watch(parsed))

    @classmethod
    async def open(cls, state, spec: TurnSpec) -> "Turn":
        return (await cls.open_many(state, spec, 1))[0]

    @classmethod
    async def open_many(cls, state, spec: TurnSpec, n: int) -> list["Turn"]:
        """n turns of one prompt (n choices): rendered once; choice i > 0 starts when the
        first one's prompt was read, from the prompt cache, and samples with seed + i."""
        if state.engine.dead is not None:
            raise APIError(503, f"The engine stopped ({state.engine.dead}); the server is exiting to be "
                                "restarted.", type="server_error", code="engine_stopped")
        asked = spec.asked
        asked.has_stop = bool(spec.stop)
        asked.tools_active = bool(spec.prompt.tools)
        plans = [await reply_plan.prepare(asked, state) for _ in range(n)]  # 400s for unusable schemas
        rendered = render(state, spec)
        max_tokens = check_context(state, len(rendered.tokens), spec.max_tokens, spec.input_param)
        state.engine.check_fits(len(rendered.tokens) + max_tokens)  # 400 when its KV cache never could
        turns = []
        for i, plan in enumerate(plans):
            choice = spec if i == 0 else replace(spec, sampling=seeded(spec.sampling, i))
            turns.append(cls(state, choice, plan, rendered, max_tokens, follow=turns[0] if turns else None))
        return turns

    async def _always_ending(self, events):
        """The turn's events, closed by exactly one TurnEnd whatever happens: an exception in
        the turn becomes an "error" end, so a stream always ends in its API's own way."""
        ended = False
        try:
            async for event in events:
                ended = ended or isinstance(event, TurnEnd)
                yield event
            error = "the generation ended without a result"
        except Exception as e:
            log.exception("the turn failed")
            error = str(e) or type(e).__name__
        if not ended:
            yield TurnEnd("error", self.prompt_tokens, 0, 0, error=error)

    def cancel(self) -> None:
        """Frees the generation's place in the batch (a client that left, a stream closed)."""
        self.generation.cancel()

    async def collect(self, request) -> tuple[list, TurnEnd]:
        """Every event of the turn and its end, while watching the client: one that hangs up
        stops the generation (a 499 nobody reads). The events received so far stay in
        `self.collected`: what was generated before a client left, for an API that keeps it."""
        events = self.collected = []

        async def drain():
            async for event in self.events:
                if isinstance(event, TurnEnd):
                    return events, event
                events.append(event)

        task = asyncio.ensure_future(drain())
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done and await request.is_disconnected():
                self.cancel()
                task.cancel()
                raise APIError(499, "client disconnected")
        return task.result()

    def failure(self, end: TurnEnd) -> APIError | None:
        """Why the turn can't be given as a reply: the generation failed, or its structured
        answer is incomplete or broken. None for a reply to send."""
        if end.finish_reason == "error":
            return APIError(500, f"The generation failed: {end.error}", type="server_error")
        return self.plan.problem(end, self.max_tokens)

    def raise_for(self, end: TurnEnd) -> None:
        problem = self.failure(end)
        if problem is not None:
            raise problem

    def fields(self) -> dict:
        """Extra fields the APIs add to their reply (reasoning_stopped)."""
        return self.plan.fields()


def check_n(state, n: int | None) -> int:
    n = n or 1
    if n > state.settings.max_n:
        raise invalid_request(f"n: at most {state.settings.max_n} choices per request (the server's max_n)",
                              param="n")
    return n


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
    while a long prompt is read). The pending read is never cancelled, only waited on."""
    iterator = events.__aiter__()
    pending = None
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
            return
        pending = None
        yield event
