"""Stored responses: SQLite (standard library) in the data directory, so that
`previous_response_id` and GET /v1/responses/{id} survive a restart.

Each row keeps the response object as it was returned and the conversation it ends: the items
of the stored conversation it continued, its own input items and its output items. Continuing
from it needs that one row (instructions are not part of it, as with OpenAI). Requests with
`store: false` are never written.
"""

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

from models.paths import cache_dir

log = logging.getLogger("swallow.responses")

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    response TEXT NOT NULL,      -- the response object, JSON
    conversation TEXT NOT NULL   -- the items a continuation starts from, JSON
)
"""


def data_directory(setting: str) -> Path:
    """The configured `data_dir`, or cache_dir()/responses when it is empty."""
    return Path(setting).expanduser() if setting else cache_dir() / "responses"


class ResponseStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        log.info("responses are stored in %s", path)

    def save(self, response: dict, conversation: list[dict]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (id, created_at, response, conversation) VALUES (?, ?, ?, ?)",
                (response["id"], response.get("created_at") or int(time.time()),
                 json.dumps(response, ensure_ascii=False), json.dumps(conversation, ensure_ascii=False)),
            )

    def response(self, response_id: str) -> dict | None:
        row = self._row("response", response_id)
        return json.loads(row) if row is not None else None

    def conversation(self, response_id: str) -> list[dict] | None:
        row = self._row("conversation", response_id)
        return json.loads(row) if row is not None else None

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, column: str, response_id: str):
        with self._lock:
            row = self._db.execute(f"SELECT {column} FROM responses WHERE id = ?", (response_id,)).fetchone()
        return row[0] if row else None


def open_store(settings) -> ResponseStore:
    return ResponseStore(data_directory(settings.data_dir) / "responses.sqlite3")
