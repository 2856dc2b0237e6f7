"""/v1/models: every model this server serves, loaded or not, and loading / unloading them.

- GET  /v1/models                 the configured models and the GPT-OSS models of the local
                                  Hugging Face cache, each with whether it is loaded, its size
                                  and context length
- GET  /v1/models/{id}            one of them (by any of its names; unknown: 404)
- POST /v1/models/{id}/load       load it now (waits until it is loaded)
- POST /v1/models/{id}/unload     unload it now; a busy one once its requests are done (202)
"""

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.plumbing.errors import APIError
from server.registry.registry import Registry, Slot

router = APIRouter()
STARTED = int(time.time())


def card(registry: Registry, slot: Slot) -> dict:
    state = slot.state
    return {
        "id": slot.name,
        "object": "model",
        "created": STARTED,
        "owned_by": "swallow-server",
        "context_length": state.context_length if state else slot.listed.context_length(),
        "loaded": state is not None,
        "loading": slot.loading is not None,
        "default": slot is registry.default,
        "size_bytes": registry.size(slot) or None,
        "source": slot.listed.source,
        "model": slot.listed.spec,
        "aliases": slot.listed.aliases,
    }


def _known(request: Request, model_id: str) -> tuple[Registry, Slot]:
    registry: Registry = request.app.state.registry
    slot = registry.lookup(model_id)
    if slot is None:
        known = ", ".join(sorted(registry.slots))
        raise APIError(404, f"The model {model_id!r} does not exist. This server serves: {known}.",
                       type="not_found_error", param="model", code="model_not_found")
    return registry, slot


@router.get("/v1/models")
async def list_models(request: Request):
    registry: Registry = request.app.state.registry
    await registry.refresh()  # models downloaded into the Hugging Face cache since the start
    return {"object": "list", "data": [card(registry, slot) for slot in registry.slots.values()]}


@router.post("/v1/models/{model_id:path}/load")
async def load_model(model_id: str, request: Request):
    registry, slot = _known(request, model_id)
    await registry.load(slot)
    return card(registry, slot)


@router.post("/v1/models/{model_id:path}/unload")
async def unload_model(model_id: str, request: Request):
    registry, slot = _known(request, model_id)
    if await registry.unload(slot, "POST /v1/models/{id}/unload"):
        return card(registry, slot)
    return JSONResponse(card(registry, slot) | {"unloading": f"once its {slot.leases} request(s) are done"},
                        status_code=202)


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    registry, slot = _known(request, model_id)
    return card(registry, slot)
