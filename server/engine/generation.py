"""One request's generation as the event loop sees it, and the items the engine hands it.

The engine thread runs the batch; a Generation is the request's end of it: a queue that gets one
list of items (token ids, Scored tokens with logprobs, then one Finished) per engine step. Its
sampler and logits processors run guarded, so that a failure in them ends this request alone.
"""

import asyncio
import functools
import logging
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.sample_utils import greedy_sampler

from server.engine.errors import GaveWay
from server.engine.logprobs import LogprobCapture, Scored
from server.engine.sampling import SamplingParams, make_request_sampler
from server.plumbing import metrics

log = logging.getLogger("swallow.engine")

# Work submitted while this is True is batch work (server/batches/ sets it around each line): the
# engine admits it only into rows live requests leave, and takes it out again when they need them.
BACKGROUND: ContextVar[bool] = ContextVar("swallow_background", default=False)


@dataclass
class Finished:
    reason: str  # "stop" (a stop token was generated), "length", "cancelled", "error" or "gave_way"
    error: str | None = None


@dataclass(eq=False)  # compared (and hashed) by identity
class Generation:
    """One request's generation, as the event loop sees it."""

    prompt: list
    max_tokens: int
    sampling: SamplingParams
    loop: asyncio.AbstractEventLoop
    boundaries: tuple = ()  # prompt offsets worth a cache copy (end of system + developer)
    processors: tuple = ()  # extra logits processors (reasoning controls, grammars), run last
    output: asyncio.Queue = field(default_factory=asyncio.Queue)
    uid: int | None = None
    engine: object = None  # the Engine that runs it
    finished: bool = False
    cached_tokens: int = 0  # prompt tokens taken from the prompt cache
    failure: str | None = None  # the request's own part (sampler, processor) failed: why
    reserved: int = 0  # tokens of KV cache admission holds for it (prompt + token limit)
    logprobs: int | None = None  # top-N logprobs asked for each token (0: the token's own); None: none
    scores: list = field(default_factory=list)  # Scored per delivered token, when logprobs is set
    follow: "Generation | None" = None  # start once this one's prompt is read (n > 1: shared prefix)
    followers: list = field(default_factory=list)  # engine thread: waiting for this prompt
    prompt_read: bool = False  # engine thread: the first token came (its prompt is in the cache)
    capture: LogprobCapture | None = None
    # when it was submitted and when its first token reached the event loop (time.perf_counter):
    # the prompt's reading time and the generation's, as Ollama's API reports them
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    delivered: int = 0  # engine thread: tokens generated so far (forced ones included)
    row_sampler: object = None  # engine thread: its sampler and processors as its batch row has them
    row_processors: list = field(default_factory=list)
    host_controls: list = field(default_factory=list)  # reply controls in host mode (reasoning_control.py)
    rejoining: bool = False  # engine thread: back in the batch to read forced tokens
    background: bool = field(default_factory=BACKGROUND.get)  # batch work: live requests come first

    @functools.cached_property
    def watchers(self) -> list:
        return [p for p in self.processors if hasattr(p, "deliver")]

    def _deliver(self, item) -> None:
        """Queues an item for the event loop (engine thread); Engine._flush sends the step's lot."""
        if self.engine is not None:
            self.engine._outbox.append((self, item))
            if isinstance(item, Finished):
                metrics.ENGINE_ENDS.labels(self.engine.name, item.reason).inc()

    async def events(self):
        """Yields generated token ids, then one Finished. Raises GaveWay when this batch row
        was taken out of the batch for a live request."""
        while True:
            for item in await self.output.get():  # what one engine step delivered
                if self.first_token_at is None and not isinstance(item, Finished):
                    self.first_token_at = time.perf_counter()
                if isinstance(item, Scored):
                    self.scores.append(item)
                    item = item.token
                if isinstance(item, Finished) and item.reason == "gave_way":
                    self.finished = True
                    raise GaveWay("this batch row gave way to a live request", code="gave_way")
                yield item
                if isinstance(item, Finished):
                    self.finished = True
                    return

    # ---- its own parts, guarded: a failure there touches this request alone ----------

    def guarded(self, part, what: str):
        """`part` (a sampler or a logits processor) such that an exception in it marks this
        request failed instead of failing the batch step; the logits go on unchanged (a
        sampler's: the most likely token) until the engine ends the request after the step."""

        def guarded(*args):
            try:
                return part(*args)
            except Exception as e:
                if self.failure is None:
                    log.exception("a request's %s failed; ending that request alone", what)
                    self.failure = f"its {what} failed: {e}" if str(e) else f"its {what} failed"
                logits = args[-1]
                return mx.argmax(logits, axis=-1) if what == "sampler" else logits

        return guarded

    def sampler(self):
        sampler = make_request_sampler(self.sampling)
        # greedy is one shared function (the batch samples in one call) and can't fail
        return sampler if sampler is greedy_sampler else self.guarded(sampler, "sampler")

    def cancel(self) -> None:
        if not self.finished and self.engine is not None:
            self.finished = True
            self.engine._commands.put(("cancel", self))


def hand_over(items: dict) -> None:
    """On the event loop: one engine step's items, each request's in one queue entry."""
    for generation, delivered in items.items():
        generation.output.put_nowait(delivered)


class Mailbox:
    """The engine thread's items for one event loop. The loop is woken (a write to its self-pipe,
    and the GIL handed back and forth) once for all the items that come before it runs: when it
    is still busy with the last step's, the next step's join them without waking it again."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: dict = {}  # generation -> [items]
        self._woken = False
        self._lock = threading.Lock()

    def post(self, items: dict) -> None:
        """Engine thread. Raises RuntimeError when the loop is closed."""
        with self._lock:
            for generation, delivered in items.items():
                self._items.setdefault(generation, []).extend(delivered)
            if self._woken:
                return
            self._woken = True
        self.loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        with self._lock:
            items, self._items, self._woken = self._items, {}, False
        hand_over(items)
