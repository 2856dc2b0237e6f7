"""A deterministic "script player" architecture for tests, loaded by mlx-lm as a model_file.

mlx-lm imports this file from a model directory whose config.json names it in `model_file`
(with trust_remote_code), so it goes through mlx-lm's real loading, KV caches and batch
generator. Instead of learned weights it keeps the token ids themselves in its KV cache and,
at every step, puts all the probability on the next token of a scripted reply:

- `scripts` in config.json: a list of {"trigger": [ids], "replies": [[ids], ...]}. The script
  whose trigger occurs last in the context is played; its reply number k is used for the k-th
  assistant turn after the trigger (counted by the tool results that came back since), so a
  tool loop can be scripted: call, then answer.
- The position in the reply is the number of tokens since the assistant header
  (`<|start|>assistant`) that follows the last non-assistant message. A header forced into the
  prompt counts as part of the reply, so scripts are written as whole assistant turns.
- Past the end of a reply the model says `<|return|>`.
- `anchor_size` sets the size of its one (unused) weight, so that a test can give the model the
  memory footprint it needs; `step_delay` (seconds) makes every forward pass that long, so that
  a stream lasts while a test does something beside it; `kv_width` copies each token id that many
  times into its KV cache, so that a test can give the model the cache cost it needs (8 bytes
  per token per unit of width).
- A reply id of -1 (scripted.FAIL) makes the forward pass raise: a model failing mid-generation;
  -2 (scripted.DIE) raises SystemExit, which takes the engine thread down.

This file must stay self-contained: mlx-lm loads it by path, outside any package.
"""

import time
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import BaseModelArgs
from mlx_lm.models.cache import KVCache

START = 200006
RETURN = 200002
ASSISTANT = 173781  # "assistant" in o200k_harmony
CONFIDENCE = 100.0  # the scripted token's logit; every other token gets 0


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str = "scripted"
    vocab_size: int = 201088
    scripts: list = field(default_factory=list)
    default_reply: list = field(default_factory=list)
    anchor_size: int = 1
    step_delay: float = 0.0
    kv_width: int = 1


def _last_occurrence_end(history: np.ndarray, needle: list) -> int:
    """Index just past the last occurrence of `needle` in `history`, or -1."""
    n = len(needle)
    if n == 0 or n > len(history):
        return -1
    windows = np.lib.stride_tricks.sliding_window_view(history, n)
    found = np.flatnonzero((windows == np.asarray(needle)).all(axis=1))
    return int(found[-1]) + n if len(found) else -1


def next_scripted_token(history: np.ndarray, scripts: list, default_reply: list) -> int:
    replies, trigger_end = [default_reply], 0
    for script in scripts:
        end = _last_occurrence_end(history, script["trigger"])
        if end > trigger_end:
            replies, trigger_end = script["replies"], end

    # Headers after the trigger: messages from others (tool results) and assistant turns.
    starts = trigger_end + np.flatnonzero(history[trigger_end:-1] == START)
    from_others = starts[history[starts + 1] != ASSISTANT]
    turn_start = int(from_others[-1]) if len(from_others) else trigger_end
    reply = replies[min(len(from_others), len(replies) - 1)]
    assistant = starts[(starts >= turn_start) & (history[starts + 1] == ASSISTANT)]
    if not len(assistant):
        return RETURN
    position = len(history) - (int(assistant[0]) + 2)
    return reply[position] if position < len(reply) else RETURN


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        # One parameter so that the directory has a weights file, as mlx-lm expects.
        self.anchor = mx.zeros((args.anchor_size,))

    @property
    def layers(self):
        return [self]

    def make_cache(self):
        return [KVCache()]

    def __call__(self, inputs: mx.array, cache=None, **kwargs):
        if self.args.step_delay:
            time.sleep(self.args.step_delay)
        batch, length = inputs.shape
        ids = inputs.astype(mx.float32)[:, None, :, None]
        if self.args.kv_width > 1:
            ids = mx.repeat(ids, self.args.kv_width, axis=3)
        if cache is not None and cache[0] is not None:
            ids, _ = cache[0].update_and_fetch(ids, ids)
        histories = np.array(ids[:, 0, :, 0].astype(mx.int32))
        targets = [
            next_scripted_token(h, self.args.scripts, self.args.default_reply)
            for h in histories
        ]
        if any(t == -2 for t in targets):
            raise SystemExit("scripted engine death: this reply takes the engine thread down on purpose")
        if any(t < 0 for t in targets):
            raise RuntimeError("scripted failure: this reply fails here on purpose")
        logits = mx.zeros((batch, self.args.vocab_size), dtype=mx.float32)
        logits[mx.arange(batch), mx.array(targets)] = CONFIDENCE
        return mx.broadcast_to(logits[:, None, :], (batch, length, self.args.vocab_size))
