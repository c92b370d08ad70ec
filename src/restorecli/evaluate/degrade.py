"""Synthetic low-resolution inputs: reproducible degradations of a reference."""

from __future__ import annotations

import io
from typing import Literal

import cv2
import numpy as np
from PIL import Image

Degradation = Literal["bicubic", "blur-noise-jpeg"]

BLUR_SIGMA = 1.2  # Gaussian blur, in reference pixels
NOISE_SIGMA = 5.0 / 255  # additive Gaussian noise
JPEG_QUALITY = 75


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    height, width = image.shape[:2]
    return image[: height - height % scale, : width - width % scale]


def bicubic_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of H x W x C float with antialiasing when shrinking (as MATLAB's imresize), per channel."""
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c]), "F").resize(size, Image.BICUBIC))
              for c in range(image.shape[2])]
    return np.clip(np.dstack(planes), 0.0, 1.0).astype(np.float32)


def degrade(reference: np.ndarray, scale: int, mode: Degradation, seed: int) -> np.ndarray:
    """Low-resolution input (H/scale x W/scale x 3 float) from a reference whose sides are multiples of ``scale``.

    ``bicubic``: bicubic downsampling. ``blur-noise-jpeg``: Gaussian blur, Gaussian noise drawn from ``seed``,
    JPEG at a fixed quality, then bicubic downsampling.
    """
    height, width = reference.shape[:2]
    if height % scale or width % scale:
        raise ValueError(f"reference {width}x{height} is not a multiple of the scale {scale}")
    image = reference.astype(np.float32)
    if mode == "blur-noise-jpeg":
        image = cv2.GaussianBlur(image, (0, 0), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT)
        rng = np.random.default_rng(seed)
        image = np.clip(image + rng.normal(0.0, NOISE_SIGMA, image.shape).astype(np.float32), 0.0, 1.0)
        buffer = io.BytesIO()
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        image = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).astype(np.float32) / 255
    elif mode != "bicubic":
        raise ValueError(f"unknown degradation {mode!r}")
    return bicubic_resize(image, (width // scale, height // scale))


def baseline(low: np.ndarray, size: tuple[int, int], method: Literal["bicubic", "lanczos"]) -> np.ndarray:
    """The reference upscales every model must beat."""
    flag = cv2.INTER_CUBIC if method == "bicubic" else cv2.INTER_LANCZOS4
    return np.clip(cv2.resize(low, size, interpolation=flag), 0.0, 1.0)
