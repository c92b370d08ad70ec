"""Image files: bit depth, colour modes, alpha, orientation, metadata, bad input, atomic writes."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageOps

from conftest import TEST_INPUTS, grey_tiff
from restorecli.errors import ImageDecodeError, ImageError, ImageTooLarge, ImageWarning
from restorecli.images import (decode_image, encode_image, max_file_bytes, probe, read_input_file,
                               read_input_stream)
from restorecli.images.jpeg import JpegWriter
from restorecli.images.png import PngWriter
from restorecli.images.tiff import TiffWriter


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
    png = decode_image(encode_image(grey, alpha, "png"), "x.png")
    np.testing.assert_array_equal(png.color, grey)  # PNG keeps grey+alpha as grey+alpha


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


CYAN, WHITE, BLACK_INK, HALF_CYAN = (255, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 255), (128, 0, 0, 0)


def _patch(color, index, size=16):
    return color[size // 2, index * size + size // 2].astype(int)


def test_cmyk_with_its_profile_is_converted_through_it_and_tagged_srgb():
    """Scans from print workflows come as CMYK with a CMYK profile: the pixels are converted through it (as a
    colour-managed viewer shows them), and the output is tagged sRGB, not with the CMYK profile, which would
    misdescribe RGB pixels. EXIF and its orientation survive the conversion."""
    from icc_profiles import cmyk_jpeg, ink_rgb

    from restorecli.images import srgb_profile

    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "PressScanner", 3  # upside down
    data = cmyk_jpeg([CYAN, WHITE, BLACK_INK, HALF_CYAN], exif=exif.tobytes())
    decoded = decode_image(data, "scan.jpg")
    assert decoded.icc_profile == srgb_profile() and decoded.icc_profile[16:20] == b"RGB "
    assert decoded.format == "jpg" and decoded.color.shape == (16, 64, 3)
    upright = decoded.color[::-1, ::-1]  # orientation 3 applied: turn it back to compare patches
    assert np.abs(_patch(upright, 0) - ink_rgb(1, 0, 0, 0)).max() <= 12  # the profile's cyan, not (0, 255, 255)
    assert np.abs(_patch(upright, 1) - 255).max() <= 3
    assert np.abs(_patch(upright, 2) - ink_rgb(0, 0, 0, 1)).max() <= 12
    assert _patch(upright, 3)[1] < 230  # half cyan is the profile's blend, far from the formula's 255 green
    reread = Image.Exif()
    reread.load(decoded.exif)
    assert reread[0x010F] == "PressScanner" and reread[0x0112] == 1


def test_cmyk_without_a_usable_profile_uses_the_plain_formula_and_carries_no_profile():
    from icc_profiles import cmyk_jpeg, cmyk_profile

    plain = decode_image(cmyk_jpeg([CYAN, WHITE], profile=None), "plain.jpg")
    broken_profile = cmyk_profile()[:128] + b"not a tag table"  # a CMYK header LittleCMS cannot read further
    broken = decode_image(cmyk_jpeg([CYAN, WHITE], profile=broken_profile), "broken.jpg")
    for decoded in (plain, broken):
        assert decoded.icc_profile is None
        assert np.abs(_patch(decoded.color, 0) - (0, 255, 255)).max() <= 3


def test_a_profile_for_another_colour_space_is_not_copied():
    """An sRGB profile on a greyscale PNG (which libpng rejects) would be copied onto grey output: dropped."""
    rgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    grey = Image.fromarray(np.full((4, 4), 90, np.uint8))
    decoded = decode_image(_png(grey, icc_profile=rgb_profile), "grey.png")
    assert decoded.color.shape[2] == 1 and decoded.icc_profile is None
    rgb = decode_image(_png(grey.convert("RGB"), icc_profile=rgb_profile), "rgb.png")
    assert rgb.icc_profile == rgb_profile


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


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_xmp_is_written_where_each_format_keeps_it(fmt, dtype):
    """Read back by Pillow, which finds it in PNG's iTXt chunk, a JPEG APP1 segment, WebP's XMP chunk and TIFF
    tag 700."""
    from test_cli_restore import XMP

    packet = XMP.replace(b' tiff:Orientation="6"', b"")  # an orientation would turn the pixels on reading
    color = np.full((20, 30, 3), 3000 if dtype == np.uint16 else 90, dtype)
    assert decode_image(encode_image(color, None, fmt, xmp=packet), f"x.{fmt}").xmp == packet


@pytest.mark.parametrize("form", [b'tiff:Orientation="8"', b"<tiff:Orientation>8</tiff:Orientation>"])
@pytest.mark.parametrize("in_exif", [True, False])
def test_xmp_orientation_is_applied_and_reset_like_the_exif_s(form, in_exif):
    """Pillow (so restorecli) turns the pixels by the XMP's orientation where the EXIF has none, as Lightroom
    does; either way the pixels end upright and the XMP says so."""
    from test_cli_restore import XMP, with_xmp

    exif = Image.Exif()
    if in_exif:
        exif[0x0112] = 8
    jpeg = _png(Image.new("RGB", (6, 4)), format="JPEG", exif=exif.tobytes())
    decoded = decode_image(with_xmp(jpeg, XMP.replace(b'tiff:Orientation="6"', form)), "x.jpg")
    assert decoded.color.shape[:2] == (6, 4)  # turned a quarter
    assert decoded.xmp == XMP.replace(b'tiff:Orientation="6"', form.replace(b"8", b"1"))


@pytest.mark.parametrize("fmt, kept", [("jpg", True), ("tiff", True), ("png", False), ("webp", False)])
def test_iptc_records_go_where_the_format_has_a_place_for_them(fmt, kept):
    """JPEG (Photoshop's APP13 resource) and TIFF (tag 33723) carry IPTC-IIM; PNG and WebP have no standard
    place, so their outputs carry the XMP only."""
    from test_cli_restore import IPTC

    color = np.full((12, 10, 3), 80, np.uint8)
    odd = IPTC + b"\x1c\x02\x19\x00\x01x"  # an odd length: the resource is padded to an even one
    for records in (IPTC, odd):
        decoded = decode_image(encode_image(color, None, fmt, iptc=records), f"x.{fmt}")
        assert decoded.iptc == (records if kept else None)


def _large_xmp(items: int = 6000) -> bytes:
    """A packet of Photoshop's kind that outgrows one JPEG segment: a long list of document ancestors, and a
    namespace declared on rdf:RDF rather than on the description that uses it."""
    ancestors = b"".join(b"<rdf:li>xmp.did:%032x</rdf:li>" % i for i in range(items))
    return (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            b'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/">'
            b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" photoshop:Credit="archive">'
            b'<dc:title><rdf:Alt><rdf:li xml:lang="x-default">Wedding, 1962</rdf:li></rdf:Alt></dc:title>'
            b'<photoshop:DocumentAncestors><rdf:Bag>' + ancestors + b'</rdf:Bag></photoshop:DocumentAncestors>'
            b'</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>')


def _app1_payloads(jpeg: bytes) -> list[bytes]:
    found, at = [], 2
    while jpeg[at] == 0xFF and jpeg[at + 1] != 0xDA:
        length = int.from_bytes(jpeg[at + 2 : at + 4], "big")
        if jpeg[at + 1] == 0xE1:
            found.append(jpeg[at + 4 : at + 2 + length])
        at += 2 + length
    return found


def test_an_xmp_packet_too_large_for_one_jpeg_segment_goes_as_extended_xmp():
    """Adobe's XMP specification, part 3: a main packet whose xmpNote:HasExtendedXMP is the MD5 digest of the rest,
    and the rest in chunks, each segment within JPEG's 65535 bytes. Read back (and through any format) the
    properties are all there, in one packet again."""
    import hashlib
    import xml.etree.ElementTree as ElementTree

    from restorecli.images.jpeg import XMP_APP1, XMP_MAX_BYTES
    from restorecli.images.xmp import EXTENSION_APP1

    packet = _large_xmp()
    assert len(packet) > 3 * XMP_MAX_BYTES
    color = np.zeros((8, 8, 3), np.uint8)
    jpeg = encode_image(color, None, "jpg", xmp=packet)
    payloads = _app1_payloads(jpeg)
    main = next(p[len(XMP_APP1):] for p in payloads if p.startswith(XMP_APP1))
    chunks = [p for p in payloads if p.startswith(EXTENSION_APP1)]
    assert len(main) <= XMP_MAX_BYTES and len(chunks) > 1 and all(len(p) + 2 <= 65535 for p in payloads)
    # a reader that knows no extended XMP still finds the small properties in the main packet
    assert b"Wedding, 1962" in main and b'photoshop:Credit="archive"' in main and b"DocumentAncestors" not in main
    digest = re.search(rb'HasExtendedXMP="([0-9A-F]{32})"', main).group(1)
    rest = b"".join(c[len(EXTENSION_APP1) + 40 :] for c in chunks)
    assert hashlib.md5(rest).hexdigest().upper().encode() == digest and rest.startswith(b"<x:xmpmeta")
    assert b"DocumentAncestors" in rest and b"Wedding, 1962" not in rest  # each property in one part
    head = len(EXTENSION_APP1)
    assert all(c[head : head + 32] == digest for c in chunks)
    assert {int.from_bytes(c[head + 32 : head + 36], "big") for c in chunks} == {len(rest)}  # the full length
    offsets = [int.from_bytes(c[head + 36 : head + 40], "big") for c in chunks]
    assert offsets == [sum(len(c) - head - 40 for c in chunks[:i]) for i in range(len(chunks))]

    merged = decode_image(jpeg, "x.jpg").xmp
    assert b"HasExtendedXMP" not in merged and merged.count(b"<rdf:li>xmp.did:") == 6000
    root = ElementTree.fromstring(re.sub(rb"<\?xpacket[^>]*\?>", b"", merged))  # well-formed, prefixes bound
    rdf = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
    described = root.find(f"{rdf}RDF").findall(f"{rdf}Description")
    assert any(d.get("{http://ns.adobe.com/photoshop/1.0/}Credit") == "archive" for d in described)
    assert decode_image(encode_image(color, None, "png", xmp=merged), "x.png").xmp == merged  # one packet
    again = decode_image(encode_image(color, None, "jpg", xmp=merged), "y.jpg").xmp  # JPEG to JPEG keeps it all
    assert again.count(b"<rdf:li>xmp.did:") == 6000 and b"Wedding, 1962" in again


def test_extended_xmp_that_does_not_add_up_is_left_out():
    from restorecli.images.jpeg import XMP_APP1
    from restorecli.images.xmp import merge, split

    main, chunks = split(_large_xmp(), 65502)
    assert merge(main, chunks[:-1]) == main  # a chunk missing: the main packet alone
    spoiled = chunks[0][:-1] + b"?"
    assert merge(main, [spoiled, *chunks[1:]]) == main  # the digest does not match
    assert merge(b"<x:xmpmeta/>", chunks) == b"<x:xmpmeta/>"  # no pointer
    assert XMP_APP1 not in main
    garbled = b"<x:xmpmeta>" + b"&" * 70_000  # not XML: it goes whole to the rest, behind a bare pointer
    main, chunks = split(garbled, 65502)
    assert b"HasExtendedXMP" in main and b"".join(c[75:] for c in chunks) == garbled


_NOTE = b'"http://ns.adobe.com/xmp/note/"'


def pointing_by(main: bytes, form: bytes) -> bytes:
    """``main`` (``xmp.split``'s, whose pointer is the xmpNote:HasExtendedXMP attribute of its description) with
    the pointer written as ``form`` instead, where %s is the digest: an attribute or a first child element."""
    digest = re.search(rb'xmpNote:HasExtendedXMP="([0-9A-F]{32})"', main).group(1)
    bare = main.replace(b" xmlns:xmpNote=" + _NOTE, b"").replace(b' xmpNote:HasExtendedXMP="%s"' % digest, b"")
    start = re.search(rb"<rdf:Description[^>]*", bare).end()
    if form.startswith(b"<"):
        start += 1  # after the start tag's ">"
    return bare[:start] + form % digest + bare[start:]


@pytest.mark.parametrize("form", [
    b"<xmpNote:HasExtendedXMP xmlns:xmpNote=" + _NOTE + b">%s</xmpNote:HasExtendedXMP>",
    b"<note:HasExtendedXMP xmlns:note=" + _NOTE + b">\n  %s\n</note:HasExtendedXMP >",
    b"<HasExtendedXMP xmlns=" + _NOTE + b">%s</HasExtendedXMP>",  # the default namespace
    b" xmlns:n=" + _NOTE + b" n:HasExtendedXMP='%s'",
])
def test_extended_xmp_is_found_under_any_prefix_bound_to_xmp_note_as_element_or_attribute(form):
    import xml.etree.ElementTree as ElementTree

    from restorecli.images.xmp import merge, split

    main, chunks = split(_large_xmp(), 65502)
    merged = merge(pointing_by(main, form), chunks)
    assert merged.count(b"<rdf:li>xmp.did:") == 6000 and b"HasExtendedXMP" not in merged
    root = ElementTree.fromstring(re.sub(rb"<\?xpacket[^>]*\?>", b"", merged))  # well-formed, prefixes bound
    assert b"Wedding, 1962" in merged and root.find(".//{http://ns.adobe.com/photoshop/1.0/}DocumentAncestors")


def test_a_has_extended_xmp_of_another_namespace_points_to_nothing():
    from restorecli.images.xmp import merge, split

    main, chunks = split(_large_xmp(), 65502)
    for form in (b'<other:HasExtendedXMP xmlns:other="http://example.com/ns/">%s</other:HasExtendedXMP>',
                 b' xmlns:other="http://example.com/ns/" other:HasExtendedXMP="%s"'):
        elsewhere = pointing_by(main, form)
        assert merge(elsewhere, chunks) == elsewhere


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


def _saved_all(fmt: str, frames: list[Image.Image]) -> bytes:
    out = io.BytesIO()
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], **({"duration": 100} if fmt != "MPO" else {}))
    return out.getvalue()


def test_animations_and_multi_page_files_are_refused_rather_than_cut_to_their_first_picture():
    import tifffile

    frames = [Image.new("RGB", (24, 16), (40 * i, 90, 20)) for i in range(3)]
    pages = io.BytesIO()
    tifffile.imwrite(pages, np.stack([np.asarray(f) for f in frames]), photometric="rgb")  # 3 pages
    for name, data in (("anim.gif", _saved_all("GIF", frames)), ("anim.png", _saved_all("PNG", frames)),
                       ("anim.webp", _saved_all("WEBP", frames)), ("scan.tif", pages.getvalue())):
        with pytest.raises(ImageDecodeError, match=f"{name}: holds 3 pictures .*extract the frames or pages first"):
            decode_image(data, name)


def test_a_camera_s_mpo_and_a_tiff_with_a_thumbnail_page_are_one_picture():
    """Phones write MPO JPEGs whose second image is a preview or depth map; TIFFs may carry a reduced-resolution
    copy of the image as a second page. Both are one photograph: its first picture."""
    import tifffile

    photo = np.asarray(Image.open(TEST_INPUTS / "rocket.jpg").convert("RGB"))
    mpo = decode_image(_saved_all("MPO", [Image.fromarray(photo), Image.new("RGB", (8, 8))]), "phone.jpg")
    assert mpo.color.shape == photo.shape and mpo.format == "jpg"
    with_thumbnail = io.BytesIO()
    with tifffile.TiffWriter(with_thumbnail) as tiff:
        tiff.write(photo, photometric="rgb")
        tiff.write(photo[::4, ::4], photometric="rgb", subfiletype=1)  # reduced-resolution copy
    decoded = decode_image(with_thumbnail.getvalue(), "scan.tif")
    np.testing.assert_array_equal(decoded.color, photo)


def test_pixel_limit_refuses_before_decoding():
    data = (TEST_INPUTS / "rocket.jpg").read_bytes()
    with pytest.raises(ImageTooLarge, match="exceeds the limit of 1,000"):
        decode_image(data, "rocket.jpg", max_pixels=1000)


def test_a_header_claiming_2_31_pixels_gets_restorecli_s_limit_not_pillow_s():
    """Pillow refuses such a header with its own DecompressionBombError (at twice its own, smaller limit); the
    --max-pixels check comes first, and a raised --max-pixels is not overruled by Pillow's."""
    claims, pillow_limit = grey_tiff(65536, 32768, b"\x80" * 16), Image.MAX_IMAGE_PIXELS
    message = r"huge.tif: 65536x32768 = 2,147,483,648 pixels exceeds the limit of 100,000,000 \(raise it with --max-pix"
    with pytest.raises(ImageTooLarge, match=message):
        decode_image(claims, "huge.tif")
    with pytest.raises(ImageTooLarge, match=message):
        probe(claims, "huge.tif", max_pixels=100_000_000)
    assert probe(grey_tiff(20000, 12000), "big.tif", max_pixels=300_000_000)[0] == (20000, 12000)  # past Pillow's 178,956,970
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's own, for everything else, as it was


@pytest.mark.parametrize("width,why", [(2**31 - 1, "out of memory"), (2**31, "too large for the decoder")])
def test_pixels_a_raised_limit_lets_through_but_nothing_can_hold_are_too_large(width, why):
    """One row of 2^31 pixels: Pillow cannot allocate it (MemoryError) or address it (OverflowError)."""
    with pytest.raises(ImageTooLarge, match=rf"wide.tif: {width}x1 = {width:,} pixels cannot be decoded here "
                                            rf"\({why}\); lower --max-pixels"):
        decode_image(grey_tiff(width, 1, b"\x80" * 16), "wide.tif", max_pixels=2**32)


def test_what_pillow_warns_about_a_file_is_one_warning_of_restorecli_s_naming_it():
    """Pillow warns twice, from its own source line, of a tag that points past the file's end (and under Python's
    default filter only for the first file of a process); restorecli warns once a file, naming it. A file it
    refuses goes with its error alone, and Pillow's DecompressionBombWarning (below --max-pixels) is not given."""
    pixels = bytes(range(192))
    tagged = grey_tiff(16, 12, pixels, extra=((305, 2, 10**6, 8),))  # Software: a million bytes, past the end
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = [decode_image(tagged, name) for name in ("a.tif", "b.tif")]
        with pytest.raises(ImageTooLarge):
            decode_image(tagged, "small limit.tif", max_pixels=100)
        probe(grey_tiff(10000, 9500), "large.tif", max_pixels=100_000_000)  # past Pillow's 89,478,485
    assert [(found.category, str(found.message)) for found in caught] == [
        (ImageWarning, f"{name}: Tag data larger than file. Skipping tag 305") for name in ("a.tif", "b.tif")]
    np.testing.assert_array_equal(decoded[1].color[:, :, 0], np.frombuffer(pixels, np.uint8).reshape(12, 16))


STRIP_IMAGES = dict(
    channels=st.sampled_from([1, 2, 3, 4]),
    dtype=st.sampled_from([np.uint8, np.uint16]),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 40), max_size=4),
    seed=st.integers(0, 2**16),
)


def _random_image(channels, dtype, height, width, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, (height, width, channels), dtype=dtype, endpoint=True)


def _write_in_strips(writer, pixels, cuts):
    """Feed ``pixels`` to ``writer`` cut at the rows ``cuts``, through one reused buffer as the engine hands rows
    over (a writer that keeps a view of a strip sees it overwritten), then close it."""
    bounds = sorted({0, len(pixels), *(c for c in cuts if c < len(pixels))})
    buffer = np.empty_like(pixels)
    for y0, y1 in zip(bounds, bounds[1:]):
        buffer[: y1 - y0] = pixels[y0:y1]
        writer.write(buffer[: y1 - y0])
        buffer[:] = 0
    writer.close()


@settings(max_examples=25, deadline=None)
@given(**STRIP_IMAGES, segment_bytes=st.sampled_from([1, 100, 1 << 20]),  # rows deflated apart: one, a few, all
       workers=st.sampled_from([1, 3]))
def test_png_writer_fed_in_strips_decodes_to_the_same_pixels(channels, dtype, height, width, cuts, seed,
                                                             segment_bytes, workers):
    from restorecli.images import png

    pixels = _random_image(channels, dtype, height, width, seed)
    out = io.BytesIO()
    saved, png._SEGMENT_BYTES = png._SEGMENT_BYTES, segment_bytes
    try:
        _write_in_strips(PngWriter(out, width, height, channels, dtype, workers=workers), pixels, cuts)
    finally:
        png._SEGMENT_BYTES = saved
    decoded = cv2.imdecode(np.frombuffer(out.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    if channels in (3, 4):
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGRA2RGBA)
    elif channels == 2:  # OpenCV expands grey+alpha to BGRA
        decoded = decoded[:, :, [0, 3]]
    np.testing.assert_array_equal(decoded.reshape(pixels.shape), pixels)
    data = out.getvalue()
    depth, colour_type = data[24], data[25]  # from IHDR: the file says what it holds
    assert depth == 8 * np.dtype(dtype).itemsize and colour_type == {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    with Image.open(io.BytesIO(data)) as image:  # a second, independent decoder reads it whole
        assert image.size == (width, height)
        image.load()


def test_png_bytes_do_not_depend_on_how_the_rows_were_split(monkeypatch):
    """IDAT chunks have a fixed size, so a file written strip by strip is the file written whole, byte for byte,
    however zlib happened to hand its output back."""
    from restorecli.images import png

    monkeypatch.setattr(png, "_IDAT_BYTES", 100)
    pixels = np.random.default_rng(5).integers(0, 65535, (50, 30, 3), dtype=np.uint16)
    files = []
    for cuts in ([], [1, 2, 17, 40], list(range(50))):
        out = io.BytesIO()
        _write_in_strips(PngWriter(out, 30, 50, 3, np.uint16), pixels, cuts)
        files.append(out.getvalue())
    assert files[0] == files[1] == files[2] and files[0].count(b"IDAT") > 10


def test_png_writer_writes_icc_and_exif_before_the_pixels():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "restorecli test camera"
    out = io.BytesIO()
    writer = PngWriter(out, 4, 3, 3, np.uint8, exif=exif.tobytes(), icc_profile=icc)
    writer.write(np.zeros((3, 4, 3), np.uint8))
    writer.close()
    data = out.getvalue()
    assert data.index(b"iCCP") < data.index(b"IDAT") and data.index(b"eXIf") < data.index(b"IDAT")
    with Image.open(io.BytesIO(data)) as image:
        assert image.info["icc_profile"] == icc
        assert image.getexif()[0x010F] == "restorecli test camera"


def test_png_writer_restarts_from_its_first_byte(tmp_path):
    """What an out-of-memory retry does: the rows come again from the top, into the same file."""
    pixels = np.random.default_rng(1).integers(0, 255, (30, 20, 3), dtype=np.uint8)
    fresh = io.BytesIO()
    writer = PngWriter(fresh, 20, 30, 3, np.uint8)
    writer.write(pixels)
    writer.close()
    with open(tmp_path / "x.png", "w+b") as handle:
        handle.write(b"kept before the PNG")
        writer = PngWriter(handle, 20, 30, 3, np.uint8)
        writer.write(pixels[:12] // 2)
        writer.restart()
        writer.write(pixels[:7])
        writer.write(pixels[7:])
        writer.close()
    assert (tmp_path / "x.png").read_bytes() == b"kept before the PNG" + fresh.getvalue()
    with pytest.raises(OSError, match="unseekable"):
        unseekable = io.BytesIO()
        unseekable.seekable = lambda: False  # type: ignore[method-assign]
        PngWriter(unseekable, 2, 2, 1, np.uint8).restart()


def test_png_writer_refuses_rows_that_do_not_fit_and_a_short_image():
    writer = PngWriter(io.BytesIO(), 5, 2, 3, np.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        writer.write(np.zeros((1, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="do not fit"):
        writer.write(np.zeros((1, 5, 3), np.uint16))
    writer.write(np.zeros((1, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="after 1 of 2 rows"):
        writer.close()
    with pytest.raises(ValueError, match="more than the 2 rows"):
        writer.write(np.zeros((2, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="8- or 16-bit"):
        PngWriter(io.BytesIO(), 5, 2, 3, np.float32)


@settings(max_examples=25, deadline=None)
@given(**STRIP_IMAGES, strip_bytes=st.sampled_from([1, 200, 1 << 19]),  # rows per TIFF strip: one, a few, all
       big=st.booleans())
def test_tiff_writer_fed_in_strips_decodes_to_the_same_pixels(channels, dtype, height, width, cuts, strip_bytes,
                                                              seed, big):
    import tifffile

    from restorecli.images import tiff

    pixels = _random_image(channels, dtype, height, width, seed)
    out = io.BytesIO()
    saved, tiff._STRIP_BYTES = tiff._STRIP_BYTES, strip_bytes
    try:
        writer = TiffWriter(out, width, height, channels, dtype, big=big)
    finally:
        tiff._STRIP_BYTES = saved
    _write_in_strips(writer, pixels, cuts)
    with tifffile.TiffFile(io.BytesIO(out.getvalue())) as decoded:
        assert decoded.is_bigtiff == big
        page = decoded.pages[0]
        assert page.compression == 8 and page.predictor == 2  # Adobe Deflate, horizontal differencing
        np.testing.assert_array_equal(page.asarray().reshape(pixels.shape), pixels)
    if channels != 2 or dtype == np.uint8:  # Pillow reads all of these (not 16-bit grey+alpha)
        decoded = decode_image(out.getvalue(), "x.tif")
        np.testing.assert_array_equal(decoded.color, pixels[:, :, : 3 if channels >= 3 else 1])


def _pillow_jpeg(pixels, **options) -> bytes:
    """What Pillow writes for the whole image, with a restart marker after every row of MCUs."""
    from restorecli.images.pixels import flatten_alpha, to_8bit

    if pixels.shape[2] in (2, 4):
        pixels = flatten_alpha(pixels[:, :, :-1], pixels[:, :, -1])
    pixels = to_8bit(pixels)
    out = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(out, "JPEG", restart_marker_rows=1,
                                                                               **options)
    return out.getvalue()


@settings(max_examples=30, deadline=None)
@given(channels=st.sampled_from([1, 2, 3, 4]), dtype=st.sampled_from([np.uint8, np.uint16]),
       height=st.integers(1, 700), width=st.integers(1, 40), cuts=st.lists(st.integers(0, 700), max_size=5),
       seed=st.integers(0, 2**16), quality=st.sampled_from([50, 95, 100]),
       band_bytes=st.sampled_from([1, 1 << 22]))  # rows per encoder call: 128, or all that have come
def test_jpeg_writer_fed_in_strips_writes_what_pillow_writes_for_the_whole_image(
        channels, dtype, height, width, cuts, seed, quality, band_bytes):
    """Bands of 128 rows encoded one at a time and joined at restart markers are byte for byte the whole
    image's encoding, wherever the strips are cut (alpha composited onto white, 16-bit rounded to 8)."""
    from restorecli.images import jpeg

    pixels = _random_image(channels, dtype, height, width, seed)
    out = io.BytesIO()
    saved, jpeg._BAND_BYTES = jpeg._BAND_BYTES, band_bytes
    try:
        writer = JpegWriter(out, width, height, channels, dtype, quality=quality)
    finally:
        jpeg._BAND_BYTES = saved
    _write_in_strips(writer, pixels, cuts)
    assert out.getvalue() == _pillow_jpeg(pixels, quality=quality)
    decoded = cv2.imdecode(np.frombuffer(out.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)  # a second decoder
    assert decoded.shape[:2] == (height, width)


def test_jpeg_writer_carries_exif_and_icc_once_and_restarts_from_its_first_byte():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "restorecli test camera"
    pixels = np.asarray(Image.open(TEST_INPUTS / "rocket.jpg").convert("RGB"))
    height, width = pixels.shape[:2]
    out = io.BytesIO()
    writer = JpegWriter(out, width, height, 3, np.uint8, quality=90, exif=exif.tobytes(), icc_profile=icc)
    writer.write(pixels[:200] // 2)  # an out-of-memory retry: the rows come again from the top
    writer.restart()
    for top in range(0, height, 100):
        writer.write(pixels[top : top + 100])
    writer.close()
    data = out.getvalue()
    assert data == _pillow_jpeg(pixels, quality=90, exif=exif.tobytes(), icc_profile=icc)
    assert data.count(b"ICC_PROFILE") == 1 and data.count(b"Exif\x00\x00") == 1
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (width, height) and image.info["icc_profile"] == icc
        assert image.getexif()[0x010F] == "restorecli test camera"


class _Pipe(io.RawIOBase):
    """What stdout is: writable, not seekable."""

    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, chunk):
        self.data += chunk
        return len(chunk)


def test_jpeg_writer_needs_no_seekable_stream_and_refuses_what_jpeg_cannot_hold():
    pipe = _Pipe()
    pixels = np.random.default_rng(4).integers(0, 255, (300, 20, 1), dtype=np.uint8)
    writer = JpegWriter(pipe, 20, 300, 1, np.uint8)
    writer.write(pixels)
    writer.close()
    assert bytes(pipe.data) == _pillow_jpeg(pixels, quality=95)
    with pytest.raises(ValueError, match="at most 65500 pixels a side, not 70000x10; write PNG or TIFF"):
        JpegWriter(io.BytesIO(), 70000, 10, 3, np.uint8)


@settings(max_examples=25, deadline=None)
@given(**STRIP_IMAGES, quality=st.sampled_from([50, 95]))
def test_webp_writer_fed_in_strips_writes_what_pillow_writes_for_the_whole_image(channels, dtype, height, width,
                                                                                 cuts, seed, quality):
    """The rows go straight into the picture libwebp encodes (the result held once, not twice), so the file is
    what Pillow writes for the whole image: RGB or RGBA, 8 bits."""
    from restorecli.images.pixels import to_8bit
    from restorecli.images.webp import WebpWriter

    pixels = _random_image(channels, dtype, height, width, seed)
    pipe = io.BytesIO()
    writer = WebpWriter(pipe, width, height, channels, dtype, quality=quality, xmp=b"<x/>")
    _write_in_strips(writer, pixels, cuts)
    eight = to_8bit(pixels)
    whole = np.concatenate([np.repeat(eight[:, :, :1], 3, axis=2), eight[:, :, 1:]], axis=2) if channels <= 2 \
        else eight
    expected = io.BytesIO()
    Image.fromarray(whole).save(expected, "WEBP", quality=quality, xmp=b"<x/>")
    assert pipe.getvalue() == expected.getvalue()


def test_webp_writer_restarts_even_on_an_unseekable_stream():
    from restorecli.images.webp import WebpWriter

    pixels = np.random.default_rng(3).integers(0, 255, (30, 20, 3), dtype=np.uint8)
    pipe = _Pipe()
    writer = WebpWriter(pipe, 20, 30, 3, np.uint8)
    writer.write(pixels[:17] // 3)
    writer.restart()  # nothing was written yet: the rows are gathered until close
    writer.write(pixels)
    writer.close()
    expected = io.BytesIO()
    Image.fromarray(pixels).save(expected, "WEBP", quality=95)
    assert bytes(pipe.data) == expected.getvalue()
    with pytest.raises(ValueError, match="at most 16383 pixels a side, not 16384x10; write PNG or TIFF"):
        WebpWriter(io.BytesIO(), 16384, 10, 3, np.uint8)


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_tiff_writer_carries_exif_icc_and_xmp_in_either_byte_order(endian, big):
    """A classic TIFF takes the EXIF's byte order and starts with its block; a BigTIFF (64-bit offsets, needed
    past 4 GiB) is little-endian and rewrites the EXIF directories in its own form."""
    import tifffile
    from PIL.TiffImagePlugin import IFDRational

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif.endian = endian
    exif[0x010F] = "TestCam"
    exif[0x0110] = "Model with a name longer than eight bytes"
    exif[0x0112] = 1
    exif.get_ifd(0x8769)[0x9003] = "2020:01:02 03:04:05"
    exif.get_ifd(0x8769)[0x829A] = IFDRational(1, 250)  # exposure time, a RATIONAL
    exif.get_ifd(0x8825)[0x0002] = (IFDRational(52), IFDRational(31), IFDRational(1234, 100))  # GPS latitude
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    pixels = np.random.default_rng(5).integers(0, 65535, (37, 23, 4), dtype=np.uint16)
    out = io.BytesIO()
    writer = TiffWriter(out, 23, 37, 4, np.uint16, exif=exif.tobytes(), icc_profile=icc, xmp=xmp, big=big)
    writer.write(pixels)
    writer.close()
    data = out.getvalue()
    # Pillow opens no big-endian BigTIFF
    assert data[:4] == (b"II+\x00" if big else b"II*\x00" if endian == "<" else b"MM\x00*")
    with tifffile.TiffFile(io.BytesIO(data)) as decoded:
        assert decoded.is_bigtiff == big
        np.testing.assert_array_equal(decoded.pages[0].asarray(), pixels)
    decoded = decode_image(data, "x.tif")
    np.testing.assert_array_equal(decoded.color, pixels[:, :, :3])
    np.testing.assert_array_equal(decoded.alpha, pixels[:, :, 3])
    assert decoded.icc_profile == icc and decoded.xmp == xmp
    again = Image.Exif()
    again.load(decoded.exif)
    assert again[0x010F] == "TestCam" and again[0x0110] == "Model with a name longer than eight bytes"
    assert again.get_ifd(0x8769)[0x9003] == "2020:01:02 03:04:05"
    assert again.get_ifd(0x8769)[0x829A] == 1 / 250
    assert again.get_ifd(0x8825)[0x0002] == (52, 31, 12.34)


def test_a_tiff_is_big_when_its_samples_could_pass_4_gib():
    """As GDAL's BIGTIFF=IF_NEEDED: the samples before compression decide, since the compressed size is known
    only at the end. Only the header is written here."""
    for width, height, channels, dtype, big in ((37800, 37800, 3, np.uint8, True),  # 4.0 GiB of samples
                                                (37000, 37000, 3, np.uint8, False),  # 3.8 GiB
                                                (26800, 26800, 3, np.uint16, True), (100, 100, 4, np.uint16, False)):
        out = io.BytesIO()
        writer = TiffWriter(out, width, height, channels, dtype)
        assert writer.big == big and out.getvalue()[2] == (43 if big else 42), (width, dtype)


@pytest.mark.parametrize("exif", [b"Exif\x00\x00II*\x00", b"II*\x00\xff\xff\x00\x00garbage", b"not exif at all"])
def test_a_damaged_exif_block_never_breaks_the_tiff(exif):
    pixels = np.random.default_rng(4).integers(0, 255, (12, 9, 3), dtype=np.uint8)
    decoded = decode_image(encode_image(pixels, None, "tiff", exif=exif), "x.tif")
    np.testing.assert_array_equal(decoded.color, pixels)


def test_an_8_bit_tiff_whose_decoder_arguments_mention_16_stays_8_bit():
    """Found by hypothesis: libtiff's arguments for this file are ('RGBA', False, 116); reading '16' in them as
    a bit depth sent it down the 16-bit path, which returned premultiplied colours."""
    from restorecli.images import tiff

    pixels = np.random.default_rng(0).integers(0, 255, (5, 1, 4), dtype=np.uint8, endpoint=True)
    out = io.BytesIO()
    saved, tiff._STRIP_BYTES = tiff._STRIP_BYTES, 1
    try:
        writer = TiffWriter(out, 1, 5, 4, np.uint8)
    finally:
        tiff._STRIP_BYTES = saved
    writer.write(pixels)
    writer.close()
    decoded = decode_image(out.getvalue(), "x.tif")
    np.testing.assert_array_equal(decoded.color, pixels[:, :, :3])
    np.testing.assert_array_equal(decoded.alpha, pixels[:, :, 3])


def test_tiff_writer_restarts_from_its_first_byte():
    pixels = np.random.default_rng(3).integers(0, 255, (30, 20, 1), dtype=np.uint8)
    fresh, reused = io.BytesIO(), io.BytesIO()
    for handle, restart in ((fresh, False), (reused, True)):
        writer = TiffWriter(handle, 20, 30, 1, np.uint8)
        if restart:
            writer.write(pixels[:17] // 3)
            writer.restart()
        writer.write(pixels)
        writer.close()
    assert reused.getvalue() == fresh.getvalue()


class _Endless(io.RawIOBase):
    """A pipe that never ends (``cat /dev/zero |``)."""

    def readable(self):
        return True

    def readinto(self, buffer):
        buffer[:] = bytes(len(buffer))
        return len(buffer)


class _Terminal(io.BytesIO):
    def isatty(self):
        return True


def test_input_files_that_cannot_be_images_are_refused_before_reading(tmp_path, named_pipe):
    with pytest.raises(ImageError, match=r"pipe.png: is a named pipe, not an image file"):
        read_input_file(named_pipe)
    with pytest.raises(ImageError, match=r"/dev/null: is a character device, not an image file"):
        read_input_file(Path("/dev/null"))
    with pytest.raises(ImageError, match=r"is a directory"):
        read_input_file(tmp_path)
    with pytest.raises(ImageDecodeError, match=r"absent.png: no such file"):
        read_input_file(tmp_path / "absent.png")
    huge = tmp_path / "huge.tif"
    with huge.open("wb") as handle:  # sparse: no disk used
        handle.truncate(max_file_bytes(1000) + 1)
    limit = max_file_bytes(1000)
    with pytest.raises(ImageTooLarge, match=rf"huge.tif: {limit + 1:,} bytes is more than any image within the limit "
                                            rf"of 1,000 pixels can take \({limit:,} bytes\); raise --max-pixels"):
        read_input_file(huge, max_pixels=1000)
    photo = TEST_INPUTS / "rocket.jpg"
    assert read_input_file(photo, max_pixels=1000) == photo.read_bytes()  # the limit is on bytes, pixels come later


def test_an_endless_stream_is_refused_once_it_passes_what_an_image_can_take():
    with pytest.raises(ImageTooLarge, match=r"stdin: .* bytes is more than any image"):
        read_input_stream(io.BufferedReader(_Endless()), "stdin", max_pixels=1)
    with pytest.raises(ImageError, match=r"stdin: is a terminal; pipe an image in"):
        read_input_stream(_Terminal(b""), "stdin")
    assert read_input_stream(io.BytesIO(b"abc"), "stdin") == b"abc"


def _with_density(fmt: str, dpi, orientation: int = 1) -> bytes:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    extra = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    out = io.BytesIO()
    image.save(out, fmt, dpi=dpi, **extra)
    return out.getvalue()


@pytest.mark.parametrize("source", ["PNG", "JPEG", "TIFF"])
@pytest.mark.parametrize("target", ["png", "jpg", "tiff"])
def test_pixel_density_is_carried_and_scaled_with_the_pixels(source, target):
    """A 300 x 150 dpi scan restored 2x wide and 3x high prints at the same size: 600 x 450 dpi, in the output
    format's own density field (PNG pHYs, JPEG JFIF, TIFF X/YResolution)."""
    decoded = decode_image(_with_density(source, (300, 150)), "scan")
    assert decoded.dpi == pytest.approx((300, 150), rel=1e-4)
    size = (80, 90)  # 2x the 40 px width, 3x the 30 px height
    color = np.zeros((90, 80, 3), np.uint8)
    written = Image.open(io.BytesIO(encode_image(color, None, target, **decoded.metadata_for(size))))
    assert written.info["dpi"] == pytest.approx((600, 450), rel=1e-4)


def test_density_follows_the_orientation_and_the_exif_resolution_is_scaled():
    decoded = decode_image(_with_density("JPEG", (300, 150), orientation=6), "turned")
    assert decoded.size == (30, 40) and decoded.dpi == pytest.approx((150, 300))  # a quarter turn swaps them
    exif = Image.Exif()
    exif[282], exif[283], exif[296] = 72, 96, 2
    out = io.BytesIO()
    Image.new("RGB", (40, 30)).save(out, "JPEG", exif=exif.tobytes())  # density in the EXIF only
    decoded = decode_image(out.getvalue(), "camera")
    metadata = decoded.metadata_for((160, 120))
    carried = Image.Exif()
    carried.load(metadata["exif"])
    assert (float(carried[282]), float(carried[283])) == (288, 384) and metadata["dpi"] == pytest.approx((288, 384))


def test_a_damaged_density_is_not_carried():
    out = io.BytesIO()
    Image.new("RGB", (40, 30)).save(out, "TIFF", dpi=(5e8, 5e8))  # no scanner; scaled 4x it would not fit pHYs
    decoded = decode_image(out.getvalue(), "odd.tif")
    assert decoded.dpi is None
    assert b"pHYs" not in encode_image(np.zeros((120, 160, 3), np.uint8), None, "png", **decoded.metadata_for((160, 120)))


def test_no_density_is_invented():
    plain = io.BytesIO()
    Image.new("RGB", (40, 30)).save(plain, "PNG")
    decoded = decode_image(plain.getvalue(), "plain")
    assert decoded.dpi is None
    png, tiff = (encode_image(np.zeros((60, 80, 3), np.uint8), None, fmt, **decoded.metadata_for((80, 60)))
                 for fmt in ("png", "tiff"))
    assert b"pHYs" not in png and "dpi" not in Image.open(io.BytesIO(png)).info
    assert not {282, 283, 296} & set(Image.open(io.BytesIO(tiff)).tag_v2)  # (Pillow reports 1 dpi for such a TIFF)
    assert decode_image(tiff, "no density").dpi is None  # and restorecli does not take that for a density


def _photoshop_tiff(description: str = "scan of a 1962 print") -> bytes:
    """A TIFF as Photoshop saves one: image resources (34377) and layer data (37724) beside the picture."""
    from PIL import TiffImagePlugin

    directory = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, value in ((34377, b"8BIM\x04\x0c" + bytes(100_000)), (37724, b"Adobe Photoshop Document Data Block\x00")):
        directory[tag] = value
        directory.tagtype[tag] = 7  # UNDEFINED
    directory[270], directory[271] = description, "ScanCo"
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
        out, "TIFF", tiffinfo=directory)
    return out.getvalue()


def test_a_tiff_s_own_tags_are_not_carried_as_exif():
    """A TIFF's first directory also says how that file is stored and holds Photoshop's resources and layers
    (the unrestored picture again: Photoshop would open an output carrying them with the old layers). Only the
    descriptive tags go on, in every format."""
    decoded = decode_image(_photoshop_tiff(), "scan.tif")
    carried = Image.Exif()
    carried.load(decoded.exif)
    assert dict(carried) == {270: "scan of a 1962 print", 271: "ScanCo"}
    color = np.zeros((60, 80, 3), np.uint8)
    for fmt in ("tiff", "jpg", "png"):
        written = Image.open(io.BytesIO(encode_image(color, None, fmt, **decoded.metadata_for((80, 60)))))
        tags = written.tag_v2 if fmt == "tiff" else written.getexif()
        assert tags.get(271) == "ScanCo" and not {34377, 37724} & set(tags)


def test_exif_larger_than_a_jpeg_segment_loses_its_largest_values_not_the_image():
    decoded = decode_image(_photoshop_tiff("x" * 100_000), "long.tif")  # a 100 KB description
    assert len(decoded.exif) > 65533
    written = Image.open(io.BytesIO(encode_image(np.zeros((60, 80, 3), np.uint8), None, "jpg",
                                                 **decoded.metadata_for((80, 60)))))
    exif = written.getexif()
    assert exif.get(271) == "ScanCo" and 270 not in exif  # Pillow alone refused it: "EXIF data is too long"
