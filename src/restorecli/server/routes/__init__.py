"""The HTTP API, one ``APIRouter`` per resource; ``restorecli serve`` and the Modal app mount the same ones.

    enhance    POST /enhance                        an upload, queued as one job
    jobs       GET /status/{id}, DELETE /jobs/{id}  a job
    events     GET /events/{id}                     a job's progress as Server-Sent Events
    processed  GET /processed/{id}/{name}, /jobs/{id}/inputs/{index}, /jobs/{id}/download: a job's files
    health     GET /health                          liveness (no key)
    models     GET /models                          what a job may ask for
    dashboard  GET /, /dashboard/{name}             the browser page (not in the schema)

The routes get what they need as dependencies (``deps``): the job service (``server.service.JobService``) and
the configuration from the app's state, the API key check, an upload slot. To add a route: a module here with its
``router``, listed in ``API_ROUTERS``.
"""

from __future__ import annotations

from . import dashboard, enhance, events, health, jobs, models, processed

API_ROUTERS = (enhance.router, jobs.router, events.router, health.router, models.router, processed.router)
DASHBOARD_ROUTER = dashboard.router
