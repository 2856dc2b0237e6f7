"""Ranks other than 0 under mlx.launch: no HTTP, only the engine, in step with rank 0.

A follower loads its shard of the model, measures what rank 0 measures (the same collectives, in
the same order), then applies rank 0's operations to its own BatchGenerator and prompt cache and
steps when rank 0 steps (server/distributed/lockstep.py says which operations and why). Its tokens are
rank 0's (its sampler adds zeros to rank 0's all_sum); it delivers them to no one.

It exits 0 when rank 0 shuts down, and 1 when rank 0 is lost (a failed collective, or no word
for `distributed_timeout` seconds: rank 0 sends a heartbeat every second while idle).
"""

import logging
import os
import signal

from models.errors import ModelError
from models.loading import load_model
from server.distributed.world import RankLost, Watchdog, World, device_name, exit_soon
from server.engine.engine import new_batch
from server.engine.logprobs import score_tokens
from server.engine.memory import cache_budget, measure_kv_cost
from server.engine.prompt_cache import PromptCache

log = logging.getLogger("swallow.distributed")


class OutOfStep(RankLost):
    """This rank's state no longer matches rank 0's."""


class Follower:
    def __init__(self, world: World, settings, model):
        from server.distributed.lockstep import AnchoredModel, follower_sampler
        from server.distributed.world import Channel

        self.world = world
        self.settings = settings
        self.model = model
        self.watchdog = Watchdog(world.timeout, self._silent)
        self.channel = Channel(world, self.watchdog)
        self.prompt_cache = PromptCache(settings)
        self.anchor = AnchoredModel(model)
        self.make_sampler = lambda: follower_sampler(world.group, self.anchor)
        self.shared = self.make_sampler()
        self.batch = None
        self.prompt_responses: list = []
        self.finished: dict = {}  # uid -> the response of a row that finished in the last step

    def _silent(self, reason: str) -> None:
        log.critical("distributed rank %d: rank 0 is lost (%s); exiting", self.world.rank, reason)
        logging.shutdown()
        os._exit(1)

    def run(self) -> int:
        while True:
            for op in self.channel.receive():
                if op[0] == "stop":
                    log.info("distributed rank %d: rank 0 shut down; exiting", self.world.rank)
                    return 0
                getattr(self, f"_{op[0]}")(*op[1:])

    # ---- rank 0's operations ---------------------------------------------------------

    def _new_batch(self) -> None:
        self.batch = new_batch(self.anchor, self.settings)

    def _insert(self, uids, segments, all_tokens, max_tokens, cached, kinds) -> None:
        caches = []
        for row, prefix, length in zip(segments, all_tokens, cached):
            cache = None
            if length:
                cache, found = self.prompt_cache.nearest(prefix + [t for segment in row for t in segment])
                if found != length:
                    raise OutOfStep(f"rank 0 found {length} prompt tokens in its prompt cache, this rank {found}")
            caches.append(cache)
        samplers = [self.shared if kind == "shared" else self.make_sampler() for kind in kinds]
        mine = self.batch.insert_segments(segments, max_tokens, caches, all_tokens, samplers)
        if list(mine) != list(uids):
            raise OutOfStep(f"rank 0's batch gave uids {uids}, this rank's {mine}")

    def _remove(self, uids) -> None:
        self.batch.remove(uids)

    def _next(self) -> None:
        with self.watchdog.guard("running an engine step"):
            try:
                self.prompt_responses, responses = self.batch.next()
            except Exception as e:
                raise RankLost(f"an engine step failed: {type(e).__name__}: {e}") from e
        self.finished = {r.uid: r for r in responses if r.finish_reason is not None}

    def _keep_segments(self, room) -> None:
        self.prompt_cache.keep_segments(self.batch, self.prompt_responses, {}, room)

    def _keep(self, uid, room) -> None:
        response = self.finished[uid]
        self.prompt_cache.keep(response.all_tokens, response.prompt_cache, room)

    def _trim(self, n_bytes) -> None:
        self.prompt_cache.trim_to(n_bytes)

    def _score(self, tokens, top_n) -> None:
        try:
            score_tokens(self.model, tokens, top_n, self.settings.prefill_step_size)
        except Exception:  # rank 0 reports it to the request; a lost rank shows at the next step
            log.exception("scoring failed")


def serve_follower(world: World, settings, model_path) -> int:
    """A rank other than 0: its shard, then rank 0's steps until it stops. The exit status."""
    # Ctrl-C reaches every local rank at once: rank 0 stops the others in order (its "stop"), so
    # this rank doesn't leave on its own (it still exits when rank 0 is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        loaded = load_model(settings.model, trust_remote_code=settings.trust_remote_code, path=model_path,
                            group=world.group)
        measure_kv_cost(loaded.model)  # rank 0 measures with a forward pass: so must this rank
        budget, _ = cache_budget(settings.kv_memory_mb)
        ranks = world.introduce(kv_budget=budget, device=device_name())
        log.info("distributed rank %d of %d on %s: serving rank 0's steps (rank 0 on %s)",
                 world.rank, world.size, ranks[world.rank]["host"], ranks[0]["host"])
        return Follower(world, settings, loaded.model).run()
    except ModelError as e:
        log.critical("distributed rank %d: %s", world.rank, e)
        return 1
    except (RankLost, RuntimeError) as e:  # RuntimeError: a collective failed while loading
        log.critical("distributed rank %d: %s; exiting", world.rank, e)
        exit_soon(1, after=2.0)
        return 1
