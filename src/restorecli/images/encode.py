"""Encoding pixels and metadata to files, whole or a strip of rows at a time: one writer module per format."""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np

from ..errors import ImageError
from .formats import OutputFormat
from .jpeg import JPEG_MAX_SIDE, JpegWriter
from .png import PngWriter
from .strips import StripWriter
from .tiff import TiffWriter
from .webp import WEBP_MAX_SIDE, WebpWriter

MAX_SIDE: dict[OutputFormat, int] = {"jpg": JPEG_MAX_SIDE, "webp": WEBP_MAX_SIDE}  # PNG and TIFF hold far more
# Writers that take an image a strip of rows at a time (WebP's gathers them for libwebp, which encodes whole images)
STRIP_WRITERS: dict[str, type[StripWriter]] = {"png": PngWriter, "tiff": TiffWriter, "jpg": JpegWriter,
                                               "webp": WebpWriter}


def check_output_size(name: str, fmt: OutputFormat, size: tuple[int, int]) -> None:
    """Raise ``ImageError`` when ``fmt`` cannot hold an image of ``size`` (w, h): before the work, not after."""
    limit = MAX_SIDE.get(fmt)
    if limit is not None and max(size) > limit:
        raise ImageError(f"{name}: a {fmt.upper()} holds at most {limit} pixels a side, not {size[0]}x{size[1]}; "
                         "write PNG or TIFF (--format png)")


def strip_writer(fmt: OutputFormat, handle: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype,
                 *, quality: int = 95, exif: bytes | None = None, icc_profile: bytes | None = None,
                 xmp: bytes | None = None, iptc: bytes | None = None,
                 dpi: tuple[float, float] | None = None) -> StripWriter:
    """A writer of ``fmt`` (one of ``STRIP_WRITERS``) that takes the image a strip of rows at a time. IPTC-IIM
    records go to JPEG and TIFF, the formats with a place for them; the pixel density ``dpi`` to PNG, JPEG and
    TIFF, which have fields of their own for it (WebP keeps only the EXIF's)."""
    settings: dict[str, object] = {"iptc": iptc} if fmt in ("jpg", "tiff") else {}
    if fmt != "webp":
        settings["dpi"] = dpi
    if fmt in ("jpg", "webp"):
        settings["quality"] = quality
    return STRIP_WRITERS[fmt](handle, width, height, channels, dtype, exif=exif, icc_profile=icc_profile, xmp=xmp,
                              **settings)


def encode_image(
    color: np.ndarray,
    alpha: np.ndarray | None,
    fmt: OutputFormat,
    *,
    quality: int = 95,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
    xmp: bytes | None = None,
    iptc: bytes | None = None,
    dpi: tuple[float, float] | None = None,
) -> bytes:
    """Encode pixels to file bytes. 16-bit survives in PNG and TIFF; JPEG and WebP are 8-bit,
    and JPEG has no alpha, so transparent pixels are composited onto white there. (For writing
    an image strip by strip, see ``strip_writer``.)"""
    if fmt == "tiff" and alpha is not None and color.shape[2] == 1 and color.dtype == np.uint16:
        color = np.repeat(color, 3, axis=2)  # Pillow (so restorecli too) cannot open 16-bit grey+alpha TIFFs
    planes = color if alpha is None else np.dstack([color, alpha])
    out = io.BytesIO()
    writer = strip_writer(fmt, out, planes.shape[1], planes.shape[0], planes.shape[2], planes.dtype,
                          quality=quality, exif=exif, icc_profile=icc_profile, xmp=xmp, iptc=iptc, dpi=dpi)
    writer.write(planes)
    writer.close()
    return out.getvalue()
