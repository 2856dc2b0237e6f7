"""What every endpoint needs: settings, the engine and the loaded model's facts."""

from dataclasses import dataclass

from openai_harmony import HarmonyEncoding

from server.config import Settings
from server.engine.engine import Engine
from server.engine.sampling import SamplingParams
from server.plumbing.errors import invalid_request


@dataclass
class ServerState:
    settings: Settings
    engine: Engine
    encoding: HarmonyEncoding
    model_id: str
    context_length: int


def check_context(state: ServerState, prompt_tokens: int, requested_max: int | None) -> int:
    """The number of tokens the reply may have; 400 when the prompt doesn't fit."""
    if prompt_tokens >= state.context_length:
        raise invalid_request(
            f"This model's maximum context length is {state.context_length} tokens. However, your "
            f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    wanted = requested_max or state.settings.max_tokens
    return min(wanted, state.context_length - prompt_tokens)


def sampling_params(body, settings: Settings) -> SamplingParams:
    """The request's sampling values, the configured defaults where it gave none."""

    def pick(value, default):
        return default if value is None else value

    top_k = pick(getattr(body, "top_k", None), settings.top_k)
    return SamplingParams(
        temperature=pick(body.temperature, settings.temperature),
        top_p=pick(body.top_p, settings.top_p),
        top_k=max(top_k, 0),
        min_p=pick(getattr(body, "min_p", None), settings.min_p),
        seed=getattr(body, "seed", None),
        presence_penalty=pick(getattr(body, "presence_penalty", None), 0.0),
        frequency_penalty=pick(getattr(body, "frequency_penalty", None), 0.0),
    )
