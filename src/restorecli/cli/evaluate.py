"""``restorecli evaluate``: quality reports against references, with numbers and pictures."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import RestoreCliError, UsageError
from ..files import check_output_folder, write_atomic
from . import options as o
from . import render
from .exits import exit_on_error

if TYPE_CHECKING:  # the evaluation runs models: it is imported when the command runs, not for --help
    from ..evaluate.results import Evaluation

D = o.DEFAULTS


DEGRADATIONS = ("bicubic", "blur-noise-jpeg")


def _number(value: float) -> float | str:
    """JSON has no infinity: identical images report the string "inf"."""
    return "inf" if math.isinf(value) else round(value, 6)


def _rows(evaluation: Evaluation) -> list[dict]:
    from ..evaluate.metrics import METRIC_NAMES  # numpy: only when shown

    rows = []
    for image in evaluation.images:
        if image.error:
            rows.append({"type": "error", "image": image.name, "error": image.error})
            continue
        for row in image.rows:
            rows.append({"type": "row", "image": row.image, "method": row.method, "kind": row.kind,
                         **{m: _number(getattr(row.metrics, m)) for m in METRIC_NAMES}, "seconds": row.seconds})
    return rows


def _summary(evaluation: Evaluation) -> dict:
    means = {method: {k: _number(v) for k, v in values.items()} for method, values in evaluation.means().items()}
    return {"type": "summary", "images": len(evaluation.succeeded), "failed": len(evaluation.failed),
            "means": means, "seconds": evaluation.seconds, "settings": evaluation.settings}


def _csv(evaluation: Evaluation) -> bytes:
    from ..evaluate.metrics import METRIC_NAMES  # numpy: only when shown

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "method", "kind", *METRIC_NAMES, "seconds", "error"])
    for row in _rows(evaluation):
        if row["type"] == "error":
            writer.writerow([row["image"], "", "", *[""] * len(METRIC_NAMES), "", row["error"]])
        else:
            writer.writerow([row["image"], row["method"], row["kind"], *[row[m] for m in METRIC_NAMES],
                             row["seconds"], ""])
    return buffer.getvalue().encode("utf-8")


def _table(evaluation: Evaluation) -> Table:
    from ..evaluate.metrics import METRIC_LABELS, METRIC_NAMES, format_metric  # numpy: only when shown

    means = evaluation.means()
    table = Table(title=f"restorecli evaluate: {len(evaluation.succeeded)} image(s), {len(evaluation.failed)} failed",
                  title_justify="left")
    table.add_column("method")
    for metric in METRIC_NAMES:
        table.add_column(METRIC_LABELS[metric], justify="right")
    table.add_column("s/image", justify="right")
    best = evaluation.best()
    for method, values in means.items():
        cells = []
        for metric in METRIC_NAMES:
            text = format_metric(values[metric], metric)
            cells.append(f"[bold green]{text}[/]" if values[metric] == best[metric] else text)
        table.add_row(escape(method), *cells, f"{values['seconds']:.3f}")
    table.caption = escape(evaluation.settings_line())
    table.caption_justify = "left"
    return table



def _check_places(report: Path | None, csv_path: Path | None) -> None:
    """Refuse a report or CSV place that cannot be written before the evaluation's model time, not after it."""
    if report is not None:
        check_output_folder(report, "--report")
    if csv_path is not None:
        if csv_path.is_dir():
            raise UsageError(f"--csv {csv_path}: is a folder; name the CSV file to write")
        check_output_folder(csv_path.parent, "--csv")


def _write_files(evaluation: Evaluation, csv_path: Path | None, report: Path | None) -> Path | None:
    """Write the CSV and the HTML report where asked; returns the report's page."""
    page = None
    try:
        if csv_path is not None:
            write_atomic(csv_path, _csv(evaluation))
        if report is not None:
            from ..evaluate.report import write_report

            page = write_report(evaluation, report)
    except OSError as exc:
        raise RestoreCliError(f"cannot write {exc.filename or csv_path or report}: {exc.strerror or exc}") from None
    return page


def _model_list(incomplete: str) -> list[tuple[str, str]]:
    """TAB on ``--models A,B``: the upscalers' registry names for the name after the last comma, those before it
    kept as they are typed."""
    typed, comma, last = incomplete.rpartition(",")
    return [(typed + comma + name, about) for name, about in o.registry_names("sr", last)]


def evaluate(
    inputs: Annotated[Optional[list[str]], typer.Argument(metavar="REFERENCE...",
                                                          help="Reference images or folders [default: test_inputs/].",
                                                          show_default=False)] = None,
    models: Annotated[str, typer.Option(metavar="NAME|PATH,...", autocompletion=_model_list,
                                        help="Comma-separated model names or paths.")] = D["model"],
    degrade: Annotated[str, typer.Option(metavar="|".join(DEGRADATIONS),
                                         help="How references become low-resolution inputs.")] = "bicubic",
    scale: Annotated[int, typer.Option(metavar="N",
                                       help="Downscale factor (and border cropped before measuring).", min=1)] = 4,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the random degradations.")] = 0,
    lr: Annotated[Optional[Path], typer.Option("--lr", metavar="DIR",
                                                       help="Folder of real low-resolution inputs (with --hr).",
                                               show_default=False)] = None,
    hr: Annotated[Optional[Path], typer.Option("--hr", metavar="DIR",
                                                       help="Folder of their references, matched by file stem.",
                                               show_default=False)] = None,
    face_enhance: o.FaceEnhance = False,
    report: Annotated[Optional[Path], typer.Option(metavar="DIR",
                                                   help="Write a self-contained HTML report into this folder.",
                                                   show_default=False)] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", metavar="FILE",
                                                              help="Write one CSV row per image and method.",
                                                     show_default=False)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON lines on stdout.")] = False,
    tile: o.Tile = D["tile"],
    tile_pad: o.TilePad = D["tile_pad"],
    device: o.Device = D["device"],
    precision: o.PrecisionOpt = D["precision"],
    weights_dir: o.WeightsDir = None,
) -> None:
    """Measure models against bicubic and Lanczos: PSNR/SSIM on RGB and Y, per image and as means."""
    from ..evaluate.run import EvalOptions, evaluate as run_evaluation

    with exit_on_error():
        names = tuple(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
        if not names:
            raise UsageError("--models names no model")
        _check_places(report, csv_path)
        options = EvalOptions(models=names, degrade=o.check_choice("--degrade", degrade, DEGRADATIONS), scale=scale,
                              seed=seed, lr_dir=str(lr) if lr else None, hr_dir=str(hr) if hr else None,
                              face_enhance=face_enhance, tile=o.parse_tile(tile), tile_pad=tile_pad, device=device,
                              precision=o.check_choice("--precision", precision, o.PRECISIONS),
                              weights_dir=weights_dir, keep_pictures=report is not None)
        with render.evaluation_progress(json_output) as on_progress:  # a failed image is named as it fails
            evaluation = run_evaluation(inputs or ["test_inputs"], options, on_progress)
        render.say(_table(evaluation))
        if json_output:
            for row in _rows(evaluation):
                render.out_json(row)
            render.out_json(_summary(evaluation))
        page = _write_files(evaluation, csv_path, report)
        if page is not None:
            render.say(f"report: {escape(str(page))}")
            if not json_output:
                render.out(str(page))
    raise typer.Exit(code=evaluation.exit_code)
