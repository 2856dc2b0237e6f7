"""OpenAI's error object for every failure: {"error": {"message", "type", "param", "code"}}.

Clients (the openai SDK above all) read these fields; FastAPI's own 422 shape would break
them, so validation errors are re-shaped into 400s here. An API with an error format of its own
(Anthropic's, under /v1/messages) registers it for its paths with `register_shape`, and every
error on those paths, the middleware's included, comes in that shape.

A validation error names the field as the client wrote it (`input[1].type`): pydantic's location
also holds the branches of unions it tried (a tagged union's tag such as `other`, a plain union's
member such as `str` or `function-after[...]`), which the request body's schema tells apart from
field names (`client_path`).
"""

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import PydanticUserError, TypeAdapter, ValidationError
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


SOURCES = ("body", "query", "path", "header", "cookie")  # the first part of a request's loc
WRAPPED = ("schema", "python_schema", "lax_schema")  # keys of core-schema nodes that wrap another


def _refs(schema) -> dict:
    """Every core-schema node with a `ref`, by ref (what `definition-ref` nodes point at)."""
    found, stack = {}, [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("ref"), str):
                found[node["ref"]] = node
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return found


def client_path(schema: dict, loc: tuple, refs: dict | None = None) -> tuple | None:
    """`loc` (a pydantic error's location inside a value of `schema`, a core schema) without the
    parts that name union branches, which the client never wrote; None when it doesn't fit."""
    refs = _refs(schema) if refs is None else refs
    if not loc:
        return ()
    kind, head, rest = schema.get("type"), loc[0], loc[1:]
    if kind == "definition-ref":
        return client_path(refs[schema["schema_ref"]], loc, refs) if schema["schema_ref"] in refs else None
    if kind == "definitions":
        return client_path(schema["schema"], loc, refs)
    if kind == "tagged-union":  # head is the tag its discriminator chose
        choice = schema["choices"].get(head)
        return client_path(choice, rest, refs) if isinstance(choice, dict) else None
    if kind == "union":  # head is the member's label (a plain union tries each)
        for choice in schema["choices"]:
            found = client_path(choice[0] if isinstance(choice, tuple) else choice, rest, refs)
            if found is not None:
                return found
        return None
    if kind in ("model-fields", "typed-dict", "dataclass-args"):
        fields = schema["fields"]
        fields = fields.items() if isinstance(fields, dict) else ((f["name"], f) for f in fields)
        for name, field in fields:
            if head in (name, field.get("validation_alias")):
                found = client_path(field["schema"], rest, refs)
                return None if found is None else (head, *found)
        return None
    if kind in ("list", "set", "frozenset", "generator") and isinstance(head, int):
        found = client_path(schema.get("items_schema", {"type": "any"}), rest, refs)
        return None if found is None else (head, *found)
    if kind == "dict":
        found = client_path(schema.get("values_schema", {"type": "any"}), rest, refs)
        return None if found is None else (head, *found)
    if kind == "chain":
        return next((found for step in schema["steps"]
                     if (found := client_path(step, loc, refs)) is not None), None)
    wrapped = next((schema[key] for key in WRAPPED if isinstance(schema.get(key), dict)), None)
    return client_path(wrapped, loc, refs) if wrapped is not None else None


@functools.cache
def _core_schema(annotation) -> dict | None:
    try:
        return TypeAdapter(annotation).core_schema
    except (PydanticUserError, TypeError):  # not a type pydantic can build a schema of
        return None


def body_schema(request: Request) -> dict | None:
    """The core schema of the body the request's route validates (FastAPI puts the route in scope)."""
    field = getattr(request.scope.get("route"), "body_field", None)
    annotation = getattr(getattr(field, "field_info", None), "annotation", None)
    return _core_schema(annotation) if annotation is not None else None


def _location(loc: tuple, schema: dict | None = None) -> str:
    # ("body", "messages", 0, "role") -> "messages[0].role"; ("query", "limit") -> "limit";
    # with the body's schema, union branches go: ("body", "input", 1, "other", "type") -> "input[1].type"
    parts = tuple(loc[1:]) if loc and loc[0] in SOURCES else tuple(loc)
    if schema is not None and loc[:1] == ("body",):
        parts = client_path(schema, parts) or parts
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_message(exc: RequestValidationError, schema: dict | None = None) -> tuple[str, str | None]:
    return validation_problem(exc.errors(), schema)


def body_problem(model: type, error: ValidationError) -> tuple[str, str | None]:
    """(message, param) for a body validated outside a route (a batch line's): the words a route
    that validates `model` would have answered with."""
    return validation_problem([{**e, "loc": ("body", *e["loc"])} for e in error.errors()], _core_schema(model))


def validation_problem(errors: list, schema: dict | None = None) -> tuple[str, str | None]:
    """(message, param) for pydantic's errors of a request (locations from "body", "query"...)."""
    if not errors:
        return "Invalid request.", None
    if errors[0].get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    found = []  # (where, what), in pydantic's order, each once
    for error in errors:
        where = _location(tuple(error.get("loc", ())), schema)
        what = str(error.get("msg", "")).removeprefix("Value error, ")
        if (where, what) not in found:
            found.append((where, what))
    # A union reports why each of its members failed; the member that got deepest into the
    # value says the most (`content[0].type` over `content`).
    deepest = [(where, what) for where, what in found
               if not any(_inside(other, where) for other, _ in found)]
    param = deepest[0][0] or None
    details = "; ".join(f"{where or 'body'}: {what}" for where, what in deepest[:5])
    return f"Invalid request: {details}", param


def _inside(path: str, parent: str) -> bool:
    """Whether the field path `path` is within `parent` ("a[0].b" within "a")."""
    return len(path) > len(parent) and path.startswith(parent) and (not parent or path[len(parent)] in ".[")


def api_error_response(request: Request, exc: APIError) -> JSONResponse:
    body = shaped_body(request.url.path, exc.status, exc.message, exc.type, exc.param, exc.code)
    return JSONResponse(body, status_code=exc.status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return api_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc, body_schema(request))
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
    "400": "Invalid request", "401": "Missing or wrong API key", "403": "Origin or Host not allowed",
    "404": "Not found", "413": "Request body too large", "429": "Server busy (see Retry-After)",
    "500": "Generation failed", "507": "The response can't be stored: the disk under data_dir is full",
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
                    if status == "401" and not path.startswith("/v1/"):
                        continue
                    if status == "507" and not (path.startswith("/v1/responses") and method in ("post", "delete")):
                        continue
                    if status in ("413", "429", "500") and method != "post":
                        continue
                    responses.setdefault(status, {"description": description, **error})
                if (path, method) in STREAMING and "200" in responses:
                    responses["200"].setdefault("content", {})["text/event-stream"] = {"schema": SSE_EVENT}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
