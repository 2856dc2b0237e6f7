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

The memory for caches: `kv_memory_mb` when set; else, after the weights are loaded, Metal's
recommended working set less the memory already in use (Apple Silicon), or the memory the
system has available (elsewhere), with a margin for activations and everything else.
"""

import logging
import os
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
