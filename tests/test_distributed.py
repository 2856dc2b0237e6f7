"""One model served by two processes under `mlx.launch -n 2 --backend ring` (tensor parallelism
over TCP on 127.0.0.1), against the same model in one process: the same tokens, concurrent
requests, cancellation, the prompt cache, and a rank that dies or hangs."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, RunningServer

MLX_LAUNCH = str(Path(sys.executable).parent / "mlx.launch")
GREEDY = {"SWALLOW_TEMPERATURE": "0"}
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]


def free_port_pair() -> int:
    """A port p with p and p + 1 free: mlx.launch's ring listens on one per rank."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


def launch(start_server, env: dict | None = None) -> RunningServer:
    """`mlx.launch -n 2 --backend ring -- python -m server --model demo` (rank 0 serves HTTP)."""
    launcher = [MLX_LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", str(free_port_pair()), "--"]
    server = start_server(["--model", "demo"], env={**GREEDY, **(env or {})}, launcher=launcher)
    server.ranks = server.health()["distributed"]["ranks"]
    return server


def stop_ranks(server: RunningServer) -> None:
    """How a user stops it: SIGTERM to rank 0, which tells the other rank; mlx.launch then ends."""
    try:
        os.kill(server.ranks[0]["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    server.process.wait(timeout=60)


@pytest.fixture(scope="module")
def two_ranks(start_server):
    # a first structured-output request builds the grammar engine's tokenizer (~10 s of GIL on
    # rank 0 on this CPU): a step may take that long here
    server = launch(start_server, {"SWALLOW_DISTRIBUTED_TIMEOUT": "60"})
    yield server
    stop_ranks(server)
    assert "rank 0 shut down; exiting" in server.log()  # rank 1 left with rank 0


def completion(server, prompt: str, max_tokens: int = 40, **extra) -> dict:
    body = {"model": "demo", "prompt": prompt, "max_tokens": max_tokens, "logprobs": 0, **extra}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def tokens(choice: dict) -> list[str]:
    return choice["logprobs"]["tokens"]


def test_health_names_the_world(two_ranks):
    world = two_ranks.health()["distributed"]
    assert world["world_size"] == 2 and world["backend"] == "ring"
    assert [r["rank"] for r in world["ranks"]] == [0, 1]
    assert all(r["host"] == socket.gethostname() and r["pid"] > 0 for r in world["ranks"])
    assert "2 ranks over ring: rank 0 on" in two_ranks.log()


def test_the_split_model_is_the_only_one_and_stays_loaded(two_ranks):
    cards = httpx.get(f"{two_ranks.url}/v1/models", timeout=30).json()["data"]
    assert [(c["id"], c["loaded"]) for c in cards] == [("demo", True)]  # no Hugging Face cache models
    unload = httpx.post(f"{two_ranks.url}/v1/models/demo/unload", timeout=30)
    assert unload.status_code == 409 and unload.json()["error"]["code"] == "model_pinned"
    completion(two_ranks, "Hello", max_tokens=2, keep_alive=0)  # a request's keep_alive doesn't unload it
    time.sleep(1)
    assert httpx.get(f"{two_ranks.url}/v1/models/demo", timeout=30).json()["loaded"] is True


def test_several_models_are_refused_under_mlx_launch(tmp_path):
    launcher = [MLX_LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", str(free_port_pair()), "--"]
    done = subprocess.run([*launcher, sys.executable, "-m", "server", "--model", "demo", "--model", "other=demo"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "serves exactly one model" in done.stdout + done.stderr


def test_greedy_tokens_match_one_process(two_ranks, demo_server):
    for prompt in PROMPTS:
        split, whole = completion(two_ranks, prompt), completion(demo_server, prompt)
        assert tokens(split) == tokens(whole) and len(tokens(split)) == 40
        assert split["text"] == whole["text"]


def test_chat_stream_and_not_match_one_process(two_ranks, demo_server):
    request = {"model": "demo", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 48}
    answers = []
    for server in (two_ranks, demo_server):
        client = server.client()
        whole = client.chat.completions.create(**request)
        streamed = client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
        parts = [(c.choices[0].delta.content or "", getattr(c.choices[0].delta, "reasoning_content", None) or "")
                 for c in streamed if c.choices]
        message = whole.choices[0].message
        assert "".join(p[0] for p in parts) == (message.content or "")
        answers.append((message.content, getattr(message, "reasoning_content", None), whole.usage.completion_tokens))
    assert answers[0] == answers[1]


def test_seeded_sampling_and_structured_output_match_one_process(two_ranks, demo_server):
    sampled = {"temperature": 0.9, "seed": 1234}
    assert tokens(completion(two_ranks, "Once upon a time", **sampled)) == tokens(
        completion(demo_server, "Once upon a time", **sampled))
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    request = {"model": "demo", "messages": [{"role": "user", "content": "A person, as JSON"}], "max_tokens": 64,
               "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
               "reasoning_effort": "low"}
    split, whole = (httpx.post(f"{server.url}/v1/chat/completions", json=request, timeout=120)
                    for server in (two_ranks, demo_server))
    assert split.status_code == whole.status_code  # random weights: JSON that never ends is a 400
    answer = (lambda r: r.json()["choices"][0]["message"] if r.status_code == 200 else r.json()["error"])
    assert answer(split) == answer(whole)


def test_concurrent_requests_each_match_one_process(two_ranks, demo_server):
    requests = [(prompt, 16 + 6 * i) for i, prompt in enumerate(PROMPTS * 2)]
    alone = [tokens(completion(demo_server, p, n)) for p, n in requests]

    async def together():
        async with httpx.AsyncClient(timeout=120) as client:
            responses = await asyncio.gather(*[
                client.post(f"{two_ranks.url}/v1/completions",
                            json={"model": "demo", "prompt": p, "max_tokens": n, "logprobs": 0})
                for p, n in requests])
        return [tokens(r.json()["choices"][0]) for r in responses]

    assert asyncio.run(together()) == alone


def test_the_prompt_cache_is_used_on_both_ranks(two_ranks, demo_server):
    system = {"role": "system", "content": "Shared instructions for every request. " * 40}
    for question in ("What is 2+2?", "What is 3+3?"):
        request = {"model": "demo", "messages": [system, {"role": "user", "content": question}], "max_tokens": 24}
        split = two_ranks.client().chat.completions.create(**request)
        whole = demo_server.client().chat.completions.create(**request)
        assert split.choices[0].message == whole.choices[0].message
    assert split.usage.prompt_tokens_details.cached_tokens > 300  # the second read the shared part from the cache
    assert two_ranks.health()["prompt_cache"]["entries"] > 0


def test_a_client_that_goes_away_mid_stream_leaves_the_server_serving(two_ranks, demo_server):
    body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 3000, "stream": True}
    with httpx.stream("POST", f"{two_ranks.url}/v1/completions", json=body, timeout=60) as response:
        chunks = [line for _, line in zip(range(6), response.iter_lines()) if line]
    assert chunks  # it streamed, then the client hung up
    deadline = time.monotonic() + 30
    while two_ranks.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert two_ranks.health()["running"] == 0  # cancelled on both ranks
    assert tokens(completion(two_ranks, PROMPTS[0])) == tokens(completion(demo_server, PROMPTS[0]))


def stream_until_it_ends(server, lines: list) -> None:
    body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 100000, "stream": True}
    try:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            lines.extend(line for line in response.iter_lines() if line)
    except httpx.HTTPError as e:
        lines.append(f"transport error: {e}")


def test_a_killed_rank_fails_requests_in_flight_and_rank_0_exits_non_zero(start_server):
    server = launch(start_server, {"SWALLOW_DISTRIBUTED_TIMEOUT": "5"})
    lines: list = []
    reader = threading.Thread(target=stream_until_it_ends, args=(server, lines))
    reader.start()
    deadline = time.monotonic() + 30
    while len(lines) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.ranks[1]["pid"], signal.SIGKILL)
    reader.join(60)
    assert not reader.is_alive()
    assert any('"error"' in line and "a rank was lost" in line for line in lines), lines[-3:]  # the stream was told why
    server.process.wait(timeout=60)  # mlx.launch ends: no rank is left waiting
    log = server.log()
    assert "Node with rank 0 exited with code 1" in log
    assert "the engine thread died" in log


def test_a_hung_rank_is_given_up_within_the_timeout(start_server):
    server = launch(start_server, {"SWALLOW_DISTRIBUTED_TIMEOUT": "3"})
    follower = server.ranks[1]["pid"]
    try:
        assert completion(server, PROMPTS[0], 8)["finish_reason"] == "length"
        os.kill(follower, signal.SIGSTOP)  # alive, connected, silent
        started = time.monotonic()
        response = httpx.post(f"{server.url}/v1/completions", timeout=60,
                              json={"model": "demo", "prompt": PROMPTS[1], "max_tokens": 8})
        assert response.status_code >= 500 and "no answer within" in response.text
        assert time.monotonic() - started < 30  # distributed_timeout is 3 s here
        deadline = time.monotonic() + 30
        while "Node with rank 0 exited with code 1" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Node with rank 0 exited with code 1" in server.log()
    finally:
        os.kill(follower, signal.SIGKILL)  # mlx.launch can't end a stopped process
        server.process.wait(timeout=60)
