"""The queue's SQLite database: its schema, the columns later versions added, and a connection whose failures
name the database file."""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import QueueUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    options TEXT NOT NULL,
    inputs TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL,
    worker TEXT,
    current TEXT,
    last_error TEXT,
    progress TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    job TEXT,
    seen REAL NOT NULL,
    expires REAL NOT NULL
);
"""
DB_NAME = "queue.db"
# Columns added after the first release, added to an older queue's table when it is opened
# cancel: when a cancel of the running job was asked; step_started: when the long step in current began;
# frames: the frames done of the video in current ({"input", "done", "total"}, JSON)
_ADDED_COLUMNS = {"progress": "TEXT", "cancel": "REAL", "step_started": "REAL", "frames": "TEXT"}


class Database:
    """The queue's SQLite connection, whose failures (a damaged file, a lock held past the timeout, a full disk)
    become ``QueueUnavailable`` naming the database file, instead of a bare ``sqlite3`` error.

    A statement that finds the database locked by another process's transaction is retried here every few
    milliseconds, for up to ``LOCK_WAIT`` seconds: SQLite's own busy handler backs off to 100 ms sleeps (whole
    seconds where it was built without usleep), which made a short write wait far longer than the lock was held."""

    LOCK_WAIT = 60.0

    def __init__(self, path: Path):
        self.path = path
        self._connection = self._call(sqlite3.connect, path, timeout=0, isolation_level=None)
        self._connection.row_factory = sqlite3.Row

    def _call(self, action, *args, **kwargs):
        deadline = None
        pause = 0.001
        while True:
            try:
                return action(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if _busy(exc) and (deadline is None or time.monotonic() < deadline):
                    deadline = deadline or time.monotonic() + self.LOCK_WAIT
                    time.sleep(pause)
                    pause = min(pause * 2, 0.01)
                    continue
                self._raise(exc)
            except sqlite3.Error as exc:
                self._raise(exc)

    def _raise(self, exc: sqlite3.Error):
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
            raise exc  # restorecli's own mistake, not the database's state
        damaged = type(exc) is sqlite3.DatabaseError  # "file is not a database", "disk image is malformed"
        hint = ("; restore it from a backup, or move it aside to start an empty queue (the job folders under "
                "jobs/ keep each job's inputs)") if damaged else ""
        raise QueueUnavailable(f"{self.path}: {exc}{hint}") from None

    def execute(self, sql: str, parameters: tuple = ()) -> sqlite3.Cursor:
        return self._call(self._connection.execute, sql, parameters)

    def executescript(self, script: str) -> sqlite3.Cursor:
        return self._call(self._connection.executescript, script)

    def close(self) -> None:
        self._connection.close()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """An exclusive write transaction: no other process changes the queue until it ends."""
        self.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")


def open_database(path: Path) -> Database:
    """The queue database at ``path`` (made where absent), in WAL mode and at this version's schema: a queue made
    by an older version gets the columns added since, under the write lock (two processes opening it at once add
    each column once)."""
    db = Database(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    if not set(_ADDED_COLUMNS) <= _columns(db):
        with db.transaction():
            for name, kind in _ADDED_COLUMNS.items():
                if name not in _columns(db):
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
    return db


def _columns(db: Database) -> set[str]:
    return {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` says another connection holds the lock (SQLITE_BUSY or SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return "locked" in str(exc) or "busy" in str(exc)
