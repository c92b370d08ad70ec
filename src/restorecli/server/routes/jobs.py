"""A job: ``GET /status/{job_id}`` and ``DELETE /jobs/{job_id}``."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from .. import schema
from ..service import JobService
from .deps import GUARDED, job_service

router = APIRouter(dependencies=GUARDED)


@router.get("/status/{job_id}", response_model=schema.JobStatus, responses=schema.errors(401, 404))
def status(job_id: str, service: JobService = Depends(job_service)) -> dict:
    """A job's state, progress and per-file results."""
    return service.status(job_id)


@router.delete("/jobs/{job_id}", response_model=schema.Deleted,
               responses={**schema.errors(401, 404), 202: {"model": schema.Deleted, "description":
                          "The job is running: its worker was asked to stop and drop it, and had not yet"}})
def delete(job_id: str, service: JobService = Depends(job_service)) -> Response | dict:
    """Delete a queued or finished job and its files, or cancel a running one: its worker stops at its next
    tile and keeps nothing. Answers once the job is gone, or 202 where its worker has not stopped within a few
    seconds (it will: ``GET /status`` then answers 404)."""
    document, gone = service.delete(job_id)
    return document if gone else JSONResponse(document, status_code=202)
