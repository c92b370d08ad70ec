"""How a command ends: a library error becomes its message and exit code, and a stop signal an ``Interrupted`` (or,
for a worker, a request to stop that its loop honours)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import typer

from ..errors import RestoreCliError
from . import render

if TYPE_CHECKING:  # the worker's module is imported by the command that runs one
    from ..jobs.worker import Stopping


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn a restorecli error into its message on stderr and its exit code."""
    try:
        yield
    except RestoreCliError as exc:
        render.error(str(exc))
        raise typer.Exit(code=exc.exit_code) from None


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) arrived. A ``KeyboardInterrupt``, so every cleanup that runs on
    Ctrl-C (the atomic writer removes its temporary file) runs for ``kill`` and ``timeout`` too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Interrupted`` as Ctrl-C does (whose ``KeyboardInterrupt``
    becomes ``Interrupted(SIGINT)``), instead of killing the process mid-write. A signal the process was told
    to ignore (``nohup``) stays ignored."""

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {}
    stops = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]  # Windows: no SIGHUP
    for signum in stops:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def worker_signals(stopping: Stopping, grace: float) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM ask the worker to stop after the image in hand, and abandon it once
    ``grace`` seconds have passed (at once on a second signal); SIGUSR1 asks it to finish the job in hand and claim
    no more. The caller's handlers come back after (run in-process: tests, an embedding program)."""

    def on_signal(signum, frame):
        if stopping.stop.is_set():  # a second signal: no more grace
            stopping.abandon.set()
            return
        stopping.stop.set()
        timer = threading.Timer(grace, stopping.abandon.set)
        timer.daemon = True
        timer.start()

    def on_drain(signum, frame):
        stopping.drain.set()

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_drain)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
