"""Tool calling on /v1/chat/completions, the way agents use it."""

import json

import httpx

from server.api.chat.prompt import translate
from server.api.chat.schema import ChatCompletionRequest
from server.config import Settings
from server.harmony import render as harmony
from server.turn.resolve import resolve
from tests.scripts import TOOL_ANSWER, TOOL_ARGUMENTS

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Tokyo?"}]


def accumulate(chunks):
    """Rebuild tool calls from streamed deltas, as the OpenAI SDK docs show."""
    calls, content, reasoning, finish = {}, "", "", None
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += getattr(delta, "reasoning_content", None) or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": "", "fragments": 0})
            if call.id:
                entry["id"] = call.id
            if call.function and call.function.name:
                entry["name"] = call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
                entry["fragments"] += 1
        finish = chunk.choices[0].finish_reason or finish
    return calls, content, reasoning, finish


def test_definitions_render_as_harmony_expects(encoding):
    body = ChatCompletionRequest(messages=ASK, tools=[WEATHER])
    prompt = resolve(translate(body), Settings(reasoning_effort="medium")).prompt
    text = encoding.decode(harmony.render(encoding, prompt, "You are a test.", "2024-06"))
    assert "Calls to these tools must go to the commentary channel: 'functions'." in text
    assert "namespace functions {" in text
    assert "// Get the current weather for a city.\ntype get_weather = (_: {" in text
    assert 'unit?: "celsius" | "fahrenheit"' in text


def test_call_non_streamed(client):
    reply = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.reasoning_content == "I should call the weather tool."
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == TOOL_ARGUMENTS
    assert json.loads(call.function.arguments)["city"] == "Tokyo"


def test_call_streamed_in_fragments(client):
    chunks = list(client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], stream=True))
    calls, content, reasoning, finish = accumulate(chunks)
    assert finish == "tool_calls"
    assert content == "" and reasoning == "I should call the weather tool."
    (call,) = calls.values()
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    assert call["arguments"] == TOOL_ARGUMENTS
    assert call["fragments"] > 10  # streamed as generated, not in one piece at the end
    # the first delta of the call carries id, type, name and empty arguments
    first = next(c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert first.index == 0 and first.id and first.type == "function" and first.function.arguments == ""


def test_full_round_trip(client):
    first = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER]).choices[0].message
    (call,) = first.tool_calls
    history = ASK + [
        {"role": "assistant", "content": None, "reasoning_content": first.reasoning_content,
         "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny"})},
    ]
    reply = client.chat.completions.create(model="m", messages=history, tools=[WEATHER])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == TOOL_ANSWER
    assert reply.choices[0].message.reasoning_content == "The tool says sunny."


def test_history_renders_call_result_and_keeps_the_turns_reasoning(encoding):
    call = {"id": "call_1", "type": "function", "function": {"name": "get weather-now", "arguments": '{"city": "T"}'}}
    body = ChatCompletionRequest(messages=[
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": "earlier answer", "reasoning": "OLD THOUGHTS"},
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": None, "reasoning_content": "CURRENT THOUGHTS", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ], tools=[{**WEATHER, "function": {**WEATHER["function"], "name": "get weather-now"}}])
    prompt = resolve(translate(body), Settings(reasoning_effort="low")).prompt
    text = encoding.decode(harmony.render(encoding, prompt, "You are a test.", "2024-06"))
    assert "OLD THOUGHTS" not in text and "earlier answer" in text
    assert "<|channel|>analysis<|message|>CURRENT THOUGHTS<|end|>" in text
    assert ('<|start|>assistant to=functions.get_weather_now<|channel|>commentary <|constrain|>json'
            '<|message|>{"city": "T"}<|call|>') in text
    assert "<|start|>functions.get_weather_now to=assistant<|channel|>commentary<|message|>sunny<|end|>" in text
    assert text.endswith("<|start|>assistant")


def test_call_on_the_analysis_channel_is_a_call(client):
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Call on analysis"}],
                                           tools=[WEATHER])
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Osaka"}
    assert reply.choices[0].finish_reason == "tool_calls"
    assert getattr(reply.choices[0].message, "reasoning_content", None) is None


def test_preamble_is_content(client):
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Preamble then call"}],
                                           tools=[WEATHER])
    assert reply.choices[0].message.content == "Let me check."
    assert reply.choices[0].message.tool_calls[0].function.arguments == '{"city": "Kyoto"}'


def test_tool_names_are_mapped_for_the_model_and_back(client):
    odd = {**WEATHER, "function": {**WEATHER["function"], "name": "get weather-now"}}
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Use the odd tool"}],
                                           tools=[odd])
    assert reply.choices[0].message.tool_calls[0].function.name == "get weather-now"
    calls, *_ = accumulate(client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Use the odd tool"}], tools=[odd], stream=True))
    assert calls[0]["name"] == "get weather-now"


def test_tool_choice_none_hides_the_tools(client):
    question = [{"role": "user", "content": "Which tools do you have?"}]
    shown = client.chat.completions.create(model="m", messages=question, tools=[WEATHER])
    assert shown.choices[0].message.content == "I can see the weather tool."
    hidden = client.chat.completions.create(model="m", messages=question, tools=[WEATHER], tool_choice="none")
    assert hidden.choices[0].message.content == "effort=medium"


def test_tool_choice_named_and_required_force_a_call(client):
    question = [{"role": "user", "content": "Weather please"}]
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        reply = client.chat.completions.create(model="m", messages=question, tools=[WEATHER], tool_choice=choice)
        (call,) = reply.choices[0].message.tool_calls
        assert call.function.name == "get_weather", choice
        assert json.loads(call.function.arguments) == {"city": "Nagoya"}
        assert reply.choices[0].finish_reason == "tool_calls"
        calls, *_, finish = accumulate(client.chat.completions.create(
            model="m", messages=question, tools=[WEATHER], tool_choice=choice, stream=True))
        assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Nagoya"}
        assert finish == "tool_calls"


def test_a_forced_call_without_arguments_gets_an_empty_object(client):
    """The model ends a forced call at once (`<|call|>` right after the forced header): its
    arguments are still JSON, `{}`, stream or not."""
    question = [{"role": "user", "content": "Call without arguments"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        reply = client.chat.completions.create(model="m", messages=question, tools=[WEATHER], tool_choice=choice)
        assert reply.choices[0].message.tool_calls[0].function.arguments == "{}"
        calls, *_, finish = accumulate(client.chat.completions.create(
            model="m", messages=question, tools=[WEATHER], tool_choice=choice, stream=True))
        assert calls[0]["name"] == "get_weather" and calls[0]["arguments"] == "{}" and finish == "tool_calls"


def test_parallel_tool_calls_is_accepted(client):
    reply = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], parallel_tool_calls=False)
    assert reply.choices[0].finish_reason == "tool_calls"


def test_bad_tool_definitions_are_400(scripted_server):
    bad = [
        [{"type": "function"}],
        [{"type": "retrieval", "function": {"name": "x"}}],
        [{"type": "function", "function": {"name": ""}}],
        [{"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}],
        [{"type": "function", "function": {"name": "x", "parameters": {"type": "object", "required": "city"}}}],
        [WEATHER, WEATHER],
    ]
    for tools in bad:
        response = httpx.post(f"{scripted_server.url}/v1/chat/completions",
                              json={"messages": ASK, "tools": tools}, timeout=30)
        assert response.status_code == 400, tools
        assert response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.post(f"{scripted_server.url}/v1/chat/completions", json={
        "messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tool_choice"
