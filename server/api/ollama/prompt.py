"""An Ollama request -> the turn it asks for (/api/chat's messages, /api/generate's prompt).

Leading system messages become the developer message's instructions, a system message later in
the conversation a developer message in place (the prompt before it stays cached); user,
assistant (answer, `thinking`, `tool_calls` with arguments as objects) and tool messages become
harmony messages. A tool message names the tool it answers by `tool_name` (or `tool_call_id`);
without either it answers the earliest unanswered call of the assistant message before it.

`think` is harmony's reasoning effort ("max" is high); `think: false` skips the reasoning: the
reply opens on its answer (a budget of 0) and no reasoning is sent.
"""

import json

from server.api.ollama.schema import (
    ChatRequest,
    GenerateRequest,
    GeneratingRequest,
    Options,
)
from server.harmony import render as harmony
from server.harmony.tools import ToolNames
from server.plumbing.errors import invalid_request
from server.turn.request import (
    FormatAsk,
    ReasoningAsk,
    ToolDef,
    TurnRequest,
    sampling_given,
    tool_names,
)

UNLIMITED = 2**31 - 1  # num_predict -1, -2 or 0: as many tokens as the context holds (the turn clamps it)
NO_OPTIONS = Options()


def tools(body: ChatRequest) -> tuple[ToolDef, ...]:
    return tuple(ToolDef(t.function.name, t.function.description, t.function.parameters,
                         param=f"tools[{i}].function.parameters") for i, t in enumerate(body.tools or []))


def _arguments(arguments: dict | str | None) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)


def conversation(body: ChatRequest, names: ToolNames) -> tuple[str, list]:
    """(instructions, harmony messages) of the request's messages."""
    instructions, messages = [], []
    calls: dict[str, str] = {}  # a call's id -> the tool's client name
    unanswered: list[str] = []  # the calls of the last assistant message no tool message answered yet
    for i, message in enumerate(body.messages or []):
        text = message.content or ""
        if message.role in ("system", "developer"):
            if not text:
                continue
            if messages:
                messages.append(harmony.developer_note(text))
            else:
                instructions.append(text)
        elif message.role == "user":
            messages.append(harmony.user(text))
        elif message.role == "assistant":
            if message.thinking:
                messages.append(harmony.assistant_reasoning(message.thinking))
            if message.tool_calls:
                if text:
                    messages.append(harmony.assistant_preamble(text))
                unanswered = []
                for call in message.tool_calls:
                    name = call.function.name
                    if call.id:
                        calls[call.id] = name
                    unanswered.append(name)
                    messages.append(harmony.tool_call(names.model_name(name), _arguments(call.function.arguments)))
            elif text:
                messages.append(harmony.assistant_final(text))
        else:  # a tool's result
            name = message.tool_name or calls.get(message.tool_call_id or "")
            if name is None and unanswered:
                name = unanswered[0]
            if name is None:
                raise invalid_request(f"messages[{i}]: a tool message needs tool_name, the tool whose result it "
                                      "is (no earlier assistant message called one)", param=f"messages[{i}].tool_name")
            if name in unanswered:
                unanswered.remove(name)
            messages.append(harmony.tool_result(names.model_name(name), text))
    return "\n\n".join(instructions), messages


def effort(body: GeneratingRequest) -> str | None:
    """`think`'s level; true (or none) is the configured effort, false the lowest."""
    think = body.think
    if think is False:
        return "low"
    return think if isinstance(think, str) else None


def reasoning(body: GeneratingRequest) -> ReasoningAsk:
    """`think: false`: no reasoning (the reply opens on its answer) and none sent."""
    return ReasoningAsk(enabled=False, exclude=True) if body.think is False else ReasoningAsk()


def max_tokens(options: Options) -> int | None:
    if options.num_predict is None:
        return None
    return options.num_predict if options.num_predict > 0 else UNLIMITED


def response_format(body: GeneratingRequest) -> FormatAsk | None:
    if not body.format:
        return None
    if body.format == "json":
        return FormatAsk("json_object", param="format")
    return FormatAsk("json_schema", schema=body.format, param="format")


def _turn(body: GeneratingRequest, instructions: str, messages: list, declared=()) -> TurnRequest:
    options = body.options or NO_OPTIONS
    return TurnRequest(
        instructions=instructions,
        messages=messages,
        tools=tuple(declared),
        effort=effort(body),
        sampling=sampling_given(options),
        max_tokens=max_tokens(options),
        max_tokens_param="options.num_predict",
        stop=tuple(options.stop or ()),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        reasoning=reasoning(body),
        response_format=response_format(body),
    )


def translate_chat(body: ChatRequest) -> TurnRequest:
    """What a /api/chat request asks of its turn, in its own values (defaults are the resolver's)."""
    declared = tools(body)
    instructions, messages = conversation(body, tool_names(declared))
    return _turn(body, instructions, messages, declared)


def translate_generate(body: GenerateRequest) -> TurnRequest:
    """A /api/generate request (not raw): its `system` and `prompt` as one user turn."""
    for field, why in (("suffix", "fill-in-the-middle is not something this model does"),
                       ("template", ("prompts are rendered in harmony's format; give the whole prompt "
                                     "with raw: true instead")),
                       ("context", "send the conversation to /api/chat instead")):
        if getattr(body, field):
            raise invalid_request(f"{field} is not supported: {why}", param=field)
    return _turn(body, body.system or "", [harmony.user(body.prompt or "")])
