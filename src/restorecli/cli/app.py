"""The ``restorecli`` command: one Typer app, its commands registered from one module per command group.

Nothing heavy is imported here or by the command modules at import time: torch, spandrel, OpenCV and the image
codecs are imported inside the commands that run a model or decode pixels, so ``--help``, ``--version``, shell
completion, ``status``, ``prune``, ``models`` and ``serve`` start in a fraction of a second.
"""

from __future__ import annotations

import warnings

import typer

from . import devices, evaluate, jobs, render, restore, serve, weights
from .help import Command

app = typer.Typer(
    name="restorecli",
    help="Batch image restoration: tiled Real-ESRGAN upscaling on CUDA, MPS or the CPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is shown as written: rich markup would swallow its "[default: ...]"
    context_settings={"help_option_names": ["-h", "--help"]},  # every command's, as most command-line tools take
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        render.out(f"restorecli {version('restorecli')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Batch image restoration: tiled Real-ESRGAN upscaling on CUDA, MPS or the CPU."""
    warnings.showwarning = render.show_warning  # every command's warnings as one line each, no source paths


# In the order a user needs them: restore first, then the queue, then weights and measurement.
app.command(cls=Command)(restore.restore)
app.command(cls=Command)(jobs.submit)
app.command(cls=Command)(jobs.worker)
app.command(cls=Command)(jobs.status)
app.command(cls=Command)(jobs.cancel)
app.command(cls=Command)(jobs.prune)
app.command(cls=Command)(serve.serve)
app.command(cls=Command)(weights.models)
app.command("download-weights", cls=Command)(weights.download_weights)
app.command(cls=Command)(evaluate.evaluate)
app.command(cls=Command)(devices.devices)


def main() -> None:
    app(prog_name="restorecli")  # the name in usage lines and completion's variable, however it was started
