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
on a request's path; past `prompt_cache_disk_mb` the least recently used files go.

A file that can't be read (truncated, garbage), isn't what it says (its tokens don't match its
name), was written by another version of this format, or holds caches of another shape than
this model's (another model's file under this model's key) is set aside at start:
renamed <name>.corrupt-<timestamp>, with a warning naming it. While the disk under data_dir is
full (server/plumbing/disk.py, one warning) snapshots are not written; they are again once
there is room.
"""

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

from server.engine.memory import cache_layout
from server.plumbing.disk import DataDisk, set_aside

log = logging.getLogger("swallow.disk_cache")

SUFFIX = ".safetensors"
FORMAT = "1"  # the snapshot format (its metadata); a file of another format is set aside


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
    def __init__(self, root: Path, model_dir: Path, budget_bytes: int, min_tokens: int,
                 disk: DataDisk | None = None, layout: tuple = ()):
        self.dir = Path(root) / model_key(model_dir)
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens
        self.disk = disk or DataDisk(Path(root))
        self.layout = layout  # the model's cache_layout; () when unknown (nothing checked)
        self._pending: dict[str, tuple[list, list]] = {}  # digest -> (tokens, cache), to write when idle

    def wants(self, tokens: list) -> bool:
        return (len(tokens) >= self.min_tokens and tokens_digest(tokens) not in self._pending
                and not (self.dir / f"{tokens_digest(tokens)}{SUFFIX}").exists()
                and (not self.disk.full or self.disk.has_room()))  # full: looked at again (statvfs)

    def offer(self, tokens: list, cache: list) -> None:
        """A snapshot worth keeping: written at the next idle moment (write_pending)."""
        if self.wants(tokens):
            self._pending[tokens_digest(tokens)] = (list(tokens), cache)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def write_pending(self) -> None:
        if not self.disk.has_room():  # said once, by the disk: these stay in memory only
            self._pending.clear()
            return
        while self._pending:
            digest, (tokens, cache) = self._pending.popitem()
            path = self.dir / f"{digest}{SUFFIX}"
            partial = path.with_name(f".{path.name}.partial{SUFFIX}")
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                save_prompt_cache(str(partial), cache, {"tokens": json.dumps(tokens), "format": FORMAT})
                os.replace(partial, path)
            except Exception as e:  # a full disk must not take the engine down
                no_room = self.disk.write_failed(e)  # before the partial file goes: it holds the space
                partial.unlink(missing_ok=True)
                self.disk.cleaned_up()
                if no_room:  # the disk said so (once); the rest waits for room too
                    self._pending.clear()
                    return
                log.warning("prompt cache: could not write %s (%s)", path, e)
                continue
            self.disk.wrote()
            log.info("prompt cache: kept a %d-token prefix on disk (%s)", len(tokens), path.name)
        self._evict()

    def _files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted((p for p in self.dir.glob(f"*{SUFFIX}") if not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)

    def _evict(self) -> None:
        total = 0
        for path in self._files():  # newest first: the oldest go past the budget
            total += path.stat().st_size
            if total > self.budget_bytes:
                path.unlink(missing_ok=True)
                log.info("prompt cache: dropped %s from disk (over prompt_cache_disk_mb)", path.name)

    def _read(self, path: Path) -> tuple[list, list]:
        """(tokens, cache) of a snapshot; ValueError (or what reading raised) when it is not a
        snapshot of this format and this model."""
        cache, metadata = load_prompt_cache(str(path), return_metadata=True)
        if metadata.get("format") != FORMAT:
            raise ValueError(f"written by another version (format {metadata.get('format')!r}, not {FORMAT!r})")
        tokens = json.loads(metadata["tokens"])
        if not isinstance(tokens, list) or tokens_digest(tokens) != path.name[: -len(SUFFIX)]:
            raise ValueError("its tokens don't match its name")
        if self.layout and cache_layout(cache) != self.layout:
            raise ValueError("its caches are not this model's (another model's or conversion's snapshot)")
        mx.eval([c.state for c in cache])  # read now, not on the first request's path
        return tokens, cache

    def load_all(self, max_bytes: int):
        """(tokens, cache) of the snapshots on disk, newest first, up to `max_bytes` of them."""
        used = 0
        for path in self._files():
            try:
                tokens, cache = self._read(path)
            except Exception as e:
                set_aside(path, str(e) or type(e).__name__, "prompt-cache snapshot")
                continue
            size = sum(c.nbytes for c in cache)
            if used + size > max_bytes:
                break
            used += size
            os.utime(path)  # used: it stays longest
            yield tokens, cache
