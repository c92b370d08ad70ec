"""The PNG writer's parallel deflate: segments of whole rows deflated apart and joined into one zlib stream that
libpng, Pillow and zlib read, the same bytes however many threads and however the rows came, and no thread left
behind by an error."""

from __future__ import annotations

import io
import itertools
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from restorecli.images import png
from restorecli.images.png import PngWriter, adler32_combine, deflate_workers

# 7 columns of RGB uint8 are 22 filtered bytes a row: 66 bytes make segments of 3 rows
ROW_BYTES_RGB8_W7 = 7 * 3 + 1


def _pixels(height, width, channels, dtype, seed=0):
    """Smooth gradients with noise, so the Sub filter and the RLE strategy both have something to find."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    ramp = np.linspace(0, top, width * channels, dtype=np.float64).reshape(1, width, channels)
    noise = rng.integers(0, max(2, top // 50), (height, width, channels))
    return np.clip(ramp + noise, 0, top).astype(dtype)


def _encode(pixels, workers, cuts=(), **kwargs):
    height, width, channels = pixels.shape
    out = io.BytesIO()
    writer = PngWriter(out, width, height, channels, pixels.dtype, workers=workers, **kwargs)
    bounds = sorted({0, height, *(c for c in cuts if 0 < c < height)})
    for y0, y1 in itertools.pairwise(bounds):
        writer.write(pixels[y0:y1].copy())
    writer.close()
    return out.getvalue()


def _chunks(data):
    """(kind, payload) of each chunk after the signature, each one's CRC checked."""
    assert data[:8] == png.PNG_SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big") == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


def _zlib_stream(data):
    return b"".join(payload for kind, payload in _chunks(data) if kind == b"IDAT")


def _sub_filtered(pixels):
    """The filtered rows, computed apart from the writer: a 1 before each row, then each byte less the byte one
    pixel to its left (big-endian samples)."""
    height, _, channels = pixels.shape
    raw = pixels.astype(pixels.dtype.newbyteorder(">")).view(np.uint8).reshape(height, -1).astype(np.int16)
    bpp = channels * pixels.dtype.itemsize
    sub = raw.copy()
    sub[:, bpp:] -= raw[:, :-bpp]
    return np.hstack([np.ones((height, 1), np.int16), sub % 256]).astype(np.uint8).tobytes()


def _decoded_by_libpng(data, channels):
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if channels == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    elif channels == 4:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)
    elif channels == 2:  # OpenCV expands grey+alpha to BGRA
        decoded = decoded[:, :, [0, 3]]
    return decoded.reshape(decoded.shape[0], decoded.shape[1], channels)


def _decoded_by_pillow(data, channels, dtype):
    """Pillow's pixels where its modes hold the samples exactly (8-bit, and 16-bit grey); None where they do not
    (it narrows 16-bit colour to 8 bits), after checking it decodes the whole image."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if dtype == np.uint8:
            return np.asarray(image).reshape(image.height, image.width, channels)
        if channels == 1:
            return np.asarray(image.convert("I")).astype(np.uint16)[:, :, None]
    return None


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("height, segment_rows", [(5, 8), (24, 3), (25, 3), (1, 1), (40, 1)],
                         ids=["one segment", "many segments", "last segment of one row", "one row",
                              "a segment a row"])
def test_segments_decode_to_the_same_pixels_in_libpng_pillow_and_zlib(monkeypatch, channels, dtype, height,
                                                                      segment_rows):
    width = 7
    bpp = channels * np.dtype(dtype).itemsize
    monkeypatch.setattr(png, "_SEGMENT_BYTES", segment_rows * (width * bpp + 1))
    pixels = _pixels(height, width, channels, dtype)
    data = _encode(pixels, workers=3, cuts=[2, 11])
    np.testing.assert_array_equal(_decoded_by_libpng(data, channels), pixels)
    by_pillow = _decoded_by_pillow(data, channels, dtype)
    if by_pillow is not None:
        np.testing.assert_array_equal(by_pillow, pixels)
    stream = _zlib_stream(data)
    assert zlib.decompress(stream) == _sub_filtered(pixels)  # zlib checks the Adler-32 at the end
    # the segments are there: one sync flush (an empty stored block) between each two
    assert stream.count(b"\x00\x00\xff\xff") >= -(-height // segment_rows) - 1


def test_one_segment_is_the_plain_zlib_stream():
    """A small image is one segment: exactly what a single zlib stream at the same settings gives."""
    from restorecli.images.deflate import zlib_stream

    pixels = _pixels(30, 40, 3, np.uint8)
    assert _zlib_stream(_encode(pixels, workers=4)) == zlib_stream(_sub_filtered(pixels))


def test_the_bytes_depend_on_neither_the_threads_nor_the_strips(monkeypatch):
    monkeypatch.setattr(png, "_IDAT_BYTES", 100)
    monkeypatch.setattr(png, "_SEGMENT_BYTES", 3 * ROW_BYTES_RGB8_W7)
    pixels = _pixels(50, 7, 3, np.uint8, seed=3)
    files = {_encode(pixels, workers, cuts) for workers in (1, 2, 5)
             for cuts in ([], [1, 2, 3, 17, 40], list(range(50)))}
    assert len(files) == 1
    (data,) = files
    assert data.count(b"IDAT") > 5
    assert _zlib_stream(data).count(b"\x00\x00\xff\xff") >= 16  # 17 segments


def _slowed(monkeypatch):
    """Deflate slowly, so segments are still in flight when an error comes (a broken writer would leave their
    threads running; a working one waits for them, so nothing here depends on how long they take)."""
    deflate = png._deflate_segment

    def slow(filtered, final):
        time.sleep(0.01)
        return deflate(filtered, final)

    monkeypatch.setattr(png, "_deflate_segment", slow)


def test_segments_in_flight_stay_bounded(monkeypatch):
    """However fast rows come, at most two segments a worker wait in memory, and at most one deflates a
    worker at a time."""
    monkeypatch.setattr(png, "_SEGMENT_BYTES", ROW_BYTES_RGB8_W7)  # a segment a row
    _slowed(monkeypatch)  # rows come faster than segments deflate
    running, most_running, lock = 0, 0, threading.Lock()
    deflate = png._deflate_segment

    def counted(filtered, final):
        nonlocal running, most_running
        with lock:
            running += 1
            most_running = max(most_running, running)
        try:
            return deflate(filtered, final)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(png, "_deflate_segment", counted)
    pixels = _pixels(60, 7, 3, np.uint8)
    out = io.BytesIO()
    writer = PngWriter(out, 7, 60, 3, np.uint8, workers=2)
    for row in pixels:
        writer.write(row[None])
        assert len(writer._in_flight) <= 4
    writer.close()
    assert most_running <= 2
    np.testing.assert_array_equal(_decoded_by_libpng(out.getvalue(), 3), pixels)


def test_a_restart_mid_image_writes_the_same_file(monkeypatch):
    monkeypatch.setattr(png, "_SEGMENT_BYTES", 3 * ROW_BYTES_RGB8_W7)
    pixels = _pixels(40, 7, 3, np.uint8, seed=9)
    fresh = _encode(pixels, workers=3)
    out = io.BytesIO()
    out.write(b"before")
    writer = PngWriter(out, 7, 40, 3, np.uint8, workers=3)
    writer.write(pixels[:29] // 2)  # segments in flight when the retry comes
    writer.restart()
    writer.write(pixels[:13])
    writer.write(pixels[13:])
    writer.close()
    assert out.getvalue() == b"before" + fresh


class _DiskFull(io.BytesIO):
    def __init__(self, room):
        super().__init__()
        self.room = room

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(28, "No space left on device")
        return super().write(data)


def _deflate_threads():
    return [thread for thread in threading.enumerate() if thread.name == "png-deflate"]


def test_a_failed_write_mid_image_leaves_no_thread_running(monkeypatch):
    monkeypatch.setattr(png, "_IDAT_BYTES", 64)
    monkeypatch.setattr(png, "_SEGMENT_BYTES", ROW_BYTES_RGB8_W7)
    _slowed(monkeypatch)
    pixels = np.random.default_rng(2).integers(0, 255, (300, 7, 3), dtype=np.uint8)  # hardly compresses
    before = threading.active_count()
    writer = PngWriter(_DiskFull(room=600), 7, 300, 3, np.uint8, workers=4)
    with pytest.raises(OSError, match="No space left"):
        for top in range(0, 300, 10):
            writer.write(pixels[top : top + 10])
    assert threading.active_count() == before and not _deflate_threads()


def test_a_failed_segment_surfaces_and_leaves_no_thread_running(monkeypatch):
    monkeypatch.setattr(png, "_SEGMENT_BYTES", ROW_BYTES_RGB8_W7)
    unslowed = png._deflate_segment
    _slowed(monkeypatch)
    deflate, calls = png._deflate_segment, []

    def failing(filtered, final):
        calls.append(None)
        if len(calls) == 5:
            raise MemoryError("no memory for the deflate state")
        return deflate(filtered, final)

    monkeypatch.setattr(png, "_deflate_segment", failing)
    pixels = _pixels(30, 7, 3, np.uint8)
    before = threading.active_count()
    writer = PngWriter(io.BytesIO(), 7, 30, 3, np.uint8, workers=3)
    with pytest.raises(MemoryError, match="deflate state"):
        writer.write(pixels[:20])
        writer.write(pixels[20:])
        writer.close()
    assert threading.active_count() == before and not _deflate_threads()
    monkeypatch.setattr(png, "_deflate_segment", unslowed)
    writer.restart()  # and the writer starts again cleanly
    writer.write(pixels)
    writer.close()


def test_a_writer_abandoned_mid_image_keeps_no_threads(monkeypatch):
    """What an exception in the model does: the rows stop, close never comes. The segments in flight finish and
    their threads end; no pool waits behind them."""
    monkeypatch.setattr(png, "_SEGMENT_BYTES", ROW_BYTES_RGB8_W7)
    pixels = _pixels(100, 7, 3, np.uint8)
    before = threading.active_count()

    def restore():
        writer = PngWriter(io.BytesIO(), 7, 100, 3, np.uint8, workers=4)
        writer.write(pixels[:61])
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        restore()
    for thread in _deflate_threads():
        thread.join(timeout=60)  # a safety net: each has one small segment left at most
    assert threading.active_count() == before


def test_workers_default_to_the_cpus_and_one_at_least():
    assert 1 <= deflate_workers() <= 8
    with pytest.raises(ValueError, match="at least one worker"):
        PngWriter(io.BytesIO(), 2, 2, 1, np.uint8, workers=0)


@given(first=st.binary(max_size=300), second=st.binary(max_size=300), repeat=st.integers(1, 400))
def test_adler32_combine_matches_zlib(first, second, repeat):
    second = second * repeat  # lengths past 65521, where the modulus shows
    assert adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(first + second)
