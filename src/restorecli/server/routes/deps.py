"""The routes' dependencies: the job service and the configuration the app was made with, the API key, the upload
limits and the upload slots. Each reads the app's state, so the Modal app swaps what is behind them (and a test
may override one, ``app.dependency_overrides``), never a route."""

from __future__ import annotations

import hmac
from typing import AsyncIterator

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from ..config import API_KEY_ENV, API_KEY_HEADER, ServeConfig
from ..service import JobService
from ..uploads import Limits

_KEY_HEADER = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKey",
                           description=f"The server's {API_KEY_ENV}, where it has one.")


def job_service(request: Request) -> JobService:
    """The jobs behind this app (``QueueService`` for ``serve``)."""
    return request.app.state.service


def settings(request: Request) -> ServeConfig:
    return request.app.state.service.config


def upload_limits(request: Request) -> Limits:
    """The most files, and bytes a file, one upload may hold (``--max-files``, ``--max-file-mb``)."""
    return request.app.state.service.limits


def require_key(request: Request, given: str | None = Security(_KEY_HEADER)) -> None:
    """401 unless the request carries the server's API key (compared in constant time); open where it has none."""
    key = settings(request).api_key
    if key is None:
        return
    if not given:
        raise HTTPException(401, f"this server needs an API key: send it in the {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": "ApiKey"})
    if not hmac.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8")):
        raise HTTPException(401, "wrong API key", headers={"WWW-Authenticate": "ApiKey"})


GUARDED = [Security(require_key)]  # the dependencies of every route that needs the key


async def upload_slot(request: Request) -> AsyncIterator[None]:
    """One of the app's upload slots (``--max-uploads``), held while the body is read; 503 where none is free."""
    slots = request.app.state.upload_slots
    slots.take()
    try:
        yield
    finally:
        slots.give_back()
