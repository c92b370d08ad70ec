"""Encoding pixels and metadata to files, whole or a strip of rows at a time, by the format's record in the
registry (``formats.FORMATS``): its writer, its limits, the metadata it has a place for and the options it takes."""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np

from ..errors import ImageError
from .formats import FORMATS, OutputFormat
from .metadata import for_format
from .strips import StripWriter

MAX_SIDE: dict[OutputFormat, int] = {name: record.max_side for name, record in FORMATS.items()
                                     if record.max_side is not None}  # PNG and TIFF hold far more
# Writers that take an image a strip of rows at a time (WebP's gathers them for libwebp, which encodes whole images)
STRIP_WRITERS: dict[str, type[StripWriter]] = {name: record.writer_class() for name, record in FORMATS.items()}


def check_output_size(name: str, fmt: OutputFormat, size: tuple[int, int]) -> None:
    """Raise ``ImageError`` when ``fmt`` cannot hold an image of ``size`` (w, h): before the work, not after."""
    limit = MAX_SIDE.get(fmt)
    if limit is not None and max(size) > limit:
        raise ImageError(f"{name}: a {fmt.upper()} holds at most {limit} pixels a side, not {size[0]}x{size[1]}; "
                         "write PNG or TIFF (--format png)")


def writes_planes_as_they_are(fmt: OutputFormat, color: np.ndarray, alpha: np.ndarray | None) -> bool:
    """Whether ``fmt`` is written with ``color`` (and ``alpha``) as they are: not 16-bit grey with alpha where
    the format writes it as RGB with alpha (``Format.grey_alpha_16``: TIFF), which strips of rows cannot be."""
    grey_alpha_16 = alpha is not None and color.shape[2] == 1 and color.dtype == np.uint16
    return FORMATS[fmt].grey_alpha_16 or not grey_alpha_16


def strip_writer(fmt: OutputFormat, handle: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype,
                 *, quality: int = 95, exif: bytes | None = None, icc_profile: bytes | None = None,
                 xmp: bytes | None = None, iptc: bytes | None = None,
                 dpi: tuple[float, float] | None = None) -> StripWriter:
    """A writer of ``fmt`` (one of ``STRIP_WRITERS``) that takes the image a strip of rows at a time, with the
    metadata the format has a place for (``Format.metadata``: IPTC-IIM records in JPEG and TIFF; the pixel density
    ``dpi`` in PNG, JPEG and TIFF, which have fields of their own for it, while WebP keeps only the EXIF's) and the
    options it takes (``Format.options``: ``quality`` for JPEG and WebP)."""
    metadata = for_format(fmt, {"exif": exif, "icc_profile": icc_profile, "xmp": xmp, "iptc": iptc, "dpi": dpi})
    options = {key: value for key, value in (("quality", quality),) if key in FORMATS[fmt].options}
    return STRIP_WRITERS[fmt](handle, width, height, channels, dtype, **metadata, **options)


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
    if not writes_planes_as_they_are(fmt, color, alpha):
        color = np.repeat(color, 3, axis=2)
    planes = color if alpha is None else np.dstack([color, alpha])
    out = io.BytesIO()
    writer = strip_writer(fmt, out, planes.shape[1], planes.shape[0], planes.shape[2], planes.dtype,
                          quality=quality, exif=exif, icc_profile=icc_profile, xmp=xmp, iptc=iptc, dpi=dpi)
    writer.write(planes)
    writer.close()
    return out.getvalue()
