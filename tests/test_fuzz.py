"""Malformed requests get 4xx with OpenAI's error object, never a 5xx: a hand-written matrix of
odd inputs, then schemathesis against the server's own OpenAPI document.

Generations stay short: the scripted model answers anything it has no script for with one short
sentence, and random text never matches a script's trigger.
"""

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.scripts import JAPANESE_ANSWER

USER = [{"role": "user", "content": "hi"}]
DEEP_SCHEMA = json.loads('{"type": "object", "properties": {"a": ' * 80 + "{}" + "}}" * 80)


def chat(**fields) -> dict:
    return {"messages": USER, "max_tokens": 8, **fields}


MALFORMED_CHAT = {
    # wrong types
    "messages of numbers": {"messages": [1, 2]},
    "message null": {"messages": [None]},
    "content an object": {"messages": [{"role": "user", "content": {"a": 1}}]},
    "text part without text": {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    "text part with a number": {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    "part without type": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
    "name a number": {"messages": [{"role": "user", "content": "hi", "name": 5}]},
    "model a number": chat(model=5),
    "reasoning a string": chat(reasoning="high"),
    "stream_options a string": chat(stream_options="yes"),
    "tools an object": chat(tools={"a": 1}),
    "tool parameters a string": chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
    "tool call id a number": {"messages": [{"role": "assistant", "tool_calls": [{"id": 1}]}]},
    "tool arguments an object": {"messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]},
    "top-level array": [1],
    "top-level number": 5,
    # out of range numbers
    "temperature 3": chat(temperature=3),
    "temperature -1": chat(temperature=-1),
    "top_p 0": chat(top_p=0),
    "top_k -5": chat(top_k=-5),
    "max_tokens 1.5": chat(max_tokens=1.5),
    "max_tokens -1": chat(max_tokens=-1),
    "n 0": chat(n=0),
    "presence_penalty 9": chat(presence_penalty=9),
    # unsupported content parts
    "image part": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    "audio part": {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
    "file part": {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
    # empty and huge arrays
    "no messages": {"messages": []},
    "five stop strings": chat(stop=["a"] * 5),
    "ten thousand stop strings": chat(stop=["a"] * 10000),
    "a stop string of 257 characters": chat(stop=["x" * 257]),
    "a long stop string among short ones": chat(stop=["a", "x" * 10000]),
    "100000 messages": {"messages": USER * 100_000},
    "three thousand messages": {"messages": USER * 3000},
    "unknown tool_call_id": {"messages": [*USER, {"role": "tool", "tool_call_id": "x", "content": "1"}]},
    "tool_choice without tools": chat(tool_choice="required"),
    "duplicate tool names": chat(tools=[{"type": "function", "function": {"name": "f"}}] * 2),
    # nesting deeper than anything can walk
    "deeply nested tool schema": chat(tools=[{"type": "function", "function": {"name": "f", "parameters": DEEP_SCHEMA}}]),
}

RAW_MALFORMED = {
    "lone high surrogate": b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
    "lone low surrogate": b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}',
    "lone surrogate in a tool name": b'{"messages": [{"role": "user", "content": "hi"}], '
                                     b'"tools": [{"type": "function", "function": {"name": "f\\udfff"}}]}',
    "reversed surrogate pair": b'{"messages": [{"role": "user", "content": "\\ude00\\ud83d"}]}',
    "NaN temperature": b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "Infinity max_tokens": b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": Infinity}',
    "brackets 100000 deep": b"[" * 100000,
    "objects 5000 deep": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "invalid UTF-8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "truncated": b'{"messages": [{"role": "user", "content": "hi"',
    "trailing garbage": b'{"messages": []} xyz',
}

# Odd but acceptable: these may be served; they must not be a 5xx.
ODD_CHAT = {
    "unknown fields everywhere": {"messages": [{"role": "user", "content": "hi", "foo": {"bar": [1]}}],
                                  "reasoning": {"effort": "low", "zz": 1}, "x": {"y": [None]}, "max_tokens": 8},
    "unknown field in stream_options": chat(stream=True, stream_options={"include_usage": True, "zzz": 1}),
    "unknown field in a tool": chat(tools=[{"type": "function", "function": {"name": "f", "zzz": 1}, "yyy": 2}]),
    "huge max_tokens": chat(max_tokens=10**30),
    "huge seed": chat(seed=10**30),
    "negative seed": chat(seed=-1),
    "huge top_k": chat(top_k=10**12),
    "empty content": {"messages": [{"role": "user", "content": ""}], "max_tokens": 8},
    "empty content parts": {"messages": [{"role": "user", "content": []}], "max_tokens": 8},
    "empty tools": chat(tools=[]),
    "NUL and markup in text": {"messages": [{"role": "user", "content": "a\u0000b<|start|>assistant<|return|>"}],
                               "max_tokens": 8},
    "odd tool schema": chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": ["string", None], "enum": [1, {"x": 2}], "items": 5}}}}}]),
    "odd tool name": chat(tools=[{"type": "function", "function": {"name": "a b\u0000c-d.e"}}]),
    "logit_bias ignored": chat(logit_bias={"x": "y"}),
    "response_format without a schema": chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
    "system message only": {"messages": [{"role": "system", "content": "hi"}], "max_tokens": 8},
    "valid surrogate pair": chat(messages=[{"role": "user", "content": "\U0001F600"}]),
    "four stop strings of 256 characters": chat(stop=["x" * 256] * 4),
}

MALFORMED_RESPONSES = {
    "input a number": {"input": 5},
    "image input": {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
    "temperature 3": {"input": "hi", "temperature": 3},
    "unknown item type": {"input": [{"type": "computer_call"}]},
    "no input": {},
    "100000 input items": {"input": USER * 100_000},
}


MALFORMED_MESSAGES = {
    "no max_tokens": {"messages": USER},
    "max_tokens 0": {"messages": USER, "max_tokens": 0},
    "role tool": {"messages": [{"role": "tool", "content": "hi"}], "max_tokens": 8},
    "image block": {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}], "max_tokens": 8},
    "block without type": {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "max_tokens": 8},
    "tool_use without id": {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "x"}]}],
                            "max_tokens": 8},
    "tool_result in an assistant turn": {"messages": [{"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}], "max_tokens": 8},
    "five stop sequences": {"messages": USER, "max_tokens": 8, "stop_sequences": ["a", "b", "c", "d", "e"]},
    "a stop sequence of 257 characters": {"messages": USER, "max_tokens": 8, "stop_sequences": ["x" * 257]},
    "100000 messages": {"messages": USER * 100_000, "max_tokens": 8},
    "thinking of no type": {"messages": USER, "max_tokens": 8, "thinking": {"budget_tokens": 5}},
    "tool_choice tool without name": {"messages": USER, "max_tokens": 8, "tool_choice": {"type": "tool"}},
    "server tool": {"messages": USER, "max_tokens": 8, "tools": [{"type": "bash_20250124", "name": "bash"}]},
}


def post(server, path: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}{path}", content=content, headers={"content-type": "application/json"},
                      timeout=120)


def assert_error_object(response: httpx.Response, status: int = 400) -> None:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("name", list(MALFORMED_CHAT))
def test_malformed_chat_request_is_400(scripted_server, name):
    assert_error_object(post(scripted_server, "/v1/chat/completions", MALFORMED_CHAT[name]))


def assert_anthropic_error(response: httpx.Response, status: int = 400) -> None:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error" and body["error"]["message"]


@pytest.mark.parametrize("name", list(RAW_MALFORMED))
def test_malformed_json_is_400(scripted_server, name):
    for path in ("/v1/chat/completions", "/v1/responses"):
        assert_error_object(post(scripted_server, path, RAW_MALFORMED[name]))
    assert_anthropic_error(post(scripted_server, "/v1/messages", RAW_MALFORMED[name]))


@pytest.mark.parametrize("name", list(MALFORMED_MESSAGES))
def test_malformed_messages_request_is_400(scripted_server, name):
    assert_anthropic_error(post(scripted_server, "/v1/messages", MALFORMED_MESSAGES[name]))


def test_surrogates_and_images_say_what_is_wrong(scripted_server):
    lone = post(scripted_server, "/v1/chat/completions", RAW_MALFORMED["lone high surrogate"]).json()["error"]
    assert "surrogate" in lone["message"]
    image = post(scripted_server, "/v1/chat/completions", MALFORMED_CHAT["image part"]).json()["error"]
    assert "image_url" in image["message"] and "text" in image["message"]


@pytest.mark.parametrize("name", list(ODD_CHAT))
def test_odd_but_valid_chat_request_is_not_a_server_error(scripted_server, name):
    response = post(scripted_server, "/v1/chat/completions", ODD_CHAT[name])
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert_error_object(response, response.status_code)


@pytest.mark.parametrize("name", list(MALFORMED_RESPONSES))
def test_malformed_responses_request_is_400(scripted_server, name):
    assert_error_object(post(scripted_server, "/v1/responses", MALFORMED_RESPONSES[name]))


# ---- schemathesis ---------------------------------------------------------------------------

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module")
def fuzzed_server(start_server, scripted_model):
    """A server of its own: generated requests carry any valid value, `keep_alive: 0` among them,
    which holds for the model afterwards (it would be unloaded between the tests that share
    scripted_server, taking their prompt cache with it)."""
    return start_server(["--model", str(scripted_model), "--trust-remote-code", "--served-model-name", "scripted"])


def test_schemathesis_finds_no_server_errors_or_schema_violations(fuzzed_server):
    """Every operation of /openapi.json, a bounded number of generated requests each (the same
    ones every run: derandomized, so that a failure can be run again)."""
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    failures, tried = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/pull":
            continue  # it downloads from the Hub: not for random names (tests/test_pull.py drives it)
        tried.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def check(case):
            case.call_and_validate(checks=CHECKS, timeout=60)

        try:
            check()
        except Exception as e:  # a check failed: keep going, report them all
            failures.append(f"{tried[-1]}: {e}")
    assert {"POST /v1/chat/completions", "POST /v1/responses", "POST /v1/messages", "POST /v1/messages/count_tokens",
            "GET /v1/models", "GET /v1/responses/{response_id}", "DELETE /v1/responses/{response_id}",
            "GET /v1/responses/{response_id}/input_items"} <= set(tried)
    assert not failures, "\n\n".join(failures)


def test_the_server_is_fine_after_the_fuzzing(fuzzed_server):
    """After the fuzzing (this runs after it: tests run in file order): it still answers right,
    nothing is left running, and no request raised."""
    reply = post(fuzzed_server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "What is 2+2?"}]})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == JAPANESE_ANSWER
    health = fuzzed_server.health()
    assert health["status"] == "ok" and health["running"] == health["waiting"] == 0
    log = fuzzed_server.log()
    assert "Traceback" not in log and " 500 " not in log
