"""What the HTML report shows of one image, taken when the image is measured: crops of its most detailed window
and the before/after slider's two pictures, as uint8."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..images import float_to_uint8
from .metrics import bt601_y
from .results import ReportPictures, Row

CROP = 128  # reference pixels shown per crop
SLIDER_WIDTH = 640


def detail_window(reference: np.ndarray, scale: int, size: int = CROP) -> tuple[int, int, int]:
    """(y, x, side) of the most detailed square of the reference, aligned to the scale."""
    side = min(size, reference.shape[0], reference.shape[1])
    side -= side % scale
    y_plane = bt601_y(reference)
    energy = np.abs(np.diff(y_plane, axis=0))[:, :-1] + np.abs(np.diff(y_plane, axis=1))[:-1, :]
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    h, w = energy.shape
    best, where = -1.0, (0, 0)
    step = max(scale, side // 4)
    for y in range(0, max(h - side, 0) + 1, step):
        for x in range(0, max(w - side, 0) + 1, step):
            y1, x1 = min(y + side, h), min(x + side, w)
            total = integral[y1, x1] - integral[y, x1] - integral[y1, x] + integral[y, x]
            if total > best:
                best, where = total, (y, x)
    y, x = where
    return y - y % scale, x - x % scale, side


def pictures_for_report(reference: np.ndarray, low: np.ndarray, outputs: dict[str, np.ndarray], rows: list[Row],
                        scale: int) -> ReportPictures:
    """What the report shows of one image (float pictures in [0, 1]), taken as soon as it is measured: an
    evaluation of a hundred 2K photos kept every full-size picture for the page at the end, about 135 MB an image."""
    y, x, side = detail_window(reference, scale)
    crops = {"reference": reference[y : y + side, x : x + side],
             "input": low[y // scale : (y + side) // scale, x // scale : (x + side) // scale]}
    crops.update((method, image[y : y + side, x : x + side]) for method, image in outputs.items())
    models = [r for r in rows if r.kind == "model"]
    best = max(models or rows, key=lambda r: r.metrics.ssim_y).method
    shrink = min(1.0, SLIDER_WIDTH / reference.shape[1])
    size = (max(1, round(reference.shape[1] * shrink)), max(1, round(reference.shape[0] * shrink)))
    slider = {name: np.asarray(Image.fromarray(float_to_uint8(outputs[name])).resize(size, Image.LANCZOS))
              for name in ("bicubic", best)}
    return ReportPictures({name: float_to_uint8(crop) for name, crop in crops.items()}, slider, best)
