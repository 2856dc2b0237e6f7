"""POST /v1/messages (Anthropic's Messages API, stream and non-stream) and POST /v1/messages/count_tokens.

A translation over the turn pipeline every API shares: the request becomes a harmony Prompt and
the turn's options (prompt.py); the turn's events become content blocks and stream events
(output.py). Errors on these paths are Anthropic's shape (errors.py, registered by the app).
Claude Code sends `?beta=true` and `anthropic-beta` headers: both are accepted and ignored.
"""

import json
import logging
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server.api.messages.errors import error_event
from server.api.messages.output import ContentBuilder, stop_reason, usage
from server.api.messages.prompt import translate
from server.api.messages.schema import CountTokensRequest, MessagesRequest
from server.api.server_tools import resolve_turn
from server.registry.lease import facts, serving
from server.turn.pipeline import Turn, open_turns, render, with_heartbeat
from server.turn.resolve import resolve
from server.turn.run import TurnEnd

log = logging.getLogger("swallow.messages")
router = APIRouter()
PING_SECONDS = 5.0  # a ping while nothing else is sent (a long prompt being read)


def _sse(event: dict) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, request: Request):
    state = await serving(request, body.model, body.keep_alive)
    return await reply(state, body, request)


async def reply(state, body: MessagesRequest, request):
    """The message, streamed or not: the route's, and a batch line's (Message Batches,
    batches.py; not streamed, `request` then api/batch_endpoints.py's stand-in for one)."""
    resolved = await resolve_turn(request, translate(body), state.settings)
    (turn,) = await open_turns(state, resolved)
    message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
               "model": state.model_id}
    builder = ContentBuilder(resolved.tools.names)
    if body.stream:
        return StreamingResponse(_stream(turn, message, builder), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    events, end = await turn.collect(request)
    turn.raise_for(end)
    for event in events:
        builder.feed(event)
    builder.finish()
    return {**message, "content": builder.blocks, "stop_reason": stop_reason(end),
            "stop_sequence": end.stop_string, "usage": usage(end, turn.prompt_tokens, builder.server_tool_use),
            **turn.fields()}


async def _stream(turn: Turn, message: dict, builder: ContentBuilder):
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": usage(None, turn.prompt_tokens)}
    yield _sse({"type": "message_start", "message": start})
    yield _sse({"type": "ping"})
    try:
        async for event in with_heartbeat(turn.events, PING_SECONDS):  # closed by a TurnEnd, always
            if event is None:
                yield _sse({"type": "ping"})
            elif isinstance(event, TurnEnd):
                end = event
            else:
                for out in builder.feed(event):
                    yield _sse(out)
    finally:
        turn.cancel()  # when the client left: free its place in the batch now
    problem = turn.failure(end)
    if problem is not None:  # a failed generation, or structured output that can't be given
        yield _sse(error_event(problem.status, problem.message))
        return
    for out in builder.finish():
        yield _sse(out)
    yield _sse({"type": "message_delta", "delta": {"stop_reason": stop_reason(end), "stop_sequence": end.stop_string},
                "usage": usage(end, turn.prompt_tokens, builder.server_tool_use), **turn.fields()})
    yield _sse({"type": "message_stop"})


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request):
    """The prompt's tokens exactly as /v1/messages would render it."""
    state = facts(request, body.model)
    turn = translate(body)
    wants_tools = turn.servers or turn.builtins.asked()
    resolved = await resolve_turn(request, turn, state.settings) if wants_tools else resolve(turn, state.settings)
    return {"input_tokens": len(render(state, resolved).tokens)}
