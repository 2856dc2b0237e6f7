"""The FastAPI application: routes, error handlers and shared state."""

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from models.loading import LoadedModel
from models.vocab import token_vocabulary
from server.api.chat import routes as chat
from server.api.completions import routes as completions
from server.api.messages import errors as messages_errors
from server.api.messages import routes as messages
from server.api.responses import routes as responses
from server.api.responses.store import open_store
from server.api.tokenize import routes as tokenize
from server.config import Settings
from server.engine.engine import Engine
from server.plumbing import limits, metrics, middleware
from server.plumbing.admission import Admission
from server.plumbing.errors import (
    APIError,
    document_errors,
    install_error_handlers,
    register_shape,
)
from server.state import ServerState
from server.web.routes import router as web_router


def create_app(settings: Settings, engine: Engine, loaded: LoadedModel) -> FastAPI:
    app = FastAPI(title="swallow-server", version="0.1.0",
                  description="OpenAI-compatible server for GPT-OSS models on MLX")
    app.state.server = ServerState(
        settings=settings,
        engine=engine,
        encoding=loaded.encoding,
        model_id=settings.served_model_name or loaded.model_id,
        context_length=settings.context_length or loaded.context_length,
    )
    limits.configure(settings)  # max_messages, checked as requests are parsed
    token_vocabulary()  # the reply parser's byte table (~0.3 s to build): now, not in a first request
    install_error_handlers(app)
    document_errors(app)
    # Auth, CORS, body limit, admission (max_concurrency / max_queue), request log, /metrics.
    admission = Admission(settings.max_concurrency or settings.max_batch_size, settings.max_queue)
    app.state.admission = admission
    middleware.install(app, settings, admission)
    metrics.bind(admission, engine)
    app.include_router(metrics.router)
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(messages.router)
    app.include_router(completions.router)
    app.include_router(tokenize.router)
    register_shape("/v1/messages", messages_errors.SHAPE)  # Anthropic's error shape on its paths
    app.include_router(web_router)  # the chat page at /, its files, /status.json
    app.state.responses_store = open_store(settings)
    started = int(time.time())

    def model_card(state: ServerState) -> dict:
        return {"id": state.model_id, "object": "model", "created": started, "owned_by": "swallow-server",
                "context_length": state.context_length}

    @app.get("/v1/models")
    async def list_models(request: Request):
        return {"object": "list", "data": [model_card(request.app.state.server)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        state = request.app.state.server
        if model_id != state.model_id:
            raise APIError(404, f"The model {model_id!r} does not exist; this server serves {state.model_id!r}.",
                           type="not_found_error", param="model", code="model_not_found")
        return model_card(state)

    @app.get("/health")
    async def health(request: Request):
        state = request.app.state.server
        engine = state.engine
        body = {"status": "ok", "model": state.model_id, "running": engine.running, "waiting": engine.waiting,
                "memory": engine.memory_stats(), "prompt_cache": engine.cache_stats()}
        if getattr(engine, "world", None) is not None:  # under mlx.launch: the ranks serving the model
            body["distributed"] = engine.world.describe()
        if engine.dead is not None:  # the process is about to exit (non-zero) for a restart
            return JSONResponse({**body, "status": "error", "error": f"the engine stopped: {engine.dead}"},
                                status_code=503)
        return body

    return app
