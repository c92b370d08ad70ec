"""Quality metrics with the usual super-resolution conventions, computed with scikit-image.

- Images are float RGB in [0, 1]; greyscale references are compared as three equal channels.
- ``border`` pixels (the scale) are cropped from every side before measuring.
- PSNR with a data range of 1; identical images give ``inf``.
- SSIM with an 11x11 Gaussian window (sigma 1.5) and population covariances, as in Wang et al. 2004; on RGB it is
  the mean of the per-channel values.
- Y is the luma of BT.601 YCbCr, ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` with R, G, B in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRIC_NAMES = ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y")
METRIC_LABELS = {"psnr_rgb": "PSNR RGB", "ssim_rgb": "SSIM RGB", "psnr_y": "PSNR Y", "ssim_y": "SSIM Y"}


def format_metric(value: float, metric: str) -> str:
    """PSNR with 2 decimals, SSIM with 4; identical images show ``inf``."""
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if metric.startswith("psnr") else f"{value:.4f}"


@dataclass(frozen=True)
class Metrics:
    psnr_rgb: float
    ssim_rgb: float
    psnr_y: float
    ssim_y: float


def bt601_y(rgb: np.ndarray) -> np.ndarray:
    """Luma of BT.601 YCbCr (studio range, in [16/255, 235/255]) from RGB in [0, 1]."""
    rgb = rgb.astype(np.float64)
    return (16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def shave(image: np.ndarray, border: int) -> np.ndarray:
    return image[border:-border, border:-border] if border > 0 else image


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    if np.array_equal(reference, image):
        return float("inf")
    from skimage.metrics import peak_signal_noise_ratio  # imported here: scikit-image and SciPy cost every command ~70 MiB

    return float(peak_signal_noise_ratio(reference, image, data_range=1.0))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    kwargs = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if reference.ndim == 3:
        return float(structural_similarity(reference, image, channel_axis=2, **kwargs))
    return float(structural_similarity(reference, image, **kwargs))


def measure(reference: np.ndarray, image: np.ndarray, border: int) -> Metrics:
    """Metrics of ``image`` against ``reference`` (both H x W x 3 float in [0, 1], same size)."""
    if reference.shape != image.shape:
        raise ValueError(f"sizes differ: reference {reference.shape}, image {image.shape}")
    ref, img = shave(reference.astype(np.float64), border), shave(image.astype(np.float64), border)
    if min(ref.shape[:2]) < 7:
        raise ValueError(f"image too small to measure after cropping {border} px borders: {reference.shape[:2]}")
    ref_y, img_y = bt601_y(ref), bt601_y(img)
    return Metrics(psnr(ref, img), ssim(ref, img), psnr(ref_y, img_y), ssim(ref_y, img_y))
