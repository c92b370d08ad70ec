"""The FastAPI application: the REST API (the routers of ``server/routes``) and the dashboard, over a job service.

``restorecli serve`` makes it over the job folder (``QueueService``); the Modal app makes it over its own records
and volume. The process serving it never runs a model: uploads become queued jobs, and everything a client reads
comes from where jobs live. Blocking work (SQLite, files) runs in the thread pool, so the event loop answers
``GET /status`` promptly whatever the workers are doing.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RestoreCliError, UsageError
from . import schema
from .apidocs import add_docs_routes
from .config import API_KEY_ENV, API_KEY_HEADER, ServeConfig
from .guards import RequestGuard, UploadSlots
from .routes import API_ROUTERS, DASHBOARD_ROUTER
from .routes.enhance import form_schema
from .service import JobService, QueueService

log = logging.getLogger("restorecli.serve")

SUMMARY = "Image restoration (Real-ESRGAN-family upscaling, GFPGAN faces) over a durable job queue."


def create_app(config: ServeConfig, pool=None) -> FastAPI:
    """``restorecli serve``'s app over the job folder ``config.queue`` (created if need be); ``pool``: the worker
    processes it started, reported by ``/health``. ``app.state.service`` is its ``QueueService``."""
    return api_app(QueueService(config, pool))


def api_app(service: JobService, title: str = "restorecli", summary: str = SUMMARY) -> FastAPI:
    """The API and the dashboard over ``service``, guarded as its ``config`` says (key, hosts, origins, limits)."""
    config = service.config
    app = FastAPI(
        title=title, version=_version(), summary=summary,
        description=f"Upload images to `POST /enhance`, follow `GET /status/{{job_id}}` or `GET /events/{{job_id}}`, "
                    f"and download from `/processed/` or `/jobs/{{job_id}}/download`. When the server has an "
                    f"API key ({API_KEY_ENV}), send it in the `{API_KEY_HEADER}` header.",
        docs_url=None, redoc_url=None,  # /docs is served from the package (apidocs), never from a CDN
    )
    app.state.service = service
    app.state.upload_slots = UploadSlots(config.max_uploads)
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
    for router in API_ROUTERS:
        app.include_router(router)
    app.include_router(DASHBOARD_ROUTER)
    add_docs_routes(app)
    schema.publish(app, form_schema(service.limits, service.models()))
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
