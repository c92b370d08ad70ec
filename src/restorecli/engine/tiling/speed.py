"""The CPU's fastest tile window, measured: on a CPU the bare network's time per pixel is not constant. Past a
size that depends on the CPU's caches and the model, a larger window runs slower per pixel (a compact model on a
2-core AMD EPYC: 8.8 us a useful pixel in 320-pixel windows, 15 in one 512-pixel window), while a smaller one pays
more for its padding.

``fastest_window`` runs the model (through its back-end, as the tiler does) on windows of growing size and keeps
the one whose output costs least per useful (core) pixel, where a larger one measured slower, within ``BUDGET``
seconds. ``upscale(..., window=N)`` caps automatic tiles at such a window's pixels.

Measured, not taken as ``--tile auto``'s default: through the whole engine the cap gained at most 5% and lost up
to 10% on this machine, its choice moving between runs (docs/performance.md, ``benchmarks/tile_speed.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..model import LoadedModel
from .plan import network_window

CANDIDATES = (128, 192, 256, 320, 384, 512)  # window sides tried, smallest first
BUDGET = 6.0  # seconds the measuring may take at the most (a window begun is finished)
WORSE = 1.15  # a window this much slower per pixel than the best so far ends the search (sizes past the cache)


def fastest_window(model: LoadedModel, dtype: torch.dtype, pad: int,
                   clock: Callable[[], float] = time.perf_counter) -> int | None:
    """The window side, among ``CANDIDATES``, whose output costs least per core pixel (the window less ``pad``
    on each side) on the CPU, where a larger window measured ``WORSE`` per pixel than it: past that size the
    CPU's caches no longer hold the work. None where no such size showed within ``BUDGET`` seconds (larger
    windows only get cheaper per pixel, as padding weighs less, so the memory plan's largest are best)."""
    spent, costs = 0.0, {}
    for side in CANDIDATES:
        core = side - 2 * pad
        if core <= 0:
            continue
        seconds = _time_window(model, dtype, side, clock, warm=not costs)
        spent += seconds
        cost = seconds / (core * core)
        if costs and cost > min(costs.values()) * WORSE:  # measured again, so that one slow run is no cliff
            best = min(costs, key=costs.__getitem__)
            again = _time_window(model, dtype, side, clock, warm=False) / (core * core)
            best_again = _time_window(model, dtype, best, clock, warm=False) / (best - 2 * pad) ** 2
            if min(cost, again) > min(costs[best], best_again) * WORSE:
                return best
            cost = min(cost, again)
        costs[side] = cost
        if spent > BUDGET:
            break
    return None


def _time_window(model: LoadedModel, dtype: torch.dtype, side: int, clock: Callable[[], float],
                 warm: bool) -> float:
    """Seconds the model's back-end takes on one ``side`` x ``side`` window (run once before, the first time, so
    its start-up is not counted)."""
    height, width = network_window(model.spec, side, side)
    generator = torch.Generator().manual_seed(side)
    window = torch.rand(1, model.spec.input_channels, height, width, generator=generator).to(dtype)
    with torch.inference_mode():
        if warm:
            model.runner.run(window)
        started = clock()
        model.runner.run(window)
        return clock() - started


__all__ = ["BUDGET", "CANDIDATES", "fastest_window"]
