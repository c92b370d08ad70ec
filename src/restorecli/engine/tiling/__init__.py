"""Tiled inference: overlapping tiles, batched, blended with a partition of unity, assembled in the output dtype.

How a tile is used: its *core* is its share of a regular grid; the network sees a *window* that
extends the core by ``pad`` pixels of context on every side (shifted inwards at the image border,
so every window has the same size and tiles batch). Around each interior grid line, a band of
``2 * band`` pixels is a linear cross-fade between the two neighbouring tiles; everywhere the
weights sum to exactly one. Only the bands are accumulated in float32 (a few rows across the
width, and a few columns down one tile row); every other pixel is quantised on the device and
written straight into the uint8/uint16 output.

The modules, from the geometry up:

- ``plan``: the tile plan, pure geometry (``plan_tiles``, ``plan_grid``, ``choose_grid``); no torch.
- ``memory``: the memory model: the automatic grid (``auto_plan``) and tiles per call (``auto_batch``) from the
  measured activation bytes per pixel of the model's family (``engine.activation``) and the device's free
  memory. An image that fits runs whole; one that does not is cut into the grid that computes the fewest
  pixels among those whose windows fit.
- ``pixels``: arrays to tensors and back (``quantise``, the network's input batch).
- ``windows`` (input) and ``rows`` (output, ``RowSink``): what goes to and comes from the device.
- ``staging``: the device abstraction for copies that overlap the model. On CUDA the host never waits for the
  model: input windows go up from pinned buffers, and each finished strip of output rows comes down into pinned
  buffers, on a side stream, while the next tiles compute (``CudaStaging``). On the CPU the strips are the
  output array itself, and none of that machinery is used.
- ``blend``: tile outputs into rows (``Assembler``).
- ``executor``: ``upscale``, which runs a plan and retries with smaller tiles on out-of-memory errors.

This package only hands their public names on.
"""

from __future__ import annotations

from .blend import Assembler
from .executor import TileProgress, UpscaleResult, upscale
from .memory import auto_batch, auto_plan, memory_budget
from .pixels import quantise
from .plan import MIN_AUTO_TILE, Tile, TilePlan, choose_grid, network_window, plan_grid, plan_tiles
from .rows import OutputRows, RowSink
from .staging import CudaStaging, Staging, StagingFactory, staged, staging_for
from .windows import Uploads, window_batch

__all__ = ["MIN_AUTO_TILE", "Assembler", "CudaStaging", "OutputRows", "RowSink", "Staging", "StagingFactory",
           "Tile", "TilePlan", "TileProgress", "Uploads", "UpscaleResult", "auto_batch", "auto_plan", "choose_grid",
           "memory_budget", "network_window", "plan_grid", "plan_tiles", "quantise", "staged", "staging_for",
           "upscale", "window_batch"]
