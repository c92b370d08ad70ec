"""Blending tile outputs into output rows: a partition of unity whose weights are one everywhere but in the
cross-fade bands around interior grid lines, the only pixels accumulated in float32."""

from __future__ import annotations

import numpy as np
import torch

from ...images import full_scale
from .pixels import quantise
from .plan import Tile, TilePlan
from .rows import OutputRows, RowSink
from .staging import Staging


def _ramp(length: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(length, device=device, dtype=torch.float32) + 0.5) / length


class Assembler:
    """Blends tile outputs into output rows; holds only the open cross-fade bands in float32.

    Output rows are finished one *strip* per tile row: strip ``r`` runs from the middle of the
    cross-fade above tile row ``r`` to the middle of the one below it (``OutputRows`` holds them).
    """

    def __init__(self, plan: TilePlan, scale: int, channels: int, out_dtype: np.dtype, device: torch.device,
                 sink: RowSink | None = None, staging: Staging | None = None):
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
        self.strips = OutputRows(self.bounds, width, channels, out_dtype, sink, staging)
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
