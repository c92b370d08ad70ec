"""A job's videos in the Ray pool's hand: how the driver splits a video into ranges of frames that several actors
restore at once (``VideoRanges``), and how it reads the frames its actors have done into the job's status.

A video long enough for several ranges (``video.ranges``: two for each actor by default, at least
``MIN_RANGE_FRAMES`` each) is restored range by range, each range by whichever actor is free, into segments kept
in the video's parts folder in the job's work folder; once every range is in, the driver joins the segments into
the output, without encoding them again. A range whose actor died goes round again and goes on from its last
finished segment. A shorter video, a part of one (``--frames``, ``--start``), one without segments
(``--segment-seconds 0``) or one whose container does not count its frames is restored whole by one actor.

Each actor tells the frames it has done in a small file of the run's progress folder (``actor.tell_frames``),
which the driver reads between its other work; status then names the frame as for the local worker."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ImageError
from ..plan import InputItem, ItemResult, error_result
from ..video.ranges import FrameSpan


@dataclass
class VideoRanges:
    """A video of a job split into ranges of frames (``spans``) restored by several actors at once: what came back
    of each range (its ``VideoResult.facts``), and whether the video failed (its other ranges are then dropped)."""

    item: InputItem
    output: Path  # the video's planned output in the job's work folder; its parts folder holds the ranges
    frames: int  # as the container counts them
    spans: list[FrameSpan]
    progress: Path  # the folder its actors tell their frames in
    started: float  # when the driver planned it (perf_counter)
    done: dict[int, dict[str, Any]] = field(default_factory=dict)  # range's first frame -> its facts
    failed: bool = False

    @property
    def complete(self) -> bool:
        return not self.failed and len(self.done) == len(self.spans)

    def progress_file(self, first: int) -> Path:
        return self.progress / f"range-{first}.json"

    def frames_done(self) -> int:
        """Frames of the video restored so far: the ranges that are in, and those in hand as their actors tell."""
        count = 0
        for span in self.spans:
            if span.first in self.done:
                count += int(self.done[span.first]["frames"])
                continue
            told = read_progress(self.progress_file(span.first))
            if told is not None:
                length = (span.stop if span.stop is not None else self.frames) - span.first
                done, total = told  # of the frames left to the range when its actor took it up
                count += max(length - (total - done), 0) if total is not None else done
        return count

    @property
    def actor_seconds(self) -> float:
        """The actors' seconds on the ranges that are in."""
        return sum(float(facts["seconds"]) for facts in self.done.values())

    def joined_result(self, in_size: tuple[int, int] | None, colorized: bool | None) -> ItemResult:
        """Join the ranges' segments into the output (``segments.join_ranges``): the video's result, with its
        facts as a result line gives them; an error result where the segments cannot be joined. Raises
        ``OSError`` where the output cannot be written."""
        from ..video.restore import open_video
        from ..video.segments import join_ranges

        try:
            with open_video(Path(self.item.source), self.item.source) as video:
                size = join_ranges(self.output, [span.first for span in self.spans], video)
                copied = len(video.copied)
        except ImageError as exc:
            return error_result(self.item, self.output, str(exc), in_size, self.started)
        ranges = [self.done[span.first] for span in self.spans]
        seconds = round(time.perf_counter() - self.started, 3)
        facts = {"frames": sum(int(f["frames"]) for f in ranges), "fps": ranges[0]["fps"],
                 "duration": ranges[-1]["duration"], "codec": ranges[0]["codec"], "copied_streams": copied,
                 "seconds": seconds, "resumed": sum(int(f["resumed"]) for f in ranges)}
        return ItemResult(self.item.source, str(self.output), "ok", None, in_size, size, seconds, None, video=facts,
                          colorized=colorized)


def read_progress(path: Path) -> tuple[int, int | None] | None:
    """(frames done, of how many) as an actor last told them in ``path`` (``actor.tell_frames``); None where it
    has told nothing yet."""
    try:
        told = json.loads(path.read_text())
        return int(told["done"]), (int(told["total"]) if told["total"] is not None else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["VideoRanges", "read_progress"]
