"""Reasoning budget, loop guard and structured output, against the live server.

The scripted model (tests/scripts.py) thinks long or loops on cue, so the budget and the guard
can be checked token for token; the random-weight demo model proves that structured output
always parses and validates, whatever the model wants to write.
"""

import asyncio
import json

import httpx
import jsonschema
import pytest
import toktok

from server.engine.reasoning_control import LoopDetector, LoopSettings
from tests.scripts import (
    LOOP_ANSWER,
    LOOP_FIRES_AT,
    LOOP_REASONING,
    THINK_LONG,
    THINK_LONG_ANSWER,
    WEATHER_JSON,
)

VOCABULARY = toktok._encoding("o200k_harmony")
THINK_IDS = VOCABULARY.encode(THINK_LONG)  # 240 tokens
HEADER, TRANSITION = 3, 6  # <|channel|>analysis<|message|>; <|end|><|start|>assistant<|channel|>final<|message|>


def chat(server, text: str, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                      json={"messages": [{"role": "user", "content": text}], **body})


def chat_stream(server, text: str, **body) -> tuple[str, str, list[dict], list[dict]]:
    """(reasoning, content, chunks, error events) of a streamed chat completion."""
    chunks, errors = [], []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=120,
                      json={"messages": [{"role": "user", "content": text}], "stream": True,
                            "stream_options": {"include_usage": True}, **body}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                (errors if "error" in event else chunks).append(event)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    return ("".join(d.get("reasoning_content", "") for d in deltas), "".join(d.get("content") or "" for d in deltas),
            chunks, errors)


def decode(ids) -> str:
    return VOCABULARY.decode(list(ids))


def stops_metric(server, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    line = next(l for l in text.splitlines() if l.startswith(f'swallow_reasoning_stops_total{{reason="{reason}"}}'))
    return float(line.split()[-1])


# ---- the loop detector ----------------------------------------------------------------

def test_loop_detector_needs_repeats_and_length():
    settings = LoopSettings(max_period=8, min_repeats=4, min_tokens=12)
    detector = LoopDetector(settings)
    assert not any(detector.feed(t) for t in range(100))  # no repetition at all
    detector.reset()
    fired = [detector.feed(t) for t in [1, 2, 3] * 10]
    assert fired.index(True) == 11  # period 3: max(4 * 3, 12) = 12 tokens
    detector.reset()
    unit = list(range(10, 20))  # period 10 > max_period: never a loop
    assert not any(detector.feed(t) for t in unit * 10)
    detector.reset()
    # a repeat broken before it is long enough starts counting again
    assert not any(detector.feed(t) for t in [5] * 11 + [6] + [5] * 11)


def test_a_header_that_runs_on_ends_the_control(encoding):
    # The client gets such a reply as plain text (harmony/parse.py); the control stops reading it
    # too, instead of asking harmony for the state of an ever longer header after every token.
    from server.engine.reasoning_control import ReplyControl

    control = ReplyControl(encoding, loop=LoopSettings())
    for token in encoding.encode("<|channel|>" + " word" * 60, allowed_special="all"):
        control.deliver(token)
    assert "left the harmony format" in control.error
    within = ReplyControl(encoding, loop=LoopSettings())
    for token in encoding.encode("<|channel|>analysis<|message|>" + " word" * 60, allowed_special="all"):
        within.deliver(token)
    assert within.error is None and within.analysis_tokens == 60


# ---- reasoning budget (scripted model) ------------------------------------------------

def test_budget_ends_the_analysis_and_the_answer_follows(scripted_server):
    reply = chat(scripted_server, "Think for a long time", reasoning={"max_tokens": 50}).json()
    choice = reply["choices"][0]
    assert choice["message"]["reasoning_content"] == decode(THINK_IDS[:50])
    # the model goes on where it was, now in the final channel, until its own <|end|>
    after = HEADER + 50 + TRANSITION
    assert choice["message"]["content"] == decode(THINK_IDS[after - HEADER:])
    assert choice["finish_reason"] == "stop"
    assert choice["reasoning_stopped"] == "budget"
    usage = reply["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 50
    assert usage["completion_tokens"] == after + (len(THINK_IDS) - (after - HEADER)) + 1  # + its <|end|>

    reasoning, content, chunks, errors = chat_stream(scripted_server, "Think for a long time",
                                                     reasoning={"max_tokens": 50})
    assert not errors
    assert (reasoning, content) == (choice["message"]["reasoning_content"], choice["message"]["content"])
    last = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]][-1]["choices"][0]
    assert last["reasoning_stopped"] == "budget"
    streamed = chunks[-1]["usage"]
    assert (streamed["completion_tokens"], streamed["completion_tokens_details"]) == (
        usage["completion_tokens"], usage["completion_tokens_details"])

    # With logprobs the control shapes the logits as a processor; without, the engine puts the
    # tokens that end the analysis into the reply itself: the same reply either way.
    probed = chat(scripted_server, "Think for a long time", reasoning={"max_tokens": 50}, logprobs=True).json()
    assert probed["choices"][0]["message"] == choice["message"]
    assert probed["choices"][0]["reasoning_stopped"] == "budget"
    assert probed["usage"]["completion_tokens_details"] == usage["completion_tokens_details"]
    assert probed["usage"]["completion_tokens"] == usage["completion_tokens"]


def test_budget_counts_reasoning_only_and_max_tokens_bounds_the_whole(scripted_server):
    reply = chat(scripted_server, "Think for a long time", reasoning={"max_tokens": 50}, max_tokens=80).json()
    choice, usage = reply["choices"][0], reply["usage"]
    assert choice["finish_reason"] == "length"
    assert usage["completion_tokens"] == 80
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 50
    assert choice["message"]["content"] == decode(THINK_IDS[50 + TRANSITION:80 - HEADER])


def test_without_a_budget_the_model_thinks_to_the_end(scripted_server):
    reply = chat(scripted_server, "Think for a long time").json()
    choice = reply["choices"][0]
    assert choice["message"]["reasoning_content"] == THINK_LONG
    assert choice["message"]["content"] == THINK_LONG_ANSWER
    assert "reasoning_stopped" not in choice
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == len(THINK_IDS)


def test_excluded_reasoning_is_generated_and_counted_but_not_returned(scripted_server):
    body = {"reasoning": {"max_tokens": 20, "exclude": True}}
    reply = chat(scripted_server, "Think for a long time", **body).json()
    message = reply["choices"][0]["message"]
    assert "reasoning_content" not in message and "reasoning" not in message
    assert message["content"] == decode(THINK_IDS[20 + TRANSITION:])
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 20
    reasoning, content, _, _ = chat_stream(scripted_server, "Think for a long time", **body)
    assert reasoning == "" and content == message["content"]


@pytest.mark.parametrize("reasoning", [{"max_tokens": 0}, {"enabled": False}])
def test_no_reasoning_at_all_opens_the_answer_at_once(scripted_server, reasoning):
    reply = chat(scripted_server, "Think for a long time", reasoning=reasoning).json()
    message = reply["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert message["content"] == THINK_LONG  # the script's analysis, written as the answer
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_responses_take_the_budget_too(scripted_server):
    response = httpx.post(f"{scripted_server.url}/v1/responses", timeout=60, json={
        "input": "Think for a long time", "reasoning": {"effort": "high", "max_tokens": 30}}).json()
    assert response["status"] == "completed"
    assert response["reasoning_stopped"] == "budget"
    reasoning = [item for item in response["output"] if item["type"] == "reasoning"]
    assert reasoning[0]["content"][0]["text"] == decode(THINK_IDS[:30])
    assert response["output_text"] == decode(THINK_IDS[30 + TRANSITION:])
    assert response["usage"]["output_tokens_details"]["reasoning_tokens"] == 30
    excluded = httpx.post(f"{scripted_server.url}/v1/responses", timeout=60, json={
        "input": "Think for a long time", "reasoning": {"max_tokens": 30, "exclude": True}}).json()
    assert [item["type"] for item in excluded["output"]] == ["message"]
    assert excluded["usage"]["output_tokens_details"]["reasoning_tokens"] == 30


# ---- loop guard (scripted model) ------------------------------------------------------

def test_loop_guard_ends_a_looping_analysis(scripted_server):
    loop_ids = VOCABULARY.encode(LOOP_REASONING)
    before = stops_metric(scripted_server, "loop")
    reply = chat(scripted_server, "Think in circles").json()
    choice = reply["choices"][0]
    assert choice["message"]["reasoning_content"] == decode(loop_ids[:LOOP_FIRES_AT])
    assert choice["message"]["content"] == LOOP_ANSWER
    assert choice["finish_reason"] == "stop"
    assert choice["reasoning_stopped"] == "loop"
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == LOOP_FIRES_AT
    assert stops_metric(scripted_server, "loop") == before + 1

    reasoning, content, chunks, _ = chat_stream(scripted_server, "Think in circles")
    assert (reasoning, content) == (choice["message"]["reasoning_content"], LOOP_ANSWER)
    last = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]][-1]["choices"][0]
    assert last["reasoning_stopped"] == "loop"


def test_loop_guard_can_be_switched_off_per_request(scripted_server):
    reply = chat(scripted_server, "Think in circles", reasoning={"loop_guard": False}).json()
    choice = reply["choices"][0]
    assert choice["message"]["reasoning_content"] == LOOP_REASONING + LOOP_ANSWER
    assert not choice["message"]["content"]
    assert "reasoning_stopped" not in choice


def test_loop_guard_on_responses(scripted_server):
    response = httpx.post(f"{scripted_server.url}/v1/responses", timeout=60,
                          json={"input": "Think in circles"}).json()
    assert response["reasoning_stopped"] == "loop"
    assert response["output_text"] == LOOP_ANSWER


def test_settings_give_the_defaults(start_server, scripted_model):
    server = start_server(["--model", str(scripted_model), "--trust-remote-code"],
                          env={"SWALLOW_REASONING_MAX_TOKENS": "30", "SWALLOW_LOOP_GUARD": "false"})
    reply = chat(server, "Think for a long time").json()
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 30
    assert reply["choices"][0]["reasoning_stopped"] == "budget"
    unlimited = {"max_tokens": 10_000}  # the request's budget wins over the configured one
    looping = chat(server, "Think in circles", reasoning=unlimited).json()["choices"][0]
    assert looping["message"]["reasoning_content"] == LOOP_REASONING + LOOP_ANSWER  # guard off by config
    guarded = chat(server, "Think in circles", reasoning={**unlimited, "loop_guard": True}).json()["choices"][0]
    assert guarded["reasoning_stopped"] == "loop"  # ...and on again for this request


# ---- structured output (scripted model) -----------------------------------------------

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "temperature": {"type": "integer"}},
                  "required": ["city", "temperature"], "additionalProperties": False}
MOOD_SCHEMA = {"type": "object", "properties": {
    "ok": {"type": "boolean"}, "mood": {"enum": ["calm", "busy", "tired"]},
    "score": {"type": "integer", "minimum": 0, "maximum": 10}},
    "required": ["ok", "mood", "score"], "additionalProperties": False}


def schema_format(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_json_schema_answer_keeps_the_reasoning(scripted_server):
    reply = chat(scripted_server, "Weather as JSON", response_format=schema_format(WEATHER_SCHEMA)).json()
    message = reply["choices"][0]["message"]
    assert message["reasoning_content"] == "The user wants JSON."
    assert message["content"] == WEATHER_JSON
    jsonschema.validate(json.loads(message["content"]), WEATHER_SCHEMA)
    assert chat(scripted_server, "Weather as JSON", response_format={"type": "json_object"}).json()[
        "choices"][0]["message"]["content"] == WEATHER_JSON


def test_a_model_that_will_not_write_json_still_gives_valid_json(scripted_server):
    replies = [chat(scripted_server, "Answer in prose", response_format=schema_format(MOOD_SCHEMA), temperature=1,
                    seed=seed) for seed in range(3)]
    for reply in replies:
        assert reply.status_code == 200, reply.text
        jsonschema.validate(json.loads(reply.json()["choices"][0]["message"]["content"]), MOOD_SCHEMA)
    reasoning, content, _, errors = chat_stream(scripted_server, "Answer in prose",
                                                response_format=schema_format(MOOD_SCHEMA))
    assert not errors and reasoning == "I will not write JSON."
    jsonschema.validate(json.loads(content), MOOD_SCHEMA)


def test_json_cut_by_max_tokens_is_an_error_never_invalid_json(scripted_server):
    body = {"response_format": schema_format(WEATHER_SCHEMA), "max_tokens": 14}
    reply = chat(scripted_server, "Weather as JSON", **body)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "structured_output_incomplete"
    assert reply.json()["error"]["param"] == "max_tokens"
    _, content, chunks, errors = chat_stream(scripted_server, "Weather as JSON", **body)
    assert errors and errors[0]["error"]["code"] == "structured_output_incomplete"
    assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)


@pytest.mark.parametrize("body, param", [
    ({"response_format": schema_format({"type": "object", "properties": {"a": {"type": "strnig"}}})},
     "response_format.json_schema.schema"),
    ({"response_format": schema_format({"type": "object", "properties": {"a": {"not": {}}}})},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, None),
    ({"response_format": {"type": "json_object"}, "stop": ["}"]}, "stop"),
    ({"response_format": {"type": "yaml"}}, None),
    ({"reasoning": {"max_tokens": -1}}, None),
])
def test_unusable_structured_requests_are_400(scripted_server, body, param):
    reply = chat(scripted_server, "Weather as JSON", **body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    if param is not None:
        assert error["param"] == param


def test_responses_text_format(scripted_server):
    fmt = {"type": "json_schema", "name": "weather", "schema": WEATHER_SCHEMA, "strict": True}
    response = httpx.post(f"{scripted_server.url}/v1/responses", timeout=60, json={
        "input": "Weather as JSON", "text": {"format": fmt}}).json()
    assert response["output_text"] == WEATHER_JSON
    assert response["text"]["format"] == fmt
    failed = httpx.post(f"{scripted_server.url}/v1/responses", timeout=60, json={
        "input": "Weather as JSON", "text": {"format": fmt}, "max_output_tokens": 14})
    assert failed.status_code == 400 and failed.json()["error"]["param"] == "max_output_tokens"
    with httpx.stream("POST", f"{scripted_server.url}/v1/responses", timeout=60, json={
            "input": "Weather as JSON", "text": {"format": fmt}, "max_output_tokens": 14, "stream": True}) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "structured_output_incomplete"


STRICT_TOOL = {"type": "function", "function": {
    "name": "get_weather", "strict": True, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}


def test_strict_tool_arguments_match_the_parameters(scripted_server):
    for stream in (False, True):
        client = scripted_server.client()
        kwargs = dict(model="scripted", messages=[{"role": "user", "content": "Strict weather call"}],
                      tools=[STRICT_TOOL], temperature=0)
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                                for c in chunks if c.choices and c.choices[0].delta.tool_calls)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            reply = client.chat.completions.create(**kwargs)
            arguments = reply.choices[0].message.tool_calls[0].function.arguments
            finish = [reply.choices[0].finish_reason]
        assert finish == ["tool_calls"]
        jsonschema.validate(json.loads(arguments), STRICT_TOOL["function"]["parameters"])
    # without strict the model's own arguments pass through untouched
    loose = {"type": "function", "function": {**STRICT_TOOL["function"], "strict": False}}
    reply = scripted_server.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "Strict weather call"}], tools=[loose])
    assert reply.choices[0].message.tool_calls[0].function.arguments == '{"city": "Sapporo", "unit": "kelvin"}'


def test_strict_tools_on_responses(scripted_server):
    function = STRICT_TOOL["function"]
    response = httpx.post(f"{scripted_server.url}/v1/responses", timeout=60, json={
        "input": "Strict weather call", "temperature": 0, "tools": [{"type": "function", **function}]}).json()
    call = next(item for item in response["output"] if item["type"] == "function_call")
    jsonschema.validate(json.loads(call["arguments"]), function["parameters"])


def test_with_tools_the_model_may_call_then_answers_in_json(scripted_server):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    body = {"tools": [tool], "response_format": schema_format(WEATHER_SCHEMA), "temperature": 0}
    messages = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    first = httpx.post(f"{scripted_server.url}/v1/chat/completions", timeout=60,
                       json={"messages": messages, **body}).json()["choices"][0]
    assert first["finish_reason"] == "tool_calls"  # a call instead of the answer is fine
    call = first["message"]["tool_calls"][0]
    messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 degrees"}]
    second = httpx.post(f"{scripted_server.url}/v1/chat/completions", timeout=60,
                        json={"messages": messages, **body}).json()["choices"][0]
    assert second["message"]["reasoning_content"] == "The tool says sunny."
    jsonschema.validate(json.loads(second["message"]["content"]), WEATHER_SCHEMA)


def test_the_schema_reaches_the_developer_message(encoding):
    from server.harmony import render as harmony

    prompt = harmony.Prompt(effort="low", instructions="Be brief.", messages=[harmony.user("hi")])
    prompt = harmony.with_response_format(prompt, "weather", WEATHER_SCHEMA, "The weather now.")
    text = encoding.decode(harmony.render(encoding, prompt, "You are a test.", "2024-06"))
    assert ("# Instructions\n\nBe brief.\n\n# Response Formats\n\n## weather\n\n// The weather now.\n"
            + json.dumps(WEATHER_SCHEMA, separators=(",", ":"))) in text


# ---- structured output from random weights (demo model) -------------------------------

DEMO_SCHEMA = {"type": "object", "properties": {
    "answer": {"type": "string", "maxLength": 4},
    "score": {"type": "integer", "minimum": 0, "maximum": 100},
    "ok": {"type": "boolean"},
    "color": {"enum": ["red", "green", "blue"]}},
    "required": ["answer", "score", "ok", "color"], "additionalProperties": False}


def test_random_weights_always_give_schema_valid_json(demo_server):
    client = demo_server.async_client()
    fmt = schema_format(DEMO_SCHEMA, "demo")

    async def one(seed: int) -> tuple[str, object]:
        kwargs = dict(model="demo", messages=[{"role": "user", "content": f"Sample {seed}"}], max_tokens=96,
                      temperature=1.0, seed=seed, response_format=fmt)
        if seed % 3 == 0:
            content, usage = "", None
            async for chunk in await client.chat.completions.create(
                    stream=True, stream_options={"include_usage": True}, **kwargs):
                if chunk.choices:
                    content += chunk.choices[0].delta.content or ""
                usage = chunk.usage or usage
            return content, usage
        reply = await client.chat.completions.create(**kwargs)
        return reply.choices[0].message.content, reply.usage

    async def all_samples():
        return await asyncio.gather(*(one(seed) for seed in range(10)))

    for content, usage in asyncio.run(all_samples()):
        jsonschema.validate(json.loads(content), DEMO_SCHEMA)
        assert usage.completion_tokens <= 96
        assert usage.completion_tokens_details.reasoning_tokens <= 48  # held to half the limit


def test_a_schema_sent_again_is_compiled_once(scripted_model):
    from server.engine import structured

    tokenizer = asyncio.run(structured.tokenizer_for(scripted_model))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    grammar = structured.compile_schema(schema, tokenizer, name="weather", param="tools[0]", end=structured.CALL)
    again = structured.compile_schema(dict(schema), tokenizer, name="weather", param="tools[0]", end=structured.CALL)
    assert again is grammar  # an agent's strict tool, on its next turn
    assert structured.compile_schema(schema, tokenizer, name="other", param="tools[1]") is not grammar
    # each use walks its own copy: one reply's JSON does not move another's
    (brace,) = VOCABULARY.encode("{")
    first, second = grammar.guide(), grammar.guide()
    first.consume(brace)
    assert first.failed is None
    assert second.matcher.consume_token(brace)
