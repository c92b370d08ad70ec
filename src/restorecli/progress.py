"""Long steps (a probe, a conversion, a model's loading) saying what they do while they run, with the time left.

The code doing the work enters a ``Step`` with what it is doing and, where it knows one, how many parts it has (the
speed probe's candidates) or how long it should take: a duration, or a ``rate`` by kind of step (seconds per
million parameters for a conversion) recorded from this machine's last step of that kind in the user cache
(``step-seconds.json``), with a first guess before any. The step tells the listener that ``reporting`` installed
(the CLI's renderer: a live line on a terminal, a line at its start and end elsewhere) as it starts, moves on and
ends; where none is installed (a queue worker, a library caller) it says its start, and its end where asked, to the
``notice`` it was given, as a line of text. Nothing here imports the CLI, torch or anything of restorecli's but
``files``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Literal

from .files import read_record, update_record, user_cache

Phase = Literal["start", "update", "end"]
Listener = Callable[[Phase, "Step"], None]
Notice = Callable[[str], None]

# What a kind of step took per unit of its size before this machine recorded its own: measured on the 2-core
# machines of docs/performance.md (x4plus, 16.7 M parameters: OpenVINO's conversion about 26 s, pnnx's about 60 s)
# (the bf16 check, about 150 ms, counts one unit; the precision probe a million parameters, as the conversions)
FIRST_RATES = {"openvino conversion": 1.6, "pnnx conversion": 3.6, "embedded conversion": 0.3, "model loading": 0.1,
               "bf16 check": 0.3, "precision probe": 0.1}

_listener: Listener | None = None
_lock = threading.Lock()


@contextmanager
def reporting(listener: Listener) -> Iterator[None]:
    """Steps entered in this process, on any thread, tell ``listener`` while the block runs (then the one before)."""
    global _listener
    with _lock:
        before, _listener = _listener, listener
    try:
        yield
    finally:
        with _lock:
            _listener = before


@contextmanager
def also_reporting(listener: Listener) -> Iterator[None]:
    """As ``reporting``, while the listener installed before (a command's renderer) is still told, after
    ``listener``: a queue worker records the step in its job while its command says it on stderr."""
    before = _listener

    def both(phase: Phase, step: "Step") -> None:
        listener(phase, step)
        if before is not None:
            before(phase, step)

    with reporting(both):
        yield


def time_left(elapsed: float, expected: float | None = None, done: int = 0, parts: int | None = None) -> float | None:
    """Seconds a step has left, ``elapsed`` seconds in: from its parts done so far (each as long as the mean of
    those done), else from the time it was ``expected`` to take (0 once past it); None where neither is known."""
    if parts and done:
        return max(elapsed / done * (parts - done), 0.0)
    if expected is not None:
        return max(expected - elapsed, 0.0)
    return None


def _record() -> Path:
    return user_cache("step-seconds.json")


def recorded_rate(kind: str) -> float | None:
    """Seconds per unit this machine's last step of ``kind`` took, else the first guess for it (None: neither)."""
    rate = read_record(_record()).get(kind)
    return float(rate) if isinstance(rate, (int, float)) and rate > 0 else FIRST_RATES.get(kind)


def record_rate(kind: str, rate: float) -> None:
    """Keep ``rate`` (seconds per unit) as the estimate of the next step of ``kind``; a read-only cache keeps none."""
    update_record(_record(), kind, round(rate, 6))


class Step:
    """One long step, entered as a context: ``with Step("converting x to ncnn", kind="pnnx conversion", size=16.7)
    as step: ...; step.found = "converted"``. ``parts``: how many parts it has (``advance`` after each);
    ``expected``: how long it should take, seconds; ``kind`` and ``size``: expected from the rate recorded for
    ``kind`` times ``size``, and this step's own rate recorded when it ends well. ``routine``: work every run does
    (loading a model), shown live on a terminal but never as lines of a log. ``clock``: seconds, monotonic."""

    def __init__(self, text: str, *, parts: int | None = None, expected: float | None = None, kind: str | None = None,
                 size: float | None = None, routine: bool = False, notice: Notice | None = None,
                 tell_end: bool = False, clock: Callable[[], float] = time.monotonic):
        self.text, self.parts, self.kind, self.size, self.routine = text, parts, kind, size, routine
        self.expected = expected
        if expected is None and kind is not None and size:
            rate = recorded_rate(kind)
            self.expected = rate * size if rate is not None else None
        self.done = 0
        self.found: str | None = None  # what it found, said when it ends ("bf16 runs 1.9x faster than fp32")
        self.failed = False
        self._notice, self._tell_end, self._clock = notice, tell_end, clock
        self._started, self._ended = 0.0, None
        self._listener: Listener | None = None

    @property
    def what(self) -> str:
        """What the step does, without the parenthesis its text ends with (once per machine, first run only)."""
        return self.text.split(" (")[0]

    def elapsed(self) -> float:
        return (self._clock() if self._ended is None else self._ended) - self._started

    def remaining(self) -> float | None:
        """Seconds left, by ``time_left``; None where nothing tells."""
        return time_left(self.elapsed(), self.expected, self.done, self.parts)

    def advance(self, parts: int = 1) -> None:
        self.done += parts
        if self._listener is not None:
            self._listener("update", self)

    def __enter__(self) -> "Step":
        self._started, self._ended = self._clock(), None
        self._listener = _listener
        if self._listener is not None:
            self._listener("start", self)
        elif self._notice is not None and not self.routine:
            self._notice(self.text)
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        self._ended = self._clock()
        self.failed = exc is not None
        if not self.failed and self.kind is not None and self.size:
            record_rate(self.kind, self.elapsed() / self.size)
        if self._listener is not None:
            self._listener("end", self)
        elif self._notice is not None and self._tell_end and self.found and not self.failed:
            self._notice(self.found)
