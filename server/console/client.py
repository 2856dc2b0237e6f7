"""The HTTP side of `swallow-server generate` and `swallow-server chat`.

Both commands talk to a server over `/v1/chat/completions` with streaming, exactly as any
OpenAI client does. When nothing listens at --url (and the URL is this machine, or --model was
given) they start the server in this process instead, on a free 127.0.0.1 port with a random API
key, and talk to that one over HTTP the same way.
"""

import argparse
import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from server.console.messages import say

DEFAULT_URL = "http://127.0.0.1:8000"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"}


class ClientError(Exception):
    """A failure to show the user as one line (no traceback)."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server", "the server to talk to; when none listens at --url, "
                                      "the model is loaded in this process")
    group.add_argument("--url", default=DEFAULT_URL, help=f"the server's address (default {DEFAULT_URL})")
    group.add_argument("--api-key", help="the server's API key (default: $SWALLOW_API_KEY)")
    group.add_argument("--model", help="for the in-process fallback: the model, as for serving "
                       "(a local MLX directory, a Hugging Face repo id, or 'demo'; default: the settings')")
    group.add_argument("--config", help="for the in-process fallback: a TOML settings file")
    group.add_argument("--trust-remote-code", action="store_true", default=None,
                       help="for the in-process fallback: allow a model directory's own architecture file")
    group.add_argument("--context-length", type=int, help="for the in-process fallback: context size in tokens")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--effort", choices=["low", "medium", "high"],
                        help="reasoning effort (default: the server's, medium unless configured)")
    parser.add_argument("--max-tokens", type=int, help="most tokens in a reply, reasoning included")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    parser.add_argument("--system", help="instructions for the model (sent as the system message)")


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_dict(cls, usage: dict) -> "Usage":
        return cls(
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            reasoning_tokens=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
            cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        )


@dataclass
class Reply:
    """What a streamed reply has delivered so far."""
    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    started: float = field(default_factory=time.monotonic)
    reasoning_seconds: float | None = None  # from the start until the answer began
    seconds: float = 0.0

    def usage_line(self) -> str:
        line = say("usage_seconds", seconds=self.seconds)
        if self.usage is not None:
            u = self.usage
            rate = u.completion_tokens / self.seconds if self.seconds > 0 else 0.0
            line = say("usage_line", prompt=u.prompt_tokens, cached=u.cached_tokens, completion=u.completion_tokens,
                       reasoning=u.reasoning_tokens, seconds=self.seconds, rate=rate)
        if self.finish_reason and self.finish_reason != "stop":
            line += say("finish", reason=self.finish_reason)
        return line


def request_body(messages: list[dict], *, effort=None, max_tokens=None, temperature=None,
                 json_schema: dict | None = None) -> dict:
    body: dict = {"model": "swallow", "messages": messages, "stream": True,
                  "stream_options": {"include_usage": True}}
    if effort:
        body["reasoning_effort"] = effort
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    if json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": json_schema}
    return body


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        message = error.get("message") or response.text
    except (ValueError, AttributeError):
        message = response.text
    return say("server_answered", status=response.status_code, message=message).strip()


class Client:
    def __init__(self, url: str, api_key: str | None = None):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers,
                                 timeout=httpx.Timeout(10.0, read=None))

    def close(self) -> None:
        self.http.close()

    def health(self, timeout: float = 3.0) -> dict:
        return self.http.get("/health", timeout=timeout).json()

    def stream(self, body: dict, reply: Reply, on_reasoning=None, on_content=None) -> Reply:
        """POST a streaming chat completion and fill `reply` as the deltas come, calling
        on_reasoning(text) / on_content(text) for each. Leaving early (an exception such as
        KeyboardInterrupt) closes the response, and the server then cancels the generation."""
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise ClientError(_error_message(response))
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise ClientError(say("server_reported", message=chunk["error"].get("message")))
                    if chunk.get("usage"):
                        reply.usage = Usage.from_dict(chunk["usage"])
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                        if reasoning:
                            reply.reasoning += reasoning
                            if on_reasoning:
                                on_reasoning(reasoning)
                        if delta.get("content"):
                            if reply.reasoning_seconds is None:
                                reply.reasoning_seconds = time.monotonic() - reply.started
                            reply.content += delta["content"]
                            if on_content:
                                on_content(delta["content"])
                        if choice.get("finish_reason"):
                            reply.finish_reason = choice["finish_reason"]
        except httpx.HTTPError as e:
            raise ClientError(say("lost_server", url=self.url, error=e)) from e
        finally:
            reply.seconds = time.monotonic() - reply.started
        return reply


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """The server, built in this process: settings, its models, create_app, and uvicorn in a
    background thread on a free 127.0.0.1 port with a random API key."""

    def __init__(self, args: argparse.Namespace):
        from models.errors import ModelError
        from server.config import ConfigError, load_settings

        self.api_key = secrets.token_urlsafe(24)
        self.port = _free_port()
        overrides = {"model": args.model, "trust_remote_code": args.trust_remote_code,
                     "context_length": args.context_length, "host": "127.0.0.1", "port": self.port,
                     "api_key": self.api_key, "log_level": "warning"}
        try:
            settings = load_settings(args.config, overrides)
        except ConfigError as e:
            raise ClientError(str(e)) from e
        if not getattr(args, "quiet", False):
            print(f"swallow-server: {say('loading_here', url=args.url, model=settings.model)}",
                  file=sys.stderr, flush=True)

        from server.registry.setup import open_registry

        try:
            self.registry = open_registry(settings, [args.model] if args.model else None)
        except (ModelError, ConfigError) as e:
            raise ClientError(str(e)) from e

        import uvicorn

        from server.app import create_app

        app = create_app(settings, self.registry)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="swallow-local-server", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ClientError(say("not_started"))
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.registry.stop()


class Connection:
    """`with Connection(args) as client:` a Client for the server at args.url, or for one
    started in this process when nothing listens there."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.local: LocalServer | None = None
        self.client: Client | None = None

    def __enter__(self) -> Client:
        args = self.args
        api_key = args.api_key or os.environ.get("SWALLOW_API_KEY") or None
        if _listening(args.url):
            self.client = Client(args.url, api_key)
            return self.client
        host = urlsplit(args.url).hostname or ""
        if args.model is None and host not in LOCAL_HOSTS:
            raise ClientError(say("no_server", url=args.url))
        self.local = LocalServer(args)
        self.client = Client(self.local.url, self.local.api_key)
        return self.client

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self.local is not None:
            self.local.stop()
