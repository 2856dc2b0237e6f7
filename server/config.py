"""Settings: defaults < config file < environment (SWALLOW_*) < command line.

Every setting is a field of `Settings`; config.toml at the top of the repository documents
each one. The TOML file may group settings in tables ([server], [model], [generation]):
tables are only for reading, the names are unique across them.
"""

import logging
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("swallow.config")

DEFAULT_MODEL = "tocchitocchi/GPT-OSS-Swallow-20B-RL-v0.1-6bit-mlx"
ENV_PREFIX = "SWALLOW_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # [server]
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # [model]
    model: str = DEFAULT_MODEL
    served_model_name: str = ""  # empty: the --model value
    trust_remote_code: bool = False
    context_length: int = Field(0, ge=0)  # 0: the model's max_position_embeddings
    model_identity: str = "You are ChatGPT, a large language model trained by OpenAI."
    knowledge_cutoff: str = "2024-06"

    # [generation]: defaults from the GPT-OSS-Swallow model card
    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(20, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    reasoning_effort: Literal["low", "medium", "high"] = "medium"
    max_tokens: int = Field(4096, ge=1)

    # [engine]
    max_batch_size: int = Field(16, ge=1)
    prefill_step_size: int = Field(2048, ge=16)


class ConfigError(Exception):
    pass


def _flatten(table: dict) -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def _from_environment() -> dict:
    names = Settings.model_fields
    return {
        key[len(ENV_PREFIX):].lower(): value
        for key, value in os.environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in names
    }


def load_settings(config_file: str | None = None, overrides: dict | None = None) -> Settings:
    """Merge the sources; `overrides` are the command-line values that were given."""
    values: dict = {}
    path = Path(config_file) if config_file else None
    if path is None and Path("config.toml").is_file():
        path = Path("config.toml")
    if path is not None:
        try:
            values.update(_flatten(tomllib.loads(path.read_text())))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        log.info("settings from %s", path)
    values.update(_from_environment())
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings: {problems}") from e
