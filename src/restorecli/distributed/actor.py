"""The pool's Ray actor: a process that holds loaded models and restores one image a call, bytes in, bytes out.

Its calls run on as many threads as the driver gives it images at once (``--actor-images``, Ray's
``max_concurrency``); each puts its image into the loop a local batch runs (``pipeline.flow.Served``) and waits for
its answer: the image is decoded (and its faces found) on the reader thread, run by the model on the model thread
and encoded on the writer thread, so while the model runs one image, the next is decoded and the last encoded, and
the model never waits for the host where there is an image to run.

It writes no image file: what it restores goes back to the driver as data (the output's bytes, and the face crops
``--save-faces`` asks for, from ``pipeline.stages``), and the driver writes them (``pipeline.item.Outputs``); only
videos and animations are read and written by the actor itself (``VideoTask``, ``RangeTask``). Neither Ray nor
torch is imported here at import time: the driver applies ``ray.remote`` to ``RestoreActor`` when it builds the
pool, and the actor imports the pipeline when it starts, so the driver can import the task and outcome types alone.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ImageError, RestoreCliError, SetupError, UsageError
from ..images.formats import OutputFormat
from ..options import RestoreOptions, model_key

if TYPE_CHECKING:
    from concurrent.futures import Future

    from ..pipeline import Restorer
    from ..pipeline.flow import Clock
    from ..pipeline.overlap import WriteBehind
    from ..pipeline.stages import Prepared, Restored


@dataclass(frozen=True)
class ImageTask:
    """One image to restore: its bytes, read by the driver, and what to make of them."""

    source: str  # the input's path in the queue, as the local worker names it: errors name it so
    data: bytes
    options: RestoreOptions  # the job's options; their output folder is the driver's, unused here
    fmt: OutputFormat  # the format its output is written in
    faces_stem: str  # the output's stem, which --save-faces' crops are named after


@dataclass(frozen=True)
class VideoTask:
    """One video (or animated GIF, PNG or WebP) to restore whole, read from the file the driver names and written
    (by ``video.restore``, or ``video.animated`` in the animation's own format; atomically, a video with its
    segments' parts folder beside it, so a retried actor goes on from the last segment kept)
    under ``output``: a temporary name in the job's work folder, which the driver renames into place. The actor
    reads and writes these files itself: the queue's folder must be at the same path on the actor's node."""

    source: str  # the input's path in the queue, as the local worker names it: errors name it so
    output: str
    options: RestoreOptions
    progress: str | None = None  # where the frames done so far are told (``tell_frames``), for the job's status


@dataclass(frozen=True)
class RangeTask:
    """Frames ``first`` to ``stop`` (None: the end) of a video that several actors restore at once, each a range
    (``video.ranges``): restored into segments kept in the parts folder of ``output`` (the video's planned output
    in the job's work folder), which the driver joins once every range is in. A range taken up again after its
    actor died goes on from its last finished segment. The actor reads and writes the queue's folder itself."""

    source: str
    output: str
    options: RestoreOptions
    first: int
    stop: int | None
    progress: str | None = None


@dataclass(frozen=True)
class SetupFailure:
    """The job's models could not be loaded: what ``Restorer.from_options`` raised, as data."""

    message: str
    usage: bool  # a UsageError: the job's own options are wrong
    of_this_machine: bool  # what is missing can be provided where the actor runs (weights, a device)

    def error(self) -> SetupError | UsageError:
        if self.usage:
            return UsageError(self.message)
        error = SetupError(self.message)
        error.of_this_machine = self.of_this_machine
        return error


@dataclass(frozen=True)
class ImageOutcome:
    """What an actor made of an ``ImageTask``: the output's bytes and sizes, or the image's error; or, where the
    job cannot run at all, ``setup`` (its models) or ``failure`` (a restorecli error that is no image's)."""

    data: bytes | None = None
    in_size: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None
    faces: int | None = None
    seconds: float = 0.0
    error: str | None = None
    crops: tuple[tuple[str, bytes], ...] = ()  # --save-faces' files: (name, PNG bytes)
    setup: SetupFailure | None = None
    failure: str | None = None
    ran: dict[str, str] | None = None  # the model, device and precision that ran (``Restorer.setup``)
    pid: int = 0  # the actor's process, which the driver names when it dies
    colorized: bool | None = None  # whether --colorize colourised it (None: --colorize never)
    video: dict | None = None  # a video's frames, fps, duration, codec, ... (``VideoResult.facts``)


def tell_frames(path: str | None) -> Callable[[Any], None] | None:
    """What tells a video's progress (``VideoProgress``: frames done, of how many) in the file ``path``, which the
    driver reads into the job's status: each frame's, replacing the last (not made durable: it is read while the
    video runs, and means nothing after)."""
    if path is None:
        return None
    from ..files import write_atomic

    def tell(progress: Any) -> None:
        write_atomic(Path(path), json.dumps({"done": progress.done, "total": progress.total}).encode(), durable=False)

    return tell


def _video_outcome(restorer: Restorer, done: Any, clock: Clock) -> ImageOutcome:
    """What an actor made of a video or a range of one (``done``: a ``VideoResult``)."""
    colorized = None if restorer.colouriser is None else False  # frames are not colourised, as locally
    return ImageOutcome(None, done.in_size, done.out_size, None, clock.seconds,
                        ran=restorer.setup, pid=os.getpid(), colorized=colorized, video=done.facts())


@dataclass(frozen=True)
class _Image:
    """An image task on its way through the actor's loop, with the models its options loaded."""

    task: ImageTask
    restorer: Restorer


def _prepare(image: _Image) -> Prepared:
    """The reader thread's part of an image: decoded, sized and its faces found."""
    task = image.task
    return image.restorer.prepare(task.data, task.source, task.options, task.fmt)


class RestoreActor:
    """Loads the models once per option set (``options.model_key``, the local worker's cache key) and keeps
    them for every later image that agrees on it."""

    def __init__(self, threads: int | None = None):
        import torch

        if threads:  # Ray sets OMP_NUM_THREADS to the CPUs reserved, rounded down (1 below one)
            torch.set_num_threads(threads)
        from ..pipeline.flow import Served

        self._restorers: dict[tuple, Restorer] = {}
        self._model = threading.Lock()  # loading models and running them (an image's, a video's): one at a time
        self._images: Served[_Image, Prepared, Restored] = Served(_prepare, self._run)  # its thread: at the first

    def close(self) -> None:
        """End the threads of its images' loop once the images sent are answered (a process that goes on after its
        actor, as a test's; in an actor's own process they end with it)."""
        self._images.close()

    def pid(self) -> int:
        """The actor's process id; answering at all says it is up (the driver's readiness probe)."""
        return os.getpid()

    def restore(self, task: ImageTask) -> ImageOutcome:
        """Decode, restore and encode ``task``'s image; its failures come back as data, never raised. Its
        ``seconds`` are its own work (loading its models where they were not, decoding, the model, encoding), not
        its waits behind the images of the calls beside it."""

        def work(restorer: Restorer, clock: Clock) -> ImageOutcome:
            done = self._images.call(_Image(task, restorer), clock)
            return ImageOutcome(done.data, done.in_size, done.out_size, done.faces, clock.seconds, crops=done.crops,
                                ran=restorer.setup, pid=os.getpid(), colorized=done.colorized)

        return self._guarded(task.source, task.options, work)

    def _run(self, image: _Image, prepared: Prepared, behind: WriteBehind) -> Future[Restored]:
        """The model thread's part of an image: the model (beside no loading), then its encoding handed to the
        writer thread, which the next image's model run does not wait for."""
        task = image.task
        with self._model:
            enhanced = image.restorer.enhance(prepared, task.source, task.options, task.fmt)
        return behind.encoded(lambda: enhanced.encode(task.fmt, task.options, task.faces_stem), enhanced.nbytes)

    def restore_video(self, task: VideoTask) -> ImageOutcome:
        """Restore ``task``'s video (or animation) whole into its ``output`` file (the driver sends it to an actor
        holding nothing else); its failures come back as data, never raised."""
        from ..video.animated import restore_animation
        from ..video.formats import is_video_name
        from ..video.restore import restore_video, video_options  # PyAV only where a video is restored

        def work(restorer: Restorer, clock: Clock) -> ImageOutcome:
            settings = video_options(task.options, lambda w, h: restorer.output_size((w, h), task.options.outscale))
            source, output, told = Path(task.source), Path(task.output), tell_frames(task.progress)
            with self._model:
                if is_video_name(task.source):
                    done = restore_video(source, output, restorer, settings, name=task.source, on_progress=told)
                else:  # an animated GIF, PNG or WebP, written back in its own format as a local batch writes it
                    done = restore_animation(source, output, restorer, settings, name=task.source, on_progress=told,
                                             quality=task.options.quality)
            return _video_outcome(restorer, done, clock)

        return self._guarded(task.source, task.options, work)

    def restore_range(self, task: RangeTask) -> ImageOutcome:
        """Restore ``task``'s range of frames into its segments (the driver sends it to an actor holding nothing
        else); its failures come back as data, never raised."""
        from ..video.ranges import FrameSpan, restore_range
        from ..video.restore import video_options

        def work(restorer: Restorer, clock: Clock) -> ImageOutcome:
            settings = video_options(task.options, lambda w, h: restorer.output_size((w, h), task.options.outscale))
            with self._model:
                done = restore_range(Path(task.source), Path(task.output), FrameSpan(task.first, task.stop),
                                     restorer, settings, task.source, tell_frames(task.progress))
            return _video_outcome(restorer, done, clock)

        return self._guarded(task.source, task.options, work)

    def _guarded(self, source: str, options: RestoreOptions,
                 work: Callable[[Restorer, Clock], ImageOutcome]) -> ImageOutcome:
        """``work(restorer, clock)`` with the job's models, its failures turned into the outcome's data: the
        models' (``setup``), the file's own (``error``), or restorecli's that are no file's (``failure``). The clock
        runs from now (the models' loading counts), and ``work`` stops it while the file waits for a thread."""
        from ..pipeline.flow import Clock
        from ..pipeline.item import failure_message

        clock = Clock()
        try:
            restorer = self._restorer(options)
        except (SetupError, UsageError) as exc:
            return ImageOutcome(setup=SetupFailure(str(exc), isinstance(exc, UsageError),
                                                   getattr(exc, "of_this_machine", False)), pid=os.getpid())
        try:
            return work(restorer, clock)
        except ImageError as exc:
            error = str(exc)
        except RestoreCliError as exc:  # not the file's: the local worker retries the job for it too
            return ImageOutcome(failure=f"{type(exc).__name__}: {exc}", pid=os.getpid())
        except Exception as exc:  # a read, model, codec or memory failure on this file, or one nobody foresaw
            error = failure_message(source, exc)
        return ImageOutcome(error=error, seconds=clock.seconds, ran=restorer.setup, pid=os.getpid())

    def _restorer(self, options: RestoreOptions) -> Restorer:
        from ..pipeline import Restorer

        key = model_key(options)
        found = self._restorers.get(key)  # models loaded already: taken without waiting for the one running
        if found is None:
            with self._model:  # loading: beside no model run, and once for images that arrive together
                if key not in self._restorers:
                    self._restorers[key] = Restorer.from_options(options)
                found = self._restorers[key]
        return found

