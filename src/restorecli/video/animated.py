"""Animated GIF, animated WebP and APNG restored as videos: every frame through a ``Restorer``, written back in the
input's own format with each frame's duration, the loop count and the transparency.

Read and written with Pillow, not PyAV: Pillow gives each frame as it is shown (GIF's disposal and APNG's blending
applied onto the canvas), with its duration and the file's loop count, and writes all three formats back with
them; no ``restorecli[video]`` is needed. Each frame goes to the model whole; the writer works out again which
part of each frame changed. Whether a GIF, PNG or WebP is animated is decided by its content (``is_animated_file``,
a header read): a still one stays an image."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from ..errors import ImageError, ImageTooLarge
from ..files import atomic_writer
from ..images.formats import FORMATS, check_output_pixels
from .formats import ANIMATED_SUFFIXES, AnimationFormat, VideoDecodeError, VideoEncodeError
from .read import FrameRange, TooManyFrames
from .options import FrameRestorer, VideoOptions, VideoProgress, VideoResult

_PILLOW: dict[AnimationFormat, str] = {"gif": "GIF", "apng": "PNG", "webp": "WEBP"}  # Pillow's format names
_MAX_SIDE: dict[AnimationFormat, int | None] = {"gif": 65535, "apng": None, "webp": FORMATS["webp"].max_side}

# Pillow's writers take every frame before they write the file (they compare each with the one before), so the
# restored frames are held whole: an animation whose restored frames would take more is refused before any model
# time, saying to restore a part (--frames) or a smaller --outscale.
MAX_HELD_BYTES = 2 << 30


@dataclass(frozen=True)
class AnimationResult(VideoResult):
    """A restored animation: a ``VideoResult`` (``codec`` is the format: gif, apng or webp; no streams are copied)
    with the loop count written (0: for ever; None: a GIF that plays once, having no loop extension) and whether
    the frames kept an alpha channel (a GIF: a transparent colour)."""

    loop: int | None = None
    alpha: bool = False

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "loop": self.loop, "alpha": self.alpha}


def animation_format(name: str) -> AnimationFormat | None:
    """The animation format a file named ``name`` is written in, by its suffix (None: no animated format)."""
    return ANIMATED_SUFFIXES.get(Path(name).suffix.lower())


def is_animated_file(path: Path) -> bool:
    """Whether ``path`` is an animation restored frame by frame: a GIF, PNG (APNG) or WebP, by its name and its
    content alike, holding more than one frame. Reads the header only (a GIF: up to its second frame's header);
    never raises: a file that cannot be opened is left to the image path, which names its error."""
    kind = animation_format(path.name)
    if kind is None or not path.is_file():  # a named pipe or a device is never opened: the image path refuses it
        return False
    try:
        with _open(path, kind) as image:
            return bool(getattr(image, "is_animated", False))
    except Exception:  # not this format, damaged, too large: the image path's error says which
        return False


def _open(path: Path, kind: AnimationFormat) -> Image.Image:
    """``path`` opened as ``kind`` by Pillow's plugin for it (a ``SyntaxError`` where it is not one). Not through
    ``Image.open``, whose pixel limit warns through the process-wide warning filters (which threads cannot set
    apart) or refuses files within ``--max-pixels``: that limit is checked here, from the header."""
    from PIL import GifImagePlugin, PngImagePlugin, WebPImagePlugin

    plugin = {"gif": GifImagePlugin.GifImageFile, "apng": PngImagePlugin.PngImageFile,
              "webp": WebPImagePlugin.WebPImageFile}[kind]
    return plugin(str(path))


@dataclass(frozen=True)
class _Frame:
    """One restored frame: its colour (H x W x 3 uint8 RGB), its alpha (H x W uint8; None: opaque), and how long it
    is shown in milliseconds."""

    color: np.ndarray
    alpha: np.ndarray | None
    duration: float


def _seek(image: Image.Image, index: int, name: str) -> float:
    """Frame ``index`` of the open animation decoded, composited as it is shown; returns how long it is shown, in
    milliseconds. Raises ``VideoDecodeError`` where the file is damaged or cut short there."""
    try:
        image.seek(index)
        image.load()
    except Exception as exc:  # Pillow's OSError (truncated), EOFError, SyntaxError, ValueError on damaged data
        raise VideoDecodeError(f"{name}: damaged or truncated at frame {index} ({_reason(exc)})") from None
    return float(image.info.get("duration") or 0)


def frame_durations(source: Path, name: str) -> tuple[tuple[int, int], list[float]]:
    """An animation's frame size and each frame's duration in milliseconds (for a dry run: its frames are decoded,
    none restored). Raises ``VideoDecodeError`` naming ``name`` where it is damaged."""
    kind = animation_format(source.name)
    assert kind is not None
    try:
        image = _open(source, kind)
    except Exception as exc:
        raise VideoDecodeError(f"{name}: not a readable {kind} ({_reason(exc)})") from None
    with image:
        return image.size, [_seek(image, index, name) for index in range(getattr(image, "n_frames", 1))]


def _pixels(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """The frame ``_seek`` decoded: its colour (H x W x 3 uint8 RGB) and its alpha (None where it is opaque)."""
    rgba = np.asarray(image.convert("RGBA"))
    alpha = rgba[:, :, 3]
    return np.ascontiguousarray(rgba[:, :, :3]), None if alpha.min() == 255 else alpha.copy()


def restore_animation(source: Path, output: Path, restorer: FrameRestorer, options: VideoOptions = VideoOptions(),
                      on_progress: Callable[[VideoProgress], None] | None = None, name: str | None = None,
                      quality: int = 95) -> AnimationResult:
    """Restore every frame of the animated GIF, WebP or APNG ``source`` (or the part ``options.frames``: frame
    numbers, or the frames that start within a span of its clock) with ``restorer`` and write ``output`` in the
    format its suffix names (the input's own), keeping each frame's duration (to the millisecond; a GIF's in
    hundredths of a second, as it stores them), the loop count and the transparency (an alpha channel for APNG and
    WebP, a transparent colour for GIF). An alpha plane is resized to the restored size, not run through the model.
    A WebP is written lossless where its first frame is, else lossy at ``quality``. ``output`` appears only when
    complete (written under a temporary name and renamed). ``on_progress`` follows the frames.

    Raises ``ImageError`` subclasses naming ``name`` (default: ``source``) for an animation that cannot be read
    or written; the model's own errors go up as they are."""
    started = time.perf_counter()
    name = name or str(source)
    kind = animation_format(output.name)
    if kind is None:
        raise VideoEncodeError(f"{name}: {output.name} is not named as an animated GIF, PNG or WebP")
    try:
        image = _open(source, kind)
    except Exception as exc:
        raise VideoDecodeError(f"{name}: not a readable animated {kind.upper()} ({_reason(exc)})") from None
    part = options.frames or FrameRange()
    frames: list[_Frame] = []
    with image:
        loop = image.info.get("loop")
        try:
            total = image.n_frames
        except Exception as exc:
            raise VideoDecodeError(f"{name}: damaged or truncated ({_reason(exc)})") from None
        if options.max_frames is not None and total > options.max_frames:  # Pillow counted them: the file's own
            raise TooManyFrames(f"{name}: {total:,} frames, over the limit of {options.max_frames:,} frames an "
                                "animation (--max-video-frames)")
        stop = min(total, part.stop) if part.stop is not None else total
        timed = part.begins is not None or part.ends is not None
        count = None if timed else max(0, stop - part.start)  # the frames restored, where known ahead
        if count == 0:
            raise VideoDecodeError(f"{name}: --frames {part.start}:{part.stop or ''} holds no frame: the "
                                   f"animation has {total}")
        _check_sizes(image.size, count, kind, options, name)
        clock = _restore_frames(image, part, stop, count, frames, restorer, kind, options, name,
                                lambda: _progress(on_progress, len(frames), count, started))
    if not frames:
        asked = f"--start {float(part.begins or 0):g}" + (f" --duration {float(part.ends - (part.begins or 0)):g}"
                                                          if part.ends is not None else "")
        raise VideoDecodeError(f"{name}: {asked} holds no frame: the animation ends at {float(clock):g} s")
    size = (frames[-1].color.shape[1], frames[-1].color.shape[0])
    has_alpha = any(frame.alpha is not None for frame in frames)
    lossless = kind == "webp" and _webp_lossless(source)
    written_loop = _loop_written(kind, loop)
    with atomic_writer(output) as handle:
        _write(handle, kind, frames, has_alpha, written_loop, quality, lossless, name)
    duration = sum(_stored_duration(kind, frame.duration) for frame in frames) / 1000
    return AnimationResult(len(frames), round(len(frames) / duration, 3) if duration else None, round(duration, 6),
                           kind, "the input's own format", image.size, size, 0,
                           round(time.perf_counter() - started, 3), loop=written_loop, alpha=has_alpha)


def _restore_frames(image: Image.Image, part: FrameRange, stop: int, count: int | None, frames: list[_Frame],
                    restorer: FrameRestorer, kind: AnimationFormat, options: VideoOptions, name: str,
                    progressed: Callable[[], None]) -> Fraction:
    """The frames of ``part`` (up to frame ``stop``) restored into ``frames``, each with its alpha resized to the
    restored size and its duration; returns when the last frame read ends, in seconds."""
    clock = Fraction(0)  # when the frame in hand starts, in seconds
    for index in range(stop):
        if part.after(index, clock):
            break
        duration = _seek(image, index, name)
        if not part.before(index, clock):
            color, alpha = _pixels(image)
            color = restorer.restore_array(color, None, options.restore)
            size = (color.shape[1], color.shape[0])
            _check_output(size, count if count is not None else len(frames) + 1, kind, options, name)
            if alpha is not None:
                alpha = np.asarray(Image.fromarray(alpha).resize(size, Image.Resampling.BILINEAR))
            frames.append(_Frame(color, alpha, duration))
            progressed()
        clock += Fraction(duration).limit_denominator(1_000_000) / 1000
    return clock


def _progress(on_progress: Callable[[VideoProgress], None] | None, done: int, total: int | None,
              started: float) -> None:
    if on_progress is not None:
        elapsed = time.perf_counter() - started
        on_progress(VideoProgress(done, total, round(done / elapsed, 3) if elapsed else 0.0))


def _check_sizes(size: tuple[int, int], frames: int | None, kind: AnimationFormat, options: VideoOptions,
                 name: str) -> None:
    """Refuse, before any model time, frames over ``--max-pixels`` and outputs that ``_check_output`` refuses,
    where the restored size is known ahead (``frames``: how many are restored, None: not known yet)."""
    width, height = size
    if options.max_pixels is not None and width * height > options.max_pixels:
        raise ImageTooLarge(f"{name}: its frames are {width}x{height} pixels, over the limit of "
                            f"{options.max_pixels:,} (--max-pixels)")
    pillow = Image.MAX_IMAGE_PIXELS  # checked again as Pillow decodes each frame after the first, with a warning
    if pillow is not None and width * height > pillow:
        raise ImageTooLarge(f"{name}: its frames are {width}x{height} pixels, over the {pillow:,} that Pillow "
                            "decodes in an animation")
    if options.output_size is not None:
        _check_output(options.output_size(width, height), frames or 1, kind, options, name)


def _check_output(size: tuple[int, int], frames: int, kind: AnimationFormat, options: VideoOptions,
                  name: str) -> None:
    """Refuse restored frames of ``size`` over ``--max-output-pixels`` or the format's side, and ``frames`` of them
    that would take more memory than ``MAX_HELD_BYTES``."""
    check_output_pixels(name, size, options.max_output_pixels)
    side = _MAX_SIDE[kind]
    if side is not None and max(size) > side:
        raise ImageError(f"{name}: an animated {kind.upper()} holds at most {side} pixels a side, not "
                         f"{size[0]}x{size[1]}; ask for a smaller --outscale")
    held = frames * size[0] * size[1] * 4
    if held > MAX_HELD_BYTES:
        raise ImageError(f"{name}: {frames} frames of {size[0]}x{size[1]} would take {held / 2**30:.1f} GiB held "
                         f"in memory, over {MAX_HELD_BYTES / 2**30:.0f} GiB; restore a part (--frames A:B) or ask "
                         "for a smaller --outscale")


def _webp_lossless(path: Path) -> bool:
    """Whether the animated WebP at ``path`` holds its first frame losslessly (a VP8L bitstream, not VP8): its
    restored frames are then written losslessly too. Reads the chunk headers only (RIFF: fourcc, little-endian
    size, data padded to an even length; a frame's ANMF chunk holds 16 bytes of placement, then its own chunks)."""
    with open(path, "rb") as file:
        if file.read(12)[8:] != b"WEBP":
            return False
        end: int | None = None  # where the first frame's chunk ends, once inside it
        while end is None or file.tell() < end:
            head = file.read(8)
            if len(head) < 8:
                return False
            fourcc, size = head[:4], int.from_bytes(head[4:], "little")
            if fourcc in (b"VP8L", b"VP8 ") and end is not None:
                return fourcc == b"VP8L"
            if fourcc == b"ANMF" and end is None:
                end = file.tell() + size
                file.seek(16, 1)
                continue
            file.seek(size + (size & 1), 1)
    return False


def _loop_written(kind: AnimationFormat, loop: object) -> int | None:
    """The loop count the output carries: the input's (0: for ever). A GIF without a loop extension plays once and
    is written without one (None); APNG and WebP always state a count, 0 where the input did not say."""
    if isinstance(loop, int):
        return loop
    return None if kind == "gif" else 0


def _stored_duration(kind: AnimationFormat, milliseconds: float) -> int:
    """A frame's duration as the format stores it, in milliseconds: GIF's in hundredths of a second, the others'
    in whole milliseconds (as Pillow writes them)."""
    return int(round(milliseconds / 10)) * 10 if kind == "gif" else int(round(milliseconds))


def _write(handle: BinaryIO, kind: AnimationFormat, frames: list[_Frame], has_alpha: bool, loop: int | None,
           quality: int, lossless: bool, name: str) -> None:
    """``frames`` written to ``handle`` as ``kind``, with their durations and ``loop``; with ``has_alpha``, every
    frame with an alpha channel (a GIF: pixels under half opacity become its transparent colour, and each frame is
    cleared before the next, as the frames are whole pictures)."""
    pictures = [_picture(frame, has_alpha, kind) for frame in frames]
    settings: dict[str, Any] = {"save_all": True, "append_images": pictures[1:],
                                "duration": [_stored_duration(kind, frame.duration) for frame in frames]}
    if loop is not None:
        settings["loop"] = loop
    if kind == "gif" and has_alpha:
        settings["disposal"] = 2  # the canvas cleared to transparent after each frame: the next one is whole
    if kind == "webp":
        settings.update(quality=quality, lossless=lossless)
    try:
        pictures[0].save(handle, format=_PILLOW[kind], **settings)
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk's (full, read-only): the batch's failure handling tells those apart
        raise VideoEncodeError(f"{name}: writing the animated {kind.upper()} failed ({_reason(exc)})") from None


def _picture(frame: _Frame, has_alpha: bool, kind: AnimationFormat) -> Image.Image:
    if not has_alpha:
        return Image.fromarray(frame.color, "RGB")
    alpha = frame.alpha if frame.alpha is not None else np.full(frame.color.shape[:2], 255, np.uint8)
    if kind == "gif":  # one colour of the palette is transparent: opaque or not, nothing between
        alpha = np.where(alpha >= 128, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack((frame.color, alpha)), "RGBA")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]


__all__ = ["AnimationResult", "animation_format", "is_animated_file", "restore_animation"]
