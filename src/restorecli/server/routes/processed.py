"""A job's files: its results (``/processed/{job_id}/{name}``, ``/jobs/{job_id}/download``) and its uploads
(``/jobs/{job_id}/inputs/{index}``), each with an ETag, the job held against the janitor until sent."""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from .. import schema
from ..guards import not_modified
from ..service import HeldFile, HeldStream, JobService
from ..views import Served
from ..zipstream import zip_chunks
from .deps import GUARDED, job_service

router = APIRouter(dependencies=GUARDED)


@router.get("/processed/{job_id}/{name:path}", response_class=FileResponse, responses=schema.errors(401, 404))
def processed(job_id: str, name: str, request: Request, service: JobService = Depends(job_service)) -> Response:
    """A result file of a finished job, as its status lists it."""
    return _held_file(service, request, job_id, lambda: service.result(job_id, name),
                      f"job {job_id} has no result '{name[:200]}'")


@router.get("/jobs/{job_id}/inputs/{index}", response_class=FileResponse, responses=schema.errors(401, 404))
def job_input(job_id: str, index: int, request: Request, service: JobService = Depends(job_service)) -> Response:
    """The ``index``-th uploaded file of a job, as it was sent (the dashboard's "before" picture)."""
    return _held_file(service, request, job_id, lambda: service.input(job_id, index),
                      f"job {job_id} has no input {index}")


@router.get("/jobs/{job_id}/download", responses={**schema.errors(401, 404, 409),
                                                  200: {"content": {"application/zip": {}}}})
def download(job_id: str, service: JobService = Depends(job_service)) -> StreamingResponse:
    """All of a finished job's results as one ZIP archive, streamed."""

    def respond() -> Response:
        files = service.results(job_id)  # 404 for no job, 409 for one still to finish
        if not files:
            raise HTTPException(404, f"job {job_id} has no results to download")
        return HeldStream(zip_chunks(files), media_type="application/zip",
                          headers={"Content-Disposition": f'attachment; filename="restorecli-{job_id}.zip"'})

    return service.held(job_id, respond)


def _held_file(service: JobService, request: Request, job_id: str, find: Callable[[], Served | None],
               missing: str) -> Response:
    """The file ``find()`` names (404 saying ``missing`` where none), its job held until it has been sent."""

    def respond() -> Response:
        served = find()
        if served is None:
            raise HTTPException(404, missing)
        return _file_response(request, served)

    return service.held(job_id, respond)


def _file_response(request: Request, served: Served) -> Response:
    """The file with its type, length and an ETag; a client holding that version gets 304."""
    info = served.path.stat()
    etag = f'"{info.st_size:x}-{info.st_mtime_ns:x}"'
    if not_modified(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "private"})
    return HeldFile(served.path, media_type=served.media_type, filename=served.download_name,
                    content_disposition_type="inline", headers={"ETag": etag, "Cache-Control": "private"})
