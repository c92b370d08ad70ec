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


FileIdentity = Callable[[Path], tuple[int, int] | None]  # a path's file (device, inode), None: no such file


def _files_of(items: list[InputItem], identity: FileIdentity = file_id) -> dict[tuple[int, int], str]:
    files: dict[tuple[int, int], str] = {}
    for item in items:
        key = None if item.source == STDIO else identity(Path(item.source))
        if key is not None:
            files.setdefault(key, item.source)
    return files


def _named_format(item: InputItem) -> OutputFormat | None:
    """The writable format an input file's name says (None: stdin, whose content says, or one not written)."""
    return None if item.source == STDIO else format_for_suffix(Path(item.source).suffix)


def _output_format(options: RestoreOptions, input_format: OutputFormat | None) -> OutputFormat:
    """The format an image read as ``input_format`` (None: one restorecli does not write) is written in."""
    return options.format if options.format != "same" else input_format or "png"


def output_path_for(item: InputItem, options: RestoreOptions, input_format: OutputFormat | None) -> Path:
    """Output file for ``item``: STEM[SUFFIX].EXT under the output directory, never outside it."""
    fmt = _output_format(options, input_format)
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


def claim_name(claimed: dict[str, str], name: str, source: str,
               identity: FileIdentity = file_id) -> tuple[str, bool] | None:
    """Claim ``name`` for the input ``source`` in ``claimed`` (casefolded name -> the input holding it).

    Returns None when the name was free (it is ``source``'s now); otherwise the earlier input holding it and
    whether that is the same file as ``source`` (overlapping globs, a folder beside a file in it: one file named
    twice, to be done once). Names that differ in case only are one: they are one file on macOS's and Windows'
    file systems, and would clash when the results are copied there."""
    key = name.casefold()
    if key not in claimed:
        claimed[key] = source
        return None
    earlier = claimed[key]
    this = identity(Path(source)) if source != STDIO else None
    return earlier, this is not None and earlier != STDIO and identity(Path(earlier)) == this


PlanAction = Literal["write", "skip", "error"]


@dataclass(frozen=True)
class PlannedOutput:
    """What a batch does with one input: ``write`` it to ``output`` (None: to stdout), ``skip`` it, or count it an
    ``error``; a skip and an error say why in ``reason``. ``output`` is set wherever the path was worked out."""

    item: InputItem
    action: PlanAction
    output: Path | None = None
    reason: str | None = None


@dataclass(frozen=True)
class FileFacts:
    """What planning reads of the file system, none of it writing anything: a path's file identity (None: no such
    file), whether a path exists, and the process id of another live run writing a path (None: no other run is).
    Tests hand in their own."""

    identity: FileIdentity = file_id
    exists: Callable[[Path], bool] = Path.exists
    writer_of: Callable[[Path], int | None] = field(default_factory=lambda: LiveWriters().of)


class OutputPlanner:
    """Plans one batch's outputs an input at a time, in the batch's order, remembering the outputs claimed so far
    (where two inputs would write one output, the first has it). ``restore_batch`` asks as it reaches each image,
    so that an output another run finished or began in the meantime counts; ``plan_outputs`` asks for all at once.

    Raises ``UsageError`` for a batch that cannot be planned: more than one image for stdout (``-o -``), stdin
    given twice."""

    def __init__(self, items: list[InputItem], options: RestoreOptions, facts: FileFacts | None = None):
        if options.output_dir == STDIO and len(items) != 1:
            raise UsageError(f"-o - writes one image to stdout, but {len(items)} inputs were given")
        if sum(item.source == STDIO for item in items) > 1:
            raise UsageError("stdin ('-') can be given only once")
        self.items = items
        self.options = options
        self.facts = facts or FileFacts()
        self._claimed: dict[str, str] = {}  # resolved output path, casefolded -> the input that claimed it
        # the inputs' files, listed at the first output that exists (an output that does not exist overwrites
        # nothing), so a batch into a new folder stats no input twice
        self._inputs_by_file: dict[tuple[int, int], str] | None = None

    def plan(self, item: InputItem, input_format: OutputFormat | None) -> PlannedOutput:
        """The plan for ``item``, read as ``input_format`` (from its name, or stdin's content). Plan only inputs
        that could be read: one that could not claims no output. Raises ``UsageError`` where ``--suffix`` makes
        an unsafe file name."""
        if self.options.output_dir == STDIO:
            return PlannedOutput(item, "write")
        try:
            output = output_path_for(item, self.options, input_format)
        except ImageError as exc:
            return PlannedOutput(item, "error", None, str(exc))
        return self._taken(item, output) or self._existing(item, output) or PlannedOutput(item, "write", output)

    def _taken(self, item: InputItem, output: Path) -> PlannedOutput | None:
        """The plan for an output an earlier input of the batch claimed; None for one still free."""
        earlier = claim_name(self._claimed, str(output.resolve()), item.source, self.facts.identity)
        if earlier is None:
            return None
        source, same_file = earlier
        if same_file:
            return PlannedOutput(item, "skip", output, f"the same file as the earlier input {source}")
        return PlannedOutput(item, "error", output, f"{item.source}: output {output} collides with that of {source}")

    def _existing(self, item: InputItem, output: Path) -> PlannedOutput | None:
        """The plan for an output that is already there or that another run is writing; None for one to write."""
        identity = self.facts.identity
        target = identity(output)
        if target is not None:
            if self._inputs_by_file is None:
                self._inputs_by_file = _files_of(self.items, identity)
            replaced = self._inputs_by_file.get(target)
            if replaced is not None:
                what = "the input itself" if target == identity(Path(item.source)) else f"the input {replaced}"
                return PlannedOutput(item, "error", output, f"{item.source}: output {output} is {what}, which is "
                                     "never overwritten; write to another folder (-o) or add a --suffix")
        if self.facts.exists(output) and not self.options.overwrite:
            if item.source == STDIO:  # a piped image has no name to resume by: this one is new
                return PlannedOutput(item, "error", output, f"stdin: {output} exists (from an earlier image); add "
                                     "--overwrite to replace it, or write to stdout with -o -")
            return PlannedOutput(item, "skip", output, "output exists")
        writer = self.facts.writer_of(output)
        if writer is not None:  # another run over this folder has it in hand: leave it to that one
            return PlannedOutput(item, "skip", output, f"being written by another run (process {writer})")
        return None


def plan_outputs(items: list[InputItem], options: RestoreOptions, facts: FileFacts | None = None,
                 stdin_format: OutputFormat | None = None) -> list[PlannedOutput]:
    """One planned output per item, in order: write (to its path; None: stdout), skip or error, with the reason.

    Decided from ``items``, ``options`` and what ``facts`` reads of the file system (file identities, outputs
    that exist, other runs' writers); writes nothing. An input file's format is its name's; stdin's is
    ``stdin_format`` (None: PNG, unless ``--format`` says). Leave out the items that cannot be read: they claim
    no output. Raises ``UsageError`` as ``OutputPlanner`` does."""
    planner = OutputPlanner(items, options, facts)
    return [planner.plan(item, stdin_format if item.source == STDIO else _named_format(item)) for item in items]


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


def _read_source(item: InputItem, stdin: BinaryIO | None,
                 max_pixels: int) -> tuple[bytes, tuple[int, int] | None, OutputFormat | None]:
    """The input's bytes, its size where its header was read for its format (stdin's) and that format."""
    if item.source != STDIO:
        return read_input_file(Path(item.source), max_pixels), None, _named_format(item)
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
        done = _write(batch, planned, data, _output_format(batch.options, input_format))
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
