"""Resizing a result to any ``--outscale`` a strip of rows at a time, with the pixels of resizing it whole.

Separable, as OpenCV's resize is: each strip is first resized across (OpenCV's area filter when shrinking,
Lanczos-4 when enlarging, in float32; rows stay independent when only the width changes), then output rows are
weighted sums of the rows held so far: exact area coverage when shrinking, the 8-tap Lanczos-4 kernel centred as
OpenCV centres it (edge rows repeated) when enlarging. The weights of an output row depend on its index only, so
any split into strips gives the same sums, and the whole-array path (``enhance.resample``) runs the same code
on one strip. Rows no output row still needs are let go, so memory follows the strip, not the image.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .tiling import RowSink

_LANCZOS_TAPS = 8
_ROWS_PER_STEP = 32  # output rows summed at a time: bounds the temporaries


def _lanczos4(distance: np.ndarray) -> np.ndarray:
    x = np.abs(distance)
    return np.where(x < 4, np.sinc(x) * np.sinc(x / 4), 0.0)


def vertical_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``target`` output rows, the source rows it sums (target x taps, clamped to the image) and
    their weights (summing to 1): area coverage when shrinking, Lanczos-4 when enlarging, one row when equal."""
    out = np.arange(target, dtype=np.float64)
    if target == source:
        return out.astype(np.int64)[:, None], np.ones((target, 1))
    ratio = source / target
    if target < source:  # output row y covers source rows [y * ratio, (y + 1) * ratio)
        taps = math.ceil(ratio) + 1
        first = np.floor(out * ratio).astype(np.int64)
        rows = first[:, None] + np.arange(taps)
        lo, hi = out[:, None] * ratio, (out[:, None] + 1) * ratio
        weights = np.clip(np.minimum(rows + 1, hi) - np.maximum(rows, lo), 0, None) / ratio
    else:  # centred as OpenCV centres it: output row y sits at source row (y + 0.5) * ratio - 0.5
        centre = (out + 0.5) * ratio - 0.5
        rows = np.floor(centre).astype(np.int64)[:, None] + np.arange(-3, _LANCZOS_TAPS - 3)
        weights = _lanczos4(rows - centre[:, None])
    weights = weights / weights.sum(axis=1, keepdims=True)
    return np.clip(rows, 0, source - 1), weights


class ResizeRows:
    """A sink in front of ``sink`` that resizes the strips of a ``source`` (w, h) image to ``target`` (w, h),
    passing each output row on as soon as the source rows it needs have come."""

    def __init__(self, sink: RowSink, source: tuple[int, int], target: tuple[int, int]):
        self.sink, self.source, self.target = sink, source, target
        self.rows, self.weights = vertical_taps(source[1], target[1])
        self.last_needed = self.rows.max(axis=1)  # an output row can be made once this source row is in
        self._reset()

    def _reset(self) -> None:
        self.held: np.ndarray | None = None  # resized-across source rows from self.first on, float32
        self.first = 0  # source index of held[0]
        self.done = 0  # output rows passed on

    def restart(self) -> None:
        self._reset()
        self.sink.restart()

    def _across(self, rows: np.ndarray) -> np.ndarray:
        width = self.target[0]
        floats = rows.astype(np.float32)
        if width == rows.shape[1]:
            return floats if floats.ndim == 3 else floats[:, :, None]
        shrinking = width < rows.shape[1]
        out = cv2.resize(floats, (width, rows.shape[0]), interpolation=cv2.INTER_AREA if shrinking
                         else cv2.INTER_LANCZOS4)
        return out[:, :, None] if out.ndim == 2 else out

    def write(self, rows: np.ndarray) -> None:
        for top in range(0, len(rows), _ROWS_PER_STEP):  # a few rows at a time: bounded float copies
            self._take(rows[top : top + _ROWS_PER_STEP])

    def _take(self, rows: np.ndarray) -> None:
        across = self._across(rows)
        self.held = across if self.held is None else np.concatenate((self.held, across))
        arrived = self.first + len(self.held)  # source rows [0, arrived) have come
        ready = self.target[1] if arrived == self.source[1] else int(np.searchsorted(self.last_needed, arrived))
        maxval = np.iinfo(rows.dtype).max if rows.dtype.kind == "u" else None
        while self.done < ready:
            stop = min(ready, self.done + _ROWS_PER_STEP)
            index = self.rows[self.done : stop] - self.first
            weights = self.weights[self.done : stop].astype(np.float32)
            sums = np.zeros((stop - self.done, *self.held.shape[1:]), np.float32)
            for tap in range(index.shape[1]):  # in tap order, whatever the strips: the same sums
                sums += weights[:, tap, None, None] * self.held[index[:, tap]]
            if maxval is not None:
                sums = np.clip(np.rint(sums), 0, maxval)
            self.sink.write(sums.astype(rows.dtype))
            self.done = stop
        if self.done < self.target[1]:  # let go of the rows no later output row needs
            keep = int(self.rows[self.done, 0]) - self.first  # the lowest row left: rows only move down
            if keep > 0:
                self.held, self.first = self.held[keep:], self.first + keep
        else:
            self.held = None
