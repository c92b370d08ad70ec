"""One image through a loaded model: channel adaptation, alpha, and the final resize to the requested scale.

Arrays in, arrays out (uint8, uint16 or float32 in [0, 1]); no files, no printing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch

from ..images.formats import output_size
from .model import LoadedModel
from .resample import ResizeRows
from .tiling import RowSink, TileProgress, upscale

AlphaMode = Literal["model", "resize"]


@dataclass(frozen=True)
class EngineOptions:
    device: torch.device
    dtype: torch.dtype = torch.float32
    tile: int | None = None  # None: auto
    tile_pad: int = 24
    window: int | None = None  # auto tiles' largest window side: the CPU's fastest, measured (tiling.speed)
    batch: int | None = None
    alpha: AlphaMode = "model"


@dataclass(frozen=True)
class Enhanced:
    color: np.ndarray
    alpha: np.ndarray | None
    tile: int  # tile size used for the colour pass


def target_size(model: LoadedModel, width: int, height: int, outscale: float | None) -> tuple[int, int]:
    """The result's (w, h) for a ``width`` x ``height`` input at ``outscale`` (default: the model's published scale)."""
    return output_size(width, height, outscale if outscale is not None else model.spec.default_outscale)


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize H x W (x C) to ``size`` (w, h): area filter when shrinking, Lanczos when enlarging."""
    if (array.shape[1], array.shape[0]) == size:
        return array
    shrinking = size[0] < array.shape[1]
    out = cv2.resize(array, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)
    return out[:, :, None] if array.ndim == 3 and out.ndim == 2 else out


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]


class _ShrinkRows:
    """Shrinks strips ``factor`` times with ``resize`` (the area filter: the mean of each factor x factor
    block) before passing them on, holding rows back until a whole band of ``factor`` has come, so the
    pixels are those of shrinking the whole result at once."""

    def __init__(self, sink: RowSink, factor: int):
        self.sink = sink
        self.factor = factor
        self.pending: np.ndarray | None = None

    def write(self, rows: np.ndarray) -> None:
        if self.pending is not None:
            rows = np.concatenate((self.pending, rows))
        usable = rows.shape[0] // self.factor * self.factor
        self.pending = rows[usable:].copy() if usable < rows.shape[0] else None
        if usable:
            size = (rows.shape[1] // self.factor, usable // self.factor)
            self.sink.write(resize(rows[:usable], size))

    def restart(self) -> None:
        self.pending = None
        self.sink.restart()


def _resizer(sink: RowSink, native: tuple[int, int], target: tuple[int, int]) -> RowSink:
    """``sink`` behind what turns strips of the model's ``native`` (w, h) output into rows of the ``target``
    size: nothing at the native size; k-row block means for a whole-number shrink (``--outscale 2`` on a 4x
    model: exactly ``resize``); otherwise the separable area/Lanczos-4 filter of ``ResizeRows``."""
    if native == target:
        return sink
    factor = native[0] // target[0]
    if factor >= 1 and native == (target[0] * factor, target[1] * factor):
        return _ShrinkRows(sink, factor)
    return ResizeRows(sink, native, target)


class _Strips:
    """A sink that keeps every strip, for the whole-array path."""

    def __init__(self):
        self.parts: list[np.ndarray] = []

    def write(self, rows: np.ndarray) -> None:
        self.parts.append(rows)

    def restart(self) -> None:
        self.parts.clear()


def resample(array: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """The final resize of a model's result (H x W or H x W x C) to the ``target`` (w, h) size: what
    ``enhance_rows`` does a strip at a time, done to the whole array."""
    native = (array.shape[1], array.shape[0])
    if native == target:
        return array
    strips = _Strips()
    _resizer(strips, native, target).write(array if array.ndim == 3 else array[:, :, None])
    out = np.concatenate(strips.parts)
    return out if array.ndim == 3 else out[:, :, 0]


class _WithAlpha:
    """Appends the matching rows of a finished alpha plane (H x W, at the output size) to each strip of
    colour rows, so the sink receives colour and alpha planes together."""

    def __init__(self, sink: RowSink, alpha: np.ndarray):
        self.sink = sink
        self.alpha = alpha
        self.row = 0

    def write(self, rows: np.ndarray) -> None:
        alpha = self.alpha[self.row : self.row + rows.shape[0], :, None]
        self.sink.write(np.concatenate((rows, alpha), axis=2))
        self.row += rows.shape[0]

    def restart(self) -> None:
        self.row = 0
        self.sink.restart()


class _Plane:
    """A sink that gathers the strips of a one-plane result into one H x W array."""

    def __init__(self, height: int, width: int, dtype: np.dtype):
        self.array = np.empty((height, width), dtype)
        self.row = 0

    def write(self, rows: np.ndarray) -> None:
        self.array[self.row : self.row + rows.shape[0]] = rows[:, :, 0]
        self.row += rows.shape[0]

    def restart(self) -> None:
        self.row = 0


class _GreyRows:
    """Passes RGB strips on to a sink as grey, the way ``enhance`` turns an RGB result back to grey."""

    def __init__(self, sink: RowSink):
        self.sink = sink

    def write(self, rows: np.ndarray) -> None:
        self.sink.write(_to_gray(rows))

    def restart(self) -> None:
        self.sink.restart()


def _run(model: LoadedModel, planes: np.ndarray, options: EngineOptions, on_tile: TileProgress | None = None,
         sink: RowSink | None = None) -> tuple[np.ndarray | None, int]:
    """Run planes with 1 or 3 channels through the model, adapting to its channel count. With a ``sink``
    the result goes there a strip at a time (and None is returned in its place)."""
    wanted = model.spec.input_channels
    kwargs = dict(device=options.device, dtype=options.dtype, tile=options.tile, pad=options.tile_pad,
                  batch=options.batch, on_tile=on_tile, window=options.window)
    channels = planes.shape[2]
    if channels == wanted:
        result = upscale(model, planes, sink=sink, **kwargs)
        return result.image, result.tile
    if channels == 1 and wanted == 3:
        result = upscale(model, np.repeat(planes, 3, axis=2), sink=_GreyRows(sink) if sink else None, **kwargs)
        return (None if sink else _to_gray(result.image)), result.tile  # type: ignore[arg-type]
    if channels == 3 and wanted == 1 and sink is None:
        outs = [upscale(model, planes[:, :, c : c + 1], **kwargs) for c in range(3)]
        return np.concatenate([o.image for o in outs], axis=2), outs[0].tile  # type: ignore[misc]
    raise ValueError(f"cannot feed a {channels}-channel image to a {wanted}-channel model"
                     + (" a strip at a time" if sink else ""))


def enhance(
    model: LoadedModel,
    color: np.ndarray,
    alpha: np.ndarray | None,
    options: EngineOptions,
    outscale: float | None = None,
    on_tile: TileProgress | None = None,
) -> Enhanced:
    """Upscale ``color`` (H x W x 1 or 3) and ``alpha`` (H x W or None) to ``outscale`` (default: the
    model's published scale). Grey stays grey; the dtype is kept. ``on_tile`` follows each pass's tiles."""
    height, width = color.shape[:2]
    target = target_size(model, width, height, outscale)
    out, tile = _run(model, color, options, on_tile)
    out_alpha = _upscale_alpha(model, alpha, options, target, on_tile) if alpha is not None else None
    return Enhanced(color=resample(out, target), alpha=out_alpha, tile=tile)


def _upscale_alpha(model: LoadedModel, alpha: np.ndarray, options: EngineOptions, target: tuple[int, int],
                   on_tile: TileProgress | None) -> np.ndarray:
    """The alpha plane at ``target`` size: run through the model (``--alpha model``) or resized to the
    model's scale (``--alpha resize``), then resized like the colour planes."""
    size = (alpha.shape[1] * model.spec.scale, alpha.shape[0] * model.spec.scale)
    if options.alpha == "resize":
        return resample(resize(alpha, size), target)
    # Through the model a strip at a time (as grey, for an RGB model), so only one plane is ever whole
    plane = _Plane(size[1], size[0], alpha.dtype)
    _run(model, alpha[:, :, None], options, on_tile, plane)
    return resample(plane.array, target)


def streamable(model: LoadedModel, color: np.ndarray) -> bool:
    """Whether ``enhance_rows`` can produce this result: the model takes these planes as they are (or grey into
    an RGB model) and gives back as many. Any scale and any alpha can: the final resize is done a band of rows
    at a time, and the alpha plane is upscaled whole first (a quarter of an RGBA result, half of a grey one)
    and joined to the colour strips."""
    channels, wanted = color.shape[2], model.spec.input_channels
    return model.spec.output_channels == wanted and (channels == wanted or (channels == 1 and wanted == 3))


def enhance_rows(model: LoadedModel, color: np.ndarray, options: EngineOptions, sink: RowSink,
                 on_tile: TileProgress | None = None, outscale: float | None = None,
                 alpha: np.ndarray | None = None) -> int:
    """What ``enhance`` returns, sent to ``sink`` a strip of rows at a time (colour planes, then alpha when
    there is one), so the colour result is never whole in memory. Only for what ``streamable`` accepts.
    Returns the tile size used."""
    if not streamable(model, color):
        raise ValueError("this image needs the whole-array path (a channel split)")
    height, width = color.shape[:2]
    target = target_size(model, width, height, outscale)
    if alpha is not None:
        sink = _WithAlpha(sink, _upscale_alpha(model, alpha, options, target, on_tile))
    native = (width * model.spec.scale, height * model.spec.scale)
    return _run(model, color, options, on_tile, _resizer(sink, native, target))[1]
