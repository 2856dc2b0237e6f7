"""Downloading a model from the Hugging Face Hub into its cache: progress, disk check, verification.

`pull(repo_id, on_event=...)` is the one way a model arrives: `swallow-server pull`, the server's
first start with a model it doesn't have, and Ollama's `POST /api/pull` (through `pull_events`,
the same steps as a generator) all use it. Nothing here knows about HTTP servers or terminals:
progress is a stream of `PullEvent`s (status, digest, total, completed: Ollama's pull fields),
and models/progress.py draws them.

The steps:
1. the manifest: the Hub's model info, with each file's size and the hash it publishes (LFS
   files: their sha256; the others: git's blob id), at one commit;
2. a disk check: the files still to download against the free space of the cache's disk;
3. each file through huggingface_hub's `hf_hub_download` (its cache, its locks, its retries),
   smallest first, at that commit;
4. each downloaded file checked against the published size and hash; one that fails is removed
   and downloaded once more, and a second failure is an error naming it (the file is removed:
   a corrupt file is never left to be loaded);
5. `refs/<revision>` pointed at the commit, so the cache answers for "main" offline too.

Resuming: files already in the cache are kept (a second pull downloads only what is missing), and
a connection dropped mid-file is resumed by huggingface_hub with an HTTP Range request. A file
cut short by stopping the process starts over on the next pull: huggingface_hub (since ~1.20)
writes each download to a file of its own and removes it when the download fails.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError

log = logging.getLogger("swallow.models")

# What a GPT-OSS MLX repo needs at run time (weights, configs, tokenizer, custom code if any,
# docs), at the repo's top level: leaves out e.g. the original PyTorch checkpoint and Metal
# weights some repos also carry in subfolders (openai/gpt-oss-20b: original/, metal/).
PATTERNS = ["*.json", "*.safetensors", "*.py", "*.txt", "*.jinja", "*.tiktoken", "*.md"]
# Seconds to wait for the Hub to answer a metadata request.
HUB_TIMEOUT_S = 10
HASH_CHUNK = 16 * 2**20

MANIFEST = "pulling manifest"
SUCCESS = "success"


@dataclass(frozen=True)
class PullEvent:
    """One step of a pull. `status` says what happens; for a file being downloaded, `file`,
    `digest` (the hash the Hub publishes: "sha256:<hex>" for LFS files, "git-sha1:<blob id>" for
    the others), `total` and `completed` (bytes) say how far it is."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
    file: str | None = None

    def ollama(self) -> dict:
        """The event as a line of Ollama's `POST /api/pull` stream."""
        line = {"status": self.status, "digest": self.digest, "total": self.total, "completed": self.completed}
        return {k: v for k, v in line.items() if v is not None}


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git's id of the file: sha1 of b"blob <size>\0" + its bytes

    @property
    def digest(self) -> str | None:
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"git-sha1:{self.blob_id}" if self.blob_id else None


@dataclass(frozen=True)
class Manifest:
    repo_id: str
    revision: str  # as asked for ("main")
    commit: str  # what it was on the Hub when asked
    files: list[RemoteFile] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)


class HubUnreachable(ModelError):
    """The Hub did not answer (no network, HF_HUB_OFFLINE, a Hub outage): a copy already in the
    cache may still do."""


class DiskFullError(ModelError):
    def __init__(self, message: str, needed: int, free: int):
        super().__init__(message)
        self.needed, self.free = needed, free


class CorruptFileError(ModelError):
    pass


class PullCancelled(Exception):
    """Raised inside a download when the consumer of `pull_events` has gone."""


def format_size(n: float) -> str:
    """Bytes as people read them: 17.2 GB, 103.8 MB, 98 B (decimal units, as the Hub shows sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _hub_error(repo_id: str, revision: str, error: Exception) -> ModelError:
    from huggingface_hub import errors

    start = f"Could not download '{repo_id}' from Hugging Face"
    if isinstance(error, errors.GatedRepoError):
        return ModelError(f"{start}: it is gated: accept its terms on huggingface.co and log in with `hf auth login`.")
    if isinstance(error, errors.RepositoryNotFoundError):
        return ModelError(f"{start}: no such repository (or it is private and you are not logged in).")
    if isinstance(error, errors.RevisionNotFoundError):
        return ModelError(f"{start}: it has no revision '{revision}'.")
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, errors.HfHubHTTPError) and status is not None and status < 500:
        return ModelError(f"{start}: {error}")
    # connection refused, timeouts, HF_HUB_OFFLINE, 5xx: whatever HTTP library raised it
    return HubUnreachable(f"{start}: the Hub could not be reached ({type(error).__name__}: {error}).")


def fetch_manifest(repo_id: str, revision: str = "main") -> Manifest:
    """The files of `repo_id` that the server needs, with their published sizes and hashes."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT_S)
    except Exception as e:
        raise _hub_error(repo_id, revision, e) from e
    top_level = [s for s in info.siblings or [] if "/" not in s.rfilename]
    wanted = set(filter_repo_objects([s.rfilename for s in top_level], allow_patterns=PATTERNS))
    files = [RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
             for s in top_level if s.rfilename in wanted]
    if not any(f.name == "config.json" for f in files):
        raise ModelError(f"The Hugging Face repository '{repo_id}' has no config.json, so it is not a model.")
    files.sort(key=lambda f: (f.size or 0, f.name))  # the small files first: configs are there soonest
    return Manifest(repo_id, revision, info.sha, files)


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_file(repo_id: str, name: str, revision: str) -> Path | None:
    """The file's path in the cache (a snapshot's symlink) when it is there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, name, revision=revision)
    return Path(found) if isinstance(found, str) else None


def check_disk_space(manifest: Manifest, missing: list[RemoteFile], where: Path | None = None) -> None:
    """DiskFullError when the files still to download don't fit on the cache's disk."""
    needed = sum(f.size or 0 for f in missing)
    where = where or hub_cache()
    existing = next(p for p in (where, *where.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise DiskFullError(
            f"Not enough disk space for '{manifest.repo_id}': it needs {format_size(needed)} more "
            f"({len(missing)} of its {len(manifest.files)} files, {format_size(manifest.total_bytes)} in all), but "
            f"{where} has only {format_size(free)} free. Free some space (`swallow-server rm MODEL` deletes a "
            "downloaded model), or point HF_HOME (or HF_HUB_CACHE) at a disk with more room.",
            needed, free)


def _file_hash(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    digest = hashlib.new(algorithm, prefix)
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def problem_with(path: Path, remote: RemoteFile, *, hash: bool = True) -> str | None:
    """What is wrong with a downloaded file, compared with what the Hub publishes; None: nothing.
    `hash`: also compare its sha256 (LFS) or git blob id, not only its size."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"it can't be read ({e})"
    if remote.size is not None and size != remote.size:
        return f"it has {size:,} bytes where the Hub publishes {remote.size:,}"
    if not hash:
        return None
    if remote.sha256:
        actual = _file_hash(path, "sha256")
        if actual != remote.sha256:
            return f"its sha256 is {actual}, the Hub publishes {remote.sha256}"
    elif remote.blob_id:
        actual = _file_hash(path, "sha1", b"blob %d\0" % size)
        if actual != remote.blob_id:
            return f"its git blob id is {actual}, the Hub publishes {remote.blob_id}"
    return None


def _remove(path: Path) -> None:
    """Remove a cached file: the blob and the snapshot's link to it."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


def _progress_class(report: Callable[[int], None], cancelled: Callable[[], bool]) -> type:
    """A class huggingface_hub can use as its `tqdm_class` for one file: it counts the bytes
    written and reports them, instead of drawing anything."""

    class FileProgress:
        def __init__(self, *args, total=None, initial=0, **kwargs):
            self.total, self.n = total, initial or 0
            report(self.n)

        def update(self, n=1):
            if cancelled():
                raise PullCancelled()
            self.n += n or 0  # negative when a server ignored a Range request: it starts over
            report(self.n)

        def update_transfer(self, n=1):  # Xet: bytes on the wire; bytes written are what counts here
            pass

        def set_postfix_str(self, *args, **kwargs):
            pass

        set_transfer_postfix_str = set_postfix_str
        refresh = close = set_postfix_str

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    return FileProgress


def _download(manifest: Manifest, remote: RemoteFile, emit, cancelled) -> Path:
    from huggingface_hub import hf_hub_download

    def report(done: int) -> None:
        emit(PullEvent(f"pulling {remote.name}", remote.digest, remote.size, done, remote.name))

    try:
        path = hf_hub_download(manifest.repo_id, remote.name, revision=manifest.commit, etag_timeout=HUB_TIMEOUT_S,
                               tqdm_class=_progress_class(report, cancelled))
    except OSError as e:
        if e.errno == errno.ENOSPC:
            free = shutil.disk_usage(hub_cache()).free
            raise DiskFullError(f"The disk filled up while downloading {remote.name} of '{manifest.repo_id}' "
                                f"({format_size(free)} free now). Free some space and pull again.", remote.size or 0, free) from e
        raise
    except (ModelError, PullCancelled):
        raise
    except Exception as e:
        raise _hub_error(manifest.repo_id, manifest.revision, e) from e
    report(remote.size if remote.size is not None else Path(path).stat().st_size)
    return Path(path)


def _point_ref(manifest: Manifest, snapshot: Path) -> None:
    """refs/<revision> holds the commit the files are at (the cache's documented layout): what
    lets try_to_load_from_cache and offline starts find "main". Written last, once the snapshot
    is complete."""
    if manifest.revision == manifest.commit:
        return
    ref = snapshot.parent.parent / "refs" / manifest.revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.tmp")
    tmp.write_text(manifest.commit)
    tmp.replace(ref)


def pull(repo_id: str, *, revision: str = "main", on_event: Callable[[PullEvent], None] | None = None,
         verify_all: bool = True, cancelled: Callable[[], bool] = lambda: False) -> Path:
    """Download `repo_id` (what the server needs of it) into the Hugging Face cache and return its
    snapshot directory. `on_event` gets every step, on this thread. `verify_all`: hash the files
    that were already in the cache too (else they are checked by size, and only the files
    downloaded now are hashed). Raises ModelError (HubUnreachable, DiskFullError,
    CorruptFileError) with a message for the user."""
    emit = on_event or (lambda event: None)
    emit(PullEvent(MANIFEST))
    manifest = fetch_manifest(repo_id, revision)
    cached = {f.name: cached_file(repo_id, f.name, manifest.commit) for f in manifest.files}
    check_disk_space(manifest, [f for f in manifest.files if cached[f.name] is None])
    snapshot = None
    for remote in manifest.files:
        if cancelled():
            raise PullCancelled()
        path = cached[remote.name]
        fresh = path is None
        if fresh:
            path = _download(manifest, remote, emit, cancelled)
        else:
            emit(PullEvent(f"pulling {remote.name}", remote.digest, remote.size, remote.size, remote.name))
        if fresh or verify_all:
            emit(PullEvent(f"verifying {remote.name}", remote.digest, file=remote.name))
        hashed = fresh or verify_all
        problem = problem_with(path, remote, hash=hashed)
        if problem:
            emit(PullEvent(f"{remote.name} is corrupt ({problem}): downloading it again", remote.digest,
                           file=remote.name))
            _remove(path)
            path = _download(manifest, remote, emit, cancelled)
            problem = problem_with(path, remote)
            if problem:
                _remove(path)
                raise CorruptFileError(
                    f"{remote.name} of '{repo_id}' arrived corrupt twice ({problem}), so it was removed from "
                    "the cache. A proxy or a disk that changes what it stores can do this; pull again to retry.")
        if hashed:
            emit(PullEvent(f"verified {remote.name}", remote.digest, file=remote.name))
        snapshot = path.parent
    _point_ref(manifest, snapshot)
    emit(PullEvent(SUCCESS))
    log.debug("pulled %s at %s into %s", repo_id, manifest.commit, snapshot)
    return snapshot


_END = object()


def pull_events(repo_id: str, **options) -> Iterator[PullEvent]:
    """`pull` as a generator of its events (for a streamed HTTP answer): the download runs on a
    thread of its own; closing the generator (a client that went away) stops it at the next
    chunk. Errors are raised from the generator; the last event is SUCCESS."""
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def run() -> None:
        try:
            pull(repo_id, on_event=events.put, cancelled=stop.is_set, **options)
            events.put(_END)
        except BaseException as e:  # handed to the consumer
            events.put(e)

    threading.Thread(target=run, name=f"pull {repo_id}", daemon=True).start()
    try:
        while (item := events.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def missing_weights(snapshot: Path) -> list[str]:
    """The weight files a snapshot's safetensors index lists that are not there (or, with no
    index, ["*.safetensors"] when it has none at all)."""
    import json

    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return [index.name]
        return [n for n in names if not (snapshot / n).is_file()]
    return [] if any(snapshot.glob("*.safetensors")) else ["*.safetensors"]


def cached_snapshot(repo_id: str, revision: str = "main") -> Path | None:
    """The snapshot of `repo_id` the cache holds for `revision`, when it has its config and all
    its weights (nothing is downloaded)."""
    config = cached_file(repo_id, "config.json", revision)
    if config is None or missing_weights(config.parent):
        return None
    return config.parent
