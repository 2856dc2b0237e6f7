"""A Messages request -> the turn it asks for: a harmony Prompt and the turn's options.

`system` (minus Claude Code's billing-header line, which may carry a per-request hash and would
defeat the prompt cache at its first token) becomes the developer message's instructions; a
`system` message in the middle of `messages` becomes a developer message in place. User text,
assistant text, `thinking`, `tool_use` and `tool_result` blocks become harmony messages in
order; harmony/render.py decides which old reasoning is shown again, as for every API.
`mcp_servers` and `mcp_toolset` tools (the MCP connector's) pick MCP servers whose tools the server
runs; their `mcp_tool_use` and `mcp_tool_result` blocks come back in assistant messages.
The server tools `web_search_*` / `web_fetch_*` turn on the built-in browser and `code_execution_*`
python (server/tools/builtin.py); their `server_tool_use` and result blocks, sent back, are records the
model doesn't see again. `metadata.conversation_id` (or `metadata.user_id`, Claude Code's, which names
its session) names the conversation whose python interpreter the request uses.
"""

import json

from server.api.messages.schema import (
    SERVER_BLOCK_TYPES,
    MessagesRequest,
    TextBlock,
    builtin_of,
)
from server.api.server_tools import named
from server.harmony import render as harmony
from server.harmony.tools import ToolNames
from server.plumbing.errors import invalid_request
from server.tools.toolbox import BuiltinAsk, ServerAsk
from server.turn.request import (
    FormatAsk,
    ReasoningAsk,
    ToolChoice,
    ToolDef,
    TurnRequest,
    sampling_given,
    tool_names,
)

BILLING_HEADER = "x-anthropic-billing-header:"


def tools(body: MessagesRequest) -> tuple[ToolDef, ...]:
    return tuple(ToolDef(t.name, t.description, t.input_schema, param=f"tools[{i}].input_schema")
                 for i, t in enumerate(body.tools or []) if t.type != "mcp_toolset" and builtin_of(t.type) is None)


def builtins(body: MessagesRequest) -> BuiltinAsk:
    """The built-ins the request's server tools turn on, and its conversation's name (for python)."""
    asked: dict[str, str] = {}
    for i, tool in enumerate(body.tools or []):
        name = builtin_of(tool.type)
        if name is not None:
            asked.setdefault(name, f"tools[{i}]")
    metadata = body.metadata or {}
    given = metadata.get("conversation_id") or metadata.get("user_id")
    return BuiltinAsk(browser=asked.get("browser"), python=asked.get("python"),
                      conversation=named(str(given)) if given else "")


def servers(body: MessagesRequest) -> tuple[ServerAsk, ...]:
    """The MCP servers the request picked: each `mcp_servers` entry (its `tool_configuration`), and
    each `mcp_toolset` tool (its configs), by name; a server named in both is one server."""
    asks: dict[str, ServerAsk] = {}
    for i, server in enumerate(body.mcp_servers or []):
        config = server.tool_configuration or {}
        if config.get("enabled") is False:
            continue
        allowed = config.get("allowed_tools")
        headers = {"Authorization": f"Bearer {server.authorization_token}"} if server.authorization_token else {}
        asks[server.name] = ServerAsk(server.name, None if allowed is None else tuple(allowed), url=server.url or None,
                                      headers=headers, param=f"mcp_servers[{i}]")
    for i, tool in enumerate(body.tools or []):
        if tool.type != "mcp_toolset":
            continue
        allowed, denied = tool.tool_filter()
        given = asks.get(tool.mcp_server_name)
        if given is not None:
            if allowed is not None and given.allowed_tools is not None:
                allowed = tuple(name for name in allowed if name in given.allowed_tools)
            allowed = allowed if allowed is not None else given.allowed_tools
            asks[tool.mcp_server_name] = ServerAsk(given.label, allowed, denied, given.url, given.headers, given.param)
        else:
            asks[tool.mcp_server_name] = ServerAsk(tool.mcp_server_name, allowed, denied_tools=denied,
                                                   param=f"tools[{i}]")
    return tuple(asks.values())


def tool_choice(body: MessagesRequest) -> ToolChoice:
    """Anthropic's choices in the resolver's words: "any" is "required", "tool" a named one."""
    choice = body.tool_choice
    if choice is None:
        return ToolChoice()
    kind = {"any": "required", "tool": "named"}.get(choice.type, choice.type)
    return ToolChoice(kind, choice.name, param="tool_choice.name" if kind == "named" else "tool_choice")


def system_text(body: MessagesRequest) -> str:
    if isinstance(body.system, str):
        return body.system
    texts = [block.text for block in body.system or [] if not block.text.startswith(BILLING_HEADER)]
    return "\n\n".join(t for t in texts if t)


def _joined_text(blocks: list) -> list:
    """Runs of text blocks as one (an answer with citations comes as several: the cited parts apart)."""
    joined = []
    for block in blocks:
        if block.type == "text" and joined and joined[-1].type == "text":
            joined[-1] = TextBlock(type="text", text=joined[-1].text + block.text)
        else:
            joined.append(block)
    return joined


def _assistant(blocks: list, names: ToolNames, calls: dict) -> list:
    messages = []
    blocks = _joined_text(blocks)
    for j, block in enumerate(blocks):
        if block.type == "thinking" and block.thinking:
            messages.append(harmony.assistant_reasoning(block.thinking))
        elif block.type == "text" and block.text:
            call_follows = any(b.type in ("tool_use", "mcp_tool_use") for b in blocks[j + 1:])
            messages.append(harmony.assistant_preamble(block.text) if call_follows
                            else harmony.assistant_final(block.text))
        elif block.type == "tool_use":
            calls[block.id] = names.model_name(block.name)
            messages.append(harmony.tool_call(calls[block.id], json.dumps(block.input, ensure_ascii=False)))
        elif block.type == "mcp_tool_use":  # a call the server ran: the server's namespace, the tool's safe name
            calls[block.id] = f"{block.server_name}.{ToolNames([block.name]).model_name(block.name)}"
            messages.append(harmony.server_call(calls[block.id], json.dumps(block.input, ensure_ascii=False)))
        elif block.type == "mcp_tool_result" and block.tool_use_id in calls:
            messages.append(harmony.server_result(calls[block.tool_use_id], block.text()))
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
        elif block.type in ("tool_use", "thinking", "mcp_tool_use", "mcp_tool_result", *SERVER_BLOCK_TYPES):
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


def reasoning(body: MessagesRequest) -> ReasoningAsk:
    """The reasoning budget (`thinking`)."""
    thinking = body.thinking
    if thinking is not None and thinking.type == "enabled" and thinking.budget_tokens is not None:
        return ReasoningAsk(budget=thinking.budget_tokens)
    if thinking is not None and thinking.type == "disabled":
        return ReasoningAsk(enabled=False)
    return ReasoningAsk()


def response_format(body: MessagesRequest) -> FormatAsk | None:
    fmt = body.output_config.format if body.output_config else None
    return FormatAsk("json_schema", schema=fmt.schema_, param="output_config.format") if fmt is not None else None


def translate(body: MessagesRequest) -> TurnRequest:
    """What the request asks of its turn, in its own values (defaults are the resolver's)."""
    declared = tools(body)
    return TurnRequest(
        instructions=system_text(body),
        messages=conversation(body, tool_names(declared)),
        tools=declared,
        tool_choice=tool_choice(body),
        servers=servers(body),
        builtins=builtins(body),
        effort=body.output_config.effort if body.output_config else None,
        sampling=sampling_given(body),
        max_tokens=body.max_tokens,
        stop=tuple(body.stop_sequences or ()),
        reasoning=reasoning(body),
        response_format=response_format(body),
    )
