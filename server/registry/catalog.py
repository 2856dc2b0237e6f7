"""Which models this server serves, and the names each answers to.

They come from the command line (`--model`, any number of times, `PATH` or `ALIAS=PATH`),
from config.toml's [[models]] tables and, when neither gives any, from the `model` setting.
The first `--model` is the default (unknown names go to it), else the [[models]] entry with
`default = true`, else the first one. GPT-OSS models found in the local Hugging Face cache are
listed (and served on demand) as well, under their repo ids.

Nothing here loads a model: a Listed model holds what is known without loading it (its
settings, where its files are if they are on this machine, their size, its context length).
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from server.config import (
    ModelEntry,
    Settings,
    for_model,
    keep_alive_seconds,
    split_alias,
)

log = logging.getLogger("swallow.registry")


@dataclass
class Listed:
    name: str  # the id clients use and see
    spec: str  # a model directory, a Hugging Face repo id, or "demo"
    settings: Settings  # the server's, with this model's own on top
    keep_alive: float | None  # idle seconds before unloading; None: never
    source: str  # "command line", "config", "Hugging Face cache"
    aliases: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases, self.spec]

    def local_dir(self) -> Path | None:
        """The model's directory when its files are on this machine (nothing is downloaded)."""
        if self.spec == "demo":
            from models.demo import built_demo_dir

            return built_demo_dir()
        path = Path(self.spec).expanduser()
        if path.is_dir():
            return path
        try:
            from huggingface_hub import try_to_load_from_cache

            from models.catalog import resolve

            found = try_to_load_from_cache(resolve(self.spec), "config.json")  # "swallow:8bit": its repo
        except Exception:  # not a repo id, or an unreadable cache
            return None
        return Path(found).parent if isinstance(found, str) else None

    def context_length(self) -> int | None:
        if self.settings.context_length:
            return self.settings.context_length
        from models.loading import context_length_of

        config = _config(self.local_dir())
        return context_length_of(config) if config else None


def weights_bytes(model_dir: Path) -> int:
    """The weights' size in memory once loaded, as well as the files tell (models.loading)."""
    from models.loading import weights_in_memory

    return weights_in_memory(model_dir)


def build(settings: Settings, command_line: list[str] | None = None) -> tuple[list[Listed], Listed]:
    """(every model served, the default one)."""
    entries = list(settings.models)
    chosen: list[ModelEntry] = []
    for value in command_line or []:
        alias, spec = split_alias(value)
        entry = _find(entries, alias or spec) or _find(entries, spec)
        if entry is None:
            entry = ModelEntry(model=spec, alias=alias)
            entries.append(entry)
        chosen.append(entry)
    if not entries:  # the single model of the [model] table (or SWALLOW_MODEL)
        entries = [ModelEntry(model=settings.model, alias=settings.served_model_name)]
    if chosen and settings.served_model_name and not chosen[0].alias:  # --served-model-name names it
        chosen[0] = chosen[0].model_copy(update={"alias": settings.served_model_name})
        entries = [chosen[0] if e.model == chosen[0].model and not e.alias else e for e in entries]
    default = chosen[0] if chosen else next((e for e in entries if e.default), entries[0])
    listed, taken = [], {}
    for entry in entries:
        if entry.name in taken:
            continue  # the same model given twice (command line and config)
        model = _listed(settings, entry, "command line" if any(entry is c for c in chosen) else "config")
        for name in model.names:
            other = taken.get(name)
            if other is not None and other.name != model.name and name != model.spec:
                raise ValueError(f"the model name {name!r} is given to both {other.name!r} and {model.name!r}")
            taken.setdefault(name, model)
        listed.append(model)
    if settings.discover_cached_models:
        listed += [m for m in discover(settings) if m.spec not in taken and m.name not in taken]
    return listed, next(m for m in listed if m.name == default.name)


def discover(settings: Settings) -> list[Listed]:
    """GPT-OSS models (config.json model_type "gpt_oss") in the local Hugging Face cache."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = scan_cache_dir().repos
    except Exception:  # no cache yet, or one that can't be read: nothing found
        return []
    found = []
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified, default=None)
        if newest is None or (_config(newest.snapshot_path) or {}).get("model_type") != "gpt_oss":
            continue
        entry = ModelEntry(model=repo.repo_id)
        found.append(_listed(settings, entry, "Hugging Face cache"))
    return found


def _listed(settings: Settings, entry: ModelEntry, source: str) -> Listed:
    own = for_model(settings, entry)
    wait = keep_alive_seconds(entry.keep_alive if entry.keep_alive is not None else settings.keep_alive)
    return Listed(name=entry.name, spec=entry.model, settings=own, keep_alive=wait, source=source,
                  aliases=list(entry.aliases))


def _find(entries: list[ModelEntry], name: str) -> ModelEntry | None:
    return next((e for e in entries if name in (e.alias, e.model, *e.aliases)), None)


def _config(model_dir: Path | None) -> dict | None:
    if model_dir is None:
        return None
    try:
        return json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
