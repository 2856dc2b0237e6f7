"""Prometheus metrics at GET /metrics (prometheus-client, its text format).

- swallow_http_requests_total{endpoint,method,status} and swallow_http_request_duration_seconds
  (counted by the request log in server/plumbing/middleware.py; `endpoint` is the route's path template)
- swallow_prompt_tokens_total, swallow_completion_tokens_total: tokens in and out
- swallow_time_to_first_token_seconds: from the request's arrival (queueing included) to its
  first generated token; swallow_time_per_output_token_seconds: between consecutive tokens
- swallow_turns_total{finish_reason}: assistant turns that ended (stop, length, tool_calls, error)
- swallow_requests_running / swallow_requests_queued: admission's slots held and requests waiting;
  swallow_engine_sequences / swallow_engine_waiting: the engine's batch and its inbox;
  swallow_engine_waiting_for_memory: requests held until their KV cache fits (memory-aware admission);
  swallow_kv_reserved_bytes / swallow_kv_budget_bytes: what the running requests may need, of what there is
- swallow_prompt_cache_hits_total, swallow_prompt_cache_reused_tokens_total: turns whose prompt
  started from the prompt cache, and the prompt tokens it saved
- swallow_reasoning_stops_total{reason}: analyses the server ended and turned into the answer,
  because of the reasoning budget (reason="budget") or a loop (reason="loop")
- swallow_structured_output_failures_total: structured-output requests that failed rather than
  return JSON that doesn't match (token limit reached mid-JSON, or a broken reply)
- swallow_undeclared_tool_calls_total: calls the model wrote to tools the request never declared,
  delivered as text (no client can act on them)
- process_* (memory, CPU, open files) and python_gc_*

One registry per process (one server per process). run_turn (server/turn/run.py) reports through
a TurnWatch, so every API that generates is counted the same way.
"""

import time
from contextvars import ContextVar

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

disable_created_metrics()  # no *_created series beside every counter and histogram
REGISTRY = CollectorRegistry()
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

# When the request being served arrived (time.perf_counter()); set by the request log.
REQUEST_START: ContextVar[float | None] = ContextVar("swallow_request_start", default=None)

HTTP_REQUESTS = Counter("swallow_http_requests", "HTTP requests answered, by endpoint, method and status",
                        ["endpoint", "method", "status"], registry=REGISTRY)
HTTP_SECONDS = Histogram("swallow_http_request_duration_seconds", "Time from a request's arrival to its "
                         "last byte (streams included)", ["endpoint"], registry=REGISTRY,
                         buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
PROMPT_TOKENS = Counter("swallow_prompt_tokens", "Prompt tokens of the turns started (tokens in)",
                        registry=REGISTRY)
COMPLETION_TOKENS = Counter("swallow_completion_tokens", "Tokens generated (tokens out)", registry=REGISTRY)
FIRST_TOKEN_SECONDS = Histogram("swallow_time_to_first_token_seconds", "From a request's arrival to its "
                                "first generated token", registry=REGISTRY,
                                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80))
TOKEN_SECONDS = Histogram("swallow_time_per_output_token_seconds", "Time between consecutive generated "
                          "tokens of a request", registry=REGISTRY,
                          buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5))
TURNS = Counter("swallow_turns", "Assistant turns that ended, by finish reason", ["finish_reason"],
                registry=REGISTRY)
CACHE_HITS = Counter("swallow_prompt_cache_hits", "Turns whose prompt started from the prompt cache",
                     registry=REGISTRY)
CACHE_TOKENS = Counter("swallow_prompt_cache_reused_tokens", "Prompt tokens taken from the prompt cache "
                       "instead of being computed", registry=REGISTRY)
REASONING_STOPS = Counter("swallow_reasoning_stops", "Analyses the server ended to open the answer, by "
                          "reason (budget, loop)", ["reason"], registry=REGISTRY)
for _reason in ("budget", "loop"):
    REASONING_STOPS.labels(_reason)  # both series from the start, at 0
STRUCTURED_FAILURES = Counter("swallow_structured_output_failures", "Structured-output requests that failed "
                              "instead of returning non-conforming JSON", registry=REGISTRY)
UNDECLARED_CALLS = Counter("swallow_undeclared_tool_calls", "Tool calls the model wrote to a tool the request "
                           "did not declare, delivered as text instead", registry=REGISTRY)
RUNNING = Gauge("swallow_requests_running", "Requests holding a generation slot", registry=REGISTRY)
QUEUED = Gauge("swallow_requests_queued", "Requests waiting for a generation slot", registry=REGISTRY)
ENGINE_SEQUENCES = Gauge("swallow_engine_sequences", "Sequences in the engine's batch (prefilling or "
                         "decoding)", registry=REGISTRY)
ENGINE_WAITING_MEMORY = Gauge("swallow_engine_waiting_for_memory", "Requests the engine holds until their KV "
                              "cache fits beside the running ones", registry=REGISTRY)
KV_RESERVED = Gauge("swallow_kv_reserved_bytes", "KV cache memory reserved for the running requests' worst case",
                    registry=REGISTRY)
KV_BUDGET = Gauge("swallow_kv_budget_bytes", "Memory the KV caches may use (running requests and the prompt "
                  "cache)", registry=REGISTRY)
ENGINE_WAITING = Gauge("swallow_engine_waiting", "Requests submitted to the engine, not yet in its batch",
                       registry=REGISTRY)

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def bind(admission, engine) -> None:
    """Point the gauges at the live counts."""
    RUNNING.set_function(lambda: admission.running)
    QUEUED.set_function(lambda: admission.queued)
    ENGINE_SEQUENCES.set_function(lambda: engine.running)
    ENGINE_WAITING.set_function(lambda: engine.waiting)
    ENGINE_WAITING_MEMORY.set_function(lambda: engine.waiting_for_memory)
    KV_RESERVED.set_function(lambda: engine.memory_stats()["kv_reserved_bytes"])
    KV_BUDGET.set_function(lambda: engine.kv_budget)


class TurnWatch:
    """One assistant turn's numbers: created when the turn starts, told of every generated
    token, closed when it stops listening, told how it ended."""

    def __init__(self, prompt_tokens: int):
        PROMPT_TOKENS.inc(prompt_tokens)
        self.start = REQUEST_START.get() or time.perf_counter()
        self.last: float | None = None
        self.closed = False

    def token(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            FIRST_TOKEN_SECONDS.observe(now - self.start)
        else:
            TOKEN_SECONDS.observe(now - self.last)
        self.last = now
        COMPLETION_TOKENS.inc()

    def close(self, generation) -> None:
        if self.closed:
            return
        self.closed = True
        cached = getattr(generation, "cached_tokens", 0) or 0
        if cached:
            CACHE_HITS.inc()
            CACHE_TOKENS.inc(cached)

    def end(self, end) -> None:
        TURNS.labels(end.finish_reason).inc()
