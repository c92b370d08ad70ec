"""What a video run is asked for and what it gives back: ``VideoOptions`` (made from a batch's ``RestoreOptions`` by
``video_options``; ``frames_settings``, the options a resumed run's kept segments must share), ``VideoProgress``,
``VideoResult``, and ``FrameRestorer``, what restores a frame."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .read import FrameRange
from .write import Encoding

if TYPE_CHECKING:
    from ..options import RestoreOptions



class FrameRestorer(Protocol):
    """What restores one frame: ``pipeline.Restorer`` (its ``restore_array``)."""

    def restore_array(self, color: np.ndarray, alpha: np.ndarray | None = None, options: Any = None) -> np.ndarray: ...


@dataclass(frozen=True)
class VideoOptions:
    """How a video is written: the codec (None: the container's default), its quality and speed (``encoding``:
    the codec's own where not given), whether audio and subtitle streams are copied, and the part of the frames
    restored (None: all)."""

    codec: str | None = None
    encoding: Encoding = Encoding()
    keep_audio: bool = True
    frames: FrameRange | None = None
    max_pixels: int | None = None  # per input frame
    max_output_pixels: int | None = None  # per output frame
    output_size: Callable[[int, int], tuple[int, int]] | None = None  # a frame's restored (w, h), where known ahead
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


def video_options(options: RestoreOptions,
                  output_size: Callable[[int, int], tuple[int, int]] | None = None) -> VideoOptions:
    """The ``VideoOptions`` of a batch's ``RestoreOptions`` (its --video-codec, --crf or --video-bitrate,
    --video-preset, --keep-audio, --frames or --start/--duration, and pixel limits), with what gives a frame's
    restored size (``output_size(w, h)``) where the caller knows it."""
    part = None
    if options.frames:
        start, _, stop = options.frames.partition(":")
        part = FrameRange(int(start or 0), int(stop) if stop else None)
    elif options.start is not None or options.duration is not None:
        begins = Fraction(options.start or 0).limit_denominator(1_000_000)
        ends = begins + Fraction(options.duration).limit_denominator(1_000_000) if options.duration else None
        part = FrameRange(begins=begins or None, ends=ends)
    encoding = Encoding(options.crf, options.video_bitrate, options.video_preset)
    return VideoOptions(options.video_codec, encoding, options.keep_audio, part, options.max_pixels,
                        options.max_output_pixels, output_size,
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
