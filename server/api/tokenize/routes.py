"""POST /tokenize and POST /detokenize, in the shape vLLM's and llama.cpp's clients use.

    POST /tokenize   {"prompt": "text"} (vLLM) or {"content": "text"} (llama.cpp), or a chat
                     request's {"messages": [...], "tools": ..., "reasoning_effort": ...}
                  -> {"tokens": [...], "count": N, "max_model_len": context length}
    POST /detokenize {"tokens": [...]} -> {"prompt": "text", "content": "text"}

Chat messages are rendered exactly as /v1/chat/completions renders them (its own translation
and the turn pipeline's render), so `count` is the `prompt_tokens` a chat request would report.
Text is encoded as /v1/completions encodes a prompt: harmony's special tokens written in it are
special tokens. This tokenizer adds no BOS or other tokens around a text, so
`add_special_tokens` changes nothing.
"""

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from models.vocab import VOCAB_SIZE
from server.api.chat.prompt import translate
from server.api.chat.schema import ChatCompletionRequest
from server.plumbing.errors import invalid_request
from server.registry.lease import facts
from server.turn.logprobs import token_bytes
from server.turn.pipeline import render
from server.turn.resolve import resolve

router = APIRouter()


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # a chat request's fields, when it has messages

    model: str | None = None
    prompt: str | None = None
    content: str | None = None
    messages: list | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    state = facts(request, body.model)
    if body.messages is not None:
        try:
            chat = ChatCompletionRequest.model_validate(body.model_dump(exclude={"prompt", "content"}))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise invalid_request(f"{where}: {first['msg']}" if where else first["msg"], param=where or None)
        tokens = render(state, resolve(translate(chat), state.settings)).tokens
    else:
        text = body.prompt if body.prompt is not None else body.content
        if text is None:
            raise invalid_request("give the text as prompt (or content), or chat messages", param="prompt")
        tokens = state.encoding.encode(text, allowed_special="all")
    return {"tokens": tokens, "count": len(tokens), "max_model_len": state.context_length}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    state = facts(request, body.model)
    bad = next((t for t in body.tokens if not 0 <= t < VOCAB_SIZE), None)
    if bad is not None:
        raise invalid_request(f"token id {bad} is outside the vocabulary (0..{VOCAB_SIZE - 1})", param="tokens")
    text = b"".join(token_bytes(state.encoding, t) for t in body.tokens).decode("utf-8", errors="replace")
    return {"prompt": text, "content": text}
