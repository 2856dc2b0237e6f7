"""POST /api/pull and DELETE /api/delete: Ollama's model management, through the same code as
`swallow-server pull` and `rm` (models/download.py, models/hub_cache.py).

A pull downloads a Hugging Face repo (or a known name: `swallow`, `swallow:8bit`, `gpt-oss:20b`)
into the Hugging Face cache, each file checked against the size and hash the Hub publishes; its
steps stream as Ollama's NDJSON lines (`status`, `digest`, `total`, `completed`), ending with
`{"status": "success"}`. The download runs on a thread; a client that hangs up stops it at its
next chunk (the files already downloaded stay). A delete removes a GPT-OSS model from the cache,
unless it is loaded.
"""

import asyncio
import re
import threading

from models import catalog, download, hub_cache
from models.errors import ModelError
from server.plumbing.errors import APIError, invalid_request
from server.registry.registry import Registry

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
KNOWN = ", ".join(alias for variant in catalog.KNOWN for alias in variant.aliases)


def repo_id(name: str) -> str:
    """The Hugging Face repo a pull names; 400 for a name that is neither a repo id nor known."""
    name = name.strip().removesuffix(":latest")
    repo = catalog.resolve(name)
    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise invalid_request(f"'{name}' is not a model this server can pull: give a Hugging Face repo id "
                              f"(owner/name) or one of {KNOWN}", param="model")
    return repo


async def progress(repo: str):
    """The pull's events (PullEvent) as they come; raises its ModelError. Leaving the iteration
    stops the download at its next chunk."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def on_event(event) -> None:  # on the download's thread
        loop.call_soon_threadsafe(events.put_nowait, event)

    done = asyncio.ensure_future(asyncio.to_thread(download.pull, repo, on_event=on_event, cancelled=stop.is_set))
    done.add_done_callback(lambda task: task.cancelled() or task.exception())  # seen, even when nobody waits
    waiting = None
    try:
        while True:
            waiting = asyncio.ensure_future(events.get())
            await asyncio.wait({waiting, done}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                yield waiting.result()
                continue
            while not events.empty():  # what it said before it ended
                yield events.get_nowait()
            done.result()
            return
    finally:
        stop.set()
        if waiting is not None:
            waiting.cancel()


def as_api_error(error: ModelError) -> APIError:
    """A pull's failure for a client that asked for one answer: the Hub unreachable or a download
    arriving corrupt (502), the disk too small (507), anything else the repo's (400: not found,
    gated, no such revision)."""
    if isinstance(error, download.DiskFullError):
        return APIError(507, str(error), type="server_error", code="disk_full")
    if isinstance(error, (download.HubUnreachable, download.CorruptFileError)):
        return APIError(502, str(error), type="server_error", code="download_failed")
    return invalid_request(str(error), param="model")


async def delete(registry: Registry, name: str) -> None:
    """Delete a GPT-OSS model from the Hugging Face cache; 404 for one it doesn't hold, 400 for a
    loaded one."""
    cached = await asyncio.to_thread(hub_cache.find, name.removesuffix(":latest"))
    if cached is None or not cached.servable:
        held = "" if cached is None else " (the Hugging Face cache has it, but it isn't a GPT-OSS model this server serves)"
        raise APIError(404, f"model '{name}' not found{held}", type="not_found_error", param="model",
                       code="model_not_found")
    loaded = [s.name for s in registry.slots.values()
              if catalog.resolve(s.listed.spec) == cached.repo_id and (s.state is not None or s.loading is not None)]
    if loaded:
        raise invalid_request(f"model '{name}' is loaded; unload it first (POST /api/generate with keep_alive 0) "
                              "and delete it then", param="model", code="model_loaded")
    try:
        await asyncio.to_thread(hub_cache.remove, cached.repo_id)
    except ModelError as e:
        raise APIError(404, str(e), type="not_found_error", param="model", code="model_not_found") from e
    registry.forget(cached.repo_id)
