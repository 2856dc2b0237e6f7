"""The batch runner: batches' pending lines through the endpoints' own code, in the background.

One task on the event loop. It keeps up to `window` lines in flight (twice max_batch_size: the
batch's rows, and as many ready to take a row the moment one ends), oldest batch first, each
line as its own task that runs exactly what the live endpoint runs for a non-stream request
(its schema, its translation, the turn, its output: `Endpoint.reply`), so a line's answer is
the body the endpoint would have returned. The lines are batch work (`BACKGROUND`): the engine
admits them only into rows live requests leave, and takes them out again, youngest first, when a
live request needs the row or the memory (server/engine/engine.py). A line taken out (GaveWay)
goes back to the front of the queue and runs again, its prompt from the prompt cache. Batch work
goes through no HTTP middleware, so admission's max_concurrency / max_queue never count it.

Answers are committed by one writer (`store.record`): whatever lines ended since its last
commit, in one transaction, each line's state with its result. A line in flight when the server
stops or dies is still pending and runs again at the next start; never twice in the output.

A batch whose lines are all answered is finalized (its output and error files); one cancelled,
or past its completion window, has its lines in flight stopped and is finalized with what it has.
"""

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from server.batches.store import BatchRecord, BatchStore, Result
from server.engine.errors import GaveWay
from server.engine.generation import BACKGROUND
from server.plumbing import metrics
from server.plumbing.errors import APIError, body_problem, invalid_request, shaped_body
from server.plumbing.middleware import json_problem
from server.registry.lease import idle_time

log = logging.getLogger("swallow.batches")

PRUNE_EVERY = 3600.0  # seconds between retention passes
TICK = 1.0  # seconds between looks at the batches when nothing wakes the runner
RETRY_COMMIT = 5.0  # seconds before a failed commit (a full disk) is tried again


@dataclass(frozen=True)
class Endpoint:
    """What a batch line for one endpoint runs: the body's schema, and the endpoint's own
    non-stream answer (async (state, body) -> the response body; APIError for an error)."""

    schema: type[BaseModel]
    reply: Callable[..., Awaitable[dict]]


@dataclass(eq=False)
class Work:
    batch_id: str
    endpoint: str
    line: int
    custom_id: str
    body: str
    task: asyncio.Task | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.batch_id, self.line


def usage_of(answer: dict) -> tuple[int, int, int, int]:
    """(input, cached, output, reasoning) tokens of an answer, whichever API's usage it has."""
    usage = answer.get("usage") or {}
    cached = usage.get("cache_read_input_tokens")  # Anthropic's: apart from input_tokens
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0)) + (cached or 0)
    if cached is None:
        cached = (usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}).get("cached_tokens", 0)
    output = usage.get("completion_tokens", usage.get("output_tokens", 0))
    details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    return prompt or 0, cached or 0, output or 0, details.get("reasoning_tokens") or 0


class Runner:
    def __init__(self, store: BatchStore, registry, endpoints: dict[str, Endpoint], max_batch_size: int):
        self.store, self.registry, self.endpoints = store, registry, endpoints
        self.window = 2 * max_batch_size
        self.in_flight: dict[tuple[str, int], Work] = {}
        self._again: deque[Work] = deque()  # lines that gave way: first in line
        self._cursor: dict[str, int] = {}  # per batch: the last line taken
        self._done: asyncio.Queue[Result] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.gave_way = 0  # lines that gave way to live requests and ran again

    # ---- event loop -------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(), name="swallow-batches"),
                       asyncio.create_task(self._commit_loop(), name="swallow-batch-commits")]

    def wake(self) -> None:
        """Look at the batches now (one was created or cancelled)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stops the lines in flight (they stay pending) and commits the answers already in."""
        for task in self._tasks:
            task.cancel()
        lines = [work.task for work in self.in_flight.values() if work.task is not None]
        for task in lines:
            task.cancel()
        await asyncio.gather(*self._tasks, *lines, return_exceptions=True)
        left = []
        while not self._done.empty():
            left.append(self._done.get_nowait())
        if left:
            await asyncio.to_thread(self.store.record, left)

    def describe(self) -> dict:
        """For /health and /status.json: the batches not ended yet and their lines."""
        summary = self.store.summary()
        return {"running": sum(n for status, n in summary["batches"].items()
                               if status in ("validating", "in_progress", "cancelling", "finalizing")),
                "by_status": summary["batches"], "lines_total": summary["lines_total"],
                "lines_done": summary["lines_done"], "lines_in_flight": len(self.in_flight),
                "lines_gave_way": self.gave_way}

    async def _loop(self) -> None:
        pruned = time.monotonic()
        while True:
            self._wake.clear()
            try:
                await self._tick()
                if time.monotonic() - pruned > PRUNE_EVERY:
                    pruned = time.monotonic()
                    await asyncio.to_thread(self.store.prune)
            except Exception:  # the runner goes on; the next tick tries again
                log.exception("the batch runner failed a round")
            try:
                await asyncio.wait_for(self._wake.wait(), TICK)
            except TimeoutError:
                pass

    async def _tick(self) -> None:
        if self.registry.dead is not None:  # the server is exiting: lines wait for the restart
            return
        now = time.time()
        running = []
        for batch in self.store.running_batches():
            ending = batch.status == "cancelling" or (batch.status != "finalizing" and now >= batch.expires_at)
            if ending:
                self._stop_lines(batch.id)
            if batch.status == "finalizing" or ending or batch.pending == 0:
                if not any(key[0] == batch.id for key in self.in_flight):
                    await asyncio.to_thread(self.store.finalize, batch.id, self._ended_as(batch, now))
                    self._cursor.pop(batch.id, None)
                    log.info("batch %s ended", batch.id)
                continue
            running.append(batch)
        self._fill(running)

    @staticmethod
    def _ended_as(batch: BatchRecord, now: float) -> str:
        """cancelling -> cancelled; otherwise (finalizing too: a restart in the middle of it)
        completed when every line is answered, else expired."""
        if batch.status == "cancelling":
            return "cancelled"
        return "expired" if batch.pending and now >= batch.expires_at else "completed"

    def _stop_lines(self, batch_id: str) -> None:
        for work in list(self.in_flight.values()):
            if work.batch_id == batch_id and work.task is not None:
                work.task.cancel()
        self._again = deque(work for work in self._again if work.batch_id != batch_id)

    def _fill(self, batches: list[BatchRecord]) -> None:
        """Starts lines until `window` are in flight: those that gave way first, then the
        oldest batch's next pending lines."""
        running = {batch.id for batch in batches}
        while self._again and len(self.in_flight) < self.window:
            work = self._again.popleft()
            if work.batch_id in running:
                self._start(work)
        for batch in batches:
            room = self.window - len(self.in_flight)
            if room <= 0:
                return
            lines = self.store.pending_lines(batch.id, self._cursor.get(batch.id, 0), room)
            if lines and batch.status == "validating":
                self.store.set_status(batch.id, "in_progress", only_from=("validating",))
            for line, custom_id, body in lines:
                self._cursor[batch.id] = line
                if (batch.id, line) not in self.in_flight:
                    self._start(Work(batch.id, batch.endpoint, line, custom_id, body))

    def _start(self, work: Work) -> None:
        self.in_flight[work.key] = work
        work.task = asyncio.create_task(self._run(work), name=f"swallow-batch-line-{work.batch_id}-{work.line}")

    async def _run(self, work: Work) -> None:
        BACKGROUND.set(True)  # this task's context: its generations are batch work
        try:
            status, answer = await self._answer(work)
        except GaveWay:  # a live request took the row: run it again, first
            self.gave_way += 1
            del self.in_flight[work.key]
            self._again.appendleft(work)
            self._wake.set()
            return
        except asyncio.CancelledError:  # cancelled batch, or the server stopping: still pending
            self.in_flight.pop(work.key, None)
            self._wake.set()
            raise
        if status >= 500 and self.registry.dead is not None:  # the engine died under it: rerun at restart
            self.in_flight.pop(work.key, None)
            return
        usage = usage_of(answer) if status < 300 else (0, 0, 0, 0)
        self._done.put_nowait(Result(work.batch_id, work.line, status, answer, usage))

    async def _answer(self, work: Work) -> tuple[int, dict]:
        """(status, body) as the endpoint would have answered the line's request."""
        try:
            endpoint = self.endpoints[work.endpoint]
            problem = json_problem(work.body.encode())
            if problem:
                raise invalid_request(problem)
            data = json.loads(work.body)
            if data.get("stream"):
                raise invalid_request("stream: a batch request is answered whole; leave stream out or false.",
                                      param="stream")
            try:
                body = endpoint.schema.model_validate(data)
            except ValidationError as e:
                raise invalid_request(*body_problem(endpoint.schema, e)) from None
            slot = self.registry.find(body.model)
            state = await self.registry.acquire(slot, idle_time(body.keep_alive))
            try:
                return 200, await endpoint.reply(state, body)
            finally:
                self.registry.release(slot)
        except (GaveWay, asyncio.CancelledError):
            raise
        except APIError as e:
            return e.status, shaped_body(work.endpoint, e.status, e.message, e.type, e.param, e.code)
        except Exception as e:
            log.exception("batch %s line %d failed", work.batch_id, work.line)
            return 500, shaped_body(work.endpoint, 500, f"The server failed on this request: {e}", "server_error")

    async def _commit_loop(self) -> None:
        """Commits the answers that came in since the last commit, in one transaction."""
        while True:
            results = [await self._done.get()]
            while not self._done.empty():
                results.append(self._done.get_nowait())
            try:
                recorded = await asyncio.to_thread(self.store.record, results)
            except Exception as e:
                log.error("could not commit %d batch answers (%s); trying again in %g s", len(results), e,
                          RETRY_COMMIT)
                for result in results:
                    self._done.put_nowait(result)
                await asyncio.sleep(RETRY_COMMIT)
                continue
            for result in results:
                self.in_flight.pop((result.batch_id, result.line), None)
            for result in recorded:
                metrics.BATCH_LINES.labels("succeeded" if result.status_code < 300 else "failed").inc()
            self._wake.set()
