"""What the queue holds: counts, running workers and every job's progress, or one job's state and results; and
which job a (short) id given by a person names."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import UsageError
from .leases import PREPARING
from .store import JOB_STATUSES, Job, JobStore, queue_exists

SHORT_ID = 8  # hex digits of an id's random part the CLI shows, more where two jobs share them


def _random_part(job_id: str) -> str:
    """The id's random hex, after its date and time (``20261207-013141-ad5f30...``)."""
    return job_id.rsplit("-", 1)[-1]


def short_ids(ids: list[str]) -> dict[str, str]:
    """Each id's short form: the first ``SHORT_ID`` digits of its random part, or as many more as tell it from
    every other id here. Given back to a command, it names the job (``find_job``)."""
    shown = {}
    for job_id in ids:
        tail = _random_part(job_id)
        length = SHORT_ID
        while length < len(tail) and any(other != job_id and _random_part(other).startswith(tail[:length])
                                         for other in ids):
            length += 1
        shown[job_id] = tail[:length]
    return shown


def find_job(store: JobStore, job_id: str) -> Job:
    """The job ``job_id`` names: its whole id, or the start of it or of its random part (the short form status
    shows) that only one job's id has, as git takes a hash's start. A usage error says none matches, or names
    the jobs that do."""
    job = store.get(job_id)
    if job is not None:
        return job
    matches = [job for job in store.jobs() if job_id and (job.id.startswith(job_id)
                                                          or _random_part(job.id).startswith(job_id))]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no job '{job_id}' in {store.root}")
    named = ", ".join(job.id for job in matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
    raise UsageError(f"'{job_id}' names {len(matches)} jobs in {store.root}: {named}; give more of the id")


def _done(job: Job) -> int:
    """Images of ``job`` finished (restored, skipped or failed): all of a finished job's, a running one's so far."""
    return len(job.inputs) if job.status in ("completed", "failed") else job.done


def _step(job: Job, now: float) -> dict | None:
    """The long step (a conversion, a probe) a running job's worker waits on before its images, ``{"text",
    "elapsed"}`` (seconds since it began), else None."""
    prefix, current = f"{PREPARING}: ", job.current or ""
    if job.status != "processing" or job.step_started is None or not current.startswith(prefix):
        return None
    return {"text": current[len(prefix):], "elapsed": round(max(now - job.step_started, 0.0), 1)}


def queue_overview(root: Path) -> dict:
    """Counts per status and, for each job in progress, which worker has it and what it is doing. A queue that
    does not exist yet is an empty one."""
    if not queue_exists(root):
        return {"queue": str(root), "counts": dict.fromkeys(JOB_STATUSES, 0),
                "running": [], "jobs": []}
    store = JobStore(root)
    try:
        now = time.time()
        running = [
            {"job_id": job.id, "worker": job.worker, "current": job.current, "attempt": job.attempts,
             "lease_expires_in": round((job.lease_until or now) - now, 1),
             "stale": bool(job.lease_until and job.lease_until < now), "step": _step(job, now)}
            for job in store.jobs("processing")
        ]
        jobs = store.jobs()
        short = short_ids([job.id for job in jobs])
        listed = [{"job_id": job.id, "short_id": short[job.id], "status": job.status, "done": _done(job),
                   "total": len(job.inputs)} for job in jobs]
        return {"queue": str(root), "counts": store.counts(), "running": running, "jobs": listed}
    finally:
        store.close()


def job_status(root: Path, job_id: str) -> dict:
    """``{"job_id", "status", "queue_position", "done", "total", "results"}`` of the job ``job_id`` names
    (``find_job``); output paths are relative to the queue. A running job's results are those its worker has
    recorded so far, the others pending."""
    if not queue_exists(root):
        raise UsageError(f"no job '{job_id}' in {root}: no job has been submitted there yet")
    store = JobStore(root)
    try:
        job = find_job(store, job_id)
        status = job.status
        result_file = store.job_dir(job.id) / "result.json"
        setup = None
        if status in ("completed", "failed") and result_file.is_file():
            recorded = json.loads(result_file.read_text())
            setup = recorded.get("setup")  # the model, device and precision that ran
            results = [{k: r.get(k) for k in ("original_filename", "output", "status", "error")}
                       for r in recorded["results"]]
        else:
            results = _so_far(job)
        return {"job_id": job.id, "status": status, "queue_position": store.position(job), "attempts": job.attempts,
                "done": _done(job), "total": len(job.inputs),
                # a queued job's error says why its last try did not finish it (a crash, a machine that lacked
                # its weights or device)
                "error": job.last_error if status in ("failed", "queued") else None, "setup": setup,
                # what its worker does now (an image, or preparing: a step of loading its models), while it runs
                "current": job.current if status == "processing" else None, "step": _step(job, time.time()),
                # the video in hand: {"input": its name, "done", "total"}
                "frames": job.frames if status == "processing" else None,
                "results": results}
    finally:
        store.close()


def _so_far(job: Job) -> list[dict]:
    """An unfinished job's results: each input's recorded entry where its worker has finished it (matched by the
    name it was submitted under, in order), else pending."""
    recorded: dict[str, list[dict]] = {}
    for entry in job.progress or []:
        recorded.setdefault(entry["original_filename"], []).append(entry)
    results = []
    for item in job.inputs:
        entries = recorded.get(item["original_filename"])
        entry = entries.pop(0) if entries else {"status": "pending", "error": None}
        # no output yet: it lies in the worker's own folder until the whole job is published
        results.append({"original_filename": item["original_filename"], "output": None, "status": entry["status"],
                        "error": entry["error"]})
    return results
