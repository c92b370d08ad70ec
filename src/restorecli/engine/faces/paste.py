"""Pasting restored faces back: a soft mask in template space, warped into the face's own region only.

What is pasted is the change the restorer made (restored minus the aligned crop it was given), warped back
and added under a soft mask. An unchanged face therefore leaves the background exactly as it was, and the
background's own detail beyond the 512 x 512 crop's resolution survives under a large face; resampling the
whole face back instead would blur it and shift it by a grey level or more.

The originals warp, erode and blur a full-frame float mask for every face, which costs in proportion to the
image. Here the mask is feathered once in the 512 x 512 template space; each paste samples only the
rectangle the face covers, so its cost follows the face's area, whatever the image size.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from ...images import full_scale
from .align import FACE_SIZE, footprint, invert


@lru_cache(maxsize=4)
def template_mask(size: int = FACE_SIZE, inset: float = 0.03, feather: float = 0.1) -> np.ndarray:
    """1 inside the aligned square, easing (smoothstep) to 0 at its edge: no step, so no visible seam."""
    ramp = np.arange(size, dtype=np.float32) + 0.5
    edge = np.minimum(ramp, size - ramp)  # distance to the nearest side, per axis
    distance = np.minimum(edge[:, None], edge[None, :])
    t = np.clip((distance - inset * size) / (feather * size), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]


def paste_face(canvas: np.ndarray, restored: np.ndarray, original: np.ndarray, matrix: np.ndarray,
               weight: float = 1.0, mask: np.ndarray | None = None, top: int = 0, height: int | None = None) -> bool:
    """Add ``weight`` times the restorer's change (``restored - original``, both 512 x 512 x 3 float in [0, 1],
    aligned by ``matrix``: image -> face) to ``canvas`` (H x W x C, uint8/uint16/float32, changed in place)
    under a soft mask. Grey canvases get a grey change. ``canvas`` may be a band of an image ``height`` rows
    tall that starts at its row ``top``; the band must hold every row the face covers. Returns False if the face
    lies outside the image."""
    size = restored.shape[0]
    width = canvas.shape[1]
    box = footprint(matrix, width, canvas.shape[0] if height is None else height, size)
    if box is None:
        return False
    x0, y0, x1, y1 = box
    back = invert(matrix)
    back[:, 2] -= (x0, y0)
    region = (x1 - x0, y1 - y0)
    soft = template_mask(size) if mask is None else mask
    change = (restored.astype(np.float32) - original.astype(np.float32)) * (weight * soft[:, :, None])
    warped = cv2.warpAffine(change, back, region, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)
    roi = canvas[y0 - top : y1 - top, x0:x1]
    maxval = full_scale(canvas.dtype)
    if roi.shape[2] == 1:
        warped = _luma(warped)
    blended = roi.astype(np.float32) + warped * maxval
    if canvas.dtype == np.float32:
        roi[...] = np.clip(blended, 0.0, 1.0)
    else:
        roi[...] = np.clip(np.rint(blended), 0, maxval).astype(canvas.dtype)
    return True
