"""Tiled inference: overlapping tiles, batched, blended with a partition of unity, assembled in the output dtype.

How a tile is used: its *core* is its share of a regular grid; the network sees a *window* that
extends the core by ``pad`` pixels of context on every side (shifted inwards at the image border,
so every window has the same size and tiles batch). Around each interior grid line, a band of
``2 * band`` pixels is a linear cross-fade between the two neighbouring tiles; everywhere the
weights sum to exactly one. Only the bands are accumulated in float32 (a few rows across the
width, and a few columns down one tile row); every other pixel is quantised on the device and
written straight into the uint8/uint16 output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..errors import TileOutOfMemory
from ..images import full_scale
from .model import LoadedModel
from .device import available_memory, is_out_of_memory

MIN_AUTO_TILE = 32


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 in input pixels
    window: tuple[int, int, int, int]  # y0, y1, x0, x1: what the network sees


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    row_edges: tuple[int, ...]
    col_edges: tuple[int, ...]
    band: int  # half-width of the cross-fade around each interior grid line, input pixels
    tiles: tuple[Tile, ...]

    @property
    def rows(self) -> int:
        return len(self.row_edges) - 1

    @property
    def cols(self) -> int:
        return len(self.col_edges) - 1


@dataclass(frozen=True)
class UpscaleResult:
    image: np.ndarray | None  # H*scale x W*scale x C, same dtype as the input; None when rows went to a sink
    tile: int  # tile size finally used (0: whole image)
    tiles: int  # number of tiles run


class RowSink(Protocol):
    """Receives the output top to bottom, a strip of finished rows at a time, instead of one whole array."""

    def write(self, rows: np.ndarray) -> None: ...

    def restart(self) -> None:
        """Forget every row received: the image starts again from the top (after an out-of-memory retry)."""


TileProgress = Callable[[int, int], None]
"""Called as ``(tiles done, tiles in the plan)`` while an image runs."""


def _edges(length: int, count: int) -> tuple[int, ...]:
    return tuple(round(i * length / count) for i in range(count + 1))


def plan_tiles(height: int, width: int, tile: int, pad: int) -> TilePlan:
    """Split a ``height`` x ``width`` image into a grid of cores no larger than ``tile`` (0: one tile).

    Cores are as equal as possible, so all windows share one size and can run in one batch.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty {width}x{height} image")
    if tile < 0 or pad < 0:
        raise ValueError("tile and pad must be >= 0")
    n_rows = 1 if tile == 0 else math.ceil(height / tile)
    n_cols = 1 if tile == 0 else math.ceil(width / tile)
    rows, cols = _edges(height, n_rows), _edges(width, n_cols)
    core_h = max(b - a for a, b in zip(rows, rows[1:]))
    core_w = max(b - a for a, b in zip(cols, cols[1:]))
    smallest = min(min(b - a for a, b in zip(rows, rows[1:])), min(b - a for a, b in zip(cols, cols[1:])))
    band = min(pad // 2, smallest // 2) if n_rows * n_cols > 1 else 0
    win_h, win_w = min(core_h + 2 * pad, height), min(core_w + 2 * pad, width)
    tiles = []
    for r in range(n_rows):
        y0 = min(max(rows[r] - pad, 0), height - win_h)
        for c in range(n_cols):
            x0 = min(max(cols[c] - pad, 0), width - win_w)
            tiles.append(Tile(r, c, (rows[r], rows[r + 1], cols[c], cols[c + 1]), (y0, y0 + win_h, x0, x0 + win_w)))
    return TilePlan(height, width, rows, cols, band, tuple(tiles))


def _ramp(length: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(length, device=device, dtype=torch.float32) + 0.5) / length


_QUANTISE_ELEMENTS = 1 << 20  # pixels are quantised in chunks of about this many values, to bound temporaries


class _Assembler:
    """Blends tile outputs into output rows; holds only the open cross-fade bands in float32.

    Output rows are finished one *strip* per tile row: strip ``r`` runs from the middle of the
    cross-fade above tile row ``r`` to the middle of the one below it. Strips are views of the whole
    output array, or, with a sink, one reused buffer handed to the sink when its tile row ends.
    """

    def __init__(self, plan: TilePlan, scale: int, channels: int, out_dtype: np.dtype, device: torch.device,
                 sink: RowSink | None = None):
        self.plan, self.s, self.device, self.sink = plan, scale, device, sink
        self.hb = plan.band * scale
        self.channels = channels
        width = plan.width * scale
        self.maxval = full_scale(out_dtype) if np.dtype(out_dtype).kind == "u" else None  # float: no quantising
        self.ramp = _ramp(2 * self.hb, device) if self.hb else None
        # Strip r covers output rows [bounds[r], bounds[r + 1]).
        inner = [edge * scale - self.hb for edge in plan.row_edges[1:-1]]
        self.bounds = (0, *inner, plan.height * scale)
        self.out: np.ndarray | None = None
        self._buffer: np.ndarray | None = None
        if sink is None:
            self.out = np.empty((plan.height * scale, width, channels), dtype=out_dtype)
        else:
            tallest = max(b - a for a, b in zip(self.bounds, self.bounds[1:]))
            self._buffer = np.empty((tallest, width, channels), dtype=out_dtype)
        self.strip = self._strip(0)
        self.band_above: torch.Tensor | None = None  # cross-fade over the grid line above the current tile row
        self.band_below = self._zeros(2 * self.hb, width) if plan.rows > 1 else None
        self.col_band: torch.Tensor | None = None

    def _strip(self, row: int) -> np.ndarray:
        y0, y1 = self.bounds[row], self.bounds[row + 1]
        return self.out[y0:y1] if self.out is not None else self._buffer[: y1 - y0]  # type: ignore[index]

    def _zeros(self, h: int, w: int) -> torch.Tensor:
        return torch.zeros((self.channels, h, w), dtype=torch.float32, device=self.device)

    def _write(self, values: torch.Tensor, y0: int, x0: int, row: int) -> None:
        """Quantise C x h x w ``values`` (any float type) into output rows from ``y0`` (strip ``row``)."""
        if values.numel() == 0:
            return
        h, w = values.shape[1:]
        y0 -= self.bounds[row]
        step = max(1, _QUANTISE_ELEMENTS // max(1, w * self.channels))
        for top in range(0, h, step):
            chunk = values[:, top : top + step].float()
            if self.maxval is not None:
                chunk = chunk.clamp_(0, 1).mul_(self.maxval).round_()
                chunk = chunk.to(torch.uint8 if self.maxval == 255 else torch.int32)
            self.strip[y0 + top : y0 + top + chunk.shape[1], x0 : x0 + w] = chunk.permute(1, 2, 0).cpu().numpy()

    def add(self, tile: Tile, result: torch.Tensor) -> None:
        """Take one tile's network output (C x window*scale) and place its share.

        Only the cross-fade bands are weighted (in float32); the rest is quantised as it is."""
        s, hb, plan = self.s, self.hb, self.plan
        top, bottom = tile.row > 0 and hb, tile.row < plan.rows - 1 and hb
        left, right = tile.col > 0 and hb, tile.col < plan.cols - 1 and hb
        cy0, cy1, cx0, cx1 = (v * s for v in tile.core)
        wy0, wx0 = tile.window[0] * s, tile.window[2] * s
        ry0, ry1 = cy0 - (hb if top else 0), cy1 + (hb if bottom else 0)
        rx0, rx1 = cx0 - (hb if left else 0), cx1 + (hb if right else 0)
        region = result[:, ry0 - wy0 : ry1 - wy0, rx0 - wx0 : rx1 - wx0]
        wx = torch.ones(rx1 - rx0, device=self.device)
        if left:
            wx[: 2 * hb] = self.ramp
        if right:
            wx[-2 * hb :] = 1 - self.ramp
        if top:  # the band across the grid line above: weighted in both directions
            self.band_above[:, :, rx0:rx1] += region[:, : 2 * hb].float() * self.ramp[:, None] * wx  # type: ignore[index]
        if bottom:
            self.band_below[:, :, rx0:rx1] += (region[:, -2 * hb :].float() * (1 - self.ramp)[:, None]  # type: ignore[index]
                                               * wx)
        my0 = cy0 + (hb if top else 0)
        middle = region[:, (2 * hb if top else 0) : region.shape[1] - (2 * hb if bottom else 0)]
        inner_x0 = cx0 + (hb if left else 0)
        inner = middle[:, :, (2 * hb if left else 0) : middle.shape[2] - (2 * hb if right else 0)]
        self._write(inner, my0, inner_x0, tile.row)
        if left:
            assert self.col_band is not None
            self._write(self.col_band + middle[:, :, : 2 * hb].float() * self.ramp, my0, cx0 - hb, tile.row)
        self.col_band = middle[:, :, -2 * hb :].float() * (1 - self.ramp) if right else None

    def end_row(self, row: int) -> None:
        if row > 0 and self.hb:
            self._write(self.band_above, self.plan.row_edges[row] * self.s - self.hb, 0, row)  # type: ignore[arg-type]
        self.band_above = self.band_below
        more = row + 1 < self.plan.rows - 1
        self.band_below = self._zeros(2 * self.hb, self.plan.width * self.s) if more else None
        if self.sink is not None:
            self.sink.write(self.strip)
        if row + 1 < self.plan.rows:
            self.strip = self._strip(row + 1)


def _to_tensor(window: np.ndarray, maxval: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # A copy (inputs may be read-only views); uint16 is widened on the host, since devices support few uint16 ops.
    array = window.astype(np.int32) if window.dtype == np.uint16 else np.array(window)
    tensor = torch.from_numpy(array).to(device)
    return tensor.permute(2, 0, 1).to(torch.float32).div_(maxval).to(dtype)


def _run_plan(
    model: LoadedModel, image: np.ndarray, plan: TilePlan, batch: int, device: torch.device, dtype: torch.dtype,
    sink: RowSink | None, on_tile: TileProgress | None,
) -> np.ndarray | None:
    scale = model.spec.scale
    maxval = full_scale(image.dtype)
    assembler = _Assembler(plan, scale, model.spec.output_channels, image.dtype, device, sink)
    tiles = plan.tiles
    for start in range(0, len(tiles), batch):
        group = tiles[start : start + batch]
        inputs = torch.stack(
            [_to_tensor(image[t.window[0] : t.window[1], t.window[2] : t.window[3]], maxval, device, dtype) for t in group]
        ).contiguous(memory_format=torch.channels_last)
        outputs = model.descriptor(inputs)  # type: ignore[operator]
        for tile, result in zip(group, outputs):
            assembler.add(tile, result)
            if tile.col == plan.cols - 1:
                assembler.end_row(tile.row)
        if on_tile is not None:
            on_tile(start + len(group), len(tiles))
    return assembler.out


def estimate_bytes_per_pixel(model: LoadedModel, dtype: torch.dtype) -> int:
    """A rough upper bound of activation memory per input pixel of a window, for choosing tiles."""
    spec = model.spec
    item = torch.tensor([], dtype=dtype).element_size()
    return item * spec.max_features * (6 + 2 * spec.scale * spec.scale) + 16 * spec.scale * spec.scale


def auto_tile_size(model: LoadedModel, device: torch.device, dtype: torch.dtype, pad: int) -> int:
    """Tile size that fits the device's free memory (or a share of RAM on the CPU)."""
    if not model.spec.tileable:
        return 0
    per_pixel = estimate_bytes_per_pixel(model, dtype)
    side = int(math.sqrt(available_memory(device) / per_pixel)) - 2 * pad
    multiple = max(model.spec.multiple_of, 8)
    return max(MIN_AUTO_TILE, side // multiple * multiple)


def _auto_batch(device: torch.device, tile_bytes: int) -> int:
    """Tiles per network call. Accelerators get as many as fit (up to 8); the CPU gets one, since its
    convolutions already use every core: batches of 4-8 small tiles measured no faster there, and each
    tile in flight costs its full activation memory."""
    if device.type == "cpu":
        return 1
    return int(min(8, max(1, available_memory(device) // max(tile_bytes, 1))))


def upscale(
    model: LoadedModel,
    image: np.ndarray,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    tile: int | None = None,
    pad: int = 16,
    batch: int | None = None,
    sink: RowSink | None = None,
    on_tile: TileProgress | None = None,
) -> UpscaleResult:
    """Run ``model`` over an H x W x C image (uint8, uint16, or float32 in [0, 1]); return the same dtype.

    ``tile=None`` sizes tiles from free memory and halves them on out-of-memory errors;
    ``tile=0`` runs the whole image at once; ``tile=N`` uses N x N cores and raises
    ``TileOutOfMemory`` if they do not fit. ``model`` must already be on ``device`` in ``dtype``.
    With a ``sink``, the output goes to it a strip of rows at a time and is never whole in memory
    (``image`` is then None); the sink is restarted before an out-of-memory retry. ``on_tile(done, total)``
    is called after each batch of tiles (a retry starts counting again, with its own total).
    """
    if image.ndim != 3 or image.shape[2] != model.spec.input_channels:
        raise ValueError(f"expected H x W x {model.spec.input_channels} image, got shape {image.shape}")
    height, width = image.shape[:2]
    auto = tile is None
    size = auto_tile_size(model, device, dtype, pad) if auto else int(tile)  # type: ignore[arg-type]
    if auto and size >= max(height, width):
        size = 0
    per_pixel = estimate_bytes_per_pixel(model, dtype)
    while True:
        plan = plan_tiles(height, width, size, pad)
        first = plan.tiles[0].window
        window_pixels = (first[1] - first[0]) * (first[3] - first[2])
        group = batch or _auto_batch(device, window_pixels * per_pixel)
        try:
            with torch.inference_mode():
                out = _run_plan(model, image, plan, group, device, dtype, sink, on_tile)
            return UpscaleResult(out, size, len(plan.tiles))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if sink is not None:
                sink.restart()
            if not auto:
                raise TileOutOfMemory(
                    f"tile size {size or 'whole image'} does not fit in {device} memory; "
                    "use a smaller --tile or --tile auto"
                ) from None
            smaller = (size or max(height, width)) // 2
            if smaller < MIN_AUTO_TILE // 2:
                raise TileOutOfMemory(f"out of {device} memory even with {smaller * 2} px tiles") from None
            size, batch = smaller, 1
