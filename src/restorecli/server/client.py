"""``restore --server URL``: the command line as a client of a running ``restorecli serve``.

The batch is planned here as a local run plans it (``plan``: the same output names, skips and errors), only the
images to write are uploaded, the server's jobs are followed, and each result is downloaded into its planned path.
HTTP through httpx, and no torch: the machine running this runs no model and needs no extra.

Nothing the server sends is trusted: the API key goes to the server's own address alone (a redirect elsewhere is
refused, never followed), every answer's body is read up to a limit, a document that is not what the API declares
is an error saying so, and a download is written under its final name only once it is a whole image of the format
and size asked for.
"""

from __future__ import annotations

import email.utils
import io
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import httpx

from ..errors import ImageError, SetupError, UsageError
from ..files import STDIO, atomic_writer, check_output_folder, remove_abandoned_temporaries
from ..images.formats import DEFAULT_FORMAT, FORMATS, OutputFormat, format_for_suffix, suffix_for_content
from ..models.registry import REGISTRY
from ..options import RestoreOptions, from_given
from ..plan import (BatchResult, InputItem, ItemResult, OutputPlanner, PlannedOutput, ProgressCallback,
                    decided_result, dry_run_result, error_result, failure_message, named_format, output_format, run_items)
from ..video.formats import is_video_name, load_av, video_media_type
from .config import API_KEY_ENV, API_KEY_HEADER, FORM_FIELDS, read_dotenv, setting

# The restore options a request may set (the server's form fields); the server decides every other one, except
# the few that only name or find this side's files.
SENT_FIELDS = FORM_FIELDS  # what a job may ask the server for
PLANNED_HERE = ("suffix", "recursive")
POLL = 0.5  # seconds between looks at a job
RECONNECT = 30.0  # seconds a job is followed through a server that does not answer (a restart, a network blip)
CHUNK = 1 << 20
TIMEOUT = 60.0  # seconds to connect, and then between any two pieces of an answer
_FINISHED = ("completed", "failed")
_JOB_STATES = ("queued", "processing", *_FINISHED)
_RESULT_STATES = ("pending", "processing", "ok", "error")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what goes into the job's URLs
# The most read of an answer: a JSON document (a status of a thousand files is under 1 MB), an error's body
DOCUMENT_BYTES = 8 << 20
ERROR_BYTES = 64 << 10
# A 429 or 503 (busy, starting, shutting down) is asked again, up to RETRIES times, after the Retry-After the server
# gives (at most RETRY_AFTER_MAX seconds: one asking for longer is not waited for), else after BACKOFF, doubled
RETRIES = 4
BACKOFF = 1.0
RETRY_AFTER_MAX = 60.0
REDIRECTS = 5  # same-address redirects followed for one GET


def check_server_options(given: Iterable[str]) -> None:
    """Refuse, as a usage error naming them, restore options given on the command line that the server decides."""
    theirs = [name for name in given if name not in SENT_FIELDS + PLANNED_HERE]
    if theirs:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in theirs)
        raise UsageError(f"{flags}: with --server, the server decides {'this' if len(theirs) == 1 else 'these'} "
                         f"(restorecli serve takes the restore options as its jobs' defaults); leave "
                         f"{'it' if len(theirs) == 1 else 'them'} out, or restore here without --server")


# ---------------------------------------------------------------------------------------------------- the server


class Unreachable(SetupError):
    """The server did not answer: it is not there, not listening, too slow, or the network between is down."""


class ServerFault(SetupError):
    """The server answered something restorecli cannot take: not the API's document, too large, a file that is
    not the image asked for, a redirect to another address."""


class KeyRefused(SetupError):
    """The server wants an API key, and has none or refuses the one given: the run stops, saying so once."""


class _Refused(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"the server answered {status}: {detail}")
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_file_bytes: int
    max_video_bytes: int  # a video's upload limit (an older server's: its file limit)


@dataclass(frozen=True)
class Part:
    """One file of an upload: the name it is sent under, and its content (an open file of ``size`` bytes, or the
    bytes themselves)."""

    filename: str
    size: int
    handle: BinaryIO | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class Expected:
    """What a download must be: an image of ``format`` and ``size`` (width, height), in at most ``max_bytes``; or,
    with ``frames``, a video of ``frames`` frames of ``size``, served as ``media_type``."""

    format: OutputFormat
    size: tuple[int, int]
    max_bytes: int
    frames: int | None = None
    media_type: str | None = None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


class Server:
    """A running ``restorecli serve`` at ``url``, and the API key in the variable ``key_env``: in the environment,
    else in ``dotenv`` (read as the server reads its own ``.env``). ``timeout``: seconds to connect, and then
    between any two pieces of an answer."""

    def __init__(self, url: str, key_env: str = API_KEY_ENV, timeout: float = TIMEOUT, dotenv: Path = Path(".env")):
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host or parsed.query:
            raise UsageError(f"--server {url}: give the server's address as http://HOST:PORT")
        self.url = url.rstrip("/")
        self.origin = _origin(parsed)
        self.key_env = key_env
        self.key = setting(key_env, read_dotenv(dotenv))
        self.key_from = "the environment variable" if os.environ.get(key_env) else f"{dotenv}'s"
        if self.key is not None and not self.key.isascii():
            raise UsageError(f"the API key in {self.key_from} {key_env} holds characters other than ASCII, which an "
                             "HTTP header cannot carry")
        self.timeout = timeout
        self.http = httpx.Client(timeout=timeout, follow_redirects=False, headers={"Accept-Encoding": "identity"})

    def address(self, path: str) -> str:
        """``path``, a path on this server as the API gives it (``/processed/...``), as a full URL. Anything else (a
        URL naming another host, ``//host/...``) is refused: the key is never sent there."""
        if not path.startswith("/") or path.startswith("//") or any(c in path for c in "\\\r\n"):
            raise ServerFault(f"the server at {self.url} gave {path[:200]!r} as an address: not a path on the server "
                              "itself, where alone restorecli sends requests (and the key)")
        return self.url + path

    @contextmanager
    def open(self, method: str, path: str, body: Callable[[], Iterable[bytes]] | None = None,
             headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """The server's answer to one request, its body still to read (``read_body``). ``body`` makes the request's body
        anew for each try. A 429 or 503 is asked again (``RETRIES``); a redirect is followed for a GET to the same
        address only. Raises ``Unreachable`` where it cannot be reached in time, ``KeyRefused`` where it refuses the
        key, ``ServerFault`` for a redirect elsewhere, ``_Refused`` for another error status."""
        response = self._send(method, path, body, headers or {})
        try:
            if response.status_code == 401:
                raise KeyRefused(self._key_problem())
            if not 200 <= response.status_code < 300:
                raise _Refused(response.status_code, self._detail(response))
            yield response
        finally:
            response.close()

    def _send(self, method: str, path: str, body: Callable[[], Iterable[bytes]] | None,
              headers: dict[str, str]) -> httpx.Response:
        url = httpx.URL(self.address(path))
        for attempt in range(RETRIES + 1):
            response = self._follow_redirects(method, path, url, body, headers)
            if response.status_code not in (429, 503) or attempt == RETRIES:
                return response
            wait = _retry_after(response.headers.get("retry-after"), BACKOFF * 2 ** attempt)
            if wait > RETRY_AFTER_MAX:
                return response  # not waited for: the error says what the server answered
            response.close()
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _follow_redirects(self, method: str, path: str, url: httpx.URL, body: Callable[[], Iterable[bytes]] | None,
                          headers: dict[str, str]) -> httpx.Response:
        for _ in range(REDIRECTS + 1):
            response = self._exchange(method, path, url, body, headers)
            if not response.is_redirect:
                return response
            response.close()
            try:
                target = url.join(response.headers["location"])
            except httpx.InvalidURL:
                raise ServerFault(f"the server at {self.url} redirected {method} {path} to an address that is not "
                                  "one: not followed") from None
            if _origin(target) != self.origin:
                raise ServerFault(f"the server at {self.url} redirected {method} {path} to {target.scheme}://"
                                  f"{target.netloc.decode('ascii', 'replace')}, another address: not followed, and "
                                  "the API key was not sent there (give that address as --server if it is the "
                                  "server)")
            if method != "GET":
                raise ServerFault(f"the server at {self.url} redirected {method} {path}: a request with a body is "
                                  "not sent again")
            url = target
        raise ServerFault(f"the server at {self.url} redirected GET {path} more than {REDIRECTS} times: not followed")

    def _exchange(self, method: str, path: str, url: httpx.URL, body: Callable[[], Iterable[bytes]] | None,
                  headers: dict[str, str]) -> httpx.Response:
        sent = {"Accept": "application/json", **headers}
        if self.key and _origin(url) == self.origin:  # always so: the check stays beside the key
            sent[API_KEY_HEADER] = self.key
        try:
            return self.http.send(self.http.build_request(method, url, content=body() if body else None,
                                                          headers=sent), stream=True)
        except httpx.TimeoutException as exc:
            what = {httpx.ConnectTimeout: "to connect", httpx.PoolTimeout: "to connect",
                    httpx.WriteTimeout: "to take the request"}.get(type(exc), "to answer")
            raise Unreachable(f"the server at {self.url} took longer than {self.timeout:g} s {what} ({method} {path})"
                              ) from None
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the server at {self.url}: {_reason(exc)}") from None

    def _key_problem(self) -> str:
        if self.key is None:
            return (f"the server at {self.url} needs an API key: put it in {self.key_env}, which is not set in the "
                    f"environment or in .env (--api-key-env names another variable)")
        return f"the server at {self.url} refused the API key in {self.key_from} {self.key_env}"

    def _detail(self, response: httpx.Response) -> str:
        """An error answer's ``detail``, read up to ``ERROR_BYTES``; its reason phrase where it has none."""
        reason = response.reason_phrase or f"status {response.status_code}"
        try:
            detail = json.loads(read_body(response, ERROR_BYTES, self.url)).get("detail")
        except (SetupError, ValueError, AttributeError):
            detail = None
        if detail is None:
            return reason
        text = detail if isinstance(detail, str) else json.dumps(detail)
        return text if len(text) <= 500 else text[:500] + "..."

    def document(self, path: str) -> dict:
        """``GET path`` as a JSON object; an error status is a setup error saying what the server answered."""
        try:
            with self.open("GET", path) as response:
                data = read_body(response, DOCUMENT_BYTES, self.url, f"GET {path}")
            return _json_object(data, self.url, f"GET {path}")
        except _Refused as exc:
            raise SetupError(f"the server at {self.url} answered {exc.status} to GET {path}: {exc.detail}") from None

    def limits(self) -> Limits:
        """The server's limits on an upload (``GET /health``); those of an older server that does not say them:
        its defaults."""
        found = self.document("/health").get("limits") or {}
        max_files = found.get("max_files", 20) if isinstance(found, dict) else None
        max_mb = found.get("max_file_mb", 10) if isinstance(found, dict) else None
        video_mb = found.get("max_video_mb") or max_mb if isinstance(found, dict) else None
        if not all((_positive(max_files, int), _positive(max_mb, (int, float)), _positive(video_mb, (int, float)))):
            raise ServerFault(f"the server at {self.url} gave limits restorecli cannot read in GET /health: "
                              f"{json.dumps(found)[:200]}")
        return Limits(max_files, int(float(max_mb) * 1024 * 1024), int(float(video_mb) * 1024 * 1024))

    def submit(self, fields: dict[str, str], parts: list[Part]) -> str:
        """Upload ``parts`` as one job with ``fields``; returns its id. Raises ``_Refused`` (413: over a limit),
        ``UsageError`` for a field the server will not take."""
        boundary = f"restorecli-{secrets.token_hex(16)}"
        length, chunks = _multipart(boundary, fields, parts)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(length)}
        try:
            with self.open("POST", "/enhance", chunks, headers) as response:
                answer = _json_object(read_body(response, DOCUMENT_BYTES, self.url, "POST /enhance"), self.url,
                                      "POST /enhance")
        except _Refused as exc:
            if exc.status == 422:
                raise UsageError(f"the server at {self.url} refused the request: {exc.detail}") from None
            raise
        job_id = answer.get("job_id")
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise ServerFault(f"the server at {self.url} took the upload but gave no job id restorecli can follow "
                              f"({json.dumps(job_id)[:100]})")
        return job_id

    def download(self, path: str, into: BinaryIO, expected: Expected, name: str) -> None:
        """Write the image (or video) at the server's ``path`` into ``into`` (a new, empty file or buffer), a chunk
        at a time, and check it is the one ``expected`` (``name``: the file's, for the decoder's messages). Raises
        ``ServerFault`` where it is not: another status than 200, another content type, more bytes than
        ``expected.max_bytes``, or content that does not decode as the format and size asked for (a video: as
        that many frames of that size); ``into`` then holds what came, and is the caller's to drop."""
        video = expected.frames is not None
        media_type = expected.media_type or FORMATS[expected.format].media_type
        with self.open("GET", path, headers={"Accept": media_type}) as response:
            if response.status_code != 200:
                raise ServerFault(f"the server answered {response.status_code} instead of the file")
            sent_as = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if sent_as != media_type:
                raise ServerFault(f"the server sent {sent_as or 'something with no content type'}, not the "
                                  f"{media_type} asked for")
            head = b""
            for chunk in _body(response, expected.max_bytes, self.url, "the video" if video else "the image"):
                if len(head) < 16 and not video:
                    head += chunk[:16 - len(head)]
                    if len(head) == 16:
                        _check_signature(head, expected.format)
                into.write(chunk)
        if video:
            _check_video(into, expected, name)
            return
        _check_signature(head, expected.format)
        _check_image(into, expected, name)


def _body(response: httpx.Response, limit: int, url: str, what: str) -> Iterator[bytes]:
    """An answer's body in chunks, refused (``ServerFault``) once it passes ``limit`` bytes, or where its
    ``Content-Length`` says it would, before any of it is read; an encoding not asked for is refused too (a
    compressed body could grow past any limit as it is decoded)."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ServerFault(f"the server at {url} sent {what} {encoding}-encoded, which restorecli did not ask for")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ServerFault(f"the server at {url} sent {what} of {int(declared):,} bytes, more than the {limit:,} "
                          "restorecli takes for it")
    total = 0
    try:
        for chunk in response.iter_raw(CHUNK):
            total += len(chunk)
            if total > limit:
                raise ServerFault(f"the server at {url} sent {what} of more than {limit:,} bytes, the most "
                                  "restorecli takes for it: stopped reading")
            yield chunk
    except httpx.TimeoutException:
        raise Unreachable(f"the server at {url} stopped sending {what} for longer than the timeout") from None
    except httpx.HTTPError as exc:
        raise Unreachable(f"the server at {url} broke off {what}: {_reason(exc)}") from None


def read_body(response: httpx.Response, limit: int, url: str, what: str = "an answer") -> bytes:
    """An answer's whole body, at most ``limit`` bytes (``ServerFault`` beyond)."""
    return b"".join(_body(response, limit, url, what))


def _json_object(data: bytes, url: str, what: str) -> dict:
    try:
        document = json.loads(data)
    except ValueError:
        raise ServerFault(f"the server at {url} answered {what} with no JSON: is it restorecli serve?") from None
    if not isinstance(document, dict):
        raise ServerFault(f"the server at {url} answered {what} with JSON that is not an object: is it restorecli "
                          "serve?")
    return document


def _positive(value: object, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool) and 0 < value < float("inf")


def _retry_after(value: str | None, otherwise: float) -> float:
    """Seconds to wait from a Retry-After header (seconds, or an HTTP date); ``otherwise`` where it has none."""
    if value is None:
        return otherwise
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return otherwise
    return max(0.0, when - time.time())


def _reason(exc: BaseException) -> str:
    """The innermost cause of a transport error, in words: "Connection refused", not httpx's wrapping."""
    cause = exc
    while (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    return getattr(cause, "strerror", None) or str(cause) or str(exc) or type(exc).__name__


def _check_signature(head: bytes, fmt: OutputFormat) -> None:
    """Refuse a download whose first bytes are not those of ``fmt`` (an HTML page, zeros), before more is read."""
    found = suffix_for_content(head)
    if found is not None and format_for_suffix(found) == fmt:
        return
    if head.lstrip()[:1] == b"<":
        kind = "an HTML page"
    elif found is not None:
        kind = f"a {found[1:].upper()} file"
    else:
        kind = "something that is no image"
    raise ServerFault(f"the server sent {kind}, not the {fmt.upper()} image asked for")


def _check_image(data: BinaryIO, expected: Expected, name: str) -> None:
    """Refuse a download that is not the image ``expected``: its header's format and size first, then that all of
    it decodes."""
    from ..images import decode_image, probe

    data.seek(0)
    content = data.read()
    width, height = expected.size
    try:
        size, fmt = probe(content, name)
        if fmt != expected.format or size != expected.size:
            raise ServerFault(f"the server sent a {fmt or 'other'} image of {size[0]}x{size[1]}, not the "
                              f"{expected.format} of {width}x{height} its status announced")
        decode_image(content, name, max_pixels=width * height)
    except ImageError as exc:
        raise ServerFault(f"the server sent a file that does not decode as an image: {exc}") from None


def _check_video(data: BinaryIO, expected: Expected, name: str) -> None:
    """Refuse a download that is not the video ``expected``: PyAV must open it as a video of its own (not a list
    naming other files, which would be read from here), its first video stream must have the frame size announced,
    and it must decode to as many frames as the input has."""
    from ..video.formats import VideoDecodeError, load_av, open_input

    av = load_av(name)
    width, height = expected.size
    data.seek(0)
    try:
        with open_input(data, name) as container:
            if not container.streams.video:
                raise ServerFault("the server sent a file with no video stream, not the video asked for")
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            if size != expected.size:
                raise ServerFault(f"the server sent a video of {size[0]}x{size[1]}, not the {width}x{height} its "
                                  "status announced")
            frames = sum(1 for _ in container.decode(stream))
    except (av.FFmpegError, VideoDecodeError) as exc:
        raise ServerFault(f"the server sent a file that does not decode as a video: {exc}") from None
    if frames != expected.frames:
        raise ServerFault(f"the server sent a video of {frames} frames, not the {expected.frames} of its input "
                          "(cut short?)")


def _video_frames(path: Path) -> int:
    """How many frames the video at ``path`` decodes to (its restored video must have as many); ``ImageError``
    subclasses naming it where it cannot be read."""
    from ..video.formats import VideoDecodeError, load_av, main_video_stream, open_input

    av = load_av(str(path))
    try:
        with open_input(path, str(path)) as container:
            stream = main_video_stream(container)  # the one the server restores
            if stream is None:
                raise VideoDecodeError(f"{path}: no video stream")
            return sum(1 for _ in container.decode(stream))
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{path}: cannot be read as a video ({exc})") from None


def _video_bytes(size: tuple[int, int], frames: int, source: Path) -> int:
    """The most bytes a restored video can take: every frame uncompressed (8-bit RGBA), with its input's other
    streams (copied) and room for the container's framing."""
    return frames * size[0] * size[1] * 4 + source.stat().st_size + (1 << 20)


def _encoded_bytes(size: tuple[int, int], limits: Limits) -> int:
    """The most bytes an image of ``size`` (width, height) can take as restorecli writes it: 16-bit RGBA
    uncompressed, with room for rows' and blocks' framing and for the metadata of its input (within the server's
    upload limit)."""
    pixels = size[0] * size[1]
    return pixels * 8 + pixels // 16 + limits.max_file_bytes + (1 << 20)


def _quoted(name: str) -> str:
    """A file name for a Content-Disposition header, escaped as browsers do."""
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _multipart(boundary: str, fields: dict[str, str],
               parts: list[Part]) -> tuple[int, Callable[[], Iterator[bytes]]]:
    """A multipart/form-data body's exact length, and what makes its chunks (each file read from disk as it is
    sent, from its start: again for each try)."""
    heads = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    file_heads = [(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{_quoted(p.filename)}"'
                   f'\r\nContent-Type: application/octet-stream\r\n\r\n').encode() for p in parts]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(map(len, heads)) + sum(len(h) + p.size + 2 for h, p in zip(file_heads, parts)) + len(tail)

    def chunks() -> Iterator[bytes]:
        yield from heads
        for head, part in zip(file_heads, parts):
            yield head
            yield from _content(part)
            yield b"\r\n"
        yield tail

    return length, chunks


def _content(part: Part) -> Iterator[bytes]:
    if part.data is not None:
        yield part.data
        return
    assert part.handle is not None
    part.handle.seek(0)
    left = part.size
    while left > 0:
        chunk = part.handle.read(min(CHUNK, left))
        if not chunk:
            raise SetupError(f"{part.handle.name}: it shrank while it was being uploaded")
        left -= len(chunk)
        yield chunk


# ---------------------------------------------------------------------------------------------------- options


def remote_options(server: Server, values: dict, given: set[str], **extra) -> tuple[RestoreOptions, dict[str, str]]:
    """The batch's options, and the form fields to send: each field the command line gave (``given``) as given,
    the others the server's defaults (``GET /models``), so that outputs are named as the server will write them.
    ``extra``: the command's own fields (output folder, overwrite, dry run). Refuses, before anything is sent, a
    model the server does not offer (``UsageError``) and faces it cannot restore (``SetupError``)."""
    offered = server.document("/models")
    defaults, models, faces = (offered.get(key) or empty for key, empty in (("defaults", {}), ("models", []),
                                                                              ("faces", {})))
    if not (isinstance(defaults, dict) and isinstance(faces, dict) and isinstance(models, list)
            and all(isinstance(model, dict) for model in models)):
        raise ServerFault(f"the server at {server.url} answered GET /models with a document restorecli cannot read: "
                          "is it restorecli serve?")
    merged = {**values, **{name: defaults[name] for name in SENT_FIELDS if name not in given and name in defaults}}
    if "preset" in given and "model" not in given:
        merged.pop("model", None)  # the preset's models, not the server's default one
    try:
        options = from_given(merged, **extra)
    except (TypeError, ValueError):
        raise ServerFault(f"the server at {server.url} gave defaults restorecli cannot read in GET /models: "
                          f"{json.dumps(defaults)[:200]}") from None
    names = [str(model.get("name")) for model in models]
    if "model" in given and names and options.model not in names:
        raise UsageError(f"model '{options.model}' is not offered by the server at {server.url}; it offers: "
                         f"{', '.join(names)}")
    _check_choices(options, offered, given, server.url)
    if "face_model" in given:
        _check_face_model(options, faces, server.url)
    elif options.face_enhance and faces.get("available") is False:
        raise SetupError(f"the server at {server.url} cannot restore faces: its face weights ({faces.get('model')}, "
                         f"{faces.get('detector')}) are not installed there (restorecli download-weights)")
    fields = {name: _as_text(merged[name]) for name in SENT_FIELDS if name in given and merged[name] is not None}
    return options, fields


def _check_choices(options: RestoreOptions, offered: dict, given: set[str], url: str) -> None:
    """Refuse, before anything is sent, a preset the server does not offer (``UsageError``) and colourising where
    it cannot (``SetupError``, with its reason)."""
    presets = [str(p.get("name")) for p in _listed(offered.get("presets")) if isinstance(p, dict)]
    if "preset" in given and options.preset not in presets:
        raise UsageError(f"preset '{options.preset}' is not offered by the server at {url} (it offers the presets "
                         f"whose models it has: {', '.join(presets) or 'none'})")
    colorize = offered.get("colorize")
    if "colorize" in given and options.colorize != "never" and isinstance(colorize, dict) \
            and colorize.get("available") is False:
        raise SetupError(f"the server at {url} cannot colourise: {colorize.get('reason')}")


def _check_face_model(options: RestoreOptions, faces: dict, url: str) -> None:
    """Refuse, before anything is sent, a face model the server does not offer (``UsageError``), or one it offers
    but cannot run now, with the server's reason (``SetupError``)."""
    offered = {str(face.get("name")): face for face in _listed(faces.get("models")) if isinstance(face, dict)}
    chosen = offered.get(options.face_model)
    if offered and chosen is None:
        raise UsageError(f"face model '{options.face_model}' is not offered by the server at {url}; it offers: "
                         f"{', '.join(offered)}")
    if chosen is not None and chosen.get("runnable") is False:
        raise SetupError(f"the server at {url} cannot run face model '{options.face_model}': "
                         f"{chosen.get('reason') or 'it is not installed there'}")


def _listed(value: object) -> list:
    """A list the server's document holds, or none where it holds something else (an older server, or not one)."""
    return value if isinstance(value, list) else []


def _as_text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------------------------------------------- the batch


@dataclass
class _Slot:
    """One input of the batch, in its order: its plan, what is known of it so far, and where it went."""

    item: InputItem
    planned: PlannedOutput | None = None
    result: ItemResult | None = None  # decided: skipped, an error, or done
    fmt: str = "same"  # the format field it is sent with
    writes: OutputFormat = DEFAULT_FORMAT  # the format its output is written in, which its download must be
    data: bytes | None = None  # stdin's image
    video: bool = False  # a video (by its name), written in its container
    started: float | None = None  # when the server was seen working on it
    finished: float | None = None  # when the server was seen done with it
    announced: bool = False  # its "item" event was sent


class _Reporter:
    """Sends each input's events in the batch's order, as a local run does: ("item", source) once the server
    works on it (or it is decided), ("done", result) once it is."""

    def __init__(self, slots: list[_Slot], notify: ProgressCallback):
        self.slots, self.notify, self.next = slots, notify, 0

    def flush(self) -> None:
        while self.next < len(self.slots):
            slot = self.slots[self.next]
            if not slot.announced and (slot.result is not None or slot.started is not None):
                self.notify("item", slot.item.source)
                slot.announced = True
            if slot.result is None:
                return
            self.notify("done", slot.result)
            self.next += 1


def restore_remote(inputs: list[str], options: RestoreOptions, fields: dict[str, str], server: Server,
                   on_progress: ProgressCallback | None = None, stdin: BinaryIO | None = None,
                   stdout: BinaryIO | None = None) -> BatchResult:
    """Restore ``inputs`` on ``server``: planned here (outputs that exist are skipped without an upload), the
    images to write uploaded in jobs of at most the server's ``max_files`` files, followed, and
    downloaded into their planned paths (``-o -``: onto ``stdout``). Progress events are a local batch's, plus
    ("submitted", job id) for each job queued. Returns one result per input."""
    started = time.perf_counter()
    notify = on_progress or (lambda event, payload: None)
    items = run_items(inputs, options, stdout)
    planner = OutputPlanner(items, options)
    if options.output_dir != STDIO:
        check_output_folder(Path(options.output_dir))
    limits = server.limits()
    notify("start", len(items))
    slots = [_planned(planner, options, limits, _Slot(item), stdin) for item in items]
    reporter = _Reporter(slots, notify)
    reporter.flush()
    if options.dry_run:
        for slot in slots:
            slot.result = slot.result or _dry_run(slot, options)
    else:
        jobs = _submit(server, slots, fields, limits, notify)
        reporter.flush()
        for job_id, in_job in jobs:
            _follow(server, job_id, in_job, reporter, stdout, limits)
    reporter.flush()
    setup = None if options.dry_run else {"model": _model_name(options.model), "device": server.url,
                                          "precision": "the server's", "backend": "the server's"}
    return BatchResult([slot.result for slot in slots if slot.result], round(time.perf_counter() - started, 3), setup)


def _model_name(model: str) -> str:
    """The model's name as a local run reports it: a registry name, or a checkpoint's file stem."""
    return model if model in REGISTRY else Path(model).stem


def _planned(planner: OutputPlanner, options: RestoreOptions, limits: Limits, slot: _Slot,
             stdin: BinaryIO | None) -> _Slot:
    """Plan one input as a local run does, after reading what a local run reads first (that the file is there;
    stdin's image). An image to write gets the format field it is sent with; one over the server's limit is that
    image's error."""
    item, t0 = slot.item, time.perf_counter()
    try:
        input_format = _read_ahead(slot, options, stdin)
        slot.planned = planner.plan(item, input_format)
        slot.result = decided_result(slot.planned, None, t0)  # a skip or an error, as a local run decides it
        if slot.result is None:
            head = slot.data[:16] if slot.data is not None else _head(Path(item.source))
            slot.video = item.source != STDIO and is_video_name(item.source)
            if slot.video:
                load_av(item.source)  # without PyAV here, its download could not be checked: that video's error
            # a video keeps its container whatever the format field says
            slot.fmt = "same" if slot.video else _format_field(options, input_format, head)
            slot.writes = output_format(options, input_format)
            _check_size(slot, limits)
    except ImageError as exc:
        slot.result = _error(slot, str(exc), t0)
    return slot


def _read_ahead(slot: _Slot, options: RestoreOptions, stdin: BinaryIO | None) -> OutputFormat | None:
    """The input's format as a local run reads it before planning: from a file's name (once the file is known to
    be there), from stdin's content (read now, to be sent)."""
    from ..images import check_input_file, read_input_stream

    if slot.item.source != STDIO:
        check_input_file(Path(slot.item.source), options.max_pixels)
        return named_format(slot.item)
    if stdin is None:
        raise ImageError("stdin: no input stream")
    slot.data = read_input_stream(stdin, "stdin", options.max_pixels)
    return format_for_suffix(suffix_for_content(slot.data[:16]) or "")


def _check_size(slot: _Slot, limits: Limits) -> None:
    size = len(slot.data) if slot.data is not None else Path(slot.item.source).stat().st_size
    limit = limits.max_video_bytes if slot.video else limits.max_file_bytes
    if size > limit:
        raise ImageError(f"{slot.item.source}: {size:,} bytes is over the server's limit of "
                         f"{limit / 1048576:g} MB a {'video' if slot.video else 'file'}")


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(16)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _format_field(options: RestoreOptions, input_format: OutputFormat | None, head: bytes) -> str:
    """The format to ask for: ``same`` where the server, which tells a file's format from its first bytes, writes
    what this side's plan writes (which follows the file's name), else the planned format itself (a JPEG named
    .png is written as a PNG, as locally)."""
    planned = output_format(options, input_format)
    if options.format != "same":
        return planned
    content = format_for_suffix(suffix_for_content(head) or "")
    return "same" if output_format(options, content) == planned else planned


def _error(slot: _Slot, message: str, t0: float | None = None, in_size: tuple[int, int] | None = None) -> ItemResult:
    """The slot's error, as a local run words it (``t0``: when its own work began; None: it did none here)."""
    return error_result(slot.item, slot.planned.output if slot.planned else None, message, in_size,
                        time.perf_counter() if t0 is None else t0)


def _dry_run(slot: _Slot, options: RestoreOptions) -> ItemResult:
    """What a local dry run says of an input to write: its output and sizes, read from its header."""
    from ..images import read_input_file

    try:
        data = slot.data if slot.data is not None else read_input_file(Path(slot.item.source), options.max_pixels)
        assert slot.planned is not None
        return dry_run_result(slot.planned, data, options)
    except ImageError as exc:
        return _error(slot, str(exc))


# ---------------------------------------------------------------------------------------------------- uploads


def _submit(server: Server, slots: list[_Slot], fields: dict[str, str], limits: Limits,
            notify: ProgressCallback) -> list[tuple[str, list[_Slot]]]:
    """Queue every slot still to write, in jobs of at most ``max_files`` files and one format field (one job, but
    for files whose name and content disagree); returns each job's id with its slots, in the order sent."""
    by_format: dict[str, list[_Slot]] = {}
    for slot in slots:
        if slot.result is None:
            by_format.setdefault(slot.fmt, []).append(slot)
    jobs: list[tuple[str, list[_Slot]]] = []
    for fmt, group in by_format.items():
        for first in range(0, len(group), limits.max_files):
            jobs += _upload(server, group[first:first + limits.max_files], {**fields, "format": fmt}, notify)
    return jobs


def _upload(server: Server, slots: list[_Slot], fields: dict[str, str],
            notify: ProgressCallback) -> list[tuple[str, list[_Slot]]]:
    """Send ``slots`` as one job (a file that cannot be opened is its image's error). Where the server finds the
    request too large all the same, it is sent again in halves, and a single file it refuses is that image's error."""
    parts, sent = _parts(slots)
    if not sent:
        return []
    try:
        job_id = server.submit(fields, parts)
    except _Refused as exc:
        if exc.status == 413 and len(sent) > 1:
            half = len(sent) // 2
            return _upload(server, sent[:half], fields, notify) + _upload(server, sent[half:], fields, notify)
        if exc.status == 413:
            sent[0].result = _error(sent[0], f"{sent[0].item.source}: refused by the server: {exc.detail}")
            return []
        raise SetupError(f"the server at {server.url} answered {exc.status} to the upload: {exc.detail}") from None
    finally:
        for part in parts:
            if part.handle is not None:
                part.handle.close()
    notify("submitted", job_id)
    return [(job_id, sent)]


def _parts(slots: list[_Slot]) -> tuple[list[Part], list[_Slot]]:
    """Each slot's upload part, its file opened (and sized) now; a file that cannot be opened is that image's
    error, as a local run's read would make it."""
    parts, sent = [], []
    for slot in slots:
        if slot.data is not None:
            parts.append(Part("stdin", len(slot.data), data=slot.data))
        else:
            try:
                handle = open(slot.item.source, "rb")
            except OSError as exc:
                slot.result = _error(slot, f"{slot.item.source}: cannot read ({exc.strerror or exc})")
                continue
            parts.append(Part(Path(slot.item.source).name, os.fstat(handle.fileno()).st_size, handle))
        sent.append(slot)
    return parts, sent


# ---------------------------------------------------------------------------------------------------- following


@dataclass(frozen=True)
class _Entry:
    """One file's result in a job's status document, as read and checked here."""

    index: int
    status: str
    url: str | None
    error: str | None
    sent_as: str  # the file name it was uploaded under
    in_size: tuple[int, int] | None
    out_size: tuple[int, int] | None


def _job_status(document: dict, count: int, server: Server, job_id: str) -> tuple[str, list[_Entry]]:
    """The job's state and one entry per file sent (``count`` of them), read from its status document;
    ``ServerFault`` saying what is wrong where it is not the document the API declares."""

    def fault(what: str) -> ServerFault:
        return ServerFault(f"the server at {server.url} sent a status of job {job_id} that restorecli cannot read "
                           f"({what})")

    state, results = document.get("status"), document.get("results")
    if state not in _JOB_STATES:
        raise fault(f"its status is {json.dumps(state)[:60]}")
    if not isinstance(results, list):
        raise fault("it has no results")
    entries = []
    for raw in results:
        if not isinstance(raw, dict):
            raise fault("a result that is not an object")
        index, status = raw.get("index"), raw.get("status")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            raise fault(f"a result's index is {json.dumps(index)[:60]}, for the {count} file(s) sent")
        if status not in _RESULT_STATES:
            raise fault(f"a result's status is {json.dumps(status)[:60]}")
        texts = [raw.get(key) for key in ("url", "error", "original_filename")]
        if not all(text is None or isinstance(text, str) for text in texts):
            raise fault("a result's url, error or file name is not text")
        sizes = [raw.get(key) for key in ("in_size", "out_size")]
        if not all(size is None or (isinstance(size, list) and len(size) == 2 and all(_positive(n, int) for n in size))
                   for size in sizes):
            raise fault("a result's in_size or out_size is not [width, height]")
        url, error, sent_as = texts
        in_size, out_size = (tuple(size) if size else None for size in sizes)
        entries.append(_Entry(index, status, url, error, sent_as or "", in_size, out_size))  # type: ignore[arg-type]
    if sorted(entry.index for entry in entries) != list(range(count)):
        raise fault(f"{len(entries)} result(s) for the {count} file(s) sent")
    return state, entries


def _follow(server: Server, job_id: str, slots: list[_Slot], reporter: _Reporter, stdout: BinaryIO | None,
            limits: Limits) -> None:
    """Watch the job until it finishes (``GET /status`` every ``POLL`` seconds), then download its results. A
    status that cannot be read is the error of each of the job's files not finished yet; the batch goes on."""
    try:
        state, entries = _status(server, job_id, len(slots))
        while True:
            now = time.perf_counter()
            for entry in entries:
                slot = slots[entry.index]
                if entry.status != "pending" and slot.started is None:
                    slot.started = now
                if entry.status in ("ok", "error") and slot.finished is None:
                    slot.finished = now
            reporter.flush()
            if state in _FINISHED:
                break
            time.sleep(POLL)
            state, entries = _status(server, job_id, len(slots))
    except ServerFault as exc:
        for slot in slots:
            slot.result = slot.result or _error(slot, f"{slot.item.source}: {exc}; the job is left to the server")
        reporter.flush()
        return
    swept: set[Path] = set()
    for entry in entries:
        slot = slots[entry.index]
        seconds = round((slot.finished or 0.0) - (slot.started or slot.finished or 0.0), 3)  # as seen from here
        slot.result = _outcome(server, slot, entry, seconds, stdout, swept, limits)
        reporter.flush()


def _status(server: Server, job_id: str, count: int) -> tuple[str, list[_Entry]]:
    """The job's state and results (``_job_status``), asked again for up to ``RECONNECT`` seconds while the
    server does not answer."""
    deadline = time.monotonic() + RECONNECT
    while True:
        try:
            return _job_status(server.document(f"/status/{job_id}"), count, server, job_id)
        except Unreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL)


def _outcome(server: Server, slot: _Slot, entry: _Entry, seconds: float, stdout: BinaryIO | None,
             swept: set[Path], limits: Limits) -> ItemResult:
    """A finished result as a local run reports it: downloaded into its planned output, or its error naming the
    local file (the server names the file by the name it was sent under). Nothing is written under the output's
    name unless the whole image came and is the one asked for."""
    if entry.status != "ok" or not entry.url:
        return _error(slot, _local_error(slot, entry), None, entry.in_size)
    if entry.out_size is None:
        return _error(slot, f"{slot.item.source}: the server finished it but did not say its size, by which its "
                            "download is checked", None, entry.in_size)
    output = slot.planned.output if slot.planned else None
    name = str(output) if output else slot.item.source
    try:
        expected = _expected(slot, entry.out_size, limits, output)
        if output is None:  # stdout gets the whole image or nothing, as locally
            assert stdout is not None
            whole = io.BytesIO()
            server.download(entry.url, whole, expected, name)
            stdout.write(whole.getvalue())
            stdout.flush()
        else:
            if output.parent not in swept:
                remove_abandoned_temporaries(output.parent)
                swept.add(output.parent)
            with atomic_writer(output) as handle:
                server.download(entry.url, handle, expected, name)
    except KeyRefused:
        raise  # the run's error, said once
    except (SetupError, _Refused) as exc:
        return _error(slot, f"{slot.item.source}: its result could not be downloaded: {exc}", None, entry.in_size)
    except (ImageError, OSError) as exc:  # a video input that cannot be read here to count its result's frames; a
        return _error(slot, failure_message(slot.item.source, exc), None, entry.in_size)  # write that failed
    return ItemResult(slot.item.source, str(output) if output else STDIO, "ok", None, entry.in_size, entry.out_size,
                      seconds)


def _expected(slot: _Slot, size: tuple[int, int], limits: Limits, output: Path | None) -> Expected:
    """What the slot's download must be: an image of its format, or a video of its input's frame count."""
    if not slot.video or output is None:
        return Expected(slot.writes, size, _encoded_bytes(size, limits))
    source = Path(slot.item.source)
    frames = _video_frames(source)
    return Expected(slot.writes, size, _video_bytes(size, frames, source), frames,
                    video_media_type(output.suffix) or "application/octet-stream")


def _local_error(slot: _Slot, entry: _Entry) -> str:
    """The server's error for an image, naming the local input instead of the name it was uploaded under."""
    error = entry.error or f"the server gave no result ({entry.status})"
    if entry.sent_as and error.startswith(f"{entry.sent_as}:"):
        return slot.item.source + error[len(entry.sent_as):]
    return f"{slot.item.source}: {error}"
