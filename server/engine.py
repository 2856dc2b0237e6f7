"""The generation engine: one dedicated thread runs mlx-lm's BatchGenerator.

MLX streams belong to the thread that made them, so the model is loaded and every step is
run on this one thread (as mlx_lm.server does). The event loop talks to it through a command
queue (submit, cancel) and gets tokens back through an asyncio.Queue per request, so it never
blocks on MLX. Requests join and leave the running batch as they come and go: continuous
batching, with each request's own sampler, penalties and token limit.
"""

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.generate import BatchGenerator

from models.loading import LoadedModel, load_model
from server.config import Settings
from server.sampling import SamplingParams, make_request_processors, make_request_sampler

log = logging.getLogger("swallow.engine")

# <|return|> ends an answer, <|call|> a tool call; <|endoftext|> should never come but ends too.
STOP_TOKENS = (200002, 200012, 199999)


@dataclass
class Finished:
    reason: str  # "stop" (a stop token was generated), "length", "cancelled" or "error"
    error: str | None = None


@dataclass
class Generation:
    """One request's generation, as the event loop sees it."""

    prompt: list
    max_tokens: int
    sampling: SamplingParams
    loop: asyncio.AbstractEventLoop
    output: asyncio.Queue = field(default_factory=asyncio.Queue)
    uid: int | None = None
    engine: "Engine | None" = None
    finished: bool = False

    def _deliver(self, item) -> None:
        # Called on the engine thread.
        self.loop.call_soon_threadsafe(self.output.put_nowait, item)

    async def events(self):
        """Yields generated token ids, then one Finished."""
        while True:
            item = await self.output.get()
            yield item
            if isinstance(item, Finished):
                self.finished = True
                return

    def cancel(self) -> None:
        if not self.finished and self.engine is not None:
            self.finished = True
            self.engine._commands.put(("cancel", self))


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.loaded: LoadedModel | None = None
        self.load_error: Exception | None = None
        self._ready = threading.Event()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="swallow-engine", daemon=True)
        self._active: dict[int, Generation] = {}
        self.waiting = 0  # submitted, not yet in the batch

    # ---- event-loop side -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wait_until_loaded(self, timeout: float | None = None) -> LoadedModel:
        self._ready.wait(timeout)
        if self.load_error is not None:
            raise self.load_error
        if self.loaded is None:
            raise TimeoutError("the model is still loading")
        return self.loaded

    @property
    def ready(self) -> bool:
        return self.loaded is not None and self._ready.is_set()

    @property
    def running(self) -> int:
        return len(self._active)

    def submit(self, prompt: list, max_tokens: int, sampling: SamplingParams) -> Generation:
        generation = Generation(prompt, max_tokens, sampling, asyncio.get_running_loop(), engine=self)
        self.waiting += 1
        self._commands.put(("submit", generation))
        return generation

    def stop(self) -> None:
        self._commands.put(("stop", None))
        self._thread.join(timeout=10)

    # ---- engine thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.loaded = load_model(self.settings.model, trust_remote_code=self.settings.trust_remote_code)
        except Exception as e:  # reported by wait_until_loaded
            self.load_error = e
            self._ready.set()
            return
        self._ready.set()
        batch = self._new_batch()
        while True:
            if not self._apply_commands(batch, block=not self._active):
                break
            if not self._active:
                continue
            try:
                _, responses = batch.next()
            except Exception as e:
                log.exception("generation step failed")
                for generation in self._active.values():
                    generation._deliver(Finished("error", f"generation failed: {e}"))
                self._active.clear()
                batch = self._new_batch()
                continue
            for response in responses:
                generation = self._active.get(response.uid)
                if generation is None:
                    continue
                generation._deliver(response.token)
                if response.finish_reason is not None:
                    generation._deliver(Finished(response.finish_reason))
                    del self._active[response.uid]
        self.loaded = None

    def _new_batch(self) -> BatchGenerator:
        # A stream of this thread: mlx-lm's module-level stream belongs to the importing thread.
        return BatchGenerator(
            self.loaded.model,
            stop_tokens=[[t] for t in STOP_TOKENS],
            completion_batch_size=self.settings.max_batch_size,
            prefill_batch_size=min(8, self.settings.max_batch_size),
            prefill_step_size=self.settings.prefill_step_size,
            stream=mx.default_stream(mx.default_device()),
        )

    def _apply_commands(self, batch: BatchGenerator, block: bool) -> bool:
        """Takes the waiting commands; False when the engine must stop."""
        while True:
            try:
                command, generation = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
            except queue.Empty:
                return True
            block = False
            if command == "stop":
                return False
            if command == "submit":
                self.waiting -= 1
                self._insert(batch, generation)
            elif command == "cancel" and generation.uid in self._active:
                batch.remove([generation.uid])
                del self._active[generation.uid]
                generation._deliver(Finished("cancelled"))

    def _insert(self, batch: BatchGenerator, generation: Generation) -> None:
        if generation.finished:  # cancelled while waiting
            return
        try:
            (uid,) = batch.insert(
                [generation.prompt],
                max_tokens=[generation.max_tokens],
                samplers=[make_request_sampler(generation.sampling)],
                logits_processors=[make_request_processors(generation.sampling)],
            )
        except Exception as e:
            log.exception("could not start a generation")
            generation._deliver(Finished("error", str(e)))
            return
        generation.uid = uid
        self._active[uid] = generation
