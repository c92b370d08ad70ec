"""Demux and decode a video with PyAV: its facts (size, frames, time base, colour), then its frames as the engine's
arrays (H x W x 3 RGB, uint8 or, above 8 bits a sample, uint16), each with its presentation time and display rotation, and the packets of the streams
that are copied unchanged (audio, subtitles), in the file's order; and a video's frames counted by demuxing alone
(``count_video_packets``). Imports no numpy where it runs: the server's process counts an upload's frames here."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ImageTooLarge
from .formats import DECODING_TIMES_ONLY, VideoDecodeError, load_av, main_video_stream, open_input
from .formats import ffmpeg_reason as _reason

if TYPE_CHECKING:
    import numpy as np

UNSPECIFIED = 2  # FFmpeg's AVCOL_*_UNSPECIFIED, the same value for primaries, transfer and matrix


@dataclass(frozen=True)
class Colour:
    """The video's colour description, FFmpeg's numbers (ITU-T H.273): primaries, transfer, matrix and range
    (0 or 2: unspecified; range 1 limited, 2 full)."""

    primaries: int = UNSPECIFIED
    transfer: int = UNSPECIFIED
    matrix: int = UNSPECIFIED
    range: int = 0


@dataclass(frozen=True)
class VideoFacts:
    """What a video input is: its frame size, frame count (None where the container does not say), time base,
    average frame rate, duration in seconds, codec, colour, and the streams copied unchanged beside it."""

    width: int
    height: int
    frames: int | None
    time_base: Fraction
    rate: Fraction | None
    duration: float | None
    codec: str
    colour: Colour
    audio: int
    subtitles: int
    bits: int = 8  # a sample's, in the decoded pixel format (10 for yuv420p10le): frames of more are read in 16


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its number in the file (from 0), its pixels (H x W x 3 RGB: uint8, or uint16 for a video
    of more than 8 bits a sample), its presentation
    time ``pts`` in units of ``time_base`` (shifted to start at 0 for a part, ``--frames``), and the display
    rotation the file gives it (degrees counter-clockwise, from the stream's display matrix); ``duration``: how long
    it is shown (``time_base`` units), where the file says."""

    index: int
    color: np.ndarray
    pts: int
    time_base: Fraction
    rotation: int = 0
    duration: int | None = None


@dataclass(frozen=True)
class FrameRange:
    """Frames ``start`` (included) to ``stop`` (excluded, None: the end), counted from 0; and of those, the ones
    shown from ``begins`` seconds (included) to ``ends`` (excluded, None: the end) on the video's clock."""

    start: int = 0
    stop: int | None = None
    begins: Fraction | None = None
    ends: Fraction | None = None

    def before(self, index: int, shown: Fraction) -> bool:
        return index < self.start or (self.begins is not None and shown < self.begins)

    def after(self, index: int, shown: Fraction) -> bool:
        return (self.stop is not None and index >= self.stop) or (self.ends is not None and shown >= self.ends)

    @property
    def cut(self) -> bool:
        """Whether the part starts after the video's beginning (its times then start at 0)."""
        return bool(self.start or self.begins)


@dataclass(frozen=True)
class ResumeAt:
    """Where a resumed run starts: at frame number ``first``, the one shown next after the frame an earlier run
    restored last, shown at ``after`` (its pts, in the video stream's time base)."""

    first: int
    after: int


# How many times the pixels its stream states a decoded frame may hold before FFmpeg refuses to decode it (a bound on
# what one hostile frame can make it allocate: 64 frames' worth); a frame of any other size is refused by
# restorecli after it (``_check_frame_size``), with the sizes named
GROWTH = 64


class TooManyFrames(ImageTooLarge):
    """A video with more frames than its limit (``--max-video-frames``), counted as they are decoded."""


class SeekMissed(Exception):
    """Seeking to resume landed after the frame asked for (a demuxer without an exact index): decode from the start."""


class VideoInput:
    """An open video: ``facts``, then ``items()``: its frames and the copied streams' packets. A context manager;
    raises ``VideoDecodeError`` (naming ``name``) for a file with no video stream or that FFmpeg cannot read."""

    def __init__(self, path: Path, name: str, keep_audio: bool = True):
        self.name = name
        self.decoded = 0  # frames the decoder gave, kept or passed over
        self.container = open_input(path, name)
        try:
            self.video = main_video_stream(self.container)
            if self.video is None:
                raise VideoDecodeError(f"{name}: the file holds no video stream")
            self.video.thread_type = "AUTO"  # frame and slice threads in FFmpeg's decoder, outside the GIL
            kinds = ("audio", "subtitle") if keep_audio else ()
            self.copied = [stream for stream in self.container.streams if stream.type in kinds]
            self.facts = self._facts()
            # FFmpeg allocates a frame as large as its packet says before restorecli sees it: a frame that grows
            # mid-stream (MJPEG, a new H.264 SPS) is refused by the decoder past GROWTH times the stated pixels
            self.video.codec_context.options = {
                **self.video.codec_context.options, "max_pixels": str(GROWTH * self.facts.width * self.facts.height)}
            self.metadata: dict[str, str] = dict(self.container.metadata)  # the container's title, dates, ...
            self.chapters: list[dict[str, Any]] = self.container.chapters()
        except BaseException:
            self.container.close()
            raise

    def __enter__(self) -> "VideoInput":
        return self

    def __exit__(self, *exc: object) -> None:
        self.container.close()

    def _facts(self) -> VideoFacts:
        video, context = self.video, self.video.codec_context
        if context.width <= 0 or context.height <= 0:
            raise VideoDecodeError(f"{self.name}: its video stream states no frame size FFmpeg can take (none, "
                                   "or one too large to decode)")
        duration = _stream_seconds(video)
        if duration is None and self.container.duration is not None and len(self.container.streams) == 1:
            duration = self.container.duration / 1_000_000  # AV_TIME_BASE; with other streams, theirs may be longer
        colour = Colour(int(context.color_primaries or UNSPECIFIED), int(context.color_trc or UNSPECIFIED),
                        int(context.colorspace or UNSPECIFIED), int(context.color_range or 0))
        bits = max((c.bits for c in context.format.components), default=8) if context.format is not None else 8
        return VideoFacts(context.width, context.height, video.frames or None, video.time_base or Fraction(1, 90000),
                          video.average_rate, duration, context.name, colour,
                          sum(s.type == "audio" for s in self.copied), sum(s.type == "subtitle" for s in self.copied),
                          bits)

    def items(self, part: FrameRange = FrameRange(), max_frames: int | None = None,
              resume: ResumeAt | None = None) -> Iterator[Frame | Any]:
        """The frames of ``part`` and the copied streams' packets that fall in its time, in the order they are
        shown. Timestamps are shifted so that ``part`` starts where its first frame was (0 for the whole video).
        A copied packet waits until a frame shown after it is decoded, so a part's last packets are known to end
        with it. With ``resume`` (the whole video only), the demuxer seeks to the keyframe at or before the frame
        restored last, and the frames from the next one on come out, numbered from ``resume.first``. Raises
        ``VideoDecodeError`` where the file is damaged or ends early, ``TooManyFrames`` at frame ``max_frames``
        (counted from 0: one more than the limit), ``SeekMissed`` where seeking landed after the frame asked for."""
        planes = "rgb48le" if self.facts.bits > 8 else "rgb24"  # the model takes 16-bit planes as they are
        start: Fraction | None = None  # seconds of the part's first frame
        waiting: list[Any] = []  # copied packets not yet known to lie inside the part

        def settled(until: Fraction | None) -> list[Any]:
            """The waiting packets shown before ``until`` seconds (None: all), shifted; the others go on waiting."""
            nonlocal waiting
            due = [p for p in waiting if until is None or _seconds(p) < until]
            waiting = [p for p in waiting if until is not None and _seconds(p) >= until]
            return [moved for p in due if (moved := _shifted(p, start or Fraction(0))) is not None]

        last: tuple[int, Any, Fraction] | None = None  # the last frame decoded: its number, itself, when shown
        for entry in self._decoded(max_frames, resume):
            if not isinstance(entry, tuple):
                waiting.append(entry)
                continue
            index, decoded, pts, base = entry
            shown = Fraction(pts * base)
            last = (index, decoded, shown)
            if part.after(index, shown):
                yield from settled(shown)
                return
            if part.before(index, shown):
                waiting = [p for p in waiting if _seconds(p) >= shown]  # before the part: never copied
                continue
            if start is None:
                start = shown if part.cut else Fraction(0)
            yield from settled(shown)
            self._check_frame_size(decoded, index)
            yield Frame(index, decoded.to_ndarray(format=planes), pts - round(start / base), base,
                        int(decoded.rotation or 0), decoded.duration or None)
        if last is None:
            raise VideoDecodeError(f"{self.name}: no frame could be decoded (empty, truncated or damaged)")
        self._check_whole(last[0] + 1, last[2] + shown_for(last[1], self.facts))
        if start is not None:
            yield from settled(None)

    def _decoded(self, max_frames: int | None, resume: ResumeAt | None) -> Iterator[Any]:
        """The video's decoded frames as (number, frame, pts, time base), and the copied streams' packets, in the
        file's order; with ``resume``, from the frame after ``resume.after`` on (see ``items``)."""
        av = load_av(self.name)
        times = _ShownTimes(self.container.format.name in DECODING_TIMES_ONLY)
        index, passed = (resume.first, resume.after) if resume is not None else (0, None)
        if passed is not None:
            self._seek(passed)
        landed = passed is None  # whether the first frame after the seek is known to be at or before ``passed``
        try:
            for packet in self.container.demux(self.video, *self.copied):
                if packet.stream.index != self.video.index:
                    if packet.dts is not None or packet.pts is not None:  # not the demuxer's end-of-stream marker
                        yield packet
                    continue
                times.sent(packet)
                for decoded in packet.decode():
                    self.decoded += 1
                    pts = times.shown(decoded)
                    if pts is None:
                        raise VideoDecodeError(f"{self.name}: frame {index} has no timestamp")
                    if passed is not None:
                        if not landed and pts > passed:  # the frames between would be lost
                            raise SeekMissed(f"{self.name}: seeking landed at {pts}, after {passed}")
                        landed = True
                        if pts <= passed:
                            continue  # restored by the earlier run
                        passed = None
                    if max_frames is not None and index >= max_frames:
                        raise TooManyFrames(f"{self.name}: more than {max_frames:,} frames, over the limit of "
                                            f"{max_frames:,} frames a video (--max-video-frames)")
                    yield index, decoded, pts, decoded.time_base or self.video.time_base
                    index += 1
        except av.FFmpegError as exc:
            larger = (f", or a frame there over {GROWTH}x the video's {self.facts.width}x{self.facts.height} pixels"
                      if isinstance(exc, av.ArgumentError) else "")  # the decoder's refusal past max_pixels
            raise VideoDecodeError(f"{self.name}: damaged or truncated at frame {index}{larger} "
                                   f"({_reason(exc)})") from None

    def _seek(self, pts: int) -> None:
        """Move the demuxer to the video's keyframe at or before ``pts`` (its stream's time base); ``SeekMissed``
        where the container cannot seek, or stores decoding times only (AVI: the frames' times come from packets
        counted from the start)."""
        av = load_av(self.name)
        if self.container.format.name in DECODING_TIMES_ONLY:
            raise SeekMissed(f"{self.name}: an AVI is read from its start")
        try:
            self.container.seek(pts, backward=True, any_frame=False, stream=self.video)
        except (av.FFmpegError, OSError) as exc:
            raise SeekMissed(f"{self.name}: cannot seek ({_reason(exc)})") from None

    def _check_frame_size(self, decoded: Any, index: int) -> None:
        if (decoded.width, decoded.height) != (self.facts.width, self.facts.height):
            # a later frame may be any size (MJPEG, a new H.264 SPS): --max-pixels and the output size were
            # checked against the stream's, so a larger one would slip past both
            raise VideoDecodeError(
                f"{self.name}: frame {index} is {decoded.width}x{decoded.height} pixels where the video's frames "
                f"are {self.facts.width}x{self.facts.height}; restorecli restores videos whose frames keep one size")

    def _check_whole(self, frames: int, end: Fraction) -> None:
        """Raise ``VideoDecodeError`` where the frames decoded, ``frames`` of them shown until ``end`` seconds, fall
        short of what the file says it holds: FFmpeg decodes a cut file up to the cut without an error. Both the
        frame count and the duration must fall short where the file states both: an MP4's edit list may drop
        frames at its start on purpose, but its last frame still ends at its duration."""
        facts = self.facts
        slack = 2 / facts.rate if facts.rate else Fraction(1, 10)  # two frames: a muxer's rounding is less
        shortfalls = []
        if facts.frames is not None:
            shortfalls.append((frames < facts.frames, f"{frames} of its {facts.frames} frames could be decoded"))
        if facts.duration is not None:
            shortfalls.append((end < Fraction(facts.duration) - slack,
                               f"its frames end at {float(end):.2f} s of its {facts.duration:.2f} s"))
        if shortfalls and all(short for short, _ in shortfalls):
            raise VideoDecodeError(f"{self.name}: truncated or damaged: "
                                   f"{'; '.join(text for _, text in shortfalls)}")


def count_video_packets(path: Path, name: str, stop_over: int | None = None) -> int:
    """How many frames the video at ``path`` holds by its (main) video stream's packets, counted by demuxing alone:
    no frame decoded, so a large file is counted at the speed it is read; counting stops at ``stop_over`` + 1.
    The container's header is not asked (it may say anything). Raises ``VideoUnavailable`` without PyAV,
    ``VideoDecodeError`` (naming ``name``) where PyAV cannot open it as a video."""
    av = load_av(name)
    count = 0
    try:
        with open_input(path, name) as container:
            stream = main_video_stream(container)
            if stream is None:
                raise VideoDecodeError(f"{name}: the file holds no video stream")
            for packet in container.demux(stream):
                if packet.size:  # not the demuxer's end-of-stream marker
                    count += 1
                    if stop_over is not None and count > stop_over:
                        break
    except av.FFmpegError as exc:
        if not count:
            raise VideoDecodeError(f"{name}: not a readable video ({_reason(exc)})") from None
    return count  # a file damaged further on: the packets before the damage


class _ShownTimes:
    """Each decoded frame's presentation time: the decoder's, or, for a container that stores decoding times only
    (AVI, one frame a tick), the earliest of its packets' ticks that no frame has taken yet: the decoder shows its
    frames in order, but the demuxer's guess of a reordered frame's (a B-frame's) time is off by the decoder's
    delay."""

    def __init__(self, from_packets: bool):
        self.from_packets = from_packets
        self.pending: list[int] = []  # a heap

    def sent(self, packet: Any) -> None:
        if self.from_packets and packet.dts is not None:
            heapq.heappush(self.pending, packet.dts)

    def shown(self, decoded: Any) -> int | None:
        if self.from_packets and self.pending:
            return heapq.heappop(self.pending)
        return decoded.pts


def shown_for(frame: Any, facts: VideoFacts) -> Fraction:
    """How long ``frame`` (a decoded one, or a ``Frame``) is shown, in seconds: as the file says, else one frame at
    the average rate."""
    if frame.duration:
        return Fraction(frame.duration * frame.time_base)
    return 1 / facts.rate if facts.rate else Fraction(0)


def _stream_seconds(stream: Any) -> float | None:
    """The stream's duration in seconds, from its header or (Matroska) its DURATION tag; None where neither says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    try:
        hours, minutes, seconds = tag.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except (AttributeError, ValueError):
        return None


def _seconds(packet: Any) -> Fraction:
    """When a copied packet is shown, in seconds."""
    when = packet.pts if packet.pts is not None else packet.dts
    return Fraction(when * packet.time_base)


def _shifted(packet: Any, start: Fraction) -> Any | None:
    """A copied stream's ``packet`` moved ``start`` seconds earlier; None where it lies before ``start``."""
    if not start:
        return packet
    offset = round(start / packet.time_base)
    if (packet.pts if packet.pts is not None else packet.dts) < offset:
        return None
    if packet.pts is not None:
        packet.pts -= offset
    if packet.dts is not None:
        packet.dts -= offset
    return packet
