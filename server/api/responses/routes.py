"""POST /v1/responses (stream and non-stream), GET and DELETE /v1/responses/{id}.

A translation over the turn pipeline (server/turn/pipeline.py) that every API shares: input
items become a harmony Prompt and the turn's options (prompt.py), and OutputBuilder (output.py)
turns the turn's events into output items and stream events. Stored responses (store.py) let a
request continue with `previous_response_id`.
"""

import itertools
import json
import logging
import sqlite3

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter

from server.api.responses.output import OutputBuilder, ResponseShell, final_status
from server.api.responses.prompt import turn_spec
from server.api.responses.schema import InputItem, ResponsesRequest
from server.api.responses.store import ResponseStore
from server.plumbing.errors import APIError
from server.state import ServerState, sampling_params
from server.turn.pipeline import Turn
from server.turn.run import TurnEnd

log = logging.getLogger("swallow.responses")
router = APIRouter()
ITEMS = TypeAdapter(list[InputItem])
LAST_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}


def _store(request: Request) -> ResponseStore:
    return request.app.state.responses_store


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"No response found with id {response_id!r}.", type="not_found_error",
                    param="response_id", code="response_not_found")


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request):
    state: ServerState = request.app.state.server
    settings = state.settings
    store = _store(request)
    history = []
    if body.previous_response_id:
        stored = store.conversation(body.previous_response_id)
        if stored is None:
            raise APIError(400, f"Previous response with id {body.previous_response_id!r} not found.",
                           param="previous_response_id", code="previous_response_not_found")
        history = ITEMS.validate_python(stored)
    spec, tools = turn_spec(body, history, settings.reasoning_effort, sampling_params(body, settings))
    turn = await Turn.open(state, spec)
    shell = ResponseShell(body, state.model_id, spec.prompt.effort, spec.sampling)
    builder = OutputBuilder(tools, body.wants_encrypted_reasoning(), state.encoding, spec.logprobs)
    conversation = [item.model_dump(exclude_none=True) for item in [*history, *(body.input or [])]]

    def finished(end: TurnEnd) -> dict:
        problem = turn.plan.problem(end, turn.max_tokens)  # structured output that can't be given
        status = "failed" if problem else final_status(end)
        error = {"code": "server_error", "message": f"The generation failed: {end.error}"} if status == "failed" else None
        if problem:
            error = {"code": problem.code, "message": problem.message}
        response = {**shell.snapshot(status, builder.output, end, error), **turn.fields()}
        if body.store and status != "failed":
            try:
                store.save(response, conversation + builder.output)
            except sqlite3.Error:
                log.exception("could not store response %s", response["id"])
        return response

    if body.stream:
        return StreamingResponse(_stream(turn, shell, builder, finished),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    events, end = await turn.collect(request)
    for event in events:
        builder.feed(event)
    builder.finish(end)
    turn.raise_for(end)
    return finished(end)


def _sse(event: dict, counter) -> str:
    event = {"type": event["type"], "sequence_number": next(counter), **event}
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _stream(turn: Turn, shell: ResponseShell, builder: OutputBuilder, finished):
    counter = itertools.count()
    yield _sse({"type": "response.created", "response": shell.snapshot("in_progress")}, counter)
    yield _sse({"type": "response.in_progress", "response": shell.snapshot("in_progress")}, counter)
    end = None
    try:
        async for event in turn.events:
            if isinstance(event, TurnEnd):
                end = event
            else:
                for out in builder.feed(event):
                    yield _sse(out, counter)
    except Exception as e:  # never a broken stream: the client gets response.failed
        log.exception("the turn failed")
        end = TurnEnd("error", turn.prompt_tokens, 0, 0, error=str(e))
    finally:
        turn.cancel()  # when the client left: free its place in the batch now
    if end is None:
        end = TurnEnd("error", turn.prompt_tokens, 0, 0, error="the generation ended without a result")
    for out in builder.finish(end):
        yield _sse(out, counter)
    response = finished(end)
    yield _sse({"type": LAST_EVENT[response["status"]], "response": response}, counter)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request):
    response = _store(request).response(response_id)
    if response is None:
        raise _not_found(response_id)
    return response


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request):
    if not _store(request).delete(response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}
