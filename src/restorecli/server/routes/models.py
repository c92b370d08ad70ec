"""``GET /models``: what a job may ask for."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from .. import schema
from ..service import JobService
from .deps import GUARDED, job_service

router = APIRouter(dependencies=GUARDED)


@router.get("/models", response_model=schema.Models, responses=schema.errors(401))
def models(service: JobService = Depends(job_service)) -> dict:
    """The models a job may ask for (the first is the default), whether faces can be restored, and the
    defaults of the fields a request may leave out."""
    return service.models()
