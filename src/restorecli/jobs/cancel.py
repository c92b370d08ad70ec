"""Cancelling a job, for ``restorecli cancel`` and the server's ``DELETE /jobs/{id}`` alike: a queued or finished
job is removed at once; a running one is marked, its worker drops it at its next tile (nothing partial is kept),
and the caller may wait for that."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .store import JobStatus, JobStore

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
