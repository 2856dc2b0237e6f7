"""Anthropic's error shape, for every error on /v1/messages:

    {"type": "error", "error": {"type": "invalid_request_error", "message": "..."}}

The error type follows the HTTP status, as Anthropic's API and SDKs expect it.
"""

import json

from server.plumbing.errors import Shape

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
         503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    return TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_event(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def _body(status: int, message: str, _type: str, _param, _code) -> dict:
    return error_event(status, message)


def _stream_error(body: dict) -> str:
    return f"event: error\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"


SCHEMA = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {"type": "object", "required": ["type", "message"],
                  "properties": {"type": {"enum": sorted(set(TYPES.values()))}, "message": {"type": "string"}}},
    },
}
SHAPE = Shape(body=_body, stream_error=_stream_error, name="AnthropicErrorResponse", schema=SCHEMA)
