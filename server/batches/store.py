"""The Batch API's durable side: uploaded files, batches and each batch's lines, in data_dir.

    <data_dir>/batches/batches.sqlite3   files, batches, lines (each line's request, state, result)
    <data_dir>/batches/files/<file id>   the files' bytes: uploads, and the output and error files

A line is `pending` until its answer is committed: its state and its result are written in one
transaction (`record`), so whenever the server is killed each line is either answered, once, or
still pending; pending lines run (again) when it starts. WAL journal, synchronous=NORMAL: a
killed process loses no committed transaction; a power cut may lose the last few, whose lines are
then pending again and rerun (never twice in the output, which is written from this table).

A batch's output and error files are written once, when it ends (`finalize`): one line per
custom_id, in input order. Each file is written under a temporary name, synced and renamed, then
recorded together with the batch's final status in one transaction; a crash in between leaves
the batch `finalizing`, finalized again at the next start (the orphan file is swept).

Retention: files, and batches that ended, older than `retention_days` are deleted (at open and
then hourly, by the runner). Disk use (files and database) is capped at `disk_bytes`: an upload
or a new batch that would go past it gets 507 insufficient_storage, as does one while the disk
under data_dir is full (server/plumbing/disk.py: the data directory's one DataDisk, shared with
the stored responses and the prompt-cache snapshots). A running batch is never stopped by the cap;
on a full disk its answers wait in memory, their commit tried again (runner.py).
"""

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from server.batches.intake import Line
from server.plumbing.disk import DataDisk, data_root
from server.plumbing.errors import APIError

log = logging.getLogger("swallow.batches")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    api TEXT NOT NULL,                  -- 'openai' (/v1/batches) or 'anthropic' (/v1/messages/batches)
    endpoint TEXT NOT NULL,
    input_file_id TEXT,
    completion_window TEXT NOT NULL,
    metadata TEXT,                      -- JSON
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER,
    cancelling_at INTEGER, cancelled_at INTEGER, expired_at INTEGER,
    output_file_id TEXT, error_file_id TEXT,
    total INTEGER NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body TEXT NOT NULL,                 -- the request's body, JSON
    state TEXT NOT NULL DEFAULT 'pending',  -- pending, succeeded (2xx) or failed
    status_code INTEGER,
    response TEXT,                      -- the endpoint's answer, JSON
    request_id TEXT,
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX IF NOT EXISTS lines_by_state ON lines (batch_id, state, line);
CREATE INDEX IF NOT EXISTS batches_created_at ON batches (created_at);
CREATE INDEX IF NOT EXISTS files_created_at ON files (created_at);
"""
RUNNING = ("validating", "in_progress", "cancelling", "finalizing")
ENDED = ("completed", "failed", "cancelled", "expired")
UNRUN = {"cancelled": ("batch_cancelled", "The batch was cancelled before this request ran."),
         "expired": ("batch_expired", "This request could not be executed before the completion window expired.")}


@dataclass(frozen=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int


@dataclass(frozen=True)
class BatchRecord:
    id: str
    api: str
    endpoint: str
    input_file_id: str | None
    completion_window: str
    metadata: dict | None
    status: str
    created_at: int
    expires_at: int
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    expired_at: int | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    succeeded: int
    failed: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int

    @property
    def pending(self) -> int:
        return self.total - self.succeeded - self.failed


@dataclass(frozen=True)
class Result:
    """A line's answer: the endpoint's status and body (its error object, for an error)."""

    batch_id: str
    line: int
    status_code: int
    response: dict
    usage: tuple = (0, 0, 0, 0)  # input, cached, output, reasoning tokens


def batches_directory(data_dir: str) -> Path:
    return data_root(data_dir) / "batches"


def insufficient_storage(message: str) -> APIError:
    return APIError(507, message, type="server_error", code="insufficient_storage")


class BatchStore:
    def __init__(self, root: Path, retention_days: int = 30, disk_bytes: int = 0, disk: DataDisk | None = None):
        self.root = root
        self.disk = disk or DataDisk(root)
        self.files_dir = root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.retention_days, self.disk_bytes = retention_days, disk_bytes
        self._lock = threading.RLock()
        self._db = sqlite3.connect(root / "batches.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        with self._lock:
            removed = self.prune()
            self._sweep()
        log.info("batches and their files are kept in %s%s", root,
                 f" ({removed} past retention removed)" if removed else "")

    # ---- files ------------------------------------------------------------------------

    def incoming(self) -> Path:
        """A temporary path in the files folder for an upload being received."""
        return self.files_dir / f".incoming-{uuid.uuid4().hex}"

    def add_file(self, source: Path, filename: str, purpose: str) -> FileRecord:
        """Keeps the file at `source` (written by the caller) as a new file."""
        record = FileRecord(f"file-{uuid.uuid4().hex[:24]}", filename, purpose, source.stat().st_size,
                            int(time.time()))
        with self._lock:
            self.check_room(0)  # counted with the new file already on disk
            os.replace(source, self.files_dir / record.id)
            self._db.execute("INSERT INTO files (id, filename, purpose, bytes, created_at) VALUES (?, ?, ?, ?, ?)",
                             (record.id, record.filename, record.purpose, record.bytes, record.created_at))
        return record

    def file(self, file_id: str) -> FileRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return FileRecord(**row) if row is not None and (self.files_dir / file_id).is_file() else None

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def list_files(self, after: str | None, limit: int, order: str, purpose: str | None) -> tuple[list, bool]:
        """Files newest first (order desc) or oldest first, after the file `after`."""
        direction = "DESC" if order == "desc" else "ASC"
        clauses, values = [], []
        if purpose:
            clauses.append("purpose = ?")
            values.append(purpose)
        if after:
            clauses.append(f"rowid {'<' if order == 'desc' else '>'} (SELECT rowid FROM files WHERE id = ?)")
            values.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM files {where} ORDER BY rowid {direction} LIMIT ?",
                                    (*values, limit + 1)).fetchall()
        return [FileRecord(**row) for row in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str) -> bool:
        with self._lock:
            deleted = self._db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
            self.file_path(file_id).unlink(missing_ok=True)
        return deleted

    # ---- disk -------------------------------------------------------------------------

    def disk_use(self) -> int:
        """Bytes the files and the database take."""
        total = 0
        for path in [*self.files_dir.iterdir(), *self.root.glob("batches.sqlite3*")]:
            try:
                total += path.stat().st_size
            except OSError:
                pass
        return total

    def check_room(self, more: int) -> None:
        """507 when `more` bytes would take the batch files past the disk cap, or while the disk
        under data_dir is full."""
        if not self.disk.has_room():
            raise self._disk_full()
        if self.disk_bytes and self.disk_use() + more > self.disk_bytes:
            raise insufficient_storage(
                f"The batch files would take more than the {self.disk_bytes / 2**20:,.0f} MiB this server keeps for "
                "them (batch_disk_mb). Delete files or batches that are done, or raise batch_disk_mb.")

    def full_disk(self, error: BaseException) -> APIError | None:
        """The 507 for a write that failed for lack of room (the disk is then full for every writer
        under data_dir); None for any other failure."""
        return self._disk_full() if self.disk.write_failed(error) else None

    def _disk_full(self) -> APIError:
        return insufficient_storage(f"The disk under the server's data_dir ({self.disk.path}) is full: free some "
                                    "space there, or delete files and batches that are done.")

    # ---- batches ----------------------------------------------------------------------

    def create_batch(self, api: str, endpoint: str, lines: list[Line], *, window: str, window_seconds: float,
                     input_file_id: str | None = None, metadata: dict | None = None) -> BatchRecord:
        prefix = "msgbatch_" if api == "anthropic" else "batch_"
        batch_id = prefix + uuid.uuid4().hex
        now = int(time.time())
        with self._lock:
            self.check_room(sum(len(line.body) + len(line.custom_id) for line in lines))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO batches (id, api, endpoint, input_file_id, completion_window, metadata, status, "
                    "created_at, expires_at, total) VALUES (?, ?, ?, ?, ?, ?, 'validating', ?, ?, ?)",
                    (batch_id, api, endpoint, input_file_id, window, json.dumps(metadata) if metadata else None,
                     now, int(now + window_seconds), len(lines)))
                self._db.executemany("INSERT INTO lines (batch_id, line, custom_id, body) VALUES (?, ?, ?, ?)",
                                     ((batch_id, line.number, line.custom_id, line.body) for line in lines))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.batch(batch_id)

    def batch(self, batch_id: str, api: str | None = None) -> BatchRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None or (api is not None and row["api"] != api):
            return None
        return _batch(row)

    def list_batches(self, api: str, after: str | None = None, before: str | None = None,
                     limit: int = 20) -> tuple[list[BatchRecord], bool]:
        """Batches newest first: the `limit` after the batch `after`, or just before `before`."""
        with self._lock:
            if before:
                rows = self._db.execute(
                    "SELECT * FROM batches WHERE api = ? AND rowid > (SELECT rowid FROM batches WHERE id = ?) "
                    "ORDER BY rowid ASC LIMIT ?", (api, before, limit + 1)).fetchall()
                return [_batch(row) for row in reversed(rows[:limit])], len(rows) > limit
            where, values = "", ()
            if after:
                where, values = "AND rowid < (SELECT rowid FROM batches WHERE id = ?)", (after,)
            rows = self._db.execute(f"SELECT * FROM batches WHERE api = ? {where} ORDER BY rowid DESC LIMIT ?",
                                    (api, *values, limit + 1)).fetchall()
        return [_batch(row) for row in rows[:limit]], len(rows) > limit

    def running_batches(self) -> list[BatchRecord]:
        """Batches not ended yet, oldest first: the runner's work."""
        marks = ",".join("?" * len(RUNNING))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY rowid", RUNNING)
            return [_batch(row) for row in rows.fetchall()]

    def pending_lines(self, batch_id: str, after: int, limit: int) -> list[tuple[int, str, str]]:
        """(line, custom_id, body) of the batch's pending lines after line `after`, in order."""
        with self._lock:
            rows = self._db.execute("SELECT line, custom_id, body FROM lines WHERE batch_id = ? AND state = 'pending' "
                                    "AND line > ? ORDER BY line LIMIT ?", (batch_id, after, limit)).fetchall()
        return [tuple(row) for row in rows]

    def set_status(self, batch_id: str, status: str, only_from: tuple = RUNNING) -> bool:
        """Moves the batch to `status` (and stamps `<status>_at`) when it is in one of `only_from`."""
        marks = ",".join("?" * len(only_from))
        with self._lock:
            return self._db.execute(
                f"UPDATE batches SET status = ?, {status}_at = ? WHERE id = ? AND status IN ({marks})",
                (status, int(time.time()), batch_id, *only_from)).rowcount > 0

    def record(self, results: list[Result]) -> list[Result]:
        """Commits lines' answers, each with its line's new state and the batch's counts, in one
        transaction. Returns those recorded (a line already answered is left as it was)."""
        recorded = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for result in results:
                    state = "succeeded" if 200 <= result.status_code < 300 else "failed"
                    changed = self._db.execute(
                        "UPDATE lines SET state = ?, status_code = ?, response = ?, request_id = ? "
                        "WHERE batch_id = ? AND line = ? AND state = 'pending'",
                        (state, result.status_code, json.dumps(result.response, ensure_ascii=False),
                         uuid.uuid4().hex, result.batch_id, result.line)).rowcount
                    if not changed:
                        continue
                    self._db.execute(
                        f"UPDATE batches SET {state} = {state} + 1, input_tokens = input_tokens + ?, "
                        "cached_tokens = cached_tokens + ?, output_tokens = output_tokens + ?, "
                        "reasoning_tokens = reasoning_tokens + ? WHERE id = ?", (*result.usage, result.batch_id))
                    recorded.append(result)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return recorded

    def finalize(self, batch_id: str, status: str) -> None:
        """Ends the batch as `status` (completed, cancelled or expired): for an OpenAI batch its
        output file (the lines answered 2xx) and error file (the others, and with cancelled or
        expired the lines never run) first."""
        batch = self.batch(batch_id)
        if batch is None or batch.status in ENDED:
            return
        self.set_status(batch_id, "finalizing", only_from=("validating", "in_progress"))  # cancelling stays
        output = errors = None
        if batch.api == "openai":
            output = self._write_file(batch, "succeeded", None)
            errors = self._write_file(batch, "failed", UNRUN.get(status))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for record in (output, errors):
                    if record is not None:
                        self._db.execute("INSERT INTO files (id, filename, purpose, bytes, created_at) "
                                         "VALUES (?, ?, ?, ?, ?)", (record.id, record.filename, record.purpose,
                                                                    record.bytes, record.created_at))
                self._db.execute(f"UPDATE batches SET status = ?, {status}_at = ?, output_file_id = ?, "
                                 "error_file_id = ? WHERE id = ?",
                                 (status, int(time.time()), output and output.id, errors and errors.id, batch_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def results(self, batch_id: str):
        """Every line of the batch, in input order, as rows (custom_id, state, status_code,
        response, request_id): a generator, read in pages."""
        after = 0
        while True:
            with self._lock:
                rows = self._db.execute("SELECT line, custom_id, state, status_code, response, request_id FROM lines "
                                        "WHERE batch_id = ? AND line > ? ORDER BY line LIMIT 500",
                                        (batch_id, after)).fetchall()
            if not rows:
                return
            yield from rows
            after = rows[-1]["line"]

    def delete_batch(self, batch_id: str) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM lines WHERE batch_id = ?", (batch_id,))
                deleted = self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,)).rowcount > 0
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return deleted

    def summary(self) -> dict:
        """Batches by status, and the lines of those not ended: for /health, /metrics, /status.json."""
        with self._lock:
            rows = self._db.execute("SELECT status, count(*) AS n, sum(total) AS total, sum(succeeded) AS succeeded, "
                                    "sum(failed) AS failed FROM batches GROUP BY status").fetchall()
        by_status = {row["status"]: row["n"] for row in rows}
        running = [row for row in rows if row["status"] in RUNNING]
        return {"batches": by_status, "lines_total": sum(r["total"] for r in running),
                "lines_done": sum(r["succeeded"] + r["failed"] for r in running)}

    # ---- retention --------------------------------------------------------------------

    def prune(self) -> int:
        """Deletes files, and batches that ended, older than the retention; the input files of
        batches still running stay. Returns how many went."""
        if not self.retention_days:
            return 0
        oldest = int(time.time()) - self.retention_days * 86400
        ended, running = ",".join("?" * len(ENDED)), ",".join("?" * len(RUNNING))
        with self._lock:
            old = [row[0] for row in self._db.execute(
                f"SELECT id FROM batches WHERE created_at < ? AND status IN ({ended})", (oldest, *ENDED))]
            for batch_id in old:
                self.delete_batch(batch_id)
            files = [row[0] for row in self._db.execute(
                f"SELECT id FROM files WHERE created_at < ? AND id NOT IN (SELECT input_file_id FROM batches WHERE "
                f"status IN ({running}) AND input_file_id IS NOT NULL)", (oldest, *RUNNING))]
            for file_id in files:
                self.delete_file(file_id)
        return len(old) + len(files)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- the store's own ----------------------------------------------------------------

    def _write_file(self, batch: BatchRecord, state: str, unrun: tuple | None) -> FileRecord | None:
        """The batch's output (`state` succeeded) or error file; None when it would be empty."""
        kind = "output" if state == "succeeded" else "error"
        record_id = f"file-{uuid.uuid4().hex[:24]}"
        path, temporary = self.file_path(record_id), self.files_dir / f".incoming-{record_id}"
        count = 0
        with open(temporary, "w", encoding="utf-8") as out:
            for row in self.results(batch.id):
                if row["state"] == state:
                    out.write(json.dumps({"id": f"batch_req_{row['request_id']}", "custom_id": row["custom_id"],
                                          "response": {"status_code": row["status_code"],
                                                       "request_id": row["request_id"],
                                                       "body": json.loads(row["response"])},
                                          "error": None}, ensure_ascii=False) + "\n")
                elif row["state"] == "pending" and unrun is not None:
                    out.write(json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": row["custom_id"],
                                          "response": None, "error": {"code": unrun[0], "message": unrun[1]}},
                                         ensure_ascii=False) + "\n")
                else:
                    continue
                count += 1
            out.flush()
            os.fsync(out.fileno())
        if not count:
            temporary.unlink()
            return None
        os.replace(temporary, path)
        return FileRecord(record_id, f"{batch.id}_{kind}.jsonl", "batch_output", path.stat().st_size,
                          int(time.time()))

    def _sweep(self) -> None:
        """Files on disk that no row names: uploads and outputs cut short by a crash."""
        known = {row[0] for row in self._db.execute("SELECT id FROM files")}
        for path in self.files_dir.iterdir():
            if path.name not in known:
                path.unlink(missing_ok=True)


def _batch(row: sqlite3.Row) -> BatchRecord:
    values = dict(row)
    values["metadata"] = json.loads(values["metadata"]) if values["metadata"] else None
    return BatchRecord(**values)


def open_batch_store(settings, disk: DataDisk | None = None) -> BatchStore:
    return BatchStore(batches_directory(settings.data_dir), settings.batch_retention_days,
                      settings.batch_disk_mb * 2**20, disk)
