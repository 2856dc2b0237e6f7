"""The disk under data_dir: whether it has room for what the server keeps there (stored
responses, prompt-cache snapshots), and setting damaged files aside.

One `DataDisk` per data directory, shared by its writers (the event loop's response store and
the engines' snapshot writers, on their own threads). The disk is full when its free space is
under MIN_FREE, or when a write failed for lack of room (ENOSPC, SQLite's SQLITE_FULL, or any
write failure while the free space is under MIN_FREE). Going full is said with one warning, and
getting room back with one info line; in between, writers that can wait (snapshots) skip their
writes, and requests whose response must be stored are refused (507). After a failed write the
disk has room again once its free space has grown by MIN_FREE, or RETRY_AFTER seconds later
(a quota, say, that statvfs doesn't show: the next write tries, and fails or clears it).
"""

import errno
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from models.paths import cache_dir

log = logging.getLogger("swallow.disk")

MIN_FREE = 1 * 2**20  # bytes: below this a data directory's disk counts as full
RETRY_AFTER = 60.0  # seconds after a failed write before writing is tried again anyway
NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def data_root(data_dir: str) -> Path:
    """Where the server keeps its files: `data_dir`, or the cache directory when it is empty."""
    return Path(data_dir).expanduser() if data_dir else cache_dir()


class DataDisk:
    def __init__(self, path: Path, min_free: int = MIN_FREE):
        self.path = Path(path)
        self.min_free = min_free
        self._lock = threading.Lock()
        self._full_since: float | None = None  # time.time() when it went full
        self._failed: tuple[float, int] | None = None  # (monotonic time, free bytes) of the last failed write
        self.reason = ""

    def free_bytes(self) -> int | None:
        """Free space for this process on the data directory's file system (its nearest
        existing parent when it doesn't exist yet); None when it can't be told."""
        path = self.path
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            stat = os.statvfs(path)
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize

    def has_room(self) -> bool:
        free = self.free_bytes()
        with self._lock:
            if free is not None and free < self.min_free:
                self._went_full(f"{free / 2**20:.1f} MiB free")
                return False
            if self._failed is not None:
                failed_at, free_then = self._failed
                grown = free is not None and free >= free_then + self.min_free
                if not grown and time.monotonic() - failed_at < RETRY_AFTER:
                    return False
                self._failed = None
            self._has_room_again()
            return True

    def write_failed(self, error: BaseException) -> bool:
        """A write under data_dir failed: True when it was for lack of room (the disk is then
        full), False for any other reason (the caller reports it)."""
        free = self.free_bytes()
        no_room = (getattr(error, "errno", None) in NO_ROOM_ERRNOS
                   or getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                   or "No space left" in str(error)
                   or (free is not None and free < self.min_free))
        if no_room:
            with self._lock:
                self._failed = (time.monotonic(), free or 0)
                self._went_full(f"a write failed: {error}")
        return no_room

    def cleaned_up(self) -> None:
        """The failed write's leftovers (a partial file) are gone: the free space it is measured
        against for room again is what is free now."""
        free = self.free_bytes()
        with self._lock:
            if self._failed is not None and free is not None:
                self._failed = (self._failed[0], free)

    def wrote(self) -> None:
        """A write succeeded: there is room."""
        with self._lock:
            self._failed = None
            self._has_room_again()

    @property
    def full(self) -> bool:
        return self._full_since is not None

    def describe(self) -> dict:
        """For /health: where, how much is free, and whether it is full (since when, why)."""
        self.has_room()  # the state now, not as of the last write
        body = {"path": str(self.path), "status": "full" if self.full else "ok", "free_bytes": self.free_bytes()}
        if self.full:
            body |= {"full_since": self._full_since, "reason": self.reason}
        return body

    def _went_full(self, reason: str) -> None:
        if self._full_since is None:
            self._full_since = time.time()
            self.reason = reason
            log.warning("the disk under %s is full (%s): responses that must be stored get 507 "
                        "insufficient_storage and prompt-cache snapshots are not written, until there is room "
                        "again; requests that need no disk are served", self.path, reason)

    def _has_room_again(self) -> None:
        if self._full_since is not None:
            self._full_since = None
            self.reason = ""
            log.info("the disk under %s has room again: responses are stored and snapshots written", self.path)


_disks: dict[Path, DataDisk] = {}
_disks_lock = threading.Lock()


def data_disk(data_dir: str) -> DataDisk:
    """The one DataDisk of this data directory (the response store and every engine share it)."""
    root = data_root(data_dir)
    with _disks_lock:
        if root not in _disks:
            _disks[root] = DataDisk(root)
        return _disks[root]


def set_aside(path: Path, why: str, what: str) -> Path | None:
    """Rename a damaged file to <name>.corrupt-<timestamp> beside it, with a warning naming both,
    so that the server can go on without it (and nothing is deleted). None when even the rename
    failed (said too)."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(path, aside)
    except OSError as e:
        log.error("%s %s is damaged (%s) and could not be set aside (%s)", what, path, why, e)
        return None
    log.warning("%s %s is damaged (%s): set aside as %s; the server goes on without it", what, path, why, aside.name)
    return aside
