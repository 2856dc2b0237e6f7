"""Prompt-cache snapshots on disk, so long shared prefixes survive a restart.

What is kept: the KV cache where a prompt's system and developer messages end (the engine's
segment boundary), when that prefix is long (Codex's ~7.6k tokens, Claude Code's ~20k) — the
part every request of an agent shares. Each snapshot is one file written with mlx-lm's
`save_prompt_cache`, its token ids in the metadata, under

    <data_dir>/prompt-cache/<model key>/<digest of the tokens>.safetensors

The model key is a digest of the model's config.json and of its weight files' names, sizes and
safetensors headers, so another model (or another conversion of it) never reuses a snapshot.
At start the engine loads the snapshots back into its prompt cache (newest first, within its
memory budget). Files are written by the engine thread while it has nothing to generate, never
on a request's path; past `prompt_cache_disk_mb` the least recently used files go. A file that
can't be read, or isn't what it says, is skipped with one log line.
"""

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

log = logging.getLogger("swallow.disk_cache")

SUFFIX = ".safetensors"


def model_key(model_dir: Path) -> str:
    digest = hashlib.sha256()
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    digest.update(config.read_bytes() if config.is_file() else b"")
    for weights in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}:".encode())
        with open(weights, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8) or b"\0" * 8)
            digest.update(f.read(min(length, 16 * 2**20)))  # the tensor index: names, dtypes, offsets
    return digest.hexdigest()[:24]


def tokens_digest(tokens: list) -> str:
    return hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:32]


class DiskCache:
    def __init__(self, root: Path, model_dir: Path, budget_bytes: int, min_tokens: int):
        self.dir = Path(root) / model_key(model_dir)
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens
        self._pending: dict[str, tuple[list, list]] = {}  # digest -> (tokens, cache), to write when idle
        self.dir.mkdir(parents=True, exist_ok=True)

    def wants(self, tokens: list) -> bool:
        return (len(tokens) >= self.min_tokens and tokens_digest(tokens) not in self._pending
                and not (self.dir / f"{tokens_digest(tokens)}{SUFFIX}").exists())

    def offer(self, tokens: list, cache: list) -> None:
        """A snapshot worth keeping: written at the next idle moment (write_pending)."""
        if self.wants(tokens):
            self._pending[tokens_digest(tokens)] = (list(tokens), cache)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def write_pending(self) -> None:
        while self._pending:
            digest, (tokens, cache) = self._pending.popitem()
            path = self.dir / f"{digest}{SUFFIX}"
            partial = path.with_name(f".{path.name}.partial{SUFFIX}")
            try:
                save_prompt_cache(str(partial), cache, {"tokens": json.dumps(tokens)})
                os.replace(partial, path)
                log.info("prompt cache: kept a %d-token prefix on disk (%s)", len(tokens), path.name)
            except Exception as e:  # a full disk must not take the engine down
                log.warning("prompt cache: could not write %s (%s)", path, e)
                partial.unlink(missing_ok=True)
        self._evict()

    def _files(self) -> list[Path]:
        return sorted((p for p in self.dir.glob(f"*{SUFFIX}") if not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)

    def _evict(self) -> None:
        total = 0
        for path in self._files():  # newest first: the oldest go past the budget
            total += path.stat().st_size
            if total > self.budget_bytes:
                path.unlink(missing_ok=True)
                log.info("prompt cache: dropped %s from disk (over prompt_cache_disk_mb)", path.name)

    def load_all(self, max_bytes: int):
        """(tokens, cache) of the snapshots on disk, newest first, up to `max_bytes` of them."""
        used = 0
        for path in self._files():
            try:
                cache, metadata = load_prompt_cache(str(path), return_metadata=True)
                mx.eval([c.state for c in cache])  # read now, not on the first request's path
                tokens = json.loads(metadata["tokens"])
                if tokens_digest(tokens) != path.name[: -len(SUFFIX)] or not isinstance(tokens, list):
                    raise ValueError("its tokens don't match its name")
            except Exception as e:
                log.warning("prompt cache: skipping unreadable snapshot %s (%s)", path.name, e)
                continue
            size = sum(c.nbytes for c in cache)
            if used + size > max_bytes:
                break
            used += size
            os.utime(path)  # used: it stays longest
            yield tokens, cache
