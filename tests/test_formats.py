"""The format registry: each record says what its format really does, and every caller reads it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restorecli.errors import ImageError
from restorecli.images import decode_image, encode_image
from restorecli.images.encode import STRIP_WRITERS, check_output_size, strip_writer
from restorecli.images.formats import (FORMAT_SUFFIX, FORMATS, IMAGE_SUFFIXES, OUTPUT_FORMATS, format_for_suffix,
                                       media_type_for, suffix_for_content)

RECORDS = list(FORMATS.values())
_IPTC = b"\x1c\x02\x00\x00\x02\x00\x04\x1c\x02\x78\x00\x07caption"  # record version, then a caption


def _pixels(channels: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    top = 65535 if dtype == np.uint16 else 255
    return np.random.default_rng(seed).integers(0, top, (24, 32, channels), dtype=dtype, endpoint=True)


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: record.name)
def test_a_record_names_its_files_as_they_are_read_back(record):
    data = encode_image(_pixels(3), None, record.name)
    assert decode_image(data, "x" + record.suffix).format == record.name
    assert suffix_for_content(data[:16]) == record.suffix
    assert record.suffixes[0] == record.suffix == FORMAT_SUFFIX[record.name]
    for suffix in record.suffixes:
        assert format_for_suffix(suffix.upper()) == record.name and suffix in IMAGE_SUFFIXES
        assert media_type_for(suffix) == record.media_type
    assert Image.open(io.BytesIO(data)).get_format_mimetype() == record.media_type  # what Pillow says it is
    assert STRIP_WRITERS[record.name] is record.writer_class()


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: record.name)
def test_a_record_says_which_metadata_its_format_keeps(record):
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    data = encode_image(_pixels(3), None, record.name, exif=exif.tobytes(), xmp=xmp, iptc=_IPTC, dpi=(300.0, 150.0))
    decoded = decode_image(data, "x" + record.suffix)
    assert (decoded.iptc == _IPTC) == ("iptc" in record.metadata)
    assert (decoded.dpi == pytest.approx((300.0, 150.0), rel=1e-3)) == ("dpi" in record.metadata)
    assert (decoded.xmp == xmp) == ("xmp" in record.metadata)
    assert (decoded.exif is not None and b"TestCam" in decoded.exif) == ("exif" in record.metadata)


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: record.name)
def test_a_record_says_what_its_format_holds(record):
    deep = _pixels(3, np.uint16)
    decoded = decode_image(encode_image(deep, None, record.name), "x" + record.suffix)
    assert (decoded.color.dtype == np.uint16) == record.sixteen_bit
    alpha = _pixels(1)[:, :, 0]
    assert (decode_image(encode_image(_pixels(3), alpha, record.name), "x").alpha is not None) == record.alpha
    if record.max_side is None:
        check_output_size("x", record.name, (70000, 70000))
    else:
        check_output_size("x", record.name, (record.max_side, 1))
        with pytest.raises(ImageError, match=f"at most {record.max_side} pixels a side"):
            check_output_size("x", record.name, (1, record.max_side + 1))


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: record.name)
def test_a_record_says_which_options_its_writer_takes(record):
    pixels = _pixels(3)
    low, high = (encode_image(pixels, None, record.name, quality=quality) for quality in (10, 95))
    assert (low != high) == ("quality" in record.options)


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: record.name)
def test_only_a_streaming_format_writes_before_the_last_row_comes(record):
    out = io.BytesIO()
    writer = strip_writer(record.name, out, 32, 512, 3, np.uint8)
    writer.write(np.random.default_rng(1).integers(0, 255, (384, 32, 3), dtype=np.uint8))
    assert (out.tell() > 0) == record.streams  # WebP's writer gathers the picture for libwebp
    writer.write(np.zeros((128, 32, 3), np.uint8))
    writer.close()
    assert decode_image(out.getvalue(), "x").color.shape == (512, 32, 3)


def test_the_cli_server_and_registry_agree():
    from restorecli.options import FORMATS as CHOICES
    from restorecli.server.views import Served

    assert CHOICES == ("same", *OUTPUT_FORMATS) and set(OUTPUT_FORMATS) == set(FORMATS)
    for record in RECORDS:
        for suffix in record.suffixes:
            assert Served(Path("a" + suffix.upper()), "a").media_type == record.media_type
    assert media_type_for(".bmp") == "image/bmp" and media_type_for(".heic") is None
