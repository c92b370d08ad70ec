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

import os
import secrets
import socket
import time
from pathlib import Path

from ..errors import SetupError, UsageError
from .database import DB_NAME
from .leases import JobLeases
from .records import JOB_STATUSES, Job, JobStatus, Lease

__all__ = ["DB_NAME", "DEFAULT_QUEUE", "JOB_STATUSES", "QUEUE_ENV", "Job", "JobStatus", "JobStore", "Lease",
           "new_job_id", "queue_dir", "queue_exists", "worker_name"]

QUEUE_ENV = "RESTORECLI_QUEUE"
DEFAULT_QUEUE = "restorecli-queue"


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


def worker_name(pid: int | None = None) -> str:
    """How a worker process (this one, or ``pid`` on this machine) names itself in the queue."""
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"


class JobStore(JobLeases):
    """The queue: its job records (``records.JobRecords``), the transitions a lease fences (``leases.JobLeases``),
    and the heartbeats of the workers working it. Every method is one short transaction; safe across processes."""

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


def new_job_id() -> str:
    """Sortable by creation time, unique across processes, and not guessable: 128 random bits, since knowing an id
    is what lets someone read a job's results through ``restorecli serve``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(16)
