"""Cancelling a job, for ``restorecli cancel`` and the server's ``DELETE /jobs/{id}`` alike: a queued or finished
job is removed at once; a running one is marked, its worker drops it at its next tile (nothing partial is kept),
and the caller may wait for that."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .status import find_job
from .store import JobStatus, JobStore, queue_exists

CANCEL_POLL = 0.1  # seconds between looks at a running job being cancelled


@dataclass(frozen=True)
class Cancelled:
    job_id: str
    was: JobStatus
    deleted: bool  # False: the job was running, and its worker had not dropped it yet when the wait ended


def cancel_job(store: JobStore, job_id: str, wait: float) -> Cancelled | None:
    """Remove the job (record and folder), or, where a worker is running it, ask the worker to drop it and wait up to
    ``wait`` seconds for it to do so. None for no such job."""
    was = store.withdraw(job_id)
    if was is None:
        return None
    if was != "processing":
        store.remove_folder(job_id)
        return Cancelled(job_id, was, True)
    deadline = time.monotonic() + wait
    while store.get(job_id) is not None:
        if time.monotonic() >= deadline:
            return Cancelled(job_id, was, False)
        time.sleep(CANCEL_POLL)
    return Cancelled(job_id, was, True)


def cancel_in_queue(root: Path, job_id: str, wait: float) -> Cancelled:
    """``cancel_job`` for a person at the command line: the job ``job_id`` names in the queue at ``root`` (its id,
    or a start of it only one job has), queued or running. Raises ``UsageError`` where the queue holds no such job,
    or the job has finished (``prune`` removes those)."""
    if not queue_exists(root):
        raise UsageError(f"no job '{job_id}' in {root}: the queue is empty")
    store = JobStore(root)
    try:
        found = find_job(store, job_id)
        if found.status in ("completed", "failed"):
            raise UsageError(f"job {found.id} has already {found.status}: nothing to cancel (restorecli prune "
                             "removes finished jobs)")
        done = cancel_job(store, found.id, wait)
    finally:
        store.close()
    if done is None:  # it went between the look and the cancel
        raise UsageError(f"no job '{job_id}' in {root}")
    return done
