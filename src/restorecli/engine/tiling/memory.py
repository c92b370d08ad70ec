"""What fits in memory: the automatic tile grid and the tiles per network call, from the model's activation
bytes per pixel (``engine.activation``'s measured table) and the memory its device has free."""

from __future__ import annotations

import torch

from ..activation import bytes_per_pixel
from ..device import available_memory
from ..model import LoadedModel
from .plan import TilePlan, choose_grid, plan_grid


def auto_plan(model: LoadedModel, height: int, width: int, *, device: torch.device, dtype: torch.dtype,
              pad: int, window: int | None = None) -> TilePlan:
    """The plan ``upscale`` runs with automatic tiles: one tile for models that cannot be tiled or images that fit
    ``available_memory(device)`` at ``bytes_per_pixel``; else ``choose_grid``'s grid. ``window``: windows of no
    more pixels than ``window`` x ``window`` either (the CPU's fastest size, ``speed.fastest_window``), but for a
    model that is tiled only to fit (``ModelSpec.tiles_only_to_fit``)."""
    if not model.spec.tileable:
        return plan_grid(height, width, 1, 1, pad)
    per_pixel = bytes_per_pixel(model, dtype)
    budget = memory_budget(model, device)
    if window is not None and not model.spec.tiles_only_to_fit:
        budget = min(budget, per_pixel * window * window)
    rows, cols = choose_grid(height, width, pad, per_pixel, budget, model.spec)
    return plan_grid(height, width, rows, cols, pad)


def memory_budget(model: LoadedModel, device: torch.device) -> int:
    """Bytes for a window's activations: what the model's back-end states for its own device (a Vulkan GPU's
    heap), else ``available_memory`` of the tiler's ``device``."""
    memory = model.runner.capabilities.memory
    return memory if memory is not None else available_memory(device)


def auto_batch(device: torch.device, tile_bytes: int, model: LoadedModel | None = None) -> int:
    """Tiles per network call. Accelerators get as many as fit (up to 8, and at most what ``model``'s back-end
    takes in one call); the CPU gets one, since its convolutions already use every core: batches of 4-8 small
    tiles measured no faster there, and each tile in flight costs its full activation memory."""
    if device.type == "cpu":
        return 1
    limit = (model.runner.capabilities.max_batch if model is not None else None) or 8
    budget = memory_budget(model, device) if model is not None else available_memory(device)
    return int(min(8, limit, max(1, budget // max(tile_bytes, 1))))
