"""POST /v1/completions: raw text in, raw text out; echo, logprobs (OpenAI's legacy shape), n.

No harmony here: the prompt's tokens are the encoded text, the output is the decoded tokens
(special tokens as their names, e.g. `<|channel|>`), not parsed into channels. Harmony's end
tokens (<|return|>, <|call|>) still end a completion ("stop", not in the text).

    logprobs: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...],
               "text_offset": [...]}

With echo the prompt comes first in `text` and its tokens are scored too (one forward pass on
the engine thread), the first one `null`. max_tokens 0 with echo only scores the prompt.
"""

import asyncio
import codecs
import json
import time
import uuid
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server.api.completions.schema import DEFAULT_MAX_TOKENS, CompletionRequest
from server.engine.engine import STOP_TOKENS, Finished
from server.plumbing.errors import APIError
from server.registry.lease import serving
from server.state import ServerState
from server.turn.logprobs import token_bytes, token_text
from server.turn.pipeline import check_context, merged
from server.turn.request import sampling_given
from server.turn.resolve import choices as resolve_choices
from server.turn.resolve import sampling as resolve_sampling
from server.turn.resolve import seeded
from server.turn.run import StopMatcher

router = APIRouter()


@dataclass
class Piece:
    """Text of a choice with the logprobs of its tokens (legacy shape, offsets from `start`)."""

    text: str = ""
    tokens: list = field(default_factory=list)
    token_logprobs: list = field(default_factory=list)
    top_logprobs: list = field(default_factory=list)
    text_offset: list = field(default_factory=list)

    def logprobs(self) -> dict:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs,
                "top_logprobs": self.top_logprobs, "text_offset": self.text_offset}


@dataclass
class End:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    error: str | None = None


class Choice:
    """One completion: the echoed prompt (scored when asked), then the generated tokens."""

    def __init__(self, state, prompt: list[int], max_tokens: int, body: CompletionRequest, generation):
        self.state, self.prompt, self.max_tokens, self.body = state, prompt, max_tokens, body
        self.generation = generation
        self.top_n = body.logprobs
        self.offset = 0  # characters of text so far
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _add(self, piece: Piece, token: int, logprob, top) -> None:
        """A token's text (decoded incrementally: split UTF-8 waits for its end) and logprobs."""
        data = token_bytes(self.state.encoding, token)
        text = self._decoder.decode(data)
        if self.top_n is not None:
            piece.tokens.append(token_text(data))
            piece.token_logprobs.append(logprob)
            piece.text_offset.append(self.offset)
            if top is None:
                piece.top_logprobs.append(None)
            else:
                ranked = dict(top[: self.top_n])
                ranked.setdefault(token, logprob)  # the chosen token is always there (vLLM's way)
                piece.top_logprobs.append({token_text(token_bytes(self.state.encoding, t)): lp for t, lp in
                                           sorted(ranked.items(), key=lambda p: -p[1])})
        piece.text += text
        self.offset += len(text)

    async def pieces(self):
        """Pieces of the choice's text as they come, then one End."""
        piece = Piece()
        if self.body.echo:
            scores = await self.state.engine.score(self.prompt, self.top_n or 0) if self.top_n is not None else None
            for i, token in enumerate(self.prompt):
                logprob, top = (None, None) if not scores or i == 0 else scores[i - 1]
                self._add(piece, token, logprob, top)
            piece.text += self._decoder.decode(b"", final=True)
            self._decoder.reset()
            yield piece
        if self.generation is None:  # max_tokens 0: the prompt scored, nothing generated
            yield End("length", len(self.prompt), 0)
            return
        stop, finish, error, count, hit = StopMatcher(self.body.stop_strings()), None, None, 0, None
        generation = self.generation
        try:
            async for item in generation.events():
                if isinstance(item, Finished):
                    finish = {"length": "length", "error": "error"}.get(item.reason, "stop")
                    error = item.error
                    break
                count += 1
                if item in STOP_TOKENS:
                    continue  # ends the completion (Finished comes next), not in the text
                piece = Piece()
                scored = generation.scores[count - 1] if self.top_n is not None else None
                self._add(piece, item, scored and scored.logprob, scored and scored.top)
                piece.text, hit = stop.feed(piece.text)
                if piece.text or piece.tokens:
                    yield piece
                if hit is not None:
                    finish = "stop"
                    break
        finally:
            generation.cancel()
        rest = "" if hit is not None else stop.flush() + self._decoder.decode(b"", final=True)
        if rest:
            yield Piece(text=rest)
        yield End(finish or "stop", len(self.prompt), count, generation.cached_tokens, error)


def _choices(state: ServerState, body: CompletionRequest) -> tuple[list[Choice], list[list[int]]]:
    body.check()
    n = resolve_choices(body.n, state.settings)
    prompts = body.prompts(state.encoding)
    sampling = resolve_sampling(sampling_given(body), state.settings)
    requested = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    choices = []
    for prompt in prompts:
        max_tokens = min(check_context(state, len(prompt), requested or 1, "prompt"), requested)
        first = None
        for j in range(n):
            generation = None
            if max_tokens > 0:
                generation = state.engine.submit(prompt, max_tokens, seeded(sampling, j), logprobs=body.logprobs,
                                                 follow=first)
                first = first or generation
            choices.append(Choice(state, prompt, max_tokens, body, generation))
    return choices, prompts


def _usage(prompts: list[list[int]], ends: list[End]) -> dict:
    """Each prompt counted once, whatever n (its first choice's cached tokens)."""
    prompt = sum(len(p) for p in prompts)
    completion = sum(end.completion_tokens for end in ends)
    n = len(ends) // len(prompts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(end.cached_tokens for end in ends[::n])}}


def _failed(ends: list[End]) -> APIError | None:
    failed = next((end for end in ends if end.finish_reason == "error"), None)
    return failed and APIError(500, f"The generation failed: {failed.error}", type="server_error")


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _meta(state) -> dict:
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": state.model_id}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = await serving(request, body.model, body.keep_alive)
    if not body.stream:
        return await text_completion(state, body, request)
    choices, prompts = _choices(state, body)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_stream(choices, prompts, _meta(state), include_usage, body.logprobs is not None),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def text_completion(state, body: CompletionRequest, request) -> dict:
    """The non-stream answer's body: the route's, and a batch line's (server/batches/; `request` is
    then api/batch_endpoints.py's stand-in for one)."""
    choices, prompts = _choices(state, body)
    meta = _meta(state)

    async def collect(choice: Choice):
        whole, end = Piece(), None
        async for item in choice.pieces():
            if isinstance(item, End):
                end = item
                continue
            whole.text += item.text
            for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                getattr(whole, name).extend(getattr(item, name))
        return whole, end

    task = asyncio.ensure_future(asyncio.gather(*(collect(c) for c in choices)))
    try:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done and await request.is_disconnected():
                raise APIError(499, "client disconnected")
        results = task.result()
    except BaseException:  # the client left, or the caller was cancelled
        task.cancel()
        raise
    finally:
        for choice in choices:
            if choice.generation is not None:
                choice.generation.cancel()
    ends = [end for _, end in results]
    problem = _failed(ends)
    if problem is not None:
        raise problem
    return {
        **meta,
        "choices": [{"index": i, "text": whole.text, "finish_reason": end.finish_reason,
                     "logprobs": whole.logprobs() if body.logprobs is not None else None}
                    for i, (whole, end) in enumerate(results)],
        "usage": _usage(prompts, ends),
        "system_fingerprint": None,
    }


async def _stream(choices: list[Choice], prompts, meta: dict, include_usage: bool, with_logprobs: bool):
    ends: list[End | None] = [None] * len(choices)
    try:
        async for index, item in merged(choice.pieces() for choice in choices):
            if isinstance(item, End):
                ends[index] = item
                if item.finish_reason == "error":
                    yield _sse(_failed([item]).body())
                    yield "data: [DONE]\n\n"
                    return
                yield _sse({**meta, "choices": [{"index": index, "text": "", "finish_reason": item.finish_reason,
                                                 "logprobs": None}]})
            else:
                yield _sse({**meta, "choices": [{"index": index, "text": item.text, "finish_reason": None,
                                                 "logprobs": item.logprobs() if with_logprobs else None}]})
    finally:
        for choice in choices:
            if choice.generation is not None:
                choice.generation.cancel()
    if include_usage:
        yield _sse({**meta, "choices": [], "usage": _usage(prompts, ends)})
    yield "data: [DONE]\n\n"
