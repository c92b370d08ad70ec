"""What the HTTP API's routes ask of the place jobs live: ``JobService``, and ``QueueService``, its implementation
over the job folder (``restorecli serve``). The Modal app (deploy/modal_app.py) implements the same protocol over
its own records and volume, so both answer through the same routers (``server/routes``).

A service raises ``HTTPException`` for what a client must be told (404, 409, 503); the routes hold no storage
logic of their own.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

from fastapi import HTTPException
from fastapi.responses import FileResponse, Response, StreamingResponse

from ..errors import QueueUnavailable, UsageError
from ..jobs.enqueue import Staging, job_options
from ..jobs.store import DB_NAME, Job, JobStore
from ..models.loading import weights_dir
from ..models.presets import PRESETS
from ..models.registry import REGISTRY
from ..options import from_given, value_from_text
from .config import FORM_FIELDS, ServeConfig
from .uploads import Limits, MultipartUpload
from .views import (SERVED_ID, Served, input_file, job_document, missing_weights, model_problem, models_document,
                    offered_presets, public_model_name, result_file, result_files)

log = logging.getLogger("restorecli.serve")

FINISHED = ("completed", "failed")
RETRY_AFTER_STOPPING = 30  # seconds a client is told to wait while the server stops (and, in a container, restarts)
CANCEL_WAIT = 10.0  # seconds DELETE waits for a running job's worker to drop it before answering 202


class Staged(Protocol):
    """Where an upload's files are written while it is read: ``inputs``, removed by ``discard`` if refused."""

    inputs: Path

    def discard(self) -> None: ...


class JobService(Protocol):
    """The jobs behind the API. Each method runs in the thread pool (it may block on files or a database)."""

    config: ServeConfig
    limits: Limits

    def refusal(self, length: int) -> HTTPException | None:
        """Why an upload of ``length`` bytes cannot be taken now, before any of it is read; None: it can."""

    def staging(self) -> Staged:
        """A new place for an upload's files."""

    def enqueue(self, staged: Staged, upload: MultipartUpload) -> dict:
        """Queue the read upload as one job; returns ``POST /enhance``'s ``Accepted`` document."""

    def status(self, job_id: str) -> dict:
        """``GET /status``'s document; 404 where there is no such job."""

    def latest(self, job_id: str) -> dict | None:
        """The status document, or None once the job is gone (deleted, pruned)."""

    def delete(self, job_id: str) -> tuple[dict, bool]:
        """Delete the job, or cancel it where it runs: ``Deleted``'s document, and whether it is gone already."""

    def result(self, job_id: str, name: str) -> Served | None:
        """A result file of a finished job, as its status lists it; 404 where there is no such job."""

    def input(self, job_id: str, index: int) -> Served | None:
        """The ``index``-th uploaded file, as it was sent; 404 where there is no such job."""

    def results(self, job_id: str) -> list[Served]:
        """Every result file of a finished job; 404 where there is no such job, 409 where it has not finished."""

    def held(self, job_id: str, respond: Callable[[], Response]) -> Response:
        """``respond()``, the job's files kept until the response has been sent."""

    def health(self) -> dict:
        """``GET /health``'s document; its ``status`` is ok, degraded or stopping."""

    def models(self) -> dict:
        """``GET /models``'s document."""


def requested_options(config: ServeConfig, fields: dict[str, str]) -> dict:
    """A job's stored options: the server's defaults, with the request's form fields parsed and checked as the
    command line checks them, refused where the server lacks the weights the job needs. Raises ``UsageError``."""
    given = dict(config.defaults)
    for name, text in fields.items():
        if not text.strip():
            continue  # a form's empty field: the server's default
        if name == "model":
            given[name] = offered_model(text.strip(), config.allowed_models, name)
            continue
        if name == "face_model":
            given[name] = offered_model(text.strip(), config.allowed_face_models, name)
            problem = model_problem(given[name], weights_dir(given.get("weights_dir")))
            if problem is not None:  # asked for by name: refused even where faces are off
                raise UsageError(f"this server cannot run the job: {problem}")
            continue
        if isinstance(given.get(name), bool) and text.strip().lower() not in ("true", "false"):
            raise UsageError(f"{name} '{text.strip()[:40]}' is not true or false")  # as the document declares
        given[name] = value_from_text(name, text)
    if (fields.get("preset") or "").strip():
        given["model"] = offered_preset(config, given["preset"], bool((fields.get("model") or "").strip()))
    elif (fields.get("model") or "").strip():
        given["preset"] = None  # the request chose its model: the server's own preset (its models) gives way
    options = job_options(from_given(given))
    missing = missing_weights(options)
    if missing is not None:  # a worker could only fail it: refused now, saying what the server lacks
        raise UsageError(f"this server cannot run the job: {missing}")
    return options


def offered_model(text: str, offered: tuple[str, ...], field: str) -> str:
    """The model (as the server holds it: a registry name or its file) that a request's ``field`` names by its
    public name; ``UsageError`` saying what the server offers where it is not one of ``offered``."""
    names = {public_model_name(model): model for model in offered}
    if text not in names:
        kind = "face" if field == "face_model" else "sr"
        known = text in REGISTRY and REGISTRY[text].kind == kind
        raise UsageError(f"{field} '{text[:80]}' is not offered by this server{'' if known else ' (an unknown name)'}"
                         f"; it offers: {', '.join(names)}")
    return names[text]


def offered_preset(config: ServeConfig, name: str, model_given: bool) -> str:
    """The chain (``model``) of preset ``name``, where this server offers each of its models and the request does
    not also name a model; ``UsageError`` saying which model it lacks, or that both choose the models."""
    preset = PRESETS[name]
    lacking = [model for model in preset.models if model not in config.allowed_models]
    if lacking:
        offered = ", ".join(p["name"] for p in offered_presets(config.allowed_models)) or "none"
        raise UsageError(f"preset '{name}' runs {', '.join(preset.models)}, and this server does not offer "
                         f"{', '.join(lacking)} (--allow-model); its presets: {offered}")
    if model_given:
        raise UsageError(f"preset '{name}' runs its own models ({', '.join(preset.models)}); the model field "
                         "chooses others: give one of them")
    return preset.chain


def upload_limits_of(config: ServeConfig) -> Limits:
    """What an upload may hold under ``config`` (files, their sizes, the form's fields, videos' size, length and
    frames): one reading for every service behind serve's routes (the queue's, the Modal app's)."""
    return Limits(config.max_file_bytes, config.max_files, FORM_FIELDS, config.max_video_bytes,
                  config.max_video_seconds, config.max_video_frames)


def stored_inputs(upload: MultipartUpload) -> list[dict]:
    """A job record's ``inputs``: each uploaded file's client name and the name it is stored under."""
    return [{"original_filename": f.original_filename, "stored": f.stored} for f in upload.files]


class QueueService:
    """The job folder behind ``restorecli serve``: its queue, opened once per thread (a SQLite connection stays in
    the thread that made it), the downloads in progress, and whether the server is stopping."""

    def __init__(self, config: ServeConfig, pool=None):
        self.config = config
        self.pool = pool  # the worker processes this server started (None: in-process tests, --workers 0)
        self.limits = upload_limits_of(config)
        self.draining = threading.Event()  # set on SIGTERM: no new uploads while the workers finish
        self._local = threading.local()
        # The API's own writes take turns here rather than in SQLite's busy handler, whose back-off sleeps can
        # add up to seconds when a few uploads end at once
        self._writing = threading.Lock()
        JobStore(config.queue, create=True).close()
        self._database = _identity(config.queue / DB_NAME)  # the file this server's connections have open
        self.downloads = Downloads()
        self.fault: str | None = None  # why this server can no longer serve (its queue database was removed)
        self.on_fault: Callable[[str], None] | None = None  # told once, with the fault

    def check_queue(self) -> None:
        """Raise ``QueueUnavailable`` (503) once the queue's database is not the file this server opened: deleted
        or replaced while it ran, its connections would write to a file nobody reads. Told to ``on_fault`` once
        (``serve`` then stops, non-zero, for its supervisor to start it anew on the folder as it is)."""
        if self.fault is None:
            path = self.config.queue / DB_NAME
            now = _identity(path)
            if now == self._database:
                return
            self.fault = (f"the queue database {path} was {'deleted' if now is None else 'replaced'} while the server "
                          "ran; the server must be restarted to open it anew")
            log.error("restorecli serve: %s", self.fault)
            if self.on_fault is not None:
                self.on_fault(self.fault)
        raise QueueUnavailable(self.fault)

    def store(self) -> JobStore:
        self.check_queue()
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = JobStore(self.config.queue)
        return store

    def job(self, job_id: str) -> Job:
        """The job, or 404. Only full-length ids are looked up: a short one names no job this server serves."""
        job = self.store().get(job_id) if SERVED_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job '{job_id[:80]}'")
        return job

    def refusal(self, length: int) -> HTTPException | None:
        """The server is stopping (503, try again after the restart), or the queue's disk would fall under
        ``--min-free-mb`` (507)."""
        if self.draining.is_set():
            return HTTPException(503, "the server is stopping; try again in a minute",
                                 headers={"Retry-After": str(RETRY_AFTER_STOPPING)})
        free_mb = self.free_mb()
        if free_mb - length / 1048576 < self.config.min_free_mb:
            return HTTPException(507, f"the server's disk is nearly full ({free_mb:,.0f} MB free, and it keeps "
                                      f"{self.config.min_free_mb:g} MB): the upload cannot be stored now")
        return None

    def free_mb(self) -> float:
        """Free space on the queue's disk, in MB (``--min-free-mb``'s unit)."""
        return shutil.disk_usage(self.config.queue).free / 1048576

    def staging(self) -> Staging:
        return Staging(self.config.queue)

    def enqueue(self, staged: Staging, upload: MultipartUpload) -> dict:
        """Queue the stored upload, once each of its files is checked to be whole on disk (a ``prune`` run by
        hand could have removed the staging folder meanwhile): a partial job is never queued."""
        options = requested_options(self.config, upload.fields)
        with self._writing:
            job = staged.enqueue(self.store(), options, stored_inputs(upload), {f.stored: f.size for f in upload.files})
        return {"job_id": job.id, "status": "queued", "queue_position": self.store().position(job)}

    def status(self, job_id: str) -> dict:
        return job_document(self.store(), self.job(job_id))

    def latest(self, job_id: str) -> dict | None:
        job = self.store().get(job_id)
        return job_document(self.store(), job) if job else None

    def delete(self, job_id: str) -> tuple[dict, bool]:
        """A queued or finished job goes with its files; a running one is cancelled (its worker stops at its next
        tile and keeps nothing), waiting ``CANCEL_WAIT`` seconds for it to go."""
        from ..jobs.cancel import cancel_job

        job = self.job(job_id)
        done = cancel_job(self.store(), job.id, CANCEL_WAIT)
        if done is None:
            raise HTTPException(404, f"no job '{job_id}'")
        return {"job_id": done.job_id, "deleted": done.deleted, "was": done.was}, done.deleted

    def result(self, job_id: str, name: str) -> Served | None:
        return result_file(self.store(), self.job(job_id), name)

    def input(self, job_id: str, index: int) -> Served | None:
        return input_file(self.store(), self.job(job_id), index)

    def results(self, job_id: str) -> list[Served]:
        job = self.job(job_id)
        if job.status not in FINISHED:
            raise HTTPException(409, f"job {job_id} is {job.status}; its results can be downloaded once it finishes")
        return result_files(self.store(), job)

    def held(self, job_id: str, respond: Callable[[], Response]) -> Response:
        """``respond()``, the job held against the janitor until the response has been sent."""
        self.downloads.hold(job_id)
        try:
            response = respond()
        except BaseException:
            self.downloads.release(job_id)
            raise
        if isinstance(response, _Releasing):
            response.release = lambda: self.downloads.release(job_id)  # type: ignore[method-assign]
        else:  # answered whole already (304, an error)
            self.downloads.release(job_id)
        return response

    def health(self) -> dict:
        return health_document(self)

    def models(self) -> dict:
        return models_document(self.config.allowed_models, self.config.defaults, self.config.allowed_face_models)


def health_document(service: QueueService) -> dict:
    """``GET /health``'s answer: ok, degraded or stopping, with the problems in words."""
    store = service.store()
    seen = store.live_workers()
    pool, config = service.pool, service.config
    managed = pool.alive() if pool is not None else 0
    counts = store.counts()
    free_mb = service.free_mb()
    problems = []
    if free_mb < config.min_free_mb:
        problems.append(f"the queue's disk has {free_mb:,.0f} MB free, under the {config.min_free_mb:g} MB the "
                        "server keeps (--min-free-mb): uploads are refused with 507")
    waiting = counts["queued"] + counts["processing"]
    if waiting and not (managed or seen):
        problems.append(f"{waiting} job(s) wait and no worker is alive to take them")
    now = time.time()
    for job in store.jobs("processing"):
        if job.lease_until is not None and job.lease_until < now:
            problems.append(f"job {job.id}: its worker stopped making progress (its lease ran out "
                            f"{now - job.lease_until:.0f}s ago); another worker will take it over")
    status = "stopping" if service.draining.is_set() else "degraded" if problems else "ok"
    return {"status": status, "problems": problems, "queue": counts,
            "disk": {"free_mb": round(free_mb, 1), "min_free_mb": config.min_free_mb},
            "auth_required": config.api_key is not None,
            "workers": {"started": config.workers, "alive": managed, "seen": len(seen),
                        "restarts": pool.restarts if pool is not None else 0},
            "worker_alive": bool(managed or seen),
            "limits": config.limits_document}


class Downloads:
    """The jobs whose files are being sent, so that the janitor never removes one under a download: a job is held
    while a response reads its files, and the janitor asks ``in_use`` just before it removes a job, which, where
    the job is not held, also bars new holds on it (they answer 404, as for a job already gone)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._removing: set[str] = set()

    def hold(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._removing:
                raise HTTPException(404, f"no job '{job_id}'")
            self._held[job_id] = self._held.get(job_id, 0) + 1

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held[job_id] -= 1
            if not self._held[job_id]:
                del self._held[job_id]

    def in_use(self, job_id: str) -> bool:
        """True if a download holds the job (the janitor keeps it this time); else the job is the janitor's."""
        with self._lock:
            if job_id in self._held:
                return True
            self._removing.add(job_id)
            return False


class _Releasing:
    """A response that calls ``release`` once it has been sent, or abandoned by its client (``held`` sets it)."""

    def release(self) -> None:
        pass

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            self.release()


class HeldStream(_Releasing, StreamingResponse):
    pass


class HeldFile(_Releasing, FileResponse):
    pass


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino
