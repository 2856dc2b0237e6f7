"""What a request asked of its reply (reasoning budget, loop guard, structured output), prepared
for the engine, and what the turn does with the outcome.

Each API describes its request as `Asked`; the turn (pipeline.py) then:

    plan = await prepare(asked, state)           # compiles the grammars: 400 when unusable
    add_format(prompt, asked)                    # harmony's "# Response Formats" section
    ...render, check_context -> max_tokens...
    control = plan.control(encoding, prefix_tokens, max_tokens)   # the logits processor
    events = plan.watch(run_turn(...))           # drops reasoning when excluded, keeps the answer
    ...after the turn: plan.problem(end, max_tokens) -> APIError | None; plan.fields()

Reasoning budget: `reasoning.max_tokens` (OpenRouter's form) or the `reasoning_max_tokens`
setting; `reasoning.enabled: false` or a budget of 0 skip reasoning. With structured output the
analysis is also held to half of the reply's token limit, so the JSON has room.
"""

import asyncio
import json
import math
from dataclasses import dataclass, field

from server.engine import structured
from server.engine.reasoning_control import LoopSettings, ReplyControl
from server.plumbing import metrics
from server.plumbing.errors import APIError, invalid_request
from server.turn.run import TurnEnd


@dataclass
class Asked:
    budget: int | None = None  # reasoning.max_tokens
    enabled: bool | None = None  # reasoning.enabled
    exclude: bool = False  # reasoning.exclude
    loop_guard: bool | None = None  # reasoning.loop_guard
    format_type: str = "text"  # "text", "json_object" or "json_schema"
    format_name: str = "response"
    format_schema: dict | None = None
    format_description: str | None = None
    format_param: str = "response_format"
    strict_tools: list = field(default_factory=list)  # (model name, parameters, param path)
    tools_active: bool = False  # the model is shown tools (it may call one instead of answering)
    has_stop: bool = False
    max_tokens_param: str = "max_tokens"

    @property
    def structured(self) -> bool:
        return self.format_type in ("json_object", "json_schema")


def from_reasoning(asked: Asked, reasoning) -> Asked:
    """Copies the reasoning options of either endpoint's `reasoning` object."""
    if reasoning is not None:
        asked.budget = reasoning.max_tokens
        asked.enabled = reasoning.enabled
        asked.exclude = bool(reasoning.exclude)
        asked.loop_guard = reasoning.loop_guard
    return asked


def add_format(prompt, asked: Asked) -> None:
    """Harmony's "# Response Formats" section in the developer message, for a json_schema format."""
    if asked.format_type == "json_schema":
        section = structured.response_format_section(asked.format_name, asked.format_schema,
                                                     asked.format_description)
        prompt.instructions = structured.with_response_format(prompt.instructions, section)


class Plan:
    def __init__(self, asked: Asked, settings, final_grammar=None, tool_grammars=None):
        self.asked = asked
        self.settings = settings
        self.final_grammar = final_grammar
        self.tool_grammars = tool_grammars or {}
        self.reply_control: ReplyControl | None = None
        self.content: list[str] = []
        self.called = False
        self._counted = False
        self._problem: tuple | None = None  # (the APIError or None), once decided

    # ---- before the generation -------------------------------------------------------

    def budget(self, max_tokens: int) -> int | None:
        asked, settings = self.asked, self.settings
        if asked.enabled is False:
            budget = 0
        elif asked.budget is not None:
            budget = asked.budget
        else:
            budget = settings.reasoning_max_tokens or None
        if asked.structured and not asked.tools_active:
            budget = min(math.inf if budget is None else budget, max_tokens // 2)
        return budget

    def control(self, encoding, prefix_tokens, max_tokens: int, header_choices=()) -> ReplyControl:
        asked, settings = self.asked, self.settings
        guard = settings.loop_guard if asked.loop_guard is None else asked.loop_guard
        loop = LoopSettings(settings.loop_max_period, settings.loop_min_repeats,
                            settings.loop_min_tokens) if guard else None
        budget = self.budget(max_tokens)
        free_start = not asked.tools_active and not prefix_tokens
        self.reply_control = ReplyControl(
            encoding, prefix=prefix_tokens, budget=budget, loop=loop,
            final_grammar=self.final_grammar, tool_grammars=self.tool_grammars,
            force_final=asked.structured and free_start,
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
                elif event.kind == "reasoning" and self.asked.exclude:
                    continue
                elif event.kind == "logprob" and event.channel == "reasoning" and self.asked.exclude:
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

    def problem(self, end: TurnEnd, max_tokens: int) -> APIError | None:
        """Why the answer can't be given as structured output, or None when it can (or the
        request wanted none). Never lets invalid JSON pass as a success."""
        if not self.asked.structured or end.finish_reason == "error":
            return None
        if self._problem is not None:
            return self._problem[0]
        control = self.reply_control
        if self.called or end.finish_reason == "tool_calls":
            return None  # the model called a tool instead of answering: no JSON was due
        text = "".join(self.content)
        problem = None
        if end.finish_reason == "length":
            problem = APIError(
                400, f"The reply reached its token limit ({self.asked.max_tokens_param}={max_tokens}) before "
                     "its JSON answer was complete. Raise the limit, or lower reasoning.max_tokens to leave "
                     "the answer more room.",
                param=self.asked.max_tokens_param, code="structured_output_incomplete")
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


def _format_of(asked: Asked) -> tuple[dict, str] | None:
    if asked.format_type == "json_object":
        return structured.ANY_OBJECT, f"{asked.format_param}"
    if asked.format_type == "json_schema":
        if asked.format_schema is None:
            raise invalid_request(f"{asked.format_param}: a json_schema format needs a schema",
                                  param=asked.format_param)
        return asked.format_schema, f"{asked.format_param}.schema"
    return None


async def prepare(asked: Asked, state) -> Plan:
    """Checks the request's options and compiles its grammars (400s for what can't be used)."""
    if asked.structured and asked.has_stop:
        raise invalid_request("stop strings can't be combined with structured output: they would cut the JSON",
                              param="stop")
    fmt = _format_of(asked)
    if fmt is None and not asked.strict_tools:
        return Plan(asked, state.settings)
    loaded = state.engine.loaded
    if loaded is None:
        raise APIError(503, "The model is not loaded.", type="server_error")
    tokenizer = await structured.tokenizer_for(loaded.path)
    compile_ = structured.compile_schema
    final_grammar = None
    if fmt is not None:
        schema, param = fmt
        final_grammar = await asyncio.to_thread(compile_, schema, tokenizer, name=asked.format_name, param=param)
    tool_grammars = {}
    for name, parameters, param in asked.strict_tools:
        tool_grammars[name] = await asyncio.to_thread(compile_, parameters or structured.ANY_OBJECT, tokenizer,
                                                      name=name, param=param, end=structured.CALL)
    return Plan(asked, state.settings, final_grammar, tool_grammars)
