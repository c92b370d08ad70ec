"""Pixel-value conversions shared by the decoders and the writers: full scale, 16 to 8 bits, alpha onto white."""

from __future__ import annotations

import numpy as np


def full_scale(dtype: np.dtype | type) -> float:
    """The value of full white for a pixel type: 255 (uint8), 65535 (uint16), 1.0 (float in [0, 1])."""
    return {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(np.dtype(dtype), 1.0)


def to_8bit(array: np.ndarray) -> np.ndarray:
    """uint8 as it is; uint16 rounded to the nearest of 256 levels (65535 / 257 = 255)."""
    if array.dtype == np.uint8:
        return array
    return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)


def flatten_alpha(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite ``color`` (H x W x C) with ``alpha`` (H x W) onto white, for formats without alpha."""
    maxval = full_scale(color.dtype)
    a = alpha.astype(np.float32)[:, :, None] / maxval
    flat = color.astype(np.float32) * a + maxval * (1 - a)
    return np.clip(np.rint(flat), 0, maxval).astype(color.dtype)
