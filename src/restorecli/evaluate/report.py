"""The HTML report: one self-contained page (images inlined, no CDN), readable offline."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import write_atomic
from .metrics import METRIC_LABELS, METRIC_NAMES, format_metric
from .results import Evaluation, ImageResult

DISPLAY = 256  # CSS pixels per crop, the same zoom for every method

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 32px; }
p.settings { color: #555; margin: -8px 0 8px; }
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


def _settings(evaluation: Evaluation) -> str:
    """The settings the evaluation ran with, in one line under the title."""
    line = evaluation.settings_line()
    return f'<p class="settings">{html.escape(line)}</p>' if line else ""


def write_report(evaluation: Evaluation, folder: Path, title: str = "restorecli evaluate") -> Path:
    """Write ``folder/index.html`` (atomically) and return its path."""
    sections = "".join(_image_section(r, i) for i, r in enumerate(evaluation.images))
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>{_settings(evaluation)}{_summary_table(evaluation)}{sections}</body></html>"
    )
    target = folder / "index.html"
    write_atomic(target, page.encode("utf-8"))
    return target
