"""Image files: bit depth, colour modes, alpha, orientation, metadata, bad input, atomic writes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from conftest import TEST_INPUTS
from restorecli.errors import ImageDecodeError, ImageTooLarge
from restorecli.images import decode_image, encode_image, write_atomic


def _png(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kwargs.pop("format", "PNG"), **kwargs)
    return out.getvalue()


def test_sixteen_bit_png_keeps_its_values():
    data = (TEST_INPUTS / "chelsea_16bit.png").read_bytes()
    decoded = decode_image(data, "chelsea_16bit.png")
    assert decoded.color.dtype == np.uint16 and decoded.color.shape == (80, 120, 3)
    assert decoded.bit_depth == 16
    again = decode_image(encode_image(decoded.color, None, "png"), "x.png")
    np.testing.assert_array_equal(again.color, decoded.color)
    tiff = decode_image(encode_image(decoded.color, None, "tiff"), "x.tif")
    np.testing.assert_array_equal(tiff.color, decoded.color)


def test_sixteen_bit_grey_with_alpha_in_tiff_and_png():
    grey = (np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 50).astype(np.uint16)[:, :, None]
    alpha = np.full((30, 40), 40000, np.uint16)
    for fmt in ("png", "tiff"):
        decoded = decode_image(encode_image(grey, alpha, fmt), f"x.{fmt}")
        assert decoded.color.dtype == np.uint16 and decoded.alpha is not None
        np.testing.assert_array_equal(decoded.alpha, alpha)


def test_grey_png_decodes_as_one_channel():
    decoded = decode_image((TEST_INPUTS / "cameraman_gray.png").read_bytes(), "g.png")
    assert decoded.color.shape == (128, 128, 1) and decoded.alpha is None


def test_alpha_is_kept_separately():
    decoded = decode_image((TEST_INPUTS / "coffee_alpha.png").read_bytes(), "c.png")
    assert decoded.color.shape == (85, 128, 3) and decoded.alpha.shape == (85, 128)
    assert decoded.alpha.min() == 0 and decoded.alpha.max() == 255


def test_palette_and_cmyk_are_converted_to_rgb():
    rgb = Image.open(TEST_INPUTS / "rocket.jpg").convert("RGB")
    palette = decode_image(_png(rgb.convert("P", palette=Image.Palette.ADAPTIVE)), "p.png")
    assert palette.color.shape == (64, 96, 3)
    cmyk = decode_image(_png(rgb.convert("CMYK"), format="JPEG"), "c.jpg")
    assert cmyk.color.shape == (64, 96, 3)
    assert np.abs(cmyk.color.astype(int) - np.asarray(rgb).astype(int)).mean() < 12


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_a_viewer(orientation):
    base = Image.open(TEST_INPUTS / "rocket.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _png(base, exif=exif.tobytes())
    decoded = decode_image(data, "o.png")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(decoded.color, expected)
    reread = Image.Exif()
    reread.load(decoded.exif)
    assert reread[0x0112] == 1  # pixels are upright now, the tag must not rotate them again


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_exif_and_icc_profile_are_written(fmt):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "restorecli-test-camera"  # Make
    color = np.asarray(Image.open(TEST_INPUTS / "rocket.jpg").convert("RGB"))
    written = Image.open(io.BytesIO(encode_image(color, None, fmt, exif=exif.tobytes(), icc_profile=icc)))
    assert written.info.get("icc_profile") == icc
    assert written.getexif().get(0x010F) == "restorecli-test-camera"


def test_sixteen_bit_png_carries_exif_and_icc():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "sixteen"
    color = np.full((8, 9, 3), 30000, np.uint16)
    decoded = decode_image(encode_image(color, None, "png", exif=exif.tobytes(), icc_profile=icc), "x.png")
    assert decoded.icc_profile == icc and decoded.color.dtype == np.uint16
    reread = Image.Exif()
    reread.load(decoded.exif)
    assert reread[0x010F] == "sixteen"


def test_jpeg_output_flattens_alpha_onto_white():
    color = np.zeros((4, 4, 3), np.uint8)
    alpha = np.zeros((4, 4), np.uint8)
    decoded = decode_image(encode_image(color, alpha, "jpg", quality=100), "x.jpg")
    assert decoded.alpha is None and decoded.color.min() >= 250


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty file"),
        (b"hello, not an image at all", "not an image"),
    ],
)
def test_bad_bytes_name_the_file_and_the_problem(data, message):
    with pytest.raises(ImageDecodeError, match=f"bad.png: {message}"):
        decode_image(data, "bad.png")


@pytest.mark.parametrize("name", ["astronaut_face.jpg", "coffee_alpha.png", "chelsea_16bit.png"])
def test_truncated_files_are_refused(name):
    data = (TEST_INPUTS / name).read_bytes()
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], name)


def test_pixel_limit_refuses_before_decoding():
    data = (TEST_INPUTS / "rocket.jpg").read_bytes()
    with pytest.raises(ImageTooLarge, match="exceeds the limit of 1,000"):
        decode_image(data, "rocket.jpg", max_pixels=1000)


def test_write_atomic_leaves_old_content_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left behind
