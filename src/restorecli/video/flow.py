"""Frames through three stages on their own threads, with bounded queues between them: decoding ahead, the model in
the caller's thread, encoding and muxing behind (``pipelined``); at most ``in_flight`` frames wait in each queue,
whatever the video's length, and a failure of any stage stops the others. With what a run checks and counts before
its first frame (``check_sizes``, ``frames_in``); a whole video (``restore``) and a Ray actor's range of one
(``ranges``) both run their frames through it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from ..errors import ImageError, ImageTooLarge
from ..images.formats import check_output_pixels
from .formats import VideoEncodeError
from .options import FrameRestorer, VideoOptions, VideoProgress
from .read import Frame, FrameRange, VideoFacts
from .segments import SegmentedOutput
from .write import CodecChoice, VideoOutput, check_frame_size

IN_FLIGHT = 4  # frames each queue holds: enough to keep the model fed through a slow keyframe or a burst of audio

_END = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _Stopped(Exception):
    """Another stage failed or the run was stopped: this one ends without a word (the other says why)."""


def _put(line: queue.Queue, item: object, stop: threading.Event) -> None:
    """Put ``item`` on the bounded ``line``, waiting while it is full; ``_Stopped`` once ``stop`` is set."""
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            line.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(line: queue.Queue, stop: threading.Event) -> object:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return line.get(timeout=0.1)
        except queue.Empty:
            continue


def check_sizes(facts: VideoFacts, options: VideoOptions, choice: CodecChoice, name: str) -> None:
    """Refuse, before any model time, frames over ``--max-pixels`` and outputs over ``--max-output-pixels`` or the
    codec's limits."""
    if options.max_pixels is not None and facts.width * facts.height > options.max_pixels:
        raise ImageTooLarge(f"{name}: its frames are {facts.width}x{facts.height} pixels, over the limit of "
                            f"{options.max_pixels:,} (--max-pixels)")
    if options.output_size is not None:
        size = options.output_size(facts.width, facts.height)
        check_output_pixels(name, size, options.max_output_pixels)
        check_frame_size(choice, size, name)


def frames_in(facts: VideoFacts, part: FrameRange) -> int | None:
    """How many frames ``part`` holds, where the container says how many the video has."""
    count = facts.frames
    if count is None and facts.duration and facts.rate:
        count = round(facts.duration * facts.rate)
    if part.begins is not None or part.ends is not None:  # a part by time: its frames are known as they come
        return None
    if count is None:
        return part.stop - part.start if part.stop is not None else None
    stop = min(count, part.stop) if part.stop is not None else count
    return max(0, stop - part.start)


def pipelined(items: Iterator[Any], total: int | None, sink: VideoOutput | SegmentedOutput,
               restorer: FrameRestorer, started: float, options: VideoOptions, name: str,
               on_progress: Callable[[VideoProgress], None] | None,
               in_flight: int) -> tuple[int, tuple[int, int], Frame | None]:
    """The frames and packets of ``items`` (``total`` frames, where known) decoded ahead on a thread, restored in
    the caller's, encoded behind on another: returns the frames restored, their size and the last one. A failure
    of any stage stops the others."""
    decoded: queue.Queue = queue.Queue(in_flight)
    restored: queue.Queue = queue.Queue(in_flight)
    stop = threading.Event()
    reader = threading.Thread(target=_decode_ahead, args=(items, decoded, stop),
                              name="restorecli-video-read", daemon=True)
    written: list[BaseException] = []
    writer = threading.Thread(target=_encode_behind, args=(sink, restored, stop, written),
                              name="restorecli-video-write", daemon=True)
    reader.start()
    writer.start()
    try:
        done = _run_model(restorer, decoded, restored, stop, total, started, options, name, on_progress)
        _put(restored, _END, stop)
        writer.join()
    except _Stopped:
        writer.join()
        if not written:
            raise
    except BaseException:
        stop.set()
        writer.join()
        sink.abort()
        raise
    finally:
        stop.set()  # the reader, should it still be waiting
        reader.join()
    if written:
        raise written[0]
    return done


def _run_model(restorer: FrameRestorer, decoded: queue.Queue, restored: queue.Queue, stop: threading.Event,
               total: int | None, started: float, options: VideoOptions, name: str,
               on_progress: Callable[[VideoProgress], None] | None) -> tuple[int, tuple[int, int], Frame | None]:
    """The model's stage, in the caller's thread: frames from ``decoded`` restored into ``restored``, packets
    passed along. Returns the frames restored, their size and the last frame."""
    frames, size, last = 0, (0, 0), None
    while True:
        item = _get(decoded, stop)
        if item is _END:
            return frames, size, last
        if isinstance(item, _Failed):
            raise item.exc
        if isinstance(item, Frame):
            color = restorer.restore_array(item.color, None, options.restore)
            if frames == 0:
                size = (color.shape[1], color.shape[0])
                check_output_pixels(name, size, options.max_output_pixels)
            item = replace(item, color=color)
            frames, last = frames + 1, item
            if on_progress is not None:
                elapsed = time.perf_counter() - started
                on_progress(VideoProgress(frames, total, round(frames / elapsed, 3) if elapsed > 0 else 0.0))
        _put(restored, item, stop)


def _decode_ahead(items: Iterator[Any], decoded: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in items:
            _put(decoded, item, stop)
        _put(decoded, _END, stop)
    except _Stopped:
        pass
    except BaseException as exc:  # the file's fault (VideoDecodeError) or FFmpeg's: the model's thread raises it
        try:
            _put(decoded, _Failed(exc), stop)
        except _Stopped:
            pass
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _encode_behind(sink: VideoOutput, restored: queue.Queue, stop: threading.Event,
                   written: list[BaseException]) -> None:
    """The writer's stage: frames encoded and packets muxed in order, then the file finished. A failure is put in
    ``written`` and stops the other stages."""
    try:
        while True:
            item = _get(restored, stop)
            if item is _END:
                sink.close()
                return
            if isinstance(item, Frame):
                sink.frame(item.color, item.pts, item.rotation, item.duration)
            else:
                sink.packet(item)
    except _Stopped:
        sink.abort()
    except BaseException as exc:
        sink.abort()
        written.append(exc if isinstance(exc, (ImageError, OSError)) else  # a full disk stays what it is
                       VideoEncodeError(f"{sink.name}: writing the video failed ({type(exc).__name__}: "
                                        f"{' '.join(str(exc).split())[:200]})"))
        stop.set()
