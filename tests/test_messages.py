"""Anthropic's Messages API (/v1/messages) on the scripted model, driven by the anthropic SDK."""

import json
import time

import anthropic
import httpx
import pytest

from tests.scripts import (
    JAPANESE_ANSWER,
    JAPANESE_REASONING,
    STOP_ANSWER,
    TOOL_ANSWER,
    TOOL_ARGUMENTS,
)

ASK = [{"role": "user", "content": "What is 2+2?"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                     "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def claude(scripted_server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=scripted_server.url, api_key="any", max_retries=0)


def test_a_reply_has_thinking_then_text(claude):
    message = claude.messages.create(model="claude-opus-4-8", max_tokens=1024, messages=ASK)
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.thinking == JAPANESE_REASONING and thinking.signature
    assert text.text == JAPANESE_ANSWER
    assert message.id.startswith("msg_") and message.role == "assistant" and message.model == "scripted"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    usage = message.usage
    assert usage.output_tokens > 0 and usage.cache_creation_input_tokens == 0
    assert usage.input_tokens + usage.cache_read_input_tokens == claude.messages.count_tokens(
        model="claude-opus-4-8", messages=ASK).input_tokens


def test_streamed_reply_builds_the_same_message(claude):
    with claude.messages.stream(model="claude-opus-4-8", max_tokens=1024, messages=ASK) as stream:
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 2
    assert message.content[0].thinking == JAPANESE_REASONING
    assert message.content[1].text == JAPANESE_ANSWER
    assert message.stop_reason == "end_turn"


def test_stream_events_on_the_wire(scripted_server):
    """Every SSE event has an `event:` line naming its type; thinking ends with its signature."""
    body = {"model": "claude-opus-4-8", "max_tokens": 1024, "stream": True, "messages": ASK}
    with httpx.stream("POST", f"{scripted_server.url}/v1/messages?beta=true", json=body, timeout=60) as response:
        frames = [frame for frame in response.read().decode().split("\n\n") if frame]
    events = []
    for frame in frames:
        name, data = frame.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    thinking = [e["delta"] for e in events if e["type"] == "content_block_delta" and e["index"] == 0]
    assert [d["type"] for d in thinking][-1] == "signature_delta"
    assert "".join(d.get("thinking", "") for d in thinking) == JAPANESE_REASONING
    assert events[-2]["type"] == "message_delta" and events[-2]["delta"]["stop_reason"] == "end_turn"


def test_a_tool_round_trip(claude):
    ask = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    first = claude.messages.create(model="claude-opus-4-8", max_tokens=1024, tools=[WEATHER_TOOL], messages=ask)
    assert first.stop_reason == "tool_use"
    thinking, call = first.content
    assert thinking.type == "thinking" and call.type == "tool_use"
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert call.input == json.loads(TOOL_ARGUMENTS)
    history = [*ask, {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                             "content": [{"type": "text", "text": "sunny, 21°C"}]}]}]
    second = claude.messages.create(model="claude-opus-4-8", max_tokens=1024, tools=[WEATHER_TOOL], messages=history)
    assert second.stop_reason == "end_turn"
    assert second.content[-1].text == TOOL_ANSWER


def test_streamed_tool_input_arrives_in_fragments(claude):
    ask = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    with claude.messages.stream(model="m", max_tokens=1024, tools=[WEATHER_TOOL], messages=ask) as stream:
        fragments = [e.delta.partial_json for e in stream
                     if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        message = stream.get_final_message()
    assert len(fragments) > 3 and "".join(fragments) == TOOL_ARGUMENTS
    assert message.content[-1].input == json.loads(TOOL_ARGUMENTS) and message.stop_reason == "tool_use"


def test_tool_choice_forces_a_call(claude):
    message = claude.messages.create(model="m", max_tokens=200, tools=[WEATHER_TOOL],
                                     tool_choice={"type": "tool", "name": "get_weather"},
                                     messages=[{"role": "user", "content": "Weather please"}])
    assert message.stop_reason == "tool_use"
    assert message.content[-1].input == {"city": "Nagoya"}
    # a call the model ends without arguments: `{}`, also as the stream's input_json_delta
    empty = {"model": "m", "max_tokens": 200, "tools": [WEATHER_TOOL], "tool_choice": {"type": "any"},
             "messages": [{"role": "user", "content": "Call without arguments"}]}
    assert claude.messages.create(**empty).content[-1].input == {}
    with claude.messages.stream(**empty) as stream:
        fragments = [e.delta.partial_json for e in stream if e.type == "content_block_delta"]
        assert fragments == ["{}"] and stream.get_final_message().content[-1].input == {}


def test_a_call_to_an_undeclared_tool_is_text(claude):
    """No tools offered: the model's call can't be acted on, so it comes as text."""
    message = claude.messages.create(model="m", max_tokens=1024,
                                     messages=[{"role": "user", "content": "Call on analysis"}])
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == 'get_weather({"city": "Osaka"})'


def test_stop_sequences_end_the_answer(claude):
    message = claude.messages.create(model="m", max_tokens=1024, stop_sequences=["END"],
                                     messages=[{"role": "user", "content": "Stop test"}])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "END"
    assert message.content[-1].text == STOP_ANSWER.split("END")[0]


def test_max_tokens_ends_with_max_tokens(claude):
    message = claude.messages.create(model="m", max_tokens=20, messages=[{"role": "user", "content": "Write a long essay"}])
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 20


def test_claude_codes_64000_max_tokens_is_clamped_to_the_context(scripted_server):
    body = {"model": "claude-opus-4-8", "max_tokens": 64000, "messages": ASK}
    reply = httpx.post(f"{scripted_server.url}/v1/messages", json=body, timeout=60)
    assert reply.status_code == 200 and reply.json()["content"][-1]["text"] == JAPANESE_ANSWER


def test_effort_reaches_the_system_message(claude):
    for effort in ("low", "medium", "high"):
        message = claude.messages.create(model="m", max_tokens=100, messages=[{"role": "user", "content": "Effort?"}],
                                         extra_body={"output_config": {"effort": effort}})
        assert message.content[-1].text == f"effort={effort}"
    message = claude.messages.create(model="m", max_tokens=100, messages=[{"role": "user", "content": "Effort?"}],
                                     extra_body={"output_config": {"effort": "max"}})
    assert message.content[-1].text == "effort=high"


def test_thinking_budget_and_disabled_thinking(claude):
    ask = [{"role": "user", "content": "Think for a long time"}]
    budgeted = claude.messages.create(model="m", max_tokens=1024, messages=ask,
                                      thinking={"type": "enabled", "budget_tokens": 1024})
    assert budgeted.content[0].type == "thinking"
    short = claude.messages.create(model="m", max_tokens=1024, messages=ask,
                                   extra_body={"thinking": {"type": "enabled", "budget_tokens": 10}})
    assert short.content[0].type == "thinking" and short.model_extra["reasoning_stopped"] == "budget"
    off = claude.messages.create(model="m", max_tokens=1024, messages=ask, thinking={"type": "disabled"})
    assert [block.type for block in off.content] == ["text"]


def test_structured_output_through_output_config(claude):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temperature": {"type": "integer"}},
              "required": ["city", "temperature"]}
    message = claude.messages.create(model="m", max_tokens=200, messages=[{"role": "user", "content": "Weather as JSON"}],
                                     extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert json.loads(message.content[-1].text) == {"city": "Tokyo", "temperature": 21}


def test_claude_codes_request_shape(scripted_server):
    """What Claude Code 2.1 sends (../shared/REFERENCE.md): x-api-key, betas, ?beta=true, system
    blocks with a billing header and cache_control, a system message in the list, adaptive thinking."""
    body = {
        "model": "claude-opus-4-8", "max_tokens": 64000, "stream": True,
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": "user_abc_account__session_123"},
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.3; cc_entrypoint=cli;"},
                   {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "tools": [WEATHER_TOOL, {"name": "Bash", "description": "Run a command",
                                 "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
        "messages": [
            {"role": "system", "content": "The user switched to plan mode."},
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>Be careful.</system-reminder>"},
                {"type": "text", "text": "What is the weather in Tokyo?", "cache_control": {"type": "ephemeral"}}]},
        ],
    }
    headers = {"x-api-key": "sk-ant-anything", "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
               "anthropic-dangerous-direct-browser-access": "true"}
    url = f"{scripted_server.url}/v1/messages?beta=true"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert "event: message_stop" in text and '"stop_reason":"tool_use"' in text
    counted = httpx.post(f"{scripted_server.url}/v1/messages/count_tokens?beta=true", headers=headers,
                         json={k: v for k, v in body.items() if k not in ("max_tokens", "stream")}).json()
    rendered = httpx.post(f"{scripted_server.url}/v1/messages", headers=headers, json={**body, "stream": False}).json()
    usage = rendered["usage"]
    assert counted["input_tokens"] == usage["input_tokens"] + usage["cache_read_input_tokens"]
    assert usage["cache_read_input_tokens"] > 0  # the same request again: its prefix was cached


@pytest.mark.parametrize("body, param_text", [
    ({"messages": ASK}, "max_tokens"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
     "messages[0].content[0].type: content blocks of type 'image'"),
    ({"max_tokens": 10, "messages": [ASK[0], {"role": "user", "content": [{"type": "text", "text": "x"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]},
     "messages[1].content[1].type: content blocks of type 'document'"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                                   "content": [{"type": "image"}]}]}]},
     "messages[0].content[0].content[0].type"),
    ({"max_tokens": 10, "messages": ASK, "tools": [{"type": "bash_20250124", "name": "bash"}]},
     "tools[0].type: tools of type 'bash_20250124'"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t"}]}]},
     "messages[0].content[0].name: Field required"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}]}]}, "toolu_nope"),
    ({"max_tokens": 10, "messages": ASK, "tool_choice": {"type": "any"}}, "tool_choice"),
    ({"max_tokens": 10, "messages": []}, "messages"),
])
def test_bad_requests_get_anthropic_errors(scripted_server, body, param_text):
    reply = httpx.post(f"{scripted_server.url}/v1/messages", json={"model": "m", **body}, timeout=30)
    assert reply.status_code == 400
    error = reply.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert param_text in error["error"]["message"]


def test_sdk_raises_its_own_errors(claude):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.get("/v1/messages/nope", cast_to=object)


def test_context_overflow_names_the_numbers(claude):
    huge = " ".join(["word"] * 5000)
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": huge}])
    assert "4096" in caught.value.body["error"]["message"]


def test_a_client_that_leaves_frees_its_place(scripted_server):
    body = {"model": "m", "max_tokens": 4000, "stream": True,
            "messages": [{"role": "user", "content": "Write a long essay"}]}
    with httpx.stream("POST", f"{scripted_server.url}/v1/messages", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if "text_delta" in line:
                break
    for _ in range(50):
        if scripted_server.health()["running"] == 0:
            break
        time.sleep(0.1)
    assert scripted_server.health()["running"] == 0
