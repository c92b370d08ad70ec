"""The CPU's fastest tile window (engine/tiling/speed.py, which benchmarks/tile_speed.py uses): measured on windows
of growing size with the model's own back-end, kept only where a larger window measured slower per pixel (the CPU's
caches), and honoured by the automatic plan when asked (``window``). The measuring runs on a
stand-in back-end whose time per window is given and a clock that it moves: what is chosen does not depend on how
busy the machine running the tests is."""

from __future__ import annotations

import types

import torch

from restorecli.engine.tiling import speed
from restorecli.engine.tiling.memory import auto_plan


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stand_in(clock: Clock, seconds_per_pixel, scale: int = 2):
    """A model whose back-end takes ``seconds_per_pixel(side)`` a pixel of a side x side window, on ``clock``."""
    runs: list[int] = []

    def run(window: torch.Tensor) -> torch.Tensor:
        side = window.shape[-1]
        runs.append(side)
        clock.now += seconds_per_pixel(side) * side * side
        return torch.zeros(1, 3, side * scale, side * scale)

    spec = types.SimpleNamespace(multiple_of=1, minimum_size=1, square=False, input_channels=3, tileable=True)
    runner = types.SimpleNamespace(run=run, capabilities=types.SimpleNamespace(backend="torch", device="cpu",
                                                                               memory=None))
    return types.SimpleNamespace(spec=spec, runner=runner), runs


def test_the_window_before_the_cache_cliff_is_the_fastest():
    clock = Clock()
    model, runs = stand_in(clock, lambda side: 6e-6 if side <= 320 else 12e-6)  # per pixel doubles past 320
    assert speed.fastest_window(model, torch.float32, 24, clock) == 320
    assert max(runs) == 384  # the first window past the cliff, and no larger one


def test_no_cliff_means_no_cap_larger_windows_only_pad_less():
    clock = Clock()
    model, _ = stand_in(clock, lambda side: 1e-7)  # the same time per pixel at every size
    assert speed.fastest_window(model, torch.float32, 24, clock) is None


def test_one_slow_run_is_measured_again_before_it_counts_as_a_cliff():
    clock = Clock()
    slow_once = {"left": 1}

    def per_pixel(side):
        if side == 256 and slow_once["left"]:
            slow_once["left"] -= 1
            return 50e-7  # a hiccup: another process took the core for a moment
        return 1e-7

    model, runs = stand_in(clock, per_pixel)
    assert speed.fastest_window(model, torch.float32, 24, clock) is None
    assert runs.count(256) == 2 and max(runs) == 512


def test_a_model_too_slow_to_measure_within_the_budget_is_left_to_the_memory_plan():
    clock = Clock()
    model, runs = stand_in(clock, lambda side: 1e-3)  # 16 s for the first window
    assert speed.fastest_window(model, torch.float32, 24, clock) is None
    assert runs == [128, 128]  # the warm-up and one timed run: then the budget is spent


def test_the_automatic_plan_keeps_its_windows_within_the_fastest_size_s_pixels(make_model):
    from restorecli.models.loading import load_model

    path = make_model(2)
    model = load_model(str(path), path.parent)
    whole = auto_plan(model, 900, 700, device=torch.device("cpu"), dtype=torch.float32, pad=24)
    capped = auto_plan(model, 900, 700, device=torch.device("cpu"), dtype=torch.float32, pad=24, window=320)
    assert len(whole.tiles) == 1  # a tiny model's 900x700 fits the CPU's memory budget whole
    assert len(capped.tiles) > 1
    for tile in capped.tiles:
        y0, y1, x0, x1 = tile.window
        assert (y1 - y0) * (x1 - x0) <= 320 * 320  # the work a window holds: its pixels
