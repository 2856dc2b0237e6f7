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

This file must stay self-contained: mlx-lm loads it by path, outside any package.
"""

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
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


def _last_occurrence_end(history: list, needle: list) -> int:
    """Index just past the last occurrence of `needle` in `history`, or -1."""
    n = len(needle)
    for end in range(len(history), n - 1, -1):
        if history[end - n : end] == needle:
            return end
    return -1


def next_scripted_token(history: list, scripts: list, default_reply: list) -> int:
    replies, trigger_end = [default_reply], 0
    for script in scripts:
        end = _last_occurrence_end(history, script["trigger"])
        if end > trigger_end:
            replies, trigger_end = script["replies"], end

    # Messages from someone other than the assistant since the trigger (tool results).
    others = [
        i
        for i in range(trigger_end, len(history) - 1)
        if history[i] == START and history[i + 1] != ASSISTANT
    ]
    turn_start = others[-1] if others else trigger_end
    reply = replies[min(len(others), len(replies) - 1)]
    for i in range(turn_start, len(history) - 1):
        if history[i] == START and history[i + 1] == ASSISTANT:
            position = len(history) - (i + 2)
            return reply[position] if position < len(reply) else RETURN
    return RETURN


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        # One parameter so that the directory has a weights file, as mlx-lm expects.
        self.anchor = mx.zeros((1,))

    @property
    def layers(self):
        return [self]

    def make_cache(self):
        return [KVCache()]

    def __call__(self, inputs: mx.array, cache=None, **kwargs):
        batch, length = inputs.shape
        ids = inputs.astype(mx.float32)[:, None, :, None]
        if cache is not None and cache[0] is not None:
            ids, _ = cache[0].update_and_fetch(ids, ids)
        histories = ids[:, 0, :, 0].astype(mx.int32).tolist()
        targets = [
            next_scripted_token(h, self.args.scripts, self.args.default_reply)
            for h in histories
        ]
        logits = mx.zeros((batch, self.args.vocab_size), dtype=mx.float32)
        logits[mx.arange(batch), mx.array(targets)] = CONFIDENCE
        return mx.broadcast_to(logits[:, None, :], (batch, length, self.args.vocab_size))
