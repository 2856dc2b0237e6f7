"""What every request goes through before an endpoint sees it, outermost first:

1. RequestLog: a request id (the client's X-Request-ID when it is sane, else a new one),
   returned in X-Request-ID; one access-log line and the HTTP metrics per request (an error
   response's line says why: its code, else the start of its message); an exception that
   escapes the app becomes a 500 error object, or, once a stream has begun, an error event
   (an NDJSON error line on Ollama's API) so the stream still ends cleanly.
2. HostGuard: a server listening on a loopback address answers only requests addressed to a
   loopback name (localhost, 127.0.0.1, [::1], any port) or to a name in `allowed_hosts`; any
   other `Host` gets 403 in the API's error shape. A web page whose name an attacker makes
   resolve to 127.0.0.1 (DNS rebinding) is same-origin with the server, but its requests carry
   its own name in `Host`. Listening on another address, the check is off unless
   `allowed_hosts` is set.
3. CORS (Starlette's) for the configured origins, and OriginGuard: a browser request to /v1/*
   (or Ollama's /api/*) from any other origin gets 403 (CORS headers alone would let it run, unread).
4. ApiKey (only with an api_key): /v1/* and /api/* (and /metrics, with metrics_public = false) want
   `Authorization: Bearer <key>` or `x-api-key`, else 401.
5. Gate: bodies over max_body_mb (max_file_mb for the Batch API's uploads) get 413; a lone
   surrogate in a JSON string, JSON nested more than MAX_DEPTH levels, or text the tokenizer would
   take too long over (text_runs.py) gets 400; generating endpoints go through admission
   (server/plumbing/admission.py): a slot, a place in the queue (the client leaving frees it), or 429.

All are plain ASGI middleware: no BaseHTTPMiddleware, so streams pass through unbuffered and
a client's disconnect reaches the endpoint.
"""

import asyncio
import hmac
import ipaddress
import json
import logging
import re
import time
import uuid

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from server.config import Settings
from server.plumbing import metrics
from server.plumbing.admission import Admission, Full
from server.plumbing.errors import shaped_body, stream_error
from server.plumbing.text_runs import slow_to_tokenize

log = logging.getLogger("swallow.errors")
access_log = logging.getLogger("swallow.access")

GENERATING = {"/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/messages", "/api/chat",
              "/api/generate"}
UPLOADS = {"/v1/files", "/v1/messages/batches"}  # bodies up to max_file_mb: a batch's requests
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")
METHODS = {"GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"}  # others: "other" in metrics
UNDOCUMENTED = ("/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/", "/status.json",
                "/web/{name}")  # routes outside /openapi.json
STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")  # SSE; Ollama's NDJSON
MAX_DEPTH = 64  # JSON nesting a request may have (harmony's renderer gives up near 128)
ERROR_BODY_KEPT = 8192  # bytes of an error response read for the access log's reason
REASON_LENGTH = 120  # characters of an error message the access log shows


def install(app, settings: Settings, admission: Admission) -> None:
    """Add the middleware; Starlette runs the last added outermost."""
    app.add_middleware(Gate, admission=admission, max_body=settings.max_body_mb * 2**20,
                       max_upload=max(settings.max_file_mb, settings.max_body_mb) * 2**20)
    if settings.api_key:
        app.add_middleware(ApiKey, key=settings.api_key, metrics=not settings.metrics_public)
    allowed = origin_regex(settings.cors_origins)
    app.add_middleware(OriginGuard, allowed=allowed)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if allowed is None else [],
        allow_origin_regex=None if allowed is None else allowed.pattern,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID", "Retry-After"],
        max_age=600,
    )
    hosts = allowed_hosts(settings)
    if hosts is not None:
        app.add_middleware(HostGuard, allowed=hosts, listen=settings.host)
    app.add_middleware(RequestLog, api=app)


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (brackets and a trailing dot allowed)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: Settings) -> list[str] | None:
    """The Host names served besides loopback ones; None: every name (no check). The check is on
    when the server listens on a loopback address, or when allowed_hosts names any host."""
    if "*" in settings.allowed_hosts:
        return None
    if is_loopback(settings.host) or settings.allowed_hosts:
        return list(settings.allowed_hosts)
    return None


def origin_regex(origins: list[str]) -> re.Pattern | None:
    """The allowed origins as one pattern; None when every origin is allowed ("*").
    "scheme://host:*" allows the host on any port, and without one."""
    if "*" in origins:
        return None
    parts = [re.escape(o[:-2]) + r"(:\d+)?" if o.endswith(":*") else re.escape(o) for o in origins]
    return re.compile("(?i)" + ("|".join(parts) or "(?!)"))  # inline flag: Starlette compiles .pattern


def _template_pattern(template: str) -> re.Pattern:
    """/v1/models/{model_id}/load -> a pattern; parameters may hold slashes (model ids do): the
    templates are tried longest first, so /v1/models/a/b/load is the load route's."""
    return re.compile(re.sub(r"\\\{[^}\\]*\\\}", ".+", re.escape(template)))


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


TOKENIZER_PATHS = {"/tokenize", "/detokenize"}  # outside /v1 (vLLM's and llama.cpp's places), guarded alike


def _is_api(path: str) -> bool:
    """The paths the API key and the origin check guard: /v1, the tokenizer's, Ollama's /api."""
    return path in ("/v1", "/api") or path.startswith(("/v1/", "/api/")) or path in TOKENIZER_PATHS


async def send_error(send, scope, status: int, message: str, *, type: str = "invalid_request_error",
                     code: str | None = None, param: str | None = None, headers=()) -> None:
    body = json.dumps(shaped_body(scope.get("path", ""), status, message, type, param, code)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequestLog:
    def __init__(self, app, api):
        self.app, self.api = app, api
        self._templates: list[tuple[re.Pattern, str]] | None = None

    def endpoint(self, path: str) -> str:
        """The path's route template (/v1/responses/{response_id}), so that metric labels
        don't grow with ids; "unmatched" for paths no route serves."""
        if self._templates is None:  # on first use: every route is registered by then
            try:
                paths = [*self.api.openapi().get("paths", {}), *UNDOCUMENTED]
            except Exception:
                log.exception("no OpenAPI document: requests are counted without their endpoint")
                paths = list(UNDOCUMENTED)
            # longest first: /v1/responses/{id}/input_items before /v1/responses/{id}
            self._templates = [(_template_pattern(t), t) for t in sorted(paths, key=len, reverse=True)]
        return next((t for pattern, t in self._templates if pattern.fullmatch(path)), "unmatched")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = (_header(scope, b"x-request-id") or b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        started = metrics.REQUEST_START.set(start)
        status, sent, stream, ended = None, 0, False, False
        error_body = None  # an error response's JSON body, read for the log line

        async def send_logged(message):
            nonlocal status, sent, stream, ended, error_body
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
                status = message["status"]
                stream = any(k.lower() == b"content-type" and v.startswith(STREAM_TYPES) for k, v in headers)
                if status >= 400 and any(k.lower() == b"content-type" and b"json" in v for k, v in headers):
                    error_body = b""
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                sent += len(chunk)
                ended = not message.get("more_body", False)
                if error_body is not None and len(error_body) < ERROR_BODY_KEPT:
                    error_body += chunk[:ERROR_BODY_KEPT - len(error_body)]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except Exception as e:
            await self._failed(e, scope, request_id, status, stream, ended, send_logged)
        finally:
            metrics.REQUEST_START.reset(started)
            try:
                self._record(scope, request_id, status, time.perf_counter() - start, sent, ended,
                             error_reason(error_body) if error_body else None)
            except Exception:
                log.exception("could not log request %s", request_id)

    def _record(self, scope, request_id: str, status, elapsed: float, sent: int, ended: bool,
                reason: str | None = None) -> None:
        shown = status if status is not None else 499  # nothing sent: the client left first
        endpoint = self.endpoint(scope.get("path", ""))
        method = scope["method"] if scope["method"] in METHODS else "other"
        metrics.HTTP_REQUESTS.labels(endpoint, method, str(shown)).inc()
        metrics.HTTP_SECONDS.labels(endpoint).observe(elapsed)
        client = scope.get("client") or ("-", 0)
        access_log.info('%s:%s "%s %s HTTP/%s" %s %.3fs %dB%s%s request_id=%s', client[0], client[1],
                        scope["method"], scope.get("path", ""), scope.get("http_version", "1.1"), shown,
                        elapsed, sent, "" if ended or status is None else " (cut short)",
                        f" error={reason}" if reason else "", request_id)

    @staticmethod
    async def _failed(error: Exception, scope, request_id: str, status, stream: bool, ended: bool, send) -> None:
        """Answer for an exception the app let out, if the connection still allows it."""
        if isinstance(error, (OSError, ClientDisconnect)):
            return  # the client is gone: nobody to tell
        log.error("request %s failed", request_id, exc_info=error)
        try:
            if status is None:
                await send_error(send, scope, 500, "Internal server error.", type="server_error")
            elif stream and not ended:
                path = scope.get("path", "")
                event = shaped_body(path, 500, f"The server failed while streaming (request {request_id}).",
                                    "server_error")
                body = stream_error(path, event).encode()
                await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception:  # the connection broke too
            pass


def error_reason(body: bytes) -> str | None:
    """Why an error response failed, short, for the access log: the error's code (OpenAI's
    object), else the start of its message (quoted), in any API's error shape."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):  # not JSON, or cut at ERROR_BODY_KEPT, or not an object
        return None
    code, message = (error.get("code"), error.get("message")) if isinstance(error, dict) else (None, error)
    if code:
        return str(code)
    if not isinstance(message, str) or not message:
        return None
    short = message if len(message) <= REASON_LENGTH else message[:REASON_LENGTH - 1] + "…"
    return json.dumps(short, ensure_ascii=False)


def _host_name(header: bytes) -> str:
    """The name of a Host header, without its port: "[::1]:8000" -> "[::1]", "a.b:80" -> "a.b"."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostGuard:
    """403 for a request whose Host is neither a loopback name nor an allowed one (DNS rebinding)."""

    def __init__(self, app, allowed: list[str], listen: str):
        self.app, self.listen = app, listen
        self.names = {h.rstrip(".") for h in allowed if not h.startswith("*.")}
        self.suffixes = tuple(h[1:].rstrip(".") for h in allowed if h.startswith("*."))  # ".example.lan"

    def allows(self, name: str) -> bool:
        name = name.rstrip(".")
        return is_loopback(name) or name in self.names or name.endswith(self.suffixes)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = _header(scope, b"host")
            name = _host_name(header) if header is not None else None
            if name is not None and not self.allows(name):  # no Host at all (HTTP/1.0): not a browser
                return await send_error(
                    send, scope, 403, f"Requests addressed to the host {name!r} are not served: this server "
                    f"listens on {self.listen} and answers requests for localhost, 127.0.0.1 or [::1] (a "
                    "protection against DNS rebinding). To reach it under another name, add that name to "
                    "the server's allowed_hosts setting.", code="host_not_allowed")
        await self.app(scope, receive, send)


class OriginGuard:
    """403 for browser requests to /v1/* and /api/* from origins that may not call the API."""

    def __init__(self, app, allowed: re.Pattern | None):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed is not None and _is_api(scope.get("path", "")):
            origin = _header(scope, b"origin")
            if origin is not None and not self.allowed.fullmatch(origin.decode("latin-1")):
                return await send_error(
                    send, scope, 403, f"Requests from pages of the origin {origin.decode('latin-1')!r} are not "
                    "allowed; add it to the server's cors_origins setting.", code="origin_not_allowed")
        await self.app(scope, receive, send)


class ApiKey:
    """/v1/* and /api/* want the key, as `Authorization: Bearer <key>` (OpenAI's SDKs) or `x-api-key: <key>`
    (Anthropic's); so does /metrics when `metrics` is true."""

    def __init__(self, app, key: str, metrics: bool = False):
        self.app, self.key, self.metrics = app, key.encode(), metrics

    def _guards(self, path: str) -> bool:
        return _is_api(path) or (self.metrics and path == "/metrics")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self._guards(scope.get("path", "")) and scope["method"] != "OPTIONS":
            given = self._given(scope)
            if given is None:
                return await self._refuse(send, scope, "You didn't provide an API key. Send it in the "
                                          "Authorization header: 'Authorization: Bearer <key>' (or in "
                                          "'x-api-key: <key>').", None)
            if not hmac.compare_digest(given, self.key):
                return await self._refuse(send, scope, "Incorrect API key provided.", "invalid_api_key")
        await self.app(scope, receive, send)

    @staticmethod
    def _given(scope) -> bytes | None:
        bearer = _header(scope, b"authorization")
        if bearer is not None:
            scheme, _, token = bearer.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
        key = _header(scope, b"x-api-key")
        return key.strip() if key is not None else None

    @staticmethod
    async def _refuse(send, scope, message: str, code: str | None) -> None:
        await send_error(send, scope, 401, message, code=code, headers=[(b"www-authenticate", b"Bearer")])


class Gate:
    """Body size limit, JSON sanity, and admission for the generating endpoints."""

    def __init__(self, app, admission: Admission, max_body: int, max_upload: int | None = None):
        self.app, self.admission, self.max_body = app, admission, max_body
        self.max_upload = max_upload or max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.max_upload if scope.get("path") in UPLOADS else self.max_body
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await self._too_large(send, scope, limit)
        ticket = None
        if scope.get("path") in GENERATING:
            try:
                ticket = self.admission.enter()
            except Full:
                wait = str(self.admission.retry_after()).encode()
                return await send_error(
                    send, scope, 429, "The server is busy: every generation slot is taken and the queue is full. "
                    "Retry after a moment.", type="rate_limit_error", code="server_busy",
                    headers=[(b"retry-after", wait)])
        try:
            body = await self._read_body(receive, limit)
            if body is None:
                return await self._too_large(send, scope, limit)
            if body is False:
                return  # the client left while sending
            form = (_header(scope, b"content-type") or b"").startswith(b"multipart/")
            problem = None if form else json_problem(body)
            if problem:
                return await send_error(send, scope, 400, problem)
            slow = slow_to_tokenize(body)  # before it could hold the event loop for minutes
            if slow:
                return await send_error(send, scope, 400, slow, code="unbroken_text")
            if ticket is not None and not await self._wait_for_slot(ticket, receive):
                return  # left while waiting in the queue: its place is given back below
            await self.app(scope, _replay(body, receive), send)
        finally:
            if ticket is not None:
                self.admission.leave(ticket)

    async def _read_body(self, receive, limit: int) -> bytes | None | bool:
        """The whole body; None when it is over the limit; False when the client left."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _wait_for_slot(ticket: asyncio.Future, receive) -> bool:
        """True once the ticket holds a slot; False when the client hangs up first."""
        while not ticket.done():
            listener = asyncio.ensure_future(receive())
            try:
                await asyncio.wait({ticket, listener}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not listener.done():
                    listener.cancel()
            if listener.done() and not listener.cancelled():
                if listener.exception() is not None or listener.result()["type"] == "http.disconnect":
                    return False
        return True

    async def _too_large(self, send, scope, limit: int) -> None:
        setting = "max_file_mb" if limit == self.max_upload and scope.get("path") in UPLOADS else "max_body_mb"
        await send_error(send, scope, 413, f"The request body is larger than this server's limit of "
                         f"{limit // 2**20} MiB ({setting}).", code="request_too_large",
                         headers=[(b"connection", b"close")])


def _replay(body: bytes, receive):
    """A receive that hands the app the body read already, then the real messages."""
    pending = True

    async def replay():
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def json_problem(body: bytes) -> str | None:
    """Why a JSON body can't be served, for what the JSON parser lets through: strings with
    lone surrogates (they can't be encoded into tokens) and nesting deeper than MAX_DEPTH."""
    escaped = SURROGATE_ESCAPE.search(body) is not None
    maybe_deep = body.count(b"[") + body.count(b"{") > MAX_DEPTH
    if not (escaped or maybe_deep):
        return None
    too_deep = f"The request's JSON is nested more than {MAX_DEPTH} levels deep."
    try:
        data = json.loads(body)
    except RecursionError:
        return too_deep
    except ValueError:
        return None  # not JSON: the endpoint says so
    if maybe_deep and _deeper_than(data, MAX_DEPTH):
        return too_deep
    if escaped:
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            return (f"The request contains a lone surrogate ({e.object[e.start]!a}) in a string; "
                    "strings must be valid Unicode.")
    return None


def _deeper_than(data, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
