"""Faults the engine must survive (issue 13): a request whose own part fails ends alone, a dead
engine thread takes the process down cleanly, and KV cache memory is never overcommitted."""

import asyncio
import os
import threading
import time

import httpx
import pytest

from models.scripted import DIE, build_scripted_model
from server.config import Settings
from server.engine.engine import Engine, Finished
from server.engine.sampling import SamplingParams
from server.harmony import render as harmony
from tests.scripts import JAPANESE_ANSWER, SCRIPTS, thought

GREEDY = SamplingParams(temperature=0, top_p=1, top_k=0, min_p=0)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---- a failure touches one request ---------------------------------------------------------

class FailsAtStep:
    """A logits processor that raises on its n-th call: a request built to fail."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, tokens, logits):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("this processor was built to fail")
        return logits


def test_a_request_whose_processor_fails_ends_alone(scripted_model):
    engine = Engine(Settings(model=str(scripted_model), trust_remote_code=True))
    engine.start()
    loaded = engine.wait_until_loaded(120)
    prompt = harmony.render(loaded.encoding, harmony.Prompt(effort="low", messages=[harmony.user("What is 2+2?")]),
                            "You are a test.", "2024-06")

    async def collect(generation):
        tokens, end = [], None
        async for item in generation.events():
            if isinstance(item, Finished):
                end = item
            else:
                tokens.append(item)
        return tokens, end

    async def run(processors_per_request):
        generations = [engine.submit(prompt, 200, GREEDY, processors=p) for p in processors_per_request]
        return await asyncio.gather(*(collect(g) for g in generations))

    try:
        (alone, _), = asyncio.run(run([()]))
        results = asyncio.run(run([(), (FailsAtStep(5),), ()]))
    finally:
        engine.stop()
    (first, first_end), (failed, failed_end), (third, third_end) = results
    assert failed_end.reason == "error" and "built to fail" in failed_end.error
    assert len(failed) < len(alone)  # it ended early, alone
    assert first == third == alone and first_end.reason == third_end.reason == "stop"
    assert loaded.encoding.decode(alone).endswith(JAPANESE_ANSWER + "<|return|>")


# ---- the engine thread dies ----------------------------------------------------------------

def test_a_dead_engine_fails_requests_in_flight_answers_503_and_exits_non_zero(start_server, cache_dir,
                                                                              tmp_path_factory):
    model = build_scripted_model(tmp_path_factory.mktemp("dying"), {
        **SCRIPTS, "Take the engine down": thought("Going down.", f"Partial answer {DIE} never seen")})
    server = start_server(["--model", str(model), "--trust-remote-code"])
    essay = {"messages": [{"role": "user", "content": "Write a long essay"}], "stream": True, "max_tokens": 3000}
    lines = []

    def read_essay():
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=essay, timeout=60) as response:
            lines.extend(line for line in response.iter_lines() if line)

    reader = threading.Thread(target=read_essay)
    reader.start()
    wait_for(lambda: server.health()["running"] == 1, 30, "the essay to run")
    dying = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Take the engine down"}]})
    assert dying.status_code == 500 and "engine stopped" in dying.json()["error"]["message"]
    health = httpx.get(f"{server.url}/health", timeout=5)
    assert health.status_code == 503 and "scripted engine death" in health.json()["error"]
    refused = httpx.post(f"{server.url}/v1/chat/completions", timeout=5,
                         json={"messages": [{"role": "user", "content": "What is 2+2?"}]})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_stopped"
    reader.join(30)
    assert any('"error"' in line and "engine stopped" in line for line in lines)  # the stream was told
    assert lines[-1] == "data: [DONE]"
    assert server.process.wait(timeout=30) == 1
    assert "the engine thread died" in server.log()


# ---- memory-aware admission ----------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_a_small_kv_budget_holds_16_long_requests_without_dying(start_server):
    budget_mb = 1
    # prompts prefilled 64 tokens a step: a step's activations stay small beside the budget
    server = start_server(["--model", "demo"], env={"SWALLOW_TEMPERATURE": "0", "SWALLOW_KV_MEMORY_MB": str(budget_mb),
                                                   "SWALLOW_MAX_QUEUE": "64", "SWALLOW_PREFILL_STEP_SIZE": "64"})
    memory = server.health()["memory"]
    assert memory["kv_budget_bytes"] == budget_mb * 2**20 and memory["kv_budget_from"] == "kv_memory_mb"
    # one that could never fit is refused, naming the numbers
    never = httpx.post(f"{server.url}/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8000})
    assert never.status_code == 400 and never.json()["error"]["code"] == "kv_memory_exceeded"
    assert "1.0 MiB" in never.json()["error"]["message"]

    before = rss_bytes(server.process.pid)
    mlx_before = memory["mlx_active_bytes"]  # the weights, loaded
    results, peak = [], {"running": 0, "held": 0, "rss": before, "mlx": mlx_before}

    def ask(i: int):
        # ~350 prompt tokens + 32 to write: a worst case of ~380 tokens, of which 1 MiB holds 8
        # (demo: 256 B/token + 32 KiB); the length is in the prompt, where it costs one prefill
        story = f"Tell me a long story number {i}. " + "Once upon a time there was a story. " * 30
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
            "messages": [{"role": "user", "content": story}], "max_tokens": 32})
        results.append(reply.status_code)

    askers = [threading.Thread(target=ask, args=(i,)) for i in range(16)]  # twice what fits
    for asker in askers:
        asker.start()
    while any(a.is_alive() for a in askers):
        health = server.health()
        peak["running"] = max(peak["running"], health["running"])
        peak["held"] = max(peak["held"], health["memory"]["waiting_for_memory"])
        peak["rss"] = max(peak["rss"], rss_bytes(server.process.pid))
        peak["mlx"] = max(peak["mlx"], health["memory"]["mlx_active_bytes"])
        time.sleep(0.05)
    assert results == [200] * 16
    assert peak["held"] > 0  # some waited for memory
    assert server.health()["memory"]["kv_reserved_bytes"] == 0  # and nothing is left reserved
    assert 0 < peak["running"] <= 8  # 1 MiB holds 8 of these worst cases, under max_batch_size's 16
    assert server.health()["prompt_cache"]["bytes"] <= budget_mb * 2**20
    # MLX's memory: the weights, the KV caches within their budget, and one step's activations
    # (8 rows of logits over a 201,088-token vocabulary and what the processors make of them)
    assert peak["mlx"] - mlx_before < budget_mb * 2**20 + 48 * 2**20, peak["mlx"] - mlx_before
    # the process: that, plus Python's own work for 16 requests at once (heap it keeps)
    assert peak["rss"] - before < budget_mb * 2**20 + 256 * 2**20
    assert server.process.poll() is None


# ---- a tokenizer.json with more entries than the vocabulary ---------------------------------

def test_structured_output_with_a_tokenizer_larger_than_the_vocabulary(start_server, cache_dir, tmp_path_factory):
    import json

    model = build_scripted_model(tmp_path_factory.mktemp("oversized"), SCRIPTS)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["added_tokens"].append({"id": 201090, "content": "<|beyond_the_vocabulary|>", "single_word": False,
                                      "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    server = start_server(["--model", str(model), "--trust-remote-code"])
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temperature": {"type": "integer"}},
              "required": ["city", "temperature"]}
    reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Weather as JSON"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}})
    assert reply.status_code == 200, reply.text
    assert json.loads(reply.json()["choices"][0]["message"]["content"]) == {"city": "Tokyo", "temperature": 21}
