"""A Responses request -> the turn it asks for: input items -> a harmony Prompt, plus the turn's options.

`instructions`, then developer and system messages, become the developer message's instructions;
user messages, assistant messages, reasoning items, function calls and their outputs become harmony
messages in order. Which old reasoning is shown again is decided in harmony/render.py (harmony's rule,
the same for every API): kept while a turn goes through tool calls, dropped after a final answer.

Function tools and namespaces of them are all shown to the model as `functions.NAME`: a
namespaced tool `multi_agent_v1` / `spawn_agent` becomes `functions.multi_agent_v1_spawn_agent`
and is mapped back to its namespace and name in the output.

Reasoning items carry their text back in `encrypted_content` when the client asks for it
(`include: ["reasoning.encrypted_content"]`, Codex CLI does with `store: false`). This server is
local, so it is not encrypted: it is the text, base64-encoded behind a marker.
"""

import base64
import binascii
from dataclasses import dataclass

from server.api.responses.schema import ResponsesRequest
from server.engine.sampling import SamplingParams
from server.harmony import render as harmony
from server.harmony.tools import ToolNames, check_parameters, describe
from server.plumbing.errors import invalid_request
from server.turn.pipeline import ANY_TOOL, TurnSpec
from server.turn.plan import Asked, from_reasoning

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


def tool_key(namespace: str | None, name: str) -> str:
    return f"{namespace}.{name}" if namespace else name


@dataclass
class ToolSet:
    names: ToolNames  # client keys ("name" or "namespace.name") <-> names the model writes
    functions: dict[str, tuple[str | None, str]]  # client key -> (namespace, name)
    descriptions: list  # what the model is shown
    forced: str | None  # the tool the reply must call (tool_choice): None, ANY_TOOL or a model name

    def model_name(self, namespace: str | None, name: str) -> str:
        return self.names.model_name(tool_key(namespace, name))

    def client_function(self, model_name: str) -> tuple[str | None, str]:
        key = self.names.client_name(model_name)
        return self.functions.get(key, (None, key))


def tool_setup(body: ResponsesRequest) -> ToolSet:
    found = []  # (namespace, function tool, param path)
    for i, tool in enumerate(body.tools or []):
        if tool.type == "function":
            found.append((None, tool, f"tools[{i}]"))
        elif tool.type == "namespace":
            found.extend((tool.name, f, f"tools[{i}].tools[{j}]") for j, f in enumerate(tool.tools))
        # anything else passed validation because it is left out on purpose (web_search)
    keys = [tool_key(namespace, f.name) for namespace, f, _ in found]
    names = ToolNames(keys)
    if len(set(keys)) != len(keys):
        raise invalid_request("tools: function names must be unique (within their namespace)", param="tools")
    for namespace, f, path in found:
        problem = check_parameters(f.name, f.parameters)
        if problem:
            raise invalid_request(problem, param=f"{path}.parameters")
    functions = {key: (namespace, f.name) for key, (namespace, f, _) in zip(keys, found)}
    choice = body.tool_choice or "auto"
    if choice == "none" or not found:
        if choice not in ("none", "auto"):
            raise invalid_request("tool_choice needs function tools", param="tool_choice")
        return ToolSet(names, functions, [], None)
    descriptions = [describe(names.model_name(key), f.description, f.parameters)
                    for key, (_, f, _) in zip(keys, found)]
    if choice == "auto":
        forced = None
    elif choice == "required":
        forced = ANY_TOOL
    else:
        if choice.name not in names.to_model:
            raise invalid_request(f"tool_choice names an unknown function {choice.name!r}", param="tool_choice")
        forced = names.model_name(choice.name)
    return ToolSet(names, functions, descriptions, forced)


def _call_follows(items: list, i: int) -> bool:
    """Whether the assistant message items[i] is followed, in the same turn, by a function call
    (then it was a preamble on the commentary channel, not a final answer)."""
    for item in items[i + 1:]:
        if item.type == "function_call":
            return True
        if item.type == "function_call_output" or (item.type == "message" and item.role != "assistant"):
            return False
    return False


def conversation(items: list, tools: ToolSet, first_new: int = 0) -> tuple[list[str], list]:
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
            model_name = tools.model_name(item.namespace, item.name)
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
    return instructions, messages


def asked(body: ResponsesRequest, tools: ToolSet, tools_active: bool) -> Asked:
    """What the request asks of its reply: reasoning controls, text format, strict tools."""
    asked = from_reasoning(Asked(max_tokens_param="max_output_tokens"), body.reasoning)
    fmt = body.text.format if body.text is not None else None
    if fmt is not None and fmt.type != "text":
        asked.format_type = fmt.type
        asked.format_param = "text.format"
        asked.format_name = fmt.name or "response"
        asked.format_schema = fmt.schema_
        asked.format_description = fmt.description
    if tools_active:
        for i, tool in enumerate(body.tools or []):
            if tool.type == "function":
                functions = [(None, tool, f"tools[{i}]")]
            elif tool.type == "namespace":
                functions = [(tool.name, f, f"tools[{i}].tools[{j}]") for j, f in enumerate(tool.tools)]
            else:
                continue
            asked.strict_tools += [(tools.model_name(namespace, f.name), f.parameters, f"{path}.parameters")
                                   for namespace, f, path in functions if f.strict]
    return asked



def turn_spec(body: ResponsesRequest, history: list, default_effort: str,
              sampling: SamplingParams) -> tuple[TurnSpec, ToolSet]:
    """`history`: the items of the stored conversation (previous_response_id), already validated."""
    tools = tool_setup(body)
    items = list(history) + list(body.input or [])
    texts, messages = conversation(items, tools, first_new=len(history))
    instructions = ([body.instructions] if body.instructions else []) + texts
    prompt = harmony.Prompt(
        effort=body.effort(default_effort),
        instructions="\n\n".join(instructions),
        tools=tools.descriptions,
        messages=messages,
    )
    spec = TurnSpec(prompt, sampling, max_tokens=body.max_output_tokens,
                    asked=asked(body, tools, bool(tools.descriptions)), forced_tool=tools.forced,
                    input_param="input", logprobs=body.logprobs())
    return spec, tools
