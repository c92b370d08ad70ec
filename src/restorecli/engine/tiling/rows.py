"""The output, a strip of rows per tile row: into one array, or handed to a ``RowSink`` as each strip is done,
through a ``Staging`` where the device is staged (``OutputRows``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from .pixels import array_of, tensor_of, torch_dtype
from .staging import Staging


class RowSink(Protocol):
    """Receives the output top to bottom, a strip of finished rows at a time, instead of one whole array."""

    def write(self, rows: np.ndarray) -> None: ...

    def restart(self) -> None:
        """Forget every row received: the image starts again from the top (after an out-of-memory retry)."""


class OutputRows:
    """The output's strips of rows: each is quantised into ``target(row)``, then handed over by ``finish(row)``.

    Without staging the target is the output itself (or the sink's reused buffer), viewed as a tensor. With
    staging (CUDA), two device buffers take turns: when a strip ends, it is copied into one of two pinned host
    buffers on the side stream, and handed over (to the output array or the sink) only when the next strip ends,
    after its copy's event; the model meanwhile goes on. A device buffer is written again only after the copy
    out of it (an event the compute stream waits for), and a pinned buffer only after its strip was handed
    over, so no buffer is read before its copy finished, nor overwritten before it was read.
    """

    def __init__(self, bounds: Sequence[int], width: int, channels: int, dtype: np.dtype, sink: RowSink | None,
                 staging: Staging | None = None):
        self.bounds, self.sink, self.staging = tuple(bounds), sink, staging
        self.out: np.ndarray | None = None
        tallest = max(b - a for a, b in zip(self.bounds, self.bounds[1:]))
        shape = (tallest, width, channels)
        if sink is None:
            self.out = np.empty((self.bounds[-1], width, channels), dtype=dtype)
        self.buffer = np.empty(shape, dtype=dtype) if sink is not None and staging is None else None
        self.pending: tuple[int, object] | None = None  # a strip copied down, not yet handed over
        if staging is not None:
            self.slots = [staging.empty(shape, torch_dtype(dtype)) for _ in range(2)]
            self.pinned = [staging.pinned(shape, torch_dtype(dtype)) for _ in range(2)]
            self.freed: list[object | None] = [None, None]  # copy out of each device buffer done

    def _height(self, row: int) -> int:
        return self.bounds[row + 1] - self.bounds[row]

    def target(self, row: int) -> torch.Tensor:
        """Where strip ``row``'s pixels go (``height x width x channels``, on the device), from its first row."""
        h = self._height(row)
        if self.staging is None:
            array = self.out[self.bounds[row] : self.bounds[row + 1]] if self.out is not None else self.buffer[:h]
            return tensor_of(array)  # type: ignore[index]
        freed = self.freed[row % 2]
        if freed is not None:
            self.staging.wait(freed)  # the copy of strip row - 2 out of this buffer is done
        return self.slots[row % 2][:h]

    def finish(self, row: int) -> None:
        """Strip ``row`` is complete: hand it over (staged: start its copy and hand over the one before)."""
        if self.staging is None:
            if self.sink is not None:
                self.sink.write(self.buffer[: self._height(row)])  # type: ignore[index]
            return
        h, slot = self._height(row), row % 2
        done = self.staging.download(self.pinned[slot][:h], self.slots[slot][:h])
        self.freed[slot] = done
        self._hand_over()
        self.pending = (row, done)

    def _hand_over(self) -> None:
        if self.pending is None or self.staging is None:
            return
        row, done = self.pending
        self.pending = None
        self.staging.synchronize(done)
        rows = array_of(self.pinned[row % 2][: self._height(row)])
        if self.sink is not None:
            self.sink.write(rows)
        else:
            self.out[self.bounds[row] : self.bounds[row + 1]] = rows  # type: ignore[index]

    def close(self, completed: bool) -> None:
        """Hand over the last strip (``completed``), or only wait for copies in flight (after an error)."""
        if self.staging is None:
            return
        if completed:
            self._hand_over()
        self.staging.synchronize()
