"""Concurrent requests each get their own answer; a client that leaves stops its generation."""

import asyncio
import time

import httpx
import pytest

from tests.scripts import JAPANESE_ANSWER, STOP_ANSWER, TOOL_ANSWER

QUESTIONS = {
    "What is 2+2?": JAPANESE_ANSWER,
    "Stop test": STOP_ANSWER,
    "Reply without a header": "Just plain words, no header.",
}


def wait_until_idle(server, timeout: float = 10.0) -> float:
    """Seconds until no generation is running."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.health()["running"] == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"still generating after {timeout}s: {server.health()}")


def test_concurrent_requests_each_get_their_own_answer(scripted_server):
    client = scripted_server.async_client()

    async def one(question: str, stream: bool) -> tuple[str, str]:
        messages = [{"role": "user", "content": question}]
        if not stream:
            reply = await client.chat.completions.create(model="m", messages=messages)
            return question, reply.choices[0].message.content
        text = ""
        async for chunk in await client.chat.completions.create(model="m", messages=messages, stream=True):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        return question, text

    async def many():
        jobs = [one(q, stream=i % 2 == 0) for i, q in enumerate(list(QUESTIONS) * 4)]
        return await asyncio.gather(*jobs)

    for question, answer in asyncio.run(many()):
        assert answer == QUESTIONS[question], question
    assert scripted_server.health()["running"] == 0


def test_streaming_client_that_leaves_stops_its_generation(scripted_server):
    with httpx.stream("POST", f"{scripted_server.url}/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "Write a long essay"}], "stream": True, "max_tokens": 5000,
    }) as response:
        lines = response.iter_lines()
        for _ in range(20):
            next(lines)
        assert scripted_server.health()["running"] == 1
    # the long answer would take far longer than this to finish on its own
    assert wait_until_idle(scripted_server, timeout=5) < 5


def test_non_streaming_client_that_leaves_stops_its_generation(scripted_server):
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{scripted_server.url}/v1/chat/completions", timeout=1.0, json={
            "messages": [{"role": "user", "content": "Write a long essay"}], "max_tokens": 5000,
        })
    assert wait_until_idle(scripted_server, timeout=5) < 5


def test_server_answers_normally_after_walk_aways(client):
    reply = client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": "What is the weather in Tokyo?"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                               "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ])
    assert reply.choices[0].message.content == TOOL_ANSWER
