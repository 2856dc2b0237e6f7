"""Harmony prompts, rendered by openai-harmony: the one place that builds model input.

Every API turns its requests into a `Prompt` (instructions, tools, conversation items
as harmony messages) and render it here, so the system message, the developer message and
the rule about old reasoning are the same everywhere.

A conversation renders as its messages' renderings one after the other, then `<|start|>assistant`
(openai-harmony's render_conversation_for_completion does exactly that, given whether the
conversation declares function tools). Each message's tokens are kept (`RenderedMessages`), so a
turn tokenizes only the messages that are new since the last one: an agent's next request
repeats a long system prompt and the whole history, which took ~8 ms a turn to tokenize at 6k
tokens on a slow CPU, more as the history grows.
"""

import datetime
import json
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    RenderOptions,
    Role,
    SystemContent,
    ToolDescription,
    ToolNamespaceConfig,
)

EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}


@dataclass
class Prompt:
    effort: str
    instructions: str = ""
    tools: list[ToolDescription] = field(default_factory=list)  # the client's functions
    messages: list[Message] = field(default_factory=list)  # the conversation, after dev/system
    namespaces: list[ToolNamespaceConfig] = field(default_factory=list)  # tools the server runs, one per source
    # the built-in tools the server runs (browser, python): declared in the system message, as GPT-OSS was trained
    system_tools: list[ToolNamespaceConfig] = field(default_factory=list)


def with_response_format(prompt: Prompt, name: str, schema: dict, description: str | None = None) -> Prompt:
    """The prompt with harmony's `# Response Formats` section after the developer instructions:
    how the model was trained to be told the JSON schema its answer must follow."""
    lines = ["# Response Formats", "", f"## {name}", ""]
    if description:
        lines.append(f"// {description}")
    lines.append(json.dumps(schema, ensure_ascii=False, separators=(",", ":")))
    section = "\n".join(lines)
    instructions = f"{prompt.instructions}\n\n{section}" if prompt.instructions else section
    return replace(prompt, instructions=instructions)


def user(text: str) -> Message:
    return Message.from_role_and_content(Role.USER, text)


def developer_note(text: str) -> Message:
    """Instructions in the middle of a conversation (a system message between turns): a
    developer message in place, so the prompt before it stays the same (and cached)."""
    return Message.from_role_and_content(Role.DEVELOPER, text)


def assistant_final(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final")


def assistant_reasoning(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("analysis")


def assistant_preamble(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary")


def tool_call(name: str, arguments: str) -> Message:
    return (
        Message.from_role_and_content(Role.ASSISTANT, arguments)
        .with_channel("commentary")
        .with_recipient(f"functions.{name}")
        .with_content_type("<|constrain|>json")
    )


def tool_result(name: str, output: str) -> Message:
    author = Author.new(Role.TOOL, f"functions.{name}")
    return Message.from_author_and_content(author, output).with_channel("commentary").with_recipient("assistant")


def server_call(recipient: str, arguments: str, channel: str = "commentary") -> Message:
    """A call to a tool the server ran (`fs.read_file`), as history."""
    return (Message.from_role_and_content(Role.ASSISTANT, arguments).with_channel(channel)
            .with_recipient(recipient).with_content_type("<|constrain|>json"))


def server_result(recipient: str, output: str, channel: str = "commentary") -> Message:
    """Its result: a message from the tool, on the channel the call was on. The text is data: it is
    encoded as text, so markup in it (`<|start|>system...`) stays text and can't open a message."""
    author = Author.new(Role.TOOL, recipient)
    return Message.from_author_and_content(author, output).with_channel(channel).with_recipient("assistant")


def continuation(encoding: HarmonyEncoding, result: Message) -> list[int]:
    """What follows a reply that ended in a call the server ran: the result's message, then the
    start of the assistant's next message (the prompt of the loop's next round is the previous
    prompt + the reply's tokens + these, so that the prompt cache holds all but these)."""
    return encoding.render(result) + encoding.encode("<|start|>assistant", allowed_special="all")


def drop_finished_reasoning(messages: list[Message]) -> list[Message]:
    """Harmony's rule: the analysis of a turn that ended in a final answer is not shown again;
    the analysis of the turn still in progress (tool calls since the last user message) is.
    openai-harmony's auto_drop_analysis only looks before the first final message."""
    last_user = max((i for i, m in enumerate(messages) if m.author.role == Role.USER), default=-1)
    return [
        m for i, m in enumerate(messages)
        if not (i < last_user and m.author.role == Role.ASSISTANT and m.channel == "analysis")
    ]


def system_message(prompt: Prompt, identity: str, knowledge_cutoff: str) -> Message:
    content = (
        SystemContent.new()
        .with_model_identity(identity)
        .with_knowledge_cutoff(knowledge_cutoff)
        .with_conversation_start_date(datetime.date.today().isoformat())
        .with_reasoning_effort(EFFORTS[prompt.effort])
    )
    for namespace in prompt.system_tools:
        content = content.with_tools(namespace)
    return Message.from_role_and_content(Role.SYSTEM, content)


class RenderedMessages:
    """Token ids of rendered messages, least recently used dropped first beyond `max_tokens`.
    Keyed by the message's JSON and whether its conversation declares function tools (harmony
    renders the system message differently then)."""

    def __init__(self, max_tokens: int = 4_000_000):
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple, array] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()  # rendering may run on the event loop and in worker threads

    def tokens(self, encoding: HarmonyEncoding, message: Message, has_tools: bool) -> array:
        key = (encoding.name, has_tools, message.to_json())
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        found = array("I", encoding.render(message, RenderOptions(conversation_has_function_tools=has_tools)))
        with self._lock:
            if key not in self._entries:
                self._entries[key] = found
                self._tokens += len(found)
                while self._tokens > self.max_tokens and len(self._entries) > 1:
                    self._tokens -= len(self._entries.popitem(last=False)[1])
        return found


RENDERED = RenderedMessages()
_NEXT_TURN: dict[str, list[int]] = {}  # encoding name -> `<|start|>assistant`


def _next_turn(encoding: HarmonyEncoding) -> list[int]:
    if encoding.name not in _NEXT_TURN:
        _NEXT_TURN[encoding.name] = encoding.render_conversation_for_completion(
            Conversation.from_messages([]), Role.ASSISTANT, config=RenderConversationConfig(auto_drop_analysis=False))
    return _NEXT_TURN[encoding.name]


def render_with_boundary(encoding: HarmonyEncoding, prompt: Prompt, identity: str, knowledge_cutoff: str,
                         assistant_prefix: str = "") -> tuple[list[int], int]:
    """(token ids of the whole prompt, ending with `<|start|>assistant` plus a forced prefix;
    the offset where the system and developer messages end). The offset marks the part that
    requests with the same instructions and tools share, worth a prompt-cache copy."""
    head = [system_message(prompt, identity, knowledge_cutoff)]
    if prompt.instructions or prompt.tools or prompt.namespaces:
        developer = DeveloperContent.new()
        if prompt.instructions:
            developer = developer.with_instructions(prompt.instructions)
        if prompt.tools:
            developer = developer.with_function_tools(prompt.tools)
        for namespace in prompt.namespaces:
            developer = developer.with_tools(namespace)
        head.append(Message.from_role_and_content(Role.DEVELOPER, developer))
    has_tools = bool(prompt.tools)
    rendered = array("I")
    for message in head:
        rendered += RENDERED.tokens(encoding, message, has_tools)
    boundary = len(rendered)
    for message in drop_finished_reasoning(prompt.messages):
        rendered += RENDERED.tokens(encoding, message, has_tools)
    tokens = rendered.tolist() + _next_turn(encoding)
    if assistant_prefix:
        tokens += encoding.encode(assistant_prefix, allowed_special="all")
    return tokens, boundary


def render(encoding: HarmonyEncoding, prompt: Prompt, identity: str, knowledge_cutoff: str,
           assistant_prefix: str = "") -> list[int]:
    """Token ids of the whole prompt, ending with `<|start|>assistant` (plus a forced prefix)."""
    return render_with_boundary(encoding, prompt, identity, knowledge_cutoff, assistant_prefix)[0]
