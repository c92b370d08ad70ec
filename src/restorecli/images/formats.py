"""What restorecli reads and writes, by name and suffix: no codec is imported here."""

from __future__ import annotations

from typing import Literal

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
