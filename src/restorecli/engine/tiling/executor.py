"""The executor: runs a model over a ``TilePlan`` in batches of tiles, blends and assembles the output rows, and
retries with smaller tiles when the device runs out of memory (``upscale``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import TileOutOfMemory
from ..activation import bytes_per_pixel
from ..device import is_out_of_memory
from ..model import LoadedModel
from .blend import Assembler
from .memory import auto_batch, auto_plan
from .plan import MIN_AUTO_TILE, TilePlan, network_window, plan_tiles
from .rows import RowSink
from .staging import StagingFactory, staging_for
from .windows import Uploads, window_batch


@dataclass(frozen=True)
class UpscaleResult:
    image: np.ndarray | None  # H*scale x W*scale x C, same dtype as the input; None when rows went to a sink
    tile: int  # tile size finally used (0: whole image)
    tiles: int  # number of tiles run
    computed_ratio: float = 1.0  # pixels computed per image pixel by the plan finally used


TileProgress = Callable[[int, int], None]
"""Called as ``(tiles done, tiles in the plan)`` while an image runs."""


@dataclass(frozen=True)
class _Run:
    """What stays the same between the attempts at one image."""

    model: LoadedModel
    image: np.ndarray
    device: torch.device
    dtype: torch.dtype
    sink: RowSink | None
    on_tile: TileProgress | None
    staging: StagingFactory | None


def _run_plan(run: _Run, plan: TilePlan, batch: int) -> np.ndarray | None:
    """One attempt: every tile of ``plan``, ``batch`` tiles a network call; the output (None with a sink)."""
    spec, image = run.model.spec, run.image
    assembler = Assembler(plan, spec.scale, spec.output_channels, image.dtype, run.device, run.sink,
                          run.staging(run.device) if run.staging is not None else None)
    uploads = Uploads(run.staging(run.device)) if run.staging is not None else None
    tiles = plan.tiles
    completed = False
    try:
        for start in range(0, len(tiles), batch):
            group = tiles[start : start + batch]
            if uploads is not None:
                inputs = uploads(image, group, run.dtype)
            else:
                inputs = window_batch(image, group, run.device, run.dtype)
            outputs = run.model.runner.run(inputs)
            for tile, result in zip(group, outputs):
                assembler.add(tile, result)
                if tile.col == plan.cols - 1:
                    assembler.end_row(tile.row)
            if run.on_tile is not None:
                run.on_tile(start + len(group), len(tiles))
        completed = True
    finally:
        assembler.strips.close(completed)
        if uploads is not None:
            uploads.close()
    return assembler.out


def _smaller_after_out_of_memory(run: _Run, size: int, auto: bool) -> int:
    """The tile size to try after ``size`` ran out of memory (the sink restarted), or ``TileOutOfMemory`` (raised
    while the out-of-memory error is handled, which it replaces)."""
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    if run.sink is not None:
        run.sink.restart()
    if not auto:
        raise TileOutOfMemory(f"tile size {size or 'whole image'} does not fit in {run.device} memory; "
                              "use a smaller --tile or --tile auto") from None
    height, width = run.image.shape[:2]
    smaller = (size or max(height, width)) // 2
    if smaller < MIN_AUTO_TILE // 2:
        raise TileOutOfMemory(f"out of {run.device} memory even with {smaller * 2} px tiles") from None
    return smaller


def upscale(
    model: LoadedModel,
    image: np.ndarray,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    tile: int | None = None,
    pad: int = 16,
    batch: int | None = None,
    sink: RowSink | None = None,
    on_tile: TileProgress | None = None,
    staging: StagingFactory | None = None,
    window: int | None = None,
) -> UpscaleResult:
    """Run ``model`` over an H x W x C image (uint8, uint16, or float32 in [0, 1]); return the same dtype.

    ``tile=None`` plans tiles from free memory (``auto_plan``) and halves them on out-of-memory errors;
    ``tile=0`` runs the whole image at once; ``tile=N`` uses N x N cores and raises
    ``TileOutOfMemory`` if they do not fit. ``model`` must already be on ``device`` in ``dtype``.
    With a ``sink``, the output goes to it a strip of rows at a time and is never whole in memory
    (``image`` is then None); the sink is restarted before an out-of-memory retry. ``on_tile(done, total)``
    is called after each batch of tiles (a retry starts counting again, with its own total).
    ``window``: with ``tile=None``, the largest window side the plan may use (the CPU's fastest, ``speed``).
    ``staging``: how copies between host and device overlap the model (``staging_for(device)`` when not given:
    CUDA's pinned buffers and side streams on CUDA, none elsewhere).
    """
    if image.ndim != 3 or image.shape[2] != model.spec.input_channels:
        raise ValueError(f"expected H x W x {model.spec.input_channels} image, got shape {image.shape}")
    height, width = image.shape[:2]
    run = _Run(model, image, device, dtype, sink, on_tile, staging if staging is not None else staging_for(device))
    auto = tile is None
    if auto:
        plan = auto_plan(model, height, width, device=device, dtype=dtype, pad=pad, window=window)
        size = plan.tile
    else:
        size = int(tile)  # type: ignore[arg-type]
        plan = plan_tiles(height, width, size, pad)
    per_pixel = bytes_per_pixel(model, dtype)
    while True:
        y0, y1, x0, x1 = plan.tiles[0].window
        window_h, window_w = network_window(model.spec, y1 - y0, x1 - x0)
        group = batch or auto_batch(device, window_h * window_w * per_pixel, model)
        try:
            with torch.inference_mode():
                out = _run_plan(run, plan, group)
            return UpscaleResult(out, size, len(plan.tiles), plan.computed_ratio)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            size = _smaller_after_out_of_memory(run, size, auto)
            batch = 1
            plan = plan_tiles(height, width, size, pad)
