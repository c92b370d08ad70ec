"""A video split into ranges of frames that several workers restore at once (the Ray pool's actors): each range is
restored into segments kept in a parts folder of its own, inside the output's (``segments.range_output``), so a
range taken up again after its worker died goes on from its last finished segment; once every range is in, the
segments are joined into the output without encoding them again (``segments.join_ranges``).

A range's frames keep the video's own times (a range is not a ``--frames`` part, whose times start at 0), and its
first frame begins a segment, so the joined segments are the video a single run would write."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# restore's stages and checks, shared with a whole video's run rather than written twice
from .formats import container_for
from .read import Frame, FrameRange
from .flow import IN_FLIGHT, check_sizes, frames_in, pipelined
from .options import FrameRestorer, VideoOptions, VideoProgress, VideoResult
from .restore import open_video, video_result
from .segments import PartsFolder, SegmentedOutput, VideoOutputSpec, range_output
from .write import choose_codec

MIN_RANGE_FRAMES = 48  # a range's first frame is a keyframe, and each range decodes the frames before it again


@dataclass(frozen=True)
class FrameSpan:
    """Frames ``first`` (included) to ``stop`` (excluded; None: to the video's end) of a video."""

    first: int
    stop: int | None


def video_frames(source: Path, name: str) -> int | None:
    """How many frames the video ``source`` holds, as its container says (None where it does not)."""
    with open_video(source, name, keep_audio=False) as video:
        return frames_in(video.facts, FrameRange())


def plan_ranges(frames: int, size: int) -> list[FrameSpan]:
    """A video of ``frames`` frames (as its container counts them) cut into ranges of ``size``; the last range
    runs to the video's end, whatever the count."""
    firsts = list(range(0, max(frames, 1), max(size, 1)))
    return [FrameSpan(first, later) for first, later in zip(firsts, [*firsts[1:], None])]


def range_size(frames: int, workers: int, asked: int | None = None) -> int:
    """Frames a range holds: ``asked``, else two ranges for each of ``workers`` (so one that dies costs less and
    the last ones even out), never fewer than ``MIN_RANGE_FRAMES``."""
    if asked:
        return asked
    return max(MIN_RANGE_FRAMES, math.ceil(frames / (2 * max(workers, 1))))


def restore_range(source: Path, output: Path, span: FrameSpan, restorer: FrameRestorer, options: VideoOptions,
                  name: str | None = None,
                  on_progress: Callable[[VideoProgress], None] | None = None) -> VideoResult:
    """Restore the frames ``span`` of the video ``source`` with ``restorer`` into segments (each about
    ``options.segment_seconds`` of work) kept in ``range_output(output, span.first)``'s parts folder, from the
    first frame no finished segment of an earlier try holds; nothing is joined. Returns the range's frames
    (``resumed``: those earlier tries restored), its last frame's end (``duration``, on the video's clock), and the
    codec. Raises as ``restore_video`` does."""
    started = time.perf_counter()
    name = name or str(source)
    with open_video(source, name, keep_audio=False) as video:
        facts = video.facts
        choice = choose_codec(container_for(output.name), options.codec, name, options.pix_fmt, facts.bits)
        check_sizes(facts, options, choice, name)
        settings = {**(options.settings or {}), "codec": choice.codec, "pix_fmt": choice.pix_fmt}
        parts = PartsFolder.open(range_output(output, span.first), source, settings, False, name)
        resumed = parts.covered
        spec = VideoOutputSpec(container_for(output.name), name, facts, choice, options.encoding)
        sink = SegmentedOutput(parts, spec, options.segment_seconds or math.inf)
        frames = _From(video.items(FrameRange(0, span.stop), options.max_frames), span.first + resumed)
        try:
            done, out_size, _ = pipelined(iter(frames), frames_in(facts, FrameRange(span.first + resumed, span.stop)),
                                           sink, restorer, started, options, name, on_progress, IN_FLIGHT)
        except BaseException:
            parts.discard_if_empty()
            raise
    return video_result(facts, choice, frames.last, resumed, done, out_size, len(video.copied), started)


class _From:
    """The frames of ``items`` from number ``first`` on (those before are decoded, to count them, and passed over),
    without other streams' packets; ``last``: the last frame decoded."""

    def __init__(self, items: Iterator[Any], first: int):
        self.items, self.first = items, first
        self.last: Frame | None = None

    def __iter__(self) -> Iterator[Frame]:
        try:
            for item in self.items:
                if isinstance(item, Frame):
                    self.last = item
                    if item.index >= self.first:
                        yield item
        finally:
            close = getattr(self.items, "close", None)
            if close is not None:
                close()


__all__ = ["FrameSpan", "MIN_RANGE_FRAMES", "plan_ranges", "range_size", "restore_range", "video_frames"]
