"""Stored responses: SQLite (standard library) in the data directory, so that
`previous_response_id` and GET /v1/responses/{id} survive a restart.

Each row keeps the response object as it was returned and the conversation it ends: the items
of the stored conversation it continued, its own input items and its output items. Continuing
from it needs that one row (instructions are not part of it, as with OpenAI). Requests with
`store: false` are never written.

Items: a response's own items (its input and output) are also indexed by item id in `items`,
so that an `item_reference` input item finds any of them. They belong to their response: a
trigger deletes them with it (DELETE, retention), so an expired response's items are gone too.
Databases written before the index existed get it, filled from their conversations, when they
are opened (ITEM_INDEX below).

Durability: WAL journal with synchronous=FULL. Each save is one transaction whose commit fsyncs
the WAL, and a response is saved before its last event (or its body) is sent, so a response a
client has seen finish is on disk: a killed server (kill -9) loses nothing it has answered, and
neither does a power cut (NORMAL would be enough for a killed process, not for the machine going
down; the price is one fsync per stored response, nothing next to generating it).

Retention: `max_age_days` and `max_count` (0: unlimited) are applied when the store opens and
with every save (both deletes use indexes); reads never return a response older than
`max_age_days`, so an idle server doesn't serve expired ones either.

A damaged file (not a database, or failing SQLite's quick_check) is set aside when the store
opens (renamed responses.sqlite3.corrupt-<timestamp>, with a warning) and an empty store takes
its place: the server starts rather than exit into a supervisor's restart loop. A full disk
(server/plumbing/disk.py) makes a save a 507 `insufficient_storage` before anything is written,
or a rolled-back transaction when the disk fills during it: what is stored is never damaged.
A store that can't be opened at start (a full disk, say) is opened on first use.
"""

import json
import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from models.paths import cache_dir
from server.plumbing.disk import DataDisk, data_disk, set_aside
from server.plumbing.errors import APIError

log = logging.getLogger("swallow.responses")

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    response TEXT NOT NULL,      -- the response object, JSON
    conversation TEXT NOT NULL   -- the items a continuation starts from, JSON
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
"""
# The item index, created (and filled from the stored conversations) by _add_item_index.
ITEM_INDEX = (
    """CREATE TABLE items (
        id TEXT NOT NULL,            -- the item's id (rs_..., msg_..., fc_..., or one a client gave)
        response_id TEXT NOT NULL,   -- the stored response whose input or output it is
        item TEXT NOT NULL,          -- the item, JSON
        PRIMARY KEY (id, response_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX items_response ON items (response_id)",
    """CREATE TRIGGER items_go_with_their_response AFTER DELETE ON responses
        BEGIN DELETE FROM items WHERE response_id = OLD.id; END""",
)
ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
               "mcp_list_tools": "mcpl", "mcp_call": "mcp", "web_search_call": "ws", "code_interpreter_call": "ci"}


def data_directory(setting: str) -> Path:
    """The configured `data_dir`, or cache_dir()/responses when it is empty."""
    return Path(setting).expanduser() if setting else cache_dir() / "responses"


def with_ids(items: list[dict]) -> list[dict]:
    """The items, each with an id (input items a client sent without one get one, once: a
    continuation keeps the ids of the conversation it continues)."""
    return [item if item.get("id") else {**item, "id": f"{ID_PREFIXES.get(item.get('type'), 'item')}_{uuid.uuid4().hex}"}
            for item in items]


class Damaged(sqlite3.DatabaseError):
    """The file is a database that fails its integrity check."""


DAMAGED = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}


class ResponseStore:
    def __init__(self, path: Path, max_age_days: int = 0, max_count: int = 0, disk: DataDisk | None = None):
        self.path = path
        self.max_age_days, self.max_count = max_age_days, max_count
        self.disk = disk or DataDisk(path.parent)
        self.journal_mode = ""
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        with self._lock:
            self._open()

    def _open(self) -> sqlite3.Connection | None:
        """The connection, opened now if it isn't yet (the lock held); None when it can't be,
        said in the log."""
        if self._db is not None:
            return self._db
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as e:
            if not (isinstance(e, Damaged) or getattr(e, "sqlite_errorname", "") in DAMAGED):
                self._cannot_open(e)
                return None
            aside = set_aside(self.path, str(e), "the response store")
            if aside is None:
                return None
            wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
            if wal.exists():  # its journal goes with it, named so that SQLite opens the two together
                wal.replace(f"{aside}-wal")
            shm.unlink(missing_ok=True)  # an index of the journal, rebuilt from it
            try:
                self._db = self._connect()
            except (sqlite3.Error, OSError) as e:
                self._cannot_open(e)
        except OSError as e:
            self._cannot_open(e)
        return self._db

    def _cannot_open(self, error: Exception) -> None:
        if not self.disk.write_failed(error):
            log.error("the response store %s can't be opened (%s); stored responses are unavailable "
                      "until it can be", self.path, error)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            checked = db.execute("PRAGMA quick_check").fetchone()[0]
            if checked != "ok":
                raise Damaged(f"integrity check: {checked}")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":  # e.g. a file system without shared memory
                log.warning("the response store runs in journal mode %r, not WAL", mode)
            self.journal_mode = mode.lower()
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self._db = db
            self._add_item_index()
            try:
                removed = self._prune()
            except sqlite3.OperationalError as e:  # a full disk: retention waits for the next save
                if not self.disk.write_failed(e):
                    raise
                removed = 0
        except BaseException:
            self._db = None
            db.close()
            raise
        log.info("responses are stored in %s%s", self.path, f" ({removed} past retention removed)" if removed else "")
        return db

    def writable(self) -> None:
        """Raises the 507 a request whose response must be stored gets while the disk is full."""
        if not self.disk.has_room():
            raise self.no_room()

    def no_room(self) -> APIError:
        return APIError(507, f"The response can't be stored: the disk under the server's data_dir ({self.disk.path}) "
                             "is full. Free some space there, or send store: false.",
                        type="server_error", code="insufficient_storage")

    def save(self, response: dict, conversation: list[dict], own_items: list[dict] | None = None) -> None:
        """`own_items`: the items that are the response's own (its input and output), indexed for
        `item_reference`; None: the whole conversation. Raises the 507 APIError when the disk is
        full (before or while writing); any other sqlite3.Error as it comes. Nothing is written
        then: the transaction is rolled back."""
        self.writable()
        with self._lock:
            db = self._open()
            if db is None:
                raise sqlite3.OperationalError(f"the response store {self.path} can't be opened")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute(
                        "INSERT OR REPLACE INTO responses (id, created_at, response, conversation) VALUES (?, ?, ?, ?)",
                        (response["id"], response.get("created_at") or int(time.time()),
                         json.dumps(response, ensure_ascii=False), json.dumps(conversation, ensure_ascii=False)),
                    )
                    db.execute("DELETE FROM items WHERE response_id = ?", (response["id"],))  # a re-save
                    self._index(response["id"], conversation if own_items is None else own_items)
                    self._prune()
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # a failed COMMIT may have ended it already
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                if self.disk.write_failed(e):
                    raise self.no_room() from e
                raise
        self.disk.wrote()

    def response(self, response_id: str) -> dict | None:
        row = self._row("response", response_id)
        return json.loads(row) if row is not None else None

    def conversation(self, response_id: str) -> list[dict] | None:
        row = self._row("conversation", response_id)
        return json.loads(row) if row is not None else None

    def input_items(self, response_id: str) -> list[dict] | None:
        """The items the response was generated from, oldest first: the conversation it
        continued and its own input (its conversation without its output)."""
        with self._lock:
            db = self._open()
            row = db and db.execute("SELECT response, conversation FROM responses WHERE id = ? AND created_at >= ?",
                                    (response_id, self._oldest())).fetchone()
        if row is None:
            return None
        output, conversation = json.loads(row[0]).get("output") or [], json.loads(row[1])
        return conversation[:len(conversation) - len(output)]

    def items(self, item_ids: list[str]) -> dict[str, dict]:
        """The stored items with these ids (id -> item), each from the newest response that holds
        it; ids that are unknown, deleted or past retention are left out."""
        wanted = list(dict.fromkeys(item_ids))
        if not wanted:
            return {}
        with self._lock:
            db = self._open()
            rows = [] if db is None else db.execute(
                "SELECT items.id, items.item FROM items JOIN responses ON responses.id = items.response_id "
                f"WHERE items.id IN ({', '.join('?' * len(wanted))}) AND responses.created_at >= ? "
                "ORDER BY responses.rowid", (*wanted, self._oldest())).fetchall()
        found = {}
        for item_id, item in rows:  # later rows (newer responses) win
            try:
                found[item_id] = json.loads(item)
            except ValueError:
                log.warning("stored item %s is unreadable; it is left out", item_id)
        return found

    def delete(self, response_id: str) -> bool:
        with self._lock:
            db = self._open()
            if db is None:
                return False
            try:
                return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0
            except sqlite3.OperationalError as e:
                if self.disk.write_failed(e):
                    raise self.no_room() from e
                raise

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _index(self, response_id: str, items: list[dict]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO items (id, response_id, item) VALUES (?, ?, ?)",
                             [(item["id"], response_id, json.dumps(item, ensure_ascii=False))
                              for item in items if isinstance(item, dict) and item.get("id")])

    def _add_item_index(self) -> None:
        """Create the item index if this database has none yet (written by an older version),
        filled from every stored conversation, in one transaction (the lock held)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'items'").fetchone() is None:
                for statement in ITEM_INDEX:
                    db.execute(statement)
                filled = 0
                for response_id, conversation in db.execute("SELECT id, conversation FROM responses").fetchall():
                    try:
                        items = json.loads(conversation)
                    except ValueError:
                        log.warning("stored response %s has an unreadable conversation; its items are "
                                    "not indexed", response_id)
                        continue
                    self._index(response_id, items if isinstance(items, list) else [])
                    filled += 1
                if filled:
                    log.info("indexed the items of %d stored responses", filled)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _oldest(self) -> int:
        """created_at of the oldest response retention keeps (0: all)."""
        return int(time.time()) - self.max_age_days * 86400 if self.max_age_days else 0

    def _prune(self) -> int:
        """Apply retention (the lock held). The newest max_count are kept, newest by when they
        were stored (rowid order)."""
        removed = 0
        if self.max_age_days:
            removed += self._db.execute("DELETE FROM responses WHERE created_at < ?", (self._oldest(),)).rowcount
        if self.max_count:
            removed += self._db.execute(
                "DELETE FROM responses WHERE rowid <= "
                "(SELECT rowid FROM responses ORDER BY rowid DESC LIMIT 1 OFFSET ?)", (self.max_count,)).rowcount
        return removed

    def _row(self, column: str, response_id: str):
        with self._lock:
            db = self._open()
            row = db and db.execute(f"SELECT {column} FROM responses WHERE id = ? AND created_at >= ?",
                                    (response_id, self._oldest())).fetchone()
        return row[0] if row else None


def open_store(settings) -> ResponseStore:
    return ResponseStore(data_directory(settings.data_dir) / "responses.sqlite3",
                         settings.responses_max_age_days, settings.responses_max_count,
                         disk=data_disk(settings.data_dir))
