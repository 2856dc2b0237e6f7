"""POST /v1/chat/completions: stream and non-stream, reasoning split from the answer."""

import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.api.chat.prompt import build_prompt
from server.api.chat.schema import ChatCompletionRequest
from server.harmony import render as harmony
from server.plumbing.errors import error_body
from server.state import ServerState, check_context, sampling_params
from server.turn import plan as reply_plan
from server.turn.run import TurnEnd, collect_unless_gone, raise_for_end, run_turn

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
    settings = state.settings
    prompt, names, prefix = build_prompt(body, settings.reasoning_effort)
    plan = await reply_plan.prepare(reply_plan.asked_by_chat(body, names, bool(prompt.tools)), state)
    plan.add_format(prompt)
    tokens, shared_head = harmony.render_with_boundary(
        state.encoding, prompt, settings.model_identity, settings.knowledge_cutoff, prefix)
    prefix_tokens = state.encoding.encode(prefix, allowed_special="all") if prefix else []
    max_tokens = check_context(state, len(tokens), body.max_completion_tokens or body.max_tokens)
    control = plan.control(state.encoding, prefix_tokens, max_tokens)
    generation = state.engine.submit(tokens, max_tokens, sampling_params(body, settings), [shared_head],
                                     processors=[control])
    turn = plan.watch(run_turn(generation, state.encoding, body.stop_strings(), prefix_tokens))
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(turn, generation, meta, names, include_usage, plan, max_tokens),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _complete(turn, generation, meta, names, request, plan, max_tokens)


async def _collect(turn, names) -> tuple[dict, TurnEnd]:
    reasoning, content, calls = [], [], []
    async for event in turn:
        if isinstance(event, TurnEnd):
            end = event
        elif event.kind == "reasoning":
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
    return message, end


async def _complete(turn, generation, meta: dict, names, request: Request, plan, max_tokens: int):
    collected = await collect_unless_gone(_collect(turn, names), generation, request)
    if isinstance(collected, JSONResponse):
        return collected
    message, end = collected
    raise_for_end(end, plan, max_tokens)
    return {
        **meta,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": end.finish_reason, "logprobs": None,
                     **plan.fields()}],
        "usage": _usage(end),
        "system_fingerprint": None,
    }


async def _stream(turn, generation, meta: dict, names, include_usage: bool, plan, max_tokens: int):
    base = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None}

    def chunk(delta: dict, finish_reason=None, extra: dict | None = None) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None,
                                          **(extra or {})}]})

    yield chunk({"role": "assistant", "content": ""})
    call_index = -1
    try:
        async for event in turn:
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
        generation.cancel()  # when the client left: free its place in the batch now
    problem = plan.problem(end, max_tokens)
    if end.finish_reason == "error":
        yield _sse(error_body(f"The generation failed: {end.error}", "server_error"))
    elif problem is not None:  # structured output that can't be given: an error, never invalid JSON
        yield _sse(problem.body())
    else:
        yield chunk({}, end.finish_reason, plan.fields())
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(end)})
    yield "data: [DONE]\n\n"
