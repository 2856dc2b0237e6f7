"""Logprobs, /v1/completions (echo, n), n choices on chat, /tokenize and /detokenize, on the
demo model (the real gpt_oss architecture, random weights, greedy by default).

The reference numbers are the model's own log-softmax, computed here with mlx-lm on the same
model directory the server loaded; the reference tokens' bytes are toktok's o200k_harmony."""

import json

import httpx
import mlx.core as mx
import numpy as np
import pytest
import toktok

VOCABULARY = toktok._encoding("o200k_harmony")

ATOL = 2e-3  # float32, batched vs single forward passes
JAPANESE = "こんにちは、世界。吾輩は猫である。"


@pytest.fixture(scope="module")
def model(demo_server):
    from models.loading import load_model

    return load_model("demo")


def log_softmax(model, tokens: list[int]) -> np.ndarray:
    logits = model.model(mx.array(tokens)[None])[0].astype(mx.float32)
    return np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))


def greedy(model, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """The greedy continuation and each step's log-softmax."""
    tokens, rows = list(prompt), []
    for _ in range(steps):
        row = log_softmax(model, tokens)[-1]
        rows.append(row)
        tokens.append(int(row.argmax()))
    return tokens[len(prompt):], rows


def token_bytes(token: int) -> bytes:
    return VOCABULARY.decode_single_token_bytes(token)


def shown(token: int) -> str:
    """A token as logprobs name it: its text, or "bytes:\\x.." when its bytes aren't whole UTF-8."""
    data = token_bytes(token)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def tokenize(server, **body) -> list[int]:
    return post(server, "/tokenize", body).json()["tokens"]


def test_echo_scores_every_prompt_token(demo_server, model):
    prompt = tokenize(demo_server, prompt=JAPANESE)
    reply = post(demo_server, "/v1/completions", {"prompt": JAPANESE, "max_tokens": 0, "echo": True,
                                                  "logprobs": 5}).json()
    choice = reply["choices"][0]
    assert choice["text"] == JAPANESE
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(prompt) == reply["usage"]["prompt_tokens"]
    assert prompt == VOCABULARY.encode(JAPANESE)
    # 輩 is split across two tokens: neither is whole UTF-8
    assert lp["tokens"] == ["こんにちは", "、", "世界", "。", "吾", "bytes:\\xe8\\xbc", "bytes:\\xa9", "は", "猫", "で",
                            "ある", "。"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    reference = log_softmax(model, prompt)
    for i in range(1, len(prompt)):
        assert lp["token_logprobs"][i] == pytest.approx(reference[i - 1, prompt[i]], abs=ATOL)
        assert lp["tokens"][i] == shown(prompt[i])
        top = lp["top_logprobs"][i]
        values = list(top.values())
        assert values == sorted(values, reverse=True)
        best = np.sort(reference[i - 1])[::-1][:5]
        assert values[:5] == pytest.approx(list(best), abs=ATOL)
        assert top[lp["tokens"][i]] == lp["token_logprobs"][i]  # the prompt's own token is always there
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    assert reply["usage"]["completion_tokens"] == 0


def test_completion_logprobs_are_the_models_log_softmax(demo_server, model):
    prompt = tokenize(demo_server, prompt="The capital of France is")
    reply = post(demo_server, "/v1/completions", {"prompt": prompt, "max_tokens": 6, "logprobs": 3,
                                                  "echo": True}).json()
    lp = reply["choices"][0]["logprobs"]
    generated, rows = greedy(model, prompt, 6)
    echoed = len(prompt)
    assert reply["usage"]["prompt_tokens"] == echoed and reply["usage"]["completion_tokens"] == 6
    for k, (token, row) in enumerate(zip(generated, rows)):
        i = echoed + k
        assert lp["tokens"][i] == shown(token)
        assert lp["token_logprobs"][i] == pytest.approx(row[token], abs=ATOL)
        assert list(lp["top_logprobs"][i].values())[0] == pytest.approx(row.max(), abs=ATOL)
        assert len(lp["top_logprobs"][i]) == 3
    # the echoed prompt is scored by the same model
    reference = log_softmax(model, prompt)
    assert lp["token_logprobs"][1] == pytest.approx(reference[0, prompt[1]], abs=ATOL)


def chat_body(**extra) -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": "Say hello in Japanese."}],
            "max_tokens": 8, **extra}


def test_chat_logprobs_match_the_model_stream_and_not(demo_server, model):
    prompt = tokenize(demo_server, **chat_body())
    reply = post(demo_server, "/v1/chat/completions", chat_body(logprobs=True, top_logprobs=3)).json()
    choice = reply["choices"][0]
    assert reply["usage"]["prompt_tokens"] == len(prompt)  # tokenize counts what chat reads
    content = choice["logprobs"]["content"]
    assert content
    generated, rows = greedy(model, prompt, reply["usage"]["completion_tokens"])
    position = 0
    for entry in content:  # the answer's tokens, in order, among the generated ones
        while bytes(entry["bytes"]) != token_bytes(generated[position]):
            position += 1
        assert entry["logprob"] == pytest.approx(rows[position][generated[position]], abs=ATOL)
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry["top_logprobs"][0]["bytes"] == entry["bytes"]  # greedy: the chosen token is the top one
        position += 1
    text = b"".join(bytes(e["bytes"]) for e in content).decode("utf-8", errors="replace")
    assert text == choice["message"]["content"]

    with httpx.stream("POST", f"{demo_server.url}/v1/chat/completions", timeout=120,
                      json=chat_body(logprobs=True, top_logprobs=3, stream=True)) as stream:
        chunks = [json.loads(line[6:]) for line in stream.iter_lines()
                  if line.startswith("data: {")]
    streamed = [e for c in chunks for ch in c["choices"] if ch["logprobs"] for e in ch["logprobs"]["content"]]
    assert streamed == content


def test_chat_without_logprobs_has_none(demo_server):
    reply = post(demo_server, "/v1/chat/completions", chat_body()).json()
    assert reply["choices"][0]["logprobs"] is None


def test_responses_output_text_logprobs(demo_server):
    reply = post(demo_server, "/v1/responses", {"model": "demo", "input": "Say hello.", "max_output_tokens": 8,
                                                "include": ["message.output_text.logprobs"],
                                                "top_logprobs": 2}).json()
    part = next(p for item in reply["output"] if item["type"] == "message" for p in item["content"])
    assert part["logprobs"] and all(len(e["top_logprobs"]) == 2 for e in part["logprobs"])
    assert b"".join(bytes(e["bytes"]) for e in part["logprobs"]).decode("utf-8", errors="replace") == part["text"]


def test_n_choices_differ_when_sampled_and_agree_when_greedy(demo_server):
    client = demo_server.client()
    sampled = client.chat.completions.create(**chat_body(n=4, temperature=1.0, seed=7, max_tokens=10))
    assert [c.index for c in sampled.choices] == [0, 1, 2, 3]
    assert len({c.message.content for c in sampled.choices}) > 1
    again = client.chat.completions.create(**chat_body(n=4, temperature=1.0, seed=7, max_tokens=10))
    assert [c.message.content for c in again.choices] == [c.message.content for c in sampled.choices]
    greedy_reply = client.chat.completions.create(**chat_body(n=3))
    assert len({c.message.content for c in greedy_reply.choices}) == 1
    assert greedy_reply.usage.prompt_tokens == len(tokenize(demo_server, **chat_body()))

    stream = client.chat.completions.create(**chat_body(n=2, stream=True))
    texts = ["", ""]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [greedy_reply.choices[0].message.content] * 2


def test_completions_n_and_prompt_lists(demo_server):
    reply = post(demo_server, "/v1/completions", {"prompt": ["One", "Two"], "n": 2, "max_tokens": 4}).json()
    choices = reply["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["text"] == choices[1]["text"] and choices[2]["text"] == choices[3]["text"]
    sampled = post(demo_server, "/v1/completions", {"prompt": "One", "n": 4, "max_tokens": 8,
                                                    "temperature": 1.0, "seed": 3}).json()
    assert len({c["text"] for c in sampled["choices"]}) > 1


def test_completions_stream(demo_server):
    whole = post(demo_server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 6}).json()
    client = demo_server.client()
    chunks = list(client.completions.create(model="demo", prompt="Once upon a time", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole["choices"][0]["text"]
    assert chunks[-1].usage.completion_tokens == 6


def test_completion_text_is_raw_with_special_tokens(demo_server):
    text = "<|start|>user<|message|>hi<|end|><|start|>assistant"
    tokens = tokenize(demo_server, prompt=text)
    assert tokens[0] == 200006 and 200008 in tokens  # <|start|>, <|message|>: special tokens
    reply = post(demo_server, "/v1/completions", {"prompt": text, "max_tokens": 0, "echo": True}).json()
    assert reply["choices"][0]["text"] == text
    assert post(demo_server, "/detokenize", {"tokens": tokens}).json()["prompt"] == text


def test_tokenize_counts_what_chat_reads(demo_server):
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": JAPANESE}],
            "reasoning_effort": "low"}
    counted = post(demo_server, "/tokenize", body).json()
    reply = post(demo_server, "/v1/chat/completions", {**body, "max_tokens": 1}).json()
    assert counted["count"] == len(counted["tokens"]) == reply["usage"]["prompt_tokens"]
    assert counted["max_model_len"] > 0
    text = post(demo_server, "/tokenize", {"content": JAPANESE, "add_special_tokens": True}).json()
    assert post(demo_server, "/detokenize", {"tokens": text["tokens"]}).json()["content"] == JAPANESE


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("/v1/completions", {"prompt": "x", "best_of": 2}, "best_of"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": [300000]}, "prompt"),
    ("/v1/completions", {"prompt": "x", "n": 99}, "n"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 99}, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True,
                              "top_logprobs": 21}, None),
    ("/tokenize", {}, "prompt"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
])
def test_bad_requests_are_400s(demo_server, path, body, param):
    reply = post(demo_server, path, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    if param:
        assert error["param"] == param
    if param == "n":
        assert "max_n" in error["message"]


def metric(server, name: str) -> float:
    """The series' value, summed over its labels (the demo server serves one model)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


def test_n_choices_read_the_prompt_once(demo_server):
    """Choices 1..n-1 start from the prompt cache the first one left: all but its last token."""
    body = chat_body(n=3, messages=[{"role": "system", "content": "A unique long instruction. " * 50},
                                    {"role": "user", "content": "Hello?"}])
    before = metric(demo_server, "swallow_prompt_cache_reused_tokens_total")
    reply = post(demo_server, "/v1/chat/completions", body).json()
    reused = metric(demo_server, "swallow_prompt_cache_reused_tokens_total") - before
    assert reused >= 2 * (reply["usage"]["prompt_tokens"] - 1)


def test_reasoning_answer_and_tool_arguments_are_separate_lists(scripted_server):
    """On the scripted model (exact harmony replies): the analysis tokens' logprobs beside the
    answer's, tool-call arguments in their own list, markup in none."""
    from tests.scripts import JAPANESE_ANSWER, JAPANESE_REASONING, TOOL_ARGUMENTS

    def joined(entries):
        return b"".join(bytes(e["bytes"]) for e in entries).decode()

    reply = post(scripted_server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "What is 2+2?"}], "logprobs": True}).json()
    logprobs = reply["choices"][0]["logprobs"]
    assert joined(logprobs["content"]) == JAPANESE_ANSWER
    assert joined(logprobs["reasoning_content"]) == JAPANESE_REASONING
    assert all(e["top_logprobs"] == [] for e in logprobs["content"])

    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    reply = post(scripted_server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "What is the weather in Tokyo?"}], "tools": [weather],
        "logprobs": True, "top_logprobs": 1}).json()
    logprobs = reply["choices"][0]["logprobs"]
    assert logprobs["content"] == []
    assert joined(logprobs["tool_calls"]) == TOOL_ARGUMENTS
