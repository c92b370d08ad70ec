"""Aligning faces to the FFHQ five-point template, and the inverse mapping back onto the image."""

from __future__ import annotations

import cv2
import numpy as np

from ...images import full_scale

FACE_SIZE = 512

# Where the five landmarks sit in a 512 x 512 FFHQ-aligned face (left eye, right eye, nose,
# left mouth corner, right mouth corner): the template GFPGAN, CodeFormer and RestoreFormer were trained on.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, translation; no reflection) that maps ``src`` points
    onto ``dst`` points with the least squared error (Umeyama's closed form)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / s.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix)


def alignment(landmarks: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Image -> aligned-face matrix for a face's five landmarks (in image pixels)."""
    return similarity_transform(landmarks, FFHQ_TEMPLATE_512 * (size / 512.0))


def crop_face(image: np.ndarray, matrix: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """The aligned ``size`` x ``size`` face (float32, 3 channels, [0, 1]) from an H x W x C image.
    Cost is proportional to the crop, not the image: only ``size``^2 pixels are sampled."""
    maxval = full_scale(image.dtype)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    crop = crop.astype(np.float32) / maxval
    if crop.ndim == 2:
        crop = crop[:, :, None]
    if crop.shape[2] == 1:
        crop = np.repeat(crop, 3, axis=2)
    return np.clip(crop, 0.0, 1.0)


def square_corners(matrix: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Where the corners of the aligned ``size`` x ``size`` square fall in the image (4 x 2: x, y)."""
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    back = invert(matrix)
    return corners @ back[:, :2].T + back[:, 2]


def footprint(matrix: np.ndarray, width: int, height: int, size: int = FACE_SIZE, margin: int = 2):
    """Bounding box (x0, y0, x1, y1) in the image of the aligned square, clipped; None if it misses the image."""
    points = square_corners(matrix, size)
    x0, y0 = np.floor(points.min(0)).astype(int) - margin
    x1, y1 = np.ceil(points.max(0)).astype(int) + margin
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return int(x0), int(y0), int(x1), int(y1)
