"""Every bad request gets a 400 with OpenAI's error object, and the server keeps serving."""

import time

import httpx
import openai
import pytest

from tests.scripts import JAPANESE_ANSWER

USER = [{"role": "user", "content": "What is 2+2?"}]


def post(server, body, **kwargs):
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=60, **({"json": body} if body is not None else {}), **kwargs)


def assert_error(response, status=400, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if status == 400:
        assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize("body, param", [
    ({"messages": USER, "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"messages": USER, "reasoning": {"effort": "max"}}, "reasoning.effort"),
    ({"messages": USER, "n": 99}, "n"),  # over max_n
    ({"messages": USER, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 42}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ({"messages": USER, "temperature": 5}, "temperature"),
    ({"messages": USER, "temperature": "hot"}, "temperature"),
    ({"messages": USER, "top_p": 0}, "top_p"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "max_tokens": -5}, "max_tokens"),
    ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, None),
    ({"messages": USER, "stop": [""]}, None),
    ({"messages": USER, "stream": "yes please"}, "stream"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"description": "no name"}}]},
     "tools[0].function.name"),
])
def test_invalid_requests_are_400(scripted_server, body, param):
    assert_error(post(scripted_server, body), param=param)


def test_image_parts_say_why(scripted_server):
    error = assert_error(post(scripted_server, {"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}))
    assert error["message"] == ("Invalid request: messages[0].content[0].type: content parts of type 'image_url' "
                                "are not supported; this model reads text only")


def test_the_access_log_says_why_a_request_failed(scripted_server):
    """A 4xx's access-log line carries the error's code, else the start of its message."""
    post(scripted_server, {"messages": [{"role": "wizard", "content": "hi"}]}, headers={"X-Request-ID": "why-1"})
    post(scripted_server, {"messages": [{"role": "user", "content": "word " * 5000}]}, headers={"X-Request-ID": "why-2"})

    def line(request_id):
        for _ in range(50):  # the line is written as the response ends
            found = [line for line in scripted_server.log().splitlines() if f"request_id={request_id}" in line]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no access-log line for {request_id}")

    assert '" 400 ' in line("why-1") and ' error="Invalid request: messages[0].role: Input should be' in line("why-1")
    assert '" 400 ' in line("why-2") and " error=context_length_exceeded " in line("why-2")


def test_malformed_json_is_400(scripted_server):
    for raw in (b"{not json", b"", b"[1, 2]", b"null", "\"\\ud800\"".encode()):
        assert_error(post(scripted_server, None, content=raw, headers={"content-type": "application/json"}))


def test_context_overflow_names_both_numbers(scripted_server):
    error = assert_error(post(scripted_server, {"messages": [{"role": "user", "content": "word " * 5000}]}),
                         param="messages")
    assert "4096" in error["message"]
    assert error["code"] == "context_length_exceeded"
    prompt_tokens = [int(w) for w in error["message"].replace(",", " ").split() if w.isdigit() and int(w) > 4096]
    assert prompt_tokens, error["message"]


def test_unknown_tool_call_id_is_400(scripted_server):
    assert_error(post(scripted_server, {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "call_nope", "content": "42"},
    ]}), param="messages[1].tool_call_id")


def test_sdk_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=USER, reasoning_effort="turbo")
    assert caught.value.status_code == 400


def test_unknown_route_and_model(scripted_server, client):
    assert_error(httpx.get(f"{scripted_server.url}/v1/nothing-here"), status=404)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("some-other-model")


def test_server_still_answers_after_bad_requests(scripted_server, client):
    for _ in range(3):
        post(scripted_server, None, content=b"{", headers={"content-type": "application/json"})
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == JAPANESE_ANSWER
    assert scripted_server.health()["running"] == 0
