"""/api/generate with `raw: true`: the prompt is used as it is, as on /v1/completions.

The client writes the whole harmony prompt itself (ending with `<|start|>assistant`); its text is
encoded with harmony's special tokens as special tokens, nothing is rendered around it, and the
reply comes back as text, unparsed: harmony's markup included (`<|channel|>analysis<|message|>…`),
as Ollama's raw mode skips its parser too. Harmony's end tokens (`<|return|>`, `<|call|>`) end the
reply and are not in it. A RawTurn looks like the pipeline's Turn to the routes: its `events`
(content only, then one TurnEnd), `generation`, `cancel`, `failure` and `collect`.
"""

import asyncio
import codecs

from server.api.ollama.prompt import NO_OPTIONS, max_tokens
from server.api.ollama.schema import GenerateRequest
from server.engine.engine import STOP_TOKENS, Finished
from server.harmony.parse import Event
from server.plumbing.errors import APIError, invalid_request
from server.turn.logprobs import token_bytes
from server.turn.pipeline import check_context
from server.turn.request import sampling_given
from server.turn.resolve import sampling
from server.turn.run import StopMatcher, TurnEnd


class RawTurn:
    def __init__(self, state, body: GenerateRequest):
        for field in ("format", "logprobs", "suffix"):
            if getattr(body, field):
                raise invalid_request(f"raw mode does not support {field}", param=field)
        options = body.options or NO_OPTIONS
        self.state = state
        self.prompt = state.encoding.encode(body.prompt, allowed_special="all")
        wanted = max_tokens(options) or state.settings.max_tokens
        state.engine.check_running()
        self.limit = check_context(state, len(self.prompt), wanted, "prompt")
        state.engine.check_fits(len(self.prompt) + self.limit)
        self.generation = state.engine.submit(self.prompt, self.limit, sampling(sampling_given(options), state.settings))
        self.events = self._events(StopMatcher(list(options.stop or ())))

    async def _events(self, stop: StopMatcher):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        finish, error, count, hit = None, None, 0, None
        try:
            async for item in self.generation.events():
                if isinstance(item, Finished):
                    finish = {"length": "length", "error": "error"}.get(item.reason, "stop")
                    error = item.error
                    break
                count += 1
                if item in STOP_TOKENS:
                    continue  # ends the reply (Finished comes next), not in the text
                text, hit = stop.feed(decoder.decode(token_bytes(self.state.encoding, item)))
                if text:
                    yield Event("content", text)
                if hit is not None:
                    finish = "stop"
                    break
        finally:
            self.generation.cancel()
        rest = "" if hit is not None else stop.flush() + decoder.decode(b"", final=True)
        if rest:
            yield Event("content", rest)
        yield TurnEnd(finish or "stop", len(self.prompt), count, 0, cached_tokens=self.generation.cached_tokens,
                      error=error, stop_string=hit)

    def cancel(self) -> None:
        self.generation.cancel()

    def failure(self, end: TurnEnd) -> APIError | None:
        if end.finish_reason == "error":
            return APIError(500, f"The generation failed: {end.error}", type="server_error")
        return None

    async def collect(self, request) -> tuple[list, TurnEnd]:
        """Every event and the end, stopping the generation when the client hangs up."""
        events = []

        async def drain():
            async for event in self.events:
                if isinstance(event, TurnEnd):
                    return events, event
                events.append(event)

        task = asyncio.ensure_future(drain())
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done and await request.is_disconnected():
                self.cancel()
                task.cancel()
                raise APIError(499, "client disconnected")
        return task.result()
