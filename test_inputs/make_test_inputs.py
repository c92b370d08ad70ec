"""Regenerate the files in this folder from scikit-image's bundled photographs (see README.md).

Run from the repository root: python test_inputs/make_test_inputs.py
"""

from pathlib import Path

import cv2
import numpy as np
import skimage.data
from PIL import Image

HERE = Path(__file__).parent


def shrink(rgb: np.ndarray, width: int) -> np.ndarray:
    """Area-downscale in float, keeping the fractional values (16-bit inputs need them)."""
    height = round(rgb.shape[0] * width / rgb.shape[1])
    return cv2.resize(rgb.astype(np.float32) / 255.0, (width, height), interpolation=cv2.INTER_AREA)


def main() -> None:
    face = skimage.data.astronaut()[20:276, 110:366]  # her face and shoulders
    Image.fromarray(np.rint(shrink(face, 128) * 255).astype(np.uint8)).save(HERE / "astronaut_face.jpg", quality=92)

    camera = cv2.resize(skimage.data.camera(), (128, 128), interpolation=cv2.INTER_AREA)
    Image.fromarray(camera, "L").save(HERE / "cameraman_gray.png")

    coffee = np.rint(shrink(skimage.data.coffee(), 128) * 255).astype(np.uint8)
    h, w = coffee.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    alpha = np.clip((1.1 - radius) * 4, 0, 1)  # opaque centre, transparent corners, soft edge
    rgba = np.dstack([coffee, np.rint(alpha * 255).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(HERE / "coffee_alpha.png")

    cat = shrink(skimage.data.chelsea(), 120)
    cat16 = np.rint(cat * 65535).astype(np.uint16)
    cv2.imwrite(str(HERE / "chelsea_16bit.png"), cv2.cvtColor(cat16, cv2.COLOR_RGB2BGR))

    rocket = np.rint(shrink(skimage.data.rocket(), 96) * 255).astype(np.uint8)
    Image.fromarray(rocket).save(HERE / "rocket.jpg", quality=90)


if __name__ == "__main__":
    main()
