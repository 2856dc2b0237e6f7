"""Harmony edges real clients ran into (issue 18), on every API: calls to tools nobody declared,
forced calls that must name a real tool with no markup leaking, and replies outside the format
that must stream at once."""

import json

import anthropic
import httpx
import pytest

from tests.scripts import NO_HEADER_WORDS

OSAKA_CALL = 'get_weather({"city": "Osaka"})'
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get time-now", "description": "The current time in a time zone.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
MARKUP = ("<|", "commentary", "to=", "functions", "constrain")


def undeclared_calls(server) -> float:
    metrics = httpx.get(f"{server.url}/metrics").text
    line = next(line for line in metrics.splitlines() if line.startswith("swallow_undeclared_tool_calls_total"))
    return float(line.split()[-1])


# ---- 1. a call to a tool the request never declared ---------------------------------------

def test_chat_without_tools_gets_the_call_as_text(client, scripted_server):
    before = undeclared_calls(scripted_server)
    ask = [{"role": "user", "content": "Call on analysis"}]
    reply = client.chat.completions.create(model="m", messages=ask)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert choice.message.content == OSAKA_CALL
    chunks = list(client.chat.completions.create(model="m", messages=ask, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == OSAKA_CALL
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert undeclared_calls(scripted_server) == before + 2


def test_a_call_to_another_tool_than_those_declared_is_text(client):
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Use the odd tool"}],
                                           tools=[WEATHER])
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
    assert reply.choices[0].message.content == "get_weather_now({})"


def test_responses_without_tools_gets_the_call_as_a_message(client):
    response = client.responses.create(model="m", input="Call on analysis")
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == OSAKA_CALL
    with client.responses.stream(model="m", input="Call on analysis") as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["message"] and final.output_text == OSAKA_CALL


# ---- 2. a forced call names a real tool, with no markup -----------------------------------

PROMPTS = ["Tell me something.", "今日は何曜日ですか？", "Write a poem about the sea.", "Hello"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_required_call_on_random_weights_names_a_declared_tool(demo_server, prompt):
    client = demo_server.client()
    ask = [{"role": "user", "content": prompt}]
    reply = client.chat.completions.create(model="m", messages=ask, tools=[WEATHER, TIME], tool_choice="required",
                                           max_tokens=24)
    message = reply.choices[0].message
    assert [call.function.name for call in message.tool_calls] in (["get_weather"], ["get time-now"])
    assert not any(mark in (message.content or "") for mark in MARKUP)
    chunks = list(client.chat.completions.create(model="m", messages=ask, tools=[WEATHER, TIME],
                                                 tool_choice="required", max_tokens=24, stream=True))
    names = [call.function.name for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []
             if call.function and call.function.name]
    assert names in (["get_weather"], ["get time-now"])
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert not any(mark in content for mark in MARKUP)


def test_required_call_names_a_declared_tool_on_responses_and_messages(demo_server):
    tools = [{"type": "function", **WEATHER["function"]}, {"type": "function", **TIME["function"]}]
    response = demo_server.client().responses.create(model="m", input="Tell me a story.", tools=tools,
                                                     tool_choice="required", max_output_tokens=24)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [call.name for call in calls] in (["get_weather"], ["get time-now"])
    assert not any(mark in response.output_text for mark in MARKUP)
    claude = anthropic.Anthropic(base_url=demo_server.url, api_key="x", max_retries=0)
    message = claude.messages.create(
        model="m", max_tokens=24, tool_choice={"type": "any"}, messages=[{"role": "user", "content": "Go on."}],
        tools=[{"name": t["function"]["name"], "description": t["function"]["description"],
                "input_schema": t["function"]["parameters"]} for t in (WEATHER, TIME)])
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [use.name for use in uses] in (["get_weather"], ["get time-now"])
    assert not any(mark in block.text for block in message.content if block.type == "text" for mark in MARKUP)


# ---- 3. a reply outside the format streams at once ----------------------------------------

def test_a_reply_without_a_header_streams_token_by_token(client):
    chunks = list(client.chat.completions.create(model="m", stream=True,
                                                 messages=[{"role": "user", "content": "Long reply without a header"}]))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == NO_HEADER_WORDS.lstrip()
    assert len(pieces) >= 40  # one piece per token or so, not one chunk after 48 tokens


def test_the_same_reply_on_messages_streams_too(scripted_server):
    body = {"model": "m", "max_tokens": 500, "stream": True,
            "messages": [{"role": "user", "content": "Long reply without a header"}]}
    with httpx.stream("POST", f"{scripted_server.url}/v1/messages", json=body, timeout=60) as response:
        deltas = [json.loads(line[6:])["delta"]["text"] for line in response.iter_lines()
                  if line.startswith("data: ") and '"text_delta"' in line]
    assert "".join(deltas) == NO_HEADER_WORDS.lstrip() and len(deltas) >= 40


# ---- the parser's state, kept without asking harmony after every token ---------------------

@pytest.mark.parametrize("reply", [
    "<|channel|>analysis<|message|>Let me think about the weather.<|end|><|start|>assistant<|channel|>commentary"
    ' to=functions.get_weather <|constrain|>json<|message|>{"city": "Tokyo"}<|call|>',
    "<|channel|>analysis<|message|>Two and two.<|end|><|start|>assistant<|channel|>final<|message|>It is 4.<|return|>",
    "<|channel|>final<|message|>Plain answer, then text outside any message.<|end|>stray words <|start|>assistant"
    "<|channel|>final<|message|>again<|return|>",
    "no header at all, just words",
])
def test_reply_stream_state_matches_harmony_after_every_token(encoding, reply):
    from openai_harmony import HarmonyError

    from server.harmony.stream import ReplyStream

    stream = ReplyStream(encoding)
    for token in encoding.encode(reply, allowed_special="all"):
        try:
            stream.process(token)
        except HarmonyError:
            return  # both users of the stream stop reading it there
        assert stream.state == stream.parser.state
        assert stream.message_count == len(stream.parser.messages)
