"""The prompt cache: later turns reuse earlier ones, answers don't change, the budget holds."""

import pytest

from tests.scripts import JAPANESE_ANSWER, JAPANESE_REASONING, STOP_ANSWER


def test_next_turn_reuses_the_previous_prompt(client):
    instructions = {"role": "system", "content": "You are a careful assistant. " * 30}
    first_messages = [instructions, {"role": "user", "content": "What is 2+2?"}]
    first = client.chat.completions.create(model="m", messages=first_messages)
    assert first.choices[0].message.content == JAPANESE_ANSWER

    second = client.chat.completions.create(model="m", messages=first_messages + [
        {"role": "assistant", "content": JAPANESE_ANSWER, "reasoning_content": JAPANESE_REASONING},
        {"role": "user", "content": "Stop test"},
    ])
    # the answer is the scripted one: the cached tokens are the right ones
    assert second.choices[0].message.content == STOP_ANSWER
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1
    assert cached < second.usage.prompt_tokens


def test_same_instructions_share_their_cache(client):
    system = {"role": "system", "content": "Shared instructions for every request. " * 40}
    client.chat.completions.create(model="m", messages=[system, {"role": "user", "content": "Stop test"}])
    other = client.chat.completions.create(model="m", messages=[system, {"role": "user", "content": "What is 2+2?"}])
    assert other.choices[0].message.content == JAPANESE_ANSWER
    assert other.usage.prompt_tokens_details.cached_tokens > 300  # the system + developer messages


@pytest.fixture(scope="module")
def demo_servers(start_server, demo_server):
    """The demo model (sliding window 128), with and without a prompt cache, both greedy."""
    without_cache = start_server(["--model", "demo"], env={"SWALLOW_TEMPERATURE": "0", "SWALLOW_PROMPT_CACHE_MB": "0"})
    return demo_server, without_cache


def conversation(server, turns: int = 3, reply_tokens: int = 160):
    """A multi-turn chat whose replies are longer than the sliding window."""
    client = server.client()
    messages = [{"role": "system", "content": "Be thorough."}]
    answers, cached = [], []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question number {turn}: tell me more."})
        reply = client.chat.completions.create(model="demo", messages=messages, max_tokens=reply_tokens)
        message = reply.choices[0].message
        answers.append((message.content, getattr(message, "reasoning_content", None)))
        cached.append(reply.usage.prompt_tokens_details.cached_tokens)
        messages.append({"role": "assistant", "content": message.content or "..."})
    return answers, cached


def test_cached_turns_answer_exactly_as_uncached_ones(demo_servers):
    with_cache, without_cache = demo_servers
    answers, cached = conversation(with_cache)
    reference, uncached = conversation(without_cache)
    assert answers == reference
    assert uncached == [0, 0, 0]
    assert cached[1] > 0 and cached[2] > cached[1]


def test_cache_stays_within_its_budget(start_server):
    server = start_server(["--model", "demo"], env={"SWALLOW_TEMPERATURE": "0", "SWALLOW_PROMPT_CACHE_MB": "1"})
    client = server.client()
    for i in range(6):
        client.chat.completions.create(model="demo", max_tokens=4, messages=[
            {"role": "user", "content": f"Topic {i}: " + "many different words here " * 120}])
        stats = server.health()["prompt_cache"]
        assert stats["budget_bytes"] == 2**20
        assert 0 < stats["bytes"] <= stats["budget_bytes"]
