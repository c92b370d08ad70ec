"""``restorecli restore``: declares options, builds RestoreOptions, calls the pipeline, renders the result."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ..images import DEFAULT_MAX_PIXELS
from ..models.registry import DEFAULT_MODEL
from ..pipeline import STDIO, RestoreOptions, restore_batch
from .app import app, exit_on_error
from .render import BatchRenderer


class Format(str, Enum):
    same = "same"
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tiff = "tiff"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Alpha(str, Enum):
    model = "model"
    resize = "resize"


def parse_tile(value: str) -> int | None:
    """``auto`` -> None, ``0`` -> whole image, ``N`` -> N x N tiles."""
    if value.strip().lower() == "auto":
        return None
    try:
        tile = int(value)
    except ValueError:
        raise UsageError(f"--tile '{value}' is not auto, 0 or a positive number of pixels") from None
    if tile < 0 or 0 < tile < 8:
        raise UsageError(f"--tile {tile}: use 0 (whole image) or at least 8 pixels")
    return tile


@app.command()
def restore(
    inputs: Annotated[list[str], typer.Argument(help="Image files, directories, or - for stdin.", show_default=False)],
    output: Annotated[str, typer.Option("-o", "--output", help="Output directory, or - for stdout.")] = "results",
    model: Annotated[str, typer.Option(help="Registry name or checkpoint path (.pth, .safetensors, ncnn .param).")]
    = DEFAULT_MODEL,
    outscale: Annotated[Optional[float], typer.Option(help="Final scale, e.g. 2 or 3.5 [default: the model's].",
                                                      min=0.01, show_default=False)] = None,
    tile: Annotated[str, typer.Option(help="auto (from free memory), 0 (whole image) or N (N x N tiles).")] = "auto",
    tile_pad: Annotated[int, typer.Option(help="Context overlap around each tile, in input pixels.", min=0)] = 24,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[Precision, typer.Option(help="auto: fp16 on CUDA where supported, else fp32.")]
    = Precision.auto,
    format: Annotated[Format, typer.Option("--format", help="Output format; same follows the input.")] = Format.same,
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality.", min=1, max=100)] = 95,
    suffix: Annotated[str, typer.Option(help="Appended to the output file stem.")] = "",
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into directories.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo outputs that already exist (default: skip them).")] = False,
    dry_run: Annotated[bool, typer.Option(help="Show what would be written; write nothing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")] = False,
    weights_dir: Annotated[Optional[str], typer.Option(help="Where model weights live.", show_default=False)]
    = None,
    alpha: Annotated[Alpha, typer.Option(help="Alpha channel: run through the model, or resize.")] = Alpha.model,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger inputs (decompression-bomb guard).", min=1)]
    = DEFAULT_MAX_PIXELS,
) -> None:
    """Upscale images with a Real-ESRGAN-family model."""
    with exit_on_error():
        if output == STDIO and json_output:
            raise UsageError("-o - writes the image to stdout, which --json also needs; use one of them")
        options = RestoreOptions(
            output_dir=output, model=model, outscale=outscale, tile=parse_tile(tile), tile_pad=tile_pad,
            device=device, precision=precision.value, format=format.value, quality=quality, suffix=suffix,
            recursive=recursive, overwrite=overwrite, dry_run=dry_run, weights_dir=weights_dir, alpha=alpha.value,
            max_pixels=max_pixels,
        )
        with BatchRenderer(json_output, results_to_stdout=output != STDIO) as renderer:
            batch = restore_batch(inputs, options, on_progress=renderer, stdin=sys.stdin.buffer,
                                  stdout=sys.stdout.buffer if output == STDIO else None)
        renderer.summary(batch)
    raise typer.Exit(code=batch.exit_code)
