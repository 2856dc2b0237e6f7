"""Harmony prompts, rendered by openai-harmony: the one place that builds model input.

Every API turns its requests into a `Prompt` (instructions, tools, conversation items
as harmony messages) and render it here, so the system message, the developer message and
the rule about old reasoning are the same everywhere.
"""

import datetime
import json
from dataclasses import dataclass, field, replace

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
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
    tokens = encoding.render_conversation_for_completion(
        Conversation.from_messages(head + drop_finished_reasoning(prompt.messages)),
        Role.ASSISTANT,
        config=RenderConversationConfig(auto_drop_analysis=False),
    )
    boundary = sum(len(encoding.render(m)) for m in head)
    if assistant_prefix:
        tokens = tokens + encoding.encode(assistant_prefix, allowed_special="all")
    return tokens, boundary


def render(encoding: HarmonyEncoding, prompt: Prompt, identity: str, knowledge_cutoff: str,
           assistant_prefix: str = "") -> list[int]:
    """Token ids of the whole prompt, ending with `<|start|>assistant` (plus a forced prefix)."""
    return render_with_boundary(encoding, prompt, identity, knowledge_cutoff, assistant_prefix)[0]
