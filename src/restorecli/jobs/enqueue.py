"""How a job enters the queue, for ``submit`` and the server alike: its inputs are written into a folder under
``incoming/`` (invisible to workers), which is renamed into ``jobs/`` before the job's record is written, so a
worker sees all of a job or none of it. Imports nothing heavy: the server's process never loads a model."""

from __future__ import annotations

import math
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from ..errors import OutputTooLarge, SetupError, UsageError
from ..files import writer_tag
from ..images.formats import check_output_pixels, output_size
from ..video.formats import frame_size, is_video_name
from ..models.loading import unknown_model
from ..models.registry import REGISTRY
from ..options import QUEUE_MAX_OUTPUT_PIXELS, RestoreOptions, model_chain
from .store import Job, JobStore, new_job_id

# Fields of RestoreOptions that belong to the worker, not to the job.
_NOT_STORED = ("output_dir", "overwrite", "dry_run")


def job_options(options: RestoreOptions) -> dict:
    """The job's restore options, with paths made absolute: workers run from other directories (cron)."""
    stored = {k: v for k, v in asdict(options).items() if k not in _NOT_STORED}
    stored["model"] = ",".join(_stored_model(model) for model in model_chain(stored["model"]))  # a chain: each
    if stored["max_output_pixels"] is None:  # a queue's worker is shared: its jobs are bounded unless asked
        stored["max_output_pixels"] = QUEUE_MAX_OUTPUT_PIXELS
    for key in ("weights_dir", "save_faces"):
        if stored[key]:
            stored[key] = str(Path(stored[key]).resolve())
    for key in ("face_model", "face_detector"):
        if stored[key] not in REGISTRY and Path(stored[key]).is_file():
            stored[key] = str(Path(stored[key]).resolve())
    return stored


def _stored_model(model: str) -> str:
    """A model as a job keeps it: a registry name as it is, a checkpoint file by its absolute path; ``unknown_model``'s
    error for anything else."""
    if model in REGISTRY:
        return model
    if not Path(model).is_file():
        raise unknown_model(model)
    return str(Path(model).resolve())


def refuse_oversized(options: dict, inputs: list[tuple[str, Path]]) -> None:
    """Refuse (``UsageError``, naming the file and the limit) a job with an image (or a video's frame) whose output
    would be over its ``max_output_pixels``, read from the files' headers, before the job takes a worker's time. The
    scale is the job's ``outscale`` or its registry models' (a chain's multiplied); a checkpoint file's scale is known
    once a worker loads it, which applies the same limit to each image. A file whose header cannot be read is left
    for the worker to name."""
    limit = options.get("max_output_pixels")
    entries = [REGISTRY.get(model) for model in model_chain(options["model"])]
    known = None if None in entries else math.prod(entry.scale for entry in entries)  # type: ignore[union-attr]
    scale = options.get("outscale") or known
    if limit is None or scale is None:
        return
    from PIL import Image  # the header alone: the server's process imports no OpenCV or numpy

    for name, path in inputs:
        if is_video_name(name):  # each frame is bounded as an image is
            size = frame_size(path)
            if size is None:
                continue
        else:
            try:
                with warnings.catch_warnings(), Image.open(path) as image:
                    warnings.simplefilter("ignore")  # Pillow's bomb warning: the pixel limit is the worker's to apply
                    size = image.size
            except Exception:  # not an image Pillow reads, or over its own pixel limit: the worker names it
                continue
        try:
            check_output_pixels(name, output_size(*size, scale), limit)
        except OutputTooLarge as exc:
            raise UsageError(str(exc)) from None


class Staging:
    """A new job's folder under the queue's ``incoming/``: write its inputs under ``inputs``, then ``enqueue`` it.

    The folder is named ``JOB_ID.PID@HOST``, so that ``prune`` leaves it alone while this process lives."""

    def __init__(self, root: Path):
        self.root = root
        self.job_id = new_job_id()
        self.folder = root / "incoming" / f"{self.job_id}.{writer_tag()}"
        self.inputs = self.folder / "inputs"

    def enqueue(self, store: JobStore, options: dict, inputs: list[dict], sizes: dict[str, int]) -> Job:
        """Make the job visible to workers: its folder moves into ``jobs/``, then its record is written.
        ``inputs``: ``[{"original_filename", "stored"}]``, stored relative to the job's inputs folder; ``sizes``:
        each stored file's size as written. A file that is not there at its size refuses the job (something removed
        the staging folder meanwhile): a job is never queued with fewer inputs than its record lists."""
        for stored in inputs:
            path = self.inputs / stored["stored"]
            if not path.is_file() or path.stat().st_size != sizes[stored["stored"]]:
                raise SetupError(f"cannot queue the job: its input {stored['original_filename']} vanished from "
                                 f"{self.folder} before it was queued (a prune run meanwhile?); nothing was queued")
        refuse_oversized(options, [(i["original_filename"], self.inputs / i["stored"]) for i in inputs])
        self.inputs.mkdir(parents=True, exist_ok=True)  # a job of stdin alone has made no folder yet
        os.rename(self.folder, store.job_dir(self.job_id))
        return store.add(self.job_id, options, inputs)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def staging(root: Path) -> Iterator[Staging]:
    """A staging folder that is removed when the block fails (the job was never queued) and reported as a setup
    error where the queue's disk refused it."""
    staged = Staging(root)
    try:
        yield staged
    except OSError as exc:
        staged.discard()
        raise SetupError(f"cannot write the job's inputs into {root}: {exc.strerror or exc}") from None
    except BaseException:
        staged.discard()
        raise
