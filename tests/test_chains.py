"""Model chains, presets and the processing record (issue 32): models run in order, each stage tiled seam-free,
the stages recorded in the output's XMP and in the JSON result, a queued job keeping its chain."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_INPUTS
from helpers.cli import invoke


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_every_output_format_records_what_was_done(tmp_path, model2, fmt):
    """The processing record (restorecli:Stages in the XMP packet) reads back from every format written."""
    from restorecli.images import decode_image
    from restorecli.images.metadata import recorded_stages

    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path, "--model", model2, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    output = next(tmp_path.glob("rocket.*"))
    assert recorded_stages(decode_image(output.read_bytes(), output.name).xmp) == [f"model:{model2.stem}"]


def test_a_restored_output_restored_again_keeps_its_earlier_stages(tmp_path, model2):
    from restorecli.images import decode_image
    from restorecli.images.metadata import recorded_stages

    first = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "one", "--model", model2,
                   "--outscale", "1")
    second = invoke("restore", tmp_path / "one" / "rocket.jpg", "-o", tmp_path / "two", "--model", model2,
                    "--outscale", "1", "--format", "png")
    assert first.exit_code == second.exit_code == 0, second.stderr
    xmp = decode_image((tmp_path / "two" / "rocket.png").read_bytes(), "rocket.png").xmp
    assert recorded_stages(xmp) == [f"model:{model2.stem}"] * 2
    assert xmp.count(b"restorecli:Stages>") == 2  # one property (its start and end tags), not one per run


def test_the_record_joins_an_input_s_own_packet_and_keeps_it_byte_for_byte():
    from restorecli.images.metadata import record_processing, recorded_stages

    packet = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-'
              b'ns#"><rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Wedding, '
              b'1962</dc:title></rdf:Description></rdf:RDF></x:xmpmeta>')
    recorded = record_processing(packet, ["model:a", "faces:<b & c>"])
    assert recorded_stages(recorded) == ["model:a", "faces:<b & c>"]
    assert recorded.startswith(packet[: packet.index(b"</rdf:RDF>")]) and recorded.endswith(b"</rdf:RDF></x:xmpmeta>")
    assert record_processing(packet, []) is packet and record_processing(None, []) is None
    assert recorded_stages(record_processing(None, ["model:a"])) == ["model:a"]
    assert record_processing(b"<not xml", ["model:a"]) == b"<not xml"  # no place for it: left as it is
