"""What KV caches cost, and how much memory there is for them: the numbers memory-aware
admission works with (engine.py).

The cost is measured, not computed from a config: one forward pass of one token through a fresh
prompt cache, on the engine thread at load time. A cache that grows with the context
(KVCache: GPT-OSS's full-attention layers) pre-allocates `step` tokens, so its bytes per token
are its size over `step`; a cache with a maximum size (RotatingKVCache: the 128-token sliding
window) is charged its full window, whatever the context.

Running requests share batched caches in which every row is as long as the longest, so a batch
of n requests whose longest worst case (prompt + token limit) is L costs n * (L * per_token +
fixed): that is what admission reserves.

The memory for caches: `kv_memory_mb` when set; else Metal's recommended working set less the
memory in use (Apple Silicon), or the memory the system has available (elsewhere), less the
loaded models' weights, with a margin for activations and everything else. It is one budget for
every loaded model (KVBudget): each engine claims its running requests' worst case and its prompt
cache's bytes against it, so two models can't both count on the same free memory. A model's own
`kv_memory_mb` ([[models]]) caps its share of it.
"""

import logging
import os
import threading
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

log = logging.getLogger("swallow.memory")

SHARE_FOR_CACHES = 0.8  # of the memory left after the weights


@dataclass(frozen=True)
class KVCost:
    per_token: float  # bytes per context token, summed over the caches that grow
    fixed: int  # bytes of the caches that stop growing (sliding windows)
    layout: tuple = ()  # what the model's caches are made of (cache_layout)

    def of(self, tokens: int) -> int:
        """The worst-case bytes of one request's cache holding `tokens` tokens."""
        return int(tokens * self.per_token) + self.fixed

    def batch(self, rows: int, longest: int) -> int:
        """The bytes of a batch of `rows` requests whose longest holds `longest` tokens."""
        return rows * self.of(longest)


def measure_kv_cost(model) -> KVCost:
    cache = make_prompt_cache(model)
    logits = model(mx.array([[0]]), cache=cache)
    mx.eval(logits, [c.state for c in cache if c.state is not None])
    per_token, fixed = 0.0, 0
    for layer in cache:
        size = layer.nbytes
        if isinstance(layer, RotatingKVCache):
            # allocated up to its window: charge the whole window
            allocated = layer.keys.shape[2] if layer.keys is not None else 1
            fixed += int(size * max(layer.max_size, allocated) / allocated)
        elif isinstance(layer, KVCache):
            per_token += size / layer.step
        else:  # a cache type this doesn't know: charge what one token took, per token
            per_token += size
    return KVCost(per_token, fixed, cache_layout(cache))


def cache_layout(cache: list) -> tuple:
    """What a prompt cache is made of, apart from how long it is: per layer its type, its window
    and its arrays' shapes (the batch and sequence axes left out) and dtypes. Every cache of one
    model has the same; a prompt-cache snapshot of another model (or conversion) has not."""
    layers = []
    for layer in cache:
        state = layer.state
        arrays = [a for a in (state if isinstance(state, (list, tuple)) else [state]) if isinstance(a, mx.array)]
        shapes = tuple((a.shape[1:2] + a.shape[3:] if a.ndim == 4 else a.shape[1:], str(a.dtype)) for a in arrays)
        layers.append((type(layer).__name__, getattr(layer, "max_size", None), shapes))
    return tuple(layers)


def _available_system_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cache_budget(kv_memory_mb: int) -> tuple[int, str]:
    """(bytes the KV caches may use, where the number comes from)."""
    if kv_memory_mb > 0:
        return kv_memory_mb * 2**20, "kv_memory_mb"
    if mx.metal.is_available():
        info = mx.device_info()
        left = info["max_recommended_working_set_size"] - mx.get_active_memory()
        return int(max(left, 0) * SHARE_FOR_CACHES), "Metal's recommended working set"
    return int(_available_system_bytes() * SHARE_FOR_CACHES), "available system memory"


@dataclass
class Claim:
    reserved: int = 0  # the worst case of the engine's running requests
    cached: int = 0  # its prompt cache's bytes
    waiting: bool = False  # a request of it waits for the others' claims to shrink


class KVBudget:
    """The memory all loaded models' KV caches share. Engines run on their own threads: each
    claims (under a lock) what its running requests may need at worst and what its prompt cache
    holds, and admission (engine.py) counts the other engines' claims too. An engine whose
    request waits for the others is woken (`engine.wake()`) when their claims shrink; one that
    waits only for their prompt caches asks them to give entries up (`engine.give_up_cache(n)`).

    `total` is fixed (kv_memory_mb, or one engine's own measure), or, with `shrinks_by_weights`,
    the machine's free memory before any model less the loaded models' weights (`weights`)."""

    def __init__(self, total: int, source: str, shrinks_by_weights: bool = False):
        self._base, self.source = total, source
        self.shrinks_by_weights = shrinks_by_weights
        self.weights = 0  # bytes of the loaded models' weights (the registry keeps it up to date)
        self._claims: dict = {}  # engine -> Claim
        self._lock = threading.Lock()

    @classmethod
    def for_server(cls, kv_memory_mb: int) -> "KVBudget":
        """The budget of a server's models: kv_memory_mb, or the machine's free memory less the
        weights of the models loaded (measured now, before any is)."""
        if kv_memory_mb > 0:
            return cls(kv_memory_mb * 2**20, "kv_memory_mb")
        total, source = cache_budget(0)
        return cls(total, f"{source}, less the loaded models' weights", shrinks_by_weights=True)

    @property
    def total(self) -> int:
        if not self.shrinks_by_weights:
            return self._base
        return max(0, self._base - int(self.weights * SHARE_FOR_CACHES))

    def join(self, engine) -> None:
        with self._lock:
            self._claims.setdefault(engine, Claim())

    def leave(self, engine) -> None:
        with self._lock:
            self._claims.pop(engine, None)
        self._wake_waiting()

    def claim(self, engine, reserved: int, cached: int) -> None:
        with self._lock:
            claim = self._claims.setdefault(engine, Claim())
            shrank = reserved < claim.reserved or cached < claim.cached
            claim.reserved, claim.cached = reserved, cached
        if shrank:
            self._wake_waiting()

    def others(self, engine) -> tuple[int, int]:
        """(reserved, cached) bytes of the other engines."""
        with self._lock:
            claims = [c for e, c in self._claims.items() if e is not engine]
        return sum(c.reserved for c in claims), sum(c.cached for c in claims)

    def used(self) -> tuple[int, int]:
        """(reserved, cached) bytes of every engine."""
        with self._lock:
            return sum(c.reserved for c in self._claims.values()), sum(c.cached for c in self._claims.values())

    def wait(self, engine, short_of_cache: int = 0) -> None:
        """The engine's next request must wait for the others: wake it when their claims shrink,
        and ask them now for `short_of_cache` bytes of their prompt caches."""
        with self._lock:
            self._claims.setdefault(engine, Claim()).waiting = True
            caches = [(e, c.cached) for e, c in self._claims.items() if e is not engine and c.cached]
        for other, cached in sorted(caches, key=lambda pair: -pair[1]):  # the largest caches first
            if short_of_cache <= 0:
                break
            other.give_up_cache(max(0, cached - short_of_cache))
            short_of_cache -= cached

    def _wake_waiting(self) -> None:
        with self._lock:
            waiting = [e for e, c in self._claims.items() if c.waiting]
            for engine in waiting:
                self._claims[engine].waiting = False
        for engine in waiting:
            engine.wake()

    def describe(self) -> dict:
        reserved, cached = self.used()
        return {"budget_bytes": self.total, "budget_from": self.source, "reserved_bytes": reserved,
                "prompt_cache_bytes": cached, "models": len(self._claims)}
