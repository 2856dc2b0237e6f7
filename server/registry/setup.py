"""The registry a server starts with: its models listed, the budget found, the default loaded."""

import logging

from models.errors import ModelError
from server.config import ConfigError, Settings
from server.engine.memory import KVBudget
from server.plumbing.errors import APIError
from server.registry import catalog
from server.registry.registry import Registry

log = logging.getLogger("swallow.registry")


def models_budget(settings: Settings) -> tuple[int, str]:
    """(bytes the loaded models' weights may take, where the number comes from)."""
    if settings.models_memory_mb:
        return settings.models_memory_mb * 2**20, "models_memory_mb"
    import mlx.core as mx

    from models.loading import memory_limit_bytes

    where = "Metal's recommended working set" if mx.metal.is_available() else "this machine's memory"
    return memory_limit_bytes(), where


def open_registry(settings: Settings, command_line: list[str] | None = None, world=None) -> Registry:
    """ConfigError for a bad model list, ModelError when the default model can't be loaded.
    `world`: under mlx.launch (server/distributed/), the one model, split across its ranks."""
    try:
        listed, default = catalog.build(settings, None if world else command_line)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    discover = (lambda: catalog.discover(settings)) if settings.discover_cached_models and not world else None
    kv = None if world else KVBudget.for_server(settings.kv_memory_mb)  # one for all models' caches
    registry = Registry(listed, default, models_budget(settings), settings.strict_model_names,
                        settings.model_load_timeout, world=world, discover=discover, kv=kv)
    log.info("models: %s (default %s); %.1f GB for weights (%s)", ", ".join(m.name for m in listed),
             default.name, registry.budget / 1e9, registry.budget_from)
    try:
        registry.load_now(registry.default)
    except APIError as e:  # more than the budget
        raise ModelError(e.message) from e
    return registry
