"""A near-free model: the next token is a fixed harmony reply, chosen by a few MLX ops over the
context, so that a step costs almost nothing and what a server adds around it shows.

mlx-lm loads this file by path as the `model_file` of a model directory (bench/models.py builds
it; trust_remote_code), so it goes through mlx-lm's real loading, KV caches and BatchGenerator.
It keeps the token ids themselves in its one KV cache layer (as float32 keys and values: 8 bytes a token)
and, at every forward pass, for every row at once:

- finds where the reply being written began: the first `<|start|>assistant` after the last
  message from someone else (a user, a tool);
- picks its reply: `replies[1]` when the context holds `trigger` (the tools' `namespace` of a
  developer message: an agent's request), else `replies[0]`;
- puts all the probability on token number p of that reply (p = tokens since the header), going
  round its part from `repeat_from` on once it runs out (a reply that never ends), or saying
  `<|return|>` (one that does).

No Python runs per row or per token: the cost of a step is a handful of small MLX ops over the
context plus the one-hot logits over the 201,088-token vocabulary, the same for raw mlx-lm,
mlx_lm.server and swallow-server. Only the last position's logits mean anything (mlx-lm reads
only those).

This file must stay self-contained: mlx-lm loads it by path, outside any package.
"""

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import BaseModelArgs
from mlx_lm.models.cache import KVCache

START = 200006
RETURN = 200002
ASSISTANT = 173781  # "assistant" in o200k_harmony
CHOSEN = 0.0  # the chosen token's logit; every other token gets -inf (the cheapest logsumexp on a CPU)


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str = "nearfree"
    vocab_size: int = 201088
    replies: list = field(default_factory=list)  # [{"tokens": [ids], "repeat_from": int or -1}]
    trigger: int = -1  # a token whose presence picks replies[1]


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.anchor = mx.zeros((1,))  # one parameter, so that the directory has a weights file
        replies = args.replies
        width = max(len(r["tokens"]) for r in replies) + 1  # + a <|return|> column: past the end
        table = np.full((len(replies), width), RETURN, dtype=np.int32)
        for i, reply in enumerate(replies):
            table[i, : len(reply["tokens"])] = reply["tokens"]
        self._width = width
        self._table = mx.array(table.reshape(-1))
        self._length = mx.array([len(r["tokens"]) for r in replies], dtype=mx.int32)
        self._repeat_from = mx.array([r.get("repeat_from", -1) for r in replies], dtype=mx.int32)
        self._vocabulary = mx.arange(args.vocab_size, dtype=mx.int32)

    @property
    def layers(self):
        return [self]

    def make_cache(self):
        return [KVCache()]

    def _next_tokens(self, history: mx.array) -> mx.array:
        """(B,) the next token of each row's reply; history (B, T) of token ids (float32)."""
        batch, length = history.shape
        if length < 2:
            return mx.full((batch,), RETURN, dtype=mx.int32)
        at = mx.arange(length - 1, dtype=mx.int32)
        start = history[:, :-1] == START
        to_assistant = history[:, 1:] == ASSISTANT
        last_other = mx.max(mx.where(start & ~to_assistant, at, -1), axis=1, keepdims=True)
        header = mx.min(mx.where(start & to_assistant & (at > last_other), at, length), axis=1)
        position = length - 2 - header  # tokens of the reply so far; < 0: no assistant header
        which = (mx.any(history == self.args.trigger, axis=1).astype(mx.int32)
                 if len(self.args.replies) > 1 else mx.zeros((batch,), dtype=mx.int32))
        size, repeat_from = self._length[which], self._repeat_from[which]
        looped = repeat_from + (position - repeat_from) % mx.maximum(size - repeat_from, 1)
        past_end = mx.where(repeat_from >= 0, looped, size)  # size: the <|return|> column
        index = mx.where(position < 0, size, mx.where(position < size, position, past_end))
        return self._table[which * self._width + index]

    def __call__(self, inputs: mx.array, cache=None, **kwargs):
        batch, length = inputs.shape
        ids = inputs.astype(mx.float32)[:, None, :, None]
        if cache is not None and cache[0] is not None:
            ids, _ = cache[0].update_and_fetch(ids, ids)
        chosen = self._next_tokens(ids[:, 0, :, 0])
        logits = mx.where(self._vocabulary == chosen[:, None], CHOSEN, -mx.inf)
        return mx.broadcast_to(logits[:, None, :], (batch, length, self.args.vocab_size))
