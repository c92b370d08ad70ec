"""A PNG encoder fed a strip of rows at a time, so an output never has to be whole in memory.

It writes the Sub filter on every row, as OpenCV does, deflated fast (``deflate``: ISA-L's level 1, the size of
OpenCV's zlib level 1 with the RLE strategy in a quarter of its time, and within a few per cent of the smallest size
on photographs), plus what OpenCV cannot write: the ICC profile (iCCP), EXIF (eXIf) and XMP (an iTXt chunk, as
Adobe's XMP specification places it) chunks, before the image data.

The rows are deflated in parallel, the way pigz does it: the image is cut into segments of a fixed number
of rows (set by a row's length in bytes), each deflated on its own as a raw deflate stream ended with a sync flush
(the last with the final block), and the segments, joined in order behind one zlib header and followed by
one Adler-32 of all the filtered bytes, are one valid zlib stream that any decoder reads. The file's bytes
depend on the pixels only, not on the number of threads or on how the rows were split into strips.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import deque
from typing import BinaryIO

import numpy as np

from .deflate import ZLIB_HEADER, adler32, deflate_raw
from .strips import StripWriter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA
_SUB_FILTER = 1
_IDAT_BYTES = 1 << 20  # compressed bytes in each IDAT chunk
_SEGMENT_BYTES = 1 << 21  # filtered bytes deflated as one segment, rounded down to whole rows (at least one)
# Eight threads would deflate a 4096x4096 RGB output in about 55 ms (if they scale as the two here do), near a
# GPU model's time for it, with 32 MiB in flight; more would take cores the rest of the batch needs
_MAX_WORKERS = 8
_ADLER_BASE = 65521


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def deflate_workers() -> int:
    """Threads a ``PngWriter`` deflates with by default: the CPUs this process may run on, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_WORKERS))


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of A + B from ``first`` (A's), ``second`` (B's) and B's length, as zlib's adler32_combine.
    With a = 1 + the sum of the bytes and b = the sum of the a's after each byte (both mod 65521), appending B
    adds B's a less its starting 1 to a, and B's b plus len(B) times (A's a less 1) to b."""
    a = ((first & 0xFFFF) + (second & 0xFFFF) - 1) % _ADLER_BASE
    b = ((first >> 16) + (second >> 16) + second_length * ((first & 0xFFFF) - 1)) % _ADLER_BASE
    return (b << 16) | a


def _deflate_segment(filtered: np.ndarray, final: bool) -> tuple[bytes, int, int]:
    """One segment as raw deflate (no zlib header or trailer), ended on a byte boundary by a sync flush so the
    next segment's blocks can follow it, or by the final block; with its Adler-32 and length. ISA-L releases the
    GIL for both, so segments on several threads run on several cores."""
    return deflate_raw(filtered, final), adler32(filtered), filtered.size


class _Segment:
    """One segment's filtered rows, and once deflated, its result (or the error deflating it raised)."""

    def __init__(self, filtered: np.ndarray, final: bool):
        self.filtered, self._final = filtered, final
        self._result: tuple[bytes, int, int] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            self._result = _deflate_segment(self.filtered, self._final)
        except BaseException as error:  # handed to the writing thread by result()
            self._error = error
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> tuple[bytes, int, int]:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


class _DeflateThreads:
    """Up to ``workers`` threads deflating segments in the order they were queued. A thread ends as soon as it
    finds the queue empty, so none waits idle behind a writer, not even one abandoned mid-image (an exception in
    the model: the rows stop and ``close`` never comes); while rows keep coming the same threads carry on,
    without a start for each segment."""

    def __init__(self, workers: int):
        self._workers = workers
        self._lock = threading.Lock()
        self._queue: deque[_Segment] = deque()
        self._threads: list[threading.Thread] = []
        self._running = 0

    def submit(self, segment: _Segment) -> None:
        thread = None
        with self._lock:
            self._queue.append(segment)
            if self._running < self._workers:
                self._running += 1
                self._threads = [alive for alive in self._threads if alive.is_alive()]
                thread = threading.Thread(target=self._work, name="png-deflate", daemon=True)
                self._threads.append(thread)
        if thread is not None:  # started outside the lock, which its first step takes
            thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running -= 1
                    return
                segment = self._queue.popleft()
            segment.run()

    def stop(self) -> None:
        """Drop the segments not yet started and wait for the threads to end."""
        with self._lock:
            self._queue.clear()
            threads = list(self._threads)
        for thread in threads:
            thread.join()


class PngWriter(StripWriter):
    """Encode a ``width`` x ``height`` image of 1-4 channels (grey, grey+alpha, RGB, RGBA; uint8 or uint16)
    to ``handle``, top to bottom, as strips arrive through ``write``. ``close`` ends the file and
    checks that every row came. ``workers`` threads deflate (``deflate_workers()`` when not given; 1 deflates
    on the calling thread), with at most two segments per worker in memory; the file is the same for any
    number."""

    FORMAT = "PNG"

    def __init__(self, handle: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype | type,
                 *, exif: bytes | None = None, icc_profile: bytes | None = None, xmp: bytes | None = None,
                 dpi: tuple[float, float] | None = None, workers: int | None = None):
        super().__init__(handle, width, height, channels, dtype)
        self._bpp = channels * self.dtype.itemsize  # bytes per pixel, the Sub filter's stride
        self._segment_rows = max(1, _SEGMENT_BYTES // (width * self._bpp + 1))
        self._workers = deflate_workers() if workers is None else workers
        if self._workers < 1:
            raise ValueError(f"a PNG is deflated by at least one worker, not {self._workers}")
        self._threads = _DeflateThreads(self._workers) if self._workers > 1 else None
        self._in_flight: deque[_Segment] = deque()
        header = struct.pack(">IIBBBBB", width, height, self.dtype.itemsize * 8, _COLOUR_TYPE[channels], 0, 0, 0)
        self._head = PNG_SIGNATURE + png_chunk(b"IHDR", header)
        if icc_profile:
            self._head += png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile))
        if dpi:  # pixels per metre, x then y, unit 1 (the metre)
            self._head += png_chunk(b"pHYs", struct.pack(">IIB", *(round(d / 0.0254) for d in dpi), 1))
        if exif:
            self._head += png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
        if xmp:  # keyword, then no compression, no language tag, no translated keyword
            self._head += png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)
        self._begin()

    def _begin(self) -> None:
        self._abandon()  # a restart drops what the first attempt still had in flight
        self._pending = bytearray()
        self._adler = 1  # the Adler-32 of no bytes
        self._top = 0  # the first row of the segment being filled
        self._segment: np.ndarray | None = None  # its filtered rows, a filter byte and the row's bytes each
        self._filled = 0
        self._spare: np.ndarray | None = None
        self.handle.write(self._head)
        self._emit(ZLIB_HEADER)

    def _append(self, rows: np.ndarray) -> None:
        try:
            while len(rows):
                if self._segment is None:
                    rows_here = min(self._segment_rows, self.height - self._top)
                    if self._spare is not None and len(self._spare) == rows_here:
                        self._segment, self._spare = self._spare, None
                    else:
                        self._segment = np.empty((rows_here, self.width * self._bpp + 1), dtype=np.uint8)
                take = min(len(rows), len(self._segment) - self._filled)
                self._filter(rows[:take], self._segment[self._filled : self._filled + take])
                rows, self._filled = rows[take:], self._filled + take
                if self._filled == len(self._segment):
                    self._start_segment()
        except BaseException:
            self._abandon()
            raise

    def _filter(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Write ``rows`` Sub-filtered into ``out``; this copy is what the deflating thread reads, so the caller
        may reuse its buffer."""
        samples = rows.astype(">u2", copy=False) if self.dtype.itemsize == 2 else rows
        flat = np.ascontiguousarray(samples).view(np.uint8).reshape(len(rows), -1)
        out[:, 0] = _SUB_FILTER
        out[:, 1 : 1 + self._bpp] = flat[:, : self._bpp]
        np.subtract(flat[:, self._bpp :], flat[:, : -self._bpp], out=out[:, 1 + self._bpp :])

    def _start_segment(self) -> None:
        assert self._segment is not None
        self._top += len(self._segment)
        segment = _Segment(self._segment, self._top == self.height)
        self._in_flight.append(segment)
        if self._threads is None:
            segment.run()
        else:
            self._threads.submit(segment)
        self._segment, self._filled = None, 0
        self._write_done(keep=2 * self._workers - 1)

    def _write_done(self, keep: int) -> None:
        """Write the segments that are done, in order, waiting for the oldest while more than ``keep`` are in
        flight (memory stays bounded however fast the rows come)."""
        while self._in_flight and (len(self._in_flight) > keep or self._in_flight[0].done()):
            segment = self._in_flight.popleft()
            data, adler, length = segment.result()
            self._spare = segment.filtered  # reused: fresh memory for each segment costs page faults
            self._adler = adler32_combine(self._adler, adler, length)
            self._emit(data)

    def _abandon(self) -> None:
        """Drop the segments in flight and wait for the threads: none outlives an error, a restart or the end."""
        if self._threads is not None:
            self._threads.stop()
        self._in_flight.clear()

    def _emit(self, data: bytes, final: bool = False) -> None:
        """IDAT chunks of exactly ``_IDAT_BYTES`` (the last one shorter), so the file's bytes do not depend on
        how the rows were split into strips, only on the compressed stream."""
        self._pending += data
        while len(self._pending) >= _IDAT_BYTES:
            self.handle.write(png_chunk(b"IDAT", bytes(self._pending[:_IDAT_BYTES])))
            del self._pending[:_IDAT_BYTES]
        if final and self._pending:
            self.handle.write(png_chunk(b"IDAT", bytes(self._pending)))
            self._pending.clear()

    def _finish(self) -> None:
        try:
            self._write_done(keep=0)
        finally:
            self._abandon()  # nothing is left in flight by now: this waits for the threads to end
        self._emit(struct.pack(">I", self._adler), final=True)
        self.handle.write(png_chunk(b"IEND", b""))
