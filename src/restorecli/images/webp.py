"""A WebP writer fed a strip of rows at a time.

libwebp encodes whole pictures only, so the rows are gathered, but straight into the picture Pillow hands to it
(4 bytes a pixel, its own layout for RGB and RGBA) rather than into an output array that Pillow would then copy:
the result is held once, not twice. WebP has 8 bits a sample: 16-bit rows are rounded to 8 on the way in; grey
is written as RGB, as WebP has no grey form.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
from PIL import Image

from .formats import FORMATS
from .pixels import to_8bit
from .strips import StripWriter

WEBP_MAX_SIDE: int = FORMATS["webp"].max_side  # type: ignore[assignment]  # libwebp's limit on either side


class WebpWriter(StripWriter):
    """Encode a ``width`` x ``height`` image of 1-4 channels (grey, grey+alpha, RGB, RGBA; uint8 or uint16)
    to ``handle`` as lossy WebP at ``quality``, with its EXIF, ICC profile and XMP. Nothing is written before
    ``close``, so an unseekable stream can be restarted too."""

    FORMAT = "WebP"

    def __init__(self, handle: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype | type,
                 *, quality: int = 95, exif: bytes | None = None, icc_profile: bytes | None = None,
                 xmp: bytes | None = None):
        super().__init__(handle, width, height, channels, dtype)
        if max(width, height) > WEBP_MAX_SIDE:
            raise ValueError(f"WebP holds at most {WEBP_MAX_SIDE} pixels a side, not {width}x{height}; "
                             "write PNG or TIFF")
        self.quality = quality
        self.metadata = {key: value for key, value in (("exif", exif), ("icc_profile", icc_profile), ("xmp", xmp))
                         if value}
        self._begin()

    def _begin(self) -> None:
        self._picture: Image.Image | None = Image.new("RGBA" if self.channels in (2, 4) else "RGB",
                                                      (self.width, self.height))

    def restart(self) -> None:
        self.rows_written = 0
        self._begin()

    def _append(self, rows: np.ndarray) -> None:
        rows = to_8bit(rows)
        if self.channels <= 2:  # grey (and alpha) as RGB (and alpha)
            rows = np.concatenate([np.repeat(rows[:, :, :1], 3, axis=2), rows[:, :, 1:]], axis=2)
        assert self._picture is not None
        self._picture.paste(Image.fromarray(np.ascontiguousarray(rows)), (0, self.rows_written))

    def _finish(self) -> None:
        assert self._picture is not None
        self._picture.save(self.handle, format="WEBP", quality=self.quality, **self.metadata)
        self._picture = None
