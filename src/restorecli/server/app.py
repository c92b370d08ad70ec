"""The FastAPI application: the REST API and the dashboard's files, over the job folder.

The process serving it never runs a model: uploads become queued jobs, and everything a client reads comes from
the job folder, which is the only state. Blocking work (SQLite, files) runs in the thread pool, so the event loop
answers ``GET /status`` promptly whatever the workers are doing.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import shutil
import threading
import time
from importlib import resources
from pathlib import Path
from typing import AsyncIterator, Callable

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import QueueUnavailable, RestoreCliError, UsageError
from ..jobs.enqueue import Staging, job_options
from ..jobs.store import DB_NAME, Job, JobStore
from ..options import declared, from_given, value_from_text
from . import schema
from .apidocs import add_docs_routes
from .config import API_KEY_ENV, API_KEY_HEADER, FORM_FIELDS, ServeConfig
from .guards import RequestGuard, UploadSlots, not_modified, timed_chunks
from .uploads import FILE_FIELD, Limits, MultipartUpload, UploadRefused
from .views import (SERVED_ID, Served, input_file, job_document, missing_weights, models_document, public_model_name,
                    result_file, result_files)
from .zipstream import zip_chunks

log = logging.getLogger("restorecli.serve")

_FINISHED = ("completed", "failed")
EVENT_POLL = 0.5  # seconds between looks at a job for /events
EVENT_KEEPALIVE = 15.0
RETRY_AFTER_STOPPING = 30  # seconds a client is told to wait while the server stops (and, in a container, restarts)
CANCEL_WAIT = 10.0  # seconds DELETE waits for a running job's worker to drop it before answering 202


class Api:
    """The server's configuration and the queue, opened once per thread (a SQLite connection stays in the
    thread that made it)."""

    def __init__(self, config: ServeConfig, pool=None):
        self.config = config
        self.pool = pool  # the worker processes this server started (None: in-process tests, --workers 0)
        self.limits = Limits(config.max_file_bytes, config.max_files, FORM_FIELDS)
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

    def options_for(self, fields: dict[str, str]) -> dict:
        """A job's stored options: the server's defaults, with the request's fields parsed and checked as the
        command line checks them. Raises ``UsageError``."""
        given = dict(self.config.defaults)
        for name, text in fields.items():
            if not text.strip():
                continue  # a form's empty field: the server's default
            if name == "model":
                offered = {public_model_name(model): model for model in self.config.allowed_models}
                if text.strip() not in offered:
                    raise UsageError(f"model '{text.strip()}' is not offered by this server; it offers: "
                                     f"{', '.join(offered)}")
                given[name] = offered[text.strip()]
                continue
            if isinstance(given.get(name), bool) and text.strip().lower() not in ("true", "false"):
                raise UsageError(f"{name} '{text.strip()[:40]}' is not true or false")  # as the document declares
            given[name] = value_from_text(name, text)
        return job_options(from_given(given))

    def refusal(self, length: int) -> HTTPException | None:
        """Why an upload of ``length`` bytes cannot be taken now, before any of it is read: the server is stopping
        (503, try again after the restart), or the queue's disk would fall under ``--min-free-mb`` (507)."""
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

    def enqueue(self, staged: Staging, upload: MultipartUpload) -> Job:
        """Queue the stored upload, once each of its files is checked to be whole on disk (a ``prune`` run by
        hand could have removed the staging folder meanwhile): a partial job is never queued."""
        options = self.options_for(upload.fields)
        missing = missing_weights(options)
        if missing is not None:  # a worker could only fail it: refused now, saying what the server lacks
            raise UsageError(f"this server cannot run the job: {missing}")
        inputs = [{"original_filename": f.original_filename, "stored": f.stored} for f in upload.files]
        with self._writing:
            return staged.enqueue(self.store(), options, inputs, {f.stored: f.size for f in upload.files})


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
    """A response that calls ``release`` once it has been sent, or abandoned by its client."""

    def release(self) -> None:  # replaced by ``Api.held``
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


def create_app(config: ServeConfig, pool=None) -> FastAPI:
    api = Api(config, pool)
    app = FastAPI(
        title="restorecli",
        version=_version(),
        summary="Image restoration (Real-ESRGAN-family upscaling, GFPGAN faces) over a durable job queue.",
        description=f"Upload images to `POST /enhance`, follow `GET /status/{{job_id}}` or `GET /events/{{job_id}}`, "
                    f"and download from `/processed/` or `/jobs/{{job_id}}/download`. When the server has an "
                    f"API key ({API_KEY_ENV}), send it in the `{API_KEY_HEADER}` header.",
        docs_url=None, redoc_url=None,  # /docs is served from the package (apidocs), never from a CDN
    )
    app.state.api = api
    if config.cors_origin:
        app.add_middleware(CORSMiddleware, allow_origins=[config.cors_origin], allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=[API_KEY_HEADER, "Content-Type"])
    _errors(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")  # an upload is never run as a page
        response.headers.setdefault("Referrer-Policy", "no-referrer")  # job ids in URLs stay on this server
        return response

    app.add_middleware(RequestGuard, config=config)  # outermost: Host, cross-site requests, HEAD, JSON errors

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKey",
                              description=f"The server's {API_KEY_ENV}, where it has one.")

    def require_key(given: str | None = Security(key_header)) -> None:
        if config.api_key is None:
            return
        if not given:
            raise HTTPException(401, f"this server needs an API key: send it in the {API_KEY_HEADER} header",
                                headers={"WWW-Authenticate": "ApiKey"})
        if not hmac.compare_digest(given.encode("utf-8", "replace"), config.api_key.encode("utf-8")):
            raise HTTPException(401, "wrong API key", headers={"WWW-Authenticate": "ApiKey"})

    guarded = [Security(require_key)]
    _api_routes(app, api, guarded)
    _file_routes(app, api, guarded)
    _dashboard_routes(app)
    add_docs_routes(app)
    schema.publish(app)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("restorecli")
    except PackageNotFoundError:
        return "0"


def _errors(app: FastAPI) -> None:
    """Every error is ``{"detail": "<one sentence>"}`` with its status code."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RestoreCliError)
    async def restorecli_error(request: Request, exc: RestoreCliError) -> JSONResponse:  # e.g. a vanished upload
        status = 422 if isinstance(exc, UsageError) else 503  # the queue's disk or database cannot take it now
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


def _form_schema(limits: Limits, offered: dict) -> dict:
    """The multipart body's OpenAPI schema, from the declared restore options and what this server can run
    (``offered``: the ``/models`` document)."""
    properties: dict[str, dict] = {FILE_FIELD: {
        "type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": limits.max_files,
        "description": f"One to {limits.max_files} images, each at most {limits.max_file_bytes / 1048576:g} MB."}}
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
    for name, _default, spec in declared():
        if name in FORM_FIELDS:
            prop: dict = {"type": kinds[spec.given_as], "description": spec.help + " Default: the server's."}
            if spec.choices:
                prop["enum"] = list(spec.choices)
            if spec.minimum is not None:
                prop["minimum"] = spec.minimum
            if spec.maximum is not None:
                prop["maximum"] = spec.maximum
            properties[name] = prop
    # A model without its weights, or faces without theirs, is refused with 422: the document offers neither
    properties["model"]["enum"] = [model["name"] for model in offered["models"] if model["runnable"]]
    if not offered["faces"]["available"]:
        properties["face_enhance"]["enum"] = [False]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FILE_FIELD], "properties": properties, "additionalProperties": False}}}}}


def _api_routes(app: FastAPI, api: Api, guarded: list) -> None:
    @app.post("/enhance", status_code=202, dependencies=[*guarded, Depends(UploadSlots(api.config.max_uploads))],
              response_model=schema.Accepted,
              openapi_extra=_form_schema(api.limits, models_document(api.config.allowed_models, api.config.defaults)),
              responses=schema.errors(400, 401, 413, 415, 422, 503, 507))
    async def enhance(request: Request) -> dict:
        """Queue the uploaded images as one job. A file that is not a readable image does not fail the request:
        the job records its error and restores the others."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > api.limits.body_bytes:
            raise HTTPException(413, f"request of {int(length):,} bytes is over the most {api.limits.max_files} "
                                     f"files of {api.limits.max_file_bytes / 1048576:g} MB can take")
        refusal = await run_in_threadpool(api.refusal, int(length) if length and length.isdigit() else 0)
        if refusal is not None:
            await _drain(request.stream(), api.limits.body_bytes)
            raise refusal
        staged = Staging(api.config.queue)
        upload: MultipartUpload | None = None
        chunks = timed_chunks(request.stream(), api.config.read_timeout)  # a slow client is cut off (408)
        try:
            upload = MultipartUpload(request.headers.get("content-type"), staged.inputs, api.limits)
            async for chunk in chunks:
                await run_in_threadpool(upload.feed, chunk)
            await run_in_threadpool(upload.finish)
            job = await run_in_threadpool(api.enqueue, staged, upload)
        except UploadRefused as exc:
            await run_in_threadpool(_abandon, staged, upload)
            if exc.status == 413:
                await _drain(chunks, api.limits.body_bytes)
            raise HTTPException(exc.status, exc.detail) from None
        except ClientDisconnect:
            await run_in_threadpool(_abandon, staged, upload)
            raise HTTPException(400, "the client closed the connection before the upload ended") from None
        except OSError as exc:  # the queue's disk: full, read-only, or its folder removed under the upload
            await run_in_threadpool(_abandon, staged, upload)
            full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
            raise HTTPException(507 if full else 503, f"the server cannot store the upload now: "
                                                      f"{exc.strerror or exc}") from None
        except BaseException:
            await run_in_threadpool(_abandon, staged, upload)
            raise
        position = await run_in_threadpool(lambda: api.store().position(job))
        return {"job_id": job.id, "status": "queued", "queue_position": position}

    @app.get("/status/{job_id}", dependencies=guarded, response_model=schema.JobStatus,
             responses=schema.errors(401, 404))
    def status(job_id: str) -> dict:
        """A job's state, progress and per-file results."""
        return job_document(api.store(), api.job(job_id))

    @app.get("/events/{job_id}", dependencies=guarded, responses={
        **schema.errors(401, 404), 200: {"content": {"text/event-stream": {}},
                                         "description": "Events named queued, processing, completed or failed; "
                                                        "each one's data is the job's status document."}})
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """The job's progress as Server-Sent Events, until it completes or fails."""
        first = await run_in_threadpool(lambda: job_document(api.store(), api.job(job_id)))
        return StreamingResponse(_event_stream(api, request, first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.delete("/jobs/{job_id}", dependencies=guarded, response_model=schema.Deleted,
                responses={**schema.errors(401, 404), 202: {"model": schema.Deleted, "description":
                           "The job is running: its worker was asked to stop and drop it, and had not yet"}})
    def delete(job_id: str) -> Response | dict:
        """Delete a queued or finished job and its files, or cancel a running one: its worker stops at its next
        tile and keeps nothing. Answers once the job is gone, or 202 where its worker has not stopped within a few
        seconds (it will: ``GET /status`` then answers 404)."""
        from ..jobs.cancel import cancel_job

        job = api.job(job_id)
        done = cancel_job(api.store(), job.id, CANCEL_WAIT)
        if done is None:
            raise HTTPException(404, f"no job '{job_id}'")
        document = {"job_id": done.job_id, "deleted": done.deleted, "was": done.was}
        return document if done.deleted else JSONResponse(document, status_code=202)

    @app.get("/health", response_model=schema.Health, responses={503: {"model": schema.Health, "description":
                                                                      "Degraded or stopping: see problems"}})
    def health() -> Response:
        """Liveness, with the queue's counts and whether any worker is alive (no API key needed). 503 where the
        server cannot do its work (no worker taking waiting jobs, a worker stalled, the disk nearly full, the queue
        database gone) or is stopping; ``problems`` says what."""
        document = health_document(api)
        return JSONResponse(document, status_code=200 if document["status"] == "ok" else 503)

    @app.get("/models", dependencies=guarded, response_model=schema.Models, responses=schema.errors(401))
    def models() -> dict:
        """The models a job may ask for (the first is the default), whether faces can be restored, and the
        defaults of the fields a request may leave out."""
        return models_document(api.config.allowed_models, api.config.defaults)


def health_document(api: Api) -> dict:
    """``GET /health``'s answer: ok, degraded or stopping, with the problems in words."""
    store = api.store()
    seen = store.live_workers()
    managed = api.pool.alive() if api.pool is not None else 0
    counts = store.counts()
    free_mb = api.free_mb()
    problems = []
    if free_mb < api.config.min_free_mb:
        problems.append(f"the queue's disk has {free_mb:,.0f} MB free, under the {api.config.min_free_mb:g} MB the "
                        "server keeps (--min-free-mb): uploads are refused with 507")
    waiting = counts["queued"] + counts["processing"]
    if waiting and not (managed or seen):
        problems.append(f"{waiting} job(s) wait and no worker is alive to take them")
    now = time.time()
    for job in store.jobs("processing"):
        if job.lease_until is not None and job.lease_until < now:
            problems.append(f"job {job.id}: its worker stopped making progress (its lease ran out "
                            f"{now - job.lease_until:.0f}s ago); another worker will take it over")
    status = "stopping" if api.draining.is_set() else "degraded" if problems else "ok"
    return {"status": status, "problems": problems, "queue": counts,
            "disk": {"free_mb": round(free_mb, 1), "min_free_mb": api.config.min_free_mb},
            "auth_required": api.config.api_key is not None,
            "workers": {"started": api.config.workers, "alive": managed, "seen": len(seen),
                        "restarts": api.pool.restarts if api.pool is not None else 0},
            "worker_alive": bool(managed or seen),
            "limits": {"max_file_mb": api.config.max_file_mb, "max_files": api.config.max_files}}


def _abandon(staged: Staging, upload: MultipartUpload | None) -> None:
    """Remove what a refused or failed upload left, whatever else fails meanwhile (on a full disk, closing the
    upload's last file fails again on its buffered tail)."""
    try:
        if upload is not None:
            upload.close()
    except OSError:
        pass
    finally:
        staged.discard()


async def _drain(chunks: AsyncIterator[bytes], limit: int) -> None:
    """Read (and drop) the rest of a refused body, up to ``limit`` bytes, so the client sending it reads the
    refusal instead of a connection reset."""
    read = 0
    try:
        async for chunk in chunks:
            read += len(chunk)
            if read > limit:
                return
    except (ClientDisconnect, UploadRefused):  # gone, or too slow to wait for
        return


async def _event_stream(api: Api, request: Request, document: dict) -> AsyncIterator[str]:
    """One event a change (status, progress or queue position), named by the status; a comment now and then
    keeps proxies from closing a quiet stream. Ends when the job finishes or is deleted."""
    last = None
    quiet = 0.0
    while True:
        key = (document["status"], document["progress"]["done"], document["queue_position"])
        if key != last:
            yield f"event: {document['status']}\ndata: {json.dumps(document)}\n\n"
            last, quiet = key, 0.0
        elif quiet >= EVENT_KEEPALIVE:
            yield ": waiting\n\n"
            quiet = 0.0
        if document["status"] in _FINISHED or await request.is_disconnected():
            return
        await anyio.sleep(EVENT_POLL)
        quiet += EVENT_POLL

        def read() -> dict | None:
            job = api.store().get(document["job_id"])
            return job_document(api.store(), job) if job else None

        latest = await run_in_threadpool(read)
        if latest is None:
            yield f"event: deleted\ndata: {json.dumps({'job_id': document['job_id']})}\n\n"
            return
        document = latest


def _file_response(request: Request, served: Served) -> Response:
    """The file with its type, length and an ETag; a client holding that version gets 304."""
    info = served.path.stat()
    etag = f'"{info.st_size:x}-{info.st_mtime_ns:x}"'
    if not_modified(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "private"})
    return HeldFile(served.path, media_type=served.media_type, filename=served.download_name,
                    content_disposition_type="inline", headers={"ETag": etag, "Cache-Control": "private"})


def _held_file(api: Api, request: Request, job: Job, find: Callable[[], Served | None], missing: str) -> Response:
    """The file ``find()`` names (404 saying ``missing`` where none), its job held against the janitor until sent."""

    def respond() -> Response:
        served = find()
        if served is None:
            raise HTTPException(404, missing)
        return _file_response(request, served)

    return api.held(job.id, respond)


def _file_routes(app: FastAPI, api: Api, guarded: list) -> None:
    @app.get("/processed/{job_id}/{name:path}", dependencies=guarded, response_class=FileResponse,
             responses=schema.errors(401, 404))
    def processed(job_id: str, name: str, request: Request) -> Response:
        """A result file of a finished job, as its status lists it."""
        job = api.job(job_id)
        return _held_file(api, request, job, lambda: result_file(api.store(), job, name),
                          f"job {job_id} has no result '{name[:200]}'")

    @app.get("/jobs/{job_id}/inputs/{index}", dependencies=guarded, response_class=FileResponse,
             responses=schema.errors(401, 404))
    def job_input(job_id: str, index: int, request: Request) -> Response:
        """The ``index``-th uploaded file of a job, as it was sent (the dashboard's "before" picture)."""
        job = api.job(job_id)
        return _held_file(api, request, job, lambda: input_file(api.store(), job, index),
                          f"job {job_id} has no input {index}")

    @app.get("/jobs/{job_id}/download", dependencies=guarded, responses={
        **schema.errors(401, 404, 409), 200: {"content": {"application/zip": {}}}})
    def download(job_id: str) -> StreamingResponse:
        """All of a finished job's results as one ZIP archive, streamed."""
        job = api.job(job_id)
        if job.status not in _FINISHED:
            raise HTTPException(409, f"job {job_id} is {job.status}; its results can be downloaded once it finishes")

        def respond() -> Response:
            files = result_files(api.store(), job)
            if not files:
                raise HTTPException(404, f"job {job_id} has no results to download")
            return HeldStream(zip_chunks(files), media_type="application/zip",
                              headers={"Content-Disposition": f'attachment; filename="restorecli-{job.id}.zip"'})

        return api.held(job.id, respond)


def _dashboard_routes(app: FastAPI) -> None:
    folder = resources.files("restorecli.server") / "dashboard"
    types = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

    def asset(name: str) -> Response:
        item = folder / name
        if "/" in name or name.startswith(".") or not item.is_file():
            raise HTTPException(404, f"no dashboard file '{name[:80]}'")
        return Response(item.read_bytes(), media_type=types.get(Path(name).suffix, "application/octet-stream"),
                        headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = asset("index.html")
        page.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' blob: data:; "
                                                   "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                                   "frame-ancestors 'none'")
        return page

    @app.get("/dashboard/{name}", include_in_schema=False)
    def dashboard_file(name: str) -> Response:
        return asset(name)

