"""Prompts rendered message by message (with each message's tokens kept for the next turn) are
token for token what openai-harmony renders for the whole conversation at once."""

import pytest
from openai_harmony import Conversation, DeveloperContent, Message, RenderConversationConfig, Role

from server.harmony import render as harmony
from server.harmony.tools import describe

WEATHER = describe("get_weather", "Get the current weather for a city.",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
HISTORY = [
    harmony.user("What is the weather in Tokyo?"),
    harmony.assistant_reasoning("The user wants the weather; call the tool."),
    harmony.assistant_preamble("Let me look that up."),
    harmony.tool_call("get_weather", '{"city": "Tokyo"}'),
    harmony.tool_result("get_weather", '{"sky": "clear", "celsius": 21}'),
    harmony.assistant_reasoning("It is clear."),
    harmony.assistant_final("Clear and 21 °C in Tokyo."),
    harmony.developer_note("Answer in Japanese from now on."),
    harmony.user("And in Osaka? 大阪は？"),
]


def whole_conversation(encoding, prompt: harmony.Prompt) -> tuple[list[int], int]:
    """What harmony renders for the whole conversation, and where its developer message ends."""
    head = [harmony.system_message(prompt, "You are a test.", "2024-06")]
    if prompt.instructions or prompt.tools:
        developer = DeveloperContent.new()
        if prompt.instructions:
            developer = developer.with_instructions(prompt.instructions)
        if prompt.tools:
            developer = developer.with_function_tools(prompt.tools)
        head.append(Message.from_role_and_content(Role.DEVELOPER, developer))
    messages = harmony.drop_finished_reasoning(prompt.messages)
    tokens = encoding.render_conversation_for_completion(
        Conversation.from_messages(head + messages), Role.ASSISTANT, RenderConversationConfig(auto_drop_analysis=False))
    after_head = encoding.render_conversation_for_completion(
        Conversation.from_messages(messages), Role.ASSISTANT, RenderConversationConfig(auto_drop_analysis=False))
    return tokens, len(tokens) - len(after_head)


@pytest.mark.parametrize("tools", [[], [WEATHER]], ids=["no tools", "tools"])
@pytest.mark.parametrize("instructions", ["", "Be brief."], ids=["no instructions", "instructions"])
def test_a_prompt_renders_as_harmony_renders_the_whole_conversation(encoding, tools, instructions):
    for turn in range(1, len(HISTORY) + 1):  # a growing conversation, each turn from the kept renderings
        prompt = harmony.Prompt(effort="medium", instructions=instructions, tools=tools, messages=HISTORY[:turn])
        expected, head_end = whole_conversation(encoding, prompt)
        tokens, boundary = harmony.render_with_boundary(encoding, prompt, "You are a test.", "2024-06")
        assert tokens == expected
        assert boundary == head_end  # where the system and developer messages end (a cache boundary)
        assert harmony.render_with_boundary(encoding, prompt, "You are a test.", "2024-06") == (tokens, boundary)


def test_a_forced_prefix_follows_the_rendered_prompt(encoding):
    prompt = harmony.Prompt(effort="low", tools=[WEATHER], messages=HISTORY[:1])
    prefix = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    tokens, _ = harmony.render_with_boundary(encoding, prompt, "You are a test.", "2024-06", prefix)
    expected, _ = whole_conversation(encoding, prompt)
    assert tokens == expected + encoding.encode(prefix, allowed_special="all")


def test_kept_renderings_stay_within_their_budget(encoding):
    kept = harmony.RenderedMessages(max_tokens=40)
    for i in range(20):
        tokens = kept.tokens(encoding, harmony.user(f"message number {i}"), False)
        assert list(tokens) == encoding.render(harmony.user(f"message number {i}"))
    assert kept._tokens <= 40 and len(kept._entries) < 20
