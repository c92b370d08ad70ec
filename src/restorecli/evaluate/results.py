"""What an evaluation found: a row of metrics per image and method, what the report shows of each image, and the
means over the images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .metrics import METRIC_NAMES, Metrics


@dataclass(frozen=True)
class Row:
    image: str
    method: str
    kind: Literal["baseline", "model"]
    metrics: Metrics
    seconds: float


@dataclass(frozen=True)
class ReportPictures:
    """What the HTML report shows of one image (uint8): each picture's crop of the same detailed window, and
    bicubic and the best model shrunk for the before/after slider."""

    crops: dict[str, np.ndarray]  # "reference", "input", then each method
    slider: dict[str, np.ndarray]  # "bicubic" and ``best``
    best: str  # the model (or, without one, the method) with the best Y-SSIM


@dataclass
class ImageResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    error: str | None = None
    scale: int = 0
    pictures: ReportPictures | None = None  # with keep_pictures


@dataclass
class Evaluation:
    images: list[ImageResult]
    methods: list[str]
    seconds: float
    # What it ran with, for the report's header and the JSON summary: the mode, degradation, scale, seed, tiles,
    # faces and restorecli's version, and per model what ran (name, device, the precision auto resolved to)
    settings: dict[str, object] = field(default_factory=dict)

    def settings_line(self) -> str:
        """The settings in one line, e.g. 'synthetic, bicubic 4x, seed 0; tile auto; realesrgan-x4plus on cpu,
        bf16; restorecli 0.1.0': under the table on stderr and the report's title."""
        settings = self.settings
        if not settings:
            return ""
        how = (f"synthetic, {settings['degrade']} {settings['scale']}x, seed {settings['seed']}"
               if settings["mode"] == "synthetic" else f"paired, {settings['scale']}x")
        ran = "; ".join(f"{label} on {setup.get('device')}, {setup.get('precision')}"
                        for label, setup in dict(settings["models"]).items())  # type: ignore[call-overload]
        faces = "; faces restored" if settings["face_enhance"] else ""
        tiles = f"tile {settings['tile']} (pad {settings['tile_pad']})"
        return f"{how}; {tiles}{faces}; {ran}; restorecli {settings['version']}"

    @property
    def succeeded(self) -> list[ImageResult]:
        return [i for i in self.images if i.error is None]

    @property
    def failed(self) -> list[ImageResult]:
        return [i for i in self.images if i.error is not None]

    def means(self) -> dict[str, dict[str, float]]:
        """Per method: the mean of each metric (``inf`` if any image was identical) and of seconds."""
        table: dict[str, dict[str, float]] = {}
        for method in self.methods:
            rows = [r for i in self.succeeded for r in i.rows if r.method == method]
            if not rows:
                continue
            means = {name: float(np.mean([getattr(r.metrics, name) for r in rows])) for name in METRIC_NAMES}
            means["seconds"] = float(np.mean([r.seconds for r in rows]))
            table[method] = means
        return table

    def best(self) -> dict[str, float]:
        """The best mean of each metric over the methods (higher is better for all four)."""
        means = self.means()
        return {name: max(values[name] for values in means.values()) for name in METRIC_NAMES} if means else {}

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0
