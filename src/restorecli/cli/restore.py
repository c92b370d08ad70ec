"""``restorecli restore``: declares options, builds RestoreOptions, calls the pipeline, renders the result."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import UsageError
from ..files import STDIO
from . import options as o
from .exits import Interrupted, exit_on_error, stop_signals
from .render import BatchRenderer

@o.with_restore_options
def restore(
    inputs: o.Inputs,
    output: Annotated[str, typer.Option("-o", "--output", metavar="DIR|-", help="Output directory, or - for stdout.")
                      ] = "results",
    overwrite: Annotated[bool, typer.Option(help="Redo outputs that already exist (default: skip them).")] = False,
    dry_run: Annotated[bool, typer.Option(help="Show what would be written; write nothing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")] = False,
    *,
    restore: dict,
) -> None:
    """Upscale images with a Real-ESRGAN-family model."""
    from ..pipeline import restore_batch

    with exit_on_error():
        if output == STDIO and json_output:
            raise UsageError("-o - writes the image to stdout, which --json also needs; use one of them")
        options = o.from_given(restore, output_dir=output, overwrite=overwrite, dry_run=dry_run)
        with BatchRenderer(json_output, results_to_stdout=output != STDIO) as renderer:
            try:
                with stop_signals():
                    batch = restore_batch(inputs, options, on_progress=renderer, stdin=sys.stdin.buffer,
                                          stdout=sys.stdout.buffer if output == STDIO else None)
            except Interrupted as stop:  # the image in hand is dropped (nothing under its name); the rest waits
                batch = renderer.so_far(interrupted=stop.signum)
        renderer.summary(batch)
    raise typer.Exit(code=batch.exit_code)
