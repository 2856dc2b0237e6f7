"""The fast top-k sampler draws from the same distribution as mlx-lm's filter chain."""

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from server.engine.sampling import SamplingParams, make_request_sampler

VOCAB = 4096  # the sampler works on any vocabulary; a small one keeps the test fast


def reference_probabilities(logprobs, params):
    """mlx-lm's chain: top-p, then min-p, then top-k, then the temperature."""
    x = logprobs
    if 0 < params.top_p < 1:
        x = apply_top_p(x, params.top_p)
    if params.min_p > 0:
        x = apply_min_p(x, params.min_p)
    x = apply_top_k(x, params.top_k)
    return np.array(mx.softmax(x / params.temperature, axis=-1))[0]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, seed=1),
    SamplingParams(temperature=1.0, top_p=0.5, top_k=20, min_p=0.0, seed=2),
    SamplingParams(temperature=1.2, top_p=1.0, top_k=8, min_p=0.05, seed=3),
])
def test_top_k_sampler_matches_mlx_lm(params):
    mx.random.seed(0)
    logits = mx.random.normal((1, VOCAB)) * 3
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    expected = reference_probabilities(logprobs, params)

    draws = 6000
    sample = make_request_sampler(params, vocab_size=VOCAB)
    tokens = np.array(sample(mx.broadcast_to(logprobs, (draws, VOCAB))))
    counts = np.bincount(tokens, minlength=VOCAB) / draws

    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(expected > 0))
    # every frequency within 5 standard deviations of its probability
    sigma = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(counts - expected) <= 5 * sigma + 1e-9)


def test_seeded_sampler_repeats_and_unseeded_differs():
    logprobs = mx.log(mx.ones((1, VOCAB)) / VOCAB)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=42)
    first = [make_request_sampler(params, VOCAB)(logprobs).item() for _ in range(1)]
    again = [make_request_sampler(params, VOCAB)(logprobs).item() for _ in range(1)]
    assert first == again
    a, b = make_request_sampler(params, VOCAB), make_request_sampler(params, VOCAB)
    assert [a(logprobs).item() for _ in range(5)] == [b(logprobs).item() for _ in range(5)]
    # without a seed, two requests draw differently (5 uniform draws over 4096 tokens: equal by chance ~1e-18)
    unseeded = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=None)
    c, d = make_request_sampler(unseeded, VOCAB), make_request_sampler(unseeded, VOCAB)
    assert [c(logprobs).item() for _ in range(5)] != [d(logprobs).item() for _ in range(5)]
    huge = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=-(2**70))
    assert 0 <= make_request_sampler(huge, VOCAB)(logprobs).item() < VOCAB
    assert math.isfinite(float(logprobs[0, 0]))


@pytest.mark.parametrize("top_k", [0, 20])
def test_a_tiny_temperature_picks_the_most_likely_token(top_k):
    """1 / 1e-40 overflows float32: the sampler must still pick the top token (it once drew an
    arbitrary one, a masked one included, from NaN logprobs)."""
    logits = mx.zeros((1, VOCAB)).at[0, 5].add(3.0)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    for temperature in (1e-40, 5e-324):
        params = SamplingParams(temperature=temperature, top_p=0.95, top_k=top_k, min_p=0.0, seed=1)
        sample = make_request_sampler(params, vocab_size=VOCAB)
        assert [sample(logprobs).item() for _ in range(3)] == [5, 5, 5]


@pytest.mark.parametrize("top_k", [0, 20])
def test_tiny_top_p_keeps_the_most_likely_token(top_k):
    logits = mx.arange(VOCAB, dtype=mx.float32)[None] / 100
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    params = SamplingParams(temperature=1.0, top_p=5e-324, top_k=top_k, min_p=0.0, seed=1)
    sample = make_request_sampler(params, vocab_size=VOCAB)
    assert [sample(logprobs).item() for _ in range(3)] == [VOCAB - 1] * 3
