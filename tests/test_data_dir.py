"""The data directory over a long life: a disk that fills up (a small tmpfs mounted as data_dir,
skipped where mounting isn't allowed), and damaged files (a response store that is not a
database or fails its integrity check, snapshots truncated, of another format or of another
model): the server starts, sets them aside, serves what needs no disk, and recovers."""

import errno
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import mlx.core as mx
import openai
import pytest
from mlx_lm.models.cache import KVCache, save_prompt_cache

from server.api.responses.store import ResponseStore
from server.engine.disk_cache import DiskCache, model_key, tokens_digest
from server.plumbing.disk import DataDisk
from server.plumbing.errors import APIError
from tests.scripts import JAPANESE_ANSWER, REMEMBER_FIRST, REMEMBER_SECOND

SYSTEM = "Answer in one short sentence. " * 12  # with it a prefix is long enough for a snapshot (100 tokens)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a disk that a test can fill."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"a tmpfs can't be mounted here, so a full disk is NOT tested: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write zeros until the disk is full; the file, to delete for room again."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: a write cut short leaves nothing for close to flush
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def fill_but(disk: Path, left: int) -> Path:
    """Leave about `left` bytes free."""
    filler = fill(disk)
    with open(filler, "r+b") as f:
        f.truncate(filler.stat().st_size - left)
    return filler


def snapshots(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "prompt-cache").glob("*/*.safetensors") if not p.name.startswith("."))


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def wait_for(condition, seconds: float = 20, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


def chat(server, question: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    reply = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": messages}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


# ---- a full disk --------------------------------------------------------------------------------

def test_a_full_disk_refuses_only_what_must_be_stored_and_recovers(start_server, scripted_model, small_disk):
    server = start_server(["--model", str(scripted_model), "--trust-remote-code", "--served-model-name", "scripted"],
                          env={"SWALLOW_DATA_DIR": str(small_disk), "SWALLOW_PROMPT_CACHE_DISK_MIN_TOKENS": "100"})
    client = server.client()
    kept = client.responses.create(model="scripted", input="Remember the word pineapple.")
    chat(server, "What is 2+2?", f"A. {SYSTEM}")
    wait_for(lambda: len(snapshots(small_disk)) == 1, what="the first snapshot")
    assert server.health()["disk"]["status"] == "ok"

    filler = fill(small_disk)
    disk = server.health()["disk"]
    assert disk["status"] == "full" and disk["path"] == str(small_disk) and disk["free_bytes"] < 2**20
    # what needs no disk is served
    assert chat(server, "What is 2+2?") == JAPANESE_ANSWER
    assert client.responses.create(model="scripted", input="What is 2+2?", store=False).output_text == JAPANESE_ANSWER
    continued = client.responses.create(model="scripted", input="Which word?", previous_response_id=kept.id, store=False)
    assert continued.output_text == REMEMBER_SECOND
    assert client.responses.retrieve(kept.id).output_text == REMEMBER_FIRST
    # what must be stored gets 507, in OpenAI's error shape, before anything is generated
    with pytest.raises(openai.APIStatusError) as refused:
        client.responses.create(model="scripted", input="What is 2+2?")
    assert refused.value.status_code == 507 and refused.value.code == "insufficient_storage"
    assert "data_dir" in refused.value.message and "store: false" in refused.value.message
    streamed = httpx.post(f"{server.url}/v1/responses", json={"input": "What is 2+2?", "stream": True}, timeout=60)
    assert streamed.status_code == 507 and streamed.json()["error"]["code"] == "insufficient_storage"
    # a long new prefix is served, and not written to disk
    assert chat(server, "What is 2+2?", f"B. {SYSTEM}") == JAPANESE_ANSWER
    chat(server, "What is 2+2?", f"C. {SYSTEM}")
    assert len(snapshots(small_disk)) == 1
    assert server.log().count("is full (") == 1  # one warning, not one per request

    filler.unlink()  # room again: everything works as before
    assert server.health()["disk"]["status"] == "ok"
    stored = client.responses.create(model="scripted", input="What is 2+2?")
    assert client.responses.retrieve(stored.id).output_text == JAPANESE_ANSWER
    assert client.responses.retrieve(kept.id).output_text == REMEMBER_FIRST
    chat(server, "What is 2+2?", f"D. {SYSTEM}")
    wait_for(lambda: len(snapshots(small_disk)) == 2, what="a snapshot once there is room")
    assert "has room again" in server.log()
    assert integrity(small_disk / "responses.sqlite3") == "ok"


def test_a_disk_that_fills_during_a_write_damages_nothing(small_disk, caplog):
    """Writes that run out of room part-way: a snapshot is not written (no exception into the
    engine, one warning, no partial file left), and the store's transaction is rolled back (a
    507, the rows stored before intact)."""
    store = ResponseStore(small_disk / "responses.sqlite3", disk=DataDisk(small_disk))
    store.save({"id": "resp_before", "status": "completed", "output": []}, [{"type": "message", "id": "m1"}])
    filler = fill_but(small_disk, 3 * 2**20 // 2)  # 1.5 MiB left: more than a disk's margin of 1 MiB

    disk = DataDisk(small_disk)
    snapshots_dir = small_disk / "prompt-cache"
    cache = DiskCache(snapshots_dir, small_disk, 2**30, 1, disk)
    layer = KVCache()
    layer.update_and_fetch(mx.zeros((1, 8, 4096, 64)), mx.zeros((1, 8, 4096, 64)))  # 16 MiB: it can't fit
    cache.offer(list(range(4096)), [layer])
    assert disk.has_room() and cache.has_pending
    cache.write_pending()
    assert disk.full and not cache.has_pending
    assert not [p for p in snapshots_dir.rglob("*") if p.is_file()]  # no partial file left behind
    cache.offer(list(range(5000)), [layer])
    assert not cache.has_pending  # nothing more is queued while full

    huge = {"id": "resp_huge", "status": "completed", "output": [], "text": "x" * 3 * 2**20}
    with pytest.raises(APIError) as refused:
        store.save(huge, [])
    assert refused.value.status == 507 and refused.value.code == "insufficient_storage"
    assert store.disk.full and store.response("resp_huge") is None
    assert store.response("resp_before")["id"] == "resp_before"
    assert integrity(small_disk / "responses.sqlite3") == "ok"

    filler.unlink()  # the free space grows by far more than the margin: room again at once
    store.save({"id": "resp_after", "status": "completed", "output": []}, [])
    assert store.response("resp_after") is not None and not store.disk.full
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "is full (" in r.getMessage()]
    assert len(warnings) == 2  # once for each of the two, however many writes were refused
    store.close()


# ---- damaged files --------------------------------------------------------------------------------

def write_snapshot(directory: Path, tokens: list, layer_shape: tuple, format: str | None = "1") -> Path:
    layer = KVCache()
    layer.update_and_fetch(mx.ones(layer_shape), mx.ones(layer_shape))
    metadata = {"tokens": json.dumps(tokens), **({"format": format} if format else {})}
    path = directory / f"{tokens_digest(tokens)}.safetensors"
    save_prompt_cache(str(path), [layer], metadata)
    return path


def test_damaged_files_are_set_aside_and_the_server_starts(start_server, scripted_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "responses.sqlite3").write_bytes(b"this is no SQLite database " * 100)
    snapshot_dir = data / "prompt-cache" / model_key(scripted_model)
    snapshot_dir.mkdir(parents=True)
    good = write_snapshot(snapshot_dir, list(range(100, 140)), (1, 1, 40, 1))  # the scripted model's shape
    truncated = write_snapshot(snapshot_dir, list(range(200, 240)), (1, 1, 40, 1))
    truncated.write_bytes(truncated.read_bytes()[:100])
    other_version = write_snapshot(snapshot_dir, list(range(300, 340)), (1, 1, 40, 1), format=None)
    other_model = write_snapshot(snapshot_dir, list(range(400, 440)), (1, 8, 40, 64))  # another model's caches

    server = start_server(["--model", str(scripted_model), "--trust-remote-code", "--served-model-name", "scripted"],
                          env={"SWALLOW_DATA_DIR": str(data)})
    log = server.log()
    assert "prompt cache: 1 snapshot(s) loaded" in log and good.exists()
    for damaged, why in ((data / "responses.sqlite3", "file is not a database"), (truncated, ""),
                         (other_version, "another version"), (other_model, "not this model's")):
        (aside,) = damaged.parent.glob(f"{damaged.name}.corrupt-*")
        line = next(line for line in log.splitlines() if aside.name in line)
        assert "WARNING" in line and f"{damaged} is damaged" in line and why in line, line
        assert not damaged.exists() or damaged.name == "responses.sqlite3"
    # a fresh store took the damaged one's place
    client = server.client()
    stored = client.responses.create(model="scripted", input="Remember the word pineapple.")
    assert client.responses.retrieve(stored.id).output_text == REMEMBER_FIRST
    assert chat(server, "What is 2+2?") == JAPANESE_ANSWER
    server.stop()


def test_a_store_failing_its_integrity_check_is_set_aside_with_its_journal(tmp_path, caplog):
    path = tmp_path / "responses.sqlite3"
    store = ResponseStore(path)
    for i in range(200):
        store.save({"id": f"resp_{i}", "status": "completed", "output": [], "pad": "x" * 2000}, [])
    store.close()
    data = bytearray(path.read_bytes())
    data[3 * 4096:6 * 4096] = b"\xff" * (3 * 4096)  # b-tree pages overwritten: the header still says SQLite
    path.write_bytes(bytes(data))

    reopened = ResponseStore(path)
    (aside,) = tmp_path.glob("responses.sqlite3.corrupt-*")
    assert reopened.response("resp_1") is None  # an empty store in its place
    reopened.save({"id": "resp_new", "status": "completed", "output": []}, [])
    assert reopened.response("resp_new") is not None
    assert any("is damaged" in r.getMessage() and aside.name in r.getMessage() for r in caplog.records)
    reopened.close()
