"""A Messages request -> the turn it asks for: a harmony Prompt and the turn's options.

`system` (minus Claude Code's billing-header line, which may carry a per-request hash and would
defeat the prompt cache at its first token) becomes the developer message's instructions; a
`system` message in the middle of `messages` becomes a developer message in place. User text,
assistant text, `thinking`, `tool_use` and `tool_result` blocks become harmony messages in
order; harmony/render.py decides which old reasoning is shown again, as for every API.
"""

import json

from server.api.messages.schema import MessagesRequest
from server.engine.sampling import SamplingParams
from server.harmony import render as harmony
from server.harmony.tools import ToolNames, check_parameters, describe
from server.plumbing.errors import invalid_request
from server.turn.pipeline import ANY_TOOL, TurnSpec
from server.turn.plan import Asked

BILLING_HEADER = "x-anthropic-billing-header:"


def tool_setup(body: MessagesRequest) -> tuple[ToolNames, list, str | None]:
    """(name mapping, tool descriptions shown to the model, the tool the reply must call)."""
    tools = body.tools or []
    names = ToolNames([t.name for t in tools])
    if len(names.to_model) != len(tools):
        raise invalid_request("tools: tool names must be unique", param="tools")
    for i, tool in enumerate(tools):
        problem = check_parameters(tool.name, tool.input_schema)
        if problem:
            raise invalid_request(problem, param=f"tools[{i}].input_schema")
    choice = body.tool_choice.type if body.tool_choice else "auto"
    if choice == "none" or not tools:
        if choice in ("any", "tool"):
            raise invalid_request("tool_choice needs tools", param="tool_choice")
        return names, [], None
    descriptions = [describe(names.model_name(t.name), t.description, t.input_schema) for t in tools]
    if choice == "any":
        return names, descriptions, ANY_TOOL
    if choice == "tool":
        wanted = body.tool_choice.name
        if wanted not in names.to_model:
            raise invalid_request(f"tool_choice names an unknown tool {wanted!r}", param="tool_choice.name")
        return names, descriptions, names.model_name(wanted)
    return names, descriptions, None


def system_text(body: MessagesRequest) -> str:
    if isinstance(body.system, str):
        return body.system
    texts = [block.text for block in body.system or [] if not block.text.startswith(BILLING_HEADER)]
    return "\n\n".join(t for t in texts if t)


def _assistant(blocks: list, names: ToolNames, calls: dict) -> list:
    messages = []
    for j, block in enumerate(blocks):
        if block.type == "thinking" and block.thinking:
            messages.append(harmony.assistant_reasoning(block.thinking))
        elif block.type == "text" and block.text:
            call_follows = any(b.type == "tool_use" for b in blocks[j + 1:])
            messages.append(harmony.assistant_preamble(block.text) if call_follows
                            else harmony.assistant_final(block.text))
        elif block.type == "tool_use":
            calls[block.id] = names.model_name(block.name)
            messages.append(harmony.tool_call(calls[block.id], json.dumps(block.input, ensure_ascii=False)))
        elif block.type == "tool_result":
            raise invalid_request("tool_result blocks belong in user messages", param="messages")
        # redacted_thinking: nothing this server can read back
    return messages


def _user(i: int, blocks: list, calls: dict) -> list:
    messages, texts = [], []
    for j, block in enumerate(blocks):
        if block.type == "tool_result":
            if block.tool_use_id not in calls:
                raise invalid_request(
                    f"messages[{i}].content[{j}]: tool_result answers an unknown tool_use_id "
                    f"{block.tool_use_id!r}; it must match a tool_use block of an earlier assistant message",
                    param=f"messages[{i}].content[{j}].tool_use_id")
            messages.append(harmony.tool_result(calls[block.tool_use_id], block.text()))
        elif block.type == "text" and block.text:
            texts.append(block.text)
        elif block.type in ("tool_use", "thinking"):
            raise invalid_request(f"{block.type} blocks belong in assistant messages",
                                  param=f"messages[{i}].content[{j}]")
    if texts:
        messages.append(harmony.user("\n\n".join(texts)))
    return messages


def conversation(body: MessagesRequest, names: ToolNames) -> list:
    messages, calls = [], {}  # calls: tool_use id -> the name the model knows the tool by
    for i, message in enumerate(body.messages):
        blocks = message.blocks()
        if message.role == "system":
            text = "\n\n".join(b.text for b in blocks if b.type == "text" and b.text)
            if text:
                messages.append(harmony.developer_note(text))
        elif message.role == "assistant":
            messages.extend(_assistant(blocks, names, calls))
        else:
            messages.extend(_user(i, blocks, calls))
    return messages


def asked(body: MessagesRequest) -> Asked:
    """What the request asks of its reply: the reasoning budget (`thinking`), structured output."""
    asked = Asked(max_tokens_param="max_tokens")
    thinking = body.thinking
    if thinking is not None and thinking.type == "enabled" and thinking.budget_tokens is not None:
        asked.budget = thinking.budget_tokens
    elif thinking is not None and thinking.type == "disabled":
        asked.enabled = False
    fmt = body.output_config.format if body.output_config else None
    if fmt is not None:
        asked.format_type, asked.format_param = "json_schema", "output_config.format"
        asked.format_schema = fmt.schema_
    return asked


def turn_spec(body: MessagesRequest, default_effort: str, sampling: SamplingParams) -> tuple[TurnSpec, ToolNames]:
    names, descriptions, forced = tool_setup(body)
    prompt = harmony.Prompt(
        effort=body.effort(default_effort),
        instructions=system_text(body),
        tools=descriptions,
        messages=conversation(body, names),
    )
    spec = TurnSpec(prompt, sampling, max_tokens=body.max_tokens, asked=asked(body), forced_tool=forced,
                    stop=list(body.stop_sequences or []))
    return spec, names
