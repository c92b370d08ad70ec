"""What restorecli reads and writes, by name and suffix: no codec is imported here."""

from __future__ import annotations

from typing import Literal

from ..errors import OutputTooLarge

OutputFormat = Literal["png", "jpg", "webp", "tiff"]

DEFAULT_MAX_PIXELS = 100_000_000
# What a folder scan takes. HEIC and JPEG XL cannot be read, but are taken so that each is named with the reason
# (a phone's folder would otherwise lose its photos without a word)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".avif",
                  ".heic", ".heif", ".jxl"}
_SUFFIX_FORMAT: dict[str, OutputFormat] = {
    ".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".jfif": "jpg", ".webp": "webp", ".tif": "tiff",
    ".tiff": "tiff",
}
SIXTEEN_BIT_FORMATS: frozenset[OutputFormat] = frozenset({"png", "tiff"})  # JPEG and WebP hold 8 bits a sample
FORMAT_SUFFIX: dict[OutputFormat, str] = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif"}


def format_for_suffix(suffix: str) -> OutputFormat | None:
    return _SUFFIX_FORMAT.get(suffix.lower())


# The first bytes of each format restorecli reads, and the suffix such a file is named with
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", ".png"), (0, b"\xff\xd8\xff", ".jpg"), (8, b"WEBP", ".webp"),
    (0, b"II*\x00", ".tif"), (0, b"MM\x00*", ".tif"), (0, b"BM", ".bmp"), (0, b"GIF8", ".gif"),
)


def suffix_for_content(head: bytes) -> str | None:
    """The suffix a file starting with ``head`` (its first 16 bytes or more) should carry, from its signature;
    None where it has none restorecli knows."""
    for offset, signature, suffix in _SIGNATURES:
        if head[offset:offset + len(signature)] == signature and (suffix != ".webp" or head[:4] == b"RIFF"):
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
