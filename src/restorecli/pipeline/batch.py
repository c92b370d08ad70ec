"""The local batch: restore every input of a run in order, reporting progress through a callback, and return the
results. A failed item is data (``status="error"`` with its reason); the batch goes on.

The model never waits for the host: while it runs on image i, image i+1 is read, decoded and its faces found on a
reader thread (``ReadAhead``), and image i-1 is encoded and written on a writer thread (``WriteBehind``): the loop
of ``flow``, which the Ray actor runs too. The queue's worker runs a job as such a batch; the Ray pool spreads the
same per-image steps (``item``) over actors.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from ..engine.tiling import TileProgress
from ..errors import ImageError, RestoreCliError
from ..files import STDIO, check_output_folder
from ..images import OutputFormat, strip_writer
from ..options import RestoreOptions
from .flow import Clock, run_flow
from .overlap import Halted, WriteBehind
from ..plan import (
    BatchResult,
    InputItem,
    ItemResult,
    OutputPlanner,
    PlannedOutput,
    ProgressCallback,
    decided_result,
    dry_run_result,
    error_result,
    named_format,
    output_format,
    run_items,
)
from ..video.animated import is_animated_file
from ..video.formats import is_video_name
from .item import Outputs, failure, ok, read_source, storage_full
from .runner import Restorer
from .stages import Prepared, Restored, face_crops


@dataclass
class _Batch:
    """What the images of one batch share: its options, its output plan, the models and the streams."""

    options: RestoreOptions
    planner: OutputPlanner
    restorer: Restorer | None  # None: a dry run, or none loaded yet (every output was there when the batch began)
    stdin: BinaryIO | None
    stdout: BinaryIO | None
    outputs: Outputs  # output folders already rid of temporary files killed runs left
    _loading: threading.Lock = field(default_factory=threading.Lock)

    def models(self) -> Restorer:
        """The loaded models, loaded now where the batch began with none to restore (an output removed since)."""
        with self._loading:
            if self.restorer is None:
                self.restorer = Restorer.from_options(self.options)
            return self.restorer


@dataclass(frozen=True)
class _Ready:
    """One input as the reader thread left it: decided already (``result``: skipped, planned, failed), or
    ``prepared`` for the model with its plan."""

    item: InputItem
    clock: Clock  # its own work: paused once it is prepared, until its turn comes
    result: ItemResult | None = None
    halted: str | None = None
    planned: PlannedOutput | None = None
    fmt: OutputFormat | None = None
    prepared: Prepared | None = None
    video: bool = False  # a video, restored frame by frame at its turn (read then, not ahead)

    @property
    def t0(self) -> float:
        """When its result's seconds count from (``Clock.started``)."""
        return self.clock.started

    def at_its_turn(self) -> _Ready:
        """Its clock running again: an image's seconds count its own work, not the time it waited, read ahead, for
        the model to finish the image before it."""
        self.clock.resume()
        return self


class _InOrder:
    """The batch's results, reported (``done``) in the batch's order as they finish: an image being written
    behind holds back the results after it. The first result that halts the batch (a full disk) is the last."""

    def __init__(self, notify: ProgressCallback):
        self.notify = notify
        self.results: list[ItemResult] = []
        self.halted: str | None = None
        self._waiting: deque[tuple[Future[float] | None, Callable[[Future[float] | None], tuple[ItemResult,
                                                                                               str | None]]]] = deque()

    def add(self, result: ItemResult, halted: str | None = None) -> None:
        self._waiting.append((None, lambda _: (result, halted)))

    def add_written(self, written: Future[float], settle: Callable[[Future[float]], tuple[ItemResult, str | None]],
                    ) -> None:
        self._waiting.append((written, settle))  # type: ignore[arg-type]

    def report(self, wait: bool = False) -> None:
        """Report each result at the front that is settled (with ``wait``: every one, waiting for their files)."""
        while self._waiting and self.halted is None:
            written, settle = self._waiting[0]
            if written is not None and not written.done():
                if not wait:
                    return
                futures.wait((written,))
            self._waiting.popleft()
            result, self.halted = settle(written)
            self.results.append(result)
            self.notify("done", result)
        if self.halted is not None:
            self._waiting.clear()  # begun after the batch's end: left for the next run, as if never started


def restore_batch(
    inputs: list[str],
    options: RestoreOptions,
    on_progress: ProgressCallback | None = None,
    restorer: Restorer | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    should_stop: Callable[[], bool] | None = None,
    items: list[InputItem] | None = None,
    should_abandon: Callable[[], bool] | None = None,
) -> BatchResult:
    """Restore every input; returns one result per input processed. Setup errors (weights, device) raise
    before any image is touched; image errors become items with ``status="error"``. ``should_stop`` is
    asked before each image: when it says yes, the batch ends there (the rest is left for a later run).
    ``items``, when given, replaces the expansion of ``inputs`` (callers that already know each output's place).
    ``should_abandon`` is asked between tiles: when it says yes (a queued job cancelled), the image in hand is
    dropped, unwritten, and the batch ends there.
    Each output is planned (``OutputPlanner``) as the batch reaches its image, then written, described (a dry
    run: ``status="planned"``), skipped or counted an error as planned.

    The model never waits for the host: while it runs on image i, image i+1 is read, decoded and its faces found
    on a reader thread (``ReadAhead``), and image i-1 is encoded and written on a writer thread (``WriteBehind``).
    Results are still reported in the batch's order, each once its file is in place (so an image's ``done`` may
    come after the next one's ``item``); ``("reading", source)`` says an input is being read ahead. A stop, a
    signal or a full disk leaves no partial file, and what was reported done is on disk."""
    started = time.perf_counter()
    notify = on_progress or (lambda event, payload: None)
    items = items if items is not None else run_items(inputs, options, stdout)
    planner = OutputPlanner(items, options)
    if options.output_dir != STDIO:
        check_output_folder(Path(options.output_dir))
    if options.save_faces:
        check_output_folder(Path(options.save_faces), "--save-faces")
    notify("start", len(items))  # before the model loads, so a stop while it loads counts the batch too
    if restorer is None and not options.dry_run and not _all_done(items, options):
        restorer = Restorer.from_options(options, notice=lambda text: notify("notice", text))
    batch = _Batch(options, planner, restorer, stdin, stdout, Outputs(options.save_faces))
    order = _InOrder(notify)
    _run(batch, items, order, should_stop or (lambda: False), should_abandon or (lambda: False))
    return BatchResult(order.results, round(time.perf_counter() - started, 3),
                       batch.restorer.setup if batch.restorer else None, halted=order.halted)


def _all_done(items: list[InputItem], options: RestoreOptions) -> bool:
    """Whether every output is in place already (a re-run of a finished batch): then no model is loaded."""
    if any(item.source == STDIO for item in items):
        return False
    planner = OutputPlanner(items, options)  # each planned as its turn will plan it: an animation as itself
    return all(planner.plan(item, named_format(item), own_format=_frame_by_frame(item)).action == "skip"
               for item in items)


def _frame_by_frame(item: InputItem) -> bool:
    """Whether ``item`` is restored frame by frame: a video by its name, an animated GIF, PNG or WebP by its
    content (read from its header); its output then keeps its own format."""
    return item.source != STDIO and (is_video_name(item.source) or is_animated_file(Path(item.source)))


def _run(batch: _Batch, items: list[InputItem], order: _InOrder, should_stop: Callable[[], bool],
         should_abandon: Callable[[], bool]) -> None:
    """The batch's loop (``flow.run_flow``): each image taken from the reader thread at its turn, run, and handed to
    the writer."""
    notify = order.notify

    def checkpoint() -> None:
        """Between tiles (and a video's frames): the image before reported once written; the run ended where its
        disk is full or its job was abandoned (cancelled)."""
        order.report()
        if order.halted is not None:
            raise Halted(order.halted)
        if should_abandon():
            raise Halted(None)

    def on_tile(done: int, total: int) -> None:
        notify("tiles", (done, total))
        checkpoint()

    def restore(ready: _Ready, behind: WriteBehind) -> bool:
        ready = ready.at_its_turn()
        notify("item", ready.item.source)
        _restore_item(batch, ready, behind, order, on_tile, checkpoint)
        order.report()
        return order.halted is None

    try:
        run_flow(items, lambda item: _prepare(batch, item), restore, should_stop=should_stop, stops=storage_full,
                 on_start=lambda item: notify("reading", item.source))
    except Halted:
        pass  # an earlier output's disk is full: its result, reported below, says so
    finally:  # on a signal too: what was finished is written and reported; the image in hand was dropped
        order.report(wait=True)


def _prepare(batch: _Batch, item: InputItem) -> _Ready:
    """Read one image and plan its output; where it is to be restored, decode it and find its faces (the reader
    thread's work, an image ahead of the model)."""
    if _frame_by_frame(item):
        return _prepare_video(batch, item)  # an animated GIF, PNG or WebP too, by its content
    clock = Clock()
    t0 = clock.started
    planned: PlannedOutput | None = None
    in_size = None
    try:
        data, in_size, input_format = read_source(item, batch.stdin, batch.options.max_pixels)
        planned = batch.planner.plan(item, input_format)
        decided = decided_result(planned, in_size, t0)
        if decided is not None:
            return _Ready(item, clock, decided)
        if batch.options.dry_run:
            return _Ready(item, clock, dry_run_result(planned, data, batch.options), planned=planned)
        fmt = output_format(batch.options, input_format)
        prepared = batch.models().prepare(data, item.source, batch.options, fmt)
        clock.pause()  # until its turn
        return _Ready(item, clock, planned=planned, fmt=fmt, prepared=prepared)
    except ImageError as exc:
        return _Ready(item, clock, *failure(item, planned.output if planned else None, exc, in_size, t0))
    except RestoreCliError:
        raise
    except Exception as exc:  # a codec or memory failure on this image, or one nobody foresaw
        return _Ready(item, clock, *failure(item, planned.output if planned else None, exc, in_size, t0))


def _prepare_video(batch: _Batch, item: InputItem) -> _Ready:
    """A video's plan: its output keeps the container. Its frames are read as it is restored (``_restore_video``)."""
    clock = Clock()
    t0 = clock.started
    planned = batch.planner.plan(item, None, own_format=True)
    decided = decided_result(planned, None, t0)
    if decided is not None:
        return _Ready(item, clock, decided)
    if planned.output is None:  # -o -
        return _Ready(item, clock, error_result(item, None, f"{item.source}: a video is written into a folder, not "
                                                "to stdout; give -o DIR", None, t0))
    if batch.options.dry_run:
        return _Ready(item, clock, _planned_video(batch, planned, t0), planned=planned)
    return _Ready(item, clock, planned=planned, video=True)


def _planned_video(batch: _Batch, planned: PlannedOutput, t0: float) -> ItemResult:
    """A dry run's result for a video or an animation: its output, frame sizes (the output's where the scale is
    known without the model, and refused over --max-output-pixels as the run would), and the part's frames and
    seconds from its header (``video.dry_run``)."""
    from ..images.formats import check_output_pixels, output_size
    from ..plan import planned_scale
    from ..video.dry_run import plan_video
    from ..video.restore import video_options

    item, options = planned.item, batch.options
    try:
        seen = plan_video(Path(item.source), item.source, video_options(options).frames, options.keep_audio)
        scale = planned_scale(options)
        out_size = output_size(*seen.in_size, scale) if scale else None
        if out_size is not None:
            check_output_pixels(item.source, out_size, options.max_output_pixels)
    except ImageError as exc:
        return failure(item, planned.output, exc, None, t0)[0]
    return ItemResult(item.source, str(planned.output), "planned", None, seen.in_size, out_size,
                      video=seen.facts(options.video_bitrate))


def _restore_video(batch: _Batch, ready: _Ready, notify: ProgressCallback,
                   checkpoint: Callable[[], None]) -> tuple[ItemResult, str | None]:
    """Restore a video at its turn, on the batch's thread (its frames decoded ahead and encoded behind on threads
    of its own); its failure is its result, and the batch goes on, unless its disk is full (the halt's reason).
    ``checkpoint`` is called after each frame: a cancelled job's video is dropped there, unwritten."""
    from ..video.animated import restore_animation
    from ..video.restore import restore_video, video_options  # PyAV only where a video is restored

    item, output = ready.item, ready.planned.output if ready.planned else None
    assert output is not None
    batch.outputs.sweep(output.parent)  # as for an image: what killed runs left there goes first
    restorer = batch.models()
    outscale = batch.options.outscale
    settings = video_options(batch.options, lambda w, h: restorer.output_size((w, h), outscale))  # a chain's too

    def frames(progress) -> None:
        notify("frames", (progress.done, progress.total, progress.fps))
        checkpoint()

    try:
        if not is_video_name(item.source):  # an animation, in its own format
            done = restore_animation(Path(item.source), output, restorer, settings, name=item.source,
                                     on_progress=frames, quality=batch.options.quality)
        else:
            done = restore_video(Path(item.source), output, restorer, settings, name=item.source,
                                 on_codec=lambda choice: notify("codec", (item.source, choice.codec, choice.reason)),
                                 on_progress=frames)
    except RestoreCliError as exc:
        if not isinstance(exc, ImageError):
            raise
        return failure(item, output, exc, None, ready.t0)
    except Exception as exc:  # a model or codec failure on this video, a full disk, or one nobody foresaw
        return failure(item, output, exc, None, ready.t0)
    colorized = None if restorer.colouriser is None else False  # frames are not colourised (docs/restore.md)
    return ItemResult(item.source, str(output), "ok", None, done.in_size, done.out_size,
                      round(time.perf_counter() - ready.t0, 3), video=done.facts(), colorized=colorized), None


def _restore_item(batch: _Batch, ready: _Ready, behind: WriteBehind, order: _InOrder, on_tile: TileProgress,
                  checkpoint: Callable[[], None]) -> None:
    """Act on one input's plan at its turn: its result goes to ``order`` now, or once its file is written."""
    planned, prepared, item, t0 = ready.planned, ready.prepared, ready.item, ready.t0
    in_size = prepared.decoded.size if prepared is not None else None
    if planned is not None and planned.output is not None:  # a write (or a dry run's) planned an image ago
        planned = batch.planner.recheck(planned)  # another run may have finished or begun it meanwhile
        decided = decided_result(planned, in_size, t0)
        if decided is not None:
            return order.add(decided)
    if ready.result is not None:
        return order.add(ready.result, ready.halted)
    if ready.video:
        return order.add(*_restore_video(batch, ready, order.notify, checkpoint))
    assert planned is not None and prepared is not None and ready.fmt is not None
    output = planned.output
    try:
        if output is None:  # -o -: onto stdout
            return order.add(_to_stdout(batch, ready, prepared, on_tile))
        batch.outputs.sweep(output.parent)
        done, written = _restore_behind(batch, prepared, item.source, ready.fmt, output, behind, on_tile)
    except ImageError as exc:
        return order.add(*failure(item, output, exc, in_size, t0))
    except RestoreCliError:
        raise
    except Exception as exc:  # a model, codec or memory failure on this image, or one nobody foresaw
        return order.add(*failure(item, output, exc, in_size, t0))

    def settle(future: Future[float]) -> tuple[ItemResult, str | None]:
        exc = future.exception()
        if exc is None:
            return ok(item, str(output), done, t0, future.result()), None
        return failure(item, output, exc, in_size, t0)

    order.add_written(written, settle)


def _to_stdout(batch: _Batch, ready: _Ready, prepared: Prepared, on_tile: TileProgress) -> ItemResult:
    """``-o -``: the image restored whole and written onto the output stream (its face crops as ``stdin_face...``)."""
    assert batch.restorer is not None and batch.stdout is not None and ready.fmt is not None
    enhanced = batch.restorer.enhance(prepared, ready.item.source, batch.options, ready.fmt, on_tile)
    done = enhanced.encode(ready.fmt, batch.options, "stdin")
    batch.outputs.write_crops(done.crops)
    batch.stdout.write(done.data)  # type: ignore[arg-type]
    batch.stdout.flush()
    return ok(ready.item, STDIO, done, ready.t0)


def _restore_behind(batch: _Batch, prepared: Prepared, name: str, fmt: OutputFormat, output: Path,
                    behind: WriteBehind, on_tile: TileProgress) -> tuple[Restored, Future[float]]:
    """Run the model on an image ``prepare`` made ready, the output handed to ``behind`` to encode and write while
    the batch goes on; returns what was restored and the future of the file being complete (or of the error that
    lost it). A streamable output is encoded a strip of rows at a time as the tiles finish (WebP's writer gathers
    the rows for its encoder). ``--save-faces`` crops are written after the output."""
    restorer, options, decoded = batch.restorer, batch.options, prepared.decoded
    assert restorer is not None
    faces = len(prepared.faces.faces) if prepared.faces is not None else None
    if not prepared.streams:
        enhanced = restorer.enhance(prepared, name, options, fmt, on_tile)
        written = behind.file(output, lambda: enhanced.encode_output(fmt, options), enhanced.nbytes,
                              then=_crops_writer(batch, output.stem, enhanced.report))
        return Restored(None, decoded.size, enhanced.out_size, faces, colorized=prepared.colorized), written
    planes = prepared.planes
    strips = behind.strips(output, lambda handle: strip_writer(fmt, handle, *prepared.size, planes,
                                                               decoded.color.dtype, quality=options.quality,
                                                               **prepared.metadata()))
    try:
        report = restorer.enhance_rows(prepared, name, options, fmt, strips, on_tile)
    except BaseException:
        strips.abort()
        raise
    done = Restored(None, decoded.size, prepared.size, faces, colorized=prepared.colorized)
    return done, strips.finish(then=_crops_writer(batch, output.stem, report))


def _crops_writer(batch: _Batch, stem: str, report) -> Callable[[], None] | None:
    """What writes ``--save-faces`` crops of ``report`` once the output is in place (None: nothing to write)."""
    if report is None or not batch.options.save_faces or not report.aligned:
        return None
    return lambda: batch.outputs.write_crops(face_crops(stem, report))


__all__ = ["restore_batch"]
