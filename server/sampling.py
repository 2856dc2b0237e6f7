"""Per-request samplers and logits processors, built from mlx-lm's own pieces.

mlx-lm's make_sampler draws from MLX's global random state, which every request in a batch
shares; a request with a `seed` must be reproducible whatever else runs beside it, so each
request draws with its own key. The filtering (top-p, min-p, top-k) and the penalties are
mlx-lm's.
"""

import random
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    greedy_sampler,
    make_logits_processors,
)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


def make_request_sampler(params: SamplingParams):
    if params.temperature == 0:
        return greedy_sampler
    filters = []
    if 0 < params.top_p < 1:
        filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0:
        filters.append(lambda x: apply_min_p(x, params.min_p))
    if params.top_k > 0:
        filters.append(lambda x: apply_top_k(x, params.top_k))
    seed = params.seed if params.seed is not None else random.getrandbits(63)
    key = mx.random.key(seed)
    inverse_temperature = 1.0 / params.temperature

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, draw = mx.random.split(key)
        for apply in filters:
            logprobs = apply(logprobs)
        return mx.random.categorical(logprobs * inverse_temperature, key=draw)

    return sample


def make_request_processors(params: SamplingParams) -> list:
    return make_logits_processors(
        presence_penalty=params.presence_penalty or None,
        frequency_penalty=params.frequency_penalty or None,
    )
