"""A batch's requests, checked before the batch is created: what makes a whole input a 400.

OpenAI's input file is JSONL, one request a line:

    {"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

Anthropic's Message Batches send the requests inline: [{"custom_id": ..., "params": {...}}].

What is checked here is the batch's shape: every line a JSON object with a custom_id, for the
batch's endpoint, each custom_id once. A request's body is not: it is validated when the line
runs, by the endpoint's own schema, and a bad one fails alone (its error in the error file),
exactly as that endpoint would have answered it.
"""

import json
import re
from dataclasses import dataclass

MAX_REQUESTS = 50_000  # OpenAI's limit per batch
MAX_MESSAGE_REQUESTS = 100_000  # Anthropic's
MAX_CUSTOM_ID = 512
ANTHROPIC_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class IntakeError(ValueError):
    """Why the requests can't make a batch (a 400 at creation)."""


@dataclass(frozen=True)
class Line:
    number: int  # the line of the input file (1-based), or the request's index + 1
    custom_id: str
    body: str  # the request's body, JSON


def openai_lines(data: bytes, endpoint: str) -> list[Line]:
    """The requests of an OpenAI batch input file for `endpoint`; IntakeError naming the first
    line that can't be one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise IntakeError(f"The input file is not UTF-8 text (byte {e.start}); a batch input file is JSONL, "
                          "one request a line.") from None
    lines, seen = [], {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            request = json.loads(raw)
        except ValueError:
            raise IntakeError(f"Line {number} of the input file is not JSON; a batch input file is JSONL, one "
                              'request a line: {"custom_id": ..., "method": "POST", "url": ..., "body": {...}}.'
                              ) from None
        if not isinstance(request, dict):
            raise IntakeError(f"Line {number} of the input file is not a JSON object.")
        custom_id = _custom_id(request.get("custom_id"), number, seen)
        if request.get("method", "POST") != "POST":
            raise IntakeError(f"Line {number} has method {request.get('method')!r}; batch requests are POST.")
        url = request.get("url")
        if url != endpoint:
            raise IntakeError(f"Line {number} is a request for {url!r}, but this batch's endpoint is {endpoint!r}: "
                              "every line of a batch goes to its endpoint.")
        body = request.get("body")
        if not isinstance(body, dict):
            raise IntakeError(f"Line {number} has no request body (a JSON object under \"body\").")
        lines.append(Line(number, custom_id, json.dumps(body, ensure_ascii=False)))
        if len(lines) > MAX_REQUESTS:
            raise IntakeError(f"The input file has more than {MAX_REQUESTS} requests, the most one batch may have.")
    if not lines:
        raise IntakeError("The input file has no requests.")
    return lines


def message_lines(requests: list) -> list[Line]:
    """The requests of an Anthropic Message Batch (`requests`: [{custom_id, params}])."""
    if not requests:
        raise IntakeError("requests: a Message Batch needs at least one request.")
    if len(requests) > MAX_MESSAGE_REQUESTS:
        raise IntakeError(f"requests: at most {MAX_MESSAGE_REQUESTS} requests per Message Batch.")
    lines, seen = [], {}
    for index, request in enumerate(requests):
        if not isinstance(request, dict):
            raise IntakeError(f"requests[{index}]: not an object with custom_id and params.")
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not ANTHROPIC_CUSTOM_ID.fullmatch(custom_id):
            raise IntakeError(f"requests[{index}].custom_id: 1 to 64 letters, digits, '-' or '_'.")
        if custom_id in seen:
            raise IntakeError(f"requests[{index}].custom_id: {custom_id!r} is also requests[{seen[custom_id]}]'s; "
                              "each request of a batch needs its own custom_id.")
        seen[custom_id] = index
        params = request.get("params")
        if not isinstance(params, dict):
            raise IntakeError(f"requests[{index}].params: the request's Messages API parameters, an object.")
        lines.append(Line(index + 1, custom_id, json.dumps(params, ensure_ascii=False)))
    return lines


def _custom_id(value, number: int, seen: dict) -> str:
    if not isinstance(value, str) or not value:
        raise IntakeError(f"Line {number} has no custom_id (a non-empty string that names the request in the "
                          "output).")
    if len(value) > MAX_CUSTOM_ID:
        raise IntakeError(f"Line {number}'s custom_id is longer than {MAX_CUSTOM_ID} characters.")
    if value in seen:
        raise IntakeError(f"Line {number}'s custom_id {value!r} is also line {seen[value]}'s; each request of a "
                          "batch needs its own custom_id.")
    seen[value] = number
    return value
