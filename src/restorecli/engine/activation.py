"""Activation memory per input pixel of a window, measured per architecture family, for sizing tiles.

How the figures were measured (``benchmarks/tile_memory.py``; ``python benchmarks/tile_memory.py --write``
measures again and rewrites the block between the markers below): each family is built in its published
configurations with random weights, saved, loaded and placed as restorecli loads any model (``load_model``,
``place_model``: channels_last, eval mode), warmed on a tiny window, and then run once on one window, as
``tiling`` runs it (``window_batch``, ``torch.inference_mode``), in a fresh process per window. On the CPU the
figure is the growth of the process's peak resident memory (``VmHWM``, reset after the warm-up through
``/proc/self/clear_refs``); on CUDA, ``torch.cuda.max_memory_allocated`` over what was allocated before.
Three window sizes per configuration (256-768 px for Compact, 128-384 for the other convolutional families,
64-192 for the transformers) and precision; the figure is the slope of bytes over input pixels, so what does
not grow with the window (weights, kernel caches) drops out, or the most bytes per pixel any window but the
smallest took, where that is more (small and middle-sized windows do not always cost in proportion).

``MEASURED_WITH`` says on what machine, with which torch, and when. These are CPU figures: no GPU was at hand
when they were taken, and CUDA plans with them too (``--device cuda`` measures there, for a table of its own).

A loaded model's figure is read off the points of its family measured with the same variant (the upsampler,
the attention window, ESRGAN's pixel-unshuffle: what changes the shape of the activations) at its scale, or
between or beyond the scales measured, and scaled to its width (``ModelSpec.max_features``). Depth does not
enter: inference frees each layer's output once the next has used it. Measured, 16 and 32 Compact
convolutions took 555 and 553 bytes per pixel in fp32; 23 and 6 RRDB blocks 8694 and 9196 (the spread
between runs of one network is about that, 5-15%, for the larger networks). Families and variants not
measured keep the rough formula restorecli used before (``fallback_bytes_per_pixel``); a family that failed
to run in bf16 here (spandrel 0.4.2's SwinIR, Swin2SR, RGT, DRCT, ATD: an attention mask kept in float32)
plans 16-bit runs with its fp32 figure.

``MARGIN`` is applied on top, because the table is one machine's peak, taken on windows of at most a few
hundred pixels: other kernels (another CPU's oneDNN, cuDNN's workspace for the algorithm it picks), the
allocator's rounding and fragmentation (CUDA's caching allocator rounds blocks up and cannot always reuse a
freed one), the spread between runs, and what the tile's blending holds beside the network (its float32
bands, one quantising chunk) all come on top of what was measured here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .model import LoadedModel, ModelSpec

if TYPE_CHECKING:
    import torch

MARGIN = 1.25  # see the module's docstring

_VARIANT_ATTRIBUTES = ("upsampler", "window_size", "shuffle_factor")


@dataclass(frozen=True)
class Measured:
    """Peak activation bytes per input pixel of a window, measured for one configuration of a family."""

    architecture: str  # spandrel's architecture id
    variant: str  # ``variant_of`` the network
    scale: int
    width: int  # ModelSpec.max_features
    fp32: int
    bf16: int | None  # None: not measured (the model does not support bf16, or failed in it); fp32 stands in
    config: str  # what was built: the published model it stands for


def variant_of(module: object) -> str:
    """What, besides width and scale, sets the shape of a network's activations, as far as its attributes
    say: an upsampler named by a string, an attention window, ESRGAN's pixel-unshuffle factor."""
    parts = []
    for name in _VARIANT_ATTRIBUTES:
        value = getattr(module, name, None)
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            value = "x".join(map(str, value))
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value not in ("", 0):
            parts.append(f"{name}={value}")
    return " ".join(parts)


def architecture_id(model: LoadedModel) -> str:
    architecture = getattr(model.descriptor, "architecture", None)
    return str(getattr(architecture, "id", model.spec.architecture))


def _item(dtype: torch.dtype) -> int:
    import torch

    return torch.tensor([], dtype=dtype).element_size()


def fallback_bytes_per_pixel(spec: ModelSpec, dtype: torch.dtype) -> int:
    """The rough bound restorecli used before measuring, kept for families the table does not hold: the
    widest layer a few times over at the input's size and twice at the output's."""
    return _item(dtype) * spec.max_features * (6 + 2 * spec.scale * spec.scale) + 16 * spec.scale * spec.scale


def _io_bytes(spec: ModelSpec, scale: int, item: int) -> int:
    """What does not grow with the network's width: the input window and the output tensor."""
    return item * (spec.input_channels + spec.output_channels * scale * scale)


def _at_width(point: Measured, figure: int, spec: ModelSpec, item: int) -> float:
    io = _io_bytes(spec, point.scale, item)
    return io + max(figure - io, 0) * spec.max_features / point.width


def measured_bytes_per_pixel(model: LoadedModel, dtype: torch.dtype) -> float | None:
    """The table's figure for ``model`` in ``dtype`` (fp16 reads the bf16 column: the same element size; where
    that is empty, the fp32 one), before ``MARGIN``; None when its family or variant was not measured."""
    import torch

    spec = model.spec
    architecture, variant = architecture_id(model), variant_of(model.module)  # once, not once a row of the table
    points = [p for p in MEASURED if p.architecture == architecture and p.variant == variant]
    if not points:
        return None
    half = dtype in (torch.bfloat16, torch.float16)
    item = _item(dtype)

    def figure(point: Measured) -> float:
        # a family that could not run bf16 there has only its fp32 figure, an upper bound for 16-bit elements
        value = point.bf16 if half and point.bf16 is not None else point.fp32
        return _at_width(point, value, spec, item)

    def nearest_width(candidates: list[Measured]) -> Measured:
        # the nearest width; between equals (two depths of one width), the larger figure
        return min(candidates, key=lambda p: (abs(p.width - spec.max_features), -p.width, -figure(p)))

    s = spec.scale
    same = [p for p in points if p.scale == s]
    if same:
        return figure(nearest_width(same))
    below = [p for p in points if p.scale < s]
    above = [p for p in points if p.scale > s]
    if below and above:
        # activations per input pixel are a body (at the input's size) plus an upsampling part that grows with
        # the output's area: fit body + up * scale**2 through the nearest measured scales either side
        low = nearest_width([p for p in below if p.scale == max(q.scale for q in below)])
        high = nearest_width([p for p in above if p.scale == min(q.scale for q in above)])
        up = (figure(high) - figure(low)) / (high.scale**2 - low.scale**2)
        return figure(low) + up * (s * s - low.scale**2)
    if below:  # larger than anything measured: all of it grows with the output's area (an upper bound)
        low = nearest_width([p for p in below if p.scale == max(q.scale for q in below)])
        return figure(low) * s * s / low.scale**2
    return figure(nearest_width([p for p in above if p.scale == min(q.scale for q in above)]))  # an upper bound


def bytes_per_pixel(model: LoadedModel, dtype: torch.dtype) -> int:
    """Activation bytes per input pixel of a window to plan tiles with: the measured figure times ``MARGIN``,
    or ``fallback_bytes_per_pixel`` for what the table does not hold."""
    measured = measured_bytes_per_pixel(model, dtype)
    if measured is None:
        return fallback_bytes_per_pixel(model.spec, dtype)
    return int(measured * MARGIN) + 1


# --- measured: begin (written by benchmarks/tile_memory.py --write) ---
MEASURED_WITH = 'AMD EPYC, 2 threads; torch 2.14.1+cu130, spandrel 0.4.2, Python 3.11.7; 2026-12-02; cpu'
MEASURED: tuple[Measured, ...] = (
    Measured('ESRGAN', '', 4, 64, 8694, 5471, 'realesrgan-x4plus'),
    Measured('ESRGAN', '', 4, 64, 9196, 4739, 'realesrgan-x4plus-anime (6 blocks)'),
    Measured('ESRGAN', 'shuffle_factor=2', 2, 64, 2263, 1540, 'realesrgan-x2plus'),
    Measured('ESRGAN', '', 2, 64, 3075, 2015, 'ESRGAN x2 (no unshuffle)'),
    Measured('ESRGAN', '', 4, 32, 4471, 2310, 'ESRGAN x4, 32 filters'),
    # the 1x models of the chains, measured 2026-12-07 on the same machine and versions (--only SCUNet --only FBCNN)
    Measured('SCUNet', 'window_size=8', 1, 512, 6714, 3158, 'scunet-color-real-psnr'),
    Measured('FBCNN', '', 1, 512, 1538, 703, 'fbcnn-color'),
    Measured('Compact', '', 4, 64, 555, 268, 'realesr-animevideov3'),
    Measured('Compact', '', 3, 64, 552, 268, 'realesr-animevideov3-x3'),
    Measured('Compact', '', 2, 64, 549, 268, 'realesr-animevideov3-x2'),
    Measured('Compact', '', 4, 64, 553, 268, 'realesr-general-x4v3'),
    Measured('Compact', '', 4, 48, 427, 331, 'Compact x4, 32 features'),
    Measured('SPAN', '', 4, 96, 5599, 2884, 'SPAN x4'),
    Measured('SPAN', '', 2, 96, 5602, 2140, 'SPAN x2'),
    Measured('RealCUGAN', '', 2, 256, 6306, 3210, 'RealCUGAN 2x'),
    Measured('RealCUGAN', '', 3, 256, 13026, 7108, 'RealCUGAN 3x'),
    Measured('RealCUGAN', '', 4, 256, 7672, 3704, 'RealCUGAN 4x'),
    Measured('OmniSR', 'window_size=8', 4, 192, 8848, 3842, 'OmniSR x4'),
    Measured('SwiftSRGAN', '', 4, 256, 11243, 5368, 'SwiftSRGAN x4'),
    Measured('PLKSR', '', 4, 128, 1801, 906, 'RealPLKSR x4'),
    Measured('PLKSR', '', 4, 128, 1784, 1098, 'PLKSR x4'),
    Measured('RCAN', '', 4, 256, 9205, 4612, 'RCAN x4'),
    Measured('SAFMN', '', 4, 72, 2312, 1190, 'SAFMN x4'),
    Measured('DITN', '', 4, 240, 6537, 3456, 'DITN x4'),
    Measured('DCTLSA', '', 4, 55, 17893, 6236, 'DCTLSA x4'),
    Measured('MoSR', '', 4, 192, 3203, 1983, 'MoSR x4'),
    Measured('SeemoRe', '', 4, 128, 4411, 3012, 'SeemoRe x4'),
    # bf16 failed here: RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::
    Measured('SwinIR', 'upsampler=nearest+conv window_size=8', 4, 180, 13922, None, 'SwinIR-M x4 (real-world)'),
    # bf16 failed here: RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::
    Measured('SwinIR', 'upsampler=pixelshuffle window_size=8', 4, 256, 14643, None, 'SwinIR-M x4 (classical)'),
    # bf16 failed here: RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::
    Measured('SwinIR', 'upsampler=pixelshuffle window_size=8', 2, 256, 23566, None, 'SwinIR-M x2 (classical)'),
    # bf16 failed here: RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::
    Measured('SwinIR', 'upsampler=pixelshuffledirect window_size=8', 4, 60, 8415, None, 'SwinIR-S x4 (lightweight)'),
    # bf16 failed here: RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::
    Measured('Swin2SR', 'upsampler=nearest+conv window_size=8', 4, 180, 25938, None, 'Swin2SR x4 (real-world)'),
    Measured('HAT', 'upsampler=pixelshuffle window_size=16', 4, 256, 49484, 27500, 'HAT x4'),
    Measured('HAT', 'upsampler=pixelshuffle window_size=16', 4, 256, 47638, 24989, 'HAT-S x4'),
    Measured('DAT', 'upsampler=pixelshuffle', 4, 360, 24193, 16275, 'DAT x4'),
    Measured('DAT', 'upsampler=pixelshuffledirect', 4, 60, 13506, 9738, 'DAT-light x4'),
    # bf16 failed here: RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::
    Measured('RGT', '', 4, 256, 25347, None, 'RGT x4'),
    # bf16 failed here: RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::
    Measured('DRCT', 'upsampler=pixelshuffle window_size=16', 4, 256, 45818, None, 'DRCT x4'),
    # bf16 failed here: RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::
    Measured('ATD', 'upsampler=pixelshuffle window_size=16', 4, 420, 41048, None, 'ATD x4'),
    Measured('CRAFT', 'window_size=16', 4, 254, 8922, 4529, 'CRAFT x4'),
)
# --- measured: end ---
