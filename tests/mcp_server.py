"""A small MCP server written with the `mcp` SDK, for the tool-loop tests (tests/test_mcp.py).

    python tests/mcp_server.py stdio                       # spawned by swallow-server
    python tests/mcp_server.py http PORT                   # streamable HTTP at http://127.0.0.1:PORT/mcp

Its tools do what the tests need a tool to do: answer, fail, hang past a time limit, return far too
much, and take their own server down mid-call. `calls_in_progress` says how many calls of `hang`
are running; one that is cancelled (the client left, or its time limit passed) is counted, and
`cancelled_calls` says how many were.
"""

import asyncio
import os
import sys

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("swallow-test-tools")
CANCELLED = {"calls": 0}
RUNNING = {"calls": 0}


@server.tool()
def shout(text: str) -> str:
    """Return the text in capital letters."""
    return text.upper()


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with the reason given."""
    raise ToolError(f"it failed on purpose: {reason}")


@server.tool()
async def hang(seconds: float) -> str:
    """Wait this many seconds before answering."""
    RUNNING["calls"] += 1
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        CANCELLED["calls"] += 1
        raise
    finally:
        RUNNING["calls"] -= 1
    return f"waited {seconds} s"


@server.tool()
def calls_in_progress() -> str:
    """How many calls of `hang` are running now."""
    return str(RUNNING["calls"])


@server.tool()
def cancelled_calls() -> str:
    """How many calls of `hang` were cancelled before they answered."""
    return str(CANCELLED["calls"])


@server.tool()
def flood(megabytes: int) -> str:
    """Return this many megabytes of text."""
    return "x" * (megabytes * 2**20)


@server.tool()
def crash() -> str:
    """Take this MCP server down in the middle of the call."""
    sys.stdout.flush()
    os._exit(3)


@server.tool()
def pid() -> str:
    """The process id of this MCP server (a restarted one has another)."""
    return str(os.getpid())


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
