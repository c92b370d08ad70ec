"""Tiled inference: overlapping tiles, batched, blended with a partition of unity, assembled in the output dtype.

How a tile is used: its *core* is its share of a regular grid; the network sees a *window* that
extends the core by ``pad`` pixels of context on every side (shifted inwards at the image border,
so every window has the same size and tiles batch). Around each interior grid line, a band of
``2 * band`` pixels is a linear cross-fade between the two neighbouring tiles; everywhere the
weights sum to exactly one. Only the bands are accumulated in float32 (a few rows across the
width, and a few columns down one tile row); every other pixel is quantised on the device and
written straight into the uint8/uint16 output.

Automatic tiles (``auto_plan``) are sized from the measured activation memory per pixel of the model's family
(``activation``): an image that fits the memory budget runs whole, and one that does not is cut into the grid
that computes the fewest pixels among those whose windows fit.

On CUDA the host never waits for the model: input windows go up from pinned buffers, and each finished strip of
output rows comes down into pinned buffers, on a side stream, while the next tiles compute (``_Uploads``,
``_Strips``). On the CPU the strips are the output array itself, and none of that machinery is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..errors import TileOutOfMemory
from ..images import full_scale
from .activation import bytes_per_pixel
from .device import available_memory, is_out_of_memory
from .model import LoadedModel, ModelSpec

MIN_AUTO_TILE = 32

_UINT16 = getattr(torch, "uint16", None)  # torch 2.3 and later; before it, 16-bit pixels go through int32


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

    @property
    def tile(self) -> int:
        """The largest core side (0: the whole image in one tile), what ``--tile`` would be for this grid."""
        if len(self.tiles) == 1:
            return 0
        return max(max(b - a for a, b in zip(edges, edges[1:])) for edges in (self.row_edges, self.col_edges))

    @property
    def computed_ratio(self) -> float:
        """Pixels the network computes (the windows' areas, summed) per pixel of the image: 1.0 for one tile."""
        y0, y1, x0, x1 = self.tiles[0].window
        return len(self.tiles) * (y1 - y0) * (x1 - x0) / (self.height * self.width)


@dataclass(frozen=True)
class UpscaleResult:
    image: np.ndarray | None  # H*scale x W*scale x C, same dtype as the input; None when rows went to a sink
    tile: int  # tile size finally used (0: whole image)
    tiles: int  # number of tiles run
    computed_ratio: float = 1.0  # pixels computed per image pixel by the plan finally used


class RowSink(Protocol):
    """Receives the output top to bottom, a strip of finished rows at a time, instead of one whole array."""

    def write(self, rows: np.ndarray) -> None: ...

    def restart(self) -> None:
        """Forget every row received: the image starts again from the top (after an out-of-memory retry)."""


TileProgress = Callable[[int, int], None]
"""Called as ``(tiles done, tiles in the plan)`` while an image runs."""


def _edges(length: int, count: int) -> tuple[int, ...]:
    return tuple(round(i * length / count) for i in range(count + 1))


def plan_grid(height: int, width: int, rows: int, cols: int, pad: int) -> TilePlan:
    """Split a ``height`` x ``width`` image into ``rows`` x ``cols`` cores, as equal as possible, so all windows
    share one size and can run in one batch."""
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty {width}x{height} image")
    if not (1 <= rows <= height and 1 <= cols <= width) or pad < 0:
        raise ValueError(f"cannot cut {width}x{height} into {rows} x {cols} tiles with pad {pad}")
    row_edges, col_edges = _edges(height, rows), _edges(width, cols)
    core_h = max(b - a for a, b in zip(row_edges, row_edges[1:]))
    core_w = max(b - a for a, b in zip(col_edges, col_edges[1:]))
    smallest = min(min(b - a for a, b in zip(row_edges, row_edges[1:])),
                   min(b - a for a, b in zip(col_edges, col_edges[1:])))
    band = min(pad // 2, smallest // 2) if rows * cols > 1 else 0
    win_h, win_w = min(core_h + 2 * pad, height), min(core_w + 2 * pad, width)
    tiles = []
    for r in range(rows):
        y0 = min(max(row_edges[r] - pad, 0), height - win_h)
        for c in range(cols):
            x0 = min(max(col_edges[c] - pad, 0), width - win_w)
            tiles.append(Tile(r, c, (row_edges[r], row_edges[r + 1], col_edges[c], col_edges[c + 1]),
                              (y0, y0 + win_h, x0, x0 + win_w)))
    return TilePlan(height, width, row_edges, col_edges, band, tuple(tiles))


def plan_tiles(height: int, width: int, tile: int, pad: int) -> TilePlan:
    """Split a ``height`` x ``width`` image into a grid of cores no larger than ``tile`` (0: one tile)."""
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty {width}x{height} image")
    if tile < 0 or pad < 0:
        raise ValueError("tile and pad must be >= 0")
    rows = 1 if tile == 0 else math.ceil(height / tile)
    cols = 1 if tile == 0 else math.ceil(width / tile)
    return plan_grid(height, width, rows, cols, pad)


# --- choosing tiles ---------------------------------------------------------------------------------------------


def network_window(spec: ModelSpec, height: int, width: int) -> tuple[int, int]:
    """The (height, width) the network runs for an ``height`` x ``width`` window: spandrel pads it up to the
    model's minimum, to a multiple of its ``multiple_of``, and to a square where the model needs one."""
    multiple = max(spec.multiple_of, 1)
    h = -(-max(height, spec.minimum_size) // multiple) * multiple
    w = -(-max(width, spec.minimum_size) // multiple) * multiple
    return (max(h, w), max(h, w)) if spec.square else (h, w)


def choose_grid(height: int, width: int, pad: int, per_pixel: float, budget: float,
                spec: ModelSpec | None = None) -> tuple[int, int]:
    """The (rows, cols) grid whose network windows (see ``network_window``) fit ``budget`` bytes at ``per_pixel``
    bytes each and, among those, compute the fewest pixels (then: fewer tiles, then squarer windows). (1, 1),
    the whole image without padding, where it fits. Cores stay at least ``MIN_AUTO_TILE`` pixels; when nothing
    fits, the finest such grid (the out-of-memory retry in ``upscale`` goes on from there)."""

    def window(length: int, count: int) -> int:
        return min(-(-length // count) + 2 * pad, length)

    def cost(rows: int, cols: int) -> tuple[int, int]:
        h, w = window(height, rows), window(width, cols)
        if spec is not None:
            h, w = network_window(spec, h, w)
        return h * w, rows * cols * h * w  # one window's pixels, all windows' pixels

    def fits(rows: int, cols: int) -> bool:
        return cost(rows, cols)[0] * per_pixel <= budget

    if fits(1, 1):
        return 1, 1
    max_rows, max_cols = max(1, height // MIN_AUTO_TILE), max(1, width // MIN_AUTO_TILE)
    best: tuple[tuple[int, int, int], tuple[int, int]] | None = None
    for rows in range(1, max_rows + 1):
        if not fits(rows, max_cols):
            continue
        low, high = 1, max_cols  # the fewest columns that fit: windows only narrow as columns are added
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(rows, middle) else (middle + 1, high)
        for cols in range(low, min(low + 3, max_cols + 1)):  # rounding to a multiple can favour one more column
            h, w = window(height, rows), window(width, cols)
            key = (cost(rows, cols)[1], rows * cols, abs(h - w))
            if best is None or key < best[0]:
                best = (key, (rows, cols))
    return best[1] if best is not None else (max_rows, max_cols)


def auto_plan(model: LoadedModel, height: int, width: int, *, device: torch.device, dtype: torch.dtype,
              pad: int) -> TilePlan:
    """The plan ``upscale`` runs with automatic tiles: one tile for models that cannot be tiled or images that fit
    ``available_memory(device)`` at ``bytes_per_pixel``; else ``choose_grid``'s grid."""
    if not model.spec.tileable:
        return plan_grid(height, width, 1, 1, pad)
    per_pixel = bytes_per_pixel(model, dtype)
    rows, cols = choose_grid(height, width, pad, per_pixel, _budget(model, device), model.spec)
    return plan_grid(height, width, rows, cols, pad)


def _budget(model: LoadedModel, device: torch.device) -> int:
    """Bytes for a window's activations: what the model's back-end states for its own device (a Vulkan GPU's
    heap), else ``available_memory`` of the tiler's ``device``."""
    memory = model.runner.capabilities.memory
    return memory if memory is not None else available_memory(device)


def _auto_batch(device: torch.device, tile_bytes: int, model: LoadedModel | None = None) -> int:
    """Tiles per network call. Accelerators get as many as fit (up to 8, and at most what ``model``'s back-end
    takes in one call); the CPU gets one, since its convolutions already use every core: batches of 4-8 small
    tiles measured no faster there, and each tile in flight costs its full activation memory."""
    if device.type == "cpu":
        return 1
    limit = (model.runner.capabilities.max_batch if model is not None else None) or 8
    budget = _budget(model, device) if model is not None else available_memory(device)
    return int(min(8, limit, max(1, budget // max(tile_bytes, 1))))


# --- quantising -------------------------------------------------------------------------------------------------

_QUANTISE_ELEMENTS = 1 << 18  # values quantised per pass: their float32 chunk (1 MiB) stays in cache across passes


def quantise(values: torch.Tensor, out: torch.Tensor, maxval: float | None) -> None:
    """Write C x h x w network output ``values`` (float of any width, in [0, 1]) into ``out`` (h x w x C, on the
    same device, or on the host for a device whose output is not staged): ``round(clamp(v, 0, 1) * maxval)``
    for an integer ``out`` (round half to even, as ``torch.round``), the values as they are for a float ``out``
    (``maxval`` None).

    One chunk of rows at a time, in float32, in place: float32 ``values`` themselves (they are overwritten:
    callers pass what they own, a network output or a band), others in a float32 copy of the chunk; scaled,
    rounded and clamped (clamping after rounding gives the same integers, since rounding is monotonic and keeps
    0 and ``maxval``), then cast into ``out``. The chunk (1 MiB) stays in cache across those passes, and the
    values are read in their own layout (the network's channels_last is the rows' h x w x C)."""
    source = values.permute(1, 2, 0)
    if maxval is None:
        out.copy_(source)
        return
    height, width, channels = source.shape
    if height == 0 or width == 0:
        return
    step = max(1, _QUANTISE_ELEMENTS // (width * channels))
    for top in range(0, height, step):
        chunk = source[top : top + step].float()  # float32 values: the values themselves; others: a copy
        chunk.mul_(maxval).round_().clamp_(0, maxval)
        if out.dtype == torch.int16:  # 16-bit pixels on a torch without uint16: int32, then the same bits
            chunk = chunk.to(torch.int32)
        out[top : top + step].copy_(chunk)


def _tensor_of(array: np.ndarray) -> torch.Tensor:
    """A tensor viewing ``array``'s memory; uint16 as int16 bits on a torch without uint16."""
    if array.dtype == np.uint16 and _UINT16 is None:
        return torch.from_numpy(array.view(np.int16))
    return torch.from_numpy(array)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    if np.dtype(dtype) == np.uint16:
        return _UINT16 if _UINT16 is not None else torch.int16
    return torch.from_numpy(np.empty(0, dtype)).dtype


def staged(device: torch.device) -> bool:
    """Whether copies between host and ``device`` go through pinned buffers on a side stream, overlapping the
    model: on CUDA. Elsewhere the host's arrays are used as they are (the CPU) or copied plainly (MPS)."""
    return device.type == "cuda"


# --- output rows ------------------------------------------------------------------------------------------------


class _Strips:
    """The output's strips of rows: each is quantised into ``target(row)``, then handed over by ``finish(row)``.

    Without staging the target is the output itself (or the sink's reused buffer), viewed as a tensor. With
    staging (CUDA), two device buffers take turns: when a strip ends, it is copied into one of two pinned host
    buffers on a side stream, and handed over (to the output array or the sink) only when the next strip ends,
    after its copy's event; the model meanwhile goes on. A device buffer is written again only after the copy
    out of it (an event the compute stream waits for), and a pinned buffer only after its strip was handed
    over, so no buffer is read before its copy finished, nor overwritten before it was read.
    """

    def __init__(self, bounds: Sequence[int], width: int, channels: int, dtype: np.dtype, device: torch.device,
                 sink: RowSink | None):
        self.bounds, self.sink, self.device = tuple(bounds), sink, device
        self.out: np.ndarray | None = None
        tallest = max(b - a for a, b in zip(self.bounds, self.bounds[1:]))
        shape = (tallest, width, channels)
        if sink is None:
            self.out = np.empty((self.bounds[-1], width, channels), dtype=dtype)
        self.buffer = np.empty(shape, dtype=dtype) if sink is not None and not staged(device) else None
        self.pending: tuple[int, torch.cuda.Event] | None = None  # a strip copied down, not yet handed over
        if staged(device):
            self.compute = torch.cuda.current_stream(device)
            self.copies = torch.cuda.Stream(device)
            self.slots = [torch.empty(shape, dtype=_torch_dtype(dtype), device=device) for _ in range(2)]
            for slot in self.slots:
                slot.record_stream(self.copies)  # read by the side stream's copies too: not freed before them
            self.pinned = [torch.empty(shape, dtype=_torch_dtype(dtype), pin_memory=True) for _ in range(2)]
            self.freed: list[torch.cuda.Event | None] = [None, None]  # copy out of each device buffer done

    def _height(self, row: int) -> int:
        return self.bounds[row + 1] - self.bounds[row]

    def target(self, row: int) -> torch.Tensor:
        """Where strip ``row``'s pixels go (``height x width x channels``, on the device), from its first row."""
        h = self._height(row)
        if not staged(self.device):
            array = self.out[self.bounds[row] : self.bounds[row + 1]] if self.out is not None else self.buffer[:h]
            return _tensor_of(array)  # type: ignore[index]
        freed = self.freed[row % 2]
        if freed is not None:
            self.compute.wait_event(freed)  # the copy of strip row - 2 out of this buffer is done
        return self.slots[row % 2][:h]

    def finish(self, row: int) -> None:
        """Strip ``row`` is complete: hand it over (staged: start its copy and hand over the one before)."""
        if not staged(self.device):
            if self.sink is not None:
                self.sink.write(self.buffer[: self._height(row)])  # type: ignore[index]
            return
        h, slot = self._height(row), row % 2
        ready = torch.cuda.Event()
        ready.record(self.compute)
        self.copies.wait_event(ready)
        with torch.cuda.stream(self.copies):
            self.pinned[slot][:h].copy_(self.slots[slot][:h], non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copies)
        self.freed[slot] = done
        self._hand_over()
        self.pending = (row, done)

    def _hand_over(self) -> None:
        if self.pending is None:
            return
        row, done = self.pending
        self.pending = None
        done.synchronize()
        rows = self.pinned[row % 2][: self._height(row)].numpy()
        if _UINT16 is None and rows.dtype == np.int16:
            rows = rows.view(np.uint16)
        if self.sink is not None:
            self.sink.write(rows)
        else:
            self.out[self.bounds[row] : self.bounds[row + 1]] = rows  # type: ignore[index]

    def close(self, completed: bool) -> None:
        """Hand over the last strip (``completed``), or only wait for copies in flight (after an error)."""
        if not staged(self.device):
            return
        if completed:
            self._hand_over()
        self.copies.synchronize()


def _ramp(length: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(length, device=device, dtype=torch.float32) + 0.5) / length


class _Assembler:
    """Blends tile outputs into output rows; holds only the open cross-fade bands in float32.

    Output rows are finished one *strip* per tile row: strip ``r`` runs from the middle of the
    cross-fade above tile row ``r`` to the middle of the one below it (``_Strips`` holds them).
    """

    def __init__(self, plan: TilePlan, scale: int, channels: int, out_dtype: np.dtype, device: torch.device,
                 sink: RowSink | None = None):
        self.plan, self.s, self.device = plan, scale, device
        self.hb = plan.band * scale
        self.channels = channels
        width = plan.width * scale
        self.maxval = full_scale(out_dtype) if np.dtype(out_dtype).kind == "u" else None  # float: no quantising
        self.ramp = _ramp(2 * self.hb, device) if self.hb else None
        self.fade = 1 - self.ramp if self.ramp is not None else None
        # Strip r covers output rows [bounds[r], bounds[r + 1]).
        inner = [edge * scale - self.hb for edge in plan.row_edges[1:-1]]
        self.bounds = (0, *inner, plan.height * scale)
        self.strips = _Strips(self.bounds, width, channels, out_dtype, device, sink)
        self.strip = self.strips.target(0)
        self.band_above: torch.Tensor | None = None  # cross-fade over the grid line above the current tile row
        self.band_below = self._zeros(2 * self.hb, width) if plan.rows > 1 else None
        self.col_band: torch.Tensor | None = None

    @property
    def out(self) -> np.ndarray | None:
        return self.strips.out

    def _zeros(self, h: int, w: int) -> torch.Tensor:
        # C x h x w over h x w x C memory, the layout of the network's (channels_last) output and of the rows
        return torch.zeros((h, w, self.channels), dtype=torch.float32, device=self.device).permute(2, 0, 1)

    def _write(self, values: torch.Tensor, y0: int, x0: int, row: int) -> None:
        """Quantise C x h x w ``values`` (any float type) into output rows from ``y0`` (strip ``row``)."""
        h, w = values.shape[1:]
        y0 -= self.bounds[row]
        quantise(values, self.strip[y0 : y0 + h, x0 : x0 + w], self.maxval)

    def add(self, tile: Tile, result: torch.Tensor) -> None:
        """Take one tile's network output (C x window*scale) and place its share.

        Only the cross-fade bands are weighted (in float32); the rest is quantised as it is. Each band is
        weighted with the same float32 operations, in the same order, as before they were fused (so the same
        pixels), with one temporary instead of three."""
        s, hb, plan = self.s, self.hb, self.plan
        top, bottom = tile.row > 0 and hb, tile.row < plan.rows - 1 and hb
        left, right = tile.col > 0 and hb, tile.col < plan.cols - 1 and hb
        cy0, cy1, cx0, cx1 = (v * s for v in tile.core)
        wy0, wx0 = tile.window[0] * s, tile.window[2] * s
        ry0, ry1 = cy0 - (hb if top else 0), cy1 + (hb if bottom else 0)
        rx0, rx1 = cx0 - (hb if left else 0), cx1 + (hb if right else 0)
        region = result[:, ry0 - wy0 : ry1 - wy0, rx0 - wx0 : rx1 - wx0]
        wx = None
        if left or right:
            wx = torch.ones(rx1 - rx0, device=self.device)
            if left:
                wx[: 2 * hb] = self.ramp
            if right:
                wx[-2 * hb :] = self.fade
        if top:  # the band across the grid line above: weighted in both directions
            self.band_above[:, :, rx0:rx1] += self._weighted(region[:, : 2 * hb], self.ramp[:, None], wx)  # type: ignore[index]
        if bottom:
            self.band_below[:, :, rx0:rx1] += self._weighted(region[:, -2 * hb :], self.fade[:, None], wx)  # type: ignore[index]
        my0 = cy0 + (hb if top else 0)
        middle = region[:, (2 * hb if top else 0) : region.shape[1] - (2 * hb if bottom else 0)]
        inner_x0 = cx0 + (hb if left else 0)
        inner = middle[:, :, (2 * hb if left else 0) : middle.shape[2] - (2 * hb if right else 0)]
        self._write(inner, my0, inner_x0, tile.row)
        if left:
            assert self.col_band is not None
            self._write(torch.mul(middle[:, :, : 2 * hb], self.ramp).add_(self.col_band), my0, cx0 - hb, tile.row)
        self.col_band = torch.mul(middle[:, :, -2 * hb :], self.fade) if right else None

    @staticmethod
    def _weighted(part: torch.Tensor, down: torch.Tensor, across: torch.Tensor | None) -> torch.Tensor:
        # float32 (the ramps' type) whatever the network's: as part.float() * down * across
        weighted = torch.mul(part, down)
        return weighted.mul_(across) if across is not None else weighted

    def end_row(self, row: int) -> None:
        if row > 0 and self.hb:
            self._write(self.band_above, self.plan.row_edges[row] * self.s - self.hb, 0, row)  # type: ignore[arg-type]
        self.band_above = self.band_below
        more = row + 1 < self.plan.rows - 1
        self.band_below = self._zeros(2 * self.hb, self.plan.width * self.s) if more else None
        self.strips.finish(row)
        if row + 1 < self.plan.rows:
            self.strip = self.strips.target(row + 1)


# --- input windows ----------------------------------------------------------------------------------------------


def _host_dtype(dtype: np.dtype) -> np.dtype:
    # 16-bit pixels are widened to int32 only on a torch without uint16, which cannot convert them
    return np.dtype(np.int32) if np.dtype(dtype) == np.uint16 and _UINT16 is None else np.dtype(dtype)


def _to_batch(raw: torch.Tensor, maxval: float, dtype: torch.dtype) -> torch.Tensor:
    """N x h x w x C pixels (on the device) to the network's N x C x h x w input in ``dtype``, channels_last
    (the pixels' own layout, so no copy is needed for it): ``float32(pixel) / maxval``, then ``dtype``."""
    batch = raw.to(torch.float32, copy=True).div_(maxval).to(dtype)
    return batch.permute(0, 3, 1, 2)


def window_batch(image: np.ndarray, tiles: Sequence[Tile], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The windows of ``tiles`` as the network's input batch, as ``_run_plan`` builds it off CUDA."""
    windows = [image[t.window[0] : t.window[1], t.window[2] : t.window[3]] for t in tiles]
    host = np.stack(windows).astype(_host_dtype(image.dtype), copy=False)
    return _to_batch(torch.from_numpy(host).to(device), full_scale(image.dtype), dtype)


class _Uploads:
    """Input batches for CUDA: windows gathered into one of two pinned buffers in turn, copied up on a side stream
    (the compute stream waits for that copy's event, not the host), converted on the device. A pinned buffer
    is refilled only after the copy out of it two batches ago has finished."""

    def __init__(self, device: torch.device):
        self.device = device
        self.compute = torch.cuda.current_stream(device)
        self.copies = torch.cuda.Stream(device)
        self.pinned: list[torch.Tensor | None] = [None, None]
        self.sent: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def __call__(self, image: np.ndarray, tiles: Sequence[Tile], dtype: torch.dtype) -> torch.Tensor:
        y0, y1, x0, x1 = tiles[0].window
        shape = (len(tiles), y1 - y0, x1 - x0, image.shape[2])
        slot, self.turn = self.turn, 1 - self.turn
        if self.sent[slot] is not None:
            self.sent[slot].synchronize()  # type: ignore[union-attr]
        host = self.pinned[slot]
        if host is None or tuple(host.shape) != shape:
            host = self.pinned[slot] = torch.empty(shape, dtype=_torch_dtype(_host_dtype(image.dtype)),
                                                   pin_memory=True)
        view = host.numpy()
        for i, t in enumerate(tiles):
            np.copyto(view[i], image[t.window[0] : t.window[1], t.window[2] : t.window[3]], casting="unsafe")
        with torch.cuda.stream(self.copies):
            raw = torch.empty(shape, dtype=host.dtype, device=self.device)
            raw.copy_(host, non_blocking=True)
            sent = torch.cuda.Event()
            sent.record(self.copies)
        self.sent[slot] = sent
        self.compute.wait_event(sent)
        raw.record_stream(self.compute)  # allocated on the side stream, used (and freed) on the compute stream
        return _to_batch(raw, full_scale(image.dtype), dtype)

    def close(self) -> None:
        self.copies.synchronize()


def _run_plan(
    model: LoadedModel, image: np.ndarray, plan: TilePlan, batch: int, device: torch.device, dtype: torch.dtype,
    sink: RowSink | None, on_tile: TileProgress | None,
) -> np.ndarray | None:
    scale = model.spec.scale
    assembler = _Assembler(plan, scale, model.spec.output_channels, image.dtype, device, sink)
    uploads = _Uploads(device) if staged(device) else None
    tiles = plan.tiles
    runner = model.runner
    completed = False
    try:
        for start in range(0, len(tiles), batch):
            group = tiles[start : start + batch]
            inputs = uploads(image, group, dtype) if uploads is not None else window_batch(image, group, device, dtype)
            outputs = runner.run(inputs)
            for tile, result in zip(group, outputs):
                assembler.add(tile, result)
                if tile.col == plan.cols - 1:
                    assembler.end_row(tile.row)
            if on_tile is not None:
                on_tile(start + len(group), len(tiles))
        completed = True
    finally:
        assembler.strips.close(completed)
        if uploads is not None:
            uploads.close()
    return assembler.out


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

    ``tile=None`` plans tiles from free memory (``auto_plan``) and halves them on out-of-memory errors;
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
    if auto:
        plan = auto_plan(model, height, width, device=device, dtype=dtype, pad=pad)
        size = plan.tile
    else:
        size = int(tile)  # type: ignore[arg-type]
        plan = plan_tiles(height, width, size, pad)
    per_pixel = bytes_per_pixel(model, dtype)
    while True:
        y0, y1, x0, x1 = plan.tiles[0].window
        window_h, window_w = network_window(model.spec, y1 - y0, x1 - x0)
        group = batch or _auto_batch(device, window_h * window_w * per_pixel, model)
        try:
            with torch.inference_mode():
                out = _run_plan(model, image, plan, group, device, dtype, sink, on_tile)
            return UpscaleResult(out, size, len(plan.tiles), plan.computed_ratio)
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
            plan = plan_tiles(height, width, size, pad)
