"""The API's response documents, as the OpenAPI schema shows them."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

JobState = Literal["queued", "processing", "completed", "failed"]


class Error(BaseModel):
    detail: str = Field(description="What was wrong, in one sentence.")


DESCRIBED = {400: "Malformed request, or a Host this server does not answer to", 401: "Missing or wrong API key",
             403: "A page of another site may not change this server's state", 404: "No such job or file",
             408: "The client sent its body too slowly", 409: "The job is not in a state that allows this",
             413: "Upload over the server's limits", 415: "Not multipart/form-data",
             422: "A field's or parameter's value cannot be used", 500: "The server failed (it is logged)",
             503: "The server cannot do it now: stopping, its queue unavailable, or every upload slot taken "
                  "(Retry-After, where given, says when to try again)",
             507: "The queue's disk is full"}


def errors(*codes: int) -> dict:
    """The ``responses`` entry for error codes a route can answer."""
    return {code: {"model": Error, "description": DESCRIBED[code]} for code in codes}


_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_EVERYWHERE = (400, 500, 503)  # a foreign Host, a fault, the queue gone or the server stopping: any route
_GIVEN = (422,)  # a route that takes parameters or a body: a value of the wrong type
_STATE_CHANGING = (403,)  # a cross-site POST or DELETE
_UPLOAD = (408,)  # POST /enhance: a slow body
# Where a job's id leads, from the answer that made it: (path, method, parameters besides job_id)
_JOB_LINKS = {"GetStatus": ("/status/{job_id}", "get", {}), "FollowEvents": ("/events/{job_id}", "get", {}),
              "DownloadZip": ("/jobs/{job_id}/download", "get", {}),
              "GetInput": ("/jobs/{job_id}/inputs/{index}", "get", {"index": 0}),
              "GetResult": ("/processed/{job_id}/{name}", "get", {}), "DeleteJob": ("/jobs/{job_id}", "delete", {})}


def publish(app, form: dict) -> None:
    """Make ``app``'s OpenAPI document say what the server really does (see ``contract``), built once; ``form`` is
    ``POST /enhance``'s multipart body (the route reads its body as a stream, so FastAPI cannot declare it)."""
    build = app.openapi
    state = {"done": False}

    def openapi() -> dict:
        document = build()
        if not state["done"]:
            enhance = document.get("paths", {}).get("/enhance", {}).get("post")
            if enhance is not None:
                enhance["requestBody"] = form
            contract(document)
            state["done"] = True
        return document

    app.openapi = openapi


def contract(document: dict) -> dict:
    """Rewrite FastAPI's document in place to the server's real contract: every 4xx and 5xx is the one ``Error``
    shape ``{"detail": string}`` (FastAPI declares its validation-error array for 422, which this server never
    sends), the errors every route can answer are declared on each, and ``POST /enhance``'s answer links its
    ``job_id`` to the routes that take it, so a client (or a tester) can follow a job from its creation."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Error", Error.model_json_schema())
    operation_ids = {}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            operation_ids[(path, method)] = operation.get("operationId")
            responses = operation.setdefault("responses", {})
            extra = _EVERYWHERE + (_STATE_CHANGING if method in ("post", "delete", "put", "patch") else ())
            extra += _GIVEN if operation.get("parameters") or operation.get("requestBody") else ()
            extra += _UPLOAD if (path, method) == ("/enhance", "post") else ()
            for code in extra:
                responses.setdefault(str(code), {"description": DESCRIBED[code]})
            for code, response in responses.items():
                if code[0] in "45":  # an error a route declares with a model of its own (/health's 503) keeps it
                    if "HTTPValidationError" in str(response.get("content")) or not response.get("content"):
                        response["content"] = {"application/json": {"schema": dict(_ERROR_REF)}}
                    response.setdefault("description", DESCRIBED.get(int(code), "Error"))
                    if code == "422" and response["description"] == "Validation Error":
                        response["description"] = DESCRIBED[422]
            if "503" in responses and (path, method) == ("/enhance", "post"):
                responses["503"]["headers"] = {"Retry-After": {
                    "description": "Seconds to wait before trying again, when the server knows.",
                    "schema": {"type": "integer"}}}
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    accepted = document.get("paths", {}).get("/enhance", {}).get("post", {}).get("responses", {}).get("202")
    if accepted is not None:
        links = {}
        for name, (path, method, constants) in _JOB_LINKS.items():
            if operation_ids.get((path, method)):
                links[name] = {"operationId": operation_ids[(path, method)],
                               "parameters": {"job_id": "$response.body#/job_id", **constants}}
        accepted["links"] = links
    return document


class Accepted(BaseModel):
    job_id: str
    status: Literal["queued"]
    queue_position: Optional[int]


class Progress(BaseModel):
    done: int
    total: int


class FramesDone(BaseModel):
    done: int = Field(description="Frames restored so far.")
    total: Optional[int] = Field(description="The video's frames (null: its header does not say).")


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
    frames: Optional[FramesDone] = Field(None, description="A video's frames while the worker restores it.")


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
    max_file_mb: float = Field(description="The largest image an upload may hold, in MB (--max-file-mb).")
    max_files: int = Field(description="The most files in one request (--max-files).")
    max_video_mb: Optional[float] = Field(None, description="The largest video an upload may hold, in MB "
                                                            "(--max-video-mb); over it, 413.")
    max_video_seconds: Optional[float] = Field(None, description="The longest video an upload may hold, by its "
                                                                 "container's header (--max-video-seconds); over "
                                                                 "it, 422.")
    max_video_frames: Optional[int] = Field(None, description="The most frames a video may hold (--max-video-frames): "
                                                              "counted by its packets at upload (over it, 422), then "
                                                              "as a worker decodes them (over it, that file's error).")


class Formats(BaseModel):
    images: list[str] = Field(description="The suffixes of the images an upload may hold (a file is read by its "
                                          "content, so a suffix only helps a file picker).")
    videos: list[str] = Field(description="The suffixes that make a file a video, held to the video limits.")
    animated: list[str] = Field(description="The image suffixes restored frame by frame where the file is animated.")


class Disk(BaseModel):
    free_mb: float
    min_free_mb: float


class Health(BaseModel):
    status: Literal["ok", "degraded", "stopping"] = Field(
        description="ok (200); degraded or stopping (both answered with 503): see problems")
    problems: list[str] = Field(description="What keeps the server from doing its work, in words")
    disk: Disk
    queue: dict[str, int]
    auth_required: bool
    workers: Workers
    worker_alive: bool
    limits: Limits
    formats: Optional[Formats] = Field(None, description="What an upload may hold, by file suffix")


class ModelInfo(BaseModel):
    name: str
    scale: Optional[int]
    description: str
    status: Literal["installed", "embedded", "missing"]
    runnable: bool = Field(description="Whether a job may ask for it: its weights are here (a request for a missing "
                                       "model is refused with 422)")


class FaceModelInfo(BaseModel):
    name: str
    description: str
    licence: Optional[str] = Field(description="The weights' licence (null: a checkpoint file on the server).")
    non_commercial: bool = Field(description="Whether the licence forbids commercial use (CodeFormer's does).")
    fidelity: Optional[bool] = Field(description="Whether it takes face_fidelity (null: a checkpoint file, whose "
                                                 "architecture is read where it is loaded).")
    status: Literal["installed", "embedded", "missing"]
    runnable: bool = Field(description="Whether a job may ask for it (a request for one that is not is refused "
                                       "with 422)")
    reason: Optional[str] = Field(description="Why a job may not ask for it: its weights, or its architecture's "
                                              "package, not installed here.")


class Faces(BaseModel):
    available: bool = Field(description="Whether the default face model and the detector can run here.")
    model: str = Field(description="The default face model.")
    detector: str
    detector_installed: bool = Field(description="Whether the face detector's weights are here (every face model "
                                                  "needs it).")
    models: list[FaceModelInfo] = Field(description="The face models a job may name in face_model, the default "
                                                    "first.")


class PresetInfo(BaseModel):
    name: str
    description: str
    models: list[str] = Field(description="The models it runs, in order.")
    face_enhance: bool = Field(description="Whether it restores faces too.")


class Colorize(BaseModel):
    available: bool = Field(description="Whether a job may ask for colorize auto or always (else 422).")
    model: str = Field(description="The server's colourisation model.")
    reason: Optional[str] = Field(description="Why colorize is not available: its weights or package missing.")


class Models(BaseModel):
    default: str
    models: list[ModelInfo]
    faces: Faces
    presets: list[PresetInfo] = Field(description="The presets a job may name: those whose every model the server "
                                                  "offers.")
    colorize: Colorize
    defaults: dict
