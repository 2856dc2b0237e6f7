"""Rank 0's engine under mlx.launch: the same Engine, its batch and prompt cache recorded.

The other ranks (server/distributed/follower.py) hold their shard of the model and must run the
very batches rank 0 runs, or the model's collectives pair up wrong. So rank 0's engine is the
ordinary one (admission, prompt cache, n choices, cancellation: all its decisions, made once),
and what those decisions do to the batch and the prompt cache is recorded as operations:

    ("new_batch",)  ("insert", uids, segments, all_tokens, max_tokens, cached, samplers)
    ("remove", uids)  ("keep_segments", room)  ("keep", uid, room)  ("trim", n_bytes)
    ("next",)  ("score", tokens, top_n)  ("stop",)

and sent to the others just before the batch step (or scoring pass) they lead to. The others
apply them in order to their own batch and prompt cache, then step. Their prompt caches stay
identical to rank 0's (the same entries, of the same sizes), so an insert's cached prefix is found
there too; a rank that finds another one stops (out of step) rather than compute garbage.

Sampling: rank 0 runs each request's real sampler and logits processors (penalties, ReplyControl,
grammars, logprobs) on its logits; every rank's sampler ends with an all_sum of the tokens to which
the others add zeros, so each rank feeds the model rank 0's tokens without a host round trip.
Greedy requests share one sampler on every rank (one call, one all_sum per step); the others have
one each, the same on every rank, so the collectives come in the same order everywhere.

Failures: a failed step or message, or a rank that goes silent past `distributed_timeout`, kills
the engine (RankLost): requests in flight end with the reason, /health turns 503, the process
exits non-zero (and within EXIT_GRACE_S, even when a thread is stuck in a collective).
"""

import logging
import math
import threading
import time

import mlx.core as mx
from mlx_lm.sample_utils import greedy_sampler

from models.loading import load_model
from server.distributed.world import (
    HEARTBEAT_S,
    Channel,
    RankLost,
    Watchdog,
    World,
    device_name,
    exit_soon,
)
from server.engine.engine import Engine, new_batch
from server.engine.memory import KVBudget, cache_budget, measure_kv_cost

log = logging.getLogger("swallow.engine")


class AnchoredModel:
    """The model, remembering its last output. A sampler's all_sum waits for it, so that it comes
    after the model's own collectives on every rank: rank 0's logits processors may hand the
    sampler logits that no longer depend on the model's (a token forced by a grammar), and MLX
    would then run that all_sum first there and last elsewhere, and the ranks would pair
    different collectives."""

    def __init__(self, model):
        self.__dict__.update(model=model, last=None)

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        self.__dict__["last"] = out
        return out

    def __getattr__(self, name):
        return getattr(self.model, name)


def rank0_sampler(group, anchor: AnchoredModel, sampler):
    """Rank 0's side: its sampler's tokens, summed with the others' zeros."""

    def sample(logprobs):
        tokens = mx.depends(sampler(logprobs).astype(mx.int32), anchor.last)
        return mx.distributed.all_sum(tokens, group=group).astype(mx.uint32)

    return sample


def follower_sampler(group, anchor: AnchoredModel):
    """The other ranks' side: zeros, after the model's output (see AnchoredModel)."""

    def sample(logprobs):
        zeros = mx.depends(mx.zeros(logprobs.shape[:-1], dtype=mx.int32), [logprobs, anchor.last])
        return mx.distributed.all_sum(zeros, group=group).astype(mx.uint32)

    return sample


def sampler_kind(sampler) -> str:
    return "shared" if sampler is None or sampler is greedy_sampler else "own"


class Recorder:
    """The operations rank 0's engine did since the last message, sent with the next one."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.pending: list = []

    def record(self, op: tuple) -> None:
        self.pending.append(op)

    def send(self, last: tuple | None = None, what: str = "an engine step") -> None:
        ops, self.pending = self.pending, []
        self.channel.send([*ops, *([last] if last else [])], what)


class LockstepBatch:
    """Rank 0's BatchGenerator, whose changes are recorded and whose steps are shared."""

    def __init__(self, batch, recorder: Recorder, group, anchor: AnchoredModel):
        self.batch = batch
        self.recorder = recorder
        self.shared = rank0_sampler(group, anchor, greedy_sampler)
        self.own = lambda sampler: rank0_sampler(group, anchor, sampler)
        self.finished_caches: dict = {}  # id(prompt cache of a row that finished in the last step) -> uid

    def insert(self, prompts, max_tokens=None, **options):
        return self.insert_segments([[p] for p in prompts], max_tokens, **options)

    def insert_segments(self, segments, max_tokens=None, caches=None, all_tokens=None, samplers=None,
                        logits_processors=None):
        n = len(segments)
        caches = caches or [None] * n
        all_tokens = all_tokens or [[] for _ in range(n)]
        max_tokens = max_tokens or [self.batch.max_tokens] * n
        kinds = [sampler_kind(s) for s in samplers or [None] * n]
        wrapped = [self.shared if kind == "shared" else self.own(s)
                   for kind, s in zip(kinds, samplers or [None] * n)]
        uids = self.batch.insert_segments(segments, max_tokens, caches, all_tokens, wrapped, logits_processors)
        cached = [len(t) if c is not None else 0 for c, t in zip(caches, all_tokens)]
        self.recorder.record(("insert", uids, [[list(s) for s in row] for row in segments],
                              [list(t) for t in all_tokens], list(max_tokens), cached, kinds))
        return uids

    def remove(self, uids, return_prompt_caches=False):
        self.recorder.record(("remove", list(uids)))
        return self.batch.remove(uids, return_prompt_caches)

    def next(self):
        self.recorder.send(("next",))
        with self.recorder.channel.watchdog.guard("running an engine step"):
            try:
                prompt_responses, responses = self.batch.next()
            except Exception as e:  # under distribution no step may fail on one rank alone
                raise RankLost(f"a rank was lost or is out of step: an engine step failed "
                               f"({type(e).__name__}: {e})") from e
        self.finished_caches = {id(r.prompt_cache): r.uid for r in responses if r.finish_reason is not None}
        return prompt_responses, responses

    def __getattr__(self, name):  # extract_cache and the rest: the batch's own
        return getattr(self.batch, name)


class LockstepPromptCache:
    """Rank 0's PromptCache: what it keeps and trims is recorded (nearest only reads)."""

    def __init__(self, cache, recorder: Recorder):
        self.cache = cache
        self.recorder = recorder
        self.batch: LockstepBatch | None = None

    def keep_segments(self, batch, prompt_responses, active, room):
        self.recorder.record(("keep_segments", room))
        self.cache.keep_segments(batch.batch, prompt_responses, active, room)

    def keep(self, tokens, cache, room):
        uid = self.batch.finished_caches.get(id(cache)) if self.batch is not None else None
        if uid is None:
            raise RankLost("out of step: the prompt cache was given a cache no row of the last step left")
        self.recorder.record(("keep", uid, room))
        self.cache.keep(tokens, cache, room)

    def trim_to(self, n_bytes):
        self.recorder.record(("trim", n_bytes))
        self.cache.trim_to(n_bytes)

    def __getattr__(self, name):  # nearest, stats, open_disk, write_to_disk
        return getattr(self.cache, name)


class DistributedEngine(Engine):
    """The Engine of rank 0 under mlx.launch (see the module's docstring)."""

    def __init__(self, settings, model_path, world: World):
        super().__init__(settings, model_path)
        self.world = world
        self.watchdog = Watchdog(world.timeout, self._lost)
        self.recorder = Recorder(Channel(world, self.watchdog))
        self.prompt_cache = LockstepPromptCache(self.prompt_cache, self.recorder)
        self._dying = threading.Lock()

    def _load(self) -> None:
        with self.watchdog.guard("loading the model on every rank", limit=max(self.world.timeout, 3600)):
            self.loaded = load_model(self.settings.model, trust_remote_code=self.settings.trust_remote_code,
                                     path=self.model_path, group=self.world.group)
            self.kv_cost = measure_kv_cost(self.loaded.model)
            budget, source = cache_budget(self.settings.kv_memory_mb)
            ranks = self.world.introduce(kv_budget=budget, device=device_name())
        # every rank holds a 1/N shard of every row's cache: the tightest rank sets the budget
        least = min(r["kv_budget"] for r in ranks)
        self.kv = KVBudget(least, source if least == budget else f"{source}, of the rank with the least")
        log.info("distributed: %d ranks over %s: %s", self.world.size, self.world.backend,
                 "; ".join(f"rank {r['rank']} on {r['host']} (pid {r['pid']}, {r['device']})" for r in ranks))

    def _serve(self) -> None:
        super()._serve()
        self.recorder.send(("stop",), "the shutdown")  # the other ranks exit 0 with it

    def _new_batch(self):
        self.recorder.record(("new_batch",))
        anchor = AnchoredModel(self.loaded.model)
        batch = LockstepBatch(new_batch(anchor, self.settings), self.recorder, self.world.group, anchor)
        self.prompt_cache.batch = batch
        return batch

    def _apply_commands(self, batch, block: bool) -> bool:
        going = super()._apply_commands(batch, block)
        if going and not self._active and self._heartbeat_due():
            self.recorder.send(None, "a heartbeat")
        return going

    def _heartbeat_due(self) -> bool:
        return time.monotonic() - self.recorder.channel.last_sent >= HEARTBEAT_S

    def _score(self, job) -> None:
        self.recorder.send(("score", job.tokens, job.top_n), "a scoring pass")
        chunks = max(1, math.ceil(len(job.tokens) / max(1, self.settings.prefill_step_size)))
        with self.watchdog.guard("scoring a prompt", limit=self.world.timeout * chunks):
            super()._score(job)

    def stop(self) -> None:
        super().stop()
        if self._thread.is_alive():  # stuck in a collective: a rank is gone (SIGTERM from mlx.launch)
            self._die("a rank was lost: the engine did not stop, it is waiting for a rank that is gone")

    def _lost(self, reason: str) -> None:
        """The watchdog's verdict (its thread; the engine thread is stuck in a collective)."""
        self._die(f"a rank was lost: {reason}")

    def _die(self, reason: str) -> None:
        with self._dying:
            if self.dead is not None:  # the watchdog and the engine thread may both get here
                return
            log.critical("distributed: %s; rank 0 stops (the other ranks exit when it does)", reason)
            exit_soon(1)
            super()._die(reason)

