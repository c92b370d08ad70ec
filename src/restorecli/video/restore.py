"""Restore a video: every frame through a ``Restorer``, the copied streams' packets alongside, into a file renamed
into place only when complete. Three stages on their own threads with bounded queues between them: decoding
ahead, the model in the caller's thread, encoding and muxing behind; at most ``in_flight`` frames wait in each
queue, whatever the video's length."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import ImageError, ImageTooLarge
from ..files import atomic_writer
from ..images.formats import check_output_pixels
from .formats import VideoDecodeError, VideoEncodeError, container_for
from .read import Frame, FrameRange, ResumeAt, SeekMissed, TooManyFrames, VideoFacts, VideoInput, shown_for
from .segments import PartsFolder, SegmentedOutput, VideoOutputSpec, join_segments
from .write import CodecChoice, VideoOutput, check_frame_size, choose_codec

if TYPE_CHECKING:
    from ..options import RestoreOptions

IN_FLIGHT = 4  # frames each queue holds: enough to keep the model fed through a slow keyframe or a burst of audio


class FrameRestorer(Protocol):
    """What restores one frame: ``pipeline.Restorer`` (its ``restore_array``)."""

    def restore_array(self, color: np.ndarray, alpha: np.ndarray | None = None, options: Any = None) -> np.ndarray: ...


@dataclass(frozen=True)
class VideoOptions:
    """How a video is written: the codec (None: the container's default), its CRF (None: the codec's default),
    whether audio and subtitle streams are copied, and the part of the frames restored (None: all)."""

    codec: str | None = None
    crf: int | None = None
    keep_audio: bool = True
    frames: FrameRange | None = None
    max_pixels: int | None = None  # per input frame
    max_output_pixels: int | None = None  # per output frame
    output_size: Callable[[int, int], tuple[int, int]] | None = None  # a frame's restored (w, h), where known ahead
    bitrate: int | None = None  # bits per second (None: the codec's quality, or --crf's)
    pix_fmt: str | None = None  # the output's pixel format (None: the codec's, 10-bit where the input is deeper)
    segment_seconds: float | None = None  # work kept as one resumable segment (None: the video written in one go)
    settings: dict[str, Any] | None = None  # what changes the frames, beside the codec: an earlier run's kept segments
    fresh: bool = False  # start again, dropping the segments an earlier run kept (--overwrite)
    max_frames: int | None = None  # the most frames a video may hold, counted as decoded (--max-video-frames)
    # each frame's RestoreOptions (outscale, face weight, fidelity): the restorer's own are those of whichever job
    # loaded it, and a worker keeps it for later jobs that share its models
    restore: Any = None


@dataclass(frozen=True)
class VideoProgress:
    """Frames restored so far, of ``total`` (None: the container does not say), and the rate so far."""

    done: int
    total: int | None
    fps: float


@dataclass(frozen=True)
class VideoResult:
    """What was written: frames, the input's average frame rate, the output's duration in seconds (when its last
    frame ends; a part starts at 0), the codec and why, the sizes, the streams copied, and the seconds it took."""

    frames: int
    fps: float | None
    duration: float
    codec: str
    codec_reason: str
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    copied_streams: int
    seconds: float
    resumed: int = 0  # frames an earlier, stopped run restored (kept in its segments), of ``frames``

    def facts(self) -> dict[str, Any]:
        """The JSON fields of a video's result line."""
        return {"frames": self.frames, "fps": self.fps, "duration": self.duration, "codec": self.codec,
                "copied_streams": self.copied_streams, "seconds": self.seconds, "resumed": self.resumed}


_END = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _Stopped(Exception):
    """Another stage failed or the run was stopped: this one ends without a word (the other says why)."""


def _put(line: queue.Queue, item: object, stop: threading.Event) -> None:
    """Put ``item`` on the bounded ``line``, waiting while it is full; ``_Stopped`` once ``stop`` is set."""
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            line.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(line: queue.Queue, stop: threading.Event) -> object:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return line.get(timeout=0.1)
        except queue.Empty:
            continue


def open_video(source: Path, name: str | None = None, keep_audio: bool = True) -> VideoInput:
    """``source`` opened for reading (see ``VideoInput``)."""
    return VideoInput(source, name or str(source), keep_audio)


def _check_sizes(facts: VideoFacts, options: VideoOptions, choice: CodecChoice, name: str) -> None:
    """Refuse, before any model time, frames over ``--max-pixels`` and outputs over ``--max-output-pixels`` or the
    codec's limits."""
    if options.max_pixels is not None and facts.width * facts.height > options.max_pixels:
        raise ImageTooLarge(f"{name}: its frames are {facts.width}x{facts.height} pixels, over the limit of "
                            f"{options.max_pixels:,} (--max-pixels)")
    if options.output_size is not None:
        size = options.output_size(facts.width, facts.height)
        check_output_pixels(name, size, options.max_output_pixels)
        check_frame_size(choice, size, name)


def _pipelined(items: Iterator[Any], total: int | None, sink: VideoOutput | SegmentedOutput,
               restorer: FrameRestorer, started: float, options: VideoOptions, name: str,
               on_progress: Callable[[VideoProgress], None] | None,
               in_flight: int) -> tuple[int, tuple[int, int], Frame | None]:
    """The frames and packets of ``items`` (``total`` frames, where known) decoded ahead on a thread, restored in
    the caller's, encoded behind on another: returns the frames restored, their size and the last one. A failure
    of any stage stops the others."""
    decoded: queue.Queue = queue.Queue(in_flight)
    restored: queue.Queue = queue.Queue(in_flight)
    stop = threading.Event()
    reader = threading.Thread(target=_decode_ahead, args=(items, decoded, stop),
                              name="restorecli-video-read", daemon=True)
    written: list[BaseException] = []
    writer = threading.Thread(target=_encode_behind, args=(sink, restored, stop, written),
                              name="restorecli-video-write", daemon=True)
    reader.start()
    writer.start()
    try:
        done = _run_model(restorer, decoded, restored, stop, total, started, options, name, on_progress)
        _put(restored, _END, stop)
        writer.join()
    except _Stopped:
        writer.join()
        if not written:
            raise
    except BaseException:
        stop.set()
        writer.join()
        sink.abort()
        raise
    finally:
        stop.set()  # the reader, should it still be waiting
        reader.join()
    if written:
        raise written[0]
    return done


def restore_video(source: Path, output: Path, restorer: FrameRestorer, options: VideoOptions = VideoOptions(),
                  on_progress: Callable[[VideoProgress], None] | None = None, name: str | None = None,
                  on_codec: Callable[[CodecChoice], None] | None = None, in_flight: int = IN_FLIGHT) -> VideoResult:
    """Restore every frame of the video ``source`` (or the part ``options.frames``) with ``restorer`` and write
    ``output`` in the same container, keeping the frames' timestamps and time base, the rotation and the colour
    description, and copying audio and subtitle packets unchanged (unless ``options.keep_audio`` is False).
    ``output`` appears only when complete: it is written under a temporary name and renamed. ``on_codec`` hears
    the codec chosen before the first frame; ``on_progress`` follows the frames (in the caller's thread).

    Raises ``ImageError`` subclasses naming ``name`` (default: ``source``) for a video that cannot be read or
    written; the model's own errors go up as they are."""
    started = time.perf_counter()
    name = name or str(source)
    with open_video(source, name, options.keep_audio) as video:
        facts = video.facts
        choice = choose_codec(container_for(output.name), options.codec, name, options.pix_fmt, facts.bits)
        if on_codec is not None:
            on_codec(choice)
        _check_sizes(facts, options, choice, name)
        part = options.frames or FrameRange()
        if options.segment_seconds and part == FrameRange():
            return _restore_in_segments(video, source, output, restorer, options, choice, started, on_progress,
                                        in_flight)
        with atomic_writer(output) as handle:
            whole = part == FrameRange()  # a part's times are not the chapters'
            sink = VideoOutput(handle, container_for(output.name), name, facts, video.copied, choice, options.crf,
                               video.metadata, video.chapters if whole else None, bitrate=options.bitrate)
            frames, out_size, last = _pipelined(video.items(part, options.max_frames), _frames_in(facts, part), sink,
                                                restorer, started, options, name, on_progress, in_flight)
            if frames == 0:
                raise VideoDecodeError(f"{name}: {_described(part)} holds no frame: the video ends before "
                                       + (f"frame {part.start}" if part.begins is None else f"{float(part.begins):g} s"))
    duration = float(last.pts * last.time_base + shown_for(last, facts)) if last is not None else 0.0
    return VideoResult(frames, float(facts.rate) if facts.rate else None, round(duration, 6), choice.codec,
                       choice.reason, (facts.width, facts.height), out_size, len(video.copied),
                       round(time.perf_counter() - started, 3))


def _restore_in_segments(video: VideoInput, source: Path, output: Path, restorer: FrameRestorer,
                         options: VideoOptions, choice: CodecChoice, started: float,
                         on_progress: Callable[[VideoProgress], None] | None, in_flight: int) -> VideoResult:
    """``restore_video`` for the whole of a video, resumable: its frames from the first one no segment of an
    earlier run holds are restored into segments (``segments``), which are then joined into ``output`` with the
    copied streams, and removed."""
    facts, name = video.facts, video.name
    settings = {**(options.settings or {}), "codec": choice.codec, "pix_fmt": choice.pix_fmt}
    parts = PartsFolder.open(output, source, settings, options.fresh, name)
    resumed = parts.covered
    sink = SegmentedOutput(parts, VideoOutputSpec(container_for(output.name), name, facts, choice, options.crf,
                                                  options.bitrate), options.segment_seconds or 0.0)
    frames_left = _frames_in(facts, FrameRange(resumed))
    seen = _Remaining(video, source, options.max_frames, resumed, parts.resume_at())
    try:
        frames, _, _ = _pipelined(iter(seen), frames_left, sink, restorer, started, options, name, on_progress,
                                  in_flight)
    except TooManyFrames:
        parts.remove()  # the same limit stops every rerun: nothing of the video is kept
        raise
    except BaseException:
        parts.discard_if_empty()
        raise
    with open_video(source, name, options.keep_audio) as again:  # the copied streams, read from their start
        out_size = join_segments(parts, again, output)
    parts.remove()
    return video_result(facts, choice, seen.last, resumed, frames, out_size, len(again.copied), started)


def video_result(facts: Any, choice: Any, last: Any, resumed: int, frames: int, out_size: tuple[int, int],
                 copied: int, started: float) -> VideoResult:
    """A restored video's result: ``resumed`` frames an earlier run's segments held and ``frames`` restored now,
    its duration up to the end of its ``last`` frame decoded, ``copied`` streams, the seconds since ``started``."""
    duration = float(last.pts * last.time_base + shown_for(last, facts)) if last is not None else 0.0
    return VideoResult(resumed + frames, float(facts.rate) if facts.rate else None, round(duration, 6), choice.codec,
                       choice.reason, (facts.width, facts.height), out_size, copied,
                       round(time.perf_counter() - started, 3), resumed)


class _Remaining:
    """A video's frames from number ``first`` on, the first one no segment of an earlier run holds, without the
    copied streams' packets (the join copies them); ``last``: the last frame decoded. The demuxer seeks to the
    keyframe before it (``resume``); where that lands too late, or without ``resume``, the video is read from its
    start and the frames the segments hold are decoded and passed over."""

    def __init__(self, video: VideoInput, source: Path, max_frames: int | None, first: int,
                 resume: ResumeAt | None):
        self.video, self.source, self.max_frames, self.first, self.resume = video, source, max_frames, first, resume
        self.last: Frame | None = None

    def __iter__(self) -> Iterator[Frame]:
        try:
            yield from self._frames(self.video, self.resume)
        except SeekMissed:
            with open_video(self.source, self.video.name, keep_audio=False) as again:
                yield from self._frames(again, None)

    def _frames(self, video: VideoInput, resume: ResumeAt | None) -> Iterator[Frame]:
        items = video.items(max_frames=self.max_frames, resume=resume)
        try:
            for item in items:
                if isinstance(item, Frame):
                    self.last = item
                    if item.index >= self.first:
                        yield item
        finally:
            items.close()


def _run_model(restorer: FrameRestorer, decoded: queue.Queue, restored: queue.Queue, stop: threading.Event,
               total: int | None, started: float, options: VideoOptions, name: str,
               on_progress: Callable[[VideoProgress], None] | None) -> tuple[int, tuple[int, int], Frame | None]:
    """The model's stage, in the caller's thread: frames from ``decoded`` restored into ``restored``, packets
    passed along. Returns the frames restored, their size and the last frame."""
    frames, size, last = 0, (0, 0), None
    while True:
        item = _get(decoded, stop)
        if item is _END:
            return frames, size, last
        if isinstance(item, _Failed):
            raise item.exc
        if isinstance(item, Frame):
            color = restorer.restore_array(item.color, None, options.restore)
            if frames == 0:
                size = (color.shape[1], color.shape[0])
                check_output_pixels(name, size, options.max_output_pixels)
            item = replace(item, color=color)
            frames, last = frames + 1, item
            if on_progress is not None:
                elapsed = time.perf_counter() - started
                on_progress(VideoProgress(frames, total, round(frames / elapsed, 3) if elapsed > 0 else 0.0))
        _put(restored, item, stop)


def _decode_ahead(items: Iterator[Any], decoded: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in items:
            _put(decoded, item, stop)
        _put(decoded, _END, stop)
    except _Stopped:
        pass
    except BaseException as exc:  # the file's fault (VideoDecodeError) or FFmpeg's: the model's thread raises it
        try:
            _put(decoded, _Failed(exc), stop)
        except _Stopped:
            pass
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _encode_behind(sink: VideoOutput, restored: queue.Queue, stop: threading.Event,
                   written: list[BaseException]) -> None:
    """The writer's stage: frames encoded and packets muxed in order, then the file finished. A failure is put in
    ``written`` and stops the other stages."""
    try:
        while True:
            item = _get(restored, stop)
            if item is _END:
                sink.close()
                return
            if isinstance(item, Frame):
                sink.frame(item.color, item.pts, item.rotation, item.duration)
            else:
                sink.packet(item)
    except _Stopped:
        sink.abort()
    except BaseException as exc:
        sink.abort()
        written.append(exc if isinstance(exc, (ImageError, OSError)) else  # a full disk stays what it is
                       VideoEncodeError(f"{sink.name}: writing the video failed ({type(exc).__name__}: "
                                        f"{' '.join(str(exc).split())[:200]})"))
        stop.set()


def _described(part: FrameRange) -> str:
    """The part as the user asked for it."""
    if part.begins is None and part.ends is None:
        return f"--frames {part.start}:{part.stop or ''}"
    begins = float(part.begins or 0)
    return f"--start {begins:g}" + (f" --duration {float(part.ends - (part.begins or 0)):g}" if part.ends else "")


def _frames_in(facts: VideoFacts, part: FrameRange) -> int | None:
    """How many frames ``part`` holds, where the container says how many the video has."""
    count = facts.frames
    if count is None and facts.duration and facts.rate:
        count = round(facts.duration * facts.rate)
    if part.begins is not None or part.ends is not None:  # a part by time: its frames are known as they come
        return None
    if count is None:
        return part.stop - part.start if part.stop is not None else None
    stop = min(count, part.stop) if part.stop is not None else count
    return max(0, stop - part.start)


def video_options(options: RestoreOptions,
                  output_size: Callable[[int, int], tuple[int, int]] | None = None) -> VideoOptions:
    """The ``VideoOptions`` of a batch's ``RestoreOptions`` (its --video-codec, --crf or --video-bitrate,
    --keep-audio, --frames or --start/--duration, and pixel limits), with what gives a frame's restored size
    (``output_size(w, h)``) where the caller knows it."""
    part = None
    if options.frames:
        start, _, stop = options.frames.partition(":")
        part = FrameRange(int(start or 0), int(stop) if stop else None)
    elif options.start is not None or options.duration is not None:
        begins = Fraction(options.start or 0).limit_denominator(1_000_000)
        ends = begins + Fraction(options.duration).limit_denominator(1_000_000) if options.duration else None
        part = FrameRange(begins=begins or None, ends=ends)
    return VideoOptions(options.video_codec, options.crf, options.keep_audio, part, options.max_pixels,
                        options.max_output_pixels, output_size, options.video_bitrate,
                        segment_seconds=options.segment_seconds or None, settings=frames_settings(options),
                        fresh=options.overwrite, pix_fmt=options.pix_fmt, restore=options,
                        max_frames=options.max_video_frames)


# Options that leave a video's restored frames as they are (where they go, how the sound is copied, limits), or
# change them only in their last bit (the device, the tiling): segments kept under other values are taken as they are
_SAME_FRAMES = frozenset({"output_dir", "overwrite", "dry_run", "keep_audio", "recursive", "suffix", "format",
                          "quality", "max_pixels", "max_output_pixels", "save_faces", "weights_dir", "device", "tile",
                          "tile_pad", "segment_seconds", "frames", "start", "duration", "max_video_frames"})


def frames_settings(options: RestoreOptions) -> dict[str, Any]:
    """The options that change a video's restored frames, as JSON values, with the model file's size and time
    where the model is a file: segments kept by a run with other settings are not joined with this run's."""
    settings = {f.name: getattr(options, f.name) for f in fields(options) if f.name not in _SAME_FRAMES}
    model = Path(options.model)
    if model.is_file():
        info = model.stat()
        settings["model_file"] = [str(model.resolve()), info.st_size, info.st_mtime_ns]
    return json.loads(json.dumps(settings, default=str))


__all__ = ["FrameRange", "VideoOptions", "VideoProgress", "VideoResult", "open_video", "restore_video",
           "video_options"]
