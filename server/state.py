"""What a request needs of its model: its settings, its engine and facts (registry/lease.py picks it)."""

from dataclasses import dataclass

from openai_harmony import HarmonyEncoding

from server.config import Settings
from server.engine.engine import Engine
from server.engine.sampling import SamplingParams


@dataclass
class ServerState:
    settings: Settings
    engine: Engine | None  # None: the model is not loaded (what tokenizing needs, without it)
    encoding: HarmonyEncoding
    model_id: str
    context_length: int


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
