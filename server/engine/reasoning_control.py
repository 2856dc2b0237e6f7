"""One logits processor per request: the reasoning budget, the loop guard and the grammars.

`ReplyControl` runs on the engine thread after the sampling penalties (engine.Engine.submit's
`processors`). mlx-lm calls it once per generation step with the token context: on the first
call the newest token is the prompt's last one (`<|start|>assistant`, or the end of a forced
prefix), on every later call it is the token generated at the step before. The control feeds
each generated token to its own harmony StreamableParser (server/harmony/stream.py), so it
knows the channel and the recipient of the message being written, and shapes the next token's
logits.

It costs nothing per token while nothing can be forced: the engine hands it each token after
its step (`deliver`), and the processor returns the logits untouched unless it is armed (a
forced format or a grammar, a budget within two tokens, a loop guard within two tokens of
firing, forcing under way). Armed, it reads the newest token from the context (a host sync,
which would stop MLX from overlapping one step with the next) and shapes the logits exactly.

- forcing: a queue of tokens to emit as if the model had written them (every other logit
  -inf). Ending the analysis is `<|end|><|start|>assistant<|channel|>final<|message|>`.
- reasoning budget: when the analysis text reaches `budget` tokens, the analysis ends and the
  final channel opens (`stopped_by = "budget"`). The budget counts analysis text only (not the
  header, not `<|end|>`), the same tokens usage reports as reasoning_tokens.
- loop guard: `LoopDetector` watches the analysis text; a degenerate loop ends the analysis
  the same way (`stopped_by = "loop"`).
- grammars: in the final message (structured output) and in a strict tool call's arguments,
  only tokens the grammar allows, and the end token (<|return|> / <|call|>) once the JSON is
  complete.
- header choices (`tool_choice: "required"` with several tools): the reply starts inside a call's
  header (`<|channel|>commentary to=functions`) and its next tokens are held to the rest of a
  declared tool's header (`.NAME <|constrain|>json<|message|>`), so a forced call always names
  a real tool and the header always reaches its message.
- `force_final` (structured output without tools): the reply's header is forced
  (`<|channel|>analysis<|message|>`, or the final one when there is no reasoning budget), the
  analysis may not use special tokens other than `<|end|>` (the probability the model gives to
  stopping goes to `<|end|>`: wanting to stop there means being done thinking), and when it
  ends the final header is forced: the model cannot leave the format or skip the JSON.

Nothing here may raise into the batch step (that would fail every request in the batch): an
unexpected error is logged, remembered in `error`, and the logits pass through unchanged.
"""

import logging
from collections import deque
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from openai_harmony import HarmonyError, StreamState

from server.engine.structured import Grammar, GrammarGuide
from server.harmony.parse import is_call
from server.harmony.stream import ReplyStream

log = logging.getLogger("swallow.reasoning")

END, START, ASSISTANT, CHANNEL, FINAL, MESSAGE = 200007, 200006, 173781, 200005, 17196, 200008
ANALYSIS = 35644
FIRST_SPECIAL = 199998
VOCAB_SIZE = 201088
TO_FINAL = (END, START, ASSISTANT, CHANNEL, FINAL, MESSAGE)  # close the analysis, open the answer
NEXT_FINAL = TO_FINAL[1:]  # after an <|end|> the model wrote itself
FINAL_HEADER = (CHANNEL, FINAL, MESSAGE)
ANALYSIS_HEADER = (CHANNEL, ANALYSIS, MESSAGE)


@dataclass(frozen=True)
class LoopSettings:
    max_period: int = 128  # longest repeating unit looked for, in tokens
    min_repeats: int = 4  # back-to-back copies of the unit
    min_tokens: int = 128  # and at least this many tokens of repetition


class LoopDetector:
    """A degenerate loop: the trailing tokens are periodic with some period p <= max_period
    over at least max(min_repeats * p, min_tokens) tokens. O(max_period) per token: for each
    period p, `runs[p]` counts the trailing positions i with t[i] == t[i - p]; the trailing
    p-periodic span is then runs[p] + p tokens long."""

    def __init__(self, settings: LoopSettings):
        self.settings = settings
        periods = np.arange(1, settings.max_period + 1)
        self._needed = np.maximum(settings.min_repeats * periods, settings.min_tokens) - periods
        self.reset()

    def reset(self) -> None:
        n = self.settings.max_period
        self._recent = np.full(n, -1, dtype=np.int64)  # recent[k]: the token k+1 positions back
        self._runs = np.zeros(n, dtype=np.int64)
        self.seen = 0

    def close(self, margin: int) -> bool:
        """Whether `margin` more repeating tokens could make a loop."""
        return bool((self._runs + margin >= self._needed).any())

    def feed(self, token: int) -> bool:
        """Add a token; True when the text now ends in a loop."""
        self._runs = np.where(self._recent == token, self._runs + 1, 0)
        self._recent = np.roll(self._recent, 1)
        self._recent[0] = token
        self.seen += 1
        return bool((self._runs >= self._needed).any())


def _forced(token: int, logits: mx.array) -> mx.array:
    """Logits that leave the sampler one choice (the same shape as the model's)."""
    only = mx.where(mx.arange(logits.shape[-1]) == token, mx.array(0.0, logits.dtype), -mx.inf)
    return mx.broadcast_to(only, logits.shape)


STOPS = (200002, 200012, 199999)  # <|return|>, <|call|>, <|endoftext|>
_ANALYSIS_MASKS: dict[int, tuple[mx.array, mx.array]] = {}


def _analysis_masks(size: int) -> tuple[mx.array, mx.array]:
    """(special tokens other than <|end|>: what a forced-format analysis may not write; <|end|>)"""
    if size not in _ANALYSIS_MASKS:
        banned = np.zeros(size, dtype=bool)
        banned[FIRST_SPECIAL:] = True
        banned[END] = False
        _ANALYSIS_MASKS[size] = (mx.array(banned), mx.arange(size) == END)
    return _ANALYSIS_MASKS[size]


def _stop_means_end(logits: mx.array) -> mx.array:
    """A forced-format analysis: no special token but <|end|>, which also gets the probability
    of the stop tokens."""
    banned, is_end = _analysis_masks(logits.shape[-1])
    end = mx.logsumexp(logits[..., [END, *STOPS]], axis=-1, keepdims=True)
    return mx.where(is_end, end, mx.where(banned, -mx.inf, logits))


class ReplyControl:
    def __init__(self, encoding, *, prefix=(), budget: int | None = None, loop: LoopSettings | None = None,
                 final_grammar: Grammar | None = None, tool_grammars: dict | None = None,
                 force_final: bool = False, start_with_final: bool = False, header_choices=()):
        self._parser = ReplyStream(encoding)
        self._queue: deque[int] = deque()
        self._calls = 0
        self._prompt_length: int | None = None  # the context's length at the first call
        self._generated = 0  # generated tokens observed
        self._delivered = 0  # generated tokens the engine handed over
        self._broken = False
        self.budget = budget
        self.detector = LoopDetector(loop) if loop else None
        self.final_grammar = final_grammar
        self.tool_grammars = tool_grammars or {}
        self.force_final = force_final
        self.start_with_final = start_with_final
        self._guide: GrammarGuide | None = None
        self._guide_kind: str | None = None  # "final" or "call"
        self._looping = False
        # what the API layer reads after the turn
        self.analysis_tokens = 0
        self.stopped_by: str | None = None  # "budget" or "loop": the server ended the analysis
        self.final_guided = False  # the final message was generated under the grammar
        self.final_accepting = False  # ... and its JSON was complete at the last step
        self.error: str | None = None
        self._prefixed = bool(prefix)
        for token in prefix:
            self._observe(token)
        # the ways a forced call's header may go on (one per declared tool), and its tokens so far
        self._header_choices = [list(c) for c in header_choices]
        self._header: list[int] = []
        # shaping every token: forced formats, and grammars (a message may start at any token)
        self._always = force_final or start_with_final or bool(final_grammar) or bool(self.tool_grammars)

    # ---- the processor -------------------------------------------------------------

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        try:
            self._calls += 1
            if self._prompt_length is None:  # the first call: the context is the prompt alone
                self._prompt_length = tokens.shape[-1]
            if not self._armed():
                return logits  # nothing can be forced at the next token: no sync, no work
            missing = tokens.shape[-1] - self._prompt_length - self._generated
            if missing > 0:  # the newest token(s), not delivered yet: read them (a host sync)
                for token in tokens[-missing:].tolist():
                    self._generated_token(token)
            return self._shape(logits)
        except Exception as e:  # never into the batch step
            self._fail(e)
            return logits

    def deliver(self, token: int) -> None:
        """The engine hands over each generated token after its step (engine thread), so the
        state is kept without a host sync; the processor reads only what is newer than this."""
        try:
            self._delivered += 1
            if self._delivered > self._generated:
                self._generated_token(token)
        except Exception as e:  # never into the engine
            self._fail(e)

    def _generated_token(self, token: int) -> None:
        self._generated += 1
        if self._header_choices:
            self._header.append(token)
        self._observe(token)

    def _armed(self) -> bool:
        """Whether the next token may have to be shaped. Two tokens of margin: when the
        processor runs for token n, the engine has delivered up to n - 2."""
        if self._broken:
            return False
        return bool(self._always or self._queue or self._guide is not None or self._header_choices or self._looping
                    or (self.budget is not None and self.analysis_tokens + 2 >= self.budget)
                    or (self.detector is not None and self.detector.close(2)))

    def _fail(self, error: Exception) -> None:
        log.exception("reply control failed; the reply goes on unconstrained", exc_info=error)
        self.error = self.error or f"reply control failed: {error}"
        self._stop_controlling()

    def _stop_controlling(self) -> None:
        self._broken = True
        self.final_accepting = False  # whatever comes now is not checked by a grammar

    @property
    def grammar_error(self) -> str | None:
        if self._guide is not None and self._guide.failed:
            return self._guide.failed
        return self.error

    # ---- reading the reply ---------------------------------------------------------

    def _observe(self, token: int) -> None:
        if self._broken:
            return
        parser = self._parser
        before, messages = parser.state, parser.message_count
        try:
            parser.process(token)
        except HarmonyError as e:
            log.info("reply left the harmony format (%s); no more reasoning control for it", e)
            self.error = self.error or f"the reply left the harmony format ({e})"
            self._stop_controlling()
            return
        if parser.header_runs_on:  # the client gets the rest as plain text (harmony/parse.py)
            log.info("reply's header ran on past any real one; no more reasoning control for it")
            self.error = self.error or "the reply left the harmony format (a header without an end)"
            self._stop_controlling()
            return
        state = parser.state
        if before == StreamState.CONTENT and state == StreamState.CONTENT and parser.message_count == messages:
            self._content_token(token)
            return
        if parser.message_count > messages:  # a message ended
            ended = parser.messages[-1]
            self._guide, self._guide_kind, self._looping = None, None, False
            if self.detector is not None:
                self.detector.reset()
            if self.force_final and ended.channel == "analysis" and not self._queue:
                self._queue.extend(NEXT_FINAL)  # the model closed its analysis: the answer comes next
        if before != StreamState.CONTENT and state == StreamState.CONTENT:
            self._message_starts()

    def _is_call(self) -> bool:
        """A call's arguments (to a client's function or a tool the server runs): not analysis."""
        return is_call(self._parser.recipient)

    def _content_token(self, token: int) -> None:
        if self._guide is not None:
            self._guide.consume(token)
        elif self._parser.channel == "analysis" and not self._is_call():
            self.analysis_tokens += 1
            if self.detector is not None and self.detector.feed(token):
                self._looping = True

    def _message_starts(self) -> None:
        if self._is_call():
            recipient = self._parser.recipient
            grammar = self.tool_grammars.get(recipient[len("functions."):]) if recipient.startswith("functions.") else None
            if grammar is not None:
                self._guide, self._guide_kind = grammar.guide(), "call"
        elif self._parser.channel == "final" and self.final_grammar is not None:
            self._guide, self._guide_kind = self.final_grammar.guide(), "final"
            self.final_guided = True

    # ---- shaping the next token ----------------------------------------------------

    def _in_analysis(self) -> bool:
        parser = self._parser
        return (parser.state == StreamState.CONTENT and parser.channel == "analysis"
                and not self._is_call())

    def _shape(self, logits: mx.array) -> mx.array:
        if self._broken:
            return logits
        if self._queue:
            return _forced(self._queue.popleft(), logits)
        if self._header_choices:
            return self._held_to_header(logits)
        if self._calls == 1 and not self._prefixed and (self.force_final or self.start_with_final):
            header = FINAL_HEADER if self.start_with_final or self.budget == 0 else ANALYSIS_HEADER
            self._queue.extend(header[1:])
            return _forced(header[0], logits)
        if self._guide is not None:
            return self._guided(logits)
        if self._in_analysis():
            over_budget = self.budget is not None and self.analysis_tokens >= self.budget
            if over_budget or self._looping:
                self.stopped_by = "loop" if self._looping and not over_budget else "budget"
                self._queue.extend(TO_FINAL[1:])
                return _forced(TO_FINAL[0], logits)
            if self.force_final:
                return _stop_means_end(logits)
        return logits

    def _held_to_header(self, logits: mx.array) -> mx.array:
        """Only tokens that continue the header of a call to a declared tool."""
        done = len(self._header)
        allowed = {c[done] for c in self._header_choices if c[:done] == self._header and len(c) > done}
        if not allowed:  # the header is complete: the arguments are the model's (or a grammar's)
            self._header_choices = []
            return self._shape(logits)
        size = logits.shape[-1]
        mask = np.zeros(size, dtype=bool)
        mask[[t for t in allowed if t < size]] = True
        return mx.where(mx.array(mask), logits, -mx.inf)

    def _guided(self, logits: mx.array) -> mx.array:
        guide = self._guide
        if self._guide_kind == "final":
            self.final_accepting = guide.accepting
        if guide.failed is not None or guide.complete:
            return _forced(guide.end, logits)
        return guide.apply(logits)
