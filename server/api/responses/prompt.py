"""A Responses request -> the turn it asks for: input items -> a harmony Prompt, plus the turn's options.

`instructions`, then developer and system messages, become the developer message's instructions;
user messages, assistant messages, reasoning items, function calls and their outputs become harmony
messages in order. Which old reasoning is shown again is decided in harmony/render.py (harmony's rule,
the same for every API): kept while a turn goes through tool calls, dropped after a final answer.

Function tools and namespaces of them are all shown to the model as `functions.NAME`: a
namespaced tool `multi_agent_v1` / `spawn_agent` becomes `functions.multi_agent_v1_spawn_agent`
and is mapped back to its namespace and name in the output. `mcp` tools name MCP servers whose
tools the server runs (server/tools/); an earlier `mcp_call` item goes back into harmony as the call
and the tool's message, `mcp_list_tools` items only say that a server was listed already.
`web_search` and `code_interpreter` tools turn on the built-in browser and python (server/tools/builtin.py);
their earlier `web_search_call` and `code_interpreter_call` items are records, not shown to the model again
(they were that turn's reasoning), but a code_interpreter_call's container names the interpreter
a continuation goes on with.

Reasoning items carry their text back in `encrypted_content` when the client asks for it
(`include: ["reasoning.encrypted_content"]`, Codex CLI does with `store: false`). This server is
local, so it is not encrypted: it is the text, base64-encoded behind a marker.
"""

import base64
import binascii
import uuid

from server.api.reasoning import asked_effort, reasoning_ask
from server.api.responses.schema import WEB_SEARCH_TYPES, ResponsesRequest
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

ENCRYPTED_MARKER = "swallow-reasoning-v1:"


def encrypt_reasoning(text: str) -> str:
    return ENCRYPTED_MARKER + base64.b64encode(text.encode()).decode()


def decrypt_reasoning(blob: str | None) -> str | None:
    """The text of one of our `encrypted_content` values; None for anything else."""
    if not blob or not blob.startswith(ENCRYPTED_MARKER):
        return None
    try:
        return base64.b64decode(blob[len(ENCRYPTED_MARKER):], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def reasoning_text(item) -> str:
    restored = decrypt_reasoning(item.encrypted_content)
    if restored is not None:
        return restored
    if item.content:
        return "".join(part.text for part in item.content)
    return "\n\n".join(part.text for part in item.summary)


def tools(body: ResponsesRequest) -> tuple[ToolDef, ...]:
    """Function tools and the functions of namespaces (the other tool types are the server's)."""
    found = []
    for i, tool in enumerate(body.tools or []):
        if tool.type == "function":
            found.append((None, tool, f"tools[{i}]"))
        elif tool.type == "namespace":
            found.extend((tool.name, f, f"tools[{i}].tools[{j}]") for j, f in enumerate(tool.tools))
    return tuple(ToolDef(f.name, f.description, f.parameters, bool(f.strict), namespace=namespace,
                         param=f"{path}.parameters") for namespace, f, path in found)


def servers(body: ResponsesRequest) -> tuple[ServerAsk, ...]:
    """The MCP servers the request picked (`mcp` tools)."""
    return tuple(ServerAsk(t.server_label, t.tool_names(), url=t.server_url or None, headers=t.request_headers(),
                           param=f"tools[{i}]")
                 for i, t in enumerate(body.tools or []) if t.type == "mcp")


def builtins(body: ResponsesRequest, items: list) -> BuiltinAsk:
    """The built-ins the request turned on; `items`: the whole conversation (history and input)."""
    browser = python = None
    container = ""
    for i, tool in enumerate(body.tools or []):
        if tool.type in WEB_SEARCH_TYPES:
            browser = browser or f"tools[{i}]"
        elif tool.type == "code_interpreter":
            python = python or f"tools[{i}]"
            container = container or conversation_container(tool.container, items)
    return BuiltinAsk(browser=browser, python=python, conversation=container, quiet=("browser",))


def conversation_container(asked, items: list) -> str:
    """The container (python's interpreter) of the request: the one it names, else the last one the
    conversation used, else a new one."""
    if isinstance(asked, str):
        return asked
    used = [item.container_id for item in items if item.type == "code_interpreter_call" and item.container_id]
    return used[-1] if used else f"cntr_{uuid.uuid4().hex}"


def listed_servers(items: list) -> set[str]:
    """Labels of the servers the conversation has an mcp_list_tools item of (not listed again)."""
    return {item.server_label for item in items if item.type == "mcp_list_tools" and not item.error}


def tool_choice(body: ResponsesRequest) -> ToolChoice:
    choice = body.tool_choice or "auto"
    return ToolChoice(choice) if isinstance(choice, str) else ToolChoice("named", choice.name)


def _call_follows(items: list, i: int) -> bool:
    """Whether the assistant message items[i] is followed, in the same turn, by a function call
    (then it was a preamble on the commentary channel, not a final answer)."""
    for item in items[i + 1:]:
        if item.type in ("function_call", "mcp_call"):
            return True
        if item.type == "function_call_output" or (item.type == "message" and item.role != "assistant"):
            return False
    return False


def conversation(items: list, names: ToolNames, first_new: int = 0) -> tuple[list[str], list]:
    """(developer/system texts, harmony messages) of the items; items before `first_new` come
    from the stored conversation, the rest from this request's `input` (for error locations)."""
    instructions, messages, calls = [], [], {}
    for i, item in enumerate(items):
        if item.type == "message":
            text = item.text()
            if item.role in ("system", "developer"):
                if text:
                    instructions.append(text)
            elif item.role == "user":
                messages.append(harmony.user(text))
            elif text:
                preamble = item.phase == "commentary" or (item.phase is None and _call_follows(items, i))
                messages.append(harmony.assistant_preamble(text) if preamble else harmony.assistant_final(text))
        elif item.type == "reasoning":
            text = reasoning_text(item)
            if text:
                messages.append(harmony.assistant_reasoning(text))
        elif item.type == "function_call":
            model_name = names.model_name(f"{item.namespace}.{item.name}" if item.namespace else item.name)
            calls[item.call_id] = model_name
            messages.append(harmony.tool_call(model_name, item.arguments or "{}"))
        elif item.type == "function_call_output":
            if item.call_id not in calls:
                where = f"input[{i - first_new}]"
                raise invalid_request(
                    f"{where}: function_call_output answers an unknown call_id {item.call_id!r}; it must match "
                    "the call_id of a function_call item earlier in the conversation",
                    param=f"{where}.call_id",
                )
            messages.append(harmony.tool_result(calls[item.call_id], item.text()))
        elif item.type == "item_reference":  # resolved from the store before translation (routes.py)
            where = f"input[{i - first_new}]"
            raise invalid_request(f"{where}: item_reference {item.id!r} can't be resolved here: references "
                                  "need the response store", param=f"{where}.id")
        elif item.type == "mcp_call":
            recipient = f"{item.server_label}.{ToolNames([item.name]).model_name(item.name)}"
            messages.append(harmony.server_call(recipient, item.arguments or "{}"))
            error = item.error_text()
            output = f"Error: {error}" if error is not None else (item.output or "")
            messages.append(harmony.server_result(recipient, output))
    return instructions, messages


def response_format(body: ResponsesRequest) -> FormatAsk | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    return FormatAsk(fmt.type, fmt.name or "response", fmt.schema_, fmt.description, param="text.format")


def translate(body: ResponsesRequest, history: list) -> TurnRequest:
    """What the request asks of its turn, in its own values (defaults are the resolver's).
    `history`: the items of the stored conversation (previous_response_id), already validated."""
    declared = tools(body)
    items = list(history) + list(body.input or [])
    texts, messages = conversation(items, tool_names(declared), first_new=len(history))
    return TurnRequest(
        instructions="\n\n".join(([body.instructions] if body.instructions else []) + texts),
        messages=messages,
        tools=declared,
        tool_choice=tool_choice(body),
        servers=servers(body),
        builtins=builtins(body, items),
        max_tool_calls=body.max_tool_calls,
        effort=asked_effort(body),
        sampling=sampling_given(body),
        max_tokens=body.max_output_tokens,
        max_tokens_param="max_output_tokens",
        logprobs=body.logprobs(),
        reasoning=reasoning_ask(body.reasoning),
        response_format=response_format(body),
        input_param="input",
    )
