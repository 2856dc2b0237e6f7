"""OpenAI's error object for every failure: {"error": {"message", "type", "param", "code"}}.

Clients (the openai SDK above all) read these fields; FastAPI's own 422 shape would break
them, so validation errors are re-shaped into 400s here. An API with an error format of its own
(Anthropic's, under /v1/messages) registers it for its paths with `register_shape`, and every
error on those paths, the middleware's included, comes in that shape.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("swallow.errors")


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class Shape:
    body: Callable[[int, str, str, str | None, str | None], dict]  # (status, message, type, param, code)
    stream_error: Callable[[dict], str]  # an error event that ends a stream already begun
    name: str  # the error body's schema in /openapi.json
    schema: dict


_SHAPES: dict[str, Shape] = {}  # path prefix -> the API's error shape


def register_shape(prefix: str, shape: Shape) -> None:
    _SHAPES[prefix] = shape


def shape_for(path: str) -> Shape | None:
    return next((shape for prefix, shape in _SHAPES.items() if path == prefix or path.startswith(prefix + "/")),
                None)


def shaped_body(path: str, status: int, message: str, type: str, param: str | None = None,
                code: str | None = None) -> dict:
    """The error object the API serving `path` uses."""
    shape = shape_for(path)
    return shape.body(status, message, type, param, code) if shape else error_body(message, type, param, code)


def stream_error(path: str, body: dict) -> str:
    """The SSE text that ends a stream with an error, in the API's own framing."""
    shape = shape_for(path)
    if shape is not None:
        return shape.stream_error(body)
    return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n"


def _location(loc: tuple) -> str:
    # ("body", "messages", 0, "role") -> "messages[0].role"; ("query", "limit") -> "limit"
    out = ""
    for i, part in enumerate(loc):
        if i == 0 and part in ("body", "query", "path"):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    return validation_problem(exc.errors())


def validation_problem(errors: list) -> tuple[str, str | None]:
    """(message, param) for a body that failed its schema: pydantic's errors, their locations
    from the body down (a batch line's body is checked with the same words)."""
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    param = _location(tuple(first.get("loc", ()))) or None
    details = "; ".join(
        f"{_location(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}" for e in errors[:5]
    )
    return f"Invalid request: {details}", param


def api_error_response(request: Request, exc: APIError) -> JSONResponse:
    body = shaped_body(request.url.path, exc.status, exc.message, exc.type, exc.param, exc.code)
    return JSONResponse(body, status_code=exc.status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return api_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return JSONResponse(shaped_body(request.url.path, 400, message, "invalid_request_error", param),
                            status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(shaped_body(request.url.path, exc.status_code, str(exc.detail), kind),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error")
        return JSONResponse(shaped_body(request.url.path, 500, "Internal server error.", "server_error"),
                            status_code=500)


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        },
    }},
}
ERROR_STATUSES = {
    "400": "Invalid request", "401": "Missing or wrong API key", "403": "Origin not allowed",
    "404": "Not found", "413": "Request body too large", "429": "Server busy (see Retry-After)",
    "500": "Generation failed",
}
STREAMING = {("/v1/chat/completions", "post"), ("/v1/responses", "post"), ("/v1/messages", "post"),
             ("/v1/completions", "post")}


# one server-sent event: its data, and its name where the API sends one (Responses, Messages)
SSE_EVENT = {"type": ["object", "string"],
             "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}


def document_errors(app: FastAPI) -> None:
    """Make /openapi.json say what the server does: errors are 400s (not FastAPI's 422) with
    OpenAI's error object, plus 401/403/404/413/429/500; generating endpoints may stream."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["ErrorResponse"] = ERROR_SCHEMA
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for shape in _SHAPES.values():
            components[shape.name] = shape.schema
        for path, operations in schema.get("paths", {}).items():
            shape = shape_for(path)
            ref = f"#/components/schemas/{shape.name if shape else 'ErrorResponse'}"
            error = {"content": {"application/json": {"schema": {"$ref": ref}}}}
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, description in ERROR_STATUSES.items():
                    if status in ("401", "403") and not path.startswith("/v1/"):
                        continue
                    if status in ("413", "429", "500") and method != "post":
                        continue
                    responses.setdefault(status, {"description": description, **error})
                if (path, method) in STREAMING and "200" in responses:
                    responses["200"].setdefault("content", {})["text/event-stream"] = {"schema": SSE_EVENT}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
