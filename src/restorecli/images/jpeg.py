"""A JPEG encoder fed a strip of rows at a time, so an output never has to be whole in memory.

libjpeg (through Pillow) encodes whole images only. But a baseline JPEG with a restart marker after every row of
MCUs is a chain of independent pieces: each restart interval starts its DC predictions afresh and ends on a byte
boundary. So bands of rows are encoded one at a time with the same settings, and the file is the first band's
headers (the frame's height patched to the whole image's) followed by every band's entropy-coded data, joined by
the restart marker that falls between them. Bands are a multiple of 128 rows: each then spans a multiple of 8
MCU rows (MCUs are 8 or 16 pixels tall), so its own markers, which cycle RST0..RST7 from RST0, are already the
ones the whole image has there, the marker before the next band is always RST7, and chroma subsampling never
straddles two bands. The file is byte for byte what Pillow writes for the whole image with
``restart_marker_rows=1`` (about 2 bytes more per 16 rows than without markers).

Alpha is composited onto white and 16-bit samples are rounded to 8 bits, as JPEG holds neither. An XMP packet
goes in an APP1 segment of its own after Pillow's EXIF, as Adobe's XMP specification places it (a packet over the
65502 bytes one segment holds as "extended XMP", see ``xmp``), and IPTC-IIM records in an APP13 segment as
Photoshop's image resource 0x0404.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image

from . import xmp as extended_xmp
from .formats import FORMATS
from .pixels import flatten_alpha, to_8bit
from .strips import StripWriter

JPEG_MAX_SIDE: int = FORMATS["jpg"].max_side  # type: ignore[assignment]  # libjpeg's limit on either side
_BAND_ROWS = 128  # the unit bands are made of (see above)
_BAND_BYTES = 1 << 22  # Pillow holds 4 bytes a pixel: bounds its copy of each band
_SOF0, _SOS, _APP0, _APP15 = 0xC0, 0xDA, 0xE0, 0xEF
XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"  # how an APP1 segment says it holds XMP
_PHOTOSHOP_APP13 = b"Photoshop 3.0\x00"
_SEGMENT_MAX_BYTES = 65535 - 2  # a segment's payload: its length field counts itself
XMP_MAX_BYTES = _SEGMENT_MAX_BYTES - len(XMP_APP1)


def _fitting_exif(exif: bytes) -> bytes | None:
    """``exif`` (as Pillow writes it, "Exif" header first) within one APP1 segment: where it is larger (a
    scanner's long description, a big maker note from a TIFF), its largest values are left out, one at a time,
    until it fits; None where nothing that fits is left. Pillow refuses a larger block, failing the image."""
    data = Image.Exif()
    data.load(exif)
    directories = [data, data.get_ifd(ExifTags.IFD.Exif)]
    while len(exif) > _SEGMENT_MAX_BYTES:
        sizes = [(len(value) if isinstance(value, (bytes, str, tuple)) else 0, directory, tag)
                 for directory in directories for tag, value in directory.items() if tag != ExifTags.IFD.Exif]
        largest = max(sizes, key=lambda entry: entry[0], default=None)
        if largest is None or largest[0] == 0:
            return None
        del largest[1][largest[2]]
        exif = data.tobytes()
    return exif


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (2 + len(payload)).to_bytes(2, "big") + payload
_RST7, _EOI = b"\xff\xd7", b"\xff\xd9"


def _segments(data: bytes) -> tuple[int, int, int]:
    """Where the application segments (APPn) end, where the baseline frame header (SOF0) starts and where the
    scan's entropy-coded data starts."""
    apps_end, frame, at = -1, -1, 2  # after SOI
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if apps_end < 0 and not _APP0 <= marker <= _APP15:
            apps_end = at
        if marker == _SOF0:
            frame = at
        at += 2 + length
        if marker == _SOS:
            if frame < 0:
                break
            return apps_end, frame, at
    raise ValueError("the JPEG encoder wrote no baseline frame and scan")  # not expected from Pillow's settings


class JpegWriter(StripWriter):
    """Encode a ``width`` x ``height`` image of 1-4 channels (grey, grey+alpha, RGB, RGBA; uint8 or uint16) to
    ``handle`` as a baseline JPEG at ``quality``, top to bottom, as strips arrive through ``write``. Any stream
    will do (nothing is sought). ``close`` ends the file and checks that every row came."""

    FORMAT = "JPEG"

    def __init__(self, handle: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype | type,
                 *, quality: int = 95, exif: bytes | None = None, icc_profile: bytes | None = None,
                 xmp: bytes | None = None, iptc: bytes | None = None, dpi: tuple[float, float] | None = None):
        super().__init__(handle, width, height, channels, dtype)
        if width > JPEG_MAX_SIDE or height > JPEG_MAX_SIDE:
            raise ValueError(f"a JPEG holds at most {JPEG_MAX_SIDE} pixels a side, not {width}x{height}; "
                             "write PNG or TIFF (--format png)")
        self._settings: dict[str, object] = {"quality": quality, "restart_marker_rows": 1}
        exif = _fitting_exif(exif) if exif and len(exif) > _SEGMENT_MAX_BYTES else exif
        self._metadata = {key: value for key, value in (("exif", exif), ("icc_profile", icc_profile), ("dpi", dpi))
                          if value}  # the density goes to the JFIF header, in whole dots per inch
        self._extra = b""  # segments of our own, after Pillow's APPn
        if xmp and len(xmp) <= XMP_MAX_BYTES:
            self._extra += _segment(0xE1, XMP_APP1 + xmp)
        elif xmp:  # too large for one segment: extended XMP, a main packet pointing to chunks of the rest
            main, chunks = extended_xmp.split(xmp, XMP_MAX_BYTES)
            self._extra += _segment(0xE1, XMP_APP1 + main) + b"".join(_segment(0xE1, chunk) for chunk in chunks)
        if iptc:  # as Photoshop keeps them: image resource 0x0404 in an APP13 segment
            resource = b"8BIM\x04\x04\x00\x00" + len(iptc).to_bytes(4, "big") + iptc + bytes(len(iptc) % 2)
            if len(_PHOTOSHOP_APP13) + len(resource) <= _SEGMENT_MAX_BYTES:
                self._extra += _segment(0xED, _PHOTOSHOP_APP13 + resource)
        self._band = max(1, _BAND_BYTES // (width * 4 * _BAND_ROWS)) * _BAND_ROWS
        self._begin()

    def _begin(self) -> None:
        self._held: np.ndarray | None = None  # rows short of a whole unit, waiting for the next strip
        self._started = False

    def _append(self, rows: np.ndarray) -> None:
        if self._held is not None:  # complete the held unit first
            take = _BAND_ROWS - len(self._held)
            filled, rows = np.concatenate([self._held, rows[:take]]), rows[take:]
            self._held = None
            if len(filled) < _BAND_ROWS:
                self._held = filled
                return
            self._encode(filled)
        whole = len(rows) // _BAND_ROWS * _BAND_ROWS
        for top in range(0, whole, self._band):
            self._encode(rows[top : min(top + self._band, whole)])
        if whole < len(rows):
            self._held = rows[whole:].copy()

    def _finish(self) -> None:
        if self._held is not None:
            self._encode(self._held)  # the last band may be any height
            self._held = None
        self.handle.write(_EOI)

    def _encode(self, rows: np.ndarray) -> None:
        if rows.shape[2] in (2, 4):
            rows = flatten_alpha(rows[:, :, :-1], rows[:, :, -1])
        pixels = to_8bit(rows)
        image = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels))
        out = io.BytesIO()
        image.save(out, "JPEG", **self._settings, **({} if self._started else self._metadata))
        data = out.getvalue()
        if not data.endswith(_EOI):
            raise ValueError("the JPEG encoder's output does not end its image")
        apps_end, frame, scan = _segments(data)
        if self._started:
            self.handle.write(_RST7)
        else:  # the headers, with our XMP and IPTC segments after Pillow's APPn ones and the frame's height
            # (2 bytes, 3 after the frame header's length) set to the whole image's
            self.handle.write(data[:apps_end] + self._extra + data[apps_end : frame + 5] + self.height.to_bytes(2, "big")
                              + data[frame + 7 : scan])
            self._started = True
        self.handle.write(data[scan:-2])
