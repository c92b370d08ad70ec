"""``GET /health``: liveness, and whether the server can do its work (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from .. import schema
from ..service import JobService
from ..uploads import accepted_formats
from .deps import job_service

router = APIRouter()


@router.get("/health", response_model=schema.Health,
            responses={503: {"model": schema.Health, "description": "Degraded or stopping: see problems"}})
def health(service: JobService = Depends(job_service)) -> Response:
    """Liveness, with the queue's counts and whether any worker is alive (no API key needed). 503 where the
    server cannot do its work (no worker taking waiting jobs, a worker stalled, the disk nearly full, the queue
    database gone) or is stopping; ``problems`` says what. ``formats``: the file suffixes an upload may hold."""
    document = {**service.health(), "formats": accepted_formats()}
    return JSONResponse(document, status_code=200 if document["status"] == "ok" else 503)
