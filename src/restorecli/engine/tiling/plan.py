"""The tile plan: pure geometry, no torch. Which cores cut the image, which window of context each tile's network
sees, how wide the cross-fades between neighbours are, and which grid computes the fewest pixels within a
memory budget (``choose_grid``; the budget itself comes from ``memory``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..model import ModelSpec

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


def network_window(spec: ModelSpec, height: int, width: int) -> tuple[int, int]:
    """The (height, width) the network runs for an ``height`` x ``width`` window: spandrel pads it up to the
    model's minimum, to a multiple of its ``multiple_of``, and to a square where the model needs one."""
    multiple = max(spec.multiple_of, 1)
    h = -(-max(height, spec.minimum_size) // multiple) * multiple
    w = -(-max(width, spec.minimum_size) // multiple) * multiple
    return (max(h, w), max(h, w)) if spec.square else (h, w)


def _counts(length: int, most: int) -> list[int]:
    """The tile counts (1 to ``most``) worth weighing along a side of ``length`` pixels: of the counts that give the
    same core size (``ceil(length / count)``), and so the same window, the smallest, which computes the fewest
    pixels with the fewest tiles. About 2 x sqrt(length) of them, so every grid that could be best is weighed."""
    smallest: dict[int, int] = {}
    for count in range(1, most + 1):
        smallest.setdefault(-(-length // count), count)
    return sorted(smallest.values())


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
    for rows in _counts(height, max_rows):
        for cols in _counts(width, max_cols):
            if not fits(rows, cols):
                continue
            h, w = window(height, rows), window(width, cols)
            key = (cost(rows, cols)[1], rows * cols, abs(h - w))
            if best is None or key < best[0]:
                best = (key, (rows, cols))
    return best[1] if best is not None else (max_rows, max_cols)
