"""``POST /enhance``: an upload, read as it arrives, queued as one job."""

from __future__ import annotations

import errno
from typing import AsyncIterator

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ...options import declared
from .. import schema
from ..config import FORM_FIELDS, ServeConfig
from ..guards import timed_chunks
from ..service import JobService, Staged
from ..uploads import FILE_FIELD, Limits, MultipartUpload, UploadRefused, refuse_long_videos
from .deps import GUARDED, job_service, settings, upload_limits, upload_slot

router = APIRouter()


@router.post("/enhance", status_code=202, dependencies=[*GUARDED, Depends(upload_slot)],
             response_model=schema.Accepted, responses=schema.errors(400, 401, 413, 415, 422, 503, 507))
async def enhance(request: Request, service: JobService = Depends(job_service),
                  config: ServeConfig = Depends(settings), limits: Limits = Depends(upload_limits)) -> dict:
    """Queue the uploaded images as one job. A file that is not a readable image does not fail the request:
    the job records its error and restores the others."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limits.body_bytes:
        raise HTTPException(413, f"request of {int(length):,} bytes is over the most {limits.describe()} can take")
    refusal = await run_in_threadpool(service.refusal, int(length) if length and length.isdigit() else 0)
    if refusal is not None:
        await _drain(request.stream(), limits.body_bytes)
        raise refusal
    staged = await run_in_threadpool(service.staging)
    upload: MultipartUpload | None = None
    chunks = timed_chunks(request.stream(), config.read_timeout)  # a slow client is cut off (408)
    try:
        upload = MultipartUpload(request.headers.get("content-type"), staged.inputs, limits)
        async for chunk in chunks:
            await run_in_threadpool(upload.feed, chunk)
        await run_in_threadpool(upload.finish)
        await run_in_threadpool(refuse_long_videos, upload.files, staged.inputs, limits)
        return await run_in_threadpool(service.enqueue, staged, upload)
    except UploadRefused as exc:
        await run_in_threadpool(_abandon, staged, upload)
        if exc.status == 413:
            await _drain(chunks, limits.body_bytes)
        raise HTTPException(exc.status, exc.detail) from None
    except ClientDisconnect:
        await run_in_threadpool(_abandon, staged, upload)
        raise HTTPException(400, "the client closed the connection before the upload ended") from None
    except OSError as exc:  # the disk: full, read-only, or its folder removed under the upload
        await run_in_threadpool(_abandon, staged, upload)
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        raise HTTPException(507 if full else 503, f"the server cannot store the upload now: "
                                                  f"{exc.strerror or exc}") from None
    except BaseException:
        await run_in_threadpool(_abandon, staged, upload)
        raise


def form_schema(limits: Limits, offered: dict) -> dict:
    """The multipart body's OpenAPI schema, from the declared restore options and what this server can run
    (``offered``: the ``/models`` document). ``schema.publish`` puts it on ``POST /enhance``."""
    properties: dict[str, dict] = {FILE_FIELD: {
        "type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": limits.max_files,
        "description": f"One to {limits.max_files} images or videos: an image at most "
                       f"{limits.max_file_bytes / 1048576:g} MB, a video (told by its name's suffix) at most "
                       f"{limits.video_bytes / 1048576:g} MB" + (f" and {limits.max_video_seconds:g} seconds long"
                                                                 if limits.max_video_seconds else "")
                       + (f", of at most {limits.max_video_frames:,} frames" if limits.max_video_frames else "") + "."}}
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
    # A field whose every value is refused here (no face model installed, no preset's models offered) is left out
    for name, values in (("face_model", [m["name"] for m in offered["faces"]["models"] if m["runnable"]]),
                         ("preset", [preset["name"] for preset in offered["presets"]])):
        if values:
            properties[name]["enum"] = values
        else:
            del properties[name]
    if not offered["colorize"]["available"]:
        properties["colorize"]["enum"] = ["never"]
    if not offered["faces"]["available"]:
        properties["face_enhance"]["enum"] = [False]
    for prop in properties.values():  # an empty field is taken, as the server's default (the descriptions say so)
        if prop["type"] == "string" and "enum" in prop:
            prop["enum"].append("")
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FILE_FIELD], "properties": properties, "additionalProperties": False}}}}


def _abandon(staged: Staged, upload: MultipartUpload | None) -> None:
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
