"""The transitions of a job that a worker's lease fences: claim, renew, record progress, give back, publish,
fail, retry later, drop when cancelled, and requeue a dead worker's jobs. Each checks, inside its one exclusive
transaction, that the lease's owner token still owns the job: a worker that lost its lease changes nothing."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Collection

from ..files import write_atomic
from .database import Database
from .records import Job, JobRecords, JobStatus, Lease

PREPARING = "preparing"  # how ``current`` begins while a worker loads a job's models (``preparing: STEP``)


class JobLeases(JobRecords):
    """The queue's records with the lease-fenced transitions of its jobs."""

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
                    "started = ?, worker = ?, current = NULL, frames = NULL, progress = NULL WHERE id = ?",
                    (token, now + lease_seconds, now, worker, job.id),
                )
                claimed = self.get(job.id)
                assert claimed is not None
                return Lease(claimed, token)

    def renew(self, lease: Lease, lease_seconds: float, current: str | None = None,
              frames: dict | None = None) -> bool:
        """Extend the lease, saying what is in hand where ``current`` is given (and ``frames``, the frames done
        of the video it names: ``{"input", "done", "total"}``); False if another worker owns the job now."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_until = ?, current = COALESCE(?, current), "
                "frames = CASE WHEN ? IS NULL THEN frames ELSE ? END "
                "WHERE id = ? AND owner = ? AND status = 'processing'",
                (time.time() + lease_seconds, current, current, json.dumps(frames) if frames else None,
                 lease.job.id, lease.token),
            )
            return cursor.rowcount == 1

    def preparing(self, lease: Lease, lease_seconds: float, step: str | None, started: float | None) -> bool:
        """Extend the lease, saying for status which long step (a conversion, a probe) the job waits on, since
        ``started`` (``time.time()``): ``current`` becomes ``preparing: STEP``, or ``preparing`` where ``step`` is
        None (between steps); False if another worker owns the job now."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_until = ?, current = ?, step_started = ?, frames = NULL "
                "WHERE id = ? AND owner = ? AND status = 'processing'",
                (time.time() + lease_seconds, f"{PREPARING}: {step}" if step else PREPARING,
                 started if step else None, lease.job.id, lease.token),
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
                "current = NULL, frames = NULL, progress = NULL, attempts = attempts - 1, last_error = COALESCE(?, last_error) WHERE id = ?",
                (error, lease.job.id),
            )
            return True

    def _keep_for_resume(self, lease: Lease, work: Path) -> None:
        """Inside a transaction that owns the lease: the images ``work`` holds become the next owner's to adopt."""
        resume = self.job_dir(lease.job.id) / "work" / "resume"
        if work.is_dir() and not resume.exists():
            os.rename(work, resume)

    def _owns(self, db: Database, lease: Lease) -> bool:
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
                "UPDATE jobs SET status = ?, finished = ?, owner = NULL, lease_until = NULL, current = NULL, frames = NULL, "
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

    def _mark_failed(self, db: Database, job: Job, error: str) -> None:
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
    def drop_cancelled(self, lease: Lease) -> bool:
        """The worker holding a cancelled job gives it up: record and folder go. False if it no longer owns it."""
        with self.transaction() as db:
            if not self._owns(db, lease):
                return False
            db.execute("DELETE FROM jobs WHERE id = ?", (lease.job.id,))
        self.remove_folder(lease.job.id)
        return True

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
                               "current = NULL, frames = NULL, progress = NULL, attempts = attempts - ?, last_error = ? WHERE id = ?",
                               (0 if counted else 1, f"{why}{_in_hand(job)}", job.id))
            db.execute("DELETE FROM workers WHERE name = ?", (worker,))
        for job_id in dropped:
            self.remove_folder(job_id)
        return [row["id"] for row in rows]


def _in_hand(job: Job) -> str:
    """`` while processing NAME``, the image the job's worker had in hand, where it said."""
    return f" while processing {job.current}" if job.current else ""


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2).encode("utf-8"))
