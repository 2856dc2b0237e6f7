"""The generation engine: one dedicated thread runs mlx-lm's BatchGenerator.

MLX streams belong to the thread that made them, so the model is loaded and every step is
run on this one thread (as mlx_lm.server does). The event loop talks to it through a command
queue (submit, cancel) and gets tokens back through an asyncio.Queue per request, so it never
blocks on MLX. Requests join and leave the running batch as they come and go: continuous
batching, with each request's own sampler, penalties and token limit.

The prompt cache (mlx-lm's LRUPromptCache, a trie of KV caches under a byte budget) keeps the
cache as it stood at segment ends of a prompt (after the system and developer messages, and
one token before the prompt's end) and at the end of each reply. GPT-OSS's sliding-window
layers use RotatingKVCache, which cannot be trimmed back once more than its window was
written, and the next turn re-renders the previous reply without its analysis: so the reply's
own cache rarely helps, while the copy taken at the end of the prompt is always a prefix of
the next turn's prompt.
"""

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache

from models.loading import LoadedModel, load_model
from server.config import Settings
from server.engine.sampling import (
    SamplingParams,
    make_request_processors,
    make_request_sampler,
)

log = logging.getLogger("swallow.engine")

# <|return|> ends an answer, <|call|> a tool call; <|endoftext|> should never come but ends too.
STOP_TOKENS = (200002, 200012, 199999)
CACHE_KEY = "model"  # one model per server: the trie's model key is constant


@dataclass
class Finished:
    reason: str  # "stop" (a stop token was generated), "length", "cancelled" or "error"
    error: str | None = None


@dataclass
class Scored:
    """A generated token with its logprob and the top-N (id, logprob) alternatives: the
    model's own log-softmax, before penalties, grammars, temperature and top-p/top-k."""

    token: int
    logprob: float
    top: list  # [(token id, logprob)], most likely first


class LogprobCapture:
    """A logits processor, first in a generation's list, that keeps the raw log-softmax of
    each step (and its top-N) for the token sampled from it. Its arrays are scheduled with
    mx.async_eval beside the step's own, and read on the engine thread once the step's
    token is delivered (already evaluated then): no extra host sync. Each call is one
    sampled token, in order; the token is delivered one step later (mlx-lm's pipelining)."""

    def __init__(self, top_n: int):
        self.top_n = top_n
        self.pending: list = []

    def __call__(self, tokens, logits):
        logprobs = logits.astype(mx.float32)
        logprobs = (logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)).reshape(-1)
        arrays = [logprobs]
        if self.top_n:
            top = mx.argpartition(-logprobs, kth=self.top_n - 1)[: self.top_n]
            arrays.append(top)
        mx.async_eval(*arrays)
        self.pending.append(arrays)
        return logits

    def take(self, token: int) -> Scored:
        arrays = self.pending.pop(0)
        logprobs = np.asarray(arrays[0])
        top = []
        if self.top_n:
            ids = np.asarray(arrays[1])
            top = sorted(((int(i), float(logprobs[i])) for i in ids), key=lambda p: -p[1])
        return Scored(token, float(logprobs[token]), top)


@dataclass
class ScoreJob:
    """Score a token list: per position i > 0, the logprob of tokens[i] after tokens[:i]
    and the top-N there. Run on the engine thread (all MLX work is)."""

    tokens: list
    top_n: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
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
    engine: "Engine | None" = None
    finished: bool = False
    cached_tokens: int = 0  # prompt tokens taken from the prompt cache
    logprobs: int | None = None  # top-N logprobs asked for each token (0: the token's own); None: none
    scores: list = field(default_factory=list)  # Scored per delivered token, when logprobs is set
    follow: "Generation | None" = None  # start once this one's prompt is read (n > 1: shared prefix)
    followers: list = field(default_factory=list)  # engine thread: waiting for this prompt
    prompt_read: bool = False  # engine thread: the first token came (its prompt is in the cache)
    capture: LogprobCapture | None = None

    def _deliver(self, item) -> None:
        # Called on the engine thread. A loop that is already closed (shutdown) has no one
        # left to tell; that must not take the engine thread down.
        try:
            self.loop.call_soon_threadsafe(self.output.put_nowait, item)
        except RuntimeError:
            self.finished = True

    async def events(self):
        """Yields generated token ids, then one Finished."""
        while True:
            item = await self.output.get()
            if isinstance(item, Scored):
                self.scores.append(item)
                item = item.token
            yield item
            if isinstance(item, Finished):
                self.finished = True
                return

    def cancel(self) -> None:
        if not self.finished and self.engine is not None:
            self.finished = True
            self.engine._commands.put(("cancel", self))


class Engine:
    def __init__(self, settings: Settings, model_path=None):
        self.settings = settings
        self.model_path = model_path  # found by models.loading.prepare_model, when already done
        self.loaded: LoadedModel | None = None
        self.load_error: Exception | None = None
        self._ready = threading.Event()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="swallow-engine", daemon=True)
        self._active: dict[int, Generation] = {}
        self.waiting = 0  # submitted, not yet in the batch
        budget = settings.prompt_cache_mb * 2**20
        self.prompt_cache = LRUPromptCache(max_size=256, max_bytes=budget) if budget > 0 else None

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

    def submit(self, prompt: list, max_tokens: int, sampling: SamplingParams, boundaries=(),
               processors=(), logprobs: int | None = None, follow: Generation | None = None) -> Generation:
        """`logprobs`: also deliver each token's logprob and top-N (Generation.scores).
        `follow`: a generation of the same prompt; this one starts when that one's prompt was
        read, so that it starts from the prompt cache (n choices read the prompt once)."""
        generation = Generation(prompt, max_tokens, sampling, asyncio.get_running_loop(),
                                boundaries=tuple(boundaries), processors=tuple(processors), engine=self,
                                logprobs=logprobs, follow=follow)
        self.waiting += 1
        self._commands.put(("submit", generation))
        return generation

    async def score(self, tokens: list, top_n: int = 0) -> list:
        """[(logprob of tokens[i], top-N [(id, logprob)])] for i >= 1: the model's log-softmax
        over the prompt (one forward pass on the engine thread, no cache kept)."""
        loop = asyncio.get_running_loop()
        job = ScoreJob(list(tokens), top_n, loop.create_future(), loop)
        self._commands.put(("score", job))
        return await job.future

    def cache_stats(self) -> dict:
        cache = self.prompt_cache
        return {
            "entries": len(cache) if cache is not None else 0,
            "bytes": cache.nbytes if cache is not None else 0,
            "budget_bytes": cache.max_bytes if cache is not None else 0,
        }

    def stop(self) -> None:
        self._commands.put(("stop", None))
        self._thread.join(timeout=10)

    # ---- engine thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.loaded = load_model(self.settings.model, trust_remote_code=self.settings.trust_remote_code,
                                     path=self.model_path)
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
                prompt_responses, responses = batch.next()
                self._keep_segment_caches(batch, prompt_responses)
            except Exception as e:
                log.exception("generation step failed")
                for generation in self._active.values():
                    for waiting in [generation, *generation.followers]:
                        waiting._deliver(Finished("error", str(e) or type(e).__name__))
                    generation.followers = []
                self._active.clear()
                batch = self._new_batch()
                continue
            for response in responses:
                generation = self._active.get(response.uid)
                if generation is None:
                    continue
                generation._deliver(response.token if generation.capture is None
                                    else generation.capture.take(response.token))
                if not generation.prompt_read:
                    generation.prompt_read = True
                    self._release_followers(batch, generation)
                if response.finish_reason is not None:
                    generation._deliver(Finished(response.finish_reason))
                    del self._active[response.uid]
                    self._keep(response.all_tokens, response.prompt_cache)
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
                leader = generation.follow
                if leader is not None and not leader.prompt_read and (leader.uid in self._active
                                                                      or leader.followers):
                    leader.followers.append(generation)
                else:
                    self._insert(batch, generation)
            elif command == "score":
                self._score(generation)
            elif command == "cancel" and generation.uid in self._active:
                batch.remove([generation.uid])
                del self._active[generation.uid]
                generation._deliver(Finished("cancelled"))
                self._release_followers(batch, generation)

    def _release_followers(self, batch: BatchGenerator, generation: Generation) -> None:
        followers, generation.followers = generation.followers, []
        for follower in followers:
            self._insert(batch, follower)

    def _score(self, job: ScoreJob) -> None:
        try:
            model, tokens, results = self.loaded.model, job.tokens, []
            cache = make_prompt_cache(model)
            step = max(1, self.settings.prefill_step_size)
            for start in range(0, len(tokens) - 1, step):
                chunk = tokens[start:start + step + 1]
                logits = model(mx.array(chunk[:-1])[None], cache=cache)[0].astype(mx.float32)
                logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
                targets = mx.array(chunk[1:])
                picked = mx.take_along_axis(logprobs, targets[:, None], axis=-1)[:, 0]
                arrays = [picked]
                if job.top_n:
                    ids = mx.argpartition(-logprobs, kth=job.top_n - 1, axis=-1)[:, : job.top_n]
                    arrays += [ids, mx.take_along_axis(logprobs, ids, axis=-1)]
                mx.eval(*arrays)
                picked = picked.tolist()
                tops = ([sorted(zip(i, v), key=lambda p: -p[1]) for i, v in
                         zip(arrays[1].tolist(), arrays[2].tolist())] if job.top_n else [[] for _ in picked])
                results.extend(zip(picked, tops))
            outcome = (job.future.set_result, results)
        except Exception as e:  # reported to the request; the engine goes on
            log.exception("scoring failed")
            outcome = (job.future.set_exception, e)
        try:
            job.loop.call_soon_threadsafe(lambda: job.future.done() or outcome[0](outcome[1]))
        except RuntimeError:
            pass

    def _keep(self, tokens: list, cache: list) -> None:
        if self.prompt_cache is not None and tokens:
            self.prompt_cache.insert_cache(CACHE_KEY, list(tokens), cache)

    def _keep_segment_caches(self, batch: BatchGenerator, prompt_responses: list) -> None:
        """Copies of the cache where a prompt segment ended (not its last token: that one
        is processed as the first generation step)."""
        if self.prompt_cache is None:
            return
        uids = [r.uid for r in prompt_responses if r.end_of_segment and not r.end_of_prompt]
        for cache, tokens in batch.extract_cache(uids).values():
            self._keep(tokens, cache)

    def _cached_start(self, prompt: list) -> tuple[list | None, int]:
        """The nearest cached prefix: (its cache, how many prompt tokens it covers). At least
        one prompt token is left to process, since generation starts from it."""
        if self.prompt_cache is None:
            return None, 0
        cache, rest = self.prompt_cache.fetch_nearest_cache(CACHE_KEY, prompt[:-1])
        return (cache, len(prompt) - 1 - len(rest)) if cache is not None else (None, 0)

    @staticmethod
    def _segments(prompt: list, start: int, boundaries: tuple) -> list[list]:
        cuts = [b for b in sorted(boundaries) if start < b < len(prompt)] + [len(prompt)]
        segments, previous = [], start
        for cut in cuts:
            segments.append(prompt[previous:cut])
            previous = cut
        return segments

    def _insert(self, batch: BatchGenerator, generation: Generation) -> None:
        if generation.finished:  # cancelled while waiting
            return
        prompt = generation.prompt
        cache, cached = self._cached_start(prompt)
        processors = make_request_processors(generation.sampling) + list(generation.processors)
        if generation.logprobs is not None:
            generation.capture = LogprobCapture(generation.logprobs)
            processors.insert(0, generation.capture)  # first: the raw logits, before penalties
        try:
            (uid,) = batch.insert_segments(
                [self._segments(prompt, cached, generation.boundaries)],
                caches=[cache],
                all_tokens=[prompt[:cached]],
                max_tokens=[generation.max_tokens],
                samplers=[make_request_sampler(generation.sampling)],
                logits_processors=[processors],
            )
        except Exception as e:
            log.exception("could not start a generation")
            generation._deliver(Finished("error", str(e)))
            self._release_followers(batch, generation)
            return
        generation.uid = uid
        generation.cached_tokens = cached
        self._active[uid] = generation
