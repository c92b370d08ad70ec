"""Option declarations shared by the commands that restore images (restore, submit) and by the others."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import UsageError
from ..images.formats import DEFAULT_MAX_PIXELS
from ..models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    from ..pipeline import RestoreOptions


# The choices of the options that take one of a few words. They are plain strings checked in ``restore_options``
# (not Enums), so that a wrong one reads like restorecli's other usage errors and lists what may be given.
FORMATS = ("same", "png", "jpg", "webp", "tiff")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
ALPHAS = ("model", "resize")


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a usage error naming the option and listing them."""
    if value not in choices:
        raise UsageError(f"{option} {value!r} is not one of {', '.join(choices)}")
    return value


Inputs = Annotated[list[str], typer.Argument(metavar="INPUT...", help="Image files, directories, or - for stdin.", show_default=False)]
Model = Annotated[str, typer.Option(metavar="NAME|PATH", help="Registry name or checkpoint path (.pth, .safetensors, ncnn .param).")]
Outscale = Annotated[Optional[float], typer.Option(metavar="SCALE", help="Final scale, e.g. 2 or 3.5 [default: the model's].",
                                                   min=0.01, show_default=False)]
Tile = Annotated[str, typer.Option(metavar="auto|0|N", help="auto (from free memory), 0 (whole image) or N (N x N tiles).")]
TilePad = Annotated[int, typer.Option(metavar="PIXELS", help="Context overlap around each tile, in input pixels.", min=0)]
Device = Annotated[str, typer.Option(metavar="auto|cpu|cuda[:N]|mps", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option(
    metavar="|".join(PRECISIONS), help="auto: fp16 on CUDA, bf16 on CPUs where it measures faster, else fp32.")]
FormatOpt = Annotated[str, typer.Option("--format", metavar="|".join(FORMATS), help="Output format; same follows the input.")]
Quality = Annotated[int, typer.Option(metavar="1-100", help="JPEG/WebP quality.", min=1, max=100)]
Suffix = Annotated[str, typer.Option(metavar="TEXT", help="Appended to the output file stem.")]
Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into directories.")]
WeightsDir = Annotated[Optional[str], typer.Option(metavar="DIR", help="Where model weights live.", show_default=False)]
AlphaOpt = Annotated[str, typer.Option(metavar="|".join(ALPHAS), help="Alpha channel: run through the model, or resize.")]
MaxPixels = Annotated[int, typer.Option(metavar="N", help="Refuse larger inputs (decompression-bomb guard).", min=1)]
Json = Annotated[bool, typer.Option("--json", help="JSON on stdout.")]
Queue = Annotated[Optional[str], typer.Option(metavar="DIR", help="Job folder [default: $RESTORECLI_QUEUE, then ./restorecli-queue].",
                                              show_default=False)]

FaceEnhance = Annotated[bool, typer.Option(help="Restore faces (detect, align, restore, paste back).",
                                           rich_help_panel="Faces")]
FaceModel = Annotated[str, typer.Option(metavar="NAME|PATH", help="gfpgan-1.4, gfpgan-1.3, or a face model path (e.g. RestoreFormer++).",
                                        rich_help_panel="Faces")]
FaceDetector = Annotated[str, typer.Option(metavar="NAME|PATH", help="retinaface-resnet50, retinaface-mobilenet0.25 (faster), or a path.",
                                           rich_help_panel="Faces")]
FaceWeight = Annotated[float, typer.Option(metavar="0-1", help="Share of the face restorer's change to apply: 0 none, 1 all.",
                                           min=0.0, max=1.0, rich_help_panel="Faces")]
OnlyCenterFace = Annotated[bool, typer.Option(help="Restore only the face nearest the image centre.",
                                              rich_help_panel="Faces")]
MaxFaces = Annotated[Optional[int], typer.Option(metavar="N", help="Restore at most N faces (highest scores first).", min=0,
                                                 show_default=False, rich_help_panel="Faces")]
MinFaceSize = Annotated[float, typer.Option(metavar="PIXELS", help="Ignore faces smaller than this many input pixels.", min=0,
                                            rich_help_panel="Faces")]
FaceThreshold = Annotated[float, typer.Option(metavar="0-1", help="Detection score needed to count as a face.", min=0.0, max=1.0,
                                              rich_help_panel="Faces")]
SaveFaces = Annotated[Optional[str], typer.Option(metavar="DIR", help="Also write the aligned and restored face crops here.",
                                                  show_default=False, rich_help_panel="Faces")]

DEFAULTS = dict(model=DEFAULT_MODEL, tile="auto", tile_pad=24, device="auto", precision="auto",
                format="same", quality=95, suffix="", recursive=False, alpha="model",
                max_pixels=DEFAULT_MAX_PIXELS, face_enhance=False, face_model="gfpgan-1.4",
                face_detector="retinaface-resnet50", face_weight=1.0, only_center_face=False, min_face_size=0.0,
                face_threshold=0.9)


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


# The options every command that restores images shares (restore, submit), by parameter name.
SHARED = ("model", "outscale", "tile", "tile_pad", "device", "precision", "format", "quality", "suffix", "recursive",
          "weights_dir", "alpha", "max_pixels", "face_enhance", "face_model", "face_detector", "face_weight",
          "only_center_face", "max_faces", "min_face_size", "face_threshold", "save_faces")


def restore_options(values: dict, **extra) -> RestoreOptions:
    """RestoreOptions from a command's parameters (its ``locals()``): the shared ones are picked by name,
    enums and ``--tile`` parsed; ``extra`` holds the command's own fields."""
    from ..pipeline import RestoreOptions

    shared = {name: values[name] for name in SHARED}
    for name, choices in (("precision", PRECISIONS), ("format", FORMATS), ("alpha", ALPHAS)):
        check_choice(f"--{name}", shared[name], choices)
    shared["tile"] = parse_tile(shared["tile"])
    return RestoreOptions(**shared, **extra)
