"""POST /v1/chat/completions: stream and non-stream, reasoning split from the answer; n
choices, logprobs; the calls the server runs itself (server_calls.py)."""

import asyncio
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server.api.chat import server_calls
from server.api.chat.prompt import translate
from server.api.chat.schema import ChatCompletionRequest
from server.api.server_tools import resolve_turn
from server.registry.lease import serving
from server.turn.logprobs import openai_entry
from server.turn.pipeline import Turn, merged, open_turns
from server.turn.run import TurnEnd

router = APIRouter()

# Where a token's logprob goes in a choice's `logprobs`: the answer's tokens in `content`
# (OpenAI's list), the analysis tokens beside it, tool-call arguments in a third list.
LOGPROB_LISTS = {"content": "content", "reasoning": "reasoning_content", "tool_arguments": "tool_calls"}


def _usage(ends: list[TurnEnd]) -> dict:
    prompt = ends[0].prompt_tokens  # the prompt is read once for all choices
    completion = sum(end.completion_tokens for end in ends)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": ends[0].cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": sum(end.reasoning_tokens for end in ends)},
    }


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = await serving(request, body.model, body.keep_alive)
    if not body.stream:
        return await chat_completion(state, body, request)
    resolved = await resolve_turn(request, translate(body), state.settings)
    turns = await open_turns(state, resolved)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    lines = not resolved.reasoning.exclude  # the server's calls as lines of the reasoning
    return StreamingResponse(_stream(state, turns, _meta(state), resolved.tools.names, include_usage,
                                     resolved.logprobs, lines),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _meta(state) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_id}


async def chat_completion(state, body: ChatCompletionRequest, request) -> dict:
    """The non-stream answer's body: the route's, and a batch line's (server/batches/; `request` is
    then api/batch_endpoints.py's stand-in for one)."""
    resolved = await resolve_turn(request, translate(body), state.settings)
    turns = await open_turns(state, resolved)
    names = resolved.tools.names
    meta = _meta(state)
    top_n = resolved.logprobs
    try:
        results = await asyncio.gather(*(turn.collect(request) for turn in turns))
    finally:
        for turn in turns:
            turn.cancel()
    for turn, (_, end) in zip(turns, results):
        turn.raise_for(end)
    choices = []
    for index, (turn, (events, end)) in enumerate(zip(turns, results)):
        logprobs = _logprobs(state, events, top_n) if top_n is not None else None
        message = _message(events, names, lines=not resolved.reasoning.exclude)
        choices.append({"index": index, "message": message, "finish_reason": end.finish_reason,
                        "logprobs": logprobs, **turn.fields()})
    return {
        **meta,
        "object": "chat.completion",
        "choices": choices,
        "usage": _usage([end for _, end in results]),
        "system_fingerprint": None,
    }


def _logprobs(state, events, top_n: int) -> dict:
    lists = {"content": [], "refusal": None}
    for event in events:
        if event.kind == "logprob":
            lists.setdefault(LOGPROB_LISTS[event.channel], []).append(openai_entry(state.encoding, event, top_n))
    return lists


def _message(events, names, lines: bool = True) -> dict:
    """`lines`: the server's calls also as lines of the reasoning (not when the reasoning is excluded)."""
    reasoning, content, calls, server_calls_, annotations = [], [], [], [], []
    length = 0  # of the content so far
    for event in events:
        if event.kind == "reasoning":
            reasoning.append(event.text)
        elif event.kind == "server_running" and lines:
            reasoning.append(server_calls.call_line(event.call))
        elif event.kind == "server_result":
            if lines:
                reasoning.append(server_calls.result_line(event.call))
            server_calls_.append(server_calls.whole(event.call))
        elif event.kind == "content":
            if getattr(event, "citation", None) is not None:
                annotations.append(server_calls.citation(event, length))
            content.append(event.text)
            length += len(event.text)
        elif event.kind == "tool_call":
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": names.client_name(event.text), "arguments": ""}})
        elif event.kind == "tool_arguments" and calls:
            calls[-1]["function"]["arguments"] += event.text
    message = {"role": "assistant", "content": "".join(content) if content or not calls else None}
    if reasoning:
        message["reasoning_content"] = message["reasoning"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    if server_calls_:
        message["server_tool_calls"] = server_calls_
    if annotations:
        message["annotations"] = annotations
    return message


async def _stream(state, turns: list[Turn], meta: dict, names, include_usage: bool, top_n: int | None,
                  lines: bool = True):
    """Chunks of every choice as they come, each with its `index`. With logprobs, a chunk
    carries the logprobs of the tokens generated since the choice's previous chunk."""
    base = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None}
    pending = [dict() for _ in turns]  # per choice: list name -> entries not yet sent

    def chunk(index: int, delta: dict, finish_reason=None, extra: dict | None = None) -> str:
        logprobs = None
        if top_n is not None:
            logprobs, pending[index] = {"content": [], "refusal": None, **pending[index]}, {}
        return _sse({**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                                          "logprobs": logprobs, **(extra or {})}]})

    for index in range(len(turns)):
        yield chunk(index, {"role": "assistant", "content": ""})
    call_index = [-1] * len(turns)
    server_index = [-1] * len(turns)  # of the calls the server runs, per choice
    length = [0] * len(turns)  # of each choice's content so far (where a citation begins)
    ends: list[TurnEnd | None] = [None] * len(turns)
    try:
        async for index, event in merged(turn.events for turn in turns):
            if isinstance(event, TurnEnd):
                ends[index] = event
                problem = turns[index].failure(event)
                if problem is not None:  # a failed generation, or structured output that can't be given
                    yield _sse(problem.body())
                    yield "data: [DONE]\n\n"
                    return
                yield chunk(index, {}, event.finish_reason, turns[index].fields())
            elif event.kind == "logprob":
                name = LOGPROB_LISTS[event.channel]
                pending[index].setdefault(name, []).append(openai_entry(state.encoding, event, top_n))
            elif event.kind == "reasoning":
                yield chunk(index, {"reasoning_content": event.text, "reasoning": event.text})
            elif event.kind == "content":
                delta = {"content": event.text}
                if getattr(event, "citation", None) is not None:
                    delta["annotations"] = [server_calls.citation(event, length[index])]
                length[index] += len(event.text)
                yield chunk(index, delta)
            elif event.kind == "tool_call":
                call_index[index] += 1
                yield chunk(index, {"tool_calls": [{
                    "index": call_index[index], "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": names.client_name(event.text), "arguments": ""},
                }]})
            elif event.kind == "tool_arguments":
                yield chunk(index, {"tool_calls": [{"index": call_index[index],
                                                    "function": {"arguments": event.text}}]})
            elif event.kind == "server_call":
                server_index[index] += 1
                yield chunk(index, {"server_tool_calls": [server_calls.started(event.call, server_index[index])]})
            elif event.kind == "server_arguments":
                yield chunk(index, {"server_tool_calls": [{"index": server_index[index], "arguments": event.text}]})
            elif event.kind == "server_running" and lines:
                line = server_calls.call_line(event.call)
                yield chunk(index, {"reasoning_content": line, "reasoning": line})
            elif event.kind == "server_result":
                delta = {"server_tool_calls": [server_calls.ended(event.call, server_index[index])]}
                if lines:
                    line = server_calls.result_line(event.call)
                    delta = {"reasoning_content": line, "reasoning": line, **delta}
                yield chunk(index, delta)
    finally:
        for turn in turns:
            turn.cancel()  # when the client left: free its place in the batch now
    if include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(ends)})
    yield "data: [DONE]\n\n"
