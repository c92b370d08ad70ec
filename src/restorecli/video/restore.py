"""Restore a video: every frame through a ``Restorer`` (``flow``: decoding ahead, the model, encoding behind), the
copied streams' packets alongside, into a file renamed into place only when complete; a whole video in resumable
segments where asked."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..files import atomic_writer
from .flow import IN_FLIGHT, check_sizes, frames_in, pipelined
from .formats import VideoDecodeError, container_for
from .options import FrameRestorer, VideoOptions, VideoProgress, VideoResult, frames_settings, video_options
from .read import Frame, FrameRange, ResumeAt, SeekMissed, TooManyFrames, VideoInput, shown_for
from .segments import PartsFolder, SegmentedOutput, VideoOutputSpec, join_segments
from .write import CodecChoice, VideoOutput, choose_codec


def open_video(source: Path, name: str | None = None, keep_audio: bool = True) -> VideoInput:
    """``source`` opened for reading (see ``VideoInput``)."""
    return VideoInput(source, name or str(source), keep_audio)


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
        check_sizes(facts, options, choice, name)
        part = options.frames or FrameRange()
        if options.segment_seconds and part == FrameRange():
            return _restore_in_segments(video, source, output, restorer, options, choice, started, on_progress,
                                        in_flight)
        with atomic_writer(output) as handle:
            whole = part == FrameRange()  # a part's times are not the chapters'
            sink = VideoOutput(handle, container_for(output.name), name, facts, video.copied, choice, options.encoding,
                               video.metadata, video.chapters if whole else None)
            frames, out_size, last = pipelined(video.items(part, options.max_frames), frames_in(facts, part), sink,
                                                restorer, started, options, name, on_progress, in_flight)
            if frames == 0:
                raise VideoDecodeError(f"{name}: {_described(part)} holds no frame: the video ends before "
                                       + (f"frame {part.start}" if part.begins is None else f"{float(part.begins):g} s"))
    return video_result(facts, choice, last, 0, frames, out_size, len(video.copied), started)


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
    sink = SegmentedOutput(parts, VideoOutputSpec(container_for(output.name), name, facts, choice, options.encoding),
                           options.segment_seconds or 0.0)
    frames_left = frames_in(facts, FrameRange(resumed))
    seen = _Remaining(video, source, options.max_frames, resumed, parts.resume_at())
    try:
        frames, _, _ = pipelined(iter(seen), frames_left, sink, restorer, started, options, name, on_progress,
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


def _described(part: FrameRange) -> str:
    """The part as the user asked for it."""
    if part.begins is None and part.ends is None:
        return f"--frames {part.start}:{part.stop or ''}"
    begins = float(part.begins or 0)
    return f"--start {begins:g}" + (f" --duration {float(part.ends - (part.begins or 0)):g}" if part.ends else "")


__all__ = ["FrameRange", "FrameRestorer", "VideoOptions", "VideoProgress", "VideoResult", "frames_settings",
           "open_video", "restore_video", "video_options", "video_result"]
