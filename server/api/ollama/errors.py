"""Ollama's error shape, for every error under /api:

    {"error": "message"}

with the HTTP status saying what kind it is. A stream already begun ends with one more NDJSON
line in that shape, as Ollama's own server does; the `ollama` libraries raise it as a
ResponseError.
"""

import json

from server.plumbing.errors import Shape


def error_body(message: str) -> dict:
    return {"error": message}


def error_line(message: str) -> str:
    return ndjson(error_body(message))


def ndjson(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n"


def _body(_status: int, message: str, _type: str, _param, _code) -> dict:
    return error_body(message)


def _stream_error(body: dict) -> str:
    return ndjson(body)


SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
SHAPE = Shape(body=_body, stream_error=_stream_error, name="OllamaErrorResponse", schema=SCHEMA)
