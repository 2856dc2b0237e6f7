"""Limits, walk-aways, load, errors mid-stream, metrics, request ids and SIGTERM, on live servers.

`limited_server` runs a scripted model with two extra scripts (a reply that fails mid-generation
and a medium-length story) and small limits: one request generates, one waits, the rest get 429.
Its last test sends it SIGTERM, so keep that test last in this file.
"""

import asyncio
import json
import random
import signal
import socket
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.scripted import FAIL, build_scripted_model
from tests.scripts import JAPANESE_ANSWER, LONG_WORDS, SCRIPTS, STOP_ANSWER, final, thought

FAIL_BEFORE = "Some words before"
STORY = " ".join(f"tale{i}" for i in range(100))
EXTRA_SCRIPTS = {
    "Fail midway": thought("Thinking first.", f"{FAIL_BEFORE}{FAIL} never seen"),
    "Tell a medium story": final(STORY),
}
ESSAY = {"messages": [{"role": "user", "content": "Write a long essay"}], "stream": True, "max_tokens": 8000}
SHORT = {"messages": [{"role": "user", "content": "What is 2+2?"}]}


@pytest.fixture(scope="module")
def limited_server(start_server, cache_dir, tmp_path_factory):
    model = build_scripted_model(tmp_path_factory.mktemp("limited"), {**SCRIPTS, **EXTRA_SCRIPTS},
                                 context_length=4096)
    return start_server(
        ["--model", str(model), "--trust-remote-code", "--max-concurrency", "1", "--max-queue", "1"],
        # small prefill steps: a long prompt takes long enough to leave in the middle of it
        env={"SWALLOW_PREFILL_STEP_SIZE": "16", "SWALLOW_SHUTDOWN_TIMEOUT": "60"},
    )


# ---- helpers ----------------------------------------------------------------------------

def scrape(server) -> dict:
    """(name, labels) -> value, summed over the `model` label (this server serves one model)."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples: dict = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model")))
            samples[key] = samples.get(key, 0.0) + s.value
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def slots(server) -> tuple[float, float, float]:
    """(admission slots held, requests queued, sequences in the engine)."""
    m = scrape(server)
    return (metric(m, "swallow_requests_running"), metric(m, "swallow_requests_queued"),
            metric(m, "swallow_engine_sequences"))


def wait_idle(server, timeout: float = 5.0) -> float:
    start = time.monotonic()
    wait_for(lambda: slots(server) == (0, 0, 0), timeout, f"idle ({slots(server)})")
    return time.monotonic() - start


class RawRequest:
    """A request on a plain socket, so a test decides exactly when its client hangs up."""

    def __init__(self, server, body: dict, path: str = "/v1/chat/completions"):
        data = json.dumps(body).encode()
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        self.received = b""

    def read_until(self, marker: bytes, timeout: float = 30) -> bytes:
        self.sock.settimeout(timeout)
        while marker not in self.received:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.received += chunk
        return self.received

    def leave(self) -> None:
        self.sock.close()


def sse_events(lines) -> list:
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


# ---- admission ----------------------------------------------------------------------------

def test_past_the_slot_and_the_queue_is_429_at_once(limited_server):
    url = f"{limited_server.url}/v1/chat/completions"
    holder = RawRequest(limited_server, ESSAY)
    holder.read_until(b"data: ")
    waiter = RawRequest(limited_server, SHORT)
    wait_for(lambda: slots(limited_server)[:2] == (1, 1), 5, "one running, one queued")

    start = time.monotonic()
    busy = httpx.post(url, json=SHORT, headers={"X-Request-ID": "turned-away-1"}, timeout=30)
    assert time.monotonic() - start < 2
    assert busy.status_code == 429, busy.text
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.headers["x-request-id"] == "turned-away-1"
    error = busy.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "server_busy"
    with pytest.raises(openai.RateLimitError):
        limited_server.client().chat.completions.create(model="m", **SHORT)

    # the waiting client hangs up: its place in the queue is free at once
    waiter.leave()
    wait_for(lambda: slots(limited_server)[:2] == (1, 0), 3, "queue emptied")
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=httpx.post(url, json=SHORT, timeout=60)))
    thread.start()
    wait_for(lambda: slots(limited_server)[1] == 1, 5, "queued again")
    # the generating client hangs up: the waiting one gets the slot and its answer
    holder.leave()
    thread.join(60)
    assert result["r"].status_code == 200
    assert result["r"].json()["choices"][0]["message"]["content"] == JAPANESE_ANSWER
    wait_idle(limited_server)
    m = scrape(limited_server)
    assert metric(m, "swallow_http_requests_total", endpoint="/v1/chat/completions", method="POST", status="429") >= 2
    assert metric(m, "swallow_http_requests_total", endpoint="/v1/chat/completions", method="POST", status="499") >= 1


def engine_work(server) -> tuple[float, float]:
    """(generations the engine cancelled, tokens it generated, read or not), so far."""
    m = scrape(server)
    return metric(m, "swallow_engine_generations_total", reason="cancelled"), metric(m, "swallow_engine_tokens_total")


def test_leaving_while_decoding_cancels_the_generation(limited_server):
    cancelled, tokens = engine_work(limited_server)
    with httpx.stream("POST", f"{limited_server.url}/v1/chat/completions", json=ESSAY, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(10):
            next(lines)
        assert slots(limited_server) == (1, 0, 1)
    wait_idle(limited_server, 5)
    cancelled_after, tokens_after = engine_work(limited_server)
    assert cancelled_after == cancelled + 1  # the engine stopped it: no one was reading
    assert tokens_after - tokens < 1000  # of the ~4000 it would have written (3000 words, to the context's end)
    assert httpx.post(f"{limited_server.url}/v1/chat/completions", json=SHORT, timeout=30).status_code == 200


def test_leaving_while_prefilling_frees_the_slot_at_once(limited_server):
    # ~3000 prompt tokens in steps of 16: the prefill takes many engine steps
    words = " ".join(f"w{random.randrange(10**6)}" for _ in range(1000))
    body = {**ESSAY, "messages": [{"role": "user", "content": f"{words} Write a long essay"}], "max_tokens": 500}
    before = metric(scrape(limited_server), "swallow_completion_tokens_total")
    cancelled, tokens = engine_work(limited_server)
    request = RawRequest(limited_server, body)
    wait_for(lambda: slots(limited_server) == (1, 0, 1), 10, "in the engine")
    request.leave()
    wait_idle(limited_server, 5)
    generated = metric(scrape(limited_server), "swallow_completion_tokens_total") - before
    assert generated < 20, f"it got past the prefill and generated {generated} tokens before leaving"
    cancelled_after, tokens_after = engine_work(limited_server)
    assert cancelled_after == cancelled + 1 and tokens_after - tokens < 20  # stopped in its prefill


def test_leaving_before_the_first_byte_frees_the_slot_and_generates_nothing_more(limited_server):
    cancelled, tokens = engine_work(limited_server)
    for _ in range(3):
        RawRequest(limited_server, ESSAY).leave()
        RawRequest(limited_server, {**SHORT, "stream": False}).leave()
    wait_idle(limited_server, 5)
    cancelled_after, tokens_after = engine_work(limited_server)
    # each essay that reached the engine was cancelled there, long before its ~4000 tokens
    assert tokens_after - tokens < 1000
    assert cancelled_after - cancelled <= 6
    assert httpx.post(f"{limited_server.url}/v1/chat/completions", json=SHORT, timeout=30).status_code == 200


# ---- errors mid-stream -------------------------------------------------------------------

def test_error_after_streaming_began_ends_the_stream_cleanly(limited_server):
    url = f"{limited_server.url}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "Fail midway"}], "stream": True}
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        assert response.status_code == 200
        events = sse_events(list(response.iter_lines()))  # reads to the end: no broken connection
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "scripted failure" in error["message"]
    chunks = [json.loads(e) for e in events[:-2]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content and FAIL_BEFORE.startswith(content)  # what came before the failure, nothing after

    failed = httpx.post(url, json={**body, "stream": False}, timeout=60)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"

    # the server keeps serving
    reply = limited_server.client().chat.completions.create(model="m", **SHORT)
    assert reply.choices[0].message.content == JAPANESE_ANSWER
    wait_idle(limited_server)
    assert metric(scrape(limited_server), "swallow_turns_total", finish_reason="error") >= 2


def test_text_the_tokenizer_would_take_minutes_over_fails_alone(scripted_server):
    """400 KB of one letter is one tokenizer piece, which openai-harmony would take over a minute
    to read, holding the event loop (every stream would stall, /health too). It is refused at
    once, with a 400 in each API's own shape, while a stream beside it goes on to its end."""
    unbroken = [{"role": "user", "content": "a" * 400_000}]
    url = scripted_server.url
    body = {"messages": [{"role": "user", "content": "Write a long essay"}], "stream": True, "max_tokens": 150}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as essay:
        lines = essay.iter_lines()
        first = [next(lines) for _ in range(6)]
        refused = httpx.post(f"{url}/v1/chat/completions", json={"messages": unbroken}, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "unbroken_text"
        assert "400,000 bytes" in refused.json()["error"]["message"]
        anthropic = httpx.post(f"{url}/v1/messages", json={"max_tokens": 8, "messages": unbroken}, timeout=60)
        assert anthropic.status_code == 400 and anthropic.json()["error"]["type"] == "invalid_request_error"
        assert scripted_server.health()["status"] == "ok"
        events = sse_events(first + list(lines))
    chunks = [json.loads(e) for e in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert events[-1] == "[DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(content) > 100 and LONG_WORDS.startswith(content)


def test_a_server_bug_mid_stream_still_ends_the_stream():
    """The safety net under every endpoint: an exception the app lets out after a stream has
    begun becomes an error event and [DONE]; before any byte, a 500 error object."""
    from fastapi import FastAPI

    from server.plumbing.middleware import RequestLog

    async def broken(scope, receive, send):
        if scope["path"] == "/v1/stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        raise RuntimeError("a bug")

    async def call(path: str) -> list:
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"x-request-id", b"bug-1")]}
        await RequestLog(broken, api=FastAPI())(scope, receive, send)
        return sent

    streamed = asyncio.run(call("/v1/stream"))
    assert streamed[-1]["more_body"] is False
    events = sse_events(streamed[-1]["body"].decode().split("\n"))
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["type"] == "server_error"
    plain = asyncio.run(call("/v1/plain"))
    assert plain[0]["status"] == 500 and (b"x-request-id", b"bug-1") in plain[0]["headers"]
    assert json.loads(plain[1]["body"])["error"]["type"] == "server_error"


# ---- observability ------------------------------------------------------------------------

def test_metrics_count_requests_tokens_latency_and_cache(limited_server):
    client = limited_server.client()
    conversation = {"messages": [
        {"role": "system", "content": "You are terse. " * 40},
        {"role": "user", "content": "What is 2+2?"}]}
    before = scrape(limited_server)
    first = client.chat.completions.create(model="m", **conversation)
    second = client.chat.completions.create(model="m", **conversation)
    after = scrape(limited_server)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("swallow_http_requests_total", endpoint="/v1/chat/completions", method="POST", status="200") == 2
    assert delta("swallow_prompt_tokens_total") == first.usage.prompt_tokens + second.usage.prompt_tokens
    completion = first.usage.completion_tokens + second.usage.completion_tokens
    assert delta("swallow_completion_tokens_total") == completion
    assert delta("swallow_time_to_first_token_seconds_count") == 2
    assert delta("swallow_time_per_output_token_seconds_count") == completion - 2
    assert delta("swallow_time_to_first_token_seconds_sum") > 0
    assert delta("swallow_turns_total", finish_reason="stop") == 2
    # the second request starts from the prompt cache
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 0
    assert delta("swallow_prompt_cache_hits_total") >= 1
    assert delta("swallow_prompt_cache_reused_tokens_total") == (
        first.usage.prompt_tokens_details.cached_tokens + cached)
    for gauge in ("swallow_requests_running", "swallow_requests_queued", "swallow_engine_sequences",
                  "swallow_engine_waiting", "process_resident_memory_bytes"):
        assert (gauge, ()) in after, gauge
    assert ("swallow_http_request_duration_seconds_bucket",
            (("endpoint", "/v1/chat/completions"), ("le", "+Inf"))) in after


def test_request_id_is_honoured_returned_and_logged(limited_server):
    url = f"{limited_server.url}/v1/chat/completions"
    given = httpx.post(url, json=SHORT, headers={"X-Request-ID": "client-chosen-42"}, timeout=30)
    assert given.headers["x-request-id"] == "client-chosen-42"
    made = httpx.post(url, json=SHORT, timeout=30).headers["x-request-id"]
    assert len(made) == 32 and made != "client-chosen-42"
    odd = httpx.post(url, json=SHORT, headers={"X-Request-ID": "x" * 500}, timeout=30).headers["x-request-id"]
    assert odd != "x" * 500 and len(odd) == 32
    bad = httpx.post(url, content=b"{", headers={"X-Request-ID": "bad-json-7", "content-type": "application/json"})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "bad-json-7"
    with httpx.stream("POST", url, json={**SHORT, "stream": True}, headers={"X-Request-ID": "streamed-9"}) as r:
        assert r.headers["x-request-id"] == "streamed-9"
        list(r.iter_lines())
    assert httpx.get(f"{limited_server.url}/health", headers={"X-Request-ID": "health-1"}).headers["x-request-id"] == "health-1"

    def lines(request_id):
        return [line for line in limited_server.log().splitlines() if f"request_id={request_id}" in line]

    expected = (("client-chosen-42", 200), (made, 200), ("bad-json-7", 400), ("streamed-9", 200), ("health-1", 200))
    # a line is written once the response is complete, just after the client has it
    wait_for(lambda: all(lines(request_id) for request_id, _ in expected), 5, "every log line")
    for request_id, status in expected:
        found = lines(request_id)
        assert len(found) == 1, (request_id, found)
        assert "swallow.access" in found[0] and f'" {status} ' in found[0], found[0]
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in lines("client-chosen-42")[0]


# ---- load with walk-aways (the shared scripted server) -------------------------------------

LOAD_QUESTIONS = {
    "What is 2+2?": JAPANESE_ANSWER,
    "Stop test": STOP_ANSWER,
    "Reply without a header": "Just plain words, no header.",
    "Reply ending with end": "Done here.",
}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def load_round(url: str, clients: int, leavers: int) -> list[str]:
    """`clients` concurrent streaming clients; `leavers` of them walk away (some before the
    first byte, the others mid-answer). Returns the problems found."""
    problems = []
    questions = list(LOAD_QUESTIONS)
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def stays(i: int):
            question = questions[i % len(questions)]
            body = {"messages": [{"role": "user", "content": question}], "stream": True}
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    problems.append(f"client {i}: status {response.status_code}")
                    return
                events = sse_events([line async for line in response.aiter_lines()])
            if events[-1] != "[DONE]":
                problems.append(f"client {i}: no [DONE]")
            chunks = [json.loads(e) for e in events[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
            if text != LOAD_QUESTIONS[question]:
                problems.append(f"client {i} asked {question!r} and got {text[:80]!r}")

        async def leaves(i: int):
            body = {**ESSAY, "messages": [{"role": "user", "content": "Write a long essay"}]}
            if i % 2:
                try:  # hang up before the first byte (while queued or prefilling)
                    await asyncio.wait_for(http.post("/v1/chat/completions", json=body), timeout=0.05)
                except (asyncio.TimeoutError, httpx.TimeoutException):
                    pass
                return
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                seen = 0
                async for _ in response.aiter_lines():
                    seen += 1
                    if seen > 2 + i:  # mid-answer, at different points
                        break

        jobs = [stays(i) for i in range(clients - leavers)] + [leaves(i) for i in range(leavers)]
        random.shuffle(jobs)
        results = await asyncio.gather(*jobs, return_exceptions=True)
    problems += [f"client failed: {r!r}" for r in results if isinstance(r, BaseException)]
    return problems


def test_load_with_walk_aways_keeps_answers_apart_and_memory_steady(scripted_server):
    pid = scripted_server.process.pid
    deadline = time.monotonic() + 150
    sizes = []
    for round_number in range(3):
        cancelled, tokens = engine_work(scripted_server)
        problems = asyncio.run(load_round(scripted_server.url, clients=24, leavers=8))
        assert not problems, f"round {round_number}: {problems}"
        wait_for(lambda: scripted_server.health()["running"] == 0 and scrape(scripted_server)[
            ("swallow_requests_running", ())] == 0, 10, "idle after the round")
        cancelled_after, tokens_after = engine_work(scripted_server)
        # the 4 who left mid-answer were cancelled (and the others that got as far), and no essay
        # ran on unread: 16 short answers and a few dozen essay tokens, not 4 x ~4000
        assert cancelled_after - cancelled >= 4, f"round {round_number}"
        assert tokens_after - tokens < 4000, f"round {round_number}: {tokens_after - tokens} tokens generated"
        sizes.append(rss_bytes(pid))
        assert time.monotonic() < deadline, "the load test ran out of time"
    growth = sizes[-1] - sizes[0]
    assert growth < 100 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB over two rounds: {sizes}"


# ---- SIGTERM (keep last: it stops limited_server) -----------------------------------------

def test_sigterm_lets_the_stream_in_flight_finish_then_exits_0(limited_server):
    body = {"messages": [{"role": "user", "content": "Tell a medium story"}], "stream": True}
    with httpx.stream("POST", f"{limited_server.url}/v1/chat/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        first = [next(lines) for _ in range(3)]
        limited_server.process.send_signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", limited_server.port), timeout=1).close()
                return False
            except OSError:
                return True

        wait_for(refused, 10, "new connections refused after SIGTERM")
        events = sse_events(first + list(lines))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == STORY
    assert limited_server.process.wait(timeout=60) == 0
    log = limited_server.log()
    assert "engine stopped" in log
    assert "Traceback" not in log.split("Shutting down")[-1]
