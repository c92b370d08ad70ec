"""``restore --server URL``: the command line as a client of a running ``restorecli serve``.

The batch is planned here as a local run plans it (``plan``: the same output names, skips and errors), only the
images to write are uploaded, the server's jobs are followed, and each result is downloaded into its planned path.
HTTP through the standard library alone, and no torch: the machine running this runs no model and needs no extra.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from ..errors import ImageError, SetupError, UsageError
from ..files import STDIO, atomic_writer, check_output_folder, remove_abandoned_temporaries
from ..images.formats import OutputFormat, format_for_suffix, suffix_for_content
from ..models.registry import REGISTRY
from ..options import RestoreOptions, from_given
from ..plan import (BatchResult, InputItem, ItemResult, OutputPlanner, PlannedOutput, ProgressCallback,
                    collect_inputs, named_format, output_format)
from .config import API_KEY_ENV, API_KEY_HEADER, FORM_FIELDS

# The restore options a request may set (the server's form fields); the server decides every other one, except
# the few that only name or find this side's files.
SENT_FIELDS = FORM_FIELDS  # what a job may ask the server for
PLANNED_HERE = ("suffix", "recursive")
POLL = 0.5  # seconds between looks at a job
RECONNECT = 30.0  # seconds a job is followed through a server that does not answer (a restart, a network blip)
CHUNK = 1 << 20
_FINISHED = ("completed", "failed")


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
    """The server did not answer: it is not there, not listening, or the network between is down."""


class _Refused(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_file_bytes: int


@dataclass(frozen=True)
class Part:
    """One file of an upload: the name it is sent under, and its content (an open file of ``size`` bytes, or the
    bytes themselves)."""

    filename: str
    size: int
    handle: BinaryIO | None = None
    data: bytes | None = None


class Server:
    """A running ``restorecli serve`` at ``url``, and the API key read from the environment variable ``key_env``."""

    def __init__(self, url: str, key_env: str = API_KEY_ENV, timeout: float = 60.0):
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--server {url}: give the server's address as http://HOST:PORT")
        self.url = url.rstrip("/")
        self.key_env = key_env
        self.key = os.environ.get(key_env) or None
        self.timeout = timeout

    def open(self, method: str, path: str, body: Iterable[bytes] | None = None,
             headers: dict[str, str] | None = None) -> HTTPResponse:
        """The server's answer to one request. Raises ``SetupError`` where it cannot be reached or refuses the key,
        ``_Refused`` for another error status."""
        sent = {"Accept": "application/json", **(headers or {})}
        if self.key:
            sent[API_KEY_HEADER] = self.key
        request = urllib.request.Request(self.url + path, data=body, headers=sent, method=method)  # type: ignore
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code == 401:
                raise SetupError(self._key_problem(detail)) from None
            raise _Refused(exc.code, detail) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(f"cannot reach the server at {self.url}: {getattr(reason, 'strerror', None) or reason}"
                             ) from None

    def _key_problem(self, detail: str) -> str:
        if self.key is None:
            return (f"the server at {self.url} needs an API key ({detail}): put it in the environment variable "
                    f"{self.key_env}, which is not set (--api-key-env names another)")
        return f"the server at {self.url} refused the API key in the environment variable {self.key_env}: {detail}"

    def document(self, path: str) -> dict:
        """``GET path`` as JSON; an error status is a setup error saying what the server answered."""
        try:
            with self.open("GET", path) as response:
                return json.load(response)
        except _Refused as exc:
            raise SetupError(f"the server at {self.url} answered {exc.status} to GET {path}: {exc.detail}") from None
        except ValueError:
            raise SetupError(f"the server at {self.url} answered GET {path} with no JSON: is it restorecli serve?"
                             ) from None

    def limits(self) -> Limits:
        found = self.document("/health").get("limits") or {}
        return Limits(int(found.get("max_files", 20)), int(float(found.get("max_file_mb", 10)) * 1024 * 1024))

    def submit(self, fields: dict[str, str], parts: list[Part]) -> str:
        """Upload ``parts`` as one job with ``fields``; returns its id. Raises ``_Refused`` (413: over a limit),
        ``UsageError`` for a field the server will not take."""
        boundary = f"restorecli-{secrets.token_hex(16)}"
        length, chunks = _multipart(boundary, fields, parts)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(length)}
        try:
            with self.open("POST", "/enhance", chunks, headers) as response:
                return json.load(response)["job_id"]
        except _Refused as exc:
            if exc.status == 422:
                raise UsageError(f"the server at {self.url} refused the request: {exc.detail}") from None
            raise

    def copy(self, url: str, into: BinaryIO) -> None:
        """Write the file at the server's ``url`` into ``into``, a chunk at a time."""
        with self.open("GET", url, headers={"Accept": "*/*"}) as response:
            shutil.copyfileobj(response, into, CHUNK)


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read() or b"{}").get("detail") or exc.reason)
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)


def _quoted(name: str) -> str:
    """A file name for a Content-Disposition header, escaped as browsers do."""
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _multipart(boundary: str, fields: dict[str, str], parts: list[Part]) -> tuple[int, Iterator[bytes]]:
    """A multipart/form-data body's exact length and its chunks, each file read from disk as it is sent."""
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

    return length, chunks()


def _content(part: Part) -> Iterator[bytes]:
    if part.data is not None:
        yield part.data
        return
    assert part.handle is not None
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
    defaults = offered.get("defaults") or {}
    merged = {**values, **{name: defaults[name] for name in SENT_FIELDS if name not in given and name in defaults}}
    options = from_given(merged, **extra)
    names = [model.get("name") for model in offered.get("models") or []]
    if "model" in given and names and options.model not in names:
        raise UsageError(f"model '{options.model}' is not offered by the server at {server.url}; it offers: "
                         f"{', '.join(names)}")
    faces = offered.get("faces") or {}
    if options.face_enhance and faces.get("available") is False:
        raise SetupError(f"the server at {server.url} cannot restore faces: its face weights ({faces.get('model')}, "
                         f"{faces.get('detector')}) are not installed there (restorecli download-weights)")
    fields = {name: _as_text(merged[name]) for name in SENT_FIELDS if name in given and merged[name] is not None}
    return options, fields


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
    data: bytes | None = None  # stdin's image
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
    items = _batch_items(inputs, options, stdout)
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
            _follow(server, job_id, in_job, reporter, stdout)
    reporter.flush()
    setup = None if options.dry_run else {"model": _model_name(options.model), "device": server.url,
                                          "precision": "the server's"}
    return BatchResult([slot.result for slot in slots if slot.result], round(time.perf_counter() - started, 3), setup)


def _batch_items(inputs: list[str], options: RestoreOptions, stdout: BinaryIO | None) -> list[InputItem]:
    to_stdout = options.output_dir == STDIO
    if to_stdout and stdout is None:
        raise UsageError("-o - needs an output stream")
    return collect_inputs(inputs, options.recursive, exclude=None if to_stdout else Path(options.output_dir))


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
        if slot.planned.action == "skip":
            slot.result = ItemResult(item.source, str(slot.planned.output), "skipped", slot.planned.reason)
        elif slot.planned.action == "error":
            slot.result = _error(slot, slot.planned.reason or "", t0)
        else:
            head = slot.data[:16] if slot.data is not None else _head(Path(item.source))
            slot.fmt = _format_field(options, input_format, head)
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
    if size > limits.max_file_bytes:
        raise ImageError(f"{slot.item.source}: {size:,} bytes is over the server's limit of "
                         f"{limits.max_file_bytes / 1048576:g} MB a file")


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
    output = slot.planned.output if slot.planned else None
    seconds = round(time.perf_counter() - t0, 3) if t0 is not None else 0.0
    return ItemResult(slot.item.source, str(output) if output else None, "error", message, in_size, None, seconds)


def _dry_run(slot: _Slot, options: RestoreOptions) -> ItemResult:
    """What a local dry run says of an input to write: its output and sizes, read from its header."""
    from ..images import probe, read_input_file

    item = slot.item
    try:
        data = slot.data if slot.data is not None else read_input_file(Path(item.source), options.max_pixels)
        (width, height), _ = probe(data, item.source, options.max_pixels)
    except ImageError as exc:
        return _error(slot, str(exc))
    entry = REGISTRY.get(options.model)
    scale = options.outscale if options.outscale is not None else (entry.scale if entry else None)
    out_size = (max(1, round(width * scale)), max(1, round(height * scale))) if scale else None  # as the engine
    output = slot.planned.output if slot.planned else None
    return ItemResult(item.source, str(output) if output else STDIO, "planned", None, (width, height), out_size)


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


def _follow(server: Server, job_id: str, slots: list[_Slot], reporter: _Reporter, stdout: BinaryIO | None) -> None:
    """Watch the job until it finishes (``GET /status`` every ``POLL`` seconds), then download its results."""
    document = _status(server, job_id)
    while True:
        now = time.perf_counter()
        for entry in document["results"]:
            slot = slots[entry["index"]]
            if entry["status"] != "pending" and slot.started is None:
                slot.started = now
            if entry["status"] in ("ok", "error") and slot.finished is None:
                slot.finished = now
        reporter.flush()
        if document["status"] in _FINISHED:
            break
        time.sleep(POLL)
        document = _status(server, job_id)
    swept: set[Path] = set()
    for entry in document["results"]:
        slot = slots[entry["index"]]
        seconds = round((slot.finished or 0.0) - (slot.started or slot.finished or 0.0), 3)  # as seen from here
        slot.result = _outcome(server, slot, entry, seconds, stdout, swept)
        reporter.flush()


def _status(server: Server, job_id: str) -> dict:
    """The job's status document, asked again for up to ``RECONNECT`` seconds while the server does not answer."""
    deadline = time.monotonic() + RECONNECT
    while True:
        try:
            return server.document(f"/status/{job_id}")
        except Unreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL)


def _outcome(server: Server, slot: _Slot, entry: dict, seconds: float, stdout: BinaryIO | None,
             swept: set[Path]) -> ItemResult:
    """A finished result as a local run reports it: downloaded into its planned output, or its error naming the
    local file (the server names the file by the name it was sent under)."""
    in_size = _size(entry.get("in_size"))
    if entry["status"] != "ok" or not entry.get("url"):
        return _error(slot, _local_error(slot, entry), None, in_size)
    output = slot.planned.output if slot.planned else None
    try:
        if output is None:  # stdout gets the whole image or nothing, as locally
            assert stdout is not None
            whole = io.BytesIO()
            server.copy(entry["url"], whole)
            stdout.write(whole.getvalue())
            stdout.flush()
        else:
            if output.parent not in swept:
                remove_abandoned_temporaries(output.parent)
                swept.add(output.parent)
            with atomic_writer(output) as handle:
                server.copy(entry["url"], handle)
    except (SetupError, _Refused) as exc:
        return _error(slot, f"{slot.item.source}: its result could not be downloaded: {exc}", None, in_size)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _error(slot, f"{slot.item.source}: {exc.strerror or exc}{where}", None, in_size)
    return ItemResult(slot.item.source, str(output) if output else STDIO, "ok", None, in_size,
                      _size(entry.get("out_size")), seconds)


def _size(value: list[int] | None) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if value else None


def _local_error(slot: _Slot, entry: dict) -> str:
    """The server's error for an image, naming the local input instead of the name it was uploaded under."""
    error = entry.get("error") or f"the server gave no result ({entry['status']})"
    sent = entry.get("original_filename") or ""
    if sent and error.startswith(f"{sent}:"):
        return slot.item.source + error[len(sent):]
    return f"{slot.item.source}: {error}"
