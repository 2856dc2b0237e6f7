"""A request's turn with every default applied, once, for every API.

    resolved = resolve(request, settings)   # TurnRequest (what the request said) -> ResolvedTurn

The ResolvedTurn is frozen: the pipeline, the engine's controls and each API's output read it and
nobody changes it. Everything a request may leave out is decided here: sampling, the token limit,
reasoning effort, the reasoning budget and loop guard, the response format (and its section in
the prompt), the tools the model is shown and the one it must call, logprobs, choices. What can't
be used is a 400 naming the field, before anything is rendered or generated.
"""

import math
from dataclasses import dataclass, replace

from openai_harmony import ToolDescription

from server.engine.reasoning_control import LoopSettings
from server.engine.sampling import SamplingParams
from server.harmony import render as harmony
from server.harmony.tools import (
    ToolNames,
    check_parameters,
    describe,
    forced_call_prefix,
)
from server.plumbing.errors import invalid_request
from server.tools.base import CallLimits
from server.tools.toolset import EMPTY, Toolset
from server.turn.request import ToolDef, TurnRequest, tool_names

ANY_TOOL = "any"  # ResolvedTools.forced: the reply must call one of the tools shown
ANY_OBJECT = {"type": "object"}  # the schema of a json_object format
# The effort names clients send (OpenAI's and Anthropic's) -> harmony's three levels.
EFFORTS = {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high",
           "max": "high"}


@dataclass(frozen=True)
class ResolvedTools:
    names: ToolNames  # client keys <-> the names the model writes
    declared: tuple[ToolDef, ...]  # every tool the client declared
    shown: tuple[ToolDescription, ...]  # what the model is shown (nothing with tool_choice "none")
    forced: str | None  # None, ANY_TOOL, or the model name of the one tool to call
    strict: tuple[tuple[str, dict | None, str], ...]  # (model name, parameters, param) of strict tools

    @property
    def shown_names(self) -> list[str]:
        return [tool.name for tool in self.shown]

    def client(self, model_name: str) -> tuple[str | None, str]:
        """(namespace, name) of the tool the model called by `model_name`."""
        key = self.names.client_name(model_name)
        tool = next((t for t in self.declared if t.key == key), None)
        return (tool.namespace, tool.name) if tool else (None, key)

    def client_name(self, model_name: str) -> str:
        return self.names.client_name(model_name)


@dataclass(frozen=True)
class Reasoning:
    budget: int | None  # analysis tokens before the answer is opened; None: no limit, 0: none at all
    exclude: bool  # reason, but send none of it
    loop: LoopSettings | None  # the loop guard's settings; None: off


@dataclass(frozen=True)
class ResponseFormat:
    type: str  # "json_object" or "json_schema"
    name: str
    schema: dict  # what the answer must match (any object for json_object)
    param: str  # the schema's place in the request, for errors


@dataclass(frozen=True)
class ServerTools:
    """The tools the server runs in this turn (server/turn/loop.py) and their bounds."""

    toolset: Toolset  # the sources the request picked (empty: none; the loop still answers stray calls)
    max_rounds: int  # calls run per reply; past it the reply ends
    limits: CallLimits  # each call's time and result size


@dataclass(frozen=True)
class ResolvedTurn:
    prompt: harmony.Prompt  # effort decided, tools shown, the response format's section included
    tools: ResolvedTools
    sampling: SamplingParams
    max_tokens: int  # asked or the configured default; the turn clamps it to the context left
    max_tokens_param: str
    n: int
    stop: tuple[str, ...]
    logprobs: int | None
    reasoning: Reasoning
    response_format: ResponseFormat | None
    input_param: str
    server_tools: ServerTools

    @property
    def structured(self) -> bool:
        return self.response_format is not None

    @property
    def tools_active(self) -> bool:
        """The model is shown tools (it may call one instead of answering)."""
        return bool(self.tools.shown) or bool(self.server_tools.toolset)

    def choice(self, index: int) -> "ResolvedTurn":
        """Choice `index` of n (its own seed)."""
        return self if index == 0 else replace(self, sampling=seeded(self.sampling, index))

    def forced_prefix(self) -> str:
        """The start of the reply the server writes itself, for a forced tool call. With one
        tool shown, 'any' tool is that one."""
        forced, shown = self.tools.forced, self.tools.shown_names
        if forced is None:
            return ""
        if forced == ANY_TOOL and len(shown) != 1:
            return forced_call_prefix()
        return forced_call_prefix(shown[0] if forced == ANY_TOOL else forced)

    def reasoning_budget(self, limit: int) -> int | None:
        """The budget for a reply of at most `limit` tokens: with structured output (and no tools
        to call instead) the analysis gets at most half, so the JSON has room."""
        budget = self.reasoning.budget
        if self.structured and not self.tools_active:
            budget = min(math.inf if budget is None else budget, limit // 2)
        return budget


def resolve(request: TurnRequest, settings, toolset: Toolset = EMPTY) -> ResolvedTurn:
    """`toolset`: the server-run tools the request picked (server/tools/toolbox.py selects them,
    which may wait for an MCP server to start; api/server_tools.py does it for the routes)."""
    tools = _tools(request)
    response_format = _format(request)
    if response_format is not None and request.stop:
        raise invalid_request("stop strings can't be combined with structured output: they would cut the JSON",
                              param="stop")
    server_tools = toolset if request.tool_choice.kind != "none" else EMPTY
    prompt = harmony.Prompt(effort=EFFORTS[request.effort or settings.reasoning_effort],
                            instructions=request.instructions, tools=list(tools.shown), messages=list(request.messages),
                            namespaces=server_tools.namespaces(), system_tools=server_tools.system_namespaces())
    given = request.response_format
    if response_format is not None and response_format.type == "json_schema":
        prompt = harmony.with_response_format(prompt, response_format.name, response_format.schema,
                                              given.description)
    return ResolvedTurn(
        prompt=prompt,
        tools=tools,
        sampling=sampling(request.sampling, settings),
        max_tokens=request.max_tokens or settings.max_tokens,
        max_tokens_param=request.max_tokens_param,
        n=choices(request.n, settings),
        stop=tuple(request.stop),
        logprobs=request.logprobs,
        reasoning=_reasoning(request, settings),
        response_format=response_format,
        input_param=request.input_param,
        server_tools=ServerTools(server_tools,
                                 min(settings.tool_max_rounds, request.max_tool_calls or settings.tool_max_rounds),
                                 CallLimits(settings.tool_timeout, settings.tool_max_result_kb * 1024)),
    )


def sampling(given: dict, settings) -> SamplingParams:
    """The request's sampling values, the configured defaults where it gave none."""
    values = {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k,
              "min_p": settings.min_p, **given}
    values["top_k"] = max(values["top_k"], 0)  # -1 and 0: no top-k
    return SamplingParams(**values)


def seeded(sampling: SamplingParams, index: int) -> SamplingParams:
    """Choice `index`'s sampling: seed + index when a seed is given (else its own random one)."""
    return replace(sampling, seed=None if sampling.seed is None else sampling.seed + index)


def choices(n: int | None, settings) -> int:
    n = n or 1
    if n > settings.max_n:
        raise invalid_request(f"n: at most {settings.max_n} choices per request (the server's max_n)", param="n")
    return n


def _reasoning(request: TurnRequest, settings) -> Reasoning:
    asked = request.reasoning
    if asked.enabled is False:
        budget = 0
    elif asked.budget is not None:
        budget = asked.budget
    else:
        budget = settings.reasoning_max_tokens or None
    guard = settings.loop_guard if asked.loop_guard is None else asked.loop_guard
    loop = LoopSettings(settings.loop_max_period, settings.loop_min_repeats, settings.loop_min_tokens) if guard else None
    return Reasoning(budget, asked.exclude, loop)


def _format(request: TurnRequest) -> ResponseFormat | None:
    given = request.response_format
    if given is None or given.type == "text":
        return None
    if given.type == "json_object":
        return ResponseFormat("json_object", given.name, ANY_OBJECT, given.param)
    if given.schema is None:
        raise invalid_request(f"{given.param}: a json_schema format needs a schema", param=given.param)
    return ResponseFormat("json_schema", given.name, given.schema, f"{given.param}.schema")


def _tools(request: TurnRequest) -> ResolvedTools:
    """Which tools the model is shown and which it must call (tool_choice), the same rules for
    every API: "none" shows none; "required" forces a call to any; a named one forces that one."""
    declared, choice = request.tools, request.tool_choice
    names = tool_names(declared)
    if len(names.to_model) != len(declared):
        raise invalid_request("tools: tool names must be unique", param="tools")
    for tool in declared:
        problem = check_parameters(tool.name, tool.parameters)
        if problem:
            raise invalid_request(problem, param=tool.param)
    if choice.kind == "none" or not declared:
        if choice.kind not in ("none", "auto"):
            raise invalid_request("tool_choice needs tools", param=choice.param)
        return ResolvedTools(names, declared, (), None, ())
    shown = tuple(describe(names.model_name(t.key), t.description, t.parameters) for t in declared)
    if choice.kind == "named":
        if choice.name not in names.to_model:
            raise invalid_request(f"tool_choice names an unknown tool {choice.name!r}", param=choice.param)
        forced = names.model_name(choice.name)
    else:
        forced = ANY_TOOL if choice.kind == "required" else None
    strict = tuple((names.model_name(t.key), t.parameters, t.param) for t in declared if t.strict)
    return ResolvedTools(names, declared, shown, forced, strict)
