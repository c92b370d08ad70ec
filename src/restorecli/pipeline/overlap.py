"""The threads that keep the model busy: the next image read and decoded ahead, the last one encoded and written
behind, each in the batch's order and each holding at most one image.

``ReadAhead`` prepares item i+1 on a thread while the caller runs the model on item i: the items of a batch, or
those other threads put into a ``Feed`` (a Ray actor's calls). ``WriteBehind`` owns one writer thread: outputs are
handed to it as strips of rows (``StripOutput``, a row sink), as files encoded whole, or as bytes encoded for the
caller to send on (``encoded``), in the order given, each file written to a temporary file renamed when complete
(``files.atomic_writer``). The codecs (zlib, libjpeg, libtiff, libwebp, OpenCV) release the GIL, so these threads
run beside the model's. The model's loop between them is ``flow``'s.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path
from queue import SimpleQueue
from typing import BinaryIO, Generic, Protocol, TypeVar

import numpy as np

from ..files import atomic_writer, write_atomic

T = TypeVar("T")
R = TypeVar("R")
E = TypeVar("E")

DEFAULT_BUDGET = 4 << 20  # bytes of finished rows waiting for the writer before the model waits for it: a few
# strips, enough to smooth the two threads' pace; more would not help a writer slower than the model


class Halted(BaseException):
    """An output was refused because an earlier one stopped the writer (a full or read-only disk): the image in
    hand ends at once, unwritten, and the batch with it. A ``BaseException``, so no per-image handler takes it
    for the image's own failure."""


class _Discarded(Exception):
    """Thrown into an output's temporary file to remove it: the image was abandoned."""


class _End:
    """Past the last item of a ``ReadAhead``'s source."""


END = _End()


class Feed(Generic[T]):
    """An open-ended source for ``ReadAhead``: items that other threads put (a Ray actor's calls), taken in the order
    they were put, the taker waiting for the next; ``close`` ends it once what was put is taken."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._closed = False
        self._changed = threading.Condition()

    def put(self, item: T) -> None:
        with self._changed:
            if self._closed:
                raise RuntimeError("the feed is closed: nothing put now would be taken")
            self._items.append(item)
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def get(self) -> T | _End:
        """The next item, waiting for it; ``END`` once the feed is closed and empty."""
        with self._changed:
            while not self._items and not self._closed:
                self._changed.wait()
            return self._items.popleft() if self._items else END


class ReadAhead(Generic[T, R]):
    """``prepare(item)`` for each of ``items`` in order, one item ahead of the caller, on one thread: taking item
    i starts item i+1, so at most one prepared item waits. ``items`` is a sequence, or a ``Feed`` that other threads
    put into while it is read (the next item is then waited for on the reader thread, never by the caller).
    ``on_start(item)`` is called as each item's preparation begins: for a sequence in the caller's thread as it is
    handed to the thread (a worker records what it reads ahead, to name it if a decoder crashes the process), for a
    feed on the reader thread once the item came. An exception ``prepare`` raises is raised by the iteration at
    that item's turn. Use as a context manager; leaving it waits for the item in preparation (and closes a feed). The
    thread is a daemon: a feed nobody closes never holds the process's exit up."""

    def __init__(self, items: Sequence[T] | Feed[T], prepare: Callable[[T], R],
                 on_start: Callable[[T], None] | None = None):
        self._items, self._prepare, self._on_start = items, prepare, on_start
        self._jobs: SimpleQueue[tuple[Future, Callable[[], object]] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="restorecli-read", daemon=True)
        self._thread.start()
        self._started = 0  # items of a sequence handed to the thread
        self._ahead: Future | None = None

    def __enter__(self) -> "ReadAhead[T, R]":
        return self

    def __exit__(self, *exc) -> None:
        if self._ahead is not None:
            self._ahead.cancel()  # not started: never started
        if isinstance(self._items, Feed):
            self._items.close()  # a reader waiting for the next item gets none
        self._jobs.put(None)
        self._thread.join()

    def __iter__(self) -> Iterator[R]:
        """Each item prepared, in order, to the last one (a feed's: until it is closed): the next waited for where
        it is not ready yet, and the one after it started as it is handed over."""
        while not isinstance(value := self._take(), _End):
            yield value

    def _take(self) -> R | _End:
        current = self._ahead if self._ahead is not None else self._start()
        self._ahead = None
        value = current.result()
        if not isinstance(value, _End):
            self._ahead = self._start()
        return value

    def _start(self) -> Future:
        """Hand the next item's preparation to the thread: the future of the item prepared, or of ``END``."""
        future: Future = Future()
        if isinstance(self._items, Feed):
            self._jobs.put((future, self._from_feed))
            return future
        if self._started >= len(self._items):
            future.set_result(END)
            return future
        item = self._items[self._started]
        self._started += 1
        if self._on_start is not None:
            self._on_start(item)
        self._jobs.put((future, lambda: self._prepare(item)))
        return future

    def _from_feed(self) -> R | _End:
        assert isinstance(self._items, Feed)
        item = self._items.get()
        if isinstance(item, _End):
            return item
        if self._on_start is not None:
            self._on_start(item)
        return self._prepare(item)

    def _serve(self) -> None:
        """The reader thread: each preparation handed to it, in order, its value or error into its future."""
        while (job := self._jobs.get()) is not None:
            future, run = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled before it began
            try:
                future.set_result(run())
            except BaseException as exc:  # the item's, raised by the iteration at its turn
                future.set_exception(exc)


class StripWriterLike(Protocol):
    def write(self, rows: np.ndarray) -> None: ...

    def restart(self) -> None: ...

    def close(self) -> None: ...


class StripOutput:
    """One output file written behind, a strip of rows at a time: a row sink for the engine. The rows are copied
    (the engine reuses its buffers) and queued; the writer thread feeds them to the format's strip writer, made by
    ``open_writer(handle)`` on the temporary file. ``finish`` ends the file and returns a future that completes when
    it is renamed into place; ``abort`` drops it. Raises, on ``write``, the writer's own error for this file, and
    ``Halted`` once the writer stopped for an earlier one."""

    def __init__(self, behind: "WriteBehind", path: Path, open_writer: Callable[[BinaryIO], StripWriterLike]):
        self._behind, self.path, self._open_writer = behind, path, open_writer
        self.future: Future[float] = Future()
        self.error: BaseException | None = None  # set by the writer thread
        self._stack: ExitStack | None = None
        self._writer: StripWriterLike | None = None
        behind._put(self, self._open, 0)

    def write(self, rows: np.ndarray) -> None:
        self._check()
        copy = np.array(rows)
        self._behind._put(self, lambda: self._writer.write(copy), copy.nbytes)  # type: ignore[union-attr]

    def restart(self) -> None:
        self._check()
        self._behind._put(self, lambda: self._writer.restart(), 0)  # type: ignore[union-attr]

    def finish(self, then: Callable[[], None] | None = None) -> Future[float]:
        """End the file (then run ``then`` in the writer thread, after the rename). The future's value is the
        ``time.perf_counter()`` at which the file was complete, or the error that lost it."""
        self._behind._put(self, lambda: self._finish(then), 0)
        return self.future

    def abort(self) -> None:
        """Drop the file: its temporary file is removed, nothing appears under its name."""
        self._behind._put(self, lambda: self._drop(_Discarded()), 0)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self._behind.stopped is not None:
            raise Halted(str(self._behind.stopped))

    # what runs in the writer thread
    def _open(self) -> None:
        self._stack = ExitStack()
        handle = self._stack.enter_context(atomic_writer(self.path))
        self._writer = self._open_writer(handle)

    def _finish(self, then: Callable[[], None] | None) -> None:
        assert self._writer is not None and self._stack is not None
        self._writer.close()
        stack, self._stack = self._stack, None
        stack.close()  # flushed, on disk, renamed
        if then is not None:
            then()
        self.future.set_result(time.perf_counter())

    def _drop(self, exc: BaseException) -> None:
        """Remove the temporary file (``exc`` thrown into its writer); the future, unless settled, fails with
        ``exc``. Safe to call again."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(type(exc), exc, exc.__traceback__)
        if not self.future.done():
            self.future.set_exception(exc)


class WriteBehind:
    """One writer thread for a batch's outputs, fed in order through a queue that holds at most ``budget`` bytes
    (a single larger piece waits for the queue to empty), so the model runs ahead of the writer by that much and no
    more. A write error is its output's alone, unless ``stops(error)`` says every later output would fail the same
    way (a full disk): then the writer refuses the rest (``stopped``). Use as a context manager; leaving it runs
    what was queued (aborted outputs are only removed) and ends the thread."""

    def __init__(self, budget: int = DEFAULT_BUDGET, stops: Callable[[BaseException], bool] = lambda exc: False):
        self._budget, self._stops = budget, stops
        self._queue: deque[tuple[StripOutput | None, Callable[[], None], int]] = deque()
        self._queued = 0  # bytes waiting
        self._changed = threading.Condition()
        self._closing = False
        self.stopped: BaseException | None = None  # the error that stopped the writer
        self._thread = threading.Thread(target=self._run, name="restorecli-write", daemon=True)
        self._thread.start()

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def strips(self, path: Path, open_writer: Callable[[BinaryIO], StripWriterLike]) -> StripOutput:
        """A new output at ``path``, fed a strip of rows at a time (see ``StripOutput``)."""
        return StripOutput(self, path, open_writer)

    def file(self, path: Path, encode: Callable[[], bytes], size: int,
             then: Callable[[], None] | None = None) -> Future[float]:
        """Write ``encode()`` to ``path`` atomically in the writer thread, then run ``then``. ``size``: the bytes the
        closure holds, counted against the budget. Returns a future of the time the file was complete, or of the
        error that lost it."""

        def write() -> float:
            write_atomic(path, encode())
            if then is not None:
                then()
            return time.perf_counter()

        return self.encoded(write, size)

    def encoded(self, encode: Callable[[], E], size: int) -> Future[E]:
        """Run ``encode()`` in the writer thread, in turn with the outputs handed over before it, for a runtime that
        sends the bytes on rather than writing them (the Ray actor's reply). ``size``: the bytes the closure holds,
        counted against the budget. Returns a future of its value, or of its error."""
        future: Future[E] = Future()

        def run() -> None:
            try:
                if self.stopped is not None:
                    raise Halted(str(self.stopped))
                value = encode()
            except BaseException as exc:
                self._failed(exc)
                future.set_exception(exc)
            else:
                future.set_result(value)

        self._put(None, run, size)
        return future

    def close(self) -> None:
        """Run everything queued and end the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    def _put(self, output: StripOutput | None, step: Callable[[], None], size: int) -> None:
        with self._changed:
            while size and self._queued and self._queued + size > self._budget:
                self._changed.wait(0.5)  # timed, so that a signal reaches the main thread while it waits
            self._queue.append((output, step, size))
            self._queued += size
            self._changed.notify_all()

    def _failed(self, exc: BaseException) -> None:
        if self.stopped is None and not isinstance(exc, (Halted, _Discarded)) and self._stops(exc):
            self.stopped = exc

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closing:
                    self._changed.wait()
                if not self._queue:
                    return
                output, step, size = self._queue.popleft()
            try:
                if output is None:
                    step()  # a whole file: settles its own future
                elif output.error is not None or self.stopped is not None:
                    output._drop(output.error or Halted(str(self.stopped)))  # the rest of a lost file
                else:
                    try:
                        step()
                    except BaseException as exc:  # this output's failure: its file goes, its later steps are skipped
                        output.error = exc
                        self._failed(exc)
                        output._drop(exc)
            finally:
                with self._changed:
                    self._queued -= size
                    self._changed.notify_all()
