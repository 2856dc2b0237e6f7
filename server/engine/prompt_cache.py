"""The engine's prompt cache: KV caches by the token ids they hold, under a byte budget (a
`PrefixStore`), fed with copies of the cache at segment ends of each prompt and at the end of each
reply, and backed by snapshots of long shared prefixes on disk (disk_cache.py).

The copies: where a prompt's system and developer messages end (the part an agent's requests
share), one token before a prompt's end (its last token is processed as the first generation
step), and at the end of each reply. GPT-OSS's sliding-window layers use RotatingKVCache, which
cannot be trimmed back once more than its window was written, and the next turn re-renders the
previous reply without its analysis: so the reply's own cache rarely helps, while the copy taken
at the end of the prompt is always a prefix of the next turn's prompt. The cache holds at most
what running requests leave of the KV budget (the engine says how much: `room`).

Why not mlx-lm's LRUPromptCache (what mlx_lm.server uses): it walks a trie in Python, a dict per
token, to find and to add an entry, and deep-copies the entry it hands out. An agent's turn
looks up a ~6k-token prompt and adds two ~6k-token entries: ~10 ms on the engine thread on a
slow CPU (every running stream waits), plus a copy of the whole KV cache, which nothing needs:
mlx-lm's BatchGenerator merges a request's cache into its batch by copying it, and never writes
to it. Here an entry's tokens are one int32 array: a prefix test is one memcmp, a common prefix
one vectorized comparison, and a hit is handed out as new cache objects over the same arrays.
"""

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

from server.engine.disk_cache import DiskCache
from server.plumbing.disk import data_disk, data_root

log = logging.getLogger("swallow.engine")


@dataclass(eq=False)
class Entry:
    tokens: np.ndarray  # int32: the token ids the cache holds
    cache: list  # one cache object per layer
    nbytes: int
    trimmable: bool  # every layer can be cut back to a shorter prefix


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PrefixStore:
    """KV caches by their token ids, the least recently used dropped first beyond `max_bytes`
    or `max_entries` (mlx-lm's LRUPromptCache's rules: an entry that can be cut back makes its
    own prefixes redundant, and it may serve a prompt that leaves it part way)."""

    def __init__(self, max_bytes: int, max_entries: int = 256):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()  # key: the tokens' bytes
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def insert(self, tokens, cache: list) -> None:
        ids = np.asarray(tokens, dtype=np.int32)
        key = ids.tobytes()
        self._drop(key)
        entry = Entry(ids, cache, sum(c.nbytes for c in cache), can_trim_prompt_cache(cache))
        if entry.trimmable:
            for other in [k for k in self._entries if len(k) < len(key) and key.startswith(k)]:
                self._drop(other)
        self._entries[key] = entry
        self.nbytes += entry.nbytes
        while self._entries and (len(self._entries) > self.max_entries or self.nbytes > self.max_bytes):
            self._drop(next(iter(self._entries)))

    def nearest(self, tokens) -> tuple[list | None, int]:
        """(a cache holding the longest prefix of `tokens` there is, its length), or (None, 0).
        The cache is the caller's: new objects over the stored arrays (which no one writes to)."""
        ids = np.asarray(tokens, dtype=np.int32)
        key = ids.tobytes()
        best, best_length = None, 0
        for stored, entry in self._entries.items():
            if key.startswith(stored):  # all of it is a prefix: usable as it is
                length = len(entry.tokens)
            elif entry.trimmable:  # usable up to where it leaves the prompt
                length = _common_prefix(entry.tokens, ids)
            else:
                continue
            if length > best_length or (length == best_length and best is not None
                                         and len(entry.tokens) < len(best.tokens)):
                best, best_length = entry, length
        if best is None or best_length == 0:
            return None, 0
        self._entries.move_to_end(best.tokens.tobytes())
        cache = [copy.copy(layer) for layer in best.cache]
        if best_length < len(best.tokens):
            trim_prompt_cache(cache, len(best.tokens) - best_length)
        return cache, best_length

    def trim_to(self, n_bytes: int) -> None:
        while self._entries and self.nbytes > n_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes


class PromptCache:
    def __init__(self, settings):
        self.settings = settings
        budget = settings.prompt_cache_mb * 2**20
        self.store = PrefixStore(budget) if budget > 0 else None
        self.disk: DiskCache | None = None

    def open_disk(self, model_path: Path, layout: tuple = ()) -> None:
        """Snapshots on disk for this model, loaded back into memory (engine thread, at start).
        `layout`: the model's cache_layout, which a snapshot must have."""
        settings = self.settings
        if self.store is None or settings.prompt_cache_disk_mb <= 0:
            return
        root = data_root(settings.data_dir) / "prompt-cache"
        try:
            self.disk = DiskCache(root, model_path, settings.prompt_cache_disk_mb * 2**20,
                                  settings.prompt_cache_disk_min_tokens, data_disk(settings.data_dir), layout)
        except OSError as e:
            log.warning("prompt cache: no snapshots on disk (%s)", e)
            return
        loaded = 0
        for tokens, cache in self.disk.load_all(self.store.max_bytes):
            self.store.insert(tokens, cache)
            loaded += 1
        log.info("prompt cache: %d snapshot(s) loaded from %s", loaded, self.disk.dir)

    def write_to_disk(self) -> None:
        if self.disk is not None and self.disk.has_pending:
            self.disk.write_pending()

    def keep(self, tokens: list, cache: list, room: int) -> None:
        if self.store is not None and tokens:
            self.store.insert(tokens, cache)
            self.trim_to(room)  # what running requests leave of the budget, never more

    def keep_segments(self, batch, prompt_responses: list, active: dict, room: int) -> None:
        """Copies of the cache where a prompt segment ended (not its last token: that one is
        processed as the first generation step)."""
        if self.store is None:
            return
        uids = [r.uid for r in prompt_responses if r.end_of_segment and not r.end_of_prompt
                and not getattr(active.get(r.uid), "rejoining", False)]  # forced tokens: mid-reply
        if not uids:
            return
        for uid, (cache, tokens) in batch.extract_cache(uids).items():
            self.keep(tokens, cache, room)
            generation = active.get(uid)
            # the system + developer part, shared by an agent's requests: worth keeping on disk
            if self.disk is not None and generation is not None and len(tokens) in generation.boundaries:
                self.disk.offer(list(tokens), cache)

    def nearest(self, prompt: list) -> tuple[list | None, int]:
        """The nearest cached prefix: (its cache, how many prompt tokens it covers). At least
        one prompt token is left to process, since generation starts from it."""
        if self.store is None:
            return None, 0
        return self.store.nearest(prompt[:-1])

    def trim_to(self, n_bytes: int) -> None:
        if self.store is not None:
            self.store.trim_to(n_bytes)

    def stats(self) -> dict:
        store = self.store
        return {"entries": len(store) if store is not None else 0, "bytes": store.nbytes if store is not None else 0,
                "budget_bytes": store.max_bytes if store is not None else 0}
