"""What the server is told: flags, then the environment, then a ``.env`` file in the working directory.

``read_dotenv`` (``envfile``) is re-exported here for the client, which reads ``.env`` as the server does."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UsageError
from .envfile import read_dotenv

API_KEY_ENV = "API_KEY"
API_KEY_HEADER = "X-API-Key"
# The restore options a request may set (the rest are the server's: its device, tiles, weights)
DEFAULT_MAX_VIDEO_MB = 500
DEFAULT_MAX_VIDEO_SECONDS = 600.0
DEFAULT_VIDEO_FPS = 60  # without --max-video-frames, a video's frames are bounded at its duration limit at this rate
FORM_FIELDS = ("face_enhance", "outscale", "format", "model", "face_weight", "face_model", "face_fidelity", "preset",
               "colorize")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8001
    queue: Path = Path("restorecli-queue")
    workers: int = 1
    retention: float = 3600.0  # seconds a finished job is kept
    prune_every: float = 1800.0
    max_file_bytes: int = 10 * 1024 * 1024
    max_files: int = 20
    max_video_bytes: int = DEFAULT_MAX_VIDEO_MB * 1024 * 1024  # a video's upload limit (--max-video-mb)
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS  # the longest video an upload may hold, by its header
    # the most frames a video may hold: its packets counted at upload, its frames as a worker decodes them
    max_video_frames: int = round(DEFAULT_MAX_VIDEO_SECONDS * DEFAULT_VIDEO_FPS)
    api_key: str | None = None
    cors_origin: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host names besides the bound address and localhost (--allowed-host)
    max_uploads: int = 32  # uploads read at once; one more is answered 503 with Retry-After
    read_timeout: float = 30.0  # seconds a client may take to send its headers, or leave its body silent
    min_free_mb: float = 256.0  # below this much free space on the queue's disk, uploads get 507, /health 503
    defaults: dict = field(default_factory=dict)  # the declared restore options' values for jobs (as given)
    allowed_models: tuple[str, ...] = ()  # the default model first
    allowed_face_models: tuple[str, ...] = ()  # the default face model (--face-model) first

    @property
    def max_file_mb(self) -> float:
        return self.max_file_bytes / (1024 * 1024)

    @property
    def max_video_mb(self) -> float:
        return self.max_video_bytes / (1024 * 1024)

    @property
    def limits_document(self) -> dict:
        """The upload limits as ``/health`` states them (``schema.Limits``)."""
        return {"max_file_mb": self.max_file_mb, "max_files": self.max_files, "max_video_mb": self.max_video_mb,
                "max_video_seconds": self.max_video_seconds, "max_video_frames": self.max_video_frames}


def setting(name: str, dotenv: dict[str, str]) -> str | None:
    """The environment's value for ``name``, else the ``.env`` file's (an empty value counts as unset)."""
    return os.environ.get(name) or dotenv.get(name) or None


def api_key_setting(dotenv: dict[str, str]) -> str | None:
    """``API_KEY`` from the environment, else ``dotenv``; None where it is in neither. A key that is set but cannot
    protect anything, or cannot be sent, is refused: empty or blank (a server meant to be guarded would be open),
    spaces or tabs at either end (HTTP strips them from a header, so no client could match it), or a character
    outside printable ASCII (a header carries bytes, and browsers refuse to send anything beyond Latin-1)."""
    if API_KEY_ENV in os.environ:
        key, source = os.environ[API_KEY_ENV], f"{API_KEY_ENV} in the environment"
    elif API_KEY_ENV in dotenv:
        key, source = dotenv[API_KEY_ENV], f"{API_KEY_ENV} in .env"
    else:
        return None
    advice = "generate one with: openssl rand -hex 16"
    if not key.strip():
        raise UsageError(f"{source} is set but {'empty' if not key else 'blank'}: a key protects nothing; unset it "
                         f"to serve without one (loopback only), or {advice}")
    if key != key.strip():
        raise UsageError(f"{source} begins or ends with white space, which HTTP strips from the {API_KEY_HEADER} "
                         f"header, so no client could send it: remove it, or {advice}")
    odd = next((ch for ch in key if not " " <= ch < "\x7f"), None)
    if odd is not None:
        raise UsageError(f"{source} holds {odd!r}, which is not printable ASCII: an HTTP header carries bytes, and "
                         f"browsers send none beyond Latin-1, so clients could not all send it; {advice}")
    return key


def parse_origin(text: str, source: str = "--cors-origin") -> str:
    """``text`` as a web origin, ``scheme://host[:port]`` with scheme http or https and nothing after the host
    (no path, query, user or fragment), lower-cased as browsers send it in ``Origin``. Raises ``UsageError``."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{source} '{text}' is not an origin: {exc}") from None
    wrong = ("a scheme of http or https" if parts.scheme.lower() not in ("http", "https") else
             "a host" if not parts.hostname else
             "no user name or password" if parts.username is not None or parts.password is not None else
             "nothing after the host and port (no path, query or fragment)"
             if parts.path not in ("", "/") or parts.query or parts.fragment or text.strip().endswith(("?", "#"))
             else None)
    if wrong:
        raise UsageError(f"{source} '{text}' is not an origin: it needs {wrong}, as in https://app.example.com "
                         "or http://localhost:3000")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[parts.scheme.lower()]
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port not in (None, default) else "")


def parse_host_name(text: str) -> str:
    """An ``--allowed-host`` value: a DNS name or an IP address, without port or scheme, lower-cased."""
    name = text.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        pass
    labels = name.split(".")
    if not name or len(name) > 253 or not all(
            0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() and label.isascii()
            and not label.startswith("-") for label in labels):
        raise UsageError(f"--allowed-host '{text}' is not a host name or an IP address (give the name alone, "
                         "without a scheme or port, e.g. --allowed-host gpu-box.example.com)")
    return name


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (127.0.0.0/8, ::1; ``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        raise UsageError(f"--host {host}: not an address this machine can resolve") from None
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def load_config(restore: dict, *, host: str = "127.0.0.1", port: int = 8001, queue: str | None = None,
                workers: int = 1, retention: str = "1h", prune_every: str = "30m", max_file_mb: float | None = None,
                max_files: int = 20, allow_model: list[str] = (), cors_origin: str | None = None,
                allowed_host: list[str] = (), max_uploads: int = 32, read_timeout: float = 30.0,
                min_free_mb: float = 256.0, dotenv: Path = Path(".env"),
                allow_face_model: list[str] = (), max_video_mb: float = DEFAULT_MAX_VIDEO_MB,
                max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS) -> ServeConfig:
    """The server's configuration from its flags (``restore``: the declared restore options' values, the jobs'
    defaults), then the environment, then ``dotenv`` (``ServeEnvironment``; the key through ``api_key_setting``).
    Raises ``UsageError`` for a value that cannot be used."""
    from ..jobs.enqueue import job_options
    from ..jobs.prune import parse_age
    from ..jobs.store import QUEUE_ENV
    from ..options import from_given
    from .settings import MAX_FILE_ENV, ServeEnvironment, parse_megabytes

    if not 0 < max_video_seconds < float("inf"):
        raise UsageError(f"--max-video-seconds {max_video_seconds}: must be more than 0 seconds")
    # --max-video-frames is a restore option, so each job carries it to the worker that decodes the frames
    restore = {**restore, "max_video_frames": restore.get("max_video_frames")
               or max(1, round(max_video_seconds * DEFAULT_VIDEO_FPS))}
    values = read_dotenv(Path(dotenv))  # for the key, read as it is set (a malformed line is refused here)
    flags = {MAX_FILE_ENV: parse_megabytes(str(max_file_mb), "--max-file-mb") if max_file_mb is not None else None,
             QUEUE_ENV: queue}
    environment = ServeEnvironment.read(Path(dotenv), **{k: v for k, v in flags.items() if v})
    options = from_given(restore)
    defaults = {**restore, **{k: v for k, v in job_options(options).items() if k in restore}}  # paths absolute
    allowed = _offered(options.model, allow_model, "sr", "models")
    faces = _offered(defaults.get("face_model", options.face_model), allow_face_model, "face", "face models")
    if max_uploads < 1:
        raise UsageError(f"--max-uploads {max_uploads}: must be at least 1")
    if not 0 < read_timeout < float("inf"):
        raise UsageError(f"--read-timeout {read_timeout}: must be more than 0 seconds")
    return ServeConfig(host=host, port=port, queue=environment.queue.absolute(), workers=workers,
                       retention=parse_age(retention, "--retention"),
                       prune_every=parse_age(prune_every, "--prune-every"), max_file_bytes=environment.max_file_bytes,
                       max_files=max_files, api_key=api_key_setting(values),
                       max_video_bytes=parse_megabytes(str(max_video_mb), "--max-video-mb"),
                       max_video_seconds=max_video_seconds, max_video_frames=options.max_video_frames,
                       cors_origin=parse_origin(cors_origin) if cors_origin is not None else None,
                       allowed_hosts=tuple(dict.fromkeys(parse_host_name(name) for name in allowed_host)),
                       max_uploads=max_uploads, read_timeout=read_timeout, min_free_mb=min_free_mb,
                       defaults=defaults, allowed_models=allowed, allowed_face_models=faces)


def _offered(default: str, allow: list[str], kind: str, what: str) -> tuple[str, ...]:
    """The models of ``kind`` requests may name: ``default`` first, then each ``--allow-...`` one (a registry name
    of that kind, or a checkpoint file, kept as given). Clients name a file by its file name, so two files may not
    share one. Raises ``UsageError`` (``WeightsNotFound`` for a path that is not there)."""
    from ..models.loading import unknown_model
    from ..models.registry import REGISTRY
    from .views import public_model_name

    offered = [default]
    for name in allow:
        entry = REGISTRY.get(name)
        if entry is None and not Path(name).is_file():
            raise unknown_model(name, kind)
        if entry is not None and entry.kind != kind:
            raise UsageError(f"'{name}' is a {entry.kind} model, not one of the {what} a server may offer")
        if name not in offered:
            offered.append(name)
    names = [public_model_name(model) for model in offered]
    if len(set(names)) < len(names):
        raise UsageError(f"the offered {what} {', '.join(offered)} share a file name, by which clients name them: "
                         "rename one")
    return tuple(offered)


def check_exposure(config: ServeConfig, no_auth: bool) -> None:
    """Refuse to serve beyond this machine with no API key, unless ``--no-auth`` says that is meant."""
    if config.api_key or no_auth or is_loopback(config.host):
        return
    raise UsageError(
        f"--host {config.host} is reachable from other machines, and no API key is set: anyone who can reach it "
        f"could queue work on this machine and read every job's results. Set {API_KEY_ENV} (in the environment or "
        f"in .env), or give --no-auth if the network in front of it is trusted")
