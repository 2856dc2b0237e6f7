"""OpenAI's error object for every failure: {"error": {"message", "type", "param", "code"}}.

Clients (the openai SDK above all) read these fields; FastAPI's own 422 shape would break
them, so validation errors are re-shaped into 400s here.
"""

import logging

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


def _location(loc: tuple) -> str:
    # ("body", "messages", 0, "role") -> "messages[0].role"
    out = ""
    for part in loc:
        if part == "body":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unexpected error")
        return JSONResponse(error_body("Internal server error.", "server_error"), status_code=500)


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
STREAMING = {("/v1/chat/completions", "post"), ("/v1/responses", "post")}


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
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for path, operations in schema.get("paths", {}).items():
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
                    responses["200"].setdefault("content", {})["text/event-stream"] = {"schema": {"type": "string"}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
