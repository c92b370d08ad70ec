"""The Ray pool's driver, ``restorecli worker --ray``: the one process on the queue's machine that claims jobs, holds
and renews their leases as the local worker does, and keeps a pool of Ray actors (``actor.RestoreActor``) busy with
the jobs' images, anywhere in the cluster.

A job's images are spread over the actors, and further jobs are claimed while an actor would otherwise be idle.
Each actor holds up to ``--actor-images`` images at once (default 3: one decoding, one in its model, one encoding,
as a local batch pipelines them), so its model never waits for the host: the driver reads the input's bytes and
plans its output (``plan.OutputPlanner``, as a local batch does), the actor returns the output's bytes, and the
driver writes them atomically into the lease's private work folder. A job is published (``JobStore.publish``, with
its owner-token fencing) once every image has its result: no output appears twice or half-written, whatever the
cluster does. Each job in hand is a ``jobs.run.JobRun``, as in the local worker: the same lease, progress and
settling; the actors are an ``pool.ActorPool``, and Ray is joined and left by ``cluster``.

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
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ImageError, RestoreCliError
from ..files import check_output_folder
from ..jobs.run import Event, JobRun, SetAside
from ..jobs.store import JobStore, worker_name
from ..jobs.worker import Schedule, Stopping, WorkerOptions, WorkerReport, wait_for_queue
from ..pipeline.item import Outputs, failure
from ..plan import (InputItem, ItemResult, OutputPlanner, decided_result, error_result, named_format,
                    output_format)
from ..video.formats import is_video_name
from .actor import ImageOutcome, ImageTask, RangeTask, VideoTask
from .cluster import StoppedWhileStarting, check_address, connect
from .pool import ActorPool, PoolOptions, PoolShape, pool_shape, short_error
from .videos import VideoRanges, read_progress

__all__ = ["PoolOptions", "PoolReport", "PoolShape", "pool_shape", "run_pool"]


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


@dataclass
class _Image:
    """One image of a job, on its way through an actor."""

    index: int  # its place among the job's inputs
    item: InputItem
    output: Path
    task: ImageTask | VideoTask | RangeTask
    started: float  # when the driver read it (perf_counter)
    tries: int = 0  # deaths of the actor it was in hand of
    ranges: VideoRanges | None = None  # the video a range belongs to (a RangeTask's)

    @property
    def video(self) -> bool:
        return isinstance(self.task, (VideoTask, RangeTask))



class _Run(JobRun):
    """A job in the pool's hand: its lifecycle (``JobRun``), with its output plan, the images planned so far, those
    to send again after their actor died, and those in flight."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.planner = OutputPlanner(self.items, self.restore)
        self.planned = 0  # items planned so far (in order)
        self.retry: collections.deque[_Image] = collections.deque()  # images whose actor died
        self.in_flight = 0  # once settled (``outcome``), the results of its images still in flight are dropped
        self.outputs = Outputs(self.restore.save_faces)  # where its outputs and face crops are written
        self.ran: dict[str, str] | None = None  # the model, device and precision its images ran with
        # where its actors tell the frames of its videos done so far: beside the lease's work folder, removed when
        # the job is settled (or by the next owner's claim, as an expired owner's folder)
        self.progress_dir = self.job_dir / "work" / f".progress-{self.lease.token}"

    def settle(self, outcome: str) -> str:
        shutil.rmtree(self.progress_dir, ignore_errors=True)
        return super().settle(outcome)

    def drop_ranges(self, ranges: VideoRanges) -> None:
        """A video failed: its ranges not yet sent are not sent (those in flight are ignored when they return)."""
        ranges.failed = True
        self.retry = collections.deque(image for image in self.retry if image.ranges is not ranges)

    def range_in(self, image: _Image, outcome: ImageOutcome) -> bool:
        """A range of a video came back (``outcome``): whether it was the last one, so the video is to be joined.
        Its error is the video's (recorded here; its other ranges are dropped)."""
        ranges = image.ranges
        assert ranges is not None and isinstance(image.task, RangeTask)
        if ranges.failed:  # another range's error is the video's
            return False
        if outcome.error is not None:
            self.drop_ranges(ranges)
            self.finish(error_result(image.item, image.output, outcome.error, None, ranges.started), image.index)
            return False
        assert outcome.video is not None
        ranges.done[image.task.first] = outcome.video
        return ranges.complete

    def tell_frames(self, flight: list[_Image]) -> None:
        """Say in the job's status the frames done so far of its videos in flight (``flight``), as their actors
        tell them."""
        told: set[int] = set()
        for image in flight:
            if image.ranges is not None and id(image.ranges) not in told:
                told.add(id(image.ranges))
                self.working_on_frames(self.original(image.item.source), image.ranges.frames_done(),
                                       image.ranges.frames)
            elif isinstance(image.task, VideoTask) and image.task.progress is not None:
                progress = read_progress(Path(image.task.progress))
                if progress is not None:
                    self.working_on_frames(self.original(image.item.source), *progress)

    def plan_next(self, workers: int, range_frames: int | None) -> _Image | None:
        """Read and plan the job's next input, as a local batch does; returns the image to restore, or None where
        its plan needs no model (skipped, an error: its result is recorded here) or where it is a video split into
        ranges (queued in ``retry``)."""
        index = self.planned
        self.planned += 1
        item = self.items[index]
        started = time.perf_counter()
        original = self.original(item.source)
        self.working_on(original, starting=original)
        if _frame_by_frame(item):  # ``workers`` actors share its ranges, of ``range_frames`` frames (None: a default)
            return _plan_video(self, index, item, started, workers, range_frames)
        from ..images import read_input_file  # Pillow and OpenCV, once a job is in hand

        try:
            data = read_input_file(Path(item.source), self.restore.max_pixels)
        except ImageError as exc:  # an input that cannot be read claims no output
            self.finish(error_result(item, None, str(exc), None, started), index)
            return None
        try:
            planned = self.planner.plan(item, named_format(item))
        except RestoreCliError as exc:  # an unsafe --suffix: as a local batch's, the job is tried again later
            self.retry_later(_failure_text(exc))
            return None
        decided = decided_result(planned, None, started)  # a skip: its output is there already (resumed)
        if decided is None and planned.output is None:  # a write to stdout, which no job's plan makes
            decided = error_result(item, None, planned.reason or "", None, started)
        if decided is not None:
            self.finish(decided, index)
            return None
        fmt = output_format(self.restore, named_format(item))
        return _Image(index, item, planned.output, ImageTask(item.source, data, self.restore, fmt,
                                                             planned.output.stem), started)

    @property
    def complete(self) -> bool:
        return self.in_flight == 0 and self.all_finished

    def settle_if_due(self, stopping: bool, storage_full: bool) -> None:
        """Drop the job where its lease was lost, or where it was cancelled once its images in flight came back
        (unused); publish it once every image has its result, unless the disk is full; give it back, resumable,
        when the pool is stopping and nothing of it is in flight."""
        if self.renewer.lost.is_set() or (self.renewer.cancelled.is_set() and self.in_flight == 0):
            self.drop()
        elif self.complete and not storage_full:
            self.publish(self.ran)
        elif stopping and self.in_flight == 0:
            self.give_back()


class _Driver:
    """Keeps the pool's actors busy with the images of the jobs in hand (each a ``_Run``), writes what comes back,
    and settles each job once all its images have their result."""

    def __init__(self, store: JobStore, options: WorkerOptions, schedule: Schedule, report: PoolReport,
                 emit: Event, note: Event, name: str):
        self.store, self.options, self.schedule, self.report = store, options, schedule, report
        self.emit, self.note, self.name = emit, note, name
        self.runs: list[_Run] = []  # in claim order: the oldest job's images go first
        self.flight: dict[Any, tuple[_Run, _Image, tuple[int, int, int]]] = {}  # ref -> run, image, Slots.take's
        self.claimed, self.beaten = 0, 0.0  # jobs claimed; when the leases were last renewed
        self.pool: ActorPool | None = None
        self.abandon = threading.Event()  # set when the worker's grace period runs out
        self.set_aside = SetAside(options.setup_retry)  # jobs its actors lacked weights for, left to others
        self.range_frames: int | None = None  # a video's frames an actor takes at once (``PoolOptions``)

    # ------------------------------------------------------------------ claiming

    def claim(self) -> bool:
        """Take the oldest runnable job into hand; False if there is none or the limits say no more."""
        if self.schedule.halted() or self.report.must_stop or self.at_limit:
            return False
        run = _Run.claim(self.store, self.options, self.name, self.set_aside, self.report, self.note)
        if run is None:
            return False
        self.claimed += 1
        if run.outcome is not None:  # refused at its claim: its folder is not sound
            return True
        self.runs.append(run)
        try:
            check_output_folder(run.work)
        except RestoreCliError as exc:  # as a local batch's: the job is tried again later
            run.retry_later(_failure_text(exc))
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
            if image is None and any(run.retry for run in self.runs if run.outcome is None):
                continue  # a video planned into ranges, which go as retries do
            if image is None:
                if self.claim():
                    continue
                return
            if image[1].video:  # restored whole, by an actor holding nothing else: sent as a retry is
                image[0].retry.appendleft(image[1])
                continue
            taken = pool.slots.take()
            assert taken is not None
            self.send(*image, taken)

    def next_image(self) -> tuple[_Run, _Image] | None:
        for run in self.runs:
            if run.outcome is not None or run.gone:  # a job cancelled or taken over sends no more images
                continue
            while run.planned < len(run.items) and run.outcome is None:
                image = run.plan_next(self.report.shape.actors if self.report.shape else 1, self.range_frames)
                if image is not None:
                    return run, image
        return None

    def send(self, run: _Run, image: _Image, taken: tuple[int, int, int]) -> None:
        assert self.pool is not None
        actor = self.pool.actors[taken[0]]
        method = {RangeTask: actor.restore_range, VideoTask: actor.restore_video}.get(type(image.task), actor.restore)
        ref = method.remote(image.task)
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
                run.retry_later(_failure_text(exc.cause if getattr(exc, "cause", None) is not None else exc))
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
            if isinstance(image.task, VideoTask):  # the actor's file, never renamed into place
                Path(image.task.output).unlink(missing_ok=True)
            return
        if outcome.setup is not None:
            run.fail_setup(outcome.setup.error())
            return
        if outcome.failure is not None:
            run.retry_later(outcome.failure)
            return
        if outcome.ran is not None:  # 16-bit images add the precision they ran at: the fullest one is kept
            run.ran = outcome.ran if run.ran is None or len(outcome.ran) >= len(run.ran) else run.ran
        if image.ranges is None or run.range_in(image, outcome):  # a video's ranges: once every one is in
            run.finish(self.write(run, image, outcome), image.index)

    def died(self, run: _Run, image: _Image, exc: BaseException) -> None:
        if image.ranges is not None and image.ranges.failed:
            return
        image.tries += 1
        original = run.original(image.item.source)
        if image.tries >= self.options.max_attempts:  # it kills whichever actor takes it: it fails alone
            message = (f"{image.item.source}: the Ray actor restoring it died on each of {image.tries} tries "
                       f"(killed, out of memory, or its node lost); last: {short_error(exc)}")
            if image.ranges is not None:
                run.drop_ranges(image.ranges)
            run.finish(error_result(image.item, image.output, message, None, image.started), image.index)
            return
        self.report.retried += 1
        self.emit("retry", {"job_id": run.job_id, "input": original, "try": image.tries + 1,
                            "error": short_error(exc)})
        run.retry.append(image)

    def write(self, run: _Run, image: _Image, outcome: ImageOutcome) -> ItemResult:
        """The actor's output written into the lease's work folder (and its face crops where asked): the item's
        result. A full or read-only disk stops the run, as it halts a local batch."""
        item, output = image.item, image.output
        if outcome.error is not None:
            return error_result(item, output, outcome.error, None, image.started)
        try:
            if image.ranges is not None:  # every range is in: the driver joins them
                result = image.ranges.joined_result(outcome.in_size, outcome.colorized)
            else:
                if isinstance(image.task, VideoTask):  # the actor wrote it whole: the driver puts it in place
                    os.replace(image.task.output, output)
                else:
                    assert outcome.data is not None
                    run.outputs.write(output, outcome.data, outcome.crops)
                result = ItemResult(item.source, str(output), "ok", None, outcome.in_size, outcome.out_size,
                                    round(time.perf_counter() - image.started, 3), outcome.faces,
                                    colorized=outcome.colorized, video=outcome.video)
        except OSError as exc:
            result, halted = failure(item, output, exc, None, image.started)  # as a local batch words it
            if halted:
                self.note("storage_error", {"job_id": run.job_id, "error": halted})
            return result
        if result.status == "ok":
            self.report.images += 1
            self.report.actor_seconds += image.ranges.actor_seconds if image.ranges is not None else outcome.seconds
            self.report.image_seconds += result.seconds
        return result

    # ------------------------------------------------------------------ settling jobs

    def settle_done(self) -> None:
        """Settle the jobs in hand that are due (``_Run.settle_if_due``); those settled leave the driver's hand."""
        for run in self.runs:
            if run.outcome is None:
                run.settle_if_due(self.stopping, bool(self.report.storage_error))
        self.runs = [run for run in self.runs if run.outcome is None]  # images still in flight keep theirs

    @property
    def stopping(self) -> bool:
        assert self.pool is not None
        return self.schedule.halted() or self.report.must_stop or self.pool.alive == 0

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
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
            self.tell_frames()
            self.report.driver_seconds += time.perf_counter() - started
            if not self.flight and not self.runs:
                if self.stopping or not self.claim():  # nothing in hand: once more for work, or leave
                    if self.stopping or self.options.once or self.at_limit:
                        break
                else:
                    continue
            ready = self.pool.wait(self.flight, min(self.options.poll, self.options.lease / 3))
            if ready is None:  # nothing in flight or probed: wait (a second, where a probe is due later)
                self.schedule.pause(1.0 if self.pool.later else None)
                continue
            started = time.perf_counter()
            for ref in ready:
                self.restored(ref)
            self.report.driver_seconds += time.perf_counter() - started
        if self.pool.alive == 0 and not self.report.setup_error:
            self.report.setup_error = "every Ray actor is gone: " + "; ".join(sorted(set(self.pool.gone.values())))

    def tell_frames(self) -> None:
        """Each job's videos in flight: their frames done so far, in the job's status."""
        for run in self.runs:
            if run.outcome is None:
                run.tell_frames([image for owner, image, _ in self.flight.values() if owner is run and image.video])

    def give_all_back(self, error: str | None = None) -> None:
        """After a failure of the driver itself: every job in hand queued again, resumable (``error`` says why)."""
        for run in self.runs:
            if run.outcome is None:
                run.give_back(error, quietly=True)


def run_pool(root: Path, options: WorkerOptions, pool: PoolOptions, stop: threading.Event | Stopping,
             emit: Event | None = None) -> PoolReport:
    """Work the queue at ``root`` with a pool of Ray actors until it is empty (``once``), a limit is reached, or
    ``stop`` is set; the worker's options mean what they mean for ``run_worker``. Ray is started or joined when the
    first job is claimed (``pool.address``), and left when the run ends; a local Ray leaves no process behind.
    A ``Stopping`` whose ``abandon`` is set (the grace period ran out) gives back the jobs in hand at once, without
    waiting for their images in flight. Returns what was done."""
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
    driver.range_frames = pool.range_frames
    disconnect: Callable[[], None] = lambda: None
    try:
        while not driver.claim():  # the first job, before Ray starts: an idle queue costs no Ray instance
            if options.once or schedule.halted() or driver.at_limit:
                report.stopped = stop.is_set()
                return report
            driver.beat()
            schedule.pause()
        disconnect = _start_pool(driver, pool)
        if driver.pool is None:  # stopped while Ray started
            report.stopped = True
            return report
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


def _start_pool(driver: _Driver, pool: PoolOptions) -> Callable[[], None]:
    """Start or join Ray and start the pool's actors (``driver.pool``, left None where a stop signal came while Ray
    started); returns what leaves Ray. The jobs in hand are given back, resumable, where Ray or the pool cannot
    start (the error saying why, for status)."""
    disconnect: Callable[[], None] = lambda: None
    try:
        try:
            disconnect = connect(pool.address)
        except StoppedWhileStarting:
            driver.give_all_back()
            return disconnect
        import ray

        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        driver.report.shape = pool_shape(ray.cluster_resources(), nodes, pool)
        driver.pool = ActorPool(driver.report.shape, pool.actor_images)
    except BaseException as exc:
        driver.give_all_back(str(exc) if isinstance(exc, RestoreCliError) else None)  # status says why
        disconnect()
        raise
    driver.emit("pool", {"address": pool.address, "actors": driver.report.shape.actors,
                         "cpus": driver.report.shape.cpus, "gpus": driver.report.shape.gpus,
                         "images": pool.actor_images})
    return disconnect


def _plan_video(run: _Run, index: int, item: InputItem, started: float, workers: int,
                range_frames: int | None) -> _Image | None:
    """A video's plan, as a local batch makes it (its output keeps the container); the video to restore whole, or
    None where its plan needs no model (its result is recorded here) or where it is split into ranges (``videos``),
    which are queued as retries are, each for an actor of its own. A video restored whole is written by the actor
    under a hidden name beside its output (the same on every try, so a retry finds the segments kept), which the
    driver renames."""
    planned = run.planner.plan(item, None, own_format=True)
    decided = decided_result(planned, None, started)
    if decided is None and planned.output is None:
        decided = error_result(item, None, f"{item.source}: a video is written into a folder, not to stdout", None,
                               started)
    if decided is not None:
        run.finish(decided, index)
        return None
    output = planned.output
    run.outputs.sweep(output.parent)  # what a killed actor's writer left there
    progress = run.progress_dir / str(index)  # the input's own: two outputs may have one name in two folders
    progress.mkdir(parents=True, exist_ok=True)
    ranges = _video_ranges(run, item, output, started, (workers, range_frames), progress)
    if ranges is None:
        return _Image(index, item, output, VideoTask(item.source, str(output.with_name(f".ray-{output.name}")),
                                                     run.restore, str(progress / "whole.json")), started)
    run.retry.extend(_Image(index, item, output, RangeTask(item.source, str(output), run.restore, span.first,
                                                           span.stop, str(ranges.progress_file(span.first))),
                            started, ranges=ranges)
                     for span in ranges.spans)
    return None


def _video_ranges(run: _Run, item: InputItem, output: Path, started: float, split: tuple[int, int | None],
                  progress: Path) -> VideoRanges | None:
    """The ranges a video is split into (``split``: among so many actors, of so many frames each, where asked,
    else ``video.ranges.range_size``), whose actors tell their frames in the folder ``progress``; None where it is
    restored whole: a part of it, no segments, a single range, or a container that does not count its frames (or
    that cannot be read here: the actor then says why)."""
    from ..video.ranges import plan_ranges, range_size, video_frames

    options = run.restore
    if not is_video_name(item.source):  # an animation: its writer takes every frame at once
        return None
    if not options.segment_seconds or options.frames or options.start is not None or options.duration is not None:
        return None
    try:
        frames = video_frames(Path(item.source), item.source)
    except ImageError:
        return None
    if not frames:
        return None
    spans = plan_ranges(frames, range_size(frames, *split))
    return VideoRanges(item, output, frames, spans, progress, started) if len(spans) > 1 else None


def _frame_by_frame(item: InputItem) -> bool:
    """Whether ``item`` is restored frame by frame, as a local batch takes it: a video by its name, an animated GIF,
    PNG or WebP by its content (its header read)."""
    from ..video.animated import is_animated_file

    return is_video_name(item.source) or is_animated_file(Path(item.source))


def _failure_text(exc: BaseException) -> str:
    """How a failure nobody foresaw is recorded as the job's last error."""
    return f"{type(exc).__name__}: {short_error(exc)}"
