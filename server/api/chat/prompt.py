"""A chat-completions request -> the turn it asks for (a harmony Prompt and the turn's options).

System and developer messages become the developer message's instructions; user turns,
assistant turns (answer, reasoning, tool calls) and tool results become harmony messages.
Which old reasoning is shown again is decided in harmony/render.py, the same for every API.
`builtin_tools` (or OpenAI's `web_search_options`, for the browser) turns on the built-ins the server
runs; `metadata.conversation_id` names the conversation whose python interpreter it uses.
"""

from server.api.chat.schema import ChatCompletionRequest
from server.api.reasoning import asked_effort, reasoning_ask
from server.api.server_tools import named
from server.harmony import render as harmony
from server.harmony.tools import ToolNames
from server.plumbing.errors import invalid_request
from server.tools.toolbox import BuiltinAsk, ServerAsk
from server.turn.request import (
    FormatAsk,
    ToolChoice,
    ToolDef,
    TurnRequest,
    sampling_given,
    tool_names,
)


def tools(body: ChatCompletionRequest) -> tuple[ToolDef, ...]:
    return tuple(ToolDef(t.function.name, t.function.description, t.function.parameters, bool(t.function.strict),
                         param=f"tools[{i}].function.parameters")
                 for i, t in enumerate(body.tools or []) if t.type == "function")


def servers(body: ChatCompletionRequest) -> tuple[ServerAsk, ...] | None:
    """The MCP servers the request turns on (`{"type": "mcp", "server_label": …}` tools); None when
    it names no server-run tool at all: then the servers configured with `default = true` are on."""
    asks = tuple(ServerAsk(t.server_label, t.tool_names(), url=t.server_url or None, headers=t.headers or {},
                           param=f"tools[{i}]")
                 for i, t in enumerate(body.tools or []) if t.type == "mcp")
    return asks if asks or names_builtins(body) else None


def names_builtins(body: ChatCompletionRequest) -> bool:
    return body.builtin_tools is not None or body.web_search_options is not None


def builtins(body: ChatCompletionRequest) -> BuiltinAsk:
    """The built-ins the request turns on, and its conversation's name. One that names no server-run
    tool at all (no mcp tools either) gets those on by default (browser_default, python_default)."""
    given = (body.metadata or {}).get("conversation_id")
    conversation = named(str(given)) if given else ""
    if not names_builtins(body):
        mcp_named = any(t.type == "mcp" for t in body.tools or [])
        return BuiltinAsk(conversation=conversation, defaults=not mcp_named)
    names = set(body.builtin_tools or ())
    browser = ("builtin_tools" if "browser" in names
               else "web_search_options" if body.web_search_options is not None else None)
    return BuiltinAsk(browser=browser, python="builtin_tools" if "python" in names else None,
                      conversation=conversation)


def tool_choice(body: ChatCompletionRequest) -> ToolChoice:
    choice = body.tool_choice or "auto"
    if isinstance(choice, str):
        return ToolChoice(choice)
    return ToolChoice("named", choice.function.get("name"))


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


def response_format(body: ChatCompletionRequest) -> FormatAsk | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object" or fmt.json_schema is None:
        return FormatAsk(fmt.type)
    schema = fmt.json_schema
    return FormatAsk(fmt.type, schema.name, schema.schema_, schema.description, param="response_format.json_schema")


def translate(body: ChatCompletionRequest) -> TurnRequest:
    """What the request asks of its turn, in its own values (defaults are the resolver's)."""
    declared = tools(body)
    instructions, messages = conversation(body, tool_names(declared))
    return TurnRequest(
        instructions=instructions,
        messages=messages,
        tools=declared,
        tool_choice=tool_choice(body),
        servers=servers(body),
        builtins=builtins(body),
        effort=asked_effort(body),
        sampling=sampling_given(body),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        max_tokens_param="max_completion_tokens" if body.max_completion_tokens else "max_tokens",
        stop=tuple(body.stop_strings()),
        n=body.n,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        reasoning=reasoning_ask(body.reasoning),
        response_format=response_format(body),
    )
