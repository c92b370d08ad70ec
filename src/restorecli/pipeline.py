"""Restore one image or a batch from options. Reports progress through a callback and returns results.

A failed item is data (``status="error"`` with its reason); the batch goes on.
"""

from __future__ import annotations

import errno
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch

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
    FaceReport,
    FaceStage,
)
from .engine.precision import checked, is_precision_error
from .engine.tiling import TileProgress
from .errors import ImageError, PrecisionFallback, RestoreCliError, UsageError
from .files import STDIO, atomic_writer, check_output_folder, remove_abandoned_temporaries, write_atomic
from .images import (
    SIXTEEN_BIT_FORMATS,
    STRIP_WRITERS,
    DecodedImage,
    OutputFormat,
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
from .models.loading import LoadedModel, load_face_weights, load_model, weights_dir
from .models.registry import REGISTRY
from .options import RestoreOptions
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
    named_format,
    output_format,
    output_path_for,
    plan_outputs,
)


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

    @classmethod
    def from_options(cls, options: RestoreOptions) -> "Restorer":
        device = choose_device(options.device)
        folder = weights_dir(options.weights_dir)
        model = load_model(options.model, folder)
        dtype = choose_dtype(options.precision, device, model.spec)
        dtype_16bit = choose_dtype(options.precision, device, model.spec, depth=16)
        fallback = None
        if options.precision == "auto" and dtype != torch.float32:  # is the reduced precision really usable?
            verdict = checked(model, device, dtype, sha256_of(model.spec.path))
            if not verdict.ok:
                fallback = verdict.reason(dtype)
                dtype_16bit = torch.float32 if dtype_16bit == dtype else dtype_16bit
                dtype = torch.float32
        place_model(model, device, dtype)
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
        restorer._reload = lambda dtype: place_model(load_model(options.model, folder), device, dtype)
        if fallback:
            restorer._note_fallback(fallback)
        return restorer

    def _note_fallback(self, reason: str) -> None:
        """Say once that the model runs in fp32, and why; the setup (JSON summary, queue results) records it."""
        self.fallback = reason
        warnings.warn(PrecisionFallback(f"{self.model.spec.name} ({self.model.spec.architecture}) runs in fp32: "
                                        f"{reason}"), stacklevel=2)

    def _guarded(self, name: str, run: Callable[[], Restored]) -> Restored:
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
                 "precision": precision_name(self.engine.dtype)}
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
                 ) -> tuple[Enhanced, FaceReport | None]:
        model, engine = self._runner(color, fmt)
        result = enhance(model, color, alpha, engine, options.outscale, on_tile)
        report = self.faces.enhance(result.color, color, _face_options(options)) if self.faces is not None else None
        return result, report

    def restore_bytes(self, data: bytes, name: str, options: RestoreOptions, fmt: OutputFormat,
                      faces_stem: str | None = None, on_tile: TileProgress | None = None) -> Restored:
        """Decode, enhance (and restore faces) and encode one image as ``fmt``. With ``--save-faces``,
        the aligned and restored crops are written under ``faces_stem``. ``on_tile(done, total)`` follows
        the tiles of each pass through the model."""
        decoded = decode_image(data, name, options.max_pixels)
        check_output_size(name, fmt, target_size(self.model, *decoded.size, options.outscale))
        return self._guarded(name, lambda: self._restore_encoded(decoded, name, options, fmt, faces_stem, on_tile))

    def restore_file(self, data: bytes, name: str, options: RestoreOptions, fmt: OutputFormat, output: Path,
                     on_tile: TileProgress | None = None) -> Restored:
        """``restore_bytes`` written atomically to ``output``. The output is encoded a strip of rows at a time as
        the tiles finish, resized to ``--outscale`` on the way, so its colour planes are never whole in memory (an
        alpha plane is; with faces, the rows from the first face's top to the last face's bottom are held until
        the faces are restored; WebP's writer gathers the rows for its encoder)."""
        decoded = decode_image(data, name, options.max_pixels)
        size = target_size(self.model, *decoded.size, options.outscale)
        check_output_size(name, fmt, size)
        return self._guarded(name, lambda: self._restore_to_file(decoded, name, options, fmt, output, size, on_tile))

    def _restore_to_file(self, decoded: DecodedImage, name: str, options: RestoreOptions, fmt: OutputFormat,
                         output: Path, size: tuple[int, int], on_tile: TileProgress | None) -> Restored:
        if not self._streams(decoded, options, fmt):
            restored = self._restore_encoded(decoded, name, options, fmt, output.stem, on_tile)
            write_atomic(output, restored.data)  # type: ignore[arg-type]
            return restored
        planes = decoded.color.shape[2] + (decoded.alpha is not None)
        plan = self.faces.plan(decoded.color, size, _face_options(options)) if self.faces is not None else None
        with atomic_writer(output) as handle:
            writer = strip_writer(fmt, handle, *size, planes, decoded.color.dtype, quality=options.quality,
                                  **decoded.metadata_for(size))
            sink = writer
            if plan is not None and plan.faces:
                sink = self.faces.rows(writer, plan, decoded.color.shape[2])
            model, engine = self._runner(decoded.color, fmt)
            enhance_rows(model, decoded.color, engine, sink, on_tile, options.outscale, decoded.alpha)
            writer.close()
        if sink is not writer and sink.reports and options.save_faces:  # the last pass's crops
            _save_faces(Path(options.save_faces), output.stem, sink.reports[-1])
        return Restored(None, decoded.size, size, len(plan.faces) if plan is not None else None)

    def _streams(self, decoded: DecodedImage, options: RestoreOptions, fmt: OutputFormat) -> bool:
        # 16-bit grey+alpha TIFFs are written as RGB+alpha (see encode_image), which the strips are not
        grey16_alpha_tiff = (fmt == "tiff" and decoded.alpha is not None and decoded.color.shape[2] == 1
                             and decoded.color.dtype == np.uint16)
        return fmt in STRIP_WRITERS and not grey16_alpha_tiff and streamable(self.model, decoded.color)

    def _restore_encoded(self, decoded: DecodedImage, name: str, options: RestoreOptions, fmt: OutputFormat,
                         faces_stem: str | None, on_tile: TileProgress | None = None) -> Restored:
        result, report = self._restore(decoded.color, decoded.alpha, options, on_tile, fmt)
        if report is not None and options.save_faces and report.aligned:
            _save_faces(Path(options.save_faces), faces_stem or Path(name).stem, report)
        size = (result.color.shape[1], result.color.shape[0])
        encoded = encode_image(result.color, result.alpha, fmt, quality=options.quality, **decoded.metadata_for(size))
        return Restored(encoded, decoded.size, size,
                        len(report.faces) if report is not None else None)


def _face_options(options: RestoreOptions) -> FaceOptions:
    return FaceOptions(weight=options.face_weight, only_center=options.only_center_face, max_faces=options.max_faces,
                       min_size=options.min_face_size, threshold=options.face_threshold)


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


@dataclass(frozen=True)
class _Batch:
    """What the images of one batch share: its options, its output plan, the models and the streams."""

    options: RestoreOptions
    planner: OutputPlanner
    restorer: Restorer | None  # None: a dry run
    stdin: BinaryIO | None
    stdout: BinaryIO | None
    on_tile: TileProgress
    swept: set[Path] = field(default_factory=set)  # output folders already rid of temporary files killed runs left


def restore_batch(
    inputs: list[str],
    options: RestoreOptions,
    on_progress: ProgressCallback | None = None,
    restorer: Restorer | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    should_stop: Callable[[], bool] | None = None,
    items: list[InputItem] | None = None,
) -> BatchResult:
    """Restore every input; returns one result per input processed. Setup errors (weights, device) raise
    before any image is touched; image errors become items with ``status="error"``. ``should_stop`` is
    asked before each image: when it says yes, the batch ends there (the rest is left for a later run).
    ``items``, when given, replaces the expansion of ``inputs`` (callers that already know each output's place).
    Each output is planned (``OutputPlanner``) as the batch reaches its image, then written, described (a dry
    run: ``status="planned"``), skipped or counted an error as planned."""
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

    def on_tile(done: int, total: int) -> None:
        notify("tiles", (done, total))

    batch = _Batch(options, planner, restorer, stdin, stdout, on_tile)
    results: list[ItemResult] = []
    halted: str | None = None  # why the batch ended early on its own
    for item in items:
        if should_stop is not None and should_stop():
            break
        notify("item", item.source)
        result, halted = _restore_item(batch, item)
        results.append(result)
        notify("done", result)
        if halted:
            break
    return BatchResult(results, round(time.perf_counter() - started, 3), restorer.setup if restorer else None,
                       halted=halted)


def _batch_items(inputs: list[str], options: RestoreOptions, stdout: BinaryIO | None,
                 items: list[InputItem] | None) -> list[InputItem]:
    """The batch's items: ``items`` where given, else ``inputs`` expanded, leaving out the output folder's files."""
    to_stdout = options.output_dir == STDIO
    if to_stdout and stdout is None:
        raise UsageError("-o - needs an output stream")
    if items is not None:
        return items
    return collect_inputs(inputs, options.recursive, exclude=None if to_stdout else Path(options.output_dir))


def _restore_item(batch: _Batch, item: InputItem) -> tuple[ItemResult, str | None]:
    """Read one image, plan its output, then act on the plan. Returns the image's result and, where its failure
    ends the batch (the output's disk is full or read-only), why."""
    t0 = time.perf_counter()
    planned: PlannedOutput | None = None
    in_size = None
    try:
        data, in_size, input_format = _read_source(item, batch.stdin, batch.options.max_pixels)
        planned = batch.planner.plan(item, input_format)
        if planned.action == "skip":
            return ItemResult(item.source, str(planned.output), "skipped", planned.reason), None
        if planned.action == "error":
            return _error(item, planned.output, planned.reason or "", in_size, t0), None
        if batch.options.dry_run:
            return _dry_run_result(planned, data, batch.options), None
        done = _write(batch, planned, data, output_format(batch.options, input_format))
        return ItemResult(item.source, str(planned.output) if planned.output else STDIO, "ok", None, done.in_size,
                          done.out_size, round(time.perf_counter() - t0, 3), done.faces), None
    except ImageError as exc:
        return _failure(item, planned.output if planned else None, exc, in_size, t0)
    except RestoreCliError:
        raise
    except Exception as exc:  # a model, codec or memory failure on this image, or one nobody foresaw
        return _failure(item, planned.output if planned else None, exc, in_size, t0)


def _dry_run_result(planned: PlannedOutput, data: bytes, options: RestoreOptions) -> ItemResult:
    in_size, _ = probe(data, planned.item.source, options.max_pixels)  # refused as the run would
    scale = _planned_scale(options)
    out_size = output_size(*in_size, scale) if scale else None
    return ItemResult(planned.item.source, str(planned.output) if planned.output else STDIO, "planned", None,
                      in_size, out_size)


def _write(batch: _Batch, planned: PlannedOutput, data: bytes, fmt: OutputFormat) -> Restored:
    """Restore one image as planned: into its output file, or onto stdout where it has none (``-o -``)."""
    restorer, item, output = batch.restorer, planned.item, planned.output
    assert restorer is not None
    if output is None:
        assert batch.stdout is not None
        done = restorer.restore_bytes(data, item.source, batch.options, fmt, faces_stem="stdin",
                                      on_tile=batch.on_tile)
        batch.stdout.write(done.data)  # type: ignore[arg-type]
        batch.stdout.flush()
        return done
    if output.parent not in batch.swept:
        remove_abandoned_temporaries(output.parent)
        batch.swept.add(output.parent)
    return restorer.restore_file(data, item.source, batch.options, fmt, output, batch.on_tile)


def _failure(item: InputItem, output: Path | None, exc: Exception, in_size: tuple[int, int] | None,
             t0: float) -> tuple[ItemResult, str | None]:
    """An image's failure as its result, and why the batch halts where no later image could be written."""
    if isinstance(exc, ImageError):
        return _error(item, output, str(exc), in_size, t0), None
    if not isinstance(exc, OSError):
        return _error(item, output, f"{item.source}: {type(exc).__name__}: {exc}", in_size, t0), None
    where = f": {exc.filename}" if exc.filename else ""  # which file or folder, read or written
    halted = None
    if exc.errno in _STORAGE_FULL and output is not None:
        # every later image would fail the same way, after spending its model time: stop here
        halted = f"{exc.strerror}: {exc.filename or output.parent}"
    return _error(item, output, f"{item.source}: {exc.strerror or exc}{where}", in_size, t0), halted


def _error(item: InputItem, output: Path | None, message: str, in_size: tuple[int, int] | None,
           t0: float) -> ItemResult:
    return ItemResult(item.source, str(output) if output else None, "error", message, in_size, None,
                      round(time.perf_counter() - t0, 3))


__all__ = [
    "BatchResult", "FileFacts", "InputItem", "ItemResult", "OutputPlanner", "PlannedOutput", "RestoreOptions", "Restorer",
    "claim_name", "collect_inputs", "output_path_for", "plan_outputs", "restore_batch",
]
