"""The models in the local Hugging Face cache: listing them (`swallow-server ls`, Ollama's
/api/tags) and deleting one (`swallow-server rm`, Ollama's DELETE /api/delete), through
huggingface_hub's cache API (scan_cache_dir, delete_revisions)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import catalog
from .download import missing_weights
from .errors import ModelError


@dataclass
class CachedModel:
    repo_id: str
    snapshot: Path  # the revision "main" points to, else the newest
    commit: str
    size_bytes: int  # the repo's files on disk, all its revisions
    modified: float  # when it last changed on disk (seconds since the epoch)
    config: dict
    missing: list[str] = field(default_factory=list)  # weights its index lists that aren't there

    @property
    def servable(self) -> bool:
        """A GPT-OSS model, which this server runs (the same test as server/registry/catalog.py)."""
        return self.config.get("model_type") == "gpt_oss"

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def aliases(self) -> tuple[str, ...]:
        return catalog.aliases_of(self.repo_id)

    @property
    def quantization_bits(self) -> int | None:
        quant = self.config.get("quantization")
        return quant.get("bits") if isinstance(quant, dict) else None


def _scan(cache_dir):
    from huggingface_hub import scan_cache_dir

    try:
        return scan_cache_dir(cache_dir).repos
    except Exception:  # no cache yet (CacheNotFound), or one that can't be read: nothing there
        return []


def _describe(repo) -> CachedModel | None:
    revisions = sorted(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
    for revision in revisions:
        try:
            config = json.loads((revision.snapshot_path / "config.json").read_text())
        except (OSError, ValueError):
            continue
        return CachedModel(repo.repo_id, revision.snapshot_path, revision.commit_hash, repo.size_on_disk,
                           repo.last_modified, config if isinstance(config, dict) else {},
                           missing_weights(revision.snapshot_path))
    return None


def cached_models(cache_dir: str | Path | None = None) -> list[CachedModel]:
    """Every model repo of the cache that has a config.json, servable or not, by repo id."""
    found = (_describe(r) for r in _scan(cache_dir) if r.repo_type == "model")
    return sorted((m for m in found if m is not None), key=lambda m: m.repo_id.casefold())


def find(name: str, cache_dir: str | Path | None = None) -> CachedModel | None:
    """The cached model a repo id or a known alias names."""
    repo_id = catalog.resolve(name).casefold()
    return next((m for m in cached_models(cache_dir) if m.repo_id.casefold() == repo_id), None)


def remove(name: str, cache_dir: str | Path | None = None) -> int:
    """Delete a model (every revision of it) from the cache; the bytes freed. ModelError when the
    cache doesn't hold it."""
    from huggingface_hub import scan_cache_dir

    repo_id = catalog.resolve(name)
    try:
        cache = scan_cache_dir(cache_dir)
    except Exception as e:
        raise ModelError(f"'{name}' is not in the Hugging Face cache ({e}).") from e
    repo = next((r for r in cache.repos if r.repo_type == "model" and r.repo_id.casefold() == repo_id.casefold()), None)
    if repo is None:
        raise ModelError(f"'{name}' is not in the Hugging Face cache ({cache_dir or _default_dir()}); "
                         "`swallow-server ls` lists what is.")
    strategy = cache.delete_revisions(*(r.commit_hash for r in repo.revisions))
    strategy.execute()
    if repo.repo_path.exists():  # no revisions (an interrupted first pull): the folder is all there is
        import shutil

        shutil.rmtree(repo.repo_path)
    return strategy.expected_freed_size or repo.size_on_disk


def _default_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE
