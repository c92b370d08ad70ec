"""The ``restorecli`` command: one Typer app, one place that maps library errors to exit codes."""

from __future__ import annotations

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


def _register() -> None:
    from . import evaluate, jobs, restore, weights  # noqa: F401  (each registers its commands on ``app``)


_register()


def main() -> None:
    app()
