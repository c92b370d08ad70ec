"""What a batch will write: its inputs (``collect_inputs``), their output names (``output_path_for``), and the plan
for each (``OutputPlanner``, ``plan_outputs``: write, skip or error, and why), with the shapes of a batch's results
(``ItemResult``, ``BatchResult``) and of its progress events.

Pure planning: no codec, no torch. ``restore`` runs its batch over this plan (``pipeline``); ``submit`` and
``restore --server``, which run no model, plan with it as a local run does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Literal

from .errors import ImageError, UsageError
from .files import STDIO, LiveWriters, file_id
from .images.formats import (DEFAULT_FORMAT, FORMAT_SUFFIX, IMAGE_SUFFIXES, OutputFormat, format_for_suffix,
                             output_size)
from .models.registry import REGISTRY
from .options import RestoreOptions
from .video.formats import ANIMATED_SUFFIXES, VIDEO_SUFFIXES

Status = Literal["ok", "skipped", "error", "planned"]
_TAKEN_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES | set(ANIMATED_SUFFIXES)  # what a folder scan takes


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
    video: dict[str, object] | None = None  # a video's frames, fps, duration, codec, ... (None: an image)
    colorized: bool | None = None  # whether --colorize colourised it (None: --colorize never)


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
an image runs through the model, ("done", ItemResult); ("notice", text) while the model loads, for first-run work
(a probe, a conversion to ncnn); a batch restored on a server also says ("submitted", job id) for each job it
queued there."""


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
            is_image = found.is_file() and found.suffix.lower() in _TAKEN_SUFFIXES  # or a video, an animation
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


def run_items(inputs: list[str], options: RestoreOptions, stdout: BinaryIO | None) -> list[InputItem]:
    """A run's items: ``inputs`` expanded, leaving out the output folder's files (``-o -`` needs ``stdout``)."""
    to_stdout = options.output_dir == STDIO
    if to_stdout and stdout is None:
        raise UsageError("-o - needs an output stream")
    return collect_inputs(inputs, options.recursive, exclude=None if to_stdout else Path(options.output_dir))


FileIdentity = Callable[[Path], tuple[int, int] | None]  # a path's file (device, inode), None: no such file


def _files_of(items: list[InputItem], identity: FileIdentity = file_id) -> dict[tuple[int, int], str]:
    files: dict[tuple[int, int], str] = {}
    for item in items:
        key = None if item.source == STDIO else identity(Path(item.source))
        if key is not None:
            files.setdefault(key, item.source)
    return files


def named_format(item: InputItem) -> OutputFormat | None:
    """The writable format an input file's name says (None: stdin, whose content says, or one not written)."""
    return None if item.source == STDIO else format_for_suffix(Path(item.source).suffix)


def output_format(options: RestoreOptions, input_format: OutputFormat | None) -> OutputFormat:
    """The format an image read as ``input_format`` (None: one restorecli does not write) is written in."""
    return options.format if options.format != "same" else input_format or DEFAULT_FORMAT


def output_path_for(item: InputItem, options: RestoreOptions, input_format: OutputFormat | None,
                    own_format: bool = False) -> Path:
    """Output file for ``item``: STEM[SUFFIX].EXT under the output directory, never outside it. ``own_format``:
    written in the input's own format whatever ``--format`` says (an animated GIF, PNG or WebP)."""
    fmt = output_format(options, input_format)
    suffix = Path(item.source).suffix if item.source != STDIO else ""
    keep_spelling = options.format == "same" and format_for_suffix(suffix) == fmt
    # a video keeps its container, an animation its format (--format is for images)
    ext = suffix.lower() if keep_spelling or own_format or suffix.lower() in VIDEO_SUFFIXES else FORMAT_SUFFIX[fmt]
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


def error_result(item: InputItem, output: Path | None, message: str, in_size: tuple[int, int] | None,
                 started: float) -> ItemResult:
    """An image's error: ``message``, the output its plan named (if any), its input's (w, h) where it was decoded,
    and the seconds since ``started`` (``time.perf_counter``)."""
    return ItemResult(item.source, str(output) if output else None, "error", message, in_size, None,
                      round(time.perf_counter() - started, 3))


def unforeseen_error(source: str, exc: Exception, in_size: tuple[int, int] | None = None) -> str:
    """An image's failure that no check named beforehand, in words for the person reading the result: running out
    of memory and sizes that overflow say so and which limits to lower, never Python's own text for them."""
    size = f" ({in_size[0]}x{in_size[1]} pixels in)" if in_size else ""
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return (f"{source}: not enough memory to restore it{size}; lower --tile or --outscale, or refuse such images "
                "with --max-output-pixels")
    if isinstance(exc, OverflowError):
        return (f"{source}: too large to restore{size}, past what the encoder or the arrays can address; lower "
                "--outscale, or refuse such images with --max-output-pixels")
    text = " ".join(str(exc).split())[:300]
    return f"{source}: {type(exc).__name__}: {text}" if text else f"{source}: {type(exc).__name__}"


def failure_message(source: str, exc: BaseException, in_size: tuple[int, int] | None = None) -> str:
    """What a person reads for an image that failed with ``exc``: an ``ImageError`` says it already; a read or a
    write names the file or folder; anything else is worded by ``unforeseen_error`` (memory, overflow)."""
    if isinstance(exc, ImageError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""  # which file or folder, read or written
        return f"{source}: {exc.strerror or exc}{where}"
    return unforeseen_error(source, exc if isinstance(exc, Exception) else RuntimeError(str(exc)), in_size)


def planned_scale(options: RestoreOptions) -> float | None:
    """The output's scale where it is known without loading the model (``--outscale``, or the registry's)."""
    if options.outscale is not None:
        return options.outscale
    entry = REGISTRY.get(options.model)
    return float(entry.scale) if entry else None


def dry_run_result(planned: PlannedOutput, data: bytes, options: RestoreOptions) -> ItemResult:
    """A dry run's result: what would be written, with the sizes its header gives (refused as the run would)."""
    from .images import probe  # a header read, no model

    in_size, _ = probe(data, planned.item.source, options.max_pixels)
    scale = planned_scale(options)
    out_size = output_size(*in_size, scale) if scale else None
    return ItemResult(planned.item.source, str(planned.output) if planned.output else STDIO, "planned", None,
                      in_size, out_size)


def decided_result(planned: PlannedOutput, in_size: tuple[int, int] | None, started: float) -> ItemResult | None:
    """The result of a plan that leaves the image alone (a skip or an error, with its reason); None for a write."""
    if planned.action == "skip":
        return ItemResult(planned.item.source, str(planned.output), "skipped", planned.reason)
    if planned.action == "error":
        return error_result(planned.item, planned.output, planned.reason or "", in_size, started)
    return None


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

    def plan(self, item: InputItem, input_format: OutputFormat | None, own_format: bool = False) -> PlannedOutput:
        """The plan for ``item``, read as ``input_format`` (from its name, or stdin's content; ``own_format``: an
        animation, written in its own format). Plan only inputs that could be read: one that could not claims no
        output. Raises ``UsageError`` where ``--suffix`` makes an unsafe file name."""
        if self.options.output_dir == STDIO:
            return PlannedOutput(item, "write")
        try:
            output = output_path_for(item, self.options, input_format, own_format)
        except ImageError as exc:
            return PlannedOutput(item, "error", None, str(exc))
        return self._taken(item, output) or self._existing(item, output) or PlannedOutput(item, "write", output)

    def recheck(self, planned: PlannedOutput) -> PlannedOutput:
        """``planned`` again as its writing begins (a batch plans an image ahead of the model): an output that
        another run finished or began since then is skipped. Only a write to a file is looked at again."""
        if planned.action != "write" or planned.output is None:
            return planned
        return self._existing(planned.item, planned.output) or planned

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
    return [planner.plan(item, stdin_format if item.source == STDIO else named_format(item)) for item in items]


__all__ = [
    "BatchResult", "FileFacts", "FileIdentity", "InputItem", "ItemResult", "OutputPlanner", "PlanAction",
    "PlannedOutput", "ProgressCallback", "Status", "claim_name", "collect_inputs", "decided_result", "error_result",
    "failure_message", "named_format", "output_format", "output_path_for", "plan_outputs",
]
