"""POST /v1/responses (stream and non-stream), GET and DELETE /v1/responses/{id}, and
GET /v1/responses/{id}/input_items.

A translation over the turn pipeline (server/turn/pipeline.py) that every API shares: input
items become a harmony Prompt and the turn's options (prompt.py), and OutputBuilder (output.py)
turns the turn's events into output items and stream events. Stored responses (store.py) let a
request continue with `previous_response_id`, and `item_reference` input items name stored items
by id (resolved here, before anything else reads the input).
"""

import itertools
import json
import logging
import sqlite3
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError

from server.api.responses.output import OutputBuilder, ResponseShell, final_status
from server.api.responses.prompt import listed_servers, translate
from server.api.responses.schema import InputItem, ResponsesRequest
from server.api.responses.store import ResponseStore, with_ids
from server.api.server_tools import resolve_turn
from server.plumbing.errors import APIError
from server.plumbing.limits import check_total
from server.registry.lease import serving
from server.turn.pipeline import Turn, open_turns
from server.turn.run import TurnEnd

log = logging.getLogger("swallow.responses")
router = APIRouter()
ITEMS = TypeAdapter(list[InputItem])
ITEM = TypeAdapter(InputItem)
LAST_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}


def _store(request: Request) -> ResponseStore:
    return request.app.state.responses_store


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"No response found with id {response_id!r}.", type="not_found_error",
                    param="response_id", code="response_not_found")


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request):
    state = await serving(request, body.model, body.keep_alive)
    return await respond(state, body, _store(request), request)


async def respond(state, body: ResponsesRequest, store: ResponseStore, request):
    """The response, streamed or not: the route's, and a batch line's (server/batches/; not
    streamed, `request` then api/batch_endpoints.py's stand-in for one)."""
    settings = state.settings
    history = []
    if body.previous_response_id:
        stored = store.conversation(body.previous_response_id)
        if stored is None:
            raise APIError(400, f"Previous response with id {body.previous_response_id!r} not found.",
                           param="previous_response_id", code="previous_response_not_found")
        check_total(len(stored) + len(body.input or []), "input")
        history = ITEMS.validate_python(stored)
    body.input = resolve_references(store, body.input)
    if body.store:
        store.writable()  # a full disk: 507 now, before anything is generated
    asked = translate(body, history)
    resolved = await resolve_turn(request, asked, settings)
    (turn,) = await open_turns(state, resolved)
    shell = ResponseShell(body, state.model_id, resolved.prompt.effort, resolved.sampling)
    builder = OutputBuilder(resolved.tools, body.wants_encrypted_reasoning(), state.encoding, resolved.logprobs,
                            summary=body.wants_summary(), container=asked.builtins.conversation,
                            sources=body.wants_sources())
    # the MCP servers the request picked, listed first (unless the conversation has their lists)
    listing = builder.listings(resolved.server_tools.toolset, listed_servers([*history, *(body.input or [])]))
    conversation = with_ids([item.model_dump(exclude_none=True) for item in [*history, *(body.input or [])]])

    def save(response: dict) -> APIError | None:
        """Synchronous on purpose: it also runs while a stream is being closed or cancelled.
        The response's own items (its input and output) are indexed for item_reference. The 507
        when the disk filled up before the response could be stored."""
        if body.store and response["status"] != "failed":
            try:
                store.save(response, conversation + builder.output,
                           own_items=conversation[len(history):] + builder.output)
            except APIError as e:
                log.warning("response %s was not stored: %s", response["id"], e.message)
                return e
            except sqlite3.Error:
                log.exception("could not store response %s", response["id"])
        return None

    def finished(end: TurnEnd) -> dict:
        problem = turn.plan.problem(end, turn.limit)  # structured output that can't be given
        status = "failed" if problem else final_status(end)
        error = {"code": "server_error", "message": f"The generation failed: {end.error}"} if status == "failed" else None
        if problem:
            error = {"code": problem.code, "message": problem.message}
        response = {**shell.snapshot(status, builder.output, end, error), **turn.fields()}
        unstored = save(response)
        if unstored is not None:  # what a continuation needs is missing: the response failed
            response = {**response, "status": "failed", "completed_at": None,
                        "error": {"code": unstored.code, "message": unstored.message}}
        return response

    def interrupted() -> None:
        """The client left before the end: what was generated is stored as `incomplete`, so
        that a continuation from it still works. Its usage is unknown (the turn never ended)."""
        builder.finish(TurnEnd("length", turn.prompt_tokens, 0, 0))  # closes an open item as incomplete
        response = {**shell.snapshot("incomplete", builder.output), **turn.fields(),
                    "incomplete_details": {"reason": "interrupted"}}
        save(response)

    if body.stream:
        return StreamingResponse(_stream(turn, shell, builder, listing, finished, interrupted),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        events, end = await turn.collect(request)
    except APIError as e:
        if e.status == 499:  # the client hung up
            for event in turn.collected:
                builder.feed(event)
            interrupted()
        raise
    for event in events:
        builder.feed(event)
    builder.finish(end)
    turn.raise_for(end)
    response = finished(end)
    if (response["error"] or {}).get("code") == "insufficient_storage":
        raise store.no_room()
    return response


def resolve_references(store: ResponseStore, items: list | None) -> list | None:
    """The input with each `item_reference` replaced by the stored item it names (from any
    stored response, its input or output); an id that isn't stored (never, deleted, or past
    retention) is a 400 naming `input[i].id`."""
    wanted = [item.id for item in items or [] if item.type == "item_reference"]
    if not wanted:
        return items
    try:
        found = store.items(wanted)
    except sqlite3.Error:
        log.exception("could not read stored items")
        raise APIError(500, "The response store could not be read.", type="server_error") from None
    resolved = []
    for i, item in enumerate(items):
        if item.type == "item_reference":
            stored = found.get(item.id)
            where = f"input[{i}].id"
            if stored is None:
                raise APIError(400, f"{where}: no stored item with id {item.id!r} (it was never stored, was "
                               "deleted, or is past the server's retention).", param=where, code="item_not_found")
            try:
                item = ITEM.validate_python(stored)
            except ValidationError:
                raise APIError(400, f"{where}: the stored item {item.id!r} can't be used as input.",
                               param=where) from None
            if item.type == "item_reference":  # not written by this server: references are resolved first
                raise APIError(400, f"{where}: the stored item {item.id!r} is a reference itself.", param=where)
        resolved.append(item)
    return resolved


def _sse(event: dict, counter) -> str:
    event = {"type": event["type"], "sequence_number": next(counter), **event}
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _stream(turn: Turn, shell: ResponseShell, builder: OutputBuilder, listing: list[dict], finished,
                  interrupted):
    """The stream's events. A client that leaves closes this generator (GeneratorExit at a
    yield) or cancels it (CancelledError at an await): either way the `finally` below runs,
    without awaiting anything, and stores what was generated as incomplete."""
    counter = itertools.count()
    done = False
    try:
        yield _sse({"type": "response.created", "response": shell.snapshot("in_progress")}, counter)
        yield _sse({"type": "response.in_progress", "response": shell.snapshot("in_progress")}, counter)
        for out in listing:
            yield _sse(out, counter)
        try:
            async for event in turn.events:  # always closed by a TurnEnd (an error one if the turn failed)
                if isinstance(event, TurnEnd):
                    end = event
                else:
                    for out in builder.feed(event):
                        yield _sse(out, counter)
        finally:
            turn.cancel()  # when the client left: free its place in the batch now
        closing = builder.finish(end)
        response = finished(end)  # stored before the client hears that it is done
        done = True
        for out in closing:
            yield _sse(out, counter)
        yield _sse({"type": LAST_EVENT[response["status"]], "response": response}, counter)
    finally:
        if not done:
            interrupted()


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request):
    response = _store(request).response(response_id)
    if response is None:
        raise _not_found(response_id)
    return response


def _listed(item: dict) -> dict:
    """A stored input item as OpenAI lists it: messages with a type, their text as parts."""
    if item.get("type", "message") != "message":
        return item
    content = item.get("content", "")
    if isinstance(content, str):
        kind = "output_text" if item.get("role") == "assistant" else "input_text"
        content = [{"type": kind, "text": content}]
    return {"id": item.get("id"), "type": "message", "role": item.get("role"), "content": content,
            "status": item.get("status", "completed")}


def _page(items: list[dict], cursor: str | None, param: str) -> list[dict]:
    """The items after `cursor` (an item id) in the listing's order; 400 for an unknown id."""
    if cursor is None:
        return items
    index = next((i for i, item in enumerate(items) if item.get("id") == cursor), None)
    if index is None:
        raise APIError(400, f"No input item with id {cursor!r} in this response.", param=param)
    return items[index + 1:]


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20,
                           order: Literal["asc", "desc"] = "desc",
                           after: str | None = None, before: str | None = None):
    """The items the response was generated from: the conversation it continued
    (previous_response_id) and its own input, in OpenAI's list shape."""
    items = _store(request).input_items(response_id)
    if items is None:
        raise _not_found(response_id)
    items = [_listed(item) for item in items]
    if order == "desc":
        items.reverse()
    items = _page(items, after, "after")
    data = items[:limit]
    if before is not None:  # the `limit` items just before it
        items = list(reversed(_page(list(reversed(items)), before, "before")))
        data = items[-limit:]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(items) > limit}


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request):
    if not _store(request).delete(response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}
