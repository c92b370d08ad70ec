"""Colourising grayscale photos with DDColor: the colour is worked out once from the input, before the upscaler runs,
and painted onto the restored output's rows as they come, so a streamed output stays streamed.

DDColor sees the whole picture at a fixed size (512 x 512, its published inference size for the large and the tiny
network alike): the input's lightness, squeezed to that square and put back to gray RGB, goes in, and the two
chroma planes of CIE Lab (a, b) come out (``ColourPlan``). Each output row then keeps its own lightness, at full
resolution, from the restored image, and takes a and b from the plan, bilinearly upsampled to the output's size
(``colourise``). Arrays in, arrays out; uint8 and uint16 keep their depth; an alpha plane passes untouched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..images.pixels import full_scale
from .enhance import resize
from .tiling import RowSink

ColorizeMode = Literal["auto", "always", "never"]

INPUT_SIZE = 512  # DDColor's inference size (its published pipeline's default for every released network)
# How far apart an RGB image's channels may be and the image still count as gray, as a share of full white: a gray
# scan saved as RGB, or through a JPEG's chroma planes, comes back with channels a level or two apart
GRAY_TOLERANCE = 3 / 255
_BAND_ROWS = 256  # rows compared or coloured at a time, so no temporary is the size of the whole image

# sRGB (D65) <-> CIE XYZ, and the D65 white point: the constants of the sRGB standard and of CIE Lab
_RGB_TO_Y = np.array([0.212671, 0.715160, 0.072169], np.float32)
_XYZ_TO_RGB = np.array([[3.2404813, -1.5371515, -0.4985363],
                        [-0.9692549, 1.8759900, 0.0415559],
                        [0.0556466, -0.2040413, 1.0572252]], np.float32)
_WHITE_X, _WHITE_Z = 0.95047, 1.08883
_EPSILON = 0.008856  # (6/29)^3: below it Lab's cube root turns linear


def is_grayscale(color: np.ndarray, tolerance: float = GRAY_TOLERANCE) -> bool:
    """Whether ``color`` (H x W x 1 or 3, uint8 or uint16) is a gray picture: one plane, or three whose values
    differ nowhere by more than ``tolerance`` of full white."""
    if color.shape[2] == 1:
        return True
    limit = tolerance * full_scale(color.dtype)
    for top in range(0, color.shape[0], _BAND_ROWS):
        rows = color[top : top + _BAND_ROWS]
        spread = rows.max(axis=2) - rows.min(axis=2)  # unsigned, never below zero
        if spread.max(initial=0) > limit:
            return False
    return True


def wants_colour(mode: ColorizeMode, color: np.ndarray) -> bool:
    """Whether ``--colorize mode`` colourises this input: ``always``, ``never``, or (``auto``) only a gray one."""
    return mode == "always" or (mode == "auto" and is_grayscale(color))


def _to_linear(srgb: np.ndarray) -> np.ndarray:
    return np.where(srgb > 0.04045, ((srgb + 0.055) / 1.055) ** 2.4, srgb / 12.92).astype(np.float32)


def _to_srgb(linear: np.ndarray) -> np.ndarray:
    clipped = np.clip(linear, 0.0, 1.0)
    return np.where(clipped > 0.0031308, 1.055 * clipped ** (1 / 2.4) - 0.055, 12.92 * clipped).astype(np.float32)


def _lab_f(t: np.ndarray) -> np.ndarray:
    return np.where(t > _EPSILON, np.cbrt(np.maximum(t, _EPSILON)), 7.787 * t + 4 / 29).astype(np.float32)


def _lab_f_inverse(f: np.ndarray) -> np.ndarray:
    return np.where(f > 6 / 29, f ** 3, (f - 4 / 29) / 7.787).astype(np.float32)


def luminance(color: np.ndarray) -> np.ndarray:
    """The relative luminance Y (linear light, [0, 1]) of H x W x 1|3 pixels (uint8, uint16 or float in [0, 1])."""
    linear = _to_linear(color.astype(np.float32) / np.float32(full_scale(color.dtype)))
    return linear[..., 0] if color.shape[-1] == 1 else linear @ _RGB_TO_Y


def _bilinear_taps(size: int, source: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For output positions ``first`` to ``last`` of ``size``, the two source positions (of ``source``) and the
    second one's weight that bilinear upsampling reads (pixel centres aligned, edges clamped: torch's
    ``interpolate(mode="bilinear", align_corners=False)``)."""
    position = np.maximum((np.arange(first, last, dtype=np.float64) + 0.5) * source / size - 0.5, 0.0)
    low = np.minimum(position.astype(np.int64), source - 1)
    return low, np.minimum(low + 1, source - 1), (position - low).astype(np.float32)


@dataclass(frozen=True)
class ColourPlan:
    """What DDColor predicted for one input: its chroma ``ab`` (2 x S x S, CIE Lab's a and b), for an output of
    ``size`` (w, h)."""

    ab: np.ndarray
    size: tuple[int, int]

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """a and b for output rows ``top`` to ``bottom``, upsampled to the output's width: (rows x W x 2)."""
        width, height = self.size
        y0, y1, wy = _bilinear_taps(height, self.ab.shape[1], top, bottom)
        x0, x1, wx = _bilinear_taps(width, self.ab.shape[2], 0, width)
        band = self.ab[:, y0] * (1 - wy)[None, :, None] + self.ab[:, y1] * wy[None, :, None]
        out = band[:, :, x0] * (1 - wx) + band[:, :, x1] * wx
        return out.transpose(1, 2, 0)


def colourise(rows: np.ndarray, plan: ColourPlan, top: int) -> np.ndarray:
    """Output rows ``top`` on (rows x W x 1|3, uint8/uint16; the whole output, or a strip of it) in colour: their own
    lightness, the plan's a and b. Returns rows x W x 3 in the same dtype, worked out a band of rows at a time.
    Colours outside sRGB are clipped, which is all that moves lightness."""
    out = np.empty((*rows.shape[:2], 3), rows.dtype)
    for start in range(0, rows.shape[0], _BAND_ROWS):
        band = rows[start : start + _BAND_ROWS]
        out[start : start + len(band)] = _colourise_band(band, plan, top + start)
    return out


def _colourise_band(rows: np.ndarray, plan: ColourPlan, top: int) -> np.ndarray:
    y = luminance(rows)
    ab = plan.rows(top, top + rows.shape[0])
    fy = _lab_f(y)
    x = _WHITE_X * _lab_f_inverse(fy + ab[..., 0] / 500)
    z = _WHITE_Z * _lab_f_inverse(fy - ab[..., 1] / 200)
    linear = np.stack((x, y, z), axis=-1) @ _XYZ_TO_RGB.T
    scale = full_scale(rows.dtype)
    return np.rint(_to_srgb(linear) * scale).astype(rows.dtype)


class ColourRows:
    """A row sink (``engine.tiling.RowSink``) that colourises the strips on their way to ``sink``: the first
    ``color_planes`` planes become three coloured ones; an alpha plane after them passes unchanged."""

    def __init__(self, sink: RowSink, plan: ColourPlan, color_planes: int):
        self.sink, self.plan, self.color_planes = sink, plan, color_planes
        self._row = 0

    def write(self, rows: np.ndarray) -> None:
        if rows.ndim == 2:
            rows = rows[:, :, None]
        coloured = colourise(rows[:, :, : self.color_planes], self.plan, self._row)
        self._row += rows.shape[0]
        extra = rows[:, :, self.color_planes :]
        self.sink.write(np.concatenate((coloured, extra), axis=2) if extra.shape[2] else coloured)

    def restart(self) -> None:
        self._row = 0
        self.sink.restart()


class Colouriser:
    """DDColor (a spandrel descriptor from ``models.loading.load_colorizer``) on its device, run once per image on
    the input, at ``input_size`` (default ``INPUT_SIZE``)."""

    def __init__(self, descriptor, device: torch.device, name: str = "", input_size: int | None = None):
        self.descriptor = descriptor.to(device).eval()
        self.device, self.name = device, name
        self.input_size = input_size

    def plan(self, color: np.ndarray, size: tuple[int, int]) -> ColourPlan:
        """The chroma DDColor gives ``color`` (the input, H x W x 1|3, uint8/uint16), for an output of ``size``."""
        side = self.input_size or INPUT_SIZE
        small = resize(color, (side, side))  # the whole picture squeezed to the square, as DDColor's pipeline does
        small = small[:, :, None] if small.ndim == 2 else small
        gray = _to_srgb(luminance(small))  # its lightness as gray sRGB: a and b of zero
        return ColourPlan(self._predict(gray), size)

    @torch.inference_mode()
    def _predict(self, gray: np.ndarray) -> np.ndarray:
        model = self.descriptor.model
        dtype = next(model.parameters()).dtype
        x = torch.from_numpy(np.ascontiguousarray(gray))[None, None].expand(1, 3, *gray.shape)
        ab = model(x.to(self.device, dtype))
        return ab[0].float().cpu().numpy()
