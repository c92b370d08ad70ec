"""Creating a job: inputs copied into the queue, then made visible to workers in one step."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import BinaryIO

from ..errors import ImageError, UsageError
from ..files import STDIO
from ..images import FORMAT_SUFFIX, check_input_file, probe, read_input_stream
from ..images.formats import DEFAULT_FORMAT
from ..options import RestoreOptions
from ..plan import InputItem, claim_name, collect_inputs
from .enqueue import job_options, staging
from .store import Job, JobStore

def submit_job(queue: Path, inputs: list[str], options: RestoreOptions, stdin: BinaryIO | None = None) -> tuple[Job, int]:
    """Copy ``inputs`` into a new job and queue it; returns the job and its queue position.

    Files are copied into ``incoming/<id>`` first and the folder is renamed into ``jobs/`` before the job's
    record is written, so a worker sees all of a job or none of it. Missing inputs refuse the whole job.
    """
    stored_options = job_options(options)
    items = collect_inputs(inputs, options.recursive)
    refused: list[str] = []  # every input that cannot be an image file, named at once
    seen: dict[str, str] = {}  # stored name, casefolded (see claim_name) -> the input stored under it
    unique: list[InputItem] = []
    for item in items:
        if item.source != STDIO:
            try:
                check_input_file(Path(item.source), options.max_pixels)
            except ImageError as exc:
                refused.append(str(exc))
                continue
        taken = claim_name(seen, item.relative.as_posix(), item.source)
        if taken is not None:
            earlier, same_file = taken
            if same_file:
                continue  # one file named twice (overlapping globs, a folder beside a file in it): copied once
            raise UsageError(f"cannot submit: {item.source} and {earlier} have the same name in one job")
        unique.append(item)
    if refused:
        raise UsageError(f"cannot submit: {'; '.join(refused)}")
    items = unique
    store = JobStore(queue, create=True)
    try:
        with staging(queue) as staged:
            stored: list[dict] = []
            sizes: dict[str, int] = {}
            for item in items:
                if item.source == STDIO:
                    assert stdin is not None
                    data = read_input_stream(stdin, "stdin", options.max_pixels)
                    _size, fmt = probe(data, "stdin")
                    relative = Path("stdin" + FORMAT_SUFFIX[fmt or DEFAULT_FORMAT])
                    staged.inputs.mkdir(parents=True, exist_ok=True)
                    (staged.inputs / relative).write_bytes(data)
                    original = STDIO
                else:
                    relative = item.relative
                    target = staged.inputs / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(item.source, target)
                    original = item.source
                stored.append({"original_filename": original, "stored": relative.as_posix()})
                sizes[relative.as_posix()] = (staged.inputs / relative).stat().st_size
            job = staged.enqueue(store, stored_options, stored, sizes)
        position = store.position(job) or 0
        return job, position
    finally:
        store.close()
