"""The server's own tool sources, and each request's pick of them.

The toolbox is made once, with the app: the configured MCP servers ([[mcp_servers]]) start with the
server (in the background: the server answers before they are up; a request that wants one waits
for its start, up to `mcp_connect_timeout`) and stop with it; the built-in browser and python
([browser], [python]; builtin.py) are ready when configured, and python's interpreters stop with it.

    toolbox = Toolbox(settings); toolbox.start()
    toolset = await toolbox.select(asks, builtins)   # asks: ServerAsk per server a request named (None:
                                                     # the defaults); builtins: BuiltinAsk
    ... the turn runs ...
    await toolset.close()                    # servers a request named by URL are its own: stopped here

A request names servers by label (Responses' `server_label`, Anthropic's `name`); a label nobody
configured is a 400, and so is a URL unless `mcp_request_servers` lets requests name servers by URL
(off by default: a request must not make the server connect where it likes).
"""

import asyncio
from dataclasses import dataclass, field

from server.config import MCPServerEntry, check_namespace
from server.plumbing.errors import invalid_request
from server.tools.base import ToolError
from server.tools.builtin import Builtins
from server.tools.toolset import EMPTY, Listing, Toolset

BUILTIN_NAMES = {"browser": "the browser (browser_tool)", "python": "python (python_tool)"}


@dataclass(frozen=True)
class ServerAsk:
    """One MCP server a request named, and what of it."""

    label: str
    allowed_tools: tuple[str, ...] | None = None  # None: all the server offers
    denied_tools: tuple[str, ...] = ()
    url: str | None = None  # a server the request names by URL (refused unless mcp_request_servers)
    headers: dict = field(default_factory=dict, hash=False)  # for a server named by URL
    param: str = "tools"  # where the request named it, for errors


@dataclass(frozen=True)
class BuiltinAsk:
    """The built-in tools a request turned on, and the name of its conversation (python's interpreter)."""

    browser: str | None = None  # where the request asked for the browser ("tools[0]"), for errors; None: not asked
    python: str | None = None
    conversation: str = ""  # names the conversation: the same name, the same interpreter (builtin.py)
    quiet: tuple[str, ...] = ()  # built-ins left out, without an error, where the server doesn't offer them
    defaults: bool = False  # the request did not say (chat completions): those on by default are on

    def asked(self) -> list[tuple[str, str]]:
        """(built-in, param) of each one asked for."""
        return [(name, param) for name, param in (("browser", self.browser), ("python", self.python)) if param]


NO_BUILTINS = BuiltinAsk()


def mcp_server(entry: MCPServerEntry, settings, from_request: bool = False):
    """An MCP server's source. The `mcp` SDK takes ~1.5 s to import: only servers that use it pay that."""
    from server.tools.mcp import MCPServer

    return MCPServer(entry, settings.mcp_connect_timeout, from_request=from_request)


class Toolbox:
    def __init__(self, settings):
        self.settings = settings
        self.servers = {entry.name: mcp_server(entry, settings) for entry in settings.mcp_servers}
        self.builtins = Builtins(settings)

    def start(self) -> None:
        for server in self.servers.values():
            server.start()

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers.values()), self.builtins.close())

    def offers(self, name: str) -> bool:
        """Whether the built-in `name` ("browser", "python") is configured and usable."""
        return getattr(self.builtins, name) is not None

    def default_builtins(self, conversation: str = "") -> BuiltinAsk:
        """The built-ins on for a request that doesn't say (chat completions): browser_default, python_default."""
        settings = self.settings
        return BuiltinAsk(browser="builtin_tools" if settings.browser_default else None,
                          python="builtin_tools" if settings.python_default else None,
                          conversation=conversation, quiet=("browser", "python"))

    def describe(self) -> list[dict]:
        return [server.describe() for server in self.servers.values()]

    async def select(self, asks: tuple[ServerAsk, ...] | None, builtins: BuiltinAsk = NO_BUILTINS) -> Toolset:
        """The request's toolset. `asks` None: the servers configured with `default = true`."""
        if asks is None:
            asks = tuple(ServerAsk(name) for name, server in self.servers.items() if server.entry.default)
        built_in = await self._builtins(builtins)
        if not asks and not built_in:
            return EMPTY
        sources, owned, seen = [], [], set()
        for ask in asks:
            if ask.label in seen:
                raise invalid_request(f"{ask.param}: the MCP server {ask.label!r} is named twice", param=ask.param)
            seen.add(ask.label)
            source = self._configured(ask)
            if source is None:
                source = self._from_request(ask)
                owned.append(source)
            sources.append((source, ask))
        try:
            listings = await asyncio.gather(*(_listing(source, ask) for source, ask in sources))
        except BaseException:
            for source in owned:
                await source.stop()
            raise
        return Toolset(built_in + list(listings), owned)

    async def _builtins(self, ask: BuiltinAsk) -> list[Listing]:
        """Listings of the built-ins the request asked for; 400 for one the server doesn't offer
        (unless it may be left out quietly)."""
        listings = []
        for name, param in ask.asked():
            if not self.offers(name):
                if name in ask.quiet:
                    continue
                raise invalid_request(
                    f"{param}: this server does not run {BUILTIN_NAMES[name]}: it is off in its settings, or "
                    "could not start (its log says why; docs/builtin-tools.md)", param=param,
                    code="builtin_tool_unavailable")
            source = (self.builtins.browser_source() if name == "browser"
                      else self.builtins.python_source(ask.conversation))
            listings.append(Listing(source, await source.list_tools()))
        return listings

    def _configured(self, ask: ServerAsk):
        server = self.servers.get(ask.label)
        if server is not None and (ask.url is None or ask.url == server.entry.url):
            return server
        if ask.url is None:
            known = ", ".join(sorted(self.servers)) or "none is configured"
            raise invalid_request(f"{ask.param}: no MCP server named {ask.label!r} is configured on this server "
                                  f"(configured: {known})", param=ask.param, code="unknown_mcp_server")
        return None

    def _from_request(self, ask: ServerAsk):
        """A server the request names by URL: its own connection, for this request alone."""
        if not self.settings.mcp_request_servers:
            raise invalid_request(
                f"{ask.param}: this server does not connect to MCP servers that a request names by URL; use one of "
                f"its configured servers by label (GET /v1/mcp/servers lists them), or set mcp_request_servers",
                param=ask.param, code="mcp_server_url_not_allowed")
        problem = check_namespace(ask.label)
        if problem is not None or ask.label in self.servers:
            why = problem or "a configured server has that name"
            raise invalid_request(f"{ask.param}: the MCP server label {why}", param=ask.param)
        try:
            entry = MCPServerEntry(name=ask.label, url=ask.url, headers=dict(ask.headers))
        except ValueError as e:
            raise invalid_request(f"{ask.param}: {e}", param=ask.param) from None
        server = mcp_server(entry, self.settings, from_request=True)
        server.start()
        return server


async def _listing(source, ask: ServerAsk) -> Listing:
    try:
        tools = await source.list_tools()
    except ToolError as e:
        return Listing(source, error=str(e))
    tools = [t for t in tools if (ask.allowed_tools is None or t.name in ask.allowed_tools)
             and t.name not in ask.denied_tools]
    return Listing(source, tools)
