"""A chat-completions request -> the turn it asks for (a harmony Prompt and the turn's options).

System and developer messages become the developer message's instructions; user turns,
assistant turns (answer, reasoning, tool calls) and tool results become harmony messages.
Which old reasoning is shown again is decided in harmony/render.py, the same for every API.
"""

from server.api.chat.schema import ChatCompletionRequest
from server.engine.sampling import SamplingParams
from server.harmony import render as harmony
from server.harmony.tools import ToolNames, check_parameters, describe
from server.plumbing.errors import invalid_request
from server.turn.pipeline import ANY_TOOL, TurnSpec
from server.turn.plan import Asked, from_reasoning


def tool_setup(body: ChatCompletionRequest) -> tuple[ToolNames, list, str | None]:
    """(name mapping, tool descriptions shown to the model, the tool the reply must call:
    None, ANY_TOOL or a model name)."""
    tools = body.tools or []
    names = ToolNames([t.function.name for t in tools])
    if len(names.to_model) != len(tools):
        raise invalid_request("tools: function names must be unique", param="tools")
    for i, tool in enumerate(tools):
        problem = check_parameters(tool.function.name, tool.function.parameters)
        if problem:
            raise invalid_request(problem, param=f"tools[{i}].function.parameters")
    choice = body.tool_choice or "auto"
    if choice == "none" or not tools:
        if choice not in ("none", "auto"):
            raise invalid_request("tool_choice needs tools", param="tool_choice")
        return names, [], None
    descriptions = [
        describe(names.model_name(t.function.name), t.function.description, t.function.parameters)
        for t in tools
    ]
    if choice == "required":
        return names, descriptions, ANY_TOOL
    if choice == "auto":
        return names, descriptions, None
    wanted = choice.function.get("name")
    if wanted not in names.to_model:
        raise invalid_request(f"tool_choice names an unknown function {wanted!r}", param="tool_choice")
    return names, descriptions, names.model_name(wanted)


def conversation(body: ChatCompletionRequest, names: ToolNames) -> tuple[str, list]:
    """(instructions, harmony messages) of the request's messages."""
    instructions, messages, calls = [], [], {}
    for i, message in enumerate(body.messages):
        text = message.text()
        if message.role in ("system", "developer"):
            if text:
                instructions.append(text)
        elif message.role == "user":
            messages.append(harmony.user(text))
        elif message.role == "assistant":
            reasoning = message.reasoning_content or message.reasoning
            if reasoning:
                messages.append(harmony.assistant_reasoning(reasoning))
            if message.tool_calls:
                if text:
                    messages.append(harmony.assistant_preamble(text))
                for call in message.tool_calls:
                    calls[call.id] = call.function.name
                    model_name = names.model_name(call.function.name)
                    messages.append(harmony.tool_call(model_name, call.function.arguments or "{}"))
            elif text:
                messages.append(harmony.assistant_final(text))
        elif message.role == "tool":
            if message.tool_call_id not in calls:
                raise invalid_request(
                    f"messages[{i}]: tool message answers an unknown tool_call_id "
                    f"{message.tool_call_id!r}; it must match a tool call of an earlier assistant message",
                    param=f"messages[{i}].tool_call_id",
                )
            messages.append(harmony.tool_result(names.model_name(calls[message.tool_call_id]), text))
    return "\n\n".join(instructions), messages


def asked(body: ChatCompletionRequest, names: ToolNames, tools_active: bool) -> Asked:
    """What the request asks of its reply: reasoning controls, response format, strict tools."""
    asked = from_reasoning(Asked(max_tokens_param="max_completion_tokens" if body.max_completion_tokens
                                 else "max_tokens"), body.reasoning)
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        asked.format_type = fmt.type
        asked.format_param = "response_format.json_schema" if fmt.type == "json_schema" else "response_format"
        if fmt.json_schema is not None:
            asked.format_name = fmt.json_schema.name
            asked.format_schema = fmt.json_schema.schema_
            asked.format_description = fmt.json_schema.description
    if tools_active:
        asked.strict_tools = [
            (names.model_name(tool.function.name), tool.function.parameters, f"tools[{i}].function.parameters")
            for i, tool in enumerate(body.tools or []) if tool.function.strict
        ]
    return asked



def turn_spec(body: ChatCompletionRequest, default_effort: str, sampling: SamplingParams) -> tuple[TurnSpec, ToolNames]:
    names, descriptions, forced = tool_setup(body)
    instructions, messages = conversation(body, names)
    prompt = harmony.Prompt(
        effort=body.effort(default_effort),
        instructions=instructions,
        tools=descriptions,
        messages=messages,
    )
    spec = TurnSpec(prompt, sampling, max_tokens=body.max_completion_tokens or body.max_tokens,
                    asked=asked(body, names, bool(descriptions)), forced_tool=forced, stop=body.stop_strings(),
                    logprobs=(body.top_logprobs or 0) if body.logprobs else None)
    return spec, names
