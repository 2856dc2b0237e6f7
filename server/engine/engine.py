"""The generation engine: one dedicated thread runs mlx-lm's BatchGenerator.

MLX streams belong to the thread that made them, so the model is loaded and every step is
run on this one thread (as mlx_lm.server does). The event loop talks to it through a command
queue (submit, cancel) and gets tokens back through an asyncio.Queue per request, so it never
blocks on MLX. Requests join and leave the running batch as they come and go: continuous
batching, with each request's own sampler, penalties and token limit.

Each request's side is a Generation (generation.py); the prompt cache, in memory and on disk,
is prompt_cache.py.

Tokens reach the event loop once per engine step, all requests' together (one thread-safe call
per step at most, not one per token per request; none while the loop has not yet taken the last
step's: generation.Mailbox).

Memory-aware admission (memory.py): a request joins the batch only when the worst case of its
KV cache (prompt + token limit) fits beside the running ones in the cache budget, which every
loaded model's engine shares (KVBudget: their running requests and prompt caches count too);
until then it waits in the engine's queue (`waiting_for_memory`), and the prompt caches give up
entries to make room for it (this engine's at once, the others' on their own threads). One that
could never fit is refused before it is submitted (`check_fits`).

Live requests come first (batch work is a Generation with `background` set, server/batches/):
admission takes every waiting live request before any batch row, and admits batch rows only into
rows of the batch (max_batch_size) that live requests leave. A live request that finds the batch
full, or not enough KV memory, takes the youngest batch rows out at once (at the step boundary):
they end with "gave_way" and the batch runner runs them again later, their prompt from the
prompt cache. So a live request never waits behind batch work.

A failure touches one request: each request's sampler and logits processors run guarded, and a
request whose own part raises ends alone with an error while the rest of the batch goes on. A
failing model step fails the requests in the batch. If the engine thread itself dies, every
request in flight ends with an error, `dead` holds the reason, and `on_death` is called (the
server then answers 503 and exits non-zero).
"""

import asyncio
import logging
import queue
import threading
from collections import deque

import mlx.core as mx
from mlx_lm.generate import BatchGenerator

from models.loading import LoadedModel, load_model
from server.config import Settings
from server.engine.errors import CacheWontFit, EngineStopped
from server.engine.generation import Finished, Generation, Mailbox
from server.engine.logprobs import LogprobCapture, ScoreJob, score_tokens
from server.engine.memory import KVBudget, KVCost, cache_budget, measure_kv_cost
from server.engine.prompt_cache import PromptCache
from server.engine.sampling import (
    SamplingParams,
    make_request_processors,
)
from server.plumbing import metrics

log = logging.getLogger("swallow.engine")

# <|return|> ends an answer, <|call|> a tool call; <|endoftext|> should never come but ends too.
STOP_TOKENS = (200002, 200012, 199999)


def new_batch(model, settings: Settings) -> BatchGenerator:
    # A stream of this thread: mlx-lm's module-level stream belongs to the importing thread.
    return BatchGenerator(
        model,
        stop_tokens=[[t] for t in STOP_TOKENS],
        completion_batch_size=settings.max_batch_size,
        prefill_batch_size=min(8, settings.max_batch_size),
        prefill_step_size=settings.prefill_step_size,
        stream=mx.default_stream(mx.default_device()),
    )


class Engine:
    # Reply controls may run outside mlx-lm's logits processors (reasoning_control.py, host mode);
    # under mlx.launch the other ranks could not replay a row taken out with its cache (lockstep.py).
    host_forcing = True

    def __init__(self, settings: Settings, model_path=None, kv: KVBudget | None = None):
        """`kv`: the KV cache budget it shares with the other loaded models' engines; None: one
        of its own, measured once its model is loaded."""
        self.settings = settings
        self.name = settings.served_model_name or settings.model  # the model's label in metrics
        self.model_path = model_path  # found by models.loading.prepare_model, when already done
        self.loaded: LoadedModel | None = None
        self.load_error: Exception | None = None
        self._ready = threading.Event()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="swallow-engine", daemon=True)
        self._active: dict[int, Generation] = {}
        self._outbox: list = []  # (generation, token or Finished) of this step, for the event loop
        self._mailboxes: dict = {}  # event loop -> its Mailbox
        self._held: deque[Generation] = deque()  # waiting for cache memory (or, batch rows, for a free row)
        self._inbox = 0  # submitted, not yet taken by the engine thread
        self.dead: str | None = None  # why the engine thread died, once it has
        self.on_death = None  # called (from the engine thread) with the reason
        self.kv_cost: KVCost | None = None
        self.kv = kv
        self.prompt_cache = PromptCache(settings)
        self.gave_way = 0  # batch rows taken out of the batch for live requests, so far

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

    @property
    def waiting(self) -> int:
        """Live requests submitted, not yet in the batch (in the inbox, or held for memory)."""
        return self._inbox + sum(1 for g in list(self._held) if not g.background)

    @property
    def batch_running(self) -> int:
        """Batch rows in the batch (of `running`)."""
        return sum(1 for g in list(self._active.values()) if g.background)

    @property
    def batch_waiting(self) -> int:
        """Batch rows submitted and held until live requests leave a row free."""
        return sum(1 for g in list(self._held) if g.background)

    @property
    def waiting_for_memory(self) -> int:
        return self.waiting - self._inbox

    @property
    def kv_budget(self) -> int:
        """Bytes this engine's KV caches may use: the shared budget, or its own kv_memory_mb
        when that is less."""
        total = self.kv.total if self.kv is not None else 0
        own = self.settings.kv_memory_mb * 2**20
        return min(own, total) if own else total

    @property
    def kv_budget_source(self) -> str:
        if self.kv is None:
            return ""
        own = self.settings.kv_memory_mb * 2**20
        return "kv_memory_mb of this model" if own and own < self.kv.total else self.kv.source

    def wake(self) -> None:
        """Another engine's claims shrank: try admission again (any thread)."""
        self._commands.put(("wake", None))

    def give_up_cache(self, keep_bytes: int) -> None:
        """Another engine needs room: trim the prompt cache to `keep_bytes` (any thread)."""
        self._commands.put(("trim", keep_bytes))

    def memory_stats(self) -> dict:
        return {"kv_budget_bytes": self.kv_budget, "kv_budget_from": self.kv_budget_source,
                "kv_reserved_bytes": self._reserved_bytes(), "waiting_for_memory": self.waiting_for_memory,
                "mlx_active_bytes": mx.get_active_memory()}

    def check_running(self) -> None:
        if self.dead is not None:
            raise EngineStopped(f"The engine stopped ({self.dead}); the server is exiting to be restarted.",
                                code="engine_stopped")

    def check_fits(self, tokens: int) -> None:
        """CacheWontFit for a request whose KV cache could never fit, not even alone."""
        if self.kv_cost is None:
            return
        need = self.kv_cost.of(tokens)
        if need > self.kv_budget:
            raise CacheWontFit(
                f"This request could need {need / 2**20:.1f} MiB of KV cache (its prompt and token limit, "
                f"{tokens} tokens), more than the {self.kv_budget / 2**20:.1f} MiB this server has for caches "
                f"({self.kv_budget_source}). Lower max_tokens or shorten the prompt.",
                param="max_tokens", code="kv_memory_exceeded")

    def submit(self, prompt: list, max_tokens: int, sampling: SamplingParams, boundaries=(),
               processors=(), logprobs: int | None = None, follow: Generation | None = None) -> Generation:
        """`logprobs`: also deliver each token's logprob and top-N (Generation.scores).
        `follow`: a generation of the same prompt; this one starts when that one's prompt was
        read, so that it starts from the prompt cache (n choices read the prompt once)."""
        generation = Generation(prompt, max_tokens, sampling, asyncio.get_running_loop(),
                                boundaries=tuple(boundaries), processors=tuple(processors), engine=self,
                                reserved=len(prompt) + max_tokens, logprobs=logprobs, follow=follow)
        if self.dead is not None:
            generation.output.put_nowait([Finished("error", f"the engine is not running: {self.dead}")])
            return generation
        self._inbox += 1
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
        return self.prompt_cache.stats()

    def stop(self) -> None:
        self._commands.put(("stop", None))
        self._thread.join(timeout=10)

    # ---- engine thread ---------------------------------------------------------------

    def _load(self) -> None:
        self.loaded = load_model(self.settings.model, trust_remote_code=self.settings.trust_remote_code,
                                 path=self.model_path)
        self.kv_cost = measure_kv_cost(self.loaded.model)
        if self.kv is None:
            self.kv = KVBudget(*cache_budget(self.settings.kv_memory_mb))

    def _run(self) -> None:
        try:
            self._load()
            self.kv.join(self)
            log.info("KV caches: %.0f bytes per token + %d fixed per request; %.0f MiB for caches (%s)",
                     self.kv_cost.per_token, self.kv_cost.fixed, self.kv_budget / 2**20, self.kv_budget_source)
        except Exception as e:  # reported by wait_until_loaded
            self.load_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._serve()
        except BaseException as e:  # the engine thread dies: nothing may be left waiting
            self._die(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            if not isinstance(e, Exception):
                raise
        finally:
            self.kv.leave(self)  # its caches are gone: the other models' requests may use the room
        self.loaded = None

    def _warm_up(self, batch: BatchGenerator) -> None:
        """One token through the batch, before any request: the first request's own costs (buffers,
        kernels) are paid here rather than in its time to first token."""
        (uid,) = batch.insert([[200006, 200006]], max_tokens=[1])
        while any(r.uid == uid and r.finish_reason for r in batch.next()[1]) is False:
            pass

    def _serve(self) -> None:
        self.prompt_cache.open_disk(self.loaded.path, self.kv_cost.layout)
        batch = self._new_batch()
        try:
            self._warm_up(batch)
        except Exception:  # a model that can't run one token fails its first request with the reason
            log.exception("warming up failed")
            batch = self._new_batch()
        while True:
            if not self._active:
                self.prompt_cache.write_to_disk()  # idle: nothing waits for this thread
            if not self._apply_commands(batch, block=not self._active):
                break
            if not self._active:
                continue
            try:
                prompt_responses, responses = batch.next()
                self.prompt_cache.keep_segments(batch, prompt_responses, self._active, self._cache_room())
            except Exception as e:
                log.exception("generation step failed")
                for generation in self._active.values():
                    for waiting in [generation, *generation.followers]:
                        waiting._deliver(Finished("error", str(e) or type(e).__name__))
                    generation.followers = []
                self._active.clear()
                self._flush()
                batch = self._new_batch()
                self._admit(batch)
                self._claim()
                continue
            metrics.ENGINE_TOKENS.labels(self.name).inc(len(responses))
            for response in responses:
                generation = self._active.get(response.uid)
                if generation is None:
                    continue
                if generation.failure is not None:  # its own sampler or processor failed
                    self._end(batch, generation, Finished("error", generation.failure))
                    continue
                for watcher in generation.watchers:  # processors that follow the tokens (ReplyControl)
                    watcher.deliver(response.token)
                generation._deliver(response.token if generation.capture is None
                                    else generation.capture.take(response.token))
                generation.delivered += 1
                if not generation.prompt_read:
                    generation.prompt_read = True
                    self._release_followers(batch, generation)
                if response.finish_reason is not None:
                    generation._deliver(Finished(response.finish_reason))
                    del self._active[response.uid]
                    self.prompt_cache.keep(response.all_tokens, response.prompt_cache, self._cache_room())
                elif generation.host_controls:
                    forced = [t for control in generation.host_controls for t in control.forced()]
                    if forced:
                        self._force(batch, generation, forced)
            self._admit(batch)
            self._flush()
            self._claim()

    def _die(self, reason: str) -> None:
        log.critical("the engine thread died: %s", reason)
        self.dead = reason
        ended = Finished("error", f"the engine stopped: {reason}")
        for generation in [*self._active.values(), *self._held]:
            for waiting in [generation, *generation.followers]:
                waiting._deliver(ended)
        while True:  # what was submitted and not taken yet
            try:
                command, item = self._commands.get_nowait()
            except queue.Empty:
                break
            if command == "submit":
                item._deliver(ended)
            elif command == "score":
                item.fail(RuntimeError(ended.error))
        self._active.clear()
        self._held.clear()
        self._flush()
        if self.on_death is not None:
            self.on_death(reason)

    def _flush(self) -> None:
        """Hands this step's tokens to the event loop(s): one call per loop per step."""
        if not self._outbox:
            return
        by_loop: dict = {}
        for generation, item in self._outbox:
            by_loop.setdefault(generation.loop, {}).setdefault(generation, []).append(item)
        self._outbox = []
        for loop, items in by_loop.items():
            mailbox = self._mailboxes.get(loop)
            if mailbox is None:
                mailbox = self._mailboxes[loop] = Mailbox(loop)
            try:
                mailbox.post(items)
            except RuntimeError:  # the loop is closed (shutdown): no one left to tell
                del self._mailboxes[loop]
                for generation in items:
                    generation.finished = True

    def _end(self, batch: BatchGenerator, generation: Generation, finished: Finished) -> None:
        batch.remove([generation.uid])
        del self._active[generation.uid]
        generation._deliver(finished)
        self._release_followers(batch, generation)

    def _new_batch(self) -> BatchGenerator:
        return new_batch(self.loaded.model, self.settings)

    def _force(self, batch: BatchGenerator, generation: Generation, tokens: list) -> None:
        """Puts `tokens` into a reply as if the model had written them (a reply control in host
        mode ending an analysis): the row leaves the batch with its cache and joins again with
        the tokens as a prompt to read; the token the batch was computing for it is dropped.
        A copy of the row's cache, once per reply at most."""
        cache, context = batch.remove([generation.uid], return_prompt_caches=True)[generation.uid]
        del self._active[generation.uid]
        tokens = tokens[: generation.max_tokens - generation.delivered]
        for token in tokens:
            for watcher in generation.watchers:
                watcher.deliver(token)
            generation._deliver(token)
            generation.delivered += 1
        left = generation.max_tokens - generation.delivered
        if left <= 0:
            generation._deliver(Finished("length"))
            return
        generation.rejoining = True
        try:
            (uid,) = batch.insert_segments([[tokens]], caches=[cache], all_tokens=[list(context)],
                                           max_tokens=[left], samplers=[generation.row_sampler],
                                           logits_processors=[generation.row_processors])
        except Exception as e:
            log.exception("could not put forced tokens into a reply")
            generation._deliver(Finished("error", str(e) or type(e).__name__))
            return
        generation.uid = uid
        self._active[uid] = generation

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
                self._inbox -= 1
                leader = generation.follow
                if leader is not None and not leader.prompt_read and not leader.finished:
                    leader.followers.append(generation)  # starts from the cache the leader's prompt leaves
                else:
                    self._held.append(generation)
                    self._admit(batch)
            elif command == "score":
                self._score(generation)
            elif command == "cancel" and generation.uid in self._active:
                self._end(batch, generation, Finished("cancelled"))
            elif command == "cancel" and generation in self._held:
                self._held.remove(generation)
                generation._deliver(Finished("cancelled"))
                self._release_followers(batch, generation)
            elif command == "wake":  # another model's claims shrank
                self._admit(batch)
            elif command == "trim":  # another model needs room: `generation` is the bytes to keep
                self.prompt_cache.trim_to(generation)
            self._flush()
            self._claim()

    def _release_followers(self, batch: BatchGenerator, generation: Generation) -> None:
        """The generations waiting for this one's prompt go ahead (to admission)."""
        followers, generation.followers = generation.followers, []
        if followers:
            self._held.extend(followers)
            self._admit(batch)

    def _score(self, job: ScoreJob) -> None:
        try:
            results = score_tokens(self.loaded.model, job.tokens, job.top_n, self.settings.prefill_step_size)
        except Exception as e:  # reported to the request; the engine goes on
            log.exception("scoring failed")
            job.fail(e)
            return
        job.succeed(results)

    @staticmethod
    def _segments(prompt: list, start: int, boundaries: tuple) -> list[list]:
        cuts = [b for b in sorted(boundaries) if start < b < len(prompt)] + [len(prompt)]
        segments, previous = [], start
        for cut in cuts:
            segments.append(prompt[previous:cut])
            previous = cut
        return segments

    # ---- memory-aware admission ------------------------------------------------------

    def _reserved_bytes(self, extra: Generation | None = None) -> int:
        rows = [*self._active.values(), *([extra] if extra else [])]
        if self.kv_cost is None or not rows:
            return 0
        return self.kv_cost.batch(len(rows), max(g.reserved for g in rows))

    def _claim(self) -> None:
        """Tell the shared budget what this engine holds now."""
        self.kv.claim(self, self._reserved_bytes(), self.prompt_cache.stats()["bytes"])

    def _room(self, reserved: int) -> int:
        """What the prompt cache may hold beside `reserved` bytes of this engine's requests: the
        rest of its budget, and of the shared one after the other engines' claims."""
        others_reserved, others_cached = self.kv.others(self)
        return max(0, min(self.kv_budget - reserved, self.kv.total - others_reserved - others_cached - reserved))

    def _cache_room(self) -> int:
        """What running requests leave of the KV budget: the most the prompt cache may hold."""
        return self._room(self._reserved_bytes())

    def _admit(self, batch: BatchGenerator) -> None:
        """Moves waiting requests into the batch, first come first served (live requests before
        batch rows), while their worst case fits beside the running ones, this model's and the
        other loaded models' (and their prompt caches, which give up entries to make room: this
        one's at once, the others' when asked); batch rows of this model give way to live
        requests. While one must wait for another model, that model wakes this engine when its
        claims shrink."""
        while (generation := self._next_held()) is not None:
            if not generation.background:
                self._make_way(batch, generation)
            needed = self._reserved_bytes(generation)
            if self._active and needed > self.kv_budget:
                return  # wait until this model's running requests finish
            others_reserved, others_cached = self.kv.others(self)
            if needed + others_reserved > self.kv.total and (self._active or others_reserved):
                self.kv.wait(self)  # until the other models' requests finish
                return
            short = min(others_cached, needed + others_reserved + others_cached - self.kv.total)
            if short > 0:
                self.kv.wait(self, short)  # until the other models' prompt caches give up that much
                return
            self._held.remove(generation)
            self.prompt_cache.trim_to(self._room(needed))
            self._insert(batch, generation)
            self._claim()

    def _next_held(self) -> Generation | None:
        """The first live request waiting; else the first batch row, when the batch has a row
        free (batch rows never queue inside the BatchGenerator, where live ones would wait
        behind them)."""
        while self._held and self._held[0].finished:  # cancelled while waiting
            self._held.popleft()
        live = next((g for g in self._held if not g.background and not g.finished), None)
        if live is not None or not self._held:
            return live
        return self._held[0] if len(self._active) < self.settings.max_batch_size else None

    def _make_way(self, batch: BatchGenerator, live: Generation) -> None:
        """Takes batch rows out of the batch, youngest first (the least work lost), while the
        live request would find the batch full or its KV cache would not fit (with
        batch_preemption off, it waits for batch rows to end instead)."""
        while self.settings.batch_preemption and (len(self._active) >= self.settings.max_batch_size or (
                self._active and self._reserved_bytes(live) > self.kv_budget)):
            youngest = next((g for g in reversed(self._active.values()) if g.background), None)
            if youngest is None:
                return
            self.gave_way += 1
            batch.remove([youngest.uid])
            del self._active[youngest.uid]
            for waiting in [youngest, *youngest.followers]:  # the line runs again, all its choices
                waiting._deliver(Finished("gave_way"))
            youngest.followers = []
            self._claim()

    def _insert(self, batch: BatchGenerator, generation: Generation) -> None:
        if generation.finished:  # cancelled while waiting
            return
        prompt = generation.prompt
        cache, cached = self.prompt_cache.nearest(prompt)
        processors = make_request_processors(generation.sampling)
        if generation.logprobs is not None:
            generation.capture = LogprobCapture(generation.logprobs)
            processors.insert(0, generation.capture)  # first: the raw logits, before penalties
        controls = list(generation.processors)
        # No logits processor at all, when none is needed: mlx-lm then samples the batch in one call
        if self.host_forcing and not processors and not any(getattr(c, "shapes_logits", True) for c in controls):
            generation.host_controls = controls
        else:
            processors += controls
        generation.row_sampler = generation.sampler()
        generation.row_processors = [generation.guarded(p, "logits processor") for p in processors]
        try:
            (uid,) = batch.insert_segments(
                [self._segments(prompt, cached, generation.boundaries)],
                caches=[cache],
                all_tokens=[prompt[:cached]],
                max_tokens=[generation.max_tokens],
                samplers=[generation.row_sampler],
                logits_processors=[generation.row_processors],
            )
        except Exception as e:
            log.exception("could not start a generation")
            generation._deliver(Finished("error", str(e) or type(e).__name__))
            self._release_followers(batch, generation)
            return
        generation.uid = uid
        generation.cached_tokens = cached
        self._active[uid] = generation

