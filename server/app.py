"""The FastAPI application: routes, error handlers and shared state."""

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from models.vocab import token_vocabulary
from server.api import engine_errors
from server.api.batch_endpoints import batch_endpoints
from server.api.batches import routes as batches
from server.api.chat import routes as chat
from server.api.completions import routes as completions
from server.api.files import routes as files
from server.api.messages import batches as message_batches
from server.api.messages import errors as messages_errors
from server.api.messages import routes as messages
from server.api.ollama import errors as ollama_errors
from server.api.ollama import routes as ollama
from server.api.responses import routes as responses
from server.api.responses.store import open_store
from server.api.server_tools import router as server_tools_router
from server.api.tokenize import routes as tokenize
from server.batches.runner import Runner
from server.batches.store import open_batch_store
from server.config import Settings
from server.plumbing import limits, metrics, middleware
from server.plumbing.admission import Admission
from server.plumbing.disk import data_disk
from server.plumbing.errors import (
    document_errors,
    install_error_handlers,
    register_shape,
)
from server.registry.lease import HoldModels
from server.registry.registry import Registry, Slot
from server.registry.routes import router as models_router
from server.tools.toolbox import Toolbox
from server.web.routes import router as web_router


def create_app(settings: Settings, registry: Registry) -> FastAPI:
    toolbox = Toolbox(settings)  # the MCP servers whose tools the server runs (server/tools/)

    @asynccontextmanager
    async def lifespan(_app):
        registry.start_reaper()  # unloads models idle past their keep-alive
        toolbox.start()  # MCP servers start in the background; requests that want one wait for it
        runner.start()  # the batches in data_dir go on where they were
        yield
        await runner.stop()  # lines in flight stay pending, for the next start
        await toolbox.stop()

    app = FastAPI(title="swallow-server", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible server for GPT-OSS models on MLX")
    app.state.settings = settings
    app.state.registry = registry  # the models, loaded or not; requests pick theirs (registry/lease.py)
    app.state.toolbox = toolbox
    limits.configure(settings)  # max_messages, checked as requests are parsed
    token_vocabulary()  # the reply parser's byte table (~0.3 s to build): now, not in a first request
    install_error_handlers(app)
    engine_errors.install(app)  # the engine's own errors, as each API's HTTP errors
    document_errors(app)
    # Auth, CORS, body limit, admission (max_concurrency / max_queue), request log, /metrics.
    admission = Admission(settings.max_concurrency or settings.max_batch_size, settings.max_queue)
    app.state.admission = admission
    app.add_middleware(HoldModels)  # innermost: a request's model is busy until its last byte is out
    app.add_middleware(ollama.OllamaHTTP, port=settings.ollama_port)  # bodies read as Ollama reads them
    middleware.install(app, settings, admission)
    metrics.bind(admission, registry)
    app.include_router(metrics.router)
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(messages.router)
    app.include_router(completions.router)
    app.include_router(tokenize.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(message_batches.router)
    app.include_router(models_router)
    app.include_router(ollama.router)
    app.include_router(server_tools_router)
    register_shape("/v1/messages", messages_errors.SHAPE)  # Anthropic's error shape on its paths
    register_shape("/api", ollama_errors.SHAPE)  # Ollama's under /api
    app.include_router(web_router)  # the chat page at /, its files, /status.json
    app.state.responses_store = open_store(settings)  # a damaged file is set aside, a full disk waited out
    disk = data_disk(settings.data_dir)  # stored responses, prompt-cache snapshots, batches (plumbing/disk.py)
    # The Batch API: files and batches in data_dir, run in the background by the same endpoints' code
    app.state.batch_store = open_batch_store(settings, disk)
    runner = Runner(app.state.batch_store, registry, batch_endpoints(app),
                    registry.default.listed.settings.max_batch_size)
    app.state.batch_runner = runner
    metrics.bind_batches(runner.describe)

    @app.get("/health")
    async def health(request: Request):
        models = {slot.name: _model_health(registry, slot) for slot in registry.slots.values()}
        main = registry.default.state or next((s.state for s in registry.loaded), None)
        body = {"status": "ok", "model": registry.default.name,
                "running": sum(m.get("running", 0) for m in models.values()),
                "waiting": sum(m.get("waiting", 0) for m in models.values()),
                "waiting_for_model": sum(s.waiting for s in registry.slots.values()),
                "memory": main.engine.memory_stats() if main else {},
                "prompt_cache": main.engine.cache_stats() if main else {},
                "models_memory": {"budget_bytes": registry.budget, "budget_from": registry.budget_from,
                                  "loaded_bytes": sum(registry.size(s) for s in registry.loaded)},
                "kv_memory": registry.kv.describe() if registry.kv is not None else {},
                "process": metrics.process_memory(),
                "models": {name: m for name, m in models.items() if m["loaded"] or m["loading"] or m["default"]},
                "disk": disk.describe(), "batches": runner.describe()}
        if toolbox.servers:
            body["mcp_servers"] = {name: server.state for name, server in toolbox.servers.items()}
        if registry.world is not None:  # under mlx.launch: the ranks serving the model
            body["distributed"] = registry.world.describe()
        if registry.dead is not None:  # the process is about to exit (non-zero) for a restart
            return JSONResponse({**body, "status": "error", "error": f"the engine stopped: {registry.dead}"},
                                status_code=503)
        return body

    return app


def _model_health(registry: Registry, slot: Slot) -> dict:
    body = {"loaded": slot.state is not None, "loading": slot.loading is not None,
            "default": slot is registry.default, "requests": slot.leases, "waiting_for_load": slot.waiting,
            "keep_alive_s": slot.keep_alive, "loads": slot.loads, "load_seconds": slot.load_seconds,
            "idle_s": None if slot.busy else round(time.monotonic() - slot.last_used, 1)}
    if slot.state is not None:
        engine = slot.state.engine
        body |= {"running": engine.running, "waiting": engine.waiting, "batch_running": engine.batch_running,
                 "batch_waiting": engine.batch_waiting, "weights_bytes": slot.weights_bytes,
                 "memory": engine.memory_stats(), "prompt_cache": engine.cache_stats()}
    return body
