"""``GET /events/{job_id}``: a job's progress as Server-Sent Events."""

from __future__ import annotations

import json
from typing import AsyncIterator

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import schema
from ..service import FINISHED, JobService
from .deps import GUARDED, job_service

EVENT_POLL = 0.5  # seconds between looks at a job
EVENT_KEEPALIVE = 15.0

router = APIRouter(dependencies=GUARDED)


@router.get("/events/{job_id}", responses={
    **schema.errors(401, 404), 200: {"content": {"text/event-stream": {}},
                                     "description": "Events named queued, processing, completed or failed; "
                                                    "each one's data is the job's status document."}})
async def events(job_id: str, request: Request, service: JobService = Depends(job_service)) -> StreamingResponse:
    """The job's progress as Server-Sent Events, until it completes or fails."""
    first = await run_in_threadpool(service.status, job_id)
    return StreamingResponse(_event_stream(service, request, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _event_stream(service: JobService, request: Request, document: dict) -> AsyncIterator[str]:
    """One event a change (status, progress, a video's frames done or queue position), named by the status; a comment now and then
    keeps proxies from closing a quiet stream. Ends when the job finishes or is deleted."""
    last = None
    quiet = 0.0
    while True:
        frames = [(result["index"], result["frames"]["done"]) for result in document["results"] if result.get("frames")]
        key = (document["status"], document["progress"]["done"], document["queue_position"], frames)
        if key != last:
            yield f"event: {document['status']}\ndata: {json.dumps(document)}\n\n"
            last, quiet = key, 0.0
        elif quiet >= EVENT_KEEPALIVE:
            yield ": waiting\n\n"
            quiet = 0.0
        if document["status"] in FINISHED or await request.is_disconnected():
            return
        await anyio.sleep(EVENT_POLL)
        quiet += EVENT_POLL
        latest = await run_in_threadpool(service.latest, document["job_id"])
        if latest is None:
            yield f"event: deleted\ndata: {json.dumps({'job_id': document['job_id']})}\n\n"
            return
        document = latest
