"""A TIFF encoder fed a strip of rows at a time, so an output never has to be whole in memory.

Baseline strip TIFF: Adobe Deflate (zlib level 1, RLE strategy) after the horizontal predictor, which libtiff
and every TIFF reader decode, 8 or 16 bits, grey, grey+alpha, RGB or RGBA. It also carries the ICC profile, the
XMP packet, the IPTC-IIM records and the EXIF of the source. The EXIF comes as a small TIFF of its own (what
Pillow's ``Exif.tobytes`` makes); it is written first, as the start of this file, so every offset inside it
stays valid: the camera's tags of its first directory are copied into the image's directory, which points at its
EXIF and GPS sub-directories where they already are.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

from .strips import StripWriter

_STRIP_BYTES = 1 << 19  # uncompressed bytes per strip
_DEFLATE, _HORIZONTAL_PREDICTOR = 8, 2
_BYTE, _SHORT, _LONG, _UNDEFINED = 1, 3, 4, 7
_FIELD_TYPES = range(1, 13)  # BYTE .. DOUBLE: an entry of any other type is not copied
# Tags that describe the pixels: ours, never copied from the EXIF's first directory.
_IMAGE_TAGS = {254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320, 322, 323, 324,
               325, 338, 339, 340, 341, 513, 514, 530, 531, 532, 34675}


class TiffWriter(StripWriter):
    """Encode a ``width`` x ``height`` image of 1-4 channels (grey, grey+alpha, RGB, RGBA; uint8 or uint16)
    to ``handle`` (seekable: the directory goes at the end and the header points to it), top to bottom,
    as strips arrive through ``write``. ``close`` ends the file and checks that every row came."""

    FORMAT = "TIFF"

    def __init__(self, handle: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype | type,
                 *, exif: bytes | None = None, icc_profile: bytes | None = None, xmp: bytes | None = None,
                 iptc: bytes | None = None):
        super().__init__(handle, width, height, channels, dtype)
        if self._start is None:
            raise OSError("a TIFF needs a seekable stream: its header points to a directory written last")
        self.icc_profile, self.xmp, self.iptc = icc_profile, xmp, iptc
        self._exif = exif[6:] if exif and exif.startswith(b"Exif\x00\x00") else exif
        self._order = "<"
        if self._exif and (len(self._exif) < 8 or self._exif[:4] not in (b"II*\x00", b"MM\x00*")):
            self._exif = None  # not a TIFF-structured EXIF block: leave it out rather than write a broken file
        if self._exif and self._exif[:2] == b"MM":
            self._order = ">"  # the file takes the byte order of the EXIF block it starts with
        self.rows_per_strip = max(1, min(height, _STRIP_BYTES // (width * channels * self.dtype.itemsize)))
        self._begin()

    def _pack(self, fmt: str, *values: int) -> bytes:
        return struct.pack(self._order + fmt, *values)

    def _begin(self) -> None:
        self._offsets: list[int] = []
        self._counts: list[int] = []
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        # The header's directory offset is patched on close. With EXIF, its block *is* the header.
        self.handle.write(self._exif if self._exif else self._pack("2sHI", self._order_mark(), 42, 0))
        self._align()

    def _order_mark(self) -> bytes:
        return b"II" if self._order == "<" else b"MM"

    def _tell(self) -> int:
        return self.handle.tell() - self._start  # type: ignore[operator]

    def _align(self) -> None:
        if self._tell() % 2:
            self.handle.write(b"\x00")

    def _append(self, rows: np.ndarray) -> None:
        while len(rows):
            take = min(len(rows), self.rows_per_strip - self._pending_rows)
            self._pending.append(rows[:take].copy())  # the caller may reuse its buffer for the next rows
            self._pending_rows += take
            rows = rows[take:]
            if self._pending_rows == self.rows_per_strip:
                self._flush_strip()

    def _flush_strip(self) -> None:
        if not self._pending_rows:
            return
        strip = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        wide = strip.dtype.newbyteorder(self._order)
        samples = strip.astype(wide)  # a copy, differenced in place: each sample minus its left neighbour
        samples[:, 1:] -= strip[:, :-1].astype(wide)
        compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)  # as for PNG: fast, and small after
        data = compressor.compress(samples) + compressor.flush()       # the predictor (26.6 MB vs Pillow's 52)
        self._offsets.append(self._tell())
        self._counts.append(len(data))
        self.handle.write(data)
        self._align()

    def _array(self, kind: int, values: list[int]) -> tuple[int, int, bytes]:
        """A tag's (type, count, value bytes) for a list of SHORT or LONG values."""
        return kind, len(values), self._pack(f"{len(values)}{'H' if kind == _SHORT else 'I'}", *values)

    def _exif_entries(self) -> dict[int, bytes]:
        """The EXIF block's first-directory entries that are not about the pixels, as raw 12-byte entries.
        Their offsets point into the block, which starts this file, so they stay valid."""
        if not self._exif:
            return {}
        try:
            (first,) = struct.unpack_from(self._order + "I", self._exif, 4)
            (count,) = struct.unpack_from(self._order + "H", self._exif, first)
            entries = {}
            for index in range(count):
                raw = self._exif[first + 2 + 12 * index : first + 14 + 12 * index]
                tag, kind = struct.unpack_from(self._order + "HH", raw)
                if len(raw) == 12 and tag not in _IMAGE_TAGS and kind in _FIELD_TYPES:
                    entries[tag] = raw
            return entries
        except struct.error:
            return {}  # a damaged EXIF block: the image is still worth writing

    def _finish(self) -> None:
        self._flush_strip()
        bits = 8 * self.dtype.itemsize
        tags: dict[int, tuple[int, int, bytes]] = {
            256: self._array(_LONG, [self.width]),
            257: self._array(_LONG, [self.height]),
            258: self._array(_SHORT, [bits] * self.channels),
            259: self._array(_SHORT, [_DEFLATE]),
            262: self._array(_SHORT, [2 if self.channels >= 3 else 1]),  # RGB or black-is-zero grey
            273: self._array(_LONG, self._offsets),
            277: self._array(_SHORT, [self.channels]),
            278: self._array(_LONG, [self.rows_per_strip]),
            279: self._array(_LONG, self._counts),
            284: self._array(_SHORT, [1]),  # samples interleaved
            317: self._array(_SHORT, [_HORIZONTAL_PREDICTOR]),
        }
        if self.channels in (2, 4):
            tags[338] = self._array(_SHORT, [2])  # the extra sample is unassociated alpha
        if self.icc_profile:
            tags[34675] = (_UNDEFINED, len(self.icc_profile), self.icc_profile)
        if self.xmp:
            tags[700] = (_BYTE, len(self.xmp), self.xmp)  # XMLPacket
        if self.iptc:
            tags[33723] = (_UNDEFINED, len(self.iptc), self.iptc)  # IPTC-NAA records
        copied = self._exif_entries()
        entries: dict[int, bytes] = {}
        for tag, (kind, count, value) in tags.items():  # values over 4 bytes go before the directory
            if len(value) > 4:
                self._align()
                where = self._tell()
                self.handle.write(value)
                value = self._pack("I", where)
            entries[tag] = self._pack("HHI", tag, kind, count) + value.ljust(4, b"\x00")
        for tag, raw in copied.items():
            entries.setdefault(tag, raw)
        self._align()
        directory = self._tell()
        self.handle.write(self._pack("H", len(entries)))
        for tag in sorted(entries):
            self.handle.write(entries[tag])
        self.handle.write(self._pack("I", 0))
        end = self.handle.tell()
        self.handle.seek(self._start + 4)  # type: ignore[operator]
        self.handle.write(self._pack("I", directory))
        self.handle.seek(end)
