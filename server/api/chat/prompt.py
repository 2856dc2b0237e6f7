"""Chat-completions messages -> a harmony Prompt.

System and developer messages become the developer message's instructions; user turns,
assistant turns (answer, reasoning, tool calls) and tool results become harmony messages.
Which old reasoning is shown again is decided in prompt.py, the same for every API.
"""

from server.api.chat.schema import ChatCompletionRequest
from server.harmony import render as harmony
from server.harmony.tools import (
    ToolNames,
    check_parameters,
    describe,
    forced_call_prefix,
)
from server.plumbing.errors import invalid_request


def tool_setup(body: ChatCompletionRequest) -> tuple[ToolNames, list, str]:
    """(name mapping, tool descriptions shown to the model, forced reply prefix)."""
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
        return names, [], ""
    descriptions = [
        describe(names.model_name(t.function.name), t.function.description, t.function.parameters)
        for t in tools
    ]
    if choice == "required":
        # Start the reply inside a tool call's header; the model writes ".NAME" (a dot is
        # usually merged with the name's first piece, so the prefix stops before it).
        return names, descriptions, forced_call_prefix()
    if choice == "auto":
        return names, descriptions, ""
    wanted = choice.function.get("name")
    if wanted not in names.to_model:
        raise invalid_request(f"tool_choice names an unknown function {wanted!r}", param="tool_choice")
    prefix = forced_call_prefix(names.model_name(wanted))
    return names, descriptions, prefix


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


def build_prompt(body: ChatCompletionRequest, default_effort: str) -> tuple[harmony.Prompt, ToolNames, str]:
    names, descriptions, prefix = tool_setup(body)
    instructions, messages = conversation(body, names)
    prompt = harmony.Prompt(
        effort=body.effort(default_effort),
        instructions=instructions,
        tools=descriptions,
        messages=messages,
    )
    return prompt, names, prefix
