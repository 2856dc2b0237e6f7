"""Ollama's API under /api, on the turn pipeline every API shares, so that apps which speak only
Ollama (Open WebUI's Ollama connection, Enchanted, Msty, Page Assist, the `ollama` libraries) work
against this server unchanged.

- POST /api/chat, POST /api/generate   NDJSON chunks (stream: false: one object); empty messages
                                       or prompt load the model (done_reason "load"), with
                                       keep_alive 0 unload it ("unload")
- GET  /api/tags, POST /api/show, GET /api/ps, GET /api/version, HEAD /
- POST /api/pull, DELETE /api/delete   download a model (its progress streamed), delete one (pull.py)
- /api/embed, /api/embeddings, /api/create, /api/push, /api/copy, /api/blobs: a 400 that says why

Errors under /api are Ollama's shape, `{"error": "..."}` (errors.py, registered by the app). With
the `ollama_port` setting the server also listens on Ollama's port, where `/` answers as Ollama's
does (`OllamaHTTP`); on the main port `/` stays the chat page.
"""

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)

from models.download import SUCCESS
from models.errors import ModelError
from server.api.ollama import cards
from server.api.ollama import pull as pull_models
from server.api.ollama.errors import error_line, ndjson
from server.api.ollama.output import (
    Clock,
    Pieces,
    chat_chunk,
    created_at,
    done_reason,
    generate_chunk,
    merged,
)
from server.api.ollama.prompt import translate_chat, translate_generate
from server.api.ollama.raw import RawTurn
from server.api.ollama.schema import (
    ChatRequest,
    GenerateRequest,
    PullRequest,
    ShowRequest,
)
from server.config import keep_alive_seconds
from server.harmony.tools import ToolNames
from server.plumbing.errors import APIError, invalid_request
from server.registry.lease import serving
from server.turn.pipeline import open_turns
from server.turn.resolve import resolve
from server.turn.run import TurnEnd

log = logging.getLogger("swallow.ollama")
router = APIRouter()

# The Ollama release whose API this server speaks (think levels with "max", logprobs, tool_name):
# what /api/version says, so that clients enable what they gate on the version.
OLLAMA_VERSION = "0.22.0"
RUNNING = "Ollama is running"
NDJSON = "application/x-ndjson"
STREAMED = {200: {"description": "NDJSON chunks, the last with done: true (stream: false: one object)",
                  "content": {NDJSON: {"schema": {"type": "object"}}}}}
# What this server doesn't do is a 400 like any request it can't serve (a 5xx would say it failed)
NOT_HERE = {400: {"description": "Not something this server does"}}


def model_name(request: Request, name: str | None) -> str | None:
    """The served model a request names: Ollama's clients add `:latest` to a name without a tag."""
    registry = request.app.state.registry
    if name and registry.lookup(name) is None and name.endswith(":latest") and registry.lookup(name[:-7]):
        return name[:-7]
    return name


def _keep_alive(value) -> float | None:
    try:
        return keep_alive_seconds(value)
    except ValueError as e:
        raise invalid_request(str(e), param="keep_alive") from None


# ---- generating ------------------------------------------------------------------------------

@router.post("/api/chat", responses=STREAMED)
async def chat(body: ChatRequest, request: Request):
    clock = Clock()
    if not body.messages:
        return await _load(request, body, {"message": {"role": "assistant", "content": ""}})
    state = await serving(request, model_name(request, body.model), body.keep_alive)
    clock.model_loaded()
    resolved = resolve(translate_chat(body), state.settings)
    (turn,) = await open_turns(state, resolved)
    pieces = Pieces(resolved.tools.names, state.encoding, resolved.logprobs)
    return await _reply(request, body, turn, pieces, chat_chunk, {"model": body.model or state.model_id}, clock)


@router.post("/api/generate", responses=STREAMED)
async def generate(body: GenerateRequest, request: Request):
    clock = Clock()
    if not body.prompt:
        return await _load(request, body, {"response": ""})
    state = await serving(request, model_name(request, body.model), body.keep_alive)
    clock.model_loaded()
    if body.raw:
        turn, pieces = RawTurn(state, body), Pieces(ToolNames([]))
    else:
        resolved = resolve(translate_generate(body), state.settings)
        (turn,) = await open_turns(state, resolved)
        pieces = Pieces(resolved.tools.names, state.encoding, resolved.logprobs)
    return await _reply(request, body, turn, pieces, generate_chunk, {"model": body.model or state.model_id}, clock)


async def _load(request: Request, body, empty: dict) -> JSONResponse:
    """No messages (or no prompt): load the model and say so; with keep_alive 0, unload it."""
    name = model_name(request, body.model)
    if body.keep_alive is not None and _keep_alive(body.keep_alive) == 0:
        slot = request.app.state.registry.find(name)
        await request.app.state.registry.unload(slot, "keep_alive 0 on Ollama's API")
        served, reason = slot.name, "unload"
    else:
        served, reason = (await serving(request, name, body.keep_alive)).model_id, "load"
    return JSONResponse({"model": body.model or served, "created_at": created_at(), **empty, "done": True,
                         "done_reason": reason})


async def _reply(request: Request, body, turn, pieces: Pieces, chunk, meta: dict, clock: Clock):
    if body.stream:
        return StreamingResponse(_stream(turn, pieces, chunk, meta, clock), media_type=NDJSON,
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    events, end = await turn.collect(request)
    turn.cancel()
    problem = turn.failure(end)
    if problem is not None:
        raise problem
    whole = merged([piece for event in events for piece in pieces.feed(event)] + pieces.finish())
    return {**chunk(meta, whole), "done": True, "done_reason": done_reason(end), **clock.stats(end, turn.generation)}


async def _stream(turn, pieces: Pieces, chunk, meta: dict, clock: Clock):
    end = None
    try:
        async for event in turn.events:  # closed by a TurnEnd, always
            if isinstance(event, TurnEnd):
                end = event
            else:
                for piece in pieces.feed(event):
                    yield ndjson(chunk(meta, piece))
    finally:
        turn.cancel()  # when the client left: free its place in the batch now
    problem = turn.failure(end)
    if problem is not None:  # a failed generation, or structured output that can't be given
        yield error_line(problem.message)
        return
    for piece in pieces.finish():
        yield ndjson(chunk(meta, piece))
    yield ndjson({**chunk(meta, {}), "done": True, "done_reason": done_reason(end),
                  **clock.stats(end, turn.generation)})


# ---- the models ------------------------------------------------------------------------------

def _known(request: Request, name: str):
    registry = request.app.state.registry
    slot = registry.lookup(model_name(request, name))
    if slot is None:
        raise APIError(404, f"model '{name}' not found", type="not_found_error", param="model",
                       code="model_not_found")
    return slot


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request):
    registry = request.app.state.registry
    await registry.refresh()  # models downloaded into the Hugging Face cache since the start
    return {"models": [cards.tag(slot) for slot in registry.slots.values()]}


@router.post("/api/show", responses={404: {"description": "No such model"}})
async def show(body: ShowRequest, request: Request):
    return cards.show(_known(request, body.wanted))


@router.get("/api/ps")
async def ps(request: Request):
    return {"models": cards.running(request.app.state.registry)}


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version():
    return {"version": OLLAMA_VERSION}


@router.head("/", include_in_schema=False)
async def root_head():
    """Ollama's clients (its CLI among them) check that a server is up with HEAD /."""
    return Response(status_code=200, media_type="text/plain")


# ---- what this server doesn't do ---------------------------------------------------------------

@router.post("/api/pull", responses={**STREAMED, 502: {"description": "The Hub unreachable, or a file corrupt twice"},
                                     507: {"description": "Not enough disk space"}})
async def pull(body: PullRequest, request: Request):
    """Download a model into the Hugging Face cache, its progress as Ollama's pull lines."""
    repo = pull_models.repo_id(body.wanted)
    registry = request.app.state.registry
    if body.stream:
        return StreamingResponse(_pulling(repo, registry), media_type=NDJSON,
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    pulling = asyncio.ensure_future(_drain(pull_models.progress(repo)))
    try:
        while not pulling.done():  # a client that leaves stops the download
            done, _ = await asyncio.wait({pulling}, timeout=0.5)
            if not done and await request.is_disconnected():
                raise APIError(499, "client disconnected")
        pulling.result()
    except ModelError as e:
        raise pull_models.as_api_error(e) from None
    finally:
        pulling.cancel()
    await registry.refresh(every=0)  # listed in /api/tags at once
    return {"status": "success"}


async def _drain(events) -> None:
    try:
        async for _ in events:
            pass
    finally:
        await events.aclose()


async def _pulling(repo: str, registry):
    events = pull_models.progress(repo)
    try:
        async for event in events:
            if event.status == SUCCESS:
                await registry.refresh(every=0)
            yield ndjson(event.ollama())
    except ModelError as e:
        yield error_line(str(e))
    finally:
        await events.aclose()


@router.delete("/api/delete")
async def delete(body: ShowRequest, request: Request):
    """Delete a model from the Hugging Face cache (200 with no body, as Ollama answers)."""
    await pull_models.delete(request.app.state.registry, body.wanted)
    return Response(status_code=200)


UNSUPPORTED = {
    "/api/embed": "embeddings are not supported: this server serves GPT-OSS chat models only",
    "/api/embeddings": "embeddings are not supported: this server serves GPT-OSS chat models only",
    "/api/create": "creating models is not supported: serve a model directory or a Hugging Face repo with --model",
    "/api/push": "pushing models is not supported",
    "/api/copy": "copying models is not supported: give a model more names with aliases in config.toml's [[models]]",
}


def _refuse(message: str):
    async def refuse():
        raise invalid_request(message, code="not_supported")

    return refuse


for path, message in UNSUPPORTED.items():
    router.add_api_route(path, _refuse(message), methods=["POST"], responses=NOT_HERE)
router.add_api_route("/api/blobs/{digest}", _refuse("blobs are not supported: creating models is not"),
                     methods=["POST", "HEAD"], responses=NOT_HERE)


class OllamaHTTP:
    """Where Ollama's server differs from a FastAPI app at the HTTP level:

    - its API reads every request body as JSON, whatever the Content-Type (Ollama's own examples
      are `curl -d '{...}'`, which says form data): on /api the body is taken as JSON;
    - on Ollama's port (the `ollama_port` setting), `GET /` says "Ollama is running": apps probe
      it. On the main port `/` stays the chat page.
    """

    def __init__(self, app, port: int = 0):
        self.app, self.port = app, port

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope.get("path", "")
            if path == "/" and self.port and (scope.get("server") or ("", 0))[1] == self.port:
                return await PlainTextResponse(RUNNING)(scope, receive, send)
            if path.startswith("/api/"):
                headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-type"]
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
