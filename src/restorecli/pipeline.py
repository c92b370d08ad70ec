"""Restore one image or a batch from options. Reports progress through a callback and returns results.

A failed item is data (``status="error"`` with its reason); the batch goes on.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable, Literal

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
from .engine.tiling import TileProgress
from .errors import ImageError, RestoreCliError, UsageError
from .files import (STDIO, LiveWriters, atomic_writer, check_output_folder, file_id, remove_abandoned_temporaries,
                    write_atomic)
from .images import (
    FORMAT_SUFFIX,
    IMAGE_SUFFIXES,
    SIXTEEN_BIT_FORMATS,
    STRIP_WRITERS,
    DecodedImage,
    OutputFormat,
    check_output_size,
    decode_image,
    encode_image,
    float_to_uint8,
    format_for_suffix,
    probe,
    read_input_file,
    read_input_stream,
    strip_writer,
)
from .models.loading import LoadedModel, load_face_weights, load_model, weights_dir
from .models.registry import REGISTRY
from .options import RestoreOptions

Status = Literal["ok", "skipped", "error", "planned"]


@dataclass(frozen=True)
class InputItem:
    source: str  # as given (or found when walking a directory); "-" is stdin
    relative: Path  # where its output goes under the output directory, suffix not yet applied


@dataclass(frozen=True)
class ItemResult:
    input: str
    output: str | None
    status: Status
    error: str | None = None
    in_size: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None
    seconds: float = 0.0
    faces: int | None = None  # faces restored (None: face enhancement off)


@dataclass(frozen=True)
class BatchResult:
    items: list[ItemResult] = field(default_factory=list)
    seconds: float = 0.0
    setup: dict[str, str] | None = None  # model, device and precision that ran (None: a dry run)
    interrupted: int | None = None  # the signal that stopped the batch before its end, if one did
    halted: str | None = None  # why the batch ended early on its own: the output's disk is full or read-only

    def count(self, status: Status) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return 128 + self.interrupted  # as a shell reports a process its signal ended
        return 1 if self.count("error") else 0


ProgressCallback = Callable[[str, object], None]
"""Called as ``(event, payload)``: ("start", total), ("item", input name), ("tiles", (done, total)) while
an image runs through the model, ("done", ItemResult)."""


def collect_inputs(inputs: list[str], recursive: bool, exclude: Path | None = None) -> list[InputItem]:
    """Expand files and directories into items. Paths that do not exist stay, to be reported as errors.

    Raises ``UsageError`` when nothing at all can be processed.
    """
    items: list[InputItem] = []
    excluded = exclude.resolve() if exclude is not None else None
    left_as_outputs = 0  # image files skipped because they lie in the output folder
    for raw in inputs:
        if raw == STDIO:
            items.append(InputItem(STDIO, Path("stdin")))
            continue
        path = Path(raw)
        if not path.is_dir():
            items.append(InputItem(raw, Path(path.name)))
            continue
        walker = path.rglob("*") if recursive else path.glob("*")
        for found in sorted(walker):
            relative = found.relative_to(path)
            if any(part.startswith(".") for part in relative.parts):
                continue
            is_image = found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES
            if excluded is not None and (found.resolve() == excluded or excluded in found.resolve().parents):
                left_as_outputs += is_image
                continue
            if is_image:
                items.append(InputItem(str(found), relative))
    if not any(item.source == STDIO or Path(item.source).exists() for item in items):
        shown = " ".join(inputs) if inputs else "(none)"
        if left_as_outputs:
            raise UsageError(
                f"no input matched: {shown}: the images found there ({left_as_outputs}) lie in the output folder "
                f"{exclude}, whose files are taken as earlier results, not inputs; write to another folder with -o"
            )
        raise UsageError(f"no input matched: {shown}")
    return items


def _files_of(items: list[InputItem]) -> dict[tuple[int, int], str]:
    files: dict[tuple[int, int], str] = {}
    for item in items:
        key = None if item.source == STDIO else file_id(Path(item.source))
        if key is not None:
            files.setdefault(key, item.source)
    return files


def output_path_for(item: InputItem, options: RestoreOptions, input_format: OutputFormat | None) -> Path:
    """Output file for ``item``: STEM[SUFFIX].EXT under the output directory, never outside it."""
    fmt = options.format if options.format != "same" else input_format or "png"
    suffix = Path(item.source).suffix if item.source != STDIO else ""
    keep_spelling = options.format == "same" and format_for_suffix(suffix) == fmt
    ext = suffix.lower() if keep_spelling else FORMAT_SUFFIX[fmt]
    name = f"{item.relative.stem}{options.suffix}{ext}"
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise UsageError(f"--suffix '{options.suffix}' makes an unsafe file name '{name}'")
    root = Path(options.output_dir)
    target = root / item.relative.parent / name
    if not target.resolve().is_relative_to(root.resolve()):
        raise ImageError(f"{item.source}: output {target} would land outside {root}")
    return target


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

    @classmethod
    def from_options(cls, options: RestoreOptions) -> "Restorer":
        device = choose_device(options.device)
        folder = weights_dir(options.weights_dir)
        model = load_model(options.model, folder)
        dtype = choose_dtype(options.precision, device, model.spec)
        dtype_16bit = choose_dtype(options.precision, device, model.spec, depth=16)
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
        return cls(model, engine, faces, options, load_16bit)

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
        return self._restore_encoded(decoded, name, options, fmt, faces_stem, on_tile)

    def restore_file(self, data: bytes, name: str, options: RestoreOptions, fmt: OutputFormat, output: Path,
                     on_tile: TileProgress | None = None) -> Restored:
        """``restore_bytes`` written atomically to ``output``. The output is encoded a strip of rows at a time as
        the tiles finish, resized to ``--outscale`` on the way, so its colour planes are never whole in memory (an
        alpha plane is; with faces, the rows from the first face's top to the last face's bottom are held until
        the faces are restored; WebP's writer gathers the rows for its encoder)."""
        decoded = decode_image(data, name, options.max_pixels)
        size = target_size(self.model, *decoded.size, options.outscale)
        check_output_size(name, fmt, size)
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


def _read_source(item: InputItem, stdin: BinaryIO | None, max_pixels: int) -> bytes:
    if item.source == STDIO:
        if stdin is None:
            raise ImageError("stdin: no input stream")
        return read_input_stream(stdin, "stdin", max_pixels)
    return read_input_file(Path(item.source), max_pixels)


def _planned_scale(options: RestoreOptions) -> float | None:
    if options.outscale is not None:
        return options.outscale
    entry = REGISTRY.get(options.model)
    return float(entry.scale) if entry else None


# Write errors that end a batch rather than one image: no space, over quota, a read-only file system
_STORAGE_FULL = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS") if hasattr(errno, name))


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
    ``items``, when given, replaces the expansion of ``inputs`` (callers that already know each output's place)."""
    started = time.perf_counter()
    notify = on_progress or (lambda event, payload: None)
    to_stdout = options.output_dir == STDIO
    if to_stdout and stdout is None:
        raise UsageError("-o - needs an output stream")
    out_root = None if to_stdout else Path(options.output_dir)
    if items is None:
        items = collect_inputs(inputs, options.recursive, exclude=out_root)
    if to_stdout and len(items) != 1:
        raise UsageError(f"-o - writes one image to stdout, but {len(items)} inputs were given")
    if sum(item.source == STDIO for item in items) > 1:
        raise UsageError("stdin ('-') can be given only once")
    if out_root is not None:
        check_output_folder(out_root)
    if options.save_faces:
        check_output_folder(Path(options.save_faces), "--save-faces")
    notify("start", len(items))  # before the model loads, so a stop while it loads counts the batch too
    if restorer is None and not options.dry_run:
        restorer = Restorer.from_options(options)

    def on_tile(done: int, total: int) -> None:
        notify("tiles", (done, total))

    results: list[ItemResult] = []
    halted: str | None = None
    claimed: dict[str, str] = {}
    inputs_by_file: dict[tuple[int, int], str] | None = None  # the inputs' files, listed at the first output that
    # exists (an output that does not exist overwrites nothing), so a batch into a new folder stats no input twice
    live_writers = LiveWriters()  # outputs other runs over the same folders have in hand
    swept: set[Path] = set()  # output folders already rid of temporary files that killed runs left
    for item in items:
        if should_stop is not None and should_stop():
            break
        notify("item", item.source)
        t0 = time.perf_counter()
        output: Path | None = None
        in_size = None
        try:
            data = _read_source(item, stdin, options.max_pixels)
            if item.source == STDIO:
                in_size, source_format = probe(data, "stdin")
            else:
                source_format = format_for_suffix(Path(item.source).suffix)
            fmt: OutputFormat = options.format if options.format != "same" else source_format or "png"
            if not to_stdout:
                output = output_path_for(item, options, source_format)
                # names that differ in case only are one file on macOS's and Windows' file systems (and would
                # clash when the results are copied there): they count as one output everywhere
                key = str(output.resolve()).casefold()
                if key in claimed:
                    earlier = claimed[key]
                    this = file_id(Path(item.source))
                    if earlier != STDIO and this is not None and file_id(Path(earlier)) == this:
                        # the same file named twice (overlapping globs, a folder and a file in it): done once
                        results.append(ItemResult(item.source, str(output), "skipped",
                                                  f"the same file as the earlier input {earlier}"))
                        notify("done", results[-1])
                        continue
                    raise ImageError(f"{item.source}: output {output} collides with that of {earlier}")
                claimed[key] = item.source
                target = file_id(output)
                if target is not None:
                    inputs_by_file = inputs_by_file if inputs_by_file is not None else _files_of(items)
                    replaced = inputs_by_file.get(target)
                    if replaced is not None:
                        same = target == file_id(Path(item.source))
                        what = "the input itself" if same else f"the input {replaced}"
                        raise ImageError(f"{item.source}: output {output} is {what}, which is never overwritten; "
                                         "write to another folder (-o) or add a --suffix")
                if output.exists() and not options.overwrite:
                    if item.source == STDIO:  # a piped image has no name to resume by: this one is new
                        raise ImageError(f"stdin: {output} exists (from an earlier image); add --overwrite to "
                                         "replace it, or write to stdout with -o -")
                    results.append(ItemResult(item.source, str(output), "skipped", "output exists"))
                    notify("done", results[-1])
                    continue
                writer = live_writers.of(output)
                if writer is not None:  # another run over this folder has it in hand: leave it to that one
                    results.append(ItemResult(item.source, str(output), "skipped",
                                              f"being written by another run (process {writer})"))
                    notify("done", results[-1])
                    continue
            if options.dry_run:
                in_size, _ = probe(data, item.source)
                scale = _planned_scale(options)
                out_size = output_size(*in_size, scale) if scale else None
                results.append(ItemResult(item.source, str(output) if output else STDIO, "planned", None,
                                          in_size, out_size))
                notify("done", results[-1])
                continue
            assert restorer is not None
            if to_stdout:
                assert stdout is not None
                done = restorer.restore_bytes(data, item.source, options, fmt, faces_stem="stdin", on_tile=on_tile)
                stdout.write(done.data)  # type: ignore[arg-type]
                stdout.flush()
            else:
                assert output is not None
                if output.parent not in swept:
                    remove_abandoned_temporaries(output.parent)
                    swept.add(output.parent)
                done = restorer.restore_file(data, item.source, options, fmt, output, on_tile)
            results.append(ItemResult(item.source, str(output) if output else STDIO, "ok", None, done.in_size,
                                      done.out_size, round(time.perf_counter() - t0, 3), done.faces))
        except ImageError as exc:
            results.append(_error(item, output, str(exc), in_size, t0))
        except RestoreCliError:
            raise
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""  # which file or folder, read or written
            results.append(_error(item, output, f"{item.source}: {exc.strerror or exc}{where}", in_size, t0))
            if exc.errno in _STORAGE_FULL and output is not None:
                # every later image would fail the same way, after spending its model time: stop here
                halted = f"{exc.strerror}: {exc.filename or output.parent}"
        except Exception as exc:  # a model, codec or memory failure on this image, or one nobody foresaw
            results.append(_error(item, output, f"{item.source}: {type(exc).__name__}: {exc}", in_size, t0))
        notify("done", results[-1])
        if halted:
            break
    return BatchResult(results, round(time.perf_counter() - started, 3), restorer.setup if restorer else None,
                       halted=halted)



def _error(item: InputItem, output: Path | None, message: str, in_size, t0: float) -> ItemResult:
    return ItemResult(item.source, str(output) if output else None, "error", message, in_size, None,
                      round(time.perf_counter() - t0, 3))


__all__ = [
    "BatchResult", "InputItem", "ItemResult", "RestoreOptions", "Restorer", "collect_inputs", "output_path_for", "restore_batch",
]
