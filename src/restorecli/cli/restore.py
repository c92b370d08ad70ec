"""``restorecli restore``: declares options, builds RestoreOptions, calls the pipeline (or, with ``--server``, a
running server), renders the result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional

import typer
from rich.markup import escape

from ..errors import UsageError
from ..files import STDIO
from . import options as o
from . import render
from .exits import Interrupted, exit_on_error, stop_signals
from .render import BatchRenderer

if TYPE_CHECKING:
    from ..plan import BatchResult, ProgressCallback

_SERVER = "Server"
API_KEY_ENV = "API_KEY"  # server.config's, spelt here so that --help imports nothing of the server


@o.with_restore_options
def restore(
    ctx: typer.Context,
    inputs: o.Inputs,
    output: Annotated[str, typer.Option("-o", "--output", metavar="DIR|-", help="Output directory, or - for stdout.")
                      ] = "results",
    overwrite: Annotated[bool, typer.Option(help="Redo outputs that already exist (default: skip them).")] = False,
    dry_run: Annotated[bool, typer.Option(help="Show what would be written; write nothing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")] = False,
    server: Annotated[Optional[str], typer.Option(
        metavar="URL", help="Restore on a running restorecli serve: upload, follow, download into -o.",
        show_default=False, rich_help_panel=_SERVER)] = None,
    api_key_env: Annotated[str, typer.Option(
        metavar="NAME", help="Environment variable holding the server's API key.", rich_help_panel=_SERVER)
                           ] = API_KEY_ENV,
    timeout: Annotated[float, typer.Option(
        metavar="SECONDS", min=0.1, help="How long to wait for the server to connect, and then to go on answering.",
        rich_help_panel=_SERVER)] = 60.0,
    *,
    restore: dict,
) -> None:
    """Upscale images and videos with a Real-ESRGAN-family model."""
    with exit_on_error():
        if output == STDIO and json_output:
            raise UsageError("-o - writes the image to stdout, which --json also needs; use one of them")
        if server is None:
            stray = sorted(_given(ctx, ["api_key_env", "timeout"]))
            if stray:
                raise UsageError(f"--{stray[0].replace('_', '-')} is for a server: give --server URL too")
            batch = _local(inputs, restore, output, overwrite, dry_run, json_output)
        else:
            batch = _remote(server, api_key_env, timeout, _given(ctx, restore), inputs, restore, output, overwrite,
                            dry_run, json_output)
    raise typer.Exit(code=batch.exit_code)


def _given(ctx: typer.Context, names) -> set[str]:
    """Which of the parameters ``names`` the command line set (not left at their defaults). Sources are told by
    their names: Typer's ``ParameterSource`` lives in click or in Typer's private copy of it, by version."""
    return {name for name in names
            if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}


def _local(inputs: list[str], restore: dict, output: str, overwrite: bool, dry_run: bool,
           json_output: bool) -> BatchResult:
    from ..plan import collect_inputs

    # Flags' values and the inputs are checked before the pipeline imports torch: a usage error answers at once
    options = o.from_given(restore, output_dir=output, overwrite=overwrite, dry_run=dry_run)
    items = collect_inputs(inputs, options.recursive, exclude=None if output == STDIO else Path(output))
    from ..pipeline import restore_batch

    return _rendered(json_output, output, lambda progress: restore_batch(
        inputs, options, on_progress=progress, stdin=sys.stdin.buffer,
        stdout=sys.stdout.buffer if output == STDIO else None, items=items))


def _remote(url: str, api_key_env: str, timeout: float, given: set[str], inputs: list[str], restore: dict,
            output: str, overwrite: bool, dry_run: bool, json_output: bool) -> BatchResult:
    from ..server.client import Server, check_server_options, remote_options, restore_remote

    check_server_options(given)
    server = Server(url, api_key_env, timeout)
    jobs: list[str] = []

    def run(progress: ProgressCallback) -> BatchResult:
        options, fields = remote_options(server, restore, given, output_dir=output, overwrite=overwrite,
                                         dry_run=dry_run)

        def noted(event: str, payload: object) -> None:
            if event == "submitted":
                jobs.append(str(payload))
            progress(event, payload)

        return restore_remote(inputs, options, fields, server, on_progress=noted, stdin=sys.stdin.buffer,
                              stdout=sys.stdout.buffer if output == STDIO else None)

    batch = _rendered(json_output, output, run)
    if batch.interrupted is not None and jobs:  # nothing is cancelled: the server finishes what it was sent
        render.say(f"[yellow]left to the server[/] {escape(server.url)}: job{'s' if len(jobs) > 1 else ''} "
                   f"{escape(', '.join(jobs))} (GET /status/ID); a new run uploads what is not downloaded yet again")
    return batch


def _rendered(json_output: bool, output: str, run: Callable[[ProgressCallback], BatchResult]) -> BatchResult:
    """``run``'s batch, with its progress and results rendered; a stop signal ends it with what it finished."""
    with BatchRenderer(json_output, results_to_stdout=output != STDIO) as renderer:
        try:
            with stop_signals():
                batch = run(renderer)
        except Interrupted as stop:  # the image in hand is dropped (nothing under its name); the rest waits
            batch = renderer.so_far(interrupted=stop.signum)
    renderer.summary(batch)
    return batch
