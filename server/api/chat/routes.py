"""POST /v1/chat/completions: stream and non-stream, reasoning split from the answer."""

import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server.api.chat.prompt import turn_spec
from server.api.chat.schema import ChatCompletionRequest
from server.state import ServerState, sampling_params
from server.turn.pipeline import Turn
from server.turn.run import TurnEnd

router = APIRouter()


def _usage(end: TurnEnd) -> dict:
    return {
        "prompt_tokens": end.prompt_tokens,
        "completion_tokens": end.completion_tokens,
        "total_tokens": end.prompt_tokens + end.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": end.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": end.reasoning_tokens},
    }


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state: ServerState = request.app.state.server
    spec, names = turn_spec(body, state.settings.reasoning_effort, sampling_params(body, state.settings))
    turn = await Turn.open(state, spec)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(turn, meta, names, include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    events, end = await turn.collect(request)
    turn.raise_for(end)
    return {
        **meta,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": _message(events, names), "finish_reason": end.finish_reason,
                     "logprobs": None, **turn.fields()}],
        "usage": _usage(end),
        "system_fingerprint": None,
    }


def _message(events, names) -> dict:
    reasoning, content, calls = [], [], []
    for event in events:
        if event.kind == "reasoning":
            reasoning.append(event.text)
        elif event.kind == "content":
            content.append(event.text)
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
    return message


async def _stream(turn: Turn, meta: dict, names, include_usage: bool):
    base = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None}

    def chunk(delta: dict, finish_reason=None, extra: dict | None = None) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None,
                                          **(extra or {})}]})

    yield chunk({"role": "assistant", "content": ""})
    call_index = -1
    try:
        async for event in turn.events:
            if isinstance(event, TurnEnd):
                end = event
            elif event.kind == "reasoning":
                yield chunk({"reasoning_content": event.text, "reasoning": event.text})
            elif event.kind == "content":
                yield chunk({"content": event.text})
            elif event.kind == "tool_call":
                call_index += 1
                yield chunk({"tool_calls": [{
                    "index": call_index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": names.client_name(event.text), "arguments": ""},
                }]})
            elif event.kind == "tool_arguments":
                yield chunk({"tool_calls": [{"index": call_index, "function": {"arguments": event.text}}]})
    finally:
        turn.cancel()  # when the client left: free its place in the batch now
    problem = turn.failure(end)
    if problem is not None:  # a failed generation, or structured output that can't be given
        yield _sse(problem.body())
    else:
        yield chunk({}, end.finish_reason, turn.fields())
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(end)})
    yield "data: [DONE]\n\n"
