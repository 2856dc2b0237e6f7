"""Logprobs: the model's own log-softmax for what it generated, and for a prompt's tokens.

Both run on the engine thread (all MLX work does). The numbers are taken before penalties,
grammars, temperature and top-p/top-k, as OpenAI and vLLM report them.
"""

import asyncio
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache


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

    def succeed(self, results: list) -> None:
        self._settle(self.future.set_result, results)

    def fail(self, error: Exception) -> None:
        self._settle(self.future.set_exception, error)

    def _settle(self, how, value) -> None:
        try:
            self.loop.call_soon_threadsafe(lambda: self.future.done() or how(value))
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def score_tokens(model, tokens: list, top_n: int, step: int) -> list:
    """[(logprob of tokens[i], top-N [(id, logprob)])] for i >= 1, in chunks of `step` tokens
    through a fresh cache."""
    cache, results = make_prompt_cache(model), []
    step = max(1, step)
    for start in range(0, len(tokens) - 1, step):
        chunk = tokens[start:start + step + 1]
        logits = model(mx.array(chunk[:-1])[None], cache=cache)[0].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        targets = mx.array(chunk[1:])
        picked = mx.take_along_axis(logprobs, targets[:, None], axis=-1)[:, 0]
        arrays = [picked]
        if top_n:
            ids = mx.argpartition(-logprobs, kth=top_n - 1, axis=-1)[:, :top_n]
            arrays += [ids, mx.take_along_axis(logprobs, ids, axis=-1)]
        mx.eval(*arrays)
        picked = picked.tolist()
        tops = ([sorted(zip(i, v), key=lambda p: -p[1]) for i, v in zip(arrays[1].tolist(), arrays[2].tolist())]
                if top_n else [[] for _ in picked])
        results.extend(zip(picked, tops))
    return results
