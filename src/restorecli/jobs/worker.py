"""The worker loop: claim the oldest job, restore its images into a private folder, publish, repeat.

The pieces of a job's run (its lease renewer, its work folder, its options, its items, one image's result entry,
settling a setup error, publishing) are functions of their own, shared with the Ray pool's driver
(``restorecli.distributed``), which runs several jobs at once over remote actors."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import SetupError, UsageError
from ..options import RestoreOptions, model_key
from ..plan import InputItem
from .store import JobStore, Lease, queue_exists

if TYPE_CHECKING:  # the pipeline (torch) is imported with the first job: a worker on an empty queue needs none
    from ..pipeline import ItemResult, Restorer
    from .store import Job


@dataclass(frozen=True)
class WorkerOptions:
    once: bool = False  # drain the queue and exit (for cron)
    max_jobs: int | None = None
    max_seconds: float | None = None
    lease: float = 60.0  # seconds; renewed every lease/3 while the worker is alive
    poll: float = 2.0
    device: str | None = None  # overrides the jobs' device (one worker per GPU)
    max_attempts: int = 3
    # A job this machine could not run (weights, a device) is left to other workers this long before this one
    # tries it again (each try counts an attempt), so a lone worker fails it after its attempts, not at once
    setup_retry: float = 30.0


@dataclass
class WorkerReport:
    jobs: list[tuple[str, str]] = field(default_factory=list)  # (job id, outcome)
    stopped: bool = False
    storage_error: str | None = None  # why the worker stopped on its own: its disk is full or read-only
    # What this machine lacked for a job (weights, a device): the job was retried, then failed, and the worker went
    # on with the next; said at the end (exit 3), so a cron run shows it. Never a reason to stop.
    setup_error: str | None = None

    def noting(self, emit: Event) -> Event:
        """``emit``, also keeping in this report why the worker must stop (a storage error) or what this machine
        lacked (a setup error)."""

        def note(event: str, data: dict) -> None:
            if event == "storage_error":
                self.storage_error = data["error"]
            elif event == "setup_error":
                self.setup_error = data["error"]
            emit(event, data)

        return note

    @property
    def must_stop(self) -> bool:
        """Every later job would fail the same way (the worker's disk cannot take its outputs)."""
        return bool(self.storage_error)


Event = Callable[[str, dict], None]


def worker_name(pid: int | None = None) -> str:
    """How a worker process (this one, or ``pid`` on this machine) names itself in the queue."""
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"


@dataclass
class Stopping:
    """How a worker is asked to stop, from outside (signals, its server): ``stop`` ends its run after the image in
    hand, the job given back resumable; ``drain`` after the job in hand, claiming no more; ``abandon`` at once,
    between tiles (a grace period ran out), the image in hand dropped and the job given back."""

    stop: threading.Event = field(default_factory=threading.Event)
    drain: threading.Event = field(default_factory=threading.Event)
    abandon: threading.Event = field(default_factory=threading.Event)


class Schedule:
    """When a worker stops claiming: a stop signal (``stop``), a drain, or the ``--max-seconds`` deadline; and its
    wait between looks at an empty queue, cut short by either."""

    def __init__(self, options: WorkerOptions, stop: threading.Event, drain: threading.Event | None = None):
        self.stop, self.poll = stop, options.poll
        self.drain = drain or threading.Event()
        self.deadline = time.monotonic() + options.max_seconds if options.max_seconds else None

    def halted(self) -> bool:
        """Whether the job in hand is to be given back after its image in hand."""
        return self.stop.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)

    def claiming(self) -> bool:
        """Whether another job may be claimed."""
        return not self.halted() and not self.drain.is_set()

    def pause(self, seconds: float | None = None) -> None:
        wait = self.poll if seconds is None else seconds
        if self.deadline is not None:
            wait = max(min(wait, self.deadline - time.monotonic()), 0)
        end = time.monotonic() + wait
        while not self.stop.is_set() and not self.drain.is_set() and time.monotonic() < end:
            self.stop.wait(min(0.2, max(end - time.monotonic(), 0)))


def wait_for_queue(root: Path, options: WorkerOptions, schedule: Schedule) -> bool:
    """Whether ``root`` holds a queue to work: an absent one is an empty one, waited for (False once ``once`` or
    the schedule says to leave)."""
    while not queue_exists(root):
        if options.once or not schedule.claiming():
            return False
        schedule.pause()
    return True


class LeaseRenewer(threading.Thread):
    """Keeps a lease alive from its own database connection; sets ``lost`` when another worker took the job, and
    ``cancelled`` (looked at every ``CANCEL_POLL`` seconds) when someone asked to cancel it. Stop it with
    ``finish()``."""

    CANCEL_POLL = 1.0

    def __init__(self, root: Path, lease: Lease, seconds: float):
        super().__init__(daemon=True)
        self.root, self.lease, self.seconds = root, lease, seconds
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        store = JobStore(self.root)
        try:
            renew_at = time.monotonic() + self.seconds / 3
            while not self.done.wait(min(self.CANCEL_POLL, self.seconds / 3)):
                if store.cancel_asked(self.lease.job.id):
                    self.cancelled.set()
                if time.monotonic() < renew_at:
                    continue
                renew_at = time.monotonic() + self.seconds / 3
                if not store.renew(self.lease, self.seconds):
                    self.lost.set()
                    return
                store.beat(worker_name(), self.lease.job.id, self.seconds / 3)
        except Exception:  # the queue cannot be reached (its disk full, its database gone): the job is not ours
            self.lost.set()  # to finish; another worker takes it over once the lease runs out
        finally:
            store.close()

    @property
    def gone(self) -> bool:
        """The job is no longer this worker's to finish: taken over, or cancelled."""
        return self.lost.is_set() or self.cancelled.is_set()

    def finish(self) -> None:
        self.done.set()
        self.join()


def job_items(job: Job, job_dir: Path) -> tuple[list[InputItem], dict[str, str]]:
    """The job's inputs as batch items (outputs named as submitted), and each stored copy's path -> the name it
    was submitted under."""
    stored = {str(job_dir / "inputs" / i["stored"]): i["original_filename"] for i in job.inputs}
    return [InputItem(path, Path(i["stored"])) for path, i in zip(stored, job.inputs)], stored


def result_entry(item: ItemResult, original: str, job_dir: Path, work: Path, root: Path) -> dict:
    """One input's entry in the job's results (``result.json``, progress): its output relative to the queue, as
    it will be once published, and errors naming the input as it was submitted."""
    output = None
    if item.output and item.status in ("ok", "skipped"):
        output = (job_dir / "outputs" / Path(item.output).relative_to(work)).relative_to(root).as_posix()
    # an error names the input by the name it was submitted under, not the queue's copy of it
    error = item.error.replace(item.input, original) if item.error else None
    return {"original_filename": original, "output": output, "status": "ok" if item.status == "skipped" else item.status,
            "error": error, "in_size": list(item.in_size) if item.in_size else None,
            "out_size": list(item.out_size) if item.out_size else None, "seconds": item.seconds, "faces": item.faces}


class SetAside:
    """The jobs this worker (or pool) could not run for what its machine lacks, each left to other workers for
    ``seconds`` before this one claims it again: ``claim(skip=set_aside.ids())``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._until: dict[str, float] = {}

    def add(self, job_id: str) -> None:
        self._until[job_id] = time.monotonic() + self.seconds

    def ids(self) -> list[str]:
        now = time.monotonic()
        self._until = {job_id: until for job_id, until in self._until.items() if until > now}
        return list(self._until)


def settle_setup_error(store: JobStore, lease: Lease, work: Path, exc: SetupError | UsageError,
                       emit: Event, max_attempts: int, set_aside: SetAside) -> str:
    """A job whose models cannot be loaded: failed at once where its own options cannot run anywhere (a damaged
    checkpoint, an unknown name). Where this machine lacks what it needs (weights not installed, no such device),
    ``setup_error`` is emitted and the job is queued again with the attempt counted, for a worker that has it, and
    failed with the reason once ``max_attempts`` are spent: a job never blocks the queue, and its worker goes on
    with the next one, leaving this one aside (``set_aside``) for a while. Returns the outcome (failed, retry or
    lost)."""
    if isinstance(exc, UsageError) or not exc.of_this_machine:  # the job's own options cannot run anywhere
        return "failed" if store.fail(lease, str(exc)) else "lost"
    emit("setup_error", {"job_id": lease.job.id, "error": str(exc)})
    if not store.retry_later(lease, str(exc), max_attempts, work=work, tried="could not be run by a worker"):
        return "lost"
    job = store.get(lease.job.id)
    if job is not None and job.status == "failed":
        return "failed"
    set_aside.add(lease.job.id)
    return "retry"


def give_back(store: JobStore, lease: Lease, work: Path, error: str | None = None) -> str:
    """Release the job, resumable with what ``work`` holds: ``released``, or ``lost`` if another worker has it."""
    return "released" if store.release(lease, work, error=error) else "lost"


def run_job(store: JobStore, lease: Lease, options: WorkerOptions, restorers: dict[tuple, Restorer],
            halted: Callable[[], bool], emit: Event, abandon: threading.Event | None = None,
            set_aside: SetAside | None = None) -> str:
    """Process one claimed job; returns its outcome: completed, failed, released, lost, cancelled or retry.
    ``halted`` is asked between images; when it says yes the job is given back, resumable. ``abandon`` is looked
    at between tiles: once set, the image in hand is dropped and the job given back. A job this machine cannot run
    goes to ``set_aside``."""
    abandon = abandon or threading.Event()
    set_aside = set_aside or SetAside(options.setup_retry)
    from ..pipeline import Restorer, restore_batch

    job = lease.job
    job_dir = store.job_dir(job.id)
    if refuse_unsound_folder(store, lease):
        return "failed"
    work = work_folder(job_dir, lease.token)
    items, stored = job_items(job, job_dir)
    restore = job_restore_options(job.options, work, options.device)
    key = model_key(restore)  # jobs that agree on it share one set of loaded networks
    renewer = LeaseRenewer(store.root, lease, options.lease)
    renewer.start()
    try:
        try:
            if key not in restorers:
                restorers[key] = Restorer.from_options(restore)
        except (SetupError, UsageError) as exc:
            return settle_setup_error(store, lease, work, exc, emit, options.max_attempts, set_aside)

        finished: list[dict] = []
        in_hand: dict[str, str | None] = {"model": None, "reading": None}  # the image the model runs, the next

        def on_progress(event: str, payload: object) -> None:
            if event in ("item", "reading"):  # recorded first, so a crash in its decoder or model names it
                name = stored.get(str(payload), str(payload))
                in_hand["model" if event == "item" else "reading"] = name
                model, ahead = in_hand["model"], in_hand["reading"]
                current = model if ahead in (None, model) else f"{model} (reading {ahead} ahead)" if model else ahead
                store.renew(lease, options.lease, current=current)
                if event == "item":
                    emit("image", {"job_id": job.id, "input": name})
            elif event == "done":
                item: ItemResult = payload  # type: ignore[assignment]
                finished.append(result_entry(item, stored.get(item.input, item.input), job_dir, work, store.root))
                store.record(lease, finished)

        try:
            batch = restore_batch([], restore, on_progress=on_progress, restorer=restorers[key], items=items,
                                  should_stop=lambda: halted() or renewer.gone or abandon.is_set(),
                                  should_abandon=lambda: renewer.gone or abandon.is_set())
        except Exception as exc:  # an unexpected failure: count the attempt, let another try
            store.retry_later(lease, f"{type(exc).__name__}: {exc}", options.max_attempts)
            return "retry"
    finally:
        renewer.finish()
    if renewer.cancelled.is_set() and not renewer.lost.is_set():
        shutil.rmtree(work, ignore_errors=True)
        return "cancelled" if store.drop_cancelled(lease) else "lost"
    if renewer.gone:
        shutil.rmtree(work, ignore_errors=True)
        return "lost"
    if batch.halted:  # the disk is full or read-only: give the job back with what it finished, resumable
        emit("storage_error", {"job_id": job.id, "error": batch.halted})
        return give_back(store, lease, work)
    if len(batch.items) < len(stored):  # stopped between images
        return give_back(store, lease, work)
    return publish_results(store, lease, work, finished, batch.setup)


def refuse_unsound_folder(store: JobStore, lease: Lease) -> bool:
    """Fail the claimed job, alone and saying what was wrong, where its folder is not what restorecli made (a
    symbolic link planted in it): True if it was failed. Nothing is read, written or published through a link."""
    problem = store.folder_problem(lease.job.id)
    if problem is None:
        return False
    store.fail(lease, f"the job's folder is not what restorecli made: {problem}")
    return True


def work_folder(job_dir: Path, token: str) -> Path:
    """This lease's private folder for the job's outputs: the images a worker that stopped politely finished are
    taken over; folders of owners whose lease expired are removed."""
    work = job_dir / "work" / token
    resume = job_dir / "work" / "resume"
    if resume.is_dir() and not resume.is_symlink():
        os.rename(resume, work)
    for other in (job_dir / "work").glob("*") if (job_dir / "work").is_dir() else []:
        if other != work:
            shutil.rmtree(other, ignore_errors=True)
    return work


def job_restore_options(stored: dict, work: Path, device: str | None) -> RestoreOptions:
    """The job's restore options, writing into ``work``, on this worker's ``device`` where it has one."""
    known = {f.name for f in fields(RestoreOptions)}  # a job queued by another version may carry other fields
    restore = RestoreOptions(**{k: v for k, v in stored.items() if k in known}, output_dir=str(work))
    return replace(restore, device=device) if device else restore


def publish_results(store: JobStore, lease: Lease, work: Path, results: list[dict], setup: dict | None = None) -> str:
    """Move the job's outputs into place and record its results (one entry per input, in order) and ``setup``
    (the model, device and precision that ran); returns its outcome: completed, failed (every input failed), or
    lost (another worker owns the job now)."""
    errors = [r for r in results if r["status"] == "error"]
    status = "failed" if errors and len(errors) == len(results) else "completed"
    error = "; ".join(r["error"] for r in errors) if errors else None
    if not store.publish(lease, work, results, status, error, setup):
        shutil.rmtree(work, ignore_errors=True)
        return "lost"
    return status


def run_worker(root: Path, options: WorkerOptions, stop: threading.Event | Stopping,
               emit: Event | None = None) -> WorkerReport:
    """Claim and process jobs until the queue is empty (``once``), a limit is reached, or ``stop`` is set (a
    ``Stopping`` also says to drain or to abandon)."""
    emit = emit or (lambda event, data: None)
    stopping = stop if isinstance(stop, Stopping) else Stopping(stop=stop)
    stop = stopping.stop
    report = WorkerReport()
    schedule = Schedule(options, stop, stopping.drain)
    if not wait_for_queue(root, options, schedule):
        report.stopped = stop.is_set()
        return report
    store = JobStore(root)
    restorers: dict[tuple, Restorer] = {}  # each model loaded once, reused across jobs
    set_aside = SetAside(options.setup_retry)
    name = worker_name()
    note = report.noting(emit)
    try:
        while schedule.claiming():
            if options.max_jobs is not None and len(report.jobs) >= options.max_jobs:
                break
            store.beat(name, None, max(options.poll, options.lease / 3))
            lease = store.claim(options.lease, options.max_attempts, name, skip=set_aside.ids())
            if lease is None:
                if options.once:
                    break
                schedule.pause()
                continue
            emit("claimed", {"job_id": lease.job.id, "attempt": lease.job.attempts})
            outcome = run_job(store, lease, options, restorers, schedule.halted, note, stopping.abandon, set_aside)
            report.jobs.append((lease.job.id, outcome))
            emit("finished", {"job_id": lease.job.id, "outcome": outcome})
            if report.must_stop:
                break
        report.stopped = stop.is_set() or stopping.drain.is_set()
        return report
    finally:
        store.retire(name)
        store.close()
