"""The engine's prompt cache: mlx-lm's LRUPromptCache (a trie of KV caches under a byte budget),
fed with copies of the cache at segment ends of each prompt and at the end of each reply, and
backed by snapshots of long shared prefixes on disk (disk_cache.py).

The copies: where a prompt's system and developer messages end (the part an agent's requests
share), one token before a prompt's end (its last token is processed as the first generation
step), and at the end of each reply. GPT-OSS's sliding-window layers use RotatingKVCache, which
cannot be trimmed back once more than its window was written, and the next turn re-renders the
previous reply without its analysis: so the reply's own cache rarely helps, while the copy taken
at the end of the prompt is always a prefix of the next turn's prompt. The cache holds at most
what running requests leave of the KV budget (the engine says how much: `room`).
"""

import logging
from pathlib import Path

from mlx_lm.models.cache import LRUPromptCache

from server.engine.disk_cache import DiskCache
from server.plumbing.disk import data_disk, data_root

log = logging.getLogger("swallow.engine")

CACHE_KEY = "model"  # one model per engine: the trie's model key is constant


class PromptCache:
    def __init__(self, settings):
        self.settings = settings
        budget = settings.prompt_cache_mb * 2**20
        self.lru = LRUPromptCache(max_size=256, max_bytes=budget) if budget > 0 else None
        self.disk: DiskCache | None = None

    def open_disk(self, model_path: Path, layout: tuple = ()) -> None:
        """Snapshots on disk for this model, loaded back into memory (engine thread, at start).
        `layout`: the model's cache_layout, which a snapshot must have."""
        settings = self.settings
        if self.lru is None or settings.prompt_cache_disk_mb <= 0:
            return
        root = data_root(settings.data_dir) / "prompt-cache"
        try:
            self.disk = DiskCache(root, model_path, settings.prompt_cache_disk_mb * 2**20,
                                  settings.prompt_cache_disk_min_tokens, data_disk(settings.data_dir), layout)
        except OSError as e:
            log.warning("prompt cache: no snapshots on disk (%s)", e)
            return
        loaded = 0
        for tokens, cache in self.disk.load_all(self.lru.max_bytes):
            self.lru.insert_cache(CACHE_KEY, tokens, cache)
            loaded += 1
        log.info("prompt cache: %d snapshot(s) loaded from %s", loaded, self.disk.dir)

    def write_to_disk(self) -> None:
        if self.disk is not None and self.disk.has_pending:
            self.disk.write_pending()

    def keep(self, tokens: list, cache: list, room: int) -> None:
        if self.lru is not None and tokens:
            self.lru.insert_cache(CACHE_KEY, list(tokens), cache)
            self.trim_to(room)  # what running requests leave of the budget, never more

    def keep_segments(self, batch, prompt_responses: list, active: dict, room: int) -> None:
        """Copies of the cache where a prompt segment ended (not its last token: that one is
        processed as the first generation step)."""
        if self.lru is None:
            return
        uids = [r.uid for r in prompt_responses if r.end_of_segment and not r.end_of_prompt]
        for uid, (cache, tokens) in batch.extract_cache(uids).items():
            self.keep(tokens, cache, room)
            generation = active.get(uid)
            # the system + developer part, shared by an agent's requests: worth keeping on disk
            if self.disk is not None and generation is not None and len(tokens) in generation.boundaries:
                self.disk.offer(list(tokens), cache)

    def nearest(self, prompt: list) -> tuple[list | None, int]:
        """The nearest cached prefix: (its cache, how many prompt tokens it covers). At least
        one prompt token is left to process, since generation starts from it."""
        if self.lru is None:
            return None, 0
        cache, rest = self.lru.fetch_nearest_cache(CACHE_KEY, prompt[:-1])
        return (cache, len(prompt) - 1 - len(rest)) if cache is not None else (None, 0)

    def trim_to(self, n_bytes: int) -> None:
        if self.lru is not None:
            self.lru.trim_to(n_bytes=n_bytes)

    def stats(self) -> dict:
        lru = self.lru
        return {"entries": len(lru) if lru is not None else 0, "bytes": lru.nbytes if lru is not None else 0,
                "budget_bytes": lru.max_bytes if lru is not None else 0}
