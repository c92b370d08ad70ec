"""The Ray pool's driver, ``restorecli worker --ray``: the one process on the queue's machine that claims jobs, holds
and renews their leases as the local worker does, and keeps a pool of Ray actors (``actor.RestoreActor``) busy with
the jobs' images, anywhere in the cluster.

A job's images are spread over the actors, and further jobs are claimed while an actor would otherwise be idle.
Each actor holds up to ``--actor-images`` images at once (default 3: one decoding, one in its model, one encoding,
as a local batch pipelines them), so its model never waits for the host: the driver reads the input's bytes and
plans its output (``plan.OutputPlanner``, as a local batch does), the actor returns the output's bytes, and the
driver writes them atomically into the lease's private work folder. A job is published (``JobStore.publish``, with
its owner-token fencing) once every image has its result: no output appears twice or half-written, whatever the
cluster does.

Faults:
- an actor that dies (SIGKILL, out of memory, its node lost) is restarted by Ray (``max_restarts``); the images it
  had in hand go round again, and the restarted actor takes work again once it answers a probe;
- an image sent again after a death is restored alone, on an actor holding nothing else, so an image that kills
  its actor takes no neighbour with it twice; one in hand at ``--max-attempts`` of its actor's deaths fails alone
  (an error in the job's results);
- a driver that dies stops renewing its leases, and any worker, local or Ray, takes the jobs over once they expire.

Ray is imported only when the first job is claimed: a worker on an empty queue starts no Ray instance.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ImageError, RestoreCliError, SetupError, UsageError
from ..files import check_output_folder, remove_abandoned_temporaries, write_atomic
from ..jobs.store import JobStore, Lease
from ..jobs.worker import (
    Event,
    LeaseRenewer,
    Schedule,
    SetAside,
    Stopping,
    WorkerOptions,
    WorkerReport,
    give_back,
    job_items,
    job_restore_options,
    publish_results,
    refuse_unsound_folder,
    result_entry,
    settle_setup_error,
    wait_for_queue,
    work_folder,
)
from ..options import RestoreOptions
from ..plan import (InputItem, ItemResult, OutputPlanner, decided_result, error_result, named_format,
                    output_format)
from .actor import ImageOutcome, ImageTask, RestoreActor

# Write errors that end the run rather than one image: no space, over quota, a read-only file system (as a local
# batch halts on them)
_STORAGE_FULL = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS") if hasattr(errno, name))
# Of the CPUs an even share would give each actor, the share reserved: the pool never holds every CPU (two 1-CPU
# actors on a 2-CPU machine were seen to hang Ray there), and a restarted actor finds room after a node is lost
_CPU_SHARE = 0.9


@dataclass(frozen=True)
class PoolOptions:
    address: str = "local"  # local: a private single-machine Ray instance; auto or an address: join a cluster
    actors: int | None = None  # default: as many as the cluster's GPUs hold (one per GPU), or one without GPUs
    actor_gpus: float | None = None  # GPUs per actor; default 1 on a cluster with GPUs, else 0
    actor_cpus: float | None = None  # CPUs per actor (fractions allowed); default 0.9 of an even share
    actor_images: int = 3  # images each actor holds at once: decoding, in the model, encoding; 1: one at a time


@dataclass(frozen=True)
class PoolShape:
    actors: int
    cpus: float  # reserved by each actor
    gpus: float
    threads: int  # torch's threads in each actor


@dataclass
class PoolReport(WorkerReport):
    shape: PoolShape | None = None  # None: no job was claimed, so no pool was started
    images: int = 0  # images the actors restored and the driver wrote
    retried: int = 0  # images sent again because their actor died with them in hand
    driver_seconds: float = 0.0  # the driver's own work: reading inputs, writing outputs, the queue's transactions
    # over the images written: the actors' restoring (decode, model, encode), and the whole way from the driver's
    # reading each input to its output written; the difference is what the pool adds (transport, queueing, writing)
    actor_seconds: float = 0.0
    image_seconds: float = 0.0


def pool_shape(cluster: dict[str, float], nodes: list[dict[str, float]], options: PoolOptions) -> PoolShape:
    """The pool for a cluster of ``cluster`` resources (``ray.cluster_resources()``) over ``nodes`` (each alive
    node's resources). Raises ``UsageError`` for a shape no node can hold one actor of."""
    gpus = cluster.get("GPU", 0.0)
    actor_gpus = options.actor_gpus if options.actor_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if options.actors is not None:
        actors = options.actors
    else:
        actors = max(1, int(gpus // actor_gpus)) if actor_gpus > 0 else 1
    biggest = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    if options.actor_cpus is not None:
        actor_cpus = options.actor_cpus
    else:
        actor_cpus = max(0.01, round(_CPU_SHARE * min(cluster.get("CPU", 0.0) / actors, biggest), 2))
    if not any(node.get("CPU", 0.0) >= actor_cpus and node.get("GPU", 0.0) >= actor_gpus for node in nodes):
        raise UsageError(f"no node of the Ray cluster has {actor_cpus:g} CPU(s) and {actor_gpus:g} GPU(s) for an "
                         f"actor (the cluster: {cluster.get('CPU', 0.0):g} CPUs, {gpus:g} GPUs); lower "
                         "--actor-cpus or --actor-gpus")
    return PoolShape(actors, actor_cpus, actor_gpus, max(1, math.ceil(actor_cpus)))


def connect(address: str) -> Callable[[], None]:
    """Start (``local``) or join (``auto``, an address) Ray, keeping this process's signal handlers; returns what
    ends the connection. A process already connected (a caller's own ``ray.init``) keeps its connection.
    Raises ``SetupError`` where Ray is not installed or the cluster cannot be reached."""
    try:
        import ray
    except ImportError:
        raise SetupError("--ray needs Ray: pip install 'restorecli[ray]'") from None
    if ray.is_initialized():
        return lambda: None
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    settings: dict[str, Any] = {"logging_level": logging.WARNING}
    if address == "local":
        settings["include_dashboard"] = False
    else:
        _check_reachable(address)
    before = set(_descendants(os.getpid())) if address == "local" else None  # this process's own, left alone
    try:
        ray.init(address=address, **settings)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise SetupError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    except BaseException:  # a signal while Ray started (its own handler raises SystemExit): leave nothing running
        _end_ray(ray, before)
        raise StoppedWhileStarting() from None
    finally:
        for signum, handler in handlers.items():  # ray.init makes SIGTERM exit at once: keep the polite stop
            signal.signal(signum, handler)
    return lambda: _end_ray(ray, before)


class StoppedWhileStarting(Exception):
    """A stop signal came while Ray was starting; what it had started is ended."""


def _end_ray(ray, before: set[int] | None) -> None:
    """Disconnect; where this process started Ray (``before``: the processes below it until then), also end every
    process Ray left: ``ray.shutdown`` ends the head's processes, but their own children (the raylet's agents,
    actors mid-task) can outlive it, orphaned, for as long as they take to notice."""
    started = [pid for pid in _descendants(os.getpid()) if pid not in before] if before is not None else []
    if ray.is_initialized():
        ray.shutdown()
    _end_processes(started)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...), from /proc; empty where there is none to read."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _end_processes(pids: list[int], wait: float = 5.0) -> None:
    """SIGTERM each of ``pids`` still running, then SIGKILL those still there after ``wait`` seconds."""
    alive = [pid for pid in pids if _signal_pid(pid, signal.SIGTERM)]
    deadline = time.monotonic() + wait
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _running(pid)]
    for pid in alive:
        _signal_pid(pid, signal.SIGKILL)


def _signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended and waiting for its parent, does not); reaps it where it is ours."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def check_address(address: str) -> None:
    """Raise ``UsageError`` for a ``--ray`` that is none of local, auto, HOST:PORT and ray://HOST:PORT."""
    if address in ("local", "auto") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address}: give local, auto, HOST:PORT or ray://HOST:PORT")


def _check_reachable(address: str) -> None:
    """Raise ``SetupError`` where the cluster's head (its GCS port) refuses a connection or does not answer: Ray's
    own connect goes on retrying for minutes. An address Ray resolves itself (``auto`` without ``$RAY_ADDRESS``:
    the cluster ``ray start`` left on this machine) or reaches through Ray Client is left to Ray."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    if not address or "://" in address:
        return
    check_address(address)
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise SetupError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


@dataclass
class _Image:
    """One image of a job, on its way through an actor."""

    index: int  # its place among the job's inputs
    item: InputItem
    output: Path
    task: ImageTask
    started: float  # when the driver read it (perf_counter)
    tries: int = 0  # deaths of the actor it was in hand of


@dataclass
class _Run:
    """A job in hand: its lease and renewer, its work folder and plan, and what its images came to."""

    lease: Lease
    renewer: LeaseRenewer
    work: Path
    restore: RestoreOptions
    items: list[InputItem]
    stored: dict[str, str]  # stored path -> original name
    planner: OutputPlanner
    results: list[dict | None]
    planned: int = 0  # items planned so far (in order)
    retry: collections.deque = field(default_factory=collections.deque)  # _Images whose actor died
    in_flight: int = 0
    swept: set = field(default_factory=set)  # output folders rid of temporaries killed writers left
    outcome: str | None = None  # set once the job is settled; results of its images still in flight are dropped
    ran: dict[str, str] | None = None  # the model, device and precision its images ran with

    @property
    def job_id(self) -> str:
        return self.lease.job.id

    @property
    def complete(self) -> bool:
        return self.in_flight == 0 and all(r is not None for r in self.results)

    def progress(self) -> list[dict]:
        return [r for r in self.results if r is not None]


class Slots:
    """How many more images each actor can take (its free slots of ``depth``), and in which of its lives.

    An actor has none until it answers a probe (``up``); each image sent takes one (``take``) and gives it back with
    its result (``back``). A death (``down``) takes all of them and begins the actor's next life: the images it had
    in hand come back as failures one by one, and only the first starts a probe; any result of an earlier life gives
    no slot back to the new one. An image taken ``alone`` takes every slot of an actor holding nothing."""

    def __init__(self, actors: int, depth: int):
        self.depth = depth
        self.free = [0] * actors
        self.life = [0] * actors

    def up(self, actor: int) -> None:
        self.free[actor] = self.depth

    def down(self, actor: int, life: int) -> bool:
        """An image sent in ``life`` found its actor dead: True where that is news (the actor is to be probed)."""
        if life != self.life[actor]:
            return False
        self.life[actor] += 1
        self.free[actor] = 0
        return True

    def take(self, alone: bool = False) -> tuple[int, int, int] | None:
        """(actor, its life, slots taken) for the next image: the actor with the most free slots, so images spread
        over the pool; None where none can take it now."""
        wanted = self.depth if alone else 1
        ready = [actor for actor, free in enumerate(self.free) if free >= wanted]
        if not ready:
            return None
        actor = max(ready, key=lambda index: self.free[index])
        self.free[actor] -= wanted
        return actor, self.life[actor], wanted

    def back(self, actor: int, life: int, slots: int) -> None:
        if life == self.life[actor]:
            self.free[actor] += slots

    @property
    def any(self) -> bool:
        return any(self.free)


class _Pool:
    """The actors and their ``Slots``. An actor takes images once it has answered a probe (at start, and after
    each death while Ray restarts it); one whose probe finds it dead for good (its creation failed) is dropped."""

    PROBE_TRIES = 3  # answers of "died" before an actor counts as gone, not restarting

    def __init__(self, shape: PoolShape, depth: int):
        import ray

        remote = ray.remote(RestoreActor).options(num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=-1,
                                                  max_task_retries=0, max_concurrency=depth,
                                                  scheduling_strategy="SPREAD")
        self.actors = [remote.remote(shape.threads) for _ in range(shape.actors)]
        self.slots = Slots(len(self.actors), depth)
        self.probes: dict[Any, int] = {}  # probe ref -> actor index
        self.later: list[tuple[float, int]] = []  # (when, actor) probes to send again
        self.failed_probes = collections.Counter()
        self.gone: dict[int, str] = {}  # actor index -> why it is gone
        for index in range(len(self.actors)):
            self.probe(index)

    def probe(self, index: int) -> None:
        self.probes[self.actors[index].pid.remote()] = index

    def answered(self, ref: Any) -> None:
        """A probe came back: the actor takes images, or is probed again later, or is gone."""
        import ray

        index = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.ActorDiedError as exc:
            self.failed_probes[index] += 1
            if self.failed_probes[index] >= self.PROBE_TRIES:
                self.gone[index] = _short(exc)
                return
            self.later.append((time.monotonic() + 1.0, index))
        except ray.exceptions.RayError:  # unavailable for now (restarting, a network blip)
            self.later.append((time.monotonic() + 1.0, index))
        else:
            self.failed_probes[index] = 0
            self.slots.up(index)

    def probe_due(self) -> None:
        now = time.monotonic()
        due = [index for when, index in self.later if when <= now]
        self.later = [(when, index) for when, index in self.later if when > now]
        for index in due:
            self.probe(index)

    @property
    def alive(self) -> int:
        return len(self.actors) - len(self.gone)

    def close(self) -> None:
        """End the actors now (a caller's own Ray connection outlives the pool; Ray would end them only once their
        handles are collected)."""
        import ray

        for actor in self.actors:
            ray.kill(actor)


def _short(exc: BaseException) -> str:
    """A Ray error's first line, without its long advice."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class _Driver:
    def __init__(self, store: JobStore, options: WorkerOptions, schedule: Schedule, report: PoolReport,
                 emit: Event, note: Event, name: str):
        self.store, self.options, self.schedule, self.report = store, options, schedule, report
        self.emit, self.note, self.name = emit, note, name
        self.runs: list[_Run] = []  # in claim order: the oldest job's images go first
        self.flight: dict[Any, tuple[_Run, _Image, tuple[int, int, int]]] = {}  # ref -> run, image, Slots.take's
        self.claimed = 0
        self.beaten = 0.0
        self.pool: _Pool | None = None
        self.abandon = threading.Event()  # set when the worker's grace period runs out
        self.set_aside = SetAside(options.setup_retry)  # jobs its actors lacked weights for, left to others

    # ------------------------------------------------------------------ claiming

    def claim(self) -> bool:
        """Take the oldest runnable job into hand; False if there is none or the limits say no more."""
        if self.schedule.halted() or self.report.must_stop:
            return False
        if self.at_limit:
            return False
        lease = self.store.claim(self.options.lease, self.options.max_attempts, self.name, skip=self.set_aside.ids())
        if lease is None:
            return False
        self.claimed += 1
        self.emit("claimed", {"job_id": lease.job.id, "attempt": lease.job.attempts})
        if refuse_unsound_folder(self.store, lease):
            self.report.jobs.append((lease.job.id, "failed"))
            self.emit("finished", {"job_id": lease.job.id, "outcome": "failed"})
            return True
        job_dir = self.store.job_dir(lease.job.id)
        work = work_folder(job_dir, lease.token)
        items, stored = job_items(lease.job, job_dir)
        restore = job_restore_options(lease.job.options, work, self.options.device)
        renewer = LeaseRenewer(self.store.root, lease, self.options.lease)
        renewer.start()
        run = _Run(lease, renewer, work, restore, items, stored, OutputPlanner(items, restore), [None] * len(items))
        self.runs.append(run)
        try:
            check_output_folder(work)
        except RestoreCliError as exc:  # as a local batch's: the job is tried again later
            self.retry_later(run, exc)
        return True

    @property
    def at_limit(self) -> bool:
        return self.options.max_jobs is not None and self.claimed >= self.options.max_jobs

    def beat(self) -> None:
        interval = max(self.options.poll, self.options.lease / 3)
        if time.monotonic() - self.beaten >= interval:
            self.store.beat(self.name, self.runs[0].job_id if self.runs else None, interval)
            self.beaten = time.monotonic()

    # ------------------------------------------------------------------ handing images out

    def dispatch(self) -> None:
        """Fill the actors' free slots: images sent again after a death first, each to an actor of its own (the
        rest wait until one has emptied), then the next image of the oldest job in hand, claiming a further job
        where those in hand have none left."""
        pool = self.pool
        assert pool is not None
        while not self.stopping:
            again = next((run for run in self.runs if run.outcome is None and run.retry), None)
            if again is not None:
                taken = pool.slots.take(alone=True)
                if taken is None:
                    return
                self.send(again, again.retry.popleft(), taken)
                continue
            if not pool.slots.any:
                return
            image = self.next_image()
            if image is None:
                if self.claim():
                    continue
                return
            taken = pool.slots.take()
            assert taken is not None
            self.send(*image, taken)

    def next_image(self) -> tuple[_Run, _Image] | None:
        for run in self.runs:
            if run.outcome is not None or run.renewer.gone:  # a job cancelled or taken over sends no more images
                continue
            while run.planned < len(run.items) and run.outcome is None:
                image = self.plan(run)
                if image is not None:
                    return run, image
        return None

    def plan(self, run: _Run) -> _Image | None:
        """Read and plan the job's next input, as a local batch does; returns the image to restore, or None where
        its plan needs no model (skipped, an error: its result is recorded here)."""
        index = run.planned
        run.planned += 1
        item = run.items[index]
        started = time.perf_counter()
        original = run.stored.get(item.source, item.source)
        self.store.renew(run.lease, self.options.lease, current=original)
        self.emit("image", {"job_id": run.job_id, "input": original})
        from ..images import read_input_file  # Pillow and OpenCV, once a job is in hand

        try:
            data = read_input_file(Path(item.source), run.restore.max_pixels)
        except ImageError as exc:  # an input that cannot be read claims no output
            self.finish(run, index, error_result(item, None, str(exc), None, started))
            return None
        try:
            planned = run.planner.plan(item, named_format(item))
        except RestoreCliError as exc:  # an unsafe --suffix: as a local batch's, the job is tried again later
            self.retry_later(run, exc)
            return None
        decided = decided_result(planned, None, started)  # a skip: its output is there already (resumed)
        if decided is None and planned.output is None:  # a write to stdout, which no job's plan makes
            decided = error_result(item, None, planned.reason or "", None, started)
        if decided is not None:
            self.finish(run, index, decided)
            return None
        fmt = output_format(run.restore, named_format(item))
        return _Image(index, item, planned.output, ImageTask(item.source, data, run.restore, fmt,
                                                             planned.output.stem), started)

    def send(self, run: _Run, image: _Image, taken: tuple[int, int, int]) -> None:
        assert self.pool is not None
        ref = self.pool.actors[taken[0]].restore.remote(image.task)
        self.flight[ref] = (run, image, taken)
        run.in_flight += 1

    # ------------------------------------------------------------------ taking results in

    def restored(self, ref: Any) -> None:
        """An image came back from its actor (or its actor died): write it, retry it, or settle its job."""
        import ray

        assert self.pool is not None
        run, image, taken = self.flight.pop(ref)
        run.in_flight -= 1
        try:
            outcome: ImageOutcome = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # restorecli code raised in the actor (a bug): as a local crash
            self.pool.slots.back(*taken)
            if run.outcome is None:
                self.retry_later(run, exc.cause if getattr(exc, "cause", None) is not None else exc)
            return
        except ray.exceptions.RayError as exc:  # the actor died with it (or its node, with the result)
            actor, life, _ = taken
            if self.pool.slots.down(actor, life):  # the first of its images in hand to say so
                self.pool.probe(actor)
            if run.outcome is None:
                self.died(run, image, exc)
            return
        self.pool.slots.back(*taken)
        if run.outcome is not None:  # settled meanwhile (its lease lost, its models unloadable)
            return
        if outcome.setup is not None:
            self.settle(run, settle_setup_error(self.store, run.lease, run.work, outcome.setup.error(), self.note,
                                                self.options.max_attempts, self.set_aside))
            return
        if outcome.failure is not None:
            self.store.retry_later(run.lease, outcome.failure, self.options.max_attempts)
            self.settle(run, "retry")
            return
        if outcome.ran is not None:  # 16-bit images add the precision they ran at: the fullest one is kept
            run.ran = outcome.ran if run.ran is None or len(outcome.ran) >= len(run.ran) else run.ran
        self.finish(run, image.index, self.write(run, image, outcome))

    def died(self, run: _Run, image: _Image, exc: BaseException) -> None:
        image.tries += 1
        original = run.stored.get(image.item.source, image.item.source)
        if image.tries >= self.options.max_attempts:  # it kills whichever actor takes it: it fails alone
            message = (f"{image.item.source}: the Ray actor restoring it died on each of {image.tries} tries "
                       f"(killed, out of memory, or its node lost); last: {_short(exc)}")
            self.finish(run, image.index, error_result(image.item, image.output, message, None, image.started))
            return
        self.report.retried += 1
        self.emit("retry", {"job_id": run.job_id, "input": original, "try": image.tries + 1, "error": _short(exc)})
        run.retry.append(image)

    def write(self, run: _Run, image: _Image, outcome: ImageOutcome) -> ItemResult:
        """The actor's output written into the lease's work folder (and its face crops where asked): the item's
        result. A full or read-only disk stops the run, as it halts a local batch."""
        item, output = image.item, image.output
        if outcome.error is not None:
            return error_result(item, output, outcome.error, None, image.started)
        assert outcome.data is not None
        try:
            if output.parent not in run.swept:
                remove_abandoned_temporaries(output.parent)
                run.swept.add(output.parent)
            write_atomic(output, outcome.data)
            if run.restore.save_faces:
                for name, crop in outcome.crops:
                    write_atomic(Path(run.restore.save_faces) / name, crop)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            if exc.errno in _STORAGE_FULL:
                self.note("storage_error", {"job_id": run.job_id,
                                            "error": f"{exc.strerror}: {exc.filename or output.parent}"})
            return error_result(item, output, f"{item.source}: {exc.strerror or exc}{where}", None, image.started)
        seconds = time.perf_counter() - image.started
        self.report.images += 1
        self.report.actor_seconds += outcome.seconds
        self.report.image_seconds += seconds
        return ItemResult(item.source, str(output), "ok", None, outcome.in_size, outcome.out_size, round(seconds, 3),
                          outcome.faces)

    def finish(self, run: _Run, index: int, item: ItemResult) -> None:
        original = run.stored.get(item.input, item.input)
        run.results[index] = result_entry(item, original, self.store.job_dir(run.job_id), run.work, self.store.root)
        self.store.record(run.lease, run.progress())

    # ------------------------------------------------------------------ settling jobs

    def retry_later(self, run: _Run, exc: BaseException) -> None:
        self.store.retry_later(run.lease, f"{type(exc).__name__}: {_short(exc)}", self.options.max_attempts)
        self.settle(run, "retry")

    def settle(self, run: _Run, outcome: str) -> None:
        run.renewer.finish()
        run.outcome = outcome
        self.report.jobs.append((run.job_id, outcome))
        self.emit("finished", {"job_id": run.job_id, "outcome": outcome})

    def settle_done(self) -> None:
        """Publish the jobs whose every image has its result; drop those whose lease was lost; give back, when
        stopping, those with images left."""
        for run in self.runs:
            if run.outcome is not None:
                continue
            if run.renewer.lost.is_set():
                shutil.rmtree(run.work, ignore_errors=True)
                self.settle(run, "lost")
            elif run.renewer.cancelled.is_set() and run.in_flight == 0:  # its images in flight came back unused
                shutil.rmtree(run.work, ignore_errors=True)
                run.renewer.finish()
                self.settle(run, "cancelled" if self.store.drop_cancelled(run.lease) else "lost")
            elif run.complete and not self.report.storage_error:
                run.renewer.finish()  # no renewal past the publish, whose owner check fences a lease lost by now
                self.settle(run, publish_results(self.store, run.lease, run.work, run.progress(), run.ran))
            elif self.stopping and run.in_flight == 0:
                self.settle(run, give_back(self.store, run.lease, run.work))
        self.runs = [run for run in self.runs if run.outcome is None]  # images still in flight keep theirs

    @property
    def stopping(self) -> bool:
        assert self.pool is not None
        return self.schedule.halted() or self.report.must_stop or self.pool.alive == 0

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        import ray

        assert self.pool is not None
        while True:
            if self.abandon.is_set():  # the grace period ran out: images in flight are not waited for
                self.give_all_back()
                return
            started = time.perf_counter()
            self.settle_done()
            if not self.stopping:
                self.dispatch()
                self.settle_done()  # jobs all of whose images were skipped
            self.beat()
            self.report.driver_seconds += time.perf_counter() - started
            if not self.flight and not self.runs:
                if self.stopping or not self.claim():  # nothing in hand: once more for work, or leave
                    if self.stopping or self.options.once or self.at_limit:
                        break
                else:
                    continue
            self.pool.probe_due()
            waiting = list(self.flight) + list(self.pool.probes)
            if not waiting:
                self.schedule.pause(1.0 if self.pool.later else None)
                continue
            timeout = min(self.options.poll, self.options.lease / 3)
            ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            started = time.perf_counter()
            for ref in ready:
                if ref in self.pool.probes:
                    self.pool.answered(ref)
                else:
                    self.restored(ref)
            self.report.driver_seconds += time.perf_counter() - started
        if self.pool.alive == 0 and not self.report.setup_error:
            self.report.setup_error = "every Ray actor is gone: " + "; ".join(sorted(set(self.pool.gone.values())))

    def give_all_back(self, error: str | None = None) -> None:
        """After a failure of the driver itself: every job in hand queued again, resumable (``error`` says why)."""
        for run in self.runs:
            if run.outcome is None:
                run.renewer.finish()
                give_back(self.store, run.lease, run.work, error=error)


def run_pool(root: Path, options: WorkerOptions, pool: PoolOptions, stop: threading.Event | Stopping,
             emit: Event | None = None) -> PoolReport:
    """Work the queue at ``root`` with a pool of Ray actors until it is empty (``once``), a limit is reached, or
    ``stop`` is set; the worker's options mean what they mean for ``run_worker``. Ray is started or joined when the
    first job is claimed (``pool.address``), and left when the run ends; a local Ray leaves no process behind.
    A ``Stopping`` whose ``abandon`` is set (the grace period ran out) gives back the jobs in hand at once, without
    waiting for their images in flight. Returns what was done."""
    from ..jobs.worker import worker_name

    emit = emit or (lambda event, data: None)
    stopping = stop if isinstance(stop, Stopping) else Stopping(stop=stop)
    stop = stopping.stop
    check_address(pool.address)
    report = PoolReport()
    schedule = Schedule(options, stop)
    if not wait_for_queue(root, options, schedule):
        report.stopped = stop.is_set()
        return report
    store = JobStore(root)
    name = worker_name()
    driver = _Driver(store, options, schedule, report, emit, report.noting(emit), name)
    driver.abandon = stopping.abandon
    disconnect: Callable[[], None] = lambda: None
    try:
        while not driver.claim():  # the first job, before Ray starts: an idle queue costs no Ray instance
            if options.once or schedule.halted() or driver.at_limit:
                report.stopped = stop.is_set()
                return report
            driver.beat()
            schedule.pause()
        try:
            try:
                disconnect = connect(pool.address)
            except StoppedWhileStarting:
                driver.give_all_back()
                report.stopped = True
                return report
            import ray

            nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
            report.shape = pool_shape(ray.cluster_resources(), nodes, pool)
            driver.pool = _Pool(report.shape, pool.actor_images)
        except BaseException as exc:
            driver.give_all_back(str(exc) if isinstance(exc, RestoreCliError) else None)  # status says why
            raise
        emit("pool", {"address": pool.address, "actors": report.shape.actors, "cpus": report.shape.cpus,
                      "gpus": report.shape.gpus, "images": pool.actor_images})
        try:
            driver.run()
        except BaseException:
            driver.give_all_back()
            raise
        emit("summary", {"images": report.images, "retried": report.retried,
                         "driver_seconds": round(report.driver_seconds, 3),
                         "actor_seconds": round(report.actor_seconds, 3),
                         "image_seconds": round(report.image_seconds, 3)})
        report.stopped = stop.is_set()
        return report
    finally:
        try:
            if driver.pool is not None:
                driver.pool.close()
            disconnect()
        finally:
            store.retire(name)
            store.close()
