"""Decoding image files with their metadata: bit depth, colour modes, alpha, EXIF orientation, EXIF, XMP, IPTC,
ICC profiles and pixel density. Pixels leave as ``color`` (H x W x 1 for grey, H x W x 3 RGB) plus an optional
``alpha`` (H x W), both uint8 or uint16."""

from __future__ import annotations

import contextlib
import functools
import io
import stat
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageDecodeError, ImageError, ImageTooLarge, ImageWarning
from ..files import special_file_kind
from . import xmp as extended_xmp
from .formats import DEFAULT_MAX_PIXELS, PILLOW_FORMAT, OutputFormat
from .jpeg import XMP_APP1
from .metadata import RESOLUTION_UNIT, X_RESOLUTION, Y_RESOLUTION, carried_metadata, positive, set_xmp_field
from .tiff import IMAGE_TAGS

_EXIF_ORIENTATION = 0x0112
# Formats Pillow cannot read that photo archives hold, told apart by their first bytes, for a clearer error
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_JPEG_XL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")


@dataclass(frozen=True)
class DecodedImage:
    color: np.ndarray  # H x W x 1 (grey) or H x W x 3 (RGB); uint8 or uint16
    alpha: np.ndarray | None  # H x W, same dtype as color
    format: OutputFormat | None  # the file's own format where restorecli can write it back
    exif: bytes | None  # with the orientation reset to 1, since the pixels are already upright
    icc_profile: bytes | None
    xmp: bytes | None = None  # the XMP packet (keywords, captions, ratings), its orientation reset too
    iptc: bytes | None = None  # IPTC-IIM records (captions, keywords, credits of press and archive software)
    dpi: tuple[float, float] | None = None  # pixel density (x, y) in pixels per inch, of the upright pixels

    def metadata_for(self, size: tuple[int, int], stages: Sequence[str] = ()) -> dict[str, object]:
        """What the writers take to carry the metadata over to an output of ``size`` (w, h), sized and scaled to
        it, with ``stages`` (what was done to the image) as its processing record (``metadata.carried_metadata``);
        each writer keeps what its format has a place for."""
        return carried_metadata(exif=self.exif, icc_profile=self.icc_profile, xmp=self.xmp, iptc=self.iptc,
                                dpi=self.dpi, source=self.size, size=size, stages=stages)

    @property
    def size(self) -> tuple[int, int]:
        return self.color.shape[1], self.color.shape[0]

    @property
    def bit_depth(self) -> int:
        return 16 if self.color.dtype == np.uint16 else 8


def float_to_uint8(image: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] to uint8, rounded and clipped."""
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


# The most bytes a file may hold per pixel of --max-pixels (uncompressed 32-bit float RGBA), plus room for metadata
# and embedded previews: anything larger cannot be an image within the limit, and reading it would only fill memory
_MAX_BYTES_PER_PIXEL = 16
_METADATA_ALLOWANCE = 64 << 20
def max_file_bytes(max_pixels: int) -> int:
    """The largest input file taken under ``max_pixels``."""
    return max_pixels * _MAX_BYTES_PER_PIXEL + _METADATA_ALLOWANCE


def _too_big(name: str, size: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"{name}: {size:,} bytes is more than any image within the limit of {max_pixels:,} pixels can take "
        f"({max_file_bytes(max_pixels):,} bytes); raise --max-pixels if it is one")


def check_input_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse, without opening it, what cannot be an image file within ``max_pixels``: a missing path, a folder,
    a device, pipe or socket, or a file larger than such an image can be."""
    try:
        found = path.stat()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(found.st_mode):
        raise ImageError(f"{path}: is a directory (use --recursive or list its files)")
    if not stat.S_ISREG(found.st_mode):
        raise ImageError(f"{path}: is {special_file_kind(found.st_mode)}, not an image file")
    if found.st_size > max_file_bytes(max_pixels):
        raise _too_big(str(path), found.st_size, max_pixels)


def read_input_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes of an input image file, after ``check_input_file``'s checks; errors name the file."""
    check_input_file(path, max_pixels)
    try:
        with path.open("rb") as handle:
            return read_input_stream(handle, str(path), max_pixels)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_input_stream(stream: BinaryIO, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """Read a whole image from ``stream`` (a file or a pipe), refusing it once it passes what an image within
    ``max_pixels`` can take, rather than holding an endless stream in memory."""
    if stream.isatty():
        raise ImageError(f"{name}: is a terminal; pipe an image in (restorecli restore - < photo.jpg)")
    limit = max_file_bytes(max_pixels)
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise _too_big(name, len(data), max_pixels)
    return data


def probe(data: bytes, name: str, max_pixels: int | None = None) -> tuple[tuple[int, int], OutputFormat | None]:
    """(width, height) upright, as ``decode_image`` turns the pixels by their EXIF orientation, and the writable
    format, from the header only; with ``max_pixels``, ``ImageTooLarge`` for a larger image, as ``decode_image``
    would refuse it. Quiet: what the header's reader warns about, the decoding tells."""
    with _pillow_reading():
        image = _open(data, name)
        orientation = _header_orientation(image)
    if max_pixels is not None:
        _check_pixels(name, image.size, max_pixels)
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height), PILLOW_FORMAT.get(image.format or "")


def _header_orientation(image: Image.Image) -> int:
    """The EXIF orientation the header gives (1 where it gives none), read without decoding pixels: from a TIFF's
    own tag, or from an EXIF block the header holds (JPEG's APP1, WebP's and PNG's chunks before the pixels)."""
    try:
        if image.format == "TIFF":
            return int(image.tag_v2.get(_EXIF_ORIENTATION, 1) or 1)
        raw = image.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except (ValueError, TypeError, OSError, SyntaxError, struct.error):  # damaged EXIF: the decoding tells
        return 1


_PILLOW_STATE = threading.Lock()


@contextlib.contextmanager
def _pillow_reading() -> Iterator[list[warnings.WarningMessage]]:
    """Pillow's own pixel limit lifted, and its warnings caught, while a file is read. restorecli checks
    ``--max-pixels`` itself, from the header, before any pixel is decoded, so Pillow's smaller limit neither
    refuses images within it nor speaks (with its own error or warning) for those beyond it. The warnings caught
    (a tag pointing past the file's end, damaged EXIF) are the caller's to tell as the file's, not Python's to
    print with Pillow's source line. The limit and the warning filters are process-wide: a lock keeps threads
    reading files at once from setting them back under each other."""
    with _PILLOW_STATE, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every file's own, not only the first file's
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield caught
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _warn_about(name: str, caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning the reader gave, again as restorecli's ``ImageWarning``: one line naming the file."""
    for text in dict.fromkeys(" ".join(str(found.message).split()) for found in caught):
        warnings.warn(ImageWarning(f"{name}: {text}"), stacklevel=3)


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                            f"{max_pixels:,} (raise it with --max-pixels)")


def _open(data: bytes, name: str) -> Image.Image:
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        kind = _unsupported_kind(data)
        if kind:
            raise ImageDecodeError(f"{name}: {kind} images cannot be read; convert it to JPEG, PNG or TIFF first")
        raise ImageDecodeError(f"{name}: not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"{name}: cannot read image header ({exc})") from None


def _unsupported_kind(data: bytes) -> str | None:
    """The name of a known image format Pillow does not read (HEIC from phones, JPEG XL), or None."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIC/HEIF"
    if data.startswith(_JPEG_XL_SIGNATURES):
        return "JPEG XL"
    return None


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an H x W (x C) array, as a viewer would show it."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: a.swapaxes(0, 1)[:, ::-1],
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: a.swapaxes(0, 1)[::-1],
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(array)) if op else array


def _pil_pixels(image: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image).astype(np.uint16)[:, :, None], None
    if mode == "I":
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)[:, :, None], None
    if mode == "1":
        image = image.convert("L")
    elif mode == "P" or mode == "PA":
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    elif mode in ("YCbCr", "LAB", "HSV", "RGBX"):  # (CMYK is converted before, see _cmyk_to_srgb)
        image = image.convert("RGB")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode == "La":
        image = image.convert("LA")
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageDecodeError(f"{name}: unsupported pixel mode {mode}")
    array = np.asarray(image)
    if image.mode == "L":
        return array[:, :, None], None
    if image.mode == "LA":
        return array[:, :, :1].copy(), array[:, :, 1].copy()
    if image.mode == "RGB":
        return array, None
    return array[:, :, :3].copy(), array[:, :, 3].copy()


def _icc_space(profile: bytes | None) -> bytes | None:
    """The colour space an ICC profile describes (b"RGB ", b"GRAY", b"CMYK", ...), read off its header."""
    return profile[16:20] if profile and len(profile) >= 128 else None


@functools.cache
def srgb_profile() -> bytes:
    """An sRGB ICC profile (LittleCMS's), for pixels converted to sRGB."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _cmyk_to_srgb(image: Image.Image, profile: bytes | None) -> tuple[Image.Image, bytes | None]:
    """CMYK pixels as sRGB, and the profile that now describes them. Through the file's own CMYK profile where it
    has one, as a colour-managed viewer shows them (relative colorimetric with black point compensation, what
    image editors use by default); otherwise by Pillow's plain formula, which is all that is known then."""
    if _icc_space(profile) == b"CMYK":
        from PIL import ImageCms

        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))  # type: ignore[arg-type]
            converted = ImageCms.profileToProfile(
                image, source, ImageCms.createProfile("sRGB"), renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                outputMode="RGB", flags=ImageCms.Flags.BLACKPOINTCOMPENSATION)
            return converted, srgb_profile()  # type: ignore[return-value]
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a profile LittleCMS cannot use: as if there were none
    return image.convert("RGB"), None


def _cv2_pixels_16(data: bytes, name: str, grey: bool) -> tuple[np.ndarray, np.ndarray | None]:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageDecodeError(f"{name}: corrupt 16-bit image data")
    array = array.astype(np.uint16, copy=False)
    if array.ndim == 2:
        return array[:, :, None], None
    if array.shape[2] == 4:
        rgba = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
        planes = rgba[:, :, :1] if grey else rgba[:, :, :3]  # OpenCV reads grey+alpha as BGRA
        return np.ascontiguousarray(planes), np.ascontiguousarray(rgba[:, :, 3])
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB), None


def _pictures(image: Image.Image) -> int:
    """How many full pictures the file holds: frames of an animation, pages of a TIFF. Not counted: the
    secondary images of a camera's MPO JPEG (previews, depth maps), whose first image is the photo, and TIFF
    pages marked as reduced-resolution copies (thumbnails) of another."""
    frames = getattr(image, "n_frames", 1)
    if frames == 1 or image.format == "MPO":
        return 1
    if image.format == "TIFF":
        full = 0
        for index in range(frames):
            image.seek(index)
            full += not int(image.tag_v2.get(254, 0)) & 1  # NewSubfileType bit 0: a reduced-resolution copy
        image.seek(0)
        return full
    return frames


# Tags of a TIFF's first directory that describe that file, not the photo: how its pixels are stored (offsets into
# it, sizes, compression), what restorecli carries separately (XMP 700, IPTC 33723, ICC 34675), sub-images (330),
# and Photoshop's image resources (34377) and layers (37724), which hold the unrestored picture again: Photoshop
# would open a TIFF carrying them with the old layers. They never go into an output's EXIF.
_TIFF_ONLY_TAGS = IMAGE_TAGS | {330, 700, 33723, 34377, 37724}
_MAX_DPI = 100_000  # past any scanner: a damaged field, not a density (scaled up, it would not fit PNG's or TIFF's)


def _density(image: Image.Image, exif: Image.Exif, orientation: int) -> tuple[float, float] | None:
    """The file's pixel density (x, y) in pixels per inch, for the upright pixels (orientations 5-8 turn the
    image a quarter, swapping x and y); None where the file gives none in absolute units.

    The format's own field where it has one (PNG pHYs, a JPEG's JFIF header when it gives units, BMP's), else
    X/YResolution of the EXIF (a TIFF's first directory): read here, since Pillow reads a JPEG's EXIF density
    as XResolution twice and reports 1 dpi for a TIFF that gives none."""
    dpi = image.info.get("dpi")
    own = image.format not in ("TIFF", "JPEG", "MPO") or image.info.get("jfif_unit") in (1, 2)
    if own and isinstance(dpi, tuple) and len(dpi) == 2:
        x, y = positive(dpi[0]), positive(dpi[1])
    else:
        per_inch = {2: 1.0, 3: 2.54}.get(int(positive(exif.get(RESOLUTION_UNIT, 2)) or 0))  # 1: no unit
        x, y = positive(exif.get(X_RESOLUTION)), positive(exif.get(Y_RESOLUTION))
        if per_inch is None or x is None or y is None:
            return None
        x, y = x * per_inch, y * per_inch
    if x is None or y is None or max(x, y) > _MAX_DPI:
        return None
    return (y, x) if orientation in (5, 6, 7, 8) else (x, y)


def _xmp_packet(image: Image.Image, upright: bool) -> bytes | None:
    """The file's XMP packet, wherever its format keeps it; with ``upright``, its tiff:Orientation set to 1,
    like the EXIF's, since the pixels have been turned."""
    packet: bytes | str | None = None
    if image.format in ("JPEG", "MPO"):
        segments = [content for marker, content in getattr(image, "applist", []) if marker == "APP1"]
        packet = next((content[len(XMP_APP1):] for content in segments if content.startswith(XMP_APP1)), None)
        extended = [content for content in segments if content.startswith(extended_xmp.EXTENSION_APP1)]
        if packet and extended:  # a packet too large for one segment: its rest merged back in
            packet = extended_xmp.merge(packet, extended)
    else:
        packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")  # WebP, PNG (iTXt)
        if packet is None and image.format == "TIFF":
            packet = image.tag_v2.get(700)  # XMLPacket
    if isinstance(packet, str):
        packet = packet.encode("utf-8")
    if not isinstance(packet, bytes) or not packet:
        return None
    if upright:
        packet = set_xmp_field(packet, b"tiff:Orientation", 1)
    return packet


_IPTC_RESOURCE, _IPTC_TAG = 0x0404, 33723


def _iptc_records(image: Image.Image) -> bytes | None:
    """The file's IPTC-IIM records: a JPEG keeps them in Photoshop's APP13 resources (resource 0x0404), a TIFF
    in tag 33723."""
    if image.format in ("JPEG", "MPO"):
        records = (image.info.get("photoshop") or {}).get(_IPTC_RESOURCE)
    elif image.format == "TIFF":
        records = image.tag_v2.get(_IPTC_TAG)
    else:
        return None
    return records if isinstance(records, bytes) and records else None


def _raw_mode(image: Image.Image) -> str:
    """How the file stores its samples, e.g. 'RGB;16B' (16-bit RGB) or 'RGBA'. Pillow gives it as the decoder's
    argument: a string for PNG, the first item of a tuple for libtiff, whose other items (such as an offset
    of 116) must not be read as a bit depth."""
    args = image.tile[0].args if image.tile else None
    if isinstance(args, tuple):
        args = args[0] if args else None
    return args if isinstance(args, str) else ""


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode file bytes into upright pixels and metadata; ``name`` is used in error messages.

    Raises ``ImageDecodeError`` for empty, truncated or non-image data and ``ImageTooLarge``
    before decoding anything larger than ``max_pixels``, or where the pixels it claims cannot be held.
    Warns (``ImageWarning``) once for each thing the codec skipped or mended in a file it read.
    """
    with _pillow_reading() as caught:
        image = _open(data, name)
        _check_pixels(name, image.size, max_pixels)
        try:
            decoded = _decoded(image, data, name)
        except MemoryError:  # within a raised --max-pixels, but past this machine's memory
            raise _cannot_hold(name, image.size, "out of memory") from None
    _warn_about(name, caught)  # for a file read: a refused one's error says what is wrong with it
    return decoded


def _cannot_hold(name: str, size: tuple[int, int], why: str) -> ImageTooLarge:
    return ImageTooLarge(f"{name}: {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels cannot be decoded here ({why}); "
                         "lower --max-pixels to refuse such images unread")


def _decoded(image: Image.Image, data: bytes, name: str) -> DecodedImage:
    """The pixels and metadata of ``image``, opened from ``data``, whose size has been checked."""
    pictures = _pictures(image)
    if pictures > 1:
        raise ImageDecodeError(f"{name}: holds {pictures} pictures (an animation or a multi-page file), and restorecli "
                               "restores one picture a file; extract the frames or pages first")
    rawmode = _raw_mode(image)
    try:
        image.load()  # full decode: detects truncation
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: truncated or corrupt image data ({exc})") from None
    except OverflowError:  # a row longer than Pillow's decoders address
        raise _cannot_hold(name, image.size, "too large for the decoder") from None
    exif, file_format = image.getexif(), image.format  # read before any conversion: it makes a new image
    orientation = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    xmp, iptc = _xmp_packet(image, upright=orientation != 1), _iptc_records(image)
    density = _density(image, exif, orientation)  # read before a CMYK conversion makes a new image
    icc_profile = image.info.get("icc_profile")
    if image.mode == "CMYK":
        image, icc_profile = _cmyk_to_srgb(image, icc_profile)
    sixteen_bit_colour = ";16" in rawmode and image.mode in ("RGB", "RGBA", "LA")
    color, alpha = _cv2_pixels_16(data, name, "LA;16" in rawmode) if sixteen_bit_colour else _pil_pixels(image, name)
    if _icc_space(icc_profile) != (b"GRAY" if color.shape[2] == 1 else b"RGB "):
        icc_profile = None  # a profile of another colour space (CMYK, Lab) would misdescribe these pixels
    if alpha is not None and alpha.dtype != color.dtype:
        alpha = alpha.astype(color.dtype)
    color = _orient(color, orientation)
    alpha = _orient(alpha, orientation) if alpha is not None else None
    exif_bytes = None
    if file_format == "TIFF":  # its first directory is the file's own: keep the camera's and scanner's tags only
        for tag in [tag for tag in exif if tag in _TIFF_ONLY_TAGS]:
            del exif[tag]
    if len(exif):
        if orientation != 1:
            exif[_EXIF_ORIENTATION] = 1
        exif.bigtiff = False  # a BigTIFF's EXIF is read in BigTIFF's form; EXIF blocks are classic TIFF everywhere
        exif_bytes = exif.tobytes()
    return DecodedImage(
        color=color,
        alpha=alpha,
        format=PILLOW_FORMAT.get(file_format or ""),
        exif=exif_bytes,
        icc_profile=icc_profile,
        xmp=xmp,
        iptc=iptc,
        dpi=density,
    )
