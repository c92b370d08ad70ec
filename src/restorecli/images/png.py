"""A PNG encoder fed a strip of rows at a time, so an output never has to be whole in memory.

It writes what OpenCV writes by default (the Sub filter on every row, zlib level 1 with the RLE
strategy: fast, and within a few per cent of the smallest size on photographs), plus what OpenCV
cannot write: the ICC profile (iCCP), EXIF (eXIf) and XMP (an iTXt chunk, as Adobe's XMP specification
places it) chunks, before the image data.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

from .strips import StripWriter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA
_SUB_FILTER = 1
_IDAT_BYTES = 1 << 20  # compressed bytes in each IDAT chunk
_FILTER_BYTES = 1 << 20  # raw bytes filtered per step


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


class PngWriter(StripWriter):
    """Encode a ``width`` x ``height`` image of 1-4 channels (grey, grey+alpha, RGB, RGBA; uint8 or uint16)
    to ``handle``, top to bottom, as strips arrive through ``write``. ``close`` ends the file and
    checks that every row came."""

    FORMAT = "PNG"

    def __init__(self, handle: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype | type,
                 *, exif: bytes | None = None, icc_profile: bytes | None = None, xmp: bytes | None = None,
                 dpi: tuple[float, float] | None = None):
        super().__init__(handle, width, height, channels, dtype)
        self._bpp = channels * self.dtype.itemsize  # bytes per pixel, the Sub filter's stride
        header = struct.pack(">IIBBBBB", width, height, self.dtype.itemsize * 8, _COLOUR_TYPE[channels], 0, 0, 0)
        self._head = PNG_SIGNATURE + png_chunk(b"IHDR", header)
        if icc_profile:
            self._head += png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile))
        if dpi:  # pixels per metre, x then y, unit 1 (the metre)
            self._head += png_chunk(b"pHYs", struct.pack(">IIB", *(round(d / 0.0254) for d in dpi), 1))
        if exif:
            self._head += png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
        if xmp:  # keyword, then no compression, no language tag, no translated keyword
            self._head += png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)
        self._begin()

    def _begin(self) -> None:
        self._compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        self._pending = bytearray()
        self.handle.write(self._head)

    def _append(self, rows: np.ndarray) -> None:
        step = max(1, _FILTER_BYTES // (self.width * self._bpp))  # filter a few rows at a time: bounded copies
        for top in range(0, len(rows), step):
            self._write_chunk(rows[top : top + step])

    def _write_chunk(self, rows: np.ndarray) -> None:
        samples = rows.astype(">u2", copy=False) if self.dtype.itemsize == 2 else rows
        flat = np.ascontiguousarray(samples).view(np.uint8).reshape(len(rows), -1)
        filtered = np.empty((len(rows), flat.shape[1] + 1), dtype=np.uint8)
        filtered[:, 0] = _SUB_FILTER
        filtered[:, 1 : 1 + self._bpp] = flat[:, : self._bpp]
        np.subtract(flat[:, self._bpp :], flat[:, : -self._bpp], out=filtered[:, 1 + self._bpp :])
        self._emit(self._compressor.compress(filtered))

    def _emit(self, data: bytes, final: bool = False) -> None:
        """IDAT chunks of exactly ``_IDAT_BYTES`` (the last one shorter), so the file's bytes do not depend on
        how the rows were split into strips, only on the compressed stream."""
        self._pending += data
        while len(self._pending) >= _IDAT_BYTES:
            self.handle.write(png_chunk(b"IDAT", bytes(self._pending[:_IDAT_BYTES])))
            del self._pending[:_IDAT_BYTES]
        if final and self._pending:
            self.handle.write(png_chunk(b"IDAT", bytes(self._pending)))
            self._pending.clear()

    def _finish(self) -> None:
        self._emit(self._compressor.flush(), final=True)
        self.handle.write(png_chunk(b"IEND", b""))
