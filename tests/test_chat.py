"""Chat completions against the live server: the reasoning/answer split, stream and non-stream."""

import httpx

from tests.scripts import JAPANESE_ANSWER, JAPANESE_REASONING, LONG_WORDS, STOP_ANSWER


def ask(client, text, **kwargs):
    return client.chat.completions.create(model="anything", messages=[{"role": "user", "content": text}], **kwargs)


def stream(client, text, **kwargs):
    """(reasoning, content, finish_reason, chunks) of a streamed reply."""
    chunks = list(client.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": text}], stream=True, **kwargs))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return reasoning, content, finish, chunks


def test_reasoning_and_answer_are_split(client):
    reply = ask(client, "What is 2+2?")
    message = reply.choices[0].message
    assert message.content == JAPANESE_ANSWER
    assert message.reasoning_content == JAPANESE_REASONING
    assert message.reasoning == JAPANESE_REASONING
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "scripted"
    assert reply.object == "chat.completion"


def test_stream_equals_non_stream_byte_for_byte(client):
    reasoning, content, finish, chunks = stream(client, "What is 2+2?")
    assert content.encode() == JAPANESE_ANSWER.encode()
    assert reasoning.encode() == JAPANESE_REASONING.encode()
    assert finish == ["stop"]
    # streamed token by token, not in one piece
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 5
    # no harmony markup anywhere
    assert "<|" not in content + reasoning
    first = chunks[0].choices[0].delta
    assert first.role == "assistant"


def test_both_reasoning_field_names_stream(scripted_server):
    with httpx.stream("POST", f"{scripted_server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "What is 2+2?"}], "stream": True,
    }, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    import json

    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in lines[:-1]]
    assert "".join(d.get("reasoning", "") for d in deltas) == JAPANESE_REASONING
    assert "".join(d.get("reasoning_content", "") for d in deltas) == JAPANESE_REASONING


def test_usage_counts_tokens_and_what_the_prompt_cache_gave(client):
    question = "What is 2+2? (A question of its own, so that its first prompt is not cached.)"
    usage = ask(client, question).usage
    assert usage.prompt_tokens > 50
    assert usage.completion_tokens > usage.completion_tokens_details.reasoning_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens - 1  # the shared system part at most
    again = ask(client, question).usage
    # the same prompt again: all of it from the cache but its end (at least its last token is read
    # again, as the first generation step; mlx-lm's trim of a longer cached entry leaves out one more)
    assert again.prompt_tokens == usage.prompt_tokens
    assert usage.prompt_tokens - 2 <= again.prompt_tokens_details.cached_tokens < usage.prompt_tokens


def test_stream_include_usage_sends_a_final_usage_chunk(client):
    *_, chunks = stream(client, "What is 2+2?", stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_reply_without_header_is_delivered_as_content(client):
    assert ask(client, "Reply without a header").choices[0].message.content == "Just plain words, no header."
    _, content, finish, _ = stream(client, "Reply without a header")
    assert content == "Just plain words, no header."
    assert finish == ["stop"]


def test_reply_with_broken_header_is_still_delivered(client):
    reply = ask(client, "Reply with a broken header")
    assert "Still delivered." in reply.choices[0].message.content
    assert "<|" not in reply.choices[0].message.content
    _, content, finish, _ = stream(client, "Reply with a broken header")
    assert "Still delivered." in content and finish == ["stop"]


def test_answer_ends_with_its_final_message(client):
    reply = ask(client, "Reply ending with end")
    assert reply.choices[0].message.content == "Done here."
    assert reply.choices[0].finish_reason == "stop"


def test_max_tokens_gives_length(client):
    reply = ask(client, "Write a long essay", max_tokens=40)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 40
    assert LONG_WORDS.startswith(reply.choices[0].message.content)
    _, content, finish, _ = stream(client, "Write a long essay", max_completion_tokens=40)
    assert finish == ["length"]
    assert content == reply.choices[0].message.content


def test_stop_cuts_the_answer_not_the_reasoning(client):
    reply = ask(client, "Stop test", stop=["END"])
    assert reply.choices[0].message.content == "alpha beta "
    assert reply.choices[0].message.reasoning_content == "The reasoning mentions END too."
    assert reply.choices[0].finish_reason == "stop"
    _, content, finish, _ = stream(client, "Stop test", stop="END")
    assert content == "alpha beta " and finish == ["stop"]
    # a stop string that never appears changes nothing
    assert ask(client, "Stop test", stop=["zzz", "omega"]).choices[0].message.content == STOP_ANSWER


def test_reasoning_effort_reaches_the_system_message(client):
    for effort in ("low", "medium", "high"):
        assert ask(client, "Tell me your effort.", reasoning_effort=effort).choices[0].message.content == f"effort={effort}"
    # the Responses-style form is accepted too
    reply = ask(client, "Tell me your effort.", extra_body={"reasoning": {"effort": "high"}})
    assert reply.choices[0].message.content == "effort=high"
    # the configured default
    assert ask(client, "Tell me your effort.").choices[0].message.content == "effort=medium"


def test_system_and_developer_text_become_instructions(client):
    for role in ("system", "developer"):
        reply = client.chat.completions.create(model="m", messages=[
            {"role": role, "content": "Speak like a pirate."},
            {"role": "user", "content": "Hello"},
        ])
        assert reply.choices[0].message.content == "Arr, instructions received."


def test_content_as_list_of_text_parts(client):
    reply = client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
    ])
    assert reply.choices[0].message.content == JAPANESE_ANSWER


def test_multi_turn_conversation(client):
    first = ask(client, "What is 2+2?").choices[0].message
    reply = client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": first.content, "reasoning_content": first.reasoning_content},
        {"role": "user", "content": "Stop test"},
    ])
    assert reply.choices[0].message.content == STOP_ANSWER


def test_models_and_health(scripted_server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["scripted"]
    assert client.models.retrieve("scripted").id == "scripted"
    health = httpx.get(f"{scripted_server.url}/health").json()
    assert health["status"] == "ok"
