"""One claimed job's lifecycle, the same for the local worker (``worker.py``) and the Ray pool's driver
(``restorecli.distributed``): claim, then hold the lease (``LeaseRenewer``), record each image's result as it
finishes, and settle once: published (completed or failed), failed, retried later, given back resumable, dropped
when cancelled, or lost to another worker. A job this machine lacks what it needs for is left aside (``SetAside``)
for other workers a while. How the job's images are restored is the caller's business."""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import SetupError, UsageError
from ..options import RestoreOptions
from ..plan import InputItem
from .store import JobStore, Lease, worker_name

if TYPE_CHECKING:
    from ..plan import ItemResult
    from .store import Job

Event = Callable[[str, dict], None]


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
        if self.ident is not None:  # never started: a job refused at its claim
            self.join()


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


class JobRun:
    """A job in a worker's hand, from its claim (``JobRun.claim``) to its one settling (``outcome`` set, the job
    counted in the worker's report and ``finished`` emitted). Its images are written into ``work``, the lease's
    private folder, with ``restore`` options; ``finish`` records each image's result as progress."""

    def __init__(self, store: JobStore, lease: Lease, options: WorkerOptions, report: WorkerReport, emit: Event,
                 set_aside: SetAside):
        self.store, self.lease, self.options = store, lease, options
        self.report, self.emit, self.set_aside = report, emit, set_aside
        self.job_dir = store.job_dir(lease.job.id)
        self.work = self.job_dir / "work" / lease.token
        self.items, self.stored = job_items(lease.job, self.job_dir)
        self.restore = job_restore_options(lease.job.options, self.work, options.device)
        self.results: list[dict | None] = [None] * len(self.items)
        self._index = {item.source: index for index, item in enumerate(self.items)}
        self.renewer = LeaseRenewer(store.root, lease, options.lease)
        self.outcome: str | None = None  # set once the job is settled
        self._frames_told: tuple[float, tuple | None] = (0.0, None)  # when, and which frame, status was last told

    @classmethod
    def claim(cls, store: JobStore, options: WorkerOptions, worker: str, set_aside: SetAside,
              report: WorkerReport, emit: Event) -> JobRun | None:
        """Claim the oldest runnable job not set aside and take it in hand (its lease renewed from now on); None
        where there is none. A job whose folder is not sound comes back settled (failed)."""
        lease = store.claim(options.lease, options.max_attempts, worker, skip=set_aside.ids())
        if lease is None:
            return None
        emit("claimed", {"job_id": lease.job.id, "attempt": lease.job.attempts})
        run = cls(store, lease, options, report, emit, set_aside)
        run._begin()
        return run

    def _begin(self) -> None:
        """Fail the job, alone and saying what was wrong, where its folder is not what restorecli made (a symbolic
        link planted in it): nothing is read, written or published through a link. Else adopt what an earlier
        owner finished and start renewing the lease."""
        problem = self.store.folder_problem(self.job_id)
        if problem is not None:
            self.store.fail(self.lease, f"the job's folder is not what restorecli made: {problem}")
            self.settle("failed")
            return
        work_folder(self.job_dir, self.lease.token)
        self.renewer.start()

    @property
    def job_id(self) -> str:
        return self.lease.job.id

    @property
    def gone(self) -> bool:
        """The job is no longer this worker's to finish: taken over, or cancelled."""
        return self.renewer.gone

    def original(self, source: str) -> str:
        """The name an input (its stored copy's path) was submitted under."""
        return self.stored.get(source, source)

    # ------------------------------------------------------------------ progress

    def working_on(self, current: str, starting: str | None = None, frames: dict | None = None) -> None:
        """Say what is in hand (``current``, for status; ``frames``: the frames done of the video it is), renewing
        the lease; ``starting``: an image whose turn has come, told as an ``image`` event."""
        self.store.renew(self.lease, self.options.lease, current=current, frames=frames)
        if starting is not None:
            self.emit("image", {"job_id": self.job_id, "input": starting})

    def working_on_frames(self, name: str, done: int, total: int | None) -> None:
        """Say which frame of the video ``name`` is in hand (``done`` of ``total``, where known), for status: at
        most once a second (each is a database write), except the last frame, and only where it changed."""
        told = (name, done, total)
        if told == self._frames_told[1] or (time.monotonic() - self._frames_told[0] < 1.0 and done != total):
            return
        self._frames_told = (time.monotonic(), told)
        self.working_on(f"{name} (frame {done}{f' of {total}' if total else ''})",
                        frames={"input": name, "done": done, "total": total})

    def finish(self, item: ItemResult, index: int | None = None) -> None:
        """Record an image's result (the input at ``index``, by default the one it names, else the next without
        one) in the job's progress."""
        if index is None:
            index = self._index[item.input] if item.input in self._index else self.results.index(None)
        self.results[index] = result_entry(item, self.original(item.input), self.job_dir, self.work,
                                           self.store.root)
        self.store.record(self.lease, self.progress())

    def progress(self) -> list[dict]:
        """The results recorded so far, in the inputs' order."""
        return [entry for entry in self.results if entry is not None]

    @property
    def all_finished(self) -> bool:
        return all(entry is not None for entry in self.results)

    # ------------------------------------------------------------------ settling

    def settle(self, outcome: str) -> str:
        """The job leaves this worker's hand with ``outcome``: its lease is no longer renewed, and the worker's
        report counts it."""
        self.renewer.finish()
        self.outcome = outcome
        self.report.jobs.append((self.job_id, outcome))
        self.emit("finished", {"job_id": self.job_id, "outcome": outcome})
        return outcome

    def publish(self, setup: dict | None = None) -> str:
        """Move the job's outputs into place and record its results (one entry per input, in order) and ``setup``
        (the model, device and precision that ran): completed, failed (every input failed), or lost (another
        worker owns the job now)."""
        self.renewer.finish()  # no renewal past the publish, whose owner check fences a lease lost by now
        results = self.progress()
        errors = [r for r in results if r["status"] == "error"]
        status = "failed" if errors and len(errors) == len(results) else "completed"
        error = "; ".join(r["error"] for r in errors) if errors else None
        if not self.store.publish(self.lease, self.work, results, status, error, setup):
            shutil.rmtree(self.work, ignore_errors=True)
            return self.settle("lost")
        return self.settle(status)

    def give_back(self, error: str | None = None, quietly: bool = False) -> str:
        """Release the job, resumable with what ``work`` holds: ``released``, or ``lost`` if another worker has
        it. ``error`` says why (for status); ``quietly``: after a failure of the worker itself, not reported."""
        self.renewer.finish()
        outcome = "released" if self.store.release(self.lease, self.work, error=error) else "lost"
        if quietly:
            self.outcome = outcome
            return outcome
        return self.settle(outcome)

    def drop(self) -> str:
        """The job is gone from this worker (``gone``): its outputs are dropped, and a cancelled job's record and
        folder removed; ``cancelled``, or ``lost`` where another worker took it over."""
        self.renewer.finish()
        shutil.rmtree(self.work, ignore_errors=True)
        if not self.renewer.lost.is_set() and self.store.drop_cancelled(self.lease):
            return self.settle("cancelled")
        return self.settle("lost")

    def retry_later(self, error: str) -> str:
        """After a failure nobody foresaw: queued again with the attempt counted, or failed once its attempts are
        spent."""
        self.store.retry_later(self.lease, error, self.options.max_attempts)
        return self.settle("retry")

    def fail_setup(self, exc: SetupError | UsageError) -> str:
        """The job's models cannot be loaded: failed at once where its own options cannot run anywhere (a damaged
        checkpoint, an unknown name). Where this machine lacks what it needs (weights not installed, no such
        device), ``setup_error`` is emitted and the job is queued again with the attempt counted, for a worker
        that has it, and failed with the reason once its attempts are spent: a job never blocks the queue, and
        this worker goes on with the next one, leaving this one aside for a while. Returns the outcome (failed,
        retry or lost)."""
        if isinstance(exc, UsageError) or not exc.of_this_machine:  # the job's own options cannot run anywhere
            return self.settle("failed" if self.store.fail(self.lease, str(exc)) else "lost")
        self.emit("setup_error", {"job_id": self.job_id, "error": str(exc)})
        if not self.store.retry_later(self.lease, str(exc), self.options.max_attempts, work=self.work,
                                      tried="could not be run by a worker"):
            return self.settle("lost")
        job = self.store.get(self.job_id)
        if job is not None and job.status == "failed":
            return self.settle("failed")
        self.set_aside.add(self.job_id)
        return self.settle("retry")


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
            "out_size": list(item.out_size) if item.out_size else None, "seconds": item.seconds, "faces": item.faces,
            **({"colorized": item.colorized} if item.colorized is not None else {})}  # with --colorize only


def work_folder(job_dir: Path, token: str) -> Path:
    """This lease's private folder for the job's outputs: the images a worker that stopped politely finished are
    taken over; of the folders of owners whose lease expired (killed, or stalled), the videos' finished segments
    are taken over and the rest removed, unless a live process of this host still writes segments there (a
    stalled owner): its folder is left to it, which drops it once it finds its lease lost."""
    from ..video.segments import adopt_parts, parts_writer  # stdlib and numpy: only where a job is claimed

    work = job_dir / "work" / token
    resume = job_dir / "work" / "resume"
    if resume.is_dir() and not resume.is_symlink():
        os.rename(resume, work)
    for other in (job_dir / "work").glob("*") if (job_dir / "work").is_dir() else []:
        if other == work or other.is_symlink() or parts_writer(other) is not None:
            continue
        adopt_parts(other, work)
        shutil.rmtree(other, ignore_errors=True)
    return work


def job_restore_options(stored: dict, work: Path, device: str | None) -> RestoreOptions:
    """The job's restore options, writing into ``work``, on this worker's ``device`` where it has one."""
    known = {f.name for f in fields(RestoreOptions)}  # a job queued by another version may carry other fields
    restore = RestoreOptions(**{k: v for k, v in stored.items() if k in known}, output_dir=str(work))
    return replace(restore, device=device) if device else restore
