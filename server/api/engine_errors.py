"""The engine's errors (server/engine/errors.py) as HTTP errors: a status and an error type for
each, in the error shape of the API the request came to (plumbing/errors.py)."""

from fastapi import FastAPI, Request

from server.engine.errors import (
    CacheWontFit,
    EngineError,
    EngineStopped,
    ModelNotLoaded,
    SchemaUnusable,
    StructuredOutputUnavailable,
)
from server.plumbing.errors import APIError, api_error_response

STATUS = {
    EngineStopped: (503, "server_error"),
    ModelNotLoaded: (503, "server_error"),
    CacheWontFit: (400, "invalid_request_error"),
    SchemaUnusable: (400, "invalid_request_error"),
    StructuredOutputUnavailable: (400, "invalid_request_error"),
}


def as_api_error(error: EngineError) -> APIError:
    status, kind = next((STATUS[cls] for cls in type(error).__mro__ if cls in STATUS), (500, "server_error"))
    return APIError(status, error.message, type=kind, param=error.param, code=error.code)


def install(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError):
        return api_error_response(request, as_api_error(exc))
