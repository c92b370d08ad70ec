"""A small CMYK ICC profile for tests: this machine has no CMYK profile on disk, and LittleCMS (through Pillow)
creates only sRGB, Lab and XYZ ones.

It is an ICC v2 output profile whose AToB0 table (lut8Type, a 2-point grid per ink) maps each corner of the CMYK
cube to the Lab colour of printing inks multiplied together, so cyan ink alone is (0, 160, 220) in sRGB, not the
(0, 255, 255) of the naive formula: a decoder that applies the profile can be told from one that does not.
"""

from __future__ import annotations

import io
import itertools
import struct

from PIL import Image, ImageCms

INKS = {"C": (0, 160, 220), "M": (230, 0, 126), "Y": (255, 240, 0), "K": (35, 31, 32)}  # sRGB of each ink alone


def ink_rgb(c: int, m: int, y: int, k: int) -> tuple[int, int, int]:
    """sRGB of a corner of the CMYK cube (each ink 0 or 1): the inks present, multiplied together on white."""
    rgb = [1.0, 1.0, 1.0]
    for present, ink in zip((c, m, y, k), INKS.values()):
        if present:
            rgb = [a * b / 255 for a, b in zip(rgb, ink)]
    return tuple(round(255 * v) for v in rgb)  # type: ignore[return-value]


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _tag_desc(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\x00"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(4 + 4 + 2 + 1 + 67)


def _tag_xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def _tag_a2b0() -> bytes:
    corners = list(itertools.product((0, 1), repeat=4))  # C varies slowest, as the CLUT is laid out
    rgb = Image.frombytes("RGB", (len(corners), 1), bytes(v for corner in corners for v in ink_rgb(*corner)))
    lab = ImageCms.profileToProfile(rgb, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                    outputMode="LAB")
    # L 0-255 for 0-100, a and b offset by 128, as getpixel gives them (tobytes and numpy flip a and b's top bit)
    clut = b"".join(bytes(lab.getpixel((index, 0))) for index in range(len(corners)))
    identity = bytes(range(256))
    matrix = b"".join(_s15(1.0 if row == col else 0.0) for row in range(3) for col in range(3))
    return b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + matrix + identity * 4 + clut + identity * 3


def cmyk_profile() -> bytes:
    """The profile's bytes; LittleCMS reads it and converts CMYK through it."""
    tags = [(b"desc", _tag_desc("restorecli test CMYK")), (b"wtpt", _tag_xyz(0.9642, 1.0, 0.8249)),
            (b"cprt", b"text" + bytes(4) + b"No copyright, test data\x00"), (b"A2B0", _tag_a2b0())]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for signature, payload in tags:
        payload += bytes(-len(payload) % 4)  # tags start on 4-byte boundaries
        table += signature + struct.pack(">II", offset + len(data), len(payload))
        data += payload
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + b"prtrCMYKLab " + bytes(12)
              + b"acsp" + bytes(24) + struct.pack(">I", 0) + _tag_xyz(0.9642, 1.0, 0.8249)[8:] + bytes(48))
    assert len(header) == 128
    return header + table + data


_DEFAULT = b"the CMYK profile above"


def cmyk_jpeg(pixels: list[tuple[int, int, int, int]], size: int = 16, profile: bytes | None = _DEFAULT,
              **options) -> bytes:
    """A CMYK JPEG of square patches side by side, one per CMYK value (0-255), tagged with ``profile`` (by default
    ``cmyk_profile()``; None: untagged). ``options`` go to Pillow (``exif=...``)."""
    image = Image.new("CMYK", (size * len(pixels), size))
    for index, value in enumerate(pixels):
        image.paste(value, (index * size, 0, (index + 1) * size, size))
    if profile is not None:
        options["icc_profile"] = cmyk_profile() if profile == _DEFAULT else profile
    out = io.BytesIO()
    image.save(out, "JPEG", quality=100, **options)
    return out.getvalue()
