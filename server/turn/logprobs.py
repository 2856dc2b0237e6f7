"""Token logprobs as the APIs give them.

The numbers come from the engine (engine/logprobs.py LogprobCapture, or Engine.score for a prompt):
the model's own log-softmax over the vocabulary, in float32, before penalties, grammars,
temperature and top-p/top-k — what OpenAI and vLLM return by default. A token's `bytes` are
its exact bytes in the vocabulary, so a client can rebuild characters split across tokens
(Japanese); its `token` is that text, or `bytes:\\xNN...` when the bytes alone aren't UTF-8.
"""

from dataclasses import dataclass

from models.vocab import token_vocabulary

FIRST_SPECIAL_TOKEN = 199998


@dataclass
class TokenLogprob:
    """One generated token's logprob, yielded by run_turn before the token's text events."""

    channel: str  # "content", "reasoning" (analysis) or "tool_arguments"
    token: int
    logprob: float
    top: list  # [(token id, logprob)], most likely first
    kind: str = "logprob"


def token_bytes(encoding, token: int) -> bytes:
    if token < FIRST_SPECIAL_TOKEN:
        return token_vocabulary().decode_single_token_bytes(token)
    try:
        return encoding.decode([token]).encode()  # a harmony special token: its name, <|channel|>
    except Exception:  # a reserved id with no name
        return f"<|reserved_{token}|>".encode()


def token_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def entry(encoding, token: int, logprob: float) -> dict:
    data = token_bytes(encoding, token)
    return {"token": token_text(data), "logprob": logprob, "bytes": list(data)}


def openai_entry(encoding, item: TokenLogprob, top_n: int) -> dict:
    """Chat completions' (and the Responses API's) shape of one token."""
    return {**entry(encoding, item.token, item.logprob),
            "top_logprobs": [entry(encoding, t, lp) for t, lp in item.top[:top_n]]}
