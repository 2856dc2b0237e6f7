"""Streaming HTTP clients: what one request saw, and N of them at once.

swallow-server is asked on /v1/chat/completions (its harmony rendering of the messages);
mlx_lm.server on /v1/completions with the same prompt as text. Both stream, greedy, with a fixed
max_tokens, and report usage in a last chunk (stream_options.include_usage).

Times are taken where a user would see them: the first chunk with text of the reply's first
message body. swallow-server never shows the harmony header (`<|channel|>analysis<|message|>`,
three tokens): its first text is the 4th token. mlx_lm.server's completions stream shows the
header as text; its first body text is the first chunk after `<|message|>`. The decode rate of a
stream counts the tokens after that first visible one over the time to the last chunk.
"""

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx

HEADER_TOKENS = 3  # <|channel|> analysis <|message|>, before the first body token


@dataclass
class StreamResult:
    sent: float  # perf_counter when the request went out
    first_body: float | None = None  # perf_counter of the first visible body text
    last: float | None = None  # perf_counter of the last chunk with text or a finish
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int | None = None
    reasoning: list = field(default_factory=list)
    content: list = field(default_factory=list)
    text: list = field(default_factory=list)  # mlx_lm.server: the raw text, header included
    tokens_before_body: int = 0  # tokens generated before (not including) the first visible one
    chunks: int = 0  # chunks with visible text
    retries: int = 0  # connections reset before any answer, and retried
    times: list = field(default_factory=list)  # perf_counter of each chunk with text
    tool_calls: list = field(default_factory=list)  # [name, arguments] of each call streamed

    @property
    def ttft_s(self) -> float:
        return self.first_body - self.sent

    @property
    def decode_tokens(self) -> int:
        return self.completion_tokens - self.tokens_before_body - 1

    @property
    def decode_tps(self) -> float:
        span = self.last - self.first_body
        if self.chunks < 3 or span <= 0 or self.decode_tokens <= 0:  # text came in one burst: no rate
            return float("nan")
        return self.decode_tokens / span


async def _events(response: httpx.Response):
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            data = line[6:]
            if data.strip() == "[DONE]":
                return
            yield json.loads(data)


CONNECT_RETRIES = 5  # mlx_lm.server listens with a backlog of 5: a burst of 16 connects can be reset


async def _post_events(client: httpx.AsyncClient, url: str, body: dict, name: str, result: StreamResult):
    """The SSE events of a streamed POST. A connection reset before any answer is retried, as
    a client would (counted in result.retries); the request's clock keeps running."""
    for attempt in range(CONNECT_RETRIES + 1):
        try:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"{name} answered {response.status_code}: {(await response.aread())[:300]!r}")
                async for event in _events(response):
                    yield event
                return
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            if result.chunks or result.completion_tokens or attempt == CONNECT_RETRIES:
                raise
            result.retries += 1
            await asyncio.sleep(0.01 * (attempt + 1))


async def chat_stream(client: httpx.AsyncClient, url: str, messages: list, max_tokens: int,
                      tools: list | None = None) -> StreamResult:
    """swallow-server: /v1/chat/completions."""
    body = {"messages": messages, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": max_tokens, "temperature": 0}
    if tools:
        body["tools"] = tools
    result = StreamResult(sent=time.perf_counter())
    async for event in _post_events(client, f"{url}/v1/chat/completions", body, "swallow-server", result):
        now = time.perf_counter()
        if "error" in event:
            raise RuntimeError(f"swallow-server stream error: {event['error']}")
        if event.get("usage"):
            _usage(result, event["usage"])
        for choice in event.get("choices", []):
            delta = choice.get("delta", {})
            reasoning, content = delta.get("reasoning_content"), delta.get("content")
            if reasoning or content:
                if result.first_body is None:
                    result.first_body = now
                    result.tokens_before_body = HEADER_TOKENS if reasoning else 0
                result.last = now
                result.chunks += 1
                result.times.append(now)
                (result.reasoning if reasoning else result.content).append(reasoning or content)
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                if function.get("name"):
                    result.tool_calls.append([function["name"], ""])
                if function.get("arguments") and result.tool_calls:
                    result.tool_calls[-1][1] += function["arguments"]
            if choice.get("finish_reason"):
                result.last = now
    return _checked(result, "swallow-server")


async def completion_stream(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> StreamResult:
    """mlx_lm.server: /v1/completions with the rendered prompt text."""
    body = {"prompt": prompt, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": max_tokens, "temperature": 0}
    result = StreamResult(sent=time.perf_counter())
    seen = ""
    async for event in _post_events(client, f"{url}/v1/completions", body, "mlx_lm.server", result):
        now = time.perf_counter()
        if event.get("usage"):
            _usage(result, event["usage"])
        for choice in event.get("choices", []):
            text = choice.get("text") or ""
            if text:
                seen += text
                result.text.append(text)
                result.last = now
                result.chunks += 1
                result.times.append(now)
                if result.first_body is None:
                    _, mark, body_text = seen.partition("<|message|>")
                    if (mark and body_text) or not seen.startswith("<|channel|>"):
                        result.first_body = now
                        result.tokens_before_body = HEADER_TOKENS if mark else 0
            if choice.get("finish_reason"):
                result.last = now
    return _checked(result, "mlx_lm.server")


def _usage(result: StreamResult, usage: dict) -> None:
    result.completion_tokens = usage.get("completion_tokens", 0)
    result.prompt_tokens = usage.get("prompt_tokens", 0)
    details = usage.get("prompt_tokens_details") or {}
    result.cached_tokens = details.get("cached_tokens")


def _checked(result: StreamResult, name: str) -> StreamResult:
    if not result.completion_tokens or result.last is None:
        raise RuntimeError(f"{name}: the stream ended without a finish or usage")
    if result.first_body is None:  # nothing visible (a random model's reply held as a header)
        result.first_body, result.tokens_before_body = result.last, result.completion_tokens - 1
    return result


@dataclass
class Aggregate:
    streams: int
    aggregate_tps: float
    completion_tokens: int
    wall_s: float
    results: list
    steady_tps: float = float("nan")


def steady_rate(streams: list) -> float:
    """Tokens per second while every stream is decoding: over [the latest first token, the
    earliest last one], counting each stream's tokens (times) inside it. Leaves out the ramps
    (requests arriving, late prefills, early finishers) that the aggregate rate includes."""
    start, end = max(t[0] for t in streams), min(t[-1] for t in streams)
    if end - start <= 0:
        return float("nan")
    return sum(sum(1 for x in t if start < x <= end) for t in streams) / (end - start)


async def _gather(make_requests) -> list:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        return await asyncio.gather(*(request(client) for request in make_requests))


def run_streams(make_requests: list) -> Aggregate:
    """Runs the requests at once; aggregate rate = the tokens after each stream's first visible
    one, summed, over the time from the earliest first visible text to the latest last chunk."""
    start = time.perf_counter()
    results = asyncio.run(_gather(make_requests))
    window = max(r.last for r in results) - min(r.first_body for r in results)
    tokens = sum(r.decode_tokens for r in results)
    timed = window > 0 and all(r.chunks >= 3 for r in results)  # else some text came in one burst
    return Aggregate(len(results), tokens / window if timed else float("nan"),
                     sum(r.completion_tokens for r in results), max(r.last for r in results) - start, results,
                     steady_rate([r.times for r in results]) if timed else float("nan"))


def run_one(make_request) -> StreamResult:
    return run_streams([make_request]).results[0]
