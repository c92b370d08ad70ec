"""Image files: decoding with metadata (``decode``), encoding whole or in strips (``encode``), the format registry
(``formats``: one record per output format, which planning, encoding, the server and the CLI ask), the metadata
carried from an input to its output (``metadata``), one writer module per format. This package only hands their
names on.

Pixels leave decoding as ``color`` (H x W x 1 for grey, H x W x 3 RGB) plus an optional ``alpha`` (H x W), both
uint8 or uint16.

Names are handed on when first asked for (PEP 562), so that importing ``images.formats`` (suffixes and limits,
which commands that decode nothing need) does not load OpenCV and Pillow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOME = {
    "decode": ("DecodedImage", "check_input_file", "decode_image", "float_to_uint8", "max_file_bytes", "probe",
               "read_input_file", "read_input_stream", "srgb_profile"),
    "encode": ("MAX_SIDE", "STRIP_WRITERS", "check_output_size", "encode_image", "strip_writer",
               "writes_planes_as_they_are"),
    "formats": ("DEFAULT_FORMAT", "DEFAULT_MAX_PIXELS", "FORMATS", "FORMAT_SUFFIX", "IMAGE_SUFFIXES", "OUTPUT_FORMATS",
                "SIXTEEN_BIT_FORMATS", "Format", "OutputFormat", "check_output_pixels", "format_for_suffix",
                "media_type_for"),
    "pixels": ("full_scale",),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # what type checkers and editors see
    from .decode import (DecodedImage, check_input_file, decode_image, float_to_uint8, max_file_bytes, probe,
                         read_input_file, read_input_stream, srgb_profile)
    from .encode import (MAX_SIDE, STRIP_WRITERS, check_output_size, encode_image, strip_writer,
                         writes_planes_as_they_are)
    from .formats import (DEFAULT_FORMAT, DEFAULT_MAX_PIXELS, FORMAT_SUFFIX, FORMATS, IMAGE_SUFFIXES, OUTPUT_FORMATS,
                          SIXTEEN_BIT_FORMATS, Format, OutputFormat, check_output_pixels, format_for_suffix,
                          media_type_for)
    from .pixels import full_scale
