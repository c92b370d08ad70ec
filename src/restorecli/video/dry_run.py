"""What a dry run tells of a video or an animation, from its header (an animation: its frames' durations), without
restoring or encoding a frame: the frame size, how many frames would be restored and how long they last, and, only
where ``--video-bitrate`` sets the rate the encoder aims at, the output's expected size in bytes."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from .formats import is_video_name
from .read import FrameRange


@dataclass(frozen=True)
class PlannedVideo:
    """A video's (or an animation's) frame size, and of the part to be restored: its frames and seconds (None where
    the file does not say), the input's average frame rate, and the copied streams' bits per second (None: one of
    them does not say; 0: none copied)."""

    in_size: tuple[int, int]
    frames: int | None
    duration: float | None
    fps: float | None
    copied_rate: int | None = 0

    def facts(self, bitrate: int | None) -> dict[str, Any]:
        """The JSON fields of a dry run's ``video`` object; ``estimated_bytes`` only with a video bit rate
        (``bitrate``) and the copied streams' rates known: the encoder aims at that rate, where a CRF's size depends
        on the pictures."""
        facts: dict[str, Any] = {"frames": self.frames, "duration": self.duration, "fps": self.fps}
        if bitrate is not None and self.duration is not None and self.copied_rate is not None:
            facts["estimated_bytes"] = round((bitrate + self.copied_rate) * self.duration / 8)
        return facts


def plan_video(source: Path, name: str, part: FrameRange | None, keep_audio: bool = True) -> PlannedVideo:
    """``source`` (a video by its name, else an animation) as a dry run sees it, for the ``part`` to be restored
    (None: all). Raises ``ImageError`` subclasses naming ``name`` for a file that cannot be read."""
    if is_video_name(source.name):
        return _plan_video(source, name, part or FrameRange(), keep_audio)
    return _plan_animation(source, name, part or FrameRange())


def _plan_video(source: Path, name: str, part: FrameRange, keep_audio: bool) -> PlannedVideo:
    from .read import VideoInput  # PyAV's, where a video is planned

    with VideoInput(source, name, keep_audio) as video:
        facts = video.facts
        rates = [stream.codec_context.bit_rate or stream.bit_rate for stream in video.copied]
    rate = facts.rate
    length = Fraction(facts.duration).limit_denominator(1_000_000) if facts.duration is not None else None
    total = facts.frames
    if total is None and length is not None and rate:
        total = round(length * rate)
    if part.begins is not None or part.ends is not None:  # a part by time: its frames counted at the average rate
        ends = part.ends if length is None else min(part.ends or length, length)
        seconds = max(Fraction(0), ends - (part.begins or 0)) if ends is not None else None
        frames = round(seconds * rate) if seconds is not None and rate else None
    elif part == FrameRange():
        frames, seconds = total, length
    else:  # --frames: its frames of those the header counts, shown at the average rate
        stop = part.stop if total is None else min(total, part.stop or total)
        frames = max(0, stop - part.start) if stop is not None else None
        seconds = frames / rate if frames is not None and rate else None
    return PlannedVideo((facts.width, facts.height), frames, float(seconds) if seconds is not None else None,
                        float(rate) if rate else None, sum(rates) if all(rates) else None)


def _plan_animation(source: Path, name: str, part: FrameRange) -> PlannedVideo:
    from .animated import frame_durations

    size, durations = frame_durations(source, name)
    starts = [Fraction(sum(durations[:i])).limit_denominator(1_000_000) / 1000 for i in range(len(durations))]
    chosen = [d for i, d in enumerate(durations) if not part.before(i, starts[i]) and not part.after(i, starts[i])]
    seconds = sum(chosen) / 1000
    return PlannedVideo(size, len(chosen), round(seconds, 6), round(len(chosen) / seconds, 3) if seconds else None)


__all__ = ["PlannedVideo", "plan_video"]
