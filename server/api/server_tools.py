"""Tools the server runs, as the routes need them: a request's pick of them selected before its
turn is resolved, and GET /v1/mcp/servers.

    resolved = await resolve_turn(request, translate(body), state.settings)

`resolve_turn` waits for the MCP servers the request named (their start, their tool lists; see
server/tools/toolbox.py) and resolves the turn with them; servers the request named by URL (when
allowed) are stopped once its response has been sent.
"""

import asyncio

from fastapi import APIRouter, Request

from server.registry.lease import RELEASES
from server.turn.request import TurnRequest
from server.turn.resolve import ResolvedTurn, resolve

router = APIRouter()
_closing: set[asyncio.Task] = set()  # stops of request-named servers under way (a task needs a reference)


async def resolve_turn(request: Request, turn: TurnRequest, settings) -> ResolvedTurn:
    toolset = await request.app.state.toolbox.select(turn.servers)
    if toolset.owns_sources:
        def close() -> None:
            task = asyncio.ensure_future(toolset.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)

        request.scope.setdefault("state", {}).setdefault(RELEASES, []).append(close)
    return resolve(turn, settings, toolset)


@router.get("/v1/mcp/servers")
async def list_mcp_servers(request: Request):
    """The configured MCP servers: their state and the tools they offer."""
    return {"object": "list", "data": request.app.state.toolbox.describe()}
