"""The API's response documents, as the OpenAPI schema shows them."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

JobState = Literal["queued", "processing", "completed", "failed"]


class Error(BaseModel):
    detail: str = Field(description="What was wrong, in one sentence.")


def errors(*codes: int) -> dict:
    """The ``responses`` entry for error codes a route can answer."""
    described = {400: "Malformed request", 401: "Missing or wrong API key", 404: "No such job or file",
                 409: "The job is not in a state that allows this", 413: "Upload over the server's limits",
                 415: "Not multipart/form-data", 422: "A field's value cannot be used",
                 503: "The queue cannot take the upload now", 507: "The queue's disk is full"}
    return {code: {"model": Error, "description": described[code]} for code in codes}


class Accepted(BaseModel):
    job_id: str
    status: Literal["queued"]
    queue_position: Optional[int]


class Progress(BaseModel):
    done: int
    total: int


class Result(BaseModel):
    index: int
    original_filename: str = Field(description="The client's file name, as display text.")
    url: Optional[str] = Field(description="Where the result can be downloaded, once the job has finished.")
    input_url: str = Field(description="The file as it was uploaded.")
    status: Literal["pending", "processing", "ok", "error"]
    error: Optional[str]
    in_size: Optional[list[int]] = Field(description="[width, height] of the input.")
    out_size: Optional[list[int]] = Field(description="[width, height] of the result.")
    seconds: Optional[float] = Field(None, description="How long the worker took over this file.")
    faces: Optional[int] = Field(None, description="Faces restored (null: face enhancement off).")


class JobStatus(BaseModel):
    job_id: str
    status: JobState
    queue_position: Optional[int] = Field(description="1-based place among queued jobs; null once it has started.")
    progress: Progress
    error: Optional[str] = Field(description="Why the job failed, or why its last try did not finish it.")
    created: float
    finished: Optional[float]
    results: list[Result]
    download_url: Optional[str] = Field(description="All results as one ZIP, once the job has finished.")
    setup: Optional[dict] = Field(None, description="The model, device and precision that ran, once finished.")


class Deleted(BaseModel):
    job_id: str
    deleted: bool
    was: JobState


class Workers(BaseModel):
    started: int = Field(description="Worker processes this server keeps running (--workers).")
    alive: int
    seen: int = Field(description="Workers on this queue that reported in lately, this server's or others'.")
    restarts: int


class Limits(BaseModel):
    max_file_mb: float
    max_files: int


class Health(BaseModel):
    status: Literal["ok"]
    queue: dict[str, int]
    auth_required: bool
    workers: Workers
    worker_alive: bool
    limits: Limits


class ModelInfo(BaseModel):
    name: str
    scale: Optional[int]
    description: str
    status: Literal["installed", "embedded", "missing"]


class Faces(BaseModel):
    available: bool
    model: str
    detector: str


class Models(BaseModel):
    default: str
    models: list[ModelInfo]
    faces: Faces
    defaults: dict
