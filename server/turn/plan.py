"""The engine's controls for one reply and the checks on its outcome: the reasoning budget, the
loop guard and the grammars of structured output, all decided by the resolved turn (resolve.py).

    grammars = await compile_grammars(resolved, state)   # once per request, off the event loop
    plan = Plan(resolved, grammars)                       # one per choice
    control = plan.control(encoding, prefix_tokens, limit)   # the reply's logits processor
    events = plan.watch(run_turn(...))           # drops reasoning when excluded, keeps the answer
    ...after the turn: plan.problem(end, limit) -> APIError | None; plan.fields()

Reasoning budget: `reasoning.max_tokens` (OpenRouter's form) or the `reasoning_max_tokens`
setting; `reasoning.enabled: false` or a budget of 0 skip reasoning. With structured output the
analysis is also held to half of the reply's token limit, so the JSON has room.
"""

import asyncio
import json
from dataclasses import dataclass, field

from server.engine import structured
from server.engine.errors import ModelNotLoaded
from server.engine.reasoning_control import ReplyControl
from server.plumbing import metrics
from server.plumbing.errors import APIError
from server.turn.resolve import ResolvedTurn
from server.turn.run import TurnEnd


@dataclass(frozen=True)
class Grammars:
    final: structured.Grammar | None = None  # the answer's (a response format)
    tools: dict = field(default_factory=dict)  # model name -> the arguments' grammar (strict tools)


async def compile_grammars(resolved: ResolvedTurn, state) -> Grammars:
    """The grammars the reply needs, compiled in a worker thread (SchemaUnusable names the field
    of a schema that can't be used)."""
    fmt = resolved.response_format
    if fmt is None and not resolved.tools.strict:
        return Grammars()
    loaded = state.engine.loaded
    if loaded is None:
        raise ModelNotLoaded("The model is not loaded.")
    tokenizer = await structured.tokenizer_for(loaded.path)
    compile_ = structured.compile_schema
    final = None
    if fmt is not None:
        final = await asyncio.to_thread(compile_, fmt.schema, tokenizer, name=fmt.name, param=fmt.param)
    tools = {}
    for name, parameters, param in resolved.tools.strict:
        tools[name] = await asyncio.to_thread(compile_, parameters or structured.ANY_OBJECT, tokenizer,
                                              name=name, param=param, end=structured.CALL)
    return Grammars(final, tools)


class Plan:
    def __init__(self, resolved: ResolvedTurn, grammars: Grammars):
        self.resolved = resolved
        self.grammars = grammars
        self.reply_control: ReplyControl | None = None
        self.content: list[str] = []
        self.called = False
        self._counted = False
        self._problem: tuple | None = None  # (the APIError or None), once decided

    # ---- before the generation -------------------------------------------------------

    def control(self, encoding, prefix_tokens, limit: int, header_choices=()) -> ReplyControl:
        """The reply's logits processor, for a reply of at most `limit` tokens (one per round of a
        tool loop: the answer's text is the last round's)."""
        resolved = self.resolved
        self.content = []
        budget = resolved.reasoning_budget(limit)
        free_start = not resolved.tools_active and not prefix_tokens
        self.reply_control = ReplyControl(
            encoding, prefix=prefix_tokens, budget=budget, loop=resolved.reasoning.loop,
            final_grammar=self.grammars.final, tool_grammars=self.grammars.tools,
            force_final=resolved.structured and free_start,
            start_with_final=budget == 0 and free_start,
            header_choices=header_choices,
        )
        return self.reply_control

    # ---- during the turn ---------------------------------------------------------------

    async def watch(self, turn):
        """The turn's events, without reasoning when it is excluded; keeps the answer's text
        for the structured-output check and counts the server's interventions."""
        try:
            async for event in turn:
                if isinstance(event, TurnEnd):
                    self._count(event)
                elif event.kind == "reasoning" and self.resolved.reasoning.exclude:
                    continue
                elif event.kind == "logprob" and event.channel == "reasoning" and self.resolved.reasoning.exclude:
                    continue
                elif event.kind == "content":
                    self.content.append(event.text)
                elif event.kind == "tool_call":
                    self.called = True
                yield event
        finally:
            await turn.aclose()

    def _count(self, end: TurnEnd) -> None:
        if self._counted:
            return
        self._counted = True
        stopped = self.stopped_by
        if stopped:
            metrics.REASONING_STOPS.labels(stopped).inc()

    # ---- after the turn ----------------------------------------------------------------

    @property
    def stopped_by(self) -> str | None:
        return self.reply_control.stopped_by if self.reply_control else None

    def fields(self) -> dict:
        """Extra fields of the choice (chat) or the response (Responses)."""
        return {"reasoning_stopped": self.stopped_by} if self.stopped_by else {}

    def problem(self, end: TurnEnd, limit: int) -> APIError | None:
        """Why the answer can't be given as structured output, or None when it can (or the
        request wanted none). Never lets invalid JSON pass as a success."""
        if not self.resolved.structured or end.finish_reason == "error":
            return None
        if self._problem is not None:
            return self._problem[0]
        control = self.reply_control
        if self.called or end.finish_reason == "tool_calls":
            return None  # the model called a tool instead of answering: no JSON was due
        text = "".join(self.content)
        problem = None
        if end.finish_reason == "length":
            param = self.resolved.max_tokens_param
            problem = APIError(
                400, f"The reply reached its token limit ({param}={limit}) before its JSON answer was "
                     "complete. Raise the limit, or lower reasoning.max_tokens to leave the answer more room.",
                param=param, code="structured_output_incomplete")
        elif not (control and control.final_guided and control.final_accepting):
            why = (control.grammar_error if control else None) or "the reply ended without a final answer"
            problem = APIError(500, f"The structured answer could not be generated: {why}.",
                               type="server_error", code="structured_output_failed")
        else:
            try:
                json.loads(text)
            except ValueError:
                problem = APIError(500, "The structured answer could not be generated: its JSON does not "
                                        "parse.", type="server_error", code="structured_output_failed")
        if problem is not None:
            metrics.STRUCTURED_FAILURES.inc()
        self._problem = (problem,)
        return problem
