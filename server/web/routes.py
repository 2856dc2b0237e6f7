"""The browser chat page and the live status view.

- GET /            the chat page (static/index.html)
- GET /web/{file}  its scripts, styles and vendored libraries (only files of static/)
- GET /status.json what the status panel shows: the model, memory, running and queued requests,
                   the prompt cache, tokens/s over the last minutes, the batches in progress, and
                   the built-in tools the server runs (the page's search and python toggles)

None of these is under /v1, so like /health and /metrics they need no API key; the page sends the
key (asked for once, kept in the browser) with its /v1 requests. The page is same-origin, so the
CORS rules are unchanged.

The status JSON reads the server's own Prometheus counters (the same numbers as /metrics) and the
live state on app.state; the tokens/s history is sampled whenever /status.json is asked for (the
page asks every second or two), at most once a second, for the last HISTORY_SECONDS.
"""

import os
import sys
import time
from collections import deque
from itertools import pairwise
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from server.plumbing import metrics

STATIC = Path(__file__).resolve().parent / "static"
HISTORY_SECONDS = 300
GENERATING = ("/v1/chat/completions", "/v1/responses", "/v1/completions")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
         ".md": "text/plain; charset=utf-8", "": "text/plain; charset=utf-8"}
# the page's own files change with the server: the browser checks before it uses its copy
NO_STORE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return _file(STATIC / "index.html")


@router.get("/web/{name:path}", include_in_schema=False)
def static_file(name: str) -> FileResponse:
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file():
        raise HTTPException(404, "Not Found")
    return _file(path)


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=TYPES.get(path.suffix, "application/octet-stream"), headers=NO_STORE)


@router.get("/status.json", include_in_schema=False)
def status(request: Request) -> dict:
    registry = request.app.state.registry
    admission = request.app.state.admission
    default = registry.default
    engines = [slot.state.engine for slot in registry.loaded]
    completion = _total("swallow_completion_tokens")
    prompt = _total("swallow_prompt_tokens")
    # turns that ended, or (more, when some were stopped before they ended) generating requests answered
    turns = max(_total("swallow_turns"), _total("swallow_http_requests", _generating))
    hits = _total("swallow_prompt_cache_hits")
    reused = _total("swallow_prompt_cache_reused_tokens")
    history = _history(request.app, completion)
    return {
        "model": default.name,
        "context_length": default.state.context_length if default.state else default.listed.context_length(),
        "loaded": default.state is not None and default.state.engine.ready,
        "models_loaded": [slot.name for slot in registry.loaded],
        "platform": sys.platform,
        "memory": _memory(sum(registry.size(slot) for slot in registry.loaded)),
        "requests": {
            "running": admission.running,
            "queued": admission.queued,
            "max_concurrency": admission.max_concurrency,
            "max_queue": admission.max_queue,
            "engine_sequences": sum(engine.running for engine in engines),
            "engine_waiting": sum(engine.waiting for engine in engines),
        },
        "prompt_cache": {
            **(default.state.engine.cache_stats() if default.state else {}),
            "hits": int(hits),
            "turns": int(turns),
            "hit_rate": min(1.0, hits / turns) if turns else None,
            "reused_tokens": int(reused),
            "token_hit_rate": reused / prompt if prompt else None,
        },
        "tokens": {"prompt": int(prompt), "completion": int(completion)},
        "tokens_per_second": history,
        "builtin_tools": _builtin_tools(request.app),
        "batches": _batches(request.app),
    }


def _batches(app) -> dict:
    """The Batch API's batches in progress (server/batches/): each one's lines done, and the totals."""
    running = app.state.batch_store.running_batches()
    return {**app.state.batch_runner.describe(),
            "in_progress": [{"id": b.id, "status": b.status, "endpoint": b.endpoint, "total": b.total,
                             "completed": b.succeeded, "failed": b.failed, "output_tokens": b.output_tokens,
                             "created_at": b.created_at} for b in running]}


def _builtin_tools(app) -> dict:
    """{"browser": {"default": bool}, "python": {...}}: the built-ins this server runs, and whether
    chat completions turns each on by default."""
    toolbox, settings = app.state.toolbox, app.state.settings
    defaults = {"browser": settings.browser_default, "python": settings.python_default}
    return {name: {"default": default} for name, default in defaults.items() if toolbox.offers(name)}


def _total(name: str, where=lambda labels: True) -> float:
    """A counter's value summed over its labels (those `where` accepts), from the server's registry:
    the numbers /metrics shows."""
    total = 0.0
    for family in metrics.REGISTRY.collect():
        if family.name == name:
            total += sum(s.value for s in family.samples if s.name == name + "_total" and where(s.labels))
    return total


def _generating(labels: dict) -> bool:
    return labels.get("endpoint") in GENERATING and labels.get("status", "").startswith("2")


def _history(app, completion: float) -> list[dict]:
    """[{t, tokens_per_second}]: the generation rate between successive samples, oldest first."""
    samples: deque = getattr(app.state, "web_samples", None) or deque()
    app.state.web_samples = samples
    now = time.time()
    if not samples or now - samples[-1][0] >= 1.0:
        samples.append((now, completion))
    while samples and now - samples[0][0] > HISTORY_SECONDS:
        samples.popleft()
    return [{"t": round(b[0], 3), "tokens_per_second": round((b[1] - a[1]) / (b[0] - a[0]), 2)}
            for a, b in pairwise(samples)]


def _memory(weights_bytes: int) -> dict:
    memory = {"weights_bytes": weights_bytes or None, "process_rss_bytes": _rss()}
    try:
        import mlx.core as mx

        memory.update(mlx_active_bytes=mx.get_active_memory(), mlx_peak_bytes=mx.get_peak_memory(),
                      mlx_cache_bytes=mx.get_cache_memory())
    except (ImportError, AttributeError):  # an mlx without these counters
        return memory
    return memory


def _rss() -> int | None:
    """The server process's resident memory (Linux: /proc; elsewhere its peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except ImportError:  # no resource module (Windows)
        return None
    return peak if sys.platform == "darwin" else peak * 1024
