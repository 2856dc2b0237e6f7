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


def test_the_store_hands_out_prefixes_and_keeps_its_entries_whole():
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    from server.engine.prompt_cache import PrefixStore

    def cache(layer, n):
        values = mx.arange(n, dtype=mx.float32).reshape(1, 1, n, 1)
        layer.update_and_fetch(values, values)
        return [layer]

    store = PrefixStore(max_bytes=2**20)
    store.insert(list(range(10)), cache(KVCache(), 10))
    found, length = store.nearest(list(range(12)))  # the prompt goes on past the entry
    assert length == 10 and found[0].offset == 10
    found, length = store.nearest([0, 1, 2, 3, 4, 99])  # the prompt leaves it: cut back to 5
    assert length == 5 and found[0].keys_and_values()[0].shape[2] == 5
    found, length = store.nearest(list(range(10)))
    assert length == 10 and found[0].keys_and_values()[0][0, 0, :, 0].tolist() == list(range(10))  # still whole

    # a sliding window past its size can't be cut back: only a prompt that holds all of it uses it
    store.insert([7] * 8, cache(RotatingKVCache(max_size=4), 8))
    assert store.nearest([7] * 8 + [1])[1] == 8
    assert store.nearest([7] * 6 + [1, 1, 1])[1] == 0

    store.trim_to(store.nbytes - 1)  # over the budget: the least recently used goes first
    assert len(store) == 1 and store.nearest([7] * 9)[1] == 8
