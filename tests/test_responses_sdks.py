"""The Responses API the way the popular SDKs drive it: the Vercel AI SDK's `@ai-sdk/openai`
`.responses()` provider (store on, its default: earlier output comes back as `item_reference`
items) and reasoning summaries (`reasoning.summary`), which the AI SDK and LangChain read
instead of `reasoning_text`.

The request bodies below are the ones @ai-sdk/openai 3.0 sent to this server (captured by
hand with `ai` 6.0 and a logging `fetch`), with only the ids and call ids of the reply put in."""

import json
import sqlite3
import time

import httpx
import pytest

from server.api.responses.prompt import translate
from server.api.responses.schema import ResponsesRequest
from server.plumbing.errors import APIError
from tests.scripts import (
    JAPANESE_ANSWER,
    JAPANESE_REASONING,
    TOOL_ANSWER,
    TOOL_ARGUMENTS,
)
from tests.test_responses import post, raw_events

TOOL_REASONING = "I should call the weather tool."  # the reasoning of the scripted call
AI_SDK_TOOLS = [{
    "type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                   "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False},
}]
QUESTION = {"role": "user", "content": [{"type": "input_text", "text": "What is the weather in Tokyo?"}]}


def first_step(stream: bool = False) -> dict:
    """generateText / streamText with a system prompt and one tool; streamText with
    providerOptions.openai {forceReasoning: true, reasoningSummary: "auto"}."""
    if stream:
        return {"model": "gpt-oss-swallow", "input": [{"role": "developer", "content": "You are helpful."}, QUESTION],
                "reasoning": {"summary": "auto"}, "tools": AI_SDK_TOOLS, "tool_choice": "auto", "stream": True}
    return {"model": "gpt-oss-swallow", "input": [{"role": "system", "content": "You are helpful."}, QUESTION],
            "tools": AI_SDK_TOOLS, "tool_choice": "auto"}


def next_step(step: dict, output: list[dict]) -> dict:
    """The next step of the tool loop as the AI SDK sends it: the reasoning by reference, the
    call written out again (its arguments re-serialized), the tool's result."""
    reasoning, call = output
    arguments = json.dumps(json.loads(call["arguments"]), separators=(",", ":"))
    return {**step, "input": step["input"] + [
        {"type": "item_reference", "id": reasoning["id"]},
        {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": arguments},
        {"type": "function_call_output", "call_id": call["call_id"], "output": '{"city":"Tokyo","weather":"sunny"}'},
    ]}


def ok(reply: httpx.Response) -> dict:
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_ai_sdk_tool_loop_with_item_references(scripted_server):
    step = first_step()
    first = ok(post(scripted_server, step))
    assert [item["type"] for item in first["output"]] == ["reasoning", "function_call"]
    assert first["output"][0]["summary"] == []  # no summary asked for: nothing changes
    second = ok(post(scripted_server, next_step(step, first["output"])))
    assert second["output_text"] == TOOL_ANSWER

    # the reference brought the reasoning back into the prompt (harmony keeps it during a tool loop)
    without = next_step(step, first["output"])
    without["input"].pop(2)
    assert ok(post(scripted_server, without))["usage"]["input_tokens"] < second["usage"]["input_tokens"]

    # any stored item resolves, input items included: the whole second step, by reference only
    listed = httpx.get(f"{scripted_server.url}/v1/responses/{second['id']}/input_items", params={"order": "asc"})
    items = listed.json()["data"]
    assert [item["type"] for item in items] == ["message", "message", "reasoning", "function_call",
                                                "function_call_output"]
    assert items[2]["id"] == first["output"][0]["id"] and items[2]["content"][0]["text"] == TOOL_REASONING
    by_reference = {**step, "input": [{"type": "item_reference", "id": item["id"]} for item in items]}
    again = ok(post(scripted_server, by_reference))
    assert again["output_text"] == TOOL_ANSWER
    assert again["usage"]["input_tokens"] == second["usage"]["input_tokens"]
    # OpenAI's short form: an item with only an id; and the answer's message by reference
    follow_up = ok(post(scripted_server, {"input": [{"id": items[1]["id"]}, {"type": "item_reference", "id":
                                                     second["output"][-1]["id"]}, {"role": "user", "content": "Hi"}]}))
    assert follow_up["status"] == "completed"

    # the items of a response stored with store: false can't be referenced
    unstored = ok(post(scripted_server, {**step, "store": False}))
    reply = post(scripted_server, next_step(step, unstored["output"]))
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "input[2].id" and reply.json()["error"]["code"] == "item_not_found"


def test_ai_sdk_streamed_tool_loop_with_summaries(scripted_server):
    step = first_step(stream=True)
    events = raw_events(scripted_server, step)
    assert [e["type"].removeprefix("response.") for e in events if not e["type"].endswith(".delta")] == [
        "created", "in_progress",
        "output_item.added", "reasoning_summary_part.added",
        "reasoning_text.done", "reasoning_summary_text.done", "reasoning_summary_part.done", "output_item.done",
        "output_item.added", "function_call_arguments.done", "output_item.done",
        "completed",
    ]
    # every piece of reasoning comes twice, in place: as reasoning_text, then as the summary's text
    reasoning_events = [e for e in events if "reasoning" in e["type"]]
    deltas = reasoning_events[1:-3]
    assert [e["type"] for e in deltas] == ["response.reasoning_text.delta",
                                           "response.reasoning_summary_text.delta"] * (len(deltas) // 2)
    assert all(text["delta"] == summary["delta"] for text, summary in zip(deltas[::2], deltas[1::2]))
    item = events[2]["item"]
    assert item["type"] == "reasoning" and item["summary"] == []
    for event in reasoning_events:
        assert (event["item_id"], event["output_index"]) == (item["id"], 0)
        if "summary" in event["type"]:
            assert event["summary_index"] == 0
    summary_text = "".join(e["delta"] for e in reasoning_events if e["type"] == "response.reasoning_summary_text.delta")
    reasoning_text = "".join(e["delta"] for e in reasoning_events if e["type"] == "response.reasoning_text.delta")
    assert summary_text == reasoning_text == TOOL_REASONING
    assert reasoning_events[0]["part"] == {"type": "summary_text", "text": ""}
    assert reasoning_events[-2]["text"] == TOOL_REASONING
    assert reasoning_events[-1]["part"] == {"type": "summary_text", "text": TOOL_REASONING}
    assert "status" not in reasoning_events[-1]
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["summary"] == [{"type": "summary_text", "text": TOOL_REASONING}]
    assert done["item"]["content"] == [{"type": "reasoning_text", "text": TOOL_REASONING}]
    first = events[-1]["response"]
    assert first["reasoning"]["summary"] == "auto"
    assert first["output"][1]["arguments"] == TOOL_ARGUMENTS

    events = raw_events(scripted_server, next_step(step, first["output"]))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output_text"] == TOOL_ANSWER
    assert events[-1]["response"]["output"][0]["summary"][0]["text"] == "The tool says sunny."


def test_summaries_through_the_openai_sdk(client):
    plain = client.responses.create(model="m", input="What is 2+2?")
    assert plain.output[0].summary == [] and plain.reasoning.summary is None
    for summary in ("auto", "concise", "detailed"):
        response = client.responses.create(model="m", input="What is 2+2?", reasoning={"summary": summary})
        reasoning = response.output[0]
        assert [part.text for part in reasoning.summary] == [JAPANESE_REASONING] == [p.text for p in reasoning.content]
        assert response.reasoning.summary == summary and response.output_text == JAPANESE_ANSWER

    with client.responses.stream(model="m", input="What is 2+2?", reasoning={"summary": "auto"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary.encode() == JAPANESE_REASONING.encode()
    (part_done,) = [e for e in events if e.type == "response.reasoning_summary_part.done"]
    assert part_done.part.text == JAPANESE_REASONING and part_done.summary_index == 0
    assert final.output[0].summary[0].text == JAPANESE_REASONING and final.output_text == JAPANESE_ANSWER

    # a reasoning item sent back with only its summary (what the AI SDK does with store off)
    # restores the analysis as fully as its content does
    question = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    first = client.responses.create(model="m", input=question, tools=tools, store=False, reasoning={"summary": "auto"})
    reasoning, call = [item.model_dump(exclude_none=True) for item in first.output]
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}

    def input_tokens(reasoning_item):
        reply = client.responses.create(model="m", input=[*question, reasoning_item, call, result], tools=tools)
        assert reply.output_text == TOOL_ANSWER
        return reply.usage.input_tokens

    only_summary = {"type": "reasoning", "summary": reasoning["summary"]}
    only_content = {"type": "reasoning", "summary": [], "content": reasoning["content"]}
    assert input_tokens(only_summary) == input_tokens(only_content)


def test_references_across_restarts_and_retention(start_server, scripted_model, tmp_path):
    """A database written before items were indexed (only the responses table) gets its index
    when a server opens it; what retention removed can't be referenced any more."""
    database = tmp_path / "responses.sqlite3"
    call_reasoning = {"id": "rs_kept", "type": "reasoning", "summary": [],
                      "content": [{"type": "reasoning_text", "text": TOOL_REASONING}]}
    call = {"id": "fc_kept", "type": "function_call", "call_id": "call_kept", "name": "get_weather",
            "arguments": TOOL_ARGUMENTS}
    now = int(time.time())
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE responses (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, "
                   "response TEXT NOT NULL, conversation TEXT NOT NULL)")
        for response_id, age, items in [
            ("resp_old", 40, [{"id": "msg_old", "type": "message", "role": "user", "content": "Hi"},
                              {"id": "rs_old", "type": "reasoning", "summary": [], "content": []}]),
            ("resp_kept", 0, [{"id": "msg_kept", "type": "message", "role": "user",
                               "content": "What is the weather in Tokyo?"}, call_reasoning, call]),
        ]:
            created = now - age * 86400
            db.execute("INSERT INTO responses VALUES (?, ?, ?, ?)", (response_id, created, json.dumps(
                {"id": response_id, "created_at": created, "output": items[1:]}), json.dumps(items)))
    env = {"SWALLOW_DATA_DIR": str(tmp_path), "SWALLOW_RESPONSES_MAX_AGE_DAYS": "30",
           "SWALLOW_RESPONSES_MAX_COUNT": "3"}
    server = start_server(["--model", str(scripted_model), "--trust-remote-code"], env=env)
    result = {"type": "function_call_output", "call_id": "call_kept", "output": "sunny"}
    loop = {"input": [{"type": "item_reference", "id": "msg_kept"}, {"type": "item_reference", "id": "rs_kept"},
                      {"type": "item_reference", "id": "fc_kept"}, result], "tools": AI_SDK_TOOLS}
    assert ok(post(server, loop))["output_text"] == TOOL_ANSWER

    def refused(item_id: str) -> dict:
        reply = post(server, {"input": [{"role": "user", "content": "Hi"}, {"type": "item_reference", "id": item_id}]})
        assert reply.status_code == 400, reply.text
        return reply.json()["error"]

    error = refused("rs_old")  # older than responses_max_age_days: pruned when the store opened
    assert error["param"] == "input[1].id" and error["code"] == "item_not_found" and "'rs_old'" in error["message"]
    for _ in range(3):  # three newer responses: responses_max_count drops resp_kept
        ok(post(server, {"input": "Hello"}))
    # the loop's request stored the items it referenced as its own too: both responses are gone now
    assert refused("fc_kept")["param"] == "input[1].id"
    with sqlite3.connect(database) as db:  # the trigger took the items with their response
        assert db.execute("SELECT count(*) FROM items WHERE response_id = 'resp_kept'").fetchone() == (0,)
    server.stop()


def test_a_forced_call_without_arguments_gets_an_empty_object(client, scripted_server):
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    for choice in ("required", {"type": "function", "name": "get_weather"}):
        response = client.responses.create(model="m", input="Call without arguments", tools=tools, tool_choice=choice)
        assert response.output[-1].type == "function_call" and response.output[-1].arguments == "{}"
        events = raw_events(scripted_server, {"input": "Call without arguments", "tools": tools, "tool_choice": choice})
        assert [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"] == ["{}"]
        assert events[-1]["response"]["output"][-1]["arguments"] == "{}"


def test_a_reference_is_never_dropped_unresolved():
    """References are resolved by the route; a translation that meets one refuses it."""
    body = ResponsesRequest(input=[{"role": "user", "content": "Hi"}, {"id": "rs_1"}])
    assert body.input[1].type == "item_reference"
    with pytest.raises(APIError) as caught:
        translate(body, [])
    assert caught.value.param == "input[1].id"
