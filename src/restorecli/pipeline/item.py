"""One image's lifecycle around the model, the same in every runtime (the local batch, the queue's worker, the Ray
pool's driver and actor, the Modal function): read its bytes, turn what happened into its result (``ok``,
``failure``: the one place an exception becomes the words a person reads), and write its output and
face crops atomically into a folder (``Outputs``). Planning the output's name and whether to skip it is
``plan.OutputPlanner``'s."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import ImageError
from ..files import STDIO, remove_abandoned_temporaries, write_atomic
from ..plan import InputItem, ItemResult, error_result, failure_message, named_format

if TYPE_CHECKING:  # the Ray driver and the client use this module without torch, Pillow or OpenCV
    from ..images import OutputFormat
    from .stages import FaceCrops, Restored

# Write errors that end a batch rather than one image: no space, over quota, a read-only file system
_STORAGE_FULL = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS") if hasattr(errno, name))


def storage_full(exc: BaseException) -> bool:
    """Whether every later output would fail as this write did (no space, over quota, read-only)."""
    return isinstance(exc, OSError) and exc.errno in _STORAGE_FULL


def read_source(item: InputItem, stdin: BinaryIO | None,
                max_pixels: int) -> tuple[bytes, tuple[int, int] | None, OutputFormat | None]:
    """The input's bytes, its size where its header was read for its format (stdin's) and that format."""
    from ..images import probe, read_input_file, read_input_stream

    if item.source != STDIO:
        return read_input_file(Path(item.source), max_pixels), None, named_format(item)
    if stdin is None:
        raise ImageError("stdin: no input stream")
    data = read_input_stream(stdin, "stdin", max_pixels)
    size, fmt = probe(data, "stdin", max_pixels)
    return data, size, fmt


def failure(item: InputItem, output: Path | None, exc: BaseException, in_size: tuple[int, int] | None,
            started: float) -> tuple[ItemResult, str | None]:
    """An image's failure as its result, and why the batch halts where no later image could be written (a full or
    read-only disk: every later image would fail the same way, after spending its model time)."""
    halted = None
    if storage_full(exc) and output is not None:
        halted = f"{exc.strerror}: {exc.filename or output.parent}"  # type: ignore[attr-defined]
    return error_result(item, output, failure_message(item.source, exc, in_size), in_size, started), halted


def ok(item: InputItem, output: str, done: Restored, started: float, finished: float | None = None) -> ItemResult:
    """A restored image's result; ``finished`` (``time.perf_counter``) where its file was complete later than now."""
    end = time.perf_counter() if finished is None else finished
    return ItemResult(item.source, output, "ok", None, done.in_size, done.out_size, round(end - started, 3),
                      done.faces, colorized=done.colorized)


@dataclass
class Outputs:
    """Where a run's outputs land: each folder is rid of the temporary files killed runs left the first time an
    output goes there, then each file is written atomically, face crops into ``--save-faces``' folder."""

    save_faces: str | None = None
    swept: set[Path] = field(default_factory=set)

    def sweep(self, folder: Path) -> None:
        if folder not in self.swept:
            remove_abandoned_temporaries(folder)
            self.swept.add(folder)

    def write(self, output: Path, data: bytes, crops: FaceCrops = ()) -> None:
        self.sweep(output.parent)
        write_atomic(output, data)
        self.write_crops(crops)

    def write_crops(self, crops: FaceCrops) -> None:
        if self.save_faces and crops:
            for name, crop in crops:
                write_atomic(Path(self.save_faces) / name, crop)


__all__ = ["Outputs", "failure", "failure_message", "ok", "read_source", "storage_full"]
