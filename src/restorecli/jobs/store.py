"""The job folder's state: a SQLite database (WAL) beside one directory per job.

Layout of a queue folder::

    queue.db                  job records: status, options, lease owner and expiry, attempts, errors
    incoming/<id>.<pid>@<host>/  a job being submitted or uploaded (invisible to workers), by that process
    jobs/<id>/inputs/         the job's copied inputs
    jobs/<id>/work/<token>/   outputs being written by the lease owner ``token`` (private)
    jobs/<id>/work/resume/    outputs of a worker that stopped politely, adopted by the next owner
    jobs/<id>/outputs/        published outputs (appear by one directory rename)
    jobs/<id>/result.json     per-input results, written when the job completes or fails

The database also holds each job's per-image progress while it runs, and a heartbeat per live worker (so that
``restorecli serve`` can say whether anything is working the queue).

Every state change is one ``BEGIN IMMEDIATE`` transaction, so two workers never claim the same job. A
worker holds a lease (owner token + expiry) that it renews; publishing checks the token inside the same
exclusive transaction, so a worker that lost its lease cannot publish over the new owner. SQLite's locking
needs a local filesystem: do not put a queue on NFS or SMB.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator, Literal

from ..errors import QueueUnavailable, SetupError, UsageError
from ..files import remove_tree, write_atomic

QUEUE_ENV = "RESTORECLI_QUEUE"
DEFAULT_QUEUE = "restorecli-queue"
DB_NAME = "queue.db"
JobStatus = Literal["queued", "processing", "completed", "failed"]
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "processing", "completed", "failed")

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
# Columns added after the first release, added to an older queue's table when it is opened
_ADDED_COLUMNS = {"progress": "TEXT", "cancel": "REAL"}  # cancel: when a cancel of the running job was asked


def queue_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, then $RESTORECLI_QUEUE, then ./restorecli-queue."""
    return Path(explicit or os.environ.get(QUEUE_ENV) or DEFAULT_QUEUE)


def queue_exists(root: Path) -> bool:
    """Whether ``root`` holds a queue. A folder that does not exist yet, or is empty, is a queue nobody has
    submitted to: False, so that a worker or ``status`` run by cron before the first job has nothing to do. A
    folder that holds something else is not a queue, and an error."""
    if (root / DB_NAME).is_file():
        return True
    if root.is_dir():
        try:
            empty = next(root.iterdir(), None) is None
        except OSError as exc:
            raise SetupError(f"cannot read queue folder {root}: {exc.strerror}") from None
        if not empty:
            raise UsageError(f"{root}: not a restorecli queue (no {DB_NAME}); submit a job first")
        return False
    if root.exists() or root.is_symlink():
        raise UsageError(f"{root}: not a restorecli queue (a file, not a folder)")
    return False


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    status: JobStatus
    options: dict
    inputs: list[dict]  # [{"original_filename", "stored"}], stored relative to the job's inputs/ folder
    created: float
    started: float | None
    finished: float | None
    attempts: int
    owner: str | None
    lease_until: float | None
    worker: str | None
    current: str | None
    last_error: str | None
    progress: list[dict] | None = None  # while it runs: one entry per finished input, in order
    cancel: float | None = None  # when someone asked to cancel it while it ran (its worker then drops it)

    @property
    def done(self) -> int:
        return len(self.progress or [])


@dataclass(frozen=True)
class Lease:
    job: Job
    token: str


class _Database:
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


class JobStore:
    """Opens the queue database; every method is one short transaction. Safe across processes."""

    def __init__(self, root: Path, create: bool = False):
        self.root = Path(root)
        if not (self.root / DB_NAME).is_file():
            if not create:
                raise UsageError(f"{self.root}: not a restorecli queue (no {DB_NAME}); submit a job first")
            try:
                (self.root / "jobs").mkdir(parents=True, exist_ok=True)
                (self.root / "incoming").mkdir(exist_ok=True)
            except OSError as exc:
                raise SetupError(f"cannot create queue folder {self.root}: {exc.strerror}") from None
        self._db = _Database(self.root / DB_NAME)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._add_columns()

    def _add_columns(self) -> None:
        """Bring a queue made by an older version up to this schema (under the write lock: two processes opening
        it at once add each column once)."""
        if set(_ADDED_COLUMNS) <= self._columns():
            return
        with self.transaction() as db:
            for name, kind in _ADDED_COLUMNS.items():
                if name not in self._columns():
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def _columns(self) -> set[str]:
        return {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[_Database]:
        """An exclusive write transaction: no other process changes the queue until it ends."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ paths

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def folder_problem(self, job_id: str) -> str | None:
        """What is wrong with a job's folder, where it is not what restorecli made: a symbolic link (to anywhere)
        or a file where a folder belongs, at any level a worker reads or writes. None for a sound folder. Checked
        with lstat, never by resolving: a worker never reads, writes or publishes through a link in the queue."""
        job_dir = self.job_dir(job_id)
        relative = f"jobs/{job_id}"
        if job_dir.is_symlink() or not job_dir.is_dir():
            return f"{relative} is {'a symbolic link' if job_dir.is_symlink() else 'missing or not a folder'}"
        for name in ("inputs", "work", "outputs"):
            folder = job_dir / name
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                return f"{relative}/{name} is {'a symbolic link' if folder.is_symlink() else 'not a folder'}"
        for name in ("inputs", "work"):
            for parent, folders, files in os.walk(job_dir / name):  # never follows a link
                for entry in (*folders, *files):
                    if os.path.islink(os.path.join(parent, entry)):
                        inner = Path(parent, entry).relative_to(job_dir).as_posix()
                        return f"{relative}/{inner} is a symbolic link"
        return None

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        data["options"] = json.loads(data["options"])
        data["inputs"] = json.loads(data["inputs"])
        data["progress"] = json.loads(data["progress"]) if data.get("progress") else None
        return Job(**data)

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def jobs(self, status: JobStatus | None = None) -> list[Job]:
        if status:
            rows = self._db.execute("SELECT * FROM jobs WHERE status = ? ORDER BY seq", (status,))
        else:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq")
        return [self._job(r) for r in rows]

    def position(self, job: Job) -> int | None:
        """1-based place among queued jobs, or None if the job is not queued."""
        if job.status != "queued":
            return None
        (ahead,) = self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq < ?", (job.seq,)
        ).fetchone()
        return ahead + 1

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATUSES, 0)
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            counts[status] = n
        return counts

    # ------------------------------------------------------------------ submitting

    def add(self, job_id: str, options: dict, inputs: list[dict]) -> Job:
        """Make a job whose files are already in place under jobs/<id> visible to workers."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, status, options, inputs, created) VALUES (?, 'queued', ?, ?, ?)",
                (job_id, json.dumps(options), json.dumps(inputs), time.time()),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    # ------------------------------------------------------------------ leases

    def claim(self, lease_seconds: float, max_attempts: int, worker: str, skip: Collection[str] = ()) -> Lease | None:
        """Take the oldest runnable job not in ``skip``: queued, or processing with an expired lease (its worker
        died or stalled). A job whose lease expired ``max_attempts`` times is marked failed instead; one cancelled
        while it ran is removed."""
        dropped: list[str] = []
        try:
            return self._claim(lease_seconds, max_attempts, worker, tuple(skip), dropped)
        finally:
            for job_id in dropped:
                self.remove_folder(job_id)

    def _claim(self, lease_seconds: float, max_attempts: int, worker: str, skip: tuple[str, ...],
               dropped: list[str]) -> Lease | None:
        token = secrets.token_hex(8)
        now = time.time()
        skipped = f" AND id NOT IN ({', '.join('?' * len(skip))})" if skip else ""
        with self.transaction() as db:
            while True:
                row = db.execute(
                    "SELECT * FROM jobs WHERE (status = 'queued' OR (status = 'processing' AND lease_until < ?))"
                    f"{skipped} ORDER BY seq LIMIT 1",
                    (now, *skip),
                ).fetchone()
                if row is None:
                    return None
                job = self._job(row)
                if job.cancel is not None:  # cancelled while it ran, and its worker died or gave it back since
                    db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
                    dropped.append(job.id)
                    continue
                if job.status == "processing" and job.attempts >= max_attempts:
                    error = (f"gave up after {job.attempts} attempts: the worker stopped responding{_in_hand(job)}"
                             f"{f' (last error: {job.last_error})' if job.last_error else ''}")
                    self._mark_failed(db, job, error)
                    continue
                db.execute(
                    "UPDATE jobs SET status = 'processing', owner = ?, lease_until = ?, attempts = attempts + 1, "
                    "started = ?, worker = ?, current = NULL, progress = NULL WHERE id = ?",
                    (token, now + lease_seconds, now, worker, job.id),
                )
                claimed = self.get(job.id)
                assert claimed is not None
                return Lease(claimed, token)

    def renew(self, lease: Lease, lease_seconds: float, current: str | None = None) -> bool:
        """Extend the lease; False if another worker owns the job now."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_until = ?, current = COALESCE(?, current) "
                "WHERE id = ? AND owner = ? AND status = 'processing'",
                (time.time() + lease_seconds, current, lease.job.id, lease.token),
            )
            return cursor.rowcount == 1

    def record(self, lease: Lease, progress: list[dict]) -> bool:
        """Record the results of the inputs finished so far (for status while the job runs); False if another
        worker owns the job now."""
        with self.transaction() as db:
            cursor = db.execute("UPDATE jobs SET progress = ? WHERE id = ? AND owner = ? AND status = 'processing'",
                                (json.dumps(progress), lease.job.id, lease.token))
            return cursor.rowcount == 1

    def release(self, lease: Lease, work: Path, error: str | None = None) -> bool:
        """Give a job back (the worker is stopping): queued again, its finished images kept for the next owner.
        ``error`` says why this worker could not run it, for ``status``; no attempt is counted."""
        with self.transaction() as db:
            if not self._owns(db, lease):
                return False
            self._keep_for_resume(lease, work)
            db.execute(
                "UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL, worker = NULL, "
                "current = NULL, progress = NULL, attempts = attempts - 1, last_error = COALESCE(?, last_error) WHERE id = ?",
                (error, lease.job.id),
            )
            return True

    def _keep_for_resume(self, lease: Lease, work: Path) -> None:
        """Inside a transaction that owns the lease: the images ``work`` holds become the next owner's to adopt."""
        resume = self.job_dir(lease.job.id) / "work" / "resume"
        if work.is_dir() and not resume.exists():
            os.rename(work, resume)

    def _owns(self, db: _Database, lease: Lease) -> bool:
        row = db.execute("SELECT owner, status FROM jobs WHERE id = ?", (lease.job.id,)).fetchone()
        return row is not None and row["owner"] == lease.token and row["status"] == "processing"

    def publish(self, lease: Lease, work: Path, results: list[dict], status: JobStatus,
                error: str | None = None, setup: dict | None = None) -> bool:
        """Publish ``work`` as the job's outputs and record its results, if this lease still owns the job.

        The ownership check, the directory rename and the status change happen inside one exclusive
        transaction: a worker that lost its lease gets False and changes nothing.
        """
        job_dir = self.job_dir(lease.job.id)
        with self.transaction() as db:
            if not self._owns(db, lease):
                return False
            outputs = job_dir / "outputs"
            if outputs.is_symlink():  # planted: the link goes, whatever it points to stays
                os.unlink(outputs)
            elif outputs.exists():  # left by a publisher that crashed before its commit: ours replaces it
                shutil.rmtree(outputs)
            work.mkdir(parents=True, exist_ok=True)
            os.rename(work, outputs)
            _write_json(job_dir / "result.json", {"job_id": lease.job.id, "status": status, "error": error,
                                                  "setup": setup, "results": results})
            db.execute(
                "UPDATE jobs SET status = ?, finished = ?, owner = NULL, lease_until = NULL, current = NULL, "
                "last_error = ? WHERE id = ?",
                (status, time.time(), error, lease.job.id),
            )
            return True

    def fail(self, lease: Lease, error: str) -> bool:
        """Mark the job failed without outputs (a setup error no retry can fix)."""
        with self.transaction() as db:
            if not self._owns(db, lease):
                return False
            self._mark_failed(db, lease.job, error)
            return True

    def retry_later(self, lease: Lease, error: str, max_attempts: int, work: Path | None = None,
                    tried: str = "failed") -> bool:
        """After a failure: queue the job again (what ``work`` holds kept for the next owner), or fail it once it
        has used ``max_attempts``, saying it ``tried`` that many times and the last ``error``."""
        with self.transaction() as db:
            if not self._owns(db, lease):
                return False
            (attempts,) = db.execute("SELECT attempts FROM jobs WHERE id = ?", (lease.job.id,)).fetchone()
            if attempts >= max_attempts:
                times = "once" if attempts == 1 else f"{attempts} times"
                self._mark_failed(db, lease.job, f"{tried} {times}; last error: {error}")
            else:
                if work is not None:
                    self._keep_for_resume(lease, work)
                db.execute("UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL, worker = NULL, "
                           "progress = NULL, last_error = ? WHERE id = ?", (error, lease.job.id))
            return True

    def _mark_failed(self, db: _Database, job: Job, error: str) -> None:
        """Inside a transaction: the job is failed for good, and its result file says why for each input."""
        db.execute(
            "UPDATE jobs SET status = 'failed', finished = ?, owner = NULL, lease_until = NULL, last_error = ? "
            "WHERE id = ?",
            (time.time(), error, job.id),
        )
        results = [{"original_filename": i["original_filename"], "output": None, "status": "error", "error": error}
                   for i in job.inputs]
        job_dir = self.job_dir(job.id)
        if job_dir.is_dir() and not job_dir.is_symlink():  # never written through a planted link
            _write_json(job_dir / "result.json", {"job_id": job.id, "status": "failed", "error": error,
                                                  "results": results})

    def forget(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ? AND status IN ('completed', 'failed')", (job_id,))

    def withdraw(self, job_id: str) -> JobStatus | None:
        """Take a queued or finished job out of the queue, in one transaction with the check of its status, so no
        worker claims it meanwhile; its folder is the caller's to delete. A job being processed is marked to be
        cancelled instead: its worker drops it (record and folder) at its next tile, or the next claim does where
        that worker is gone. Returns the status it had, or None for no such job."""
        with self.transaction() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] == "processing":
                db.execute("UPDATE jobs SET cancel = COALESCE(cancel, ?) WHERE id = ?", (time.time(), job_id))
            else:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return row["status"]

    def cancel_asked(self, job_id: str) -> bool:
        row = self._db.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and row["cancel"] is not None

    def drop_cancelled(self, lease: Lease) -> bool:
        """The worker holding a cancelled job gives it up: record and folder go. False if it no longer owns it."""
        with self.transaction() as db:
            if not self._owns(db, lease):
                return False
            db.execute("DELETE FROM jobs WHERE id = ?", (lease.job.id,))
        self.remove_folder(lease.job.id)
        return True

    def remove_folder(self, job_id: str) -> None:
        """Delete a job's folder whose record is gone, never through a planted link; one already gone is fine."""
        folder = self.job_dir(job_id)
        try:
            remove_tree(folder, Path(os.path.realpath(self.root)))
        except FileNotFoundError:
            pass

    def requeue_worker(self, worker: str, max_attempts: int, why: str, counted: bool = True) -> list[str]:
        """The jobs ``worker`` (a ``host:pid`` name) was processing, now that its process is gone: queued again at
        once rather than when their leases run out (what they finished is redone; a cancelled one is removed), or
        failed where the attempt was ``counted`` (the worker died on it) and ``max_attempts`` are spent. ``why``
        says what happened to the worker. Returns their ids."""
        dropped: list[str] = []
        with self.transaction() as db:
            rows = db.execute("SELECT * FROM jobs WHERE status = 'processing' AND worker = ?", (worker,)).fetchall()
            for row in rows:
                job = self._job(row)
                if job.cancel is not None:
                    db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
                    dropped.append(job.id)
                elif counted and job.attempts >= max_attempts:
                    self._mark_failed(db, job, f"gave up after {job.attempts} attempts: {why}{_in_hand(job)}")
                else:
                    db.execute("UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL, worker = NULL, "
                               "current = NULL, progress = NULL, attempts = attempts - ?, last_error = ? WHERE id = ?",
                               (0 if counted else 1, f"{why}{_in_hand(job)}", job.id))
            db.execute("DELETE FROM workers WHERE name = ?", (worker,))
        for job_id in dropped:
            self.remove_folder(job_id)
        return [row["id"] for row in rows]

    # ------------------------------------------------------------------ workers

    def beat(self, worker: str, job: str | None, interval: float) -> None:
        """A worker says it is alive (and which job it holds); it counts as alive for three of its intervals."""
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT INTO workers (name, job, seen, expires) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO "
                       "UPDATE SET job = excluded.job, seen = excluded.seen, expires = excluded.expires",
                       (worker, job, now, now + 3 * interval))

    def retire(self, worker: str) -> None:
        """A worker that stops says so; one that dies just stops beating."""
        with self.transaction() as db:
            db.execute("DELETE FROM workers WHERE name = ? OR expires < ?", (worker, time.time() - 86400))

    def live_workers(self) -> list[dict]:
        rows = self._db.execute("SELECT name, job, seen FROM workers WHERE expires >= ? ORDER BY name",
                                (time.time(),))
        return [dict(row) for row in rows]


def _in_hand(job: Job) -> str:
    """`` while processing NAME``, the image the job's worker had in hand, where it said."""
    return f" while processing {job.current}" if job.current else ""


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` says another connection holds the lock (SQLITE_BUSY or SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return "locked" in str(exc) or "busy" in str(exc)


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2).encode("utf-8"))


def new_job_id() -> str:
    """Sortable by creation time, unique across processes, and not guessable: 128 random bits, since knowing an id
    is what lets someone read a job's results through ``restorecli serve``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(16)


