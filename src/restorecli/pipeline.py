"""Restore one image or a batch from options. Reports progress through a callback and returns results.

A failed item is data (``status="error"`` with its reason); the batch goes on.
"""

from __future__ import annotations

import errno
import time
import warnings
from collections import deque
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

import numpy as np
import torch

from .engine.backends.choice import BackendChoice, build_backend, choose_backend, host_device, runs_torch
from .engine.device import choose_device, choose_dtype, place_model, precision_name
from .engine.enhance import (
    EngineOptions,
    Enhanced,
    enhance,
    enhance_rows,
    output_size,
    streamable,
    target_size,
)
from .engine.faces.enhance import (
    FaceOptions,
    FacePlan,
    FaceReport,
    FaceStage,
)
from .engine.precision import checked, is_precision_error
from .engine.tiling import TileProgress
from .errors import ImageError, PrecisionFallback, RestoreCliError, UsageError
from .files import STDIO, check_output_folder, remove_abandoned_temporaries, write_atomic
from .images import (
    SIXTEEN_BIT_FORMATS,
    STRIP_WRITERS,
    DecodedImage,
    OutputFormat,
    check_output_pixels,
    check_output_size,
    decode_image,
    encode_image,
    float_to_uint8,
    probe,
    read_input_file,
    read_input_stream,
    strip_writer,
)
from .models.integrity import sha256_of
from .models.loading import LoadedModel, load_face_weights, load_model, native_graph_for, weights_dir
from .models.registry import REGISTRY
from .options import RestoreOptions
from .overlap import Halted, ReadAhead, WriteBehind
from .plan import (
    BatchResult,
    FileFacts,
    InputItem,
    ItemResult,
    OutputPlanner,
    PlannedOutput,
    ProgressCallback,
    claim_name,
    collect_inputs,
    decided_result,
    error_result,
    named_format,
    output_format,
    output_path_for,
    plan_outputs,
    unforeseen_error,
)
from .video.formats import is_video_name


T = TypeVar("T")


@dataclass(frozen=True)
class Restored:
    data: bytes | None  # the encoded output file (None: it went straight to a file)
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    faces: int | None


class Restorer:
    """Models loaded on their device, ready to restore many images. Reused across a batch or a queue."""

    def __init__(self, model: LoadedModel, engine: EngineOptions, faces: FaceStage | None = None,
                 options: RestoreOptions | None = None,
                 load_16bit: tuple[Callable[[], LoadedModel], torch.dtype] | None = None):
        self.model = model
        self.engine = engine
        self.faces = faces
        self.options = options or RestoreOptions()  # defaults for restore_array
        # 16-bit images run at a higher precision than ``engine`` (auto chose bf16 for 8-bit ones): a loader
        # for that second copy of the model, called on the first 16-bit image, and its dtype.
        self._load_16bit = load_16bit
        self._runner_16bit: tuple[LoadedModel, EngineOptions] | None = None
        self.fallback: str | None = None  # why ``auto`` runs the model in fp32 after all
        self._reload: Callable[[torch.dtype], LoadedModel] | None = None  # the model again, from its file
        self.backend: BackendChoice | None = None  # the back-end ``from_options`` chose, and why

    @classmethod
    def from_options(cls, options: RestoreOptions) -> "Restorer":
        device = choose_device(host_device(options.device, options.backend))  # the tiler's: the CPU for ncnn
        folder = weights_dir(options.weights_dir)
        model = load_model(options.model, folder)
        on_torch = runs_torch(options.backend, options.device)  # else torch's precision is not asked for
        dtype = choose_dtype(options.precision if on_torch else "fp32", device, model.spec)
        dtype_16bit = choose_dtype(options.precision if on_torch else "fp32", device, model.spec, depth=16)
        fallback = None
        if options.precision == "auto" and dtype != torch.float32:  # is the reduced precision really usable?
            verdict = checked(model, device, dtype, sha256_of(model.spec.path))
            if not verdict.ok:
                fallback = verdict.reason(dtype)
                dtype_16bit = torch.float32 if dtype_16bit == dtype else dtype_16bit
                dtype = torch.float32
        place_model(model, device, dtype)
        graph = native_graph_for(model.spec.name, model.spec.path) if options.backend != "torch" else None
        backend = choose_backend(options.backend, options.device, options.precision, model, device, dtype, graph,
                                 lambda: sha256_of(model.spec.path))
        if backend.candidate.backend != "torch":  # ncnn takes float32 windows whatever precision it runs in
            model.backend = build_backend(backend.candidate, graph)
            dtype = dtype_16bit = torch.float32
            fallback = None
        elif backend.candidate.precision != precision_name(dtype):  # auto measured torch's fp32 faster: its weights
            model = place_model(load_model(options.model, folder), device, torch.float32)  # from the file again
            dtype = dtype_16bit = torch.float32
            fallback = None
        engine = EngineOptions(device=device, dtype=dtype, tile=options.tile, tile_pad=options.tile_pad,
                               alpha=options.alpha)
        faces = None
        if options.face_enhance:
            faces = FaceStage.from_weights(load_face_weights(options.face_model, options.face_detector, folder),
                                           device)
        load_16bit = None
        if dtype_16bit != dtype:
            load_16bit = (lambda: place_model(load_model(options.model, folder), device, dtype_16bit), dtype_16bit)
        restorer = cls(model, engine, faces, options, load_16bit)
        restorer.backend = backend
        restorer._reload = lambda dtype: place_model(load_model(options.model, folder), device, dtype)
        if fallback:
            restorer._note_fallback(fallback)
        return restorer

    def _note_fallback(self, reason: str) -> None:
        """Say once that the model runs in fp32, and why; the setup (JSON summary, queue results) records it."""
        self.fallback = reason
        warnings.warn(PrecisionFallback(f"{self.model.spec.name} ({self.model.spec.architecture}) runs in fp32: "
                                        f"{reason}"), stacklevel=2)

    def _guarded(self, name: str, run: Callable[[], T]) -> T:
        """``run()``, the restoring of one image. Where it fails for its reduced precision: under ``auto`` the
        model moves to fp32 for this image and the rest (the probe at load missed the case); an explicit
        ``--precision`` stays what was asked, and the failure is this image's error, saying what to do."""
        try:
            return run()
        except Exception as exc:
            if self.engine.dtype == torch.float32 or not is_precision_error(exc):
                raise
            asked, spec = precision_name(self.engine.dtype), self.model.spec
            if self.options.precision != "auto":
                raise ImageError(f"{name}: {spec.architecture} cannot run in {asked} here ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); run it with --precision fp32") from None
            # fp32 weights from the file: rounded to bf16/fp16 and back they are not fp32's
            self.model = (self._reload(torch.float32) if self._reload is not None
                          else place_model(self.model, self.engine.device, torch.float32))
            self.engine = replace(self.engine, dtype=torch.float32)
            self._note_fallback(f"it failed in {asked} on {name}")
            return run()

    def _runner(self, color: np.ndarray, fmt: OutputFormat | None = None) -> tuple[LoadedModel, EngineOptions]:
        """The model and engine options for this image: the 16-bit copy for uint16 planes where there is one,
        unless the output is ``fmt`` that holds 8 bits only (JPEG, WebP), which bf16's steps never reach."""
        model, engine = self.model, self.engine
        keeps_16bit = fmt is None or fmt in SIXTEEN_BIT_FORMATS
        if color.dtype == np.uint16 and keeps_16bit and self._load_16bit is not None:
            if self._runner_16bit is None:
                load, dtype = self._load_16bit
                self._runner_16bit = (load(), replace(self.engine, dtype=dtype))
            model, engine = self._runner_16bit
        return model, engine

    @property
    def setup(self) -> dict[str, str]:
        """What runs: the model's name, the device and the precision ``auto`` resolved to; where 16-bit
        images ran at another precision, that one too (``precision_16bit``, once one has)."""
        setup = {"model": self.model.spec.name, "device": str(self.engine.device),
                 "precision": precision_name(self.engine.dtype), "backend": "torch"}
        if self.faces is not None:
            setup["face_model"] = self.faces.name
        if self.backend is not None and self.backend.candidate.backend != "torch":
            chosen = self.backend.candidate
            setup.update(backend=chosen.backend, device=chosen.device, precision=chosen.precision)
        if self.backend is not None and self.backend.reason.startswith("measured"):
            setup["backend_reason"] = self.backend.reason
        if self._runner_16bit is not None:
            setup["precision_16bit"] = precision_name(self._runner_16bit[1].dtype)
        if self.fallback:
            setup["precision_fallback"] = self.fallback
        return setup

    def restore_array(self, color: np.ndarray, alpha: np.ndarray | None = None,
                      options: RestoreOptions | None = None) -> np.ndarray:
        """Upscale (and restore faces in) an H x W x C array; returns the colour planes. For callers that
        measure rather than write files."""
        return self._restore(color, alpha, options or self.options)[0].color

    def _restore(self, color: np.ndarray, alpha: np.ndarray | None, options: RestoreOptions,
                 on_tile: TileProgress | None = None, fmt: OutputFormat | None = None,
                 faces: FacePlan | None = None) -> tuple[Enhanced, FaceReport | None]:
        """The whole result, with its faces restored (from ``faces``, their plan, where it was made ahead)."""
        model, engine = self._runner(color, fmt)
        result = enhance(model, color, alpha, engine, options.outscale, on_tile)
        report = None
        if self.faces is not None:
            if faces is None:
                report = self.faces.enhance(result.color, color, _face_options(options))
            else:
                report = self.faces.restore(result.color[faces.top : faces.bottom], faces)
        return result, report

    def prepare(self, data: bytes, name: str, options: RestoreOptions, fmt: OutputFormat) -> Prepared:
        """What comes before the model, for an image of ``data`` to be restored as ``fmt``: decoded, its output's
        size checked, its faces found (with ``--face-enhance``). Reads no model state that restoring changes,
        so a batch runs it for the next image on another thread."""
        decoded = decode_image(data, name, options.max_pixels)
        size = target_size(self.model, *decoded.size, options.outscale)
        check_output_size(name, fmt, size)
        check_output_pixels(name, size, options.max_output_pixels)
        faces = self.faces.plan(decoded.color, size, _face_options(options)) if self.faces is not None else None
        return Prepared(decoded, size, self._streams(decoded, options, fmt), faces)

    def restore_bytes(self, data: bytes, name: str, options: RestoreOptions, fmt: OutputFormat,
                      faces_stem: str | None = None, on_tile: TileProgress | None = None) -> Restored:
        """Decode, enhance (and restore faces) and encode one image as ``fmt``. With ``--save-faces``,
        the aligned and restored crops are written under ``faces_stem``. ``on_tile(done, total)`` follows
        the tiles of each pass through the model."""
        return self.encode_prepared(self.prepare(data, name, options, fmt), name, options, fmt, faces_stem, on_tile)

    def encode_prepared(self, prepared: Prepared, name: str, options: RestoreOptions, fmt: OutputFormat,
                        faces_stem: str | None = None, on_tile: TileProgress | None = None) -> Restored:
        """``restore_bytes`` of an image ``prepare`` made ready."""
        restored, encode = self.enhance_prepared(prepared, name, options, fmt, faces_stem, on_tile)
        return replace(restored, data=encode())

    def enhance_prepared(self, prepared: Prepared, name: str, options: RestoreOptions, fmt: OutputFormat,
                         faces_stem: str | None = None, on_tile: TileProgress | None = None,
                         ) -> tuple[Restored, Callable[[], bytes]]:
        """The model's part of ``encode_prepared``: what was restored (its ``data`` not yet made) and what encodes
        it (and writes ``--save-faces``' crops), which touches no model state, so a caller may run it on another
        thread while the model takes the next image."""
        return self._guarded(name, lambda: self._restore_enhanced(prepared, name, options, fmt, faces_stem, on_tile))

    def restore_behind(self, prepared: Prepared, name: str, options: RestoreOptions, fmt: OutputFormat, output: Path,
                       behind: WriteBehind, on_tile: TileProgress | None = None) -> tuple[Restored, Future[float]]:
        """Run the model on an image ``prepare`` made ready, the output handed to ``behind`` to encode and write
        while the caller goes on; returns what was restored and the future of the file being complete (or of the
        error that lost it). The output is encoded a strip of rows at a time as the tiles finish, resized to
        ``--outscale`` on the way, so its colour planes are never whole in memory (an alpha plane is; with faces,
        the rows from the first face's top to the last face's bottom are held until the faces are restored;
        WebP's writer gathers the rows for its encoder). ``--save-faces`` crops are written after the output."""
        return self._guarded(name, lambda: self._restore_to_file(prepared, name, options, fmt, output, behind,
                                                                 on_tile))

    def _restore_to_file(self, prepared: Prepared, name: str, options: RestoreOptions, fmt: OutputFormat,
                         output: Path, behind: WriteBehind,
                         on_tile: TileProgress | None) -> tuple[Restored, Future[float]]:
        decoded, size, plan = prepared.decoded, prepared.size, prepared.faces
        faces = len(plan.faces) if plan is not None else None
        if not prepared.streams:
            result, report = self._restore(decoded.color, decoded.alpha, options, on_tile, fmt, plan)
            written = behind.file(output, _encoder(result, decoded, fmt, options),
                                  result.color.nbytes + (result.alpha.nbytes if result.alpha is not None else 0),
                                  then=_faces_saver(options, output.stem, report))
            return Restored(None, decoded.size, _size_of(result), faces), written
        planes = decoded.color.shape[2] + (decoded.alpha is not None)
        strips = behind.strips(output, lambda handle: strip_writer(fmt, handle, *size, planes, decoded.color.dtype,
                                                                   quality=options.quality,
                                                                   **decoded.metadata_for(size)))
        try:
            sink = self.faces.rows(strips, plan, decoded.color.shape[2]) if plan is not None and plan.faces else strips
            model, engine = self._runner(decoded.color, fmt)
            enhance_rows(model, decoded.color, engine, sink, on_tile, options.outscale, decoded.alpha)
        except BaseException:
            strips.abort()
            raise
        report = sink.reports[-1] if sink is not strips and sink.reports else None  # the last pass's crops
        return Restored(None, decoded.size, size, faces), strips.finish(then=_faces_saver(options, output.stem, report))

    def _streams(self, decoded: DecodedImage, options: RestoreOptions, fmt: OutputFormat) -> bool:
        # 16-bit grey+alpha TIFFs are written as RGB+alpha (see encode_image), which the strips are not
        grey16_alpha_tiff = (fmt == "tiff" and decoded.alpha is not None and decoded.color.shape[2] == 1
                             and decoded.color.dtype == np.uint16)
        return fmt in STRIP_WRITERS and not grey16_alpha_tiff and streamable(self.model, decoded.color)

    def _restore_enhanced(self, prepared: Prepared, name: str, options: RestoreOptions, fmt: OutputFormat,
                          faces_stem: str | None, on_tile: TileProgress | None = None,
                          ) -> tuple[Restored, Callable[[], bytes]]:
        decoded = prepared.decoded
        result, report = self._restore(decoded.color, decoded.alpha, options, on_tile, fmt, prepared.faces)
        save = _faces_saver(options, faces_stem or Path(name).stem, report)
        encode = _encoder(result, decoded, fmt, options)

        def finish() -> bytes:
            if save is not None:
                save()
            return encode()

        return Restored(None, decoded.size, _size_of(result), len(report.faces) if report is not None else None), finish


def _size_of(result: Enhanced) -> tuple[int, int]:
    return result.color.shape[1], result.color.shape[0]


def _encoder(result: Enhanced, decoded: DecodedImage, fmt: OutputFormat, options: RestoreOptions,
             ) -> Callable[[], bytes]:
    """What encodes a whole ``result`` as ``fmt`` with the metadata of ``decoded``, the input (scaled to it)."""
    return lambda: encode_image(result.color, result.alpha, fmt, quality=options.quality,
                                **decoded.metadata_for(_size_of(result)))


@dataclass(frozen=True)
class Prepared:
    """An image ready for the model (``Restorer.prepare``): decoded, its output's (w, h), whether the output can
    be written a strip at a time, and its faces' plan (with ``--face-enhance``)."""

    decoded: DecodedImage
    size: tuple[int, int]
    streams: bool
    faces: FacePlan | None


def _face_options(options: RestoreOptions) -> FaceOptions:
    return FaceOptions(weight=options.face_weight, only_center=options.only_center_face, max_faces=options.max_faces,
                       min_size=options.min_face_size, threshold=options.face_threshold,
                       fidelity=options.face_fidelity)


def _faces_saver(options: RestoreOptions, stem: str, report: FaceReport | None) -> Callable[[], None] | None:
    """What writes ``--save-faces`` crops of ``report`` once the output is in place (None: nothing to write)."""
    if report is None or not options.save_faces or not report.aligned:
        return None
    return lambda: _save_faces(Path(options.save_faces), stem, report)  # type: ignore[arg-type]


def _save_faces(folder: Path, stem: str, report: FaceReport) -> None:
    for index, (aligned, restored) in enumerate(zip(report.aligned, report.restored)):
        for kind, crop in (("aligned", aligned), ("restored", restored)):
            write_atomic(folder / f"{stem}_face{index}_{kind}.png", encode_image(float_to_uint8(crop), None, "png"))


def _read_source(item: InputItem, stdin: BinaryIO | None,
                 max_pixels: int) -> tuple[bytes, tuple[int, int] | None, OutputFormat | None]:
    """The input's bytes, its size where its header was read for its format (stdin's) and that format."""
    if item.source != STDIO:
        return read_input_file(Path(item.source), max_pixels), None, named_format(item)
    if stdin is None:
        raise ImageError("stdin: no input stream")
    data = read_input_stream(stdin, "stdin", max_pixels)
    size, fmt = probe(data, "stdin", max_pixels)
    return data, size, fmt


def _planned_scale(options: RestoreOptions) -> float | None:
    if options.outscale is not None:
        return options.outscale
    entry = REGISTRY.get(options.model)
    return float(entry.scale) if entry else None


# Write errors that end a batch rather than one image: no space, over quota, a read-only file system
_STORAGE_FULL = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS") if hasattr(errno, name))


def storage_full(exc: BaseException) -> bool:
    """Whether every later output would fail as this write did (no space, over quota, read-only)."""
    return isinstance(exc, OSError) and exc.errno in _STORAGE_FULL


@dataclass(frozen=True)
class _Batch:
    """What the images of one batch share: its options, its output plan, the models and the streams."""

    options: RestoreOptions
    planner: OutputPlanner
    restorer: Restorer | None  # None: a dry run
    stdin: BinaryIO | None
    stdout: BinaryIO | None
    swept: set[Path] = field(default_factory=set)  # output folders already rid of temporary files killed runs left


@dataclass(frozen=True)
class _Ready:
    """One input as the reader thread left it: decided already (``result``: skipped, planned, failed), or
    ``prepared`` for the model with its plan."""

    item: InputItem
    t0: float
    result: ItemResult | None = None
    halted: str | None = None
    planned: PlannedOutput | None = None
    fmt: OutputFormat | None = None
    prepared: Prepared | None = None
    video: bool = False  # a video, restored frame by frame at its turn (read then, not ahead)


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
    items = _batch_items(inputs, options, stdout, items)
    planner = OutputPlanner(items, options)
    if options.output_dir != STDIO:
        check_output_folder(Path(options.output_dir))
    if options.save_faces:
        check_output_folder(Path(options.save_faces), "--save-faces")
    notify("start", len(items))  # before the model loads, so a stop while it loads counts the batch too
    if restorer is None and not options.dry_run:
        restorer = Restorer.from_options(options)
    batch = _Batch(options, planner, restorer, stdin, stdout)
    order = _InOrder(notify)
    reading = ReadAhead(items, lambda item: _prepare(batch, item), lambda item: notify("reading", item.source))
    with WriteBehind(stops=storage_full) as behind, reading as ahead:

        def on_tile(done: int, total: int) -> None:
            notify("tiles", (done, total))
            order.report()  # the image before, written meanwhile
            if order.halted is not None:
                raise Halted(order.halted)
            if should_abandon is not None and should_abandon():
                raise Halted(None)

        try:
            for _ in items:
                if should_stop is not None and should_stop():
                    break
                ready = ahead.take()
                if should_stop is not None and should_stop():  # asked while it was read: before its model time
                    break
                notify("item", ready.item.source)
                _restore_item(batch, ready, behind, order, on_tile)
                order.report()
                if order.halted is not None:
                    break
        except Halted:
            pass  # an earlier output's disk is full: its result, reported below, says so
        finally:  # on a signal too: what was finished is written and reported; the image in hand was dropped
            order.report(wait=True)
    return BatchResult(order.results, round(time.perf_counter() - started, 3), restorer.setup if restorer else None,
                       halted=order.halted)


def _batch_items(inputs: list[str], options: RestoreOptions, stdout: BinaryIO | None,
                 items: list[InputItem] | None) -> list[InputItem]:
    """The batch's items: ``items`` where given, else ``inputs`` expanded, leaving out the output folder's files."""
    to_stdout = options.output_dir == STDIO
    if to_stdout and stdout is None:
        raise UsageError("-o - needs an output stream")
    if items is not None:
        return items
    return collect_inputs(inputs, options.recursive, exclude=None if to_stdout else Path(options.output_dir))


def _prepare(batch: _Batch, item: InputItem) -> _Ready:
    """Read one image and plan its output; where it is to be restored, decode it and find its faces (the reader
    thread's work, an image ahead of the model)."""
    if item.source != STDIO and is_video_name(item.source):
        return _prepare_video(batch, item)
    t0 = time.perf_counter()
    planned: PlannedOutput | None = None
    in_size = None
    try:
        data, in_size, input_format = _read_source(item, batch.stdin, batch.options.max_pixels)
        planned = batch.planner.plan(item, input_format)
        decided = decided_result(planned, in_size, t0)
        if decided is not None:
            return _Ready(item, t0, decided)
        if batch.options.dry_run:
            return _Ready(item, t0, _dry_run_result(planned, data, batch.options), planned=planned)
        fmt = output_format(batch.options, input_format)
        assert batch.restorer is not None
        return _Ready(item, t0, planned=planned, fmt=fmt,
                      prepared=batch.restorer.prepare(data, item.source, batch.options, fmt))
    except ImageError as exc:
        return _Ready(item, t0, *_failure(item, planned.output if planned else None, exc, in_size, t0))
    except RestoreCliError:
        raise
    except Exception as exc:  # a codec or memory failure on this image, or one nobody foresaw
        return _Ready(item, t0, *_failure(item, planned.output if planned else None, exc, in_size, t0))


def _prepare_video(batch: _Batch, item: InputItem) -> _Ready:
    """A video's plan: its output keeps the container. Its frames are read as it is restored (``_restore_video``)."""
    t0 = time.perf_counter()
    planned = batch.planner.plan(item, None)
    decided = decided_result(planned, None, t0)
    if decided is not None:
        return _Ready(item, t0, decided)
    if planned.output is None:  # -o -
        return _Ready(item, t0, error_result(item, None, f"{item.source}: a video is written into a folder, not to "
                                             "stdout; give -o DIR", None, t0))
    if batch.options.dry_run:
        return _Ready(item, t0, ItemResult(item.source, str(planned.output), "planned"), planned=planned)
    return _Ready(item, t0, planned=planned, video=True)


def _restore_video(batch: _Batch, ready: _Ready, notify: ProgressCallback) -> ItemResult:
    """Restore a video at its turn, on the batch's thread (its frames decoded ahead and encoded behind on threads
    of its own); its failure is its result, and the batch goes on."""
    from .video.restore import restore_video, video_options  # PyAV only where a video is restored

    item, output = ready.item, ready.planned.output if ready.planned else None
    assert output is not None
    if batch.restorer is None:  # no image before it has loaded the models
        batch.restorer = Restorer.from_options(batch.options)
    if output.parent not in batch.swept:  # as for an image: what killed runs left there goes first
        remove_abandoned_temporaries(output.parent)
        batch.swept.add(output.parent)
    model, outscale = batch.restorer.model, batch.options.outscale
    settings = video_options(batch.options, lambda w, h: target_size(model, w, h, outscale))
    try:
        done = restore_video(Path(item.source), output, batch.restorer, settings, name=item.source,
                             on_codec=lambda choice: notify("codec", (item.source, choice.codec, choice.reason)),
                             on_progress=lambda p: notify("frames", (p.done, p.total, p.fps)))
    except RestoreCliError as exc:
        if not isinstance(exc, ImageError):
            raise
        return _failure(item, output, exc, None, ready.t0)[0]
    except Exception as exc:  # a model or codec failure on this video, or one nobody foresaw
        return _failure(item, output, exc, None, ready.t0)[0]
    return ItemResult(item.source, str(output), "ok", None, done.in_size, done.out_size,
                      round(time.perf_counter() - ready.t0, 3), video=done.facts())


def _restore_item(batch: _Batch, ready: _Ready, behind: WriteBehind, order: _InOrder, on_tile: TileProgress) -> None:
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
        return order.add(_restore_video(batch, ready, order.notify))
    assert planned is not None and prepared is not None and ready.fmt is not None and batch.restorer is not None
    output = planned.output
    try:
        if output is None:  # -o -: onto stdout
            assert batch.stdout is not None
            done = batch.restorer.encode_prepared(prepared, item.source, batch.options, ready.fmt, "stdin", on_tile)
            batch.stdout.write(done.data)  # type: ignore[arg-type]
            batch.stdout.flush()
            return order.add(_ok(item, STDIO, done, t0, time.perf_counter()))
        if output.parent not in batch.swept:
            remove_abandoned_temporaries(output.parent)
            batch.swept.add(output.parent)
        done, written = batch.restorer.restore_behind(prepared, item.source, batch.options, ready.fmt, output, behind,
                                                      on_tile)
    except ImageError as exc:
        return order.add(*_failure(item, output, exc, in_size, t0))
    except RestoreCliError:
        raise
    except Exception as exc:  # a model, codec or memory failure on this image, or one nobody foresaw
        return order.add(*_failure(item, output, exc, in_size, t0))

    def settle(future: Future[float]) -> tuple[ItemResult, str | None]:
        exc = future.exception()
        if exc is None:
            return _ok(item, str(output), done, t0, future.result()), None
        return _failure(item, output, exc if isinstance(exc, Exception) else RuntimeError(str(exc)), in_size, t0)

    order.add_written(written, settle)


def _ok(item: InputItem, output: str, done: Restored, t0: float, finished: float) -> ItemResult:
    return ItemResult(item.source, output, "ok", None, done.in_size, done.out_size, round(finished - t0, 3), done.faces)


def _dry_run_result(planned: PlannedOutput, data: bytes, options: RestoreOptions) -> ItemResult:
    in_size, _ = probe(data, planned.item.source, options.max_pixels)  # refused as the run would
    scale = _planned_scale(options)
    out_size = output_size(*in_size, scale) if scale else None
    return ItemResult(planned.item.source, str(planned.output) if planned.output else STDIO, "planned", None,
                      in_size, out_size)


def _failure(item: InputItem, output: Path | None, exc: Exception, in_size: tuple[int, int] | None,
             t0: float) -> tuple[ItemResult, str | None]:
    """An image's failure as its result, and why the batch halts where no later image could be written."""
    if isinstance(exc, ImageError):
        return error_result(item, output, str(exc), in_size, t0), None
    if not isinstance(exc, OSError):
        return error_result(item, output, unforeseen_error(item.source, exc, in_size), in_size, t0), None
    where = f": {exc.filename}" if exc.filename else ""  # which file or folder, read or written
    halted = None
    if storage_full(exc) and output is not None:
        # every later image would fail the same way, after spending its model time: stop here
        halted = f"{exc.strerror}: {exc.filename or output.parent}"
    return error_result(item, output, f"{item.source}: {exc.strerror or exc}{where}", in_size, t0), halted


__all__ = [
    "BatchResult", "FileFacts", "InputItem", "ItemResult", "OutputPlanner", "PlannedOutput", "RestoreOptions", "Restorer",
    "claim_name", "collect_inputs", "output_path_for", "plan_outputs", "restore_batch",
]
