"""What a request needs of its model: its settings, its engine and facts (registry/lease.py picks it)."""

from dataclasses import dataclass

from openai_harmony import HarmonyEncoding

from server.config import Settings
from server.engine.engine import Engine


@dataclass
class ServerState:
    settings: Settings
    engine: Engine | None  # None: the model is not loaded (what tokenizing needs, without it)
    encoding: HarmonyEncoding
    model_id: str
    context_length: int
