"""The model's loop, written once for every runtime that runs images on one set of models: each item is prepared
(read, decoded, its faces found) one ahead on the reader thread (``overlap.ReadAhead``), run by the model on the
loop's thread, and its output handed to the writer thread (``overlap.WriteBehind``), which encodes (and writes) it
behind; so the model never waits for the host while there is an image to run.

The local batch runs the loop over its inputs (``run_flow``, from ``batch``); the Ray actor runs it for ever over
the images its concurrent calls feed it (``Served``), each call waiting for its own answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Generic, TypeVar

from .overlap import END, Feed, ReadAhead, WriteBehind

T = TypeVar("T")
R = TypeVar("R")
A = TypeVar("A")


def run_flow(items: Sequence[T] | Feed[T], prepare: Callable[[T], R], step: Callable[[R, WriteBehind], bool], *,
             on_start: Callable[[T], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
             stops: Callable[[BaseException], bool] = lambda exc: False) -> None:
    """``prepare`` each of ``items`` (a sequence, or a ``Feed`` that other threads put into) one ahead on the reader
    thread, and run ``step(prepared, behind)`` for each in turn on this thread, ``behind`` being the writer thread it
    hands its output to (``stops``: which write errors stop the writer, as ``WriteBehind`` takes it). Ends past the
    last item (a feed's: once it is closed), where ``should_stop()`` says so (asked before an item is taken and
    again before its step), or where a step returns False. An exception of ``prepare`` is raised at its item's turn,
    one of ``step`` at once: either ends the loop, so callers that go on past an item's failure make it data.
    Leaving waits for the item in preparation, then for everything the writer was handed."""
    with WriteBehind(stops=stops) as behind, ReadAhead(items, prepare, on_start) as ahead:
        taking = iter(ahead)
        while not should_stop():
            ready = next(taking, END)
            if ready is END or should_stop() or not step(ready, behind):  # type: ignore[arg-type]
                break


class Clock:
    """An item's own work: the seconds a stage worked on it, not those it waited in a queue for the next stage."""

    def __init__(self, running: bool = True):
        self._spent = 0.0
        self._since: float | None = time.perf_counter() if running else None

    def resume(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            self._spent += time.perf_counter() - self._since
            self._since = None

    @contextmanager
    def running(self) -> Iterator[None]:
        self.resume()
        try:
            yield
        finally:
            self.pause()

    def _counted(self) -> float:
        return self._spent + (time.perf_counter() - self._since if self._since is not None else 0.0)

    @property
    def seconds(self) -> float:
        return round(self._counted(), 3)

    @property
    def started(self) -> float:
        """When, on ``time.perf_counter``'s scale, a clock that had never paused would have started: now less the
        seconds counted. An item's result counts its seconds from it."""
        return time.perf_counter() - self._counted()


class _Call(Generic[T, A]):
    """One call's item on its way through the flow, with its clock and the future of its answer."""

    def __init__(self, item: T, clock: Clock):
        self.item, self.clock = item, clock
        self.answer: Future[A] = Future()

    def settle(self, done: Future[A]) -> None:
        """The answer is ``done``'s (its value or its error); the clock stops first, so the caller reads its end."""
        self.clock.pause()
        error = done.exception()
        if error is not None:
            self.answer.set_exception(error)
        else:
            self.answer.set_result(done.result())

    def fail(self, error: BaseException) -> None:
        self.clock.pause()
        self.answer.set_exception(error)


class Served(Generic[T, R, A]):
    """``run_flow`` for ever, on a daemon thread started by the first call, over the items that calls feed it (a Ray
    actor's, on the threads Ray gives it): ``call(item)`` puts its item in the feed and waits for its own answer. So
    the items of concurrent calls go through the reader, the model and the writer thread in the order they came, one
    at a time in each, as a batch's images do. ``prepare(item)`` runs on the reader thread; ``run(item, prepared,
    behind)`` on the model thread, returning the future of the item's answer (``behind.encoded``: finished on the
    writer thread). What either raises is that call's error, raised by ``call``, and the loop goes on with the next
    item. No thread of it holds the process's exit (or a kill) up: each is a daemon."""

    def __init__(self, prepare: Callable[[T], R], run: Callable[[T, R, WriteBehind], Future[A]]):
        self._prepare, self._run = prepare, run
        self._feed: Feed[_Call[T, A]] = Feed()
        self._starting = threading.Lock()
        self._thread: threading.Thread | None = None

    def call(self, item: T, clock: Clock | None = None) -> A:
        """``item`` through the flow: its answer, or its error raised. ``clock`` (running from the call's start,
        where the caller counted work before it) runs while a stage works on the item, and stops with its answer."""
        call: _Call[T, A] = _Call(item, clock if clock is not None else Clock())
        call.clock.pause()  # waiting for the reader thread
        self._start()
        self._feed.put(call)
        return call.answer.result()

    def close(self) -> None:
        """End the loop once the items fed so far are answered, and its threads with it (for a process that goes on
        after its actor, as a test's does: an actor's process ends with them)."""
        with self._starting:
            self._feed.close()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _start(self) -> None:
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=run_flow, args=(self._feed, self._prepared, self._step),
                                                name="restorecli-model", daemon=True)
                self._thread.start()

    def _prepared(self, call: _Call[T, A]) -> tuple[_Call[T, A], R] | None:
        """The reader thread's part; None where the item failed there (its call is answered already)."""
        try:
            with call.clock.running():
                return call, self._prepare(call.item)
        except BaseException as exc:  # the item's own: its call raises it, the loop goes on
            call.fail(exc)
            return None

    def _step(self, ready: tuple[_Call[T, A], R] | None, behind: WriteBehind) -> bool:
        """The model thread's part: the item's answer is settled once what ``run`` handed the writer is done."""
        if ready is None:
            return True
        call, prepared = ready
        call.clock.resume()
        try:
            done = self._run(call.item, prepared, behind)
        except BaseException as exc:  # the item's own, as above
            call.fail(exc)
            return True
        done.add_done_callback(call.settle)
        return True


__all__ = ["Clock", "Served", "run_flow"]
