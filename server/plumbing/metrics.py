"""Prometheus metrics at GET /metrics (prometheus-client, its text format).

- swallow_http_requests_total{endpoint,method,status} and swallow_http_request_duration_seconds
  (counted by the request log in server/plumbing/middleware.py; `endpoint` is the route's path template)
- swallow_prompt_tokens_total, swallow_completion_tokens_total: tokens in and out
- swallow_time_to_first_token_seconds: from the request's arrival (queueing included) to its
  first generated token; swallow_time_per_output_token_seconds: between consecutive tokens
- swallow_turns_total{finish_reason}: assistant turns that ended (stop, length, tool_calls, error)
- swallow_requests_running / swallow_requests_queued: admission's slots held and requests waiting;
  per model (label `model`, loaded models only): swallow_engine_sequences / swallow_engine_waiting:
  the engine's batch and its inbox;
  swallow_engine_waiting_for_memory: requests held until their KV cache fits (memory-aware admission);
  swallow_kv_reserved_bytes / swallow_kv_budget_bytes: what the running requests may need, of what there is
- swallow_model_loaded{model}, swallow_model_weights_bytes{model}, swallow_requests_waiting_for_model{model},
  swallow_model_loads_total{model}, swallow_model_unloads_total{model,reason}: the models (server/registry/)
- tokens, times and turns carry the `model` label too
- swallow_engine_generations_total{model,reason}: generations the engine ended (stop, length,
  cancelled: its client left or stopped listening, error); swallow_engine_tokens_total{model}: the
  tokens the engine generated, read by a client or not (a generation nobody reads must stop)
- swallow_prompt_cache_hits_total, swallow_prompt_cache_reused_tokens_total: turns whose prompt
  started from the prompt cache, and the prompt tokens it saved
- swallow_reasoning_stops_total{reason}: analyses the server ended and turned into the answer,
  because of the reasoning budget (reason="budget") or a loop (reason="loop")
- swallow_structured_output_failures_total: structured-output requests that failed rather than
  return JSON that doesn't match (token limit reached mid-JSON, or a broken reply)
- swallow_undeclared_tool_calls_total: calls the model wrote to tools the request never declared,
  delivered as text (no client can act on them)
- the Batch API (server/batches/): swallow_batches{status}, swallow_batch_lines_pending,
  swallow_batch_lines_in_flight, swallow_batch_lines_total{result}; per model
  swallow_engine_batch_sequences / swallow_engine_batch_waiting (batch rows in the batch, and held
  for a free row) and swallow_batch_rows_gave_way_total (rows taken out for live requests)
- swallow_tool_calls_total{source,outcome}, swallow_tool_call_duration_seconds{source},
  swallow_tool_result_bytes_total{source}: calls the server ran itself (server/turn/loop.py), by the
  source's label (an MCP server's name) and outcome (ok, error, timeout, cancelled, unavailable, refused)
- swallow_mcp_server_up{server} (1 while connected), swallow_mcp_server_restarts_total{server}
- process_* (memory, CPU, open files) and python_gc_*

One registry per process (one server per process; bind() again replaces the model gauges). run_turn (server/turn/run.py) reports through
a TurnWatch, so every API that generates is counted the same way.
"""

import resource
import sys
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

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
PROMPT_TOKENS = Counter("swallow_prompt_tokens", "Prompt tokens of the turns started (tokens in)", ["model"],
                        registry=REGISTRY)
COMPLETION_TOKENS = Counter("swallow_completion_tokens", "Tokens generated (tokens out)", ["model"],
                            registry=REGISTRY)
FIRST_TOKEN_SECONDS = Histogram("swallow_time_to_first_token_seconds", "From a request's arrival to its "
                                "first generated token", ["model"], registry=REGISTRY,
                                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80))
TOKEN_SECONDS = Histogram("swallow_time_per_output_token_seconds", "Time between consecutive generated "
                          "tokens of a request", ["model"], registry=REGISTRY,
                          buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5))
TURNS = Counter("swallow_turns", "Assistant turns that ended, by model and finish reason",
                ["model", "finish_reason"], registry=REGISTRY)
CACHE_HITS = Counter("swallow_prompt_cache_hits", "Turns whose prompt started from the prompt cache", ["model"],
                     registry=REGISTRY)
CACHE_TOKENS = Counter("swallow_prompt_cache_reused_tokens", "Prompt tokens taken from the prompt cache "
                       "instead of being computed", ["model"], registry=REGISTRY)
ENGINE_ENDS = Counter("swallow_engine_generations", "Generations the engine ended, by model and how (stop, "
                      "length, cancelled, error)", ["model", "reason"], registry=REGISTRY)
ENGINE_TOKENS = Counter("swallow_engine_tokens", "Tokens the engine generated, read by a client or not", ["model"],
                        registry=REGISTRY)
MODEL_LOADS = Counter("swallow_model_loads", "Times a model was loaded", ["model"], registry=REGISTRY)
MODEL_UNLOADS = Counter("swallow_model_unloads", "Times a model was unloaded, by why (keep_alive, room, request)",
                        ["model", "reason"], registry=REGISTRY)
REASONING_STOPS = Counter("swallow_reasoning_stops", "Analyses the server ended to open the answer, by "
                          "reason (budget, loop)", ["reason"], registry=REGISTRY)
for _reason in ("budget", "loop"):
    REASONING_STOPS.labels(_reason)  # both series from the start, at 0
STRUCTURED_FAILURES = Counter("swallow_structured_output_failures", "Structured-output requests that failed "
                              "instead of returning non-conforming JSON", registry=REGISTRY)
UNDECLARED_CALLS = Counter("swallow_undeclared_tool_calls", "Tool calls the model wrote to a tool the request "
                           "did not declare, delivered as text instead", registry=REGISTRY)
BATCH_LINES = Counter("swallow_batch_lines", "Batch lines answered, by result (succeeded: the endpoint answered "
                      "2xx; failed: an error answer)", ["result"], registry=REGISTRY)
for _result in ("succeeded", "failed"):
    BATCH_LINES.labels(_result)
TOOL_CALLS = Counter("swallow_tool_calls", "Tool calls the server ran itself, by source and outcome (ok, error, "
                     "timeout, cancelled, unavailable, refused)", ["source", "outcome"], registry=REGISTRY)
TOOL_SECONDS = Histogram("swallow_tool_call_duration_seconds", "How long the server's own tool calls took",
                         ["source"], registry=REGISTRY,
                         buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
TOOL_RESULT_BYTES = Counter("swallow_tool_result_bytes", "Bytes of the results of the server's own tool calls, "
                            "as the tools returned them", ["source"], registry=REGISTRY)
MCP_SERVER_UP = Gauge("swallow_mcp_server_up", "1 while the MCP server is connected", ["server"], registry=REGISTRY)
MCP_SERVER_RESTARTS = Counter("swallow_mcp_server_restarts", "Times an MCP server was started again (it died, "
                              "or its start failed)", ["server"], registry=REGISTRY)
RUNNING = Gauge("swallow_requests_running", "Requests holding a generation slot", registry=REGISTRY)
QUEUED = Gauge("swallow_requests_queued", "Requests waiting for a generation slot", registry=REGISTRY)
router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def bind(admission, registry) -> None:
    """Point the gauges at the live counts: the server's, and each model's."""
    RUNNING.set_function(lambda: admission.running)
    QUEUED.set_function(lambda: admission.queued)
    global _models
    if _models is not None:
        REGISTRY.unregister(_models)
    _models = ModelGauges(registry)
    REGISTRY.register(_models)

    def counted(model: str, change: str, reason: str) -> None:  # reason: room, keep_alive, request
        if change == "load":
            MODEL_LOADS.labels(model).inc()
        else:
            MODEL_UNLOADS.labels(model, reason).inc()

    registry.on_change = counted


class ModelGauges(Collector):
    """Per-model gauges, read from the registry at each scrape (models come and go)."""

    ENGINE = (  # name, help, what of a loaded model's engine
        ("swallow_engine_sequences", "Sequences in the model's batch (prefilling or decoding)",
         lambda e: e.running),
        ("swallow_engine_waiting", "Requests submitted to the model's engine, not yet in its batch",
         lambda e: e.waiting),
        ("swallow_engine_waiting_for_memory", "Requests the engine holds until their KV cache fits beside the "
         "running ones", lambda e: e.waiting_for_memory),
        ("swallow_kv_reserved_bytes", "KV cache memory reserved for the running requests' worst case",
         lambda e: e.memory_stats()["kv_reserved_bytes"]),
        ("swallow_kv_budget_bytes", "Memory the KV caches may use (running requests and the prompt cache)",
         lambda e: e.kv_budget),
        ("swallow_engine_batch_sequences", "Batch lines' rows in the model's batch (of swallow_engine_sequences)",
         lambda e: e.batch_running),
        ("swallow_engine_batch_waiting", "Batch lines submitted, held until live requests leave a row free",
         lambda e: e.batch_waiting),
    )

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        slots = list(self.registry.slots.values())
        loaded = GaugeMetricFamily("swallow_model_loaded", "1 while the model is loaded", labels=["model"])
        waiting = GaugeMetricFamily("swallow_requests_waiting_for_model", "Requests waiting for their model "
                                    "to load", labels=["model"])
        weights = GaugeMetricFamily("swallow_model_weights_bytes", "Memory the loaded model's weights take",
                                    labels=["model"])
        for slot in slots:
            loaded.add_metric([slot.name], float(slot.state is not None))
            waiting.add_metric([slot.name], slot.waiting)
            if slot.state is not None:
                weights.add_metric([slot.name], self.registry.size(slot))
        yield from (loaded, waiting, weights)
        for name, text, read in self.ENGINE:
            family = GaugeMetricFamily(name, text, labels=["model"])
            for slot in slots:
                if slot.state is not None:
                    family.add_metric([slot.name], read(slot.state.engine))
            yield family
        gave_way = CounterMetricFamily("swallow_batch_rows_gave_way", "Batch rows the engine took out of its batch "
                                       "for live requests (each runs again)", labels=["model"])
        for slot in slots:
            if slot.state is not None:
                gave_way.add_metric([slot.name], slot.state.engine.gave_way)
        yield gave_way


class BatchGauges(Collector):
    """The Batch API's batches by status and their lines, read at each scrape."""

    def __init__(self, read):
        self.read = read  # () -> the batch runner's description (server/batches/runner.py)

    def collect(self):
        now = self.read()
        batches = GaugeMetricFamily("swallow_batches", "Batches by status (validating, in_progress, cancelling, "
                                    "finalizing, completed, failed, cancelled, expired)", labels=["status"])
        for status, count in now["by_status"].items():
            batches.add_metric([status], count)
        yield batches
        yield GaugeMetricFamily("swallow_batch_lines_pending", "Lines of the batches in progress not answered yet",
                                value=now["lines_total"] - now["lines_done"])
        yield GaugeMetricFamily("swallow_batch_lines_in_flight", "Batch lines being answered now",
                                value=now["lines_in_flight"])


_batches: BatchGauges | None = None


def bind_batches(describe) -> None:
    """Point the batch gauges at the batch runner (bind again replaces them)."""
    global _batches
    if _batches is not None:
        REGISTRY.unregister(_batches)
    _batches = BatchGauges(describe)
    REGISTRY.register(_batches)


_models: ModelGauges | None = None


class TurnWatch:
    """One assistant turn's numbers: created when the turn starts, told of every generated
    token, closed when it stops listening, told how it ended."""

    def __init__(self, prompt_tokens: int, model: str, continued: bool = False, timed: bool = True):
        """`continued`: a later round of a turn (after a tool the server ran): its first token is not
        the request's first, so it is no time-to-first-token. `timed` False: tokens counted, times
        not (a batch line's: it waits for live requests on purpose)."""
        self.model = model
        self.continued, self.timed = continued, timed
        PROMPT_TOKENS.labels(model).inc(prompt_tokens)
        # this model's series, looked up once rather than at every token
        self._first = FIRST_TOKEN_SECONDS.labels(model)
        self._between = TOKEN_SECONDS.labels(model)
        self._completion = COMPLETION_TOKENS.labels(model)
        self.start = REQUEST_START.get() or time.perf_counter()
        self.last: float | None = None
        self.closed = False

    def token(self) -> None:
        now = time.perf_counter()
        if self.timed and self.last is None and not self.continued:
            self._first.observe(now - self.start)
        elif self.timed and self.last is not None:
            self._between.observe(now - self.last)
        self.last = now
        self._completion.inc()

    def close(self, generation) -> None:
        if self.closed:
            return
        self.closed = True
        cached = getattr(generation, "cached_tokens", 0) or 0
        if cached:
            CACHE_HITS.labels(self.model).inc()
            CACHE_TOKENS.labels(self.model).inc(cached)

    def end(self, end) -> None:
        TURNS.labels(self.model, end.finish_reason).inc()


def process_memory() -> dict:
    """This process's resident memory now (None where /proc can't tell: not Linux) and at its peak."""
    rss = None
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_bytes": rss, "peak_rss_bytes": peak if sys.platform == "darwin" else peak * 1024}
