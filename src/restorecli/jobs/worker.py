"""The worker loop: claim the oldest job, restore its images into a private folder, publish, repeat.

A claimed job's lifecycle (lease, progress, settling) is a ``JobRun`` (``run.py``), shared with the Ray pool's
driver (``restorecli.distributed``), which runs several jobs at once over remote actors; here its images go
through one local batch (``restore_batch``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import SetupError, UsageError
from ..options import model_key
from ..progress import Step, also_reporting
from .run import Event, JobRun, SetAside, WorkerOptions, WorkerReport
from .store import JobStore, queue_exists, worker_name

if TYPE_CHECKING:  # the pipeline (torch) is imported with the first job: a worker on an empty queue needs none
    from ..pipeline import Restorer

__all__ = ["Schedule", "Stopping", "WorkerOptions", "WorkerReport", "run_job", "run_worker", "wait_for_queue",
           "worker_name"]  # worker_name: the store's, as the supervisor asks it of the worker


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


class _BatchProgress:
    """The ``restore_batch`` progress of a job's images, told to its ``JobRun``: which image the model runs and
    which is read ahead (status's ``current``), and each image's result as it is finished."""

    def __init__(self, run: JobRun):
        self.run = run
        self.model: str | None = None
        self.reading: str | None = None

    def __call__(self, event: str, payload: object) -> None:
        if event in ("item", "reading"):  # recorded first, so a crash in its decoder or model names it
            name = self.run.original(str(payload))
            if event == "item":
                self.model = name
            else:
                if self.model is None and self.reading is not None:  # the second image's reading starts as the
                    self.model = self.reading  # model's thread takes the first, before its "item": it has the first
                self.reading = name
            model, ahead = self.model, self.reading
            current = model if ahead in (None, model) else f"{model} (reading {ahead} ahead)" if model else ahead
            self.run.working_on(current or name, starting=name if event == "item" else None)
        elif event == "frames" and self.model is not None:  # a video's: (done, total, fps)
            done, total, _fps = payload  # type: ignore[misc]
            self.run.working_on_frames(self.model, done, total)
        elif event == "done":
            self.run.finish(payload)  # type: ignore[arg-type]


class _Preparing:
    """A listener (``progress.also_reporting``) that records in the job in hand the long step (a conversion, a
    probe, a model's loading) its models wait on, with when it began, so its status says what the worker does
    before the first image; an inner step's end gives the outer one back. Only steps of the thread that loads
    the models are recorded (the queue's connection is that thread's)."""

    def __init__(self, run: JobRun):
        self.run = run
        self.thread = threading.current_thread()
        self.running: list[tuple[int, str, float]] = []  # (the step's id, what it does, when it began)

    def __call__(self, phase: str, step: Step) -> None:
        if phase == "update" or threading.current_thread() is not self.thread:
            return
        if phase == "start":
            self.running.append((id(step), step.what, time.time()))
        else:
            self.running = [entry for entry in self.running if entry[0] != id(step)]
        _, what, started = self.running[-1] if self.running else (None, None, None)
        self.run.store.preparing(self.run.lease, self.run.options.lease, what, started)


def run_job(run: JobRun, restorers: dict[tuple, Restorer], halted: Callable[[], bool],
            abandon: threading.Event | None = None) -> str:
    """Restore the images of a job in hand and settle it; returns its outcome: completed, failed, released, lost,
    cancelled or retry. ``halted`` is asked between images; when it says yes the job is given back, resumable.
    ``abandon`` is looked at between tiles: once set, the image in hand is dropped and the job given back."""
    abandon = abandon or threading.Event()
    from ..pipeline import Restorer, restore_batch

    key = model_key(run.restore)  # jobs that agree on it share one set of loaded networks
    try:
        if key not in restorers:
            with also_reporting(_Preparing(run)):  # status says the first job's conversions and probes
                restorers[key] = Restorer.from_options(run.restore)
    except (SetupError, UsageError) as exc:
        return run.fail_setup(exc)
    try:
        batch = restore_batch([], run.restore, on_progress=_BatchProgress(run), restorer=restorers[key],
                              items=run.items, should_stop=lambda: halted() or run.gone or abandon.is_set(),
                              should_abandon=lambda: run.gone or abandon.is_set())
    except Exception as exc:  # an unexpected failure: count the attempt, let another try
        return run.retry_later(f"{type(exc).__name__}: {exc}")
    run.renewer.finish()
    if run.gone:
        return run.drop()
    if batch.halted:  # the disk is full or read-only: give the job back with what it finished, resumable
        run.emit("storage_error", {"job_id": run.job_id, "error": batch.halted})
        return run.give_back()
    if len(batch.items) < len(run.items):  # stopped between images
        return run.give_back()
    return run.publish(batch.setup)


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
            run = JobRun.claim(store, options, name, set_aside, report, note)
            if run is None:
                if options.once:
                    break
                schedule.pause()
                continue
            if run.outcome is None:  # not refused at its claim
                run_job(run, restorers, schedule.halted, stopping.abandon)
            if report.must_stop:
                break
        report.stopped = stop.is_set() or stopping.drain.is_set()
        return report
    finally:
        store.retire(name)
        store.close()
