"""An input's metadata carried to its output: the EXIF and XMP's pixel dimensions set to the output's size, the
pixel density scaled with the pixels, and only what the output's format has a place for
(``formats.Format.metadata``). Decoding reads the metadata; the writers place it, each in its format's own way."""

from __future__ import annotations

import math
import re

from PIL import ExifTags, Image

from .formats import FORMATS, OutputFormat

PIXEL_X_DIMENSION, PIXEL_Y_DIMENSION = 0xA002, 0xA003  # in the EXIF directory
X_RESOLUTION, Y_RESOLUTION, RESOLUTION_UNIT = 282, 283, 296  # first directory; unit 2 inch (default), 3 cm


def positive(value: object) -> float | None:
    """``value`` as a positive finite number, else None (a missing or damaged density)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def set_xmp_field(packet: bytes, name: bytes, value: int) -> bytes:
    """``packet`` with the number in field ``name`` (as an attribute or as an element) set to ``value``."""
    for pattern in (rb"(%s\s*=\s*[\"'])\d+([\"'])", rb"(<%s>\s*)\d+(\s*</%s>)"):
        packet = re.sub(pattern.replace(b"%s", re.escape(name)), rb"\g<1>%d\g<2>" % value, packet)
    return packet


def xmp_with_size(packet: bytes, size: tuple[int, int]) -> bytes:
    for name, value in ((b"exif:PixelXDimension", size[0]), (b"exif:PixelYDimension", size[1]),
                        (b"tiff:ImageWidth", size[0]), (b"tiff:ImageLength", size[1])):
        packet = set_xmp_field(packet, name, value)
    return packet


def exif_for_output(exif: bytes, size: tuple[int, int], scale: tuple[float, float]) -> bytes:
    """``exif`` with the image size its Exif directory records (PixelX/YDimension) set to ``size``, and its
    X/YResolution multiplied by ``scale`` (x, y), where it records them: a viewer showing the camera's size for
    a 4x result, or printing it four times as large, would mislead. Unchanged where it records neither."""
    data = Image.Exif()
    data.load(exif)
    changed = False
    directory = data.get_ifd(ExifTags.IFD.Exif)
    if PIXEL_X_DIMENSION in directory or PIXEL_Y_DIMENSION in directory:
        directory[PIXEL_X_DIMENSION], directory[PIXEL_Y_DIMENSION] = size
        changed = True
    for tag, factor in ((X_RESOLUTION, scale[0]), (Y_RESOLUTION, scale[1])):
        density = positive(data.get(tag))
        if density is not None:
            data[tag] = density * factor
            changed = True
    return data.tobytes() if changed else exif


def carried_metadata(*, exif: bytes | None, icc_profile: bytes | None, xmp: bytes | None, iptc: bytes | None,
                     dpi: tuple[float, float] | None, source: tuple[int, int],
                     size: tuple[int, int]) -> dict[str, object]:
    """What the writers take to carry an input's metadata (its pixels ``source`` (w, h)) over to an output of
    ``size``: ``exif``, ``icc_profile``, ``xmp``, ``iptc`` and ``dpi``, with the pixel dimensions the EXIF and
    XMP record set to ``size``, and the pixel density (the file's own, and the EXIF's) scaled with the pixels, so
    the output prints at the input's size: a 300 dpi scan restored 4x is 1200 dpi."""
    scale = (size[0] / source[0], size[1] / source[1])
    return {"exif": exif_for_output(exif, size, scale) if exif else None, "icc_profile": icc_profile,
            "xmp": xmp_with_size(xmp, size) if xmp else None, "iptc": iptc,
            "dpi": (dpi[0] * scale[0], dpi[1] * scale[1]) if dpi else None}


def for_format(fmt: OutputFormat, metadata: dict[str, object]) -> dict[str, object]:
    """The part of ``metadata`` (``carried_metadata``'s keys) that ``fmt`` has a place for."""
    kept = FORMATS[fmt].metadata
    return {key: value for key, value in metadata.items() if key in kept}
