"""How a command ends: a library error becomes its message and exit code, and a stop signal an ``Interrupted``."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

import typer

from ..errors import RestoreCliError
from . import render


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
