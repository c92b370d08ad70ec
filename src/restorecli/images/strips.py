"""What the PNG and TIFF writers share: an image of known size, fed top to bottom a strip of rows at a time."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np


class StripWriter:
    """Checks the rows a format writer receives and that all of them came. Subclasses encode:
    ``_append(rows)`` for each strip (n x width x channels), ``_finish()`` once all rows are in,
    ``_begin()`` to write the start of the file (again after ``restart``, which rewinds the stream)."""

    FORMAT = "image"

    def __init__(self, handle: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype | type):
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
            raise ValueError(f"{self.FORMAT} output holds 8- or 16-bit samples, not {dtype}")
        if not 1 <= channels <= 4:
            raise ValueError(f"{self.FORMAT} output holds 1 to 4 channels, not {channels}")
        if width < 1 or height < 1:
            raise ValueError(f"cannot write an empty {width}x{height} {self.FORMAT}")
        self.handle, self.width, self.height, self.channels, self.dtype = handle, width, height, channels, dtype
        self.rows_written = 0
        self._start = handle.tell() if handle.seekable() else None  # where this file begins in the stream

    def write(self, rows: np.ndarray) -> None:
        """Append rows: an n x width x channels array (n x width for one channel) of the writer's dtype."""
        if rows.ndim == 2:
            rows = rows[:, :, None]
        if rows.shape[1:] != (self.width, self.channels) or rows.dtype != self.dtype:
            raise ValueError(f"rows of shape {rows.shape} and type {rows.dtype} do not fit a "
                             f"{self.width}-wide {self.channels}-channel {self.dtype} {self.FORMAT}")
        if self.rows_written + len(rows) > self.height:
            raise ValueError(f"more than the {self.height} rows of this {self.FORMAT}")
        if len(rows):
            self._append(rows)
            self.rows_written += len(rows)

    def restart(self) -> None:
        """Start the file again from its first byte (the handle must be seekable): the rows come again."""
        if self._start is None:
            raise OSError(f"cannot restart a {self.FORMAT} written to an unseekable stream")
        self.handle.seek(self._start)
        self.handle.truncate()
        self.rows_written = 0
        self._begin()

    def close(self) -> None:
        """End the file; raises ``ValueError`` if rows are missing."""
        if self.rows_written != self.height:
            raise ValueError(f"{self.FORMAT} ended after {self.rows_written} of {self.height} rows")
        self._finish()

    def _begin(self) -> None:
        raise NotImplementedError

    def _append(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError
