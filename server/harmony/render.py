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
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

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
)

EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}


@dataclass
class Prompt:
    effort: str
    instructions: str = ""
    tools: list[ToolDescription] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # the conversation, after dev/system


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
    if prompt.instructions or prompt.tools:
        developer = DeveloperContent.new()
        if prompt.instructions:
            developer = developer.with_instructions(prompt.instructions)
        if prompt.tools:
            developer = developer.with_function_tools(prompt.tools)
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
