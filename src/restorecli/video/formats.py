"""Video containers by suffix, the codecs written into each, and the errors of a video input. Imports no codec:
planning (``plan``) asks here whether an input is a video without loading PyAV."""

from __future__ import annotations

import errno
import functools
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, Literal

from ..errors import ImageDecodeError, ImageError

EXTRA = "restorecli[video]"

# Suffix -> the FFmpeg muxer that writes it. The output keeps its input's container (and the suffix's spelling).
CONTAINERS: dict[str, str] = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
                              ".avi": "avi"}
# Containers whose index holds each frame's decoding time only: the frames are written in the order they are shown
# (no B-frames), and a file read gets its frames' times from its packets, in the order the decoder shows them
DECODING_TIMES_ONLY = frozenset({"avi"})
# --video-preset: x264's and x265's speed presets, fastest first (FFmpeg's default: medium), and SVT-AV1's, a number
# from -1 (slowest) to 13 (fastest; FFmpeg's default: the library's, 10 in SVT-AV1 4)
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
X26X_CODECS = frozenset({"libx264", "libx264rgb", "libx265"})
SVT_AV1_PRESETS = range(-1, 14)
VIDEO_SUFFIXES = frozenset(CONTAINERS)
# Suffix -> the content type a video so named is served with
MEDIA_TYPES: dict[str, str] = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime",
                               ".mkv": "video/x-matroska", ".webm": "video/webm", ".avi": "video/x-msvideo"}

# Suffix -> the animated format a file so named is restored as, frame by frame, where its content holds more than
# one frame (``animated.is_animated_file``); a still GIF, PNG or WebP stays an image. Written back in that format.
AnimationFormat = Literal["gif", "apng", "webp"]
ANIMATED_SUFFIXES: dict[str, AnimationFormat] = {".gif": "gif", ".png": "apng", ".apng": "apng", ".webp": "webp"}

# The video codecs each container is written with when --video-codec is not given, in order of preference: the
# first the bundled FFmpeg can encode is used (PyPI's PyAV wheels carry libx264 and libvpx-vp9).
_H264_FIRST = ("libx264", "libopenh264", "h264", "mpeg4")
DEFAULT_CODECS: dict[str, tuple[str, ...]] = {
    "mp4": _H264_FIRST, "mov": _H264_FIRST, "matroska": _H264_FIRST,
    "webm": ("libvpx-vp9", "libsvtav1", "libaom-av1", "libvpx"),
    "avi": ("libx264", "mpeg4"),  # H.264 without B-frames (see DECODING_TIMES_ONLY), else MPEG-4 Part 2
}


# Demuxers that read other files or the network on a file's word: lists of files (concat, whose list may name the
# file itself, opened again and again until the process has no file descriptor left), playlists and stream
# descriptions (HLS, SDP, RTSP, SAP, a DASH manifest), numbered image files (image2) and filter graphs (lavfi). An
# input restorecli opens is read alone; FFmpeg checks the list once it has probed a file, before reading its header.
FOLLOWS_OTHER_FILES = frozenset({"concat", "hls", "image2", "lavfi", "rtp", "rtsp", "sap", "sdp",
                                 "webm_dash_manifest"})


class VideoUnavailable(ImageError):
    """A video input, where PyAV (``restorecli[video]``) is not installed: that video's error, not the batch's."""


class VideoDecodeError(ImageDecodeError):
    """The file is not a video restorecli can read: no video stream, truncated, damaged, or a codec FFmpeg lacks."""


class VideoEncodeError(ImageError):
    """The restored frames cannot be written as asked: a codec the bundled FFmpeg lacks or the container refuses,
    a size the codec cannot take."""


def is_video_name(name: str) -> bool:
    """Whether a file named ``name`` is taken as a video (by its suffix)."""
    return Path(name).suffix.lower() in VIDEO_SUFFIXES


def video_media_type(suffix: str) -> str | None:
    """The content type of a video file named with ``suffix``; None for any other suffix."""
    return MEDIA_TYPES.get(suffix.lower())


def container_for(name: str) -> str:
    """The FFmpeg muxer that writes a file named ``name`` (a video suffix)."""
    return CONTAINERS[Path(name).suffix.lower()]


def preset_family(preset: str) -> str | None:
    """Whose speed preset ``preset`` (lower case) is: ``"x26x"`` for x264's and x265's names, ``"svt-av1"`` for
    SVT-AV1's numbers; None for neither."""
    if preset in X26X_PRESETS:
        return "x26x"
    if preset.lstrip("-").isdigit() and int(preset) in SVT_AV1_PRESETS:
        return "svt-av1"
    return None


def load_av(name: str) -> ModuleType:
    """PyAV, imported; for a video named ``name`` without it, ``VideoUnavailable`` naming the extra to install."""
    try:
        import av
    except ImportError:
        raise VideoUnavailable(f"{name}: restoring a video needs PyAV, which is not installed: "
                               f"pip install '{EXTRA}'") from None
    return av


@functools.cache
def _demuxers_read_alone(av: ModuleType) -> str:
    """FFmpeg's ``format_whitelist``: every demuxer the bundled FFmpeg has but those in ``FOLLOWS_OTHER_FILES``."""
    names = (name for name in av.formats_available if av.ContainerFormat(name).is_input)
    return ",".join(sorted(name for name in names if name not in FOLLOWS_OTHER_FILES))


def open_input(path: Path | BinaryIO, name: str) -> Any:
    """The file at ``path`` (or a file object: a download in memory) opened for reading with PyAV, by any demuxer
    but those that would open other files or the network (``FOLLOWS_OTHER_FILES``). Raises ``VideoUnavailable``
    without PyAV, ``VideoDecodeError`` naming ``name`` where FFmpeg cannot open it."""
    av = load_av(name)
    try:
        return av.open(str(path) if isinstance(path, Path) else path, "r",
                       container_options={"format_whitelist": _demuxers_read_alone(av)})
    except (av.FFmpegError, OSError) as exc:
        said = ffmpeg_reason(exc)
        if getattr(exc, "errno", None) == errno.EINVAL:  # what FFmpeg answers for a demuxer off the list, too
            said += ": a header FFmpeg refuses, or a list of other files or a playlist, which restorecli does not " \
                    "follow"
        raise VideoDecodeError(f"{name}: not a readable video ({said})") from None


def ffmpeg_reason(exc: BaseException) -> str:
    """What an FFmpeg (or OS) error says, on one line and at most 200 characters."""
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())[:200]


def main_video_stream(container: Any) -> Any | None:
    """The video stream of an open PyAV ``container`` that restorecli restores (None: it has none): the one FFmpeg
    picks, as a player does (``av_find_best_stream``: not cover art, the largest), which need not be the first; a
    file's other video streams are not copied."""
    return container.streams.best("video")


def frame_size(path: Path) -> tuple[int, int] | None:
    """A video's frame size (w, h) from its header, without decoding a frame or importing numpy (the server's process
    reads it to refuse a job before a worker spends time on it); None where PyAV is absent or cannot tell."""
    try:
        with open_input(path, path.name) as container:
            context = main_video_stream(container).codec_context
            # 0 x 0 where the header states none, or one FFmpeg refuses (60000 x 60000): unknown, as unread
            return (context.width, context.height) if context.width > 0 and context.height > 0 else None
    except Exception:  # no PyAV, no video stream, a damaged file: the worker names the problem
        return None


def header_duration(path: Path) -> float | None:
    """A video's duration in seconds as its container's header (else its video stream's) states it, read without
    decoding a frame or importing numpy (the server refuses an upload too long by it); None where neither states
    one. Raises ``VideoUnavailable`` without PyAV, ``VideoDecodeError`` where PyAV cannot open it as a video."""
    av = load_av(path.name)
    try:
        with open_input(path, path.name) as container:
            stream = main_video_stream(container)
            if stream is None:
                raise VideoDecodeError(f"{path.name}: no video stream")
            if container.duration is not None and container.duration > 0:
                return container.duration / 1_000_000  # AV_TIME_BASE: microseconds
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return None
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{path.name}: not a video FFmpeg can open ({exc})") from None
