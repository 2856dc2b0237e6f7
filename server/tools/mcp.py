"""MCP servers as a source of tools, through the official `mcp` SDK (its `Client`; no protocol here).

One `MCPServer` per configured server ([[mcp_servers]] in config.toml), started with swallow-server:
a background task on the event loop owns the SDK's client (its context managers hold anyio task
groups, which must be entered and left by one task), lists the server's tools, and restarts the
server when it dies: at once when a call finds the connection closed, within CHECK_EVERY seconds
when it dies idle (its tools are listed again then: that also picks up a changed list), after a
failed start with a backoff of 1, 2, 4 ... 30 s.
Requests use the client from their own tasks; a request that cancels its call (the client left, the
call's time ran out) makes the SDK tell the server that the call is cancelled.

    server = MCPServer(entry, connect_timeout=30)
    server.start()                              # on the event loop
    await server.list_tools()                   # waits for the start (connect_timeout); ToolError
    await server.call("read_text_file", '{"path": "notes.txt"}', limits)   # text, or ToolError
    await server.stop()

stdio servers get the SDK's short list of environment variables (HOME, PATH, USER, ...) and the
entry's `env`, not the whole environment of swallow-server (its API key stays its own).
"""

import asyncio
import json
import logging
from contextlib import AsyncExitStack, asynccontextmanager

import httpx2
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED, Implementation

from server.config import MCPServerEntry
from server.plumbing import metrics
from server.tools.base import CallLimits, ToolError, ToolSpec, parse_arguments

log = logging.getLogger("swallow.tools")
logging.getLogger("httpx2").setLevel(logging.WARNING)  # the SDK's HTTP client logs every request at INFO

CHECK_EVERY = 15.0  # seconds between listings of an idle connection's tools (MCP's ping is gone since 2026-07-28)
CHECK_TIMEOUT = 10.0
MAX_BACKOFF = 30.0
CLIENT_INFO = Implementation(name="swallow-server", version="0.1.0")


class MCPServer:
    kind = "mcp"

    def __init__(self, entry: MCPServerEntry, connect_timeout: float, from_request: bool = False):
        self.entry = entry
        self.namespace = self.label = entry.name
        self.description = entry.description or f"Tools of the MCP server {entry.name}."
        self.connect_timeout = connect_timeout
        # its label in the metrics: servers that requests name by URL are counted together
        self.counted_as = "(request)" if from_request else entry.name
        self.from_request = from_request
        self.state = "stopped"  # starting, ready, failed, stopped
        self.error: str | None = None  # why it is not ready, after a failed start
        self.restarts = 0
        self._client: Client | None = None
        self._tools: list[ToolSpec] = []
        self._settled = asyncio.Event()  # set while ready or failed: nothing to wait for
        self._broken = asyncio.Event()  # the connection is gone (or the server is stopping): restart it
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._retry_at = 0.0

    # ---- lifetime ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self.state = "starting"
            self._task = asyncio.create_task(self._run(), name=f"mcp-server-{self.label}")

    async def stop(self) -> None:
        self._stopping = True
        self._broken.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
        self._set_state("stopped")

    async def _run(self) -> None:
        backoff = 1.0
        while not self._stopping:
            self._broken.clear()
            self._set_state("starting")
            healthy = False
            try:
                async with AsyncExitStack() as stack:
                    async with asyncio.timeout(self.connect_timeout):
                        client = await stack.enter_async_context(self._connect())
                        tools = await self._listed(client)
                    self._client, self._tools, self.error = client, tools, None
                    self._set_state("ready")
                    healthy = True
                    log.info("MCP server %s: ready, %d tools", self.label, len(tools))
                    await self._watch(client)
            except Exception as e:  # a start that failed, or a connection that broke: start again
                self.error = describe(e)
                if not self._stopping:
                    log.warning("MCP server %s: %s", self.label, self.error)
            finally:
                self._client = None
            if self._stopping:
                break
            self.restarts += 1
            metrics.MCP_SERVER_RESTARTS.labels(self.counted_as).inc()
            if healthy:  # it ran, then died: start it again at once
                backoff = 1.0
                continue
            self.error = self.error or "it did not start"
            self._retry_at = asyncio.get_running_loop().time() + backoff
            self._set_state("failed")
            try:
                await asyncio.wait_for(self._broken.wait(), timeout=backoff)  # or stop() wakes it
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, MAX_BACKOFF)
        self._set_state("stopped")

    def _set_state(self, state: str) -> None:
        self.state = state
        if state in ("ready", "failed"):
            self._settled.set()
        else:
            self._settled.clear()
        if not self.from_request:
            metrics.MCP_SERVER_UP.labels(self.counted_as).set(1 if state == "ready" else 0)

    @asynccontextmanager
    async def _connect(self):
        entry = self.entry
        async with AsyncExitStack() as stack:
            if entry.url:
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(headers=entry.headers, timeout=httpx2.Timeout(30.0, read=300.0)))
                target = streamable_http_client(entry.url, http_client=http)
            else:
                target = StdioServerParameters(command=entry.command, args=entry.args, env=entry.env or None,
                                               cwd=entry.cwd or None)
            yield await stack.enter_async_context(Client(target, client_info=CLIENT_INFO))

    async def _listed(self, client: Client, cache_mode: str = "use") -> list[ToolSpec]:
        tools, cursor = [], None
        for _ in range(100):  # pages; a server that pages forever is cut short
            page = await client.list_tools(cursor=cursor, cache_mode=cache_mode)
            tools += [ToolSpec(t.name, t.description or "", t.input_schema or None,
                               t.annotations.model_dump(by_alias=True, exclude_none=True) if t.annotations else None)
                      for t in page.tools]
            cursor = page.next_cursor
            if not cursor:
                break
        allowed = self.entry.allowed_tools
        return [t for t in tools if allowed is None or t.name in allowed]

    async def _watch(self, client: Client) -> None:
        """Returns when the connection is gone (a call found it closed, or listing the tools
        failed) or the server is stopping."""
        while True:
            try:
                await asyncio.wait_for(self._broken.wait(), timeout=CHECK_EVERY)
                return
            except asyncio.TimeoutError:
                pass
            try:
                self._tools = await asyncio.wait_for(self._listed(client, "refresh"), timeout=CHECK_TIMEOUT)
            except Exception as e:
                self.error = f"it stopped answering ({describe(e)})"
                return

    # ---- as a ToolSource ---------------------------------------------------------------

    async def _ready(self) -> Client:
        """The connected client; waits for a start in progress (connect_timeout), ToolError when
        the server is not available."""
        if self.state == "stopped":
            raise ToolError(f"the MCP server {self.label} is not running")
        try:
            await asyncio.wait_for(self._settled.wait(), timeout=self.connect_timeout)
        except asyncio.TimeoutError:
            raise ToolError(f"the MCP server {self.label} did not start within {self.connect_timeout:g} s") from None
        if self.state != "ready" or self._client is None:
            wait = max(0.0, self._retry_at - asyncio.get_running_loop().time())
            raise ToolError(f"the MCP server {self.label} is not available ({self.error}); "
                            f"it is tried again in {wait:.0f} s")
        return self._client

    async def list_tools(self) -> list[ToolSpec]:
        await self._ready()
        return list(self._tools)

    async def call(self, name: str, arguments: str, limits: CallLimits) -> str:
        args = parse_arguments(arguments)
        client = await self._ready()
        if name not in {t.name for t in self._tools}:
            raise ToolError(f"the MCP server {self.label} offers no tool {name!r} here")
        try:
            result = await client.call_tool(name, args)
        except MCPError as e:
            if e.error.code == CONNECTION_CLOSED:
                self._broken.set()
                raise ToolError(f"the MCP server {self.label} went away during the call; it is being "
                                "restarted") from None
            raise ToolError(f"the MCP server {self.label} answered with an error: {e.error.message}") from None
        except (OSError, httpx2.HTTPError) as e:
            self._broken.set()
            raise ToolError(f"the connection to the MCP server {self.label} failed: {describe(e)}") from None
        text = result_text(result, limits.max_bytes)
        if result.is_error:
            raise ToolError(text or "the tool reported an error", from_tool=True)
        return text

    def describe(self) -> dict:
        """What GET /v1/mcp/servers shows of it."""
        entry = self.entry
        return {"name": self.label, "transport": "streamable_http" if entry.url else "stdio",
                "state": self.state, "error": self.error if self.state != "ready" else None,
                "restarts": self.restarts, "default": entry.default,
                "tools": [{"name": t.name, "description": t.description, "input_schema": t.parameters or {}}
                          for t in self._tools]}


def result_text(result, max_bytes: int) -> str:
    """A call's content as the text the model reads: text blocks as they are; what a text model
    can't read (images, audio, binary resources) as a note; structured content when there is
    nothing else. Stops gathering once past `max_bytes` (the loop cuts it to size)."""
    parts, size = [], 0
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            text = block.text
        elif kind == "resource":
            resource = block.resource
            text = getattr(resource, "text", None)
            if text is None:
                text = f"[binary resource {resource.uri} omitted: this model reads text only]"
        elif kind == "resource_link":
            text = f"[resource {block.name}: {block.uri}]"
        else:
            text = f"[{kind} ({getattr(block, 'mime_type', '') or 'unknown type'}) omitted: this model reads text only]"
        parts.append(text)
        size += len(text)
        if size > max_bytes:
            break
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def describe(error: BaseException) -> str:
    """A failure in a few words (an anyio ExceptionGroup: its first error)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, MCPError):
        return error.error.message
    if isinstance(error, asyncio.TimeoutError):
        return "it did not answer in time"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
