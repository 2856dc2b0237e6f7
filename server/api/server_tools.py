"""Tools the server runs, as the routes need them: a request's pick of them selected before its
turn is resolved, and GET /v1/mcp/servers.

    resolved = await resolve_turn(request, translate(body), state.settings)

`resolve_turn` waits for the MCP servers the request named (their start, their tool lists; see
server/tools/toolbox.py), picks the built-ins it turned on, and resolves the turn with them; servers
the request named by URL (when allowed) are stopped once its response has been sent.

python keeps an interpreter per conversation (server/tools/builtin.py). A request names its
conversation (Responses: the container; chat completions and Messages: `metadata.conversation_id`,
or Messages' `metadata.user_id`); one that doesn't is named by its opening: the instructions and
the first user message, which every later request of the conversation repeats.
"""

import asyncio
from dataclasses import replace

from fastapi import APIRouter, Request
from openai_harmony import Role

from server.registry.lease import RELEASES
from server.turn.request import TurnRequest
from server.turn.resolve import ResolvedTurn, resolve

router = APIRouter()
_closing: set[asyncio.Task] = set()  # stops of request-named servers under way (a task needs a reference)


async def resolve_turn(request: Request, turn: TurnRequest, settings) -> ResolvedTurn:
    toolbox = request.app.state.toolbox
    builtins = toolbox.default_builtins(turn.builtins.conversation) if turn.builtins.defaults else turn.builtins
    if builtins.python and not builtins.conversation:
        builtins = replace(builtins, conversation=opening(turn))
    toolset = await toolbox.select(turn.servers, builtins)
    if toolset.owns_sources:
        def close() -> None:
            task = asyncio.ensure_future(toolset.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)

        request.scope.setdefault("state", {}).setdefault(RELEASES, []).append(close)
    return resolve(turn, settings, toolset)


def opening(turn: TurnRequest) -> str:
    """The name of a conversation that has no other: its instructions and its first user message."""
    first = next((m for m in turn.messages if m.author.role == Role.USER), None)
    text = "".join(getattr(c, "text", "") for c in first.content) if first is not None else ""
    return f"opening\0{turn.instructions}\0{text}"


def named(conversation_id: str) -> str:
    """The name of a conversation the client named."""
    return f"id\0{conversation_id}"


@router.get("/v1/mcp/servers")
async def list_mcp_servers(request: Request):
    """The configured MCP servers: their state and the tools they offer."""
    return {"object": "list", "data": request.app.state.toolbox.describe()}
