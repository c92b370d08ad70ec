"""Back-ends side by side (issue 31): realesrgan-x4plus on the same photos through each back-end and precision that
runs here, in one run: torch fp32 and bf16, ncnn on the CPU (fp32, its Winograd convolutions), ncnn on each Vulkan
GPU (fp16; with ``--software``, Mesa's lavapipe too, which is the CPU again and slow), and what ``--backend auto``
chose. For each:

- *bare*: the back-end's own call on each whole photo as one window (``model.runner.run``, the network and
  nothing else), seconds per image, the median of ``--repeats`` passes after a warm-up;
- *marginal*: ``restore_batch`` over all the photos less over one, per extra photo (decoding, tiling, blending,
  encoding and writing PNGs included, overlapped by the pipeline), the median of ``--repeats`` pairs;
- the PSNR of the back-end's result against torch fp32's on the first photo.

The photos are crops of scikit-image's pictures, 96x85 like issue 31's. Writes the table into docs/performance.md
between the backends markers (``--no-docs``: print only). A benchmark, not a test: nothing here is asserted.

    python benchmarks/backends.py [--images 4] [--repeats 3] [--software] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common import embedded_weights, machine, markers, publish, psnr

START, END = markers("backends")
MODEL = "realesrgan-x4plus"
SIZE = (96, 85)  # width, height: issue 31's photo


@dataclass(frozen=True)
class Case:
    backend: str  # auto, torch, ncnn
    device: str
    precision: str


def photos(folder: Path, count: int) -> list[Path]:
    """``count`` different 96x85 photo crops as PNG files."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    paths = []
    for index in range(count):
        picture = sources[index % len(sources)]
        top, left = 40 * (index // len(sources)), 60 * (index // len(sources))
        crop = np.ascontiguousarray(picture[top : top + SIZE[1], left : left + SIZE[0], :3])
        path = folder / f"photo{index}.png"
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def cases(software: bool) -> list[Case]:
    from restorecli.engine.backends.ncnn import vulkan_devices

    found = [Case("torch", "cpu", "fp32"), Case("torch", "cpu", "bf16"), Case("ncnn", "cpu", "fp32")]
    found += [Case("ncnn", gpu.label, "fp16") for gpu in vulkan_devices() if software or gpu.kind != "cpu"]
    return found + [Case("auto", "cpu", "auto")]


def measure(case: Case, inputs: list[Path], weights: Path, out: Path, repeats: int) -> dict:
    import torch

    from restorecli.engine.tiling import plan_grid, window_batch
    from restorecli.options import RestoreOptions
    from restorecli.pipeline import Restorer, restore_batch

    options = RestoreOptions(output_dir=str(out), model=MODEL, backend=case.backend,  # type: ignore[arg-type]
                             device=case.device, precision=case.precision,  # type: ignore[arg-type]
                             weights_dir=str(weights), overwrite=True, tile=0)
    restorer = Restorer.from_options(options)
    engine, runner = restorer.engine, restorer.model.runner
    pictures = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in inputs]
    batches = [window_batch(p, plan_grid(*p.shape[:2], 1, 1, 0).tiles, engine.device, engine.dtype) for p in pictures]

    def bare() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                runner.run(batch)
        return (time.perf_counter() - started) / len(batches)

    def batch_of(paths: list[Path]) -> float:
        started = time.perf_counter()
        result = restore_batch([str(p) for p in paths], options, restorer=restorer)
        seconds = time.perf_counter() - started
        if any(item.status != "ok" for item in result.items):
            sys.exit(f"{case}: restore_batch did not restore every photo: {result.items}")
        return seconds

    bare()
    batch_of(inputs[:1])  # warm-ups: kernels chosen, ncnn's pipelines built
    bares = [bare() for _ in range(repeats)]
    marginal = []
    for _ in range(repeats):  # pairs next to each other in time, so that a busy spell hits both alike
        one = batch_of(inputs[:1])
        marginal.append((batch_of(inputs) - one) / (len(inputs) - 1))
    first = cv2.imread(str(out / inputs[0].name))
    return {"case": case, "setup": restorer.setup, "bare_s": statistics.median(bares), "bare_all_s": bares,
            "marginal_s": statistics.median(marginal), "marginal_all_s": marginal, "first": first}


def render(rows: list[dict], images: int, repeats: int, command: str, load: tuple[float, float]) -> str:
    import torch

    reference = next(row["first"] for row in rows if row["setup"]["backend"] == "torch"
                     and row["setup"]["precision"] == "fp32" and row["case"].backend == "torch")
    lines = [f"realesrgan-x4plus on {images} photos of 96x85, measured by `{command}` on {time.strftime('%Y-%m-%d')} "
             f"({machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"ncnn {_ncnn_version()}); medians of {repeats} runs. *Bare*: the back-end's own call on each whole "
             "photo, seconds per image. *Marginal*: restorecli's batch over all the photos less over one, per "
             "extra photo (PNG in and out). PSNR: the first photo's output against torch fp32's. The machine's "
             f"load average was {load[0]:.1f} at the start and {load[1]:.1f} at the end (on these shared machines "
             "other work runs beside a benchmark; ncnn's OpenMP threads slow down most when cores are taken).",
             "", "| asked | ran | bare s/image | restorecli marginal s/image | marginal / bare | PSNR vs torch fp32 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        case, setup = row["case"], row["setup"]
        asked = f"--backend {case.backend} --device {case.device} --precision {case.precision}"
        ran = f"{setup['backend']} on {setup['device']}, {setup['precision']}"
        db = psnr(row["first"], reference)
        closeness = "same pixels" if db >= 99 else f"{db:.1f} dB"
        lines.append(f"| `{asked}` | {ran} | {row['bare_s']:.3f} | {row['marginal_s']:.3f} | "
                     f"{row['marginal_s'] / row['bare_s']:.2f}x | {closeness} |")
    auto = next((row for row in rows if row["case"].backend == "auto"), None)
    if auto is not None and "backend_reason" in auto["setup"]:
        lines += ["", f"`--backend auto` chose {auto['setup']['backend']}: {auto['setup']['backend_reason']}."]
    return "\n".join(lines)


def _ncnn_version() -> str:
    from restorecli.engine.backends.devices import ncnn_version

    return ncnn_version() or "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--software", action="store_true", help="also ncnn on a software Vulkan device (lavapipe)")
    parser.add_argument("--no-docs", action="store_true", help="print the figures; leave docs/performance.md as it is")
    args = parser.parse_args()
    if args.images < 2:
        parser.error("--images must be at least 2: the marginal time per image needs two batch sizes")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        embedded_weights(folder / "weights", MODEL)  # its ncnn files are what both back-ends run
        (folder / "in").mkdir()
        inputs = photos(folder / "in", args.images)
        rows, started = [], os.getloadavg()[0]
        for case in cases(args.software):
            row = measure(case, inputs, folder / "weights", folder / f"out-{len(rows)}", args.repeats)
            print(f"{case}: bare {row['bare_s']:.3f} s, marginal {row['marginal_s']:.3f} s ({row['setup']})",
                  flush=True)
            rows.append(row)
    command = "python benchmarks/backends.py " + " ".join(sys.argv[1:])
    text = render(rows, args.images, args.repeats, command.strip(), (started, os.getloadavg()[0]))
    publish(text, START, END, docs=not args.no_docs)


if __name__ == "__main__":
    main()
