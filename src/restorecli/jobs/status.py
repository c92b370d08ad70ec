"""What the queue holds: counts and running workers, or one job's state and results."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import UsageError
from .store import JOB_STATUSES, JobStore, queue_exists


def queue_overview(root: Path) -> dict:
    """Counts per status and, for each job in progress, which worker has it and what it is doing. A queue that
    does not exist yet is an empty one."""
    if not queue_exists(root):
        return {"queue": str(root), "counts": dict.fromkeys(JOB_STATUSES, 0),
                "running": []}
    store = JobStore(root)
    try:
        now = time.time()
        running = [
            {"job_id": job.id, "worker": job.worker, "current": job.current, "attempt": job.attempts,
             "lease_expires_in": round((job.lease_until or now) - now, 1),
             "stale": bool(job.lease_until and job.lease_until < now)}
            for job in store.jobs("processing")
        ]
        return {"queue": str(root), "counts": store.counts(), "running": running}
    finally:
        store.close()


def job_status(root: Path, job_id: str) -> dict:
    """``{"job_id", "status", "queue_position", "results"}``; output paths are relative to the queue."""
    if not queue_exists(root):
        raise UsageError(f"no job '{job_id}' in {root}: no job has been submitted there yet")
    store = JobStore(root)
    try:
        job = store.get(job_id)
        if job is None:
            raise UsageError(f"no job '{job_id}' in {root}")
        status = job.status
        result_file = store.job_dir(job.id) / "result.json"
        setup = None
        if status in ("completed", "failed") and result_file.is_file():
            recorded = json.loads(result_file.read_text())
            setup = recorded.get("setup")  # the model, device and precision that ran
            results = [{k: r.get(k) for k in ("original_filename", "output", "status", "error")}
                       for r in recorded["results"]]
        else:
            results = [{"original_filename": i["original_filename"], "output": None, "status": "pending",
                        "error": None} for i in job.inputs]
        return {"job_id": job.id, "status": status, "queue_position": store.position(job), "attempts": job.attempts,
                # a queued job's error says why its last try did not finish it (a crash, a machine that lacked
                # its weights or device)
                "error": job.last_error if status in ("failed", "queued") else None, "setup": setup,
                "results": results}
    finally:
        store.close()
