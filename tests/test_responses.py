"""The Responses API against the live server: items, streaming events, function calls, reasoning.

Stored state and errors: test_responses_state.py."""

import json

import httpx
import pytest

from server.api.responses.prompt import (
    conversation,
    decrypt_reasoning,
    encrypt_reasoning,
    tools,
)
from server.api.responses.schema import ResponsesRequest
from server.harmony.render import drop_finished_reasoning
from server.turn.request import tool_names
from tests.scripts import (
    CODEX_COMMAND_ANSWER,
    JAPANESE_ANSWER,
    JAPANESE_REASONING,
    LONG_WORDS,
    SPAWN_ANSWER,
    TOOL_ANSWER,
    TOOL_ARGUMENTS,
)

UNSCRIPTED = "effort=medium"  # what the scripted model says to a prompt with no trigger of its own
WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
MULTI_AGENT = {
    "type": "namespace", "name": "multi_agent_v1", "description": "Tools for spawning and managing sub-agents.",
    "tools": [{"type": "function", "name": "spawn_agent", "description": "Spawn a sub-agent.", "strict": False,
               "parameters": {"type": "object", "properties": {"message": {"type": "string"}}}}],
}


def create(client, text, **kwargs):
    return client.responses.create(model="anything", input=text, **kwargs)


def raw_events(server, body) -> list[dict]:
    """The data of every server-sent event of a streamed response, checked against its `event:` line."""
    events, name = [], None
    with httpx.stream("POST", f"{server.url}/v1/responses", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
                assert events[-1]["type"] == name
    return events


def shape(events: list[dict]) -> list[str]:
    """Event types with runs of the same delta collapsed into one."""
    out = []
    for event in events:
        if not (out and out[-1] == event["type"] and event["type"].endswith(".delta")):
            out.append(event["type"])
    return out


def post(server, body):
    return httpx.post(f"{server.url}/v1/responses", json=body, timeout=60)


# ---- create: string and item input, stream and non-stream -----------------------------------------

def test_string_input(client):
    response = create(client, "What is 2+2?")
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.model == "scripted"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning, message = response.output
    assert reasoning.content[0].type == "reasoning_text" and reasoning.content[0].text == JAPANESE_REASONING
    assert reasoning.encrypted_content is None  # only when asked for
    assert message.role == "assistant" and message.content[0].type == "output_text"
    assert response.output_text == JAPANESE_ANSWER
    usage = response.usage
    assert usage.input_tokens > 50
    assert usage.output_tokens > usage.output_tokens_details.reasoning_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    question = "What is 2+2? (Asked twice in this test only.)"
    first = create(client, question).usage
    again = create(client, question).usage
    assert first.input_tokens_details.cached_tokens < first.input_tokens - 1
    assert again.input_tokens - 2 <= again.input_tokens_details.cached_tokens < again.input_tokens  # all but its end


def test_output_text_is_in_the_json_too(scripted_server):
    body = post(scripted_server, {"input": "What is 2+2?"}).json()
    assert body["output_text"] == JAPANESE_ANSWER
    assert body["incomplete_details"] is None and body["error"] is None


@pytest.mark.parametrize("items", [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]}],
    [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is "},
                                                     {"type": "input_text", "text": "2+2?"}]}],
])
def test_item_input(client, items):
    assert create(client, items).output_text == JAPANESE_ANSWER


def test_stream_equals_non_stream(client):
    events = list(create(client, "What is 2+2?", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert reasoning.encode() == JAPANESE_REASONING.encode()
    assert text.encode() == JAPANESE_ANSWER.encode()
    assert sum(1 for e in events if e.type == "response.output_text.delta") > 5  # streamed, not in one piece
    final = events[-1].response
    assert events[-1].type == "response.completed" and final.status == "completed"
    assert final.output_text == JAPANESE_ANSWER and final.output[0].content[0].text == JAPANESE_REASONING
    assert final.id == events[0].response.id and events[0].response.status == "in_progress"


def test_reply_without_header_is_a_message(client):
    assert create(client, "Reply without a header").output_text == "Just plain words, no header."
    events = list(create(client, "Reply with a broken header", stream=True))
    assert events[-1].type == "response.completed" and "Still delivered." in events[-1].response.output_text
    assert "<|" not in events[-1].response.output_text


def test_sdk_stream_helper_accepts_the_events(client):
    with client.responses.stream(model="m", input="What is 2+2?") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == JAPANESE_ANSWER == final.output_text


def test_event_order_for_an_answer(scripted_server):
    events = raw_events(scripted_server, {"input": "What is 2+2?"})
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert shape(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [e["output_index"] for e in added] == [e["output_index"] for e in done] == [0, 1]
    assert [e["item"]["id"] for e in added] == [e["item"]["id"] for e in done]
    assert all(e["item"]["status"] == "in_progress" for e in added)
    assert all(e["item"]["status"] == "completed" for e in done)
    assert events[-1]["response"]["output"] == [e["item"] for e in done]


def test_event_order_for_a_function_call(scripted_server):
    events = raw_events(scripted_server, {"input": "What is the weather in Tokyo?", "tools": [WEATHER_TOOL]})
    assert shape(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) > 5 and "".join(deltas) == TOOL_ARGUMENTS  # streamed as generated
    call = events[-2]["item"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["arguments"] == TOOL_ARGUMENTS
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"][-1]
    assert added["arguments"] == "" and added["call_id"] == call["call_id"] and added["id"] == call["id"]


# ---- function calls -------------------------------------------------------------------------------

def test_function_call_round_trip_with_items(client):
    question = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    first = client.responses.create(model="m", input=question, tools=[WEATHER_TOOL], store=False)
    assert first.status == "completed"
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments)["city"] == "Tokyo"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"weather": "sunny"}'}
    sent_back = [item.model_dump(exclude_none=True) for item in first.output]
    second = client.responses.create(model="m", input=question + sent_back + [result], tools=[WEATHER_TOOL])
    assert second.output_text == TOOL_ANSWER


def test_function_call_round_trip_with_previous_response_id(client):
    first = create(client, "What is the weather in Tokyo?", tools=[WEATHER_TOOL])
    call = first.output[-1]
    second = client.responses.create(
        model="m", previous_response_id=first.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.output_text == TOOL_ANSWER and second.previous_response_id == first.id


def test_tool_output_as_parts_with_an_image(client):
    """Codex CLI's view_image answers with an input_image part: noted in the text, not refused."""
    first = create(client, "What is the weather in Tokyo?", tools=[WEATHER_TOOL])
    output = [{"type": "input_text", "text": "sunny"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]
    second = client.responses.create(model="m", previous_response_id=first.id, tools=[WEATHER_TOOL], input=[
        {"type": "function_call_output", "call_id": first.output[-1].call_id, "output": output}])
    assert second.output_text == TOOL_ANSWER


def test_tool_choice(client):
    forced = create(client, "Weather please", tools=[WEATHER_TOOL], tool_choice="required")
    assert forced.output[-1].name == "get_weather" and json.loads(forced.output[-1].arguments) == {"city": "Nagoya"}
    named = create(client, "Weather please", tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "get_weather"})
    assert named.output[-1].arguments == '{"city": "Nagoya"}'
    assert create(client, "Hello", tools=[WEATHER_TOOL], tool_choice="none").output_text == UNSCRIPTED


def test_preamble_is_a_message_before_the_call(client):
    first = create(client, "Preamble then call", tools=[WEATHER_TOOL], store=False)
    assert [item.type for item in first.output] == ["message", "function_call"]
    assert first.output[0].content[0].text == "Let me check."
    back = [item.model_dump(exclude_none=True) for item in first.output]
    result = {"type": "function_call_output", "call_id": first.output[1].call_id, "output": "rainy"}
    again = create(client, [{"role": "user", "content": "Preamble then call"}, *back, result], tools=[WEATHER_TOOL])
    assert again.status == "completed"


def test_namespace_tools_and_web_search_as_codex_sends_them(scripted_server):
    tools = [WEATHER_TOOL, MULTI_AGENT, {"type": "web_search", "external_web_access": False}]
    first = post(scripted_server, {"input": "Spawn a helper agent", "tools": tools})
    assert first.status_code == 200, first.text
    call = first.json()["output"][-1]
    assert (call["type"], call["namespace"], call["name"]) == ("function_call", "multi_agent_v1", "spawn_agent")
    assert json.loads(call["arguments"])["message"] == "Say hello"
    second = post(scripted_server, {"previous_response_id": first.json()["id"], "tools": tools, "input": [
        {"type": "function_call_output", "call_id": call["call_id"], "output": '{"agent_id": "a1"}'}]})
    assert second.json()["output_text"] == SPAWN_ANSWER


def test_a_codex_turn(scripted_server):
    """The requests Codex CLI makes (captured from codex exec 0.171): store false, encrypted reasoning,
    developer messages as input items, the conversation sent back whole."""
    base = {
        "model": "gpt-oss", "stream": True, "store": False, "include": ["reasoning.encrypted_content"],
        "reasoning": {"summary": "auto"}, "tool_choice": "auto", "parallel_tool_calls": True,
        "prompt_cache_key": "0199-abc", "client_metadata": {"x-codex-window-id": "w"},
        "tools": [{**WEATHER_TOOL, "name": "exec_command", "strict": False}, MULTI_AGENT,
                  {"type": "web_search", "external_web_access": False}],
    }
    history = [
        {"type": "message", "id": "msg_1", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
        {"type": "message", "id": "msg_2", "role": "user", "content": [{"type": "input_text", "text": "<environment_context/>"}]},
        {"type": "message", "id": "msg_3", "role": "user", "content": [{"type": "input_text", "text": "Codex: list the files"}]},
    ]
    events = raw_events(scripted_server, {**base, "input": history})
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["reasoning", "function_call"]
    assert output[0]["encrypted_content"] and output[1]["name"] == "exec_command"
    result = {"type": "function_call_output", "id": "fco_1", "call_id": output[1]["call_id"], "output": "a.txt\n"}
    events = raw_events(scripted_server, {**base, "input": history + output + [result]})
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output_text"] == CODEX_COMMAND_ANSWER
    # the resent conversation is found in the prompt cache
    assert events[-1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] > 0


# ---- reasoning across turns -----------------------------------------------------------------------

def test_encrypted_reasoning_restores_the_analysis(client):
    question = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    first = client.responses.create(model="m", input=question, tools=[WEATHER_TOOL], store=False,
                                    include=["reasoning.encrypted_content"])
    reasoning, call = first.output
    assert decrypt_reasoning(reasoning.encrypted_content) == reasoning.content[0].text
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    call_item = call.model_dump(exclude_none=True)

    def input_tokens(*items):
        reply = client.responses.create(model="m", input=question + list(items) + [call_item, result], tools=[WEATHER_TOOL])
        assert reply.output_text == TOOL_ANSWER
        return reply.usage.input_tokens

    encrypted_only = {"type": "reasoning", "id": reasoning.id, "summary": [], "encrypted_content": reasoning.encrypted_content}
    with_text = {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": reasoning.content[0].text}]}
    without = input_tokens()
    # during a tool loop the analysis is shown again, restored from encrypted_content alone
    assert input_tokens(encrypted_only) == input_tokens(with_text) > without


def test_reasoning_of_a_finished_turn_is_dropped(client):
    first = create(client, "What is 2+2?", store=False)
    reasoning, message = [item.model_dump(exclude_none=True) for item in first.output]
    question = {"role": "user", "content": "What is 2+2?"}
    follow_up = {"role": "user", "content": "Stop test"}
    kept = create(client, [question, reasoning, message, follow_up])
    dropped = create(client, [question, message, follow_up])
    assert kept.usage.input_tokens == dropped.usage.input_tokens


def test_harmony_rule_on_items():
    body = ResponsesRequest(input=[
        {"role": "user", "content": "q1"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "old thought"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "a1"}]},
        {"role": "user", "content": "q2"},
        {"type": "reasoning", "summary": [], "encrypted_content": encrypt_reasoning("current thought")},
        {"role": "assistant", "content": "preamble"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ], tools=[WEATHER_TOOL])
    _, messages = conversation(body.input, tool_names(tools(body)))
    shown = [(m.channel, m.content[0].text) for m in drop_finished_reasoning(messages)]
    assert (None, "q1") in shown and ("final", "a1") in shown
    assert ("analysis", "old thought") not in shown
    assert ("analysis", "current thought") in shown and ("commentary", "preamble") in shown


# ---- settings of a request ------------------------------------------------------------------------

def test_instructions_and_developer_messages(client):
    assert create(client, "Hello", instructions="Speak like a pirate.").output_text == "Arr, instructions received."
    items = [{"role": "developer", "content": "Speak like a pirate."}, {"role": "user", "content": "Hello"}]
    assert create(client, items).output_text == "Arr, instructions received."
    system = [{"role": "system", "content": [{"type": "input_text", "text": "Speak like a pirate."}]},
              {"role": "user", "content": "Hello"}]
    assert create(client, system).output_text == "Arr, instructions received."


def test_same_prompt_as_chat_completions(client):
    chat = client.chat.completions.create(model="m", messages=[
        {"role": "system", "content": "Speak like a pirate."}, {"role": "user", "content": "Hello"}])
    response = create(client, "Hello", instructions="Speak like a pirate.")
    assert response.usage.input_tokens == chat.usage.prompt_tokens


def test_reasoning_effort(client):
    for effort in ("low", "medium", "high"):
        response = create(client, "Tell me your effort.", reasoning={"effort": effort})
        assert response.output_text == f"effort={effort}" and response.reasoning.effort == effort
    assert create(client, "Tell me your effort.", extra_body={"reasoning_effort": "high"}).output_text == "effort=high"
    # OpenAI's other levels map onto harmony's three
    assert create(client, "Tell me your effort.", reasoning={"effort": "minimal"}).output_text == "effort=low"
    assert create(client, "Tell me your effort.", reasoning={"effort": "xhigh"}).output_text == "effort=high"
    assert create(client, "Tell me your effort.").output_text == "effort=medium"


def test_max_output_tokens_gives_incomplete(client, scripted_server):
    response = create(client, "Write a long essay", max_output_tokens=40)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 40 and response.max_output_tokens == 40
    assert response.output[-1].status == "incomplete"
    assert LONG_WORDS.startswith(response.output_text)
    events = raw_events(scripted_server, {"input": "Write a long essay", "max_output_tokens": 40})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["output_text"] == response.output_text


def test_sampling_and_metadata_are_echoed(client):
    response = create(client, "What is 2+2?", temperature=0.2, top_p=0.5, metadata={"who": "test"})
    assert (response.temperature, response.top_p, response.metadata) == (0.2, 0.5, {"who": "test"})
