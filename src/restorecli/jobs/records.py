"""The queue's job records outside a worker's lease: opening the queue, reading its jobs, adding one,
withdrawing or forgetting one, and the paths and soundness of a job's folder. ``JobLeases`` (``leases.py``) adds
the transitions a worker's lease fences, and ``JobStore`` (``store.py``) the workers' heartbeats."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import SetupError, UsageError
from ..files import remove_tree
from .database import DB_NAME, Database, open_database

JobStatus = Literal["queued", "processing", "completed", "failed"]
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "processing", "completed", "failed")


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
    step_started: float | None = None  # when the long step its worker waits on (current: preparing: ...) began
    frames: dict | None = None  # the video in current: {"input": its name, "done", "total" (None: not known)}

    @property
    def done(self) -> int:
        return len(self.progress or [])


@dataclass(frozen=True)
class Lease:
    job: Job
    token: str


class JobRecords:
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
        self._db = open_database(self.root / DB_NAME)

    def close(self) -> None:
        self._db.close()

    def transaction(self) -> AbstractContextManager[Database]:
        """An exclusive write transaction: no other process changes the queue until it ends."""
        return self._db.transaction()

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
        data["frames"] = json.loads(data["frames"]) if data.get("frames") else None
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

    def remove_folder(self, job_id: str) -> None:
        """Delete a job's folder whose record is gone, never through a planted link; one already gone is fine."""
        folder = self.job_dir(job_id)
        try:
            remove_tree(folder, Path(os.path.realpath(self.root)))
        except FileNotFoundError:
            pass
