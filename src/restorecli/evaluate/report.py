"""The HTML report: one self-contained page (images inlined, no CDN), readable offline."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import write_atomic
from ..images import float_to_uint8
from .metrics import METRIC_LABELS, METRIC_NAMES, bt601_y, format_metric
from .run import Evaluation, ImageResult, ReportPictures, Row

CROP = 128  # reference pixels shown per crop
DISPLAY = 256  # CSS pixels per crop, the same zoom for every method
SLIDER_WIDTH = 640

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 32px; }
table.summary { border-collapse: collapse; margin: 12px 0; }
table.summary th, table.summary td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
td.best { font-weight: bold; background: #e3f4e1; }
.crops { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: %(d)dpx; }
figure img { width: %(d)dpx; height: %(d)dpx; image-rendering: pixelated; display: block; border: 1px solid #ccc; }
figcaption { font-size: 12px; } figcaption b { display: block; font-size: 13px; }
.slider { position: relative; display: inline-block; margin: 8px 0; }
.slider img { display: block; }
.slider img.after { position: absolute; top: 0; left: 0; clip-path: inset(0 50%% 0 0); }
.slider input { width: 100%%; }
.failed { color: #b00; }
""" % {"d": DISPLAY}

_SCRIPT = """
function slide(input) {
  var after = input.parentNode.querySelector('img.after');
  after.style.clipPath = 'inset(0 ' + (100 - input.value) + '% 0 0)';
}
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = ok + '/' + images.length;
  document.body.dataset.imagesOk = String(ok === images.length && images.length > 0);
});
"""


def _png_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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


def _summary_table(evaluation: Evaluation) -> str:
    means, best = evaluation.means(), evaluation.best()
    rows = []
    for method, values in means.items():
        cells = "".join(
            f'<td class="{"best" if values[m] == best[m] else ""}">{format_metric(values[m], m)}</td>' for m in METRIC_NAMES
        )
        rows.append(f"<tr><td>{html.escape(method)}</td>{cells}<td>{values['seconds']:.3f}</td></tr>")
    head = "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in METRIC_NAMES)
    return (f'<table class="summary"><tr><th>method</th>{head}<th>seconds</th></tr>{"".join(rows)}</table>'
            f"<p>Means over {len(evaluation.succeeded)} image(s); {len(evaluation.failed)} failed.</p>")


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


def _image_section(result: ImageResult, index: int) -> str:
    if result.error:
        return f'<h2 class="failed">{html.escape(result.name)}</h2><p class="failed">{html.escape(result.error)}</p>'
    assert result.pictures is not None, "evaluate with keep_pictures=True for a report"
    pictures, captions = result.pictures, {row.method: row for row in result.rows}
    figures = []
    for name, crop in pictures.crops.items():
        label = f"input (1/{result.scale})" if name == "input" else name
        row = captions.get(name)
        caption = [f"{METRIC_LABELS[m]} {format_metric(getattr(row.metrics, m), m)}" for m in METRIC_NAMES] if row else []
        figures.append((label, crop, caption))
    crops = "".join(  # one metric a line: run together, the numbers were hard to tell apart
        f'<figure><img alt="{html.escape(label)}" src="{_png_uri(img)}"><figcaption><b>{html.escape(label)}</b>'
        f"{'<br>'.join(html.escape(line) for line in caption)}</figcaption></figure>"
        for label, img, caption in figures
    )
    shown = max(pictures.slider["bicubic"].shape[1], 384)  # small images are shown enlarged, pixels kept sharp
    style = f'style="width:{shown}px;image-rendering:pixelated"'
    slider = (
        f'<div class="slider" style="width:{shown}px"><img alt="bicubic" {style} '
        f'src="{_png_uri(pictures.slider["bicubic"])}">'
        f'<img class="after" alt="{html.escape(pictures.best)}" {style} src="{_png_uri(pictures.slider[pictures.best])}">'
        f'<input type="range" min="0" max="100" value="50" oninput="slide(this)" aria-label="compare"></div>'
        f"<p>Left of the handle: {html.escape(pictures.best)}; right: bicubic.</p>"
    )
    return (f'<h2 id="image-{index}">{html.escape(result.name)}</h2>'
            f'<div class="crops">{crops}</div>{slider}')


def write_report(evaluation: Evaluation, folder: Path, title: str = "restorecli evaluate") -> Path:
    """Write ``folder/index.html`` (atomically) and return its path."""
    sections = "".join(_image_section(r, i) for i, r in enumerate(evaluation.images))
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>{_summary_table(evaluation)}{sections}</body></html>"
    )
    target = folder / "index.html"
    write_atomic(target, page.encode("utf-8"))
    return target
