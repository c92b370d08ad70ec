"""The ``restorecli`` command: one Typer app, one place that maps library errors to exit codes."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

import typer

from ..errors import RestoreCliError
from . import render

app = typer.Typer(
    name="restorecli",
    help="Batch image restoration: tiled Real-ESRGAN upscaling on CUDA, MPS or the CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is shown as written: rich markup would swallow its "[default: ...]"
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"restorecli {version('restorecli')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Batch image restoration: tiled Real-ESRGAN upscaling on CUDA, MPS or the CPU."""


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


def _register() -> None:
    from . import evaluate, jobs, restore, weights  # noqa: F401  (each registers its commands on ``app``)


_register()


def main() -> None:
    app()
