"""``restorecli serve``: the REST API and dashboard over a job folder, with its workers and janitor."""

from __future__ import annotations

import socket
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..errors import SetupError, UsageError
from ..jobs.prune import describe_age
from . import options as o
from . import render
from .exits import exit_on_error


# The server's own options in groups (its --help reads in them); the restore options come last, as the jobs' defaults
_ACCESS, _UPLOADS, _QUEUE = "Access", "Uploads", "Queue and workers"
Host = Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")]
Port = Annotated[int, typer.Option(metavar="PORT", help="Port to listen on (0: any free one).", min=0, max=65535)]
Workers = Annotated[int, typer.Option(metavar="N", help="Worker processes to run on the queue (0: leave the jobs to "
                                      "restorecli worker processes started elsewhere).", min=0, rich_help_panel=_QUEUE)]
Retention = Annotated[str, typer.Option(metavar="AGE", help="Keep finished jobs this long.", rich_help_panel=_QUEUE)]
PruneEvery = Annotated[str, typer.Option(metavar="AGE", help="How often the janitor runs.", rich_help_panel=_QUEUE)]
Grace = Annotated[float, typer.Option(metavar="SECONDS", help="On SIGTERM/SIGINT, how long the workers may take to "
                                      "finish the jobs in hand; what still runs then is queued again.", min=0,
                                      rich_help_panel=_QUEUE)]
MaxFileMb = Annotated[Optional[float], typer.Option(
    metavar="MB", help="Largest upload a file [default: $MAX_FILE_SIZE_MB, then 10].", show_default=False,
    rich_help_panel=_UPLOADS)]
MaxVideoMb = Annotated[float, typer.Option(metavar="MB", help="Largest upload a video (told by its suffix).",
                                           min=0.001, rich_help_panel=_UPLOADS)]
MaxVideoSeconds = Annotated[float, typer.Option(metavar="SECONDS", help="Longest video an upload may hold (by its "
                                                "header; 422 beyond).", min=0.001, rich_help_panel=_UPLOADS)]
MaxFiles = Annotated[int, typer.Option(metavar="N", help="Most files in one request.", min=1,
                                       rich_help_panel=_UPLOADS)]
MaxUploads = Annotated[int, typer.Option(metavar="N", help="Uploads read at once; more get 503.", min=1,
                                         rich_help_panel=_UPLOADS)]
ReadTimeout = Annotated[float, typer.Option(metavar="SECONDS", help="Time a client has for its headers, and the "
                                            "longest silence in its upload.", min=0.1, rich_help_panel=_UPLOADS)]
MinFreeMb = Annotated[float, typer.Option(metavar="MB", help="Free space the queue's disk keeps: below it, uploads "
                                          "get 507 and /health says degraded (503).", min=0, rich_help_panel=_UPLOADS)]
AllowModel = Annotated[Optional[list[str]], typer.Option(
    metavar="NAME", help="A model requests may ask for besides --model (repeat for more).", show_default=False,
    rich_help_panel=_ACCESS)]
AllowFaceModel = Annotated[Optional[list[str]], typer.Option(
    metavar="NAME|PATH", help="A face model requests may ask for besides --face-model (repeat for more).",
    show_default=False, rich_help_panel=_ACCESS)]
CorsOrigin = Annotated[Optional[str], typer.Option(
    metavar="ORIGIN", help="Let pages from this origin call the API (e.g. https://app.example.com).",
    show_default=False, rich_help_panel=_ACCESS)]
AllowedHost = Annotated[Optional[list[str]], typer.Option(
    metavar="NAME", help="A Host name clients reach the server by, besides the address and localhost (repeat for "
    "more); others are refused.", show_default=False, rich_help_panel=_ACCESS)]
NoAuth = Annotated[bool, typer.Option("--no-auth", help="Serve a non-loopback address without an API key.",
                                      rich_help_panel=_ACCESS)]


@o.with_restore_options(panel="Jobs' defaults (the restore options)")
def serve(
    host: Host = "127.0.0.1",
    port: Port = 8001,
    queue: o.Queue = None,
    workers: Workers = 1,
    retention: Retention = "1h",
    prune_every: PruneEvery = "30m",
    max_file_mb: MaxFileMb = None,
    max_files: MaxFiles = 20,
    max_video_mb: MaxVideoMb = 500.0,
    max_video_seconds: MaxVideoSeconds = 600.0,
    allow_model: AllowModel = None,
    allow_face_model: AllowFaceModel = None,
    cors_origin: CorsOrigin = None,
    allowed_host: AllowedHost = None,
    max_uploads: MaxUploads = 32,
    read_timeout: ReadTimeout = 30.0,
    no_auth: NoAuth = False,
    min_free_mb: MinFreeMb = 256.0,
    grace: Grace = 30.0,
    *,
    restore: dict,
) -> None:
    """Serve the REST API and the dashboard over the job folder. The restore options are the jobs' defaults."""
    with exit_on_error():
        from ..server.config import check_exposure, load_config

        config = load_config(restore, host=host, port=port, queue=queue, workers=workers, retention=retention,
                             prune_every=prune_every, max_file_mb=max_file_mb, max_files=max_files,
                             allow_model=allow_model or [], cors_origin=cors_origin,
                             allowed_host=allowed_host or [], max_uploads=max_uploads, read_timeout=read_timeout,
                             min_free_mb=min_free_mb, allow_face_model=allow_face_model or [],
                             max_video_mb=max_video_mb, max_video_seconds=max_video_seconds)
        check_exposure(config, no_auth)
        _check_serve_extra()
        sock = _listen(config.host, config.port)
    code = _run(config, sock, no_auth, grace)
    if code:
        raise typer.Exit(code)


def _check_serve_extra() -> None:
    """Refuse, naming the extra, where the server's packages are not installed: before the port is taken."""
    try:
        import uvicorn  # noqa: F401

        from ..server.app import create_app  # noqa: F401
        from ..server.guards import slow_client_protocol  # noqa: F401
    except ImportError as exc:
        raise SetupError(f"restorecli serve needs the serve extra ({exc.name} is not installed): "
                         "pip install 'restorecli[serve]'") from None


def _run(config, sock: socket.socket, no_auth: bool, grace: float) -> int:
    """Serve on ``sock`` with the workers and the janitor until a stop signal; the exit code the shutdown chose."""
    import uvicorn

    from ..server.app import create_app
    from ..server.guards import slow_client_protocol
    from ..server.shutdown import GracefulServer, Shutdown
    from ..server.supervise import Janitor, WorkerPool

    def log(line: str) -> None:
        render.say(escape(line))

    pool = WorkerPool(config.queue, config.workers, log)
    app = create_app(config, pool if config.workers else None)  # creates the queue, before any worker looks
    service = app.state.service  # the job folder behind it: downloads, draining, faults
    _announce(config, sock, no_auth)
    janitor = Janitor(config.queue, config.retention, config.prune_every, log, keep=service.downloads.in_use)
    shutdown = Shutdown(service.draining, pool if config.workers else None, janitor, grace, log)
    service.on_fault = shutdown.fail
    if config.workers:
        pool.start()
    janitor.start()
    shutdown.watch(service.check_queue)
    try:
        server = GracefulServer(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                                               http=slow_client_protocol(config.read_timeout)), shutdown)
        server.run(sockets=[sock])
    finally:
        janitor.stop()
        pool.stop()
        render.say("restorecli serve: stopped")
    return shutdown.exit_code


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before anything starts, so a port in use is a clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _announce(config, sock: socket.socket, no_auth: bool) -> None:
    """What the server will do, on stderr, before it takes its first request."""
    from ..server.views import models_document

    bound = sock.getsockname()
    shown_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{shown_host}:{bound[1]}"
    models = models_document(config.allowed_models, config.defaults, config.allowed_face_models)
    default = models["models"][0]
    device = config.defaults.get("device", "auto")
    faces = models["faces"]
    lines = [
        f"restorecli serve: listening on {url} (dashboard {url}/, API docs {url}/docs)",
        f"  queue:    {config.queue}",
        f"  model:    {config.allowed_models[0]} ({default['status']})"
        + (f"; requests may also ask for {', '.join(config.allowed_models[1:])}" if len(config.allowed_models) > 1
           else ""),
        f"  device:   {device}" + (" (each worker picks CUDA, then MPS, then the CPU)" if device == "auto" else ""),
        _faces_line(faces),
        f"  workers:  {config.workers} (restarted if one dies)" if config.workers else
        f"  workers:  none here; jobs wait for: restorecli worker --queue {config.queue}",
        f"  janitor:  every {describe_age(config.prune_every)}, removes jobs finished more than "
        f"{describe_age(config.retention)} ago",
        f"  uploads:  at most {config.max_files} files of {config.max_file_mb:g} MB each (a video "
        f"{config.max_video_mb:g} MB, {config.max_video_seconds:g} seconds, {config.max_video_frames:,} frames)",
        "  API key:  required (X-API-Key header)" if config.api_key else
        "  API key:  none: anyone who can reach the address can use it" + (" (--no-auth)" if no_auth else ""),
    ]
    for model in models["models"]:
        if not model["runnable"]:
            lines.append(f"  warning:  {model['name']} is not installed; jobs asking for it are refused (422) until: "
                         f"restorecli download-weights {model['name']}")
    for face in faces["models"][1:]:  # the default's state is the faces line's
        if not face["runnable"]:
            lines.append(f"  warning:  {face['reason']}; jobs asking for it are refused (422)")
    for line in lines:
        render.say(escape(line))


def _faces_line(faces: dict) -> str:
    """What the announcement says of faces: whether the default face model and the detector can run (else what
    to fetch), and the other face models requests may name."""
    line = f"  faces:    {'available' if faces['available'] else 'not available'} ({faces['model']}, " \
           f"{faces['detector']})"
    if not faces["available"]:
        missing = [face["name"] for face in faces["models"][:1] if face["status"] == "missing"]
        missing += [] if faces["detector_installed"] else [faces["detector"]]
        line += "; jobs asking for them are refused (422)" + (
            f" until: restorecli download-weights {' '.join(missing)}" if missing else
            f": {faces['models'][0]['reason']}")
    others = [face["name"] for face in faces["models"][1:]]
    return line + (f"; requests may also ask for {', '.join(others)}" if others else "")
