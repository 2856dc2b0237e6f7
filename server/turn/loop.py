"""Tools the server runs itself: the loop inside a turn, one place for every API.

A reply that ends in a call outside `functions.` (a `server_call`: an MCP server's tool such as
`fs.read_text_file`, or a built-in the model reached for) is the server's to answer. The loop runs
the call, bounded, and the model goes on in a new round, in the same request and the same stream:

    round 1   prompt                                      -> reasoning, a call to fs.read_text_file
    round 2   prompt + round 1's reply + the tool message -> reasoning, the answer
              (the tool message: author fs.read_text_file, on the channel the call was on)

Each round's prompt is the previous round's prompt, the reply's own tokens as generated and the
rendered tool message: the engine kept the KV cache at the end of the reply (engine/prompt_cache.py),
so the next round reads only the tool message. The loop ends when the model answers, calls a
client's function (the API hands that call to the client, as always), or a bound is reached:

- `tool_max_rounds` calls run per reply: the next call gets "no more tool calls" as its result,
  and a call after that ends the reply as "length";
- each call's time (`tool_timeout`) and result size (`tool_max_result_kb`: cut, with a note);
- the reply's token limit counts every round's tokens, and the context what the prompt has grown to.

A call to a tool this request doesn't have (the model reached for `browser.search` while the
browser is off, or for a server it wasn't given) is answered "not available here", and the model
goes on to answer without it.

When the request has the browser, the answer's citations of its pages (`【6†L9-L11】`) become
links as the answer streams (server/tools/browser/citations.py): each link is a content event of
its own, a `CitedText` carrying the Citation (URL, title) and the lines it quotes, which each API
shows as its own annotation (url_citation, Anthropic's citations).

Besides the rounds' own events, the loop yields ServerEvents, which each API shows in its own
shape (mcp_call items, mcp_tool_use blocks, chat's `server_tool_calls`):

    server_call        the model began a call: call.recipient (and call.label, call.name) known
    server_arguments   more of its arguments (text)
    server_running     its arguments are complete; it runs now
    server_result      it ended: call.output, or call.error

The turn's TurnEnd sums the rounds: prompt tokens (each round's whole prompt), cached tokens,
generated and reasoning tokens. Every call is logged (tool, outcome, time, size) and counted in
/metrics. A client that leaves cancels the call in flight (Turn.cancel) and no round follows.
"""

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from server.harmony import render as harmony
from server.harmony.parse import Event
from server.plumbing import metrics
from server.tools.base import CallLimits, ToolError, ToolOutput
from server.tools.toolset import Toolset
from server.turn.run import TurnEnd, run_turn

log = logging.getLogger("swallow.tools")

CALL, END = 200012, 200007  # <|call|> ends a call; history renders it so, never with <|end|>


@dataclass
class ServerCall:
    recipient: str  # what the model wrote: "fs.read_text_file"
    channel: str  # the channel it was written on; its result goes there too
    kind: str | None = None  # its source's kind ("mcp"); None: no such tool in this request
    label: str | None = None  # its source's label in the APIs ("fs")
    name: str = ""  # the tool's own name ("read_text_file"); the recipient when there is no such tool
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    arguments: str = ""  # as the model wrote them (JSON; python's code)
    output: str | None = None  # what the tool answered (with an error, what it told the model, if anything)
    error: str | None = None  # why it failed: the tool's error, a timeout, not available, ...
    details: dict = field(default_factory=dict)  # what the APIs show besides (the browser's action, ...)
    error_from_tool: bool = False  # the tool itself reported the error (else: running it failed)
    seconds: float = 0.0
    result_bytes: int = 0  # of the result as the tool returned it
    truncated: bool = False

    def model_text(self) -> str:
        """The tool message the model reads."""
        return self.output if self.output is not None else f"Error: {self.error}"


@dataclass
class ServerEvent:
    kind: str  # "server_call", "server_arguments", "server_running", "server_result"
    call: ServerCall
    text: str = ""  # server_arguments: the new part


@dataclass
class CitedText(Event):
    """A piece of the answer that is a citation made a link (` ([site](url))`)."""

    citation: Any = None  # browser.Citation: url, title
    quote: str = ""  # the lines of the page it cites


class Citing:
    """The answer's citations of the request's browser pages, made links as the answer streams:
    text that may still become a citation is held back until it is whole (CitationStream)."""

    def __init__(self, browser):
        self.browser = browser
        self.stream = browser.citation_stream()

    def feed(self, event: Event) -> list[Event]:
        return self._pieces(self.stream.feed(event.text))

    def flush(self) -> list[Event]:
        return self._pieces(self.stream.close())

    def _pieces(self, cited) -> list[Event]:
        start = self.stream.sent - len(cited.text)  # where this text begins in the whole answer
        pieces, at = [], 0
        for citation in cited.citations:
            begin, end = citation.start_index - start, citation.end_index - start
            if begin > at:
                pieces.append(Event("content", cited.text[at:begin]))
            pieces.append(CitedText("content", cited.text[begin:end], citation=citation,
                                    quote=self.browser.quote(citation)))
            at = end
        if at < len(cited.text):
            pieces.append(Event("content", cited.text[at:]))
        return pieces


@dataclass
class Totals:
    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    cached: int = 0

    def add(self, end: TurnEnd) -> None:
        self.prompt += end.prompt_tokens
        self.completion += end.completion_tokens
        self.reasoning += end.reasoning_tokens
        self.cached += end.cached_tokens

    def end(self, last: TurnEnd, finish: str | None = None) -> TurnEnd:
        return TurnEnd(finish or last.finish_reason, self.prompt, self.completion, self.reasoning, self.cached,
                       error=last.error, stop_string=last.stop_string)


def new_call(recipient: str, channel: str | None, toolset: Toolset) -> ServerCall:
    call = ServerCall(recipient, channel or "commentary", name=recipient)
    found = toolset.find(recipient)
    if found is not None:
        call.kind, call.label, call.name = found.source.kind, found.source.label, found.tool.name
    return call


async def tool_loop(turn, prompt: list[int], prefix: list[int]):
    """The turn's events across its rounds, then one TurnEnd. `turn` (pipeline.Turn) submitted the
    first round; `turn.next_round` submits the others, `turn.cancelled` says the client left."""
    resolved, state = turn.resolved, turn.state
    bounds = resolved.server_tools
    declared = set(resolved.tools.shown_names)
    totals, generation, calls_run, told_no_more = Totals(), turn.generation, 0, False
    continued = False
    browser = bounds.toolset.source("browser")
    citing = Citing(browser) if browser is not None else None
    while True:
        reply, call, end = [], None, None
        async for event in run_turn(generation, state.encoding, list(resolved.stop), () if continued else prefix,
                                    declared=declared, reply=reply, continued=continued):
            if isinstance(event, TurnEnd):
                end = event
            elif event.kind == "server_call":
                for piece in citing.flush() if citing else ():
                    yield piece
                call = new_call(event.text, event.channel, bounds.toolset)
                yield ServerEvent("server_call", call)
            elif event.kind == "server_arguments":
                call.arguments += event.text
                yield ServerEvent("server_arguments", call, event.text)
            elif event.kind == "content" and citing is not None:
                for piece in citing.feed(event):
                    yield piece
            else:
                yield event
        for piece in citing.flush() if citing else ():
            yield piece
        totals.add(end)
        if call is None or turn.cancelled:
            yield totals.end(end)
            return
        if end.finish_reason != "tool_calls":  # cut by the token limit (or failed) inside the call
            yield _not_run(call, "the reply ended before the call was complete")
            yield totals.end(end)
            return
        if calls_run >= bounds.max_rounds:
            if told_no_more:  # it was told, and called again: the reply ends here
                yield _not_run(call, f"this reply reached its limit of {bounds.max_rounds} tool calls")
                yield totals.end(end, "length")
                return
            told_no_more = True
            yield ServerEvent("server_running", call)
            _refuse(call, f"this reply reached its limit of {bounds.max_rounds} tool calls; answer with what you "
                          "have, without calling tools")
        else:
            calls_run += 1
            yield ServerEvent("server_running", call)
            turn.running = asyncio.ensure_future(run_call(call, bounds.toolset, bounds.limits))
            try:
                # shielded: the call is cancelled once, by stop_call, not again and again by a stream's
                # cancel scope (that would cut short the SDK telling the MCP server to stop)
                await asyncio.shield(turn.running)
            except asyncio.CancelledError:
                stop_call(turn.running)
                raise
            finally:
                turn.running = None
        yield ServerEvent("server_result", call)
        result = harmony.server_result(call.recipient, call.model_text(), call.channel)
        prompt = prompt + _ended_with_call(reply) + harmony.continuation(state.encoding, result)
        limit = min(resolved.max_tokens - totals.completion, state.context_length - len(prompt))
        if limit <= 0 or turn.cancelled:
            yield totals.end(end, "length")
            return
        generation = turn.next_round(prompt, limit)
        continued = True


def stop_call(task: asyncio.Future | None) -> None:
    """Cancels a call in flight, once (the client left)."""
    if task is not None and not task.done() and not task.cancelling():
        task.cancel()


def _ended_with_call(reply: list[int]) -> list[int]:
    """The reply as history has it: a call ends with <|call|> (a model may close one with <|end|>)."""
    if reply and reply[-1] == CALL:
        return reply
    return (reply[:-1] if reply and reply[-1] == END else reply) + [CALL]


def _not_run(call: ServerCall, why: str) -> ServerEvent:
    _refuse(call, f"not run: {why}")
    return ServerEvent("server_result", call)


def _refuse(call: ServerCall, why: str) -> None:
    call.error = why
    metrics.TOOL_CALLS.labels(call.label or "(none)", "refused").inc()
    log.info("tool call %s refused: %s", call.recipient, why)


async def run_call(call: ServerCall, toolset: Toolset, limits: CallLimits) -> None:
    """Runs one call, bounded in time and size; fills call.output or call.error. Logged and counted
    whatever happens; a cancellation (the client left) goes through, after it was counted."""
    found = toolset.find(call.recipient)
    source = "(none)" if found is None else getattr(found.source, "counted_as", found.source.label)
    outcome, started = "ok", time.perf_counter()
    timeout = limits.timeout
    try:
        if found is None:
            outcome, call.error = "unavailable", f"{call.recipient} is not available here"
            return
        timeout = max(timeout, getattr(found.source, "min_timeout", 0))
        async with asyncio.timeout(timeout):
            result = await found.source.call(found.tool.name, call.arguments, limits)
        if isinstance(result, ToolOutput):
            result, call.details, call.error = result.text, dict(result.details), result.error
            outcome = "ok" if call.error is None else "error"
        call.output, call.result_bytes, call.truncated = _cut(result, limits.max_bytes)
    except TimeoutError:
        outcome, call.error = "timeout", f"the call took longer than {timeout:g} s and was stopped"
    except ToolError as e:
        outcome, call.error, call.error_from_tool = "error", str(e) or "the tool failed", e.from_tool
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    except Exception as e:  # a source's own bug: this call fails, the turn goes on
        log.exception("tool call %s failed", call.recipient)
        outcome, call.error = "error", f"the tool failed ({type(e).__name__})"
    finally:
        call.seconds = time.perf_counter() - started
        metrics.TOOL_CALLS.labels(source, outcome).inc()
        metrics.TOOL_SECONDS.labels(source).observe(call.seconds)
        metrics.TOOL_RESULT_BYTES.labels(source).inc(call.result_bytes)
        log.info("tool call %s: %s in %.3f s, %d bytes%s%s", call.recipient, outcome, call.seconds, call.result_bytes,
                 " (cut)" if call.truncated else "", f": {call.error}" if call.error else "")


def _cut(text: str, max_bytes: int) -> tuple[str, int, bool]:
    """(the text within max_bytes, with a note when it was cut; its size; whether it was cut)."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text, len(data), False
    kept = data[:max_bytes].decode(errors="ignore")
    note = (f"\n\n[cut: the tool returned {len(data):,} bytes; the first {max_bytes:,} are shown "
            "(tool_max_result_kb)]")
    return kept + note, len(data), True
