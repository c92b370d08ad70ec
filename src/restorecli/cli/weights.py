"""``restorecli models`` and ``restorecli download-weights``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ..errors import UsageError
from ..models.download import (DownloadOptions, default_names, fetch, import_local, model_status,
                               unknown_model_message)
from ..models.loading import choose_weights_dir, weights_dir as resolve_weights_dir
from ..models.registry import REGISTRY, ModelEntry
from .exits import exit_on_error
from .options import Json as JsonFlag
from .options import WeightsDir
from .render import live_progress, same_terminal, stderr_console


def licence_note(entry: ModelEntry) -> str:
    """What a restrictive licence of ``entry``'s weights means, in one line."""
    needs = f"; it needs pip install 'restorecli[{entry.extra}]'" if entry.extra else ""
    return (f"{entry.name}'s weights are under the {entry.licence}: not for commercial use, never a default; "
            f"use them only where that licence allows{needs}")


def models(weights_dir: WeightsDir = None, json_output: JsonFlag = False) -> None:
    """List every known model with its status: installed, missing, embedded or corrupt."""
    with exit_on_error():
        choice = choose_weights_dir(weights_dir)
        directory = choice.path
        rows = []
        for entry in REGISTRY.values():
            status, path = model_status(entry, directory)
            rows.append({"name": entry.name, "kind": entry.kind, "architecture": entry.architecture,
                         "scale": entry.scale, "status": status, "path": path, "file": entry.filename,
                         "sha256": entry.sha256, "licence": entry.licence, "description": entry.description})
        if json_output:
            typer.echo(json.dumps({"weights_dir": str(directory), "weights_dir_reason": choice.reason,
                                   "weights_dir_explanation": choice.explanation, "models": rows}, indent=2))
            return
        console = stderr_console()
        console.print(f"weights folder: {escape(str(directory.absolute()))} ({escape(choice.explanation)})",
                      soft_wrap=True)
        table = Table(title=f"models ({directory})", title_justify="left")
        table.add_column("name", no_wrap=True, min_width=max(len(row["name"]) for row in rows))  # never cut short
        for column in ("kind", "status", "licence", "description"):
            table.add_column(column, overflow="fold")  # narrow terminals: wrapped, no word cut to an ellipsis
        style = {"installed": "green", "embedded": "cyan", "missing": "yellow", "corrupt": "bold red"}
        for row in rows:
            table.add_row(row["name"], row["kind"], f"[{style[row['status']]}]{row['status']}[/]", row["licence"],
                          row["description"])
        console.print(table)
        for entry in REGISTRY.values():  # the licences that restrict use, whole, whatever the table's width
            if entry.non_commercial:
                console.print(f"note: {licence_note(entry)}", soft_wrap=True)
        if same_terminal(sys.stdout, console.file):  # the person has read the table; the TSV is for pipes and files
            return
        for row in rows:
            typer.echo(f"{row['name']}\t{row['status']}\t{row['path']}")


def download_weights(
    names: Annotated[Optional[list[str]], typer.Argument(
        metavar="NAME...", help="Models to fetch [default: what restore needs].", show_default=False)] = None,
    all_models: Annotated[bool, typer.Option(
        "--all", help="Fetch every known model but those whose licence forbids commercial use (name them).")] = False,
    weights_dir: WeightsDir = None,
    mirror: Annotated[Optional[str], typer.Option(
        metavar="URL", help="Base URL replacing the origin (or RESTORECLI_WEIGHTS_MIRROR).", show_default=False)
    ] = None,
    force: Annotated[bool, typer.Option(help="Install again even if installed and passing its hash.")] = False,
    from_path: Annotated[Optional[Path], typer.Option(
        "--from", metavar="FILE", help="Import a local .pth, .safetensors or ncnn .param instead of downloading.")
    ] = None,
    name: Annotated[Optional[str], typer.Option(metavar="NAME", help="Registry name for --from.")] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Connect/read timeout in seconds.",
                                           min=0.1)] = 30.0,
    retries: Annotated[int, typer.Option(metavar="N", help="Retries per URL, with exponential backoff.",
                                         min=0)] = 3,
    json_output: JsonFlag = False,
) -> None:
    """Fetch model weights, verified by sha256 and resumable; offline, install embedded ones."""
    console = stderr_console()
    with exit_on_error():
        directory = resolve_weights_dir(weights_dir)
        if from_path is not None:
            if names or all_models:
                raise UsageError("--from imports one file; do not also list names or --all")
            results = [import_local(from_path, name, directory)]
        else:
            # non-commercial weights are fetched only when named: --all must not bring a licence nobody read
            wanted = [n for n, e in REGISTRY.items() if not e.non_commercial] if all_models else \
                (names or default_names())
            if all_models:
                for entry in REGISTRY.values():
                    if entry.non_commercial:
                        console.print(f"note: --all leaves out {entry.name} ({escape(entry.licence)}); name it to "
                                      "fetch it", soft_wrap=True)
            unknown = [n for n in wanted if n not in REGISTRY]
            if unknown:
                raise UsageError(unknown_model_message(unknown))
            options = DownloadOptions(mirror=mirror, force=force, timeout=timeout, retries=retries)
            results = []
            with live_progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                               TimeRemainingColumn(), console=console) as progress:
                tasks: dict[str, int] = {}

                def on_progress(model: str, done: int, total: int | None) -> None:
                    if model not in tasks:
                        tasks[model] = progress.add_task(model, total=total)
                    progress.update(tasks[model], completed=done, total=total)

                for model in wanted:
                    results.append(fetch(model, directory, options, on_progress))
        for result in results:
            colour = "red" if result.status == "failed" else "green"
            console.print(f"[{colour}]{result.status}[/] {escape(result.name)}: "
                          f"{escape(str(result.message or result.path))}",
                          soft_wrap=True)
            entry = REGISTRY.get(result.name)
            if entry is not None and entry.non_commercial:
                console.print(f"  [yellow]licence[/]: {escape(licence_note(entry))}", soft_wrap=True)
            if result.pinned_locally and result.status != "failed":
                console.print(f"  note: {result.name} has no published sha256; its hash {result.sha256} was pinned "
                              f"locally in {escape(str(directory))} and later files must match it", soft_wrap=True)
            if json_output:
                typer.echo(json.dumps({"type": "item", **asdict(result)}))
            elif result.path and result.status != "failed":
                typer.echo(result.path)
        failed = sum(r.status == "failed" for r in results)
        if json_output:
            typer.echo(json.dumps({"type": "summary", "installed": len(results) - failed, "failed": failed}))
    raise typer.Exit(code=1 if failed else 0)
