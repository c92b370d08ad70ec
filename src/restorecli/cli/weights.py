"""``restorecli models`` and ``restorecli download-weights``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from ..models.presets import PRESETS
from ..models.registry import REGISTRY, ModelEntry
from . import render
from .exits import exit_on_error
from .options import Json as JsonFlag
from .options import WeightsDir

if TYPE_CHECKING:
    from ..models.download import FetchResult


def licence_note(entry: ModelEntry) -> str:
    """What a restrictive licence of ``entry``'s weights means, in one line."""
    needs = f"; it needs pip install 'restorecli[{entry.extra}]'" if entry.extra else ""
    return (f"{entry.name}'s weights are under the {entry.licence}: not for commercial use, never a default; "
            f"use them only where that licence allows{needs}")


def models(weights_dir: WeightsDir = None, json_output: JsonFlag = False,
           verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also say how each model runs on the ncnn and "
                                                 "OpenVINO back-ends: natively, converted, or why it stays on "
                                                 "torch.")] = False,
           presets: Annotated[bool, typer.Option("--presets", help="List the presets (restore --preset NAME): their "
                                                 "models and whether their weights are installed.")] = False,
           ) -> None:
    """List every known model with its status: installed, missing, embedded or corrupt (--presets: the presets)."""
    # the loaders are imported by the commands that use them: a usage error of restore answers without them
    from ..models.download import model_status
    from ..models.loading import choose_weights_dir, ncnn_status

    with exit_on_error():
        choice = choose_weights_dir(weights_dir)
        directory = choice.path
        if presets:
            _presets(directory, json_output)
            return
        rows = []
        for entry in REGISTRY.values():
            status, path = model_status(entry, directory)
            rows.append({"name": entry.name, "kind": entry.kind, "architecture": entry.architecture,
                         "scale": entry.scale, "status": status, "path": path, "file": entry.filename,
                         "sha256": entry.sha256, "licence": entry.licence, "description": entry.description})
            if verbose:
                rows[-1]["ncnn"] = ncnn_status(entry, directory)
                rows[-1]["openvino"] = openvino_status(entry, directory)
    if json_output:
        render.out_json({"weights_dir": str(directory), "weights_dir_reason": choice.reason,
                         "weights_dir_explanation": choice.explanation, "models": rows}, indent=2)
        return
    render.say(f"weights folder: {escape(str(directory.absolute()))} ({escape(choice.explanation)})")
    table = Table(title=f"models ({directory})", title_justify="left")
    table.add_column("name", no_wrap=True, min_width=max(len(row["name"]) for row in rows))  # never cut short
    for column in ("kind", "status", "licence", "description"):
        table.add_column(column, overflow="fold")  # narrow terminals: wrapped, no word cut to an ellipsis
    style = {"installed": "green", "embedded": "cyan", "missing": "yellow", "corrupt": "bold red"}
    for row in rows:
        table.add_row(row["name"], row["kind"], f"[{style[row['status']]}]{row['status']}[/]", row["licence"],
                      row["description"])
    # the licences that restrict use, whole, whatever the table's width
    notes = [f"note: {escape(licence_note(entry))}" for entry in REGISTRY.values() if entry.non_commercial]
    notes += [f"{back_end}: {row['name']}: {escape(row[back_end])}"
              for row in rows if verbose and row["kind"] == "sr" for back_end in ("ncnn", "openvino")]
    render.table_then_rows(table, (f"{row['name']}\t{row['status']}\t{row['path']}" for row in rows), notes)


def openvino_status(entry: ModelEntry, directory: Path) -> str:
    """How ``entry`` runs on the OpenVINO back-end, for ``models --verbose``: whether the package is there, whether
    the model is converted and passed its check against torch in each precision, and whether ``--backend auto``
    weighs it. Nothing is converted here."""
    from ..engine.backends import choice, openvino
    from ..models.integrity import sha256_of
    from ..models.loading import installed_file

    if entry.kind != "sr":
        return "torch only (a helper model of the main one)"
    if not openvino.available():
        return f"not used: it needs the openvino package ({openvino.INSTALL})"
    found = installed_file(entry, directory)
    if found is None:
        return "not installed"
    status = openvino.model_status(sha256_of(found))
    if not choice.weighs_openvino():
        status += f"; --backend auto leaves OpenVINO out (${choice.AUTO_CONVERT_ENV} is off): only --backend openvino"
    return status


def _presets(directory: Path, json_output: bool) -> None:
    """``models --presets``: each preset's models in order, whether it restores faces (with the default face
    models), and which of the weights it needs are not installed in ``directory`` (``download-weights`` fetches
    them)."""
    from ..models.download import model_status
    from ..options import RestoreOptions

    defaults = RestoreOptions()
    rows = []
    for preset in PRESETS.values():
        needed = [*preset.models, *((defaults.face_model, defaults.face_detector) if preset.face_enhance else ())]
        missing = [name for name in needed if model_status(REGISTRY[name], directory)[0] in ("missing", "corrupt")]
        rows.append({"name": preset.name, "models": list(preset.models), "face_enhance": preset.face_enhance,
                     "missing": missing, "description": preset.description})
    if json_output:
        render.out_json({"weights_dir": str(directory), "presets": rows}, indent=2)
        return
    table = Table(title=f"presets ({directory})", title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("models, in order", "faces", "weights", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        weights = (f"[yellow]missing: {escape(' '.join(row['missing']))}[/]" if row["missing"]
                   else "[green]installed[/]")
        table.add_row(row["name"], " -> ".join(row["models"]), "yes" if row["face_enhance"] else "no", weights,
                      row["description"])
    lacking = dict.fromkeys(name for row in rows for name in row["missing"])
    notes = [f"fetch what they lack: restorecli download-weights {' '.join(lacking)}"] if lacking else []
    render.table_then_rows(table, (f"{row['name']}\t{','.join(row['models'])}" for row in rows), notes)


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
    from ..models.download import DownloadOptions, fetch, import_local
    from ..models.loading import weights_dir as resolve_weights_dir

    with exit_on_error():
        directory = resolve_weights_dir(weights_dir)
        if from_path is not None:
            if names or all_models:
                raise UsageError("--from imports one file; do not also list names or --all")
            results = [import_local(from_path, name, directory)]
        else:
            wanted = _wanted(names, all_models)
            options = DownloadOptions(mirror=mirror, force=force, timeout=timeout, retries=retries)
            with render.download_progress() as on_progress:
                results = [fetch(model, directory, options, on_progress) for model in wanted]
        for result in results:
            _installed(result, directory, json_output)
        failed = sum(r.status == "failed" for r in results)
        if json_output:
            render.out_json({"type": "summary", "installed": len(results) - failed, "failed": failed})
    raise typer.Exit(code=1 if failed else 0)


def _wanted(names: list[str] | None, all_models: bool) -> list[str]:
    """The registry names to fetch: those named, every one with ``--all`` (but the non-commercial ones, which are
    fetched only when named: --all must not bring a licence nobody read), or what restore needs."""
    from ..models.download import default_names, unknown_model_message

    if not all_models:
        wanted = names or default_names()
    else:
        wanted = [n for n, e in REGISTRY.items() if not e.non_commercial]
        for entry in REGISTRY.values():
            if entry.non_commercial:
                render.say(f"note: --all leaves out {entry.name} ({escape(entry.licence)}); name it to fetch it")
    unknown = [n for n in wanted if n not in REGISTRY]
    if unknown:
        raise UsageError(unknown_model_message(unknown))
    return wanted


def _installed(result: FetchResult, directory: Path, json_output: bool) -> None:
    """One model's outcome: a line for people on stderr, with its licence and a locally pinned hash where they
    apply; its path (or, with ``--json``, the whole result) on stdout."""
    colour = "red" if result.status == "failed" else "green"
    render.say(f"[{colour}]{result.status}[/] {escape(result.name)}: {escape(str(result.message or result.path))}")
    entry = REGISTRY.get(result.name)
    if entry is not None and entry.non_commercial:
        render.say(f"  [yellow]licence[/]: {escape(licence_note(entry))}")
    if result.pinned_locally and result.status != "failed":
        render.say(f"  note: {result.name} has no published sha256; its hash {result.sha256} was pinned locally in "
                   f"{escape(str(directory))} and later files must match it")
    if json_output:
        render.out_json({"type": "item", **asdict(result)})
    elif result.path and result.status != "failed":
        render.out(result.path)
