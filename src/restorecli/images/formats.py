"""The format registry: what restorecli reads and writes, one record per output format. No codec is imported
here, so that the CLI, planning and the server can ask it without loading Pillow or OpenCV.

Every caller asks the registry instead of keeping its own list: planning names outputs with ``Format.suffix``
and reads a file's format off its suffix (``format_for_suffix``), encoding finds the writer, its limits, the
metadata it carries and the options it takes (``images.encode``), decoding names what it read (``pillow_names``),
the server answers with ``media_type`` (``media_type_for``), the client checks downloads by their signature
(``suffix_for_content``), and the CLI offers ``OUTPUT_FORMATS`` as ``--format``'s choices.

Adding an output format: write its strip writer (a ``strips.StripWriter`` in a module of its own, taking
``width, height, channels, dtype`` and the keywords its record names), add its name to ``OutputFormat``, and add
one ``Format`` record to ``FORMATS`` below. Nothing else changes (``RestoreOptions.format``'s ``Literal`` spells the
choices once more for type checkers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import OutputTooLarge

OutputFormat = Literal["png", "jpg", "webp", "tiff"]
Metadata = Literal["exif", "icc_profile", "xmp", "iptc", "dpi"]
Signature = tuple[tuple[int, bytes], ...]  # (offset, bytes) pairs, all of which a file's first bytes match

DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class Format:
    """One output format: how it is named, served, told by its first bytes, and written."""

    name: OutputFormat  # what --format takes
    suffix: str  # what its outputs are named with
    suffixes: tuple[str, ...]  # every suffix a file of this format is taken to have (the first: ``suffix``)
    media_type: str  # its content type over HTTP
    signatures: tuple[Signature, ...]  # any of which its files start with
    pillow_names: tuple[str, ...]  # what Pillow calls the files it reads of this format
    writer: str  # "module:Class" of its strip writer in this package, imported when first used
    metadata: frozenset[Metadata]  # what of the source's metadata the format has a place for
    options: frozenset[str] = frozenset()  # encoding options the writer takes, besides the pixels' shape
    sixteen_bit: bool = False  # holds 16-bit samples (else 16-bit pixels are rounded to 8 bits)
    alpha: bool = True  # holds an alpha channel (else it is composited onto white)
    max_side: int | None = None  # the most pixels either side may have
    streams: bool = True  # rows go to the file as they come (False: the writer gathers the whole image)
    grey_alpha_16: bool = True  # 16-bit grey with alpha is written as it is (else as RGB with alpha)

    def writer_class(self) -> type:
        """The format's ``StripWriter`` class (its module imported now)."""
        import importlib

        module, name = self.writer.split(":")
        return getattr(importlib.import_module(f".{module}", __package__), name)


_EVERYTHING: frozenset[Metadata] = frozenset(get_args(Metadata))
FORMATS: dict[OutputFormat, Format] = {record.name: record for record in (
    Format("png", ".png", (".png",), "image/png", (((0, b"\x89PNG\r\n\x1a\n"),),), ("PNG",), "png:PngWriter",
           _EVERYTHING - {"iptc"}, sixteen_bit=True),
    Format("jpg", ".jpg", (".jpg", ".jpeg", ".jpe", ".jfif"), "image/jpeg", (((0, b"\xff\xd8\xff"),),),
           ("JPEG", "MPO"), "jpeg:JpegWriter", _EVERYTHING, frozenset({"quality"}), alpha=False, max_side=65500),
    # WebP keeps only the EXIF's density, and libwebp encodes whole pictures
    Format("webp", ".webp", (".webp",), "image/webp", (((0, b"RIFF"), (8, b"WEBP")),), ("WEBP",), "webp:WebpWriter",
           frozenset({"exif", "icc_profile", "xmp"}), frozenset({"quality"}), max_side=16383, streams=False),
    Format("tiff", ".tif", (".tif", ".tiff"), "image/tiff", (((0, b"II*\x00"),), ((0, b"MM\x00*"),)), ("TIFF",),
           "tiff:TiffWriter", _EVERYTHING, sixteen_bit=True, grey_alpha_16=False),  # Pillow cannot read it back
)}
OUTPUT_FORMATS: tuple[OutputFormat, ...] = tuple(FORMATS)
DEFAULT_FORMAT: OutputFormat = "png"  # what --format same writes for an input in a format restorecli does not write

# Formats read but not written: their suffix and content type (HEIC and JPEG XL are named only to refuse them)
_READ_ONLY: dict[str, tuple[str, Signature]] = {".bmp": ("image/bmp", ((0, b"BM"),)),
                                                 ".gif": ("image/gif", ((0, b"GIF8"),))}
# What a folder scan takes. HEIC and JPEG XL cannot be read, but are taken so that each is named with the reason
# (a phone's folder would otherwise lose its photos without a word)
IMAGE_SUFFIXES = ({suffix for record in FORMATS.values() for suffix in record.suffixes} | set(_READ_ONLY)
                  | {".avif", ".heic", ".heif", ".jxl"})
_SUFFIX_FORMAT: dict[str, OutputFormat] = {suffix: record.name for record in FORMATS.values()
                                           for suffix in record.suffixes}
SIXTEEN_BIT_FORMATS: frozenset[OutputFormat] = frozenset(name for name, record in FORMATS.items() if record.sixteen_bit)
FORMAT_SUFFIX: dict[OutputFormat, str] = {name: record.suffix for name, record in FORMATS.items()}
PILLOW_FORMAT: dict[str, OutputFormat] = {pillow: record.name for record in FORMATS.values()
                                          for pillow in record.pillow_names}


def format_for_suffix(suffix: str) -> OutputFormat | None:
    return _SUFFIX_FORMAT.get(suffix.lower())


def media_type_for(suffix: str) -> str | None:
    """The content type of a file named with ``suffix`` that restorecli reads or writes, else None."""
    fmt = format_for_suffix(suffix)
    if fmt is not None:
        return FORMATS[fmt].media_type
    read_only = _READ_ONLY.get(suffix.lower())
    return read_only[0] if read_only else None


# The first bytes of each format restorecli reads, and the suffix such a file is named with
_SIGNATURES: tuple[tuple[Signature, str], ...] = (
    *((signature, record.suffix) for record in FORMATS.values() for signature in record.signatures),
    *((signature, suffix) for suffix, (_, signature) in _READ_ONLY.items()),
)


def suffix_for_content(head: bytes) -> str | None:
    """The suffix a file starting with ``head`` (its first 16 bytes or more) should carry, from its signature;
    None where it has none restorecli knows."""
    for signature, suffix in _SIGNATURES:
        if all(head[offset:offset + len(part)] == part for offset, part in signature):
            return suffix
    return None


def output_size(width: int, height: int, outscale: float) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` image scaled by ``outscale``."""
    return max(1, round(width * outscale)), max(1, round(height * outscale))


def check_output_pixels(name: str, size: tuple[int, int], limit: int | None) -> None:
    """Raise ``OutputTooLarge`` when an output of ``size`` (w, h) has more pixels than ``limit`` (None: none)."""
    if limit is not None and size[0] * size[1] > limit:
        raise OutputTooLarge(f"{name}: its output would be {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:,.1f} "
                         f"megapixels), over the limit of {limit / 1e6:,.1f} megapixels (--max-output-pixels "
                         f"{limit}); ask for a smaller outscale")
