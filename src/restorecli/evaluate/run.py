"""Running an evaluation: references (or LR/HR pairs) in, per-image and mean metrics out."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from ..errors import ImageError, RestoreCliError, UsageError
from ..images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, decode_image, full_scale, read_input_file
from ..models.registry import DEFAULT_MODEL, REGISTRY
from ..pipeline import RestoreOptions, Restorer, collect_inputs
from .degrade import Degradation, baseline, crop_to_multiple, degrade
from .metrics import measure
from .pictures import pictures_for_report
from .results import Evaluation, ImageResult, Row

BASELINES = ("bicubic", "lanczos")


@dataclass(frozen=True)
class EvalOptions:
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    degrade: Degradation = "bicubic"
    scale: int = 4
    seed: int = 0
    lr_dir: str | None = None
    hr_dir: str | None = None
    face_enhance: bool = False
    tile: int | None = None
    tile_pad: int = 24
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    weights_dir: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    keep_pictures: bool = False  # keep the images for an HTML report


Progress = Callable[[str, object], None]


def as_rgb_float(color: np.ndarray) -> np.ndarray:
    rgb = color if color.shape[2] == 3 else np.repeat(color, 3, axis=2)
    return rgb.astype(np.float32) / full_scale(color.dtype)


def _read(path: Path, max_pixels: int) -> np.ndarray:
    return as_rgb_float(decode_image(read_input_file(path, max_pixels), str(path), max_pixels).color)


def _images_in(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def pair_folders(lr_dir: Path, hr_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[ImageResult]]:
    """Match LR and HR files by stem; files without a partner come back as failed results."""
    lows, highs = _images_in(lr_dir), _images_in(hr_dir)
    pairs = [(stem, lows[stem], highs[stem]) for stem in sorted(lows) if stem in highs]
    missing = [ImageResult(str(lows[s]), error=f"{lows[s]}: no reference named {s}.* in {hr_dir}")
               for s in sorted(lows) if s not in highs]
    missing += [ImageResult(str(highs[s]), error=f"{highs[s]}: no low-resolution input named {s}.* in {lr_dir}")
                for s in sorted(highs) if s not in lows]
    if not pairs and not missing:
        raise UsageError(f"no images in {lr_dir} or {hr_dir}")
    return pairs, missing


def _restorers(options: EvalOptions, scale: int) -> dict[str, Restorer]:
    restorers = {}
    for model in options.models:
        label = method_label(model, options.models)
        restore = RestoreOptions(model=model, outscale=float(scale), tile=options.tile, tile_pad=options.tile_pad,
                                 device=options.device, precision=options.precision, weights_dir=options.weights_dir,
                                 face_enhance=options.face_enhance)
        restorers[label] = Restorer.from_options(restore)
    return restorers


def method_label(model: str, models: tuple[str, ...]) -> str:
    """A registry name as it is; a path by its file stem, unless two paths share one."""
    if model in REGISTRY:
        return model
    stem = Path(model).stem
    return stem if sum(Path(m).stem == stem for m in models) == 1 else model


def evaluate_one(name: str, reference: np.ndarray, low: np.ndarray, scale: int, restorers: dict[str, Restorer],
                 keep: bool) -> ImageResult:
    """Measure every baseline and model on one (reference, low-resolution input) pair."""
    result = ImageResult(name, scale=scale)
    size = (reference.shape[1], reference.shape[0])
    kept: dict[str, np.ndarray] = {}  # each method's full-size result, until the report has taken its part
    outputs: list[tuple[str, Literal["baseline", "model"], Callable[[], np.ndarray]]] = [
        (method, "baseline", lambda m=method: baseline(low, size, m)) for method in BASELINES  # type: ignore[misc]
    ]
    outputs += [(model, "model", lambda r=restorer: r.restore_array(low)) for model, restorer in restorers.items()]
    for method, kind, run in outputs:
        start = time.perf_counter()
        image = np.clip(run(), 0.0, 1.0)
        seconds = time.perf_counter() - start
        if image.shape != reference.shape:
            raise ImageError(f"{name}: {method} returned {image.shape[1]}x{image.shape[0]}, expected {size[0]}x{size[1]}")
        result.rows.append(Row(name, method, kind, measure(reference, image, scale), round(seconds, 4)))
        if keep:
            kept[method] = image
    if keep:

        result.pictures = pictures_for_report(reference, low, kept, result.rows, scale)
    return result


def evaluate(inputs: list[str], options: EvalOptions, on_progress: Progress | None = None) -> Evaluation:
    """Run the evaluation. Setup errors raise; an image that fails is reported and skipped."""
    notify = on_progress or (lambda event, payload: None)
    started = time.perf_counter()
    methods = [*BASELINES, *(method_label(m, options.models) for m in options.models)]
    if options.scale < 1:
        raise UsageError(f"--scale {options.scale}: must be at least 1")
    if (options.lr_dir is None) != (options.hr_dir is None):
        raise UsageError("--lr and --hr go together")
    restorers = _restorers(options, options.scale)
    results: list[ImageResult] = []
    if options.lr_dir is not None:
        pairs, missing = pair_folders(Path(options.lr_dir), Path(options.hr_dir))  # type: ignore[arg-type]
        jobs = [(str(lr), lambda lr=lr, hr=hr: _paired(lr, hr, options)) for _stem, lr, hr in pairs]
        results.extend(missing)
    else:
        items = collect_inputs(inputs, recursive=True)
        jobs = [(item.source, lambda src=item.source: _synthetic(Path(src), options)) for item in items]
    notify("start", len(jobs) + len(results))
    for failed in results:
        notify("done", failed)
    for name, load in jobs:
        notify("image", name)
        try:
            reference, low, scale = load()
            if scale != options.scale:
                raise ImageError(f"{name}: the pair is {scale}x, but --scale is {options.scale}")
            result = evaluate_one(name, reference, low, scale, restorers, options.keep_pictures)
        except RestoreCliError as exc:
            if not isinstance(exc, ImageError):
                raise
            result = ImageResult(name, error=str(exc))
        except (ValueError, OSError) as exc:
            result = ImageResult(name, error=f"{name}: {exc}")
        results.append(result)
        notify("done", result)
    return Evaluation(results, methods, round(time.perf_counter() - started, 3), settings(options, restorers))


def settings(options: EvalOptions, restorers: dict[str, Restorer]) -> dict[str, object]:
    """What an evaluation ran with, as its report and its JSON state it: enough to run it again and compare."""
    from importlib.metadata import version

    paired = options.lr_dir is not None
    return {"mode": "paired" if paired else "synthetic", "degrade": None if paired else options.degrade,
            "scale": options.scale, "seed": None if paired else options.seed,
            "tile": "auto" if options.tile is None else options.tile, "tile_pad": options.tile_pad,
            "device": options.device, "precision": options.precision, "face_enhance": options.face_enhance,
            "models": {label: restorer.setup for label, restorer in restorers.items()},
            "version": version("restorecli")}


def _synthetic(path: Path, options: EvalOptions) -> tuple[np.ndarray, np.ndarray, int]:
    reference = crop_to_multiple(_read(path, options.max_pixels), options.scale)
    if min(reference.shape[:2]) < options.scale * 4:
        raise ImageError(f"{path}: too small for a {options.scale}x evaluation")
    return reference, degrade(reference, options.scale, options.degrade, options.seed), options.scale


def _paired(lr: Path, hr: Path, options: EvalOptions) -> tuple[np.ndarray, np.ndarray, int]:
    low, reference = _read(lr, options.max_pixels), _read(hr, options.max_pixels)
    ratio = reference.shape[1] / low.shape[1]
    scale = round(ratio)
    if scale < 1 or not math.isclose(ratio, scale, rel_tol=0.02) or abs(reference.shape[0] / low.shape[0] - scale) > 0.1:
        raise ImageError(f"{lr}: {low.shape[1]}x{low.shape[0]} is not an integer fraction of "
                         f"{hr.name} ({reference.shape[1]}x{reference.shape[0]})")
    reference = reference[: low.shape[0] * scale, : low.shape[1] * scale]
    if reference.shape[:2] != (low.shape[0] * scale, low.shape[1] * scale):
        raise ImageError(f"{hr}: smaller than {scale}x its low-resolution partner {lr.name}")
    return reference, low, scale
