"""A TIFF encoder fed a strip of rows at a time, so an output never has to be whole in memory.

Baseline strip TIFF: Adobe Deflate (``deflate``'s, as for PNG) after the horizontal predictor, which libtiff
and every TIFF reader decode, 8 or 16 bits, grey, grey+alpha, RGB or RGBA. It also carries the ICC profile, the
XMP packet, the IPTC-IIM records and the EXIF of the source. The EXIF comes as a small TIFF of its own (what
Pillow's ``Exif.tobytes`` makes); it is written first, as the start of this file, so every offset inside it
stays valid: the camera's tags of its first directory are copied into the image's directory, which points at its
EXIF and GPS sub-directories where they already are.

Classic TIFF addresses 4 GiB. An image that could need more (its samples alone, before compression, as GDAL's
BIGTIFF=IF_NEEDED judges) is written as BigTIFF, with 64-bit offsets, which libtiff (so OpenCV and GDAL), Pillow
and tifffile read. Its EXIF directories are then rewritten in BigTIFF's form after the pixels, since a classic
EXIF block cannot be its header; a maker note's private offsets may not survive that move, as with other editors.

Why not tifffile (checked with tifffile 2026.3.3, which scikit-image brings): it writes strips from an iterator it
pulls, where the tiler pushes rows to a writer as they are done (an adapter would need a thread and a queue per
image), and it has no way to write an EXIF or GPS directory (it reads ExifTag 34665, but ``extratags`` are flat
values, and its header is its own, so a camera's EXIF block cannot start the file), so a TIFF output would lose
the camera's EXIF that every other format keeps. Its deflate and horizontal predictor would do (without
imagecodecs, through zlib and numpy); the rest of this module is what it lacks.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import BinaryIO

import numpy as np

from .deflate import zlib_stream
from .strips import StripWriter

_STRIP_BYTES = 1 << 19  # uncompressed bytes per strip
_DEFLATE, _HORIZONTAL_PREDICTOR = 8, 2
_BYTE, _SHORT, _LONG, _RATIONAL, _UNDEFINED, _LONG8 = 1, 3, 4, 5, 7, 16
_FIELD_TYPES = range(1, 13)  # BYTE .. DOUBLE: an entry of any other type is not copied
# Bytes per value of each classic field type, BYTE .. DOUBLE and IFD
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
# Bytes per number, where a field type's values are numbers whose byte order matters (a RATIONAL is two LONGs)
_NUMBER_SIZE = {3: 2, 4: 4, 5: 4, 8: 2, 9: 4, 10: 4, 11: 4, 12: 8, 13: 4}
_SUB_DIRECTORIES = {34665, 34853, 40965}  # EXIF, GPS and (inside EXIF) interoperability directories
_CLASSIC_LIMIT = 1 << 32
# Tags that describe the pixels: ours, never copied from the EXIF's first directory.
IMAGE_TAGS = {254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320, 322, 323, 324,
               325, 338, 339, 340, 341, 513, 514, 530, 531, 532, 34675}


class TiffWriter(StripWriter):
    """Encode a ``width`` x ``height`` image of 1-4 channels (grey, grey+alpha, RGB, RGBA; uint8 or uint16)
    to ``handle`` (seekable: the directory goes at the end and the header points to it), top to bottom,
    as strips arrive through ``write``. ``close`` ends the file and checks that every row came."""

    FORMAT = "TIFF"

    def __init__(self, handle: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype | type,
                 *, exif: bytes | None = None, icc_profile: bytes | None = None, xmp: bytes | None = None,
                 iptc: bytes | None = None, big: bool | None = None, dpi: tuple[float, float] | None = None):
        """``big``: BigTIFF (True), classic TIFF (False), or whichever the image's size needs (None)."""
        super().__init__(handle, width, height, channels, dtype)
        if self._start is None:
            raise OSError("a TIFF needs a seekable stream: its header points to a directory written last")
        self.icc_profile, self.xmp, self.iptc, self.dpi = icc_profile, xmp, iptc, dpi
        self._exif = exif[6:] if exif and exif.startswith(b"Exif\x00\x00") else exif
        if self._exif and (len(self._exif) < 8 or self._exif[:4] not in (b"II*\x00", b"MM\x00*")):
            self._exif = None  # not a TIFF-structured EXIF block: leave it out rather than write a broken file
        self._exif_order = ">" if self._exif and self._exif[:2] == b"MM" else "<"
        self.rows_per_strip = max(1, min(height, _STRIP_BYTES // (width * channels * self.dtype.itemsize)))
        if big is None:
            samples = width * height * channels * self.dtype.itemsize
            metadata = sum(len(part or b"") for part in (self._exif, icc_profile, xmp, iptc))
            strips = -(-height // self.rows_per_strip)
            # Deflate's worst case adds well under 1/512 to incompressible data; the strip tables 8 bytes a strip
            big = samples + samples // 512 + metadata + 8 * strips + (1 << 16) >= _CLASSIC_LIMIT
        self.big = big
        # A classic file takes the byte order of the EXIF block it starts with; a BigTIFF is little-endian, the
        # order Pillow reads (it does not open big-endian BigTIFFs), its EXIF values turned round to suit
        self._order = "<" if big else self._exif_order
        self._begin()

    def _pack(self, fmt: str, *values: int) -> bytes:
        return struct.pack(self._order + fmt, *values)

    def _begin(self) -> None:
        self._offsets: list[int] = []
        self._counts: list[int] = []
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        # The header's directory offset is patched on close. With EXIF, a classic file's header *is* its block.
        if self.big:
            self.handle.write(self._pack("2sHHHQ", self._order_mark(), 43, 8, 0, 0))
        else:
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
        data = zlib_stream(samples)  # as for PNG: fast, and small after the predictor (26.6 MB vs Pillow's 52)
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
                if len(raw) == 12 and tag not in IMAGE_TAGS and kind in _FIELD_TYPES:
                    entries[tag] = raw
            return entries
        except struct.error:
            return {}  # a damaged EXIF block: the image is still worth writing

    def _exif_directory(self, offset: int | None = None, depth: int = 0) -> dict:
        """A directory of the classic EXIF block as {tag: (type, count, value bytes)}, its sub-directories (EXIF,
        GPS, interoperability) as nested dicts; the first directory when ``offset`` is None. Damage drops what it
        touches, not the image."""
        block, order = self._exif, self._exif_order
        if not block:
            return {}
        try:
            if offset is None:
                (offset,) = struct.unpack_from(order + "I", block, 4)
            (count,) = struct.unpack_from(order + "H", block, offset)
            tags: dict = {}
            for index in range(count):
                tag, kind, number, inline = struct.unpack_from(order + "HHI4s", block, offset + 2 + 12 * index)
                if kind not in _TYPE_SIZE:
                    continue
                if tag in _SUB_DIRECTORIES:
                    if depth < 2:
                        tags[tag] = self._exif_directory(struct.unpack(order + "I", inline)[0], depth + 1)
                    continue
                length = _TYPE_SIZE[kind] * number
                if length > 4:
                    (where,) = struct.unpack(order + "I", inline)
                    inline = block[where : where + length]
                if len(inline) >= length:
                    tags[tag] = (kind, number, self._reorder(inline[:length], kind))
            return tags
        except struct.error:
            return {}

    def _reorder(self, value: bytes, kind: int) -> bytes:
        """An EXIF value's bytes in the file's byte order (each number turned round where the two differ)."""
        unit = _NUMBER_SIZE.get(kind, 1)
        if unit == 1 or self._exif_order == self._order:
            return value
        return np.frombuffer(value, f"{self._exif_order}u{unit}").astype(f"{self._order}u{unit}").tobytes()

    def _write_directory(self, tags: dict, ready: dict[int, bytes] | None = None) -> int:
        """Write a directory at the end of the file: its sub-directories first, then the values too long to sit in
        their entries, then the directory itself; returns its offset. ``ready``: entries copied as they are, for
        tags ``tags`` does not set (a classic file's camera tags, whose offsets point into its EXIF header)."""
        word, inline = ("Q", 8) if self.big else ("I", 4)
        entries: dict[int, bytes] = {}
        for tag, item in tags.items():
            if isinstance(item, dict):  # a sub-directory (BigTIFF: LONG8, which Pillow reads and IFD8 it skips)
                kind, count, value = _LONG8, 1, self._pack("Q", self._write_directory(item))
            else:
                kind, count, value = item
            if len(value) > inline:
                self._align()
                where = self._tell()
                self.handle.write(value)
                value = self._pack(word, where)
            entries[tag] = self._pack(f"HH{word}", tag, kind, count) + value.ljust(inline, b"\x00")
        for tag, entry in (ready or {}).items():
            entries.setdefault(tag, entry)
        self._align()
        directory = self._tell()
        self.handle.write(self._pack("Q" if self.big else "H", len(entries)))
        for tag in sorted(entries):
            self.handle.write(entries[tag])
        self.handle.write(self._pack(word, 0))
        return directory

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
        if self.dpi:  # X/YResolution, per inch (ResolutionUnit 2): over what the EXIF's first directory says
            for tag, density in zip((282, 283), self.dpi):
                ratio = Fraction(density).limit_denominator(10_000)
                tags[tag] = (_RATIONAL, 1, self._pack("II", ratio.numerator, ratio.denominator))
            tags[296] = self._array(_SHORT, [2])
        if self.big:
            tags[273] = (_LONG8, len(self._offsets), self._pack(f"{len(self._offsets)}Q", *self._offsets))
            tags[279] = (_LONG8, len(self._counts), self._pack(f"{len(self._counts)}Q", *self._counts))
            camera = {tag: value for tag, value in self._exif_directory().items() if tag not in IMAGE_TAGS}
            directory = self._write_directory({**camera, **tags})
        else:
            directory = self._write_directory(tags, self._exif_entries())
        end = self.handle.tell()
        self.handle.seek(self._start + (8 if self.big else 4))  # type: ignore[operator]
        self.handle.write(self._pack("Q" if self.big else "I", directory))
        self.handle.seek(end)
