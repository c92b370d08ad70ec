"""Extended XMP: an XMP packet larger than one JPEG segment, as Adobe's XMP specification (part 3) stores it.

A JPEG APP1 segment holds at most 65502 bytes of XMP, and packets grow past that (Photoshop's document ancestors
and edit history, a catalogue's keywords). The specification splits such a packet in two: a small main packet in
the usual APP1 segment, whose ``xmpNote:HasExtendedXMP`` names the rest by the MD5 digest of its bytes (32
uppercase hex digits), and that rest, an ``x:xmpmeta`` element without the packet wrapper, cut into chunks of
APP1 segments of their own, each headed by the digest, the full length and the chunk's offset.

Here the largest properties go to the rest until the main packet fits, so a reader that knows no extended XMP
still finds the small ones there (title, keywords, ratings); a packet that does not parse as XML goes whole to
the rest. On reading, the rest's descriptions are merged back into the main packet, so other formats get one
packet again.
"""

from __future__ import annotations

import hashlib
import io
import re
import xml.etree.ElementTree as ElementTree

EXTENSION_APP1 = b"http://ns.adobe.com/xmp/extension/\x00"  # how an APP1 segment says it holds a chunk of it
_HEADER = len(EXTENSION_APP1) + 32 + 4 + 4  # namespace, digest, full length, offset
_CHUNK_BYTES = 65400  # the chunk size Adobe's own writers use (a segment would take 65458)
_WRAPPER = re.compile(rb"<\?xpacket[^>]*\?>\s*")
# A prefix bound to the xmpNote namespace, where the pointer to the rest lives (none: the default namespace)
_XMP_NOTE_BINDING = re.compile(rb"""\sxmlns(?::([\w.-]+))?\s*=\s*["']http://ns\.adobe\.com/xmp/note/["']""")
_RDF_BODY = re.compile(rb"<rdf:RDF\b([^>]*)>(.*)</rdf:RDF>", re.S)
_XMPMETA = re.compile(rb"<x:xmpmeta\b([^>]*)>")
_NAMESPACE = re.compile(rb"""\sxmlns:([\w.-]+)\s*=\s*(["'][^"']*["'])""")


_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_XMP_NOTE = "http://ns.adobe.com/xmp/note/"
_BEGIN, _END = b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>', b'<?xpacket end="w"?>'


def split(packet: bytes, limit: int) -> tuple[bytes, list[bytes]]:
    """(main packet of at most ``limit`` bytes, extension APP1 payloads) that together carry ``packet``."""
    try:
        main_tree, rest = _partition(_WRAPPER.sub(b"", packet).strip(), limit - 200)  # room for the pointer
    except (ElementTree.ParseError, ValueError):
        main_tree, rest = None, _WRAPPER.sub(b"", packet).strip()
    digest = hashlib.md5(rest).hexdigest().upper().encode("ascii")
    if main_tree is None:
        main = wrapped(b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-'
                b'rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:xmpNote="http://ns.adobe.com/xmp/note/" '
                b'xmpNote:HasExtendedXMP="' + digest + b'"/></rdf:RDF></x:xmpmeta>')
    else:
        ElementTree.register_namespace("xmpNote", _XMP_NOTE)
        main_tree.find(f"{_RDF}RDF/{_RDF}Description").set(f"{{{_XMP_NOTE}}}HasExtendedXMP", digest.decode())
        main = wrapped(ElementTree.tostring(main_tree))
    header = EXTENSION_APP1 + digest + len(rest).to_bytes(4, "big")
    chunks = [header + offset.to_bytes(4, "big") + rest[offset : offset + _CHUNK_BYTES]
              for offset in range(0, len(rest), _CHUNK_BYTES)]
    return main, chunks


def parse(packet: bytes) -> ElementTree.Element:
    """The ``x:xmpmeta`` element of ``packet`` (with or without its ``xpacket`` wrapper), the packet's own namespace
    prefixes registered so that serialising it again keeps them. Raises ``ElementTree.ParseError``."""
    body = _WRAPPER.sub(b"", packet).strip()
    for _event, (prefix, uri) in ElementTree.iterparse(io.BytesIO(body), events=("start-ns",)):
        if prefix and not re.fullmatch(r"ns\d+", prefix):
            ElementTree.register_namespace(prefix, uri)  # keep the packet's own prefixes when serialising
    return ElementTree.fromstring(body)


def wrapped(body: bytes) -> bytes:
    """``body`` (an ``x:xmpmeta`` element) as a packet, inside the ``xpacket`` processing instructions."""
    return _BEGIN + body + _END


def _partition(body: bytes, limit: int) -> tuple[ElementTree.Element, bytes]:
    """Move the largest properties of ``body`` (an ``x:xmpmeta`` element) into a description of their own in a
    second one, until the first serialises within ``limit`` bytes; returns (first, second serialised)."""
    root = parse(body)
    rdf = root.find(f"{_RDF}RDF")
    descriptions = rdf.findall(f"{_RDF}Description") if rdf is not None else []
    if not descriptions:
        raise ValueError("no rdf:Description")
    properties = sorted(((len(ElementTree.tostring(p)), d, p) for d in descriptions for p in d),
                        key=lambda entry: entry[0], reverse=True)
    moved = ElementTree.Element(f"{_RDF}Description", {f"{_RDF}about": ""})
    for _size, description, prop in properties:
        if len(ElementTree.tostring(root)) <= limit:
            break
        description.remove(prop)
        moved.append(prop)
    if len(ElementTree.tostring(root)) > limit or not len(moved):
        raise ValueError("the properties left do not fit")  # large attributes: everything goes to the rest
    rest = ElementTree.Element(root.tag, dict(root.attrib))
    ElementTree.SubElement(rest, f"{_RDF}RDF").append(moved)
    return root, ElementTree.tostring(rest)


def _pointers(main: bytes) -> list[re.Pattern[bytes]]:
    """The forms the pointer to the rest (xmpNote:HasExtendedXMP) can take in ``main``, the digest their group
    1: an attribute or an element, under each prefix the packet binds to the xmpNote namespace, wherever it binds
    it (an element may declare its own). An element in the default namespace, bound to xmpNote, counts too; an
    attribute without a prefix is in no namespace."""
    patterns = []
    for prefix in dict.fromkeys(found.group(1) for found in _XMP_NOTE_BINDING.finditer(main)):
        name = (re.escape(prefix) + b":" if prefix else b"") + b"HasExtendedXMP"
        patterns.append(re.compile(rb"<%s(?=[\s>])[^>]*>\s*([0-9A-Fa-f]{32})\s*</%s\s*>" % (name, name)))
        if prefix:
            patterns.append(re.compile(rb"""\s+%s\s*=\s*["']([0-9A-Fa-f]{32})["']""" % name))
    return patterns


def merge(main: bytes, payloads: list[bytes]) -> bytes:
    """``main`` with the extended XMP it points to merged in: the rest's descriptions go inside the main packet's
    ``rdf:RDF``, and the pointer is dropped. ``main`` as it is where it points to none, or where the chunks are
    missing, do not add up to their digest, or hold no ``rdf:RDF``."""
    pointers = _pointers(main)
    found = next((match for match in (pointer.search(main) for pointer in pointers) if match), None)
    main_body = _RDF_BODY.search(main)
    if found is None or main_body is None:
        return main
    digest = found.group(1).upper()
    pieces: dict[int, bytes] = {}
    length = None
    for payload in payloads:
        if payload.startswith(EXTENSION_APP1) and payload[len(EXTENSION_APP1) : len(EXTENSION_APP1) + 32].upper() == digest:
            at = len(EXTENSION_APP1) + 32
            length = int.from_bytes(payload[at : at + 4], "big")
            pieces[int.from_bytes(payload[at + 4 : at + 8], "big")] = payload[_HEADER:]
    rest = b"".join(pieces[offset] for offset in sorted(pieces))
    rest_body = _RDF_BODY.search(rest)
    if length != len(rest) or hashlib.md5(rest).hexdigest().upper().encode("ascii") != digest or rest_body is None:
        return main
    # namespaces the rest declares above its descriptions, which the main packet does not, go on its rdf:RDF
    declared = {prefix for prefix, _ in _NAMESPACE.findall(main[: main_body.start(2)])}
    above = b"".join(m.group(1) for m in (_XMPMETA.search(rest), rest_body) if m is not None)
    missing = b"".join(b" xmlns:%s=%s" % (prefix, uri) for prefix, uri in dict(_NAMESPACE.findall(above)).items()
                       if prefix not in declared)
    start, end = main_body.start(2), main_body.end(2)
    head = main[: start - 1] + missing + main[start - 1 : start]  # before the start tag's closing ">"
    kept = head + main[start:end]
    for pointer in pointers:
        kept = pointer.sub(b"", kept)
    return kept + rest_body.group(2) + main[end:]
