"""An input's metadata carried to its output: the EXIF and XMP's pixel dimensions set to the output's size, the
pixel density scaled with the pixels, and only what the output's format has a place for
(``formats.Format.metadata``). Decoding reads the metadata; the writers place it, each in its format's own way.

The one home of the processing record too: what restorecli did to an image (``record_processing``), an XMP
property of its own namespace that every output format carries (``recorded_stages`` reads it back)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from xml.sax.saxutils import escape

from PIL import ExifTags, Image

from .formats import FORMATS, OutputFormat
from .xmp import parse as parse_xmp
from .xmp import wrapped

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


# The processing record's XMP namespace and prefix (exiftool shows the property as XMP-restorecli:Stages)
RECORD_NAMESPACE = "http://ns.restorecli.org/processing/1.0/"
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_STAGES = f"{{{RECORD_NAMESPACE}}}Stages"
_RDF_CLOSE = re.compile(rb"</([\w.-]+):RDF\s*>")


def _stages_description(stages: Sequence[str], rdf: bytes = b"rdf") -> bytes:
    """An ``rdf:Description`` whose ``restorecli:Stages`` is the ordered list ``stages`` (``rdf`` the prefix the
    packet binds the RDF namespace to)."""
    items = b"".join(b"<%s:li>%s</%s:li>" % (rdf, escape(stage).encode("utf-8"), rdf) for stage in stages)
    return (b'<%s:Description %s:about="" xmlns:restorecli="%s"><restorecli:Stages><%s:Seq>%s</%s:Seq>'
            b"</restorecli:Stages></%s:Description>" % (rdf, rdf, RECORD_NAMESPACE.encode(), rdf, items, rdf, rdf))


def recorded_stages(packet: bytes | None) -> list[str]:
    """The stages a processing record in the XMP ``packet`` lists, in order (``[]`` where it has none, or where
    the packet does not parse as XML)."""
    if not packet or RECORD_NAMESPACE.encode() not in packet:
        return []
    try:
        root = parse_xmp(packet)
    except ElementTree.ParseError:
        return []
    return [item.text or "" for stages in root.iter(_STAGES) for item in stages.iter(f"{{{_RDF}}}li")]


def record_processing(packet: bytes | None, stages: Sequence[str]) -> bytes | None:
    """The XMP ``packet`` (None: the output has none yet) with the processing record: ``restorecli:Stages``, an
    ordered list (``rdf:Seq``) of what restorecli did to the image, one short text per stage, e.g.
    ``["model:scunet-color-real-psnr", "model:realesrgan-x4plus", "faces:gfpgan-1.4"]``. A stage that adds to the
    image (colourisation, say) adds its own entry to the ``stages`` handed here; nothing else writes the record.
    An input restored by restorecli before keeps its earlier stages, the new ones after them. The input's packet
    stays byte for byte where it has no record yet (a description of its own goes before ``</rdf:RDF>``); one
    with a record is parsed and written again; one that does not parse then is left as it is. No ``stages``:
    ``packet`` as it is."""
    if not stages:
        return packet
    if packet is None:
        return wrapped(b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + _RDF.encode() + b'">'
                       + _stages_description(stages) + b"</rdf:RDF></x:xmpmeta>")
    closing = list(_RDF_CLOSE.finditer(packet))
    if RECORD_NAMESPACE.encode() not in packet and closing:
        at = closing[-1].start()
        return packet[:at] + _stages_description(stages, closing[-1].group(1)) + packet[at:]
    try:
        root = parse_xmp(packet)
    except ElementTree.ParseError:
        return packet
    earlier = recorded_stages(packet)
    rdf = root if root.tag == f"{{{_RDF}}}RDF" else root.find(f"{{{_RDF}}}RDF")
    if rdf is None:
        return packet
    for parent in list(root.iter()):
        for child in [child for child in parent if child.tag == _STAGES]:
            parent.remove(child)
        if parent in rdf and not len(parent) and set(parent.attrib) <= {f"{{{_RDF}}}about"}:
            rdf.remove(parent)  # the earlier record's own description, now empty
    ElementTree.register_namespace("restorecli", RECORD_NAMESPACE)
    description = ElementTree.SubElement(rdf, f"{{{_RDF}}}Description", {f"{{{_RDF}}}about": ""})
    listed = ElementTree.SubElement(ElementTree.SubElement(description, _STAGES), f"{{{_RDF}}}Seq")
    for stage in (*earlier, *stages):
        ElementTree.SubElement(listed, f"{{{_RDF}}}li").text = stage
    return wrapped(ElementTree.tostring(root))


def carried_metadata(*, exif: bytes | None, icc_profile: bytes | None, xmp: bytes | None, iptc: bytes | None,
                     dpi: tuple[float, float] | None, source: tuple[int, int], size: tuple[int, int],
                     stages: Sequence[str] = ()) -> dict[str, object]:
    """What the writers take to carry an input's metadata (its pixels ``source`` (w, h)) over to an output of
    ``size``: ``exif``, ``icc_profile``, ``xmp``, ``iptc`` and ``dpi``, with the pixel dimensions the EXIF and
    XMP record set to ``size``, and the pixel density (the file's own, and the EXIF's) scaled with the pixels, so
    the output prints at the input's size: a 300 dpi scan restored 4x is 1200 dpi. ``stages`` (what was done to
    the image) goes into the XMP as the processing record (``record_processing``)."""
    scale = (size[0] / source[0], size[1] / source[1])
    return {"exif": exif_for_output(exif, size, scale) if exif else None, "icc_profile": icc_profile,
            "xmp": record_processing(xmp_with_size(xmp, size) if xmp else None, stages), "iptc": iptc,
            "dpi": (dpi[0] * scale[0], dpi[1] * scale[1]) if dpi else None}


def for_format(fmt: OutputFormat, metadata: dict[str, object]) -> dict[str, object]:
    """The part of ``metadata`` (``carried_metadata``'s keys) that ``fmt`` has a place for."""
    kept = FORMATS[fmt].metadata
    return {key: value for key, value in metadata.items() if key in kept}
