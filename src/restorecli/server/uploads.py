"""A ``POST /enhance`` body, parsed as it arrives: each file part is written to disk in chunks under the staged
job's ``inputs/`` folder (never held whole in memory), under a name the server makes; the few form fields are
kept as text. Limits (file size, file count, field size) are enforced while reading, so a body over them stops
being stored at the first byte too many."""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..images.formats import IMAGE_SUFFIXES, suffix_for_content
from ..video.formats import (ANIMATED_SUFFIXES, VIDEO_SUFFIXES, VideoDecodeError, VideoUnavailable,
                             header_duration, is_video_name)
from ..video.read import count_video_packets

FILE_FIELD = "files"
FIELD_BYTES = 1024  # a form field's value (a number, a word, a model name) is never longer
BOUNDARY_CHARS = 70  # RFC 2046, section 5.1.1
PART_HEADER_BYTES = 8192  # one header line of a part (its Content-Disposition holds the file name)
PART_HEADERS = 16
_BOUNDARY_BYTES = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
_NAME_CHARS = 255
PART_ROOM = 16 * 1024  # a part's boundary and headers
BODY_ROOM = 64 * 1024  # the form fields and the closing boundary
_COUNTED_OVER = 4  # a video's packets are counted up to this many times its frame limit


class UploadRefused(Exception):
    """The body cannot be taken: ``status`` (400 malformed, 413 too large, 422 a wrong field) and why."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int
    max_files: int
    fields: tuple[str, ...]  # the form fields besides ``files`` that may be given
    max_video_bytes: int | None = None  # a video's limit (None: the same as an image's)
    max_video_seconds: float | None = None  # the longest video, by its header (None: any)
    max_video_frames: int | None = None  # the most frames a video, by its packets (None: any)

    @property
    def video_bytes(self) -> int:
        return self.max_file_bytes if self.max_video_bytes is None else self.max_video_bytes

    @property
    def body_bytes(self) -> int:
        """The most a body within the limits can be: every file at its largest, with room for headers and fields."""
        return self.max_files * (max(self.max_file_bytes, self.video_bytes) + PART_ROOM) + BODY_ROOM

    def describe(self) -> str:
        """The file limits in words, for a refusal."""
        files = f"{self.max_files} files of {self.max_file_bytes / 1048576:g} MB"
        return files if self.video_bytes == self.max_file_bytes else \
            f"{files} (videos {self.video_bytes / 1048576:g} MB)"


@dataclass
class StoredFile:
    original_filename: str  # the client's name, as display text only
    stored: str  # the server's name for it, relative to the inputs folder
    size: int = 0


def display_name(raw: bytes | str | None, index: int) -> str:
    """A client's file name as text to show: decoded, normalised (NFC), without control or formatting characters
    (NUL, newlines, right-to-left overrides) and at most 255 characters. Never used as a path."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")).strip()
    return text[:_NAME_CHARS] or f"upload-{index}"


def accepted_formats() -> dict[str, list[str]]:
    """The file suffixes an upload is taken under, for ``/health`` (the dashboard's file picker reads them): images,
    videos (told by the suffix, within the video limits) and those of the images restored frame by frame where
    their content is animated (GIF, APNG, WebP)."""
    return {"images": sorted(IMAGE_SUFFIXES), "videos": sorted(VIDEO_SUFFIXES), "animated": sorted(ANIMATED_SUFFIXES)}


def _client_suffix(name: str) -> str:
    suffix = os.path.splitext(name.replace("\\", "/").rsplit("/", 1)[-1])[1].lower()
    return suffix if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES else ""  # a video is told by its name


class MultipartUpload:
    """Feed it the body's chunks, then ``finish``; it raises ``UploadRefused`` the moment the body breaks a limit
    or its framing. What it stored stays in ``inputs`` for the caller to queue, or to delete on refusal."""

    def __init__(self, content_type: str | None, inputs: Path, limits: Limits):
        kind, params = parse_options_header(content_type or "")
        if kind != b"multipart/form-data":
            raise UploadRefused(415 if kind else 400, "send the files as multipart/form-data")
        boundary = params.get(b"boundary")
        if not boundary:
            raise UploadRefused(400, "multipart/form-data without a boundary")
        if len(boundary) > BOUNDARY_CHARS:
            raise UploadRefused(400, f"multipart boundary of {len(boundary):,} characters: RFC 2046 allows at most "
                                     f"{BOUNDARY_CHARS}")
        if boundary.endswith(b" ") or not all(byte in _BOUNDARY_BYTES for byte in boundary):
            raise UploadRefused(400, "multipart boundary with characters RFC 2046 does not allow in one")
        self._received = 0
        self.inputs, self.limits = inputs, limits
        self.files: list[StoredFile] = []
        self.fields: dict[str, str] = {}
        self._ended = False
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._part: StoredFile | None = None
        self._field: str | None = None
        self._value = bytearray()
        self._file: BinaryIO | None = None
        self._head = b""  # a file's first bytes, for the suffix its content says
        self._video = False  # whether the file being read is named as a video
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._data, "on_part_end": self._part_end,
            "on_end": self._end,
        })

    # ------------------------------------------------------------------ feeding

    def feed(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self.limits.body_bytes:  # a chunked body, which declared no length to refuse it by
            self._refuse_body()
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise UploadRefused(400, f"malformed multipart body: {exc}") from None
        # Besides its files (each within its own limit), a body holds little: an endless epilogue is cut off
        # however large a video may be
        if self._received - sum(f.size for f in self.files) > self.limits.max_files * PART_ROOM + BODY_ROOM:
            self._refuse_body()

    def _refuse_body(self) -> None:
        raise UploadRefused(413, f"request body over {min(self._received, self.limits.body_bytes):,} bytes, more "
                                 f"than {self.limits.describe()} can take")

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise UploadRefused(400, f"malformed multipart body: {exc}") from None
        if not self._ended:
            raise UploadRefused(400, "malformed multipart body: it ends before its closing boundary")
        if not self.files:
            raise UploadRefused(422, f"no files: send one or more images in the '{FILE_FIELD}' field")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ------------------------------------------------------------------ the parser's callbacks

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_name = self._header_value = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._check_header()

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self._header_name) + len(self._header_value) > PART_HEADER_BYTES:
            raise UploadRefused(400, f"malformed multipart body: a part's header is over {PART_HEADER_BYTES} bytes")

    def _header_end(self) -> None:
        if len(self._headers) >= PART_HEADERS:
            raise UploadRefused(400, f"malformed multipart body: a part with over {PART_HEADERS} headers")
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or not name:
            raise UploadRefused(400, "malformed multipart body: a part without a form-data name")
        if b"filename" in params:
            self._begin_file(name, params[b"filename"])
        elif name == FILE_FIELD:
            raise UploadRefused(422, f"'{FILE_FIELD}' must be sent as files, not as a text field")
        elif name not in self.limits.fields:
            raise UploadRefused(422, f"unknown field '{display_name(name, 0)}'; the fields are {FILE_FIELD}, "
                                     f"{', '.join(self.limits.fields)}")
        elif name in self.fields:
            raise UploadRefused(422, f"field '{name}' given twice")
        else:
            self._field, self._value = name, bytearray()

    def _begin_file(self, name: str, filename: bytes) -> None:
        if name != FILE_FIELD:
            raise UploadRefused(422, f"a file in field '{display_name(name, 0)}'; send files in '{FILE_FIELD}'")
        if len(self.files) >= self.limits.max_files:
            raise UploadRefused(413, f"more than {self.limits.max_files} files in one request")
        index = len(self.files) + 1
        self._part = StoredFile(display_name(filename, index), f"{index:03d}")
        self._video = _client_suffix(self._part.original_filename) in VIDEO_SUFFIXES
        self.files.append(self._part)
        self.inputs.mkdir(parents=True, exist_ok=True)
        self._file = open(self.inputs / self._part.stored, "xb")
        self._head = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part is not None:
            self._part.size += len(chunk)
            if len(self._head) < 16:
                self._head += chunk[:16]
            # A video is told by its name, unless its content says it is an image (a PNG named clip.mp4)
            video = self._video and suffix_for_content(self._head) is None
            limit = self.limits.video_bytes if video else self.limits.max_file_bytes
            if self._part.size > limit:
                raise UploadRefused(413, f"{self._part.original_filename}: over the limit of "
                                         f"{limit / 1048576:g} MB a {'video' if video else 'file'}")
            assert self._file is not None
            self._file.write(chunk)
        elif self._field is not None:
            self._value += chunk
            if len(self._value) > FIELD_BYTES:
                raise UploadRefused(413, f"field '{self._field}' is over {FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._part is not None:
            assert self._file is not None
            self._file.flush()
            os.fsync(self._file.fileno())  # on disk before the job that names it is queued
            self.close()
            suffix = suffix_for_content(self._head) or _client_suffix(self._part.original_filename)
            if suffix:  # the name the content says: a JPEG sent as photo.png is read, and kept, as a JPEG
                os.rename(self.inputs / self._part.stored, self.inputs / (self._part.stored + suffix))
                self._part.stored += suffix
            self._part = None
        elif self._field is not None:
            self.fields[self._field] = self._value.decode("utf-8", "replace")
            self._field = None

    def _end(self) -> None:
        self._ended = True


def refuse_long_videos(files: list[StoredFile], inputs: Path, limits: Limits) -> None:
    """``UploadRefused`` (422, naming the file and the limit) for a stored video longer than ``max_video_seconds``
    by its container's header (``header_duration``), or whose header states no duration, or with more than
    ``max_video_frames`` frames by its video stream's packets (``count_video_packets``: demuxed, never decoded, so
    a high frame rate cannot hide them; the worker counts the decoded frames again). No numpy is imported. A file
    PyAV cannot open is left for the worker to name, as the frame-size check leaves it."""
    for stored in files:
        if not is_video_name(stored.stored):
            continue
        try:
            _refuse_long_video(inputs / stored.stored, stored.original_filename, limits)
        except (VideoDecodeError, VideoUnavailable):
            continue


def _refuse_long_video(path: Path, name: str, limits: Limits) -> None:
    if limits.max_video_seconds is not None:
        seconds = header_duration(path)
        if seconds is None:
            raise UploadRefused(422, f"{name}: its header states no duration, and this server takes videos of at "
                                     f"most {limits.max_video_seconds:g} seconds")
        if seconds > limits.max_video_seconds:
            raise UploadRefused(422, f"{name}: {seconds:,.1f} seconds long, over the limit of "
                                     f"{limits.max_video_seconds:g} seconds a video")
    limit = limits.max_video_frames
    if limit is not None:
        counted = _COUNTED_OVER * limit  # a file of tiny packets is not counted to its end
        frames = count_video_packets(path, name, stop_over=counted)
        if frames > limit:
            said = f"more than {counted:,}" if frames > counted else f"{frames:,}"
            raise UploadRefused(422, f"{name}: {said} frames, over the limit of {limit:,} frames a video")
