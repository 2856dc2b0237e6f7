"""The loaded models: one engine each, loaded on demand within a memory budget, unloaded when idle.

A request takes its model with `acquire` and gives it back with `release` when its answer has
been sent (server/registry/lease.py does that for every request). While any request holds a
model it is busy and is never unloaded. Loading a model that doesn't fit beside the loaded ones
first unloads the least recently used idle ones; when all of them are busy it waits for them
(bounded by model_load_timeout). One model loads at a time; requests for a model being loaded
wait for it, while the loaded models keep serving theirs: each engine has its own thread.

An idle model is unloaded after its keep-alive (config, or the last request's `keep_alive`),
or on POST /v1/models/{id}/unload.

The budget is models_memory_mb, else Metal's recommended working set on a Mac, else the
machine's memory; a model's size is its measured parameters once it has been loaded, and before
that what its weight files say (catalog.weights_bytes).

The loaded models' KV caches share one budget (`kv`, engine/memory.py's KVBudget): kv_memory_mb,
or the machine's free memory less the loaded models' weights, kept up to date as models load
and unload.
"""

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field

from models.errors import ModelError
from models.loading import DEFAULT_CONTEXT
from server.config import describe_keep_alive
from server.plumbing.errors import APIError, invalid_request
from server.registry.catalog import Listed, weights_bytes
from server.state import ServerState

log = logging.getLogger("swallow.registry")

UNCHANGED = object()  # acquire's keep_alive when the request gives none
REAP_EVERY = 0.25  # seconds between keep-alive checks
RESCAN_EVERY = 5.0  # seconds between looks into the Hugging Face cache for new models


@dataclass
class Slot:
    """One model the server serves, loaded or not."""

    listed: Listed
    keep_alive: float | None = None
    state: ServerState | None = None  # while loaded
    loading: asyncio.Task | None = None
    leases: int = 0  # requests holding it (those waiting for it to load included)
    waiting: int = 0  # requests waiting for it to load
    last_used: float = field(default_factory=time.monotonic)
    weights_bytes: int | None = None  # measured, once it has been loaded
    load_seconds: float | None = None
    loads: int = 0

    @property
    def name(self) -> str:
        return self.listed.name

    @property
    def busy(self) -> bool:
        return self.leases > 0


class Registry:
    def __init__(self, listed: list[Listed], default: Listed, budget: tuple[int, str], strict_names: bool,
                 load_timeout: float, world=None, discover=None, kv=None):
        self.slots = {m.name: Slot(m, keep_alive=m.keep_alive) for m in listed}
        self.discover = discover  # () -> the Hugging Face cache's models, or None: not looked for
        self._discovered_at = time.monotonic()
        self.default = self.slots[default.name]
        self.budget, self.budget_from = budget
        self.strict_names = strict_names
        self.load_timeout = load_timeout
        # Under mlx.launch the one model is split across the ranks (server/distributed/): it is
        # never unloaded (the other ranks would leave with it).
        self.world = world
        self.kv = kv  # the KV cache budget the engines share (None: each its own, under mlx.launch)
        self.encoding = None  # harmony's encoding: the same o200k_harmony for every GPT-OSS model
        self.on_death = None  # called with (model, reason) when an engine thread dies
        self.on_change = None  # called with (model, "load" | "unload", reason) for the metrics
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._released = asyncio.Event()  # set (and renewed) whenever a request gives a model back
        self._reaper: asyncio.Task | None = None

    # ---- names ----------------------------------------------------------------------

    def lookup(self, name: str | None) -> Slot | None:
        """The model with this name (alias, other alias or its path / repo id), or None."""
        if not name:
            return None
        for exact in (True, False):
            for slot in self.slots.values():
                names = slot.listed.names
                if name in names if exact else name.casefold() in (n.casefold() for n in names):
                    return slot
        return None

    def find(self, name: str | None) -> Slot:
        """The model a request names; an unknown name means the default model (clients such as
        Codex and Claude Code send names of their own), or a 404 with strict_model_names."""
        slot = self.lookup(name)
        if slot is not None:
            return slot
        if name and self.strict_names:
            known = ", ".join(sorted(self.slots))
            raise APIError(404, f"The model {name!r} does not exist. This server serves: {known}.",
                           type="not_found_error", param="model", code="model_not_found")
        return self.default

    async def refresh(self, every: float = RESCAN_EVERY) -> None:
        """Adds the models downloaded into the Hugging Face cache since the last look (at most
        one look every `every` seconds: /v1/models calls this). The scan runs off the loop."""
        if self.discover is None or time.monotonic() - self._discovered_at < every:
            return
        self._discovered_at = time.monotonic()
        for model in await asyncio.to_thread(self.discover):
            if self.lookup(model.name) is None and self.lookup(model.spec) is None:
                log.info("found %s in the Hugging Face cache", model.name)
                self.slots[model.name] = Slot(model, keep_alive=model.keep_alive)

    def forget(self, repo_id: str) -> None:
        """A model deleted from the Hugging Face cache: the slots found there for it are no longer
        listed (a configured model stays: asking for it downloads it again)."""
        for name, slot in list(self.slots.items()):
            if (slot.listed.source == "Hugging Face cache" and slot.listed.spec == repo_id and slot.state is None
                    and slot.loading is None and slot is not self.default):
                del self.slots[name]

    # ---- using a model ----------------------------------------------------------------

    async def acquire(self, slot: Slot, keep_alive=UNCHANGED) -> ServerState:
        """The model, loaded; hold it until `release`. `keep_alive` (seconds, None: forever)
        is how long it stays loaded once idle, from this request on (Ollama's keep_alive)."""
        slot.leases += 1
        slot.last_used = time.monotonic()
        if keep_alive is not UNCHANGED and self.world is None:
            slot.keep_alive = keep_alive
        if slot.state is not None:
            return slot.state
        slot.waiting += 1
        try:
            return await asyncio.wait_for(asyncio.shield(self._loading(slot)), self.load_timeout)
        except TimeoutError:
            self.release(slot)
            raise APIError(503, f"The model {slot.name!r} did not load within {self.load_timeout:g} s "
                           "(model_load_timeout): the models loaded before it are busy, or it is still "
                           "downloading. Retry later.", type="server_error", code="model_load_timeout") from None
        except BaseException:
            self.release(slot)
            raise
        finally:
            slot.waiting -= 1

    def release(self, slot: Slot) -> None:
        slot.leases -= 1
        slot.last_used = time.monotonic()
        self._released.set()
        self._released = asyncio.Event()

    def facts(self, slot: Slot) -> ServerState:
        """What tokenizing for a model needs, loaded or not (no engine when it isn't)."""
        if slot.state is not None:
            return slot.state
        return ServerState(settings=slot.listed.settings, engine=None, encoding=self.encoding,
                           model_id=slot.name, context_length=slot.listed.context_length() or DEFAULT_CONTEXT)

    # ---- loading and unloading ---------------------------------------------------------

    def load_now(self, slot: Slot) -> ServerState:
        """Load a model before the event loop runs (the default model, at start): blocking."""
        path = self._prepare(slot)
        self._check_fits(slot, self.size(slot, path))
        slot.state = self._start_engine(slot, path)
        return slot.state

    async def load(self, slot: Slot) -> ServerState:
        """Load it (POST /v1/models/{id}/load): as a request would, without holding it."""
        state = await self.acquire(slot)
        self.release(slot)
        return state

    async def unload(self, slot: Slot, reason: str) -> bool:
        """Unload it now when it is idle (True); a busy one is unloaded once its requests are done."""
        if self.world is not None:
            raise APIError(409, f"The model {slot.name!r} is split across {self.world.size} processes "
                           "(mlx.launch) and stays loaded while they run.", code="model_pinned")
        if slot.busy:
            slot.keep_alive = 0.0  # the reaper takes it when the last request leaves
            return False
        async with self._lock:
            if slot.state is not None and not slot.busy:
                await self._unload(slot, "request", reason)
        return True

    def _loading(self, slot: Slot) -> asyncio.Task:
        if slot.loading is None:
            slot.loading = asyncio.create_task(self._load(slot))
            slot.loading.add_done_callback(lambda task: task.cancelled() or task.exception())  # seen
        return slot.loading

    async def _load(self, slot: Slot) -> ServerState:
        try:
            async with self._lock:
                if slot.state is not None:
                    return slot.state
                deadline = time.monotonic() + self.load_timeout
                try:
                    path = await asyncio.to_thread(self._prepare, slot)
                except ModelError as e:
                    raise APIError(503, f"The model {slot.name!r} can't be loaded: {e}", type="server_error",
                                   code="model_load_failed") from e
                need = self.size(slot, path)
                self._check_fits(slot, need)
                await self._make_room(slot, need, deadline)
                try:
                    slot.state = await asyncio.to_thread(self._start_engine, slot, path)
                except ModelError as e:
                    raise APIError(503, f"The model {slot.name!r} can't be loaded: {e}", type="server_error",
                                   code="model_load_failed") from e
                return slot.state
        finally:
            slot.loading = None

    async def _make_room(self, slot: Slot, need: int, deadline: float) -> None:
        """Unload idle models, least recently used first, until `need` bytes fit; wait for busy
        ones to become idle."""
        while True:
            others = [s for s in self.slots.values() if s is not slot and s.state is not None]
            used = sum(self.size(s) for s in others)
            if used + need <= self.budget:
                return
            idle = [s for s in others if not s.busy]
            if idle:
                await self._unload(min(idle, key=lambda s: s.last_used), "room", f"to make room for {slot.name}")
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            log.info("%s waits for room: %s busy", slot.name, ", ".join(s.name for s in others))
            try:
                await asyncio.wait_for(self._released.wait(), left)
            except TimeoutError:
                pass

    async def _unload(self, slot: Slot, kind: str, why: str) -> None:
        """kind: "room", "keep_alive" or "request" (the metrics' reason label); why: for the log."""
        state, slot.state = slot.state, None
        log.info("unloading %s (%s)", slot.name, why)
        await asyncio.to_thread(_stop, state.engine)
        self._count_weights()
        if self.on_change is not None:
            self.on_change(slot.name, "unload", kind)

    def _prepare(self, slot: Slot):
        from models.loading import prepare_model

        settings = slot.listed.settings
        return prepare_model(slot.listed.spec, trust_remote_code=settings.trust_remote_code,
                             shards=self.world.size if self.world else 1, kv_memory_mb=settings.kv_memory_mb)

    def _start_engine(self, slot: Slot, path) -> ServerState:
        from server.engine.engine import Engine

        started = time.monotonic()
        settings = slot.listed.settings
        if self.world is None:
            self._count_weights(slot, self.size(slot, path))  # its caches' budget is less by its weights
            engine = Engine(settings, path, kv=self.kv)
        else:
            from server.distributed.lockstep import DistributedEngine

            engine = DistributedEngine(settings, path, self.world)
        engine.name = slot.name
        engine.on_death = lambda reason: self.on_death and self.on_death(slot.name, reason)
        engine.start()
        try:
            loaded = engine.wait_until_loaded()
        finally:
            self._count_weights()
        slot.weights_bytes = loaded.weights_bytes
        self._count_weights(slot, loaded.weights_bytes)
        slot.load_seconds = time.monotonic() - started
        slot.loads += 1
        self.encoding = self.encoding or loaded.encoding
        log.info("%s loaded in %.1f s (%.2f GB of weights; keep-alive %s)", slot.name, slot.load_seconds,
                 loaded.weights_bytes / 1e9, describe_keep_alive(slot.keep_alive))
        if self.kv is not None and len(self.loaded) > 0:
            log.info("the loaded models' KV caches share %.0f MiB (%s)", self.kv.total / 2**20, self.kv.source)
        if self.on_change is not None:
            self.on_change(slot.name, "load", "")
        return ServerState(settings=settings, engine=engine, encoding=loaded.encoding, model_id=slot.name,
                           context_length=settings.context_length or loaded.context_length)

    def _count_weights(self, loading: Slot | None = None, loading_bytes: int = 0) -> None:
        """Tell the shared KV budget what the loaded models' weights take (and the one loading)."""
        if self.kv is not None:
            self.kv.weights = sum(self.size(s) for s in self.loaded if s is not loading) + loading_bytes

    def size(self, slot: Slot, path=None) -> int:
        if slot.weights_bytes is not None:
            return slot.weights_bytes
        directory = path or slot.listed.local_dir()
        return weights_bytes(directory) if directory is not None else 0

    def _check_fits(self, slot: Slot, need: int) -> None:
        if need > self.budget:
            raise invalid_request(
                f"The model {slot.name!r} needs ~{need / 2**20:,.0f} MiB for its weights, more than the "
                f"{self.budget / 2**20:,.0f} MiB there is for models ({self.budget_from}), even with no "
                "other model loaded. Serve a smaller conversion of it, or raise models_memory_mb.",
                param="model", code="model_too_large")

    # ---- keep-alive ---------------------------------------------------------------------

    def start_reaper(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY)
            now = time.monotonic()
            for slot in self.slots.values():
                if (slot.state is not None and not slot.busy and slot.loading is None
                        and slot.keep_alive is not None and now - slot.last_used >= slot.keep_alive):
                    async with self._lock:
                        if slot.state is not None and not slot.busy:
                            await self._unload(slot, "keep_alive", f"idle for {describe_keep_alive(slot.keep_alive)}")

    def stop(self) -> None:
        """Stop every engine (at shutdown)."""
        if self._reaper is not None:
            self._reaper.cancel()
        for slot in self.slots.values():
            if slot.state is not None:
                slot.state.engine.stop()

    @property
    def loaded(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.state is not None]

    @property
    def dead(self) -> str | None:
        """Why an engine thread died, when one has (the server is then exiting)."""
        return next((f"{s.name}: {s.state.engine.dead}" for s in self.loaded if s.state.engine.dead), None)


def _stop(engine) -> None:
    """Stop an engine's thread and give its memory back (weights, caches, MLX's buffer cache)."""
    import mlx.core as mx

    engine.stop()
    engine.loaded = None
    engine.prompt_cache = None
    gc.collect()
    mx.clear_cache()
